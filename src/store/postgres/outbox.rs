//! The webhook outbox in PostgreSQL, shared by every replica: rows are
//! claimed for a lease with `FOR UPDATE SKIP LOCKED`, so two replicas never
//! take the same row at once, and a row whose claimant died is free again
//! when `claimed_until` passes. Every time is the database's `now()`: the
//! replicas' clocks may disagree, the database's is one.

use std::time::Duration;

use super::{to_db, PgError, PostgresBackend};
use crate::store::outbox::{Delivery, NewDelivery, Outbox};
use crate::store::StoreError;

/// Seconds as PostgreSQL's `make_interval` takes them.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn insert_rows(
    client: &impl tokio_postgres::GenericClient,
    rows: &[NewDelivery],
) -> Result<(), PgError> {
    if rows.is_empty() {
        return Ok(());
    }
    let endpoints: Vec<&str> = rows.iter().map(|r| r.endpoint.as_str()).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
    client
        .execute(
            "INSERT INTO tokengate_webhook_outbox (endpoint, event_type, payload) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
            &[&endpoints, &types, &payloads],
        )
        .await?;
    Ok(())
}

impl Outbox for PostgresBackend {
    fn enqueue(&self, rows: &[NewDelivery], _now_ms: u64) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.run("writing webhook events", |pool| async move {
            let client = pool.get().await?;
            insert_rows(&**client, &rows).await
        })
    }

    fn claim(
        &self,
        claimant: &str,
        endpoints: &[String],
        lease: Duration,
        limit: usize,
        _now_ms: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let claimant = claimant.to_owned();
        let endpoints = endpoints.to_vec();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.run("claiming webhook deliveries", |pool| async move {
            let client = pool.get().await?;
            Ok(client
                .query(
                    "UPDATE tokengate_webhook_outbox AS o \
                     SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2) \
                     FROM (SELECT id FROM tokengate_webhook_outbox \
                           WHERE endpoint = ANY($3) AND next_attempt <= now() \
                             AND (claimed_until IS NULL OR claimed_until < now()) \
                           ORDER BY id LIMIT $4 \
                           FOR UPDATE SKIP LOCKED) AS due \
                     WHERE o.id = due.id \
                     RETURNING o.id, o.endpoint, o.event_type, o.payload, o.attempts, \
                       greatest(0, (extract(epoch FROM now() - o.created) * 1000))::bigint",
                    &[&claimant, &secs(lease), &endpoints, &limit],
                )
                .await?)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let read = || -> Result<Delivery, tokio_postgres::Error> {
                let id: i64 = row.try_get(0)?;
                let attempts: i32 = row.try_get(4)?;
                let age_ms: i64 = row.try_get(5)?;
                Ok(Delivery {
                    id: u64::try_from(id).unwrap_or(0),
                    endpoint: row.try_get(1)?,
                    event_type: row.try_get(2)?,
                    payload: row.try_get(3)?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    age: Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)),
                })
            };
            out.push(read().map_err(|e| self.error("claiming webhook deliveries", e.into()))?);
        }
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    fn finish(&self, id: u64) -> Result<(), StoreError> {
        let id = i64::try_from(id).unwrap_or(i64::MAX);
        self.run("removing a webhook delivery", |pool| async move {
            let client = pool.get().await?;
            client
                .execute("DELETE FROM tokengate_webhook_outbox WHERE id = $1", &[&id])
                .await?;
            Ok(())
        })
    }

    fn retry_after(
        &self,
        id: u64,
        attempts: u32,
        delay: Duration,
        _now_ms: u64,
    ) -> Result<(), StoreError> {
        let id = i64::try_from(id).unwrap_or(i64::MAX);
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        self.run("rescheduling a webhook delivery", |pool| async move {
            let client = pool.get().await?;
            client
                .execute(
                    "UPDATE tokengate_webhook_outbox SET attempts = $2, \
                       next_attempt = now() + make_interval(secs => $3), \
                       claimed_by = NULL, claimed_until = NULL \
                     WHERE id = $1",
                    &[&id, &attempts, &secs(delay)],
                )
                .await?;
            Ok(())
        })
    }

    fn depth(&self) -> Result<u64, StoreError> {
        let n: i64 = self.run("counting webhook deliveries", |pool| async move {
            let client = pool.get().await?;
            let row = client
                .query_one("SELECT count(*) FROM tokengate_webhook_outbox", &[])
                .await?;
            Ok(row.try_get(0)?)
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn expire_others(
        &self,
        keep: &[String],
        age: Duration,
        _now_ms: u64,
    ) -> Result<u64, StoreError> {
        let keep = keep.to_vec();
        self.run("clearing old webhook deliveries", |pool| async move {
            let client = pool.get().await?;
            Ok(client
                .execute(
                    "DELETE FROM tokengate_webhook_outbox \
                     WHERE NOT (endpoint = ANY($1)) AND created <= now() - make_interval(secs => $2)",
                    &[&keep, &secs(age)],
                )
                .await?)
        })
    }

    fn expiring_marks(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let rows = self.run("reading expiry warnings", |pool| async move {
            let client = pool.get().await?;
            Ok(client
                .query(
                    "SELECT token_id, expires FROM tokengate_webhook_expiring",
                    &[],
                )
                .await?)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row
                .try_get(0)
                .map_err(|e| self.error("reading expiry warnings", e.into()))?;
            let expires: i64 = row
                .try_get(1)
                .map_err(|e| self.error("reading expiry warnings", e.into()))?;
            if let (Ok(id), Ok(expires)) = (u64::try_from(id), u64::try_from(expires)) {
                out.push((id, expires));
            }
        }
        Ok(out)
    }

    fn mark_expiring(
        &self,
        id: u64,
        expires: u64,
        rows: &[NewDelivery],
        _now_ms: u64,
    ) -> Result<bool, StoreError> {
        let rows = rows.to_vec();
        let id = i64::try_from(id).unwrap_or(i64::MAX);
        self.run("writing an expiry warning", |pool| async move {
            let expires = to_db(expires)?;
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // The mark and the events commit together: of two replicas
            // sweeping at once, the one whose insert lands sends it.
            let marked = tx
                .execute(
                    "INSERT INTO tokengate_webhook_expiring (token_id, expires) \
                     VALUES ($1, $2) ON CONFLICT (token_id) DO NOTHING",
                    &[&id, &expires],
                )
                .await?;
            if marked == 0 {
                return Ok(false);
            }
            insert_rows(&*tx, &rows).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn unmark_expiring(&self, ids: &[u64]) -> Result<(), StoreError> {
        let ids: Vec<i64> = ids.iter().filter_map(|&i| i64::try_from(i).ok()).collect();
        self.run("forgetting expiry warnings", |pool| async move {
            let client = pool.get().await?;
            client
                .execute(
                    "DELETE FROM tokengate_webhook_expiring WHERE token_id = ANY($1)",
                    &[&ids],
                )
                .await?;
            Ok(())
        })
    }
}
