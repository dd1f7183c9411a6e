//! What a refresh token is, apart from where it is kept: the persisted
//! record, and the in-memory token shared by the maps and every access token
//! it issued.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::restrict::{RestrictionSpec, Restrictions};

/// The HMAC-SHA256 of a refresh token under the server secret: the only form ever stored.
pub(crate) type RefreshHash = [u8; 32];

/// The persisted form of a refresh token. Never holds the token string.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RefreshRecord {
    pub(crate) id: u64,
    pub(crate) name: String,
    /// Unix seconds.
    pub(crate) created: u64,
    /// Unix seconds; `None` = never expires.
    pub(crate) expires: Option<u64>,
    #[serde(default)]
    pub(crate) last_used: Option<u64>,
    #[serde(default)]
    pub(crate) use_count: u64,
    /// Client IP of the last exchange.
    #[serde(default)]
    pub(crate) last_ip: Option<String>,
    /// User-Agent of the last exchange (at most 256 characters).
    #[serde(default)]
    pub(crate) last_user_agent: Option<String>,
    /// Scopes, networks, rate; absent (records older than restrictions
    /// included) = full access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) restrictions: Option<RestrictionSpec>,
    /// The secret a rotation replaced, while its grace period lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) previous: Option<PreviousSecret>,
    /// How many times the secret was rotated at once: every access token
    /// carries the generation it was issued under, and one of an earlier
    /// generation is refused on every replica, whether or not that replica
    /// ever saw it. Absent (records older than generations) = 0.
    #[serde(default)]
    pub(crate) generation: u64,
    /// The account that created it; absent for tokens made before
    /// accounts existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) created_by: Option<String>,
    /// Suspended by an administrator (or a leak report): exchanges are
    /// refused until it is resumed. Absent (older records) = not suspended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) suspended: bool,
    /// Why it was suspended, when someone said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) suspended_reason: Option<String>,
    /// Unix seconds before which it does not exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) not_before: Option<u64>,
    /// The usage limit as last set (exchanges); `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_uses: Option<u64>,
    /// Exchanges left under `max_uses`: taken one at a time by the backend
    /// in its own transaction (never through a usage flush).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) uses_left: Option<u64>,
}

/// What a create may set besides name, expiry and restrictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CreateLimits {
    /// Unix seconds before which it does not exchange.
    pub(crate) not_before: Option<u64>,
    /// Exchanges allowed; `None` = unlimited.
    pub(crate) max_uses: Option<u64>,
}

impl CreateLimits {
    /// Writes these limits into a new record.
    pub(crate) fn apply(&self, rec: &mut RefreshRecord) {
        rec.not_before = self.not_before;
        rec.max_uses = self.max_uses;
        rec.uses_left = self.max_uses;
    }
}

/// A rotated-out secret that still exchanges until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PreviousSecret {
    pub(crate) hash: RefreshHash,
    /// Unix seconds; from then on the old secret is refused.
    pub(crate) until: u64,
}

impl RefreshRecord {
    /// A token as it is created: never used.
    pub(crate) fn new(id: u64, name: &str, created: u64, expires: Option<u64>) -> RefreshRecord {
        RefreshRecord {
            id,
            name: name.to_owned(),
            created,
            expires,
            last_used: None,
            use_count: 0,
            last_ip: None,
            last_user_agent: None,
            restrictions: None,
            previous: None,
            generation: 0,
            created_by: None,
            suspended: false,
            suspended_reason: None,
            not_before: None,
            max_uses: None,
            uses_left: None,
        }
    }

    /// As `new`, with restrictions (an empty spec is stored as none).
    pub(crate) fn restricted(
        id: u64,
        name: &str,
        created: u64,
        expires: Option<u64>,
        restrictions: Option<&RestrictionSpec>,
    ) -> RefreshRecord {
        RefreshRecord {
            restrictions: restrictions.filter(|r| !r.is_empty()).cloned(),
            ..RefreshRecord::new(id, name, created, expires)
        }
    }
}

