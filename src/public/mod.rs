//! The public listener: health, the token endpoint, and the authenticated
//! proxy path (authenticate → rewrite → forward → filter the response).
//!
//! - `token`: the token endpoint (decode → exchange → RFC 6749 answer).
//! - `bearer`: the `Authorization: Bearer` header and its RFC 6750 refusals.
//! - `restricted`: the refusals of a token's networks, scopes and rate.
//! - `finish`: the request's end: its metrics and access-log line.
//! - `oauth`: the token endpoint's companions (RFC 8414 metadata, RFC 7009
//!   revocation, `/token/info`), found after the bearer check;
//!   `introspect`: RFC 7662 introspection, one of them.
//! - `leaked`: `POST /token/leaked`, reports of leaked tokens (one of
//!   `oauth`'s side endpoints).
//!
//! Every decision about a credential is the core's (`authority`): this
//! module parses, asks, and maps the verdict to a response and a metric.

mod bearer;
mod finish;
mod introspect;
mod leaked;
mod oauth;
mod restricted;
mod token;

pub use bearer::bearer_token;
pub use token::{parse_body, BodyKind, TokenRequest};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::HOST;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde::Serialize;

use crate::access_log::AccessLog;
use crate::authority::{Presented, Refusal, Verdict};
use crate::identify::{self, Hops, Peer};
use crate::metrics::{
    ConnStats, Refusal as RefusalLabel, RouteLabel, UpstreamError, WorkerMetrics,
};
use crate::proxy::{
    canonicalise, Forwarder, Forwarding, Identity, InvalidPath, PathPolicy, ProxyError,
    UpstreamBody,
};
use crate::server::Handler;
use crate::state::State;
use crate::store::RefreshToken;
use crate::throttle::Throttled;
use crate::wire::host::is_valid_host;
use crate::wire::{
    error, json, method_not_allowed, strip_body_for_head, too_many_requests, unavailable, Reply,
};

/// The 503 text while cluster mode cannot vouch for tokens.
pub(crate) const STALE: &str =
    "the gateway has lost contact with its token database; try again shortly";

/// DPA's token path, and the short one.
pub(crate) const TOKEN_PATHS: [&str; 2] = ["/iwc/api/security/oauth/token", "/token"];

/// A body we built, or one streamed from the upstream, with no boxing. The
/// request is reported when it is done by `finish::Done`, which rides in
/// the connection's own wrapper rather than wrapping the body again.
pub(crate) type PublicBody = Either<Full<Bytes>, UpstreamBody>;

/// What one public worker serves with: the shared state and this worker's
/// own upstream pool (so a request's upstream call never crosses threads).
pub(crate) struct PublicHandler {
    pub(crate) state: Arc<State>,
    pub(crate) upstream: Arc<Forwarder>,
    /// This worker's own counters (`None`: metrics off).
    pub(crate) metrics: Option<Arc<WorkerMetrics>>,
    /// This worker's handle on the access log (`None`: off).
    pub(crate) access_log: Option<Arc<AccessLog>>,
    /// What a request path may hold (`public.path_parameters`); the
    /// worker's own copy, read on every proxied request.
    paths: PathPolicy,
    /// The balancers in front, as the listener's accept decision read
    /// them: a trusted forwarder's requests name their client.
    hops: Hops,
}

impl PublicHandler {
    /// A worker's handler: its own upstream pool, metrics block and
    /// access-log handle, so no per-request reference count is shared.
    pub(crate) fn new(state: Arc<State>, upstream: Arc<Forwarder>) -> PublicHandler {
        let config = &state.startup_config.public;
        PublicHandler {
            metrics: state.view.metrics.worker(),
            access_log: state.view.access_log.clone().map(Arc::new),
            paths: PathPolicy::with_parameters(&config.path_parameters),
            hops: Hops::of(config),
            state,
            upstream,
        }
    }
}

impl Handler for PublicHandler {
    type Body = PublicBody;
    type Report = finish::Done;

    fn wrap(reply: Reply) -> Response<PublicBody> {
        reply.map(Either::Left)
    }

    fn conn_stats(&self) -> Option<&ConnStats> {
        self.metrics.as_deref().map(|m| &m.conns)
    }

