//! One scrape: the workers' counters summed, and the gauges the state
//! already knows, read now.

use super::text::Text;
use super::{ConnSnapshot, Exchange, Refusal, ReloadKind, RouteLabel, UpstreamError, CLASSES};
use crate::state::State;

/// The whole scrape, or `None` when metrics are off (`metrics.enabled`).
pub(crate) fn render(state: &State) -> Option<String> {
    let m = &state.view.metrics;
    if !m.enabled() {
        return None;
    }
    let t = m.sum();
    let mut out = Text::default();
    let o = &mut out;

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

    o.family(
        "tokengate_http_requests_total",
        "counter",
        "Requests the public listener answered, by route and status class.",
    );
    for r in RouteLabel::ALL {
        for (c, class) in CLASSES.iter().enumerate() {
            let n = t.requests[*r as usize][c];
            o.sample(
                "tokengate_http_requests_total",
                &[("route", r.label()), ("status", class)],
                n,
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
    o.family(
        "tokengate_upstream_duration_seconds",
        "histogram",
        "Time the upstream took to answer (its response head) or to fail.",
    );
    o.histogram("tokengate_upstream_duration_seconds", &[], &t.upstream);
    o.family(
        "tokengate_upstream_errors_total",
        "counter",
        "Upstream requests that failed: connect (unreachable), timeout (upstream.response_timeout), failed (broken answer).",
    );
    for e in UpstreamError::ALL {
        o.sample(
            "tokengate_upstream_errors_total",
            &[("kind", e.label())],
            t.upstream_errors[*e as usize],
        );
    }
    o.family(
        "tokengate_token_exchanges_total",
        "counter",
        "Token endpoint requests by result.",
    );
    for e in Exchange::ALL {
        o.sample(
            "tokengate_token_exchanges_total",
            &[("result", e.label())],
            t.exchanges[*e as usize],
        );
    }
    o.family(
        "tokengate_bearer_refusals_total",
        "counter",
        "Proxied requests refused before the upstream, by reason.",
    );
    for r in Refusal::ALL {
        o.sample(
            "tokengate_bearer_refusals_total",
            &[("reason", r.label())],
            t.refusals[*r as usize],
        );
    }

    o.family(
        "tokengate_access_tokens",
        "gauge",
        "Live access tokens in memory.",
    );
    o.sample("tokengate_access_tokens", &[], state.view.access.len());
    let (active, soon, expired) = refresh_states(state);
    o.family(
        "tokengate_refresh_tokens",
        "gauge",
        "Refresh tokens by state: active, expiring_soon (within 7 days), expired (not yet deleted). Disjoint.",
    );
    for (s, n) in [
        ("active", active),
        ("expiring_soon", soon),
        ("expired", expired),
    ] {
        o.sample("tokengate_refresh_tokens", &[("state", s)], n);
    }

    o.family(
        "tokengate_open_connections",
        "gauge",
        "Open client connections by listener and protocol (after the TLS handshake).",
    );
    let listeners = [("public", &t.public), ("admin", &t.admin)];
    for (l, c) in listeners {
        for (p, n) in [("h1", c.open[0]), ("h2", c.open[1])] {
            o.sample(
                "tokengate_open_connections",
                &[("listener", l), ("protocol", p)],
                n,
            );
        }
    }
    o.family(
        "tokengate_tls_handshakes_total",
        "counter",
        "TLS handshakes completed, by listener.",
    );
    for (l, c) in listeners {
        o.sample(
            "tokengate_tls_handshakes_total",
            &[("listener", l)],
            c.handshakes,
        );
    }
    o.family(
        "tokengate_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed (error) or did not finish in time (timeout).",
    );
    for (l, c) in listeners {
        handshake_failures(o, l, c);
    }

    o.family(
        "tokengate_reloads_total",
        "counter",
        "Configuration and certificate reloads, by result.",
    );
    for k in ReloadKind::ALL {
        for (i, result) in ["success", "failure"].iter().enumerate() {
            let n = m.reloads[*k as usize][i].load(std::sync::atomic::Ordering::Relaxed);
            o.sample(
                "tokengate_reloads_total",
                &[("kind", k.label()), ("result", result)],
                n,
            );
        }
    }

    o.family(
        "tokengate_access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer was behind.",
    );
    o.sample(
        "tokengate_access_log_dropped_total",
        &[],
        state.view.access_log.as_ref().map_or(0, |a| a.dropped()),
    );
    let audit = state.view.audit.dropped();
    o.family(
        "tokengate_audit_dropped_total",
        "counter",
        "Audit events dropped because the writer was behind, by class.",
    );
    for (class, n) in [("client", audit.client), ("security", audit.security)] {
        o.sample("tokengate_audit_dropped_total", &[("class", class)], n);
    }

    if let Some(c) = &state.view.cluster {
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
            c.staleness().as_secs_f64(),
        );
        o.family(
            "tokengate_cluster_connected",
            "gauge",
            "1 while the change feed is connected and fresh enough to issue tokens.",
        );
        o.sample(
            "tokengate_cluster_connected",
            &[],
            u8::from(c.check_connected().is_ok()),
        );
        o.family(
            "tokengate_cluster_changes_applied_total",
            "counter",
            "Changes applied from the cluster's change feed.",
        );
        o.sample("tokengate_cluster_changes_applied_total", &[], c.applied());
        o.family(
            "tokengate_cluster_peer_boots",
            "gauge",
            "Other replicas' boots whose access tokens this replica accepts.",
        );
        o.sample(
            "tokengate_cluster_peer_boots",
            &[],
            state.view.access.peers(),
        );
    }
    Some(out.0)
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

/// Refresh tokens: (active, expiring soon, expired), as the store counts
/// them (`store::EXPIRING_SOON_SECS` is the one "soon").
fn refresh_states(state: &State) -> (u64, u64, u64) {
    let n = state.view.store.by_expiry(state.view.clock.unix());
    (n.active, n.expiring_soon, n.expired)
}
