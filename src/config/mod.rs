//! Configuration: built-in defaults, then the TOML file, then the environment.
//!
//! The file format (`FileConfig`, serde) is kept apart from the validated
//! runtime `Config`: everything that can be wrong with a value is found here,
//! at start-up, and every error names the key (or environment variable) at fault.

mod file;

pub use file::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use http::header::{HeaderName, HeaderValue};

/// Where the configuration file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/tokengate.toml";
/// Default certificate and key, generated self-signed at first start when absent.
pub const DEFAULT_CERT_PATH: &str = "certs/tokengate.crt";
pub const DEFAULT_KEY_PATH: &str = "certs/tokengate.key";

/// Environment variables with the `TOKENGATE_` prefix that are not configuration
/// keys. Every other `TOKENGATE_…` variable must name a key, so a typo fails loudly.
const NON_CONFIG_ENV: &[&str] = &["ADMIN_PASSWORD", "ADMIN_URL", "CONFIG", "LOG"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {source}")]
    MissingFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(Box<figment::Error>),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// A duration written as whole seconds (`900`) or in human form (`15m`, `90d`).
// ---------------------------------------------------------------------------
// Validated runtime configuration.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    pub public: PublicConfig,
    pub admin_listen: SocketAddr,
    /// An argon2 PHC string from the file; `None` means: environment or generated.
    pub admin_password_hash: Option<String>,
    /// Lifetime of a web-page login session.
    pub admin_session_ttl: Duration,
    pub upstream: UpstreamConfig,
    pub storage_path: PathBuf,
    pub usage_flush_interval: Duration,
    pub tls: TlsConfig,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub sweep_interval: Duration,
    pub audit: crate::audit::Destination,
}

#[derive(Debug, Clone)]
pub struct PublicConfig {
    pub listen: SocketAddr,
    /// Accept loops, each on its own thread with its own upstream pool.
    pub workers: usize,
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub token_body_limit: usize,
    pub body_read_timeout: Duration,
    pub max_connection_age: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: http::Uri,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub identity_headers: bool,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Neither path was configured: generate a self-signed pair if absent.
    pub generate_if_missing: bool,
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
        let file: FileConfig = fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
        file.validate()
    }
}

impl Config {
    /// The effective settings, one `key = value` per line, for `check-config`.
    /// Secret values (extra upstream headers, the password hash) are not shown.
    pub fn summary(&self) -> String {
        let secs = |d: Duration| format!("{}s", d.as_secs_f64());
        let p = &self.public;
        let u = &self.upstream;
        let header_names: Vec<&str> = u.headers.iter().map(|(n, _)| n.as_str()).collect();
        let lines = [
            format!("public.listen = {}", p.listen),
            format!("public.workers = {}", p.workers),
            format!("public.max_connections = {}", p.max_connections),
            format!(
                "public.tls_handshake_timeout = {}",
                secs(p.tls_handshake_timeout)
            ),
            format!(
                "public.header_read_timeout = {}",
                secs(p.header_read_timeout)
            ),
            format!("public.max_header_bytes = {}", p.max_header_bytes),
            format!(
                "public.h2_max_concurrent_streams = {}",
                p.h2_max_concurrent_streams
            ),
            format!("public.token_body_limit = {}", p.token_body_limit),
            format!("public.body_read_timeout = {}", secs(p.body_read_timeout)),
            format!("public.max_connection_age = {}", secs(p.max_connection_age)),
            format!("public.shutdown_grace = {}", secs(p.shutdown_grace)),
            format!("admin.listen = {}", self.admin_listen),
            format!(
                "admin.password_hash = {}",
                if self.admin_password_hash.is_some() {
                    "(set)"
                } else {
                    "(unset)"
                }
            ),
            format!("upstream.url = {}", u.url),
            format!(
                "upstream.ca_file = {}",
                u.ca_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(system roots)".into())
            ),
            format!("upstream.insecure_skip_verify = {}", u.insecure_skip_verify),
            format!("upstream.connect_timeout = {}", secs(u.connect_timeout)),
            format!("upstream.response_timeout = {}", secs(u.response_timeout)),
            format!("upstream.pool_idle_timeout = {}", secs(u.pool_idle_timeout)),
            format!(
                "upstream.pool_max_idle_per_host = {}",
                u.pool_max_idle_per_host
            ),
            format!(
                "upstream.headers = [{}] (values hidden)",
                header_names.join(", ")
            ),
            format!("upstream.identity_headers = {}", u.identity_headers),
            format!("storage.path = {}", self.storage_path.display()),
            format!(
                "storage.usage_flush_interval = {}",
                secs(self.usage_flush_interval)
            ),
            format!("tls.cert = {}", self.tls.cert.display()),
            format!("tls.key = {}", self.tls.key.display()),
            format!("tokens.access_ttl = {}", secs(self.access_ttl)),
            format!("tokens.refresh_ttl = {}", secs(self.refresh_ttl)),
            format!("tokens.sweep_interval = {}", secs(self.sweep_interval)),
            format!("admin.session_ttl = {}", secs(self.admin_session_ttl)),
            format!("audit.destination = {:?}", self.audit),
        ];
        lines.join("\n")
    }
}

