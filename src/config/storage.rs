//! `[storage]`: which backend keeps the refresh tokens, where the server
//! secret is, and how to reach PostgreSQL. The URL may carry a password: it
//! is parsed here once, kept only in the parsed (password-redacting) form,
//! and shown only through [`mask_url`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::check::{nonzero, within};
use super::mask::mask_url;
use super::{ConfigError, StorageSection};

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// The redb file. Its directory is the data directory (admin hash,
    /// admin socket and, by default, the server secret) for either backend.
    pub path: PathBuf,
    pub usage_flush_interval: Duration,
    /// The server secret that keys refresh-token hashes: shared by every
    /// replica in cluster mode.
    pub secret_file: PathBuf,
}

#[derive(Debug, Clone)]
pub enum StorageBackend {
    Redb,
    Postgres(Box<PostgresConfig>),
}

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// From `storage.postgres.url`; its `Debug` redacts the password.
    pub connect: tokio_postgres::Config,
    /// The URL with any password masked: the only form logs and errors show.
    pub display_url: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    pub sslmode: SslMode,
    pub ca_file: Option<PathBuf>,
}

/// TLS to PostgreSQL, always through rustls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (or a Unix socket, where PostgreSQL offers no TLS).
    Disable,
    /// Encrypted, but any server certificate is accepted (as libpq's `require`).
    Require,
    /// Encrypted, the chain checked against `ca_file` (or the system's roots)
    /// and the certificate against the host name.
    VerifyFull,
}