    /// Everything up to the first wait runs here, at the call (in the
    /// connection's first poll of the request, as before): the returned
    /// future holds only what the response's end needs and, for a route
    /// that waits, one box. The connection moves its request future
    /// several times (hyper copies it into place, and it is polled from
    /// inside the connection's own future), so every byte of it is copied
    /// again per request: with the request and the route's state in it,
    /// it was ~1.1 KiB.
    fn handle(
        &self,
        peer: Peer,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = (Response<PublicBody>, finish::Done)> + Send {
        let observed = self.observed();
        // One clock read for the request's arrival: its metrics' start and
        // the time the bearer check decides at (a read is ~40 ns on a VM's
        // TSC clock, and a request made a dozen).
        let arrived = Instant::now();
        let start = observed.then_some(arrived);
        let access = self.access_log.as_ref().map(|l| {
            (
                l.clone(),
                req.method().clone(),
                loggable_path(req.uri().path()),
            )
        });
        let head = req.method() == Method::HEAD;
        let routed = self.route(peer, req, finish::Note::new(), arrived);
        async move {
            let (resp, note) = match routed {
                Routed::Now(reply, note) => (Either::Right(reply), note),
                Routed::Upstream(up, mut note) => {
                    let forwarded = up.forwarding.await;
                    (self.forwarded(up.peer, up.sent, forwarded, &mut note), note)
                }
                Routed::Later(answer) => answer.await,
            };
            let resp = match resp {
                // Upstream answers to HEAD are already empty.
                Either::Left(upstream) => upstream.map(Either::Right),
                Either::Right(mut reply) => {
                    if head {
                        strip_body_for_head(&mut reply);
                    }
                    reply.map(Either::Left)
                }
            };
            let pending = start.map(|start| finish::Pending {
                start,
                status: resp.status().as_u16(),
                note,
                metrics: self.metrics.clone(),
                access,
            });
            (resp, finish::Done::new(pending))
        }
    }
}

/// Where a request's answer comes from: built already, or a future that
/// produces it, boxed (the token endpoint's state, or the proxy path's
/// upstream call: kilobytes either way) and handing back the request's
/// `Note`.
enum Routed<'a> {
    Now(Reply, finish::Note),
    /// The proxy path's usual case: the request is with the upstream, and
    /// only the wait for its response is left (small, and not boxed).
    Upstream(Upstream<'a>, finish::Note),
    Later(Pin<Box<dyn Future<Output = (Answer, finish::Note)> + Send + 'a>>),
}

/// A request handed to the upstream: the wait, and what its end needs.
struct Upstream<'a> {
    forwarding: Forwarding<'a>,
    /// When it was sent (`None`: nobody looks, metrics and access log off).
    sent: Option<Instant>,
    peer: SocketAddr,
}

/// An upstream's response, or a reply of our own.
type Answer = Either<Response<UpstreamBody>, Reply>;

impl PublicHandler {
    /// Whether anyone times requests: the metrics or the access log.
    fn observed(&self) -> bool {
        self.metrics.is_some() || self.access_log.is_some()
    }

    fn refused(&self, r: RefusalLabel) {
        if let Some(m) = &self.metrics {
            m.refusal(r);
        }
    }

    /// The answer to a request of `method` on `path` the core refused, and its metric.
    #[cold]
    fn refuse(&self, refusal: Refusal, peer: SocketAddr, method: &Method, path: &str) -> Reply {
        match refusal {
            Refusal::Throttled(t) => {
                self.refused(RefusalLabel::Throttled);
                too_many_failures(t)
            }
            Refusal::Bearer(e) => {
                self.refused(bearer::metric(e));
                bearer::refusal(e)
            }
            Refusal::Stale => {
                self.refused(RefusalLabel::Stale);
                unavailable(STALE)
            }
            Refusal::Token(e) => {
                self.refused(bearer::token_metric(e));
                bearer::token_refusal(e, peer)
            }
            Refusal::Restricted { refused, token_id } => {
                tracing::debug!(%peer, token_id, reason = ?refused, "request refused by the token's restrictions");
                self.refused(restricted::metric(refused));
                restricted::refusal(refused, method, path)
            }
        }
    }

