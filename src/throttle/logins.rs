//! Slowing down password guessing: the admin accounts' logins (the
//! page's form, HTTP Basic on the admin listener and at the public
//! listener's introspection), per client and per account name.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{ClientKey, Table};

/// Failures from one client before logins are slowed down.
const FREE_FAILURES: u32 = 5;
/// Longest wait imposed after repeated failures.
const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// Sets of the throttle's table: with 8 ways, 4,096 clients remembered at
/// most (about 160 KiB when full); beyond that the stalest make room.
const THROTTLE_SETS: usize = 512;

/// Slows down password guessing per client (an IPv4 address or an IPv6
/// /64): after a few failures, each further attempt must wait, doubling up
/// to five minutes. A success clears it.
///
/// An attempt is counted when it starts, before the password hash is
/// computed, and given back only if it succeeds: so parallel guesses are
/// held to the budget too, instead of all passing the check while the first
/// one is still hashing.
pub(crate) struct LoginThrottle {
    table: Table<Logins>,
}

/// One client's login attempts.
#[derive(Debug, Clone, Copy)]
struct Logins {
    /// Failed attempts, not cleared yet by a success.
    failures: u32,
    /// Attempts started and not finished: each counts as a failure until it succeeds.
    in_flight: u32,
    /// When the latest attempt started.
    last: Instant,
}

impl Logins {
    /// How long this client must still wait before its next attempt.
    fn wait(&self, now: Instant) -> Option<Duration> {
        let counted = self.failures.saturating_add(self.in_flight);
        if counted < FREE_FAILURES {
            return None;
        }
        let left = lockout(counted).saturating_sub(now.saturating_duration_since(self.last));
        // Past the free attempts, one at a time: an attempt still running
        // may yet be another failure.
        if left.is_zero() && self.in_flight == 0 {
            None
        } else {
            Some(left.max(Duration::from_secs(1)))
        }
    }
}

/// An attempt in progress: `succeeded` gives it back; dropped otherwise
/// (a wrong password, or a client that went away), it stays a failure.
pub(crate) struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    key: ClientKey,
    outcome: Outcome,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Failed,
    Succeeded,
    /// Never checked (another throttle refused it first): counts neither way.
    Cancelled,
}

impl Attempt<'_> {
    /// The password was right: this client's failures are cleared.
    pub(crate) fn succeeded(mut self) {
        self.outcome = Outcome::Succeeded;
    }

    /// No password was checked after all: the attempt is given back.
    pub(crate) fn cancel(mut self) {
        self.outcome = Outcome::Cancelled;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome;
        self.throttle.table.get(self.key, |e| {
            e.in_flight = e.in_flight.saturating_sub(1);
            match outcome {
                Outcome::Succeeded => e.failures = 0,
                Outcome::Failed => e.failures = e.failures.saturating_add(1),
                Outcome::Cancelled => {}
            }
        });
    }
}

impl Default for LoginThrottle {
    fn default() -> LoginThrottle {
        LoginThrottle {
            table: Table::new(THROTTLE_SETS),
        }
    }
}

impl LoginThrottle {
    /// `Err(wait)` if `ip` must wait before trying again. Counts nothing: for
    /// refusing early, before a request body is read.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.table.get(ClientKey::of(ip), |e| e.wait(now)) {
            Some(Some(wait)) => Err(wait),
            _ => Ok(()),
        }
    }

    /// Starts an attempt for `ip`, counted as a failure until it succeeds;
    /// `Err(wait)` if `ip` must wait first. Call it before hashing the password.
    pub(crate) fn begin(&self, ip: IpAddr, now: Instant) -> Result<Attempt<'_>, Duration> {
        let key = ClientKey::of(ip);
        let fresh = Logins {
            failures: 0,
            in_flight: 0,
            last: now,
        };
        // Clients with an attempt running make room last, then the stalest first.
        let rank = |e: &Logins| (e.in_flight > 0, e.last);
        let (started, _) = self.table.upsert(key, fresh, rank, |e| {
            if let Some(wait) = e.wait(now) {
                return Err(wait);
            }
            e.in_flight += 1;
            e.last = now;
            Ok(())
        });
        started.map(|()| Attempt {
            throttle: self,
            key,
            outcome: Outcome::Failed,
        })
    }

    /// Forgets clients with nothing running whose last attempt is long past,
    /// and those a success cleared.
    pub(crate) fn sweep(&self, now: Instant) {
        self.table.retain(|_, e| {
            e.in_flight > 0
                || (e.failures > 0 && now.saturating_duration_since(e.last) < MAX_LOCKOUT * 3)
        });
    }
}

fn lockout(failures: u32) -> Duration {
    let extra = failures.saturating_sub(FREE_FAILURES).min(16);
    Duration::from_secs(1u64 << extra).min(MAX_LOCKOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(t: &LoginThrottle, ip: IpAddr, now: Instant) {
        drop(t.begin(ip, now).unwrap());
    }

    #[test]
    fn throttle_slows_repeated_failures() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert!(t.check(ip, now).is_ok());
            fail(&t, ip, now);
        }
        let wait = t.check(ip, now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(t.begin(ip, now).is_err());
        assert!(t.check(ip, now + Duration::from_secs(2)).is_ok());
        fail(&t, ip, now + Duration::from_secs(2));
        assert_eq!(
            t.check(ip, now + Duration::from_secs(2)).unwrap_err(),
            Duration::from_secs(2)
        );
        // Another client is unaffected; success clears.
        assert!(t.check("10.0.0.2".parse().unwrap(), now).is_ok());
        let later = now + Duration::from_secs(10);
        t.begin(ip, later).unwrap().succeeded();
        assert!(t.check(ip, later).is_ok());
        assert_eq!(lockout(100), MAX_LOCKOUT);
    }

    #[test]
    fn attempts_count_before_they_finish() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        // Twenty guesses at once: only the free ones may start.
        let started: Vec<_> = (0..20).filter_map(|_| t.begin(ip, now).ok()).collect();
        assert_eq!(started.len(), FREE_FAILURES as usize);
        drop(started);
        assert!(t.begin(ip, now).is_err());
        // Past the free ones, one at a time even once the wait is over.
        let after = now + Duration::from_secs(2);
        let one = t.begin(ip, after).unwrap();
        assert!(t.begin(ip, after).is_err());
        one.succeeded();
        assert!(t.begin(ip, after).is_ok());
    }

    #[test]
    fn throttle_counts_ipv6_per_64_and_stays_bounded() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for n in 0..FREE_FAILURES {
            fail(&t, format!("2001:db8:1:2::{n}").parse().unwrap(), now);
        }
        assert!(t
            .check("2001:db8:1:2:ffff::1".parse().unwrap(), now)
            .is_err());
        assert!(t.check("2001:db8:1:3::1".parse().unwrap(), now).is_ok());
        for n in 0..100_000u32 {
            fail(&t, IpAddr::V4(n.into()), now);
        }
        assert!(t.table.len() <= t.table.capacity());
        t.sweep(now + MAX_LOCKOUT * 3);
        assert_eq!(t.table.len(), 0);
    }
}
