//! Restricted refresh tokens: scopes, read-only, networks and a
//! rate limit, each driven through a real gateway over TLS, with the test
//! upstream counting what reaches it, so a refusal is proven never to have
//! left the gateway. Counts are asserted, never timings.

use std::time::{Duration, Instant};

use crate::common::{upstream, Resp, TestClient, TestGateway};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};

/// Creates a token with `extra` fields besides its name; returns (id, token).
async fn create(gw: &TestGateway, name: &str, extra: Value) -> (u64, String) {
    let mut body = json!({ "name": name });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = gw
        .client
        .admin_json("POST", "/api/refresh-tokens", &body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_u64().unwrap(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

async fn exchange_from(client: &TestClient, refresh: &str) -> Resp {
    client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await
}

/// `method path` with the access token, from `client`.
async fn call(client: &TestClient, method: &str, path: &str, access: &str) -> Resp {
    let req = client
        .public_req(method, path)
        .header("authorization", format!("Bearer {access}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.send(req).await
}

/// A path that could be read two ways: refused before any check, 400
/// `invalid_path` (for restricted and unrestricted tokens alike).
fn assert_invalid_path(r: &Resp, what: &str) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text());
    if !r.body.is_empty() {
        assert_eq!(r.json()["error"], "invalid_path", "{what}");
    }
}

fn assert_insufficient_scope(r: &Resp, what: &str) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.text());
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(
        www.starts_with("Bearer realm=\"tokengate\"")
            && www.contains("error=\"insufficient_scope\""),
        "{what}: {www}"
    );
    if !r.body.is_empty() {
        assert_eq!(r.json()["error"], "insufficient_scope", "{what}");
    }
}

#[tokio::test]
async fn the_issue_shape_is_accepted_answered_and_listed_back() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let restrictions = json!({
        "scopes": [{"methods": ["GET", "HEAD"], "path": "/iwc/api/databases/**"}],
        "read_only": false,
        "networks": ["10.0.0.0/8", "2001:db8::/32"],
        "rate_limit": {"per_second": 5, "burst": 10}
    });
    let mut body = restrictions.clone();
    body["name"] = json!("nightly report");
    let r = gw
        .client
        .admin_json("POST", "/api/refresh-tokens", &body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let created = r.json();
    for k in ["scopes", "read_only", "networks", "rate_limit"] {
        assert_eq!(created[k], restrictions[k], "create answer: {k}");
    }
    gw.create_token("plain").await;
    let list = gw.client.admin_call("GET", "/api/refresh-tokens").await;
    let list = list.json();
    let rows = list.as_array().unwrap();
    for k in ["scopes", "read_only", "networks", "rate_limit"] {
        assert_eq!(rows[0][k], restrictions[k], "list: {k}");
    }
    // An unrestricted token lists the defaults: full access.
    assert_eq!(rows[1]["scopes"], json!([]));
    assert_eq!(rows[1]["read_only"], json!(false));
    assert_eq!(rows[1]["networks"], json!([]));
    assert_eq!(rows[1]["rate_limit"], Value::Null);
}

#[tokio::test]
async fn bad_restrictions_are_400_naming_the_field_and_create_nothing() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    for (extra, field) in [
        (json!({"scopes": "GET /x"}), "scopes"),
        (
            json!({"scopes": [{"methods": ["GET"], "path": "x/**"}]}),
            "scopes[0].path",
        ),
        (
            json!({"scopes": [{"methods": ["GET"], "path": "/a"}, {"methods": ["GET"], "path": "/**/b"}]}),
            "scopes[1].path",
        ),
        (
            json!({"scopes": [{"methods": ["GE T"], "path": "/a"}]}),
            "scopes[0].methods[0]",
        ),
        (
            json!({"scopes": [{"methods": [], "path": "/a"}]}),
            "scopes[0].methods",
        ),
        (json!({"scopes": [{"path": "/a"}]}), "scopes[0].methods"),
        (json!({"read_only": "yes"}), "read_only"),
        (json!({"networks": ["10.0.0.1/8"]}), "networks[0]"),
        (json!({"networks": ["10.0.0.0/8", "banana"]}), "networks[1]"),
        (json!({"networks": ["2001:db8::/129"]}), "networks[0]"),
        (
            json!({"rate_limit": {"per_second": 0, "burst": 1}}),
            "rate_limit.per_second",
        ),
        (
            json!({"rate_limit": {"per_second": 5, "burst": "10"}}),
            "rate_limit.burst",
        ),
        (
            json!({"rate_limit": {"burst": 10}}),
            "rate_limit.per_second",
        ),
        (json!({"rate_limit": 5}), "rate_limit"),
    ] {
        let mut body = extra.clone();
        body["name"] = json!("bad");
        let r = gw
            .client
            .admin_json("POST", "/api/refresh-tokens", &body)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{extra}: {}", r.text());
        let text = r.json()["error_description"].as_str().unwrap().to_owned();
        assert!(text.contains(field), "{extra}: {text}");
    }
    let list = gw.client.admin_call("GET", "/api/refresh-tokens").await;
    assert_eq!(list.json(), json!([]));
}

