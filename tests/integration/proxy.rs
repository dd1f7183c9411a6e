//! The authenticated proxy path: bearer handling (RFC 6750), header hygiene,
//! streaming of method/path/query/body, HTTP/2, and upstream failures.

use crate::common;
use crate::common::{dead_address, upstream, TestGateway};
use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;
use http_body_util::Full;
use std::time::Duration;

fn assert_invalid_token(r: &common::Resp) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert_eq!(r.json()["error"], "invalid_token");
}

/// RFC 6750 §3.1: a request that sent no bearer token at all gets the
/// realm alone in its challenge (no error code); the JSON body is the same.
fn assert_no_token(r: &common::Resp) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    assert_eq!(challenge, r#"Bearer realm="tokengate""#);
    assert_eq!(r.json()["error"], "invalid_token");
}

#[tokio::test]
async fn requests_without_a_valid_bearer_token_are_refused() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;

    assert_no_token(&gw.client.get_with("/api/x", None).await);
    assert_no_token(
        &gw.client
            .get_with("/api/x", Some("Basic YWRtaW46eA=="))
            .await,
    );
    assert_no_token(&gw.client.get_with("/api/x", Some("Bearer")).await);
    assert_invalid_token(&gw.client.get_with("/api/x", Some("Bearer tga_nope")).await);
    // A refresh token is not an access token.
    assert_invalid_token(
        &gw.client
            .get_with("/api/x", Some(&format!("Bearer {refresh}")))
            .await,
    );
    // A forged token: right shape, wrong MAC.
    let mut forged = access.clone().into_bytes();
    let i = forged.len() - 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_invalid_token(
        &gw.client
            .get_with("/api/x", Some(&format!("Bearer {forged}")))
            .await,
    );

    // Bytes that are not UTF-8 in the header: a 401, never a 500.
    let req = gw
        .client
        .public_req("GET", "/api/x")
        .header(
            "authorization",
            HeaderValue::from_bytes(b"Bearer \xff\xfe\x80").unwrap(),
        )
        .body(Full::default())
        .unwrap();
    assert_invalid_token(&gw.client.send(req).await);

    // Two Authorization headers: 400 invalid_request.
    let req = gw
        .client
        .public_req("GET", "/api/x")
        .header("authorization", format!("Bearer {access}"))
        .header("authorization", format!("Bearer {access}"))
        .body(Full::default())
        .unwrap();
    let r = gw.client.send(req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_request"));

    // The scheme is case-insensitive, as PowerShell clients send `bearer`.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = gw
            .client
            .get_with("/api/x", Some(&format!("{scheme} {access}")))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{scheme}: {}", r.text());
    }
}

#[tokio::test]
async fn forwarded_requests_are_untouched_but_clean() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.upstream
            .headers
            .insert("X-Api-Key".into(), "upstream-credential".into());
        f.upstream.identity_headers = true;
    })
    .await;
    let (id, refresh) = gw.create_token("nightly report").await;
    let access = gw.exchange(&refresh).await;

    let req = gw
        .client
        .public_req(
            "PUT",
            "/iwc/api/databases/7/annotations?from=1&to=2&q=a%20b",
        )
        .header("authorization", format!("bearer {access}"))
        .header("content-type", "application/json")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "http")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-api-key", "client-chosen")
        .header("x-tokengate-token-id", "999")
        .header("connection", "x-secret-hop")
        .header("x-secret-hop", "must not pass")
        .header("keep-alive", "timeout=1")
        .header("te", "trailers")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"title":"deploy"}"#)))
        .unwrap();
    let r = gw.client.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/iwc/api/databases/7/annotations");
    assert_eq!(seen["query"], "from=1&to=2&q=a%20b");
    assert_eq!(seen["body"], r#"{"title":"deploy"}"#);
    let h = &seen["headers"];
    for gone in [
        "authorization",
        "forwarded",
        "x-real-ip",
        "connection",
        "x-secret-hop",
        "keep-alive",
        "te",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]));
    assert_eq!(
        h["x-forwarded-host"],
        serde_json::json!([gw.client.public.trim_start_matches("https://")])
    );
    assert_eq!(h["x-api-key"], serde_json::json!(["upstream-credential"]));
    assert_eq!(
        h["x-tokengate-token-id"],
        serde_json::json!([id.to_string()])
    );
    assert_eq!(
        h["x-tokengate-token-name"],
        serde_json::json!(["nightly report"])
    );
    assert_eq!(h["host"], serde_json::json!([up.addr.to_string()]));
    assert_eq!(h["accept"], serde_json::json!(["application/json"]));
    // No tokengate token anywhere in what the upstream saw.
    assert!(!seen.to_string().contains("tga_"));

    // Response: upstream headers pass, hop-by-hop ones do not.
    assert_eq!(r.header("x-upstream").as_deref(), Some("echo"));
    assert!(r.header("x-upstream-private").is_none());
    assert!(r.header("keep-alive").is_none());
}

