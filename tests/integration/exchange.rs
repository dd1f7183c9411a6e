//! The token endpoint: RFC 6749 §5.1 answers and §5.2 errors, DPA's path,
//! form and JSON bodies, and the limits on what it accepts.

use crate::common;
use crate::common::{read_raw_response, upstream, TestGateway};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

async fn post(
    gw: &TestGateway,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> common::Resp {
    let mut b = gw.client.public_req("POST", path);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    gw.client
        .send(b.body(Full::new(body.into())).unwrap())
        .await
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

fn assert_oauth_error(r: &common::Resp, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"], code, "{}", r.text());
    assert!(r.json()["error_description"].is_string());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
}

#[tokio::test]
async fn exchange_succeeds_at_both_paths_with_form_and_json() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("reporting").await;

    for path in ["/token", "/iwc/api/security/oauth/token"] {
        let r = post(
            &gw,
            path,
            FORM,
            format!("grant_type=refresh_token&refresh_token={refresh}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        let v = r.json();
        assert!(v["access_token"].as_str().unwrap().starts_with("tga_"));
        assert_eq!(v["token_type"], "bearer");
        assert_eq!(v["expires_in"], 900);
    }
    let body =
        serde_json::json!({"grant_type": "refresh_token", "refresh_token": refresh}).to_string();
    let r = post(&gw, "/token", Some("application/json; charset=utf-8"), body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Every exchange mints a distinct token.
    let a = gw.exchange(&refresh).await;
    let b = gw.exchange(&refresh).await;
    assert_ne!(a, b);
    assert_eq!(gw.state().live_access_tokens(), 5);
}

#[tokio::test]
async fn request_errors_follow_rfc_6749() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("t").await;

    let r = post(
        &gw,
        "/token",
        FORM,
        format!("grant_type=password&refresh_token={refresh}"),
    )
    .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "unsupported_grant_type");
    let r = post(&gw, "/token", FORM, "grant_type=refresh_token").await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = post(&gw, "/token", FORM, format!("refresh_token={refresh}")).await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = post(
        &gw,
        "/token",
        FORM,
        format!("grant_type=refresh_token&refresh_token={refresh}&refresh_token={refresh}"),
    )
    .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("repeated"));
    let r = post(
        &gw,
        "/token",
        Some("text/plain"),
        format!("grant_type=refresh_token&refresh_token={refresh}"),
    )
    .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = post(&gw, "/token", Some("application/json"), "{not json").await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    // Oversized body: refused by its declared length and by counting.
    let big = format!(
        "grant_type=refresh_token&refresh_token={refresh}&pad={}",
        "x".repeat(20_000)
    );
    let r = post(&gw, "/token", FORM, big).await;
    assert_oauth_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("too large"));

    for method in ["GET", "PUT", "DELETE"] {
        let r = gw
            .client
            .send(
                gw.client
                    .public_req(method, "/token")
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.header("allow").as_deref(), Some("POST"));
    }
    // Still works after all that.
    gw.exchange(&refresh).await;
}

#[tokio::test]
async fn unknown_mistyped_and_deleted_tokens_get_one_answer() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (id, refresh) = gw.create_token("t").await;

    let answer = |r: common::Resp| {
        assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
        r.json()["error_description"].as_str().unwrap().to_owned()
    };
    // Unknown but well-formed: minted by nobody's gateway.
    let unknown = tokengate::new_refresh_token().unwrap();
    let a = answer(
        gw.client
            .token_form(&format!("grant_type=refresh_token&refresh_token={unknown}"))
            .await,
    );
    // A typo (checksum fails).
    let mut typo = refresh.clone().into_bytes();
    typo[8] = if typo[8] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let b = answer(
        gw.client
            .token_form(&format!("grant_type=refresh_token&refresh_token={typo}"))
            .await,
    );
    // Garbage.
    let c = answer(
        gw.client
            .token_form("grant_type=refresh_token&refresh_token=hello")
            .await,
    );
    // Deleted.
    let r = gw
        .client
        .admin_call("DELETE", &format!("/api/refresh-tokens/{id}"))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let d = answer(
        gw.client
            .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
            .await,
    );
    assert_eq!(a, b);
    assert_eq!(b, c);
    assert_eq!(c, d);
}

#[tokio::test]
async fn expired_refresh_token_says_so_and_caps_expires_in() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let soon = tokengate::clock::rfc3339(gw.clock.unix() + 600);
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &serde_json::json!({"name": "short", "expires": soon}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let refresh = r.json()["token"].as_str().unwrap().to_owned();

    // 600 s left on the refresh token: the 900 s access TTL is capped.
    let r = gw
        .client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    let expires_in = r.json()["expires_in"].as_u64().unwrap();
    assert!((590..=600).contains(&expires_in), "expires_in {expires_in}");

    gw.clock.advance(Duration::from_secs(601));
    let r = gw
        .client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    assert_oauth_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

#[tokio::test]
async fn configured_access_ttl_is_used() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.tokens.access_ttl = tokengate::config::HumanDuration(Duration::from_secs(60));
    })
    .await;
    let (_, refresh) = gw.create_token("t").await;
    let r = gw
        .client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    assert_eq!(r.json()["expires_in"], 60);
}

