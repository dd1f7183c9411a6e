//! The answers to a request a token's restrictions refused (the checks
//! are the core's: `authority::restrictions`).
//!
//! - outside the token's networks: 401 `invalid_token` (RFC 6750 §3.1: the
//!   token is not valid here), as for any other token that cannot be used;
//! - no scope rule allows the method on the path: 403 `insufficient_scope`
//!   (RFC 6750 §3.1) with its challenge and a JSON body;
//! - over the token's rate: 429 with `Retry-After` and the IETF
//!   `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-
//!   headers-09/-10 syntax: structured-field lists of named policies, e.g.
//!   `RateLimit-Policy: "token";q=10;w=2` and `RateLimit: "token";r=0;t=1`).
//!
//! None of them reaches the upstream.

use http::header::{HeaderName, HeaderValue};
use http::StatusCode;

use super::bearer::{challenge, challenge_with};
use crate::restrict::{RateRefusal, Refused};
use crate::wire::{too_many_requests, Reply};

/// The refusal's label in `tokengate_bearer_refusals_total`.
pub(super) fn metric(refused: Refused) -> crate::metrics::Refusal {
    use crate::metrics::Refusal;
    match refused {
        Refused::Network => Refusal::Network,
        Refused::Scope => Refusal::Scope,
        Refused::Rate(_) => Refusal::RateLimited,
    }
}

/// The answer to a refused request of `method` on `path` (the canonical
/// path the scope rules saw: a scope refusal's challenge names it as the
/// scope the request would have needed, `METHOD:/path`).
pub(super) fn refusal(refused: Refused, method: &http::Method, path: &str) -> Reply {
    match refused {
        Refused::Network => challenge(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the access token is not valid from this address",
        ),
        Refused::Scope => challenge_with(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "the access token's scopes do not allow this method on this path",
            Some(&format!("{method}:{path}")),
        ),
        Refused::Rate(rate) => rate_limited(rate),
    }
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

fn rate_limited(rate: RateRefusal) -> Reply {
    // Whole seconds, rounded up: waiting that long always finds a token.
    let secs = u64::try_from(rate.retry_after.as_nanos().div_ceil(1_000_000_000))
        .unwrap_or(u64::MAX)
        .max(1);
    let mut r = too_many_requests(
        "rate_limited",
        &format!(
            "this token's rate limit ({} per second, bursts of {}) is used up; try again in {secs} s",
            rate.per_second, rate.burst
        ),
        secs,
    );
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "\"token\";q={};w={}",
        rate.burst, rate.window_secs
    )) {
        h.insert(RATELIMIT_POLICY, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"token\";r=0;t={secs}")) {
        h.insert(RATELIMIT, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_their_challenges_and_fields() {
        let get = http::Method::GET;
        let r = refusal(Refused::Scope, &http::Method::DELETE, "/api/x");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let www = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(www.contains("error=\"insufficient_scope\""), "{www}");
        assert!(www.ends_with(", scope=\"DELETE:/api/x\""), "{www}");
        let r = refusal(Refused::Network, &get, "/");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = refusal(
            Refused::Rate(RateRefusal {
                retry_after: std::time::Duration::from_millis(1500),
                per_second: 5,
                burst: 10,
                window_secs: 2,
            }),
            &get,
            "/",
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["ratelimit-policy"], "\"token\";q=10;w=2");
        assert_eq!(r.headers()["ratelimit"], "\"token\";r=0;t=2");
    }
}
