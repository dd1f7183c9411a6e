//! From the file format to the runtime `Config`: every check of a value, each
//! error naming the key at fault.

use std::time::Duration;

use super::check::{at_most, between, cidrs, nonzero, parse_addr, positive, within};
use super::storage::data_dir;
use super::*;

/// Longest page session: a stolen session cookie should not outlive a month
/// (and the cap keeps every expiry far inside what an `Instant` can hold).
const MAX_SESSION_TTL: Duration = Duration::from_secs(30 * 86_400);

impl FileConfig {
    /// Turns the file format into the runtime config, naming the key of any
    /// bad value. One function per section, in the file's order.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut source = self.clone();
        let shutdown_grace = self.public.shutdown_grace.0;
        let public = public(self.public, shutdown_grace)?;
        hops(&public)?;
        let mut admin = admin(self.admin.clone(), &self.storage.path, shutdown_grace)?;
        // Single sign-on: `display_name` may be filled in (shown by check-config).
        let mut oidc_section = self.admin.oidc;
        admin.oidc = super::oidc::validate(&mut oidc_section)?;
        source.admin.oidc.display_name = oidc_section.display_name;
        let upstream = super::upstream::validate(self.upstream)?;
        let tls = tls(self.tls)?;
        let tokens = tokens(&self.tokens)?;
        // ([storage], storage.path included, is checked in storage::validate.)
        let storage = super::storage::validate(self.storage)?;
        let cluster = cluster(&self.cluster)?;
        // check-config shows what is in effect where the file leaves a
        // default to be worked out: the server used, the socket's path, the
        // replica's name.
        if source.upstream.url.is_empty() && source.upstream.urls.is_none() {
            source.upstream.url = DEFAULT_UPSTREAM_URL.to_owned();
        }
        if let Some(socket) = admin
            .socket
            .as_ref()
            .filter(|_| source.admin.socket.trim().is_empty())
        {
            source.admin.socket = socket.display().to_string();
        }
        source.cluster.name.clone_from(&cluster.name);
        Ok(Config {
            public,
            admin,
            upstream,
            storage,
            tls,
            tokens,
            audit: AuditDestination::parse(&self.audit.destination),
            cluster,
            metrics: metrics(&self.metrics)?,
            log: log(&self.log)?,
            source,
        })
    }
}

/// `[public]`.
fn public(p: PublicSection, shutdown_grace: Duration) -> Result<PublicConfig, ConfigError> {
    Ok(PublicConfig {
        listen: parse_addr("public.listen", &p.listen)?,
        workers: match p.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => within("public.workers", n, 1, 256)?,
        },
        limits: limits("public", raw_limits!(p), shutdown_grace)?,
        token_body_limit: within("public.token_body_limit", p.token_body_limit, 256, 1 << 20)?,
        trusted_proxies: cidrs("public.trusted_proxies", &p.trusted_proxies)?,
        trusted_forwarders: cidrs("public.trusted_forwarders", &p.trusted_forwarders)?,
        proxy_protocol: p.proxy_protocol,
        auth_failures_per_minute: {
            let n = p.auth_failures_per_minute;
            if n > 1_000_000 {
                return Err(ConfigError::invalid(
                    "public.auth_failures_per_minute",
                    format!("must be between 0 (off) and 1000000, got {n}"),
                ));
            }
            n
        },
        path_parameters: path_parameters(p.path_parameters)?,
        issuer: p.issuer.map(|i| issuer(&i)).transpose()?,
    })
}

