//! The webhook outbox in the redb file: a table of deliveries by id and a
//! table of expiry warnings sent. One process owns the file, so claims
//! need no lease: the delivery worker is the only reader that acts.

use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::RedbBackend;
use crate::store::outbox::{Delivery, NewDelivery, Outbox};
use crate::store::StoreError;

/// Delivery id → JSON `Row`. Ids come from `META`'s `next_webhook_id`
/// and are never reused: a receiver deduplicates by them.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("webhook_outbox");
/// Token id → the expiry (Unix seconds) its `token.expiring` was sent for.
const EXPIRING: TableDefinition<u64, u64> = TableDefinition::new("webhook_expiring");
const NEXT_ID: &str = "next_webhook_id";

#[derive(Serialize, Deserialize)]
struct Row {
    endpoint: String,
    event_type: String,
    payload: String,
    created_ms: u64,
    attempts: u32,
    next_ms: u64,
}

/// A table that was never written does not exist yet: empty.
fn missing(e: &redb::TableError) -> bool {
    matches!(e, redb::TableError::TableDoesNotExist(_))
}

impl RedbBackend {
    fn insert_rows(
        &self,
        txn: &redb::WriteTransaction,
        rows: &[NewDelivery],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut meta = txn.open_table(super::META)?;
        let mut next = meta.get(NEXT_ID)?.map(|v| v.value()).unwrap_or(1);
        let mut outbox = txn.open_table(OUTBOX)?;
        for r in rows {
            let row = Row {
                endpoint: r.endpoint.clone(),
                event_type: r.event_type.clone(),
                payload: r.payload.clone(),
                created_ms: now_ms,
                attempts: 0,
                next_ms: now_ms,
            };
            outbox.insert(next, &serde_json::to_vec(&row)?[..])?;
            next += 1;
        }
        meta.insert(NEXT_ID, next)?;
        Ok(())
    }
}

impl Outbox for RedbBackend {
    fn enqueue(&self, rows: &[NewDelivery], now_ms: u64) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        self.insert_rows(&txn, rows, now_ms)?;
        txn.commit()?;
        Ok(())
    }

    fn claim(
        &self,
        _claimant: &str,
        endpoints: &[String],
        _lease: Duration,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let read = self.db.begin_read()?;
        let table = match read.open_table(OUTBOX) {
            Ok(t) => t,
            Err(e) if missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut due = Vec::new();
        for entry in table.iter()? {
            let (id, v) = entry?;
            let row: Row =
                serde_json::from_slice(v.value()).map_err(|e| self.corrupt(e.to_string()))?;
            if row.next_ms > now_ms || !endpoints.contains(&row.endpoint) {
                continue;
            }
            due.push(Delivery {
                id: id.value(),
                endpoint: row.endpoint,
                event_type: row.event_type,
                payload: row.payload,
                attempts: row.attempts,
                age: Duration::from_millis(now_ms.saturating_sub(row.created_ms)),
            });
            if due.len() >= limit {
                break;
            }
        }
        Ok(due)
    }

    fn finish(&self, id: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(OUTBOX)?.remove(id)?;
        txn.commit()?;
        Ok(())
    }

    fn retry_after(
        &self,
        id: u64,
        attempts: u32,
        delay: Duration,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(OUTBOX)?;
            let found = table.get(id)?.map(|v| v.value().to_vec());
            if let Some(bytes) = found {
                let mut row: Row =
                    serde_json::from_slice(&bytes).map_err(|e| self.corrupt(e.to_string()))?;
                row.attempts = attempts;
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                row.next_ms = now_ms.saturating_add(delay_ms);
                table.insert(id, &serde_json::to_vec(&row)?[..])?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn depth(&self) -> Result<u64, StoreError> {
        let read = self.db.begin_read()?;
        match read.open_table(OUTBOX) {
            Ok(t) => Ok(t.len()?),
            Err(e) if missing(&e) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    fn expire_others(
        &self,
        keep: &[String],
        age: Duration,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let txn = self.db.begin_write()?;
        let mut gone = 0;
        {
            let mut table = txn.open_table(OUTBOX)?;
            let mut old = Vec::new();
            for entry in table.iter()? {
                let (id, v) = entry?;
                let row: Row =
                    serde_json::from_slice(v.value()).map_err(|e| self.corrupt(e.to_string()))?;
                if !keep.contains(&row.endpoint) && now_ms.saturating_sub(row.created_ms) >= age_ms
                {
                    old.push(id.value());
                }
            }
            for id in old {
                table.remove(id)?;
                gone += 1;
            }
        }
        txn.commit()?;
        Ok(gone)
    }

    fn expiring_marks(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let read = self.db.begin_read()?;
        let table = match read.open_table(EXPIRING) {
            Ok(t) => t,
            Err(e) if missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, expires) = entry?;
            out.push((id.value(), expires.value()));
        }
        Ok(out)
    }

    fn mark_expiring(
        &self,
        id: u64,
        expires: u64,
        rows: &[NewDelivery],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut marks = txn.open_table(EXPIRING)?;
            if marks.get(id)?.is_some() {
                return Ok(false);
            }
            marks.insert(id, expires)?;
        }
        self.insert_rows(&txn, rows, now_ms)?;
        txn.commit()?;
        Ok(true)
    }

    fn unmark_expiring(&self, ids: &[u64]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut marks = txn.open_table(EXPIRING)?;
            for id in ids {
                marks.remove(*id)?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_behaves_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let b = RedbBackend::open(&path).unwrap();
            assert_eq!(b.depth().unwrap(), 0, "no table yet: empty");
            crate::store::outbox::tests::behaves(&b);
        }
        let b = RedbBackend::open(&path).unwrap();
        assert_eq!(
            b.depth().unwrap(),
            2,
            "the retry and the warning are still there"
        );
        assert_eq!(b.expiring_marks().unwrap(), [(7, 900)]);
        let later = b
            .claim("me", &["https://a/".into()], Duration::ZERO, 10, u64::MAX)
            .unwrap();
        let attempts: Vec<u32> = later.iter().map(|d| d.attempts).collect();
        assert_eq!(attempts, [1, 0]);
    }
}
