//! Fair share per client: at most `max_connections_per_client` open
//! connections per client address (an IPv6 /64 counts as one client), so one
//! client cannot hold every slot of the listener's connection cap while
//! everyone else waits in the kernel's backlog; and at most
//! `max_streams_per_client` HTTP/2 requests in progress across those
//! connections, so HTTP/2's multiplexing cannot turn them into hundreds of
//! times as many upstream requests.
//!
//! IPv6 shares are hierarchical: one subscriber often holds a /56 (256
//! /64s) or a /48, so besides its /64's share a connection or stream also
//! counts against its /56's and its /48's (`WIDER_V6` times the /64's: 4
//! and 16), and those of connections are also kept to a quarter and a half
//! of the listener's `max_connections` (never below one /64's share).
//!
//! The connection count is shared by all workers of a listener and touched
//! twice per connection (open, close), three times over for IPv6. The
//! stream count is one atomic per client (three for IPv6), reached through
//! the connection's slot: no map lookup per request.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::net::{ClientKey, WIDER_V6};

/// Open connections and HTTP/2 streams per client, for one listener.
pub(crate) struct ClientSlots {
    max: usize,
    max_streams: usize,
    /// The /56's and /48's shares of connections and of streams, in the
    /// order of `WIDER_V6`.
    wider_max: [usize; 2],
    wider_max_streams: [usize; 2],
    open: DashMap<ClientKey, Share>,
}

/// What one client (or IPv6 network) holds.
struct Share {
    conns: usize,
    /// Shared with the client's connections, which count their streams here.
    streams: Arc<AtomicUsize>,
}

/// One connection counted against its client (and an IPv6 client's /56
/// and /48); dropping it uncounts it.
pub(crate) struct ClientSlot {
    slots: Arc<ClientSlots>,
    key: ClientKey,
    streams: Streams,
}

/// A client's HTTP/2 stream counts, as its connections see them.
#[derive(Clone)]
pub(crate) struct Streams {
    count: Arc<AtomicUsize>,
    max: usize,
    /// An IPv6 client's /56 and /48 counters with their caps; `None` for IPv4.
    wider: Option<Wider>,
}

/// The /56's and the /48's stream counters and caps, in the order of
/// `WIDER_V6`; shared by the connection's streams (one allocation per IPv6
/// connection, none per request).
type Wider = Arc<[(Arc<AtomicUsize>, usize); 2]>;

/// One HTTP/2 request in progress, counted against its client until dropped
/// (with the response body, so a stalled body keeps counting).
///
/// It holds its connection's `Streams` (one `Arc` per connection), not
/// clones of the client's counters: the counters' reference counts sit on
/// the lines that every worker serving this client writes, and cloning
/// them per request made each request wait on the other core twice more.
pub(crate) struct StreamSlot(Arc<Streams>);

/// A stream refused: the cap that was reached, and whose it is (`None`:
/// the client's own; `Some(56)`: its IPv6 /56's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Over {
    pub(crate) max: usize,
    pub(crate) network: Option<u8>,
}

impl ClientSlots {
    /// `max` connections and `max_streams` streams per client, on a listener
    /// of `max_connections`.
    pub(crate) fn new(max: usize, max_streams: usize, max_connections: usize) -> Arc<ClientSlots> {
        // A /56 gets at most a quarter of the listener, a /48 half: with
        // shares near the listener's size, a few /64s would fill it.
        let fractions = [4, 2];
        let mut wider_max = [0; 2];
        let mut wider_max_streams = [0; 2];
        for (i, ((_, times), part)) in WIDER_V6.iter().zip(fractions).enumerate() {
            wider_max[i] = max
                .saturating_mul(*times)
                .min(max_connections / part)
                .max(max);
            wider_max_streams[i] = max_streams.saturating_mul(*times);
        }
        Arc::new(ClientSlots {
            max,
            max_streams,
            wider_max,
            wider_max_streams,
            open: DashMap::new(),
        })
    }