/// `public.issuer`: RFC 8414 §2 asks for an `https` URL with no query or
/// fragment; clients compare it byte for byte, so a trailing `/` is dropped.
fn issuer(text: &str) -> Result<String, ConfigError> {
    const KEY: &str = "public.issuer";
    let bad = |why: &str| ConfigError::invalid(KEY, format!("{why}, got {text:?}"));
    let uri: http::Uri = text
        .parse()
        .map_err(|_| bad("must be an https URL such as https://gateway.example.com"))?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(bad(
            "must be an https URL such as https://gateway.example.com",
        ));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(bad("must have no query or fragment (RFC 8414)"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// `public.path_parameters`: a few plain names.
fn path_parameters(names: Vec<String>) -> Result<Vec<String>, ConfigError> {
    const KEY: &str = "public.path_parameters";
    if names.len() > 16 {
        return Err(ConfigError::invalid(
            KEY,
            format!("at most 16 names, got {}", names.len()),
        ));
    }
    if let Some(bad) = names.iter().find(|n| {
        n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    }) {
        return Err(ConfigError::invalid(
            KEY,
            format!(
                "{bad:?} is not a parameter name (1 to 64 letters, digits, `_`, `-` or `.`, e.g. \"jsessionid\")"
            ),
        ));
    }
    Ok(names)
}

/// `[admin]`; the socket's default path is in the data directory.
fn admin(
    a: AdminSection,
    storage_path: &std::path::Path,
    shutdown_grace: Duration,
) -> Result<AdminConfig, ConfigError> {
    if let Some(h) = &a.password_hash {
        argon2::PasswordHash::new(h).map_err(|e| {
            ConfigError::invalid(
                "admin.password_hash",
                format!("not an argon2 PHC string: {e}"),
            )
        })?;
    }
    Ok(AdminConfig {
        listen: parse_addr("admin.listen", &a.listen)?,
        session_ttl: at_most("admin.session_ttl", a.session_ttl, MAX_SESSION_TTL, "30d")?,
        limits: limits("admin", raw_limits!(a), shutdown_grace)?,
        socket: match a.socket.trim() {
            "off" => None,
            "" => Some(data_dir(storage_path).join(ADMIN_SOCKET_FILE)),
            p => Some(std::path::PathBuf::from(p)),
        },
        password_hash: a.password_hash,
        // Checked by `super::oidc::validate`, which needs the section mutably.
        oidc: None,
    })
}

/// `[tls]`: both paths or neither (a generated certificate).
fn tls(t: TlsSection) -> Result<TlsConfig, ConfigError> {
    // An empty path (`cert = ""`, or an empty environment variable) is a
    // mistake, not "unset": found by the config_toml fuzz target.
    for (key, path) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(ConfigError::invalid(
                key,
                "must not be empty (leave tls.cert and tls.key unset for a generated certificate)",
            ));
        }
    }
    let watch_interval = match t.watch_interval.0 {
        d if d.is_zero() => None,
        d if d < Duration::from_millis(100) || d > Duration::from_secs(86_400) => {
            return Err(ConfigError::invalid(
                "tls.watch_interval",
                "must be 0 (off) or between 100ms and 1d",
            ))
        }
        d => Some(d),
    };
    let (cert, key, generate_if_missing) = match (t.cert, t.key) {
        (None, None) => (DEFAULT_CERT_PATH.into(), DEFAULT_KEY_PATH.into(), true),
        (Some(cert), Some(key)) => (cert, key, false),
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
    Ok(TlsConfig {
        cert,
        key,
        generate_if_missing,
        watch_interval,
    })
}

/// `[tokens]`.
fn tokens(t: &TokensSection) -> Result<TokensConfig, ConfigError> {
    const DAY: u64 = 86_400;
    let century = Duration::from_secs(100 * 365 * DAY);
    let max_lifetime = t
        .max_lifetime
        .map(|d| at_most("tokens.max_lifetime", d, century, "100 years"))
        .transpose()?;
    let revoke_unused_after = t
        .revoke_unused_after
        .map(|d| at_most("tokens.revoke_unused_after", d, century, "100 years"))
        .transpose()?;
    if let Some(max) = max_lifetime {
        if t.refresh_ttl.0 > max {
            return Err(ConfigError::invalid(
                "tokens.refresh_ttl",
                format!(
                    "{} is longer than tokens.max_lifetime ({}): a token created without an expiry would break the policy; set tokens.refresh_ttl to at most tokens.max_lifetime",
                    String::from(t.refresh_ttl),
                    String::from(super::file::HumanDuration(max)),
                ),
            ));
        }
    }
    Ok(TokensConfig {
        max_lifetime,
        revoke_unused_after,
        access_ttl: at_most(
            "tokens.access_ttl",
            t.access_ttl,
            Duration::from_secs(DAY),
            "24h",
        )?,
        refresh_ttl: at_most(
            "tokens.refresh_ttl",
            t.refresh_ttl,
            Duration::from_secs(100 * 365 * DAY),
            "100 years",
        )?,
        sweep_interval: nonzero("tokens.sweep_interval", t.sweep_interval)?,
        max_access_per_refresh: within(
            "tokens.max_access_per_refresh",
            t.max_access_per_refresh,
            1,
            1_000_000,
        )?,
    })
}

/// `[metrics]`.
fn metrics(m: &super::file::MetricsSection) -> Result<MetricsConfig, ConfigError> {
    let listen = match m.listen.trim() {
        "" | "off" => None,
        // A bare port: loopback, the safe place for an unauthenticated scrape.
        port if port.bytes().all(|b| b.is_ascii_digit()) => {
            Some(parse_addr("metrics.listen", &format!("127.0.0.1:{port}"))?)
        }
        addr => Some(parse_addr("metrics.listen", addr)?),
    };
    if listen.is_some() && !m.enabled {
        return Err(ConfigError::invalid(
            "metrics.listen",
            "is set but metrics.enabled = false; turn metrics on or leave metrics.listen empty",
        ));
    }
    let allowed_hosts = m
        .allowed_hosts
        .iter()
        .map(|h| {
            let h = h.trim();
            // A bare name: the port is whatever the listener's is.
            if h.contains(':') || h.starts_with('[') || !crate::wire::host::is_valid_host(h.as_bytes())
            {
                Err(ConfigError::invalid(
                    "metrics.allowed_hosts",
                    format!("{h:?} is not a host name (no port, no brackets; IP literals are always allowed)"),
                ))
            } else {
                Ok(h.to_ascii_lowercase())
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(MetricsConfig {
        enabled: m.enabled,
        listen,
        allowed_hosts,
    })
}

/// `[log]`.
fn log(l: &super::file::LogSection) -> Result<LogConfig, ConfigError> {
    let format = match l.format.trim() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError::invalid(
                "log.format",
                format!("{other:?} is not a log format; use \"text\" or \"json\""),
            ))
        }
    };
    let level = l.level.trim().to_owned();
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        return Err(ConfigError::invalid(
            "log.level",
            format!(
                "{level:?} is not a log filter like \"info\" or \"tokengate=debug,warn\" ({e})"
            ),
        ));
    }
    Ok(LogConfig {
        format,
        level,
        access: AuditDestination::parse(&l.access),
    })
}

/// `[cluster]`. The bounds keep the promises meaningful: a heartbeat every
/// quarter of `node_timeout` must fit at least one database round trip, and
/// staleness beyond a minute would keep a revoked token alive that long.
fn cluster(c: &super::file::ClusterSection) -> Result<ClusterConfig, ConfigError> {
    let node_timeout = between(
        "cluster.node_timeout",
        c.node_timeout,
        (Duration::from_secs(1), Duration::from_secs(600)),
        "1s and 10m",
    )?;
    let max_staleness = between(
        "cluster.max_staleness",
        c.max_staleness,
        (Duration::from_millis(500), Duration::from_secs(60)),
        "500ms and 60s",
    )?;
    let name = c.name.trim();
    if name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            "cluster.name",
            "must be at most 64 characters, none of them control characters",
        ));
    }
    let name = if name.is_empty() {
        host_name()
    } else {
        name.to_owned()
    };
    Ok(ClusterConfig {
        name,
        node_timeout,
        max_staleness,
    })
}

