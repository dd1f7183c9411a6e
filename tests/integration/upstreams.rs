//! Several upstream servers (`upstream.urls`): requests spread over them, a
//! server that dies is taken out and idempotent requests that could not
//! connect go to another one, a restarted server gets traffic again (after a
//! health probe, or after `upstream.unhealthy_for`), and nothing that may
//! have reached a server is sent twice.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common;
use crate::common::servers::Server;
use crate::common::{eventually_ok, TestGateway};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use tokengate::config::{FileConfig, HumanDuration};

const PATIENCE: Duration = Duration::from_secs(20);

/// A gateway in front of `servers`, tweaked further by `tweak`.
async fn gateway(servers: &[&Server], tweak: impl FnOnce(&mut FileConfig)) -> TestGateway {
    let urls = servers.iter().map(|s| s.url()).collect();
    TestGateway::start_with(servers[0].addr, |f| {
        f.upstream.url = String::new();
        f.upstream.urls = Some(urls);
        tweak(f);
    })
    .await
}

/// Sends `n` GETs one after the other; every one must succeed. Returns how
/// many each server answered.
async fn spread(gw: &TestGateway, access: &str, n: usize) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for i in 0..n {
        let r = gw.client.api_get(&format!("/api/{i}"), access).await;
        assert_eq!(r.status, StatusCode::OK, "GET #{i}: {}", r.text());
        *by.entry(r.header("x-server").unwrap()).or_insert(0) += 1;
    }
    by
}

/// Waits until a GET is answered by `name`; every GET on the way must succeed.
async fn until_answered_by(gw: &TestGateway, access: &str, name: &str) {
    eventually_ok(PATIENCE, &format!("{name} gets traffic again"), || async {
        let r = gw.client.api_get("/api/again", access).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let by = r.header("x-server").unwrap();
        if by == name {
            Ok(())
        } else {
            Err(by)
        }
    })
    .await;
}

/// Active health (`upstream.health_check`): three servers share the load;
/// one is killed mid-run and no GET fails (a GET that could not connect is
/// retried on another server); restarted, it is probed back in.
#[tokio::test]
async fn requests_spread_over_three_servers_and_a_killed_one_is_probed_back() {
    let (a, mut b, c) = (
        Server::start("a").await,
        Server::start("b").await,
        Server::start("c").await,
    );
    let gw = gateway(&[&a, &b, &c], |f| {
        f.upstream.health_check = Some("/health".into());
        // A probe's timeout is the interval: at 200 ms, one stall of a
        // loaded machine marked the live servers out together.
        f.upstream.health_interval = HumanDuration(Duration::from_secs(1));
    })
    .await;
    let (_, refresh) = gw.create_token("spread").await;
    let access = gw.exchange(&refresh).await;

    let by = spread(&gw, &access, 30).await;
    assert_eq!(by.keys().collect::<Vec<_>>(), ["a", "b", "c"], "{by:?}");

    b.kill().await;
    let before = b.seen().len();
    let by = spread(&gw, &access, 30).await;
    assert!(!by.contains_key("b"), "{by:?}");
    assert_eq!(by.values().sum::<usize>(), 30);
    assert_eq!(b.seen().len(), before);
    let ready = gw.client.get_with("/readyz", None).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "two servers left: {}",
        ready.text()
    );

    b.restart().await;
    until_answered_by(&gw, &access, "b").await;
    let by = spread(&gw, &access, 30).await;
    assert_eq!(by.keys().collect::<Vec<_>>(), ["a", "b", "c"], "{by:?}");
}

/// Passive health only: a killed server is found by the first request that
/// cannot connect to it (retried elsewhere), then left out for
/// `upstream.unhealthy_for`, even once it listens again; after that it is
/// tried again and gets traffic. The gateway's clock is moved, not waited on.
#[tokio::test]
async fn without_health_checks_a_dead_server_is_out_for_unhealthy_for() {
    let (a, b, mut c) = (
        Server::start("a").await,
        Server::start("b").await,
        Server::start("c").await,
    );
    let gw = gateway(&[&a, &b, &c], |f| {
        f.upstream.unhealthy_for = HumanDuration(Duration::from_secs(3600));
        f.upstream.balance = "least_requests".into();
    })
    .await;
    let (_, refresh) = gw.create_token("passive").await;
    let access = gw.exchange(&refresh).await;
    let by = spread(&gw, &access, 30).await;
    assert_eq!(by.keys().collect::<Vec<_>>(), ["a", "b", "c"], "{by:?}");

    c.kill().await;
    let by = spread(&gw, &access, 30).await;
    assert!(!by.contains_key("c"), "{by:?}");
    c.restart().await;
    let by = spread(&gw, &access, 30).await;
    assert!(!by.contains_key("c"), "still within unhealthy_for: {by:?}");
    assert!(c.seen().len() < 30, "{:?}", c.seen());

    gw.clock.advance(Duration::from_secs(3601));
    // (The access token expired with the hour; the refresh token did not.)
    let access = gw.exchange(&refresh).await;
    until_answered_by(&gw, &access, "c").await;
}

