//! The upstream leg: one worker's keep-alive HTTP/1.1 connections to one server.
//!
//! Why not hyper-util's pooled client: per request it hashes a pool key,
//! clones its connector, and checks out through a shared, locked pool built
//! for many hosts and threads; that showed in the profiles of the keep-alive
//! load. Here each public worker (one thread) has one LIFO list of idle
//! connections to each server, so a checkout is a pop and a return a
//! push, and the lock is never contended.
//!
//! Each connection's driver (hyper's `client::conn::http1::Connection`) runs
//! as a task on the worker, as in hyper-util. Polling it inline from the
//! request's own task was tried: fewer instructions per request, but lower
//! throughput and a worse p99 under load, so it was dropped.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::upstreams::{Server, Upstreams};

/// One worker's idle keep-alive connections to one server, most recently
/// used last (reused first, so the oldest ones age out).
pub(super) struct Pool {
    idle: Mutex<Vec<(Conn, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// This worker's requests to this server whose responses are not done:
    /// what `least_requests` compares. Only this worker's thread touches it.
    in_flight: AtomicUsize,
    shared: Arc<Upstreams>,
    /// Which of `shared.servers`.
    server: usize,
}

/// A request in progress on a pool's server, until its response body is
/// done (or the attempt failed).
pub(super) struct Busy(Arc<Pool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no connection to the upstream could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connect and handshake took longer than {0:?}")]
    Timeout(Duration),
    #[error("HTTP/1.1 handshake: {0}")]
    Http(#[from] hyper::Error),
}

/// Why a checked-out connection did not produce a response head.
pub(super) enum SendError {
    /// The connection closed before the request was written; the request is
    /// handed back so it can go out on another connection.
    /// (Boxed: it is the rare case, and keeps the error small.)
    NotSent(Box<Request<Incoming>>, hyper::Error),
    Failed(hyper::Error),
}

/// One upstream connection: where requests go in. Its driver task holds the
/// socket; dropping the last sender of an idle connection ends that task and
/// closes the socket.
pub(super) struct Conn {
    sender: http1::SendRequest<Incoming>,
}

impl Conn {
    fn reusable(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends `req`; resolves with the response head.
    pub(super) async fn send(
        &mut self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        self.sender
            .try_send_request(req)
            .await
            .map_err(|mut e| match e.take_message() {
                Some(req) => SendError::NotSent(Box::new(req), e.into_error()),
                None => SendError::Failed(e.into_error()),
            })
    }

    /// Hands `req` to the connection now; the returned future (hyper's
    /// response channel, nothing more) resolves with the response head, or
    /// hands the request back if the connection closed before it went out.
    /// A connection that cannot take it now hands it back at once (boxed:
    /// it is the rare case, and keeps the result small).
    pub(super) fn try_send(
        &mut self,
        req: Request<Incoming>,
    ) -> Result<Waiting, Box<Request<Incoming>>> {
        self.sender.try_send_request_now(req).map_err(Box::new)
    }
}

/// The wait for a response head on a pooled connection (`Conn::try_send`).
pub(super) type Waiting = http1::TryResponseFuture<Incoming>;

impl Pool {
    pub(super) fn new(shared: Arc<Upstreams>, server: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            max_idle: shared.pool_max_idle,
            idle_timeout: shared.pool_idle_timeout,
            in_flight: AtomicUsize::new(0),
            shared,
            server,
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request to this server until the returned guard is dropped.
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Conn, Instant)>> {
        // The list stays consistent even if a holder panicked: it is only pushed and popped.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that can take a request right
    /// `now` (`Instant::now()`, read by the caller). Closed ones met on the
    /// way are dropped.
    ///
    /// Why only "right now": a connection goes back to the pool as soon as
    /// its response body has been read, possibly before its driver task has
    /// run to mark it ready again. Waiting on such a one would queue the
    /// request behind every other runnable task on the worker; a new
    /// connection instead lets the pool grow to the concurrency it sees.
    pub(super) fn take_ready(&self, now: Instant) -> Option<Conn> {
        let mut idle = self.lock();
        // Pushed in time order, so the aged-out ones are at the bottom.
        // They are never reused, even if still open: an upstream whose
        // keep-alive timeout expires as our request arrives closes the
        // connection without answering, and hyper cannot hand back a
        // request it has written (a 502). Such an upstream may not have
        // sent its FIN yet (lighttpd closes an expired connection when
        // the next event wakes it: our request), so `is_ready` cannot
        // tell. Hence an idle timeout below the upstream's (the default).
        // One subtraction, then plain comparisons in the search (a
        // `duration_since` per probe showed in the per-request profile).
        let expired = match now.checked_sub(self.idle_timeout) {
            Some(cutoff) => idle.partition_point(|(_, since)| *since <= cutoff),
            None => 0,
        };
        idle.drain(..expired);
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let conn = &idle[i].0;
            if conn.sender.is_ready() {
                return Some(idle.remove(i).0);
            }
            if !conn.reusable() {
                idle.remove(i);
            }
        }
        None
    }

    /// A connection ready for a request: an idle one that is ready now, else
    /// a new one. The flag says whether it was reused (and so may have been
    /// closed by the upstream after it was checked).
    pub(super) async fn checkout(&self) -> Result<(Conn, bool), ConnectError> {
        if let Some(conn) = self.take_ready(Instant::now()) {
            return Ok((conn, true));
        }
        // Boxed: connecting (TCP, TLS, HTTP handshake) is a large future that
        // keep-alive requests rarely need; unboxed, every request would carry it.
        let mut conn = Box::pin(self.connect()).await?;
        if conn.sender.ready().await.is_ok() {
            Ok((conn, false))
        } else {
            Err(ConnectError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the upstream closed a new connection at once",
            )))
        }
    }

    /// Takes a connection back after its response was read to the end.
    fn put(&self, conn: Conn) {
        if !conn.reusable() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now()));
        }
        // Otherwise it is dropped here, which closes it.
    }

    /// Closes idle connections that aged out; forgets those the upstream closed.
    pub(super) fn sweep(&self) {
        let timeout = self.idle_timeout;
        self.lock()
            .retain(|(conn, since)| conn.reusable() && since.elapsed() < timeout);
    }

    async fn connect(&self) -> Result<Conn, ConnectError> {
        let Some(server) = self.shared.servers.get(self.server) else {
            return Err(ConnectError::Io(io::Error::other(
                "no such upstream server",
            )));
        };
        let (tls, timeout) = {
            let s = self.shared.settings();
            (s.tls.clone(), s.connect_timeout)
        };
        tokio::time::timeout(timeout, async {
            let io = connect_io(server, tls).await?;
            let (sender, driver) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
            tokio::spawn(async move {
                if let Err(e) = driver.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(Conn { sender })
        })
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
    }
}

/// A TCP connection to `server`, with the TLS handshake for an `https` one
/// (the caller bounds it with the connect timeout).
pub(super) async fn connect_io(
    server: &Server,
    tls: Option<TlsConnector>,
) -> Result<Io, ConnectError> {
    let tcp = connect_tcp(&server.host, server.port).await?;
    tcp.set_nodelay(true)?;
    Ok(match (tls, &server.tls_name) {
        (Some(connector), Some(name)) => {
            Io::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
        }
        _ => Io::Plain(tcp),
    })
}

/// Tries each address the host resolves to, in order; the last error wins.
async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}

/// A response body from the upstream that gives its connection back to the
/// pool once read to the end.
pub(crate) struct UpstreamBody {
    inner: Incoming,
    lease: Option<Conn>,
    busy: Busy,
}

impl UpstreamBody {
    pub(super) fn new(inner: Incoming, conn: Conn, busy: Busy) -> UpstreamBody {
        UpstreamBody {
            inner,
            lease: Some(conn),
            busy,
        }
    }

    fn release(&mut self) {
        if let Some(conn) = self.lease.take() {
            self.busy.0.put(conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body hyper never had to poll (empty, or HEAD) is complete; one
        // dropped part-way (the client left) leaves unread bytes on the
        // connection, so that connection closes with it.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

/// Plain TCP or TLS to the upstream, as one type for hyper.
pub(super) enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
