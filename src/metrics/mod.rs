//! Prometheus metrics, without a client crate: counters and histograms are
//! plain atomics, and `text` writes Prometheus' text format at scrape time.
//!
//! The hot path stays cheap: each public worker owns a `WorkerMetrics`
//! block (its own cache lines, written only by that worker's thread), and a
//! scrape sums the blocks. Gauges that the layers above already know (live
//! access tokens, refresh tokens by state, cluster staleness) are read at
//! scrape time into `Gauges` by whoever holds them, so the request path
//! pays nothing for them and this module imports none of them.
//!
//! - `text`: the exposition-format writer.
//! - `scrape`: one scrape: a `Snapshot` (the counters summed, the gauges)
//!   rendered as text, and the HTTP answer carrying it.

mod scrape;
mod text;

pub(crate) use scrape::{
    reply as scrape_reply, ClusterGauges, Gauges, RefreshTokens, Snapshot, WebhookGauges,
};

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the duration histograms' buckets: from a
/// cached token check (sub-millisecond) to the upstream's default response
/// timeout (60 s), roughly ×2.5 apart.
pub(crate) const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// The same bounds in nanoseconds, for the comparison on the hot path.
const BUCKET_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
    60_000_000_000,
];

/// A histogram of durations: per-bucket counts (not cumulative: one
/// increment per observation), the +Inf bucket last, and the sum in ns.
#[derive(Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BUCKET_NS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Adds this histogram's counts into `into` (a scrape's sum).
    fn add_to(&self, into: &mut HistogramSnapshot) {
        for (sum, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *sum += b.load(Relaxed);
        }
        into.sum_ns += self.sum_ns.load(Relaxed);
    }
}

#[derive(Default, Clone, Copy)]
pub(crate) struct HistogramSnapshot {
    buckets: [u64; BUCKETS.len() + 1],
    sum_ns: u64,
}

/// A fixed set of label values, each an index into a counter array.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum $name { $($variant),+ }
        impl $name {
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant),+];
            pub(crate) const COUNT: usize = $name::ALL.len();
            pub(crate) fn label(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

label_enum!(
    /// The public listener's routes (`route` label).
    RouteLabel { Health = "health", Token = "token", Proxy = "proxy" }
);

label_enum!(
    /// `tokengate_token_exchanges_total{result}`.
    Exchange {
        Issued = "issued",
        InvalidRequest = "invalid_request",
        UnsupportedGrantType = "unsupported_grant_type",
        InvalidGrant = "invalid_grant",
        Expired = "expired",
        NetworkRefused = "network_refused",
        Throttled = "throttled",
        Unavailable = "unavailable",
    }
);

label_enum!(
    /// `tokengate_bearer_refusals_total{reason}`: why a proxied request was
    /// refused before it reached the upstream.
    Refusal {
        Missing = "missing",
        Scheme = "scheme",
        Repeated = "repeated",
        Malformed = "malformed",
        Forged = "forged",
        EarlierBoot = "earlier_boot",
        UnknownBoot = "unknown_boot",
        Unknown = "unknown",
        Expired = "expired",
        RefreshGone = "refresh_gone",
        RefreshUnseen = "refresh_unseen",
        Rotated = "rotated",
        Evicted = "evicted",
        Network = "network",
        Scope = "scope",
        RateLimited = "rate_limited",
        Throttled = "throttled",
        Stale = "stale",
    }
);

label_enum!(
    /// `tokengate_upstream_errors_total{kind}`.
    UpstreamError { Connect = "connect", Timeout = "timeout", Failed = "failed" }
);

label_enum!(
    /// `tokengate_reloads_total{kind}`.
    ReloadKind { Config = "config", Certificate = "certificate" }
);

/// Status classes 1xx to 5xx (`status` label).
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One listener's connections, as its accept loop sees them.
#[derive(Default)]
pub(crate) struct ConnStats {
    /// Open connections by protocol, HTTP/1.1 and HTTP/2.
    open: [AtomicI64; 2],
    handshakes: AtomicU64,
    /// Failed handshakes: an error, or no handshake within the deadline.
    handshake_errors: AtomicU64,
    handshake_timeouts: AtomicU64,
}

/// Which way a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    Done,
    Failed,
    TimedOut,
}

