//! Web-page sessions and the failed-login throttle.
//!
//! A login sets `tg_session` (HttpOnly, Secure, SameSite=Strict, Max-Age =
//! `admin.session_ttl`). Only a SHA-256 of the cookie value is kept, so a
//! memory dump does not hand out live sessions. Every state-changing call made
//! with a session must also carry `X-CSRF-Token`, a second random value the
//! page receives at login and keeps in memory only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secrets::random_bytes;

pub(crate) const COOKIE: &str = "tg_session";
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// Failures from one IP before logins are slowed down.
const FREE_FAILURES: u32 = 5;
/// Longest wait imposed after repeated failures.
const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// IPs remembered at most; the oldest entries go first beyond this.
const MAX_TRACKED: usize = 10_000;

struct Session {
    csrf: String,
    expires: Instant,
}

pub struct Sessions {
    ttl: Duration,
    /// SHA-256(cookie value) → session. DashMap: looked up on every page call.
    live: DashMap<[u8; 32], Session>,
}

fn fingerprint(cookie: &str) -> [u8; 32] {
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

    /// Starts a session: returns (cookie value, CSRF token).
    pub fn create(&self, now: Instant) -> Result<(String, String), getrandom::Error> {
        let cookie = random_token()?;
        let csrf = random_token()?;
        self.live.insert(
            fingerprint(&cookie),
            Session {
                csrf: csrf.clone(),
                expires: now + self.ttl,
            },
        );
        Ok((cookie, csrf))
    }

    /// The CSRF token of a live session.
    pub fn lookup(&self, cookie: &str, now: Instant) -> Option<String> {
        let s = self.live.get(&fingerprint(cookie))?;
        (now < s.expires).then(|| s.csrf.clone())
    }

    pub fn remove(&self, cookie: &str) {
        self.live.remove(&fingerprint(cookie));
    }

    pub fn sweep(&self, now: Instant) {
        self.live.retain(|_, s| now < s.expires);
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

/// Slows down password guessing per client IP: after a few failures, each
/// further attempt must wait, doubling up to five minutes. A success clears it.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    /// `Err(wait)` if this IP must wait before trying again.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some(&(n, last)) if n >= FREE_FAILURES => {
                let wait = lockout(n);
                let since = now.saturating_duration_since(last);
                if since < wait {
                    Err(wait - since)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            // Forget the stalest entry rather than grow without bound.
            if let Some(oldest) = map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        let e = map.entry(ip).or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        e.1 = now;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }

    /// Forgets IPs whose last failure is long past.
    pub fn sweep(&self, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, last)| now.saturating_duration_since(*last) < MAX_LOCKOUT * 3);
    }
}

fn lockout(failures: u32) -> Duration {
    let extra = failures.saturating_sub(FREE_FAILURES).min(16);
    Duration::from_secs(1u64 << extra).min(MAX_LOCKOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_can_be_removed() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let (cookie, csrf) = s.create(t0).unwrap();
        assert_eq!(s.lookup(&cookie, t0).as_deref(), Some(csrf.as_str()));
        assert!(s.lookup(&cookie, t0 + Duration::from_secs(61)).is_none());
        assert!(s.lookup("forged", t0).is_none());
        s.remove(&cookie);
        assert!(s.lookup(&cookie, t0).is_none());
    }

    #[test]
    fn throttle_slows_repeated_failures() {
        let t = Throttle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert!(t.check(ip, now).is_ok());
            t.failed(ip, now);
        }
        let wait = t.check(ip, now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(t.check(ip, now + Duration::from_secs(2)).is_ok());
        t.failed(ip, now);
        assert_eq!(t.check(ip, now).unwrap_err(), Duration::from_secs(2));
        // Another IP is unaffected; success clears.
        assert!(t.check("10.0.0.2".parse().unwrap(), now).is_ok());
        t.succeeded(ip);
        assert!(t.check(ip, now).is_ok());
        assert_eq!(lockout(100), MAX_LOCKOUT);
    }

    #[test]
    fn cookies() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; tg_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("abc"));
        assert!(
            set_cookie("v", Duration::from_secs(5)).contains("HttpOnly; Secure; SameSite=Strict")
        );
    }
}
