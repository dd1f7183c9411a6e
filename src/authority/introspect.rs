//! RFC 7662 introspection as the core decides it: whether a bearer access
//! token may introspect (its refresh token grants `introspect`), and what
//! a presented token is.
//!
//! Introspecting is not a use: no usage is recorded, no rate is taken,
//! nothing the token's holder would see changes. An access token is
//! checked as the bearer check checks it (MAC, boot, expiry, its refresh
//! token still live and of its generation, a holder's revocation); a
//! refresh token is found by its HMAC hash, as the exchange finds it. In
//! cluster mode a token not known here yet is looked for once more after a
//! catch-up with the database, and a replica out of touch answers nothing.

use std::sync::Arc;
use std::time::Instant;

use super::Authority;
use crate::store::RefreshToken;
use crate::tokens::access::AccessError;
use crate::tokens::format::parse_refresh;

/// What a presented token is.
#[derive(Debug)]
pub(crate) enum Subject {
    /// Unknown, malformed, expired, revoked, deleted, rotated out: RFC 7662
    /// §2.2 answers all of them alike.
    Inactive,
    /// A live access token, issued by `refresh` (its current version).
    Access {
        refresh: Arc<RefreshToken>,
        /// Unix seconds.
        issued: u64,
        expires: u64,
    },
    /// A live refresh token.
    Refresh(Arc<RefreshToken>),
}

/// Cluster mode: this replica may have missed a delete (no contact with
/// the database for too long, or a catch-up that did not finish in time),
/// so it vouches for no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stale;

impl Authority {
    /// Whether the access token `token` may introspect: `Ok(None)` for a
    /// good token whose refresh token does not grant it, `Ok(Some(id))`
    /// (the refresh token's id) for one that does. Its restrictions'
    /// networks and rate are the bearer check's (which has run); its
    /// scopes do not bind this endpoint, the grant does.
    pub(crate) fn may_introspect(
        &self,
        token: &[u8],
        now: Instant,
    ) -> Result<Option<u64>, AccessError> {
        self.access.validate_with(
            token,
            now,
            self.clock.unix(),
            |id| self.store.get(id).ok_or(AccessError::RefreshGone),
            |r| {
                r.restrictions()
                    .is_some_and(|x| x.may_introspect())
                    .then_some(r.id)
            },
        )
    }

    /// What `token` is, an access or a refresh token (its prefix says
    /// which: a `token_type_hint` is never needed).
    pub(crate) async fn introspect(&self, token: &str, now: Instant) -> Result<Subject, Stale> {
        if let Some(cluster) = &self.cluster {
            if !cluster.fresh() {
                return Err(Stale);
            }
        }
        let token = token.trim();
        let mut subject = self.subject(token, now);
        if let (Err(Unseen), Some(cluster)) = (&subject, &self.cluster) {
            // A token of a replica that started, or a refresh token created
            // on one, a moment ago: asked once more after a catch-up.
            if !cluster.catch_up().await {
                return Err(Stale);
            }
            subject = self.subject(token, now);
        }
        Ok(subject.unwrap_or(Subject::Inactive))
    }

    /// One look, from memory. `Err(Unseen)`: not known here, which in
    /// cluster mode may only mean not known yet.
    fn subject(&self, token: &str, now: Instant) -> Result<Subject, Unseen> {
        let wall = self.clock.unix();
        if let Some(claims) = self.access.claims(token.as_bytes()) {
            let checked = self.access.validate_with(
                token.as_bytes(),
                now,
                wall,
                |id| {
                    self.store.get(id).ok_or(if self.store.is_gone(id) {
                        AccessError::RefreshGone
                    } else {
                        AccessError::RefreshUnseen
                    })
                },
                |r| r.id,
            );
            return match checked {
                // The current version: an edit since the token was issued
                // applies to it (the bearer check follows it the same way).
                Ok(id) => Ok(self.store.get(id).filter(|r| r.is_usable(wall)).map_or(
                    Subject::Inactive,
                    |refresh| Subject::Access {
                        issued: self.issued(&refresh, claims.expires),
                        expires: claims.expires,
                        refresh,
                    },
                )),
                Err(AccessError::RefreshUnseen) => Err(Unseen),
                Err(_) => Ok(Subject::Inactive),
            };
        }
        if token.starts_with("tga_") {
            // An access token of a boot not live here: a peer that
            // started a moment ago, perhaps.
            return Err(Unseen);
        }
        let Ok(parsed) = parse_refresh(token) else {
            return Ok(Subject::Inactive);
        };
        let hash = self.hasher.hash(&parsed);
        match self.store.lookup(&hash) {
            // Rotated out and past its grace period: as unknown.
            Some(r) if r.retired_secret(&hash, wall) => Ok(Subject::Inactive),
            Some(r) if r.is_usable(wall) => Ok(Subject::Refresh(r)),
            Some(_) => Ok(Subject::Inactive),
            None => Err(Unseen),
        }
    }

    /// When an access token expiring at `expires` was issued: its expiry
    /// less `tokens.access_ttl`, or its refresh token's creation if that is
    /// later. (The token carries no issue time; one cut short by its
    /// refresh token's expiry was issued somewhat later than this.)
    fn issued(&self, refresh: &RefreshToken, expires: u64) -> u64 {
        expires
            .saturating_sub(self.access_ttl.as_secs())
            .max(refresh.created)
            .min(expires)
    }
}

/// Not known here.
struct Unseen;
