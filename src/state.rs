//! What the listeners and background jobs share, built at start-up in
//! numbered steps and cloned (as an `Arc`) into every connection. No global
//! statics.
//!
//! It is a set of narrow handles, not one object everything reaches into:
//!
//! - `authority`: the authentication core (the public listener's bearer
//!   check and exchange);
//! - `lifecycle`: the token lifecycle (create, edit, rotate, delete, and
//!   the changes other replicas make);
//! - `passwords`: the admin accounts' password check (the admin listener's
//!   logins, the public listener's introspection);
//! - `view`: what observers read (the scrape, `GET /api/stats`, readiness)
//!   and shutdown flushes;
//! - `startup_config`: the configuration as the gateway started. What a
//!   reload changes lives in the reloader and in the handles it updates.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access_log::AccessLog;
use crate::audit::{Audit, Dropped};
use crate::authority::Authority;
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::lifecycle::{Lifecycle, LifecycleError};
use crate::metrics::{ClusterGauges, Gauges, Metrics, RefreshTokens, Snapshot, WebhookGauges};
use crate::passwords::Passwords;
use crate::store::{RefreshStore, StoreError};
use crate::throttle::{AuthThrottle, HourlyLimit};
use crate::tokens::access::AccessTokens;
use crate::tokens::format::RefreshHasher;
use crate::webhooks::Webhooks;

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("log.access {dest}: {source}")]
    AccessLog {
        dest: String,
        source: std::io::Error,
    },
    #[error("audit.destination {dest}: {source}")]
    Audit {
        dest: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Webhooks(#[from] crate::webhooks::WebhookSetupError),
}

pub struct State {
    /// The configuration the gateway started with. Settings a reload
    /// changes are held by the reloader and pushed into the handles that
    /// use them (the throttle's budget, the upstreams, the certificate):
    /// read this only for what takes a restart to change.
    pub(crate) startup_config: Config,
    /// The authentication core: the public listener's only way to a
    /// verdict on a bearer token or a refresh grant.
    pub(crate) authority: Authority,
    /// The token lifecycle: every change to a refresh token, local or
    /// from another replica, goes through it (`Arc`: the cluster's feed
    /// holds it too).
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// The admin accounts' passwords, checked on both listeners (`Arc`:
    /// the cluster's feed forgets a disabled account's through it).
    pub(crate) passwords: Arc<Passwords>,
    /// Leaked-token reports per client (`POST /token/leaked`): anyone may
    /// send them, so each client gets a bounded number an hour.
    pub(crate) leak_reports: HourlyLimit,
    /// Read-only handles for observers, and the shutdown's flushes.
    pub(crate) view: View,
    /// Set when shutdown begins: `/readyz` answers 503 "draining" from then on.
    pub(crate) draining: AtomicBool,
}

/// What observers read: counts for the scrape and `GET /api/stats`,
/// readiness, and the writers shutdown flushes. Each field is shared with
/// the handle that changes it (`Arc`): reading never takes a lock of theirs.
pub(crate) struct View {
    pub(crate) clock: Clock,
    pub(crate) store: Arc<RefreshStore>,
    pub(crate) access: Arc<AccessTokens>,
    /// Security events, one JSON line each, written off the request path.
    pub(crate) audit: Arc<Audit>,
    /// Cluster mode (`storage.backend = "postgres"`): the change feed, the
    /// replica registry and the staleness bound. `None` with redb.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// The metrics registry: the workers' counter blocks and rare events.
    pub(crate) metrics: Metrics,
    /// `log.access`; `None` when off (nothing is built per request then).
    pub(crate) access_log: Option<AccessLog>,
    /// `[[webhooks]]`: the outbox's staging and the delivery counters
    /// (the audit log's tap writes to it; the gateway runs its worker).
    pub(crate) webhooks: Arc<Webhooks>,
}

/// Where the refresh tokens are, for the log: the redb file or the masked URL.
fn storage_name(storage: &crate::config::StorageConfig) -> String {
    match &storage.backend {
        crate::config::StorageBackend::Redb => storage.path.display().to_string(),
        crate::config::StorageBackend::Postgres(pg) => pg.display_url.clone(),
    }
}

impl State {
    /// Builds the state (blocking: opens the store and the audit file).
    /// `secret` is the server secret that keys refresh-token hashes;
    /// `passwords` checks the admin accounts' passwords.
    pub(crate) fn build(
        config: Config,
        clock: Clock,
        secret: &[u8],
        passwords: Passwords,
    ) -> Result<State, StateError> {
        // 1. Refresh tokens: open the store (redb: refusing a second process;
        //    PostgreSQL: migrating, and refusing another secret) and load them all.
        let store = Arc::new(RefreshStore::open_config(&config.storage, secret)?);
        // 2. A fresh boot nonce: access tokens of any earlier process stop verifying.
        let access = Arc::new(
            AccessTokens::keyed(secret, config.tokens.max_access_per_refresh)
                .map_err(StateError::Random)?,
        );
        // 3. Cluster mode: this boot joins the replica registry, so the
        //    other replicas verify its tokens from the first one.
        let cluster = match store.cluster_db() {
            Some(db) => Some(Arc::new(Cluster::start(
                db,
                &config.cluster,
                access.clone(),
            )?)),
            None => None,
        };
        // 4. The audit log (naming this replica in cluster mode).
        let audit = Audit::open(&config.audit).map_err(|source| StateError::Audit {
            dest: format!("{:?}", config.audit),
            source,
        })?;
        let audit = match &cluster {
            Some(c) => audit.with_replica(&c.name),
            None => audit,
        };
        // The lifecycle's audit events become webhooks through the tap.
        let claimant = format!("{}:{}", config.cluster.name, std::process::id());
        let webhooks = Arc::new(Webhooks::new(
            &config.webhooks,
            store.clone(),
            clock.clone(),
            claimant,
            config.tokens.sweep_interval,
        )?);
        let audit = Arc::new(if webhooks.enabled() {
            audit.with_tap(webhooks.clone())
        } else {
            audit
        });
        // 5. The authentication core, its failure budget counted from now,
        //    and the token lifecycle.
        let hasher = RefreshHasher::new(secret);
        let authority = Authority {
            clock: clock.clone(),
            hasher: hasher.clone(),
            store: store.clone(),
            access: access.clone(),
            throttle: AuthThrottle::new(config.public.auth_failures_per_minute, clock.now()),
            audit: audit.clone(),
            cluster: cluster
                .clone()
                .map(|c| c as Arc<dyn crate::authority::Freshness>),
            access_ttl: config.tokens.access_ttl,
        };
        let lifecycle = Arc::new(Lifecycle {
            clock: clock.clone(),
            hasher,
            store: store.clone(),
            access: access.clone(),
            audit: audit.clone(),
        });
        // 6. Metrics and the access log.
        let metrics = Metrics::new(config.metrics.enabled);
        let access_log =
            AccessLog::open(&config.log.access, config.log.format).map_err(|source| {
                StateError::AccessLog {
                    dest: format!("{:?}", config.log.access),
                    source,
                }
            })?;
        tracing::info!(
            refresh_tokens = store.len(),
            storage = %storage_name(&config.storage),
            upstream = ?config.upstream.urls,
            "state ready"
        );
        Ok(State {
            authority,
            lifecycle,
            passwords: Arc::new(passwords),
            leak_reports: HourlyLimit::new(clock.now()),
            view: View {
                clock,
                store,
                access,
                audit,
                cluster,
                metrics,
                access_log,
                webhooks,
            },
            draining: AtomicBool::new(false),
            startup_config: config,
        })
    }
}

impl View {
    /// One scrape's snapshot, `None` with metrics off: the metrics' own
    /// counters, and the gauges read now from what these handles hold (the
    /// metrics module sits below all of it and imports none of it).
    pub(crate) fn scrape(&self) -> Option<Snapshot> {
        self.metrics.snapshot(|| {
            let audit = self.audit.dropped();
            let r = self.store.by_expiry(self.clock.unix());
            let w = self.webhooks.counts();
            Gauges {
                webhooks: WebhookGauges {
                    delivered: w.delivered,
                    failed_attempts: w.failed_attempts,
                    dropped: w.dropped,
                    outbox_depth: w.outbox_depth,
                },
                access_tokens: self.access.len(),
                refresh_tokens: RefreshTokens {
                    active: r.active,
                    expiring_soon: r.expiring_soon,
                    expired: r.expired,
                },
                access_log_dropped: self.access_log.as_ref().map_or(0, |a| a.dropped()),
                audit_dropped_client: audit.client,
                audit_dropped_security: audit.security,
                cluster: self.cluster.as_ref().map(|c| ClusterGauges {
                    staleness: c.staleness(),
                    connected: c.check_connected().is_ok(),
                    changes_applied: c.applied(),
                    peer_boots: self.access.peers(),
                }),
            }
        })
    }
}

/// A small inspection API for the integration tests: what they read or
/// trigger of the shared state, without reaching into its handles.
impl State {
    /// Access tokens in memory (live ones, and expired ones until a sweep).
    pub fn live_access_tokens(&self) -> usize {
        self.view.access.len()
    }

    /// Bearer checks refused since start (each one past the MAC check or
    /// before it: throttled requests never get here).
    pub fn refused_access_checks(&self) -> u64 {
        self.view.access.refused_checks()
    }

    /// Writes changed refresh-token usage to the store now (what the
    /// periodic flush does); how many tokens were written.
    pub async fn flush_usage(&self) -> Result<usize, LifecycleError> {
        self.lifecycle.flush_usage().await
    }

    /// Writes the failed-authentication throttle's `auth.throttled` lines
    /// for the windows over at `now` (what the periodic sweep does).
    pub fn report_throttled(&self, now: Instant) {
        self.authority.sweep(now);
    }

    /// Waits (at most `timeout`) until every queued audit line is written.
    pub fn flush_audit(&self, timeout: Duration) {
        self.view.audit.flush(timeout);
    }

    /// Audit bytes queued and not yet written.
    pub fn audit_pending_bytes(&self) -> usize {
        self.view.audit.pending_bytes()
    }

    /// Audit lines dropped since start, by kind.
    pub fn audit_dropped(&self) -> Dropped {
        self.view.audit.dropped()
    }
}