impl ConnStats {
    pub(crate) fn handshake(&self, h: Handshake) {
        let c = match h {
            Handshake::Done => &self.handshakes,
            Handshake::Failed => &self.handshake_errors,
            Handshake::TimedOut => &self.handshake_timeouts,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Counts an open connection until the guard is dropped.
    pub(crate) fn open(&self, h2: bool) -> OpenConn<'_> {
        let g = &self.open[usize::from(h2)];
        g.fetch_add(1, Relaxed);
        OpenConn(g)
    }

    fn add_to(&self, s: &mut ConnSnapshot) {
        for (sum, g) in s.open.iter_mut().zip(&self.open) {
            *sum += g.load(Relaxed);
        }
        s.handshakes += self.handshakes.load(Relaxed);
        s.handshake_errors += self.handshake_errors.load(Relaxed);
        s.handshake_timeouts += self.handshake_timeouts.load(Relaxed);
    }
}

/// One open connection in `ConnStats`.
pub(crate) struct OpenConn<'a>(&'a AtomicI64);

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[derive(Default, Clone, Copy)]
struct ConnSnapshot {
    open: [i64; 2],
    handshakes: u64,
    handshake_errors: u64,
    handshake_timeouts: u64,
}

/// One public worker's counters. Aligned so no two workers' blocks share a
/// cache line (128: adjacent-line prefetch pairs lines on x86).
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct WorkerMetrics {
    requests: [[AtomicU64; CLASSES.len()]; RouteLabel::COUNT],
    duration: [Histogram; RouteLabel::COUNT],
    upstream: Histogram,
    upstream_errors: [AtomicU64; UpstreamError::COUNT],
    exchanges: [AtomicU64; Exchange::COUNT],
    refusals: [AtomicU64; Refusal::COUNT],
    pub(crate) conns: ConnStats,
}

