//! The bearer check (RFC 6750): the `Authorization` header's token, and the
//! refusal with its `WWW-Authenticate` challenge.

use std::net::SocketAddr;

use http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::StatusCode;

use crate::authority::BearerError;
use crate::metrics::Refusal;
use crate::tokens::access::AccessError;
use crate::wire::{error, Reply};

/// Extracts the token from `Authorization: Bearer <token>` (scheme in any case).
pub fn bearer_token(headers: &http::HeaderMap) -> Result<&[u8], BearerError> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let value = all.next().ok_or(BearerError::Missing)?;
    if all.next().is_some() {
        return Err(BearerError::Repeated);
    }
    let raw = value.as_bytes().trim_ascii();
    let split = raw
        .iter()
        .position(|&b| b == b' ')
        .ok_or(BearerError::Scheme)?;
    let (scheme, rest) = raw.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(BearerError::Scheme);
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        return Err(BearerError::Missing);
    }
    Ok(token)
}

/// The refusal's label in `tokengate_bearer_refusals_total`.
pub(super) fn metric(e: BearerError) -> Refusal {
    match e {
        BearerError::Missing => Refusal::Missing,
        BearerError::Repeated => Refusal::Repeated,
        BearerError::Scheme => Refusal::Scheme,
    }
}

/// A refused token's label in `tokengate_bearer_refusals_total`.
pub(super) fn token_metric(e: AccessError) -> Refusal {
    match e {
        AccessError::Malformed => Refusal::Malformed,
        AccessError::EarlierBoot => Refusal::EarlierBoot,
        AccessError::UnknownBoot => Refusal::UnknownBoot,
        AccessError::Forged => Refusal::Forged,
        AccessError::Unknown => Refusal::Unknown,
        AccessError::Expired => Refusal::Expired,
        AccessError::RefreshGone => Refusal::RefreshGone,
        AccessError::RefreshUnseen => Refusal::RefreshUnseen,
        AccessError::Rotated => Refusal::Rotated,
        AccessError::Evicted { .. } => Refusal::Evicted,
    }
}

/// RFC 6750 §3 answer to a refused token.
pub(super) fn token_refusal(e: AccessError, peer: SocketAddr) -> Reply {
    tracing::debug!(%peer, reason = e.reason(), "access token refused");
    challenge(StatusCode::UNAUTHORIZED, "invalid_token", &e.description())
}

/// RFC 6750 §3 answer to a header with no bearer token.
pub(super) fn refusal(e: BearerError) -> Reply {
    let (status, code, text) = match e {
        BearerError::Missing => (
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "a bearer access token is required",
        ),
        BearerError::Repeated => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "more than one Authorization header",
        ),
        BearerError::Scheme => (
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "use Authorization: Bearer <access token>",
        ),
    };
    challenge(status, code, text)
}

/// An RFC 6750 §3 refusal: the JSON error and its `WWW-Authenticate`
/// challenge, with the same code and text.
pub(super) fn challenge(status: StatusCode, code: &str, text: &str) -> Reply {
    let mut r = error(status, code, text);
    let challenge =
        format!(r#"Bearer realm="tokengate", error="{code}", error_description="{text}""#);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [&b"Bearer abc"[..], b"bearer abc", b"BEARER   abc  "] {
            assert_eq!(bearer_token(&headers(&[v])).ok(), Some(&b"abc"[..]));
        }
    }

    #[test]
    fn bearer_errors() {
        assert!(matches!(
            bearer_token(&headers(&[])),
            Err(BearerError::Missing)
        ));
        assert!(matches!(
            bearer_token(&headers(&[b"Basic abc"])),
            Err(BearerError::Scheme)
        ));
        assert!(matches!(
            bearer_token(&headers(&[b"Bearer"])),
            Err(BearerError::Scheme)
        ));
        assert!(matches!(
            bearer_token(&headers(&[b"a", b"b"])),
            Err(BearerError::Repeated)
        ));
        // Bytes that are not UTF-8 are just a bad token, never a panic.
        assert!(bearer_token(&headers(&[b"Bearer \xff\xfe"])).is_ok());
    }
}
