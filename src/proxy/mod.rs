//! Forwarding to the upstream API: its servers and their health, shared by
//! all workers (`upstreams`, probed by `health`); per worker, a keep-alive
//! pool per server (`pool`); explicit connect and response timeouts;
//! streamed bodies both ways.

mod canonical;
mod deadline;
pub(crate) mod headers;
mod health;
mod pool;
mod target;
mod upstreams;

pub use canonical::{canonicalise, Canonical, InvalidPath, PathPolicy};
pub(crate) use pool::{ConnectError, UpstreamBody};
pub(crate) use target::set_path;
pub use target::{join_target, TargetError};
pub(crate) use upstreams::Upstreams;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use deadline::{Deadline, Timers};
use pool::{Pool, SendError};

use crate::config::Balance;
use crate::store::RefreshToken;

/// Who made a request, for the optional identity headers.
pub(crate) struct Identity {
    id: HeaderValue,
    name: HeaderValue,
}

impl Identity {
    pub(crate) fn of(r: &RefreshToken) -> Identity {
        // Names may hold bytes a header cannot carry; those are percent-encoded.
        let name = HeaderValue::from_str(&r.name).unwrap_or_else(|_| {
            let enc: String = form_urlencoded::byte_serialize(r.name.as_bytes()).collect();
            HeaderValue::from_str(&enc).unwrap_or(HeaderValue::from_static(""))
        });
        Identity {
            id: HeaderValue::from(r.id),
            name,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("upstream.ca_file {path}: {detail}")]
    CaFile { path: String, detail: String },
    #[error("upstream TLS: upstream server {url} has no host")]
    NoHost { url: String },
    #[error("upstream TLS: upstream server {url}: host is not a valid Host header")]
    HostHeader {
        url: String,
        #[source]
        source: http::header::InvalidHeaderValue,
    },
    #[error("upstream TLS: upstream server {url}: host is not a TLS server name: {source}")]
    ServerName {
        url: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("upstream TLS: no usable system root certificates; set upstream.ca_file")]
    NoRoots,
    #[error("upstream TLS: {0}")]
    Client(#[source] crate::tls::ClientTlsError),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("upstream unreachable: {0}")]
    Connect(ConnectError),
    #[error("upstream failed: {0}")]
    Failed(hyper::Error),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot forward the request target: {0}")]
    Target(TargetError),
}

impl ProxyError {
    /// Who caused it decides the status: the upstream → 502/504.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ProxyError::Target(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
        }
    }

    /// What the client is told; the detail stays in the log.
    pub(crate) fn client_text(&self) -> &'static str {
        match self {
            ProxyError::Connect(_) => "the upstream API cannot be reached",
            ProxyError::Failed(_) => "the upstream API failed to answer",
            ProxyError::Timeout(_) => "the upstream API did not answer in time",
            ProxyError::Target(_) => "the request cannot be forwarded",
        }
    }
}

/// One public worker's forwarder to the upstream: its own pools (one per
/// server) and its own turn, over the servers and settings all workers share.
pub(crate) struct Forwarder {
    shared: Arc<Upstreams>,
    /// Index = server index.
    pools: Box<[Arc<Pool>]>,
    /// Round robin position (this worker's only, so never contended).
    turn: AtomicUsize,
    /// The response timeout's timers, reused from request to request.
    timers: Timers,
}

/// How one attempt on one server went, when it produced no response.
enum Attempt {
    /// No connection could be had: nothing reached the server, and the
    /// request is handed back intact (its body unread).
    NotConnected(Box<Request<Incoming>>, ConnectError),
    Failed(ProxyError),
}

/// The wait for an upstream's response (`Forwarder::forward`).
pub(crate) struct Forwarding<'a> {
    fwd: &'a Forwarder,
    server: usize,
    state: Waiting<'a>,
    /// The response timeout's timer, and the timeout (`None`: nothing was sent).
    deadline: Option<(Deadline<'a>, Duration)>,
}

/// Boxed: `send`'s future, for the rare requests that need it.
type Sending<'a> =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, ProxyError>> + Send + 'a>>;

enum Waiting<'a> {
    /// Handed to a pooled connection: the response head is awaited.
    Head {
        waiting: pool::Waiting,
        conn: pool::Conn,
        /// Counted from the hand-over, as `send_to` counts its attempts.
        busy: pool::Busy,
    },
    /// The whole of `send`.
    Send(Sending<'a>),
    /// Decided before anything was sent.
    Failed(Option<ProxyError>),
}

