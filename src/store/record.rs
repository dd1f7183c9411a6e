//! What a refresh token is, apart from where it is kept: the persisted
//! record, and the in-memory token shared by the maps and every access token
//! it issued.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

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
#[derive(Debug)]
pub struct RefreshToken {
    pub id: u64,
    pub name: String,
    pub created: u64,
    pub expires: Option<u64>,
    /// Set when the token is deleted; every access token it issued checks this.
    revoked: AtomicBool,
    /// Unix seconds of the last exchange, 0 = never. Flushed to disk in batches.
    last_used: AtomicU64,
    use_count: AtomicU64,
    /// Last client; a short critical section per exchange, never held across `.await`.
    last_client: Mutex<LastClient>,
    /// Usage changed since the last flush.
    dirty: AtomicBool,
    /// How much of `use_count` the backend already holds; only the flusher
    /// (under the store's write lock) moves it.
    flushed_count: AtomicU64,
    /// Scopes, networks and rate; `None` (the common case) = full access,
    /// one branch on the request path. Boxed so an unrestricted token
    /// carries one pointer.
    restrictions: Option<Box<Restrictions>>,
}

impl RefreshToken {
    pub(crate) fn from_record(r: &RefreshRecord) -> RefreshToken {
        RefreshToken {
            id: r.id,
            name: r.name.clone(),
            created: r.created,
            expires: r.expires,
            revoked: AtomicBool::new(false),
            last_used: AtomicU64::new(r.last_used.unwrap_or(0)),
            use_count: AtomicU64::new(r.use_count),
            last_client: Mutex::new(LastClient {
                ip: r.last_ip.clone(),
                user_agent: r.last_user_agent.clone(),
            }),
            dirty: AtomicBool::new(false),
            flushed_count: AtomicU64::new(r.use_count),
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
        }
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

    /// Usable = not deleted and not past its expiry at `now` (Unix seconds).
    #[inline]
    pub fn is_usable(&self, now: u64) -> bool {
        !self.revoked.load(Ordering::Acquire) && self.expires.is_none_or(|e| now < e)
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

    /// Records an exchange in memory; written to disk by the next flush.
    pub(crate) fn touch(&self, now: u64, ip: Option<std::net::IpAddr>, user_agent: Option<&str>) {
        self.last_used.store(now, Ordering::Relaxed);
        self.use_count.fetch_add(1, Ordering::Relaxed);
        {
            let mut last = self.last_client.lock().unwrap_or_else(|p| p.into_inner());
            let ip = ip.map(|i| i.to_canonical().to_string());
            if last.ip != ip {
                last.ip = ip;
            }
            let ua = user_agent.map(|u| u.chars().take(MAX_USER_AGENT_CHARS).collect::<String>());
            if last.user_agent != ua {
                last.user_agent = ua;
            }
        }
        self.dirty.store(true, Ordering::Release);
    }

    pub(crate) fn last_client(&self) -> LastClient {
        self.last_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn last_used(&self) -> Option<u64> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    pub(crate) fn use_count(&self) -> u64 {
        self.use_count.load(Ordering::Relaxed)
    }

    /// Takes the "usage changed" mark: true if usage changed since the last take.
    pub(super) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// The usage not yet in the backend, as of now.
    pub(super) fn usage_delta(&self, hash: RefreshHash) -> UsageDelta {
        let client = self.last_client();
        UsageDelta {
            id: self.id,
            hash,
            uses: self
                .use_count()
                .saturating_sub(self.flushed_count.load(Ordering::Relaxed)),
            last_used: self.last_used.load(Ordering::Relaxed),
            last_ip: client.ip,
            last_user_agent: client.user_agent,
        }
    }

    /// The backend committed `delta`: those uses are no longer pending.
    pub(super) fn flushed(&self, delta: &UsageDelta) {
        self.flushed_count.fetch_add(delta.uses, Ordering::Relaxed);
    }

    /// Takes in the usage the shared database holds (every replica's uses,
    /// ours included up to the flush just done). Only the flusher calls
    /// it, under the store's write lock, so `flushed_count` cannot move
    /// meanwhile; exchanges may, and their uses stay pending: the same
    /// amount is added to the count and to what is flushed.
    pub(super) fn merge_stored(&self, row: &UsageRow) {
        let flushed = self.flushed_count.load(Ordering::Relaxed);
        if row.use_count > flushed {
            let more = row.use_count - flushed;
            self.flushed_count.fetch_add(more, Ordering::Relaxed);
            self.use_count.fetch_add(more, Ordering::Relaxed);
        }
        if let Some(t) = row.last_used {
            if self.last_used.fetch_max(t, Ordering::Relaxed) < t {
                let mut last = self.last_client.lock().unwrap_or_else(|p| p.into_inner());
                last.ip.clone_from(&row.last_ip);
                last.user_agent.clone_from(&row.last_user_agent);
            }
        }
    }

    /// Puts the mark back after a failed flush, so nothing is lost.
    pub(super) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }
}
