//! The embedded backend: one redb file. Every call blocks (redb writes wait
//! for other writers and for the disk): the store's async callers run them
//! on the blocking pool.

use std::fs::{OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use redb::backends::FileBackend;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::accounts::{self, AccountChange, AccountRecord, Applied, Refusal};
use super::record::{CreateLimits, Edit, RefreshHash, RefreshRecord, UsageDelta};
use super::{Backend, Edited, StoreError};
use crate::restrict::RestrictionSpec;

mod outbox;

/// hash (HMAC-SHA256 of the token) → JSON record.
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("refresh_tokens");
/// id → hash, so deletion by id needs no scan.
const IDS: TableDefinition<u64, &[u8]> = TableDefinition::new("refresh_ids");
/// Counters. `next_id` only grows: an id is never reused, so an access token
/// bound to a deleted id can never be revived by a new token.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Account name → JSON record (`accounts::AccountRecord`).
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

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

pub(super) struct RedbBackend {
    path: PathBuf,
    db: Database,
}

impl RedbBackend {
    /// Opens (creating if needed) the file, refusing one another process holds.
    pub(super) fn open(path: &Path) -> Result<RedbBackend, StoreError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        crate::secrets::private_data_dir(dir)?;
        // Opened here, 0600 from its first byte, then handed to redb: its own
        // `create` would make the file with the umask's mode (often 0644)
        // and leave a moment before any chmod. An existing file keeps its
        // mode at open, so it is tightened below.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::File {
                path: path.to_owned(),
                source,
            })?;
        // On the open file, not the path: no window for a swapped file.
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(|source| StoreError::File {
                path: path.to_owned(),
                source,
            })?;
        let open_error = |e: redb::DatabaseError| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen {
                path: path.to_owned(),
            },
            other => StoreError::Open {
                path: path.to_owned(),
                source: other.into(),
            },
        };
        // What `Database::create` does with the file it opens itself.
        let backend = FileBackend::new(file).map_err(open_error)?;
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(open_error)?;
        let backend = RedbBackend {
            path: path.to_owned(),
            db,
        };
        let txn = backend.db.begin_write()?;
        {
            // Opening a table in a write transaction creates it.
            txn.open_table(TOKENS)?;
            txn.open_table(IDS)?;
            txn.open_table(META)?;
            txn.open_table(ACCOUNTS)?;
        }
        txn.commit()?;
        Ok(backend)
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            at: self.path.display().to_string(),
            id: "?".into(),
            detail: detail.into(),
        }
    }

    /// Deletes those of `ids` whose stored record passes `delete`
    /// (`None`: unreadable), in one transaction.
    fn delete_if(
        &self,
        ids: &[u64],
        delete: impl Fn(Option<&RefreshRecord>) -> bool,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let txn = self.db.begin_write()?;
        let mut gone = Vec::new();
        {
            let mut id_table = txn.open_table(IDS)?;
            let mut tokens = txn.open_table(TOKENS)?;
            for &id in ids {
                let hash = match id_table.get(id)? {
                    Some(h) => h.value().to_vec(),
                    None => continue,
                };
                let rec = tokens
                    .get(&hash[..])?
                    .and_then(|v| serde_json::from_slice::<RefreshRecord>(v.value()).ok());
                if !delete(rec.as_ref()) {
                    continue;
                }
                id_table.remove(id)?;
                tokens.remove(&hash[..])?;
                // The name, for the answer and the audit line; an unreadable
                // record is still deleted (under its id).
                gone.push((id, rec.map(|r| r.name).unwrap_or_default()));
            }
        }
        txn.commit()?;
        Ok(gone)
    }
}

impl Backend for RedbBackend {
    fn outbox(&self) -> Option<&dyn super::outbox::Outbox> {
        Some(self)
    }

    fn load(&self) -> Result<Vec<(RefreshHash, RefreshRecord)>, StoreError> {
        let read = self.db.begin_read()?;
        let tokens = read.open_table(TOKENS)?;
        let mut all = Vec::new();
        for row in tokens.iter()? {
            let (k, v) = row?;
            let hash: RefreshHash = k
                .value()
                .try_into()
                .map_err(|_| self.corrupt("hash key is not 32 bytes"))?;
            let rec: RefreshRecord =
                serde_json::from_slice(v.value()).map_err(|e| self.corrupt(e.to_string()))?;
            all.push((hash, rec));
        }
        Ok(all)
    }

    fn create(
        &self,
        hash: &RefreshHash,
        name: &str,
        created: u64,
        expires: Option<u64>,
        restrictions: Option<&RestrictionSpec>,
        created_by: Option<&str>,
        limits: &CreateLimits,
    ) -> Result<RefreshRecord, StoreError> {
        let txn = self.db.begin_write()?;
        let rec = {
            let mut meta = txn.open_table(META)?;
            let id = meta.get("next_id")?.map(|v| v.value()).unwrap_or(1);
            meta.insert("next_id", id + 1)?;
            let mut rec = RefreshRecord::restricted(id, name, created, expires, restrictions);
            rec.created_by = created_by.map(str::to_owned);
            limits.apply(&mut rec);
            let bytes = serde_json::to_vec(&rec)?;
            txn.open_table(TOKENS)?.insert(&hash[..], &bytes[..])?;
            txn.open_table(IDS)?.insert(id, &hash[..])?;
            rec
        };
        txn.commit()?;
        Ok(rec)
    }

