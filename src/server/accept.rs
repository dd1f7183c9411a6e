//! The accept loop every listener runs (public workers, admin, the admin
//! socket, the metrics listener): take the next connection from the
//! listener's source until shutdown, back off when accepting fails, run
//! each connection as a task, and at shutdown stop accepting and give the
//! open connections their grace period.
//!
//! What differs between listeners stays with them: where connections come
//! from and what caps them (an [`Incoming`]: [`Capped`] pauses accepting at
//! the connection cap, [`Balanced`] adds the public workers' hand-overs),
//! and what is checked before a connection is served (the `serve` closure:
//! per-client shares, the socket peer's user).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::balance::{Balancer, Handoff, Live, Placed};
use super::stopped;

/// The pause after a failed accept: EMFILE, ENFILE, ENOBUFS and ENOMEM
/// fail at once and again until connections close, so accepting again
/// at once would only spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What a listener's source yields next.
pub(crate) enum Arrival<C> {
    /// A connection to serve here.
    Conn(C),
    /// Accepting failed: back off, then try again.
    Failed(std::io::Error),
    /// Nothing to serve here this time (handed to another worker).
    Nothing,
    /// The source is closed: stop accepting.
    Closed,
}

impl<C> Arrival<C> {
    fn map<D>(self, f: impl FnOnce(C) -> Arrival<D>) -> Arrival<D> {
        match self {
            Arrival::Conn(c) => f(c),
            Arrival::Failed(e) => Arrival::Failed(e),
            Arrival::Nothing => Arrival::Nothing,
            Arrival::Closed => Arrival::Closed,
        }
    }
}

/// Where a listener's connections come from.
pub(crate) trait Incoming: Send {
    type Conn: Send + 'static;

    /// The next connection. Cancel-safe: the loop drops this future when
    /// shutdown comes, and nothing may be lost with it but a permit.
    fn next(&mut self) -> impl Future<Output = Arrival<Self::Conn>> + Send;
}

/// Runs one listener: takes connections from `incoming` until `shutdown`
/// turns true (or the source closes), and spawns what `serve` makes of
/// each (`None`: refused, the connection is dropped). Then stops accepting
/// (dropping `incoming` closes the socket) and waits at most `grace` for
/// the open connections; zero aborts them at once.
pub(crate) async fn accept_loop<I, F, Fut>(
    name: &'static str,
    mut incoming: I,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    mut serve: F,
) where
    I: Incoming,
    F: FnMut(I::Conn) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Tracks connection tasks so shutdown can wait for them, then abort stragglers.
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        // Reap finished connections so the set stays the size of the live set.
        while conns.try_join_next().is_some() {}
        let arrival = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            a = incoming.next() => a,
        };
        match arrival {
            Arrival::Conn(c) => {
                if let Some(task) = serve(c) {
                    conns.spawn(task);
                }
            }
            Arrival::Failed(e) => {
                tracing::warn!(error = %e, listener = name, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            Arrival::Nothing => {}
            Arrival::Closed => break,
        }
    }
    drop(incoming);
    if grace.is_zero() {
        conns.shutdown().await;
        return;
    }
    // Each connection watches the same signal and was told to finish
    // (`drive`); give them the grace period.
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

/// A TCP listener under a connection cap: each connection holds a permit,
/// and at the cap accepting pauses, so new clients wait in the kernel's
/// backlog instead of costing memory here.
pub(crate) struct Capped {
    pub(crate) listener: TcpListener,
    pub(crate) permits: Arc<Semaphore>,
}

impl Incoming for Capped {
    type Conn = (TcpStream, SocketAddr, OwnedSemaphorePermit);

    /// Waits for a permit, then for a connection. A permit taken without a
    /// connection (cancelled, or the accept failed) is simply returned.
    async fn next(&mut self) -> Arrival<Self::Conn> {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return Arrival::Closed;
        };
        match self.listener.accept().await {
            Ok((tcp, peer)) => Arrival::Conn((tcp, peer, permit)),
            Err(e) => Arrival::Failed(e),
        }
    }
}

