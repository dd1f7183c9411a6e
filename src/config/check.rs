//! The checks of single values that every section shares (durations that
//! must not be zero, numbers in a range, addresses, networks), each error
//! naming the key. A leaf of `config`: the section modules import it and it
//! imports none of them.

use std::net::SocketAddr;
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
