//! What a token's holder may do with it without an administrator:
//! revoke it (RFC 7009) and read what it is (`/token/info`).
//!
//! Holding the token is the proof: there is no client authentication. A
//! well-formed refresh token that is not known counts against the client's
//! failure budget, as a failed exchange does, so revocation is no cheaper
//! a way to guess refresh tokens than the token endpoint.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::Authority;
use crate::restrict::RestrictionSpec;
use crate::store::RefreshToken;
use crate::tokens::access::AccessError;
use crate::tokens::format::parse_refresh;

/// What a revocation ended.
#[derive(Debug)]
pub(crate) enum Revoked {
    /// A refresh token: deleted, and every access token it issued with it.
    Refresh(Arc<RefreshToken>),
    /// One access token, issued by the refresh token `refresh_id`.
    Access { refresh_id: u64 },
    /// Nothing this gateway knows (RFC 7009 §2.2: still a success).
    Unknown,
}

/// Why a revocation could not be carried out now.
#[derive(Debug)]
pub(crate) enum RevokeError {
    /// Cluster mode without the database: a delete cannot be written.
    Stale,
    /// The store failed to delete (logged; the client gets a 500).
    Store(String),
}

/// What `/token/info` shows a script about its own access token.
#[derive(Debug)]
pub(crate) struct Described {
    pub(crate) refresh: Arc<RefreshToken>,
    /// The access token's expiry, Unix seconds.
    pub(crate) access_expires: u64,
    /// The restrictions as stored; `None`: full access.
    pub(crate) restrictions: Option<RestrictionSpec>,
    /// Per second, burst, and requests that would pass now.
    pub(crate) rate: Option<(u32, u32, u64)>,
}

impl Authority {
    /// Revokes `token`, an access or a refresh token (the prefix tells
    /// which, so a `token_type_hint` is never needed, RFC 7009 §2.1).
    /// `now` is when the client was admitted (`admit_client`).
    pub(crate) async fn revoke(
        &self,
        token: &str,
        client: IpAddr,
        now: Instant,
    ) -> Result<Revoked, RevokeError> {
        let token = token.trim();
        if let Some(claims) = self.access.claims(token.as_bytes()) {
            // Expired, or revoked already: nothing to do, and nothing to
            // write. Revoking costs the cluster a feed row under its write
            // lock, so the same token sent again and again must not.
            if claims.expires <= self.clock.unix() || self.access.is_revoked(claims.id) {
                return Ok(Revoked::Unknown);
            }
            if let Some(cluster) = &self.cluster {
                if !cluster.connected() {
                    return Err(RevokeError::Stale);
                }
            }
            self.access.revoke_one(claims.id, claims.expires);
            // Every other replica hears of it through the change feed.
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.revoke_access(claims.id, claims.expires))
                .await
                .map_err(|e| RevokeError::Store(e.to_string()))?
                .map_err(|e| RevokeError::Store(e.to_string()))?;
            return Ok(Revoked::Access {
                refresh_id: claims.refresh_id,
            });
        }
        if let Ok(parsed) = parse_refresh(token) {
            if let Some(cluster) = &self.cluster {
                if !cluster.connected() {
                    return Err(RevokeError::Stale);
                }
            }
            let hash = self.hasher.hash(&parsed);
            let find = || {
                self.store
                    .lookup(&hash)
                    .filter(|r| !r.retired_secret(&hash, self.clock.unix()))
            };
            let mut found = find();
            if let (None, Some(cluster)) = (&found, &self.cluster) {
                // Created on another replica a moment ago, perhaps.
                if !cluster.catch_up().await {
                    return Err(RevokeError::Stale);
                }
                found = find();
            }
            if let Some(r) = found {
                let (store, id) = (self.store.clone(), r.id);
                let gone = tokio::task::spawn_blocking(move || store.delete(&[id]))
                    .await
                    .map_err(|e| RevokeError::Store(e.to_string()))?
                    .map_err(|e| RevokeError::Store(e.to_string()))?;
                self.access.revoke_refresh(&[id]);
                return Ok(gone
                    .into_iter()
                    .next()
                    .map_or(Revoked::Unknown, Revoked::Refresh));
            }
            // Well formed (its checksum holds) and unknown: could be a
            // guess at someone's token, as at the token endpoint.
            self.failed(client, now);
        }
        // Anything else cannot be anyone's token: nothing to count.
        Ok(Revoked::Unknown)
    }

    /// Describes the access token `token` (already admitted by the bearer
    /// check, or refused only by its scopes or rate, which do not apply to
    /// asking about itself).
    pub(crate) fn describe(&self, token: &[u8], now: Instant) -> Result<Described, AccessError> {
        let claims = self.access.claims(token).ok_or(AccessError::Unknown)?;
        self.access.validate_with(
            token,
            now,
            self.clock.unix(),
            |id| self.store.get(id).ok_or(AccessError::RefreshGone),
            |r| {
                let restrictions = r.restrictions();
                Described {
                    refresh: self.store.get(r.id).unwrap_or_else(|| {
                        Arc::new(RefreshToken::detached(r.id, &r.name, r.expires))
                    }),
                    access_expires: claims.expires,
                    restrictions: restrictions.map(|x| x.spec().clone()),
                    rate: restrictions.and_then(|x| x.rate_state(now)),
                }
            },
        )
    }
}
