//! The public listener's throttle on failed authentication.
//!
//! Only what could be a guess counts (the callers decide): a forged or
//! malformed access token, an unknown, deleted or mistyped refresh token.
//! Once a client (`ClientKey`) has failed `budget` times within a minute
//! (counted from its first failure), every request of it that needs a token
//! check answers 429 until that minute is over. IPv6 clients are counted per
//! /64, and their /56 and /48 have budgets of their own, 4 and 16 times as
//! large (`net::WIDER_V6`), so a subscriber's many /64s are not many budgets.
//!
//! Cost: the check runs before any MAC, HMAC or map lookup. A client that is
//! not blocked pays a hash of its address and one relaxed atomic load (the
//! set's hint); only a failure, or a request from a blocked set, takes the
//! set's lock. Throttled requests write no audit line each: they are
//! counted, and `sweep` writes one `auth.throttled` line per client and
//! window with the count.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::{ClientKey, Table};
use crate::audit::{Audit, Event};
use crate::net::WIDER_V6;

/// The counting window, in seconds: the budget is per minute.
const WINDOW: u32 = 60;
/// Sets of the table: with 8 ways, 16,384 clients tracked at most (about
/// 640 KiB when every set is in use, 32 KiB idle). Beyond that the coldest
/// entries make room.
const SETS: usize = 2048;

/// One client's failures in its current window.
#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    /// Seconds since the throttle's epoch; the window ends `WINDOW` later,
    /// and so does a block.
    window_start: u32,
    failures: u32,
    blocked: bool,
    /// Requests answered 429 in this window, for the one audit line.
    refused: u32,
    /// The latest failure, so the coldest entry makes room first.
    last: u32,
}

impl Failures {
    fn window_end(&self) -> u32 {
        self.window_start.saturating_add(WINDOW)
    }

    fn blocked_at(&self, now: u32) -> bool {
        self.blocked && now < self.window_end()
    }
}

/// A request refused by the throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Whole seconds until the client's window ends (at least 1), for `Retry-After`.
    pub retry_after: u64,
}

pub struct AuthThrottle {
    /// Failures allowed per client and window; 0 turns the throttle off.
    /// Atomic so that a reload (`set_budget`) changes it under running
    /// workers; read relaxed, since no other memory depends on it.
    budget: AtomicU32,
    /// Time zero of the second counts below (u32 seconds: 136 years).
    epoch: Instant,
    table: Table<Failures>,
    /// Per set: until when (seconds since `epoch`) some client of the set is
    /// blocked. Read on every request; written only when a client becomes
    /// blocked. Apart from the table, so that reading it never waits for a
    /// lock and stays one cache line per 16 sets.
    hints: Box<[AtomicU32]>,
}

impl AuthThrottle {
    /// A new budget (`public.auth_failures_per_minute`, reloaded). Counts
    /// already made stay; a client over the new budget is blocked at its
    /// next failure.
    pub fn set_budget(&self, budget: u32) {
        self.budget.store(budget, Ordering::Relaxed);
    }