/// The kernel's host name, or "tokengate" where it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "tokengate".to_owned())
}

/// One listener's connection limits as the file has them.
struct RawLimits {
    max_connections: usize,
    tls_handshake_timeout: HumanDuration,
    header_read_timeout: HumanDuration,
    max_header_bytes: usize,
    h2_max_concurrent_streams: u32,
    body_read_timeout: HumanDuration,
    max_connection_age: HumanDuration,
    max_connections_per_client: usize,
    max_streams_per_client: usize,
    idle_timeout: HumanDuration,
    send_timeout: HumanDuration,
}

/// A listener section's limits: `[public]` and `[admin]` have the same
/// fields, listed once here.
macro_rules! raw_limits {
    ($s:expr) => {
        RawLimits {
            max_connections: $s.max_connections,
            tls_handshake_timeout: $s.tls_handshake_timeout,
            header_read_timeout: $s.header_read_timeout,
            max_header_bytes: $s.max_header_bytes,
            h2_max_concurrent_streams: $s.h2_max_concurrent_streams,
            body_read_timeout: $s.body_read_timeout,
            max_connection_age: $s.max_connection_age,
            max_connections_per_client: $s.max_connections_per_client,
            max_streams_per_client: $s.max_streams_per_client,
            idle_timeout: $s.idle_timeout,
            send_timeout: $s.send_timeout,
        }
    };
}
use raw_limits;