/// A TLS listener's source: its capped socket and, for a public worker,
/// the connections other workers hand over (`balance`), which are taken
/// first and come with the permit they were accepted under.
pub(crate) struct Balanced {
    pub(crate) capped: Capped,
    pub(crate) balance: Option<Balancer>,
}

impl Incoming for Balanced {
    type Conn = (TcpStream, SocketAddr, OwnedSemaphorePermit, Option<Live>);

    async fn next(&mut self) -> Arrival<Self::Conn> {
        let Balanced { capped, balance } = self;
        tokio::select! {
            biased;
            Some(h) = handed_over(balance) => match h.into_stream() {
                Ok((tcp, peer, permit, live)) => Arrival::Conn((tcp, peer, permit, Some(live))),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take over a connection from another worker");
                    Arrival::Nothing
                }
            },
            a = capped.next() => a.map(|(tcp, peer, permit)| {
                let _ = tcp.set_nodelay(true);
                match balance {
                    None => Arrival::Conn((tcp, peer, permit, None)),
                    Some(b) => match b.place(tcp, peer, permit) {
                        Placed::Here(tcp, permit, live) => Arrival::Conn((tcp, peer, permit, Some(live))),
                        Placed::Gone => Arrival::Nothing,
                    },
                }
            }),
        }
    }
}

/// The next connection another worker handed over; never, without a balancer.
async fn handed_over(balance: &mut Option<Balancer>) -> Option<Handoff> {
    match balance {
        Some(b) => b.next().await,
        None => std::future::pending().await,
    }
}

/// The admin API's Unix socket; the socket file goes when this does, so
/// it is gone once accepting stops.
pub(crate) struct LocalSocket {
    pub(crate) listener: UnixListener,
    pub(crate) path: std::path::PathBuf,
}

impl Incoming for LocalSocket {
    type Conn = UnixStream;

    async fn next(&mut self) -> Arrival<UnixStream> {
        match self.listener.accept().await {
            Ok((s, _)) => Arrival::Conn(s),
            Err(e) => Arrival::Failed(e),
        }
    }
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that yields what it was given, then waits for ever.
    struct Script(std::collections::VecDeque<Arrival<u32>>);

    impl Incoming for Script {
        type Conn = u32;
        async fn next(&mut self) -> Arrival<u32> {
            match self.0.pop_front() {
                Some(a) => a,
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test]
    async fn serves_refuses_backs_off_and_drains_within_the_grace() {
        let (tx, rx) = watch::channel(false);
        let script = Script(
            [
                Arrival::Conn(1),
                Arrival::Failed(std::io::Error::other("EMFILE")),
                Arrival::Nothing,
                Arrival::Conn(2),
                Arrival::Conn(3),
            ]
            .into(),
        );
        let served = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = served.clone();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let started = tokio::time::Instant::now();
        let run = tokio::spawn(accept_loop(
            "test",
            script,
            rx,
            Duration::from_millis(200),
            move |n| {
                // Connection 2 is refused; 1 finishes at once, 3 never.
                (n != 2).then(|| {
                    seen.lock().unwrap().push(n);
                    let done = done_tx.clone();
                    async move {
                        if n == 3 {
                            std::future::pending::<()>().await;
                        }
                        let _ = done.send(n);
                    }
                })
            },
        ));
        assert_eq!(done_rx.recv().await, Some(1));
        // Past the backoff after the failed accept, 3 is served as well.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(*served.lock().unwrap(), [1, 3]);
        let _ = tx.send(true);
        run.await.unwrap();
        // Connection 3 never finished: aborted when the grace ran out.
        assert!(started.elapsed() >= Duration::from_millis(350));
        assert!(done_rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_closed_source_ends_the_loop_and_zero_grace_aborts_at_once() {
        let (_tx, rx) = watch::channel(false);
        let script = Script([Arrival::Conn(1), Arrival::Closed].into());
        let never = std::future::pending::<()>;
        tokio::time::timeout(
            Duration::from_secs(5),
            accept_loop("test", script, rx, Duration::ZERO, |_| Some(never())),
        )
        .await
        .unwrap();
    }
}
