//! `/readyz` says whether to send this gateway traffic: 503 with a stable
//! `reason` while every upstream server is out, while draining at shutdown
//! (and, in cluster mode, while PostgreSQL is out of reach: tests/integration/cluster.rs).
//! A gateway whose token store cannot be opened does not start, so it never
//! listens. `/healthz` (liveness) answers 200 throughout.

use std::time::Duration;

use crate::common;
use crate::common::servers::Server;
use crate::common::{eventually_ok, Resp, TestGateway};
use http::StatusCode;
use tokengate::config::HumanDuration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(20);

async fn readyz(gw: &TestGateway) -> Resp {
    gw.client.get_with("/readyz", None).await
}

/// Waits until `/readyz` answers `status` (with `reason` when not ready),
/// checking that `/healthz` still answers 200 at that point.
async fn until_ready_is(gw: &TestGateway, status: StatusCode, reason: Option<&str>) {
    eventually_ok(
        PATIENCE,
        &format!("/readyz {status} {reason:?}"),
        || async {
            let r = readyz(gw).await;
            let v = r.json();
            if r.status == status && v["reason"].as_str() == reason {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        },
    )
    .await;
    let live = gw.client.get_with("/healthz", None).await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.text());
}

/// With health checks: every server down → 503 `upstream_unreachable`; one
/// back → 200, with no request needed.
#[tokio::test]
async fn readyz_follows_the_health_checks_of_the_upstream_servers() {
    let (mut a, mut b) = (Server::start("a").await, Server::start("b").await);
    let urls = vec![a.url(), b.url()];
    let gw = TestGateway::start_with(a.addr, |f| {
        f.upstream.url = String::new();
        f.upstream.urls = Some(urls);
        f.upstream.health_check = Some("/health".into());
        f.upstream.health_interval = HumanDuration(Duration::from_millis(100));
    })
    .await;
    until_ready_is(&gw, StatusCode::OK, None).await;
    a.kill().await;
    b.kill().await;
    until_ready_is(
        &gw,
        StatusCode::SERVICE_UNAVAILABLE,
        Some("upstream_unreachable"),
    )
    .await;
    let r = readyz(&gw).await;
    assert_eq!(r.json()["status"], "not_ready", "{}", r.text());
    assert!(r.json()["detail"].is_string(), "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    b.restart().await;
    until_ready_is(&gw, StatusCode::OK, None).await;
}

/// One `upstream.url` and no health checks: the request that cannot connect
/// makes `/readyz` 503 (for `unhealthy_for`, an hour here); the single
/// server is still tried by every request, and its first answer makes the
/// gateway ready again.
#[tokio::test]
async fn with_one_server_and_passive_health_a_failed_request_makes_it_unready() {
    let mut up = Server::start("only").await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.upstream.unhealthy_for = HumanDuration(Duration::from_secs(3600));
    })
    .await;
    let (_, refresh) = gw.create_token("ready").await;
    let access = gw.exchange(&refresh).await;
    assert_eq!(
        gw.client.api_get("/api/a", &access).await.status,
        StatusCode::OK
    );
    until_ready_is(&gw, StatusCode::OK, None).await;

    up.kill().await;
    let r = gw.client.api_get("/api/b", &access).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    until_ready_is(
        &gw,
        StatusCode::SERVICE_UNAVAILABLE,
        Some("upstream_unreachable"),
    )
    .await;

    up.restart().await;
    // Nothing has tried it since: still out.
    until_ready_is(
        &gw,
        StatusCode::SERVICE_UNAVAILABLE,
        Some("upstream_unreachable"),
    )
    .await;
    let r = gw.client.api_get("/api/c", &access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    until_ready_is(&gw, StatusCode::OK, None).await;
}

