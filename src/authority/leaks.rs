//! Leaked-token reports (`POST /token/leaked`): which of the strings
//! someone found lying about are live tokens of this gateway.
//!
//! The reporter must not learn which: every string that could be a token
//! is looked up the same way, and the caller answers the same whatever is
//! found. A string that fails its format's check (a refresh token's
//! checksum, an access token's shape or MAC) cannot be anyone's token and
//! costs no lookup. Nothing here counts against the client's failure
//! budget: a report of dead tokens is no guess (the hourly limit on reports
//! bounds them), and counting it would let a reporter read validity off
//! the budget.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Authority, RevokeError};
use crate::store::{RefreshHash, RefreshToken};
use crate::tokens::access::AccessError;
use crate::tokens::format::{parse_refresh, AccessClaims, ACCESS_PREFIX, REFRESH_PREFIX};

/// A string of a report that passed its format's check.
enum Candidate<'a> {
    Refresh(RefreshHash),
    Access(&'a str, AccessClaims),
}

/// The live tokens among a report's strings.
#[derive(Default)]
pub(crate) struct Leaked {
    /// Refresh tokens not deleted, expired or suspended (nor a rotated-out
    /// secret past its grace).
    pub(crate) refresh: Vec<Arc<RefreshToken>>,
    /// Access tokens that still verify, each with the refresh token that
    /// issued it.
    pub(crate) access: Vec<LiveAccess>,
}

pub(crate) struct LiveAccess {
    claims: AccessClaims,
    pub(crate) refresh_id: u64,
    pub(crate) refresh_name: String,
}

impl Authority {
    /// The live tokens among `strings` (duplicates and surrounding blanks
    /// ignored). In cluster mode one catch-up with the database comes
    /// first whenever any string passed its check, live or not, so a token
    /// created on another replica a moment ago is found, and the time taken
    /// does not depend on what is found. `Stale`: the database is out of
    /// reach, so a suspension or revocation could not be written anyway.
    pub(crate) async fn find_leaked(&self, strings: &[String]) -> Result<Leaked, RevokeError> {
        let mut seen = HashSet::new();
        let candidates: Vec<Candidate<'_>> = strings
            .iter()
            .map(|s| s.trim())
            .filter(|s| seen.insert(*s))
            .filter_map(|s| self.candidate(s))
            .collect();
        if candidates.is_empty() {
            return Ok(Leaked::default());
        }
        if let Some(cluster) = &self.cluster {
            if !cluster.connected() || !cluster.catch_up().await {
                return Err(RevokeError::Stale);
            }
        }
        let (now, wall) = (self.now(), self.clock.unix());
        let mut found = Leaked::default();
        for c in candidates {
            match c {
                Candidate::Refresh(hash) => {
                    // Live: not deleted, expired or suspended already. A
                    // token not valid yet (`not_before`) is live: it will be.
                    let live = self.store.lookup(&hash).filter(|r| {
                        !r.retired_secret(&hash, wall)
                            && !r.is_revoked()
                            && !r.is_expired(wall)
                            && !r.is_suspended()
                    });
                    if let Some(r) = live {
                        // The same token under its current and its
                        // rotated-out secret is one token.
                        if !found.refresh.iter().any(|f| f.id == r.id) {
                            found.refresh.push(r);
                        }
                    }
                }
                Candidate::Access(token, claims) => {
                    let live = self.access.validate_with(
                        token.as_bytes(),
                        now,
                        wall,
                        |id| self.store.get(id).ok_or(AccessError::RefreshGone),
                        |r| (r.id, r.name.clone()),
                    );
                    if let Ok((refresh_id, refresh_name)) = live {
                        found.access.push(LiveAccess {
                            claims,
                            refresh_id,
                            refresh_name,
                        });
                    }
                }
            }
        }
        Ok(found)
    }

    /// What `s` is if its format's check holds: no lookup of any token.
    fn candidate<'a>(&self, s: &'a str) -> Option<Candidate<'a>> {
        if s.starts_with(REFRESH_PREFIX) {
            let parsed = parse_refresh(s).ok()?;
            return Some(Candidate::Refresh(self.hasher.hash(&parsed)));
        }
        if s.starts_with(ACCESS_PREFIX) {
            return self
                .access
                .claims(s.as_bytes())
                .map(|claims| Candidate::Access(s, claims));
        }
        None
    }

    /// Ends a reported access token as its holder's revocation does: here
    /// at once, and on every other replica through the change feed.
    pub(crate) async fn revoke_leaked(&self, leaked: &LiveAccess) -> Result<(), RevokeError> {
        let claims = leaked.claims;
        self.access.revoke_one(claims.id, claims.expires);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.revoke_access(claims.id, claims.expires))
            .await
            .map_err(|e| RevokeError::Store(e.to_string()))?
            .map_err(|e| RevokeError::Store(e.to_string()))
    }
}
