//! Live access tokens: a dashmap checked on every proxied request, never written
//! to disk. Validation = parse → boot live → MAC → map lookup → expiry →
//! issuing refresh token still live. A sweeper drops dead entries so memory
//! follows the live set. Each entry keeps its token's claims and tag as they
//! passed the MAC check, so a live token presented again is recognised by a
//! constant-time comparison instead of a second HMAC (`check`).
//!
//! Tokens of this process's own boot are authoritative in the map: a miss
//! means expired and swept, ended with its refresh token (deleted, expired,
//! rotated at once), or evicted at the per-refresh cap; the refusal says
//! which. Tokens of another replica's boot (cluster mode) verify from their
//! claims (MAC, expiry, refresh token live here and at the generation the
//! token was issued under, boot live), and the map caches the verdict so
//! the next request is one lookup, as for our own.
//!
//! The secret generation is what keeps a rotation at once from being
//! undone by the claims: a refresh token's versions (edits, rotations)
//! share its id, so "the id is live" says nothing about which secret the
//! token came from. The generation, under the MAC, does. It is compared
//! wherever a token is judged against a version other than the one it was
//! issued with (a peer's token seen for the first time, a token following
//! an edit), never on the hot path: a cached entry's version was checked
//! when it was cached, and a rotation at once revokes that version.

use std::borrow::Cow;
use std::cmp::Ordering as Order;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::format::{
    AccessClaims, AccessFormatError, AccessId, BootKey, BootKeys, RawAccess, Seal,
};
use crate::secrets::random_bytes;
use crate::store::RefreshToken;

/// One live access token.
struct AccessEntry {
    /// Shared with the refresh map: deleting the refresh token flips a flag this sees at once.
    refresh: Arc<RefreshToken>,
    /// Monotonic, so wall-clock jumps neither extend nor cut a token's life
    /// (a peer's token: converted from its claim when first verified here).
    expires: Instant,
    /// The boot that minted it: when that boot is retired, the sweeper drops it.
    boot: u64,
    /// Its claims and tag, as they passed the MAC check: the same bytes
    /// presented again need no HMAC (see `check`).
    seal: Seal,
}

/// A boot whose tokens verify here.
struct Boot {
    key: BootKey,
    /// What the key was derived from with the secret (the registry's copy).
    nonce: [u8; 32],
    /// This process's own boot (minting), or a peer replica's (cluster mode).
    own: bool,
}

/// Why a presented access token was refused. Logged by kind, never with the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessError {
    /// Not a tokengate access token at all.
    Malformed,
    /// Minted by a boot known to have ended: an earlier process of this
    /// replica, or (cluster mode) a replica that stopped, died or was rotated.
    EarlierBoot,
    /// Minted by a boot this process has never heard of: a process before
    /// a restart (one node), a peer that started a moment ago (cluster
    /// mode: worth a catch-up), or a forgery.
    UnknownBoot,
    /// This process's boot nonce, but a MAC that does not match: forged or damaged.
    Forged,
    /// Genuine (its MAC checks out) but no longer in the map, for no
    /// reason this replica can name.
    Unknown,
    Expired,
    /// The refresh token that issued it was deleted or has expired.
    RefreshGone,
    /// A live peer's genuine token for a refresh token this replica has not
    /// heard of yet (created on the peer a moment ago), or of a secret
    /// generation newer than this replica knows (rotated on the peer a
    /// moment ago): worth a catch-up with the database before refusing.
    RefreshUnseen,
    /// Issued under a secret that was rotated out at once since (an earlier
    /// generation of its refresh token).
    Rotated,
    /// Dropped because its refresh token issued `limit`
    /// (`tokens.max_access_per_refresh`) newer ones while it was live.
    Evicted {
        limit: usize,
    },
}

impl AccessError {
    /// The client-facing `error_description`. Deliberately coarse, except
    /// for an eviction: the script did nothing wrong with that token, and
    /// only this says what to change (exchange less often, or raise the cap).
    pub fn description(self) -> Cow<'static, str> {
        match self {
            AccessError::Malformed => "the bearer token is not a valid access token".into(),
            AccessError::EarlierBoot
            | AccessError::UnknownBoot
            | AccessError::Forged
            | AccessError::Unknown
            | AccessError::RefreshGone
            | AccessError::RefreshUnseen
            | AccessError::Rotated => "the access token is not valid".into(),
            AccessError::Expired => "the access token expired".into(),
            AccessError::Evicted { limit } => format!(
                "the access token was evicted: its refresh token was exchanged more than {limit} times while it was live (tokens.max_access_per_refresh)"
            )
            .into(),
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            AccessError::Malformed => "malformed",
            AccessError::EarlierBoot => "minted by a boot that has ended (a restart)",
            AccessError::UnknownBoot => "minted by an unknown boot (before a restart, or forged)",
            AccessError::Forged => "forged (bad MAC)",
            AccessError::Unknown => "unknown",
            AccessError::Expired => "expired",
            AccessError::RefreshGone => "refresh token deleted or expired",
            AccessError::RefreshUnseen => "refresh token (or its secret generation) not known here",
            AccessError::Rotated => "issued under a secret rotated out at once",
            AccessError::Evicted { .. } => "evicted at tokens.max_access_per_refresh",
        }
    }

    /// Whether the refusal could be a guess, and so counts against the
    /// client's failed-authentication budget. A token with a valid MAC was
    /// minted here, so it is no guess, whatever became of it; and after a
    /// restart every script's first call fails with an earlier boot's token,
    /// which must not throttle a whole NAT.
    pub fn counts_as_guess(self) -> bool {
        match self {
            AccessError::Malformed | AccessError::Forged => true,
            AccessError::EarlierBoot
            | AccessError::UnknownBoot
            | AccessError::Unknown
            | AccessError::Expired
            | AccessError::RefreshGone
            | AccessError::RefreshUnseen
            | AccessError::Rotated
            | AccessError::Evicted { .. } => false,
        }
    }
}

/// Whether a peer's token, or one following an edit, may use `token` (the
/// refresh token's version mapped now): it must be live, and the token must
/// have been issued under this generation of its secret.
#[inline]
fn current(token: &RefreshToken, claims: &AccessClaims, wall_unix: u64) -> Result<(), AccessError> {
    match claims.generation.cmp(&token.generation()) {
        // Genuine (the MAC says so), so this replica is behind: catch up.
        Order::Greater => Err(AccessError::RefreshUnseen),
        Order::Less => Err(AccessError::Rotated),
        Order::Equal if token.is_usable(wall_unix) => Ok(()),
        Order::Equal => Err(AccessError::RefreshGone),
    }
}