    /// Counts a new connection from `ip`, or `None` if that client (or, for
    /// IPv6, its /56 or /48) already has its share open.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = ClientKey::of(ip);
        // Each level is checked and counted under its own entry's lock, one
        // at a time (never two entries held: they may share a shard); a
        // refusal at a later level takes back the earlier counts.
        let wider = match key.wider() {
            None => None,
            Some(w) => {
                let first = self.count(w[0], self.wider_max[0])?;
                let Some(second) = self.count(w[1], self.wider_max[1]) else {
                    self.uncount(w[0]);
                    return None;
                };
                Some((w, [first, second]))
            }
        };
        let Some(own) = self.count(key, self.max) else {
            if let Some((w, _)) = wider {
                for k in w {
                    self.uncount(k);
                }
            }
            return None;
        };
        let wider = wider.map(|(_, [a, b])| {
            Arc::new([
                (a, self.wider_max_streams[0]),
                (b, self.wider_max_streams[1]),
            ])
        });
        Some(ClientSlot {
            slots: self.clone(),
            key,
            streams: Streams {
                count: own,
                max: self.max_streams,
                wider,
            },
        })
    }

    /// One more connection for `key` unless it holds `max`; its stream counter.
    fn count(&self, key: ClientKey, max: usize) -> Option<Arc<AtomicUsize>> {
        let mut share = self.open.entry(key).or_insert_with(|| Share {
            conns: 0,
            streams: Arc::new(AtomicUsize::new(0)),
        });
        if share.conns >= max {
            return None;
        }
        share.conns += 1;
        Some(share.streams.clone())
    }

    fn uncount(&self, key: ClientKey) {
        // Remove the entry at zero so the map only holds clients that are
        // connected: its size follows the connection cap, not every address
        // ever seen. Streams still finishing keep their counter alive. (An
        // entry left at zero by a refused `count` goes here too.)
        if let Entry::Occupied(mut e) = self.open.entry(key) {
            if e.get().conns <= 1 {
                e.remove();
            } else {
                e.get_mut().conns -= 1;
            }
        }
    }

    /// Open connections of the client `ip` belongs to.
    #[cfg(test)]
    pub(crate) fn open(&self, ip: IpAddr) -> usize {
        self.open.get(&ClientKey::of(ip)).map_or(0, |s| s.conns)
    }

    /// Clients and networks with at least one connection open (the map
    /// holds no others).
    #[cfg(test)]
    pub(crate) fn clients(&self) -> usize {
        self.open.len()
    }
}

impl ClientSlot {
    /// The client's stream counters, for one connection's HTTP/2 streams:
    /// their slots share the returned `Arc` (see `StreamSlot`).
    pub(crate) fn streams(&self) -> Arc<Streams> {
        Arc::new(self.streams.clone())
    }
}

