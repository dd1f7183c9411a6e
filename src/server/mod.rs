//! The connection driver for both listeners, generic over what answers the
//! requests (`Handler`): accept loops, TLS handshake with a deadline, the HTTP
//! protocol chosen from ALPN (so no unbounded version sniffing), explicit
//! limits, a connection cap, and graceful drain on shutdown.
//!
//! - `workers`: the public listener's per-core workers on `SO_REUSEPORT`.
//! - `balance`: keeps the workers' connection counts even.
//! - `coalesce`: batches an HTTP/2 connection's small writes.

mod balance;
mod coalesce;
mod workers;

use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atomic_waker::AtomicWaker;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::ListenerLimits;
pub(crate) use balance::{Balancer, Load};
use balance::{Handoff, Placed};
pub(crate) use workers::{bind_reuseport, start_workers};

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
        + 'static;

    fn handle(
        &self,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<Self::Body>> + Send;
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
}

/// Serves one listener until `shutdown` turns true, then drains its
/// connections for at most `public.shutdown_grace`. With a `balance`, this
/// loop is one of several public workers: it also serves connections the
/// others hand over, and hands over its own when it is the busier one.
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ctx: Arc<Listening<H>>,
    mut shutdown: watch::Receiver<bool>,
    mut balance: Option<Balancer>,
) {
    let name = ctx.name;
    let permits = ctx.permits.clone();
    // Tracks connection tasks so shutdown can wait for them, then abort stragglers.
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        // Reap finished connections so the set stays the size of the live set.
        while conns.try_join_next().is_some() {}
        let next = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            Some(h) = handed_over(&mut balance) => Next::HandedOver(h),
            r = accept(&listener, &permits) => match r {
                Some(r) => Next::Accepted(r),
                None => break,
            },
        };
        let (tcp, peer, permit, live) = match next {
            Next::HandedOver(h) => match h.into_stream() {
                Ok((tcp, peer, permit, live)) => (tcp, peer, permit, Some(live)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take over a connection from another worker");
                    continue;
                }
            },
            Next::Accepted((Ok((tcp, peer)), permit)) => {
                let _ = tcp.set_nodelay(true);
                match &balance {
                    None => (tcp, peer, permit, None),
                    Some(b) => match b.place(tcp, peer, permit) {
                        Placed::Here(tcp, permit, live) => (tcp, peer, permit, Some(live)),
                        Placed::Gone => continue,
                    },
                }
            }
            Next::Accepted((Err(e), _)) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, listener = name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            connection(tcp, peer, acceptor, ctx, shutdown).await;
            drop((permit, live));
        });
    }
    // Connections handed over but not yet taken close with the inbox.
    drop(balance);
    drop(listener);
    // Every connection was told to finish (see `drive`); give them the grace period.
    let grace = ctx.limits.shutdown_grace;
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            listener = name,
            open = conns.len(),
            "shutdown grace ran out; closing the remaining connections"
        );
        conns.shutdown().await;
    }
}

enum Next {
    HandedOver(Handoff),
    Accepted(Accepted),
}

/// What `accept` yields: the accept result, and the permit taken for it.
type Accepted = (
    std::io::Result<(TcpStream, SocketAddr)>,
    OwnedSemaphorePermit,
);

/// Waits for a connection-cap permit, then for a connection. `None` once the
/// semaphore is closed. Cancel-safe: a permit taken without a connection is
/// simply returned.
async fn accept(listener: &TcpListener, permits: &Arc<Semaphore>) -> Option<Accepted> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    Some((listener.accept().await, permit))
}

/// The next connection another worker handed over; never, without a balancer.
async fn handed_over(balance: &mut Option<Balancer>) -> Option<Handoff> {
    match balance {
        Some(b) => b.next().await,
        None => std::future::pending().await,
    }
}

async fn connection<H: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ctx: Arc<Listening<H>>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = &ctx.limits;
    let tls = match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let max_age = limits.max_connection_age;
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
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            Box::pin(async move { Ok::<_, Infallible>(handler.handle(peer, req).await) })
        });
        let io = TokioIo::new(coalesce::Coalesce::new(tls));
        drive(b.serve_connection(io, svc), shutdown, max_age, peer).await;
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
            async move { Ok::<_, Infallible>(handler.handle(peer, req).await) }
        });
        drive(
            b.serve_connection(TokioIo::new(tls), svc),
            shutdown,
            max_age,
            peer,
        )
        .await;
    }
}

/// Tells a connection to finish its in-flight requests and close: set by the
/// connection's watcher when shutdown begins or the connection reaches
/// `max_connection_age`. A connection task is polled several times per
/// request; checking a flag costs one atomic load, where polling a watch
/// channel and a timer every time showed up in the profile.
#[derive(Default)]
struct Finish {
    flag: AtomicBool,
    waker: AtomicWaker,
}

/// Runs a connection to completion; on shutdown or at `max_age`, asks it to
/// finish its in-flight requests and close.
async fn drive<C>(conn: C, mut shutdown: watch::Receiver<bool>, max_age: Duration, peer: SocketAddr)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let finish = Arc::new(Finish::default());
    let watcher = tokio::spawn({
        let finish = finish.clone();
        async move {
            tokio::select! {
                _ = stopped(&mut shutdown) => {}
                _ = tokio::time::sleep(max_age) => {}
            }
            finish.flag.store(true, Ordering::Release);
            finish.waker.wake();
        }
    });
    let mut conn = pin!(conn);
    let mut closing = false;
    let ended = poll_fn(|cx| {
        if !closing {
            finish.waker.register(cx.waker());
            if finish.flag.load(Ordering::Acquire) {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
        conn.as_mut().poll(cx)
    })
    .await;
    watcher.abort();
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Resolves once shutdown is signalled (or its sender is gone). Returns `()`
/// so no watch guard is held across the caller's `.await`s.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
