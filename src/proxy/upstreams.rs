//! The servers of the upstream API, shared by every public worker: where
//! each one is, whether it is in or out (passive and active health), and the
//! settings that can change while running (`reload`).
//!
//! Health is shared so that a server one worker found down is avoided by
//! all; reading it costs one relaxed atomic load per candidate server (the
//! clock is read only for a server that is out). Connections are not shared:
//! each worker keeps its own pools (`super::Forwarder`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::Uri;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use super::UpstreamSetupError;
use crate::clock::Clock;
use crate::config::{base_path, Balance, UpstreamConfig};
use crate::tls::{client_config, ClientTlsError, Trust};

/// `down_until` of a server that stays out until a health probe answers.
const UNTIL_PROBED: u64 = u64::MAX;

/// Every server of the API, and what all workers share about them.
pub(crate) struct Upstreams {
    pub(super) servers: Box<[Server]>,
    /// Live settings: one atomic load per request; `reload` swaps them.
    settings: ArcSwap<Settings>,
    pub(super) balance: Balance,
    /// Read before the settings, on every request: kept out of them.
    pub(super) identity_headers: bool,
    /// The servers' common path, without a trailing slash, prefixed to every call.
    pub(super) base_path: String,
    pub(super) health_check: Option<PathAndQuery>,
    pub(super) health_interval: Duration,
    unhealthy_for: Duration,
    pub(super) pool_max_idle: usize,
    pub(super) pool_idle_timeout: Duration,
    /// Tests move it to end an out-period without waiting.
    clock: Clock,
    /// What `down_until` counts milliseconds from.
    epoch: Instant,
    /// Workers made so far: each starts its turn at another server, so that
    /// workers do not all send their first request to the first server.
    workers: AtomicUsize,
    /// The list the pools were made for: changing it needs a restart.
    urls: Vec<Uri>,
}

/// One server of the API.
pub(super) struct Server {
    /// For logs (never carries credentials: validation refuses them).
    pub(super) url: Uri,
    /// Host as DNS or an IP literal (IPv6 without brackets).
    pub(super) host: String,
    pub(super) port: u16,
    /// The TLS name to verify, for an `https` server.
    pub(super) tls_name: Option<ServerName<'static>>,
    /// This server's own authority, sent as `Host`.
    pub(super) host_header: HeaderValue,
    /// Milliseconds after `epoch` until which this server is out; 0: in;
    /// [`UNTIL_PROBED`]: out until a health probe answers.
    down_until: AtomicU64,
}

/// The upstream settings that `reload` can change while running; new
/// connections take the TLS set-up and connect timeout current at the time.
pub(crate) struct Settings {
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    /// `Some` for `https` servers.
    pub(crate) tls: Option<TlsConnector>,
}

impl Upstreams {
    pub(crate) fn new(cfg: &UpstreamConfig, clock: Clock) -> Result<Upstreams, UpstreamSetupError> {
        let servers = cfg
            .urls
            .iter()
            .map(Server::new)
            .collect::<Result<Box<[Server]>, _>>()?;
        let base_path = cfg.urls.first().map(base_path).unwrap_or_default();
        let epoch = clock.now();
        Ok(Upstreams {
            servers,
            settings: ArcSwap::from_pointee(Settings::new(cfg)?),
            balance: cfg.balance,
            identity_headers: cfg.identity_headers,
            base_path,
            health_check: cfg.health_check.clone(),
            health_interval: cfg.health_interval,
            unhealthy_for: cfg.unhealthy_for,
            pool_max_idle: cfg.pool_max_idle_per_host,
            pool_idle_timeout: cfg.pool_idle_timeout,
            clock,
            epoch,
            workers: AtomicUsize::new(0),
            urls: cfg.urls.clone(),
        })
    }

    /// Applies the live part of `cfg` (extra headers, timeouts, the TLS
    /// trust for new connections) for every worker at once. On an error
    /// nothing changes. The server list, the balancing, the identity
    /// headers and the health and pool settings need a restart (logged when
    /// they differ).
    pub(crate) fn reload(&self, cfg: &UpstreamConfig) -> Result<(), UpstreamSetupError> {
        let settings = Settings::new(cfg)?;
        self.settings.store(Arc::new(settings));
        let restart_only = cfg.urls != self.urls
            || cfg.balance != self.balance
            || cfg.identity_headers != self.identity_headers
            || cfg.health_check != self.health_check
            || cfg.health_interval != self.health_interval
            || cfg.unhealthy_for != self.unhealthy_for
            || cfg.pool_max_idle_per_host != self.pool_max_idle
            || cfg.pool_idle_timeout != self.pool_idle_timeout;
        if restart_only {
            tracing::warn!(
                "upstream.url(s), balance, identity_headers, health and pool settings changed: they take effect at the next restart"
            );
        }
        Ok(())
    }

