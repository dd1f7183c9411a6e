//! Fair share per client: at most `max_connections_per_client` open
//! connections per client address (an IPv6 /64 counts as one client), so one
//! client cannot hold every slot of the listener's connection cap while
//! everyone else waits in the kernel's backlog; and at most
//! `max_streams_per_client` HTTP/2 requests in progress across those
//! connections, so HTTP/2's multiplexing cannot turn them into hundreds of
//! times as many upstream requests.
//!
//! The connection count is shared by all workers of a listener and touched
//! twice per connection (open, close). The stream count is one atomic per
//! client, reached through the connection's slot: no map lookup per request.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::net::ClientKey;

/// Open connections and HTTP/2 streams per client, for one listener.
pub(crate) struct ClientSlots {
    max: usize,
    max_streams: usize,
    open: DashMap<ClientKey, Share>,
}

/// What one client holds.
struct Share {
    conns: usize,
    /// Shared with the client's connections, which count their streams here.
    streams: Arc<AtomicUsize>,
}

/// One connection counted against its client; dropping it uncounts it.
pub(crate) struct ClientSlot {
    slots: Arc<ClientSlots>,
    key: ClientKey,
    streams: Streams,
}

/// A client's HTTP/2 stream count, as its connections see it.
#[derive(Clone)]
pub(crate) struct Streams {
    count: Arc<AtomicUsize>,
    max: usize,
}

/// One HTTP/2 request in progress, counted against its client until dropped
/// (with the response body, so a stalled body keeps counting).
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl ClientSlots {
    pub(crate) fn new(max: usize, max_streams: usize) -> Arc<ClientSlots> {
        Arc::new(ClientSlots {
            max,
            max_streams,
            open: DashMap::new(),
        })
    }

    /// Counts a new connection from `ip`, or `None` if that client already
    /// has its share open.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = ClientKey::of(ip);
        let mut share = self.open.entry(key).or_insert_with(|| Share {
            conns: 0,
            streams: Arc::new(AtomicUsize::new(0)),
        });
        if share.conns >= self.max {
            return None;
        }
        share.conns += 1;
        Some(ClientSlot {
            slots: self.clone(),
            key,
            streams: Streams {
                count: share.streams.clone(),
                max: self.max_streams,
            },
        })
    }

    /// Open connections of the client `ip` belongs to.
    #[cfg(test)]
    pub(crate) fn open(&self, ip: IpAddr) -> usize {
        self.open.get(&ClientKey::of(ip)).map_or(0, |s| s.conns)
    }

    /// Clients with at least one connection open (the map holds no others).
    #[cfg(test)]
    pub(crate) fn clients(&self) -> usize {
        self.open.len()
    }
}

impl ClientSlot {
    /// The client's stream count, for the connection's HTTP/2 streams.
    pub(crate) fn streams(&self) -> Streams {
        self.streams.clone()
    }
}

impl Streams {
    /// Counts one more request in progress, or `None` when the client has
    /// `max` already.
    pub(crate) fn take(&self) -> Option<StreamSlot> {
        // Add first, then check: one atomic on the common path. A client at
        // its cap sees a brief overshoot that is taken back at once.
        if self.count.fetch_add(1, Relaxed) >= self.max {
            self.count.fetch_sub(1, Relaxed);
            return None;
        }
        Some(StreamSlot(self.count.clone()))
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        // Remove the entry at zero so the map only holds clients that are
        // connected: its size follows the connection cap, not every address
        // ever seen. Streams still finishing keep their counter alive.
        if let Entry::Occupied(mut e) = self.slots.open.entry(self.key) {
            if e.get().conns <= 1 {
                e.remove();
            } else {
                e.get_mut().conns -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_share_and_no_more() {
        let slots = ClientSlots::new(2, 8);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:1::1".parse().unwrap();
        let b2: IpAddr = "2001:db8:1:1::2".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert!(slots.take(a).is_none(), "a third from the same address");
        let _b1 = slots.take(b).unwrap();
        let _b2 = slots.take(b2).unwrap();
        assert!(slots.take(b).is_none(), "the same /64 is one client");
        drop(a1);
        assert_eq!(slots.open(a), 1);
        assert!(slots.take(a).is_some());
    }

    #[test]
    fn entries_leave_with_their_last_connection() {
        let slots = ClientSlots::new(5, 8);
        let s = slots.take("192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(slots.clients(), 1);
        drop(s);
        assert_eq!(slots.clients(), 0);
    }

    #[test]
    fn streams_are_shared_by_a_clients_connections() {
        let slots = ClientSlots::new(4, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let c1 = slots.take(a).unwrap();
        let c2 = slots.take(a).unwrap();
        let other = slots.take("192.0.2.2".parse().unwrap()).unwrap();
        let s1 = c1.streams().take().unwrap();
        let _s2 = c2.streams().take().unwrap();
        let _s3 = c2.streams().take().unwrap();
        assert!(
            c1.streams().take().is_none(),
            "a fourth over two connections"
        );
        assert!(c2.streams().take().is_none());
        assert!(
            other.streams().take().is_some(),
            "another client has its own"
        );
        drop(s1);
        let _s4 = c1.streams().take().unwrap();
        // A stream outliving its connections keeps a valid counter, and a
        // client connecting again starts from a fresh one.
        drop((c1, c2));
        assert_eq!(slots.open(a), 0);
        let c3 = slots.take(a).unwrap();
        assert!(c3.streams().take().is_some());
    }
}