    /// Routes a request, synchronously: an answer now, or the future that
    /// will give it. `arrived`: when the request came in.
    fn route(
        &self,
        peer: Peer,
        req: Request<Incoming>,
        mut note: finish::Note,
        arrived: Instant,
    ) -> Routed<'_> {
        // From here on `peer` is the client, also behind a trusted balancer
        // (decided in `identify`, the one place that does).
        let peer = match self.hops.client(peer, req.headers()) {
            Ok(client) => client,
            Err(unknown) => return Routed::Now(self.unknown_client(peer, unknown, &req), note),
        };
        note.client = Some(peer.ip());
        if !host_ok(&req) {
            let reply = error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request needs exactly one valid Host header (host or host:port)",
            );
            return Routed::Now(reply, note);
        }
        match route(req.uri().path()) {
            Route::Health => {
                note.route = RouteLabel::Health;
                Routed::Now(self.health(req.method(), req.uri().path()), note)
            }
            Route::Token => {
                note.route = RouteLabel::Token;
                let m = self.metrics.as_deref();
                Routed::Later(Box::pin(async move {
                    let reply = token::endpoint(&self.state, m, peer, req).await;
                    (Either::Right(reply), note)
                }))
            }
            Route::Proxy => self.proxy(peer, req, note, arrived),
        }
    }

    /// Authenticates, then forwards (the proxy module rewrites, forwards and
    /// filters the response). Synchronous up to the wait for the upstream's
    /// response, so the future left holds no request and nests no `async`
    /// layers (every byte of it is copied as the connection moves its
    /// request future); the rare paths that wait earlier are boxed.
    fn proxy(
        &self,
        peer: SocketAddr,
        req: Request<Incoming>,
        mut note: finish::Note,
        arrived: Instant,
    ) -> Routed<'_> {
        let mut req = req;
        let checked_len = match self.canonical(peer, &mut req) {
            Ok(len) => len,
            Err(reply) => return Routed::Now(*reply, note),
        };
        // Stage 2: authenticate (the core decides; this maps its verdict).
        let verdict = {
            let core = &self.state.authority;
            let presented = presented(core.at(arrived), peer, &req, checked_len);
            let mut kept = self.kept();
            // Runs under the access map's read guard, on the token it
            // already holds: no reference count is touched.
            let mut on_token = |r: &RefreshToken| kept.of(r);
            let verdict = match core.verify(&presented, &mut on_token) {
                Verdict::Admitted(identity) => Ok(Ok(identity)),
                Verdict::Refused(refusal) => Ok(Err(refusal)),
                // Rare (cluster mode, a token not known here yet): decided
                // below, boxed, after the catch-up. The deferred verdict
                // borrows the request, which moves into the box, so only
                // what it needs to be taken up again is kept.
                Verdict::CatchUp(c) => Err(c.unknown_boot()),
            };
            if verdict.is_ok() {
                note.token = kept.named;
            }
            verdict
        };
        match verdict {
            Ok(verdict) => self.after_verdict(peer, req, verdict, note),
            Err(unknown_boot) => Routed::Later(Box::pin(self.proxied_caught_up(
                peer,
                req,
                checked_len,
                unknown_boot,
                note,
            ))),
        }
    }

    /// Stage 1: the canonical target; the length of the path the rules see.
    /// The path is read once, here: the scope check matches it and the
    /// upstream is sent it, so no spelling can mean one path to the check
    /// and another to the upstream. What could be read two ways is refused,
    /// whoever asks. A path that needed rewriting is written into the
    /// request now, so from here on `req.uri()` is what the upstream gets
    /// (under the base path); only the length of the part the rules see is
    /// kept (an allowed `;parameter` is not part of it).
    /// (A refusal comes back boxed: it is the rare case, and keeps the
    /// result small.)
    fn canonical(
        &self,
        peer: SocketAddr,
        req: &mut Request<Incoming>,
    ) -> Result<usize, Box<Reply>> {
        match canonicalise(req.uri().path(), &self.paths) {
            Ok(c) => {
                let len = c.path().len();
                if let Some(path) = c.into_rewrite() {
                    if let Err(e) = crate::proxy::set_path(req.uri_mut(), &path) {
                        tracing::debug!(%peer, error = %e, "canonical path not forwardable");
                        return Err(Box::new(error(
                            StatusCode::BAD_REQUEST,
                            "invalid_path",
                            "the request path cannot be forwarded",
                        )));
                    }
                }
                Ok(len)
            }
            Err(e) => {
                tracing::debug!(%peer, reason = %e, "request path refused");
                Err(Box::new(invalid_path(e)))
            }
        }
    }

    /// The proxy path for a token this replica had to catch up on: the
    /// check again, with the catch-up, then as `proxy`.
    async fn proxied_caught_up(
        &self,
        peer: SocketAddr,
        req: Request<Incoming>,
        checked_len: usize,
        unknown_boot: bool,
        mut note: finish::Note,
    ) -> (Answer, finish::Note) {
        let verdict = {
            let core = &self.state.authority;
            // The verdict time: read as this (rare, boxed) path starts,
            // before the catch-up's wait, as the first check's was.
            let presented = presented(core.now(), peer, &req, checked_len);
            let mut kept = self.kept();
            let mut on_token = |r: &RefreshToken| kept.of(r);
            // The first check (in `proxy`) asked for this catch-up; it is
            // not run, nor counted, again.
            let verdict = match core.resume_catch_up(&presented, unknown_boot) {
                Some(c) => core.verify_caught_up(c, &presented, &mut on_token).await,
                // Unreachable: only cluster mode defers, and only with a
                // bearer token; refused as the check would have.
                None => Err(Refusal::Stale),
            };
            note.token = kept.named;
            verdict
        };
        match self.after_verdict(peer, req, verdict, note) {
            Routed::Now(reply, note) => (Either::Right(reply), note),
            Routed::Upstream(up, mut note) => {
                let forwarded = up.forwarding.await;
                (self.forwarded(up.peer, up.sent, forwarded, &mut note), note)
            }
            Routed::Later(answer) => answer.await,
        }
    }

    /// After the bearer check: a refusal, a side endpoint, or the request
    /// handed to the upstream.
    fn after_verdict(
        &self,
        peer: SocketAddr,
        req: Request<Incoming>,
        verdict: Result<Option<Identity>, Refusal>,
        note: finish::Note,
    ) -> Routed<'_> {
        // The token endpoint's companions are found only now, after the
        // bearer check, so an ordinary request pays nothing for them first.
        let identity = match verdict {
            Ok(identity) => identity,
            Err(refusal) => {
                let path = req.uri().path();
                if let Some(side) = oauth::Side::of(path) {
                    if let Some(reply) = self.side_after_refusal(side, refusal, peer, &req) {
                        return Routed::Now(reply, note);
                    }
                    return self.side(side, peer, req, note);
                }
                let reply = self.refuse(refusal, peer, req.method(), path);
                return Routed::Now(reply, note);
            }
        };
        if let Some(side) = oauth::Side::of(req.uri().path()) {
            return self.side(side, peer, req, note);
        }
        // Stages 3–5: rewrite, forward, filter (in the proxy module), with
        // the canonical path the checks saw, now the request's own.
        // One clock read for the send: the response timeout starts from
        // it, the pool ages its idle connections by it, and the metrics and
        // the access log time the upstream from it.
        let sent = Instant::now();
        let forwarding = self.upstream.forward(req, peer, identity, sent);
        let observed = self.observed();
        Routed::Upstream(
            Upstream {
                forwarding,
                sent: observed.then_some(sent),
                peer,
            },
            note,
        )
    }

    /// One of the token endpoint's companions, served (boxed).
    fn side(
        &self,
        side: oauth::Side,
        peer: SocketAddr,
        req: Request<Incoming>,
        mut note: finish::Note,
    ) -> Routed<'_> {
        note.route = RouteLabel::Token;
        let serving = oauth::serve(side, &self.state, peer, req);
        Routed::Later(Box::pin(
            async move { (Either::Right(serving.await), note) },
        ))
    }

    /// The upstream's answer, its metrics and log line, or the error reply.
    fn forwarded(
        &self,
        peer: SocketAddr,
        sent: Option<Instant>,
        forwarded: Result<Response<UpstreamBody>, ProxyError>,
        note: &mut finish::Note,
    ) -> Answer {
        // A target refused before sending never reached the upstream.
        if let (Some(sent), false) = (sent, matches!(forwarded, Err(ProxyError::Target(_)))) {
            let took = sent.elapsed();
            note.upstream = Some(took);
            if let Some(m) = &self.metrics {
                m.upstream(took);
                let failed = match &forwarded {
                    Err(ProxyError::Connect(_)) => Some(UpstreamError::Connect),
                    Err(ProxyError::Timeout(_)) => Some(UpstreamError::Timeout),
                    Err(ProxyError::Failed(_)) => Some(UpstreamError::Failed),
                    _ => None,
                };
                if let Some(k) = failed {
                    m.upstream_error(k);
                }
            }
        }
        match forwarded {
            Ok(resp) => Either::Left(resp),
            Err(e) => {
                let (status, code) = e.status_and_code();
                // A request the client got wrong is not the gateway's problem.
                if status.is_client_error() {
                    tracing::debug!(%peer, error = %e, "request not forwarded");
                } else {
                    tracing::warn!(%peer, error = %e, "upstream request failed");
                }
                Either::Right(error(status, code, e.client_text()))
            }
        }
    }
}