#[tokio::test]
async fn scopes_refuse_everything_outside_their_rules_before_the_upstream() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = create(
        &gw,
        "dpa reports",
        json!({"scopes": [
            {"methods": ["GET", "HEAD"], "path": "/iwc/api/databases/**"},
            {"methods": ["POST"], "path": "/iwc/api/databases/*/annotations"},
        ]}),
    )
    .await;
    let access = gw.exchange(&refresh).await;
    let c = &gw.client;

    // Inside the rules (the upstream sees the path the rule matched).
    for (method, path, upstream_path) in [
        ("GET", "/iwc/api/databases", "/iwc/api/databases"),
        ("GET", "/iwc/api/databases/", "/iwc/api/databases/"),
        (
            "GET",
            "/iwc/api/databases/3/metrics/cpu",
            "/iwc/api/databases/3/metrics/cpu",
        ),
        ("HEAD", "/iwc/api/databases/3", "/iwc/api/databases/3"),
        (
            "GET",
            "/iwc/api/other/../databases/3",
            "/iwc/api/databases/3",
        ),
        (
            "GET",
            "/iwc/api/databases/3/%2e%2e/4",
            "/iwc/api/databases/4",
        ),
        (
            "POST",
            "/iwc/api/databases/7/annotations",
            "/iwc/api/databases/7/annotations",
        ),
        (
            "POST",
            "/iwc/api/databases/7/annotations/",
            "/iwc/api/databases/7/annotations/",
        ),
        // Empty segments are merged: the merged path is checked and sent.
        ("GET", "//iwc/api/databases/3", "/iwc/api/databases/3"),
        ("GET", "/iwc//api/databases/3", "/iwc/api/databases/3"),
        ("GET", "/iwc/api/databases//3", "/iwc/api/databases/3"),
    ] {
        let before = up.hits();
        let r = call(c, method, path, &access).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path}: {}", r.text());
        assert_eq!(up.hits(), before + 1, "{method} {path}");
        if method == "GET" || method == "POST" {
            assert_eq!(r.json()["path"], upstream_path, "{method} {path}");
        }
    }

    // Outside them, however spelled: 403, and the upstream never sees it.
    let before = up.hits();
    for (method, path) in [
        ("GET", "/iwc/api/security/users"),
        ("GET", "/iwc/api/databases/../security/users"),
        ("GET", "/iwc/api/databases/%2e%2e/security/users"),
        ("GET", "/iwc/api/databases/%2E%2e/security/users"),
        ("GET", "/iwc/api/databases/.%2e/security/users"),
        ("GET", "/iwc/api/databases/3/../../security"),
        ("GET", "/iwc/api/Databases/3"),
        ("GET", "/iwc/api/databasesX"),
        ("GET", "/iwc/api"),
        ("GET", "/"),
        ("DELETE", "/iwc/api/databases/3"),
        ("PUT", "/iwc/api/databases/3"),
        ("POST", "/iwc/api/databases/3"),
        ("POST", "/iwc/api/databases/7/annotations/x"),
        ("POST", "/iwc/api/databases/annotations"),
        ("POST", "/iwc/api/databases//annotations"),
        ("GET", "/iwc/api/databases/7/annotations/../../../x"),
    ] {
        let r = call(c, method, path, &access).await;
        assert_insufficient_scope(&r, &format!("{method} {path}"));
    }
    // Spellings a server could read as another path: refused as such.
    for (method, path) in [
        ("GET", "/iwc/api/databases/..;x/security/users"),
        ("GET", "/iwc/api/databases/../../../../etc/passwd"),
        ("GET", "/iwc/api/databases%2f..%2f..%2fsecurity"),
        ("GET", "/iwc/api/databases%2F3"),
        ("GET", "/iwc/api/databases/3%5c..%5c..%5csecurity"),
        ("GET", "/iwc/api/databases/3\\..\\..\\security"),
        ("GET", "/iwc/api;x/security/users"),
        ("GET", "/iwc/api/;x/databases/3"),
        ("GET", "/iwc/api/databases;%2f..%2f..%2fsecurity"),
        ("GET", "/iwc/api/databases/3;%2f..%2f..%2f..%2fsecurity"),
        ("GET", "/iwc/api/databases/%252e%252e/x"),
        ("GET", "/iwc/api/databases/%c0%ae%c0%ae/x"),
        ("GET", "/iwc/api/databases/%00/x"),
    ] {
        let r = call(c, method, path, &access).await;
        assert_invalid_path(&r, &format!("{method} {path}"));
    }
    assert_eq!(up.hits(), before, "no refused request reached the upstream");
    // The health and token endpoints are not proxied: unaffected.
    assert_eq!(c.get_with("/healthz", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn read_only_allows_get_and_head_everywhere_and_nothing_else() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = create(&gw, "reader", json!({"read_only": true})).await;
    let access = gw.exchange(&refresh).await;
    for (method, path) in [("GET", "/"), ("GET", "/any/thing"), ("HEAD", "/iwc/api/x")] {
        let r = call(&gw.client, method, path, &access).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path}");
    }
    let before = up.hits();
    for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let r = call(&gw.client, method, "/iwc/api/databases/1", &access).await;
        assert_insufficient_scope(&r, method);
    }
    assert_eq!(up.hits(), before);
}