/// A change to an existing token, applied by the backend to its stored
/// record in one transaction.
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    /// `PATCH`: each field present is replaced; absent ones stay. Merged
    /// with the stored record inside the backend's transaction, so two
    /// administrators editing different fields lose neither edit.
    Fields {
        name: Option<String>,
        /// `Some(None)`: never expires.
        expires: Option<Option<u64>>,
        scopes: Option<Vec<crate::restrict::ScopeRule>>,
        read_only: Option<bool>,
        networks: Option<Vec<String>>,
        /// `Some(None)`: no rate limit.
        rate_limit: Option<Option<crate::restrict::RateLimit>>,
        /// `Some(None)`: no not-before.
        not_before: Option<Option<u64>>,
        /// `Some(n)`: `n` exchanges from now on; `Some(None)`: unlimited.
        max_uses: Option<Option<u64>>,
    },
    /// Suspends the token. The first suspension bumps the generation, so
    /// the access tokens issued so far end on every replica and stay
    /// ended after a resume; suspending again only changes the reason.
    Suspend { reason: Option<String> },
    /// Lifts a suspension; the generation stays where the suspension put it.
    Resume,
    /// A new secret (its hash); the old one is kept as `previous` while a
    /// grace period lasts, or dropped at once, and then the generation goes
    /// up: the access tokens issued so far end with the old secret.
    Secret {
        hash: RefreshHash,
        /// Unix seconds when the old secret stops; `None`: at once.
        old_until: Option<u64>,
    },
}

impl Edit {
    /// Applies the edit to a stored record and its hash.
    pub(crate) fn apply(&self, hash: &mut RefreshHash, rec: &mut RefreshRecord) {
        match self {
            Edit::Fields {
                name,
                expires,
                scopes,
                read_only,
                networks,
                rate_limit,
                not_before,
                max_uses,
            } => {
                if let Some(n) = not_before {
                    rec.not_before = *n;
                }
                if let Some(m) = max_uses {
                    rec.max_uses = *m;
                    rec.uses_left = *m;
                }
                if let Some(n) = name {
                    rec.name.clone_from(n);
                }
                if let Some(e) = expires {
                    rec.expires = *e;
                }
                let mut spec = rec.restrictions.take().unwrap_or_default();
                if let Some(s) = scopes {
                    spec.scopes.clone_from(s);
                }
                if let Some(r) = read_only {
                    spec.read_only = *r;
                }
                if let Some(n) = networks {
                    spec.networks.clone_from(n);
                }
                if let Some(r) = rate_limit {
                    spec.rate_limit = *r;
                }
                rec.restrictions = (!spec.is_empty()).then_some(spec);
            }
            Edit::Secret {
                hash: new,
                old_until,
            } => {
                rec.previous = old_until.map(|until| PreviousSecret { hash: *hash, until });
                if old_until.is_none() {
                    // Saturating: 2^64 rotations are not a real case, and
                    // wrapping would bring generation 0's tokens back.
                    rec.generation = rec.generation.saturating_add(1);
                }
                *hash = *new;
            }
            Edit::Suspend { reason } => {
                if !rec.suspended {
                    rec.generation = rec.generation.saturating_add(1);
                }
                rec.suspended = true;
                rec.suspended_reason.clone_from(reason);
            }
            Edit::Resume => {
                rec.suspended = false;
                rec.suspended_reason = None;
            }
        }
    }
}

/// What one flush writes for one token: the uses since the last flush (so
/// replicas sharing a database add up their counts instead of overwriting
/// each other's) and the latest use (the later one wins).
#[derive(Debug, Clone)]
pub(crate) struct UsageDelta {
    pub(crate) id: u64,
    pub(crate) hash: RefreshHash,
    /// Exchanges since the last successful flush.
    pub(crate) uses: u64,
    /// Unix seconds of the latest of them.
    pub(crate) last_used: u64,
    pub(crate) last_ip: Option<String>,
    pub(crate) last_user_agent: Option<String>,
}

impl UsageDelta {
    /// Applies this delta to a stored record: counts add up, the later use
    /// wins (with its client); an earlier one only adds its count.
    pub(crate) fn apply(&self, rec: &mut RefreshRecord) {
        rec.use_count = rec.use_count.saturating_add(self.uses);
        if rec.last_used.is_none_or(|t| self.last_used >= t) {
            rec.last_used = Some(self.last_used);
            rec.last_ip = self.last_ip.clone();
            rec.last_user_agent = self.last_user_agent.clone();
        }
    }
}