/// What the bearer check keeps of the presented token's refresh token:
/// its id and name for the access log, its identity for the upstream's
/// headers, each only when configured.
struct Kept {
    identity: bool,
    name: bool,
    named: Option<(u64, String)>,
}

impl Kept {
    fn of(&mut self, r: &RefreshToken) -> Option<Identity> {
        if self.name {
            self.named = Some((r.id, r.name.clone()));
        }
        self.identity.then(|| Identity::of(r))
    }
}

impl PublicHandler {
    fn kept(&self) -> Kept {
        Kept {
            identity: self.upstream.identity_headers(),
            name: self.access_log.is_some(),
            named: None,
        }
    }
}

/// What the core checks of a request: its bearer token, client, method and
/// the part of its (canonical) path the rules see, at `now` (the verdict
/// time: `Authority::at` or `Authority::now`).
fn presented<'r>(
    now: Instant,
    peer: SocketAddr,
    req: &'r Request<Incoming>,
    checked_len: usize,
) -> Presented<'r> {
    let path = req.uri().path();
    Presented {
        bearer: bearer_token(req.headers()),
        client: peer.ip(),
        method: req.method(),
        path: path.get(..checked_len).unwrap_or(path),
        now,
    }
}

impl PublicHandler {
    /// A side endpoint's request the bearer check refused: `/token/info`
    /// keeps the refusal (its token is what it asks about), except one by
    /// the token's scopes or rate, which do not bind asking about itself;
    /// `/token/introspect` keeps what a password cannot change (the
    /// client's failure budget, a stale replica, two `Authorization`
    /// headers) and a bearer token's network or rate refusal, and decides
    /// the rest itself (it also takes HTTP Basic, and the grant, not the
    /// scopes, lets a token ask); the others need no bearer token and are
    /// served (they do their own throttling).
    #[cold]
    fn side_after_refusal(
        &self,
        side: oauth::Side,
        refusal: Refusal,
        peer: SocketAddr,
        req: &Request<Incoming>,
    ) -> Option<Reply> {
        use crate::restrict::Refused;
        let keeps = match side {
            oauth::Side::Info => !matches!(
                refusal,
                Refusal::Restricted {
                    refused: Refused::Scope | Refused::Rate(_),
                    ..
                }
            ),
            oauth::Side::Introspect => matches!(
                refusal,
                Refusal::Throttled(_)
                    | Refusal::Stale
                    | Refusal::Bearer(crate::authority::BearerError::Repeated)
                    | Refusal::Restricted {
                        refused: Refused::Network | Refused::Rate(_),
                        ..
                    }
            ),
            _ => false,
        };
        keeps.then(|| self.refuse(refusal, peer, req.method(), req.uri().path()))
    }

