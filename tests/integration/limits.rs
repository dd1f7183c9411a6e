//! The public listener's explicit limits: TLS handshake timeout, header read
//! timeout (slow clients), maximum header size, and the connection cap.
//! Waits here are upper bounds for something to happen, never measurements.

use std::time::Duration;

use crate::common;
use crate::common::{upstream, TestGateway};
use tokengate::config::HumanDuration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes; returns what arrived. Panics if it stays open past `bound`.
async fn read_until_closed<R: AsyncReadExt + Unpin>(r: &mut R, bound: Duration) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(bound, async {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the gateway closed the connection");
    all
}

fn short_timeouts(f: &mut tokengate::config::FileConfig) {
    f.public.tls_handshake_timeout = HumanDuration(Duration::from_millis(300));
    f.public.header_read_timeout = HumanDuration(Duration::from_millis(300));
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, short_timeouts).await;
    let mut tcp = TcpStream::connect(gw.gateway.as_ref().unwrap().public_addr)
        .await
        .unwrap();
    // Connected, but not a byte of TLS: the gateway hangs up.
    let got = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(got.is_empty());
}

#[tokio::test]
async fn a_slow_client_is_cut_off_by_the_header_read_timeout() {
    let up = upstream().await;
    // The handshake keeps its default: a loaded machine may take over
    // 300 ms to finish one, and this test needs it finished.
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.header_read_timeout = HumanDuration(Duration::from_millis(300));
    })
    .await;
    let mut tls = gw.tls_connect(b"http/1.1").await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let got = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "no answer to a half-sent request"
    );
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let mut tls = gw.tls_connect(b"http/1.1").await;
    let big = "a".repeat(20_000);
    let req = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    let _ = tls.write_all(req.as_bytes()).await;
    let got = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.max_connections = 2;
        f.public.workers = 1;
    })
    .await;
    let a = gw.tls_connect(b"http/1.1").await;
    let _b = gw.tls_connect(b"http/1.1").await;
    // The third is accepted by the kernel but not served while two are open.
    let mut third = tokio::spawn({
        let gw_addr = gw.gateway.as_ref().unwrap().public_addr;
        let cert = gw.file.tls.cert.clone().unwrap();
        async move {
            let client = common::TestClient::new(&cert, gw_addr, gw_addr);
            client.get_with("/healthz", None).await.status
        }
    });
    // That it is *not* served can only be seen over a stretch of time, so
    // this window is part of the scenario, not a wait for something to
    // happen: a gateway ignoring the cap would answer within it. A slow
    // machine can only make the window miss such a bug, never fail a correct
    // gateway.
    let served = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(
        served.is_err(),
        "a third connection was served beyond max_connections = 2"
    );
    // Closing one frees its slot and the waiting client is served.
    drop(a);
    let status = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(status, http::StatusCode::OK);
}
