//! The configuration file format: what serde reads from TOML and the
//! environment. Every section denies unknown keys and has the documented
//! defaults; `super::FileConfig::validate` turns it into the runtime `Config`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A duration written as whole seconds (`900`) or in human form (`15m`, `90d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct HumanDuration(pub Duration);

/// Written back in one unit, whole seconds where it can (`300s`), so
/// `check-config` shows every duration in the same form.
impl From<HumanDuration> for String {
    fn from(d: HumanDuration) -> String {
        let d = d.0;
        if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{}ms", d.as_millis())
        } else {
            humantime::format_duration(d).to_string()
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(de)? {
            Raw::Secs(s) => Ok(HumanDuration(Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t)
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `900`, `900s`, `15m`, `2h`, `90d`, `1h 30m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {t:?} ({e}); use seconds or a form like 15m, 90d"))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub public: PublicSection,
    pub admin: AdminSection,
    pub upstream: UpstreamSection,
    pub storage: StorageSection,
    pub tls: TlsSection,
    pub tokens: TokensSection,
    pub audit: AuditSection,
    pub cluster: ClusterSection,
    pub metrics: MetricsSection,
    pub log: LogSection,
}

/// `[metrics]`: Prometheus metrics at `/metrics` on the admin listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Off: nothing is recorded on the request path and `/metrics` is 404.
    pub enabled: bool,
    /// A listener of its own, plain HTTP without authentication; `""` for
    /// none; a bare port means loopback (`9464` = `127.0.0.1:9464`).
    #[serde(deserialize_with = "text_or_number")]
    pub listen: String,
    /// Host names the metrics listener answers to, besides IP literals and
    /// `localhost` (a `Host` it does not know is a DNS-rebinding attempt).
    pub allowed_hosts: Vec<String>,
}

/// A string, or a number taken as its text: `TOKENGATE_METRICS__LISTEN=9464`
/// arrives as a number.
fn text_or_number<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    Ok(match Raw::deserialize(de)? {
        Raw::Number(n) => n.to_string(),
        Raw::Text(t) => t,
    })
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            listen: String::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[log]`: the process log (stderr) and the access log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` (for people) or `json` (one object per line, for machines).
    pub format: String,
    /// A tracing filter (`info`, `debug`, `tokengate=debug,hyper=warn`);
    /// the environment variable `TOKENGATE_LOG` wins when set.
    pub level: String,
    /// `off`, `stdout`, `stderr` or a file path (created 0600, appended to).
    pub access: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "text".into(),
            level: "info".into(),
            access: "off".into(),
        }
    }
}

/// `[cluster]`: used with `storage.backend = "postgres"` (ignored with redb).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This replica's name in logs and audit lines; empty = the host name.
    pub name: String,
    /// A replica whose heartbeat is older than this is dead for the others,
    /// and so are the access tokens it issued.
    pub node_timeout: HumanDuration,
    /// How long a replica that lost the database keeps accepting access
    /// tokens it already verified before answering 503.
    pub max_staleness: HumanDuration,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            name: String::new(),
            node_timeout: HumanDuration(Duration::from_secs(10)),
            max_staleness: HumanDuration(Duration::from_secs(5)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    pub destination: String,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            destination: "stdout".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicSection {
    pub listen: String,
    pub workers: usize,
    pub max_connections: usize,
    pub tls_handshake_timeout: HumanDuration,
    pub header_read_timeout: HumanDuration,
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub token_body_limit: usize,
    pub body_read_timeout: HumanDuration,
    pub max_connection_age: HumanDuration,
    pub shutdown_grace: HumanDuration,
    pub max_connections_per_client: usize,
    pub max_streams_per_client: usize,
    pub idle_timeout: HumanDuration,
    pub send_timeout: HumanDuration,
    pub trusted_proxies: Vec<String>,
    pub trusted_forwarders: Vec<String>,
    pub proxy_protocol: bool,
    pub auth_failures_per_minute: u32,
    pub path_parameters: Vec<String>,
    /// RFC 8414 `issuer`; unset: `https://<the request's Host>`.
    pub issuer: Option<String>,
}

impl Default for PublicSection {
    fn default() -> Self {
        PublicSection {
            listen: "0.0.0.0:8443".into(),
            workers: 0,
            max_connections: 10_000,
            tls_handshake_timeout: HumanDuration(Duration::from_secs(10)),
            header_read_timeout: HumanDuration(Duration::from_secs(30)),
            max_header_bytes: 16 * 1024,
            h2_max_concurrent_streams: 128,
            token_body_limit: 8 * 1024,
            body_read_timeout: HumanDuration(Duration::from_secs(15)),
            max_connection_age: HumanDuration(Duration::from_secs(3600)),
            shutdown_grace: HumanDuration(Duration::from_secs(20)),
            // Hundreds: a NAT or an office shares one address; thousands
            // would let one address hold the whole connection cap.
            max_connections_per_client: 256,
            // HTTP/2 multiplies a connection into 128 requests, each holding
            // an upstream connection and its buffers: without a cap across
            // connections, one address could keep 256 x 128 upstream
            // requests open. As many as HTTP/1.1 gets from its connections.
            max_streams_per_client: 256,
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            send_timeout: HumanDuration(Duration::from_secs(60)),
            trusted_proxies: Vec::new(),
            trusted_forwarders: Vec::new(),
            proxy_protocol: false,
            // Far above what a script that mistyped its token needs to
            // notice, far below what guessing needs.
            auth_failures_per_minute: 100,
            // Strict: a `;` in a path is read differently by different
            // servers (a scope bypass through nginx, Caddy, Python).
            path_parameters: Vec::new(),
            issuer: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub listen: String,
    pub password_hash: Option<String>,
    pub session_ttl: HumanDuration,
    pub max_connections: usize,
    pub tls_handshake_timeout: HumanDuration,
    pub header_read_timeout: HumanDuration,
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub body_read_timeout: HumanDuration,
    pub max_connection_age: HumanDuration,
    pub max_connections_per_client: usize,
    pub max_streams_per_client: usize,
    pub idle_timeout: HumanDuration,
    pub send_timeout: HumanDuration,
    /// `""`: `<data dir>/admin.sock`; `"off"`: none; otherwise a path.
    pub socket: String,
    /// `[admin.oidc]`: single sign-on for the page (off while `issuer` is empty).
    pub oidc: OidcSection,
}

/// `[admin.oidc]`: the page's single sign-on with an OpenID Connect provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcSection {
    /// The provider's issuer URL (discovery reads
    /// `<issuer>/.well-known/openid-configuration`); empty: sign-on off.
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret (mode 0600 or stricter).
    pub client_secret_file: Option<PathBuf>,
    /// The CA certificates (PEM) the issuer's certificate is checked
    /// against; unset: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Space-separated; must include `openid`.
    pub scopes: String,
    /// Empty: `https://<the request's Host>/auth/oidc/callback`.
    pub redirect_url: String,
    /// The button's text: "Sign in with {display_name}"; empty: the
    /// issuer's host name.
    pub display_name: String,
    pub username_claim: String,
    pub role_claim: String,
    /// A claim value (e.g. a group) → a role.
    pub roles: BTreeMap<String, String>,
    /// The role of a person none of whose claim values is mapped; empty:
    /// such a person is refused.
    pub default_role: String,
    /// `TOKENGATE_ADMIN__OIDC__CLIENT_SECRET`, read by `Config::load`
    /// itself: never from the file, never listed, never serialised.
    #[serde(skip)]
    pub client_secret: Option<ClientSecret>,
}

impl Default for OidcSection {
    fn default() -> Self {
        OidcSection {
            issuer: String::new(),
            client_id: String::new(),
            client_secret_file: None,
            ca_file: None,
            scopes: "openid email profile".into(),
            redirect_url: String::new(),
            display_name: String::new(),
            username_claim: "email".into(),
            role_claim: "groups".into(),
            roles: BTreeMap::new(),
            default_role: String::new(),
            client_secret: None,
        }
    }
}

/// The OpenID client secret: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    pub fn new(s: String) -> ClientSecret {
        ClientSecret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(hidden)")
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: "127.0.0.1:8444".into(),
            password_hash: None,
            session_ttl: HumanDuration(Duration::from_secs(8 * 3600)),
            // A handful of administrators and scripts: far fewer slots than
            // the public listener, so a flood there leaves these alone and
            // a flood here cannot take much memory.
            max_connections: 256,
            tls_handshake_timeout: HumanDuration(Duration::from_secs(10)),
            header_read_timeout: HumanDuration(Duration::from_secs(30)),
            max_header_bytes: 16 * 1024,
            h2_max_concurrent_streams: 32,
            body_read_timeout: HumanDuration(Duration::from_secs(15)),
            max_connection_age: HumanDuration(Duration::from_secs(3600)),
            max_connections_per_client: 64,
            max_streams_per_client: 64,
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            send_timeout: HumanDuration(Duration::from_secs(60)),
            socket: String::new(),
            oidc: OidcSection::default(),
        }
    }
}

/// The upstream default when neither `upstream.url` nor `upstream.urls` is set.
pub const DEFAULT_UPSTREAM_URL: &str = "https://127.0.0.1:8124";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    /// One server; empty = unset (then `urls`, or [`DEFAULT_UPSTREAM_URL`]).
    pub url: String,
    /// Several servers of the one API; setting both this and `url` is an error.
    pub urls: Option<Vec<String>>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub connect_timeout: HumanDuration,
    pub response_timeout: HumanDuration,
    pub pool_idle_timeout: HumanDuration,
    pub pool_max_idle_per_host: usize,
    pub headers: BTreeMap<String, String>,
    pub identity_headers: bool,
    /// `round_robin` or `least_requests`.
    pub balance: String,
    /// A path probed with GET on every server; unset = passive health only.
    pub health_check: Option<String>,
    pub health_interval: HumanDuration,
    /// How long a server that failed to connect is left out (passive health).
    pub unhealthy_for: HumanDuration,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            url: String::new(),
            urls: None,
            ca_file: None,
            insecure_skip_verify: false,
            connect_timeout: HumanDuration(Duration::from_secs(5)),
            response_timeout: HumanDuration(Duration::from_secs(60)),
            // Below the 5 s keep-alive timeout of Apache, lighttpd and Node:
            // an upstream that closes an idle connection as our request
            // arrives loses that request (502), and it may not send its FIN
            // until then (lighttpd checks its timeouts once a second).
            pool_idle_timeout: HumanDuration(Duration::from_secs(4)),
            pool_max_idle_per_host: 256,
            headers: BTreeMap::new(),
            identity_headers: false,
            balance: "round_robin".into(),
            health_check: None,
            health_interval: HumanDuration(Duration::from_secs(5)),
            // Long enough not to hammer a server that is restarting, short
            // enough that one that is back soon gets traffic again.
            unhealthy_for: HumanDuration(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `redb` (the embedded file, single node) or `postgres` (cluster mode).
    pub backend: String,
    pub path: PathBuf,
    pub usage_flush_interval: HumanDuration,
    /// Unset: `secret.key` in the data directory, generated at first start.
    pub secret_file: Option<PathBuf>,
    pub postgres: PostgresSection,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            backend: "redb".into(),
            path: PathBuf::from("data/tokengate.redb"),
            usage_flush_interval: HumanDuration(Duration::from_secs(30)),
            secret_file: None,
            postgres: PostgresSection::default(),
        }
    }
}

