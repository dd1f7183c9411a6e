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

/// RFC 6750 §3 answer to a header with no bearer token. With no token
/// at all (no header, an empty one, or another scheme) the challenge names
/// only the realm: §3.1 asks for no error code when the client sent no
/// credential it could have known to be wrong. The JSON body is the same.
pub(super) fn refusal(e: BearerError) -> Reply {
    let text = match e {
        BearerError::Repeated => {
            return challenge(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one Authorization header",
            )
        }
        BearerError::Missing => "a bearer access token is required",
        BearerError::Scheme => "use Authorization: Bearer <access token>",
    };
    let mut r = error(StatusCode::UNAUTHORIZED, "invalid_token", text);
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(REALM_ONLY));
    r
}

/// The challenge of a request that sent no bearer token. Its realm is
/// what tells the gateway's own 401 from an upstream's (the agent relies
/// on it).
pub(crate) const REALM_ONLY: &str = r#"Bearer realm="tokengate""#;

/// An RFC 6750 §3 refusal: the JSON error and its `WWW-Authenticate`
/// challenge, with the same code and text.
pub(super) fn challenge(status: StatusCode, code: &str, text: &str) -> Reply {
    challenge_with(status, code, text, None)
}

/// As `challenge`, with the `scope` attribute (§3: the scope the request
/// would have needed) on an `insufficient_scope` refusal.
pub(super) fn challenge_with(
    status: StatusCode,
    code: &str,
    text: &str,
    scope: Option<&str>,
) -> Reply {
    let mut r = error(status, code, text);
    let mut challenge = format!(
        r#"{REALM_ONLY}, error="{code}", error_description="{}""#,
        quoted(text)
    );
    if let Some(scope) = scope {
        challenge.push_str(&format!(r#", scope="{}""#, quoted(scope)));
    }
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    r
}

/// The inside of an RFC 9110 quoted-string: `"` and `\` escaped, and
/// bytes a header cannot carry (controls) dropped, so a description or a
/// path never breaks the challenge's syntax.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
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

    fn www(r: &Reply) -> &str {
        r.headers()[WWW_AUTHENTICATE].to_str().unwrap()
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        // No token sent: the realm alone, the JSON body as before.
        for e in [BearerError::Missing, BearerError::Scheme] {
            let r = refusal(e);
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(www(&r), r#"Bearer realm="tokengate""#);
        }
        // A token that was sent and refused: the error and its description.
        let r = token_refusal(AccessError::Expired, "127.0.0.1:1".parse().unwrap());
        assert_eq!(
            www(&r),
            r#"Bearer realm="tokengate", error="invalid_token", error_description="the access token expired""#
        );
        // A scope refusal names the scope; quotes cannot break out.
        let r = challenge_with(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "no",
            Some(r#"GET:/a"b\c"#),
        );
        assert!(
            www(&r).ends_with(r#"error_description="no", scope="GET:/a\"b\\c""#),
            "{}",
            www(&r)
        );
    }
}
