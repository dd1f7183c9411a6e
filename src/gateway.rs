//! A running gateway: the start-up steps, both listeners, periodic work, and
//! an orderly shutdown. This is where the parts meet; everything below it is
//! wired here and nowhere else.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::auth::AdminAuth;
use crate::admin::AdminHandler;
use crate::clock::Clock;
use crate::config::{Config, UpstreamConfig};
use crate::identify::Hops;
use crate::proxy::{Upstream, UpstreamSetupError, Upstreams};
use crate::public::PublicHandler;
use crate::reload::{ConfigSource, LogLevelHook, Reloader};
use crate::secrets::{AdminPasswordSource, SecretError};
use crate::server::{
    bind_local, bind_reuseport, serve, serve_local, serve_plain, start_workers, ClientSlots,
    Listening, Load, PlainLimits,
};
use crate::state::{data_dir, State, StateError};
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve the admin socket {} (admin.socket): {source}", path.display())]
    Socket {
        path: std::path::PathBuf,
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
    /// Where a reload reads the configuration again. Unset: the start-up
    /// configuration, so a reload re-reads only the certificate files.
    pub config_source: Option<ConfigSource>,
    /// How a reload applies `log.level` (the binary owns the subscriber).
    pub log_level: Option<LogLevelHook>,
    /// Reload on SIGHUP. The binary's choice: a signal reaches the whole
    /// process, and tests run many gateways in one.
    pub reload_on_sighup: bool,
}

/// A running gateway: both listeners plus the background tasks.
pub struct Gateway {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The unauthenticated scrape listener (`metrics.listen`), if any.
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    reloader: Arc<Reloader>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// One per public worker thread; each fires when its worker has drained.
    workers: Vec<oneshot::Receiver<()>>,
    load: Load,
    /// The upstream servers all workers share: `reload` reaches every worker through it.
    upstreams: Arc<Upstreams>,
}

impl Gateway {
    /// Builds the state, binds both listeners (port 0 allowed), and starts serving.
    ///
    /// The public listener runs `public.workers` workers (`server::workers`),
    /// each with its own upstream pool; the admin listener and periodic work
    /// run on the caller's runtime.
    pub async fn start(config: Config, mut opts: StartOptions) -> Result<Gateway, StartError> {
        // 1. TLS and the sockets: fail before touching any data if either is wrong.
        let (tls, cert) = crate::tls::server_config(&config.tls)?;
        let public_listen = config.public.listen;
        let public = bind_reuseport(public_listen, config.public.workers).map_err(|source| {
            StartError::Bind {
                key: "public.listen",
                addr: public_listen,
                source,
            }
        })?;
        let admin_listen = config.admin.listen;
        let admin = TcpListener::bind(admin_listen)
            .await
            .map_err(|source| StartError::Bind {
                key: "admin.listen",
                addr: admin_listen,
                source,
            })?;
        let metrics = match config.metrics.listen {
            Some(addr) => Some({
                if !addr.ip().is_loopback() {
                    tracing::warn!(listen = %addr, "metrics.listen is not a loopback address: the scrape is served there without authentication");
                }
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind {
                        key: "metrics.listen",
                        addr,
                        source,
                    })?
            }),
            None => None,
        };
        // 2. The upstream servers, their health and live settings, shared by
        //    every worker (each worker then builds its own pools for them).
        let upstreams = Arc::new(Upstreams::new(&config.upstream, opts.clock.clone())?);
        let config_source = opts.config_source.take().unwrap_or_else(|| {
            let started = config.clone();
            Arc::new(move || Ok(started.clone()))
        });
        let log_level = opts.log_level.take();
        let reload_on_sighup = opts.reload_on_sighup;
        // 3. Secret, admin credential, store and audit log: blocking work
        //    (files, redb, maybe an argon2 hash), kept off the async workers.
        let (state, auth) = tokio::task::spawn_blocking(move || build(config, opts))
            .await
            .map_err(|e| StartError::Task(e.to_string()))??;
        let (state, auth) = (Arc::new(state), Arc::new(auth));
        let reloader = Arc::new(Reloader::new(
            state.clone(),
            cert,
            upstreams.clone(),
            config_source,
            log_level,
        ));
        let acceptor = TlsAcceptor::from(tls);
        let public_addr = public[0].local_addr().map_err(|source| StartError::Bind {
            key: "public.listen",
            addr: public_listen,
            source,
        })?;
        let admin_addr = admin.local_addr().unwrap_or(admin_listen);
        let (tx, rx) = watch::channel(false);

        // 4. The public workers, each building its handler on its own thread.
        let workers = {
            let state = state.clone();
            let upstreams = upstreams.clone();
            start_workers(
                public,
                acceptor.clone(),
                state.config.public.limits.clone(),
                Hops {
                    proxies: state.config.public.trusted_proxies.clone().into(),
                    forwarders: state.config.public.trusted_forwarders.clone().into(),
                    proxy_protocol: state.config.public.proxy_protocol,
                },
                move || {
                    let upstream = Arc::new(Upstream::new(upstreams.clone()));
                    upstream.spawn_sweeper();
                    Ok::<_, std::convert::Infallible>(PublicHandler::new(state.clone(), upstream))
                },
                rx.clone(),
                &tx,
            )
            .await
            .map_err(StartError::Task)?
        };