    /// The current live settings (one atomic load; hold the guard briefly,
    /// never across an `.await`).
    pub(crate) fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// Where the next worker starts its turn.
    pub(super) fn next_worker(&self) -> usize {
        self.workers.fetch_add(1, Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        let since = self.clock.now().saturating_duration_since(self.epoch);
        // +1: 0 means "in".
        u64::try_from(since.as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Whether server `i` takes requests now.
    #[inline]
    pub(super) fn is_in(&self, i: usize) -> bool {
        match self.servers.get(i) {
            Some(s) => match s.down_until.load(Ordering::Relaxed) {
                0 => true,
                UNTIL_PROBED => false,
                until => self.now_ms() >= until,
            },
            None => false,
        }
    }

    /// True while every server is out: what `/readyz` calls "upstream unreachable".
    pub(crate) fn all_out(&self) -> bool {
        (0..self.servers.len()).all(|i| !self.is_in(i))
    }

    /// Passive health: server `i` failed to connect. It is out for
    /// `upstream.unhealthy_for`, or with `upstream.health_check` until a
    /// probe answers.
    pub(super) fn mark_down(&self, i: usize, why: &dyn std::fmt::Display) {
        let Some(s) = self.servers.get(i) else { return };
        let until = if self.health_check.is_some() {
            UNTIL_PROBED
        } else {
            let ms = u64::try_from(self.unhealthy_for.as_millis()).unwrap_or(u64::MAX);
            self.now_ms().saturating_add(ms).min(UNTIL_PROBED - 1)
        };
        let was_in = self.is_in(i);
        s.down_until.store(until, Ordering::Relaxed);
        if was_in {
            tracing::warn!(server = %s.url, error = %why, "upstream server taken out");
        }
    }

    /// Server `i` answered: in again. Without active health checks a
    /// request's answer counts (a server tried again after its out-period,
    /// or while every server was out); with them only probes do, so the two
    /// never disagree back and forth.
    #[inline]
    pub(super) fn answered(&self, i: usize) {
        if self.health_check.is_none() {
            self.mark_up(i);
        }
    }

    pub(super) fn mark_up(&self, i: usize) {
        if let Some(s) = self.servers.get(i) {
            if s.down_until.load(Ordering::Relaxed) != 0 {
                s.down_until.store(0, Ordering::Relaxed);
                tracing::info!(server = %s.url, "upstream server back in");
            }
        }
    }
}

impl Server {
    fn new(url: &Uri) -> Result<Server, UpstreamSetupError> {
        let authority = url
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamSetupError::NoHost {
                url: url.to_string(),
            })?;
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|source| {
            UpstreamSetupError::HostHeader {
                url: url.to_string(),
                source,
            }
        })?;
        // `Authority::host` keeps an IPv6 literal's brackets; DNS and SNI want it bare.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = url.scheme() != Some(&Scheme::HTTP);
        let tls_name = if https {
            Some(ServerName::try_from(host.clone()).map_err(|source| {
                UpstreamSetupError::ServerName {
                    url: url.to_string(),
                    source,
                }
            })?)
        } else {
            None
        };
        Ok(Server {
            url: url.clone(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            tls_name,
            host_header,
            down_until: AtomicU64::new(0),
        })
    }
}

impl Settings {
    fn new(cfg: &UpstreamConfig) -> Result<Settings, UpstreamSetupError> {
        let https = cfg.urls.iter().any(|u| u.scheme() != Some(&Scheme::HTTP));
        let tls = if https {
            Some(TlsConnector::from(Arc::new(tls_config(cfg)?)))
        } else {
            None
        };
        Ok(Settings {
            headers: cfg.headers.clone(),
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            tls,
        })
    }
}

/// The rustls client set-up for `https` servers: the configured CA file,
/// the system roots, or (explicitly, loudly) no verification. The upstream
/// leg speaks HTTP/1.1 only.
fn tls_config(cfg: &UpstreamConfig) -> Result<ClientConfig, UpstreamSetupError> {
    let trust = if cfg.insecure_skip_verify {
        tracing::warn!(
            urls = ?cfg.urls,
            "upstream.insecure_skip_verify is on: the upstream's certificate is NOT verified; use upstream.ca_file instead"
        );
        Trust::Insecure
    } else if let Some(path) = &cfg.ca_file {
        Trust::CaFile(path)
    } else {
        Trust::System { also: None }
    };
    client_config(trust, &[b"http/1.1"]).map_err(|e| match e {
        ClientTlsError::CaFile { path, detail } => UpstreamSetupError::CaFile {
            path: path.display().to_string(),
            detail,
        },
        ClientTlsError::NoRoots => UpstreamSetupError::NoRoots,
        other => UpstreamSetupError::Client(other),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn config(urls: &[&str]) -> UpstreamConfig {
        UpstreamConfig {
            urls: urls.iter().map(|u| u.parse().unwrap()).collect(),
            ca_file: None,
            insecure_skip_verify: true,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            headers: Vec::new(),
            identity_headers: false,
            balance: Balance::RoundRobin,
            health_check: None,
            health_interval: Duration::from_secs(5),
            unhealthy_for: Duration::from_secs(10),
        }
    }

    #[test]
    fn servers_come_from_the_urls() {
        let up = Upstreams::new(&config(&["http://[::1]:8080/api/"]), Clock::new()).unwrap();
        let s = &up.servers[0];
        assert_eq!(
            (s.host.as_str(), s.port, s.tls_name.is_some()),
            ("::1", 8080, false)
        );
        assert_eq!(s.host_header, "[::1]:8080");
        assert_eq!(up.base_path, "/api");
        let up = Upstreams::new(
            &config(&["https://api.example", "https://api-2.example:8443"]),
            Clock::new(),
        )
        .unwrap();
        let ports: Vec<_> = up
            .servers
            .iter()
            .map(|s| (s.host.as_str(), s.port))
            .collect();
        assert_eq!(ports, [("api.example", 443), ("api-2.example", 8443)]);
        assert_eq!(up.servers[1].host_header, "api-2.example:8443");
        assert!(up.settings().tls.is_some());
        let up = Upstreams::new(&config(&["http://10.0.0.5"]), Clock::new()).unwrap();
        assert_eq!(up.servers[0].port, 80);
        assert!(up.settings().tls.is_none());
    }

    #[test]
    fn passive_health_takes_a_server_out_for_unhealthy_for() {
        let clock = Clock::new();
        let up = Upstreams::new(&config(&["http://a:1", "http://b:1"]), clock.clone()).unwrap();
        up.mark_down(0, &"refused");
        assert!(!up.is_in(0) && up.is_in(1) && !up.all_out());
        clock.advance(Duration::from_secs(9));
        assert!(!up.is_in(0));
        clock.advance(Duration::from_secs(2));
        assert!(up.is_in(0), "tried again after the out-period");
        up.mark_down(0, &"refused");
        up.mark_down(1, &"refused");
        assert!(up.all_out());
        up.answered(1);
        assert!(up.is_in(1) && !up.all_out());
    }

    #[test]
    fn with_active_health_only_a_probe_brings_a_server_back() {
        let clock = Clock::new();
        let mut cfg = config(&["http://a:1"]);
        cfg.health_check = Some(PathAndQuery::from_static("/health"));
        let up = Upstreams::new(&cfg, clock.clone()).unwrap();
        up.mark_down(0, &"refused");
        clock.advance(Duration::from_secs(3600));
        up.answered(0);
        assert!(up.all_out());
        up.mark_up(0);
        assert!(up.is_in(0));
    }

    #[test]
    fn reload_swaps_the_live_settings_for_every_worker_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(&["https://api.example"]);
        let up = Upstreams::new(&cfg, Clock::new()).unwrap();
        let before = up.settings().tls.clone().map(|c| Arc::as_ptr(c.config()));
        cfg.headers = vec![(
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("new"),
        )];
        cfg.connect_timeout = Duration::from_secs(7);
        cfg.response_timeout = Duration::from_secs(9);
        up.reload(&cfg).unwrap();
        let s = up.settings();
        assert_eq!(s.headers.len(), 1);
        assert_eq!(
            (s.connect_timeout, s.response_timeout),
            (Duration::from_secs(7), Duration::from_secs(9))
        );
        // A new TLS client configuration, for new connections.
        assert_ne!(s.tls.clone().map(|c| Arc::as_ptr(c.config())), before);
        drop(s);

        // A CA file that is not PEM: an error, and the settings stay.
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        cfg.insecure_skip_verify = false;
        cfg.ca_file = Some(bad);
        cfg.response_timeout = Duration::from_secs(1);
        assert!(matches!(
            up.reload(&cfg),
            Err(UpstreamSetupError::CaFile { .. })
        ));
        assert_eq!(up.settings().response_timeout, Duration::from_secs(9));
    }
}