#[tokio::test]
async fn http2_clients_are_served() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;
    let req = gw
        .client
        .public_req("POST", "/api/h2?x=1")
        .header("authorization", format!("Bearer {access}"))
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let r = gw.client.send_h2(req).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["body"], "hello");
    assert_eq!(r.json()["query"], "x=1");
    // The exchange works over HTTP/2 too.
    let req = gw
        .client
        .public_req("POST", "/iwc/api/security/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!(
            "grant_type=refresh_token&refresh_token={refresh}"
        ))))
        .unwrap();
    let r = gw.client.send_h2(req).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let up = upstream().await;
    let dead = dead_address().await;
    let down = TestGateway::start(dead).await;
    let (_, refresh) = down.create_token("t").await;
    let access = down.exchange(&refresh).await;
    let r = down.client.api_get("/api/x", &access).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert!(
        !r.text().contains(&dead.to_string()),
        "no internal detail leaks: {}",
        r.text()
    );

    let slow = TestGateway::start_with(up.addr, |f| {
        f.upstream.response_timeout = tokengate::config::HumanDuration(Duration::from_millis(300));
    })
    .await;
    let (_, refresh) = slow.create_token("t").await;
    let access = slow.exchange(&refresh).await;
    let r = slow.client.api_get("/slow", &access).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"], "upstream_timeout");
}

#[tokio::test]
async fn health_needs_no_token_and_host_is_required() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let r = gw.client.get_with("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");
    let r = gw
        .client
        .send(
            gw.client
                .public_req("POST", "/healthz")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    let req = gw
        .client
        .public_req("GET", "/healthz")
        .header("host", "a.example")
        .header("host", "b.example")
        .body(Full::default())
        .unwrap();
    assert_eq!(gw.client.send(req).await.status, StatusCode::BAD_REQUEST);
}

/// The gateway's answers carry a current `Date`, also on a kept-alive
/// HTTP/1.1 connection (hyper's cached date is checked only when a `Date`
/// is written, patches/hyper/PATCH.md section 16: left unchecked, a
/// connection's second answer would repeat the first one's date).
#[tokio::test]
async fn answers_carry_a_current_date() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let date = |r: &common::Resp| {
        let v = r.header("date").expect("a Date header");
        httpdate::parse_http_date(&v).unwrap_or_else(|e| panic!("Date {v:?}: {e}"))
    };
    let first = date(&gw.client.get_with("/healthz", None).await);
    // More than a second later (the header's resolution), on the same
    // pooled connection.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = gw.client.get_with("/healthz", None).await;
    assert_eq!(second.status, StatusCode::OK);
    let second = date(&second);
    assert!(
        second > first,
        "the Date did not move on: {first:?} then {second:?}"
    );
    let now = std::time::SystemTime::now();
    let off = now
        .duration_since(second)
        .or_else(|_| second.duration_since(now))
        .unwrap_or_default();
    assert!(
        off < Duration::from_secs(60),
        "the Date is {off:?} off the clock"
    );
    // And on the gateway's refusals, over HTTP/2 as well.
    let refused = gw.client.get_with("/iwc/api/x", None).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    date(&refused);
    let h2 = gw
        .client
        .send_h2(
            gw.client
                .public_req("GET", "/healthz")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(h2.status, StatusCode::OK);
    assert!(date(&h2) >= second);
}

#[tokio::test]
async fn head_answers_have_no_body_on_http2() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    for path in ["/healthz", "/api/needs-a-token"] {
        let req = gw
            .client
            .public_req("HEAD", path)
            .body(Full::default())
            .unwrap();
        let r = gw.client.send_h2(req).await;
        assert!(r.body.is_empty(), "{path}: {:?}", r.body);
        assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}