/// A token's usage as the shared database holds it (all replicas' uses).
#[derive(Debug, Clone)]
pub(crate) struct UsageRow {
    pub(crate) id: u64,
    pub(crate) use_count: u64,
    pub(crate) last_used: Option<u64>,
    pub(crate) last_ip: Option<String>,
    pub(crate) last_user_agent: Option<String>,
    /// Exchanges left under a usage limit, as the database holds them.
    pub(crate) uses_left: Option<u64>,
}

/// Who used a refresh token last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LastClient {
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
}

/// Longest User-Agent kept, in characters: enough to identify a client, not a storage sink.
pub(crate) const MAX_USER_AGENT_CHARS: usize = 256;

/// One refresh token in memory, shared by the store's maps and by every
/// access token it issued (so revocation is one atomic store, seen at once).
///
/// Its name, expiry and restrictions never change in place: an edit or a
/// rotation maps a new `RefreshToken` under the same id and marks this one
/// superseded, and the access tokens that hold this one follow the id to
/// the new one at their next request. The usage counts are shared by every
/// version, so an exchange racing an edit is never lost.
#[derive(Debug)]
pub struct RefreshToken {
    pub id: u64,
    pub name: String,
    pub created: u64,
    pub expires: Option<u64>,
    /// The account that created it (`None`: before accounts existed).
    pub created_by: Option<String>,
    /// Set when the token is deleted or superseded; every access token it
    /// issued checks this (one load on the request path).
    revoked: AtomicBool,
    /// Set with `revoked` when an edit or rotation replaced this version:
    /// its access tokens follow the id instead of being refused.
    superseded: AtomicBool,
    usage: Arc<Usage>,
    /// Scopes, networks and rate; `None` (the common case) = full access,
    /// one branch on the request path. Boxed so an unrestricted token
    /// carries one pointer.
    restrictions: Option<Box<Restrictions>>,
    /// A rotated-out secret still accepted until its grace period ends.
    previous: Option<PreviousSecret>,
    /// The secret's generation (see `RefreshRecord::generation`); a
    /// version's never changes, a rotation at once maps a new version.
    generation: u64,
    /// Suspended: `Some(reason)` (the reason may be empty).
    suspended: Option<String>,
    not_before: Option<u64>,
    max_uses: Option<u64>,
    /// The first Unix second it is usable: its not-before, or never while
    /// suspended. One comparison on the request path for both.
    valid_from: u64,
}

/// How a token has been used, shared by all its versions.
#[derive(Debug)]
struct Usage {
    /// Unix seconds of the last exchange, 0 = never. Flushed to disk in batches.
    last_used: AtomicU64,
    use_count: AtomicU64,
    /// Last client; a short critical section per exchange, never held across `.await`.
    last_client: Mutex<LastClient>,
    /// Usage changed since the last flush.
    dirty: AtomicBool,
    /// Exchanges left under a usage limit, as last confirmed by the
    /// backend (shown in the list; the backend decides each exchange).
    uses_left: AtomicU64,
    /// How much of `use_count` the backend already holds; only the flusher
    /// (under the store's write lock) moves it.
    flushed_count: AtomicU64,
}

impl RefreshToken {
    pub(crate) fn from_record(r: &RefreshRecord) -> RefreshToken {
        RefreshToken::version(
            r,
            Arc::new(Usage {
                last_used: AtomicU64::new(r.last_used.unwrap_or(0)),
                use_count: AtomicU64::new(r.use_count),
                last_client: Mutex::new(LastClient {
                    ip: r.last_ip.clone(),
                    user_agent: r.last_user_agent.clone(),
                }),
                dirty: AtomicBool::new(false),
                flushed_count: AtomicU64::new(r.use_count),
                uses_left: AtomicU64::new(r.uses_left.unwrap_or(0)),
            }),
        )
    }

    /// The next version of this token, from its edited record: the usage
    /// stays shared (what is in memory is newer than the record's).
    pub(crate) fn successor(&self, r: &RefreshRecord) -> RefreshToken {
        // The record's count is the backend's, read in the edit's own
        // transaction (an edit may also have set a new limit).
        self.usage
            .uses_left
            .store(r.uses_left.unwrap_or(0), Ordering::Relaxed);
        RefreshToken::version(r, self.usage.clone())
    }