/// A body over `public.token_body_limit` answers 413, and the client gets to
/// read it: a moderately oversized body (declared or counted) is drained, so
/// the connection even carries the next request.
#[tokio::test]
async fn an_oversized_body_gets_a_413_the_client_can_read() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let mut tls = gw.tls_connect(b"http/1.1").await;
    let body = format!("grant_type=refresh_token&pad={}", "x".repeat(20_000));
    let declared = format!(
        "POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(declared.as_bytes()).await.unwrap();
    let r = read_raw_response(&mut tls).await;
    assert_eq!(r.status, 413, "{}", r.head);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"error": "invalid_request", "error_description": "request body is too large"})
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("connection"),
        None,
        "drained: the connection stays"
    );

    // Chunked, so only counting finds it too large; same connection.
    let half = "x".repeat(10_000);
    let chunked = format!(
        "POST /token HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n{half}\r\n{len:x}\r\n{half}\r\n0\r\n\r\n",
        len = half.len()
    );
    tls.write_all(chunked.as_bytes()).await.unwrap();
    let r = read_raw_response(&mut tls).await;
    assert_eq!(r.status, 413, "{}", r.head);

    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_raw_response(&mut tls).await.status, 200);
}

/// A body too large to drain still gets its 413, marked `Connection: close`.
#[tokio::test]
async fn a_body_too_large_to_drain_gets_a_413_and_connection_close() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let tls = gw.tls_connect(b"http/1.1").await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let len = 4 << 20;
    let writer = tokio::spawn(async move {
        let head =
            format!("POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&vec![b'x'; len]).await
    });
    let r = read_raw_response(&mut rd).await;
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // The gateway hung up rather than read 4 MiB; the writer may have failed.
    let _ = writer.await;
}

/// Python's `requests` sends a whole body before it reads the answer, so a
/// gateway that answers 413 and closes at once makes it see a reset. Up to
/// 16 MiB beyond the limit (declared or chunked) the connection lingers,
/// reading and dropping the rest, and the client reads its 413; the admin
/// API's body limit behaves the same. A body far larger is cut off: the
/// client could not send it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_reads_the_413_of_a_body_up_to_16_mib_over_the_limit() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let ca = gw.file.tls.cert.clone().unwrap();
    let token_url = format!("https://127.0.0.1:{}/token", gw.public_addr().port());
    let admin_url = format!("{}/api/refresh-tokens", gw.client.admin);
    let post = |url: String, size: usize, how: &'static str, admin: bool| {
        let ca = ca.clone();
        async move {
            let mut cmd = tokio::process::Command::new(crate::common::python3());
            cmd.arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/example_clients/large_body.py"),
            )
            .arg(&url)
            .arg(&ca)
            .arg(size.to_string())
            .arg(how);
            if admin {
                cmd.args(["admin", common::ADMIN_PASSWORD]);
            }
            // Bounded: the script's own timeout is 60 s.
            let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
                .await
                .expect("the client finished")
                .expect("python3 runs (tests/run.sh installs requests)");
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            let v: serde_json::Value = serde_json::from_str(line.trim())
                .unwrap_or_else(|e| panic!("{e}: {line} {}", String::from_utf8_lossy(&out.stderr)));
            v
        }
    };
    const MIB: usize = 1 << 20;
    for (url, size, how, admin) in [
        (&token_url, 2_000_000, "declared", false),
        (&token_url, 2_000_000, "chunked", false),
        (&token_url, 16 * MIB, "declared", false),
        (&token_url, 16 * MIB, "chunked", false),
        (&admin_url, 2_000_000, "declared", true),
    ] {
        let v = post(url.clone(), size, how, admin).await;
        assert_eq!(v["status"], 413, "{size} bytes {how} to {url}: {v}");
        assert_eq!(v["connection"], "close", "{v}");
        let body: serde_json::Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error_description"], "request body is too large");
        assert_eq!(v["sent"], size, "{v}");
    }
    // Far beyond: not read (declared) or read up to the lingering budget
    // (chunked), then the connection is cut; the client could not send it all.
    for how in ["declared", "chunked"] {
        let v = post(token_url.clone(), 64 * MIB, how, false).await;
        assert!(v["status"].is_null() || v["status"] == 413, "{how}: {v}");
        assert!(
            v["sent"].as_u64().unwrap() < (64 * MIB) as u64,
            "{how}: {v}"
        );
    }
    // No connection lingers on (the clients are gone), and the gateway still answers.
    common::eventually(
        Duration::from_secs(40),
        "lingering connections closed",
        || async { (gw.open_connections() == 0).then_some(()) },
    )
    .await;
    let r = gw.client.get_with("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK);
}
