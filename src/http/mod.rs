//! HTTP plumbing shared by both listeners: the body type, JSON answers, the
//! one error → response mapping, and bounded body reading.

pub mod public;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use crate::server::Listening;

/// Either a body we built or one streamed from the upstream, with no boxing.
pub type Body = Either<Full<Bytes>, crate::proxy::UpstreamBody>;

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

impl Listener {
    pub fn name(self) -> &'static str {
        match self {
            Listener::Public => "public",
            Listener::Admin => "admin",
        }
    }
}

/// Entry point for every request on either listener.
pub async fn handle(
    ctx: &Listening,
    peer: SocketAddr,
    req: http::Request<Incoming>,
) -> Response<Body> {
    let head = req.method() == http::Method::HEAD;
    let mut resp = match ctx.kind {
        Listener::Public => public::handle(&ctx.state, &ctx.upstream, peer, req).await,
        // Boxed: the admin handlers' state is several KiB, and an unboxed
        // future is as large as its largest branch. Every public request would
        // carry (and copy) that size; admin requests are rare.
        Listener::Admin => Box::pin(crate::admin::handle(&ctx.state, peer, req)).await,
    };
    // A HEAD answer has no body; HTTP/2 clients treat DATA frames on one as a
    // stream error. Upstream answers to HEAD are already empty.
    if head && matches!(resp.body(), Either::Left(_)) {
        *resp.body_mut() = full(Bytes::new());
    }
    resp
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

/// A JSON answer. Serialising our own plain structs cannot fail; if it ever
/// did, the client still gets a well-formed JSON error rather than a panic.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| {
        br#"{"error":"server_error","error_description":"internal error"}"#.to_vec()
    });
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Marks an answer as holding a secret: no cache may keep it.
pub fn no_store(mut r: Response<Body>) -> Response<Body> {
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
pub fn error(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    json(
        status,
        &ErrorBody {
            error: code,
            error_description: description,
        },
    )
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Timeout,
    /// The client broke off or sent a malformed body.
    Aborted,
}

impl BodyError {
    pub fn description(self) -> &'static str {
        match self {
            BodyError::TooLarge => "request body is too large",
            BodyError::Timeout => "request body was not received in time",
            BodyError::Aborted => "request body could not be read",
        }
    }
}

/// Reads a whole body, refusing more than `limit` bytes or taking longer than `timeout`.
pub async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let limited = Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(BodyError::TooLarge)
            } else {
                Err(BodyError::Aborted)
            }
        }
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// Declared `Content-Length` over `limit`: refuse before reading a byte.
pub fn declared_too_large(headers: &http::HeaderMap, limit: usize) -> bool {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "method not allowed on this path",
    );
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}