    /// A trusted HTTP balancer's request that names no client: its health
    /// checks are answered; anything else is refused, since the client
    /// cannot be told apart from the balancer's others and charging their
    /// shared address would let one of them exhaust the budget of all.
    #[cold]
    fn unknown_client(&self, peer: Peer, _: identify::Unknown, req: &Request<Incoming>) -> Reply {
        if route(req.uri().path()) == Route::Health && host_ok(req) {
            return self.health(req.method(), req.uri().path());
        }
        tracing::warn!(balancer = %peer.addr, "refused: a request from public.trusted_forwarders without a usable X-Forwarded-For");
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the load balancer did not say who the client is (X-Forwarded-For)",
        )
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

/// The answer to a request path that cannot be forwarded unambiguously:
/// 400 `invalid_path`, naming what was refused.
fn invalid_path(e: InvalidPath) -> Reply {
    error(StatusCode::BAD_REQUEST, "invalid_path", &e.to_string())
}

/// The request path as the access log writes it: without `;parameters`,
/// which can carry session ids (Java's `;jsessionid=`), refused paths
/// included.
fn loggable_path(path: &str) -> String {
    if !path.contains(';') {
        return path.to_owned();
    }
    path.split('/')
        .map(|seg| seg.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// The answer to a client over its failed-authentication budget, on the
/// proxy path and the token endpoint alike: 429 with `Retry-After`. Its
/// `error` is `too_many_requests` even at the token endpoint: RFC 6749 has
/// no code for it, and `invalid_request` would tell a client its request
/// was malformed, when waiting is all it needs to do.
fn too_many_failures(t: Throttled) -> Reply {
    too_many_requests(
        "too_many_requests",
        &format!(
            "too many failed authentications from this address; try again in {} s",
            t.retry_after
        ),
        t.retry_after,
    )
}

/// HTTP/1.1 requires exactly one `Host`, and a server must refuse an invalid
/// one (RFC 9112 §3.2); hyper checks neither. An HTTP/2 request's authority
/// arrives in the URI and is held to the same form.
fn host_ok(req: &Request<Incoming>) -> bool {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return false;
    }
    if req.version() == Version::HTTP_11 && host.is_none() {
        return false;
    }
    host.is_none_or(|h| is_valid_host(h.as_bytes()))
        && req
            .uri()
            .authority()
            .is_none_or(|a| is_valid_host(a.as_str().as_bytes()))
}

/// Why `/readyz` answers 503: a stable code (`reason`) and a line for people (`detail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotReady {
    /// Shutdown has begun; open connections are being drained.
    Draining,
    /// Cluster mode: no contact with PostgreSQL.
    DatabaseUnreachable { for_ms: u128 },
    /// Every upstream server is out (passive or active health).
    UpstreamUnreachable,
}

impl NotReady {
    fn reason(&self) -> &'static str {
        match self {
            NotReady::Draining => "draining",
            NotReady::DatabaseUnreachable { .. } => "database_unreachable",
            NotReady::UpstreamUnreachable => "upstream_unreachable",
        }
    }