impl Streams {
    /// Counts one more request in progress, or says which cap it is over.
    #[inline]
    pub(crate) fn take(self: &Arc<Self>) -> Result<StreamSlot, Over> {
        // Add first, then check: one atomic on the common path. A client at
        // its cap sees a brief overshoot that is taken back at once.
        if self.count.fetch_add(1, Relaxed) >= self.max {
            self.count.fetch_sub(1, Relaxed);
            return Err(Over {
                max: self.max,
                network: None,
            });
        }
        if let Some(w) = &self.wider {
            for (i, (count, max)) in w.iter().enumerate() {
                if count.fetch_add(1, Relaxed) >= *max {
                    // Take back this level, the levels before it and our own.
                    for (c, _) in &w[..=i] {
                        c.fetch_sub(1, Relaxed);
                    }
                    self.count.fetch_sub(1, Relaxed);
                    return Err(Over {
                        max: *max,
                        network: WIDER_V6.get(i).map(|(p, _)| *p),
                    });
                }
            }
        }
        Ok(StreamSlot(self.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Relaxed);
        if let Some(w) = &self.0.wider {
            for (c, _) in w.iter() {
                c.fetch_sub(1, Relaxed);
            }
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.slots.uncount(self.key);
        if let Some(w) = self.key.wider() {
            for k in w {
                self.slots.uncount(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_share_and_no_more() {
        let slots = ClientSlots::new(2, 8, 1000);
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
        let slots = ClientSlots::new(5, 8, 1000);
        let s = slots.take("192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(slots.clients(), 1);
        drop(s);
        assert_eq!(slots.clients(), 0);
        // An IPv6 client: its /64, /56 and /48, all gone with it.
        let s = slots.take("2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(slots.clients(), 3);
        drop(s);
        assert_eq!(slots.clients(), 0);
    }

    fn v6(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv6_56_and_48_have_bounded_shares() {
        // 2 per /64: a /56 holds 8, a /48 holds 32 (a large listener).
        let slots = ClientSlots::new(2, 100, 10_000);
        let mut held = Vec::new();
        for n in 0..4 {
            for _ in 0..2 {
                held.push(slots.take(v6(&format!("2001:db8:1:2{n:02x}::1"))).unwrap());
            }
        }
        assert!(
            slots.take(v6("2001:db8:1:2ff::1")).is_none(),
            "a fifth /64 of a full /56"
        );
        assert!(
            slots.take(v6("2001:db8:1:300::1")).is_some(),
            "the next /56"
        );
        drop(held.pop());
        assert!(slots.take(v6("2001:db8:1:2ff::1")).is_some());
        // The /48: 32 over its /56s, then no more from anywhere in it.
        let mut held = Vec::new();
        for n in 0..16u32 {
            for _ in 0..2 {
                let ip = v6(&format!("2001:db8:9:{:x}::1", n << 8));
                held.push(slots.take(ip).unwrap());
            }
        }
        assert!(slots.take(v6("2001:db8:9:ff01::1")).is_none());
        assert!(slots.take(v6("2001:db8:a::1")).is_some());
        // A refused take leaves no count behind.
        drop(held);
        assert_eq!(slots.open(v6("2001:db8:9:ff01::1")), 0);
    }

    #[test]
    fn wider_shares_stay_within_the_listener() {
        // The finding: four /64s of one /56 filled a listener of 40. With
        // 10 per client, the /56 may hold a quarter of it: 10.
        let slots = ClientSlots::new(10, 100, 40);
        let mut held = Vec::new();
        for n in 0..4 {
            while let Some(s) = slots.take(v6(&format!("2001:db8:1:2{n:02x}::1"))) {
                held.push(s);
            }
        }
        assert_eq!(held.len(), 10);
    }

    #[test]
    fn ipv6_streams_count_against_the_56_too() {
        // 4 streams per /64: the /56 holds 16, whatever its /64s.
        let slots = ClientSlots::new(10, 4, 10_000);
        let conns: Vec<_> = (0..5)
            .map(|n| slots.take(v6(&format!("2001:db8:1:2{n:02x}::1"))).unwrap())
            .collect();
        let mut held = Vec::new();
        for c in &conns[..4] {
            for _ in 0..4 {
                held.push(c.streams().take().ok().unwrap());
            }
        }
        let over = conns[4].streams().take().err().unwrap();
        assert_eq!(
            over,
            Over {
                max: 16,
                network: Some(56)
            }
        );
        drop(held.pop());
        assert!(conns[4].streams().take().is_ok());
    }

    #[test]
    fn streams_are_shared_by_a_clients_connections() {
        let slots = ClientSlots::new(4, 3, 1000);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let c1 = slots.take(a).unwrap();
        let c2 = slots.take(a).unwrap();
        let other = slots.take("192.0.2.2".parse().unwrap()).unwrap();
        let s1 = c1.streams().take().ok().unwrap();
        let _s2 = c2.streams().take().ok().unwrap();
        let _s3 = c2.streams().take().ok().unwrap();
        assert!(
            c1.streams().take().is_err(),
            "a fourth over two connections"
        );
        assert!(c2.streams().take().is_err());
        assert!(other.streams().take().is_ok(), "another client has its own");
        drop(s1);
        let _s4 = c1.streams().take().ok().unwrap();
        // A stream outliving its connections keeps a valid counter, and a
        // client connecting again starts from a fresh one.
        drop((c1, c2));
        assert_eq!(slots.open(a), 0);
        let c3 = slots.take(a).unwrap();
        assert!(c3.streams().take().is_ok());
    }
}
