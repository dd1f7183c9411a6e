//! The admin listener: HTTP Basic on every request, and the refresh-token API.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | /api/refresh-tokens | 201 the new token, its string shown this once |
//! | GET | /api/refresh-tokens | 200 every token (never a token string) |
//! | DELETE | /api/refresh-tokens/{id} | 204, or 404 for an unknown id |
//! | POST | /api/refresh-tokens/delete | 200 `{"deleted": [...], "not_found": [...]}` |

pub mod auth;
mod tokens;

use std::net::SocketAddr;

use http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::http::{error, method_not_allowed, Body};
use crate::state::State;

/// Admin request bodies are small JSON documents.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;

pub async fn handle(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return crate::http::json(StatusCode::OK, &serde_json::json!({"status": "ok"}));
    }
    let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if !state.admin.check(header).await {
        tracing::info!(%peer, path = %path, "admin authentication failed");
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "log in as user admin with the admin password (HTTP Basic)",
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="tokengate admin", charset="UTF-8""#),
        );
        return r;
    }
    let method = req.method().clone();
    match (path.as_str(), path.strip_prefix("/api/refresh-tokens/")) {
        ("/api/refresh-tokens", _) => match method {
            Method::GET => tokens::list(state),
            Method::POST => tokens::create(state, peer, req).await,
            _ => method_not_allowed("GET, POST"),
        },
        (_, Some("delete")) => match method {
            Method::POST => tokens::delete_many(state, peer, req).await,
            _ => method_not_allowed("POST"),
        },
        (_, Some(id)) => match method {
            Method::DELETE => tokens::delete_one(state, peer, id).await,
            _ => method_not_allowed("DELETE"),
        },
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}