impl FileConfig {
    /// Turns the file format into the runtime config, naming the key of any bad value.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let p = self.public;
        let public = PublicConfig {
            listen: parse_addr("public.listen", &p.listen)?,
            workers: match p.workers {
                0 => std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
                n => within("public.workers", n, 1, 256)?,
            },
            max_connections: positive("public.max_connections", p.max_connections)?,
            tls_handshake_timeout: nonzero(
                "public.tls_handshake_timeout",
                p.tls_handshake_timeout,
            )?,
            header_read_timeout: nonzero("public.header_read_timeout", p.header_read_timeout)?,
            max_header_bytes: within("public.max_header_bytes", p.max_header_bytes, 1024, 1 << 20)?,
            h2_max_concurrent_streams: within(
                "public.h2_max_concurrent_streams",
                p.h2_max_concurrent_streams as usize,
                1,
                10_000,
            )? as u32,
            token_body_limit: within("public.token_body_limit", p.token_body_limit, 256, 1 << 20)?,
            body_read_timeout: nonzero("public.body_read_timeout", p.body_read_timeout)?,
            max_connection_age: nonzero("public.max_connection_age", p.max_connection_age)?,
            shutdown_grace: p.shutdown_grace.0,
        };
        let admin_listen = parse_addr("admin.listen", &self.admin.listen)?;
        if let Some(h) = &self.admin.password_hash {
            argon2::PasswordHash::new(h).map_err(|e| {
                ConfigError::invalid(
                    "admin.password_hash",
                    format!("not an argon2 PHC string: {e}"),
                )
            })?;
        }

        let u = self.upstream;
        let url: http::Uri = u
            .url
            .parse()
            .map_err(|e| ConfigError::invalid("upstream.url", format!("{e}: {:?}", u.url)))?;
        match url.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(ConfigError::invalid(
                    "upstream.url",
                    "scheme must be http or https",
                ))
            }
        }
        if url.authority().is_none() {
            return Err(ConfigError::invalid("upstream.url", "needs a host"));
        }
        if url.query().is_some() {
            return Err(ConfigError::invalid(
                "upstream.url",
                "must not have a query",
            ));
        }
        if let Some(ca) = &u.ca_file {
            if !ca.is_file() {
                return Err(ConfigError::invalid(
                    "upstream.ca_file",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        let mut headers = Vec::with_capacity(u.headers.len());
        for (name, value) in &u.headers {
            let key = format!("upstream.headers.{name}");
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::invalid(&key, "not a valid header name"))?;
            if crate::proxy::headers::is_reserved(&n) {
                return Err(ConfigError::invalid(
                    &key,
                    "this header is set by the gateway itself",
                ));
            }
            let v = HeaderValue::from_str(value)
                .map_err(|_| ConfigError::invalid(&key, "not a valid header value"))?;
            headers.push((n, v));
        }
        let upstream = UpstreamConfig {
            url,
            ca_file: u.ca_file,
            insecure_skip_verify: u.insecure_skip_verify,
            connect_timeout: nonzero("upstream.connect_timeout", u.connect_timeout)?,
            response_timeout: nonzero("upstream.response_timeout", u.response_timeout)?,
            pool_idle_timeout: nonzero("upstream.pool_idle_timeout", u.pool_idle_timeout)?,
            pool_max_idle_per_host: u.pool_max_idle_per_host,
            headers,
            identity_headers: u.identity_headers,
        };

        if self.storage.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid("storage.path", "must not be empty"));
        }
        let tls = match (self.tls.cert, self.tls.key) {
            (None, None) => TlsConfig {
                cert: DEFAULT_CERT_PATH.into(),
                key: DEFAULT_KEY_PATH.into(),
                generate_if_missing: true,
            },
            (Some(cert), Some(key)) => TlsConfig {
                cert,
                key,
                generate_if_missing: false,
            },
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls.key",
                    "tls.cert is set, so tls.key must be too",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls.cert",
                    "tls.key is set, so tls.cert must be too",
                ))
            }
        };
        let access_ttl = nonzero("tokens.access_ttl", self.tokens.access_ttl)?;
        if access_ttl > Duration::from_secs(86_400) {
            return Err(ConfigError::invalid(
                "tokens.access_ttl",
                "must be at most 24h",
            ));
        }
        let refresh_ttl = nonzero("tokens.refresh_ttl", self.tokens.refresh_ttl)?;
        if refresh_ttl > Duration::from_secs(100 * 365 * 86_400) {
            return Err(ConfigError::invalid(
                "tokens.refresh_ttl",
                "must be at most 100 years",
            ));
        }
        Ok(Config {
            public,
            admin_listen,
            admin_password_hash: self.admin.password_hash,
            admin_session_ttl: nonzero("admin.session_ttl", self.admin.session_ttl)?,
            upstream,
            storage_path: self.storage.path,
            usage_flush_interval: nonzero(
                "storage.usage_flush_interval",
                self.storage.usage_flush_interval,
            )?,
            tls,
            access_ttl,
            refresh_ttl,
            sweep_interval: nonzero("tokens.sweep_interval", self.tokens.sweep_interval)?,
            audit: crate::audit::Destination::parse(&self.audit.destination),
        })
    }
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::invalid(key, format!("{s:?} is not an address like 127.0.0.1:8443"))
    })
}