/// A counter on a cache line of its own: written only by failed checks, so
/// that a flood of them does not slow the valid tokens' reads of the map.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

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

/// What the index keeps of one refresh token's access tokens.
#[derive(Default)]
struct Issued {
    /// Live ones, oldest first (with their expiry, so expired ones can be
    /// dropped without a map lookup).
    live: VecDeque<(AccessId, Instant)>,
    /// The latest expiry of a token evicted at the cap: until then a token
    /// of ours missing from the map may have been evicted, and its refusal
    /// says so. One value, not the evicted ids: a flood of exchanges must
    /// not grow it.
    evicted_until: Option<Instant>,
}

/// Access tokens one refresh token may have live at once, for `new` (the
/// gateway uses `tokens.max_access_per_refresh`, by default the same).
const DEFAULT_MAX_PER_REFRESH: usize = 1000;

pub struct AccessTokens {
    /// Derives boot keys from the server secret.
    keys: BootKeys,
    /// Boots whose tokens verify: this process's current one and, in
    /// cluster mode, every live peer's. A token of any other boot is
    /// refused before any MAC work.
    boots: DashMap<u64, Arc<Boot>, IdHasherBuilder>,
    /// Boots known to have ended (the registry's retired and silent ones,
    /// and this process's earlier ones): their tokens are refused without
    /// a catch-up. Read only when a boot is not live.
    ended: RwLock<HashSet<u64>>,
    /// This process's current boot, which mints. Replaced only when the
    /// cluster retires it (`tokengate cluster rotate`, a lapsed heartbeat).
    own: RwLock<Arc<Boot>>,
    map: DashMap<AccessId, AccessEntry, IdHasherBuilder>,
    /// Refresh token id → the access tokens it issued (or, for peers'
    /// tokens, that this replica cached). Written only by exchanges,
    /// first sightings of a peer's token, deletes and the sweeper: it bounds
    /// what one refresh token can hold in memory, and lets a delete remove
    /// exactly its own tokens instead of scanning the whole map under its locks.
    by_refresh: DashMap<u64, Issued>,
    max_per_refresh: usize,
    /// Tokens their holders revoked (RFC 7009), until their claimed expiry
    /// (Unix seconds). Our own are simply gone from the map; this is for a
    /// peer's token, which would otherwise verify from its claims the first
    /// time it is seen here. Read only on that first sighting, never on the
    /// hot path.
    revoked: DashMap<AccessId, u64, IdHasherBuilder>,
    /// Tokens dropped because their refresh token issued a newer one at the cap.
    evicted: AtomicU64,
    /// Checks that failed, whatever the reason. Shows that the throttle
    /// refuses before any check (tests), and what a flood cost.
    refused: Padded,
    /// MAC checks made: what tests read to see the hot path skip them.
    #[cfg(test)]
    macs: AtomicU64,
}

/// A boot id and nonce: what the replica registry holds of a boot.
pub(crate) type BootSeed = (u64, [u8; 32]);

fn new_seed() -> Result<BootSeed, getrandom::Error> {
    let mut id = [0u8; 8];
    let mut nonce = [0u8; 32];
    random_bytes(&mut id)?;
    random_bytes(&mut nonce)?;
    // PostgreSQL's bigint is signed: keep ids positive, and never 0.
    let id = (u64::from_be_bytes(id) >> 1).max(1);
    Ok((id, nonce))
}

impl AccessTokens {
    /// A fresh boot under a random secret (tests, benchmarks, fuzzing).
    pub fn new() -> Result<AccessTokens, getrandom::Error> {
        Self::with_limit(DEFAULT_MAX_PER_REFRESH)
    }

    /// As `new`, with at most `max_per_refresh` (at least 1) live access
    /// tokens per refresh token.
    pub fn with_limit(max_per_refresh: usize) -> Result<AccessTokens, getrandom::Error> {
        let mut secret = [0u8; 32];
        random_bytes(&mut secret)?;
        Self::keyed(&secret, max_per_refresh)
    }

    /// Draws this process's boot under the server secret: every token of an
    /// earlier process stops verifying.
    pub(crate) fn keyed(
        secret: &[u8],
        max_per_refresh: usize,
    ) -> Result<AccessTokens, getrandom::Error> {
        let keys = BootKeys::new(secret);
        let (id, nonce) = new_seed()?;
        let own = Arc::new(Boot {
            key: keys.derive(id, &nonce),
            nonce,
            own: true,
        });
        let boots = DashMap::with_hasher(IdHasherBuilder);
        boots.insert(id, own.clone());
        Ok(AccessTokens {
            keys,
            boots,
            ended: RwLock::new(HashSet::new()),
            own: RwLock::new(own),
            map: DashMap::with_hasher(IdHasherBuilder),
            by_refresh: DashMap::new(),
            max_per_refresh: max_per_refresh.max(1),
            revoked: DashMap::with_hasher(IdHasherBuilder),
            evicted: AtomicU64::new(0),
            refused: Padded::default(),
            #[cfg(test)]
            macs: AtomicU64::new(0),
        })
    }

    fn own(&self) -> Arc<Boot> {
        // A poisoned lock still holds a whole Arc: nothing half-written.
        self.own.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This process's current boot: what the replica registry must hold.
    pub(crate) fn own_boot(&self) -> BootSeed {
        let own = self.own();
        (own.key.boot, own.nonce)
    }

    /// Retires this process's boot and draws a new one: every token minted
    /// so far stops verifying here at once (and, once the registry says so,
    /// everywhere). Returns the new boot for the registry.
    pub(crate) fn renew_boot(&self) -> Result<BootSeed, getrandom::Error> {
        let (id, nonce) = new_seed()?;
        let fresh = Arc::new(Boot {
            key: self.keys.derive(id, &nonce),
            nonce,
            own: true,
        });
        self.boots.insert(id, fresh.clone());
        let old = {
            let mut own = self.own.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *own, fresh)
        };
        self.boots.remove(&old.key.boot);
        self.ended
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(old.key.boot);
        self.drop_boots(&[old.key.boot]);
        Ok((id, nonce))
    }

