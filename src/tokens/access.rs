//! Live access tokens: a dashmap checked on every proxied request, never written
//! to disk. Validation = parse → MAC → map lookup → expiry → issuing refresh
//! token still live. A sweeper drops dead entries so memory follows the live set.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::format::{AccessCodec, AccessFormatError, AccessId};
use crate::store::RefreshToken;

/// One live access token.
struct AccessEntry {
    /// Shared with the refresh map: deleting the refresh token flips a flag this sees at once.
    refresh: Arc<RefreshToken>,
    /// Monotonic, so wall-clock jumps neither extend nor cut a token's life.
    expires: Instant,
}

/// Why a presented access token was refused. Logged by kind, never with the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessError {
    /// Not a tokengate access token at all.
    Malformed,
    /// Well-formed but not valid now: forged, minted before a restart, swept, or unknown.
    Unknown,
    Expired,
    /// The refresh token that issued it was deleted or has expired.
    RefreshGone,
}

impl AccessError {
    /// The client-facing `error_description`. Deliberately coarse.
    pub fn description(self) -> &'static str {
        match self {
            AccessError::Malformed => "the bearer token is not a valid access token",
            AccessError::Unknown | AccessError::RefreshGone => "the access token is not valid",
            AccessError::Expired => "the access token expired",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            AccessError::Malformed => "malformed",
            AccessError::Unknown => "unknown",
            AccessError::Expired => "expired",
            AccessError::RefreshGone => "refresh token deleted or expired",
        }
    }
}

/// Ids are 128 random bits, verified by MAC before any lookup, so an attacker
/// cannot choose them: their low 64 bits are already a uniform hash and SipHash
/// would only add cost to every request.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used for u128 keys; a simple FNV-1a keeps it correct for anything else.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u128(&mut self, n: u128) {
        // The low 64 bits, on purpose: see above.
        #[allow(clippy::cast_possible_truncation)]
        let low = n as u64;
        self.0 = low;
    }
}

#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasherBuilder;

impl BuildHasher for IdHasherBuilder {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0xcbf2_9ce4_8422_2325)
    }
}

pub struct AccessTokens {
    codec: AccessCodec,
    map: DashMap<AccessId, AccessEntry, IdHasherBuilder>,
}

impl AccessTokens {
    /// Draws this process's boot nonce.
    pub fn new() -> Result<AccessTokens, getrandom::Error> {
        Ok(AccessTokens {
            codec: AccessCodec::new()?,
            map: DashMap::with_hasher(IdHasherBuilder),
        })
    }

    /// Mints a token for `refresh`, valid for `ttl` from `now`.
    pub fn issue(
        &self,
        refresh: Arc<RefreshToken>,
        ttl: Duration,
        now: Instant,
    ) -> Result<String, getrandom::Error> {
        let (id, token) = self.codec.mint()?;
        self.map.insert(
            id,
            AccessEntry {
                refresh,
                expires: now + ttl,
            },
        );
        Ok(token)
    }

    /// Checks a presented token; on success runs `f` on the issuing refresh token
    /// (under the map's read guard, so no reference count is touched).
    #[inline]
    pub fn validate<R>(
        &self,
        token: &[u8],
        now: Instant,
        wall_unix: u64,
        f: impl FnOnce(&RefreshToken) -> R,
    ) -> Result<R, AccessError> {
        let id = self.codec.verify(token).map_err(|e| match e {
            AccessFormatError::Malformed => AccessError::Malformed,
            AccessFormatError::OtherBoot | AccessFormatError::BadMac => AccessError::Unknown,
        })?;
        let entry = self.map.get(&id).ok_or(AccessError::Unknown)?;
        if now >= entry.expires {
            return Err(AccessError::Expired);
        }
        if !entry.refresh.is_usable(wall_unix) {
            return Err(AccessError::RefreshGone);
        }
        Ok(f(&entry.refresh))
    }

    /// Drops every entry that can never validate again. Returns how many.
    pub fn sweep(&self, now: Instant, wall_unix: u64) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, e| now < e.expires && e.refresh.is_usable(wall_unix));
        before.saturating_sub(self.map.len())
    }

    /// Removes every token issued by the given (deleted) refresh tokens, in
    /// one pass over the map. They are already refused through the revoked
    /// flag; this frees their memory now instead of at the next sweep.
    pub fn revoke_refresh(&self, ids: &[u64]) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let before = self.map.len();
        self.map.retain(|_, e| !ids.contains(&e.refresh.id));
        before.saturating_sub(self.map.len())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
