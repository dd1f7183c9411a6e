//! Fair share per client: at most `max_connections_per_client` open
//! connections per client address (an IPv6 /64 counts as one client), so one
//! client cannot hold every slot of the listener's connection cap while
//! everyone else waits in the kernel's backlog.
//!
//! The count is shared by all workers of a listener. It is touched twice per
//! connection (open, close), never per request.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::net::ClientKey;

/// Open connections per client, for one listener.
pub(crate) struct ClientSlots {
    max: usize,
    open: DashMap<ClientKey, usize>,
}

/// One connection counted against its client; dropping it uncounts it.
pub(crate) struct ClientSlot {
    slots: Arc<ClientSlots>,
    key: ClientKey,
}

impl ClientSlots {
    pub(crate) fn new(max: usize) -> Arc<ClientSlots> {
        Arc::new(ClientSlots {
            max,
            open: DashMap::new(),
        })
    }

    /// Counts a new connection from `ip`, or `None` if that client already
    /// has its share open.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = ClientKey::of(ip);
        let mut n = self.open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            slots: self.clone(),
            key,
        })
    }

    /// Open connections of the client `ip` belongs to.
    #[cfg(test)]
    pub(crate) fn open(&self, ip: IpAddr) -> usize {
        self.open.get(&ClientKey::of(ip)).map_or(0, |n| *n)
    }

    /// Clients with at least one connection open (the map holds no others).
    #[cfg(test)]
    pub(crate) fn clients(&self) -> usize {
        self.open.len()
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        // Remove the entry at zero so the map only holds clients that are
        // connected: its size follows the connection cap, not every address
        // ever seen.
        if let Entry::Occupied(mut e) = self.slots.open.entry(self.key) {
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_share_and_no_more() {
        let slots = ClientSlots::new(2);
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
        let slots = ClientSlots::new(5);
        let s = slots.take("192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(slots.clients(), 1);
        drop(s);
        assert_eq!(slots.clients(), 0);
    }
}