    /// Makes exactly `live` (peer boots from the registry) verify, besides
    /// our own; tokens of peer boots no longer live are refused from now on
    /// and dropped from the map. `ended`: the registry's boots that are not
    /// live (their tokens are refused as ended, without a catch-up).
    /// Returns the boots dropped.
    pub(crate) fn set_peers(&self, live: &[BootSeed], ended: &[u64]) -> Vec<u64> {
        for (id, nonce) in live {
            if !self.boots.contains_key(id) {
                let key = self.keys.derive(*id, nonce);
                let boot = Boot {
                    key,
                    nonce: *nonce,
                    own: false,
                };
                self.boots.insert(*id, Arc::new(boot));
            }
        }
        let gone: Vec<u64> = self
            .boots
            .iter()
            .filter(|b| !b.own && !live.iter().any(|(id, _)| id == b.key()))
            .map(|b| *b.key())
            .collect();
        for id in &gone {
            self.boots.remove(id);
        }
        {
            // Replaced, not grown: the registry prunes boots after a day.
            let mut known = self.ended.write().unwrap_or_else(|p| p.into_inner());
            known.clear();
            known.extend(ended.iter().chain(gone.iter()));
        }
        if !gone.is_empty() {
            self.drop_boots(&gone);
        }
        gone
    }

