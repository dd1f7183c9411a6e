//! The admin page's server side: the embedded page, login sessions (cookie
//! flags, CSRF, logout), the failed-login slow-down, usage tracking and the
//! audit log.

use crate::common;
use crate::common::{read_raw_response, upstream, TestGateway, ADMIN_PASSWORD};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tokio::io::AsyncWriteExt;

async fn login(gw: &TestGateway, password: &str) -> common::Resp {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{}/api/login", gw.client.admin))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"username": "admin", "password": password}).to_string(),
        )))
        .unwrap();
    gw.client.send(req).await
}

fn session_req(gw: &TestGateway, method: &str, path: &str, cookie: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(format!("{}{}", gw.client.admin, path))
        .header("cookie", format!("__Host-tg_session={cookie}"))
        .header("x-requested-with", "tokengate-ui")
}

/// A page-session call: cookie, optional CSRF token, optional JSON body.
async fn session_call(
    gw: &TestGateway,
    method: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<serde_json::Value>,
) -> common::Resp {
    let mut b = session_req(gw, method, path, cookie);
    // As the page does: every POST is JSON.
    if method == "POST" {
        b = b.header("content-type", "application/json");
    }
    if let Some(c) = csrf {
        b = b.header("x-csrf-token", c);
    }
    let body = body
        .map(|v| Full::new(Bytes::from(v.to_string())))
        .unwrap_or_default();
    gw.client.send(b.body(body).unwrap()).await
}

