//! The state both listeners share, built at start-up in numbered steps and
//! cloned (as an `Arc`) into every connection. No global statics.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::audit::Audit;
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::{ClusterGauges, Gauges, Metrics, RefreshTokens, Snapshot};
use crate::restrict::RestrictionSpec;
use crate::store::{Edit, RefreshStore, RefreshToken, StoreError};
use crate::throttle::AuthThrottle;
use crate::tokens::access::AccessTokens;
use crate::tokens::format::{new_refresh_token, parse_refresh, RefreshHasher};

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
}

pub struct State {
    pub config: Config,
    pub clock: Clock,
    /// Keys refresh-token hashes with the server secret.
    pub hasher: RefreshHasher,
    /// Durable refresh tokens and their in-memory mirror; `Arc` so blocking
    /// writes can run on the blocking pool.
    pub store: Arc<RefreshStore>,
    /// Live access tokens; the boot nonce inside makes a restart invalidate them all.
    pub access: AccessTokens,
    /// Security events, one JSON line each, written off the request path.
    pub audit: Audit,
    /// Failed token checks and exchanges per client address: consulted
    /// before any MAC work on the public listener.
    pub throttle: AuthThrottle,
    /// Cluster mode (`storage.backend = "postgres"`): the change feed, the
    /// replica registry and the staleness bound. `None` with redb.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// Set when shutdown begins: `/readyz` answers 503 "draining" from then on.
    pub(crate) draining: AtomicBool,
    /// The metrics registry: the workers' counter blocks and rare events.
    pub(crate) metrics: Metrics,
    /// `log.access`; `None` when off (nothing is built per request then).
    pub(crate) access_log: Option<AccessLog>,
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
    /// `secret` is the server secret that keys refresh-token hashes.
    pub(crate) fn build(config: Config, clock: Clock, secret: &[u8]) -> Result<State, StateError> {
        // 1. Refresh tokens: open the store (redb: refusing a second process;
        //    PostgreSQL: migrating, and refusing another secret) and load them all.
        let store = Arc::new(RefreshStore::open_config(&config.storage, secret)?);
        // 2. A fresh boot nonce: access tokens of any earlier process stop verifying.
        let access = AccessTokens::keyed(secret, config.tokens.max_access_per_refresh)
            .map_err(StateError::Random)?;
        // 3. Cluster mode: this boot joins the replica registry, so the
        //    other replicas verify its tokens from the first one.
        let cluster = match store.cluster_db() {
            Some(db) => Some(Arc::new(Cluster::start(
                db,
                &config.cluster,
                access.own_boot(),
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
        // 5. The failed-authentication throttle, its minutes counted from now.
        let throttle = AuthThrottle::new(config.public.auth_failures_per_minute, clock.now());
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
            hasher: RefreshHasher::new(secret),
            clock,
            store,
            access,
            audit,
            throttle,
            cluster,
            draining: AtomicBool::new(false),
            metrics,
            access_log,
            config,
        })
    }
}

/// A refresh token this close to its expiry counts as `expiring_soon` in the scrape.
const EXPIRING_SOON_SECS: u64 = 7 * 86_400;

impl State {
    /// One scrape's snapshot, `None` with metrics off: the metrics' own
    /// counters, and the gauges read now from what this state holds (the
    /// metrics module sits below all of it and imports none of it).
    pub(crate) fn scrape(&self) -> Option<Snapshot> {
        self.metrics.snapshot(|| {
            let audit = self.audit.dropped();
            Gauges {
                access_tokens: self.access.len(),
                refresh_tokens: self.refresh_tokens_by_state(),
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

    fn refresh_tokens_by_state(&self) -> RefreshTokens {
        let now = self.clock.unix();
        let mut n = RefreshTokens::default();
        for t in self.store.list() {
            match t.expires {
                Some(e) if e <= now => n.expired += 1,
                Some(e) if e - now <= EXPIRING_SOON_SECS => n.expiring_soon += 1,
                _ => n.active += 1,
            }
        }
        n
    }
}

/// Why a refresh token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateTokenError {
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("token store task failed: {0}")]
    Task(String),
}

impl State {
    /// Mints a refresh token, commits its hash to the store (on the blocking
    /// pool), and only then returns it with its string, which is never stored.
    pub async fn create_refresh_token(
        &self,
        name: &str,
        created: u64,
        expires: Option<u64>,
        restrictions: &RestrictionSpec,
    ) -> Result<(Arc<RefreshToken>, String), CreateTokenError> {
        let token = new_refresh_token().map_err(CreateTokenError::Random)?;
        let parsed = parse_refresh(&token)
            .map_err(|e| CreateTokenError::Task(format!("minted a malformed token: {e}")))?;
        let hash = self.hasher.hash(&parsed);
        let store = self.store.clone();
        let name = name.to_owned();
        let spec = restrictions.clone();
        let created = tokio::task::spawn_blocking(move || {
            store.create_restricted(hash, &name, created, expires, Some(&spec))
        })
        .await
        .map_err(|e| CreateTokenError::Task(e.to_string()))??;
        Ok((created, token))
    }

    /// Edits token `id` (its fields, or its secret) on the blocking pool;
    /// `None`: no such token.
    pub(crate) async fn edit_refresh_token(
        &self,
        id: u64,
        edit: Edit,
    ) -> Result<Option<Arc<RefreshToken>>, CreateTokenError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.edit(id, &edit))
            .await
            .map_err(|e| CreateTokenError::Task(e.to_string()))??)
    }

    /// Gives token `id` a new secret, returned with the token; the old one
    /// keeps exchanging until `old_until` (Unix seconds), or stops at once
    /// (`None`), and then so do the access tokens issued under it.
    pub(crate) async fn rotate_refresh_token(
        &self,
        id: u64,
        old_until: Option<u64>,
    ) -> Result<Option<(Arc<RefreshToken>, String)>, CreateTokenError> {
        let secret = new_refresh_token().map_err(CreateTokenError::Random)?;
        let parsed = parse_refresh(&secret)
            .map_err(|e| CreateTokenError::Task(format!("minted a malformed token: {e}")))?;
        let hash = self.hasher.hash(&parsed);
        let rotated = self
            .edit_refresh_token(id, Edit::Secret { hash, old_until })
            .await?;
        if rotated.is_some() && old_until.is_none() {
            // Refused already through the old version's flag; this frees them.
            self.access.revoke_refresh(&[id]);
        }
        Ok(rotated.map(|t| (t, secret)))
    }
}
