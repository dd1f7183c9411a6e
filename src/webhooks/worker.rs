//! The delivery worker, one task per process, started by the gateway and
//! stopped by its shutdown signal. Each round it writes what was staged to
//! the outbox, looks for tokens entering the expiring-soon window, claims
//! due deliveries and attempts them: an endpoint's deliveries one after
//! another (in the order they were made), the endpoints side by side.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{event, Webhooks};
use crate::config::EventType;
use crate::shutdown::stopped;
use crate::store::outbox::{Delivery, NewDelivery, Outbox};

/// Deliveries claimed per round; a full batch starts the next round at once.
const BATCH: usize = 16;
/// How often the outbox is looked at without a wake-up: retries that came
/// due, and (in cluster mode) events other replicas wrote.
const POLL: Duration = Duration::from_secs(1);
/// The longest pause between two attempts of one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// A delivery still failing this long after its event is dropped.
pub(super) const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Rows of endpoints no longer configured are cleared once this old.
const ORPHAN_AGE: Duration = Duration::from_secs(25 * 3600);

/// Writes staged deliveries, sweeps, and delivers until shutdown; then
/// writes what is still staged (the answers already given promised it).
pub(crate) async fn run(hooks: Arc<Webhooks>, mut shutdown: watch::Receiver<bool>) {
    if !hooks.enabled() {
        return;
    }
    let mut poll = tokio::time::interval(POLL);
    let mut sweep = tokio::time::interval(hooks.sweep_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut marks: Option<HashMap<u64, u64>> = None;
    loop {
        let mut scan = false;
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            // Something changed: a token may have entered the window.
            _ = hooks.wake.notified() => scan = true,
            _ = sweep.tick() => {
                scan = true;
                hooks.clear_orphans().await;
            }
            _ = poll.tick() => {}
        }
        hooks.write_staged().await;
        if scan {
            hooks.scan_expiring(&mut marks).await;
        }
        loop {
            let claimed = tokio::select! {
                n = hooks.deliver_round() => n,
                _ = stopped(&mut shutdown) => 0,
            };
            if claimed < BATCH || *shutdown.borrow() {
                break;
            }
        }
        hooks.refresh_depth().await;
        if *shutdown.borrow() {
            break;
        }
    }
    hooks.write_staged().await;
}

/// The pause before attempt `attempts + 1`: `initial` doubling per failed
/// attempt up to an hour, then ±20 % (`jitter` in 0..1), so endpoints and
/// replicas that failed together do not retry in lockstep.
pub(super) fn backoff(initial: Duration, attempts: u32, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(31);
    let base = initial.saturating_mul(1u32 << doublings).min(MAX_BACKOFF);
    base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
        .min(MAX_BACKOFF)
}

/// A number in 0..1 from the OS's generator (0.5 if it fails: a retry
/// without jitter is still a retry).
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    match crate::secrets::random_bytes(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}