#[tokio::test]
async fn networks_bind_the_exchange_and_every_request() {
    let up = upstream().await;
    // A small failure budget, so a refusal counted as a guess would show.
    let gw = TestGateway::start_with(up.addr, |f| f.public.auth_failures_per_minute = 5).await;
    // 127.0.0.4/31: .4 and .5 inside, .3 and .6 just outside.
    let (_, refresh) = create(&gw, "bound", json!({"networks": ["127.0.0.4/31"]})).await;
    let (inside, inside2) = (gw.client_from("127.0.0.4"), gw.client_from("127.0.0.5"));
    let (below, above) = (gw.client_from("127.0.0.3"), gw.client_from("127.0.0.6"));

    for outside in [&below, &above] {
        let r = exchange_from(outside, &refresh).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert_eq!(r.json()["error"], "invalid_grant");
    }
    let r = exchange_from(&inside, &refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let access = r.json()["access_token"].as_str().unwrap().to_owned();

    for c in [&inside, &inside2] {
        assert_eq!(call(c, "GET", "/x", &access).await.status, StatusCode::OK);
    }
    let before = up.hits();
    for c in [&below, &above, &gw.client] {
        let r = call(c, "GET", "/x", &access).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        assert_eq!(r.json()["error"], "invalid_token");
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
    }
    assert_eq!(
        up.hits(),
        before,
        "no request from outside reached the upstream"
    );
    // A refusal for the network is no guess: however many, the client is
    // never throttled for them (429 would say it was).
    for _ in 0..30 {
        let r = call(&below, "GET", "/x", &access).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = exchange_from(&below, &refresh).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn behind_a_trusted_forwarder_the_forwarded_client_is_the_one_bound() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.trusted_forwarders = vec!["127.0.0.7/32".into()];
    })
    .await;
    let (_, refresh) = create(&gw, "behind lb", json!({"networks": ["10.1.2.0/24"]})).await;
    let proxy = gw.client_from("127.0.0.7");
    let untrusted = gw.client_from("127.0.0.8");
    let exchange_as = |c: &TestClient, xff: &'static str| {
        let req = c
            .public_req("POST", "/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-for", xff)
            .body(Full::new(Bytes::from(format!(
                "grant_type=refresh_token&refresh_token={refresh}"
            ))))
            .unwrap();
        let c = c.clone();
        async move { c.send(req).await }
    };
    assert_eq!(
        exchange_as(&untrusted, "10.1.2.3").await.status,
        StatusCode::BAD_REQUEST,
        "an untrusted peer's X-Forwarded-For is not believed"
    );
    assert_eq!(
        exchange_as(&proxy, "10.1.3.1").await.status,
        StatusCode::BAD_REQUEST
    );
    let r = exchange_as(&proxy, "10.1.2.3").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    let call_as = |c: &TestClient, xff: &'static str| {
        let req = c
            .public_req("GET", "/x")
            .header("authorization", format!("Bearer {access}"))
            .header("x-forwarded-for", xff)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let c = c.clone();
        async move { c.send(req).await.status }
    };
    assert_eq!(call_as(&proxy, "10.1.2.250").await, StatusCode::OK);
    let before = up.hits();
    assert_eq!(call_as(&proxy, "10.1.3.0").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call_as(&untrusted, "10.1.2.250").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(up.hits(), before);
}

