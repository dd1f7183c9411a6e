//! The connection driver for both listeners, generic over what answers the
//! requests (`Handler`): accept loops, TLS handshake with a deadline, the HTTP
//! protocol chosen from ALPN (so no unbounded version sniffing), explicit
//! limits, a connection cap, and graceful drain on shutdown.
//!
//! - `accept`: the accept loop all listeners share.
//! - `workers`: the public listener's per-core workers on `SO_REUSEPORT`.
//! - `balance`: keeps the workers' connection counts even.
//! - `coalesce`: batches an HTTP/2 connection's small writes.
//! - `clients`: the per-client connection limit.
//! - `conn`: first-request, idle and send deadlines per connection.
//! - `proxy_header`: the PROXY protocol header from a load balancer.
//! - `local`: the admin API on a Unix socket.
//! - `plain`: plain HTTP/1.1 for one short request per connection (the
//!   metrics listener).

mod accept;
mod balance;
mod clients;
mod coalesce;
mod conn;
mod drained;
mod local;
mod plain;
mod proxy_header;
mod workers;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atomic_waker::AtomicWaker;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::ListenerLimits;
use crate::identify::{at_accept, Accept, Hops, Peer};
use crate::metrics::{ConnStats, Handshake};
pub(crate) use crate::shutdown::stopped;
use crate::wire::{too_many_requests, Reply};
use accept::{accept_loop, Balanced, Capped};
pub(crate) use balance::{Balancer, Load};
pub(crate) use clients::{ClientSlot, ClientSlots};
pub(crate) use conn::Report;
use conn::{Activity, Counted, Deadlines, Verdict, Watch};
pub(crate) use local::{bind_local, serve_local, PeerUid};
pub(crate) use plain::{serve_plain, PlainLimits};
pub(crate) use workers::{bind_reuseport, start_workers, WorkerError, Workers};

/// HTTP/2 streams a client may reset before we ever answer them, per
/// connection (the "rapid reset" family of attacks).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams our side may reset for protocol errors before the connection is dropped.
const H2_MAX_LOCAL_RESETS: usize = 256;
/// Pings an idle HTTP/2 peer so dead connections free their slot.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// What answers a listener's requests. Each listener has its own: the public
/// one (token endpoint and proxy) and the admin one (API and page).
pub(crate) trait Handler: Send + Sync + 'static {
    type Body: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static;

    /// Told what goes out of each response, and when it is done (metrics,
    /// the access log); `()` for nothing.
    type Report: Report;

    /// Answers one request, with what its response should report as it goes
    /// out. `peer` is what the connection knows of the client: the TCP
    /// peer, or the address a trusted load balancer's PROXY header gave,
    /// and whether it is a trusted HTTP balancer (whose requests name their
    /// client: `identify::of_request`).
    fn handle(
        &self,
        peer: Peer,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = (Response<Self::Body>, Self::Report)> + Send;

    /// A reply built by the driver itself (a refusal), in this handler's body type.
    fn wrap(reply: Reply) -> Response<Self::Body>;

    /// Where this listener's connections and handshakes are counted; `None`
    /// with metrics off.
    fn conn_stats(&self) -> Option<&ConnStats> {
        None
    }
}

/// What one accept loop serves with. Each public worker has its own handler
/// (its own upstream pool, so a request never crosses threads); the
/// connection cap is shared by all workers of a listener.
pub(crate) struct Listening<H> {
    pub(crate) handler: Arc<H>,
    /// For log lines: which listener.
    pub(crate) name: &'static str,
    pub(crate) limits: ListenerLimits,
    /// Each connection holds a permit; at the cap, accepting pauses and new
    /// clients wait in the kernel's backlog instead of exhausting memory.
    pub(crate) permits: Arc<Semaphore>,
    /// Open connections per client, shared by the listener's workers.
    pub(crate) clients: Arc<ClientSlots>,
    /// The load balancers in front, if any: which peers may send a PROXY
    /// header or an `X-Forwarded-For` (`identify` decides what each is).
    pub(crate) hops: Hops,
}

impl<H> Listening<H> {
    /// A listener with a single accept loop: its own connection cap and
    /// per-client shares, from `limits`.
    pub(crate) fn new(
        handler: Arc<H>,
        name: &'static str,
        limits: ListenerLimits,
        hops: Hops,
    ) -> Listening<H> {
        Listening {
            handler,
            name,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            clients: ClientSlots::new(
                limits.max_connections_per_client,
                limits.max_streams_per_client,
                limits.max_connections,
            ),
            hops,
            limits,
        }
    }
}