/// Once shutdown begins, `/readyz` answers 503 `draining` on a connection
/// that is still open (here an HTTP/2 one, waiting for a slow upstream
/// answer, which has been sent GOAWAY but may still start streams: this
/// raw client never acknowledges the server's PING, so the final GOAWAY
/// does not come). `/healthz` still answers 200.
#[tokio::test]
async fn readyz_says_draining_on_open_connections_during_shutdown() {
    let up = common::upstream().await;
    let mut gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("drain").await;
    let access = gw.exchange(&refresh).await;

    let mut h2 = gw.tls_connect(b"h2").await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    write_frame(&mut h2, SETTINGS, 0, 0, &[]).await;
    let bearer = format!("Bearer {access}");
    write_frame(
        &mut h2,
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request_block("/pause", Some(&bearer)),
    )
    .await;
    eventually_ok(
        PATIENCE,
        "the slow request reached the upstream",
        || async {
            if up.paused() == 1 {
                Ok(())
            } else {
                Err(up.paused())
            }
        },
    )
    .await;

    let gateway = gw.gateway.take().unwrap();
    let shutdown = tokio::spawn(gateway.shutdown());
    let frames = tokio::time::timeout(PATIENCE, async {
        // Until the server's GOAWAY: draining has begun on this connection.
        loop {
            let (ty, flags, _, _) = read_frame(&mut h2).await;
            if ty == SETTINGS && flags & ACK == 0 {
                write_frame(&mut h2, SETTINGS, ACK, 0, &[]).await;
            }
            if ty == GOAWAY {
                break;
            }
        }
        write_frame(
            &mut h2,
            HEADERS,
            END_STREAM | END_HEADERS,
            3,
            &request_block("/readyz", None),
        )
        .await;
        write_frame(
            &mut h2,
            HEADERS,
            END_STREAM | END_HEADERS,
            5,
            &request_block("/healthz", None),
        )
        .await;
        let (mut ready, mut live) = (
            (Vec::new(), Vec::new(), false),
            (Vec::new(), Vec::new(), false),
        );
        while !(ready.2 && live.2) {
            let (ty, flags, stream, payload) = read_frame(&mut h2).await;
            let s = match stream {
                3 => &mut ready,
                5 => &mut live,
                _ => continue,
            };
            match ty {
                HEADERS => s.0 = payload,
                DATA => s.1.extend_from_slice(&payload),
                _ => {}
            }
            s.2 |= matches!(ty, HEADERS | DATA) && flags & END_STREAM != 0;
        }
        (ready, live)
    })
    .await
    .expect("answers on the open connection during the drain");
    let ((ready_head, ready_body, _), (live_head, live_body, _)) = frames;
    let ready: serde_json::Value = serde_json::from_slice(&ready_body).unwrap();
    assert_eq!(ready["status"], "not_ready", "{ready}");
    assert_eq!(ready["reason"], "draining", "{ready}");
    // HPACK: 0x88 is `:status: 200` from the static table.
    assert_ne!(ready_head.first(), Some(&0x88), "/readyz is not 200");
    assert_eq!(live_head.first(), Some(&0x88), "/healthz is 200");
    let live: serde_json::Value = serde_json::from_slice(&live_body).unwrap();
    assert_eq!(live["status"], "ok", "{live}");

    up.release_paused();
    drop(h2);
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .unwrap()
        .unwrap();
}

/// The token store is opened before the public listener listens, and a
/// store that cannot be opened (here PostgreSQL that refuses connections)
/// stops start-up with an error naming it: such a gateway is never "up but
/// not ready", it is not listening at all.
#[tokio::test]
async fn a_gateway_whose_store_cannot_open_is_not_listening() {
    let up = common::upstream().await;
    let db = common::dead_address().await;
    let public = common::dead_address().await;
    let dir = tempfile::tempdir().unwrap();
    let mut file = common::test_config(dir.path(), up.addr);
    file.public.listen = public.to_string();
    file.storage.backend = "postgres".into();
    file.storage.postgres.url = format!("postgres://tokengate@{db}/tokengate");
    file.storage.postgres.sslmode = "disable".into();
    file.storage.postgres.connect_timeout = HumanDuration(Duration::from_secs(2));
    tokengate::tls::generate_self_signed(
        file.tls.cert.as_ref().unwrap(),
        file.tls.key.as_ref().unwrap(),
    )
    .unwrap();
    let opts = tokengate::StartOptions {
        admin_password: Some(common::ADMIN_PASSWORD.into()),
        ..tokengate::StartOptions::default()
    };
    let err = tokio::time::timeout(
        PATIENCE,
        tokengate::Gateway::start(file.validate().unwrap(), opts),
    )
    .await
    .expect("start-up gives up")
    .err()
    .expect("no gateway without its token store");
    let text = err.to_string();
    assert!(
        text.contains("PostgreSQL") && text.contains(&db.to_string()) && text.contains("refused"),
        "{text}"
    );
    let refused = tokio::net::TcpStream::connect(public).await;
    assert!(
        refused.is_err(),
        "the public listener must not be listening"
    );
}

// A raw HTTP/2 client: just enough framing and HPACK (RFC 9113, RFC 7541)
// to keep a connection open without acknowledging the server's PING.

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    ty: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    w.write_all(&f).await.unwrap();
    w.flush().await.unwrap();
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.expect("a frame");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await.expect("a frame's payload");
    (head[3], head[4], stream, payload)
}

/// `GET path` on `localhost`, as HPACK literals without indexing (no Huffman).
fn request_block(path: &str, authorization: Option<&str>) -> Vec<u8> {
    // :method GET and :scheme https, from the static table.
    let mut b = vec![0x82, 0x87];
    // :path (static index 4) and :authority (1), literal values.
    for (index, value) in [(4, path), (1, "localhost")] {
        b.push(index);
        hpack_string(&mut b, value);
    }
    if let Some(v) = authorization {
        b.push(0);
        hpack_string(&mut b, "authorization");
        hpack_string(&mut b, v);
    }
    b
}

/// A string literal: length with a 7-bit prefix (RFC 7541 §5.1), then the bytes.
fn hpack_string(b: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    if n < 127 {
        b.push(u8::try_from(n).unwrap());
    } else {
        b.push(127);
        n -= 127;
        while n >= 128 {
            b.push(u8::try_from(n % 128).unwrap() | 0x80);
            n /= 128;
        }
        b.push(u8::try_from(n).unwrap());
    }
    b.extend_from_slice(s.as_bytes());
}
