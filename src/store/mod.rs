//! Refresh tokens: the redb file is the durable source of truth; an in-memory
//! map mirrors every record so an exchange never waits on disk.
//!
//! Every write commits to redb first and updates the maps only after the commit,
//! so an answer of "created" or "deleted" is always durable. redb calls block:
//! the async callers run them in `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::tokens::format::RefreshHash;

/// hash (HMAC-SHA256 of the token) → JSON record.
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("refresh_tokens");
/// id → hash, so deletion by id needs no scan.
const IDS: TableDefinition<u64, &[u8]> = TableDefinition::new("refresh_ids");
/// Counters. `next_id` only grows: an id is never reused, so an access token
/// bound to a deleted id can never be revived by a new token.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is already open in another process (is another tokengate running on this data directory?)")]
    AlreadyOpen { path: PathBuf },
    #[error("cannot open token database {path}: {source}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token database {path} holds an unreadable record (id {id}): {detail}")]
    Corrupt {
        path: PathBuf,
        id: String,
        detail: String,
    },
    #[error("token database error: {0}")]
    Db(#[from] redb::Error),
    #[error("token record encoding: {0}")]
    Encoding(#[from] serde_json::Error),
}

macro_rules! db_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
db_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The persisted form of a refresh token. Never holds the token string.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub id: u64,
    pub name: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None` = never expires.
    pub expires: Option<u64>,
    #[serde(default)]
    pub last_used: Option<u64>,
    #[serde(default)]
    pub use_count: u64,
    /// Client IP of the last exchange.
    #[serde(default)]
    pub last_ip: Option<String>,
    /// User-Agent of the last exchange (at most 256 characters).
    #[serde(default)]
    pub last_user_agent: Option<String>,
}

/// Who used a refresh token last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastClient {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Longest User-Agent kept, in characters: enough to identify a client, not a storage sink.
pub const MAX_USER_AGENT_CHARS: usize = 256;

/// The in-memory view of one refresh token, shared by the maps and by every
/// access token it issued (so revocation is one atomic store, seen at once).
#[derive(Debug)]
pub struct RefreshLive {
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
}

impl RefreshLive {
    pub fn from_record(r: &RefreshRecord) -> RefreshLive {
        RefreshLive {
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
        }
    }

    /// A fresh, never-used token that is not in any store (benchmarks, tools).
    pub fn detached(id: u64, name: &str, expires: Option<u64>) -> RefreshLive {
        RefreshLive::from_record(&RefreshRecord {
            id,
            name: name.to_owned(),
            created: 0,
            expires,
            last_used: None,
            use_count: 0,
            last_ip: None,
            last_user_agent: None,
        })
    }

    /// Live = not deleted and not past its expiry at `now` (Unix seconds).
    #[inline]
    pub fn is_live(&self, now: u64) -> bool {
        !self.revoked.load(Ordering::Acquire) && self.expires.is_none_or(|e| now < e)
    }

    pub fn is_expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Records an exchange in memory; written to disk by the next flush.
    pub fn touch(&self, now: u64, ip: Option<std::net::IpAddr>, user_agent: Option<&str>) {
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

    pub fn last_client(&self) -> LastClient {
        self.last_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn last_used(&self) -> Option<u64> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    pub fn use_count(&self) -> u64 {
        self.use_count.load(Ordering::Relaxed)
    }

    fn record(&self) -> RefreshRecord {
        let client = self.last_client();
        RefreshRecord {
            last_ip: client.ip,
            last_user_agent: client.user_agent,
            id: self.id,
            name: self.name.clone(),
            created: self.created,
            expires: self.expires,
            last_used: self.last_used(),
            use_count: self.use_count(),
        }
    }
}

pub struct RefreshStore {
    path: PathBuf,
    db: Database,
    /// Exchange lookups: hash → token. DashMap: many concurrent readers, rare writers.
    by_hash: DashMap<RefreshHash, Arc<RefreshLive>>,
    /// Admin lookups and deletion by id.
    by_id: DashMap<u64, (RefreshHash, Arc<RefreshLive>)>,
    /// Serialises writers so a flush never races a delete into resurrecting a record.
    write_lock: Mutex<()>,
}

impl RefreshStore {
    /// Opens (creating if needed) the database and loads every record into memory.
    pub fn open(path: &Path) -> Result<RefreshStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::secrets::create_private_dir(dir).map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen {
                path: path.to_owned(),
            },
            other => StoreError::Open {
                path: path.to_owned(),
                source: other.into(),
            },
        })?;
        crate::secrets::restrict_file(path).map_err(|source| StoreError::Dir {
            path: path.to_owned(),
            source,
        })?;
        let store = RefreshStore {
            path: path.to_owned(),
            db,
            by_hash: DashMap::new(),
            by_id: DashMap::new(),
            write_lock: Mutex::new(()),
        };
        store.init_and_load()?;
        Ok(store)
    }

    fn init_and_load(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            // Opening a table in a write transaction creates it.
            txn.open_table(TOKENS)?;
            txn.open_table(IDS)?;
            txn.open_table(META)?;
        }
        txn.commit()?;

        let read = self.db.begin_read()?;
        let tokens = read.open_table(TOKENS)?;
        for row in tokens.iter()? {
            let (k, v) = row?;
            let hash: RefreshHash = k.value().try_into().map_err(|_| StoreError::Corrupt {
                path: self.path.clone(),
                id: "?".into(),
                detail: "hash key is not 32 bytes".into(),
            })?;
            let rec: RefreshRecord =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    id: "?".into(),
                    detail: e.to_string(),
                })?;
            let live = Arc::new(RefreshLive::from_record(&rec));
            self.by_hash.insert(hash, live.clone());
            self.by_id.insert(rec.id, (hash, live));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned lock guards no data of its own (it only orders writers).
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists a new token (blocking), then makes it visible to exchanges.
    pub fn create(
        &self,
        hash: RefreshHash,
        name: &str,
        created: u64,
        expires: Option<u64>,
    ) -> Result<Arc<RefreshLive>, StoreError> {
        let _w = self.lock();
        let txn = self.db.begin_write()?;
        let rec = {
            let mut meta = txn.open_table(META)?;
            let id = meta.get("next_id")?.map(|v| v.value()).unwrap_or(1);
            meta.insert("next_id", id + 1)?;
            let rec = RefreshRecord {
                id,
                name: name.to_owned(),
                created,
                expires,
                last_used: None,
                use_count: 0,
                last_ip: None,
                last_user_agent: None,
            };
            let bytes = serde_json::to_vec(&rec)?;
            txn.open_table(TOKENS)?.insert(&hash[..], &bytes[..])?;
            txn.open_table(IDS)?.insert(id, &hash[..])?;
            rec
        };
        txn.commit()?;
        let live = Arc::new(RefreshLive::from_record(&rec));
        self.by_hash.insert(hash, live.clone());
        self.by_id.insert(rec.id, (hash, live.clone()));
        Ok(live)
    }

    /// Deletes every listed id that exists, in one transaction (blocking).
    /// Returns the deleted tokens; unknown ids are simply not in the result.
    pub fn delete(&self, ids: &[u64]) -> Result<Vec<Arc<RefreshLive>>, StoreError> {
        let _w = self.lock();
        let txn = self.db.begin_write()?;
        let mut gone = Vec::new();
        {
            let mut id_table = txn.open_table(IDS)?;
            let mut tokens = txn.open_table(TOKENS)?;
            for &id in ids {
                let hash = match id_table.remove(id)? {
                    Some(h) => h.value().to_vec(),
                    None => continue,
                };
                tokens.remove(&hash[..])?;
                gone.push(id);
            }
        }
        txn.commit()?;
        let mut deleted = Vec::with_capacity(gone.len());
        for id in gone {
            if let Some((_, (hash, live))) = self.by_id.remove(&id) {
                // Revoke before unmapping: an access check that still holds the Arc sees it.
                live.revoked.store(true, Ordering::Release);
                self.by_hash.remove(&hash);
                deleted.push(live);
            }
        }
        Ok(deleted)
    }

    /// Writes changed usage counters in one transaction (blocking). Returns how many.
    pub fn flush_usage(&self) -> Result<usize, StoreError> {
        let dirty: Vec<(RefreshHash, Arc<RefreshLive>)> = self
            .by_id
            .iter()
            .filter(|e| e.value().1.dirty.swap(false, Ordering::AcqRel))
            .map(|e| e.value().clone())
            .collect();
        if dirty.is_empty() {
            return Ok(0);
        }
        let _w = self.lock();
        let result = (|| -> Result<usize, StoreError> {
            let txn = self.db.begin_write()?;
            let mut n = 0;
            {
                let mut tokens = txn.open_table(TOKENS)?;
                for (hash, live) in &dirty {
                    // Skip tokens deleted since: never write a removed record back.
                    if tokens.get(&hash[..])?.is_none() {
                        continue;
                    }
                    let bytes = serde_json::to_vec(&live.record())?;
                    tokens.insert(&hash[..], &bytes[..])?;
                    n += 1;
                }
            }
            txn.commit()?;
            Ok(n)
        })();
        if result.is_err() {
            // Nothing lost: mark them dirty again for the next flush.
            for (_, live) in &dirty {
                live.dirty.store(true, Ordering::Release);
            }
        }
        result
    }

    #[inline]
    pub fn lookup(&self, hash: &RefreshHash) -> Option<Arc<RefreshLive>> {
        self.by_hash.get(hash).map(|e| e.value().clone())
    }

    pub fn get(&self, id: u64) -> Option<Arc<RefreshLive>> {
        self.by_id.get(&id).map(|e| e.value().1.clone())
    }

    /// Every token, expired ones included, ordered by id.
    pub fn list(&self) -> Vec<Arc<RefreshLive>> {
        let mut all: Vec<_> = self.by_id.iter().map(|e| e.value().1.clone()).collect();
        all.sort_by_key(|l| l.id);
        all
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> RefreshHash {
        [n; 32]
    }

    #[test]
    fn records_survive_reopen_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/t.redb");
        {
            let s = RefreshStore::open(&path).unwrap();
            let a = s.create(hash(1), "a", 100, Some(200)).unwrap();
            let b = s.create(hash(2), "b", 100, None).unwrap();
            assert_eq!((a.id, b.id), (1, 2));
            a.touch(
                150,
                Some("10.0.0.7".parse().unwrap()),
                Some("python-requests/2.31"),
            );
            assert_eq!(s.flush_usage().unwrap(), 1);
            let gone = s.delete(&[2, 99]).unwrap();
            assert_eq!(gone.len(), 1);
            assert!(gone[0].is_revoked());
            assert!(s.lookup(&hash(2)).is_none());
        }
        let s = RefreshStore::open(&path).unwrap();
        assert_eq!(s.len(), 1);
        let a = s.lookup(&hash(1)).unwrap();
        assert_eq!(
            (a.name.as_str(), a.expires, a.last_used(), a.use_count()),
            ("a", Some(200), Some(150), 1)
        );
        assert!(a.is_live(199) && !a.is_live(200));
        assert_eq!(a.last_client().ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(
            a.last_client().user_agent.as_deref(),
            Some("python-requests/2.31")
        );
        let c = s.create(hash(3), "c", 1, None).unwrap();
        assert_eq!(c.id, 3, "a deleted id is never handed out again");
    }

    #[test]
    fn a_second_open_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let _first = RefreshStore::open(&path).unwrap();
        match RefreshStore::open(&path) {
            Err(StoreError::AlreadyOpen { .. }) => {}
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("second open must fail"),
        }
    }

    #[test]
    fn flush_skips_deleted_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let s = RefreshStore::open(&dir.path().join("t.redb")).unwrap();
        let a = s.create(hash(1), "a", 1, None).unwrap();
        a.touch(5, None, None);
        s.delete(&[a.id]).unwrap();
        assert_eq!(s.flush_usage().unwrap(), 0);
    }
}