impl Forwarding<'_> {
    fn failed(fwd: &Forwarder, e: ProxyError) -> Forwarding<'_> {
        Forwarding {
            fwd,
            server: 0,
            state: Waiting::Failed(Some(e)),
            deadline: None,
        }
    }

    /// The response, or `Pending`, without looking at the timer.
    fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<UpstreamBody>, ProxyError>> {
        loop {
            match std::mem::replace(&mut self.state, Waiting::Failed(None)) {
                Waiting::Head {
                    mut waiting,
                    conn,
                    busy,
                } => match Pin::new(&mut waiting).poll(cx) {
                    Poll::Pending => {
                        self.state = Waiting::Head {
                            waiting,
                            conn,
                            busy,
                        };
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(resp)) => {
                        self.fwd.shared.answered(self.server);
                        return Poll::Ready(Ok(
                            resp.map(|body| UpstreamBody::new(body, conn, busy))
                        ));
                    }
                    Poll::Ready(Err(mut e)) => match e.take_message() {
                        Some(back) => {
                            let e = e.into_error();
                            tracing::debug!(error = %e, "pooled upstream connection was closed; retrying on another");
                            // As `send_to`'s next turn: this attempt's
                            // count and connection go first.
                            drop((busy, conn));
                            self.state = Waiting::Send(Box::pin(self.fwd.send(back, self.server)));
                        }
                        None => return Poll::Ready(Err(ProxyError::Failed(e.into_error()))),
                    },
                },
                Waiting::Send(mut sending) => {
                    let polled = sending.as_mut().poll(cx);
                    if polled.is_pending() {
                        self.state = Waiting::Send(sending);
                    }
                    return polled;
                }
                // Answered already (or polled after it was): nothing more.
                Waiting::Failed(e) => return e.map_or(Poll::Pending, |e| Poll::Ready(Err(e))),
            }
        }
    }
}

impl Future for Forwarding<'_> {
    type Output = Result<Response<UpstreamBody>, ProxyError>;

    /// As `tokio::time::timeout` did: the response first, then the timer.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(r) = this.poll_response(cx) {
            return Poll::Ready(r.map(|mut resp| {
                headers::strip_hop_by_hop(resp.headers_mut());
                resp
            }));
        }
        match &mut this.deadline {
            Some((deadline, timeout)) => {
                ready!(Pin::new(deadline).poll(cx));
                Poll::Ready(Err(ProxyError::Timeout(*timeout)))
            }
            None => Poll::Pending,
        }
    }
}

