//! `[[webhooks]]`: the endpoints lifecycle events are sent to, each checked
//! at start-up (and by `check-config`): its URL, its secret (read now, so a
//! missing or malformed one stops the start naming the entry), the event
//! types it receives, its timeouts.
//!
//! This file also holds the one list of webhook event types: the names
//! operators write in `events`, and the `type` of every payload.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;

use super::check::{between, read_secret_file};
use super::file::WebhookSection;
use super::ConfigError;

/// A webhook event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Created,
    Edited,
    Rotated,
    Deleted,
    Suspended,
    Resumed,
    Expiring,
    ReportedLeaked,
    RevokedUnused,
}

impl EventType {
    pub const ALL: &'static [EventType] = &[
        EventType::Created,
        EventType::Edited,
        EventType::Rotated,
        EventType::Deleted,
        EventType::Suspended,
        EventType::Resumed,
        EventType::Expiring,
        EventType::ReportedLeaked,
        EventType::RevokedUnused,
    ];

    /// The name in `events` and in a payload's `type`.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Created => "token.created",
            EventType::Edited => "token.edited",
            EventType::Rotated => "token.rotated",
            EventType::Deleted => "token.deleted",
            EventType::Suspended => "token.suspended",
            EventType::Resumed => "token.resumed",
            EventType::Expiring => "token.expiring",
            EventType::ReportedLeaked => "token.reported_leaked",
            EventType::RevokedUnused => "token.revoked_unused",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.iter().copied().find(|t| t.name() == name)
    }
}

/// A webhook signing key: the bytes of `whsec_<base64>`. Its `Debug` never
/// shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(hidden)")
    }
}

/// The Standard Webhooks bounds on a key: at least 192 bits (a shorter one
/// can be guessed offline from one signed message), at most 512.
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;

/// A validated `[[webhooks]]` entry.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: http::Uri,
    pub secret: WebhookSecret,
    /// Sorted, without repeats.
    pub events: Vec<EventType>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub retry_initial: Duration,
}

impl WebhookConfig {
    /// Whether this endpoint receives `t`.
    pub fn wants(&self, t: EventType) -> bool {
        self.events.binary_search(&t).is_ok()
    }
}

/// Bounds on one attempt: a receiver answers in well under a second; one
/// that hangs must not hold the delivery of the others for long.
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));
/// From tests' milliseconds to an hour (the longest backoff anyway).
const RETRY_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));

pub(super) fn validate(entries: &[WebhookSection]) -> Result<Vec<WebhookConfig>, ConfigError> {
    let mut out: Vec<WebhookConfig> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let key = |field: &str| format!("webhooks[{i}].{field}");
        let url = endpoint_url(&key("url"), &e.url)?;
        if out.iter().any(|o| o.url == url) {
            return Err(ConfigError::invalid(
                &key("url"),
                format!("{url} is configured twice; list all its events in one entry"),
            ));
        }
        let secret = match &e.secret_file {
            Some(path) => parse_secret(
                &key("secret_file"),
                &read_secret_file(&key("secret_file"), path)?,
            )?,
            None => {
                return Err(ConfigError::invalid(
                    &key("secret_file"),
                    format!("is required: the file holding {url}'s signing secret (whsec_…)"),
                ))
            }
        };
        out.push(WebhookConfig {
            url,
            secret,
            events: events(&key("events"), &e.events)?,
            ca_file: e.ca_file.clone(),
            timeout: between(&key("timeout"), e.timeout, TIMEOUT_RANGE, "1s and 5m")?,
            retry_initial: between(
                &key("retry_initial"),
                e.retry_initial,
                RETRY_RANGE,
                "10ms and 1h",
            )?,
        });
    }
    Ok(out)
}