fn nonzero(key: &str, d: HumanDuration) -> Result<Duration, ConfigError> {
    if d.0.is_zero() {
        Err(ConfigError::invalid(key, "must be greater than zero"))
    } else {
        Ok(d.0)
    }
}

fn positive(key: &str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        Err(ConfigError::invalid(key, "must be at least 1"))
    } else {
        Ok(n)
    }
}

fn within(key: &str, n: usize, lo: usize, hi: usize) -> Result<usize, ConfigError> {
    if n < lo || n > hi {
        Err(ConfigError::invalid(
            key,
            format!("must be between {lo} and {hi}, got {n}"),
        ))
    } else {
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        let fig =
            Figment::from(Serialized::defaults(FileConfig::default())).merge(Toml::string(toml));
        let file: FileConfig = fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
        file.validate()
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = FileConfig::default().validate().unwrap();
        assert_eq!(c.public.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:8444".parse().unwrap());
        assert_eq!(c.upstream.url, "https://127.0.0.1:8124");
        assert_eq!(c.storage_path, PathBuf::from("data/tokengate.redb"));
        assert_eq!(c.access_ttl, Duration::from_secs(900));
        assert_eq!(c.refresh_ttl, Duration::from_secs(90 * 86_400));
        assert!(c.tls.generate_if_missing);
    }

    #[test]
    fn durations_accept_seconds_and_human_forms() {
        assert_eq!(parse_duration("900").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert!(parse_duration("soon").is_err());
        let c = from_toml("[tokens]\naccess_ttl = \"5m\"\nrefresh_ttl = 86400").unwrap();
        assert_eq!(c.access_ttl, Duration::from_secs(300));
        assert_eq!(c.refresh_ttl, Duration::from_secs(86_400));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = from_toml("[public]\nlistn = \"1.2.3.4:1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listn"), "{e}");
        let e = from_toml("[nonsense]\na = 1").unwrap_err().to_string();
        assert!(e.contains("nonsense"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[public]\nlisten = \"nowhere\"", "public.listen"),
            ("[upstream]\nurl = \"ftp://x\"", "upstream.url"),
            ("[tokens]\naccess_ttl = \"0s\"", "tokens.access_ttl"),
            ("[tokens]\naccess_ttl = \"soon\"", "access_ttl"),
            ("[tls]\ncert = \"a.pem\"", "tls.key"),
            ("[admin]\npassword_hash = \"plain\"", "admin.password_hash"),
            (
                "[upstream.headers]\n\"bad name\" = \"x\"",
                "upstream.headers.bad name",
            ),
            (
                "[upstream.headers]\nConnection = \"x\"",
                "upstream.headers.Connection",
            ),
        ];
        for (toml, key) in cases {
            let e = from_toml(toml).unwrap_err().to_string();
            assert!(
                e.contains(key),
                "{toml:?} gave {e:?}, expected the key {key}"
            );
        }
    }

    #[test]
    fn upstream_headers_are_parsed() {
        let c = from_toml("[upstream.headers]\nX-Api-Key = \"s3cret\"").unwrap();
        assert_eq!(c.upstream.headers.len(), 1);
        assert_eq!(c.upstream.headers[0].0, "x-api-key");
    }
}
