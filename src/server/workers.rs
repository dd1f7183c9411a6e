//! The public listener's workers: one thread per core, each with a
//! single-threaded runtime serving its own `SO_REUSEPORT` socket with its own
//! handler, so a request's TLS, token check and upstream call stay on one
//! core, with no cross-thread wake-ups (the way nginx's worker processes
//! run). A worker serving more connections than another hands its new ones
//! over (`balance`), since the kernel's hash can split a few long-lived
//! connections very unevenly.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpSocket;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::{serve, Balancer, ClientSlots, Handler, Listening, Load};
use crate::config::ListenerLimits;
use crate::identify::Hops;

/// Tasks a worker runs before it checks for new I/O events while tasks are
/// still queued (tokio's default is 61). Each check is an `epoll_wait`, and
/// newly ready tasks join the back of the queue either way, so checking
/// less often only saves work: on HTTP/2, where every stream's upstream
/// answer wakes a task, 256 measured 0.12 → 0.08 `epoll_wait`s and 1–3 %
/// less CPU per request, +3 % req/s (interleaved A/B); HTTP/1.1 and new
/// connections were unchanged. Timers are checked at the same point, so
/// under full load they fire up to 256 task polls late (under a millisecond
/// here, tokio's timer resolution).
const WORKER_EVENT_INTERVAL: u32 = 256;

/// Pending connections the kernel queues per public worker.
const LISTEN_BACKLOG: u32 = 4096;

/// Why the public workers could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    #[error("cannot start a worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot start a worker runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen on public.listen: {0}")]
    Listen(#[source] std::io::Error),
    #[error("cannot build a worker's handler: {0}")]
    Handler(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("a worker thread stopped during start-up")]
    Stopped,
    #[error("waiting for the workers failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Running workers: each `done` fires when its worker has drained.
pub(crate) struct Workers {
    pub(crate) done: Vec<oneshot::Receiver<()>>,
    pub(crate) load: Load,
}

/// Starts one worker thread per socket and waits until each is listening.
///
/// `make` builds a worker's handler on that worker's own runtime (so what it
/// spawns, such as an upstream pool's sweeper, runs there too). A failure in
/// any worker stops the ones already started and is returned.
pub(crate) async fn start_workers<H, F, E>(
    sockets: Vec<TcpSocket>,
    acceptor: TlsAcceptor,
    limits: ListenerLimits,
    front: Hops,
    make: F,
    shutdown: watch::Receiver<bool>,
    stop: &watch::Sender<bool>,
) -> Result<Workers, WorkerError>
where
    H: Handler,
    F: Fn() -> Result<H, E> + Send + Sync + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let make = Arc::new(make);
    // The cap is shared: it bounds the listener, not each worker.
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let clients = ClientSlots::new(
        limits.max_connections_per_client,
        limits.max_streams_per_client,
        limits.max_connections,
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut done = Vec::with_capacity(sockets.len());
    let (balancers, load) = Balancer::set(sockets.len());
    for ((i, socket), balance) in sockets.into_iter().enumerate().zip(balancers) {
        let (done_tx, done_rx) = oneshot::channel();
        done.push(done_rx);
        let ctx = WorkerCtx {
            acceptor: acceptor.clone(),
            limits: limits.clone(),
            permits: permits.clone(),
            clients: clients.clone(),
            front: front.clone(),
            shutdown: shutdown.clone(),
            ready: ready_tx.clone(),
            balance,
        };
        let make = make.clone();
        std::thread::Builder::new()
            .name(format!("tokengate-worker-{i}"))
            .spawn(move || {
                run_worker(socket, ctx, || {
                    make().map_err(|e| WorkerError::Handler(Box::new(e)))
                });
                let _ = done_tx.send(());
            })
            .map_err(WorkerError::Thread)?;
    }
    drop(ready_tx);
    let expected = done.len();
    let ready = tokio::task::spawn_blocking(move || -> Result<(), WorkerError> {
        for _ in 0..expected {
            ready_rx.recv().map_err(|_| WorkerError::Stopped)??;
        }
        Ok(())
    })
    .await
    .map_err(WorkerError::from)
    .and_then(|r| r);
    if let Err(e) = ready {
        let _ = stop.send(true);
        return Err(e);
    }
    Ok(Workers { done, load })
}

/// What a worker thread takes with it.
struct WorkerCtx {
    acceptor: TlsAcceptor,
    limits: ListenerLimits,
    permits: Arc<Semaphore>,
    clients: Arc<ClientSlots>,
    front: Hops,
    shutdown: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), WorkerError>>,
    balance: Balancer,
}

/// One worker: a single-threaded runtime serving one `SO_REUSEPORT` socket
/// until shutdown has drained it.
fn run_worker<H: Handler>(
    socket: TcpSocket,
    ctx: WorkerCtx,
    make: impl FnOnce() -> Result<H, WorkerError>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(WORKER_EVENT_INTERVAL)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = ctx.ready.send(Err(WorkerError::Runtime(e)));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match socket.listen(LISTEN_BACKLOG) {
            Ok(l) => l,
            Err(e) => {
                let _ = ctx.ready.send(Err(WorkerError::Listen(e)));
                return;
            }
        };
        let handler = match make() {
            Ok(h) => Arc::new(h),
            Err(e) => {
                let _ = ctx.ready.send(Err(e));
                return;
            }
        };
        let listening = Arc::new(Listening {
            handler,
            name: "public",
            limits: ctx.limits,
            permits: ctx.permits,
            clients: ctx.clients,
            hops: ctx.front,
        });
        let _ = ctx.ready.send(Ok(()));
        serve(
            listener,
            ctx.acceptor,
            listening,
            ctx.shutdown,
            Some(ctx.balance),
        )
        .await;
    });
}

/// Binds `n` sockets to one address with `SO_REUSEPORT` (the first picks the
/// port when it is 0); the kernel spreads new connections across them.
pub(crate) fn bind_reuseport(addr: SocketAddr, n: usize) -> std::io::Result<Vec<TcpSocket>> {
    // SO_REUSEPORT would let a second gateway (same user) silently share the
    // port and split the traffic between two token universes. A plain bind
    // first turns that into the usual "address in use".
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut sockets = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let s = if at.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        s.set_reuseaddr(true)?;
        s.set_reuseport(true)?;
        s.bind(at)?;
        at = s.local_addr()?;
        sockets.push(s);
    }
    Ok(sockets)
}
