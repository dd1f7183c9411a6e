//! The admin listener: the Refresh Token Management page, its login
//! sessions, and the refresh-token API (HTTP Basic or a page session).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | / and /assets/… | the page (no login needed to load it) |
//! | GET | /healthz | 200 `{"status": "ok"}` (no login) |
//! | GET | /api/openapi.json | this API's OpenAPI 3.1 document (no login) |
//! | POST | /api/login | 200 + session cookie, or 401 / 429 |
//! | POST | /api/logout | 204, session ended |
//! | GET | /api/session | 200 who is logged in, the CSRF token, defaults |
//! | GET | /api/stats | 200 live access tokens, refresh tokens, public connections |
//! | GET | /metrics | 200 Prometheus metrics (404 with `metrics.enabled = false`) |
//! | POST | /api/refresh-tokens | 201 the new token, its string shown this once |
//! | GET | /api/refresh-tokens | 200 every token (never a token string); `?violations=true`: those breaking the lifetime policy |
//! | POST | /api/refresh-tokens/{id}/suspend, …/resume | 200 the token as now |
//! | DELETE | /api/refresh-tokens/{id} | 204, or 404 for an unknown id |
//! | POST | /api/refresh-tokens/delete | 200 `{"deleted": [...], "not_found": [...]}` |
//! | GET, POST | /api/users | 200 the accounts; 201 a new one |
//! | PATCH, DELETE | /api/users/{name} | 200 the account as changed; 204 |
//!
//! Each authenticated route needs a role (`permissions`); a refusal is a
//! 403 `forbidden` naming the least role that may, and changes nothing.

//!
//! - `api`: the request and answer types (shared with the CLI and the tests).
//! - `session`: page sessions with CSRF tokens (passwords are checked by
//!   `passwords`, shared with the public listener's introspection).
//!   `origin`: cross-site requests refused.
//! - `tokens`: the refresh-token handlers. `ui`: the page's embedded files.
//! - `accounts`: `/api/users`; `accounts_login`: starting a session (the
//!   password form, single sign-on); `permissions`: who may call what.

mod accounts;
mod accounts_login;
pub mod api;
mod checked;
mod origin;
mod permissions;
pub(crate) mod session;
mod sso;
mod tokens;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE, WWW_AUTHENTICATE,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::Value;

use crate::audit::Actor;
use crate::passwords::LoginRefused;
use crate::roles::{Role, Via, Who};
use crate::server::{Handler, Load, PeerUid};
use crate::state::State;
use crate::wire::{
    empty, error, json, media_type, method_not_allowed, no_store, read_body, strip_body_for_head,
    too_many_requests, Reply,
};
use api::{ClusterStats, Login, Rotated, SessionInfo, Stats};
use session::AdminAuth;

/// Where the admin listener publishes its API contract, and the contract
/// itself: the admin API and the public listener's token endpoint, kept in
/// the repository as `docs/openapi.json` and fuzzed against a running
/// gateway by `tests/integration/openapi.rs`.
const OPENAPI_PATH: &str = "/api/openapi.json";
const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// Admin request bodies are small JSON documents.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;
/// Sent by the page: a 401 then carries no `WWW-Authenticate: Basic`, so the
/// browser shows our login form instead of its own password pop-up.
const UI_HEADER: &str = "x-requested-with";

/// Who made a request, and for a page session its CSRF token, which guards
/// every state-changing call. HTTP Basic and the local Unix socket (its file
/// permissions and the peer's user id are the proof) carry none.
pub(crate) struct Principal {
    pub(crate) who: Who,
    pub(crate) csrf: Option<String>,
}

/// The admin listener's handler: the shared state, and the administrator's
/// credential, sessions and login throttle (which only this listener uses).
pub(crate) struct AdminHandler {
    pub(crate) state: Arc<State>,
    pub(crate) auth: Arc<AdminAuth>,
    /// Serving the local Unix socket (`admin.socket`), not the TCP listener.
    pub(crate) local: bool,
    /// The public workers' connection counts, for `GET /api/stats`.
    pub(crate) public: Load,
    /// `POST /api/reload`.
    pub(crate) reloader: Arc<crate::reload::Reloader>,
    /// Single sign-on (`[admin.oidc]`), if configured.
    pub(crate) sso: Option<Arc<crate::sso::Sso>>,
}

impl Handler for AdminHandler {
    type Body = Full<Bytes>;
    type Report = ();

    fn wrap(reply: Reply) -> Reply {
        reply
    }