/// The data directory: where `storage.path` lives, with `secret.key`,
/// `admin.hash` and (by default) the admin socket. Here, at the bottom,
/// because the settings derive their defaults from it and start-up creates it.
pub fn data_dir(storage_path: &Path) -> PathBuf {
    match storage_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The `[storage]` section, checked. `data_dir` is where the default secret lives.
pub(super) fn validate(s: StorageSection) -> Result<StorageConfig, ConfigError> {
    if s.path.as_os_str().is_empty() {
        return Err(ConfigError::invalid("storage.path", "must not be empty"));
    }
    let secret_file = match s.secret_file {
        Some(p) if p.as_os_str().is_empty() => {
            return Err(ConfigError::invalid(
                "storage.secret_file",
                "must not be empty (leave it unset for <data dir>/secret.key)",
            ))
        }
        Some(p) => p,
        None => data_dir(&s.path).join(crate::secrets::SECRET_FILE),
    };
    let backend = match s.backend.trim() {
        "redb" => StorageBackend::Redb,
        "postgres" | "postgresql" => StorageBackend::Postgres(Box::new(postgres(&s.postgres)?)),
        other => {
            return Err(ConfigError::invalid(
                "storage.backend",
                format!("must be \"redb\" or \"postgres\", got {other:?}"),
            ))
        }
    };
    Ok(StorageConfig {
        backend,
        usage_flush_interval: nonzero("storage.usage_flush_interval", s.usage_flush_interval)?,
        path: s.path,
        secret_file,
    })
}

fn postgres(p: &super::PostgresSection) -> Result<PostgresConfig, ConfigError> {
    const URL: &str = "storage.postgres.url";
    let url = p.url.trim();
    if url.is_empty() {
        return Err(ConfigError::invalid(
            URL,
            "must be set when storage.backend = \"postgres\" (postgres://user:password@host:5432/database)",
        ));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // Not echoed: a key=value string may hold a password anywhere.
        return Err(ConfigError::invalid(
            URL,
            "must be a postgres:// URL (postgres://user:password@host:5432/database)",
        ));
    }
    // libpq's TLS parameters, as hosting providers' DATABASE URLs carry
    // them; tokio-postgres knows neither `verify-full` nor `sslrootcert`,
    // so they are taken out here and applied through rustls.
    let (rest, from_url) = url_tls_params(url)?;
    // tokio-postgres names the option at fault, never its value.
    let mut connect = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| ConfigError::invalid(URL, format!("{e} (in {})", mask_url(url))))?;
    if connect.get_hosts().is_empty() {
        return Err(ConfigError::invalid(
            URL,
            format!("names no host ({})", mask_url(url)),
        ));
    }
    let key_mode = match p.sslmode.trim() {
        "" => None,
        text => Some(parse_sslmode(text).ok_or_else(|| {
            ConfigError::invalid(
                SSLMODE,
                format!("must be disable, require or verify-full, got {text:?}"),
            )
        })?),
    };
    let sslmode = match (key_mode, from_url.sslmode) {
        (Some(key), Some((text, in_url))) if key != in_url => {
            return Err(ConfigError::invalid(
                SSLMODE,
                format!(
                    "is \"{}\" but {URL} says sslmode={text}: set one of them, or the same mode in both",
                    p.sslmode.trim()
                ),
            ))
        }
        (Some(mode), _) | (None, Some((_, mode))) => mode,
        // Secure unless told otherwise: the database holds token hashes.
        (None, None) => SslMode::VerifyFull,
    };
    let ca_file = match (&p.ca_file, from_url.sslrootcert) {
        (Some(key), Some(in_url)) if Some(key) != in_url.as_ref() => {
            return Err(ConfigError::invalid(
                CA_FILE,
                format!(
                    "is {} but {URL} says sslrootcert={}: set one of them",
                    key.display(),
                    in_url
                        .as_ref()
                        .map_or("system".into(), |p| p.display().to_string())
                ),
            ))
        }
        (Some(key), _) => Some(key.clone()),
        (None, Some(in_url)) => in_url,
        (None, None) => None,
    };
    let unix = connect
        .get_hosts()
        .iter()
        .any(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
    if unix && sslmode != SslMode::Disable {
        return Err(ConfigError::invalid(
            SSLMODE,
            "the URL names a Unix socket, where PostgreSQL offers no TLS: set disable",
        ));
    }
    if let Some(ca) = &ca_file {
        if sslmode != SslMode::VerifyFull {
            return Err(ConfigError::invalid(
                CA_FILE,
                format!("(or sslrootcert in {URL}) is only used with {SSLMODE} = \"verify-full\""),
            ));
        }
        if !ca.is_file() {
            return Err(ConfigError::invalid(
                CA_FILE,
                format!("{} is not a readable file", ca.display()),
            ));
        }
    }
    let connect_timeout = nonzero("storage.postgres.connect_timeout", p.connect_timeout)?;
    let statement_timeout = nonzero("storage.postgres.statement_timeout", p.statement_timeout)?;
    if statement_timeout > Duration::from_secs(3600) {
        return Err(ConfigError::invalid(
            "storage.postgres.statement_timeout",
            "must be at most 1h",
        ));
    }
    // TLS is ours (rustls), never tokio-postgres's "prefer" default.
    connect.ssl_mode(match sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    connect.connect_timeout(connect_timeout);
    if connect.get_application_name().is_none() {
        // Who holds a connection, in pg_stat_activity.
        connect.application_name("tokengate");
    }
    Ok(PostgresConfig {
        display_url: mask_url(url),
        connect,
        pool_size: within("storage.postgres.pool_size", p.pool_size, 1, 256)?,
        connect_timeout,
        statement_timeout,
        sslmode,
        ca_file,
    })
}

const SSLMODE: &str = "storage.postgres.sslmode";
const CA_FILE: &str = "storage.postgres.ca_file";

/// The modes `storage.postgres.sslmode` takes.
fn parse_sslmode(text: &str) -> Option<SslMode> {
    match text {
        "disable" => Some(SslMode::Disable),
        "require" => Some(SslMode::Require),
        "verify-full" => Some(SslMode::VerifyFull),
        _ => None,
    }
}

/// libpq's TLS parameters found in the URL's query string.
#[derive(Debug, Default)]
struct UrlTls {
    /// `sslmode`, as written and as understood.
    sslmode: Option<(String, SslMode)>,
    /// `sslrootcert`: a CA file, or `None` for `system` (the system's roots).
    sslrootcert: Option<Option<PathBuf>>,
}

/// Takes `sslmode` and `sslrootcert` out of the URL's query string: returns
/// the rest of the URL and what they said. libpq's `prefer` (TLS if the
/// server offers it) is taken as `require`: tokengate never falls back to
/// plain text. `allow` and `verify-ca` are refused, naming what to use.
fn url_tls_params(url: &str) -> Result<(String, UrlTls), ConfigError> {
    const URL: &str = "storage.postgres.url";
    let Some((head, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), UrlTls::default()));
    };
    let mut found = UrlTls::default();
    let mut kept = Vec::new();
    for param in query.split('&') {
        let decoded = form_urlencoded::parse(param.as_bytes()).next();
        match decoded {
            Some((k, v)) if k == "sslmode" => {
                let mode = match &*v {
                    "prefer" => SslMode::Require,
                    other => parse_sslmode(other).ok_or_else(|| {
                        ConfigError::invalid(
                            URL,
                            format!(
                                "has sslmode={other}: use disable, require (or prefer, taken as \
                                 require) or verify-full"
                            ),
                        )
                    })?,
                };
                found.sslmode = Some((v.into_owned(), mode));
            }
            Some((k, v)) if k == "sslrootcert" => {
                found.sslrootcert = Some(match &*v {
                    "system" => None,
                    "" => return Err(ConfigError::invalid(URL, "has an empty sslrootcert")),
                    path => Some(PathBuf::from(path)),
                });
            }
            _ => kept.push(param),
        }
    }
    let rest = if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    Ok((rest, found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn passwords_are_masked() {
        let cases = [
            (
                "postgres://tg:s3cret@db:5432/tokens",
                "postgres://tg:(hidden)@db:5432/tokens",
            ),
            (
                "postgres://tg:p@ss@db/t?password=s3cret&application_name=x",
                "postgres://tg:(hidden)@db/t?password=(hidden)&application_name=x",
            ),
            ("postgres://tg@db/t", "postgres://tg@db/t"),
            ("postgres://db/t", "postgres://db/t"),
            ("user=x password=s3cret", "(set, not a URL)"),
            ("", ""),
        ];
        for (url, masked) in cases {
            assert_eq!(mask_url(url), masked);
        }
    }

    #[test]
    fn the_default_is_redb_with_the_secret_in_the_data_dir() {
        let c = Config::from_toml_str("").unwrap();
        assert!(matches!(c.storage.backend, StorageBackend::Redb));
        assert_eq!(c.storage.secret_file, PathBuf::from("data/secret.key"));
        let c = Config::from_toml_str("[storage]\npath = \"/var/lib/tg/t.redb\"").unwrap();
        assert_eq!(
            c.storage.secret_file,
            PathBuf::from("/var/lib/tg/secret.key")
        );
    }

    #[test]
    fn postgres_settings_are_parsed() {
        let c = Config::from_toml_str(
            "[storage]\nbackend = \"postgres\"\nsecret_file = \"/etc/tg/secret.key\"\n\
             [storage.postgres]\nurl = \"postgres://tg:s3cret@db.example:6432/tokens\"\n\
             pool_size = 2\nstatement_timeout = \"2s\"\nsslmode = \"require\"",
        )
        .unwrap();
        let StorageBackend::Postgres(pg) = &c.storage.backend else {
            panic!("expected postgres")
        };
        assert_eq!(c.storage.secret_file, PathBuf::from("/etc/tg/secret.key"));
        assert_eq!(pg.pool_size, 2);
        assert_eq!(pg.statement_timeout, Duration::from_secs(2));
        assert_eq!(pg.sslmode, SslMode::Require);
        assert_eq!(pg.connect.get_dbname(), Some("tokens"));
        assert_eq!(
            pg.display_url,
            "postgres://tg:(hidden)@db.example:6432/tokens"
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        let summary = c.summary();
        assert!(!summary.contains("s3cret"), "{summary}");
        assert!(
            summary
                .contains("storage.postgres.url = postgres://tg:(hidden)@db.example:6432/tokens"),
            "{summary}"
        );
    }

    /// DATABASE URLs from hosting providers carry libpq's `sslmode` (and
    /// sometimes `sslrootcert`): taken as the keys would be, the rest of the
    /// URL passed on; a conflict with a key names both.
    #[test]
    fn the_url_may_carry_sslmode_and_sslrootcert() {
        let pg = |extra: &str| -> PostgresConfig {
            let toml = format!("[storage]\nbackend = \"postgres\"\n[storage.postgres]\n{extra}");
            match Config::from_toml_str(&toml).unwrap().storage.backend {
                StorageBackend::Postgres(pg) => *pg,
                StorageBackend::Redb => panic!("expected postgres"),
            }
        };
        let c = pg("url = \"postgres://u:s3cret@h/d?sslmode=require&application_name=x\"");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.connect.get_application_name(), Some("x"));
        assert_eq!(
            c.display_url,
            "postgres://u:(hidden)@h/d?sslmode=require&application_name=x"
        );
        // prefer never falls back to plain text here: require.
        assert_eq!(
            pg("url = \"postgres://h/d?sslmode=prefer\"").sslmode,
            SslMode::Require
        );
        assert_eq!(
            pg("url = \"postgres://h/d?sslmode=disable\"").sslmode,
            SslMode::Disable
        );
        let c = pg("url = \"postgres://h/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fhostname\"");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.ca_file, Some(PathBuf::from("/etc/hostname")));
        let c = pg("url = \"postgres://h/d?sslrootcert=system\"");
        assert_eq!((c.sslmode, c.ca_file), (SslMode::VerifyFull, None));
        // The same mode in both places is no conflict; no mode anywhere is verify-full.
        let c = pg("url = \"postgres://h/d?sslmode=require\"\nsslmode = \"require\"");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(pg("url = \"postgres://h/d\"").sslmode, SslMode::VerifyFull);
        // A conflict names both keys.
        let e = Config::from_toml_str(
            "[storage]\nbackend = \"postgres\"\n[storage.postgres]\n\
             url = \"postgres://h/d?sslmode=disable\"\nsslmode = \"verify-full\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("storage.postgres.sslmode") && e.contains("storage.postgres.url"),
            "{e}"
        );
    }

    #[test]
    fn bad_postgres_settings_name_the_key_and_hide_the_password() {
        let pg =
            |extra: &str| format!("[storage]\nbackend = \"postgres\"\n[storage.postgres]\n{extra}");
        let cases = [
            ("[storage]\nbackend = \"mysql\"".to_owned(), "storage.backend"),
            (pg(""), "storage.postgres.url"),
            (pg("url = \"mysql://u:s3cret@h/d\""), "storage.postgres.url"),
            (
                pg("url = \"postgres://u:s3cret@h/d?sslmode=verify-ca\""),
                "storage.postgres.url",
            ),
            (
                pg("url = \"postgres://u:s3cret@h/d?sslmode=require\"\nsslmode = \"verify-full\""),
                "storage.postgres.sslmode",
            ),
            (
                pg("url = \"postgres://u:s3cret@h/d?sslrootcert=/etc/hostname\"\nca_file = \"/etc/passwd\""),
                "storage.postgres.ca_file",
            ),
            (
                pg("url = \"postgres://u:s3cret@h/d?sslmode=require&sslrootcert=/etc/hostname\""),
                "storage.postgres.ca_file",
            ),
            (
                pg("url = \"postgres://u:s3cret@h:notaport/d\""),
                "storage.postgres.url",
            ),
            (
                pg("url = \"postgres://u:s3cret@h/d\"\nsslmode = \"prefer\""),
                "storage.postgres.sslmode",
            ),
            (
                pg("url = \"postgres://u:s3cret@%2Frun%2Fpostgresql/d\""),
                "storage.postgres.sslmode",
            ),
            (
                pg("url = \"postgres://u:s3cret@h/d\"\nsslmode = \"disable\"\nca_file = \"/etc/hostname\""),
                "storage.postgres.ca_file",
            ),
            (
                pg("url = \"postgres://u:s3cret@h/d\"\nca_file = \"/nonexistent.pem\""),
                "storage.postgres.ca_file",
            ),
            (
                pg("url = \"postgres://u:s3cret@h/d\"\npool_size = 0"),
                "storage.postgres.pool_size",
            ),
            (
                pg("url = \"postgres://u:s3cret@h/d\"\nstatement_timeout = \"0s\""),
                "storage.postgres.statement_timeout",
            ),
            (
                "[storage]\nsecret_file = \"\"".to_owned(),
                "storage.secret_file",
            ),
        ];
        for (toml, key) in cases {
            let e = Config::from_toml_str(&toml).unwrap_err().to_string();
            assert!(
                e.contains(key),
                "{toml:?} gave {e:?}, expected the key {key}"
            );
            assert!(
                !e.contains("s3cret"),
                "{toml:?} gave {e:?}, showing the password"
            );
        }
    }
}
