//! Governance of refresh tokens beyond deleting them: suspend and resume,
//! not-before, the lifetime policy (`tokens.max_lifetime`,
//! `tokens.revoke_unused_after`) and usage limits. Each behaviour runs on
//! both backends (`redb::…`, `postgres::…`) through a real gateway, across
//! restarts; then two replicas sharing PostgreSQL (suspension seen by the
//! other replica within the revocation bound, a usage limit exact under
//! concurrent exchanges on both, an unused token deleted and audited once),
//! and the CLI.

use std::time::Duration;

use crate::common;
use crate::common::pg::TestDb;
use crate::common::replica::{Cluster, Replica};
use crate::common::{
    eventually, eventually_ok, upstream, within_bound, TestGateway, ADMIN_PASSWORD,
};
use http::StatusCode;
use serde_json::{json, Value};
use tokengate::config::FileConfig;
use tokio::time::Instant;

/// What docs/cluster.md promises for a delete, and the issue for a suspension.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);
/// Only a report-a-hang limit for waits that are no promise of the product.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
enum Kind {
    Redb,
    Postgres,
}

/// The database (PostgreSQL only), alive as long as the test.
struct Backend {
    db: Option<TestDb>,
}

impl Backend {
    fn new(kind: Kind) -> Backend {
        Backend {
            db: match kind {
                Kind::Redb => None,
                Kind::Postgres => Some(TestDb::new()),
            },
        }
    }

    fn configure(&self, f: &mut FileConfig) {
        if let Some(db) = &self.db {
            f.storage.backend = "postgres".into();
            f.storage.postgres.url = db.url.clone();
            f.storage.postgres.sslmode = "disable".into();
        }
    }

    async fn gateway_with(
        &self,
        upstream: std::net::SocketAddr,
        tweak: impl FnOnce(&mut FileConfig),
    ) -> TestGateway {
        TestGateway::start_with(upstream, |f| {
            self.configure(f);
            tweak(f);
        })
        .await
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $( #[tokio::test] async fn $name() { super::$name(super::Kind::Redb).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() { super::$name(super::Kind::Postgres).await } )*
        }
    };
}

on_both_backends!(
    suspend_and_resume,
    not_before_and_usage_limits,
    lifetime_policy,
    unused_tokens_are_revoked,
);

/// `POST /token` with a refresh grant: the answer.
async fn try_exchange(gw: &TestGateway, refresh: &str) -> common::Resp {
    gw.client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await
}

/// Panics unless the exchange is refused with `invalid_grant` and `text`.
async fn refused_with(gw: &TestGateway, refresh: &str, text: &str) {
    let r = try_exchange(gw, refresh).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], "invalid_grant", "{v}");
    assert_eq!(v["error_description"], text, "{v}");
}

/// The token `id` as `GET /api/refresh-tokens` lists it.
async fn listed(gw: &TestGateway, id: u64) -> Value {
    let r = gw.client.admin_call("GET", "/api/refresh-tokens").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("token {id} is not listed"))
}

async fn post(gw: &TestGateway, path: &str, body: Value) -> common::Resp {
    gw.client.admin_json("POST", path, &body).await
}

async fn patch(gw: &TestGateway, id: u64, body: Value) -> common::Resp {
    gw.client
        .admin_json("PATCH", &format!("/api/refresh-tokens/{id}"), &body)
        .await
}

fn status_of(r: &common::Resp) -> StatusCode {
    r.status
}

