//! Web-page sessions and the failed-login throttle.
//!
//! A login sets `__Host-tg_session` (HttpOnly, Secure, SameSite=Strict,
//! Path=/, no Domain, Max-Age = `admin.session_ttl`). Only a SHA-256 of the cookie value is kept, so a
//! memory dump does not hand out live sessions. Every state-changing call made
//! with a session must also carry `X-CSRF-Token`, a second random value the
//! page receives at login and keeps in memory only.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::roles::Who;
use crate::secrets::random_bytes;
use crate::throttle::{ClientKey, Table};

/// `__Host-`: browsers accept the cookie only with `Secure`, `Path=/` and no
/// `Domain`, from a secure origin, so no other host (a sibling subdomain,
/// or plain HTTP on this host's name) can set or shadow the session.
pub(crate) const COOKIE: &str = "__Host-tg_session";
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// A cookie value's length: 32 random bytes in unpadded base64url.
pub(crate) const COOKIE_CHARS: usize = 43;

/// Failures from one client before logins are slowed down.
const FREE_FAILURES: u32 = 5;
/// Longest wait imposed after repeated failures.
const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// Sets of the throttle's table: with 8 ways, 4,096 clients remembered at
/// most (about 160 KiB when full); beyond that the stalest make room.
const THROTTLE_SETS: usize = 512;

struct Session {
    who: Who,
    csrf: String,
    /// `None`: `admin.session_ttl` reaches past any `Instant` this platform
    /// can hold (validation caps it at 30 days; `Sessions` is public, so it
    /// does not rely on that), so the session ends only when removed.
    expires: Option<Instant>,
}

impl Session {
    fn live_at(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

pub struct Sessions {
    ttl: Duration,
    /// SHA-256(cookie value) → session. DashMap: looked up on every page call.
    live: DashMap<[u8; 32], Session>,
}

/// What identifies a session everywhere it is kept: the SHA-256 of its
/// cookie, never the cookie.
pub(crate) fn fingerprint(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

fn random_token() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    random_bytes(&mut b)?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            live: DashMap::new(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session for `who`: returns (cookie value, CSRF token).
    pub fn create(&self, now: Instant, who: Who) -> Result<(String, String), getrandom::Error> {
        let cookie = random_token()?;
        let csrf = random_token()?;
        self.live.insert(
            fingerprint(&cookie),
            Session {
                who,
                csrf: csrf.clone(),
                // Checked: `Instant + Duration` panics on overflow.
                expires: now.checked_add(self.ttl),
            },
        );
        Ok((cookie, csrf))
    }

    /// Who a live session belongs to, and its CSRF token.
    pub fn lookup(&self, cookie: &str, now: Instant) -> Option<(Who, String)> {
        let s = self.live.get(&fingerprint(cookie))?;
        s.live_at(now).then(|| (s.who.clone(), s.csrf.clone()))
    }

    pub fn remove(&self, cookie: &str) {
        self.live.remove(&fingerprint(cookie));
    }

    /// Caches a session read from the shared store (another replica
    /// started it), ending `left` from `now`.
    pub(crate) fn insert_shared(
        &self,
        fp: [u8; 32],
        who: Who,
        csrf: String,
        now: Instant,
        left: Duration,
    ) {
        self.live.insert(
            fp,
            Session {
                who,
                csrf,
                expires: now.checked_add(left.min(self.ttl)),
            },
        );
    }

    /// Forgets a session by its fingerprint (ended on another replica).
    pub(crate) fn remove_fingerprint(&self, fp: &[u8; 32]) {
        self.live.remove(fp);
    }

    /// Ends every session of the account `user` (disabled or deleted).
    pub(crate) fn end_user(&self, user: &str) {
        self.live.retain(|_, s| s.who.user != user);
    }

    pub fn sweep(&self, now: Instant) {
        self.live.retain(|_, s| s.live_at(now));
    }
}

/// Constant-time comparison of a presented CSRF token with the session's.
pub(crate) fn csrf_matches(expected: &str, presented: Option<&[u8]>) -> bool {
    presented.is_some_and(|p| bool::from(expected.as_bytes().ct_eq(p)))
}

/// Finds the session cookie among `Cookie` headers.
pub(crate) fn cookie_value(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

pub(crate) fn set_cookie(value: &str, ttl: Duration) -> String {
    format!(
        "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        ttl.as_secs()
    )
}

pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

/// Slows down password guessing per client (an IPv4 address or an IPv6
/// /64): after a few failures, each further attempt must wait, doubling up
/// to five minutes. A success clears it.
///
/// An attempt is counted when it starts, before the password hash is
/// computed, and given back only if it succeeds: so parallel guesses are
/// held to the budget too, instead of all passing the check while the first
/// one is still hashing.
pub struct Throttle {
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
pub struct Attempt<'a> {
    throttle: &'a Throttle,
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
    pub fn succeeded(mut self) {
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

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            table: Table::new(THROTTLE_SETS),
        }
    }
}

impl Throttle {
    /// `Err(wait)` if `ip` must wait before trying again. Counts nothing: for
    /// refusing early, before a request body is read.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.table.get(ClientKey::of(ip), |e| e.wait(now)) {
            Some(Some(wait)) => Err(wait),
            _ => Ok(()),
        }
    }

    /// Starts an attempt for `ip`, counted as a failure until it succeeds;
    /// `Err(wait)` if `ip` must wait first. Call it before hashing the password.
    pub fn begin(&self, ip: IpAddr, now: Instant) -> Result<Attempt<'_>, Duration> {
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
    pub fn sweep(&self, now: Instant) {
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
    use crate::roles::{Role, Via};

    fn alice() -> Who {
        Who {
            user: "alice".into(),
            role: Role::Manager,
            via: Via::Password,
        }
    }

    #[test]
    fn sessions_expire_and_can_be_removed() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let (cookie, csrf) = s.create(t0, alice()).unwrap();
        assert_eq!(s.lookup(&cookie, t0), Some((alice(), csrf)));
        assert!(s.lookup(&cookie, t0 + Duration::from_secs(61)).is_none());
        assert!(s.lookup("forged", t0).is_none());
        s.remove(&cookie);
        assert!(s.lookup(&cookie, t0).is_none());
    }

    fn fail(t: &Throttle, ip: IpAddr, now: Instant) {
        drop(t.begin(ip, now).unwrap());
    }

    #[test]
    fn no_lifetime_can_overflow_the_expiry() {
        let t0 = Instant::now();
        for ttl in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
            let s = Sessions::new(ttl);
            let (cookie, _) = s.create(t0, alice()).unwrap();
            assert!(s.lookup(&cookie, t0).is_some());
        }
    }

    #[test]
    fn throttle_slows_repeated_failures() {
        let t = Throttle::default();
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
        let t = Throttle::default();
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
        let t = Throttle::default();
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

    #[test]
    fn cookies() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; tg_session=old; __Host-tg_session=abc; b=2"
                .parse()
                .unwrap(),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("abc"));
        // What browsers require of a `__Host-` cookie: Secure, Path=/, no Domain.
        for set in [set_cookie("v", Duration::from_secs(5)), clear_cookie()] {
            assert!(set.starts_with("__Host-tg_session="), "{set}");
            assert!(set.contains("; Path=/;"), "{set}");
            assert!(set.contains("HttpOnly; Secure; SameSite=Strict"), "{set}");
            assert!(!set.to_ascii_lowercase().contains("domain"), "{set}");
        }
    }
}
