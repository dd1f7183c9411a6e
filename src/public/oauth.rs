//! The token endpoint's standard companions, for OAuth client libraries
//! and scripts:
//!
//! - `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata;
//! - `POST /token/revoke`: RFC 7009 revocation by the token's holder;
//! - `POST /token/introspect`: RFC 7662 introspection (`introspect`);
//! - `GET /token/info`: what the presented access token is and may do;
//! - `GET /token/docs`: the human-readable page the metadata's
//!   `service_documentation` names;
//! - `POST /token/leaked`: reports of leaked tokens (`leaked`).
//!
//! They are found after the bearer check (`Side::of` runs on a refused
//! request, and on an admitted one just before it is forwarded), so an
//! ordinary proxied request pays nothing for them before its token check.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::token::token_form;
use super::{bearer, bearer_token, too_many_failures, STALE, TOKEN_PATHS};
use crate::audit;
use crate::authority::{RevokeError, Revoked};
use crate::restrict::{RateLimit, RestrictionSpec};
use crate::state::State;
use crate::wire::{error, json, method_not_allowed, no_store, unavailable, Reply};

/// The metadata document's path (RFC 8414 §3).
pub(crate) const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
pub(crate) const REVOKE_PATH: &str = "/token/revoke";
pub(crate) const INFO_PATH: &str = "/token/info";
pub(crate) const INTROSPECT_PATH: &str = "/token/introspect";
pub(crate) const DOCS_PATH: &str = "/token/docs";

/// The page `/token/docs` serves: the tokens guide.
const DOCS: &str = include_str!("../../docs/tokens.md");

/// One of the side endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Metadata,
    Revoke,
    Introspect,
    Info,
    Docs,
    Leaked,
}

impl Side {
    /// The side endpoint at `path` (exact, as the other routes), if any.
    #[inline]
    pub(crate) fn of(path: &str) -> Option<Side> {
        match path {
            METADATA_PATH => Some(Side::Metadata),
            REVOKE_PATH => Some(Side::Revoke),
            INTROSPECT_PATH => Some(Side::Introspect),
            INFO_PATH => Some(Side::Info),
            DOCS_PATH => Some(Side::Docs),
            super::leaked::LEAKED_PATH => Some(Side::Leaked),
            _ => None,
        }
    }
}