/// The session cookie's value from a login answer.
fn cookie_of(r: &common::Resp) -> String {
    let set = r.header("set-cookie").expect("Set-Cookie");
    set.split(';')
        .next()
        .unwrap()
        .strip_prefix("__Host-tg_session=")
        .expect("the session cookie is __Host- prefixed")
        .to_owned()
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_with_a_strict_policy() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let r = gw.client.admin_get_anonymous("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("API Refresh Token Management"));
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    // Everything it loads is served by tokengate itself.
    for asset in ["/assets/app.js", "/assets/app.css"] {
        assert!(r.text().contains(asset));
        let a = gw.client.admin_get_anonymous(asset).await;
        assert_eq!(a.status, StatusCode::OK, "{asset}");
    }
    assert!(
        !r.text().contains("http://") && !r.text().contains("https://"),
        "no external resources"
    );
}

#[tokio::test]
async fn sessions_use_strict_cookies_and_csrf() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;

    let bad = login(&gw, "wrong").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.header("set-cookie").is_none());

    let ok = login(&gw, ADMIN_PASSWORD).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let set = ok.header("set-cookie").unwrap();
    for flag in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Max-Age=28800",
        "Path=/",
    ] {
        assert!(set.contains(flag), "{flag} missing from {set}");
    }
    // `__Host-`: a browser keeps it only with Secure, Path=/ and no Domain,
    // so no sibling host can set or shadow the session.
    assert!(set.starts_with("__Host-tg_session="), "{set}");
    assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
    let cookie = cookie_of(&ok);
    let csrf = ok.json()["csrf"].as_str().unwrap().to_owned();
    assert_eq!(ok.json()["default_refresh_ttl_days"], 90);

    // Reading needs only the cookie.
    let r = session_call(&gw, "GET", "/api/refresh-tokens", &cookie, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    // Changing needs the CSRF token too.
    let body = || Some(json!({"name": "from page"}));
    let r = session_call(&gw, "POST", "/api/refresh-tokens", &cookie, None, body()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = session_call(
        &gw,
        "POST",
        "/api/refresh-tokens",
        &cookie,
        Some("not-the-token"),
        body(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = session_call(
        &gw,
        "POST",
        "/api/refresh-tokens",
        &cookie,
        Some(&csrf),
        body(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    // The page's own 401s do not trigger the browser's Basic pop-up.
    let r = session_call(&gw, "GET", "/api/session", "forged", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").is_none());

    // Logout ends the session for good.
    let r = session_call(&gw, "POST", "/api/logout", &cookie, Some(&csrf), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = session_call(&gw, "GET", "/api/refresh-tokens", &cookie, None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_expire() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let cookie = cookie_of(&login(&gw, ADMIN_PASSWORD).await);
    assert_eq!(
        session_call(&gw, "GET", "/api/session", &cookie, None, None)
            .await
            .status,
        StatusCode::OK
    );
    gw.clock
        .advance(std::time::Duration::from_secs(8 * 3600 + 1));
    let r = session_call(&gw, "GET", "/api/session", &cookie, None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn repeated_failed_logins_are_slowed_down() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    for _ in 0..5 {
        assert_eq!(login(&gw, "guess").await.status, StatusCode::UNAUTHORIZED);
    }
    // Three more, each after its wait (1, 2, 4 s): the wait is then 8 s,
    // longer than a loaded machine stalls between two requests (at 1 s,
    // one stall let the right password through below).
    for wait in [1, 2, 4] {
        gw.clock.advance(std::time::Duration::from_secs(wait));
        assert_eq!(login(&gw, "guess").await.status, StatusCode::UNAUTHORIZED);
    }
    // Now even the right password must wait, on the page and over HTTP Basic.
    let r = login(&gw, ADMIN_PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        gw.client
            .admin_call("GET", "/api/refresh-tokens")
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The wait passes.
    gw.clock.advance(std::time::Duration::from_secs(9));
    assert_eq!(login(&gw, ADMIN_PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn usage_and_audit_record_a_scripted_session() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    assert_eq!(login(&gw, "nope").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(login(&gw, ADMIN_PASSWORD).await.status, StatusCode::OK);
    let (id, refresh) = gw.create_token("audited").await;
    let req = gw
        .client
        .public_req("POST", "/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("user-agent", "python-requests/2.31.0")
        .body(Full::new(Bytes::from(format!(
            "grant_type=refresh_token&refresh_token={refresh}"
        ))))
        .unwrap();
    assert_eq!(gw.client.send(req).await.status, StatusCode::OK);
    let r = gw
        .client
        .token_form("grant_type=refresh_token&refresh_token=tgr_wrong")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert_eq!(list[0]["use_count"], 1);
    assert_eq!(list[0]["last_client_ip"], "127.0.0.1");
    assert_eq!(list[0]["last_user_agent"], "python-requests/2.31.0");

    assert_eq!(
        gw.client
            .admin_call("DELETE", &format!("/api/refresh-tokens/{id}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    let lines = gw.audit_lines();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "admin.login_failed",
            "admin.login",
            "refresh_token.created",
            "token.exchanged",
            "token.exchange_refused",
            "refresh_token.deleted"
        ]
    );
    for l in &lines {
        assert!(l["time"].is_string());
        assert_eq!(l["client_ip"], "127.0.0.1");
    }
    assert_eq!(lines[2]["token_id"], id);
    assert_eq!(lines[2]["token_name"], "audited");
    assert_eq!(lines[2]["actor"], "admin");
    assert_eq!(lines[3]["user_agent"], "python-requests/2.31.0");
    assert!(lines[4]["reason"]
        .as_str()
        .unwrap()
        .contains("invalid_grant"));
    let raw = std::fs::read_to_string(gw.dir.path().join("audit.jsonl")).unwrap();
    assert!(!raw.contains(&refresh) && !raw.contains("tgr_") && !raw.contains("tga_"));
    assert!(!raw.contains(ADMIN_PASSWORD) && !raw.contains("nope"));
}

/// The admin API's JSON body limit answers 413 the client can read, and a
/// drained connection carries the next request.
#[tokio::test]
async fn an_oversized_admin_body_gets_a_readable_413() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let mut tls = gw.tls_connect_admin().await;
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("admin:{ADMIN_PASSWORD}"),
    );
    let body = format!("{{\"name\": \"{}\"}}", "x".repeat(100_000));
    let req = format!(
        "POST /api/refresh-tokens HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let r = read_raw_response(&mut tls).await;
    assert_eq!(r.status, 413, "{}", r.head);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "invalid_request");
    assert_eq!(v["error_description"], "request body is too large");
    let next = format!(
        "GET /api/refresh-tokens HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n\r\n"
    );
    tls.write_all(next.as_bytes()).await.unwrap();
    assert_eq!(read_raw_response(&mut tls).await.status, 200);
}

/// With HTTP Basic credentials cached in a browser, another site could make
/// it send "simple" cross-site requests (no preflight). Every POST must be
/// `application/json` (which a cross-site page cannot send without a CORS
/// preflight), and requests the browser marks cross-site, or whose `Origin`
/// is not the admin listener's own, are refused with 403.
#[tokio::test]
async fn cross_site_requests_are_refused() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (id, _) = gw.create_token("keep me").await;
    let ids = json!({ "ids": [id] }).to_string();
    let post = |content_type: Option<&str>| {
        let mut b = gw.client.admin_req("POST", "/api/refresh-tokens/delete");
        if let Some(t) = content_type {
            b = b.header("content-type", t);
        }
        b
    };
    let refused = |r: &common::Resp, what: &str| {
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.text());
        assert!(r.json()["error_description"].is_string(), "{what}");
    };

    for t in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let r = gw
            .client
            .send(post(t).body(Full::new(Bytes::from(ids.clone()))).unwrap())
            .await;
        refused(&r, &format!("Content-Type {t:?}"));
        assert!(
            r.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{}",
            r.text()
        );
    }
    let r = gw
        .client
        .send(
            post(Some("application/json"))
                .header("sec-fetch-site", "cross-site")
                .body(Full::new(Bytes::from(ids.clone())))
                .unwrap(),
        )
        .await;
    refused(&r, "Sec-Fetch-Site: cross-site");
    for origin in [
        "https://evil.example",
        "null",
        "http://localhost",
        "https://localhost:1",
    ] {
        let r = gw
            .client
            .send(
                post(Some("application/json"))
                    .header("origin", origin)
                    .body(Full::new(Bytes::from(ids.clone())))
                    .unwrap(),
            )
            .await;
        refused(&r, origin);
    }
    // Reads the browser marks cross-site are refused too.
    let r = gw
        .client
        .send(
            gw.client
                .admin_req("GET", "/api/refresh-tokens")
                .header("sec-fetch-site", "cross-site")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    refused(&r, "cross-site GET");
    // Nothing was deleted.
    let list = gw.client.admin_call("GET", "/api/refresh-tokens").await;
    assert_eq!(list.json().as_array().unwrap().len(), 1);

    // The page itself: same origin, JSON.
    let r = gw
        .client
        .send(
            post(Some("application/json"))
                .header("origin", gw.client.admin.as_str())
                .header("sec-fetch-site", "same-origin")
                .body(Full::new(Bytes::from(ids)))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["deleted"][0]["id"], id);
}