/// Serves one listener until `shutdown` turns true, then drains its
/// connections for at most `public.shutdown_grace`. With a `balance`, this
/// loop is one of several public workers: it also serves connections the
/// others hand over, and hands over its own when it is the busier one.
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ctx: Arc<Listening<H>>,
    shutdown: watch::Receiver<bool>,
    balance: Option<Balancer>,
) {
    let incoming = Balanced {
        capped: Capped {
            listener,
            permits: ctx.permits.clone(),
        },
        balance,
    };
    let (name, grace) = (ctx.name, ctx.limits.shutdown_grace);
    let stop = shutdown.clone();
    accept_loop(
        name,
        incoming,
        stop,
        grace,
        move |(tcp, peer, permit, live)| {
            let acceptor = acceptor.clone();
            let ctx = ctx.clone();
            let shutdown = shutdown.clone();
            Some(async move {
                connection(tcp, peer, acceptor, ctx, shutdown).await;
                drop((permit, live));
            })
        },
    )
    .await;
}

async fn connection<H: Handler>(
    mut tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ctx: Arc<Listening<H>>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = &ctx.limits;
    // Who the client is (`identify`), and what it is counted under. No
    // connection goes uncounted while it is read from: an ordinary client
    // takes its slot before the handshake, a peer that may not send a
    // PROXY header is dropped before a byte is read, and a listed
    // balancer's client takes its slot as soon as the header names it.
    let (client, slot) = match at_accept(&ctx.hops, peer) {
        Accept::Refuse => {
            tracing::debug!(%peer, "refused: PROXY headers are only taken from public.trusted_proxies");
            return;
        }
        // A trusted HTTP balancer has no share: it carries many clients.
        Accept::Forwarder => (
            Peer {
                addr: peer,
                forwarder: true,
            },
            None,
        ),
        Accept::Direct => match take_slot(&ctx, peer) {
            Some(slot) => (Peer::direct(peer), Some(slot)),
            None => return,
        },
        Accept::ReadProxyHeader => {
            let header = proxy_header::read(&mut tcp);
            let client = match tokio::time::timeout(limits.tls_handshake_timeout, header).await {
                Ok(Ok(Some(addr))) => addr,
                // The balancer's own health check (LOCAL): counted as itself.
                Ok(Ok(None)) => peer,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "PROXY header refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no PROXY header in time");
                    return;
                }
            };
            match take_slot(&ctx, client) {
                Some(slot) => (Peer::direct(client), Some(slot)),
                None => return,
            }
        }
    };
    let stats = ctx.handler.conn_stats();
    let count = |h| {
        if let Some(s) = stats {
            s.handshake(h);
        }
    };
    // The handshake's state (rustls mid-handshake, the timer) is boxed and
    // freed once it is done: the connection's task is allocated once, at
    // the size of its largest state, and keeps that for its whole life.
    let handshake = Box::pin(tokio::time::timeout(
        limits.tls_handshake_timeout,
        acceptor.accept(tcp),
    ));
    let tls = match handshake.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            count(Handshake::Failed);
            tracing::debug!(client = %client.addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            count(Handshake::TimedOut);
            tracing::debug!(client = %client.addr, "TLS handshake timed out");
            return;
        }
    };
    count(Handshake::Done);
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let _open = stats.map(|s| s.open(h2));
    let activity = Arc::new(Activity::for_this_runtime());
    let deadlines = Deadlines {
        first_request: limits.header_read_timeout,
        idle: limits.idle_timeout,
        send: limits.send_timeout,
    };
    let guard = Guard {
        activity: activity.clone(),
        deadlines,
        max_age: limits.max_connection_age,
        shutdown,
        client: client.addr,
    };
    let io = Counted::new(tls, activity.clone());
    if h2 {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
            .keep_alive_interval(H2_KEEPALIVE)
            .keep_alive_timeout(Duration::from_secs(20));
        // Each stream's future is moved into a task of its own: boxed, that
        // move copies a pointer instead of the request's few KiB of state.
        let handler = ctx.handler.clone();
        // Exempt peers (trusted HTTP balancers) have no share.
        let streams = slot.as_ref().map(|s| s.streams());
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            let mut in_flight = activity.start();
            let over = match &streams {
                None => None,
                Some(s) => match s.take() {
                    Ok(stream) => {
                        in_flight = in_flight.holding(stream);
                        None
                    }
                    Err(over) => Some(over),
                },
            };
            Box::pin(async move {
                let (resp, report) = match over {
                    None => handler.handle(client, req).await,
                    Some(over) => {
                        let max = over.max;
                        let whose = match over.network {
                            None => "this client".to_owned(),
                            Some(prefix) => format!("this client's IPv6 /{prefix}"),
                        };
                        tracing::debug!(client = %client.addr, max, whose, "refused: at max_streams_per_client (or its IPv6 network's share)");
                        let refusal = H::wrap(too_many_requests(
                            "too_many_requests",
                            &format!("{whose} has {max} requests in progress already; try again when one has finished"),
                            1,
                        ));
                        (refusal, H::Report::default())
                    }
                };
                Ok::<_, Infallible>(resp.map(|b| in_flight.track(b, report)))
            })
        });
        let io = TokioIo::new(coalesce::Coalesce::new(io));
        drive(b.serve_connection(io, svc), guard).await;
    } else {
        let mut b = http1::Builder::new();
        // hyper requires a read buffer of at least 8 KiB.
        b.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_header_size(limits.max_header_bytes)
            .keep_alive(true);
        // One request at a time, polled in place by the connection: unboxed
        // measured fewer instructions per request than boxed.
        let handler = ctx.handler.clone();
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            let in_flight = activity.start();
            async move {
                let (resp, report) = handler.handle(client, req).await;
                Ok::<_, Infallible>(resp.map(|b| in_flight.track(b, report)))
            }
        });
        drive(
            b.serve_connection(TokioIo::new(drained::Drained::new(io)), svc),
            guard,
        )
        .await;
    }
}