impl Webhooks {
    /// Unix milliseconds on the gateway's clock (redb's outbox times).
    fn now_ms(&self) -> u64 {
        self.clock
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Runs `f` on the outbox on the blocking pool; `None` (logged) if it
    /// failed.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce(&dyn Outbox, u64) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Option<T> {
        let me = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let outbox = me.store.outbox().ok_or_else(|| {
                crate::store::StoreError::Setup("this backend keeps no webhook outbox".into())
            })?;
            f(outbox, me.now_ms())
        })
        .await;
        match done {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "webhook outbox: {what} failed; will retry");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook outbox: {what} did not finish");
                None
            }
        }
    }

    /// Writes the staged deliveries to the outbox in one transaction; on a
    /// failure they stay staged for the next round.
    pub(super) async fn write_staged(self: &Arc<Self>) {
        let (rows, seq) = {
            let mut s = self.staged();
            if s.rows.is_empty() {
                return;
            }
            (std::mem::take(&mut s.rows), s.seq)
        };
        let written = rows.clone();
        let done = self
            .blocking("writing events", move |o, now| o.enqueue(&written, now))
            .await;
        if done.is_some() {
            self.committed.send_replace(seq);
        } else {
            let mut s = self.staged();
            let newer = std::mem::replace(&mut s.rows, rows);
            s.rows.extend(newer);
        }
    }

    pub(super) async fn refresh_depth(self: &Arc<Self>) {
        if let Some(n) = self.blocking("counting", |o, _| o.depth()).await {
            self.counters.depth.store(n, Relaxed);
        }
    }

    /// Removes rows no configured endpoint will ever take (an endpoint
    /// taken out of the configuration) once past the give-up age.
    async fn clear_orphans(self: &Arc<Self>) {
        let keep: Vec<String> = self.endpoints.iter().map(|e| e.url.clone()).collect();
        let gone = self
            .blocking("clearing old rows", move |o, now| {
                o.expire_others(&keep, ORPHAN_AGE, now)
            })
            .await;
        if let Some(n @ 1..) = gone {
            self.counters.dropped.fetch_add(n, Relaxed);
            tracing::warn!(
                rows = n,
                "webhook deliveries dropped: their endpoint is no longer configured"
            );
        }
    }

    /// One round: claims due deliveries and attempts them. How many were
    /// claimed.
    pub(super) async fn deliver_round(self: &Arc<Self>) -> usize {
        let urls: Vec<String> = self.endpoints.iter().map(|e| e.url.clone()).collect();
        // Long enough for a whole batch to one endpoint to time out: a
        // claim ends only by our update, or by this replica's death.
        let longest = self
            .endpoints
            .iter()
            .map(|e| e.config.timeout)
            .max()
            .unwrap_or(POLL);
        let lease = longest * u32::try_from(BATCH).unwrap_or(u32::MAX) + Duration::from_secs(30);
        let claimant = self.claimant.clone();
        let Some(due) = self
            .blocking("claiming deliveries", move |o, now| {
                o.claim(&claimant, &urls, lease, BATCH, now)
            })
            .await
        else {
            return 0;
        };
        let claimed = due.len();
        let mut by_endpoint: HashMap<usize, Vec<Delivery>> = HashMap::new();
        for d in due {
            if let Some(i) = self.endpoints.iter().position(|e| e.url == d.endpoint) {
                by_endpoint.entry(i).or_default().push(d);
            }
        }
        let mut tasks = JoinSet::new();
        for (i, deliveries) in by_endpoint {
            let me = self.clone();
            tasks.spawn(async move {
                for d in deliveries {
                    me.deliver(i, d).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        claimed
    }

    /// One attempt of one delivery, and what the outbox makes of it.
    async fn deliver(self: &Arc<Self>, endpoint: usize, d: Delivery) {
        let Some(e) = self.endpoints.get(endpoint) else {
            return;
        };
        let id = d.id;
        match e.attempt(id, &d.payload).await {
            Ok(()) => {
                self.counters.delivered.fetch_add(1, Relaxed);
                tracing::debug!(webhook_id = id, event = %d.event_type, endpoint = %crate::config::url_origin(&e.url), "webhook delivered");
                self.blocking("removing a delivered row", move |o, _| o.finish(id))
                    .await;
            }
            Err(why) => {
                self.counters.failed.fetch_add(1, Relaxed);
                let attempts = d.attempts.saturating_add(1);
                if d.age >= GIVE_UP_AFTER {
                    self.counters.dropped.fetch_add(1, Relaxed);
                    tracing::warn!(webhook_id = id, event = %d.event_type, endpoint = %crate::config::url_origin(&e.url), attempts, error = %why, "webhook dropped: still failing a day after the event");
                    self.blocking("removing a dropped row", move |o, _| o.finish(id))
                        .await;
                    return;
                }
                // The last attempt lands at the give-up age, not beyond it.
                let delay = backoff(e.config.retry_initial, attempts, jitter())
                    .min(GIVE_UP_AFTER.saturating_sub(d.age));
                tracing::info!(webhook_id = id, event = %d.event_type, endpoint = %crate::config::url_origin(&e.url), attempts, error = %why, retry_in = ?delay, "webhook delivery failed; will retry");
                self.blocking("rescheduling a delivery", move |o, now| {
                    o.retry_after(id, attempts, delay, now)
                })
                .await;
            }
        }
    }

    /// Sends `token.expiring` once for each token that has entered the
    /// expiring-soon window (`store::EXPIRING_SOON_SECS`), remembering it
    /// in the outbox's marks (so neither a restart nor another replica
    /// sends it again), and forgets the marks of tokens that left the
    /// window (an extension re-arms the warning) or are gone.
    pub(super) async fn scan_expiring(self: &Arc<Self>, marks: &mut Option<HashMap<u64, u64>>) {
        if !self
            .endpoints
            .iter()
            .any(|e| e.config.wants(EventType::Expiring))
        {
            return;
        }
        let me = self.clone();
        let known = marks.take();
        match tokio::task::spawn_blocking(move || me.scan_blocking(known)).await {
            Ok(Some(now_known)) => *marks = Some(now_known),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "the expiry-warning scan did not finish"),
        }
    }

    fn scan_blocking(&self, known: Option<HashMap<u64, u64>>) -> Option<HashMap<u64, u64>> {
        let outbox = self.store.outbox()?;
        let mut marks = match known {
            Some(m) => m,
            None => match outbox.expiring_marks() {
                Ok(all) => all.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the expiry warnings sent failed; will retry");
                    return None;
                }
            },
        };
        let now = self.clock.unix();
        let now_ms = self.now_ms();
        let soon = |expires| crate::store::expires_soon(expires, now);
        let left: Vec<u64> = marks
            .keys()
            .copied()
            .filter(|id| match self.store.get(*id) {
                Some(t) => !soon(t.expires),
                // Only once it is known to be deleted: in cluster mode a
                // token made elsewhere a moment ago may not be here yet.
                None => self.store.is_gone(*id),
            })
            .collect();
        if !left.is_empty() && outbox.unmark_expiring(&left).is_ok() {
            for id in &left {
                marks.remove(id);
            }
        }
        let timestamp = crate::clock::rfc3339_now();
        for t in self.store.list() {
            let Some(expires) = t.expires.filter(|_| soon(t.expires)) else {
                continue;
            };
            if marks.contains_key(&t.id) {
                continue;
            }
            let body = event::expiring(&t, now, &timestamp);
            let rows: Vec<NewDelivery> = self
                .endpoints
                .iter()
                .filter(|e| e.config.wants(EventType::Expiring))
                .map(|e| NewDelivery {
                    endpoint: e.url.clone(),
                    event_type: EventType::Expiring.name().to_owned(),
                    payload: body.clone(),
                })
                .collect();
            match outbox.mark_expiring(t.id, expires, &rows, now_ms) {
                Ok(sent) => {
                    if sent {
                        tracing::info!(token_id = t.id, token_name = %t.name, "refresh token expiring soon: webhook queued");
                    }
                    marks.insert(t.id, expires);
                }
                Err(e) => {
                    tracing::warn!(token_id = t.id, error = %e, "queueing an expiry warning failed; will retry");
                }
            }
        }
        Some(marks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour_with_jitter() {
        let s = Duration::from_secs(5);
        assert_eq!(backoff(s, 1, 0.5), Duration::from_secs(5));
        assert_eq!(backoff(s, 2, 0.5), Duration::from_secs(10));
        assert_eq!(backoff(s, 4, 0.5), Duration::from_secs(40));
        assert_eq!(backoff(s, 11, 0.5), MAX_BACKOFF);
        assert_eq!(backoff(s, u32::MAX, 1.0), MAX_BACKOFF, "never past an hour");
        assert_eq!(backoff(s, 1, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(s, 1, 1.0), Duration::from_secs(6));
        // A day of attempts: about 30, not thousands.
        let mut t = Duration::ZERO;
        let mut n = 0;
        while t < GIVE_UP_AFTER {
            n += 1;
            t += backoff(s, n, 0.5);
        }
        assert!((25..40).contains(&n), "{n} attempts in a day");
        let j = jitter();
        assert!((0.0..=1.0).contains(&j));
    }
}
