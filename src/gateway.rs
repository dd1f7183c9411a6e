//! A running gateway: the start-up steps, both listeners, periodic work, and
//! an orderly shutdown. This is where the parts meet; everything below it is
//! wired here and nowhere else.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::session::AdminAuth;
use crate::admin::AdminHandler;
use crate::clock::Clock;
use crate::config::data_dir;
use crate::config::{Config, UpstreamConfig};
use crate::identify::Hops;
use crate::proxy::{Forwarder, UpstreamSetupError, Upstreams};
use crate::public::PublicHandler;
use crate::reload::{ConfigSource, LogLevelHook, Reloader};
use crate::secrets::{AdminPasswordSource, SecretError};
use crate::server::{
    bind_local, bind_reuseport, serve, serve_local, start_workers, Listening, Load, WorkerError,
    Workers,
};
use crate::state::{State, StateError};
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
    #[error(transparent)]
    Sso(#[from] crate::sso::SsoSetupError),
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
    Task(#[from] tokio::task::JoinError),
    /// Boxed: the workers' error type is the server's own.
    #[error("cannot start the public workers: {0}")]
    Workers(#[source] Box<dyn std::error::Error + Send + Sync>),
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
        let sockets = Sockets::bind(&config).await?;
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
        let (state, auth, sso) = tokio::task::spawn_blocking(move || build(config, opts)).await??;
        let (state, auth) = (Arc::new(state), Arc::new(auth));
        let reloader = Arc::new(Reloader::new(
            state.clone(),
            cert,
            upstreams.clone(),
            config_source,
            log_level,
        ));
        let acceptor = TlsAcceptor::from(tls);
        let (tx, rx) = watch::channel(false);

        // 4. The public workers, each building its handler on its own thread.
        let workers = start_public(
            sockets.public,
            &acceptor,
            &state,
            &upstreams,
            rx.clone(),
            &tx,
        )
        .await?;

        // 5. The admin listener, its local socket and the metrics listener.
        let admin = |local| {
            Arc::new(AdminHandler {
                state: state.clone(),
                auth: auth.clone(),
                local,
                public: workers.load.clone(),
                reloader: reloader.clone(),
                sso: sso.clone(),
            })
        };
        let admin_limits = &state.startup_config.admin.limits;
        let mut tasks = Vec::with_capacity(7);
        if let Some(path) = &state.startup_config.admin.socket {
            let local = match bind_local(path).await {
                Ok(l) => l,
                Err(source) => {
                    let _ = tx.send(true);
                    let path = path.clone();
                    return Err(StartError::Socket { path, source });
                }
            };
            let limits = admin_limits.clone();
            let serving = serve_local(local, path.clone(), admin(true), limits, rx.clone());
            tasks.push(tokio::spawn(serving));
        }
        // Administrators connect directly: no balancer in front.
        let ctx = Listening::new(admin(false), "admin", admin_limits.clone(), Hops::default());
        let serving = serve(sockets.admin, acceptor, Arc::new(ctx), rx.clone(), None);
        tasks.push(tokio::spawn(serving));
        if let Some(listener) = sockets.metrics {
            let scrape = {
                let state = state.clone();
                Arc::new(move || state.view.scrape())
            };
            tasks.push(tokio::spawn(crate::metrics_listener::serve(
                listener,
                state.startup_config.metrics.allowed_hosts.clone(),
                scrape,
                rx.clone(),
            )));
        }

        // 6. Background work: upstream health probes, the cluster feed,
        //    reloads (files changing, SIGHUP), webhook deliveries and the
        //    periodic sweeps.
        tasks.extend(upstreams.spawn_prober(rx.clone()));
        if let Some(cluster) = state.view.cluster.clone() {
            let follower = Follower {
                lifecycle: state.lifecycle.clone(),
                passwords: state.passwords.clone(),
                auth: auth.clone(),
            };
            cluster.spawn(Arc::new(follower), rx.clone());
        }
        tasks.push(tokio::spawn(reloader.clone().watch_files(rx.clone())));
        if let Some(sso) = sso {
            tasks.push(tokio::spawn(sso.discover(rx.clone())));
        }
        if reload_on_sighup {
            let on_sighup = crate::reload::on_sighup(reloader.clone(), rx.clone());
            tasks.push(tokio::spawn(on_sighup));
        }
        tasks.push(tokio::spawn(crate::webhooks::run(
            state.view.webhooks.clone(),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::periodic::run(state.clone(), auth, rx)));
        tracing::info!(public = %sockets.public_addr, admin = %sockets.admin_addr, metrics = ?sockets.metrics_addr, workers = workers.done.len(), "tokengate listening");
        Ok(Gateway {
            public_addr: sockets.public_addr,
            admin_addr: sockets.admin_addr,
            metrics_addr: sockets.metrics_addr,
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
    /// `public.shutdown_grace`), flushes usage data to disk, and returns
    /// once the refresh-token store is closed (a new gateway may open the
    /// same redb file at once; see `STORE_RELEASE`).
    pub async fn shutdown(self) {
        let Gateway {
            state,
            reloader,
            shutdown,
            tasks,
            workers,
            load,
            upstreams,
            public_addr: _,
            admin_addr: _,
            metrics_addr: _,
        } = self;
        // Before the listeners are told: from now on /readyz says "draining"
        // on every connection still open.
        state.draining.store(true, Ordering::Relaxed);
        let _ = shutdown.send(true);
        if let Some(cluster) = &state.view.cluster {
            // First, not after the drain: a clean shutdown ends this boot's
            // access tokens everywhere now (DPA's restart rule), not after
            // cluster.node_timeout. Requests in flight were checked already.
            cluster.retire(state.view.access.own_boot().0).await;
        }
        for w in workers {
            let _ = w.await;
        }
        for t in tasks {
            let _ = t.await;
        }
        drop((reloader, load, upstreams));
        crate::periodic::flush_usage(&state).await;
        // Events of requests that finished during the drain: into the
        // outbox, for the next start to deliver.
        state.view.webhooks.flush().await;
        let store = state.view.store.clone();
        let _ = tokio::task::spawn_blocking(move || {
            state.view.audit.flush(std::time::Duration::from_secs(5));
            if let Some(log) = &state.view.access_log {
                log.flush(std::time::Duration::from_secs(5));
            }
        })
        .await;
        // Work the drain cut short may still hold the store: a blocking
        // store or outbox call keeps running after the task awaiting it
        // ends, and a worker thread drops its connections after it says it
        // has drained. redb refuses a second open while its file is open,
        // so a restart in the same process failed now and then on a busy
        // machine (CI, session 35). Our other handles are gone by now (the
        // state went into the flush above, the reloader was dropped after
        // the tasks): wait until ours is the last, then close it here, off
        // the async threads (redb syncs its file as it closes). Not a weak
        // handle: its count reaches zero before the close has finished.
        let deadline = tokio::time::Instant::now() + STORE_RELEASE;
        while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if Arc::strong_count(&store) > 1 {
            tracing::warn!(
                bound = ?STORE_RELEASE,
                "the refresh-token store is still in use after shutdown; it closes when that work ends"
            );
        }
        let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        tracing::info!("tokengate stopped");
    }
}

/// How long `shutdown` waits for work the drain cut short to let go of
/// the store: a store call takes milliseconds, and PostgreSQL's are
/// bounded by its statement timeout.
const STORE_RELEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// The listening sockets, bound in step 1, before any data is touched.
struct Sockets {
    /// One per public worker (`SO_REUSEPORT`), not yet listening: each
    /// worker listens on its own.
    public: Vec<TcpSocket>,
    public_addr: SocketAddr,
    admin: TcpListener,
    admin_addr: SocketAddr,
    /// The unauthenticated scrape listener (`metrics.listen`), if any.
    metrics: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
}

impl Sockets {
    async fn bind(config: &Config) -> Result<Sockets, StartError> {
        let public_listen = config.public.listen;
        let public = bind_reuseport(public_listen, config.public.workers)
            .map_err(bind_error("public.listen", public_listen))?;
        let public_addr = match public.first() {
            Some(s) => s.local_addr(),
            None => Err(std::io::Error::other("no socket bound")),
        }
        .map_err(bind_error("public.listen", public_listen))?;
        let admin_listen = config.admin.listen;
        let admin = TcpListener::bind(admin_listen)
            .await
            .map_err(bind_error("admin.listen", admin_listen))?;
        let admin_addr = admin.local_addr().unwrap_or(admin_listen);
        let metrics = match config.metrics.listen {
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(listen = %addr, "metrics.listen is not a loopback address: the scrape is served there without authentication");
                }
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(bind_error("metrics.listen", addr))?;
                Some(l)
            }
            None => None,
        };
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
        Ok(Sockets {
            public,
            public_addr,
            admin,
            admin_addr,
            metrics,
            metrics_addr,
        })
    }
}

/// The error for a socket that `key` names and that cannot be bound at `addr`.
fn bind_error(key: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Bind { key, addr, source }
}

/// Step 4: the public workers on their sockets, each building its handler
/// (and its own upstream pool) on its own thread.
async fn start_public(
    sockets: Vec<TcpSocket>,
    acceptor: &TlsAcceptor,
    state: &Arc<State>,
    upstreams: &Arc<Upstreams>,
    shutdown: watch::Receiver<bool>,
    stop: &watch::Sender<bool>,
) -> Result<Workers, StartError> {
    let public = &state.startup_config.public;
    let front = Hops::of(public);
    let (state, upstreams) = (state.clone(), upstreams.clone());
    let make = move || {
        let upstream = Arc::new(Forwarder::new(upstreams.clone()));
        upstream.spawn_sweeper();
        Ok::<_, std::convert::Infallible>(PublicHandler::new(state.clone(), upstream))
    };
    let limits = public.limits.clone();
    start_workers(
        sockets,
        acceptor.clone(),
        limits,
        front,
        make,
        shutdown,
        stop,
    )
    .await
    .map_err(|e: WorkerError| StartError::Workers(Box::new(e)))
}

/// What the change feed changes on this replica: the tokens (the
/// lifecycle), and the page sessions the admin listener caches (an account
/// disabled or deleted elsewhere, a logout elsewhere).
struct Follower {
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
    passwords: Arc<crate::passwords::Passwords>,
    auth: Arc<AdminAuth>,
}

impl crate::cluster::Replica for Follower {
    fn created(&self, hash: crate::store::RefreshHash, rec: &crate::store::RefreshRecord) {
        self.lifecycle.created(hash, rec);
    }
    fn updated(&self, hash: crate::store::RefreshHash, rec: &crate::store::RefreshRecord, at: i64) {
        self.lifecycle.updated(hash, rec, at);
    }
    fn deleted(&self, ids: &[u64]) {
        self.lifecycle.deleted(ids);
    }
    fn ids(&self) -> Vec<u64> {
        self.lifecycle.ids()
    }
    fn holds(&self, id: u64) -> bool {
        self.lifecycle.holds(id)
    }
    fn account(&self, name: &str, rec: Option<crate::store::AccountRecord>, at: i64) -> bool {
        let ended = rec.as_ref().is_none_or(|r| r.disabled);
        // Skipped: a later version is mapped already. If the account is
        // disabled or gone in it, requests are refused from the registry,
        // and the change row of that version ends the sessions when the
        // feed reads it (or ended them here when it was our own change).
        let applied = self.lifecycle.account(name, rec, at);
        if applied && ended {
            self.auth.sessions.end_user(name);
            self.passwords.forget(name);
        }
        applied
    }
    fn all_accounts(&self, all: Vec<crate::store::AccountRecord>, at: i64) {
        self.lifecycle.all_accounts(all, at);
    }
    fn session_ended(&self, fingerprint: [u8; 32]) {
        self.auth.sessions.remove_fingerprint(&fingerprint);
    }
}

/// The blocking start-up steps, in order.
type Built = (State, AdminAuth, Option<Arc<crate::sso::Sso>>);

fn build(config: Config, opts: StartOptions) -> Result<Built, StartError> {
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
    let passwords =
        crate::passwords::Passwords::new(crate::secrets::resolve_admin(source, &dir)?, &secret);
    let auth = AdminAuth::new(config.admin.session_ttl);
    // c. Single sign-on's client (its flow cookie keyed from the secret).
    let sso = crate::sso::Sso::build(config.admin.oidc.as_ref(), &secret, opts.clock.clone())?;
    // d. Refresh tokens, the boot nonce, the audit log.
    let state = State::build(config, opts.clock, &secret, passwords)?;
    Ok((state, auth, sso))
}
