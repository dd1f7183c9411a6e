//! `GET /api/stats` on a real gateway: the counts follow creates, exchanges,
//! deletes and public connections; it needs the admin's credentials and
//! changes nothing.

use std::time::{Duration, Instant};

use crate::common::{upstream, TestGateway, ADMIN_PASSWORD};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tokengate::api::Stats;

async fn stats(gw: &TestGateway) -> Stats {
    let r = gw.client.admin_call("GET", "/api/stats").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    // Exactly the documented fields, as numbers.
    let v = r.json();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "access_tokens_evicted",
            "live_access_tokens",
            "public_connections",
            "refresh_tokens",
            "refresh_tokens_expiring_soon"
        ]
    );
    serde_json::from_value(v).unwrap()
}

/// Polls (bounded) until `done` holds for the stats.
async fn wait_for(gw: &TestGateway, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(gw).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: still {s:?} after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stats_follow_creates_exchanges_deletes_and_connections() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;

    let s = stats(&gw).await;
    assert_eq!((s.live_access_tokens, s.refresh_tokens), (0, 0), "{s:?}");

    let (id1, t1) = gw.create_token("one").await;
    let (_id2, t2) = gw.create_token("two").await;
    assert_eq!(stats(&gw).await.refresh_tokens, 2);

    // Three exchanges: three live access tokens, two of them from `one`.
    let a1 = gw.exchange(&t1).await;
    gw.exchange(&t1).await;
    let a2 = gw.exchange(&t2).await;
    let s = stats(&gw).await;
    assert_eq!((s.live_access_tokens, s.refresh_tokens), (3, 2), "{s:?}");
    // The token endpoint's keep-alive connection is a public connection.
    assert!(s.public_connections >= 1, "{s:?}");

    // A proxied call neither adds nor removes tokens.
    assert_eq!(gw.client.api_get("/x", &a1).await.status, StatusCode::OK);
    assert_eq!(stats(&gw).await.live_access_tokens, 3);

    // Deleting `one` drops its access tokens from memory at once.
    let r = gw
        .client
        .admin_call("DELETE", &format!("/api/refresh-tokens/{id1}"))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let s = stats(&gw).await;
    assert_eq!((s.live_access_tokens, s.refresh_tokens), (1, 1), "{s:?}");
    assert_eq!(
        gw.client.api_get("/x", &a1).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(gw.client.api_get("/x", &a2).await.status, StatusCode::OK);

    // Raw TLS connections, HTTP/1.1 and HTTP/2, count while open and stop
    // counting once closed.
    let before = stats(&gw).await.public_connections;
    let c1 = gw.tls_connect(b"http/1.1").await;
    let c2 = gw.tls_connect(b"h2").await;
    wait_for(&gw, "two more connections", |s| {
        s.public_connections == before + 2
    })
    .await;
    drop((c1, c2));
    wait_for(&gw, "closed connections uncounted", |s| {
        s.public_connections == before
    })
    .await;
}

#[tokio::test]
async fn stats_need_the_admin_and_are_read_only() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;

    let r = gw.client.admin_get_anonymous("/api/stats").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").is_some());

    let r = gw.client.admin_json("POST", "/api/stats", &json!({})).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow").as_deref(), Some("GET"));

    // A page session reads it with the cookie alone (no CSRF token for a GET).
    let login = http::Request::builder()
        .method("POST")
        .uri(format!("{}/api/login", gw.client.admin))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"username": "admin", "password": ADMIN_PASSWORD}).to_string(),
        )))
        .unwrap();
    let ok = gw.client.send(login).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let cookie = ok
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let req = http::Request::get(format!("{}/api/stats", gw.client.admin))
        .header("cookie", cookie)
        .header("x-requested-with", "tokengate-ui")
        .body(Full::default())
        .unwrap();
    let r = gw.client.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let s: Stats = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((s.live_access_tokens, s.refresh_tokens), (0, 0));
}

/// One refresh token has at most `tokens.max_access_per_refresh` live access
/// tokens: a further exchange drops its oldest (refused from then on), the
/// newer ones and other refresh tokens' keep working, and the stats count it.
#[tokio::test]
async fn a_refresh_token_keeps_at_most_its_share_of_access_tokens() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| f.tokens.max_access_per_refresh = 2).await;
    let (id1, t1) = gw.create_token("busy script").await;
    let (_, t2) = gw.create_token("other").await;
    let other = gw.exchange(&t2).await;
    let mut minted = Vec::new();
    for _ in 0..3 {
        minted.push(gw.exchange(&t1).await);
    }
    let r = gw.client.api_get("/x", &minted[0]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the oldest was dropped");
    // The refusal says why, in the body and in the challenge.
    let said = "the access token was evicted: its refresh token was exchanged more than 2 times while it was live (tokens.max_access_per_refresh)";
    assert_eq!(r.json()["error_description"], said, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(said), "{challenge}");
    for a in [&minted[1], &minted[2], &other] {
        assert_eq!(gw.client.api_get("/x", a).await.status, StatusCode::OK);
    }
    let s = stats(&gw).await;
    assert_eq!(
        (s.live_access_tokens, s.access_tokens_evicted),
        (3, 1),
        "{s:?}"
    );
    // Any other refusal is not called an eviction: once the refresh token
    // is deleted, the evicted ones (the first, and the second, evicted by
    // one more exchange) are simply not valid; an expired token expired.
    let fresh = gw.exchange(&t1).await;
    let r = gw
        .client
        .admin_call("DELETE", &format!("/api/refresh-tokens/{id1}"))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for a in [&minted[0], &minted[1], &fresh] {
        let r = gw.client.api_get("/x", a).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.json()["error_description"],
            "the access token is not valid"
        );
    }
    gw.clock.advance(Duration::from_secs(901));
    let r = gw.client.api_get("/x", &other).await;
    assert_eq!(r.json()["error_description"], "the access token expired");
}