/// The answer of `side`, but `Info`, which the bearer check's verdict
/// decides (`info`).
pub(super) async fn serve(
    side: Side,
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Reply {
    match side {
        Side::Metadata => metadata(state, &req),
        Side::Revoke => revoke(state, peer, req).await,
        Side::Introspect => super::introspect::serve(state, peer, req).await,
        Side::Docs => docs(req.method()),
        Side::Info => info(state, &req),
        Side::Leaked => super::leaked::report(state, peer, req).await,
    }
}

/// RFC 8414 §2 metadata. Every URL starts with the issuer.
#[derive(Serialize)]
struct Metadata<'a> {
    issuer: &'a str,
    token_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    /// No authorization endpoint: no response type is offered.
    response_types_supported: [&'static str; 0],
    grant_types_supported: [&'static str; 1],
    /// A refresh token is its own credential: no client authentication.
    token_endpoint_auth_methods_supported: [&'static str; 1],
    /// Holding the token is the proof.
    revocation_endpoint_auth_methods_supported: [&'static str; 1],
    /// An administrator's account (HTTP Basic), or a bearer access token
    /// allowed to introspect.
    introspection_endpoint_auth_methods_supported: [&'static str; 2],
    service_documentation: String,
}

fn metadata(state: &State, req: &Request<Incoming>) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    let issuer = match &state.startup_config.public.issuer {
        Some(i) => i.clone(),
        None => format!("https://{}", request_host(req)),
    };
    let doc = Metadata {
        token_endpoint: format!("{issuer}{}", TOKEN_PATHS[0]),
        revocation_endpoint: format!("{issuer}{REVOKE_PATH}"),
        introspection_endpoint: format!("{issuer}{INTROSPECT_PATH}"),
        response_types_supported: [],
        grant_types_supported: ["refresh_token"],
        token_endpoint_auth_methods_supported: ["none"],
        revocation_endpoint_auth_methods_supported: ["none"],
        introspection_endpoint_auth_methods_supported: ["client_secret_basic", "bearer"],
        service_documentation: format!("{issuer}{DOCS_PATH}"),
        issuer: &issuer,
    };
    json(StatusCode::OK, &doc)
}

/// The host the client named (`Host`, or an HTTP/2 request's authority),
/// already checked by the listener (`host_ok`).
fn request_host(req: &Request<Incoming>) -> String {
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_else(|| "localhost".to_owned())
}

fn docs(method: &Method) -> Reply {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    let mut r = Reply::new(crate::wire::full(Bytes::from_static(DOCS.as_bytes())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/markdown; charset=utf-8"),
    );
    r
}

/// RFC 7009: `200` for any well-formed request, whether or not the token
/// was known; `400 invalid_request` for a malformed one. Throttled as the
/// token endpoint is, before the body is read.
async fn revoke(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Reply {
    if req.method() != Method::POST {
        return no_store(method_not_allowed("POST"));
    }
    let core = &state.authority;
    let (ip, now) = (peer.ip(), core.now());
    if let Err(t) = core.admit_client(ip, now) {
        return no_store(too_many_failures(t));
    }
    let user_agent = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let token = match token_form(state, req).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match core.revoke(&token, ip, now).await {
        Ok(revoked) => {
            record(state, peer, &revoked, user_agent.as_deref());
            no_store(crate::wire::empty(StatusCode::OK))
        }
        Err(RevokeError::Stale) => no_store(unavailable(STALE)),
        Err(RevokeError::Store(e)) => {
            tracing::error!(%peer, error = %e, "revocation failed in the store");
            no_store(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token could not be revoked; try again",
            ))
        }
    }
}

/// The log and audit lines of a revocation (never the token).
fn record(state: &State, peer: SocketAddr, revoked: &Revoked, user_agent: Option<&str>) {
    let (event, token_id, token_name) = match revoked {
        Revoked::Refresh(r) => {
            tracing::info!(%peer, token_id = r.id, token_name = %r.name, "refresh token revoked by its holder");
            (
                "refresh_token.revoked_by_holder",
                r.id,
                Some(r.name.as_str()),
            )
        }
        Revoked::Access { refresh_id, .. } => {
            tracing::info!(%peer, token_id = refresh_id, "access token revoked by its holder");
            ("access_token.revoked_by_holder", *refresh_id, None)
        }
        Revoked::Unknown => {
            tracing::debug!(%peer, "revocation of a token not known here");
            return;
        }
    };
    state.view.audit.record(&audit::Event {
        event,
        actor: Some("client"),
        client_ip: Some(peer.ip().to_canonical()),
        token_id: Some(token_id),
        token_name,
        user_agent,
        ..Default::default()
    });
}

/// `/token/info`'s answer.
#[derive(Serialize)]
struct Info<'a> {
    /// The refresh token's id and name.
    refresh_token_id: u64,
    name: &'a str,
    /// The access token's expiry (Unix seconds) and what is left of it.
    expires_at: u64,
    expires_in: u64,
    /// The refresh token's expiry (Unix seconds); `null`: never.
    refresh_token_expires_at: Option<u64>,
    /// As the admin API shows them; `null`: full access.
    restrictions: Option<&'a RestrictionSpec>,
    /// The rate and how many requests would pass now; `null`: no rate.
    rate_limit: Option<RateState>,
}

#[derive(Serialize)]
struct RateState {
    #[serde(flatten)]
    limit: RateLimit,
    remaining: u64,
}

/// `GET /token/info`, for a request the bearer check admitted (or
/// refused only by the token's scopes or rate: asking what a token may do
/// is always allowed).
fn info(state: &State, req: &Request<Incoming>) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return no_store(method_not_allowed("GET, HEAD"));
    }
    let core = &state.authority;
    let Ok(token) = bearer_token(req.headers()) else {
        return bearer::refusal(crate::authority::BearerError::Missing);
    };
    let d = match core.describe(token, core.now()) {
        Ok(d) => d,
        Err(e) => {
            return bearer::challenge(StatusCode::UNAUTHORIZED, "invalid_token", &e.description())
        }
    };
    let wall = core.clock.unix();
    let body = Info {
        refresh_token_id: d.refresh.id,
        name: &d.refresh.name,
        expires_at: d.access_expires,
        expires_in: d.access_expires.saturating_sub(wall),
        refresh_token_expires_at: d.refresh.expires,
        restrictions: d.restrictions.as_ref(),
        rate_limit: d.rate.map(|(per_second, burst, remaining)| RateState {
            limit: RateLimit { per_second, burst },
            remaining,
        }),
    };
    no_store(json(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_paths_are_exact() {
        assert_eq!(Side::of("/token/revoke"), Some(Side::Revoke));
        assert_eq!(Side::of(METADATA_PATH), Some(Side::Metadata));
        assert_eq!(Side::of("/token/info"), Some(Side::Info));
        assert_eq!(Side::of("/token/introspect"), Some(Side::Introspect));
        for p in ["/token/revoke/", "/token/Info", "/api/token/info", "/"] {
            assert_eq!(Side::of(p), None, "{p}");
        }
    }
}
