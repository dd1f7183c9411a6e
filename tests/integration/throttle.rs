//! Failed-authentication throttling with real gateways: per client address,
//! before any MAC work, without slowing other addresses; what does not
//! count (restarts, expiry); the admin login throttle under parallel
//! guesses; and the audit log under a flood of refused exchanges.
//!
//! Several clients are simulated by binding the client socket to other
//! loopback addresses (127.0.0.2, …), which all reach 127.0.0.1 on Linux.

use std::time::Duration;

use crate::common;
use crate::common::{upstream, Resp, TestClient, TestGateway};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};

/// A gateway whose clients may fail `budget` times a minute.
async fn gateway(up: std::net::SocketAddr, budget: u32) -> TestGateway {
    TestGateway::start_with(up, |f| f.public.auth_failures_per_minute = budget).await
}

/// The same token with its MAC tag damaged: right shape, this boot, forged.
fn forge(access: &str) -> String {
    let mut b = access.as_bytes().to_vec();
    let last = b.len() - 2;
    b[last] = if b[last] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

async fn exchange(client: &TestClient, refresh: &str) -> Resp {
    client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await
}

fn assert_throttled(r: &Resp) -> u64 {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_requests");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    wait
}

/// Writes the `auth.throttled` lines of windows that are over (what the
/// periodic sweep does), then returns them.
fn throttled_lines(gw: &TestGateway) -> Vec<Value> {
    let state = gw.state();
    state.report_throttled(gw.clock.now());
    gw.audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "auth.throttled")
        .collect()
}

#[tokio::test]
async fn forged_tokens_beyond_the_budget_get_429_before_any_mac_work() {
    let up = upstream().await;
    let gw = gateway(up.addr, 5).await;
    let (_, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;
    let forged = forge(&access);
    let attacker = gw.client_from("127.0.0.2");

    for _ in 0..5 {
        let r = attacker.api_get("/api/x", &forged).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let checks = gw.state().refused_access_checks();
    for _ in 0..20 {
        assert_throttled(&attacker.api_get("/api/x", &forged).await);
    }
    assert_eq!(
        gw.state().refused_access_checks(),
        checks,
        "a throttled request reached the MAC check"
    );
    // Everything needing a token check is refused from there, the token
    // endpoint too (its answers are never cached); health is not.
    assert_throttled(&attacker.api_get("/api/x", &access).await);
    let r = exchange(&attacker, &refresh).await;
    assert_throttled(&r);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        attacker.get_with("/healthz", None).await.status,
        StatusCode::OK
    );

    // Other addresses are not slowed, and their failures get their own answer.
    let neighbour = gw.client_from("127.0.0.3");
    assert_eq!(
        neighbour.api_get("/api/x", &access).await.status,
        StatusCode::OK
    );
    assert_eq!(
        neighbour.api_get("/api/x", &forged).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        gw.client.api_get("/api/x", &access).await.status,
        StatusCode::OK
    );

    // The minute passes: one audit line for the whole window, with the count.
    gw.clock.advance(Duration::from_secs(61));
    assert_eq!(
        attacker.api_get("/api/x", &access).await.status,
        StatusCode::OK
    );
    let lines = throttled_lines(&gw);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["client_ip"], "127.0.0.2");
    assert_eq!(lines[0]["actor"], "client");
    assert_eq!(lines[0]["count"], 22);
}

#[tokio::test]
async fn unknown_refresh_tokens_count_and_throttled_exchanges_write_no_audit_line() {
    let up = upstream().await;
    let gw = gateway(up.addr, 5).await;
    let attacker = gw.client_from("127.0.0.4");
    // Well-formed guesses (the checksum is right): each costs an HMAC and a lookup.
    for _ in 0..5 {
        let guess = tokengate::new_refresh_token().unwrap();
        let r = exchange(&attacker, &guess).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"], "invalid_grant");
    }
    for _ in 0..5 {
        let guess = tokengate::new_refresh_token().unwrap();
        assert_throttled(&exchange(&attacker, &guess).await);
    }
    // Garbage counts as well, from its own budget.
    let sloppy = gw.client_from("127.0.0.5");
    for _ in 0..5 {
        exchange(&sloppy, "tgr_not-even-close").await;
    }
    assert_throttled(&exchange(&sloppy, "tgr_not-even-close").await);

    // One refusal line per exchange that ran; none for the throttled ones.
    let refused = gw
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "token.exchange_refused" && l["client_ip"] == "127.0.0.4")
        .count();
    assert_eq!(refused, 5);
    gw.clock.advance(Duration::from_secs(60));
    let lines = throttled_lines(&gw);
    let count_for = |ip: &str| {
        lines
            .iter()
            .find(|l| l["client_ip"] == ip)
            .map(|l| l["count"].clone())
    };
    assert_eq!(count_for("127.0.0.4"), Some(json!(5)));
    assert_eq!(count_for("127.0.0.5"), Some(json!(1)));
}

