//! A per-client limit on requests to an endpoint anyone may call without a
//! credential (`POST /token/leaked`): at most `PER_HOUR` requests in any
//! hour, counted per client (`ClientKey`: an IPv4 address or an IPv6 /64).
//!
//! Exact over a sliding hour: each client keeps the times of its latest
//! `PER_HOUR` admitted requests in a ring, and a request is admitted when
//! the oldest of them is an hour old. A fixed window or a token bucket
//! would let up to twice as many through across a window's edge. The ring
//! costs 240 bytes a client; the set-associative `Table` bounds the
//! clients tracked (`SETS × WAYS`), so memory stays bounded whatever the
//! number of addresses, and a full set makes room by dropping the client
//! that asked longest ago.

use std::net::IpAddr;
use std::time::Instant;

use super::{ClientKey, Table, Throttled};

/// Requests a client may make in any hour.
pub(crate) const PER_HOUR: usize = 60;
/// The window, in seconds.
const WINDOW: u32 = 3600;
/// Sets of the table: with 8 ways, 8,192 clients tracked at most (about
/// 2 MiB when every set is in use; nothing while no one reports).
const SETS: usize = 1024;

/// One client's latest admitted requests, seconds since the limit's epoch.
#[derive(Clone, Copy)]
struct Ring {
    times: [u32; PER_HOUR],
    /// Where the next time goes; when the ring is full, the oldest time.
    next: u8,
    len: u8,
}

impl Ring {
    const EMPTY: Ring = Ring {
        times: [0; PER_HOUR],
        next: 0,
        len: 0,
    };

    fn latest(&self) -> u32 {
        if self.len == 0 {
            return 0;
        }
        self.times[(usize::from(self.next) + PER_HOUR - 1) % PER_HOUR]
    }

    /// Admits a request at `now` (recording it), or says how many seconds
    /// until the oldest recorded one is an hour old.
    fn admit(&mut self, now: u32) -> Result<(), u32> {
        if usize::from(self.len) == PER_HOUR {
            let free_at = self.times[usize::from(self.next)].saturating_add(WINDOW);
            if now < free_at {
                return Err(free_at - now);
            }
        } else {
            self.len += 1;
        }
        self.times[usize::from(self.next)] = now;
        self.next = u8::try_from((usize::from(self.next) + 1) % PER_HOUR).unwrap_or(0);
        Ok(())
    }
}

pub(crate) struct HourlyLimit {
    /// Time zero of the second counts (u32 seconds: 136 years).
    epoch: Instant,
    table: Table<Ring>,
}

impl HourlyLimit {
    /// An empty limit; `now` is time zero.
    pub(crate) fn new(now: Instant) -> HourlyLimit {
        HourlyLimit {
            epoch: now,
            table: Table::new(SETS),
        }
    }

    fn secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// Admits (and counts) one request of `ip` at `now`, or refuses it
    /// with the seconds until one more would be admitted. A refused
    /// request is not counted.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Throttled> {
        let now = self.secs(now);
        let (admitted, _) = self
            .table
            .upsert(ClientKey::of(ip), Ring::EMPTY, Ring::latest, |r| {
                r.admit(now)
            });
        admitted.map_err(|secs| Throttled {
            retry_after: u64::from(secs.max(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn at_most_sixty_in_any_hour() {
        let t0 = Instant::now();
        let l = HourlyLimit::new(t0);
        let a = ip("192.0.2.1");
        // 30 at once, 30 more half an hour later: all admitted.
        for _ in 0..30 {
            assert!(l.admit(a, t0).is_ok());
        }
        let half = t0 + Duration::from_secs(1800);
        for _ in 0..30 {
            assert!(l.admit(a, half).is_ok());
        }
        // The 61st within the hour is refused until the first 30 are an hour old.
        let r = l.admit(a, half + Duration::from_secs(10)).unwrap_err();
        assert_eq!(r.retry_after, 1790);
        // Refusals are not counted: at the hour, exactly 30 more pass.
        let hour = t0 + Duration::from_secs(3600);
        for _ in 0..30 {
            assert!(l.admit(a, hour).is_ok());
        }
        assert!(l.admit(a, hour).is_err());
        // Another client has its own hour.
        assert!(l.admit(ip("192.0.2.2"), hour).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let t0 = Instant::now();
        let l = HourlyLimit::new(t0);
        for i in 0..PER_HOUR {
            assert!(l.admit(ip(&format!("2001:db8:1:2::{i:x}")), t0).is_ok());
        }
        assert!(l.admit(ip("2001:db8:1:2:ffff::1"), t0).is_err());
        assert!(l.admit(ip("2001:db8:1:3::1"), t0).is_ok());
    }

    #[test]
    fn memory_is_bounded_whatever_the_number_of_clients() {
        let t0 = Instant::now();
        let l = HourlyLimit::new(t0);
        for n in 0..100_000u32 {
            let _ = l.admit(IpAddr::from(n.to_be_bytes()), t0);
        }
        assert!(l.table.len() <= l.table.capacity());
    }
}