    fn version(r: &RefreshRecord, usage: Arc<Usage>) -> RefreshToken {
        RefreshToken {
            id: r.id,
            name: r.name.clone(),
            created: r.created,
            expires: r.expires,
            created_by: r.created_by.clone(),
            revoked: AtomicBool::new(false),
            superseded: AtomicBool::new(false),
            usage,
            restrictions: r.restrictions.as_ref().and_then(|spec| {
                // The rate bucket's timeline starts now; `Clock::now` is
                // never earlier (its offset only moves forward).
                match Restrictions::compile(spec, std::time::Instant::now()) {
                    Ok(c) => c.map(Box::new),
                    Err(e) => {
                        // Validated at create, so only a damaged record
                        // gets here: fail closed, never open.
                        tracing::error!(token_id = r.id, error = %e, "stored restrictions cannot be read; the token is refused everywhere until it is replaced");
                        Some(Box::new(Restrictions::deny_all(spec)))
                    }
                }
            }),
            previous: r.previous,
            generation: r.generation,
            suspended: r
                .suspended
                .then(|| r.suspended_reason.clone().unwrap_or_default()),
            not_before: r.not_before,
            max_uses: r.max_uses,
            valid_from: if r.suspended {
                u64::MAX
            } else {
                r.not_before.unwrap_or(0)
            },
        }
    }

    /// Whether an administrator (or a leak report) suspended it.
    pub(crate) fn is_suspended(&self) -> bool {
        self.suspended.is_some()
    }

    /// Why it is suspended, when it is and someone said.
    pub(crate) fn suspended_reason(&self) -> Option<&str> {
        self.suspended.as_deref().filter(|r| !r.is_empty())
    }

    /// Unix seconds before which it does not exchange.
    pub(crate) fn not_before(&self) -> Option<u64> {
        self.not_before
    }

    /// The usage limit as last set; `None` = unlimited.
    pub(crate) fn max_uses(&self) -> Option<u64> {
        self.max_uses
    }

    /// Exchanges left under its usage limit (`None`: unlimited).
    pub(crate) fn uses_left(&self) -> Option<u64> {
        self.max_uses
            .map(|_| self.usage.uses_left.load(Ordering::Relaxed))
    }

    /// What the backend said is left, after an exchange took one (or found none).
    pub(crate) fn set_uses_left(&self, left: u64) {
        self.usage.uses_left.store(left, Ordering::Relaxed);
    }

    /// Whether `hash` is this token's rotated-out secret and its grace
    /// period is over at `now` (Unix seconds).
    #[inline]
    pub(crate) fn retired_secret(&self, hash: &RefreshHash, now: u64) -> bool {
        self.previous
            .is_some_and(|p| p.hash == *hash && now >= p.until)
    }

    pub(crate) fn previous(&self) -> Option<PreviousSecret> {
        self.previous
    }

    /// The secret's generation: what access tokens issued now carry.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether this version already holds `rec`'s editable fields (a
    /// change from the feed that is our own edit, or one seen before).
    pub(crate) fn matches(&self, rec: &RefreshRecord) -> bool {
        self.name == rec.name
            && self.expires == rec.expires
            && self.previous == rec.previous
            && self.generation == rec.generation
            && self.suspended.is_some() == rec.suspended
            && self.suspended_reason() == rec.suspended_reason.as_deref().filter(|r| !r.is_empty())
            && self.not_before == rec.not_before
            && self.max_uses == rec.max_uses
            && self.restrictions.as_ref().map(|r| r.spec()) == rec.restrictions.as_ref()
    }

    /// Scopes, networks and rate, if the token has any.
    #[inline]
    pub fn restrictions(&self) -> Option<&Restrictions> {
        self.restrictions.as_deref()
    }

    /// A fresh token with restrictions that is not in any store (benchmarks, tools).
    pub fn detached_restricted(
        id: u64,
        name: &str,
        expires: Option<u64>,
        restrictions: &RestrictionSpec,
    ) -> RefreshToken {
        RefreshToken::from_record(&RefreshRecord::restricted(
            id,
            name,
            0,
            expires,
            Some(restrictions),
        ))
    }

    /// A fresh, never-used token that is not in any store (benchmarks, tools).
    pub fn detached(id: u64, name: &str, expires: Option<u64>) -> RefreshToken {
        RefreshToken::from_record(&RefreshRecord::new(id, name, 0, expires))
    }

