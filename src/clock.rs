//! Time source for every expiry decision.
//!
//! Production reads the system clocks; tests move time forward with `advance`
//! instead of sleeping. The offset is one relaxed atomic load on the hot path,
//! so production and tests run the very same code.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Nanoseconds added to both clocks; shared so a test's handle moves the gateway's time.
    offset_nanos: Arc<AtomicU64>,
}

impl Clock {
    pub fn new() -> Clock {
        Clock::default()
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::Relaxed))
    }

    /// Monotonic time: access-token expiry (immune to wall-clock jumps).
    pub fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// This clock's time at `raw`, an `Instant::now()` the caller already
    /// read: the request path reads the system clock once for several
    /// uses (each read is ~40 ns on a VM's TSC clock source).
    #[inline]
    pub fn at(&self, raw: Instant) -> Instant {
        raw + self.offset()
    }

    /// Wall-clock time: persisted refresh-token expiry and timestamps.
    pub fn wall(&self) -> SystemTime {
        SystemTime::now() + self.offset()
    }

    /// Wall-clock seconds since the Unix epoch.
    pub fn unix(&self) -> u64 {
        self.wall()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Moves this clock (and every clone of it) forward. For tests and tools.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Formats Unix seconds as RFC 3339 UTC, e.g. `2026-11-27T20:44:49Z`.
pub fn rfc3339(unix: u64) -> String {
    let secs = i64::try_from(unix).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_owned())
}

/// The current wall-clock time, RFC 3339 UTC with milliseconds, for log lines.
pub fn rfc3339_now() -> String {
    rfc3339_at(std::time::SystemTime::now())
}

/// `t` as RFC 3339 UTC with exactly three fractional digits, e.g.
/// `2027-01-15T08:00:00.000Z`: log lines keep one width, so they sort as
/// text (the well-known RFC 3339 format drops trailing zeros).
pub fn rfc3339_at(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 time (any offset) into Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_both_clocks_for_every_clone() {
        let c = Clock::new();
        let other = c.clone();
        let (i0, w0) = (other.now(), other.unix());
        c.advance(Duration::from_secs(3600));
        assert!(other.now() >= i0 + Duration::from_secs(3600));
        assert!(other.unix() >= w0 + 3600);
    }

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2027-05-01T00:00:00Z"), Some(1_809_129_600));
        assert_eq!(
            parse_rfc3339("2027-05-01T02:00:00+02:00"),
            Some(1_809_129_600)
        );
        assert_eq!(parse_rfc3339("2027-05-01"), None);
        assert_eq!(parse_rfc3339(&rfc3339(1_809_129_600)), Some(1_809_129_600));
    }

    #[test]
    fn log_times_keep_their_width_with_trailing_zeros() {
        let at = |ms| rfc3339_at(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(1_800_000_000_000), "2027-01-15T08:00:00.000Z");
        assert_eq!(at(1_800_000_000_100), "2027-01-15T08:00:00.100Z");
        assert_eq!(at(1_800_000_000_120), "2027-01-15T08:00:00.120Z");
        assert_eq!(at(1_800_000_000_123), "2027-01-15T08:00:00.123Z");
        // Sub-millisecond parts are cut, not rounded into the next second.
        assert_eq!(
            rfc3339_at(UNIX_EPOCH + Duration::from_nanos(1_800_000_000_999_900_000)),
            "2027-01-15T08:00:00.999Z"
        );
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_rfc3339(&at(1_800_000_000_120)), Some(1_800_000_000));
    }
}
