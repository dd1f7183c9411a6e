//! One scrape: a plain `Snapshot` (the workers' counters summed, plus the
//! `Gauges` that the layers above hold and fill in at scrape time), written
//! out in Prometheus' text format. Nothing here reads the gateway's state:
//! the metrics sit below everything they count.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::text::Text;
use super::{
    ConnSnapshot, Exchange, Refusal, ReloadKind, RouteLabel, Totals, UpstreamError, CLASSES,
};
use crate::wire::{error, Reply};

/// The gauges a scrape reads now from what the layers above hold (live
/// tokens, the log writers, the cluster feed). Whoever owns those fills
/// this in; `Metrics::snapshot` asks for it only when metrics are on.
#[derive(Debug, Default, Clone)]
pub(crate) struct Gauges {
    /// Live access tokens in memory.
    pub(crate) access_tokens: usize,
    pub(crate) refresh_tokens: RefreshTokens,
    /// Lines the access log's writer dropped (0 with the access log off).
    pub(crate) access_log_dropped: u64,
    /// Audit events the audit writer dropped, by class.
    pub(crate) audit_dropped_client: u64,
    pub(crate) audit_dropped_security: u64,
    /// Cluster mode only.
    pub(crate) cluster: Option<ClusterGauges>,
    pub(crate) webhooks: WebhookGauges,
}

/// The webhooks' deliveries (all zero without `[[webhooks]]`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WebhookGauges {
    pub(crate) delivered: u64,
    pub(crate) failed_attempts: u64,
    pub(crate) dropped: u64,
    /// Deliveries in the outbox, as of the worker's last round.
    pub(crate) outbox_depth: u64,
}

/// Refresh tokens by state; disjoint.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefreshTokens {
    pub(crate) active: u64,
    /// Not expired, but within the "expiring soon" window.
    pub(crate) expiring_soon: u64,
    /// Expired, not yet deleted.
    pub(crate) expired: u64,
}

/// The change feed, as this replica sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClusterGauges {
    /// Since the last successful round with PostgreSQL.
    pub(crate) staleness: Duration,
    /// Connected and fresh enough to issue tokens.
    pub(crate) connected: bool,
    pub(crate) changes_applied: u64,
    /// Other replicas' boots whose access tokens this replica accepts.
    pub(crate) peer_boots: usize,
}

/// Everything one scrape shows, read at one moment.
pub(crate) struct Snapshot {
    pub(super) totals: Totals,
    /// `[kind][success, failure]`.
    pub(super) reloads: [[u64; 2]; ReloadKind::COUNT],
    pub(super) gauges: Gauges,
}

/// The scrape of `s` in the text format.
pub(crate) fn render(s: &Snapshot) -> String {
    let mut out = Text::default();
    let o = &mut out;
    let (t, g) = (&s.totals, &s.gauges);
    build_info(o);
    requests(o, t);
    upstream(o, t);
    outcomes(o, t);
    tokens(o, g);
    connections(o, t);
    reloads(o, &s.reloads);
    dropped(o, g);
    webhooks(o, &g.webhooks);
    if let Some(c) = &g.cluster {
        cluster(o, c);
    }
    out.0
}

/// The scrape as an HTTP answer (on the admin listener and the metrics
/// listener alike): 404 when metrics are off (`snapshot` is `None`).
pub(crate) fn reply(snapshot: Option<Snapshot>) -> Reply {
    match snapshot {
        Some(s) => {
            let mut r = Response::new(Full::new(Bytes::from(render(&s))));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(super::text::CONTENT_TYPE),
            );
            r
        }
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are off (metrics.enabled = false)",
        ),
    }
}

/// A family with one label: its header, then one sample per `(value, n)`.
fn by_label<'a, N: std::fmt::Display>(
    o: &mut Text,
    (name, kind, help): (&str, &str, &str),
    label: &str,
    rows: impl IntoIterator<Item = (&'a str, N)>,
) {
    o.family(name, kind, help);
    for (value, n) in rows {
        o.sample(name, &[(label, value)], n);
    }
}

fn build_info(o: &mut Text) {
    o.family(
        "tokengate_build_info",
        "gauge",
        "The running build: its version and git revision (always 1).",
    );
    o.sample(
        "tokengate_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", env!("TG_GIT_REVISION")),
        ],
        1,
    );
}