    fn has_ended(&self, boot: u64) -> bool {
        self.ended
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&boot)
    }

    /// Whether tokens of `boot` verify here now.
    pub(crate) fn trusts(&self, boot: u64) -> bool {
        self.boots.contains_key(&boot)
    }

    /// Peer boots whose tokens verify here.
    pub fn peers(&self) -> usize {
        self.boots.iter().filter(|b| !b.own).count()
    }

    /// Frees the memory of retired boots' tokens (already refused: their
    /// boot is gone). A scan, but a rare one: a replica stopping or dying.
    fn drop_boots(&self, boots: &[u64]) {
        remove_where(&self.map, |e| boots.contains(&e.boot));
    }

    /// Mints a token for `refresh`, valid for `ttl` from `now` (`wall_unix`
    /// is the same instant in Unix seconds, for the token's claim). At
    /// `max_per_refresh` live tokens, the refresh token's oldest one is
    /// dropped: a script that exchanges on every call keeps working with its
    /// newest token, and a leaked refresh token cannot fill memory.
    pub fn issue(
        &self,
        refresh: Arc<RefreshToken>,
        ttl: Duration,
        now: Instant,
    ) -> Result<String, getrandom::Error> {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.issue_at(refresh, ttl, now, wall)
    }

    pub(crate) fn issue_at(
        &self,
        refresh: Arc<RefreshToken>,
        ttl: Duration,
        now: Instant,
        wall_unix: u64,
    ) -> Result<String, getrandom::Error> {
        let boot = self.own();
        let (id, seal, token) = boot.key.mint(
            refresh.id,
            refresh.generation(),
            wall_unix.saturating_add(ttl.as_secs()),
        )?;
        self.insert(id, seal, refresh, now, now + ttl, boot.key.boot);
        Ok(token)
    }

    /// Adds a verified token to the map and to its refresh token's index,
    /// dropping that refresh token's oldest at the cap.
    fn insert(
        &self,
        id: AccessId,
        seal: Seal,
        refresh: Arc<RefreshToken>,
        now: Instant,
        expires: Instant,
        boot: u64,
    ) {
        let refresh_id = refresh.id;
        self.map.insert(
            id,
            AccessEntry {
                refresh: refresh.clone(),
                expires,
                boot,
                seal,
            },
        );
        // The index's lock is held only for its own update, never around a
        // map operation: every exchange of one refresh token takes this
        // entry, and a busy script exchanges from many connections at once.
        let mut expired = Vec::new();
        let oldest = {
            let mut issued = self.by_refresh.entry(refresh_id).or_default();
            while let Some(&(old, e)) = issued.live.front() {
                if now < e {
                    break;
                }
                issued.live.pop_front();
                expired.push(old);
            }
            issued.live.push_back((id, expires));
            if issued.live.len() > self.max_per_refresh {
                let oldest = issued.live.pop_front();
                if let Some((_, e)) = oldest {
                    issued.evicted_until = issued.evicted_until.max(Some(e));
                }
                oldest
            } else {
                None
            }
        };
        // What leaves the index leaves the map, so that every entry in the
        // map stays reachable from its refresh token's index and a delete
        // frees them all at once, not at the next sweep.
        for old in expired {
            self.map.remove_if(&old, |_, e| now >= e.expires);
        }
        if let Some((old, _)) = oldest {
            if self.map.remove(&old).is_some() {
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A delete racing with this exchange: the delete sets the refresh
        // token's revoked flag, then takes its index entry and removes the
        // ids in it from the map. Either it took the entry after the push
        // above (the shard lock orders the two), and removed this id; or
        // before, and then its flag was set before the push, so it is seen
        // here, and the id is removed by this side. (The token was refused
        // through the flag either way; this frees the memory at once, so
        // nothing of a deleted refresh token outlives its delete.) An edit
        // sets the flag too, on a superseded version whose access tokens
        // follow the id to the new one: those stay.
        if refresh.is_revoked() && !refresh.is_superseded() {
            self.map.remove(&id);
            if let Some(mut issued) = self.by_refresh.get_mut(&refresh_id) {
                issued.live.retain(|&(live, _)| live != id);
            }
            self.by_refresh.remove_if(&refresh_id, |_, issued| {
                issued.live.is_empty() && issued.evicted_until.is_none()
            });
        }
    }

    /// Checks a presented token; on success runs `f` on the issuing refresh token
    /// (under the map's read guard, so no reference count is touched). A
    /// peer's token whose refresh token is not in the map is refused
    /// (`validate_with` looks it up).
    #[inline]
    pub fn validate<R>(
        &self,
        token: &[u8],
        now: Instant,
        wall_unix: u64,
        f: impl FnOnce(&RefreshToken) -> R,
    ) -> Result<R, AccessError> {
        self.validate_with(
            token,
            now,
            wall_unix,
            |_| Err(AccessError::RefreshUnseen),
            f,
        )
    }

    /// As `validate`, with `refresh` to find a peer's token's refresh token
    /// by id the first time this replica sees the token (or to say it was
    /// deleted, `RefreshGone`, or is not known here yet, `RefreshUnseen`).
    #[inline]
    pub fn validate_with<R>(
        &self,
        token: &[u8],
        now: Instant,
        wall_unix: u64,
        refresh: impl FnOnce(u64) -> Result<Arc<RefreshToken>, AccessError>,
        f: impl FnOnce(&RefreshToken) -> R,
    ) -> Result<R, AccessError> {
        let checked = self.check(token, now, wall_unix, refresh, f);
        if checked.is_err() {
            self.refused.0.fetch_add(1, Ordering::Relaxed);
        }
        checked
    }

    #[inline]
    fn check<R>(
        &self,
        token: &[u8],
        now: Instant,
        wall_unix: u64,
        refresh: impl FnOnce(u64) -> Result<Arc<RefreshToken>, AccessError>,
        f: impl FnOnce(&RefreshToken) -> R,
    ) -> Result<R, AccessError> {
        let raw = RawAccess::decode(token).map_err(|e| match e {
            // A token of the format before this one (a replica or process
            // not yet upgraded): minted by a boot that does not verify
            // here, and no guess.
            AccessFormatError::Previous => AccessError::EarlierBoot,
            AccessFormatError::Malformed | AccessFormatError::BadMac => AccessError::Malformed,
        })?;
        // A boot that is not live costs one lookup and no MAC.
        if self.boots.get(&raw.boot()).is_none() {
            return Err(self.not_live(raw.boot()));
        }
        // The hot path: a live token presented byte for byte as it passed
        // its MAC check (when minted here, or first seen from a peer) is
        // that token, so the HMAC would say yes again. Its entry alone then
        // decides, as below. Anything else (another tag or claim under a
        // live id, an id not in the map, an entry that is expired or whose
        // refresh token changed) takes the full path, MAC first, and gets
        // exactly its verdict. Looking the id up before the MAC tells a
        // prober no more than a miss would: ids are 128 random bits, and the
        // comparison that matters, the tag's, is constant-time.
        if let Some(entry) = self.map.get(&raw.id()) {
            if raw.is_sealed_by(&entry.seal)
                && now < entry.expires
                && entry.refresh.is_usable(wall_unix)
            {
                return Ok(f(&entry.refresh));
            }
        }
        let (claims, own) = {
            let Some(boot) = self.boots.get(&raw.boot()) else {
                return Err(self.not_live(raw.boot()));
            };
            #[cfg(test)]
            self.macs.fetch_add(1, Ordering::Relaxed);
            let claims = boot.key.check(&raw).map_err(|e| match e {
                AccessFormatError::Malformed => AccessError::Malformed,
                AccessFormatError::Previous => AccessError::EarlierBoot,
                AccessFormatError::BadMac => AccessError::Forged,
            })?;
            (claims, boot.own)
        };
        if let Some(entry) = self.map.get(&claims.id) {
            if now >= entry.expires {
                return Err(AccessError::Expired);
            }
            if !entry.refresh.is_usable(wall_unix) {
                let superseded = entry.refresh.is_superseded();
                drop(entry);
                if !superseded {
                    // Deleted, expired or rotated at once: refused whatever
                    // the lookup says; it only names which, for the log.
                    return Err(match refresh(claims.refresh_id) {
                        Ok(t) if t.generation() != claims.generation => AccessError::Rotated,
                        _ => AccessError::RefreshGone,
                    });
                }
                // Edited since this token was issued: from now on it is
                // held to the new version (its name, expiry, restrictions),
                // if that is still of its generation: a rotation at once
                // between the two versions ended it.
                let token = refresh(claims.refresh_id)?;
                if let Err(e) = current(&token, &claims, wall_unix) {
                    if e == AccessError::Rotated {
                        self.map.remove(&claims.id);
                    }
                    return Err(e);
                }
                let out = f(&token);
                if let Some(mut e) = self.map.get_mut(&claims.id) {
                    e.refresh = token;
                }
                return Ok(out);
            }
            return Ok(f(&entry.refresh));
        }
        if own {
            // Ours, and not in the map: refused, whatever the reason.
            return Err(self.why_gone(&claims, now, wall_unix, refresh));
        }
        // A peer's token, first seen here: its claims decide, unless its
        // holder revoked it.
        if wall_unix >= claims.expires {
            return Err(AccessError::Expired);
        }
        if self.revoked.contains_key(&claims.id) {
            return Err(AccessError::Unknown);
        }
        let token = refresh(claims.refresh_id)?;
        current(&token, &claims, wall_unix)?;
        let left = Duration::from_secs(claims.expires - wall_unix);
        let out = f(&token);
        self.insert(claims.id, raw.seal(), token, now, now + left, claims.boot);
        Ok(out)
    }

    /// Why a token of a boot that is not live here is refused: an ended
    /// boot (no guess), or one never heard of.
    #[cold]
    fn not_live(&self, boot: u64) -> AccessError {
        if self.has_ended(boot) {
            AccessError::EarlierBoot
        } else {
            AccessError::UnknownBoot
        }
    }

    /// Why a genuine token of our own boot is not in the map (off the hot
    /// path: only refusals get here). Expired, or its refresh token deleted,
    /// expired or rotated at once; else, if the refresh token evicted tokens
    /// at the cap that may still be live, that; else unknown. (A token
    /// swept by the monotonic clock a moment before its wall-clock claim
    /// ends, while evicted tokens of its refresh token are live, is called
    /// evicted: a refusal either way.)
    #[cold]
    fn why_gone(
        &self,
        claims: &AccessClaims,
        now: Instant,
        wall_unix: u64,
        refresh: impl FnOnce(u64) -> Result<Arc<RefreshToken>, AccessError>,
    ) -> AccessError {
        if wall_unix >= claims.expires {
            return AccessError::Expired;
        }
        let ended = match refresh(claims.refresh_id) {
            Ok(token) => current(&token, claims, wall_unix).err(),
            Err(e) => Some(e),
        };
        match ended {
            Some(e @ (AccessError::RefreshGone | AccessError::Rotated)) => e,
            _ if self
                .by_refresh
                .get(&claims.refresh_id)
                .is_some_and(|i| i.evicted_until.is_some_and(|until| now < until)) =>
            {
                AccessError::Evicted {
                    limit: self.max_per_refresh,
                }
            }
            _ => AccessError::Unknown,
        }
    }

    /// The claims of a genuine token (a boot live here, its MAC good),
    /// whether or not it is still in the map: what a holder's revocation
    /// and `/token/info` read.
    pub(crate) fn claims(&self, token: &[u8]) -> Option<AccessClaims> {
        let raw = RawAccess::decode(token).ok()?;
        let boot = self.boots.get(&raw.boot())?;
        boot.key.check(&raw).ok()
    }

    /// Whether the access token `id` was revoked already (and has not
    /// expired since).
    pub(crate) fn is_revoked(&self, id: AccessId) -> bool {
        self.revoked.contains_key(&id)
    }

    /// Ends one access token at its holder's request (RFC 7009): gone from
    /// the map, and remembered until `expires` (Unix seconds) so that no
    /// replica's copy of it verifies here from its claims again. Also how
    /// another replica's revocation is applied.
    pub(crate) fn revoke_one(&self, id: AccessId, expires: u64) {
        self.map.remove(&id);
        self.revoked.insert(id, expires);
    }

    /// Token checks that failed since start.
    pub fn refused_checks(&self) -> u64 {
        self.refused.0.load(Ordering::Relaxed)
    }

    /// Drops every entry that can never validate again. Returns how many.
    ///
    /// Never holds a shard's write lock for a walk: `DashMap::retain` would
    /// hold each shard's for the whole of that shard, and every request whose
    /// token lives in it would wait, blocking its worker thread and so every
    /// connection the worker serves (with a million live tokens a shard took
    /// 4-18 ms, more when the sweeping thread lost its core meanwhile). The
    /// walk here takes read locks, which the request path's lookups share,
    /// and each dead entry is then removed alone (`remove_if`, checked
    /// again under its lock).
    pub fn sweep(&self, now: Instant, wall_unix: u64) -> usize {
        // An edited token's access tokens stay: they follow it at their
        // next request (a deleted one's are gone through its flag).
        let removed = remove_where(&self.map, |e| {
            now >= e.expires
                || !(e.refresh.is_usable(wall_unix) || e.refresh.is_superseded())
                || !self.boots.contains_key(&e.boot)
        });
        // The index follows: expired ids go, and so do ids the map no longer
        // holds (their refresh token expired). Both run between requests,
        // every `tokens.sweep_interval`. Only exchanges touch the index.
        self.by_refresh.retain(|_, issued| {
            issued
                .live
                .retain(|(id, e)| now < *e && self.map.contains_key(id));
            !issued.live.is_empty() || issued.evicted_until.is_some_and(|until| now < until)
        });
        remove_where(&self.revoked, |expires| *expires <= wall_unix);
        removed
    }

    /// Removes every token issued by the given (deleted) refresh tokens,
    /// found through the index: the cost follows their own token count, and
    /// validation elsewhere in the map is never blocked. They are already
    /// refused through the revoked flag; this frees their memory now.
    pub fn revoke_refresh(&self, ids: &[u64]) -> usize {
        let mut removed = 0;
        for refresh in ids {
            if let Some((_, issued)) = self.by_refresh.remove(refresh) {
                for (id, _) in issued.live {
                    removed += usize::from(self.map.remove(&id).is_some());
                }
            }
        }
        removed
    }

    /// Live access tokens `refresh_id` issued (expired ones the sweeper has
    /// not dropped yet included).
    pub fn issued_by(&self, refresh_id: u64) -> usize {
        self.by_refresh.get(&refresh_id).map_or(0, |i| i.live.len())
    }

    /// Tokens dropped since start because their refresh token reached
    /// `tokens.max_access_per_refresh`.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Removes the entries `dead` picks; how many. The walk holds only read
/// locks (shared with lookups); each removal write-locks its shard for that
/// one entry, and checks `dead` again there, since the entry may have been
/// replaced since the walk saw it.
fn remove_where<K, V, S>(map: &DashMap<K, V, S>, dead: impl Fn(&V) -> bool) -> usize
where
    K: Copy + Eq + std::hash::Hash,
    S: BuildHasher + Clone,
{
    let doomed: Vec<K> = map
        .iter()
        .filter(|e| dead(e.value()))
        .map(|e| *e.key())
        .collect();
    doomed
        .iter()
        .filter(|k| map.remove_if(k, |_, v| dead(v)).is_some())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_could_be_a_guess_counts() {
        let tokens = AccessTokens::new().unwrap();
        let refresh = Arc::new(RefreshToken::detached(1, "t", None));
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let valid = tokens.issue(refresh.clone(), ttl, now).unwrap();
        let earlier = AccessTokens::new()
            .unwrap()
            .issue(refresh.clone(), ttl, now)
            .unwrap();
        let mut forged = valid.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let check = |t: &[u8], at: Instant| tokens.validate(t, at, 0, |_| ()).err();

        assert_eq!(check(valid.as_bytes(), now), None);
        let previous_format = format!("tga_{}", "A".repeat(75));
        let cases = [
            (check(b"tga_garbage", now), AccessError::Malformed, true),
            // The format before the generation (a rolling upgrade): no guess.
            (
                check(previous_format.as_bytes(), now),
                AccessError::EarlierBoot,
                false,
            ),
            (check(&forged, now), AccessError::Forged, true),
            (
                check(earlier.as_bytes(), now),
                AccessError::UnknownBoot,
                false,
            ),
            (
                check(valid.as_bytes(), now + ttl),
                AccessError::Expired,
                false,
            ),
        ];
        for (got, want, guess) in cases {
            assert_eq!(got, Some(want));
            assert_eq!(want.counts_as_guess(), guess, "{want:?}");
        }
        assert_eq!(tokens.refused_checks(), 5);
        // Swept, then presented again: genuine, so no guess either.
        tokens.sweep(now + ttl, 0);
        assert_eq!(check(valid.as_bytes(), now), Some(AccessError::Unknown));
        assert!(!AccessError::Unknown.counts_as_guess());
        assert!(!AccessError::RefreshGone.counts_as_guess());
    }

    fn refresh(id: u64) -> Arc<RefreshToken> {
        Arc::new(RefreshToken::detached(id, "t", None))
    }

    #[test]
    fn a_refresh_token_keeps_only_its_newest_tokens_at_the_cap() {
        let tokens = AccessTokens::with_limit(3).unwrap();
        let (a, b) = (refresh(1), refresh(2));
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let minted: Vec<String> = (0..5)
            .map(|_| tokens.issue(a.clone(), ttl, now).unwrap())
            .collect();
        let other = tokens.issue(b.clone(), ttl, now).unwrap();
        let check = |t: &str| tokens.validate(t.as_bytes(), now, 0, |_| ()).err();
        // Refused, and told why (no other refusal reads like this one).
        let evicted = Some(AccessError::Evicted { limit: 3 });
        assert_eq!(check(&minted[0]), evicted);
        assert_eq!(check(&minted[1]), evicted);
        assert!(AccessError::Evicted { limit: 3 }
            .description()
            .contains("more than 3 times"));
        assert!(!AccessError::Evicted { limit: 3 }.counts_as_guess());
        for t in &minted[2..] {
            assert_eq!(check(t), None);
        }
        assert_eq!(check(&other), None, "another refresh token is not touched");
        assert_eq!(
            (tokens.evicted(), tokens.issued_by(1), tokens.len()),
            (2, 3, 4)
        );
        // Expired ones make room without evicting anyone.
        let later = now + ttl;
        let fresh = tokens.issue(a, ttl, later).unwrap();
        assert_eq!(tokens.issued_by(1), 1);
        assert_eq!(tokens.evicted(), 2);
        assert_eq!(
            tokens.validate(fresh.as_bytes(), later, 0, |_| ()).err(),
            None
        );
        // Once every evicted token would have expired anyway, none is
        // called evicted (here the wall clock, 0, says otherwise).
        assert_eq!(
            tokens
                .validate(minted[0].as_bytes(), later, 0, |_| ())
                .err(),
            Some(AccessError::Unknown)
        );
    }

    /// A version of refresh token `id` at secret generation `generation`.
    fn version(id: u64, generation: u64) -> Arc<RefreshToken> {
        let mut rec = crate::store::RefreshRecord::new(id, "t", 0, None);
        rec.generation = generation;
        Arc::new(RefreshToken::from_record(&rec))
    }

    #[test]
    fn a_peers_token_of_an_earlier_generation_is_refused_and_of_a_later_one_caught_up() {
        let (a, b) = pair();
        b.set_peers(&[a.own_boot()], &[]);
        let (now, wall) = (Instant::now(), 1_800_000_000);
        let ttl = Duration::from_secs(60);
        let (v0, v1) = (version(4, 0), version(4, 1));
        let old = a.issue_at(v0.clone(), ttl, now, wall).unwrap();
        let new = a.issue_at(v1.clone(), ttl, now, wall).unwrap();
        let on_b = |t: &str, v: &Arc<RefreshToken>| {
            b.validate_with(t.as_bytes(), now, wall, |_| Ok(v.clone()), |_| ())
        };
        // B knows generation 1 (the rotation reached it): the old token is
        // refused, though B never saw it and its refresh id is live.
        assert_eq!(on_b(&old, &v1), Err(AccessError::Rotated));
        assert!(!AccessError::Rotated.counts_as_guess());
        assert_eq!(b.len(), 0, "not cached");
        // B is behind (generation 0): the new token asks for a catch-up.
        assert_eq!(on_b(&new, &v0), Err(AccessError::RefreshUnseen));
        assert_eq!(on_b(&new, &v1), Ok(()));
    }

    #[test]
    fn following_an_edit_stops_at_a_rotation_at_once_in_between() {
        let tokens = AccessTokens::new().unwrap();
        let (now, wall) = (Instant::now(), 1_800_000_000);
        let v0 = version(5, 0);
        let t = tokens
            .issue_at(v0.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        // An edit (v1, same generation) and then a rotation at once (v2):
        // the token still holds v0, superseded.
        let v2 = version(5, 1);
        v0.supersede();
        assert_eq!(
            tokens.validate_with(t.as_bytes(), now, wall, |_| Ok(v2.clone()), |_| ()),
            Err(AccessError::Rotated)
        );
        assert_eq!(tokens.len(), 0, "dropped from the map");
        // An edit alone is followed.
        let w0 = version(6, 2);
        let u = tokens
            .issue_at(w0.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        w0.supersede();
        let w1 = version(6, 2);
        assert_eq!(
            tokens.validate_with(u.as_bytes(), now, wall, |_| Ok(w1.clone()), |_| ()),
            Ok(())
        );
        // A version revoked by a rotation at once: refused without following.
        let x0 = version(7, 0);
        let x = tokens
            .issue_at(x0.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        x0.revoke();
        assert_eq!(
            tokens.validate_with(x.as_bytes(), now, wall, |_| Ok(version(7, 1)), |_| ()),
            Err(AccessError::Rotated)
        );
        assert_eq!(
            tokens.validate_with(
                x.as_bytes(),
                now,
                wall,
                |_| Err(AccessError::RefreshGone),
                |_| ()
            ),
            Err(AccessError::RefreshGone)
        );
    }

    #[test]
    fn an_own_token_missing_from_the_map_is_refused_with_its_reason() {
        let tokens = AccessTokens::new().unwrap();
        let (now, wall) = (Instant::now(), 1_800_000_000);
        let v0 = version(8, 0);
        let t = tokens
            .issue_at(v0.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        tokens.revoke_refresh(&[8]);
        let check = |w: u64, lookup: Result<Arc<RefreshToken>, AccessError>| {
            tokens.validate_with(t.as_bytes(), now, w, |_| lookup, |_| ())
        };
        assert_eq!(check(wall, Ok(version(8, 1))), Err(AccessError::Rotated));
        assert_eq!(
            check(wall, Err(AccessError::RefreshGone)),
            Err(AccessError::RefreshGone)
        );
        assert_eq!(check(wall + 60, Ok(v0.clone())), Err(AccessError::Expired));
        // Never accepted, even with its refresh token live and current.
        assert_eq!(check(wall, Ok(v0)), Err(AccessError::Unknown));
    }

    #[test]
    fn revoking_removes_exactly_the_refresh_tokens_own() {
        let tokens = AccessTokens::new().unwrap();
        let (a, b) = (refresh(1), refresh(2));
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        for _ in 0..3 {
            tokens.issue(a.clone(), ttl, now).unwrap();
        }
        let kept: Vec<String> = (0..2)
            .map(|_| tokens.issue(b.clone(), ttl, now).unwrap())
            .collect();
        assert_eq!(tokens.revoke_refresh(&[1, 99]), 3);
        assert_eq!(
            (tokens.len(), tokens.issued_by(1), tokens.issued_by(2)),
            (2, 0, 2)
        );
        for t in &kept {
            assert_eq!(tokens.validate(t.as_bytes(), now, 0, |_| ()).err(), None);
        }
        assert_eq!(tokens.revoke_refresh(&[1]), 0, "twice is harmless");
    }

    /// The interleaving a soak run caught: an exchange checked its refresh
    /// token, the token was deleted (flag set, index emptied), and only
    /// then did the exchange insert its access token. The entry must not
    /// stay in the map until the next sweep.
    #[test]
    fn an_exchange_that_loses_a_race_with_a_delete_leaves_nothing() {
        let tokens = AccessTokens::new().unwrap();
        let a = refresh(1);
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        tokens.issue(a.clone(), ttl, now).unwrap();
        a.revoke();
        assert_eq!(tokens.revoke_refresh(&[1]), 1);
        let late = tokens.issue(a.clone(), ttl, now).unwrap();
        assert_eq!((tokens.len(), tokens.issued_by(1)), (0, 0));
        assert_ne!(tokens.validate(late.as_bytes(), now, 0, |_| ()).err(), None);
        // An edited (superseded) version's tokens follow the id: kept.
        let b = refresh(2);
        b.supersede();
        tokens.issue(b, ttl, now).unwrap();
        assert_eq!((tokens.len(), tokens.issued_by(2)), (1, 1));
    }

    /// The same race run for real: exchanges on four threads while the
    /// refresh token is deleted. Whichever side wins each interleaving,
    /// nothing of it is left once everyone is done.
    #[test]
    fn exchanges_during_a_delete_leave_nothing_behind() {
        let tokens = AccessTokens::new().unwrap();
        let a = refresh(1);
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let started = std::sync::Barrier::new(5);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    started.wait();
                    for _ in 0..2_000 {
                        tokens.issue(a.clone(), ttl, now).unwrap();
                    }
                });
            }
            started.wait();
            while tokens.len() < 100 {
                std::thread::yield_now();
            }
            a.revoke();
            tokens.revoke_refresh(&[1]);
        });
        assert_eq!((tokens.len(), tokens.issued_by(1)), (0, 0));
    }

    /// An expired token leaves the map when it leaves its refresh token's
    /// index, so a delete afterwards finds everything the map holds.
    #[test]
    fn expired_tokens_leave_the_map_with_the_index() {
        let tokens = AccessTokens::new().unwrap();
        let a = refresh(1);
        let now = Instant::now();
        tokens
            .issue(a.clone(), Duration::from_secs(1), now)
            .unwrap();
        tokens
            .issue(a.clone(), Duration::from_secs(60), now)
            .unwrap();
        let later = now + Duration::from_secs(2);
        tokens
            .issue(a.clone(), Duration::from_secs(60), later)
            .unwrap();
        assert_eq!((tokens.len(), tokens.issued_by(1)), (2, 2));
        a.revoke();
        assert_eq!(tokens.revoke_refresh(&[1]), 2);
        assert!(tokens.is_empty());
    }

    #[test]
    fn the_sweep_keeps_the_index_to_the_live_set() {
        let tokens = AccessTokens::new().unwrap();
        let (a, b) = (refresh(1), refresh(2));
        let now = Instant::now();
        tokens
            .issue(a.clone(), Duration::from_secs(10), now)
            .unwrap();
        tokens
            .issue(b.clone(), Duration::from_secs(60), now)
            .unwrap();
        let gone = Arc::new(RefreshToken::detached(3, "t", Some(5)));
        tokens.issue(gone, Duration::from_secs(60), now).unwrap();
        // At 10 s a's token expired; the refresh token 3 expired at Unix 5.
        assert_eq!(tokens.sweep(now + Duration::from_secs(10), 6), 2);
        assert_eq!(
            (
                tokens.issued_by(1),
                tokens.issued_by(2),
                tokens.issued_by(3)
            ),
            (0, 1, 0)
        );
    }

    /// A request's lookup holds its shard's read lock (`validate` runs its
    /// closure under it). A sweep must get through without waiting for it:
    /// one that write-locked every shard (as `DashMap::retain` does) would
    /// wait here until the holder gave up.
    #[test]
    fn a_sweep_never_waits_for_a_lookup_in_progress() {
        let tokens = Arc::new(AccessTokens::new().unwrap());
        let now = Instant::now();
        let live = tokens
            .issue(refresh(1), Duration::from_secs(60), now)
            .unwrap();
        for _ in 0..64 {
            tokens
                .issue(refresh(2), Duration::from_secs(60), now)
                .unwrap();
        }
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (swept_tx, swept_rx) = std::sync::mpsc::channel::<usize>();
        let holder = {
            let tokens = tokens.clone();
            std::thread::spawn(move || {
                tokens
                    .validate(live.as_bytes(), now, 0, |_| {
                        held_tx.send(()).unwrap();
                        // Released once the sweep is done, or after a long
                        // while (then the assertion below fails).
                        swept_rx.recv_timeout(Duration::from_secs(20)).ok()
                    })
                    .unwrap()
            })
        };
        held_rx.recv().unwrap();
        let removed = tokens.sweep(now + Duration::from_secs(1), 0);
        let _ = swept_tx.send(removed);
        assert_eq!(
            holder.join().unwrap(),
            Some(0),
            "the sweep finished while the lookup still held its guard"
        );
        // With nobody holding anything, the expired ones go as before.
        assert_eq!(tokens.sweep(now + Duration::from_secs(60), 0), 65);
        assert_eq!(tokens.len(), 0);
    }

    /// Two replicas sharing a secret: B learns A's boot from the registry.
    fn pair() -> (AccessTokens, AccessTokens) {
        let secret = b"shared server secret";
        (
            AccessTokens::keyed(secret, 1000).unwrap(),
            AccessTokens::keyed(secret, 1000).unwrap(),
        )
    }

    /// `token` with the raw byte at `at` changed (0..32 claims, 32..48 id,
    /// 48..64 tag), re-encoded.
    fn altered(token: &str, at: usize) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let mut raw = URL_SAFE_NO_PAD.decode(&token[4..]).unwrap();
        raw[at] ^= 1;
        format!("tga_{}", URL_SAFE_NO_PAD.encode(raw))
    }

    #[test]
    fn a_live_token_presented_again_is_recognised_without_a_mac() {
        let tokens = AccessTokens::new().unwrap();
        let r = refresh(3);
        let now = Instant::now();
        let t = tokens
            .issue(r.clone(), Duration::from_secs(60), now)
            .unwrap();
        for _ in 0..3 {
            assert_eq!(tokens.validate(t.as_bytes(), now, 0, |r| r.id), Ok(3));
        }
        assert_eq!(
            tokens.macs.load(Ordering::Relaxed),
            0,
            "minted here: sealed"
        );
        // Its id with another claim (the refresh token, the generation,
        // the expiry) or another tag is not the sealed token: the full
        // check runs, and the MAC refuses it.
        for at in [9, 17, 25, 48, 63] {
            let forged = altered(&t, at);
            assert_eq!(
                tokens.validate(forged.as_bytes(), now, 0, |r| r.id),
                Err(AccessError::Forged),
                "byte {at}"
            );
        }
        assert_eq!(tokens.macs.load(Ordering::Relaxed), 5);
        // A sealed token whose entry says no gets the full path's verdict.
        assert_eq!(
            tokens.validate(t.as_bytes(), now + Duration::from_secs(60), 0, |r| r.id),
            Err(AccessError::Expired)
        );
        r.revoke();
        assert_eq!(
            tokens.validate(t.as_bytes(), now, 0, |r| r.id),
            Err(AccessError::RefreshGone)
        );
    }

    #[test]
    fn a_peers_token_verifies_from_its_claims_and_is_then_cached() {
        let (a, b) = pair();
        let r = refresh(9);
        let now = Instant::now();
        let wall = 1_800_000_000;
        let t = a
            .issue_at(r.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        let lookup = |id: u64| {
            (id == 9)
                .then(|| r.clone())
                .ok_or(AccessError::RefreshUnseen)
        };
        let check = |at: Instant, w: u64| b.validate_with(t.as_bytes(), at, w, lookup, |r| r.id);
        // Unknown boot: refused before any MAC.
        assert_eq!(check(now, wall), Err(AccessError::UnknownBoot));
        b.set_peers(&[a.own_boot()], &[]);
        assert_eq!(b.peers(), 1);
        assert_eq!(check(now, wall), Ok(9));
        assert_eq!(b.len(), 1, "cached after the first check");
        assert_eq!(b.macs.load(Ordering::Relaxed), 1);
        // The cache answers even without the lookup now, and without a MAC.
        assert_eq!(
            b.validate(t.as_bytes(), now, wall, |r| r.id),
            Ok(9),
            "second check is a map hit"
        );
        assert_eq!(b.macs.load(Ordering::Relaxed), 1);
        // Its expiry came with it (60 s from minting).
        assert_eq!(
            check(now + Duration::from_secs(60), wall + 60),
            Err(AccessError::Expired)
        );
        // Another secret derives another key from the same nonce.
        let other = AccessTokens::keyed(b"another secret", 10).unwrap();
        other.set_peers(&[a.own_boot()], &[]);
        assert_eq!(
            other.validate_with(t.as_bytes(), now, wall, lookup, |r| r.id),
            Err(AccessError::Forged)
        );
    }

    #[test]
    fn a_revoked_token_is_refused_here_and_by_a_peer_that_never_saw_it() {
        let (a, b) = pair();
        b.set_peers(&[a.own_boot()], &[]);
        let r = refresh(9);
        let now = Instant::now();
        let wall = 1_800_000_000;
        let t = a
            .issue_at(r.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        let lookup = |_: u64| Ok(r.clone());
        let claims = a.claims(t.as_bytes()).unwrap();
        assert_eq!(claims.refresh_id, 9);
        assert!(a.claims(b"tga_nonsense").is_none());
        // Revoked where it was minted; the peer hears of it by the feed.
        a.revoke_one(claims.id, claims.expires);
        b.revoke_one(claims.id, claims.expires);
        assert!(a.validate(t.as_bytes(), now, wall, |r| r.id).is_err());
        assert_eq!(
            b.validate_with(t.as_bytes(), now, wall, lookup, |r| r.id),
            Err(AccessError::Unknown),
            "not verified from its claims"
        );
        // Remembered only until it would have expired anyway.
        b.sweep(now, wall + 61);
        assert!(b.revoked.is_empty());
    }

    #[test]
    fn a_peers_token_needs_its_refresh_token_here_and_live() {
        let (a, b) = pair();
        b.set_peers(&[a.own_boot()], &[]);
        let r = refresh(3);
        let (now, wall) = (Instant::now(), 1_800_000_000);
        let t = a
            .issue_at(r.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        assert_eq!(
            b.validate_with(
                t.as_bytes(),
                now,
                wall,
                |_| Err(AccessError::RefreshUnseen),
                |_| ()
            ),
            Err(AccessError::RefreshUnseen)
        );
        assert!(!AccessError::RefreshUnseen.counts_as_guess());
        r.revoke();
        assert_eq!(
            b.validate_with(t.as_bytes(), now, wall, |_| Ok(r.clone()), |_| ()),
            Err(AccessError::RefreshGone)
        );
        assert_eq!(b.len(), 0, "a refused token is not cached");
        // Past its claimed expiry it is refused without a lookup.
        assert_eq!(
            b.validate_with(
                t.as_bytes(),
                now,
                wall + 60,
                |_| panic!("no lookup"),
                |_| ()
            ),
            Err(AccessError::Expired)
        );
    }

    #[test]
    fn a_retired_boot_is_refused_and_its_cached_tokens_dropped() {
        let (a, b) = pair();
        b.set_peers(&[a.own_boot()], &[]);
        let r = refresh(1);
        let (now, wall) = (Instant::now(), 1_800_000_000);
        let t = a
            .issue_at(r.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        let mine = b
            .issue_at(r.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        assert!(b
            .validate_with(t.as_bytes(), now, wall, |_| Ok(r.clone()), |_| ())
            .is_ok());
        assert_eq!(b.len(), 2);
        assert_eq!(b.set_peers(&[], &[]), vec![a.own_boot().0]);
        assert_eq!(b.len(), 1, "the peer's cached token left the map");
        assert_eq!(
            b.validate(t.as_bytes(), now, wall, |_| ()),
            Err(AccessError::EarlierBoot)
        );
        assert_eq!(b.validate(mine.as_bytes(), now, wall, |_| ()), Ok(()));
    }

    #[test]
    fn renewing_the_own_boot_ends_every_token_minted_before() {
        let (a, b) = pair();
        let r = refresh(1);
        let (now, wall) = (Instant::now(), 1_800_000_000);
        let old = a
            .issue_at(r.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        let before = a.own_boot();
        let after = a.renew_boot().unwrap();
        assert_ne!(before.0, after.0);
        assert_eq!(a.own_boot(), after);
        assert_eq!(a.len(), 0);
        assert_eq!(
            a.validate(old.as_bytes(), now, wall, |_| ()),
            Err(AccessError::EarlierBoot)
        );
        let new = a
            .issue_at(r.clone(), Duration::from_secs(60), now, wall)
            .unwrap();
        assert_eq!(a.validate(new.as_bytes(), now, wall, |_| ()), Ok(()));
        // A peer that learns the new boot accepts the new token only.
        b.set_peers(&[after], &[before.0]);
        let lookup = |_| Ok(r.clone());
        assert_eq!(
            b.validate_with(new.as_bytes(), now, wall, lookup, |_| ()),
            Ok(())
        );
        assert_eq!(
            b.validate_with(old.as_bytes(), now, wall, lookup, |_| ()),
            Err(AccessError::EarlierBoot)
        );
    }
}
