//! The webhook outbox: signed-event deliveries waiting for their endpoint,
//! durable in the backend so a restart (or a crash) loses none, and the
//! marks of the tokens whose `token.expiring` event was sent, so a restart
//! does not send one twice.
//!
//! One row is one event for one endpoint; its id is the `webhook-id` the
//! receiver deduplicates by, so it stays the same across retries. A row is
//! deleted once delivered (or given up on). With PostgreSQL every replica
//! delivers from the same table: a replica claims rows for a lease
//! (`FOR UPDATE SKIP LOCKED`, then `claimed_by`/`claimed_until`), so each
//! row is attempted by one replica at a time, and a dead replica's claims
//! are taken over when the lease runs out. Times there are the database's
//! (`now()`), shared by every replica; redb (one process) uses the
//! gateway's clock, passed in as `now_ms`.

use std::time::Duration;

use super::StoreError;

/// One event for one endpoint, as it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewDelivery {
    /// The endpoint's URL, as configured.
    pub(crate) endpoint: String,
    /// `token.created`, …
    pub(crate) event_type: String,
    /// The JSON body, fixed at creation: every attempt sends the same bytes.
    pub(crate) payload: String,
}

/// A delivery taken from the outbox to attempt now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) id: u64,
    pub(crate) endpoint: String,
    pub(crate) event_type: String,
    pub(crate) payload: String,
    /// Failed attempts so far.
    pub(crate) attempts: u32,
    /// Since the row was written.
    pub(crate) age: Duration,
}

/// What a backend does for the outbox. Calls block, like `Backend`'s; each
/// is one transaction.
pub(crate) trait Outbox: Send + Sync {
    /// Writes deliveries, due at once.
    fn enqueue(&self, rows: &[NewDelivery], now_ms: u64) -> Result<(), StoreError>;
    /// Takes up to `limit` due deliveries for `endpoints`, oldest first,
    /// for `claimant` until `lease` has passed (PostgreSQL; with redb the
    /// only deliverer is this process).
    fn claim(
        &self,
        claimant: &str,
        endpoints: &[String],
        lease: Duration,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Removes a delivery: delivered, or given up on.
    fn finish(&self, id: u64) -> Result<(), StoreError>;
    /// Records a failed attempt (`attempts` in all) and frees the row for
    /// another attempt after `delay`.
    fn retry_after(
        &self,
        id: u64,
        attempts: u32,
        delay: Duration,
        now_ms: u64,
    ) -> Result<(), StoreError>;
    /// Deliveries waiting (due or not).
    fn depth(&self) -> Result<u64, StoreError>;
    /// Deletes rows older than `age` whose endpoint is not in `keep` (no
    /// one will deliver them); how many.
    fn expire_others(&self, keep: &[String], age: Duration, now_ms: u64)
        -> Result<u64, StoreError>;
    /// The tokens whose `token.expiring` event was sent: (id, the expiry it
    /// was sent for).
    fn expiring_marks(&self) -> Result<Vec<(u64, u64)>, StoreError>;
    /// Marks token `id` as warned for `expires` and writes `rows` in the
    /// same transaction, unless it is marked already (then nothing is
    /// written: another replica, or an earlier start, sent it). True when
    /// this call wrote them.
    fn mark_expiring(
        &self,
        id: u64,
        expires: u64,
        rows: &[NewDelivery],
        now_ms: u64,
    ) -> Result<bool, StoreError>;
    /// Forgets the marks of `ids` (their tokens left the window, or are gone).
    fn unmark_expiring(&self, ids: &[u64]) -> Result<(), StoreError>;
}

#[cfg(test)]
pub(crate) mod tests {
    //! One behaviour suite, run against each backend.
    use super::*;

    fn row(n: u32) -> NewDelivery {
        NewDelivery {
            endpoint: if n.is_multiple_of(2) {
                "https://a/"
            } else {
                "https://b/"
            }
            .into(),
            event_type: "sample".into(),
            payload: format!("{{\"n\":{n}}}"),
        }
    }

    pub(crate) fn behaves(o: &dyn Outbox) {
        let a = vec!["https://a/".to_owned()];
        let both = vec!["https://a/".to_owned(), "https://b/".to_owned()];
        let lease = Duration::from_secs(60);
        o.enqueue(&[row(0), row(1), row(2)], 1_000).unwrap();
        assert_eq!(o.depth().unwrap(), 3);
        let got = o.claim("me", &a, lease, 10, 1_000).unwrap();
        assert_eq!(got.len(), 2, "only endpoint a's rows: {got:?}");
        assert!(got[0].id < got[1].id, "oldest first");
        assert_eq!(got[0].payload, "{\"n\":0}");
        assert_eq!(got[0].attempts, 0);
        o.finish(got[0].id).unwrap();
        o.retry_after(got[1].id, 1, Duration::from_secs(5), 1_000)
            .unwrap();
        assert_eq!(o.depth().unwrap(), 2);
        let later = o.claim("me", &both, lease, 10, 2_000).unwrap();
        assert!(
            later.iter().all(|d| d.id != got[1].id),
            "a row waiting for its retry is not due: {later:?}"
        );
        let ids: Vec<u64> = later.iter().map(|d| d.id).collect();
        for id in ids {
            o.finish(id).unwrap();
        }

        assert!(o.expiring_marks().unwrap().is_empty());
        assert!(o.mark_expiring(7, 500, &[row(4)], 3_000).unwrap());
        assert!(
            !o.mark_expiring(7, 500, &[row(6)], 3_000).unwrap(),
            "once per token"
        );
        assert_eq!(o.expiring_marks().unwrap(), [(7, 500)]);
        assert_eq!(o.depth().unwrap(), 2, "the first mark's row, and the retry");
        o.unmark_expiring(&[7, 8]).unwrap();
        assert!(o.expiring_marks().unwrap().is_empty());
        assert!(o.mark_expiring(7, 900, &[], 3_000).unwrap(), "re-armed");
        // Rows of an endpoint no longer configured go once old enough.
        o.enqueue(&[row(1)], 3_000).unwrap();
        assert_eq!(
            o.expire_others(&a, Duration::from_secs(3600), 4_000)
                .unwrap(),
            0
        );
        assert_eq!(o.expire_others(&a, Duration::ZERO, 4_000).unwrap(), 1);
        assert_eq!(o.depth().unwrap(), 2);
    }
}
