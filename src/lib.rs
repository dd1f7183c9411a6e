//! tokengate: a TLS-terminating reverse proxy that adds DPA-style refresh and
//! access tokens in front of an existing HTTP API.
//!
//! - `config`: defaults → TOML file → environment, validated into `Config`.
//! - `state`: the one `Arc<State>` built at start-up.
//! - `server`: accept loops, TLS, limits, graceful shutdown.
//! - `http`: routing on the public listener, the error → response mapping.
//! - `tokens`: token formats, the live access-token map, the exchange.
//! - `store`: refresh tokens in redb and their in-memory mirror.
//! - `proxy`: the upstream client and header rewriting.
//! - `admin`: the admin listener's authentication and token API.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dev;
pub mod http;
pub mod proxy;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use config::Config;
pub use state::{StartError, StartOptions, State};

/// A running gateway: both listeners plus the background tasks.
pub struct Gateway {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Builds the state, binds both listeners (port 0 allowed), and starts serving.
    pub async fn start(config: Config, opts: StartOptions) -> Result<Gateway, StartError> {
        let tls = server::tls::server_config(&config.tls)?;
        let public = bind(config.public.listen, "public.listen").await?;
        let admin = bind(config.admin_listen, "admin.listen").await?;
        // Building the state reads files, opens redb and may hash a password:
        // blocking work, kept off the async workers.
        let state = tokio::task::spawn_blocking(move || State::build(config, opts))
            .await
            .map_err(|e| StartError::Task(e.to_string()))??;
        let state = Arc::new(state);
        Ok(Gateway::run(public, admin, TlsAcceptor::from(tls), state))
    }

    /// Serves already-bound listeners with a built state.
    pub fn run(
        public: TcpListener,
        admin: TcpListener,
        acceptor: TlsAcceptor,
        state: Arc<State>,
    ) -> Gateway {
        let public_addr = public
            .local_addr()
            .unwrap_or_else(|_| state.config.public.listen);
        let admin_addr = admin
            .local_addr()
            .unwrap_or_else(|_| state.config.admin_listen);
        let (tx, rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(server::serve(
                public,
                acceptor.clone(),
                state.clone(),
                http::Listener::Public,
                rx.clone(),
            )),
            tokio::spawn(server::serve(
                admin,
                acceptor,
                state.clone(),
                http::Listener::Admin,
                rx.clone(),
            )),
            tokio::spawn(housekeeping(state.clone(), rx)),
        ];
        tracing::info!(public = %public_addr, admin = %admin_addr, "tokengate listening");
        Gateway {
            public_addr,
            admin_addr,
            state,
            shutdown: tx,
            tasks,
        }
    }

    /// Stops accepting, drains in-flight requests (bounded by
    /// `public.shutdown_grace`), and flushes usage data to disk.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        flush_usage(&self.state).await;
        let state = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            state.audit.flush(std::time::Duration::from_secs(5))
        })
        .await;
        tracing::info!("tokengate stopped");
    }
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}

/// Sweeps dead access tokens and flushes refresh-token usage, each on its own
/// interval, until shutdown.
async fn housekeeping(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let mut sweep = tokio::time::interval(state.config.sweep_interval);
    let mut flush = tokio::time::interval(state.config.usage_flush_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                let now = state.clock.now();
                let removed = state.access.sweep(now, state.clock.unix());
                state.admin.sessions.sweep(now);
                state.admin.throttle.sweep(now);
                if removed > 0 {
                    tracing::debug!(removed, live = state.access.len(), "swept access tokens");
                }
            }
            _ = flush.tick() => flush_usage(&state).await,
            _ = server::stopped(&mut shutdown) => return,
        }
    }
}

async fn flush_usage(state: &Arc<State>) {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.flush_usage()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::debug!(tokens = n, "flushed refresh-token usage"),
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing refresh-token usage failed; will retry"),
        Err(e) => tracing::warn!(error = %e, "usage flush task failed"),
    }
}