/// Names with underscores (folded into the same CGI/WSGI/PHP variables as
/// their hyphenated twins) and the other forwarding, rewrite and method
/// override claims never reach the upstream.
#[tokio::test]
async fn spoofed_identity_and_forwarding_headers_are_dropped() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| f.upstream.identity_headers = true).await;
    let (id, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;
    let spoofed = [
        "X_Tokengate_Token_Id",
        "X_Tokengate_Token_Name",
        "X_Forwarded_For",
        "X_Forwarded_Host",
        "X_Real_IP",
        "Accept_Language",
        "True-Client-IP",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "X-Forwarded-Server",
        "X-Forwarded-Scheme",
        "X-Client-IP",
        "X-Cluster-Client-IP",
        "CF-Connecting-IP",
        "Fastly-Client-IP",
        "X-Original-Host",
        "X-Host",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ];
    let mut b = gw
        .client
        .public_req("GET", "/api/x")
        .header("authorization", format!("Bearer {access}"))
        .header("x-kept", "yes");
    for name in spoofed {
        b = b.header(name, "6.6.6.6");
    }
    let r = gw.client.send(b.body(Full::default()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let h = &r.json()["headers"];
    for name in spoofed {
        assert!(
            h.get(name.to_ascii_lowercase()).is_none(),
            "{name} reached the upstream: {h}"
        );
    }
    assert!(!h.to_string().contains("6.6.6.6"), "{h}");
    assert_eq!(h["x-kept"], serde_json::json!(["yes"]));
    assert_eq!(
        h["x-tokengate-token-id"],
        serde_json::json!([id.to_string()])
    );
}

/// The client's Host becomes X-Forwarded-Host only when it is a valid
/// authority; an HTTP/1.1 request with an invalid one is refused.
#[tokio::test]
async fn an_invalid_host_is_refused_and_never_forwarded() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;
    let with_host = |host: &'static [u8]| {
        gw.client
            .public_req("GET", "/api/x")
            .header("authorization", format!("Bearer {access}"))
            .header("host", HeaderValue::from_bytes(host).unwrap())
            .body(Full::default())
            .unwrap()
    };
    for bad in [
        &b"evil.example/path"[..],
        b"user:pw@gw.example",
        b"gw.example evil",
        b"gw.example:80x",
        b"gw.example:99999",
        b"[::1",
        b"[not-ipv6]:443",
        b"",
        b"gw\xff.example",
    ] {
        let r = gw.client.send(with_host(bad)).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{}: {}",
            String::from_utf8_lossy(bad),
            r.text()
        );
        assert_eq!(r.json()["error"], "invalid_request");
    }
    let long = format!("{}.example", "a".repeat(250));
    let r = gw
        .client
        .send(
            gw.client
                .public_req("GET", "/api/x")
                .header("authorization", format!("Bearer {access}"))
                .header("host", long)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a Host over 255 bytes");
    for good in [
        &b"gw.example"[..],
        b"gw.example:8443",
        b"10.0.0.1:443",
        b"[::1]:8443",
        b"GW-1.Example_x~",
    ] {
        let r = gw.client.send(with_host(good)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.json()["headers"]["x-forwarded-host"],
            serde_json::json!([String::from_utf8_lossy(good)])
        );
    }
}

/// Dot segments (also percent-encoded) are resolved before the path joins
/// `upstream.url`'s base path; a path that climbs above `/`, or that a
/// server could read as another path (`;params`, encoded separators,
/// backslashes), is refused and never reaches the upstream.
#[tokio::test]
async fn dot_segments_cannot_escape_the_upstream_base_path() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.upstream.url = format!("http://{}/base", up.addr);
    })
    .await;
    let (_, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;
    for escape in [
        "/../x",
        "/a/../../x",
        "/%2e%2e/x",
        "/%2E%2e/x",
        "/.%2e/x",
        "/..;jsessionid=1/x",
        "/a/%2e%2e;x/%2e%2e/etc",
        "/..",
        "/a/..;x/b",
        "/a/.;x/b",
        "/a/%2e%2f../b",
        "/%2e%2e%2fsecret.txt",
        "/x/..%2f..%2fsecret.txt",
        "/..\\secret.txt",
    ] {
        let before = up.hits();
        let r = gw.client.api_get(escape, &access).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{escape}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_path", "{escape}");
        assert_eq!(up.hits(), before, "{escape} reached the upstream");
    }
    for (sent, seen) in [
        ("/a/b/../c", "/base/a/c"),
        ("/a/./b", "/base/a/b"),
        ("/a/%2e/b", "/base/a/b"),
        ("/a/%2E%2E/b", "/base/b"),
        ("/a/b/..", "/base/a/"),
        ("/a/.", "/base/a/"),
        ("/a/b.json", "/base/a/b.json"),
        ("/a/..b/c.", "/base/a/..b/c."),
        ("/a//b", "/base/a/b"),
        ("/a/%7e%41%2d", "/base/a/~A-"),
        ("/a/b%3fc", "/base/a/b%3Fc"),
    ] {
        let r = gw.client.api_get(sent, &access).await;
        assert_eq!(r.status, StatusCode::OK, "{sent}: {}", r.text());
        assert_eq!(r.json()["path"], seen, "{sent}");
    }
    // The query is kept as it is, dots and all.
    let r = gw.client.api_get("/a/../b?path=../../x", &access).await;
    assert_eq!(r.json()["path"], "/base/b");
    assert_eq!(r.json()["query"], "path=../../x");
}