/// Sends `n` GETs of `path` one after the other; returns (allowed,
/// refused) and the first 429.
async fn burst(c: &TestClient, access: &str, path: &str, n: usize) -> (usize, usize, Option<Resp>) {
    let (mut ok, mut limited, mut first) = (0, 0, None);
    for _ in 0..n {
        let r = call(c, "GET", path, access).await;
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                first.get_or_insert(r);
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    (ok, limited, first)
}

#[tokio::test]
async fn the_rate_allows_the_burst_then_429_with_ratelimit_fields() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = create(
        &gw,
        "limited",
        json!({"rate_limit": {"per_second": 1, "burst": 5}}),
    )
    .await;
    // Two access tokens of the same refresh token share one rate.
    let (a, b) = (gw.exchange(&refresh).await, gw.exchange(&refresh).await);
    let before = up.hits();
    let started = Instant::now();
    let (ok_a, _, _) = burst(&gw.client, &a, "/x", 3).await;
    let (ok_b, limited, first) = burst(&gw.client, &b, "/x", 7).await;
    // 1 per second refills: allow for the seconds the burst itself took.
    let refill = usize::try_from(started.elapsed().as_secs()).unwrap();
    let ok = ok_a + ok_b;
    assert!(
        (5..=5 + refill).contains(&ok),
        "{ok} allowed in {refill} s with a burst of 5"
    );
    assert_eq!(ok + limited, 10);
    assert_eq!(
        up.hits() - before,
        ok,
        "no limited request reached the upstream"
    );
    let r = first.expect("a 429");
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some("\"token\";q=5;w=5")
    );
    assert_eq!(r.header("ratelimit").as_deref(), Some("\"token\";r=0;t=1"));

    // Time refills the bucket (the gateway's clock, moved, not waited for).
    gw.clock.advance(Duration::from_secs(2));
    let (ok, _, _) = burst(&gw.client, &a, "/x", 2).await;
    assert_eq!(ok, 2);
    // Idle for an hour: full again, and never more than the burst (the
    // access tokens expired meanwhile; a new one shares the same rate).
    gw.clock.advance(Duration::from_secs(3600));
    let c = gw.exchange(&refresh).await;
    let (ok, limited, _) = burst(&gw.client, &c, "/x", 8).await;
    let refill = usize::try_from(started.elapsed().as_secs()).unwrap();
    assert!(
        (5..=5 + refill).contains(&ok),
        "never more than the burst: {ok}"
    );
    assert!(limited >= 3 - refill.min(3));
}