async fn suspend_and_resume(kind: Kind) {
    let up = upstream().await;
    let backend = Backend::new(kind);
    let gw = backend.gateway_with(up.addr, |_| {}).await;
    let (id, refresh) = gw.create_token("nightly").await;
    let (other_id, other) = gw.create_token("other").await;
    let before = gw.exchange(&refresh).await;
    let untouched = gw.exchange(&other).await;
    assert_eq!(
        gw.client.api_get("/x", &before).await.status,
        StatusCode::OK
    );
    assert_eq!(listed(&gw, id).await["suspended"], false);

    let r = post(
        &gw,
        &format!("/api/refresh-tokens/{id}/suspend"),
        json!({"reason": "found in a CI log"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (&v["suspended"], &v["suspended_reason"]),
        (&json!(true), &json!("found in a CI log"))
    );
    // Its live access token is refused at once; the other token's is not.
    let r = gw.client.api_get("/x", &before).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(
        gw.client.api_get("/x", &untouched).await.status,
        StatusCode::OK
    );
    refused_with(&gw, &refresh, "refresh token suspended").await;
    gw.exchange(&other).await;
    let listed_now = listed(&gw, id).await;
    assert_eq!(listed_now["suspended"], true);
    assert_eq!(listed_now["suspended_reason"], "found in a CI log");
    assert!(listed(&gw, other_id)
        .await
        .get("suspended_reason")
        .is_none());

    let r = post(&gw, &format!("/api/refresh-tokens/{id}/resume"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["suspended"], false);
    assert!(r.json().get("suspended_reason").is_none(), "{}", r.text());
    let after = gw.exchange(&refresh).await;
    assert_eq!(gw.client.api_get("/x", &after).await.status, StatusCode::OK);
    let r = gw.client.api_get("/x", &before).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "an access token from before the suspension stays dead: {}",
        r.text()
    );

    // Bad bodies and unknown ids.
    for body in [json!([]), json!({"reason": 5}), json!({"why": "x"})] {
        let r = post(&gw, &format!("/api/refresh-tokens/{id}/suspend"), body).await;
        assert_eq!(status_of(&r), StatusCode::BAD_REQUEST, "{}", r.text());
    }
    let r = post(
        &gw,
        &format!("/api/refresh-tokens/{id}/resume"),
        json!({"x": 1}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = post(&gw, "/api/refresh-tokens/999/suspend", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

    // Suspended without a reason, the suspension survives a restart.
    let r = post(&gw, &format!("/api/refresh-tokens/{id}/suspend"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let audit = gw.audit_lines();
    let gw = gw.restart().await;
    let v = listed(&gw, id).await;
    assert_eq!(v["suspended"], true, "{v}");
    assert!(v.get("suspended_reason").is_none(), "{v}");
    refused_with(&gw, &refresh, "refresh token suspended").await;
    let r = post(&gw, &format!("/api/refresh-tokens/{id}/resume"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    gw.exchange(&refresh).await;

    let events: Vec<&Value> = audit
        .iter()
        .filter(|l| l["token_id"] == id && l["event"].as_str().unwrap().ends_with("ed"))
        .filter(|l| {
            l["event"] == "refresh_token.suspended" || l["event"] == "refresh_token.resumed"
        })
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["event"], "refresh_token.suspended");
    assert_eq!(events[0]["reason"], "found in a CI log");
    assert_eq!(events[0]["user"], "admin");
    assert_eq!(events[0]["actor"], "admin");
    assert_eq!(events[1]["event"], "refresh_token.resumed");
    assert_eq!(events[2]["event"], "refresh_token.suspended");
    assert!(events[2].get("reason").is_none());
}

async fn not_before_and_usage_limits(kind: Kind) {
    let up = upstream().await;
    let backend = Backend::new(kind);
    let gw = backend.gateway_with(up.addr, |_| {}).await;
    let later = tokengate::clock::rfc3339(gw.clock.unix() + 3600);
    let r = post(
        &gw,
        "/api/refresh-tokens",
        json!({"name": "limited", "not_before": later, "max_uses": 2}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let created = r.json();
    assert_eq!(created["not_before"], later);
    assert_eq!(created["max_uses"], 2);
    let id = created["id"].as_u64().unwrap();
    let refresh = created["token"].as_str().unwrap().to_owned();
    refused_with(&gw, &refresh, "refresh token not yet valid").await;
    let v = listed(&gw, id).await;
    assert_eq!(
        (&v["not_before"], &v["uses_left"]),
        (&json!(later), &json!(2))
    );

    // Cleared: it exchanges, and each exchange takes a use.
    let r = patch(&gw, id, json!({"not_before": null})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["not_before"], Value::Null);
    gw.exchange(&refresh).await;
    assert_eq!(listed(&gw, id).await["uses_left"], 1);

    // The count survives a restart, and at zero the exchange is refused.
    let gw = gw.restart().await;
    let v = listed(&gw, id).await;
    assert_eq!(
        (&v["max_uses"], &v["uses_left"]),
        (&json!(2), &json!(1)),
        "{v}"
    );
    gw.exchange(&refresh).await;
    refused_with(&gw, &refresh, "usage limit reached").await;
    assert_eq!(listed(&gw, id).await["uses_left"], 0);
    let gw = gw.restart().await;
    refused_with(&gw, &refresh, "usage limit reached").await;

    // A new limit is that many exchanges from now on; null lifts it.
    let r = patch(&gw, id, json!({"max_uses": 1})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["uses_left"], 1);
    gw.exchange(&refresh).await;
    refused_with(&gw, &refresh, "usage limit reached").await;
    let r = patch(&gw, id, json!({"max_uses": null})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        (&r.json()["max_uses"], &r.json()["uses_left"]),
        (&Value::Null, &Value::Null)
    );
    for _ in 0..3 {
        gw.exchange(&refresh).await;
    }

    // A not-before set on a live token ends its access tokens until then.
    let live = gw.exchange(&refresh).await;
    let r = patch(&gw, id, json!({"not_before": later})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        gw.client.api_get("/x", &live).await.status,
        StatusCode::UNAUTHORIZED
    );
    refused_with(&gw, &refresh, "refresh token not yet valid").await;

    // Bad values, each naming its field.
    for (body, field) in [
        (json!({"name": "x", "max_uses": 0}), "max_uses"),
        (json!({"name": "x", "max_uses": -1}), "max_uses"),
        (json!({"name": "x", "max_uses": "3"}), "max_uses"),
        (json!({"name": "x", "not_before": "tomorrow"}), "not_before"),
        (json!({"name": "x", "not_before": 5}), "not_before"),
    ] {
        let r = post(&gw, "/api/refresh-tokens", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        let d = r.json()["error_description"].as_str().unwrap().to_owned();
        assert!(d.contains(field), "{body}: {d}");
    }
}

async fn lifetime_policy(kind: Kind) {
    let up = upstream().await;
    let backend = Backend::new(kind);
    // Before the policy: a token that never expires, one for 30 days.
    let mut gw = backend.gateway_with(up.addr, |_| {}).await;
    let r = post(
        &gw,
        "/api/refresh-tokens",
        json!({"name": "forever", "expires": "never"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let forever = r.json()["id"].as_u64().unwrap();
    let (month, _) = gw.create_token("month").await;

    gw.file.tokens.max_lifetime = Some(common::secs(3600));
    gw.file.tokens.refresh_ttl = common::secs(1800);
    let gw = gw.restart().await;
    for body in [
        json!({"name": "n", "expires": "never"}),
        json!({"name": "n", "expires": "2h"}),
    ] {
        let r = post(&gw, "/api/refresh-tokens", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        let d = r.json()["error_description"].as_str().unwrap().to_owned();
        assert!(d.contains("tokens.max_lifetime"), "{d}");
    }
    let r = post(
        &gw,
        "/api/refresh-tokens",
        json!({"name": "ok", "expires": "50m"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let ok = r.json()["id"].as_u64().unwrap();
    let (default, _) = gw.create_token("default lifetime").await;

    let r = gw
        .client
        .admin_call("GET", "/api/refresh-tokens?violations=true")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut breaking: Vec<(u64, Value)> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["violations"].clone()))
        .collect();
    breaking.sort_by_key(|(id, _)| *id);
    assert_eq!(
        breaking,
        [
            (forever, json!(["max_lifetime"])),
            (month, json!(["max_lifetime"]))
        ]
    );
    assert_eq!(listed(&gw, ok).await["violations"], json!([]));
    assert_eq!(listed(&gw, default).await["violations"], json!([]));
    let r = gw
        .client
        .admin_call("GET", "/api/refresh-tokens?violations=maybe")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

    // A rotation or an edit that keeps it beyond the policy is refused.
    let r = post(
        &gw,
        &format!("/api/refresh-tokens/{forever}/rotate"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("tokens.max_lifetime"), "{}", r.text());
    let r = patch(&gw, forever, json!({"expires": "3h"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("tokens.max_lifetime"), "{}", r.text());
    let r = patch(&gw, forever, json!({"expires": "30m"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["violations"], json!([]));
    let r = post(
        &gw,
        &format!("/api/refresh-tokens/{forever}/rotate"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // A default lifetime longer than the maximum is refused at start.
    let mut f = gw.file.clone();
    f.tokens.refresh_ttl = common::secs(7200);
    let e = f.validate().expect_err("refused").to_string();
    assert!(
        e.contains("tokens.refresh_ttl") && e.contains("tokens.max_lifetime"),
        "{e}"
    );
}

async fn unused_tokens_are_revoked(kind: Kind) {
    let up = upstream().await;
    let backend = Backend::new(kind);
    let gw = backend
        .gateway_with(up.addr, |f| {
            // 6 s, judged in whole seconds: `busy` is used every 200 ms,
            // so only a stall of over 4 s could make it look unused.
            f.tokens.revoke_unused_after = Some(common::secs(6));
            f.tokens.sweep_interval = common::secs(1);
        })
        .await;
    let (idle, idle_refresh) = gw.create_token("idle").await;
    let (busy, busy_refresh) = gw.create_token("busy").await;
    let idle_access = gw.exchange(&idle_refresh).await;
    let v = listed(&gw, busy).await;
    let created = tokengate::clock::parse_rfc3339(v["created_at"].as_str().unwrap()).unwrap();
    let due = tokengate::clock::parse_rfc3339(v["revoke_unused_at"].as_str().unwrap()).unwrap();
    assert_eq!(due, created + 6, "{v}");
    // Used every 200 ms, `busy` stays; `idle` (last used at its
    // exchange above) goes.
    let deadline = Instant::now() + PATIENCE;
    loop {
        gw.exchange(&busy_refresh).await;
        let r = gw.client.admin_call("GET", "/api/refresh-tokens").await;
        let ids: Vec<u64> = r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect();
        if !ids.contains(&idle) {
            assert!(ids.contains(&busy), "the busy token stays: {ids:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle token was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        gw.client.api_get("/x", &idle_access).await.status,
        StatusCode::UNAUTHORIZED
    );
    refused_with(&gw, &idle_refresh, "refresh token is not valid").await;
    let lines: Vec<Value> = gw
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "refresh_token.revoked_unused")
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["token_id"], idle);
    assert_eq!(lines[0]["token_name"], "idle");
    // Still there after a restart: the busy one (the deletion was durable).
    let gw = gw.restart().await;
    listed(&gw, busy).await;
    let r = gw.client.admin_call("GET", "/api/refresh-tokens").await;
    assert!(!r.text().contains("\"idle\""), "{}", r.text());
}

// ---- two replicas sharing PostgreSQL ----

fn error_description(r: &common::Resp) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error_description"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn refused(replica: &Replica, access: &str) -> Result<(), String> {
    let r = replica.call(access).await;
    match r.status {
        StatusCode::UNAUTHORIZED => Ok(()),
        s => Err(format!("{} answered {s}", replica.name)),
    }
}

/// Waits until every replica accepts every other's access tokens.
async fn settled(rs: &[&Replica]) {
    let (_, refresh) = rs[0].create_token("settling").await;
    for issuer in rs {
        let access = issuer.exchange(&refresh).await;
        for r in rs {
            let access = &access;
            eventually_ok(
                PATIENCE,
                "peers accept each other's tokens",
                || async move {
                    let c = r.call(access).await;
                    if c.status == StatusCode::OK {
                        Ok(())
                    } else {
                        Err(format!("{} {}", c.status, c.text()))
                    }
                },
            )
            .await;
        }
    }
}

#[tokio::test]
async fn a_suspension_on_one_replica_holds_on_the_other() {
    let up = upstream().await;
    let db = TestDb::new();
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = (cluster.start("alpha").await, cluster.start("beta").await);
    settled(&[&a, &b]).await;
    let (id, refresh) = a.create_token("shared").await;
    let from_a = a.exchange(&refresh).await;
    let from_b = eventually_ok(PATIENCE, "beta knows the token", || async {
        let r = b.try_exchange(&refresh).await;
        if r.status == StatusCode::OK {
            Ok(r.json()["access_token"].as_str().unwrap().to_owned())
        } else {
            Err(r.text())
        }
    })
    .await;
    for access in [&from_a, &from_b] {
        for r in [&a, &b] {
            assert_eq!(r.call(access).await.status, StatusCode::OK);
        }
    }

    let r = b
        .client()
        .admin_json(
            "POST",
            &format!("/api/refresh-tokens/{id}/suspend"),
            &json!({"reason": "rotating the CI secret"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let acked = Instant::now();
    for access in [&from_a, &from_b] {
        within_bound(
            acked,
            REVOCATION_BOUND,
            "alpha refuses the access tokens",
            || refused(&a, access),
        )
        .await;
        refused(&b, access).await.unwrap();
    }
    within_bound(
        acked,
        REVOCATION_BOUND,
        "alpha refuses the exchange",
        || async {
            let r = a.try_exchange(&refresh).await;
            if error_description(&r) == "refresh token suspended" {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        },
    )
    .await;
    let listed_a = a.list().await;
    let t = listed_a.iter().find(|t| t["id"] == id).unwrap();
    assert_eq!(t["suspended_reason"], "rotating the CI secret");

    let r = a
        .client()
        .admin_json(
            "POST",
            &format!("/api/refresh-tokens/{id}/resume"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let fresh = eventually_ok(PATIENCE, "beta exchanges again", || async {
        let r = b.try_exchange(&refresh).await;
        if r.status == StatusCode::OK {
            Ok(r.json()["access_token"].as_str().unwrap().to_owned())
        } else {
            Err(r.text())
        }
    })
    .await;
    assert_eq!(a.call(&fresh).await.status, StatusCode::OK);
    for access in [&from_a, &from_b] {
        for r in [&a, &b] {
            refused(r, access).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_usage_limit_is_exact_across_replicas() {
    const LIMIT: u64 = 10;
    const EACH: usize = 15;
    let up = upstream().await;
    let db = TestDb::new();
    let cluster =
        Cluster::new(&db.url, up.addr).with_env("TOKENGATE_STORAGE__USAGE_FLUSH_INTERVAL", "1s");
    let (a, b) = (cluster.start("alpha").await, cluster.start("beta").await);
    let r = a
        .client()
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({"name": "ten", "max_uses": LIMIT}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let id = r.json()["id"].as_u64().unwrap();
    let refresh = r.json()["token"].as_str().unwrap().to_owned();
    eventually(PATIENCE, "beta knows the token", || async {
        b.list().await.iter().any(|t| t["id"] == id).then_some(())
    })
    .await;

    // Both replicas at once, each from several connections.
    let mut tasks = tokio::task::JoinSet::new();
    for r in [&a, &b] {
        for _ in 0..EACH {
            let client = r.client().clone();
            let body = format!("grant_type=refresh_token&refresh_token={refresh}");
            tasks.spawn(async move { client.token_form(&body).await });
        }
    }
    let (mut issued, mut used_up) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap();
        match r.status {
            StatusCode::OK => issued += 1,
            StatusCode::BAD_REQUEST if error_description(&r) == "usage limit reached" => {
                used_up += 1
            }
            s => panic!("unexpected answer {s}: {}", r.text()),
        }
    }
    assert_eq!(issued, LIMIT, "exactly max_uses exchanges succeed");
    assert_eq!(used_up, 2 * EACH as u64 - LIMIT);
    for r in [&a, &b] {
        eventually(PATIENCE, "both list no use left", || async {
            r.list()
                .await
                .iter()
                .any(|t| t["id"] == id && t["uses_left"] == 0 && t["use_count"] == LIMIT)
                .then_some(())
        })
        .await;
    }
    assert_eq!(
        db.query_text(&format!(
            "SELECT uses_left FROM refresh_tokens WHERE id = {id}"
        ))
        .as_deref(),
        Some("0")
    );
}

#[tokio::test]
async fn an_unused_token_is_deleted_once_for_the_cluster() {
    let up = upstream().await;
    let db = TestDb::new();
    let cluster = Cluster::new(&db.url, up.addr)
        .with_env("TOKENGATE_TOKENS__REVOKE_UNUSED_AFTER", "2s")
        .with_env("TOKENGATE_TOKENS__SWEEP_INTERVAL", "1s");
    let (a, b) = (cluster.start("alpha").await, cluster.start("beta").await);
    let (id, _) = a.create_token("forgotten").await;
    for r in [&a, &b] {
        eventually(PATIENCE, "the idle token is deleted everywhere", || async {
            (!r.list().await.iter().any(|t| t["id"] == id)).then_some(())
        })
        .await;
    }
    // Two more sweeps on each: nobody deletes (or audits) it again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lines = 0;
    for r in [&a, &b] {
        let text = std::fs::read_to_string(r.audit_path()).unwrap_or_default();
        lines += text
            .lines()
            .filter(|l| l.contains("\"refresh_token.revoked_unused\""))
            .inspect(|l| assert!(l.contains(&format!("\"token_id\":{id}")), "{l}"))
            .count();
    }
    assert_eq!(lines, 1, "one audit line for the cluster");
}

// ---- the CLI ----

async fn cli(gw: &TestGateway, args: &[&str]) -> (i32, String, String) {
    let ca = gw.file.tls.cert.clone().unwrap().display().to_string();
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--ca-file", &ca]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(&all)
        .env_clear()
        .current_dir(std::env::temp_dir())
        .env("TOKENGATE_ADMIN_URL", &gw.client.admin)
        .env("TOKENGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_suspends_resumes_limits_and_lists_violations() {
    let up = upstream().await;
    let mut gw = TestGateway::start(up.addr).await;
    let (old, _) = {
        let r = post(
            &gw,
            "/api/refresh-tokens",
            json!({"name": "old", "expires": "never"}),
        )
        .await;
        (r.json()["id"].as_u64().unwrap(), ())
    };
    gw.file.tokens.max_lifetime = Some(common::secs(86_400));
    gw.file.tokens.refresh_ttl = common::secs(86_400);
    let gw = gw.restart().await;

    let (code, stdout, stderr) = cli(
        &gw,
        &[
            "create",
            "--name",
            "limited",
            "--max-uses",
            "3",
            "--not-before",
            "2h",
            "--expires",
            "12h",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let refresh = stdout.trim().to_owned();
    refused_with(&gw, &refresh, "refresh token not yet valid").await;
    let id = {
        let r = gw.client.admin_call("GET", "/api/refresh-tokens").await;
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "limited")
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let (code, _, stderr) = cli(&gw, &["edit", &id.to_string(), "--no-not-before"]).await;
    assert_eq!(code, 0, "{stderr}");
    gw.exchange(&refresh).await;

    let (code, stdout, stderr) = cli(
        &gw,
        &["suspend", &id.to_string(), "--reason", "leaked in a ticket"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("suspended"), "{stdout}");
    refused_with(&gw, &refresh, "refresh token suspended").await;
    let (code, stdout, _) = cli(&gw, &["list"]).await;
    assert_eq!(code, 0);
    let row = stdout.lines().find(|l| l.contains("limited")).unwrap();
    assert!(row.contains("suspended (leaked in a ticket)"), "{stdout}");
    assert!(row.contains("2 of 3"), "uses left: {stdout}");

    let (code, _, stderr) = cli(&gw, &["resume", &id.to_string()]).await;
    assert_eq!(code, 0, "{stderr}");
    gw.exchange(&refresh).await;

    let (code, stdout, _) = cli(&gw, &["list", "--violations", "--json"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let ids: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [old]);
    let (code, stdout, _) = cli(&gw, &["list", "--violations"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("breaks max_lifetime"), "{stdout}");

    let (code, _, stderr) = cli(&gw, &["suspend", "999"]).await;
    assert_eq!(code, 4, "{stderr}");
    let (code, _, stderr) = cli(&gw, &["create", "--name", "x", "--expires", "never"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("tokens.max_lifetime"), "{stderr}");
}

// ---- the page ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_suspends_resumes_and_shows_uses_left_and_violations() {
    use crate::common::webdriver::{Browser, ENTER};
    let up = upstream().await;
    let mut gw = TestGateway::start(up.addr).await;
    let r = post(
        &gw,
        "/api/refresh-tokens",
        json!({"name": "forever", "expires": "never"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    gw.file.tokens.max_lifetime = Some(common::secs(30 * 86_400));
    gw.file.tokens.refresh_ttl = common::secs(30 * 86_400);
    let gw = gw.restart().await;
    let r = post(
        &gw,
        "/api/refresh-tokens",
        json!({"name": "metered", "max_uses": 5}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let refresh = r.json()["token"].as_str().unwrap().to_owned();
    let access = gw.exchange(&refresh).await;

    let browser = Browser::start().await;
    let admin = gw.client.admin.replace("localhost", "127.0.0.1");
    browser.goto(&format!("{admin}/")).await;
    let password = browser.wait_visible("#password").await;
    browser.type_into(&password, ADMIN_PASSWORD).await;
    browser.type_into(&password, ENTER).await;
    browser.wait_visible("#tokens-view").await;
    let row = |name: &str| {
        format!(
            "return [...document.querySelectorAll('#token-rows tr')].filter(r => r.querySelector('th').textContent === '{name}').map(r => r.innerText).join('')"
        )
    };
    browser
        .wait_until(
            "uses left and the violation shown",
            &format!(
                "return ({})().includes('4 of 5 left') && ({})().includes('Breaks the maximum lifetime')",
                wrap(&row("metered")),
                wrap(&row("forever"))
            ),
        )
        .await;
    let metered = browser.eval(&row("metered")).await;
    assert!(
        !metered.as_str().unwrap().contains("Breaks"),
        "only the breaking token is marked: {metered}"
    );

    // Suspend with a reason through the dialog.
    browser
        .click(
            &browser
                .wait_visible("button[aria-label='Suspend metered']")
                .await,
        )
        .await;
    let reason = browser.wait_visible("#suspend-reason").await;
    browser.type_into(&reason, "seen in a pastebin").await;
    browser
        .click(&browser.wait_visible("#suspend-confirm").await)
        .await;
    browser
        .wait_until(
            "the Suspended mark",
            &format!(
                "return ({})().includes('Suspended') && ({})().includes('seen in a pastebin')",
                wrap(&row("metered")),
                wrap(&row("metered"))
            ),
        )
        .await;
    refused_with(&gw, &refresh, "refresh token suspended").await;
    assert_eq!(
        gw.client.api_get("/x", &access).await.status,
        StatusCode::UNAUTHORIZED
    );
    browser
        .screenshot(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/test-artifacts/admin-suspended.png"),
        )
        .await;

    // Resume: the mark goes and exchanges work again.
    browser
        .click(
            &browser
                .wait_visible("button[aria-label='Resume metered']")
                .await,
        )
        .await;
    browser
        .wait_until(
            "the mark gone",
            &format!(
                "return !({})().includes('Suspended')",
                wrap(&row("metered"))
            ),
        )
        .await;
    gw.exchange(&refresh).await;
    assert_eq!(
        gw.client.api_get("/x", &access).await.status,
        StatusCode::UNAUTHORIZED,
        "the access token from before the suspension stays dead"
    );
    browser.quit().await;
}

/// A `return …` script body as an expression: `(() => { … })`.
fn wrap(script: &str) -> String {
    format!("() => {{ {script} }}")
}
