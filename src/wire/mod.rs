//! The response toolkit shared by both listeners: JSON answers, the one error
//! shape, bounded body reading, `Content-Type` checks, and which header names
//! belong to the gateway. It imports nothing else from the crate, so every
//! other module may use it.

mod body;
pub(crate) mod host;
pub(crate) mod names;

pub(crate) use body::{read_body, BodyError};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// An answer the gateway built itself (not streamed from the upstream).
pub(crate) type Reply = Response<Full<Bytes>>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(bytes.into())
}

/// An answer with no body and the given status (204, or a HEAD answer).
pub(crate) fn empty(status: StatusCode) -> Reply {
    let mut r = Response::new(Full::default());
    *r.status_mut() = status;
    r
}

/// A JSON answer. Serialising our own plain structs cannot fail; if it ever
/// did, the client still gets a well-formed JSON error rather than a panic.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| {
        br#"{"error":"server_error","error_description":"internal error"}"#.to_vec()
    });
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Error bodies echo bits of the request (a name, a parameter); a browser
    // must never sniff them into HTML.
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// Marks an answer as holding a secret: no cache may keep it.
pub(crate) fn no_store(mut r: Reply) -> Reply {
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

/// The one error shape of every listener: `{"error", "error_description"}`.
pub(crate) fn error(status: StatusCode, code: &str, description: &str) -> Reply {
    json(
        status,
        &ErrorBody {
            error: code,
            error_description: description,
        },
    )
}

/// 429 with `Retry-After` (whole seconds, at least 1): the client need
/// only wait, so this is never an `invalid_request`.
pub(crate) fn too_many_requests(code: &str, description: &str, retry_after_secs: u64) -> Reply {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, code, description);
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs.max(1)),
    );
    r
}

/// 503 `temporarily_unavailable` with `Retry-After: 1`: the gateway cannot
/// vouch for the answer right now (cluster mode, the database away), which
/// says nothing about the client's token.
pub(crate) fn unavailable(description: &str) -> Reply {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        description,
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(1u64));
    r
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "method not allowed on this path",
    );
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A HEAD answer has no body; HTTP/2 clients treat DATA frames on one as a
/// stream error.
pub(crate) fn strip_body_for_head(r: &mut Reply) {
    *r.body_mut() = Full::default();
}

/// The media type of `Content-Type` without its parameters, or `None` when
/// the header is absent. A value that is not text matches no type.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<MediaType<'_>> {
    let raw = headers.get(CONTENT_TYPE)?.as_bytes();
    let essence = raw.split(|&b| b == b';').next().unwrap_or_default();
    Some(MediaType(essence.trim_ascii()))
}

/// A `Content-Type` essence such as `application/json`, compared without case.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MediaType<'a>(&'a [u8]);

impl MediaType<'_> {
    pub(crate) fn is(self, want: &str) -> bool {
        self.0.eq_ignore_ascii_case(want.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(v: &'static [u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_bytes(v).unwrap());
        h
    }

    #[test]
    fn media_types_ignore_parameters_and_case() {
        assert!(media_type(&HeaderMap::new()).is_none());
        let h = with_type(b"Application/JSON; charset=utf-8");
        assert!(media_type(&h).unwrap().is("application/json"));
        let h = with_type(b"application/x-www-form-urlencoded;charset=UTF-8");
        assert!(media_type(&h)
            .unwrap()
            .is("application/x-www-form-urlencoded"));
        let h = with_type(b"\xff\xfe");
        assert!(!media_type(&h).unwrap().is("application/json"));
    }

    #[test]
    fn json_answers_are_never_sniffed() {
        for r in [
            json(StatusCode::OK, &serde_json::json!({"a": 1})),
            error(StatusCode::BAD_REQUEST, "invalid_request", "x"),
            method_not_allowed("GET"),
        ] {
            assert_eq!(r.headers()["x-content-type-options"], "nosniff");
            assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        }
    }
}