    fn conn_stats(&self) -> Option<&crate::metrics::ConnStats> {
        // The local socket has no TLS and is not the admin listener.
        (!self.local)
            .then(|| self.state.view.metrics.admin_conns())
            .flatten()
    }

    fn handle(
        &self,
        peer: crate::identify::Peer,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = (Response<Full<Bytes>>, ())> + Send {
        // Administrators connect directly: the TCP peer is the client.
        let peer = peer.addr;
        // Boxed: the admin handlers' state is several KiB and admin requests
        // are rare; a small future keeps each connection task small.
        Box::pin(async move {
            let head = req.method() == Method::HEAD;
            let changes = !(head || req.method() == Method::GET);
            let mut r = self.dispatch(peer, req).await;
            if changes {
                // A change's webhook events are in the outbox before its answer.
                self.state.view.webhooks.settled().await;
            }
            if head {
                strip_body_for_head(&mut r);
            }
            (r, ())
        })
    }
}

impl AdminHandler {
    fn body_read_timeout(&self) -> Duration {
        self.state.startup_config.admin.limits.body_read_timeout
    }

    async fn dispatch(&self, peer: SocketAddr, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        // The page, its assets, the health check and the published API
        // contract: no login, nothing secret.
        if let Some(r) = ui::asset(&path).or_else(|| public_document(&path)) {
            return match method {
                Method::GET | Method::HEAD => r,
                _ => method_not_allowed("GET, HEAD"),
            };
        }
        // Single sign-on's endpoints: before any login, a top-level
        // navigation from the identity provider.
        if let Some(r) = self.sso_route(peer, &req).await {
            return r;
        }
        // Before the login and any credential check: a request another
        // site's page made costs no password hash and no throttle count.
        if path.starts_with("/api/") {
            if let Some(why) = origin::cross_site_refusal(&method, req.uri(), req.headers()) {
                tracing::info!(%peer, %path, reason = why, "cross-site admin request refused");
                return error(StatusCode::FORBIDDEN, "cross_site", why);
            }
        }
        match path.as_str() {
            "/api/login" if method == Method::POST => return self.login(peer, req).await,
            "/api/login" => return method_not_allowed("POST"),
            _ => {}
        }
        let principal = match self.authenticate(peer, &req).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        if let Some(csrf) = &principal.csrf {
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
        // Fail closed: a route the table does not name (an unknown path, a
        // method the path lacks, or an endpoint added without a row) is for
        // admins only, so nothing new is ever open to every role by mistake.
        let action = permissions::action_of(&method, &path).unwrap_or(permissions::Action::Operate);
        if !action.permits(principal.who.role) {
            tracing::info!(%peer, user = %principal.who.user, role = %principal.who.role, %method, %path, "admin request refused: role");
            return permissions::forbidden(&method, &path, &principal.who, action);
        }
        let by = Actor {
            peer,
            who: principal.who.clone(),
            uid: req.extensions().get::<PeerUid>().map(|u| u.0),
        };
        if let Some(rest) = path.strip_prefix("/api/users") {
            return match (rest, rest.strip_prefix('/')) {
                ("", _) => match method {
                    Method::GET | Method::HEAD => self.list_users(),
                    Method::POST => self.create_user(&by, req).await,
                    _ => method_not_allowed("GET, POST"),
                },
                (_, Some(name)) if !name.is_empty() => match method {
                    Method::PATCH => {
                        let name = name.to_owned();
                        self.edit_user(&by, &name, req).await
                    }
                    Method::DELETE => self.delete_user(&by, name).await,
                    _ => method_not_allowed("DELETE, PATCH"),
                },
                _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
            };
        }
        match (path.as_str(), path.strip_prefix("/api/refresh-tokens/")) {
            ("/api/session", _) => match method {
                Method::GET => self.session_info(&principal),
                _ => method_not_allowed("GET"),
            },
            ("/api/stats", _) => match method {
                Method::GET => self.stats(),
                _ => method_not_allowed("GET"),
            },
            ("/metrics", _) => match method {
                Method::GET | Method::HEAD => {
                    crate::metrics::scrape_reply(self.state.view.scrape())
                }
                _ => method_not_allowed("GET, HEAD"),
            },
            ("/api/cluster/rotate", _) => match method {
                Method::POST => self.rotate(&by).await,
                _ => method_not_allowed("POST"),
            },
            ("/api/reload", _) => match method {
                Method::POST => self.reload(&by).await,
                _ => method_not_allowed("POST"),
            },
            ("/api/logout", _) => match method {
                Method::POST => self.logout(&by, &req).await,
                _ => method_not_allowed("POST"),
            },
            ("/api/refresh-tokens", _) => match method {
                Method::GET => self.list(&by, req.uri().query()),
                Method::POST => self.create(&by, req).await,
                _ => method_not_allowed("GET, POST"),
            },
            (_, Some("delete")) => match method {
                Method::POST => self.delete_many(&by, req).await,
                _ => method_not_allowed("POST"),
            },
            (_, Some(rest)) if rest.ends_with("/rotate") => match method {
                Method::POST => {
                    let id = rest.trim_end_matches("/rotate").to_owned();
                    self.rotate_secret(&by, &id, req).await
                }
                _ => method_not_allowed("POST"),
            },
            (_, Some(rest)) if rest.ends_with("/suspend") => match method {
                Method::POST => {
                    let id = rest.trim_end_matches("/suspend").to_owned();
                    self.suspend(&by, &id, req).await
                }
                _ => method_not_allowed("POST"),
            },
            (_, Some(rest)) if rest.ends_with("/resume") => match method {
                Method::POST => {
                    let id = rest.trim_end_matches("/resume").to_owned();
                    self.resume(&by, &id, req).await
                }
                _ => method_not_allowed("POST"),
            },
            (_, Some(id)) => match method {
                Method::DELETE => self.delete_one(&by, id).await,
                Method::PATCH => {
                    let id = id.to_owned();
                    self.edit(&by, &id, req).await
                }
                _ => method_not_allowed("DELETE, PATCH"),
            },
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }
}

/// The health check and the OpenAPI document (`docs/openapi.json`), if
/// `path` names one.
fn public_document(path: &str) -> Option<Reply> {
    match path {
        "/healthz" => Some(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        OPENAPI_PATH => {
            let mut r = Response::new(crate::wire::full(OPENAPI));
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            Some(r)
        }
        _ => None,
    }
}

fn unauthorized(req: &Request<Incoming>, text: &str) -> Reply {
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", text);
    if !req.headers().contains_key(UI_HEADER) {
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="tokengate admin", charset="UTF-8""#),
        );
    }
    r
}

fn too_many(wait: Duration, whose: &str) -> Reply {
    let secs = wait.as_secs().max(1);
    too_many_requests(
        "too_many_attempts",
        &format!("too many failed logins {whose}; try again in {secs} s"),
        secs,
    )
}

fn locked_text(wait: Duration) -> String {
    let secs = wait.as_secs().max(1);
    format!("too many failed logins for this account; try again in {secs} s")
}

fn bad(text: impl AsRef<str>) -> Reply {
    error(StatusCode::BAD_REQUEST, "invalid_request", text.as_ref())
}

/// Reads a JSON body (absent or `application/json` content type), at most
/// `ADMIN_BODY_LIMIT` bytes within `timeout`.
async fn json_body(req: Request<Incoming>, timeout: Duration) -> Result<Value, Reply> {
    if media_type(req.headers()).is_some_and(|t| !t.is("application/json")) {
        return Err(bad("Content-Type must be application/json"));
    }
    let (parts, body) = req.into_parts();
    let body = read_body(&parts, body, ADMIN_BODY_LIMIT, timeout)
        .await
        .map_err(|e| e.reply())?;
    serde_json::from_slice(&body).map_err(|e| bad(format!("body is not valid JSON: {e}")))
}

impl AdminHandler {
    /// A live page session (its account's current role; a disabled or
    /// deleted account's session is gone), else HTTP Basic for any account
    /// (throttled per client and per account).
    async fn authenticate(
        &self,
        peer: SocketAddr,
        req: &Request<Incoming>,
    ) -> Result<Principal, Reply> {
        if self.local {
            return Ok(Principal {
                who: Who {
                    user: crate::passwords::ADMIN_USER.into(),
                    role: Role::Admin,
                    via: Via::Socket,
                },
                csrf: None,
            });
        }
        if let Some(cookie) = session::cookie_value(req.headers()) {
            if let Some(p) = self.session_principal(&cookie).await {
                return Ok(p);
            }
        }
        let Some(header) = req.headers().get(AUTHORIZATION) else {
            return Err(unauthorized(
                req,
                "log in with an account's name and password (HTTP Basic or the page's login)",
            ));
        };
        let Some((user, password)) = crate::passwords::parse_basic(header.as_bytes()) else {
            return Err(unauthorized(req, "wrong user name or password"));
        };
        match self
            .check_password(peer, &user, password, "http basic")
            .await
        {
            Ok(who) => {
                self.note_login(&who.user).await;
                Ok(Principal { who, csrf: None })
            }
            Err(Refused::Throttled(r)) => Err(r),
            Err(Refused::AccountLocked(wait)) => Err(unauthorized(req, &locked_text(wait))),
            Err(Refused::Wrong) => Err(unauthorized(req, "wrong user name or password")),
        }
    }

    /// The page session behind `cookie`, with its account's current role:
    /// from memory, or (shared sessions) from the store on a miss.
    async fn session_principal(&self, cookie: &str) -> Option<Principal> {
        let clock = &self.state.view.clock;
        let now = clock.now();
        let store = &self.state.view.store;
        let found = match self.auth.sessions.lookup(cookie, now) {
            Some(hit) => Some(hit),
            // A cookie of another length was never ours: no database trip.
            None if store.shares_sessions() && cookie.len() == session::COOKIE_CHARS => {
                let fp = session::fingerprint(cookie);
                let wall = clock.unix();
                let st = store.clone();
                match tokio::task::spawn_blocking(move || st.get_session(&fp, wall)).await {
                    Ok(Ok(Some(row))) => {
                        let role = accounts::current_role(store.account(&row.user))?;
                        let who = Who {
                            user: row.user,
                            role,
                            via: row.via,
                        };
                        let left = std::time::Duration::from_secs(row.expires.saturating_sub(wall));
                        self.auth.sessions.insert_shared(
                            fp,
                            who.clone(),
                            row.csrf.clone(),
                            now,
                            left,
                        );
                        Some((who, row.csrf))
                    }
                    Ok(Ok(None)) => None,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "reading a page session failed");
                        None
                    }
                    Err(_) => None,
                }
            }
            None => None,
        };
        let (mut who, csrf) = found?;
        // Read at every request: a role change applies at once, and a
        // disabled or deleted account's session is over.
        match accounts::current_role(store.account(&who.user)) {
            Some(role) => {
                who.role = role;
                Some(Principal {
                    who,
                    csrf: Some(csrf),
                })
            }
            None => {
                self.auth.sessions.remove(cookie);
                None
            }
        }
    }