#[tokio::test]
async fn tokens_from_before_a_restart_and_expired_tokens_do_not_count() {
    let up = upstream().await;
    let gw = gateway(up.addr, 3).await;
    let (_, refresh) = gw.create_token("script").await;
    let before_restart = gw.exchange(&refresh).await;
    let gw = gw.restart().await;

    // After a restart every script's first calls fail: none of it counts.
    for _ in 0..10 {
        let r = gw.client.api_get("/api/x", &before_restart).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Nor do expired access tokens…
    let access = gw.exchange(&refresh).await;
    gw.clock.advance(Duration::from_secs(901));
    for _ in 0..10 {
        let r = gw.client.api_get("/api/x", &access).await;
        assert_eq!(r.json()["error_description"], "the access token expired");
    }
    // …nor expired refresh tokens.
    let expires = tokengate::clock::rfc3339(gw.clock.unix() + 3600);
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({"name": "short", "expires": expires}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let short = r.json()["token"].as_str().unwrap().to_owned();
    gw.clock.advance(Duration::from_secs(3601));
    for _ in 0..10 {
        let r = exchange(&gw.client, &short).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"));
    }

    // The budget is untouched: three guesses are needed to use it up.
    let access = gw.exchange(&refresh).await;
    for _ in 0..3 {
        let r = gw.client.api_get("/api/x", &forge(&access)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_throttled(&gw.client.api_get("/api/x", &access).await);
}

#[tokio::test]
async fn parallel_wrong_admin_passwords_are_held_to_the_budget() {
    let up = upstream().await;
    let hash = tokengate::hash_password(common::ADMIN_PASSWORD).unwrap();
    let gw = TestGateway::start_with(up.addr, |f| f.admin.password_hash = Some(hash)).await;
    // 20 guesses at once, each an argon2 verification if let through.
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            let client = gw.client.clone();
            tokio::spawn(async move {
                let req = http::Request::post(format!("{}/api/login", client.admin))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(
                        json!({"username": "admin", "password": format!("guess {i}")}).to_string(),
                    )))
                    .unwrap();
                client.send(req).await.status
            })
        })
        .collect();
    let mut checked = 0;
    for g in guesses {
        match g.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        checked <= 5,
        "{checked} guesses were checked, the budget is 5"
    );
    let failed = gw
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "admin.login_failed")
        .count();
    assert_eq!(failed, checked);
}

#[tokio::test]
async fn a_flood_of_refused_exchanges_keeps_audit_lines_small_and_admin_events_in() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // The audit reader: opens the pipe (meeting the gateway's open), then
    // reads nothing until told, so the gateway's writer stalls as on a hung disk.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let pipe = std::fs::File::open(&fifo).unwrap();
            wait.recv().unwrap();
            let mut seen = Vec::new();
            for line in std::io::BufReader::new(pipe).lines() {
                let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
                let admin = v["event"] == "refresh_token.created";
                seen.push(v);
                if admin {
                    break;
                }
            }
            seen
        })
    };
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.audit.destination = fifo.display().to_string();
        f.public.auth_failures_per_minute = 0;
        f.public.max_header_bytes = 32 * 1024;
    })
    .await;

    let user_agent = "A".repeat(16 * 1024);
    let flood = 1000;
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let client = gw.client.clone();
            let ua = user_agent.clone();
            tokio::spawn(async move {
                for _ in 0..flood / 8 {
                    let req = client
                        .public_req("POST", "/token")
                        .header("user-agent", ua.as_str())
                        .body(Full::new(Bytes::from(
                            "grant_type=refresh_token&refresh_token=tgr_guess",
                        )))
                        .unwrap();
                    assert_eq!(client.send(req).await.status, StatusCode::BAD_REQUEST);
                }
            })
        })
        .collect();
    // An administrator acts in the middle of it.
    let (id, _) = gw.create_token("during the flood").await;
    for s in senders {
        s.await.unwrap();
    }
    // The writer is stalled, so (almost) every line still waits in memory:
    // at most a few hundred bytes each, not 16 KiB.
    let pending = gw.state().audit_pending_bytes();
    assert!(pending < flood * 1024, "{pending} bytes pending");
    assert_eq!(gw.state().audit_dropped().security, 0);

    go.send(()).unwrap();
    let seen = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let admin = seen.last().unwrap();
    assert_eq!(admin["event"], "refresh_token.created");
    assert_eq!(admin["token_id"], id);
    for v in &seen {
        if let Some(ua) = v["user_agent"].as_str() {
            assert_eq!(ua.len(), 256, "user agents are cut to 256 characters");
        }
    }
}
