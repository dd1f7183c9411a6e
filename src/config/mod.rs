//! Configuration: built-in defaults, then the TOML file, then the environment.
//!
//! - `file`: the file format (`FileConfig`, serde), every section denying
//!   unknown keys.
//! - `validate`: turns it into the runtime `Config`; everything that can be
//!   wrong with a value is found there, at start-up, and every error names
//!   the key (or environment variable) at fault.
//! - `storage`: the `[storage]` section (backend, server secret, PostgreSQL)
//!   and the data directory.
//! - `upstream`: the `[upstream]` section (servers, base path, headers, health).
//! - `oidc`: the `[admin.oidc]` section (single sign-on), its client secret read.
//! - `webhooks`: the `[[webhooks]]` entries (their secrets read), and the
//!   webhook event types.
//! - `summary`: the effective settings for `check-config`, secrets masked.
//! - `check`: the checks of single values every section shares.
//! - `mask`: database URLs with their passwords hidden.
//! - `error`: `ConfigError`, and the file format's errors put in words that
//!   name the key (with a did-you-mean for a misspelt one).
//!
//! Its files in layers (a file uses only rows below its own; checked by
//! `tests/layers.rs`, like the crate's table in `lib.rs`):
//!
//! | row | files |
//! |---|---|
//! | 1 | `validate` |
//! | 2 | `storage`, `upstream`, `summary`, `oidc`, `webhooks` |
//! | 3 | `check` |
//! | 4 | `file` |
//! | 5 | `mask`, `error` |

mod check;
mod error;
mod file;
mod mask;
mod oidc;
mod storage;
mod summary;
mod upstream;
mod validate;
mod webhooks;

pub use error::ConfigError;
pub use file::*;
pub use mask::{mask_url, url_origin};
pub use oidc::{OidcConfig, CLIENT_SECRET_ENV};
pub use storage::{data_dir, PostgresConfig, SslMode, StorageBackend, StorageConfig};
pub use upstream::base_path;
pub use webhooks::{EventType, WebhookConfig, WebhookSecret};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use http::header::{HeaderName, HeaderValue};

use crate::net::Cidr;

/// Where the configuration file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/tokengate.toml";
/// Default certificate and key, generated self-signed at first start when absent.
pub const DEFAULT_CERT_PATH: &str = "certs/tokengate.crt";
pub const DEFAULT_KEY_PATH: &str = "certs/tokengate.key";

/// Environment variables with the `TOKENGATE_` prefix that are not configuration
/// keys. Every other `TOKENGATE_…` variable must name a key, so a typo fails loudly.
const NON_CONFIG_ENV: &[&str] = &[
    "ADMIN_PASSWORD",
    // Read by `Config::load` itself (see `OidcSection::client_secret`).
    "ADMIN__OIDC__CLIENT_SECRET",
    "ADMIN_URL",
    "ADMIN_SOCKET",
    "CONFIG",
    "LOG",
];

/// The admin socket's file name in the data directory, by default.
pub const ADMIN_SOCKET_FILE: &str = "admin.sock";

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub public: PublicConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub storage: StorageConfig,
    pub tls: TlsConfig,
    pub tokens: TokensConfig,
    pub audit: AuditDestination,
    pub cluster: ClusterConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// `[[webhooks]]`: where lifecycle events are sent (restart-only).
    pub webhooks: Vec<WebhookConfig>,
    /// What it was validated from, for `summary`.
    source: FileConfig,
}

/// How one listener treats its connections. Each listener has its own, from
/// its own section, so a flood on one cannot use up the other's slots.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Each connection holds a slot; at the cap, accepting pauses and new
    /// clients wait in the kernel's backlog instead of exhausting memory.
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    /// HTTP/1.1: the whole request head must arrive within this.
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub body_read_timeout: Duration,
    pub max_connection_age: Duration,
    /// Open connections one client (an address; IPv6: a /64) may hold.
    pub max_connections_per_client: usize,
    /// HTTP/2 requests in progress at once per client, across all its
    /// connections (HTTP/1.1 carries one per connection, so
    /// `max_connections_per_client` bounds those).
    pub max_streams_per_client: usize,
    /// A connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// A response the client takes no data of for this long is dropped.
    pub send_timeout: Duration,
    /// How long shutdown waits for in-flight requests (`public.shutdown_grace`, both listeners).
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct PublicConfig {
    pub listen: SocketAddr,
    /// Accept loops, each on its own thread with its own upstream pool.
    pub workers: usize,
    pub limits: ListenerLimits,
    pub token_body_limit: usize,
    /// TCP balancers whose PROXY header is believed: with `proxy_protocol`
    /// on, the only peers that may connect (never empty then; empty otherwise).
    pub trusted_proxies: Vec<Cidr>,
    /// HTTP balancers (terminating TLS) whose `X-Forwarded-For` is believed
    /// (empty with `proxy_protocol` on: the PROXY header names the client).
    pub trusted_forwarders: Vec<Cidr>,
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
    /// Failed authentications (guesses only) per client address and minute
    /// before its requests answer 429; 0 turns the throttle off.
    pub auth_failures_per_minute: u32,
    /// Path parameters (`;name=value`, last segment only) let through to
    /// the upstream, by name; empty: a `;` in a path is refused.
    pub path_parameters: Vec<String>,
    /// The authorization server metadata's `issuer` (`public.issuer`):
    /// `None` names the gateway by the request's `Host`.
    pub issuer: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// An argon2 PHC string from the file; `None` means: environment or generated.
    pub password_hash: Option<String>,
    /// Lifetime of a web-page login session.
    pub session_ttl: Duration,
    pub limits: ListenerLimits,
    /// The admin API's Unix socket, if any.
    pub socket: Option<PathBuf>,
    /// `[admin.oidc]`: single sign-on for the page, if configured.
    pub oidc: Option<OidcConfig>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The servers of the one API (`upstream.urls`, or `upstream.url` alone):
    /// at least one, all with the same scheme and path. Restart-only.
    pub urls: Vec<http::Uri>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub identity_headers: bool,
    pub balance: Balance,
    /// Probed with GET on every server every `health_interval`; `None`:
    /// passive health only.
    pub health_check: Option<http::uri::PathAndQuery>,
    pub health_interval: Duration,
    pub unhealthy_for: Duration,
}