    fn delete(&self, ids: &[u64]) -> Result<Vec<(u64, String)>, StoreError> {
        self.delete_if(ids, |_| true)
    }

    fn delete_unused(&self, ids: &[u64], cutoff: u64) -> Result<Vec<(u64, String)>, StoreError> {
        self.delete_if(ids, |rec| {
            rec.is_some_and(|r| r.last_used.unwrap_or(r.created) <= cutoff)
        })
    }

    fn consume_use(&self, id: u64) -> Result<Option<u64>, StoreError> {
        // One write transaction per exchange of a limited token: redb
        // serialises writers, so two exchanges never take the same use, and
        // the count is on disk before the access token is answered.
        let txn = self.db.begin_write()?;
        let left = {
            let id_table = txn.open_table(IDS)?;
            let mut tokens = txn.open_table(TOKENS)?;
            let Some(hash) = id_table.get(id)?.map(|h| h.value().to_vec()) else {
                return Ok(None);
            };
            let mut rec: RefreshRecord = match tokens.get(&hash[..])? {
                Some(v) => {
                    serde_json::from_slice(v.value()).map_err(|e| self.corrupt(e.to_string()))?
                }
                None => return Ok(None),
            };
            match rec.uses_left {
                Some(n) if n > 0 => {
                    rec.uses_left = Some(n - 1);
                    let bytes = serde_json::to_vec(&rec)?;
                    tokens.insert(&hash[..], &bytes[..])?;
                    n - 1
                }
                // None left, or no limit any more (lifted a moment ago):
                // nothing to write.
                _ => return Ok(None),
            }
        };
        txn.commit()?;
        Ok(Some(left))
    }

    fn update(&self, id: u64, edit: &Edit) -> Result<Option<Edited>, StoreError> {
        let txn = self.db.begin_write()?;
        let done = {
            let mut id_table = txn.open_table(IDS)?;
            let mut tokens = txn.open_table(TOKENS)?;
            let old: RefreshHash = match id_table.get(id)? {
                Some(h) => h
                    .value()
                    .try_into()
                    .map_err(|_| self.corrupt("hash is not 32 bytes"))?,
                None => return Ok(None),
            };
            let mut rec: RefreshRecord = match tokens.get(&old[..])? {
                Some(v) => {
                    serde_json::from_slice(v.value()).map_err(|e| self.corrupt(e.to_string()))?
                }
                None => return Ok(None),
            };
            let mut hash = old;
            edit.apply(&mut hash, &mut rec);
            let bytes = serde_json::to_vec(&rec)?;
            if hash != old {
                // A new secret: the record moves to its new key.
                tokens.remove(&old[..])?;
                id_table.insert(id, &hash[..])?;
            }
            tokens.insert(&hash[..], &bytes[..])?;
            Edited {
                hash,
                rec,
                at: None,
            }
        };
        txn.commit()?;
        Ok(Some(done))
    }

    fn load_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(ACCOUNTS)?;
        let mut all = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            all.push(serde_json::from_slice(v.value()).map_err(|e| self.corrupt(e.to_string()))?);
        }
        Ok(all)
    }

    fn change_account(
        &self,
        change: &AccountChange,
    ) -> Result<Result<Applied, Refusal>, StoreError> {
        let txn = self.db.begin_write()?;
        let outcome = {
            let mut table = txn.open_table(ACCOUNTS)?;
            let mut all: Vec<AccountRecord> = Vec::new();
            for row in table.iter()? {
                let (_, v) = row?;
                all.push(
                    serde_json::from_slice(v.value()).map_err(|e| self.corrupt(e.to_string()))?,
                );
            }
            let name = change.name();
            let current = all.iter().find(|a| a.name == name).cloned();
            let outcome = accounts::apply(&all, current.as_ref(), change);
            if let Ok(applied) = &outcome {
                match &applied.account {
                    Some(rec) => {
                        let bytes = serde_json::to_vec(rec)?;
                        table.insert(name, &bytes[..])?;
                    }
                    None => {
                        table.remove(name)?;
                    }
                }
            }
            outcome
        };
        match outcome {
            Ok(applied) => {
                txn.commit()?;
                Ok(Ok(applied))
            }
            // Nothing written: dropping the transaction aborts it.
            Err(refusal) => Ok(Err(refusal)),
        }
    }

    fn write_usage(&self, rows: &[UsageDelta]) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut tokens = txn.open_table(TOKENS)?;
            for delta in rows {
                // Skip tokens deleted since: never write a removed record back.
                let mut rec: RefreshRecord = match tokens.get(&delta.hash[..])? {
                    Some(v) => serde_json::from_slice(v.value())
                        .map_err(|e| self.corrupt(e.to_string()))?,
                    None => continue,
                };
                delta.apply(&mut rec);
                let bytes = serde_json::to_vec(&rec)?;
                tokens.insert(&delta.hash[..], &bytes[..])?;
                n += 1;
            }
        }
        txn.commit()?;
        Ok(n)
    }
}
