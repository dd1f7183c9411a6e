//! The token model of DESIGN.md, end to end: restarts, deletion, expiry, the
//! access TTL, the sweeper, and graceful shutdown.

use std::time::Duration;

use crate::common;
use crate::common::{upstream, TestGateway};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tokio::net::TcpStream;

#[tokio::test]
async fn restart_invalidates_access_tokens_but_not_refresh_tokens() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("survivor").await;
    let access = gw.exchange(&refresh).await;
    assert_eq!(
        gw.client.api_get("/api/x", &access).await.status,
        StatusCode::OK
    );

    let gw = gw.restart().await;
    let r = gw.client.api_get("/api/x", &access).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "an access token from before the restart: {}",
        r.text()
    );
    let fresh = gw.exchange(&refresh).await;
    assert_eq!(
        gw.client.api_get("/api/x", &fresh).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn deleting_a_refresh_token_kills_its_access_tokens_at_once() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (a_id, a) = gw.create_token("a").await;
    let (_, b) = gw.create_token("b").await;
    let a1 = gw.exchange(&a).await;
    let a2 = gw.exchange(&a).await;
    let b1 = gw.exchange(&b).await;

    let r = gw
        .client
        .admin_call("DELETE", &format!("/api/refresh-tokens/{a_id}"))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for t in [&a1, &a2] {
        assert_eq!(
            gw.client.api_get("/api/x", t).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // Other tokens are untouched.
    assert_eq!(
        gw.client.api_get("/api/x", &b1).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.state().live_access_tokens(),
        1,
        "the deleted token's access tokens are freed"
    );
    // Deleting again: 404.
    let r = gw
        .client
        .admin_call("DELETE", &format!("/api/refresh-tokens/{a_id}"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bulk_delete_is_one_call() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (a_id, a) = gw.create_token("a").await;
    let (b_id, b) = gw.create_token("b").await;
    let (_, c) = gw.create_token("c").await;
    let (a1, b1, c1) = (
        gw.exchange(&a).await,
        gw.exchange(&b).await,
        gw.exchange(&c).await,
    );

    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens/delete",
            &json!({"ids": [a_id, b_id.to_string(), 4242]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    let deleted: Vec<u64> = v["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(deleted, vec![a_id, b_id]);
    assert_eq!(v["deleted"][0]["name"], "a");
    assert_eq!(v["not_found"], json!([4242]));
    for t in [&a1, &b1] {
        assert_eq!(
            gw.client.api_get("/api/x", t).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        gw.client.api_get("/api/x", &c1).await.status,
        StatusCode::OK
    );
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);

    for bad in [
        json!({}),
        json!({"ids": []}),
        json!({"ids": ["x"]}),
        json!({"ids": [-1]}),
        json!([1]),
    ] {
        let r = gw
            .client
            .admin_json("POST", "/api/refresh-tokens/delete", &bad)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json()["error"], "invalid_request");
    }
}

#[tokio::test]
async fn refresh_expiry_kills_access_tokens_and_lists_as_expired() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let at = tokengate::clock::rfc3339(gw.clock.unix() + 3600);
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({"name": "hour", "expires": at}),
        )
        .await;
    let refresh = r.json()["token"].as_str().unwrap().to_owned();
    let (_, forever) = gw.create_token("default").await;
    let access = gw.exchange(&refresh).await;
    let other = gw.exchange(&forever).await;

    gw.clock.advance(Duration::from_secs(3601));
    assert_eq!(
        gw.client.api_get("/api/x", &access).await.status,
        StatusCode::UNAUTHORIZED
    );
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert_eq!(
        list[0]["status"], "expired",
        "expired tokens stay listed: {list}"
    );
    assert_eq!(list[1]["status"], "active");
    // The other token's access token has its own 900 s life, now also past.
    assert_eq!(
        gw.client.api_get("/api/x", &other).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn access_tokens_expire_after_their_ttl() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        // No sweep during the test (the first one runs at start, with nothing
        // to do): a sweep between the expiry and the request would answer
        // "not valid" instead of "expired". Sweeping has its own test below.
        f.tokens.sweep_interval = tokengate::config::HumanDuration(Duration::from_secs(3600));
    })
    .await;
    let (_, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;
    // 890 s, not 899: real time passes too, and a loaded machine may take
    // more than a second between the exchange and this request.
    gw.clock.advance(Duration::from_secs(890));
    assert_eq!(
        gw.client.api_get("/api/x", &access).await.status,
        StatusCode::OK
    );
    gw.clock.advance(Duration::from_secs(11));
    let r = gw.client.api_get("/api/x", &access).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error_description"], "the access token expired");
}

#[tokio::test]
async fn expired_access_tokens_are_swept() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.tokens.sweep_interval = tokengate::config::HumanDuration(Duration::from_millis(50));
    })
    .await;
    let (_, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;
    gw.clock.advance(Duration::from_secs(901));
    // The sweeper (every 50 ms here) drops it from memory.
    let state = gw.state();
    common::eventually_ok(
        Duration::from_secs(10),
        "the sweeper to drop the expired access token",
        move || async move {
            if state.live_access_tokens() == 0 {
                Ok(())
            } else {
                Err(format!(
                    "sweeper left {} tokens",
                    state.live_access_tokens()
                ))
            }
        },
    )
    .await;
    // Gone from memory, still told apart by its (MAC-checked) claims.
    let r = gw.client.api_get("/api/x", &access).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error_description"], "the access token expired");
}

#[tokio::test]
async fn admin_api_creates_lists_and_validates() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let now = gw.clock.unix();
    let r = gw
        .client
        .admin_json("POST", "/api/refresh-tokens", &json!({"name": "ci"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    // Read as the admin API's own answer type, as the CLI reads it.
    let created: tokengate::api::CreatedToken = serde_json::from_value(r.json()).unwrap();
    assert!(created.token.starts_with("tgr_"));
    let exp = tokengate::clock::parse_rfc3339(created.expires_at.as_deref().unwrap()).unwrap();
    let exp = u64::try_from(exp).unwrap();
    assert!(
        (now + 90 * 86_400..=now + 90 * 86_400 + 5).contains(&exp),
        "default expiry is 90 days"
    );
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({"name": "forever", "expires": "never"}),
        )
        .await;
    assert_eq!(r.json()["expires_at"], serde_json::Value::Null);

    let list = gw.client.admin_call("GET", "/api/refresh-tokens").await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.json();
    assert_eq!(items.as_array().unwrap().len(), 2);
    for item in items.as_array().unwrap() {
        for key in [
            "id",
            "name",
            "created_at",
            "expires_at",
            "last_used_at",
            "status",
        ] {
            assert!(item.get(key).is_some(), "{key} missing in {item}");
        }
        assert!(item.get("token").is_none());
    }
    assert!(
        !list.text().contains("tgr_"),
        "a listing never shows a token string"
    );

    let bad = [
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(101)}),
        json!({"name": 5}),
        json!({}),
        json!({"name": "a", "expires": "2001-01-01T00:00:00Z"}),
        json!({"name": "a", "expires": "next tuesday"}),
        json!({"name": "a", "expires": 12}),
        json!({"name": "a", "colour": "red"}),
    ];
    for b in bad {
        let r = gw
            .client
            .admin_json("POST", "/api/refresh-tokens", &b)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{b}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_request");
    }
    let r = gw
        .client
        .send(
            gw.client
                .admin_req("POST", "/api/refresh-tokens")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{oops")))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        gw.client
            .admin_call("DELETE", "/api/refresh-tokens/abc")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        gw.client
            .admin_call("PUT", "/api/refresh-tokens")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        gw.client.admin_call("GET", "/nowhere").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn admin_requires_the_password() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let url = format!("{}/api/refresh-tokens", gw.client.admin);
    for auth in [
        None,
        Some("Basic YWRtaW46d3Jvbmc="),
        Some("Bearer x"),
        Some("Basic !!"),
    ] {
        let mut b = http::Request::builder().uri(&url);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let r = gw.client.send(b.body(Full::default()).unwrap()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    }
    // The admin API is not on the public listener.
    let r = gw.client.get_with("/api/refresh-tokens", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
}

#[tokio::test]
async fn usage_is_recorded_and_survives_restart() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("t").await;
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert_eq!(list[0]["last_used_at"], serde_json::Value::Null);
    gw.exchange(&refresh).await;
    gw.exchange(&refresh).await;
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert!(list[0]["last_used_at"].is_string());
    assert_eq!(list[0]["use_count"], 2);
    // Shutdown flushes; the next process reads it back.
    let gw = gw.restart().await;
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert!(list[0]["last_used_at"].is_string(), "{list}");
    assert_eq!(list[0]["use_count"], 2);
}

#[tokio::test]
async fn a_second_gateway_on_the_same_data_dir_is_refused() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let mut file = gw.file.clone();
    file.public.listen = "127.0.0.1:0".into();
    file.admin.listen = "127.0.0.1:0".into();
    let err =
        tokengate::Gateway::start(file.validate().unwrap(), tokengate::StartOptions::default())
            .await
            .err()
            .expect("second start must fail");
    assert!(err.to_string().contains("already open"), "{err}");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let up = upstream().await;
    let mut gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;
    let client = gw.client.clone();
    // The upstream holds /pause until released, so the request is in flight
    // from the moment it arrives there until after shutdown has begun.
    let in_flight = tokio::spawn(async move { client.api_get("/pause", &access).await });
    let up = &up;
    common::eventually(
        Duration::from_secs(10),
        "the request to reach the upstream",
        move || async move { (up.paused() == 1).then_some(()) },
    )
    .await;
    let public = gw.gateway.as_ref().expect("running").public_addr;
    let release_once_stopping = async move {
        // Shutdown has begun once the public listener refuses connections.
        common::eventually(
            Duration::from_secs(10),
            "shutdown to close the public listener",
            move || async move { TcpStream::connect(public).await.is_err().then_some(()) },
        )
        .await;
        up.release_paused();
    };
    tokio::join!(gw.stop(), release_once_stopping);
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "the in-flight request completed");
}

#[tokio::test]
async fn a_second_gateway_cannot_share_the_public_port() {
    let up = upstream().await;
    let port = common::dead_address().await.port();
    let first =
        TestGateway::start_with(up.addr, |f| f.public.listen = format!("127.0.0.1:{port}")).await;
    assert_eq!(
        first.client.get_with("/healthz", None).await.status,
        StatusCode::OK
    );
    // Another data directory, same public port: refused, not load-shared.
    let dir = tempfile::tempdir().unwrap();
    let mut file = common::test_config(dir.path(), up.addr);
    file.public.listen = format!("127.0.0.1:{port}");
    tokengate::tls::generate_self_signed(
        file.tls.cert.as_ref().unwrap(),
        file.tls.key.as_ref().unwrap(),
    )
    .unwrap();
    let err =
        tokengate::Gateway::start(file.validate().unwrap(), tokengate::StartOptions::default())
            .await
            .err()
            .expect("second gateway on the same port must fail");
    assert!(err.to_string().contains("public.listen"), "{err}");
}
