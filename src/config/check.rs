//! The checks of single values that every section shares (durations that
//! must not be zero, numbers in a range, addresses, networks), each error
//! naming the key. A leaf of `config`: the section modules import it and it
//! imports none of them.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::file::HumanDuration;
use super::ConfigError;
use crate::net::Cidr;

pub(super) fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::invalid(key, format!("{s:?} is not an address like 127.0.0.1:8443"))
    })
}

pub(super) fn nonzero(key: &str, d: HumanDuration) -> Result<Duration, ConfigError> {
    if d.0.is_zero() {
        Err(ConfigError::invalid(key, "must be greater than zero"))
    } else {
        Ok(d.0)
    }
}

pub(super) fn cidrs(key: &str, list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .map(|s| s.parse::<Cidr>().map_err(|e| ConfigError::invalid(key, e)))
        .collect()
}

pub(super) fn positive(key: &str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        Err(ConfigError::invalid(key, "must be at least 1"))
    } else {
        Ok(n)
    }
}

pub(super) fn within(key: &str, n: usize, lo: usize, hi: usize) -> Result<usize, ConfigError> {
    if n < lo || n > hi {
        Err(ConfigError::invalid(
            key,
            format!("must be between {lo} and {hi}, got {n}"),
        ))
    } else {
        Ok(n)
    }
}

/// A duration above zero and at most `max` (`says`: the bound as the error
/// shows it, e.g. "24h").
pub(super) fn at_most(
    key: &str,
    d: HumanDuration,
    max: Duration,
    says: &str,
) -> Result<Duration, ConfigError> {
    let d = nonzero(key, d)?;
    if d > max {
        return Err(ConfigError::invalid(key, format!("must be at most {says}")));
    }
    Ok(d)
}

/// A duration above zero and within `lo..=hi` (`says`: "1s and 10m").
pub(super) fn between(
    key: &str,
    d: HumanDuration,
    (lo, hi): (Duration, Duration),
    says: &str,
) -> Result<Duration, ConfigError> {
    let d = nonzero(key, d)?;
    if d < lo || d > hi {
        return Err(ConfigError::invalid(key, format!("must be between {says}")));
    }
    Ok(d)
}

/// A secret is a few dozen characters; a file far larger than this is the
/// wrong file.
const MAX_SECRET_BYTES: u64 = 4096;

/// Reads a secret from a file (`key` names the setting in errors), refusing
/// one group or others may read: a secret anyone on the machine can read is
/// no secret. Surrounding whitespace (the editor's newline) is not part of it.
pub(super) fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let err = |m: String| ConfigError::invalid(key, format!("{}: {m}", path.display()));
    let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let meta = f.metadata().map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "group or others may read it (mode {:04o}); `chmod 600` it",
            mode & 0o7777
        )));
    }
    if !meta.is_file() || meta.len() > MAX_SECRET_BYTES {
        return Err(err(format!(
            "not a file of at most {MAX_SECRET_BYTES} bytes"
        )));
    }
    let mut text = String::new();
    f.take(MAX_SECRET_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(err("is empty".into()));
    }
    Ok(secret.to_owned())
}