/// `https://host/…`, or `http://` to a loopback address (a receiver on the
/// same machine, or a test): a plain-http request to anywhere else would
/// carry the signed payload (token names, accounts) readable on the way.
fn endpoint_url(key: &str, s: &str) -> Result<http::Uri, ConfigError> {
    let bad = |why: &str| ConfigError::invalid(key, format!("{s:?}: {why}"));
    let uri: http::Uri = s
        .parse()
        .map_err(|_| bad("not a URL like https://hooks.example.com/tokengate"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("the URL has no host"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => {
            return Err(bad(
                "plain http is allowed only to a loopback address (127.0.0.1, [::1], localhost); use https",
            ))
        }
        _ => return Err(bad("the URL must start with https://")),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad("credentials in the URL are not supported"));
    }
    Ok(uri)
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `whsec_` and the key in standard base64 (padding optional), as Standard
/// Webhooks libraries generate and read it.
fn parse_secret(key: &str, text: &str) -> Result<WebhookSecret, ConfigError> {
    let bad = |why: String| ConfigError::invalid(key, why);
    let b64 = text.strip_prefix("whsec_").ok_or_else(|| {
        bad("the secret must start with whsec_ (a Standard Webhooks secret)".into())
    })?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
        .map_err(|_| bad("the part after whsec_ is not base64".into()))?;
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
        return Err(bad(format!(
            "the key is {} bytes; it must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes \
             (e.g. `echo whsec_$(head -c 32 /dev/urandom | base64)`)",
            bytes.len()
        )));
    }
    Ok(WebhookSecret(bytes))
}

fn events(key: &str, names: &[String]) -> Result<Vec<EventType>, ConfigError> {
    if names.is_empty() {
        return Err(ConfigError::invalid(
            key,
            "lists no event type; use [\"*\"] for all",
        ));
    }
    let mut out = Vec::new();
    for name in names {
        if name == "*" {
            out.extend_from_slice(EventType::ALL);
            continue;
        }
        let t = EventType::parse(name).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
            ConfigError::invalid(
                key,
                format!(
                    "unknown event type {name:?}; known: {}, or \"*\" for all",
                    known.join(", ")
                ),
            )
        })?;
        out.push(t);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const KEY32: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn secret_file(dir: &std::path::Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("hook.secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn entry(url: &str, secret: Option<PathBuf>, events: &[&str]) -> WebhookSection {
        WebhookSection {
            url: url.into(),
            secret_file: secret,
            events: events.iter().map(|s| (*s).to_owned()).collect(),
            ..WebhookSection::default()
        }
    }

    fn err(entries: &[WebhookSection]) -> String {
        validate(entries).unwrap_err().to_string()
    }

    #[test]
    fn a_good_entry_and_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret_file(dir.path(), &format!("{KEY32}\n"), 0o600);
        let all = validate(&[entry(
            "https://hooks.example.com/x",
            Some(s.clone()),
            &["*"],
        )])
        .unwrap();
        assert_eq!(all[0].events, EventType::ALL);
        assert_eq!(all[0].secret.expose().len(), 24);
        assert!(
            !format!("{:?}", all[0]).contains("MfKQ"),
            "Debug hides the key"
        );
        let some = validate(&[entry(
            "http://127.0.0.1:9/x",
            Some(s),
            &["token.deleted", "token.created", "token.deleted"],
        )])
        .unwrap();
        assert_eq!(some[0].events, [EventType::Created, EventType::Deleted]);
        assert!(some[0].wants(EventType::Deleted) && !some[0].wants(EventType::Edited));
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.name()), Some(*t));
        }
    }

    #[test]
    fn bad_entries_are_refused_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let good = secret_file(dir.path(), KEY32, 0o600);
        let ok = entry("https://a.example/x", Some(good.clone()), &["*"]);
        for (entries, says) in [
            (
                vec![
                    ok.clone(),
                    entry("http://hooks.example.com/x", Some(good.clone()), &["*"]),
                ],
                "webhooks[1].url",
            ),
            (
                vec![entry("ftp://a.example/x", Some(good.clone()), &["*"])],
                "https://",
            ),
            (
                vec![entry("https://a.example/x", None, &["*"])],
                "webhooks[0].secret_file: is required",
            ),
            (
                vec![entry(
                    "https://a.example/x",
                    Some(good.clone()),
                    &["token.made"],
                )],
                "unknown event type \"token.made\"",
            ),
            (
                vec![entry("https://a.example/x", Some(good.clone()), &[])],
                "webhooks[0].events",
            ),
            (vec![ok.clone(), ok.clone()], "configured twice"),
            (
                vec![entry(
                    "https://a.example/x",
                    Some(dir.path().join("missing")),
                    &["*"],
                )],
                "webhooks[0].secret_file",
            ),
        ] {
            let e = err(&entries);
            assert!(e.contains(says), "{says:?} not in {e:?}");
        }
        // The loopback exception: names and addresses.
        for url in [
            "http://localhost:8080/x",
            "http://[::1]:8080/x",
            "http://127.0.0.2/x",
        ] {
            assert!(
                validate(&[entry(url, Some(good.clone()), &["*"])]).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn the_secret_must_be_private_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let open = secret_file(dir.path(), KEY32, 0o644);
        let e = err(&[entry("https://a.example/x", Some(open), &["*"])]);
        assert!(e.contains("chmod 600"), "{e}");
        for (text, says) in [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"),
            ("whsec_!!!", "not base64"),
            ("whsec_c2hvcnQ=", "5 bytes"),
        ] {
            let s = secret_file(dir.path(), text, 0o600);
            let e = err(&[entry("https://a.example/x", Some(s), &["*"])]);
            assert!(e.contains(says), "{says:?} not in {e:?}");
            assert!(!e.contains("MfKQ"), "the secret is never in an error: {e}");
        }
    }
}