/// Checks a listener section's limits; `section` prefixes every key named in an error.
fn limits(
    section: &str,
    r: RawLimits,
    shutdown_grace: Duration,
) -> Result<ListenerLimits, ConfigError> {
    let key = |k: &str| format!("{section}.{k}");
    Ok(ListenerLimits {
        max_connections: positive(&key("max_connections"), r.max_connections)?,
        tls_handshake_timeout: nonzero(&key("tls_handshake_timeout"), r.tls_handshake_timeout)?,
        header_read_timeout: nonzero(&key("header_read_timeout"), r.header_read_timeout)?,
        max_header_bytes: within(&key("max_header_bytes"), r.max_header_bytes, 1024, 1 << 20)?,
        h2_max_concurrent_streams: {
            let n = r.h2_max_concurrent_streams;
            if !(1..=10_000).contains(&n) {
                return Err(ConfigError::invalid(
                    &key("h2_max_concurrent_streams"),
                    format!("must be between 1 and 10000, got {n}"),
                ));
            }
            n
        },
        body_read_timeout: nonzero(&key("body_read_timeout"), r.body_read_timeout)?,
        max_connection_age: nonzero(&key("max_connection_age"), r.max_connection_age)?,
        max_connections_per_client: positive(
            &key("max_connections_per_client"),
            r.max_connections_per_client,
        )?,
        max_streams_per_client: positive(&key("max_streams_per_client"), r.max_streams_per_client)?,
        idle_timeout: nonzero(&key("idle_timeout"), r.idle_timeout)?,
        send_timeout: nonzero(&key("send_timeout"), r.send_timeout)?,
        shutdown_grace,
    })
}