/// A POST that finds its server dead is not sent to another one: the client
/// gets 502 and no other server ever sees it. (A GET in the same spot is
/// retried: the tests above.)
#[tokio::test]
async fn a_post_to_a_dead_server_is_not_replayed() {
    let (mut dead, b, c) = (
        Server::start("dead").await,
        Server::start("b").await,
        Server::start("c").await,
    );
    dead.kill().await;
    let gw = gateway(&[&dead, &b, &c], |f| {
        f.upstream.unhealthy_for = HumanDuration(Duration::from_secs(3600));
    })
    .await;
    let (_, refresh) = gw.create_token("post").await;
    let access = gw.exchange(&refresh).await;
    // One connection, so one worker, whose turn reaches the dead server
    // within three requests; from then on it is out.
    let mut refused = Vec::new();
    for i in 0..6 {
        let path = format!("/api/post-{i}");
        let req = gw
            .client
            .public_req("POST", &path)
            .header("authorization", format!("Bearer {access}"))
            .body(Full::new(Bytes::from_static(b"{\"once\":true}")))
            .unwrap();
        let r = gw.client.send(req).await;
        match r.status {
            StatusCode::OK => {}
            StatusCode::BAD_GATEWAY => {
                assert!(r.text().contains("upstream_unavailable"), "{}", r.text());
                refused.push(format!("POST {path}"));
            }
            other => panic!("POST #{i}: {other} {}", r.text()),
        }
    }
    assert_eq!(refused.len(), 1, "exactly the one that met the dead server");
    let elsewhere: Vec<String> = b.seen().into_iter().chain(c.seen()).collect();
    assert_eq!(elsewhere.len(), 5, "{elsewhere:?}");
    assert!(!elsewhere.contains(&refused[0]), "{elsewhere:?}");
}

/// Each server gets its own authority as `Host`, and the live settings
/// (`Gateway::reload_upstream`) reach every worker: a changed extra header
/// is on the next requests, whichever server and worker take them.
#[tokio::test]
async fn each_server_gets_its_own_host_and_reloaded_headers_apply_everywhere() {
    let a = common::upstream().await;
    let b = common::upstream().await;
    let urls = vec![format!("http://{}", a.addr), format!("http://{}", b.addr)];
    let gw = TestGateway::start_with(a.addr, |f| {
        f.upstream.url = String::new();
        f.upstream.urls = Some(urls);
        f.upstream.headers.insert("X-Api-Key".into(), "old".into());
    })
    .await;
    let (_, refresh) = gw.create_token("hosts").await;
    let access = gw.exchange(&refresh).await;
    let hosts = |n: usize| {
        let (gw, access) = (&gw, &access);
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let r = gw.client.api_get("/api/h", access).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text());
                let h = &r.json()["headers"];
                out.push((
                    h["host"][0].as_str().unwrap().to_owned(),
                    h["x-api-key"][0].as_str().unwrap().to_owned(),
                ));
            }
            out
        }
    };
    let seen = hosts(10).await;
    for addr in [a.addr, b.addr] {
        assert!(seen.contains(&(addr.to_string(), "old".into())), "{seen:?}");
    }

    let mut file = gw.file.clone();
    file.upstream
        .headers
        .insert("X-Api-Key".into(), "new".into());
    let cfg = file.validate().unwrap();
    gw.gateway
        .as_ref()
        .unwrap()
        .reload_upstream(&cfg.upstream)
        .unwrap();
    let seen = hosts(10).await;
    for addr in [a.addr, b.addr] {
        assert!(seen.contains(&(addr.to_string(), "new".into())), "{seen:?}");
    }
    assert!(seen.iter().all(|(_, key)| key == "new"), "{seen:?}");
}
