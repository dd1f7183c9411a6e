//! The admin listener: the Refresh Token Management page, its login
//! sessions, and the refresh-token API (HTTP Basic or a page session).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | / and /assets/… | the page (no login needed to load it) |
//! | POST | /api/login | 200 + session cookie, or 401 / 429 |
//! | POST | /api/logout | 204, session ended |
//! | GET | /api/session | 200 who is logged in, the CSRF token, defaults |
//! | POST | /api/refresh-tokens | 201 the new token, its string shown this once |
//! | GET | /api/refresh-tokens | 200 every token (never a token string) |
//! | DELETE | /api/refresh-tokens/{id} | 204, or 404 for an unknown id |
//! | POST | /api/refresh-tokens/delete | 200 `{"deleted": [...], "not_found": [...]}` |

pub mod auth;
pub mod session;
mod tokens;
mod ui;

use std::net::SocketAddr;

use http::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::audit::Event;
use crate::http::{error, json, method_not_allowed, no_store, Body};
use crate::state::State;

/// Admin request bodies are small JSON documents.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;
/// Sent by the page: a 401 then carries no `WWW-Authenticate: Basic`, so the
/// browser shows our login form instead of its own password pop-up.
const UI_HEADER: &str = "x-requested-with";

/// How a request was authenticated.
enum Principal {
    Basic,
    /// A page session; its CSRF token guards every state-changing call.
    Session {
        csrf: String,
    },
}

pub async fn handle(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if method == Method::GET || method == Method::HEAD {
        if let Some(r) = ui::asset(&path) {
            return r;
        }
    }
    match path.as_str() {
        "/healthz" => return json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/api/login" if method == Method::POST => return login(state, peer, req).await,
        "/api/login" => return method_not_allowed("POST"),
        _ => {}
    }
    let principal = match authenticate(state, peer, &req).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Principal::Session { csrf } = &principal {
        let safe = method == Method::GET || method == Method::HEAD;
        let presented = req
            .headers()
            .get(session::CSRF_HEADER)
            .map(|v| v.as_bytes());
        if !safe && !session::csrf_matches(csrf, presented) {
            return error(
                StatusCode::FORBIDDEN,
                "csrf",
                "the request lacks the page's X-CSRF-Token; reload the page and try again",
            );
        }
    }
    match (path.as_str(), path.strip_prefix("/api/refresh-tokens/")) {
        ("/api/session", _) => match method {
            Method::GET => session_info(state, &principal),
            _ => method_not_allowed("GET"),
        },
        ("/api/logout", _) => match method {
            Method::POST => logout(state, peer, &req),
            _ => method_not_allowed("POST"),
        },
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

fn unauthorized(req: &Request<Incoming>, text: &str) -> Response<Body> {
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", text);
    if !req.headers().contains_key(UI_HEADER) {
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="tokengate admin", charset="UTF-8""#),
        );
    }
    r
}

fn too_many(wait: std::time::Duration) -> Response<Body> {
    let secs = wait.as_secs().max(1);
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        &format!("too many failed logins from this address; try again in {secs} s"),
    );
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    r
}

fn audit_login(state: &State, peer: SocketAddr, ok: bool, how: &str) {
    state.audit.record(&Event {
        event: if ok {
            "admin.login"
        } else {
            "admin.login_failed"
        },
        actor: Some("admin"),
        client_ip: Some(peer.ip().to_canonical()),
        reason: Some(how),
        ..Default::default()
    });
}

/// A live page session, else HTTP Basic (throttled per IP).
async fn authenticate(
    state: &State,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<Principal, Response<Body>> {
    let now = state.clock.now();
    if let Some(cookie) = session::cookie_value(req.headers()) {
        if let Some(csrf) = state.admin.sessions.lookup(&cookie, now) {
            return Ok(Principal::Session { csrf });
        }
    }
    let Some(header) = req.headers().get(AUTHORIZATION) else {
        return Err(unauthorized(
            req,
            "log in as user admin with the admin password (HTTP Basic or the page's login)",
        ));
    };
    let ip = peer.ip().to_canonical();
    if let Err(wait) = state.admin.throttle.check(ip, now) {
        return Err(too_many(wait));
    }
    if state.admin.check(Some(header.as_bytes())).await {
        state.admin.throttle.succeeded(ip);
        Ok(Principal::Basic)
    } else {
        state.admin.throttle.failed(ip, now);
        tracing::info!(%peer, "admin authentication failed");
        audit_login(state, peer, false, "http basic");
        Err(unauthorized(req, "wrong user name or password"))
    }
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default = "admin_user")]
    username: String,
    password: String,
}

fn admin_user() -> String {
    auth::ADMIN_USER.to_owned()
}

#[derive(Serialize)]
struct SessionInfo {
    user: &'static str,
    /// Present for page sessions: send it as `X-CSRF-Token` on changes.
    csrf: Option<String>,
    default_refresh_ttl_days: u64,
    session_ttl_seconds: u64,
}

fn session_info(state: &State, p: &Principal) -> Response<Body> {
    no_store(json(
        StatusCode::OK,
        &SessionInfo {
            user: auth::ADMIN_USER,
            csrf: match p {
                Principal::Session { csrf } => Some(csrf.clone()),
                Principal::Basic => None,
            },
            default_refresh_ttl_days: state.config.refresh_ttl.as_secs() / 86_400,
            session_ttl_seconds: state.admin.sessions.ttl().as_secs(),
        },
    ))
}

async fn login(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let now = state.clock.now();
    let ip = peer.ip().to_canonical();
    if let Err(wait) = state.admin.throttle.check(ip, now) {
        return too_many(wait);
    }
    let body = match tokens::json_body(req, state).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(form) = serde_json::from_value::<LoginForm>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send {\"username\": \"admin\", \"password\": \"…\"}",
        );
    };
    if !state.admin.verify(&form.username, form.password).await {
        state.admin.throttle.failed(ip, now);
        tracing::info!(%peer, "admin login failed");
        audit_login(state, peer, false, "page");
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong user name or password",
        );
    }
    state.admin.throttle.succeeded(ip);
    let (cookie, csrf) = match state.admin.sessions.create(now) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "random generator failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again",
            );
        }
    };
    audit_login(state, peer, true, "page");
    tracing::info!(%peer, "admin logged in");
    let mut r = session_info(state, &Principal::Session { csrf });
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&cookie, state.admin.sessions.ttl()))
    {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

fn logout(state: &State, peer: SocketAddr, req: &Request<Incoming>) -> Response<Body> {
    if let Some(cookie) = session::cookie_value(req.headers()) {
        state.admin.sessions.remove(&cookie);
    }
    state.audit.record(&Event {
        event: "admin.logout",
        actor: Some("admin"),
        client_ip: Some(peer.ip().to_canonical()),
        ..Default::default()
    });
    let mut r = Response::new(crate::http::full(""));
    *r.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}
