//! Keeps the public workers' connection counts even.
//!
//! With `SO_REUSEPORT` the kernel hashes each new connection's addresses to
//! one worker's socket, so a handful of long-lived connections can land
//! 8 to 2 on two workers: one core saturated, the other half idle, and the
//! busy worker's clients see the higher latency. Measured with 10 HTTP/2
//! connections (h2load) on two workers, per-thread CPU split up to 115 : 217
//! and throughput dropped ~5 % against an even split.
//!
//! So each worker still accepts from its own socket (no shared accept queue,
//! no lock), but a worker that already serves more connections than the
//! least-loaded one hands the new connection over, before the TLS handshake,
//! through that worker's inbox. Counts then never differ by more than one
//! (give or take a race between two accepts), and a connection that stays
//! put, the common case, costs one atomic load per worker and an increment.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// One balancer per public worker; all of a listener's share one `Shared`.
pub(crate) struct Balancer {
    shared: Arc<Shared>,
    me: usize,
    inbox: mpsc::UnboundedReceiver<Handoff>,
}

struct Shared {
    live: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handoff>]>,
}

/// A connection moving to another worker: the socket leaves the sending
/// worker's reactor as a std socket and joins the receiving one's. It keeps
/// the connection-cap permit taken when it was accepted.
pub(crate) struct Handoff {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    live: Live,
}

impl Handoff {
    /// Registers the socket with the calling worker's reactor.
    pub(crate) fn into_stream(
        self,
    ) -> std::io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit, Live)> {
        let tcp = TcpStream::from_std(self.tcp)?;
        Ok((tcp, self.peer, self.permit, self.live))
    }
}

/// One live connection counted against a worker; dropping it (when the
/// connection ends) uncounts it.
pub(crate) struct Live {
    shared: Arc<Shared>,
    worker: usize,
}

impl Live {
    fn enter(shared: &Arc<Shared>, worker: usize) -> Live {
        shared.live[worker].fetch_add(1, Ordering::Relaxed);
        Live {
            shared: shared.clone(),
            worker,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shared.live[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A read-only view of how many connections each worker serves.
#[derive(Clone)]
pub(crate) struct Load(Arc<Shared>);

impl Load {
    /// Open connections per worker, index = worker number.
    pub(crate) fn per_worker(&self) -> Vec<usize> {
        self.0
            .live
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// Where a connection just accepted should run.
pub(crate) enum Placed {
    /// On this worker.
    Here(TcpStream, OwnedSemaphorePermit, Live),
    /// Handed to another worker (or lost: see [`Balancer::place`]).
    Gone,
}

impl Balancer {
    /// Balancers for `n` workers, one each, index = worker number, and a
    /// view of their connection counts.
    pub(crate) fn set(n: usize) -> (Vec<Balancer>, Load) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let shared = Arc::new(Shared {
            live: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders.into_boxed_slice(),
        });
        let balancers = receivers
            .into_iter()
            .enumerate()
            .map(|(me, inbox)| Balancer {
                shared: shared.clone(),
                me,
                inbox,
            })
            .collect();
        (balancers, Load(shared))
    }

    /// Decides where a connection this worker accepted runs: here, unless
    /// another worker has fewer connections, which then receives it. The
    /// inbox is unbounded, but each entry holds a connection-cap permit, so
    /// it holds at most `public.max_connections` entries.
    pub(crate) fn place(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> Placed {
        let mine = self.shared.live[self.me].load(Ordering::Relaxed);
        let least = (0..self.shared.live.len())
            .filter(|&w| w != self.me)
            .map(|w| (self.shared.live[w].load(Ordering::Relaxed), w))
            .min();
        let target = match least {
            Some((n, w)) if n < mine => w,
            _ => return Placed::Here(tcp, permit, Live::enter(&self.shared, self.me)),
        };
        // Leaving this reactor deregisters the socket; should that ever fail,
        // the stream is already consumed and closed: the client sees a reset
        // connection and retries, like a full backlog.
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot move a connection to another worker");
                return Placed::Gone;
            }
        };
        let handoff = Handoff {
            tcp,
            peer,
            permit,
            live: Live::enter(&self.shared, target),
        };
        match self.shared.inboxes[target].send(handoff) {
            Ok(()) => Placed::Gone,
            // The other worker has stopped (shutdown): serve it here after all.
            Err(mpsc::error::SendError(h)) => match TcpStream::from_std(h.tcp) {
                Ok(tcp) => Placed::Here(tcp, h.permit, Live::enter(&self.shared, self.me)),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot take back a connection");
                    Placed::Gone
                }
            },
        }
    }

    /// The next connection another worker handed to this one.
    pub(crate) async fn next(&mut self) -> Option<Handoff> {
        self.inbox.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;

    async fn accepted(listener: &TcpListener) -> (TcpStream, SocketAddr, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (server, peer, client)
    }

    #[tokio::test]
    async fn evens_out_connections_and_uncounts_closed_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let permits = Arc::new(Semaphore::new(100));
        let (mut set, load) = Balancer::set(2);
        let (mut b1, b0) = (set.pop().unwrap(), set.pop().unwrap());
        let mut kept = Vec::new();
        let mut clients = Vec::new();
        // Every connection arrives at worker 0; half must move to worker 1.
        for i in 0..6 {
            let (tcp, peer, client) = accepted(&listener).await;
            clients.push(client);
            let permit = permits.clone().acquire_owned().await.unwrap();
            match b0.place(tcp, peer, permit) {
                Placed::Here(tcp, permit, live) => {
                    assert_eq!(i % 2, 0, "connection {i} should have moved");
                    kept.push((tcp, permit, live));
                }
                Placed::Gone => {
                    assert_eq!(i % 2, 1, "connection {i} should have stayed");
                    let h = b1.next().await.unwrap();
                    let (tcp, moved_peer, permit, live) = h.into_stream().unwrap();
                    assert_eq!(moved_peer, peer);
                    kept.push((tcp, permit, live));
                }
            }
        }
        assert_eq!(load.per_worker(), vec![3, 3]);
        assert_eq!(permits.available_permits(), 94);
        // A moved connection still carries bytes both ways.
        let (moved, ..) = &kept[1];
        moved.writable().await.unwrap();
        moved.try_write(b"hi").unwrap();
        let mut buf = [0u8; 2];
        clients[1].readable().await.unwrap();
        assert_eq!(clients[1].try_read(&mut buf).unwrap(), 2);
        assert_eq!(&buf, b"hi");
        // Closing connections uncounts them and frees their permits.
        kept.clear();
        assert_eq!(load.per_worker(), vec![0, 0]);
        assert_eq!(permits.available_permits(), 100);
    }

    #[tokio::test]
    async fn serves_here_when_the_other_worker_has_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let permits = Arc::new(Semaphore::new(10));
        let (mut set, load) = Balancer::set(2);
        drop(set.pop()); // worker 1 gone
        let b0 = set.pop().unwrap();
        let mut kept = Vec::new();
        for _ in 0..3 {
            let (tcp, peer, _client) = accepted(&listener).await;
            let permit = permits.clone().acquire_owned().await.unwrap();
            match b0.place(tcp, peer, permit) {
                Placed::Here(tcp, permit, live) => kept.push((tcp, permit, live)),
                Placed::Gone => panic!("a connection went to a stopped worker"),
            }
        }
        assert_eq!(load.per_worker(), vec![3, 0]);
    }
}