/// `[storage.postgres]`: used when `storage.backend = "postgres"`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSection {
    /// `postgres://user:password@host:port/database`; may hold a password,
    /// so it is masked wherever it is shown (`Debug` included).
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout: HumanDuration,
    pub statement_timeout: HumanDuration,
    /// `disable`, `require` (encrypted, server not verified) or
    /// `verify-full`; empty: the URL's `sslmode`, else `verify-full`.
    pub sslmode: String,
    /// CA certificates (PEM) for `verify-full`; unset: the URL's
    /// `sslrootcert`, else the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for PostgresSection {
    fn default() -> Self {
        PostgresSection {
            url: String::new(),
            // Writes are serialised per replica and reads are served from
            // memory: a few connections suffice, and N replicas times this
            // must stay well inside the server's max_connections (100).
            pool_size: 4,
            connect_timeout: HumanDuration(Duration::from_secs(5)),
            // A hung database becomes an error within this, never a stuck writer.
            statement_timeout: HumanDuration(Duration::from_secs(5)),
            // Unset: the URL's sslmode (DATABASE URLs from hosting providers
            // carry one), else verify-full (storage.rs).
            sslmode: String::new(),
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for PostgresSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSection")
            .field("url", &super::mask::mask_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("sslmode", &self.sslmode)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// How often the certificate and key files (and `upstream.ca_file`) are
    /// checked for a change on disk, which reloads them; `0` turns it off
    /// (SIGHUP and `tokengate reload` still work).
    pub watch_interval: HumanDuration,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert: None,
            key: None,
            // Renewals land days before expiry: seconds of delay cost
            // nothing, and a check is two or three stat() calls.
            watch_interval: HumanDuration(Duration::from_secs(5)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensSection {
    pub access_ttl: HumanDuration,
    pub refresh_ttl: HumanDuration,
    pub sweep_interval: HumanDuration,
    pub max_access_per_refresh: usize,
    /// The longest lifetime a token may be given (unset: no bound).
    pub max_lifetime: Option<HumanDuration>,
    /// Tokens not exchanged for this long are deleted (unset: never).
    pub revoke_unused_after: Option<HumanDuration>,
}

impl Default for TokensSection {
    fn default() -> Self {
        TokensSection {
            access_ttl: HumanDuration(Duration::from_secs(900)),
            refresh_ttl: HumanDuration(Duration::from_secs(90 * 86_400)),
            sweep_interval: HumanDuration(Duration::from_secs(30)),
            // Ample for a fleet of workers sharing one refresh token, or a
            // script exchanging every second; the oldest go beyond it.
            max_access_per_refresh: 1000,
            max_lifetime: None,
            revoke_unused_after: None,
        }
    }
}