#[tokio::test]
async fn concurrent_requests_share_the_burst_exactly() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = create(
        &gw,
        "parallel",
        json!({"rate_limit": {"per_second": 1, "burst": 10}}),
    )
    .await;
    let access = gw.exchange(&refresh).await;
    let before = up.hits();
    let started = Instant::now();
    let calls: Vec<_> = (0..30)
        .map(|i| {
            // Several connections (several workers), some over HTTP/2.
            let c = gw.client.clone();
            let access = access.clone();
            tokio::spawn(async move {
                let req = c
                    .public_req("GET", "/x")
                    .header("authorization", format!("Bearer {access}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                if i % 2 == 0 {
                    c.send(req).await.status
                } else {
                    c.send_h2(req).await.status
                }
            })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    let refill = usize::try_from(started.elapsed().as_secs()).unwrap();
    assert!((10..=10 + refill).contains(&ok), "{ok}");
    assert_eq!(up.hits() - before, ok);
}

#[tokio::test]
async fn refused_requests_cost_no_rate_and_checks_run_networks_scopes_rate() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = create(
        &gw,
        "all three",
        json!({
            "scopes": [{"methods": ["GET"], "path": "/ok/**"}],
            "networks": ["127.0.0.1/32"],
            "rate_limit": {"per_second": 1, "burst": 2}
        }),
    )
    .await;
    let access = gw.exchange(&refresh).await;
    let outside = gw.client_from("127.0.0.9");
    for _ in 0..5 {
        assert_eq!(
            call(&outside, "GET", "/ok/1", &access).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_insufficient_scope(&call(&gw.client, "GET", "/no", &access).await, "/no");
    }
    // None of that used the rate: the burst is whole.
    let (ok, limited, _) = burst(&gw.client, &access, "/ok/1", 3).await;
    assert!(ok >= 2, "{ok}");
    assert!(limited <= 1);
}

#[tokio::test]
async fn unrestricted_tokens_behave_as_before() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("full access").await;
    let access = gw.exchange(&refresh).await;
    let far = gw.client_from("127.0.0.10");
    let before = up.hits();
    for (c, method, path) in [
        (&gw.client, "GET", "/iwc/api/security/users"),
        (&gw.client, "DELETE", "/iwc/api/databases/3"),
        (&gw.client, "POST", "/anything"),
        (&far, "PUT", "/a//b"),
        (&far, "GET", "/a/../b"),
    ] {
        let r = call(c, method, path, &access).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path}");
        assert!(r.header("ratelimit").is_none());
    }
    // Ambiguous paths are refused for unrestricted tokens too.
    let before_ambiguous = up.hits();
    for path in ["/a//b;x", "/a%2fb", "/a\\b", "/%2e%2e/x"] {
        assert_invalid_path(&call(&far, "GET", path, &access).await, path);
    }
    assert_eq!(up.hits(), before_ambiguous);
    // No rate: a run of requests all pass.
    for _ in 0..50 {
        assert_eq!(
            call(&gw.client, "GET", "/x", &access).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(up.hits() - before, 55);
    // A path that climbs above the root is still the proxy's 400.
    let r = call(&gw.client, "GET", "/a/../../b", &access).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn restrictions_hold_across_a_restart() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = create(
        &gw,
        "kept",
        json!({"read_only": true, "networks": ["127.0.0.1/32"], "rate_limit": {"per_second": 100, "burst": 100}}),
    )
    .await;
    let gw = gw.restart().await;
    let access = gw.exchange(&refresh).await;
    assert_eq!(
        call(&gw.client, "GET", "/x", &access).await.status,
        StatusCode::OK
    );
    assert_insufficient_scope(&call(&gw.client, "POST", "/x", &access).await, "POST");
    let r = exchange_from(&gw.client_from("127.0.0.2"), &refresh).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert_eq!(list[0]["read_only"], json!(true));
    assert_eq!(list[0]["networks"], json!(["127.0.0.1/32"]));
    assert_eq!(
        list[0]["rate_limit"],
        json!({"per_second": 100, "burst": 100})
    );
}
