//! Signed webhooks (Standard Webhooks) for the refresh tokens' lifecycle,
//! delivered at least once from a durable outbox.
//!
//! - Events come from one place: the audit log's tap. Every audit event
//!   the lifecycle records (wherever it is recorded) passes through
//!   `Webhooks::observe`; `event` maps it to a webhook type, and each
//!   endpoint that wants that type gets a delivery staged in memory.
//!   `token.expiring` comes from the worker's own sweep instead.
//! - Staged deliveries are written to the store's outbox by the worker at
//!   once; an admin API answer waits for that write (`settled`), so what an
//!   administrator was told happened is in the outbox before they hear it.
//! - The worker (`worker`) claims due rows, signs and POSTs them (`send`,
//!   `sign`), deletes them on a 2xx, and otherwise retries with
//!   exponential backoff and jitter for up to a day.

mod event;
mod send;
mod sign;
mod worker;

pub(crate) use worker::run;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::audit::{Event, Tap};
use crate::clock::Clock;
use crate::config::{EventType, WebhookConfig};
use crate::store::outbox::NewDelivery;
use crate::store::RefreshStore;
use crate::tls::ClientTlsError;

/// How long an admin answer waits for its events to reach the outbox: a
/// store that cannot take them within this is logged, and the answer goes
/// out anyway (the events stay staged and are written when it can).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Staged deliveries held while the store refuses them; beyond this, new
/// ones are dropped (and counted): memory stays bounded in an outage.
const MAX_STAGED: usize = 100_000;

/// Why the webhooks could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("webhooks[{index}] ({url}): {source}")]
pub struct WebhookSetupError {
    index: usize,
    url: String,
    #[source]
    source: ClientTlsError,
}

/// Deliveries staged in memory, and how many were ever staged.
#[derive(Default)]
struct Staged {
    rows: Vec<NewDelivery>,
    seq: u64,
}

/// What the scrape shows.
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    /// As of the worker's last round.
    depth: AtomicU64,
}

/// The counters as one scrape reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WebhookCounts {
    pub(crate) delivered: u64,
    pub(crate) failed_attempts: u64,
    pub(crate) dropped: u64,
    pub(crate) outbox_depth: u64,
}

pub(crate) struct Webhooks {
    endpoints: Vec<send::Endpoint>,
    /// The outbox lives in the token store's database; the tokens' records
    /// add their expiry to a payload.
    store: Arc<RefreshStore>,
    clock: Clock,
    /// Names this process's claims in a shared (PostgreSQL) outbox.
    claimant: String,
    /// Written by the audit tap on any thread, taken by the worker: a
    /// plain mutex, held for a push or a swap, never across an await.
    staged: Mutex<Staged>,
    /// The highest `Staged::seq` the outbox holds.
    committed: watch::Sender<u64>,
    /// Wakes the worker: something was staged.
    wake: Notify,
    counters: Counters,
    /// How often the worker looks for tokens entering the expiring-soon
    /// window (`tokens.sweep_interval`), besides after every change.
    sweep_interval: Duration,
}

impl Webhooks {
    /// The endpoints' clients (CA files read now, so a bad one stops the
    /// start naming the entry). `claimant`: this replica's name and boot.
    pub(crate) fn new(
        configs: &[WebhookConfig],
        store: Arc<RefreshStore>,
        clock: Clock,
        claimant: String,
        sweep_interval: Duration,
    ) -> Result<Webhooks, WebhookSetupError> {
        let endpoints = configs
            .iter()
            .enumerate()
            .map(|(index, c)| {
                send::Endpoint::new(c).map_err(|source| WebhookSetupError {
                    index,
                    url: c.url.to_string(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Webhooks {
            endpoints,
            store,
            clock,
            claimant,
            staged: Mutex::new(Staged::default()),
            committed: watch::Sender::new(0),
            wake: Notify::new(),
            counters: Counters::default(),
            sweep_interval,
        })
    }

    /// Whether any endpoint is configured.
    pub(crate) fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Staged> {
        // The queue stays consistent through a panic elsewhere: each push
        // is one statement.
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most `SETTLE_TIMEOUT`) until every delivery staged so far
    /// is in the outbox: the admin API answers after this.
    pub(crate) async fn settled(&self) {
        let target = self.staged().seq;
        if *self.committed.borrow() >= target {
            return;
        }
        self.wake.notify_one();
        let mut rx = self.committed.subscribe();
        let waited = tokio::time::timeout(SETTLE_TIMEOUT, rx.wait_for(|c| *c >= target)).await;
        if waited.is_err() {
            tracing::warn!(
                "webhook events not yet written to the outbox after {SETTLE_TIMEOUT:?}; answering anyway (they stay queued)"
            );
        }
    }

    /// Writes what is staged to the outbox now (shutdown, after the
    /// worker has stopped).
    pub(crate) async fn flush(self: &Arc<Self>) {
        self.write_staged().await;
    }

    /// The counters for a scrape.
    pub(crate) fn counts(&self) -> WebhookCounts {
        let c = &self.counters;
        WebhookCounts {
            delivered: c.delivered.load(Relaxed),
            failed_attempts: c.failed.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            outbox_depth: c.depth.load(Relaxed),
        }
    }

    /// Stages one delivery per endpoint that wants `t`.
    fn stage(&self, t: EventType, payload: impl Fn() -> String) {
        let wanted: Vec<&send::Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| e.config.wants(t))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let body = payload();
        {
            let mut s = self.staged();
            if s.rows.len() + wanted.len() > MAX_STAGED {
                drop(s);
                self.counters
                    .dropped
                    .fetch_add(wanted.len() as u64, Relaxed);
                tracing::warn!(
                    event = t.name(),
                    "webhook event dropped: {MAX_STAGED} deliveries already wait for the store"
                );
                return;
            }
            for e in wanted {
                s.rows.push(NewDelivery {
                    endpoint: e.url.clone(),
                    event_type: t.name().to_owned(),
                    payload: body.clone(),
                });
            }
            s.seq += 1;
        }
        self.wake.notify_one();
    }
}

/// The one way lifecycle events become webhooks.
impl Tap for Webhooks {
    fn observe(&self, e: &Event<'_>) {
        // Cheap for the events that are no webhook (exchanges, logins):
        // one split and a match.
        let Some((t, kind)) = event::webhook_of(e.event) else {
            return;
        };
        self.stage(t, || {
            let token = e.token_id.and_then(|id| self.store.get(id));
            event::payload(t, kind, e, token.as_deref(), &crate::clock::rfc3339_now())
        });
    }
}
