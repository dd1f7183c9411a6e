//! Web-page sessions. (The failed-login throttle is
//! `throttle::LoginThrottle`: the public listener's introspection checks
//! passwords too.)
//!
//! A login sets `__Host-tg_session` (HttpOnly, Secure, SameSite=Strict,
//! Path=/, no Domain, Max-Age = `admin.session_ttl`). Only a SHA-256 of the cookie value is kept, so a
//! memory dump does not hand out live sessions. Every state-changing call made
//! with a session must also carry `X-CSRF-Token`, a second random value the
//! page receives at login and keeps in memory only.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::roles::Who;
use crate::secrets::random_bytes;

/// `__Host-`: browsers accept the cookie only with `Secure`, `Path=/` and no
/// `Domain`, from a secure origin, so no other host (a sibling subdomain,
/// or plain HTTP on this host's name) can set or shadow the session.
pub(crate) const COOKIE: &str = "__Host-tg_session";
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// A cookie value's length: 32 random bytes in unpadded base64url.
pub(crate) const COOKIE_CHARS: usize = 43;

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

/// What only the admin listener keeps of its sign-ins: the page's sessions.
/// (Passwords are checked by `passwords::Passwords`, in the shared state.)
pub(crate) struct AdminAuth {
    pub(crate) sessions: Sessions,
}

impl AdminAuth {
    pub(crate) fn new(session_ttl: Duration) -> AdminAuth {
        AdminAuth {
            sessions: Sessions::new(session_ttl),
        }
    }
}

pub(crate) struct Sessions {
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
    pub(crate) fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            live: DashMap::new(),
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session for `who`: returns (cookie value, CSRF token).
    pub(crate) fn create(
        &self,
        now: Instant,
        who: Who,
    ) -> Result<(String, String), getrandom::Error> {
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
    pub(crate) fn lookup(&self, cookie: &str, now: Instant) -> Option<(Who, String)> {
        let s = self.live.get(&fingerprint(cookie))?;
        s.live_at(now).then(|| (s.who.clone(), s.csrf.clone()))
    }

    pub(crate) fn remove(&self, cookie: &str) {
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

    pub(crate) fn sweep(&self, now: Instant) {
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