/// How requests are spread over `upstream.urls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each worker takes the servers in turn.
    RoundRobin,
    /// Each worker picks the server with the fewest of its requests in progress.
    LeastRequests,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Neither path was configured: generate a self-signed pair if absent.
    pub generate_if_missing: bool,
    /// How often the files are checked for a change (None: never).
    pub watch_interval: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub sweep_interval: Duration,
    /// Live access tokens per refresh token; minting one more drops the oldest.
    pub max_access_per_refresh: usize,
    /// No token may be given an expiry further than this from now, nor
    /// none (`None`: no such policy).
    pub max_lifetime: Option<Duration>,
    /// Tokens not exchanged for this long are deleted by the sweep
    /// (`None`: never).
    pub revoke_unused_after: Option<Duration>,
}

/// `[cluster]`: how replicas sharing PostgreSQL judge each other.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This replica's name (logs, audit lines, the replica registry).
    pub name: String,
    pub node_timeout: Duration,
    pub max_staleness: Duration,
}

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// The unauthenticated scrape listener, if any.
    pub listen: Option<SocketAddr>,
    /// Names (lowercase, no port) that listener answers to besides IP
    /// literals and `localhost`.
    pub allowed_hosts: Vec<String>,
}

/// `log.format`: how the process log and the access log are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive, checked at load.
    pub level: String,
    /// Where access lines go; `Off` by default.
    pub access: AuditDestination,
}

/// Where audit lines go (`audit.destination`), and access lines (`log.access`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditDestination {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

impl AuditDestination {
    fn parse(s: &str) -> AuditDestination {
        match s.trim() {
            "" | "off" | "none" => AuditDestination::Off,
            "stdout" | "-" => AuditDestination::Stdout,
            "stderr" => AuditDestination::Stderr,
            path => AuditDestination::File(PathBuf::from(path)),
        }
    }
}

impl Config {
    /// Loads defaults → `path` (if it exists; an explicitly named file must) → environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        let mut fig = Figment::from(Serialized::defaults(FileConfig::default()));
        match path {
            Some(p) => {
                if let Err(source) = std::fs::metadata(p) {
                    return Err(ConfigError::MissingFile {
                        path: p.to_owned(),
                        source,
                    });
                }
                fig = fig.merge(Toml::file(p));
            }
            None => fig = fig.merge(Toml::file(DEFAULT_CONFIG_PATH)),
        }
        // DPA's own option names, below tokengate's own variables in precedence.
        if let Some(v) = env("API_ACCESS_TOKEN_EXPIRATION") {
            let secs: u64 = v.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    "API_ACCESS_TOKEN_EXPIRATION",
                    format!("expected whole seconds, got {v:?}"),
                )
            })?;
            fig = fig.merge(Serialized::default("tokens.access_ttl", secs));
        }
        if let Some(v) = env("API_REFRESH_TOKEN_EXPIRATION") {
            let days: u64 = v.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    "API_REFRESH_TOKEN_EXPIRATION",
                    format!("expected whole days, got {v:?}"),
                )
            })?;
            let secs = days
                .checked_mul(86_400)
                .ok_or_else(|| ConfigError::invalid("API_REFRESH_TOKEN_EXPIRATION", "too large"))?;
            fig = fig.merge(Serialized::default("tokens.refresh_ttl", secs));
        }
        fig = fig.merge(
            Env::prefixed("TOKENGATE_")
                .ignore(NON_CONFIG_ENV)
                .split("__"),
        );
        let mut file: FileConfig = fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
        file.admin.oidc.client_secret = env(CLIENT_SECRET_ENV).map(ClientSecret::new);
        file.validate()
    }

    /// Defaults → the TOML text → `validate()`, without the environment or any
    /// file: the configuration fuzz target and the unit tests.
    #[doc(hidden)]
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        let fig =
            Figment::from(Serialized::defaults(FileConfig::default())).merge(Toml::string(toml));
        let file: FileConfig = fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
        file.validate()
    }

    /// The keys (`upstream.headers`, `public.listen`, …) whose values differ
    /// in `newer`: what a reload would change. Names only, never values.
    pub fn changed_keys(&self, newer: &Config) -> Vec<String> {
        summary::changed(&self.source, &newer.source)
    }

    /// The effective settings, one `key = value` per line, for `check-config`.
    /// Secret values (extra upstream headers, the password hash) are masked.
    pub fn summary(&self) -> String {
        summary::lines(&self.source)
    }
}