    /// Checks an account's password (`passwords::Passwords::sign_in`:
    /// throttled per client and per account); audits a failure.
    async fn check_password(
        &self,
        peer: SocketAddr,
        user: &str,
        password: String,
        how: &str,
    ) -> Result<Who, Refused> {
        let now = self.state.view.clock.now();
        let store = &self.state.view.store;
        match self
            .state
            .passwords
            .sign_in(
                store,
                peer.ip(),
                user,
                password,
                now,
                crate::passwords::Listener::Admin,
            )
            .await
        {
            Ok(who) => Ok(who),
            Err(LoginRefused::Throttled(wait)) => {
                Err(Refused::Throttled(too_many(wait, "from this address")))
            }
            Err(LoginRefused::AccountLocked(wait)) => Err(Refused::AccountLocked(wait)),
            Err(LoginRefused::Wrong) => {
                tracing::info!(%peer, "admin authentication failed");
                self.audit_login(peer, user, Via::Password, false, how);
                Err(Refused::Wrong)
            }
        }
    }

    fn session_info(&self, p: &Principal) -> Reply {
        no_store(json(
            StatusCode::OK,
            &SessionInfo {
                user: p.who.user.clone(),
                role: p.who.role,
                via: p.who.via,
                csrf: p.csrf.clone(),
                default_refresh_ttl_days: self.state.startup_config.tokens.refresh_ttl.as_secs()
                    / 86_400,
                session_ttl_seconds: self.auth.sessions.ttl().as_secs(),
            },
        ))
    }