/// The public listener's requests: counts by route and status class, and durations.
fn requests(o: &mut Text, t: &Totals) {
    o.family(
        "tokengate_http_requests_total",
        "counter",
        "Requests the public listener answered, by route and status class.",
    );
    for r in RouteLabel::ALL {
        for (c, class) in CLASSES.iter().enumerate() {
            o.sample(
                "tokengate_http_requests_total",
                &[("route", r.label()), ("status", class)],
                t.requests[*r as usize][c],
            );
        }
    }
    o.family(
        "tokengate_http_request_duration_seconds",
        "histogram",
        "Public requests from the request head to the end of the response body.",
    );
    for r in RouteLabel::ALL {
        o.histogram(
            "tokengate_http_request_duration_seconds",
            &[("route", r.label())],
            &t.duration[*r as usize],
        );
    }
}

fn upstream(o: &mut Text, t: &Totals) {
    o.family(
        "tokengate_upstream_duration_seconds",
        "histogram",
        "Time the upstream took to answer (its response head) or to fail.",
    );
    o.histogram("tokengate_upstream_duration_seconds", &[], &t.upstream);
    by_label(
        o,
        (
            "tokengate_upstream_errors_total",
            "counter",
            "Upstream requests that failed: connect (unreachable), timeout (upstream.response_timeout), failed (broken answer).",
        ),
        "kind",
        UpstreamError::ALL
            .iter()
            .map(|e| (e.label(), t.upstream_errors[*e as usize])),
    );
}

/// How token requests and proxied requests ended.
fn outcomes(o: &mut Text, t: &Totals) {
    by_label(
        o,
        (
            "tokengate_token_exchanges_total",
            "counter",
            "Token endpoint requests by result.",
        ),
        "result",
        Exchange::ALL
            .iter()
            .map(|e| (e.label(), t.exchanges[*e as usize])),
    );
    by_label(
        o,
        (
            "tokengate_bearer_refusals_total",
            "counter",
            "Proxied requests refused before the upstream, by reason.",
        ),
        "reason",
        Refusal::ALL
            .iter()
            .map(|r| (r.label(), t.refusals[*r as usize])),
    );
}

fn tokens(o: &mut Text, g: &Gauges) {
    o.family(
        "tokengate_access_tokens",
        "gauge",
        "Live access tokens in memory.",
    );
    o.sample("tokengate_access_tokens", &[], g.access_tokens);
    let r = g.refresh_tokens;
    by_label(
        o,
        (
            "tokengate_refresh_tokens",
            "gauge",
            "Refresh tokens by state: active, expiring_soon (within 7 days), expired (not yet deleted). Disjoint.",
        ),
        "state",
        [
            ("active", r.active),
            ("expiring_soon", r.expiring_soon),
            ("expired", r.expired),
        ],
    );
}

/// Both listeners' connections and TLS handshakes.
fn connections(o: &mut Text, t: &Totals) {
    let listeners = [("public", &t.public), ("admin", &t.admin)];
    o.family(
        "tokengate_open_connections",
        "gauge",
        "Open client connections by listener and protocol (after the TLS handshake).",
    );
    for (l, c) in listeners {
        for (p, n) in [("h1", c.open[0]), ("h2", c.open[1])] {
            o.sample(
                "tokengate_open_connections",
                &[("listener", l), ("protocol", p)],
                n,
            );
        }
    }
    by_label(
        o,
        (
            "tokengate_tls_handshakes_total",
            "counter",
            "TLS handshakes completed, by listener.",
        ),
        "listener",
        listeners.map(|(l, c)| (l, c.handshakes)),
    );
    o.family(
        "tokengate_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed (error) or did not finish in time (timeout).",
    );
    for (l, c) in listeners {
        handshake_failures(o, l, c);
    }
}

fn handshake_failures(o: &mut Text, listener: &str, c: &ConnSnapshot) {
    for (reason, n) in [
        ("error", c.handshake_errors),
        ("timeout", c.handshake_timeouts),
    ] {
        o.sample(
            "tokengate_tls_handshake_failures_total",
            &[("listener", listener), ("reason", reason)],
            n,
        );
    }
}

fn reloads(o: &mut Text, reloads: &[[u64; 2]; ReloadKind::COUNT]) {
    o.family(
        "tokengate_reloads_total",
        "counter",
        "Configuration and certificate reloads, by result.",
    );
    for k in ReloadKind::ALL {
        for (i, result) in ["success", "failure"].iter().enumerate() {
            o.sample(
                "tokengate_reloads_total",
                &[("kind", k.label()), ("result", result)],
                reloads[*k as usize][i],
            );
        }
    }
}