impl WorkerMetrics {
    /// A finished request: its route, status and whole duration (until its
    /// response body was sent or dropped).
    pub(crate) fn request(&self, route: RouteLabel, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, CLASSES.len()) - 1;
        self.requests[route as usize][class].fetch_add(1, Relaxed);
        self.duration[route as usize].observe(took);
    }

    /// The upstream's time to answer (its response head), or to fail.
    pub(crate) fn upstream(&self, took: Duration) {
        self.upstream.observe(took);
    }

    pub(crate) fn upstream_error(&self, e: UpstreamError) {
        self.upstream_errors[e as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn exchange(&self, r: Exchange) {
        self.exchanges[r as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn refusal(&self, r: Refusal) {
        self.refusals[r as usize].fetch_add(1, Relaxed);
    }
}

/// The registry: every worker's block, the admin listener's connections,
/// and the rare events counted here directly.
pub(crate) struct Metrics {
    enabled: bool,
    /// Written once per worker at start; read by scrapes.
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
    admin: ConnStats,
    reloads: [[AtomicU64; 2]; ReloadKind::COUNT],
}

impl Metrics {
    /// `metrics.enabled = false`: no blocks are handed out, so the request
    /// path records nothing, and `/metrics` answers 404.
    pub(crate) fn new(enabled: bool) -> Metrics {
        Metrics {
            enabled,
            workers: Mutex::new(Vec::new()),
            admin: ConnStats::default(),
            reloads: Default::default(),
        }
    }

    /// A new worker's own block, registered for scrapes; `None` when off.
    pub(crate) fn worker(&self) -> Option<Arc<WorkerMetrics>> {
        if !self.enabled {
            return None;
        }
        let m = Arc::new(WorkerMetrics::default());
        if let Ok(mut w) = self.workers.lock() {
            w.push(m.clone());
        }
        Some(m)
    }

    /// The admin listener's connection counters; `None` when off.
    pub(crate) fn admin_conns(&self) -> Option<&ConnStats> {
        self.enabled.then_some(&self.admin)
    }

    /// Counts a configuration or certificate reload
    /// (`tokengate_reloads_total{kind, result}`): SIGHUP and the API count
    /// as `config`, the certificate-file watch as `certificate`.
    pub(crate) fn reload(&self, kind: ReloadKind, ok: bool) {
        self.reloads[kind as usize][usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// What one scrape shows, or `None` when metrics are off (and then
    /// `gauges` is not called).
    pub(crate) fn snapshot(&self, gauges: impl FnOnce() -> Gauges) -> Option<Snapshot> {
        if !self.enabled {
            return None;
        }
        Some(Snapshot {
            totals: self.sum(),
            reloads: self
                .reloads
                .each_ref()
                .map(|k| k.each_ref().map(|n| n.load(Relaxed))),
            gauges: gauges(),
        })
    }

    /// Every worker's counters summed.
    fn sum(&self) -> Totals {
        let mut t = Totals::default();
        let workers = match self.workers.lock() {
            Ok(w) => w.clone(),
            Err(p) => p.into_inner().clone(),
        };
        for w in &workers {
            for (r, row) in w.requests.iter().enumerate() {
                for (c, n) in row.iter().enumerate() {
                    t.requests[r][c] += n.load(Relaxed);
                }
            }
            for (h, into) in w.duration.iter().zip(&mut t.duration) {
                h.add_to(into);
            }
            w.upstream.add_to(&mut t.upstream);
            add_all(&w.upstream_errors, &mut t.upstream_errors);
            add_all(&w.exchanges, &mut t.exchanges);
            add_all(&w.refusals, &mut t.refusals);
            w.conns.add_to(&mut t.public);
        }
        self.admin.add_to(&mut t.admin);
        t
    }
}

fn add_all(from: &[AtomicU64], into: &mut [u64]) {
    for (sum, n) in into.iter_mut().zip(from) {
        *sum += n.load(Relaxed);
    }
}

/// A scrape's view of the counters.
#[derive(Default)]
struct Totals {
    requests: [[u64; CLASSES.len()]; RouteLabel::COUNT],
    duration: [HistogramSnapshot; RouteLabel::COUNT],
    upstream: HistogramSnapshot,
    upstream_errors: [u64; UpstreamError::COUNT],
    exchanges: [u64; Exchange::COUNT],
    refusals: [u64; Refusal::COUNT],
    public: ConnSnapshot,
    admin: ConnSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_hold_their_upper_bound() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_secs(3600));
        let mut s = HistogramSnapshot::default();
        h.add_to(&mut s);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[BUCKETS.len()], 1);
        assert_eq!(s.sum_ns, 3_600_001_001_000);
        assert_eq!(BUCKETS.len(), BUCKET_NS.len());
        for (s, ns) in BUCKETS.iter().zip(BUCKET_NS) {
            assert!((s * 1e9 - ns as f64).abs() < 1.0);
        }
    }

    #[test]
    fn scrapes_sum_every_worker() {
        let m = Metrics::new(true);
        let (a, b) = (m.worker().unwrap(), m.worker().unwrap());
        a.request(RouteLabel::Proxy, 200, Duration::from_millis(1));
        b.request(RouteLabel::Proxy, 204, Duration::from_millis(1));
        b.request(RouteLabel::Token, 400, Duration::from_millis(1));
        b.request(RouteLabel::Token, 99, Duration::from_millis(1));
        let t = m.sum();
        assert_eq!(t.requests[RouteLabel::Proxy as usize][1], 2);
        assert_eq!(t.requests[RouteLabel::Token as usize][3], 1);
        assert_eq!(t.requests[RouteLabel::Token as usize][0], 1);
        assert!(Metrics::new(false).worker().is_none());
    }
}