impl Forwarder {
    /// This worker's pools for the shared servers (call on the worker's runtime).
    pub(crate) fn new(shared: Arc<Upstreams>) -> Forwarder {
        let pools = (0..shared.servers.len())
            .map(|i| Arc::new(Pool::new(shared.clone(), i)))
            .collect();
        Forwarder {
            turn: AtomicUsize::new(shared.next_worker()),
            timers: Timers::default(),
            pools,
            shared,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Upstreams> {
        &self.shared
    }

    /// Closes idle upstream connections that aged out or were closed by the
    /// upstream, every half idle timeout, for as long as this upstream lives.
    /// Runs on the calling runtime (the worker whose connections they are).
    pub(crate) fn spawn_sweeper(self: &Arc<Self>) {
        let every = (self.shared.pool_idle_timeout / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(30));
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(up) => up.pools.iter().for_each(|p| p.sweep()),
                    None => return,
                }
            }
        });
    }

    pub(crate) fn identity_headers(&self) -> bool {
        self.shared.identity_headers
    }

    /// The server for the next request: the next one in turn that is in
    /// (round robin), or of those the one with the fewest of this worker's
    /// requests in progress (least requests, ties taken in turn); never
    /// `not`. When every candidate is out, one is tried anyway: health is a
    /// hint, and a server that has just come back answers at once (a single
    /// server is thus always tried, as without health checks).
    fn pick(&self, not: Option<usize>) -> Option<usize> {
        let n = self.pools.len();
        if n == 1 {
            return (not != Some(0)).then_some(0);
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let order = (0..n)
            .map(|k| start.wrapping_add(k) % n)
            .filter(|&i| Some(i) != not);
        let mut best: Option<usize> = None;
        for i in order.clone() {
            if !self.shared.is_in(i) {
                continue;
            }
            match self.shared.balance {
                Balance::RoundRobin => return Some(i),
                Balance::LeastRequests => {
                    let load = |j: usize| self.pools.get(j).map_or(usize::MAX, |p| p.in_flight());
                    if best.is_none_or(|b| load(i) < load(b)) {
                        best = Some(i);
                    }
                }
            }
        }
        best.or_else(|| order.into_iter().next())
    }

    /// Rewrites and forwards an authenticated request; the returned future
    /// gives the upstream's response with hop-by-hop headers removed.
    /// Bodies stream both ways. The request's path is already canonical
    /// (the handler made it so, `set_path`): the path the checks saw is the
    /// path the upstream gets.
    ///
    /// Everything up to the wait for the response head runs here, in the
    /// call: when a pooled connection is ready now (the usual case under
    /// keep-alive load) the request is handed to it at once, and the
    /// returned future is small and holds no nested `async` state (no
    /// copy of the request, no future kept beside its argument): the
    /// response channel, the connection and the timer. Otherwise, or when
    /// that connection turns out to have been closed by the upstream
    /// before the request went out, the whole of `send`, boxed: its
    /// future (a checkout that may connect, the retry on another server)
    /// is ~1.7 KiB, which a keep-alive request should not carry.
    ///
    /// The request's `Host` and authority must already be valid
    /// `host[:port]` values (the public listener refuses others,
    /// `public::host_ok`): the one present travels on as
    /// `X-Forwarded-Host` unchecked.
    ///
    /// `now`: the time the request is sent (`Instant::now()`, read by the
    /// caller, which times the upstream from it too): the response
    /// timeout runs from it, and the pool ages its idle connections by it.
    pub(crate) fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        identity: Option<Identity>,
        now: Instant,
    ) -> Forwarding<'_> {
        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(http::header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        parts.uri = match target::upstream_target(&self.shared.base_path, &parts.uri) {
            Ok(uri) => uri,
            Err(e) => return Forwarding::failed(self, ProxyError::Target(e)),
        };
        // The upstream leg is HTTP/1.1 whatever the client spoke.
        parts.version = Version::HTTP_11;
        let server = self.pick(None).unwrap_or(0);
        let host = match self.shared.servers.get(server) {
            Some(s) => &s.host_header,
            None => {
                return Forwarding::failed(
                    self,
                    ProxyError::Connect(ConnectError::Io(std::io::Error::other(
                        "no upstream server",
                    ))),
                )
            }
        };
        let response_timeout = {
            // Read once and let go before any wait.
            let settings = self.shared.settings();
            // The caller checked the host (`public::host_ok`).
            headers::rewrite_request_checked(
                &mut parts.headers,
                original_host,
                peer,
                host,
                &settings.headers,
                identity.map(|i| (i.id, i.name)),
            );
            settings.response_timeout
        };
        let req = Request::from_parts(parts, body);
        // The timer starts as the request goes out, as the timeout around
        // the whole send did.
        let deadline = self.timers.start(now, response_timeout);
        let state = match self.pools.get(server) {
            Some(pool) => match pool.take_ready(now) {
                Some(mut conn) => match conn.try_send(req) {
                    Ok(waiting) => Waiting::Head {
                        waiting,
                        conn,
                        busy: pool.busy(),
                    },
                    Err(req) => {
                        tracing::debug!(
                            error = "connection was not ready",
                            "pooled upstream connection was closed; retrying on another"
                        );
                        drop(conn);
                        Waiting::Send(Box::pin(self.send(*req, server)))
                    }
                },
                None => Waiting::Send(Box::pin(self.send(req, server))),
            },
            None => Waiting::Send(Box::pin(self.send(req, server))),
        };
        Forwarding {
            fwd: self,
            server,
            state,
            deadline: Some((deadline, response_timeout)),
        }
    }

    /// Sends to `server`; when no connection to it can be had, the server is
    /// taken out and an idempotent request is sent once more, to another
    /// server. Nothing that may have reached a server is sent again.
    async fn send(
        &self,
        req: Request<Incoming>,
        server: usize,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let e = match self.send_to(req, server).await {
            Ok(resp) => return Ok(resp),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::NotConnected(req, e)) => {
                self.shared.mark_down(server, &e);
                let other = if is_idempotent(req.method()) {
                    self.pick(Some(server))
                } else {
                    None
                };
                match (other, other.and_then(|o| self.shared.servers.get(o))) {
                    (Some(other), Some(s)) => {
                        tracing::debug!(error = %e, to = %s.url, "upstream server unreachable; retrying on another");
                        let mut req = *req;
                        req.headers_mut()
                            .insert(http::header::HOST, s.host_header.clone());
                        match self.send_to(req, other).await {
                            Ok(resp) => return Ok(resp),
                            Err(Attempt::Failed(e)) => return Err(e),
                            Err(Attempt::NotConnected(_, e)) => {
                                self.shared.mark_down(other, &e);
                                e
                            }
                        }
                    }
                    _ => e,
                }
            }
        };
        Err(ProxyError::Connect(e))
    }

    /// Sends on a pooled connection to `server`. A reused connection the
    /// upstream closed before our request went out hands the request back;
    /// it is then sent on the next connection (the request was never seen,
    /// so this is safe for any method).
    async fn send_to(
        &self,
        mut req: Request<Incoming>,
        server: usize,
    ) -> Result<Response<UpstreamBody>, Attempt> {
        let Some(pool) = self.pools.get(server) else {
            return Err(Attempt::Failed(ProxyError::Connect(ConnectError::Io(
                std::io::Error::other("no such upstream server"),
            ))));
        };
        let busy = pool.busy();
        loop {
            let (mut conn, reused) = match pool.checkout().await {
                Ok(c) => c,
                Err(e) => return Err(Attempt::NotConnected(Box::new(req), e)),
            };
            match conn.send(req).await {
                Ok(resp) => {
                    self.shared.answered(server);
                    return Ok(resp.map(|body| UpstreamBody::new(body, conn, busy)));
                }
                Err(SendError::NotSent(back, e)) if reused => {
                    tracing::debug!(error = %e, "pooled upstream connection was closed; retrying on another");
                    req = *back;
                }
                Err(SendError::NotSent(_, e) | SendError::Failed(e)) => {
                    return Err(Attempt::Failed(ProxyError::Failed(e)))
                }
            }
        }
    }
}

