//! Refresh tokens: a durable backend is the source of truth; in-memory maps
//! mirror every record so an exchange never waits on disk or the network.
//!
//! The rest of the crate talks to `RefreshStore` only. Every write commits to
//! the backend first and updates the maps only after the commit, so an answer
//! of "created" or "deleted" is always durable. Backend calls block: the async
//! callers run them in `spawn_blocking`.
//!
//! - `record`: the persisted record, the in-memory token, a usage delta.
//! - `redb`: the embedded backend (the default, one node).
//! - `outbox`: the webhook deliveries waiting for their endpoint, kept by
//!   each backend beside the tokens.
//! - `postgres`: a shared PostgreSQL (the ground for cluster mode): its own
//!   small runtime behind the same blocking interface, versioned migrations,
//!   and the server secret's fingerprint.

pub(crate) mod accounts;
pub(crate) mod outbox;
mod positions;
mod postgres;
mod record;
mod redb;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::{PostgresConfig, StorageBackend, StorageConfig};
use crate::restrict::RestrictionSpec;
use crate::roles::Via;

pub(crate) use accounts::BOOTSTRAP;
pub use accounts::{validate_account_name, Source, MAX_ACCOUNT_NAME};
pub(crate) use accounts::{AccountChange, AccountRecord, Applied, Refusal};

pub(crate) use record::RefreshHash;
pub(crate) use record::RefreshRecord;
pub use record::RefreshToken;
use record::UsageDelta;
pub(crate) use record::{CreateLimits, Edit};

