//! The one shared state, built at start-up in numbered steps and cloned (as an
//! `Arc`) into every connection. No global statics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::admin::auth::AdminAuth;
use crate::clock::Clock;
use crate::config::Config;
use crate::proxy::{Upstream, UpstreamSetupError};
use crate::secrets::{AdminPasswordSource, SecretError};
use crate::store::{RefreshStore, StoreError};
use crate::tokens::access::AccessTokens;
use crate::tokens::format::RefreshHasher;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("audit.destination {dest}: {source}")]
    Audit {
        dest: String,
        source: std::io::Error,
    },
    #[error("start-up task failed: {0}")]
    Task(String),
}

/// What the process supplies besides the configuration file.
#[derive(Default)]
pub struct StartOptions {
    /// `TOKENGATE_ADMIN_PASSWORD`, read by the binary (tests pass it directly).
    pub admin_password: Option<String>,
    /// The time source; tests keep a clone to move time forward.
    pub clock: Clock,
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
    pub admin: AdminAuth,
    /// Built once at start to validate the upstream settings; public workers
    /// each build their own from the same configuration.
    pub upstream: Arc<Upstream>,
    /// Security events, one JSON line each, written off the request path.
    pub audit: crate::audit::Audit,
}

/// The data directory: where `storage.path` lives, with `secret.key` and `admin.hash`.
pub fn data_dir(storage_path: &Path) -> PathBuf {
    match storage_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

impl State {
    pub fn build(config: Config, opts: StartOptions) -> Result<State, StartError> {
        let dir = data_dir(&config.storage_path);
        // 1. The server secret: every refresh-token hash depends on it.
        let secret = crate::secrets::load_or_create_secret(&dir)?;
        // 2. The admin credential (environment, file, or generated once).
        let source = match (
            opts.admin_password.filter(|p| !p.is_empty()),
            &config.admin_password_hash,
        ) {
            (Some(p), _) => AdminPasswordSource::Environment(p),
            (None, Some(h)) => AdminPasswordSource::ConfigHash(h.clone()),
            (None, None) => AdminPasswordSource::DataDir,
        };
        let admin = AdminAuth::new(
            crate::secrets::resolve_admin(source, &dir)?,
            &secret,
            config.admin_session_ttl,
        );
        // 3. Refresh tokens: open redb (refusing a second process) and load them all.
        let store = Arc::new(RefreshStore::open(&config.storage_path)?);
        // 4. A fresh boot nonce: access tokens of any earlier process stop verifying.
        let access = AccessTokens::new().map_err(StartError::Random)?;
        // 5. The upstream client and its pool.
        let upstream = Arc::new(Upstream::new(&config.upstream)?);
        // 6. The audit log.
        let audit =
            crate::audit::Audit::open(&config.audit).map_err(|source| StartError::Audit {
                dest: format!("{:?}", config.audit),
                source,
            })?;
        tracing::info!(
            refresh_tokens = store.len(),
            storage = %config.storage_path.display(),
            upstream = %config.upstream.url,
            "state ready"
        );
        Ok(State {
            hasher: RefreshHasher::new(&secret),
            clock: opts.clock,
            store,
            access,
            admin,
            upstream,
            audit,
            config,
        })
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
    /// Mints a refresh token, commits its hash to redb (on the blocking pool),
    /// and only then returns it with its string, which is never stored.
    pub async fn create_refresh_token(
        &self,
        name: &str,
        created: u64,
        expires: Option<u64>,
    ) -> Result<(Arc<crate::store::RefreshLive>, String), CreateTokenError> {
        let token = crate::tokens::format::new_refresh_token().map_err(CreateTokenError::Random)?;
        let parsed = crate::tokens::format::parse_refresh(&token)
            .map_err(|e| CreateTokenError::Task(format!("minted a malformed token: {e}")))?;
        let hash = self.hasher.hash(&parsed);
        let store = self.store.clone();
        let name = name.to_owned();
        let live = tokio::task::spawn_blocking(move || store.create(hash, &name, created, expires))
            .await
            .map_err(|e| CreateTokenError::Task(e.to_string()))??;
        Ok((live, token))
    }
}