/// What the log writers dropped because they were behind.
fn dropped(o: &mut Text, g: &Gauges) {
    o.family(
        "tokengate_access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer was behind.",
    );
    o.sample(
        "tokengate_access_log_dropped_total",
        &[],
        g.access_log_dropped,
    );
    by_label(
        o,
        (
            "tokengate_audit_dropped_total",
            "counter",
            "Audit events dropped because the writer was behind, by class.",
        ),
        "class",
        [
            ("client", g.audit_dropped_client),
            ("security", g.audit_dropped_security),
        ],
    );
}

fn webhooks(o: &mut Text, w: &WebhookGauges) {
    for (name, kind, help, n) in [
        (
            "tokengate_webhook_deliveries_total",
            "counter",
            "Webhook deliveries an endpoint accepted (2xx).",
            w.delivered,
        ),
        (
            "tokengate_webhook_failed_attempts_total",
            "counter",
            "Webhook delivery attempts that failed (no 2xx answer, or no answer); each is retried.",
            w.failed_attempts,
        ),
        (
            "tokengate_webhook_dropped_total",
            "counter",
            "Webhook deliveries given up on (still failing 24 h after the event, or no room to queue them).",
            w.dropped,
        ),
        (
            "tokengate_webhook_outbox_depth",
            "gauge",
            "Webhook deliveries waiting in the outbox (due or retrying).",
            w.outbox_depth,
        ),
    ] {
        o.family(name, kind, help);
        o.sample(name, &[], n);
    }
}

fn cluster(o: &mut Text, c: &ClusterGauges) {
    // Every change committed before the last contact is applied here:
    // the staleness bounds the propagation lag.
    o.family(
        "tokengate_cluster_staleness_seconds",
        "gauge",
        "Seconds since the last successful round with PostgreSQL (bounds how late a change can arrive here).",
    );
    o.sample(
        "tokengate_cluster_staleness_seconds",
        &[],
        c.staleness.as_secs_f64(),
    );
    o.family(
        "tokengate_cluster_connected",
        "gauge",
        "1 while the change feed is connected and fresh enough to issue tokens.",
    );
    o.sample("tokengate_cluster_connected", &[], u8::from(c.connected));
    o.family(
        "tokengate_cluster_changes_applied_total",
        "counter",
        "Changes applied from the cluster's change feed.",
    );
    o.sample(
        "tokengate_cluster_changes_applied_total",
        &[],
        c.changes_applied,
    );
    o.family(
        "tokengate_cluster_peer_boots",
        "gauge",
        "Other replicas' boots whose access tokens this replica accepts.",
    );
    o.sample("tokengate_cluster_peer_boots", &[], c.peer_boots);
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use super::*;

    #[test]
    fn a_scrape_is_rendered_from_the_snapshot_alone() {
        let m = Metrics::new(true);
        let gauges = || Gauges {
            access_tokens: 3,
            refresh_tokens: RefreshTokens {
                active: 5,
                expiring_soon: 1,
                expired: 2,
            },
            audit_dropped_security: 4,
            webhooks: WebhookGauges {
                delivered: 6,
                outbox_depth: 2,
                ..WebhookGauges::default()
            },
            cluster: Some(ClusterGauges {
                staleness: Duration::from_millis(1500),
                connected: true,
                changes_applied: 9,
                peer_boots: 2,
            }),
            ..Gauges::default()
        };
        m.reload(ReloadKind::Certificate, false);
        let text = render(&m.snapshot(gauges).unwrap());
        for line in [
            "tokengate_access_tokens 3\n",
            "tokengate_refresh_tokens{state=\"expiring_soon\"} 1\n",
            "tokengate_refresh_tokens{state=\"expired\"} 2\n",
            "tokengate_audit_dropped_total{class=\"security\"} 4\n",
            "tokengate_reloads_total{kind=\"certificate\",result=\"failure\"} 1\n",
            "tokengate_cluster_staleness_seconds 1.5\n",
            "tokengate_cluster_connected 1\n",
            "tokengate_cluster_peer_boots 2\n",
            "tokengate_webhook_deliveries_total 6\n",
            "tokengate_webhook_outbox_depth 2\n",
            "tokengate_webhook_dropped_total 0\n",
            "# TYPE tokengate_tls_handshake_failures_total counter\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // Off: no snapshot, and the gauges are never asked for.
        let off = Metrics::new(false);
        assert!(off
            .snapshot(|| unreachable!("gauges read with metrics off"))
            .is_none());
        // Without a cluster, no cluster families.
        let text = render(&m.snapshot(Gauges::default).unwrap());
        assert!(!text.contains("tokengate_cluster_"), "{text}");
    }
}