/// Methods a request may be repeated with (RFC 9110 §9.2.2) when no
/// connection for it could be had.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    fn worker(balance: Balance) -> Forwarder {
        let mut cfg = upstreams::tests::config(&["http://a:1", "http://b:1", "http://c:1"]);
        cfg.balance = balance;
        Forwarder::new(Arc::new(Upstreams::new(&cfg, Clock::new()).unwrap()))
    }

    fn picks(up: &Forwarder, n: usize) -> Vec<usize> {
        (0..n).map(|_| up.pick(None).unwrap()).collect()
    }

    #[test]
    fn round_robin_takes_turns_and_skips_servers_that_are_out() {
        let up = worker(Balance::RoundRobin);
        let mut seen = picks(&up, 3);
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
        up.shared.mark_down(1, &"refused");
        assert!(!picks(&up, 6).contains(&1));
        assert_eq!(up.pick(Some(0)), Some(2), "not 0, and 1 is out");
        up.shared.mark_down(0, &"refused");
        up.shared.mark_down(2, &"refused");
        assert!(up.shared.all_out());
        // Every server out: one is tried anyway, never the one excluded.
        assert!(up.pick(None).is_some());
        assert!((0..9).all(|_| up.pick(Some(2)) != Some(2)));
        up.shared.answered(2);
        assert_eq!(picks(&up, 3), [2, 2, 2]);
    }

    #[test]
    fn least_requests_picks_the_least_busy_server_of_this_worker() {
        let up = worker(Balance::LeastRequests);
        let _a = up.pools[0].busy();
        let _b = (up.pools[1].busy(), up.pools[1].busy());
        assert_eq!(picks(&up, 4), [2, 2, 2, 2]);
        let c = (up.pools[2].busy(), up.pools[2].busy(), up.pools[2].busy());
        assert_eq!(up.pick(None), Some(0));
        drop(c);
        assert_eq!(up.pick(Some(2)), Some(0));
    }

    #[test]
    fn a_single_server_is_always_tried_and_never_retried_on() {
        let cfg = upstreams::tests::config(&["http://a:1"]);
        let up = Forwarder::new(Arc::new(Upstreams::new(&cfg, Clock::new()).unwrap()));
        up.shared.mark_down(0, &"refused");
        assert_eq!(up.pick(None), Some(0));
        assert_eq!(up.pick(Some(0)), None);
    }

    #[test]
    fn only_idempotent_methods_are_retried() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }
}