/// Counts a connection against `client`'s share; `None` when that client
/// (or its IPv6 /56 or /48) holds its share already.
fn take_slot<H: Handler>(ctx: &Listening<H>, client: SocketAddr) -> Option<ClientSlot> {
    let slot = ctx.clients.take(client.ip());
    if slot.is_none() {
        tracing::debug!(%client, listener = ctx.name, "refused: this client (or its IPv6 network) holds its share of connections already");
    }
    slot
}

/// What the watcher of one connection needs.
struct Guard {
    activity: Arc<Activity>,
    deadlines: Deadlines,
    max_age: Duration,
    shutdown: watch::Receiver<bool>,
    client: SocketAddr,
}

/// Tells a connection to finish its in-flight requests and close (`flag`),
/// or to stop at once (`kill`): set by the connection's watcher at shutdown,
/// at `max_connection_age`, or when a deadline in `conn` passes. A
/// connection task is polled several times per request; checking a flag
/// costs one atomic load, where polling a watch channel and a timer every
/// time showed up in the profile.
#[derive(Default)]
struct Finish {
    flag: AtomicBool,
    kill: AtomicBool,
    waker: AtomicWaker,
}

/// Runs a connection to completion. Its watcher asks it to finish its
/// in-flight requests and close on shutdown, at `max_age` or when idle, and
/// drops it when a deadline in `conn` passes.
///
/// Boxed, so the connection's task holds a pointer: unboxed, every
/// connection's task would be as large as the larger of the HTTP/1.1 and
/// HTTP/2 states (measured: 7.8 KiB per task), whichever it speaks.
fn drive<C>(conn: C, guard: Guard) -> Pin<Box<impl Future<Output = ()>>>
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    Box::pin(run(conn, guard))
}

async fn run<C>(conn: C, guard: Guard)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let finish = Arc::new(Finish::default());
    let client = guard.client;
    let watcher = tokio::spawn(watch_connection(guard, finish.clone()));
    let mut conn = pin!(conn);
    let mut closing = false;
    let ended = poll_fn(|cx| {
        finish.waker.register(cx.waker());
        if finish.kill.load(Ordering::Acquire) {
            return std::task::Poll::Ready(Ok(()));
        }
        if !closing && finish.flag.load(Ordering::Acquire) {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await;
    watcher.abort();
    if let Err(e) = ended {
        tracing::debug!(%client, error = %e, "connection ended with an error");
    }
}

/// The watcher: looks at the connection's activity every few seconds.
async fn watch_connection(mut g: Guard, finish: Arc<Finish>) {
    let start = tokio::time::Instant::now();
    let age_limit = start + g.max_age;
    let mut tick = tokio::time::interval_at(start + g.deadlines.period(), g.deadlines.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Watch::new(start.into_std());
    let mut asked = false;
    let mut poked = false;
    let ask = |finish: &Finish| {
        finish.flag.store(true, Ordering::Release);
        finish.waker.wake();
    };
    loop {
        tokio::select! {
            _ = stopped(&mut g.shutdown), if !asked => {
                asked = true;
                ask(&finish);
                continue;
            }
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        if !asked && now >= age_limit {
            asked = true;
            ask(&finish);
        }
        match watch.look(&g.activity, now.into_std(), &g.deadlines) {
            // Woken once per quiet stretch, an idle HTTP/1.1 connection
            // finds nothing to read a second time in a row and gives back
            // its 8 KiB read buffer (patches/hyper): a busy one never
            // does, so requests do not pay to allocate it again.
            Verdict::Fine if watch.quiet(now.into_std()) => {
                if !poked {
                    poked = true;
                    finish.waker.wake();
                }
            }
            Verdict::Fine => poked = false,
            Verdict::Idle if !asked => {
                tracing::debug!(client = %g.client, "closing an idle connection");
                asked = true;
                ask(&finish);
            }
            Verdict::Idle => {}
            Verdict::Drop(why) => {
                tracing::debug!(client = %g.client, reason = why, "dropping a connection");
                finish.kill.store(true, Ordering::Release);
                finish.waker.wake();
                return;
            }
        }
    }
}