    /// `budget` failures per client and minute (0: never throttle); `now` is time zero.
    pub fn new(budget: u32, now: Instant) -> AuthThrottle {
        let table = Table::new(SETS);
        let sets = table.capacity() / super::table::WAYS;
        AuthThrottle {
            budget: AtomicU32::new(budget),
            epoch: now,
            table,
            hints: (0..sets).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// Whether `ip` may have its token checked now. Call it before any MAC
    /// work; a refusal is counted for the client's audit line. An IPv6
    /// client is also refused while its /56 or /48 is over that network's
    /// (larger) budget.
    #[inline]
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Throttled> {
        if self.budget.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let key = ClientKey::of(ip);
        let now = self.secs(now);
        self.check_key(key, now)?;
        if let Some(wider) = key.wider() {
            for k in wider {
                self.check_key(k, now)?;
            }
        }
        Ok(())
    }

    #[inline]
    fn check_key(&self, key: ClientKey, now: u32) -> Result<(), Throttled> {
        let set = self.table.set_of(key);
        if self.hints[set].load(Ordering::Relaxed) <= now {
            return Ok(());
        }
        self.check_blocked(key, now)
    }

    /// Some client of this set is blocked: is it this one?
    #[cold]
    fn check_blocked(&self, key: ClientKey, now: u32) -> Result<(), Throttled> {
        let blocked = self.table.get(key, |e| {
            e.blocked_at(now).then(|| {
                e.refused = e.refused.saturating_add(1);
                e.window_end() - now
            })
        });
        match blocked.flatten() {
            Some(secs) => Err(Throttled {
                retry_after: u64::from(secs.max(1)),
            }),
            None => Ok(()),
        }
    }

    /// Counts a failure that could be a guess. The failure that uses up the
    /// budget blocks the client for the rest of its window. An IPv6
    /// failure counts for its /64, and for its /56 and /48 against budgets
    /// `WIDER_V6` times as large: a subscriber holding a /56 has 256 /64s,
    /// and without these would have 256 budgets.
    pub fn failed(&self, ip: IpAddr, now: Instant, audit: &Audit) {
        let budget = self.budget.load(Ordering::Relaxed);
        if budget == 0 {
            return;
        }
        let key = ClientKey::of(ip);
        let now = self.secs(now);
        self.failed_key(key, budget, now, audit);
        if let Some(wider) = key.wider() {
            for (k, (_, times)) in wider.into_iter().zip(WIDER_V6) {
                let times = u32::try_from(times).unwrap_or(u32::MAX);
                self.failed_key(k, budget.saturating_mul(times), now, audit);
            }
        }
    }

    fn failed_key(&self, key: ClientKey, budget: u32, now: u32, audit: &Audit) {
        let fresh = Failures {
            window_start: now,
            ..Failures::default()
        };
        // Cold entries make room first, and a blocked client last.
        let rank = |e: &Failures| (e.blocked_at(now), e.last);
        let ((ended, newly_blocked), evicted) = self.table.upsert(key, fresh, rank, |e| {
            let mut ended = None;
            if now >= e.window_end() {
                // A new window: the old one's refusals still need their line.
                ended = (e.refused > 0).then_some(*e);
                *e = fresh;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            let newly_blocked = !e.blocked && e.failures >= budget;
            if newly_blocked {
                e.blocked = true;
            }
            (ended, newly_blocked.then(|| e.window_end()))
        });
        if let Some(until) = newly_blocked {
            self.hints[self.table.set_of(key)].fetch_max(until, Ordering::Relaxed);
            tracing::warn!(
                client = %key.describe(),
                failures = budget,
                retry_after = until - now,
                "too many failed authentications; answering 429 until the minute is over"
            );
        }
        for (k, e) in ended.map(|e| (key, e)).into_iter().chain(evicted) {
            self.report(audit, k, &e);
        }
    }

    /// Writes the line of every window that is over and frees its entry.
    /// Called periodically (`periodic`), off the request path.
    pub fn sweep(&self, now: Instant, audit: &Audit) {
        let now = self.secs(now);
        self.drain(audit, |e| now >= e.window_end());
    }

    /// Writes the line of every window with refusals, over or not (at shutdown).
    pub fn report_all(&self, audit: &Audit) {
        self.drain(audit, |_| true);
    }

    fn drain(&self, audit: &Audit, done: impl Fn(&Failures) -> bool) {
        let mut lines = Vec::new();
        self.table.retain(|k, e| {
            if !done(e) {
                return true;
            }
            if e.refused > 0 {
                lines.push((k, *e));
            }
            false
        });
        // Written after the sets are unlocked: a line is a few microseconds.
        for (k, e) in lines {
            self.report(audit, k, &e);
        }
    }

    fn report(&self, audit: &Audit, key: ClientKey, e: &Failures) {
        if e.refused == 0 {
            return;
        }
        let reason = format!(
            "{} failed authentications within {WINDOW} s from {}; requests refused with 429",
            e.failures,
            key.describe()
        );
        audit.record(&Event {
            event: "auth.throttled",
            actor: Some("client"),
            client_ip: Some(key.ip()),
            reason: Some(&reason),
            count: Some(u64::from(e.refused)),
            ..Event::default()
        });
    }

    /// Clients tracked now (for tests).
    pub fn tracked(&self) -> usize {
        self.table.len()
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
    fn blocks_after_the_budget_until_the_minute_is_over() {
        let t0 = Instant::now();
        let t = AuthThrottle::new(3, t0);
        let audit = Audit::off();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(t.check(a, t0), Ok(()));
            t.failed(a, t0, &audit);
        }
        let later = t0 + Duration::from_secs(20);
        assert_eq!(t.check(a, later), Err(Throttled { retry_after: 40 }));
        // Other clients are not slowed, not even those of the same set.
        let key = |ip| t.table.set_of(ClientKey::of(ip));
        let neighbour = (1..u32::MAX)
            .map(|n| IpAddr::V4(n.into()))
            .find(|&n| n != a && key(n) == key(a))
            .unwrap();
        assert_eq!(t.check(neighbour, later), Ok(()));
        assert_eq!(t.check(ip("192.0.2.2"), later), Ok(()));
        assert_eq!(t.check(ip("2001:db8::1"), later), Ok(()));
        // The minute passes: a fresh budget.
        let next = t0 + Duration::from_secs(60);
        assert_eq!(t.check(a, next), Ok(()));
        t.failed(a, next, &audit);
        assert_eq!(t.check(a, next), Ok(()));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let t0 = Instant::now();
        let t = AuthThrottle::new(2, t0);
        let audit = Audit::off();
        t.failed(ip("2001:db8:1:2::1"), t0, &audit);
        t.failed(ip("2001:db8:1:2::ffff"), t0, &audit);
        assert!(t.check(ip("2001:db8:1:2:dead:beef::7"), t0).is_err());
        assert_eq!(t.check(ip("2001:db8:1:3::1"), t0), Ok(()));
        // The /64, its /56 and its /48.
        assert_eq!(t.tracked(), 3);
    }

    #[test]
    fn a_56_and_a_48_have_bounded_budgets() {
        let t0 = Instant::now();
        let t = AuthThrottle::new(2, t0);
        let audit = Audit::off();
        // One failure from each of 7 /64s of one /56: no /64 is over 2,
        // and the /56 (budget 8) is not yet either.
        for n in 0..7 {
            t.failed(ip(&format!("2001:db8:1:2{n:02x}::1")), t0, &audit);
        }
        assert_eq!(t.check(ip("2001:db8:1:2ff::1"), t0), Ok(()));
        // The eighth uses up the /56's budget: all of it waits, the rest of
        // the /48 does not.
        t.failed(ip("2001:db8:1:2aa::1"), t0, &audit);
        assert!(t.check(ip("2001:db8:1:2ff::1"), t0).is_err());
        assert_eq!(t.check(ip("2001:db8:1:300::1"), t0), Ok(()));
        // Over 16 /56s of one /48 (2 each, under their budget of 8): the
        // /48's budget of 32 runs out, and its whole /48 waits.
        for n in 0..16u32 {
            for _ in 0..2 {
                t.failed(ip(&format!("2001:db8:2:{:x}::1", n << 8)), t0, &audit);
            }
        }
        assert!(t.check(ip("2001:db8:2:ff01::1"), t0).is_err());
        assert_eq!(t.check(ip("2001:db8:3::1"), t0), Ok(()));
    }

    #[test]
    fn a_zero_budget_never_throttles() {
        let t0 = Instant::now();
        let t = AuthThrottle::new(0, t0);
        for _ in 0..1000 {
            t.failed(ip("192.0.2.1"), t0, &Audit::off());
        }
        assert_eq!(t.check(ip("192.0.2.1"), t0), Ok(()));
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded_whatever_the_number_of_clients() {
        let t0 = Instant::now();
        let t = AuthThrottle::new(1, t0);
        let audit = Audit::off();
        for n in 0..100_000u32 {
            t.failed(IpAddr::V4(n.into()), t0, &audit);
        }
        assert_eq!(t.tracked(), SETS * super::super::table::WAYS);
        // The sweep frees windows that are over.
        t.sweep(t0 + Duration::from_secs(61), &audit);
        assert_eq!(t.tracked(), 0);
    }
}