pub(crate) use postgres::feed::{self as cluster_db, Change, ClusterDb};
pub(crate) use postgres::PgError;
pub use postgres::{migrate, Migrated, SCHEMA_VERSION};
pub(crate) use record::UsageRow;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is already open in another process (is another tokengate running on this data directory?)")]
    AlreadyOpen { path: PathBuf },
    #[error("cannot open token database {path}: {source}")]
    Open {
        path: PathBuf,
        source: ::redb::Error,
    },
    #[error(transparent)]
    Dir(#[from] crate::secrets::DirError),
    #[error("cannot open token database {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `at`: the redb file, or the masked PostgreSQL URL.
    #[error("token database {at} holds an unreadable record (id {id}): {detail}")]
    Corrupt {
        at: String,
        id: String,
        detail: String,
    },
    #[error("token database error: {0}")]
    Db(#[from] ::redb::Error),
    #[error("token record encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    /// `url` is masked; `detail` is PostgreSQL's own message (never a password).
    #[error("PostgreSQL ({url}): {detail}")]
    Postgres { url: String, detail: String },
    #[error("PostgreSQL ({url}): the database schema is at version {found}, but this tokengate knows versions up to {known}: a newer tokengate has migrated it. Upgrade this replica (or point storage.postgres.url at another database); refusing to start")]
    NewerSchema { url: String, found: i32, known: i32 },
    #[error("PostgreSQL ({url}): the server secret in {} is not the one this database was set up with. Every replica sharing the database must use the same secret: copy storage.secret_file from a running replica; refusing to start", secret_file.display())]
    SecretMismatch { url: String, secret_file: PathBuf },
    #[error("storage.postgres: {0}")]
    Setup(String),
}

/// What a durable backend does. Implementations block; each call is one
/// transaction, all or nothing.
pub(crate) trait Backend: Send + Sync {
    /// The webhook outbox kept in the same database.
    fn outbox(&self) -> Option<&dyn outbox::Outbox> {
        None
    }
    /// Every stored token.
    fn load(&self) -> Result<Vec<(RefreshHash, RefreshRecord)>, StoreError>;
    /// Persists a new token under an id that was never handed out before.
    /// `created_by`: the account that made it (`None` for tokens made
    /// before accounts existed, and `serve --dev`'s sample token).
    #[allow(clippy::too_many_arguments, reason = "a token's fields, in one commit")]
    fn create(
        &self,
        hash: &RefreshHash,
        name: &str,
        created: u64,
        expires: Option<u64>,
        restrictions: Option<&RestrictionSpec>,
        created_by: Option<&str>,
        limits: &CreateLimits,
    ) -> Result<RefreshRecord, StoreError>;
    /// Deletes those of `ids` that exist; returns the ids it deleted, with
    /// their names.
    fn delete(&self, ids: &[u64]) -> Result<Vec<(u64, String)>, StoreError>;
    /// Deletes those of `ids` that still exist and were last used (or, never
    /// used, created) at or before `cutoff` (Unix seconds), judged in the
    /// transaction; returns what it deleted, as `delete` does. Replicas
    /// sweeping at once delete each token once: the others find it gone.
    fn delete_unused(&self, ids: &[u64], cutoff: u64) -> Result<Vec<(u64, String)>, StoreError>;
    /// Takes one exchange from token `id`'s usage limit, atomically against
    /// every other exchange (of every replica): `Some(left)` after taking
    /// it, `None` when none was left (or the token has no limit any more,
    /// or is gone).
    fn consume_use(&self, id: u64) -> Result<Option<u64>, StoreError>;
    /// Edits token `id` (its fields, or its secret) in one transaction;
    /// returns its hash and record as now stored, or `None` if no such id.
    fn update(&self, id: u64, edit: &Edit) -> Result<Option<Edited>, StoreError>;
    /// Adds the usage of tokens that still exist (counts add up, the later
    /// use wins); returns how many tokens it wrote.
    fn write_usage(&self, rows: &[UsageDelta]) -> Result<usize, StoreError>;
    /// Every token's usage as stored, when other replicas may have added
    /// to it (PostgreSQL); `None` when this process is the only writer.
    fn read_usage(&self) -> Result<Option<Vec<UsageRow>>, StoreError> {
        Ok(None)
    }
    /// The database as cluster mode uses it (PostgreSQL only).
    fn cluster(&self) -> Option<ClusterDb> {
        None
    }
    /// Every stored account.
    fn load_accounts(&self) -> Result<Vec<AccountRecord>, StoreError>;
    /// Applies a change to the accounts in one transaction, keeping the
    /// rules of `accounts::apply` against every stored account; with
    /// shared sessions, a disabled or deleted account's sessions go in the
    /// same transaction.
    fn change_account(
        &self,
        change: &AccountChange,
    ) -> Result<Result<Applied, Refusal>, StoreError>;
    /// Whether page sessions are kept in the backend too, for every
    /// replica (PostgreSQL); with redb they live in memory only.
    fn shares_sessions(&self) -> bool {
        false
    }
    /// Stores a page session (shared sessions only).
    fn put_session(&self, _session: &SessionRow) -> Result<(), StoreError> {
        Ok(())
    }
    /// A stored page session by its cookie's fingerprint, if live at `now`.
    fn get_session(
        &self,
        _fingerprint: &[u8; 32],
        _now: u64,
    ) -> Result<Option<SessionRow>, StoreError> {
        Ok(None)
    }
    /// Ends a page session everywhere (a logout).
    fn end_session(&self, _fingerprint: &[u8; 32]) -> Result<(), StoreError> {
        Ok(())
    }
    /// Deletes sessions expired at `now`; how many.
    fn sweep_sessions(&self, _now: u64) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Tells every replica that the access token `id` (valid until
    /// `expires`, Unix seconds) was revoked by its holder; with a single
    /// process there is no one to tell.
    fn revoke_access(&self, _id: u128, _expires: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A page session as stored for every replica: only the SHA-256 of its
/// cookie (never the cookie), the account, how it signed in, the CSRF
/// token and the expiry (Unix seconds). The role is not stored: every
/// request reads the account's current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionRow {
    pub(crate) fingerprint: [u8; 32],
    pub(crate) user: String,
    pub(crate) via: Via,
    pub(crate) csrf: String,
    pub(crate) expires: u64,
}

/// A token as an edit left it: its hash and record as stored, and (with a
/// change feed) the feed position of the edit's own change row.
pub(crate) struct Edited {
    pub(crate) hash: RefreshHash,
    pub(crate) rec: RefreshRecord,
    /// `None` where there is no feed (redb: this process is the only writer).
    pub(crate) at: Option<i64>,
}

pub struct RefreshStore {
    backend: Box<dyn Backend>,
    /// Exchange lookups: hash → token. DashMap: many concurrent readers, rare writers.
    by_hash: DashMap<RefreshHash, Arc<RefreshToken>>,
    /// Admin lookups and deletion by id.
    by_id: DashMap<u64, (RefreshHash, Arc<RefreshToken>)>,
    /// Serialises writers so a flush never races a delete into resurrecting a record.
    write_lock: Mutex<()>,
    /// Ids deleted lately, with when: a create that commits, then loses the
    /// race to map it against the change feed's delete of the same id (made
    /// on another replica in between), must not map a token nobody can
    /// delete any more. Ids are never reused, so a minute of memory is
    /// ample for that window, and the set stays small.
    tombstones: Mutex<HashMap<u64, Instant>>,
    /// The feed position each token was last mapped at: a feed read older
    /// than this replica's own edit is skipped, and so is our edit when a
    /// newer read is mapped already (`positions`).
    positions: positions::Positions<u64>,
    /// The same for the accounts.
    account_positions: positions::Positions<String>,
    /// The highest id the change feed (or the load at start) has shown:
    /// creates commit in id order (under the feed's lock), so a missing id
    /// at or below it was deleted, and one above it may be new.
    seen_up_to: AtomicU64,
    /// The admin accounts, mirrored like the tokens.
    accounts: accounts::Registry,
}

/// A refresh token this close to its expiry is "expiring soon": time to
/// rotate or extend it before a script's credential lapses. The one
/// definition: the admin API's `expiring_soon` flag and stats count, the
/// page and the scrape's `expiring_soon` state all read it.
pub const EXPIRING_SOON_SECS: u64 = 7 * 86_400;

/// Whether an expiry (`None`: never) falls after `now` and within `secs`
/// of it (the CLI's `token list --expiring` asks with its own `secs`).
pub fn expires_within(expires: Option<u64>, now: u64, secs: u64) -> bool {
    expires.is_some_and(|e| e > now && e - now <= secs)
}

/// Whether an expiry is active at `now` and expiring soon.
pub(crate) fn expires_soon(expires: Option<u64>, now: u64) -> bool {
    expires_within(expires, now, EXPIRING_SOON_SECS)
}

/// Refresh tokens by expiry at a moment: disjoint counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ByExpiry {
    pub(crate) active: u64,
    /// Active, and expiring soon (`EXPIRING_SOON_SECS`).
    pub(crate) expiring_soon: u64,
    /// Expired, not yet deleted.
    pub(crate) expired: u64,
}

/// How long a deleted id is remembered against a late mapping.
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

impl RefreshStore {
    /// Opens (creating if needed) the redb file and loads every record into memory.
    pub fn open(path: &Path) -> Result<RefreshStore, StoreError> {
        RefreshStore::with_backend(Box::new(redb::RedbBackend::open(path)?))
    }

    /// Opens the configured backend (blocking) and loads every record. For
    /// PostgreSQL this applies pending migrations and checks that `secret`
    /// is the one the database was set up with.
    pub fn open_config(storage: &StorageConfig, secret: &[u8]) -> Result<RefreshStore, StoreError> {
        match &storage.backend {
            StorageBackend::Redb => RefreshStore::open(&storage.path),
            StorageBackend::Postgres(pg) => {
                RefreshStore::open_postgres(pg, secret, &storage.secret_file)
            }
        }
    }

    /// Opens a PostgreSQL store; `secret_file` only names the secret in errors.
    pub fn open_postgres(
        pg: &PostgresConfig,
        secret: &[u8],
        secret_file: &Path,
    ) -> Result<RefreshStore, StoreError> {
        let fingerprint = crate::secrets::fingerprint(secret);
        RefreshStore::with_backend(Box::new(postgres::PostgresBackend::open(
            pg,
            &fingerprint,
            secret_file,
        )?))
    }

    fn with_backend(backend: Box<dyn Backend>) -> Result<RefreshStore, StoreError> {
        let store = RefreshStore {
            backend,
            by_hash: DashMap::new(),
            by_id: DashMap::new(),
            write_lock: Mutex::new(()),
            tombstones: Mutex::new(HashMap::new()),
            positions: positions::Positions::default(),
            account_positions: positions::Positions::default(),
            seen_up_to: AtomicU64::new(0),
            accounts: accounts::Registry::default(),
        };
        for (hash, rec) in store.backend.load()? {
            let token = Arc::new(RefreshToken::from_record(&rec));
            store.by_hash.insert(hash, token.clone());
            if let Some(p) = rec.previous {
                // Its grace end is checked at each exchange (`retired_secret`).
                store.by_hash.insert(p.hash, token.clone());
            }
            store.by_id.insert(rec.id, (hash, token));
            store.seen_up_to.fetch_max(rec.id, Ordering::Relaxed);
        }
        // The bootstrap account always exists (made once, kept after).
        let now = crate::clock::Clock::new().unix();
        match store
            .backend
            .change_account(&AccountChange::Create(AccountRecord::bootstrap(now)))?
        {
            Ok(_) | Err(Refusal::Exists(_)) => {}
            Err(other) => return Err(StoreError::Setup(other.to_string())),
        }
        for rec in store.backend.load_accounts()? {
            store.accounts.set(&rec.name.clone(), Some(rec));
        }
        Ok(store)
    }

    /// The account `name`, as every replica last committed it.
    pub(crate) fn account(&self, name: &str) -> Option<Arc<AccountRecord>> {
        self.accounts.get(name)
    }

    /// Every account, by name.
    pub(crate) fn accounts(&self) -> Vec<Arc<AccountRecord>> {
        self.accounts.list()
    }

    /// Commits a change to the accounts (blocking), then mirrors it.
    pub(crate) fn change_account(
        &self,
        change: &AccountChange,
    ) -> Result<Result<Applied, Refusal>, StoreError> {
        let _w = self.lock();
        let done = self.backend.change_account(change)?;
        if let Ok(applied) = &done {
            let name = change.name();
            self.account_positions
                .edited(name.to_owned(), applied.at, || {
                    self.accounts.set(name, applied.account.clone());
                });
        }
        Ok(done)
    }

    /// Mirrors an account another replica changed (`None`: deleted), as
    /// read at feed position `at` or later. False when skipped: something
    /// later is mapped already (`positions`).
    pub(crate) fn apply_account(&self, name: &str, rec: Option<AccountRecord>, at: i64) -> bool {
        self.account_positions
            .read(&name.to_owned(), at, || self.accounts.set(name, rec))
            .is_some()
    }

    /// Replaces every account with `all`, read at feed position `at` or
    /// later (a reconcile after a reconnect).
    pub(crate) fn apply_all_accounts(&self, all: Vec<AccountRecord>, at: i64) {
        let keep: std::collections::HashSet<String> = all.iter().map(|a| a.name.clone()).collect();
        for old in self.accounts.list() {
            if !keep.contains(&old.name) {
                self.apply_account(&old.name, None, at);
            }
        }
        for rec in all {
            self.apply_account(&rec.name.clone(), Some(rec), at);
        }
    }

    /// Whether page sessions are shared through the backend (PostgreSQL).
    pub(crate) fn shares_sessions(&self) -> bool {
        self.backend.shares_sessions()
    }

    /// Stores a page session for every replica (blocking; shared only).
    pub(crate) fn put_session(&self, row: &SessionRow) -> Result<(), StoreError> {
        self.backend.put_session(row)
    }

    /// A stored page session live at `now` (blocking; shared only).
    pub(crate) fn get_session(
        &self,
        fingerprint: &[u8; 32],
        now: u64,
    ) -> Result<Option<SessionRow>, StoreError> {
        self.backend.get_session(fingerprint, now)
    }

    /// Ends a page session on every replica (blocking; shared only).
    pub(crate) fn end_session(&self, fingerprint: &[u8; 32]) -> Result<(), StoreError> {
        self.backend.end_session(fingerprint)
    }

    /// Deletes expired stored sessions (blocking; shared only).
    pub(crate) fn sweep_sessions(&self, now: u64) -> Result<u64, StoreError> {
        self.backend.sweep_sessions(now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned lock guards no data of its own (it only orders writers).
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The webhook outbox, in the same database as the tokens (blocking calls).
    pub(crate) fn outbox(&self) -> Option<&dyn outbox::Outbox> {
        self.backend.outbox()
    }

    /// The database as cluster mode uses it (PostgreSQL only).
    pub(crate) fn cluster_db(&self) -> Option<ClusterDb> {
        self.backend.cluster()
    }

    /// Maps a token under its id and hash unless its id is mapped already
    /// (then that token is kept): one `RefreshToken` per id, ever, so a
    /// delete revokes every access token minted from it. A token whose id
    /// was deleted meanwhile is returned revoked and left unmapped.
    fn map(&self, hash: RefreshHash, rec: &RefreshRecord) -> Arc<RefreshToken> {
        let entry = self.by_id.entry(rec.id);
        if let dashmap::mapref::entry::Entry::Occupied(e) = &entry {
            return e.get().1.clone();
        }
        let token = Arc::new(RefreshToken::from_record(rec));
        if self.is_tombstoned(rec.id) {
            token.revoke();
            return token;
        }
        self.by_hash.insert(hash, token.clone());
        if let Some(p) = rec.previous {
            self.by_hash.insert(p.hash, token.clone());
        }
        entry.or_insert((hash, token.clone()));
        token
    }

    /// Maps the edited version of a token (`rec`, stored under `hash`) in
    /// place of the one mapped under its id, and tells the old version's
    /// access tokens what became of them: a new secret with no grace
    /// period (a new generation) ends them (the old secret may have
    /// leaked, and they came from it); any other edit sends them on to the
    /// new version at their next request. Access tokens that still hold an
    /// older version follow the id too, and there meet the generation
    /// check. Returns the new version, and whether the generation changed
    /// (the caller frees the old generation's access tokens). A token not
    /// mapped here yet is mapped as new.
    fn replace(&self, hash: RefreshHash, rec: &RefreshRecord) -> (Arc<RefreshToken>, bool) {
        let Some(mut entry) = self.by_id.get_mut(&rec.id) else {
            return (self.map(hash, rec), false);
        };
        let (old_hash, old) = entry.value().clone();
        let new = Arc::new(old.successor(rec));
        // New keys first, so an exchange never finds neither.
        self.by_hash.insert(hash, new.clone());
        let grace = rec.previous.map(|p| p.hash);
        if let Some(p) = grace {
            self.by_hash.insert(p, new.clone());
        }
        for stale in [Some(old_hash), old.previous().map(|p| p.hash)]
            .into_iter()
            .flatten()
        {
            if stale != hash && Some(stale) != grace {
                self.by_hash.remove(&stale);
            }
        }
        *entry.value_mut() = (hash, new.clone());
        drop(entry);
        // The hash test as well as the generation: a record written by a
        // replica that predates generations still ends the old secret's
        // tokens that hold this version.
        let ended = rec.generation != old.generation();
        if ended || (old_hash != hash && grace != Some(old_hash)) {
            old.revoke();
        } else {
            old.supersede();
        }
        (new, ended)
    }

    /// Edits token `id` (blocking): its fields, or a new secret. `None`:
    /// no such token. The edit is committed before it is mapped, and
    /// applies to the token's live access tokens at their next request.
    pub(crate) fn edit(
        &self,
        id: u64,
        edit: &Edit,
    ) -> Result<Option<Arc<RefreshToken>>, StoreError> {
        let _w = self.lock();
        let Some(done) = self.backend.update(id, edit)? else {
            return Ok(None);
        };
        let mapped = self
            .positions
            .edited(id, done.at, || self.replace(done.hash, &done.rec).0);
        if self.is_tombstoned(id) {
            // Deleted elsewhere since it committed: nothing of it stays.
            self.positions.forget(&[id]);
        }
        // Skipped: a newer version (holding this edit) is mapped already.
        Ok(mapped.or_else(|| self.get(id)))
    }

    /// Applies an edit another replica committed (from the change feed, or
    /// a reconcile that found a record changed): nothing is written. `at`
    /// is the feed position the record was read at or after (a feed row's
    /// own position; a reconcile's position read before its records). A
    /// deleted id stays deleted, and a record older than what is mapped
    /// (this replica's own later edit) is skipped (`positions`). True when the secret's
    /// generation changed here (a rotation at once): the caller frees the
    /// access tokens of the earlier generation (already refused: this is
    /// for memory).
    pub(crate) fn apply_updated(&self, hash: RefreshHash, rec: &RefreshRecord, at: i64) -> bool {
        self.seen_up_to.fetch_max(rec.id, Ordering::AcqRel);
        if self.is_tombstoned(rec.id) {
            return false;
        }
        self.positions
            .read(&rec.id, at, || {
                if let Some(current) = self.by_id.get(&rec.id) {
                    let (h, t) = current.value();
                    if *h == hash && t.matches(rec) {
                        // Our own edit, already mapped (the feed carries ours too).
                        return false;
                    }
                }
                self.replace(hash, rec).1
            })
            .unwrap_or(false)
    }

    /// Forgets rotated-out secrets whose grace period is over (they are
    /// refused at the exchange already; this frees their map entries).
    pub(crate) fn sweep_secrets(&self, now: u64) {
        let over: Vec<RefreshHash> = self
            .by_id
            .iter()
            .filter_map(|e| e.value().1.previous())
            .filter(|p| now >= p.until)
            .map(|p| p.hash)
            .collect();
        for hash in over {
            self.by_hash
                .remove_if(&hash, |_, t| t.retired_secret(&hash, now));
        }
    }

    fn is_tombstoned(&self, id: u64) -> bool {
        self.tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    /// Remembers deleted ids (and forgets those older than `TOMBSTONE_TTL`).
    fn tombstone(&self, ids: &[u64]) {
        let now = Instant::now();
        let mut t = self.tombstones.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, at| now.duration_since(*at) < TOMBSTONE_TTL);
        t.extend(ids.iter().map(|&id| (id, now)));
    }

    /// Applies a token another replica created (from the change feed or a
    /// reconcile): nothing is written. True when it was new here.
    pub(crate) fn apply_created(&self, hash: RefreshHash, rec: &RefreshRecord) -> bool {
        self.seen_up_to.fetch_max(rec.id, Ordering::AcqRel);
        if self.by_id.contains_key(&rec.id) {
            return false;
        }
        !self.map(hash, rec).is_revoked()
    }

    /// Applies deletes another replica committed (or this one: the feed
    /// carries our own too): the tokens are revoked (every access token
    /// they issued is refused from now on) and unmapped, and their ids
    /// remembered against a late mapping. Returns those that were still here.
    pub(crate) fn apply_deleted(&self, ids: &[u64]) -> Vec<Arc<RefreshToken>> {
        self.tombstone(ids);
        self.positions.forget(ids);
        if let Some(&max) = ids.iter().max() {
            self.seen_up_to.fetch_max(max, Ordering::AcqRel);
        }
        let mut gone = Vec::new();
        for id in ids {
            if let Some((_, (hash, token))) = self.by_id.remove(id) {
                token.revoke();
                self.by_hash.remove(&hash);
                gone.push(token);
            }
        }
        gone
    }

    /// Whether a token with this id, not in the maps, is known to have been
    /// deleted (rather than perhaps created a moment ago elsewhere).
    pub(crate) fn is_gone(&self, id: u64) -> bool {
        id <= self.seen_up_to.load(Ordering::Acquire)
    }

    /// Ids of every token mapped here.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.by_id.iter().map(|e| *e.key()).collect()
    }

    /// The token with this id, if it exists here.
    #[inline]
    pub fn get(&self, id: u64) -> Option<Arc<RefreshToken>> {
        self.by_id.get(&id).map(|e| e.value().1.clone())
    }

    /// Persists a new token (blocking), then makes it visible to exchanges.
    pub fn create(
        &self,
        hash: RefreshHash,
        name: &str,
        created: u64,
        expires: Option<u64>,
    ) -> Result<Arc<RefreshToken>, StoreError> {
        self.create_restricted(hash, name, created, expires, None)
    }

    /// As `create`, with restrictions (`None` or an empty spec = full access).
    pub fn create_restricted(
        &self,
        hash: RefreshHash,
        name: &str,
        created: u64,
        expires: Option<u64>,
        restrictions: Option<&RestrictionSpec>,
    ) -> Result<Arc<RefreshToken>, StoreError> {
        self.create_by(
            hash,
            name,
            created,
            expires,
            restrictions,
            None,
            &CreateLimits::default(),
        )
    }

    /// As `create_restricted`, recording the account that made it, and
    /// its not-before and usage limit.
    #[allow(clippy::too_many_arguments, reason = "a token's fields, in one commit")]
    pub(crate) fn create_by(
        &self,
        hash: RefreshHash,
        name: &str,
        created: u64,
        expires: Option<u64>,
        restrictions: Option<&RestrictionSpec>,
        created_by: Option<&str>,
        limits: &CreateLimits,
    ) -> Result<Arc<RefreshToken>, StoreError> {
        let restrictions = restrictions.filter(|r| !r.is_empty());
        let _w = self.lock();
        let rec = self.backend.create(
            &hash,
            name,
            created,
            expires,
            restrictions,
            created_by,
            limits,
        )?;
        // The change feed may have mapped it already (our own create,
        // announced at commit): then that token is the one.
        Ok(self.map(hash, &rec))
    }

    /// Deletes every listed id that exists, in one transaction (blocking).
    /// Returns the deleted tokens; unknown ids are simply not in the result.
    /// The answer follows the database: a token this replica had not
    /// mapped yet (created elsewhere a moment ago), or that the change feed
    /// unmapped first, is still reported (by id and name) as deleted.
    pub fn delete(&self, ids: &[u64]) -> Result<Vec<Arc<RefreshToken>>, StoreError> {
        let _w = self.lock();
        let gone = self.backend.delete(ids)?;
        Ok(self.unmap_deleted(gone))
    }

    /// Deletes those of `ids` not used since `cutoff` (Unix seconds), as
    /// the backend judges it in its transaction (blocking). Returns the
    /// tokens this call deleted: none that another replica's sweep (or an
    /// administrator) deleted first.
    pub(crate) fn delete_unused(
        &self,
        ids: &[u64],
        cutoff: u64,
    ) -> Result<Vec<Arc<RefreshToken>>, StoreError> {
        let _w = self.lock();
        let gone = self.backend.delete_unused(ids, cutoff)?;
        Ok(self.unmap_deleted(gone))
    }

    /// Takes one exchange from token `id`'s usage limit in the backend
    /// (blocking): `Some(left)` when one was taken, `None` when none was
    /// left. The count shown in the list follows.
    pub(crate) fn consume_use(&self, token: &RefreshToken) -> Result<Option<u64>, StoreError> {
        let left = self.backend.consume_use(token.id)?;
        token.set_uses_left(left.unwrap_or(0));
        Ok(left)
    }

    /// Revokes and unmaps tokens the backend just deleted.
    fn unmap_deleted(&self, gone: Vec<(u64, String)>) -> Vec<Arc<RefreshToken>> {
        let gone_ids: Vec<u64> = gone.iter().map(|(id, _)| *id).collect();
        self.tombstone(&gone_ids);
        let mut deleted = Vec::with_capacity(gone.len());
        for (id, name) in gone {
            let token = match self.by_id.remove(&id) {
                Some((_, (hash, token))) => {
                    // Revoke before unmapping: an access check that still holds the Arc sees it.
                    token.revoke();
                    self.by_hash.remove(&hash);
                    token
                }
                None => {
                    let t = Arc::new(RefreshToken::detached(id, &name, None));
                    t.revoke();
                    t
                }
            };
            deleted.push(token);
        }
        deleted
    }

    /// Tells every replica that one access token was revoked by its holder
    /// (blocking; cluster mode only, a no-op with redb).
    pub(crate) fn revoke_access(&self, id: u128, expires: u64) -> Result<(), StoreError> {
        self.backend.revoke_access(id, expires)
    }

    /// Writes changed usage in one transaction (blocking). Returns how many tokens.
    pub fn flush_usage(&self) -> Result<usize, StoreError> {
        // Held from the first read of a delta to its acknowledgement, so two
        // flushes (the timer's and shutdown's) never send the same uses twice.
        let _w = self.lock();
        let dirty: Vec<(Arc<RefreshToken>, UsageDelta)> = self
            .by_id
            .iter()
            .filter(|e| e.value().1.take_dirty())
            .map(|e| {
                let (hash, token) = e.value();
                (token.clone(), token.usage_delta(*hash))
            })
            .collect();
        let result = if dirty.is_empty() {
            Ok(0)
        } else {
            let rows: Vec<UsageDelta> = dirty.iter().map(|(_, d)| d.clone()).collect();
            let result = self.backend.write_usage(&rows);
            for (token, delta) in &dirty {
                match &result {
                    Ok(_) => token.flushed(delta),
                    // Nothing lost: the uses stay pending for the next flush.
                    Err(_) => token.mark_dirty(),
                }
            }
            result
        };
        // Other replicas' uses, so every replica lists the merged counts.
        if result.is_ok() {
            if let Some(rows) = self.backend.read_usage()? {
                for row in rows {
                    if let Some(e) = self.by_id.get(&row.id) {
                        e.value().1.merge_stored(&row);
                    }
                }
            }
        }
        result
    }

    #[inline]
    pub fn lookup(&self, hash: &RefreshHash) -> Option<Arc<RefreshToken>> {
        self.by_hash.get(hash).map(|e| e.value().clone())
    }

    /// Every token, expired ones included, ordered by id.
    pub(crate) fn list(&self) -> Vec<Arc<RefreshToken>> {
        let mut all: Vec<_> = self.by_id.iter().map(|e| e.value().1.clone()).collect();
        all.sort_by_key(|t| t.id);
        all
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Tokens still active at `now` that are expiring soon.
    pub(crate) fn expiring_soon(&self, now: u64) -> usize {
        self.by_id
            .iter()
            .filter(|e| expires_soon(e.value().1.expires, now))
            .count()
    }

    /// Every token counted by its expiry at `now`.
    pub(crate) fn by_expiry(&self, now: u64) -> ByExpiry {
        let mut n = ByExpiry::default();
        for e in self.by_id.iter() {
            match e.value().1.expires {
                Some(at) if at <= now => n.expired += 1,
                soon if expires_soon(soon, now) => n.expiring_soon += 1,
                _ => n.active += 1,
            }
        }
        n
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
        assert!(a.is_usable(199) && !a.is_usable(200));
        assert_eq!(a.last_client().ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(
            a.last_client().user_agent.as_deref(),
            Some("python-requests/2.31")
        );
        let c = s.create(hash(3), "c", 1, None).unwrap();
        assert_eq!(c.id, 3, "a deleted id is never handed out again");
    }

    #[test]
    fn restrictions_survive_reopen_and_old_records_load_unrestricted() {
        let spec: RestrictionSpec = serde_json::from_value(serde_json::json!({
            "scopes": [{"methods": ["GET", "HEAD"], "path": "/iwc/api/databases/**"}],
            "networks": ["10.0.0.0/8"],
            "rate_limit": {"per_second": 5, "burst": 10},
        }))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let s = RefreshStore::open(&path).unwrap();
            let a = s
                .create_restricted(hash(1), "a", 1, None, Some(&spec))
                .unwrap();
            assert_eq!(a.restrictions().map(|r| r.spec()), Some(&spec));
            let b = s
                .create_restricted(hash(2), "b", 1, None, Some(&RestrictionSpec::default()))
                .unwrap();
            assert!(
                b.restrictions().is_none(),
                "an empty spec is no restriction"
            );
        }
        let s = RefreshStore::open(&path).unwrap();
        let a = s.lookup(&hash(1)).unwrap();
        assert_eq!(a.restrictions().map(|r| r.spec()), Some(&spec));
        assert!(s.lookup(&hash(2)).unwrap().restrictions().is_none());
        // A record written before restrictions existed has no such field.
        let old: RefreshRecord = serde_json::from_str(
            r#"{"id":9,"name":"old","created":1,"expires":null,"last_used":null,"use_count":0}"#,
        )
        .unwrap();
        assert!(old.restrictions.is_none());
        assert!(RefreshToken::from_record(&old).restrictions().is_none());
        // A damaged spec fails closed: the token is refused everywhere.
        let mut bad = RefreshRecord::new(10, "bad", 1, None);
        bad.restrictions = Some(RestrictionSpec {
            networks: vec!["not a network".into()],
            ..Default::default()
        });
        let t = RefreshToken::from_record(&bad);
        let r = t.restrictions().unwrap();
        assert!(!r.allows_ip("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_rotation_at_once_bumps_the_generation_and_old_records_load_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let s = RefreshStore::open(&path).unwrap();
            let a = s.create(hash(1), "a", 1, None).unwrap();
            assert_eq!(a.generation(), 0);
            let graced = Edit::Secret {
                hash: hash(2),
                old_until: Some(100),
            };
            let b = s.edit(a.id, &graced).unwrap().unwrap();
            assert_eq!(b.generation(), 0, "a grace period keeps the generation");
            assert!(a.is_superseded(), "its access tokens follow");
            let at_once = Edit::Secret {
                hash: hash(3),
                old_until: None,
            };
            let c = s.edit(a.id, &at_once).unwrap().unwrap();
            assert_eq!(c.generation(), 1);
            assert!(
                b.is_revoked() && !b.is_superseded(),
                "its access tokens end"
            );
            assert_eq!(s.edit(a.id, &rename("c")).unwrap().unwrap().generation(), 1);
        }
        let s = RefreshStore::open(&path).unwrap();
        assert_eq!(s.lookup(&hash(3)).unwrap().generation(), 1, "persisted");
        // A record written before generations has none: 0.
        let old: RefreshRecord = serde_json::from_str(
            r#"{"id":9,"name":"old","created":1,"expires":null,"last_used":null,"use_count":0}"#,
        )
        .unwrap();
        assert_eq!(RefreshToken::from_record(&old).generation(), 0);
    }

    #[test]
    fn suspension_limits_and_not_before_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let s = RefreshStore::open(&path).unwrap();
            let limits = CreateLimits {
                not_before: Some(50),
                max_uses: Some(2),
            };
            let a = s
                .create_by(hash(1), "a", 1, None, None, None, &limits)
                .unwrap();
            assert!(!a.is_usable(49) && a.is_usable(50), "not before 50");
            assert_eq!(a.uses_left(), Some(2));
            assert_eq!(s.consume_use(&a).unwrap(), Some(1));
            let suspend = Edit::Suspend {
                reason: Some("reported leaked".into()),
            };
            let b = s.edit(a.id, &suspend).unwrap().unwrap();
            assert_eq!(b.generation(), 1, "a suspension ends the access tokens");
            assert!(a.is_revoked() && !a.is_superseded());
            assert!(b.is_suspended() && !b.is_usable(60));
            assert_eq!(b.suspended_reason(), Some("reported leaked"));
            assert_eq!(b.uses_left(), Some(1), "the count carries over");
            let again = s.edit(a.id, &suspend).unwrap().unwrap();
            assert_eq!(again.generation(), 1, "suspending twice bumps once");
            let c = s.edit(a.id, &Edit::Resume).unwrap().unwrap();
            assert!(!c.is_suspended() && c.is_usable(60));
            assert_eq!(c.generation(), 1, "a resume does not bring them back");
        }
        let s = RefreshStore::open(&path).unwrap();
        let a = s.get(1).unwrap();
        assert_eq!(a.generation(), 1);
        assert_eq!(a.not_before(), Some(50));
        assert_eq!((a.max_uses(), a.uses_left()), (Some(2), Some(1)));
        assert_eq!(s.consume_use(&a).unwrap(), Some(0));
        assert_eq!(s.consume_use(&a).unwrap(), None, "none left");
        assert_eq!(a.uses_left(), Some(0));
        // Unlimited again: the count is gone with the limit.
        let lifted = Edit::Fields {
            name: None,
            expires: None,
            scopes: None,
            read_only: None,
            networks: None,
            rate_limit: None,
            introspect: None,
            not_before: Some(None),
            max_uses: Some(None),
        };
        let b = s.edit(1, &lifted).unwrap().unwrap();
        assert_eq!(
            (b.max_uses(), b.uses_left(), b.not_before()),
            (None, None, None)
        );
        // A record written before these fields loads unsuspended and unlimited.
        let old: RefreshRecord = serde_json::from_str(
            r#"{"id":9,"name":"old","created":1,"expires":null,"last_used":null,"use_count":0}"#,
        )
        .unwrap();
        let t = RefreshToken::from_record(&old);
        assert!(!t.is_suspended() && t.uses_left().is_none() && t.is_usable(1));
    }

    #[test]
    fn only_unused_tokens_are_deleted_and_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = RefreshStore::open(&dir.path().join("t.redb")).unwrap();
        let idle = s.create(hash(1), "idle", 100, None).unwrap();
        let used = s.create(hash(2), "used", 100, None).unwrap();
        used.touch(500, None, None);
        s.flush_usage().unwrap();
        let gone = s.delete_unused(&[idle.id, used.id], 400).unwrap();
        assert_eq!(gone.iter().map(|t| t.id).collect::<Vec<_>>(), [idle.id]);
        assert!(idle.is_revoked() && s.get(idle.id).is_none());
        assert!(s.get(used.id).is_some(), "used at 500, after the cutoff");
        assert!(
            s.delete_unused(&[idle.id], 400).unwrap().is_empty(),
            "a second sweep finds it gone"
        );
    }

    #[test]
    fn accounts_survive_reopen_and_keep_their_rules() {
        use crate::roles::Role;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let s = RefreshStore::open(&path).unwrap();
            assert_eq!(s.account(BOOTSTRAP).unwrap().role, Role::Admin);
            let bob = AccountRecord {
                name: "bob".into(),
                role: Role::Creator,
                disabled: false,
                source: Source::Local,
                password_hash: Some("$argon2id$x".into()),
                created: 5,
                last_login: None,
            };
            let made = s.change_account(&AccountChange::Create(bob.clone()));
            assert!(made.unwrap().is_ok());
            let again = s.change_account(&AccountChange::Create(bob)).unwrap();
            assert_eq!(again.unwrap_err(), Refusal::Exists("bob".into()));
            let t = s
                .create_by(
                    hash(1),
                    "t",
                    1,
                    None,
                    None,
                    Some("bob"),
                    &CreateLimits::default(),
                )
                .unwrap();
            assert_eq!(t.created_by.as_deref(), Some("bob"));
        }
        let s = RefreshStore::open(&path).unwrap();
        let names: Vec<String> = s.accounts().iter().map(|a| a.name.clone()).collect();
        assert_eq!(names, ["admin", "bob"]);
        assert_eq!(s.account("bob").unwrap().role, Role::Creator);
        assert_eq!(s.get(1).unwrap().created_by.as_deref(), Some("bob"));
        let gone = s.change_account(&AccountChange::Delete("bob".into()));
        assert!(gone.unwrap().unwrap().end_sessions);
        assert!(s.account("bob").is_none());
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
    fn the_database_is_private_from_its_first_byte() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        // Watch for the file to appear and note its mode at that moment; a
        // create-then-chmod would be seen with the umask's mode (0644).
        let watched = path.clone();
        let watcher = std::thread::spawn(move || loop {
            if let Ok(m) = std::fs::symlink_metadata(&watched) {
                return m.permissions().mode() & 0o777;
            }
            std::hint::spin_loop();
        });
        let _s = RefreshStore::open(&path).unwrap();
        assert_eq!(watcher.join().unwrap(), 0o600);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_data_dir_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = RefreshStore::open(&dir.path().join("t.redb"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("chmod 700"), "{e}");
        assert!(!dir.path().join("t.redb").exists());
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

    #[test]
    fn changes_from_other_replicas_apply_once_and_keep_one_token_per_id() {
        let dir = tempfile::tempdir().unwrap();
        let s = RefreshStore::open(&dir.path().join("t.redb")).unwrap();
        let rec = RefreshRecord::new(7, "remote", 10, None);
        assert!(s.apply_created(hash(7), &rec));
        assert!(
            !s.apply_created(hash(7), &rec),
            "the second sighting is a no-op"
        );
        let first = s.get(7).unwrap();
        // Our own create seen through the feed before create() mapped it:
        // map() keeps the token already there, so a delete revokes the one
        // every access token holds.
        let again = s.map(hash(7), &rec);
        assert!(Arc::ptr_eq(&first, &again));
        assert!(Arc::ptr_eq(&first, &s.lookup(&hash(7)).unwrap()));
        let gone = s.apply_deleted(&[7, 8]);
        assert_eq!(gone.len(), 1);
        assert!(first.is_revoked());
        assert!(s.get(7).is_none() && s.lookup(&hash(7)).is_none());
        assert!(s.apply_deleted(&[7]).is_empty(), "twice is harmless");
    }

    fn rename(name: &str) -> Edit {
        Edit::Fields {
            name: Some(name.into()),
            expires: None,
            scopes: None,
            read_only: None,
            networks: None,
            rate_limit: None,
            introspect: None,
            not_before: None,
            max_uses: None,
        }
    }

    /// The CI failure of session 34: a feed round read a token before this
    /// replica's edit committed and mapped it after, undoing the edit.
    #[test]
    fn a_feed_record_older_than_our_own_edit_never_undoes_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = RefreshStore::open(&dir.path().join("t.redb")).unwrap();
        let t = s.create(hash(1), "first", 1, None).unwrap();
        let old = RefreshRecord::new(t.id, "first", 1, None);
        s.edit(t.id, &rename("second")).unwrap().unwrap();
        // redb has no feed; PostgreSQL's edit would have recorded its
        // change row's position, here 10.
        s.positions.edited(t.id, Some(10), || ());

        assert!(!s.apply_updated(hash(1), &old, 9));
        assert_eq!(
            s.get(t.id).unwrap().name,
            "second",
            "a stale read is skipped"
        );

        // Our own change row: the record as edited (a no-op).
        let ours = RefreshRecord::new(t.id, "second", 1, None);
        s.apply_updated(hash(1), &ours, 10);
        assert_eq!(s.get(t.id).unwrap().name, "second");

        // A later change applies; an older read after it does not.
        s.apply_updated(hash(1), &RefreshRecord::new(t.id, "third", 1, None), 11);
        assert_eq!(s.get(t.id).unwrap().name, "third");
        s.apply_updated(hash(1), &old, 10);
        assert_eq!(s.get(t.id).unwrap().name, "third");

        // A delete forgets the position along with the token.
        s.apply_deleted(&[t.id]);
        assert_eq!(s.positions.len(), 0);
    }

    /// The same for accounts: a disabled account is never enabled again
    /// by a read from before the change.
    #[test]
    fn a_feed_account_older_than_our_own_change_never_undoes_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = RefreshStore::open(&dir.path().join("t.redb")).unwrap();
        let mut rec = accounts::AccountRecord::bootstrap(1);
        rec.name = "ops".into();
        let enabled = rec.clone();
        rec.disabled = true;
        s.change_account(&accounts::AccountChange::Create(rec))
            .unwrap()
            .unwrap();
        s.account_positions.edited("ops".into(), Some(10), || ());

        assert!(!s.apply_account("ops", Some(enabled.clone()), 9));
        assert!(s.account("ops").unwrap().disabled);
        assert!(!s.apply_account("ops", None, 9), "nor deleted");
        s.apply_all_accounts(vec![], 9);
        assert!(s.account("ops").is_some(), "nor by a reconcile");
        s.apply_all_accounts(vec![enabled], 10);
        assert!(!s.account("ops").unwrap().disabled, "read after ours");
    }
}
