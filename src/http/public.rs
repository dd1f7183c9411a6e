//! The public listener: health, the token endpoint, and the authenticated
//! proxy path (authenticate → rewrite → forward → filter the response).

use std::net::SocketAddr;

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use serde::Serialize;

use super::{error, json, no_store, read_body, Body};
use crate::audit;
use crate::proxy::{Identity, Upstream};
use crate::state::State;
use crate::tokens::access::AccessError;
use crate::tokens::exchange::{body_kind, parse_body, ExchangeError, Exchanger};

/// DPA's token path, and the short one.
pub const TOKEN_PATHS: [&str; 2] = ["/iwc/api/security/oauth/token", "/token"];

pub async fn handle(
    state: &State,
    upstream: &Upstream,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    if !host_ok(&req) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "an HTTP/1.1 request needs exactly one Host header",
        );
    }
    match route(req.uri().path()) {
        Route::Health => health(req.method()),
        // Boxed so proxied requests do not carry the token endpoint's state.
        Route::Token => Box::pin(token_endpoint(state, peer, req)).await,
        Route::Proxy => proxied(state, upstream, peer, req).await,
    }
}

/// Where a public request goes. Exact paths only: hyper does not normalise,
/// so `/token/` or `//token` are proxied (and need a bearer token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Token,
    Proxy,
}

#[inline]
pub fn route(path: &str) -> Route {
    match path {
        "/healthz" | "/readyz" => Route::Health,
        p if TOKEN_PATHS.contains(&p) => Route::Token,
        _ => Route::Proxy,
    }
}

/// HTTP/1.1 requires exactly one `Host` (RFC 9112 §3.2); hyper does not check it.
fn host_ok(req: &Request<Incoming>) -> bool {
    let hosts = req.headers().get_all(HOST).iter().count();
    match req.version() {
        Version::HTTP_11 => hosts == 1,
        _ => hosts <= 1,
    }
}

fn health(method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return super::method_not_allowed("GET, HEAD");
    }
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
    }
    json(StatusCode::OK, &Health { status: "ok" })
}

/// `POST /token` and DPA's path: RFC 6749 §6 refresh grant.
async fn token_endpoint(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return no_store(super::method_not_allowed("POST"));
    }
    let user_agent = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let refuse = |e: ExchangeError| exchange_error(state, &e, peer, user_agent.as_deref());
    let limits = &state.config.public;
    let kind = match body_kind(req.headers().get(CONTENT_TYPE).map(|v| v.as_bytes())) {
        Ok(k) => k,
        Err(e) => return refuse(e),
    };
    if super::declared_too_large(req.headers(), limits.token_body_limit) {
        return refuse(ExchangeError::InvalidRequest(
            "request body is too large".into(),
        ));
    }
    let body = match read_body(
        req.into_body(),
        limits.token_body_limit,
        limits.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return refuse(ExchangeError::InvalidRequest(e.description().into())),
    };
    let request = match parse_body(kind, &body) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    let exchanger = Exchanger {
        hasher: &state.hasher,
        store: &state.store,
        access: &state.access,
        clock: &state.clock,
        access_ttl: state.config.access_ttl,
    };
    match exchanger.exchange(request, Some(peer.ip()), user_agent.as_deref()) {
        Ok((answer, refresh)) => {
            tracing::info!(%peer, token_id = refresh.id, token_name = %refresh.name, expires_in = answer.expires_in, "access token issued");
            state.audit.record(&audit::Event {
                event: "token.exchanged",
                actor: Some("client"),
                client_ip: Some(peer.ip().to_canonical()),
                token_id: Some(refresh.id),
                token_name: Some(&refresh.name),
                user_agent: user_agent.as_deref(),
                ..Default::default()
            });
            no_store(json(StatusCode::OK, &answer))
        }
        Err(e) => refuse(e),
    }
}

fn exchange_error(
    state: &State,
    e: &ExchangeError,
    peer: SocketAddr,
    user_agent: Option<&str>,
) -> Response<Body> {
    let (status, code, text): (StatusCode, &str, &str) = match e {
        ExchangeError::InvalidRequest(t) => (StatusCode::BAD_REQUEST, "invalid_request", t),
        ExchangeError::UnsupportedGrantType => (
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=refresh_token is supported",
        ),
        ExchangeError::InvalidGrant { text, .. } => {
            (StatusCode::BAD_REQUEST, "invalid_grant", text)
        }
        ExchangeError::Internal => (
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the gateway cannot issue tokens right now; try again",
        ),
    };
    let known = match e {
        ExchangeError::InvalidGrant { token: Some(t), .. } => Some(t),
        _ => None,
    };
    // A refused exchange is the client's doing: info, not an error.
    tracing::info!(%peer, error = code, reason = text, token_id = known.map(|t| t.id), "token exchange refused");
    let reason = format!("{code}: {text}");
    state.audit.record(&audit::Event {
        event: "token.exchange_refused",
        actor: Some("client"),
        client_ip: Some(peer.ip().to_canonical()),
        token_id: known.map(|t| t.id),
        token_name: known.map(|t| t.name.as_str()),
        reason: Some(&reason),
        user_agent,
    });
    no_store(error(status, code, text))
}

/// Why the `Authorization` header was refused.
#[derive(Debug)]
pub enum BearerError {
    Missing,
    Repeated,
    Scheme,
    Token(AccessError),
}

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

/// RFC 6750 §3 answer.
fn bearer_refusal(e: BearerError, peer: SocketAddr) -> Response<Body> {
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
        BearerError::Token(a) => {
            tracing::debug!(%peer, reason = a.reason(), "access token refused");
            (StatusCode::UNAUTHORIZED, "invalid_token", a.description())
        }
    };
    let mut r = error(status, code, text);
    let challenge =
        format!(r#"Bearer realm="tokengate", error="{code}", error_description="{text}""#);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    r
}

async fn proxied(
    state: &State,
    upstream: &Upstream,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    // Stage 1: authenticate.
    let identity = {
        let token = match bearer_token(req.headers()) {
            Ok(t) => t,
            Err(e) => return bearer_refusal(e, peer),
        };
        let want_identity = upstream.identity_headers();
        let checked = state
            .access
            .validate(token, state.clock.now(), state.clock.unix(), |r| {
                want_identity.then(|| Identity::of(r))
            });
        match checked {
            Ok(id) => id,
            Err(e) => return bearer_refusal(BearerError::Token(e), peer),
        }
    };
    // Stages 2–4: rewrite, forward, filter (in the proxy module).
    match upstream.forward(req, peer, identity).await {
        Ok(resp) => resp.map(Either::Right),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "upstream request failed");
            let (status, code) = e.status_and_code();
            error(status, code, e.client_text())
        }
    }
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
