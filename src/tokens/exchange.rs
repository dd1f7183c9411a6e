//! The refresh → access exchange (RFC 6749 §6), free of HTTP: it receives a
//! decoded grant, checks the refresh token, and mints an access token. The
//! public listener decodes the request and turns the result into RFC 6749's
//! answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::access::AccessTokens;
use super::format::{parse_refresh, RefreshHasher};
use crate::clock::Clock;
use crate::store::{RefreshStore, RefreshToken};

/// A `grant_type=refresh_token` request, decoded and with its token present.
#[derive(Debug, Clone, Copy)]
pub struct RefreshGrant<'a> {
    pub refresh_token: &'a str,
}

/// Who made the exchange, for the refresh token's usage record.
#[derive(Debug, Clone, Copy, Default)]
pub struct Client<'a> {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
}

/// Why no access token was issued.
#[derive(Debug, Clone)]
pub enum ExchangeError {
    /// Unknown, deleted or mistyped: one answer for all, so a caller cannot
    /// probe which tokens once existed.
    NotValid,
    /// Known but past its expiry (its owner should ask for a new one).
    Expired(Arc<RefreshToken>),
    /// Known, but bound to networks the client is not in.
    Network(Arc<RefreshToken>),
    /// Known, but suspended by an administrator (or a leak report).
    Suspended(Arc<RefreshToken>),
    /// Known, but its not-before is still ahead.
    NotYetValid(Arc<RefreshToken>),
    /// Known, but its usage limit is used up.
    UsageLimit(Arc<RefreshToken>),
    /// Only when the OS random generator fails.
    Unavailable,
}

/// A new access token.
#[derive(Debug)]
pub struct Issued {
    pub access_token: String,
    /// Whole seconds: min(access TTL, time left on the refresh token).
    pub expires_in: u64,
    /// The refresh token that issued it, for logging by id and name.
    pub refresh: Arc<RefreshToken>,
}

/// Everything the exchange needs, borrowed from the gateway state.
pub struct Exchanger<'a> {
    pub hasher: &'a RefreshHasher,
    pub store: &'a RefreshStore,
    pub access: &'a AccessTokens,
    pub clock: &'a Clock,
    pub access_ttl: Duration,
}

impl Exchanger<'_> {
    /// Trades a refresh token for an access token: `check`, then (for a
    /// token with a usage limit) one use taken in the store, which blocks
    /// on its backend, then `issue`. The async core takes the use on the
    /// blocking pool instead.
    pub fn exchange(
        &self,
        grant: RefreshGrant<'_>,
        client: Client<'_>,
    ) -> Result<Issued, ExchangeError> {
        let refresh = self.check(grant, client)?;
        if refresh.max_uses().is_some() {
            match self.store.consume_use(&refresh) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(ExchangeError::UsageLimit(refresh)),
                Err(_) => return Err(ExchangeError::Unavailable),
            }
        }
        self.issue(refresh, client)
    }

    /// Everything an exchange checks that needs no write: the token is
    /// known and its secret current, and it is not expired, suspended,
    /// before its not-before, out of its networks, or (as far as this
    /// replica last heard) used up. Returns the token to issue under.
    pub fn check(
        &self,
        grant: RefreshGrant<'_>,
        client: Client<'_>,
    ) -> Result<Arc<RefreshToken>, ExchangeError> {
        // A token that fails the checksum gets the same answer as an unknown one.
        let parsed = parse_refresh(grant.refresh_token).map_err(|_| ExchangeError::NotValid)?;
        let hash = self.hasher.hash(&parsed);
        let refresh = self.store.lookup(&hash).ok_or(ExchangeError::NotValid)?;
        let wall = self.clock.unix();
        // A secret rotated out whose grace period is over: as unknown.
        if refresh.retired_secret(&hash, wall) {
            return Err(ExchangeError::NotValid);
        }
        if refresh.is_expired(wall) {
            return Err(ExchangeError::Expired(refresh));
        }
        if refresh.is_suspended() {
            return Err(ExchangeError::Suspended(refresh));
        }
        if refresh.not_before().is_some_and(|nb| wall < nb) {
            return Err(ExchangeError::NotYetValid(refresh));
        }
        if let Some(r) = refresh.restrictions() {
            // No address (never on the listener) is outside every network.
            if !client.ip.is_some_and(|ip| r.allows_ip(ip)) {
                return Err(ExchangeError::Network(refresh));
            }
        }
        // Known to be used up here: no trip to the backend to hear it again.
        if refresh.uses_left() == Some(0) {
            return Err(ExchangeError::UsageLimit(refresh));
        }
        Ok(refresh)
    }

    /// Mints an access token under a checked refresh token and records the
    /// use.
    pub fn issue(
        &self,
        refresh: Arc<RefreshToken>,
        client: Client<'_>,
    ) -> Result<Issued, ExchangeError> {
        let wall = self.clock.unix();
        let remaining = match refresh.expires {
            None => u64::MAX,
            Some(e) if e > wall => e - wall,
            Some(_) => return Err(ExchangeError::Expired(refresh)),
        };
        // An access token never outlives the refresh token that issued it.
        let ttl = self.access_ttl.min(Duration::from_secs(remaining));
        let access_token = self
            .access
            .issue_at(refresh.clone(), ttl, self.clock.now(), wall)
            .map_err(|_| ExchangeError::Unavailable)?;
        refresh.touch(wall, client.ip, client.user_agent);
        Ok(Issued {
            access_token,
            expires_in: ttl.as_secs(),
            refresh,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::format::new_refresh_token;

    #[test]
    fn exchanges_follow_the_refresh_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = RefreshStore::open(&dir.path().join("t.redb")).unwrap();
        let hasher = RefreshHasher::new(b"test secret");
        let clock = Clock::new();
        let access = AccessTokens::new().unwrap();
        let ex = Exchanger {
            hasher: &hasher,
            store: &store,
            access: &access,
            clock: &clock,
            access_ttl: Duration::from_secs(900),
        };
        let token = new_refresh_token().unwrap();
        let now = clock.unix();
        let hash = hasher.hash(&parse_refresh(&token).unwrap());
        let t = store.create(hash, "t", now, Some(now + 60)).unwrap();
        let grant = RefreshGrant {
            refresh_token: &token,
        };
        let issued = ex.exchange(grant, Client::default()).unwrap();
        // Capped by the refresh token's expiry (60 s from `now`, 59 when the
        // wall clock's second ticks between `now` and the exchange).
        assert!(
            (59..=60).contains(&issued.expires_in),
            "capped by the refresh token's expiry: {}",
            issued.expires_in
        );
        assert_eq!(t.use_count(), 1);
        // The last character changed (to `x`, or `y` when it was an `x`:
        // one token in 64 ends with one, and was then its own "typo").
        let (head, last) = token.split_at(token.len() - 1);
        let typo = format!("{head}{}", if last == "x" { "y" } else { "x" });
        assert_ne!(typo, token);
        let bad = RefreshGrant {
            refresh_token: &typo,
        };
        assert!(matches!(
            ex.exchange(bad, Client::default()),
            Err(ExchangeError::NotValid)
        ));
        clock.advance(Duration::from_secs(61));
        assert!(matches!(
            ex.exchange(grant, Client::default()),
            Err(ExchangeError::Expired(_))
        ));
        store.delete(&[t.id]).unwrap();
        assert!(matches!(
            ex.exchange(grant, Client::default()),
            Err(ExchangeError::NotValid)
        ));
    }
}
