//! The gateway behind a real HAProxy (Debian's `haproxy`), as operators
//! deploy it, and clients behind it that lie: in TCP mode with
//! `send-proxy-v2` each client behind the balancer is counted on its own and
//! cannot choose its address; in TCP mode without PROXY headers the
//! balancer cannot be trusted for `X-Forwarded-For`; in HTTP mode
//! (terminating TLS, `option forwardfor`, listed in
//! `public.trusted_forwarders`) each client is throttled on its own.
//!
//! `tests/run.sh` installs `haproxy` when it is missing.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common;
use crate::common::haproxy::{Haproxy, Mode};
use crate::common::{
    closed_by_peer, connect_from, eventually, secs, Resp, TestClient, TestGateway,
};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tokengate::config::FileConfig;

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

/// A refresh token that may only be used from `network`.
async fn restricted(gw: &TestGateway, name: &str, network: &str) -> String {
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({ "name": name, "networks": [network] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_owned()
}

/// A client behind the balancer at `lb`, connecting from `source`.
fn behind(gw: &TestGateway, lb: &Haproxy, source: &str) -> TestClient {
    TestClient::with_source(
        gw.file.tls.cert.as_ref().unwrap(),
        lb.addr,
        gw.gateway.as_ref().unwrap().admin_addr,
        Some(source.parse().unwrap()),
    )
}

/// An exchange at /token with `X-Forwarded-For: xff` written by the client.
async fn exchange_claiming(c: &TestClient, refresh: &str, xff: &str) -> Resp {
    let req = c
        .public_req("POST", "/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-for", xff)
        .body(Full::new(Bytes::from(format!(
            "grant_type=refresh_token&refresh_token={refresh}"
        ))))
        .unwrap();
    c.send(req).await
}

/// A proxied GET with `bearer` and a client-written `X-Forwarded-For`.
async fn get_claiming(c: &TestClient, bearer: &str, xff: &str) -> Resp {
    let req = c
        .public_req("GET", "/whoami")
        .header("authorization", format!("Bearer {bearer}"))
        .header("x-forwarded-for", xff)
        .body(Full::default())
        .unwrap();
    c.send(req).await
}

/// Sends 101 forged access tokens from `attacker` (each claiming to come
/// from `victim_ip`), more than the budget of 100 failures a minute: the
/// last is answered 429.
async fn guess_101_times(attacker: &TestClient, victim_ip: &str) {
    let mut last = None;
    for i in 0..101 {
        let r = get_claiming(attacker, &format!("forged-{i}"), victim_ip).await;
        assert!(
            matches!(
                r.status,
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            ),
            "{}",
            r.text()
        );
        last = Some(r.status);
    }
    assert_eq!(
        last,
        Some(StatusCode::TOO_MANY_REQUESTS),
        "the guesser is throttled"
    );
}

/// HAProxy in TCP mode with `send-proxy-v2`: the PROXY header names the
/// client, and the client's own `X-Forwarded-For` is never read, not even
/// when the client's address lies inside `public.trusted_proxies` (here
/// 127.0.0.0/24, HAProxy's and the attacker's range alike). So the client
/// cannot pass a token's `networks` by claiming an address, nor turn the
/// failure throttle on another client behind the same balancer.
#[tokio::test]
async fn behind_a_tcp_balancer_a_client_cannot_choose_its_address() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.proxy_protocol = true;
        f.public.trusted_proxies = vec!["127.0.0.0/24".into()];
    })
    .await;
    let lb = haproxy(gw.public_addr(), true).await;
    let fenced = restricted(&gw, "office only", "10.1.2.0/24").await;
    for source in ["127.0.0.9", "127.0.1.5"] {
        let c = behind(&gw, &lb, source);
        let r = exchange_claiming(&c, &fenced, "10.1.2.3").await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{source} claimed 10.1.2.3 and was believed: {}",
            r.text()
        );
    }
    // 101 guesses from 127.0.0.9, each claiming to be 127.0.1.7.
    let (_, refresh) = gw.create_token("victim").await;
    let victim = behind(&gw, &lb, "127.0.1.7");
    let t = victim
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text());
    let access = t.json()["access_token"].as_str().unwrap().to_owned();
    let attacker = behind(&gw, &lb, "127.0.0.9");
    guess_101_times(&attacker, "127.0.1.7").await;
    let r = victim.api_get("/whoami", &access).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the victim is not throttled: {}",
        r.text()
    );
    assert_eq!(r.json()["headers"]["x-forwarded-for"][0], "127.0.1.7");
}

/// HAProxy in TCP mode without PROXY headers passes TLS through, so any
/// `X-Forwarded-For` behind it is the client's own. Listing it in
/// `public.trusted_proxies` (the old advice, which believed that header) is
/// refused at start, naming the keys and the way out; unlisted, it is one
/// client like any other, and a claimed address is not believed.
#[tokio::test]
async fn a_tcp_balancer_without_proxy_headers_cannot_be_trusted_for_forwarded_for() {
    let up = common::upstream().await;
    let mut old_advice = FileConfig::default();
    old_advice.public.trusted_proxies = vec!["127.0.0.1/32".into()];
    let e = old_advice
        .validate()
        .expect_err("trusted_proxies without proxy_protocol is refused")
        .to_string();
    for key in [
        "public.trusted_proxies",
        "public.proxy_protocol",
        "public.trusted_forwarders",
    ] {
        assert!(e.contains(key), "{e}");
    }

    let gw = TestGateway::start(up.addr).await;
    let lb = haproxy(gw.public_addr(), false).await;
    let fenced = restricted(&gw, "office only", "10.1.2.0/24").await;
    let c = behind(&gw, &lb, "127.0.1.5");
    let r = exchange_claiming(&c, &fenced, "10.1.2.3").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let (_, refresh) = gw.create_token("through haproxy").await;
    let access = gw.exchange(&refresh).await;
    let r = get_claiming(&c, &access, "10.1.2.3").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["x-forwarded-for"][0],
        "127.0.0.1",
        "the upstream hears the balancer's address, not the claim"
    );
}

/// HAProxy in HTTP mode terminates TLS and appends the client's address to
/// `X-Forwarded-For`; listed in `public.trusted_forwarders`, its word names
/// each client. A client that claims another's address in its own header
/// gets neither that client's `networks` nor its throttle: 101 forged
/// tokens throttle the guesser only, and the other client behind the same
/// balancer is served.
#[tokio::test]
async fn behind_an_http_balancer_each_client_is_throttled_on_its_own() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.trusted_forwarders = vec!["127.0.0.1/32".into()];
    })
    .await;
    let lb = common::haproxy::haproxy_in(
        &[gw.public_addr()],
        Mode::Http {
            cert: gw.file.tls.cert.clone().unwrap(),
            key: gw.file.tls.key.clone().unwrap(),
        },
    )
    .await;
    let fenced = restricted(&gw, "the victim's only", "127.0.1.2/32").await;
    let (attacker, victim) = (behind(&gw, &lb, "127.0.1.1"), behind(&gw, &lb, "127.0.1.2"));
    let r = exchange_claiming(&attacker, &fenced, "127.0.1.2").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = exchange_claiming(&victim, &fenced, "10.9.9.9").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let access = r.json()["access_token"].as_str().unwrap().to_owned();

    guess_101_times(&attacker, "127.0.1.2").await;
    let r = get_claiming(&victim, &access, "127.0.1.1").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the victim is not throttled: {}",
        r.text()
    );
    assert_eq!(r.json()["headers"]["x-forwarded-for"][0], "127.0.1.2");
    let r = attacker.api_get("/whoami", &access).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
}