    /// Counts read from memory: no lock held beyond the maps' own shard locks.
    /// Retires every access token: with PostgreSQL every replica's boot
    /// (each draws a new one within a round), with redb this gateway's.
    async fn rotate(&self, by: &Actor) -> Reply {
        let peer = by.peer;
        let state = &self.state;
        let retired = match &state.view.cluster {
            Some(cluster) => match cluster.rotate().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "rotating boots failed");
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "storage_unavailable",
                        "the token store did not confirm the rotation; try again",
                    );
                }
            },
            None => match state.view.access.renew_boot() {
                Ok(_) => 1,
                Err(e) => {
                    tracing::error!(error = %e, "drawing a new boot failed");
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "random_unavailable",
                        "the operating system's random number generator failed; nothing was changed",
                    );
                }
            },
        };
        tracing::warn!(%peer, retired_boots = retired, "every access token retired (rotate)");
        state.view.audit.record(&crate::audit::Event {
            count: Some(retired),
            ..by.event("admin.rotated")
        });
        no_store(json(
            StatusCode::OK,
            &Rotated {
                retired_boots: retired,
            },
        ))
    }

    /// `POST /api/reload`: what SIGHUP does, with the outcome in the answer.
    async fn reload(&self, by: &Actor) -> Reply {
        tracing::info!(peer = %by.peer, user = %by.who.user, "reload requested through the admin API");
        match self
            .reloader
            .reload_by(crate::reload::Trigger::Api, Some(by))
            .await
        {
            Ok(done) => no_store(json(StatusCode::OK, &done)),
            // The request was fine; what it asked to load was not. The old
            // settings stay, and the message names the file or key at fault.
            Err(e) => error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "reload_refused",
                &format!("{e}; the settings and certificate in force stay"),
            ),
        }
    }

    fn stats(&self) -> Reply {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        no_store(json(
            StatusCode::OK,
            &Stats {
                live_access_tokens: count(self.state.view.access.len()),
                refresh_tokens: count(self.state.view.store.len()),
                refresh_tokens_expiring_soon: count(
                    self.state
                        .view
                        .store
                        .expiring_soon(self.state.view.clock.unix()),
                ),
                public_connections: count(self.public.per_worker().iter().sum()),
                access_tokens_evicted: self.state.view.access.evicted(),
                cluster: self.state.view.cluster.as_ref().map(|c| ClusterStats {
                    replica: c.name.clone(),
                    peer_boots: count(self.state.view.access.peers()),
                    staleness_ms: u64::try_from(c.staleness().as_millis()).unwrap_or(u64::MAX),
                    changes_applied: c.applied(),
                }),
            },
        ))
    }

    async fn login(&self, peer: SocketAddr, req: Request<Incoming>) -> Reply {
        let now = self.state.view.clock.now();
        // Refused early, before the body is read; counted only once the
        // body holds a guess.
        if let Err(wait) = self.state.passwords.throttle.check(peer.ip(), now) {
            return too_many(wait, "from this address");
        }
        let body = match json_body(req, self.body_read_timeout()).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let Ok(form) = serde_json::from_value::<Login>(body) else {
            return bad("send {\"username\": \"…\", \"password\": \"…\"}");
        };
        let who = match self
            .check_password(peer, &form.username, form.password, "page")
            .await
        {
            Ok(who) => who,
            Err(Refused::Throttled(r)) => return r,
            Err(Refused::AccountLocked(wait)) => {
                return error(StatusCode::UNAUTHORIZED, "unauthorized", &locked_text(wait))
            }
            Err(Refused::Wrong) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "wrong user name or password",
                )
            }
        };
        let (cookie, csrf) = match self.start_session(&who).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        self.note_login(&who.user).await;
        self.audit_login(peer, &who.user, Via::Password, true, "page");
        tracing::info!(%peer, user = %who.user, "admin logged in");
        let mut r = self.session_info(&Principal {
            who,
            csrf: Some(csrf),
        });
        if let Ok(v) =
            HeaderValue::from_str(&session::set_cookie(&cookie, self.auth.sessions.ttl()))
        {
            r.headers_mut().insert(SET_COOKIE, v);
        }
        r
    }

    async fn logout(&self, by: &Actor, req: &Request<Incoming>) -> Reply {
        if let Some(cookie) = session::cookie_value(req.headers()) {
            self.auth.sessions.remove(&cookie);
            let store = self.state.view.store.clone();
            if store.shares_sessions() {
                let fp = session::fingerprint(&cookie);
                let ended = tokio::task::spawn_blocking(move || store.end_session(&fp)).await;
                if !matches!(ended, Ok(Ok(()))) {
                    tracing::warn!(
                        "ending a page session in the store failed; it ends there at its expiry"
                    );
                }
            }
        }
        self.state.view.audit.record(&by.event("admin.logout"));
        let mut r = empty(StatusCode::NO_CONTENT);
        if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
            r.headers_mut().insert(SET_COOKIE, v);
        }
        r
    }
}

/// Why a password check let nobody in.
enum Refused {
    /// Too many failures from this client: the 429.
    Throttled(Reply),
    /// Too many failures for this account name, from any client: a 401
    /// saying so. Not a 429: the client did nothing wrong itself, and an
    /// unknown name locks out exactly like an account, so the answer tells
    /// no one which names exist.
    AccountLocked(Duration),
    /// A wrong name or password, or a disabled account.
    Wrong,
}