        // 5. The admin listener, its local socket, and periodic work.
        let admin_limits = state.config.admin.limits.clone();
        let mut tasks = Vec::with_capacity(4);
        tasks.extend(upstreams.spawn_prober(rx.clone()));
        if let Some(path) = state.config.admin.socket.clone() {
            let local = match bind_local(&path).await {
                Ok(l) => l,
                Err(source) => {
                    let _ = tx.send(true);
                    return Err(StartError::Socket { path, source });
                }
            };
            let handler = Arc::new(AdminHandler {
                state: state.clone(),
                auth: auth.clone(),
                local: true,
                public: workers.load.clone(),
                reloader: reloader.clone(),
            });
            tasks.push(tokio::spawn(serve_local(
                local,
                path,
                handler,
                admin_limits.clone(),
                rx.clone(),
            )));
        }
        let admin_ctx = Arc::new(Listening {
            handler: Arc::new(AdminHandler {
                state: state.clone(),
                auth: auth.clone(),
                local: false,
                public: workers.load.clone(),
                reloader: reloader.clone(),
            }),
            name: "admin",
            permits: Arc::new(Semaphore::new(admin_limits.max_connections)),
            clients: ClientSlots::new(
                admin_limits.max_connections_per_client,
                admin_limits.max_streams_per_client,
                admin_limits.max_connections,
            ),
            // Administrators connect directly.
            hops: Hops::default(),
            limits: admin_limits,
        });
        tasks.push(tokio::spawn(serve(
            admin,
            acceptor,
            admin_ctx,
            rx.clone(),
            None,
        )));
        let metrics_addr = match metrics {
            Some(l) => {
                let addr = l.local_addr().ok();
                let state = state.clone();
                tasks.push(tokio::spawn(serve_plain(
                    "metrics",
                    l,
                    metrics_limits(),
                    move |req| crate::metrics::listen::answer(&state, req),
                    rx.clone(),
                )));
                addr
            }
            None => None,
        };
        crate::cluster::Cluster::spawn(state.clone(), rx.clone());
        tasks.push(tokio::spawn(reloader.clone().watch_files(rx.clone())));
        if reload_on_sighup {
            tasks.push(tokio::spawn(crate::reload::on_sighup(
                reloader.clone(),
                rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(crate::periodic::run(state.clone(), auth, rx)));
        tracing::info!(public = %public_addr, admin = %admin_addr, metrics = ?metrics_addr, workers = workers.done.len(), "tokengate listening");
        Ok(Gateway {
            public_addr,
            admin_addr,
            metrics_addr,
            state,
            reloader,
            shutdown: tx,
            tasks,
            workers: workers.done,
            load: workers.load,
            upstreams,
        })
    }

    /// What SIGHUP, `POST /api/reload` and the certificate watch use.
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Open public connections on each worker, index = worker number (the
    /// balancing in `server::balance` keeps them within one of each other).
    pub fn connections_per_worker(&self) -> Vec<usize> {
        self.load.per_worker()
    }

    /// Applies the live upstream settings of `cfg` (extra headers, timeouts,
    /// the CA for new connections) to every worker at once; on an error
    /// nothing changes. The server list, balancing, identity headers,
    /// health and pool settings take effect at the next restart.
    pub fn reload_upstream(&self, cfg: &UpstreamConfig) -> Result<(), UpstreamSetupError> {
        self.upstreams.reload(cfg)
    }

    /// Stops accepting, drains in-flight requests (bounded by
    /// `public.shutdown_grace`), and flushes usage data to disk.
    pub async fn shutdown(self) {
        // Before the listeners are told: from now on /readyz says "draining"
        // on every connection still open.
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        if let Some(cluster) = &self.state.cluster {
            // First, not after the drain: a clean shutdown ends this boot's
            // access tokens everywhere now (DPA's restart rule), not after
            // cluster.node_timeout. Requests in flight were checked already.
            cluster.retire(self.state.access.own_boot().0).await;
        }
        for w in self.workers {
            let _ = w.await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
        crate::periodic::flush_usage(&self.state).await;
        let state = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            state.audit.flush(std::time::Duration::from_secs(5));
            if let Some(log) = &state.access_log {
                log.flush(std::time::Duration::from_secs(5));
            }
        })
        .await;
        tracing::info!("tokengate stopped");
    }
}

/// The metrics listener's fixed limits (`metrics::listen` says why each).
fn metrics_limits() -> PlainLimits {
    use crate::metrics::listen as m;
    PlainLimits {
        max_connections: m::MAX_CONNECTIONS,
        max_connections_per_client: m::MAX_CONNECTIONS_PER_CLIENT,
        header_read_timeout: m::HEADER_READ_TIMEOUT,
        connection_timeout: m::CONNECTION_TIMEOUT,
        max_buf_size: m::MAX_REQUEST_HEAD,
    }
}

/// The blocking start-up steps, in order.
fn build(config: Config, opts: StartOptions) -> Result<(State, AdminAuth), StartError> {
    let dir = data_dir(&config.storage.path);
    // a. The data directory (admin hash and socket live there, whichever
    //    backend and wherever storage.secret_file points): created 0700 if
    //    missing, refused if group or others can write it. Then the server
    //    secret (its directory checked the same way): every refresh-token
    //    hash depends on it.
    crate::secrets::private_data_dir(&dir).map_err(SecretError::from)?;
    let secret = crate::secrets::load_or_create_secret(&config.storage.secret_file)?;
    // b. The admin credential (environment, file, or generated once).
    let source = match (
        opts.admin_password.filter(|p| !p.is_empty()),
        &config.admin.password_hash,
    ) {
        (Some(p), _) => AdminPasswordSource::Environment(p),
        (None, Some(h)) => AdminPasswordSource::ConfigHash(h.clone()),
        (None, None) => AdminPasswordSource::DataDir,
    };
    let auth = AdminAuth::new(
        crate::secrets::resolve_admin(source, &dir)?,
        &secret,
        config.admin.session_ttl,
    );
    // c. Refresh tokens, the boot nonce, the audit log.
    let state = State::build(config, opts.clock, &secret)?;
    Ok((state, auth))
}