    /// Usable = not deleted, not suspended, not before its not-before and
    /// not past its expiry at `now` (Unix seconds).
    #[inline]
    pub fn is_usable(&self, now: u64) -> bool {
        !self.revoked.load(Ordering::Acquire)
            && now >= self.valid_from
            && self.expires.is_none_or(|e| now < e)
    }

    pub(crate) fn is_expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Marks the token deleted; every access token it issued is refused from now on.
    pub(crate) fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    /// Marks this version replaced by an edit (or a rotation with a grace
    /// period): its access tokens follow the id to the new version, if
    /// their generation is still its (see `AccessTokens::check`).
    pub(crate) fn supersede(&self) {
        self.superseded.store(true, Ordering::Release);
        self.revoked.store(true, Ordering::Release);
    }

    /// Replaced by an edit or a rotation with a grace period (not deleted).
    #[inline]
    pub(crate) fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    /// Records an exchange in memory; written to disk by the next flush.
    pub(crate) fn touch(&self, now: u64, ip: Option<std::net::IpAddr>, user_agent: Option<&str>) {
        self.usage.last_used.store(now, Ordering::Relaxed);
        self.usage.use_count.fetch_add(1, Ordering::Relaxed);
        {
            let mut last = self
                .usage
                .last_client
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let ip = ip.map(|i| i.to_canonical().to_string());
            if last.ip != ip {
                last.ip = ip;
            }
            let ua = user_agent.map(|u| u.chars().take(MAX_USER_AGENT_CHARS).collect::<String>());
            if last.user_agent != ua {
                last.user_agent = ua;
            }
        }
        self.usage.dirty.store(true, Ordering::Release);
    }

    pub(crate) fn last_client(&self) -> LastClient {
        self.usage
            .last_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn last_used(&self) -> Option<u64> {
        match self.usage.last_used.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    pub(crate) fn use_count(&self) -> u64 {
        self.usage.use_count.load(Ordering::Relaxed)
    }

    /// Takes the "usage changed" mark: true if usage changed since the last take.
    pub(super) fn take_dirty(&self) -> bool {
        self.usage.dirty.swap(false, Ordering::AcqRel)
    }

    /// The usage not yet in the backend, as of now.
    pub(super) fn usage_delta(&self, hash: RefreshHash) -> UsageDelta {
        let client = self.last_client();
        UsageDelta {
            id: self.id,
            hash,
            uses: self
                .use_count()
                .saturating_sub(self.usage.flushed_count.load(Ordering::Relaxed)),
            last_used: self.usage.last_used.load(Ordering::Relaxed),
            last_ip: client.ip,
            last_user_agent: client.user_agent,
        }
    }

    /// The backend committed `delta`: those uses are no longer pending.
    pub(super) fn flushed(&self, delta: &UsageDelta) {
        self.usage
            .flushed_count
            .fetch_add(delta.uses, Ordering::Relaxed);
    }

    /// Takes in the usage the shared database holds (every replica's uses,
    /// ours included up to the flush just done). Only the flusher calls
    /// it, under the store's write lock, so `flushed_count` cannot move
    /// meanwhile; exchanges may, and their uses stay pending: the same
    /// amount is added to the count and to what is flushed.
    pub(super) fn merge_stored(&self, row: &UsageRow) {
        let flushed = self.usage.flushed_count.load(Ordering::Relaxed);
        if row.use_count > flushed {
            let more = row.use_count - flushed;
            self.usage.flushed_count.fetch_add(more, Ordering::Relaxed);
            self.usage.use_count.fetch_add(more, Ordering::Relaxed);
        }
        if let Some(left) = row.uses_left {
            self.usage.uses_left.store(left, Ordering::Relaxed);
        }
        if let Some(t) = row.last_used {
            if self.usage.last_used.fetch_max(t, Ordering::Relaxed) < t {
                let mut last = self
                    .usage
                    .last_client
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                last.ip.clone_from(&row.last_ip);
                last.user_agent.clone_from(&row.last_user_agent);
            }
        }
    }

    /// Puts the mark back after a failed flush, so nothing is lost.
    pub(super) fn mark_dirty(&self) {
        self.usage.dirty.store(true, Ordering::Release);
    }
}
