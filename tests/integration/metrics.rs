//! Prometheus metrics on a real gateway: `/metrics` on the admin listener
//! (HTTP Basic), and on its own unauthenticated listener (`metrics.listen`).
//! The counters move by exactly what the test drove, the scrape passes
//! `promtool check metrics`, and `metrics.enabled = false` turns it all off.

use std::collections::HashMap;
use std::time::Duration;

use crate::common;
use crate::common::{dead_address, eventually_ok, upstream, TestGateway};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Scrape = HashMap<String, f64>;

/// Series → value, from the text format (comments skipped).
fn parse(text: &str) -> Scrape {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

async fn scrape_text(gw: &TestGateway) -> String {
    let r = gw.client.admin_call("GET", "/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text()
}

async fn scrape(gw: &TestGateway) -> Scrape {
    parse(&scrape_text(gw).await)
}

fn get(s: &Scrape, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("no series {series} in the scrape"))
}

/// Waits until every `(series, delta)` moved by exactly `delta` from `before`
/// (a request is counted when its response body is done, a moment after
/// the client has read it).
async fn expect_deltas(gw: &TestGateway, before: &Scrape, want: &[(&str, f64)]) -> Scrape {
    eventually_ok(Duration::from_secs(10), "the counters to move", || async {
        let now = scrape(gw).await;
        let wrong: Vec<String> = want
            .iter()
            .filter_map(|(series, delta)| {
                let moved = get(&now, series) - before.get(*series).copied().unwrap_or(0.0);
                (moved != *delta).then(|| format!("{series}: moved {moved}, want {delta}"))
            })
            .collect();
        if wrong.is_empty() {
            Ok(now)
        } else {
            Err(wrong)
        }
    })
    .await
}

#[tokio::test]
async fn counters_move_by_exactly_what_was_driven() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("metrics bot").await;
    let before = scrape(&gw).await;
    assert_eq!(get(&before, "tokengate_access_tokens"), 0.0);
    assert_eq!(
        get(&before, r#"tokengate_refresh_tokens{state="active"}"#),
        1.0
    );

    let access = gw.exchange(&refresh).await;
    gw.exchange(&refresh).await;
    let bad = gw
        .client
        .token_form("grant_type=refresh_token&refresh_token=tgr_nope")
        .await;
    assert_eq!(bad.json()["error"], "invalid_grant");
    let bad = gw.client.token_form("grant_type=password").await;
    assert_eq!(bad.json()["error"], "unsupported_grant_type");
    for _ in 0..3 {
        let r = gw.client.api_get("/api/things", &access).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for _ in 0..2 {
        let r = gw.client.get_with("/api/things", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = gw.client.api_get("/api/things", "tga_forged").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = gw.client.get_with("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK);

    let after = expect_deltas(
        &gw,
        &before,
        &[
            (r#"tokengate_token_exchanges_total{result="issued"}"#, 2.0),
            (
                r#"tokengate_token_exchanges_total{result="invalid_grant"}"#,
                1.0,
            ),
            (
                r#"tokengate_token_exchanges_total{result="unsupported_grant_type"}"#,
                1.0,
            ),
            (r#"tokengate_token_exchanges_total{result="expired"}"#, 0.0),
            (
                r#"tokengate_http_requests_total{route="token",status="2xx"}"#,
                2.0,
            ),
            (
                r#"tokengate_http_requests_total{route="token",status="4xx"}"#,
                2.0,
            ),
            (
                r#"tokengate_http_requests_total{route="proxy",status="2xx"}"#,
                3.0,
            ),
            (
                r#"tokengate_http_requests_total{route="proxy",status="4xx"}"#,
                3.0,
            ),
            (
                r#"tokengate_http_requests_total{route="health",status="2xx"}"#,
                1.0,
            ),
            (r#"tokengate_bearer_refusals_total{reason="missing"}"#, 2.0),
            (
                r#"tokengate_bearer_refusals_total{reason="malformed"}"#,
                1.0,
            ),
            (
                r#"tokengate_http_request_duration_seconds_count{route="proxy"}"#,
                6.0,
            ),
            (
                r#"tokengate_http_request_duration_seconds_bucket{route="proxy",le="+Inf"}"#,
                6.0,
            ),
            ("tokengate_upstream_duration_seconds_count", 3.0),
            (r#"tokengate_upstream_errors_total{kind="connect"}"#, 0.0),
        ],
    )
    .await;
    assert_eq!(get(&after, "tokengate_access_tokens"), 2.0);
    assert!(get(&after, "tokengate_upstream_duration_seconds_sum") > 0.0);
    assert!(
        get(
            &after,
            r#"tokengate_tls_handshakes_total{listener="public"}"#
        ) >= 1.0
    );
    assert!(
        get(
            &after,
            r#"tokengate_tls_handshakes_total{listener="admin"}"#
        ) >= 1.0
    );
    // This scrape's own connection is open on the admin listener.
    assert!(
        get(
            &after,
            r#"tokengate_open_connections{listener="admin",protocol="h1"}"#
        ) >= 1.0
    );
    let info = after
        .keys()
        .find(|k| k.starts_with("tokengate_build_info{"))
        .expect("build info");
    assert!(
        info.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    // The reload hook's counters are there, at zero, for the reloads to move.
    assert_eq!(
        get(
            &after,
            r#"tokengate_reloads_total{kind="certificate",result="failure"}"#
        ),
        0.0
    );
    assert_eq!(get(&after, "tokengate_access_log_dropped_total"), 0.0);
    assert!(!after.keys().any(|k| k.starts_with("tokengate_cluster_")));
}

#[tokio::test]
async fn http2_connections_and_refresh_token_states_are_gauges() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("h2").await;
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &serde_json::json!({"name": "soon", "expires": "3d"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let access = gw.exchange(&refresh).await;
    // An HTTP/2 connection stays open in the client's pool after this.
    let r = gw
        .client
        .send_h2(
            gw.client
                .public_req("GET", "/api/x")
                .header("authorization", format!("Bearer {access}"))
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    let s = scrape(&gw).await;
    assert_eq!(
        get(
            &s,
            r#"tokengate_open_connections{listener="public",protocol="h2"}"#
        ),
        1.0
    );
    assert_eq!(get(&s, r#"tokengate_refresh_tokens{state="active"}"#), 1.0);
    assert_eq!(
        get(&s, r#"tokengate_refresh_tokens{state="expiring_soon"}"#),
        1.0
    );
    gw.clock.advance(Duration::from_secs(4 * 86_400));
    let s = scrape(&gw).await;
    assert_eq!(get(&s, r#"tokengate_refresh_tokens{state="expired"}"#), 1.0);
    assert_eq!(
        get(&s, r#"tokengate_refresh_tokens{state="expiring_soon"}"#),
        0.0
    );
}

#[tokio::test]
async fn the_admin_scrape_needs_the_admin_credentials() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let r = gw.client.admin_get_anonymous("/metrics").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!r.text().contains("tokengate_"));
    use base64::Engine;
    let wrong = base64::engine::general_purpose::STANDARD.encode("admin:wrong");
    let req = http::Request::get(format!("{}/metrics", gw.client.admin))
        .header("authorization", format!("Basic {wrong}"))
        .body(Default::default())
        .unwrap();
    let r = gw.client.send(req).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = gw.client.admin_call("POST", "/metrics").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// A plain HTTP/1.1 exchange with `addr`, the whole answer as text.
async fn plain_http(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    out
}

#[tokio::test]
async fn the_metrics_listener_serves_the_scrape_without_credentials() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| f.metrics.listen = "127.0.0.1:0".into()).await;
    let addr = gw.gateway.as_ref().unwrap().metrics_addr.expect("bound");
    assert!(addr.ip().is_loopback());
    let r = gw.client.get_with("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = eventually_ok(
        Duration::from_secs(10),
        "the health check counted",
        || async {
            let answer = plain_http(addr, "GET", "/metrics").await;
            match answer.contains(r#"tokengate_http_requests_total{route="health",status="2xx"} 1"#)
            {
                true => Ok(answer),
                false => Err(answer),
            }
        },
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text
        .to_ascii_lowercase()
        .contains("content-type: text/plain; version=0.0.4"));
    let post = plain_http(addr, "POST", "/metrics").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let other = plain_http(addr, "GET", "/api/refresh-tokens").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

/// One HTTP/1.1 request with `host` as its `Host`, from `source`.
async fn plain_http_as(addr: std::net::SocketAddr, source: &str, host: &str) -> String {
    let mut tcp = common::connect_from(source, addr).await;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    out
}

/// DNS rebinding: a web page re-points its own name at the metrics listener
/// and reads the scrape as same-origin. The listener answers only to an IP
/// literal, `localhost` or `metrics.allowed_hosts` (421 otherwise), and one
/// address cannot hold all of its 16 connections.
#[tokio::test]
async fn the_metrics_listener_refuses_unknown_hosts_and_shares_its_connections() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.metrics.listen = "127.0.0.1:0".into();
        f.metrics.allowed_hosts = vec!["prom.internal".into()];
    })
    .await;
    let addr = gw.gateway.as_ref().unwrap().metrics_addr.expect("bound");
    let port = addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "[::1]".to_owned(),
        format!("Prom.Internal:{port}"),
    ] {
        let r = plain_http_as(addr, "127.0.0.1", &host).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{host}: {r}");
    }
    for host in [
        format!("rebind.attacker.example:{port}"),
        "localhost.attacker.example".to_owned(),
    ] {
        let r = plain_http_as(addr, "127.0.0.1", &host).await;
        assert!(r.starts_with("HTTP/1.1 421"), "{host}: {r}");
        assert!(r.contains("metrics.allowed_hosts"), "{r}");
        assert!(!r.contains("tokengate_"), "no scrape: {r}");
    }

    // One address holds 4 connections at most; the 5th to 10th are closed,
    // and another address is served meanwhile.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(
            common::connect_from("127.0.0.2", addr)
                .await
                .into_std()
                .unwrap(),
        );
    }
    common::eventually(Duration::from_secs(10), "the excess closed", || {
        let open = held.iter().filter(|s| !common::closed_by_peer(s)).count();
        async move { (open == 4).then_some(()) }
    })
    .await;
    let r = plain_http_as(addr, "127.0.0.3", "127.0.0.1").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test]
async fn metrics_off_records_nothing_and_answers_404() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| f.metrics.enabled = false).await;
    let r = gw.client.get_with("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = gw.client.admin_call("GET", "/metrics").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("metrics.enabled"), "{}", r.text());
}

#[tokio::test]
async fn upstream_connect_errors_are_counted() {
    let dead = dead_address().await;
    let gw = TestGateway::start(dead).await;
    let (_, refresh) = gw.create_token("dead upstream").await;
    let access = gw.exchange(&refresh).await;
    let before = scrape(&gw).await;
    let r = gw.client.api_get("/api/x", &access).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    expect_deltas(
        &gw,
        &before,
        &[
            (r#"tokengate_upstream_errors_total{kind="connect"}"#, 1.0),
            (
                r#"tokengate_http_requests_total{route="proxy",status="5xx"}"#,
                1.0,
            ),
            ("tokengate_upstream_duration_seconds_count", 1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn promtool_accepts_the_scrape() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("promtool").await;
    let access = gw.exchange(&refresh).await;
    gw.client.api_get("/api/x", &access).await;
    let text = scrape_text(&gw).await;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!(
                "\n*** SKIPPED promtool_accepts_the_scrape: promtool is not installed \
                 (apt-get install prometheus); CI runs it ***\n"
            );
            return;
        }
        Err(e) => panic!("cannot run promtool (Debian package prometheus): {e}"),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool: {said}\n--- scrape ---\n{text}"
    );
    // Lint problems are printed even when promtool exits 0.
    assert!(
        said.trim().is_empty(),
        "promtool: {said}\n--- scrape ---\n{text}"
    );
}

#[tokio::test]
async fn cluster_mode_exports_its_staleness() {
    let db = common::pg::TestDb::new();
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.storage.backend = "postgres".into();
        f.storage.postgres.url = db.url.clone();
        f.storage.postgres.sslmode = "disable".into();
    })
    .await;
    let (id, _) = gw.create_token("cluster").await;
    let s = scrape(&gw).await;
    assert_eq!(get(&s, "tokengate_cluster_connected"), 1.0);
    let staleness = get(&s, "tokengate_cluster_staleness_seconds");
    assert!((0.0..5.0).contains(&staleness), "{staleness}");
    assert_eq!(get(&s, "tokengate_cluster_peer_boots"), 0.0);
    // Every change, this replica's own delete included, comes back through
    // the feed and is counted there.
    let before = get(&s, "tokengate_cluster_changes_applied_total");
    let r = gw
        .client
        .admin_call("DELETE", &format!("/api/refresh-tokens/{id}"))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    eventually_ok(
        Duration::from_secs(10),
        "the feed to apply a change",
        || async {
            let n = get(
                &scrape(&gw).await,
                "tokengate_cluster_changes_applied_total",
            );
            if n > before {
                Ok(())
            } else {
                Err(n)
            }
        },
    )
    .await;
}