    fn detail(&self) -> String {
        match self {
            NotReady::Draining => "the gateway is shutting down".to_owned(),
            NotReady::DatabaseUnreachable { for_ms } => {
                format!("no contact with PostgreSQL for {for_ms} ms")
            }
            NotReady::UpstreamUnreachable => {
                "every upstream server failed its recent connection attempts or health checks"
                    .to_owned()
            }
        }
    }
}

impl PublicHandler {
    /// `/healthz`: the process answers (liveness), always 200. `/readyz`:
    /// it can serve requests now; 503 with a reason while draining at
    /// shutdown, while (cluster mode) it has lost contact with PostgreSQL,
    /// or while every upstream server is out.
    fn health(&self, method: &Method, path: &str) -> Reply {
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        #[derive(Serialize)]
        struct Health {
            status: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<String>,
        }
        if path == "/readyz" {
            if let Some(why) = self.not_ready() {
                return crate::wire::no_store(json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &Health {
                        status: "not_ready",
                        reason: Some(why.reason()),
                        detail: Some(why.detail()),
                    },
                ));
            }
        }
        json(
            StatusCode::OK,
            &Health {
                status: "ok",
                reason: None,
                detail: None,
            },
        )
    }

    /// The first reason, in this order, not to send this gateway traffic.
    fn not_ready(&self) -> Option<NotReady> {
        let state = &self.state;
        if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Some(NotReady::Draining);
        }
        if let Some(cluster) = &state.view.cluster {
            if cluster.check_connected().is_err() {
                return Some(NotReady::DatabaseUnreachable {
                    for_ms: cluster.staleness().as_millis(),
                });
            }
        }
        if self.upstream.shared().all_out() {
            return Some(NotReady::UpstreamUnreachable);
        }
        None
    }
}
