//! The gateway behind a real HAProxy (Debian's `haproxy`, TCP mode, TLS
//! passed through), as operators deploy it: with `send-proxy-v2` each client
//! behind the balancer is counted on its own, and without PROXY headers the
//! balancer, a trusted proxy, is exempt from the per-client limit, so
//! thousands of client connections through it are all kept and served.
//!
//! `tests/run.sh` installs `haproxy` when it is missing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::haproxy::Haproxy;
use common::{closed_by_peer, connect_from, eventually, secs, TestGateway};
use http::StatusCode;

/// HAProxy in front of the one gateway `backend`.
async fn haproxy(backend: SocketAddr, send_proxy: bool) -> Haproxy {
    common::haproxy::haproxy(&[backend], send_proxy).await
}

/// Waits until the gateway is back to `before` open connections: the
/// connection HAProxy opened for our "is it listening" probe is gone, so
/// counts from here on are ours alone.
async fn settle(gw: &TestGateway, before: usize) {
    eventually(
        Duration::from_secs(10),
        "the probe's connection closed",
        || {
            let n = gw.open_connections();
            async move { (n == before).then_some(()) }
        },
    )
    .await;
}

/// With `send-proxy-v2`, 40 clients x 20 connections through HAProxy are all
/// kept (each client has its own share of 20), one more from a client at
/// its share is refused, and a request through HAProxy reaches the upstream
/// with the client's own address.
#[tokio::test]
async fn with_proxy_headers_each_client_behind_haproxy_has_its_own_share() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.proxy_protocol = true;
        f.public.trusted_proxies = vec!["127.0.0.1/32".into()];
        f.public.max_connections_per_client = 20;
        f.public.tls_handshake_timeout = secs(120);
    })
    .await;
    let before = gw.open_connections();
    let lb = haproxy(gw.public_addr(), true).await;
    settle(&gw, before).await;
    let mut held = Vec::new();
    for client in 1..=40 {
        for _ in 0..20 {
            let s = connect_from(&format!("127.0.1.{client}"), lb.addr).await;
            held.push(s.into_std().unwrap());
        }
    }
    eventually(Duration::from_secs(30), "all 800 reach the gateway", || {
        let n = gw.open_connections();
        async move { (n >= before + 800).then_some(()) }
    })
    .await;
    // A 21st from one client: HAProxy passes it on, the gateway refuses it.
    let extra = connect_from("127.0.1.7", lb.addr).await.into_std().unwrap();
    eventually(Duration::from_secs(10), "the 21st is refused", || {
        let closed = closed_by_peer(&extra);
        async move { closed.then_some(()) }
    })
    .await;
    assert!(
        held.iter().all(|s| !closed_by_peer(s)),
        "every connection within its client's share is kept"
    );

    // A script behind HAProxy (the only way in now: the gateway wants a
    // PROXY header from 127.0.0.1) exchanges and calls; its address reaches
    // the upstream.
    let (_, refresh) = gw.create_token("behind haproxy").await;
    let cert = gw.file.tls.cert.clone().unwrap();
    let script = common::TestClient::with_source(
        &cert,
        lb.addr,
        gw.gateway.as_ref().unwrap().admin_addr,
        Some("127.0.2.9".parse().unwrap()),
    );
    let t = script
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text());
    let access = t.json()["access_token"].as_str().unwrap().to_owned();
    let r = script.api_get("/whoami", &access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-forwarded-for"][0], "127.0.2.9");
}

/// Without PROXY headers HAProxy is one address carrying every client: as a
/// trusted proxy it is exempt from the per-client limit of 20, so 1,000
/// connections through it are all kept, and requests through it still work.
#[tokio::test]
async fn without_proxy_headers_a_trusted_haproxy_is_exempt() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.trusted_proxies = vec!["127.0.0.1/32".into()];
        f.public.max_connections_per_client = 20;
        f.public.tls_handshake_timeout = secs(120);
    })
    .await;
    let before = gw.open_connections();
    let lb = haproxy(gw.public_addr(), false).await;
    settle(&gw, before).await;
    let mut held = Vec::new();
    for i in 0..1000 {
        let s = connect_from(&format!("127.0.3.{}", 1 + i % 50), lb.addr).await;
        held.push(s.into_std().unwrap());
    }
    eventually(
        Duration::from_secs(30),
        "all 1,000 reach the gateway",
        || {
            let n = gw.open_connections();
            async move { (n >= before + 1000).then_some(()) }
        },
    )
    .await;
    assert!(
        held.iter().all(|s| !closed_by_peer(s)),
        "none of the balancer's connections was refused"
    );
    let (_, refresh) = gw.create_token("through haproxy").await;
    let access = gw.exchange(&refresh).await;
    let cert = gw.file.tls.cert.clone().unwrap();
    let script = common::TestClient::with_source(
        &cert,
        lb.addr,
        gw.gateway.as_ref().unwrap().admin_addr,
        None,
    );
    let r = script.api_get("/whoami", &access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}