/// The trusted hops fit together (see `identify`): PROXY headers need a list
/// of who may send them (an empty one let anyone name any address), the
/// list means nothing without them (it once meant "believe their
/// `X-Forwarded-For`", which a TCP balancer passes through from the client
/// unchecked), and `X-Forwarded-For` is never read after a PROXY header.
fn hops(p: &PublicConfig) -> Result<(), ConfigError> {
    const BOTH: &str = "public.proxy_protocol, public.trusted_proxies";
    if p.proxy_protocol && p.trusted_proxies.is_empty() {
        return Err(ConfigError::invalid(
            BOTH,
            "public.proxy_protocol = true needs public.trusted_proxies: the balancers \
             allowed to send a PROXY header (with an empty list anyone could write \
             one and choose their own address)",
        ));
    }
    if !p.proxy_protocol && !p.trusted_proxies.is_empty() {
        return Err(ConfigError::invalid(
            BOTH,
            "public.trusted_proxies lists balancers that send a PROXY header, so it \
             needs public.proxy_protocol = true (a TCP balancer: add send-proxy-v2 on \
             its side). For an HTTP balancer that terminates TLS and writes \
             X-Forwarded-For, move its addresses to public.trusted_forwarders",
        ));
    }
    if p.proxy_protocol && !p.trusted_forwarders.is_empty() {
        return Err(ConfigError::invalid(
            "public.trusted_forwarders, public.proxy_protocol",
            "X-Forwarded-For is never read after a PROXY header (the header names \
             the client); leave public.trusted_forwarders empty with \
             public.proxy_protocol = true",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(toml)
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = FileConfig::default().validate().unwrap();
        assert_eq!(c.public.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(c.admin.listen, "127.0.0.1:8444".parse().unwrap());
        assert_eq!(c.upstream.urls, ["https://127.0.0.1:8124"]);
        assert_eq!(c.storage.path, PathBuf::from("data/tokengate.redb"));
        assert_eq!(c.tokens.access_ttl, Duration::from_secs(900));
        assert_eq!(c.tokens.refresh_ttl, Duration::from_secs(90 * 86_400));
        assert_eq!(c.admin.limits.max_connections, 256);
        assert_eq!(c.public.auth_failures_per_minute, 100);
        assert!(c.public.path_parameters.is_empty());
        assert_eq!(c.public.issuer, None);
        let c = from_toml("[public]\nissuer = \"https://gw.example/\"").unwrap();
        assert_eq!(c.public.issuer.as_deref(), Some("https://gw.example"));
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
        assert_eq!(c.tokens.access_ttl, Duration::from_secs(300));
        assert_eq!(c.tokens.refresh_ttl, Duration::from_secs(86_400));
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
            ("[admin]\nmax_connections = 0", "admin.max_connections"),
            (
                "[public]\ntrusted_proxies = [\"10.0.0.1/8\"]",
                "public.trusted_proxies",
            ),
            (
                "[public]\nmax_connections_per_client = 0",
                "public.max_connections_per_client",
            ),
            ("[public]\nsend_timeout = \"0s\"", "public.send_timeout"),
            (
                "[public]\nauth_failures_per_minute = 2000000",
                "public.auth_failures_per_minute",
            ),
            (
                "[public]\npath_parameters = [\"a;b\"]",
                "public.path_parameters",
            ),
            ("[public]\nissuer = \"http://gw.example\"", "public.issuer"),
            (
                "[public]\nissuer = \"https://gw.example/?a=1\"",
                "public.issuer",
            ),
            (
                "[public]\npath_parameters = [\"\"]",
                "public.path_parameters",
            ),
            ("[upstream]\nurl = \"ftp://x\"", "upstream.url"),
            ("[tokens]\naccess_ttl = \"0s\"", "tokens.access_ttl"),
            ("[tokens]\naccess_ttl = \"soon\"", "access_ttl"),
            ("[tls]\ncert = \"a.pem\"", "tls.key"),
            ("[tls]\ncert = \"\"\nkey = \"b.pem\"", "tls.cert"),
            ("[tls]\ncert = \"a.pem\"\nkey = \"\"", "tls.key"),
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
    fn trusted_hops_must_fit_together() {
        let refused = |toml: &str, words: &[&str]| {
            let e = from_toml(toml).unwrap_err().to_string();
            for w in words {
                assert!(e.contains(w), "{toml:?} gave {e:?}, expected {w}");
            }
        };
        // PROXY on with nobody allowed to send it: anyone would choose their address.
        refused(
            "[public]\nproxy_protocol = true",
            &["public.proxy_protocol", "public.trusted_proxies"],
        );
        // The old meaning of trusted_proxies (believe their X-Forwarded-For):
        // refused, with the way out.
        refused(
            "[public]\ntrusted_proxies = [\"10.0.0.0/8\"]",
            &[
                "public.proxy_protocol",
                "public.trusted_proxies",
                "public.trusted_forwarders",
            ],
        );
        refused(
            "[public]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.2\"]\ntrusted_forwarders = [\"10.0.0.3\"]",
            &["public.trusted_forwarders", "public.proxy_protocol"],
        );
        refused(
            "[public]\ntrusted_forwarders = [\"10.0.0.1/8\"]",
            &["public.trusted_forwarders"],
        );
        let c =
            from_toml("[public]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.2\"]").unwrap();
        assert_eq!(c.public.trusted_proxies.len(), 1);
        let c = from_toml("[public]\ntrusted_forwarders = [\"10.0.0.0/8\", \"2001:db8::/32\"]")
            .unwrap();
        assert_eq!(c.public.trusted_forwarders.len(), 2);
    }

    #[test]
    fn credentials_in_the_upstream_url_are_refused() {
        for url in [
            "http://user:pw@127.0.0.1:8124",
            "https://token@api.example/base",
        ] {
            let e = from_toml(&format!("[upstream]\nurl = \"{url}\""))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("upstream.url"), "{e}");
            assert!(e.contains("[upstream.headers] Authorization"), "{e}");
            assert!(!e.contains("pw@") && !e.contains("token@"), "{e}");
        }
    }

    #[test]
    fn session_ttl_is_capped() {
        assert!(from_toml("[admin]\nsession_ttl = \"30d\"").is_ok());
        for ttl in ["31d", "100000000d"] {
            let e = from_toml(&format!("[admin]\nsession_ttl = \"{ttl}\""))
                .unwrap_err()
                .to_string();
            assert!(e.contains("admin.session_ttl"), "{ttl}: {e}");
        }
    }

    #[test]
    fn upstream_headers_are_parsed() {
        let c = from_toml("[upstream.headers]\nX-Api-Key = \"s3cret\"").unwrap();
        assert_eq!(c.upstream.headers.len(), 1);
        assert_eq!(c.upstream.headers[0].0, "x-api-key");
    }

    #[test]
    fn metrics_and_log_settings() {
        let c = from_toml("").unwrap();
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.listen, None);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.access, AuditDestination::Off);
        // A bare port, as a number (the environment's form) or text: loopback.
        let c = from_toml("[metrics]\nlisten = 9464").unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        let c = from_toml(
            "[metrics]\nlisten = \"9464\"\n[log]\nformat = \"json\"\naccess = \"stdout\"",
        )
        .unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.access, AuditDestination::Stdout);
        for (toml, key) in [
            ("[metrics]\nlisten = \"nowhere\"", "metrics.listen"),
            ("[metrics]\nlisten = 70000", "metrics.listen"),
            (
                "[metrics]\nallowed_hosts = [\"prom.example:9464\"]",
                "metrics.allowed_hosts",
            ),
            (
                "[metrics]\nenabled = false\nlisten = \"9464\"",
                "metrics.listen",
            ),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[log]\nlevel = \"=[\"", "log.level"),
        ] {
            let e = from_toml(toml).unwrap_err().to_string();
            assert!(e.starts_with(key), "{toml}: {e}");
        }
        assert!(from_toml("[log]\ncolour = true").is_err());
    }

    #[test]
    fn destinations() {
        assert_eq!(AuditDestination::parse("off"), AuditDestination::Off);
        assert_eq!(AuditDestination::parse("stdout"), AuditDestination::Stdout);
        assert_eq!(
            AuditDestination::parse("/var/log/a"),
            AuditDestination::File("/var/log/a".into())
        );
    }

    #[test]
    fn cluster_settings_have_defaults_and_bounds() {
        let c = from_toml("").unwrap();
        assert_eq!(c.cluster.node_timeout, Duration::from_secs(10));
        assert_eq!(c.cluster.max_staleness, Duration::from_secs(5));
        assert!(!c.cluster.name.is_empty(), "defaults to the host name");
        let c = from_toml(
            "[cluster]\nname = \"edge-1\"\nnode_timeout = \"2s\"\nmax_staleness = \"1s\"",
        )
        .unwrap();
        assert_eq!(c.cluster.name, "edge-1");
        assert_eq!(c.cluster.node_timeout, Duration::from_secs(2));
        assert_eq!(c.cluster.max_staleness, Duration::from_secs(1));
        for (toml, key) in [
            ("[cluster]\nnode_timeout = \"0s\"", "cluster.node_timeout"),
            ("[cluster]\nnode_timeout = \"11m\"", "cluster.node_timeout"),
            (
                "[cluster]\nmax_staleness = \"100ms\"",
                "cluster.max_staleness",
            ),
            ("[cluster]\nname = \"a\\u0007b\"", "cluster.name"),
            ("[cluster]\ncolour = 1", "colour"),
        ] {
            let e = from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }
}
