//! The public workers share one port through SO_REUSEPORT. Whatever the
//! kernel's hash picks, connections end up spread evenly across the workers,
//! and a connection handed from one worker to another serves HTTP/1.1 and
//! HTTP/2 like any other.

use std::time::Duration;

use crate::common;
use crate::common::{collect, upstream, TestGateway};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn open(gw: &TestGateway, h2: bool) -> Conn {
        if h2 {
            let io = TokioIo::new(gw.tls_connect(b"h2").await);
            let (tx, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("HTTP/2 handshake");
            tokio::spawn(conn);
            Conn::H2(tx)
        } else {
            let io = TokioIo::new(gw.tls_connect(b"http/1.1").await);
            let (tx, conn) = http1::handshake(io).await.expect("HTTP/1.1 handshake");
            tokio::spawn(conn);
            Conn::H1(tx)
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> common::Resp {
        let resp = match self {
            Conn::H1(tx) => tx.send_request(req).await,
            Conn::H2(tx) => tx.send_request(req).await,
        };
        collect(resp.expect("response")).await
    }

    async fn api_get(&mut self, access: &str) -> StatusCode {
        let req = Request::get("https://localhost/api/v1/databases")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {access}"))
            .body(Full::default())
            .unwrap();
        self.send(req).await.status
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_evenly_and_moved_ones_serve() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| f.public.workers = 4).await;
    let (_, refresh) = gw.create_token("spread").await;

    // Opened one after another, each answered before the next opens, so each
    // placement sees the previous ones. With the kernel's hash alone, an exact
    // 3-3-3-3 split of 12 connections would happen about 2 % of the time.
    let mut conns = Vec::new();
    let mut access = None;
    for i in 0..12 {
        let mut c = Conn::open(&gw, i % 2 == 1).await;
        let status = match &access {
            // The first connection trades the refresh token itself, so no
            // other client connection exists.
            None => {
                let req = Request::post("https://localhost/token")
                    .header("host", "localhost")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(format!(
                        "grant_type=refresh_token&refresh_token={refresh}"
                    ))))
                    .unwrap();
                let r = c.send(req).await;
                access = Some(r.json()["access_token"].as_str().unwrap().to_owned());
                r.status
            }
            Some(a) => c.api_get(a).await,
        };
        assert_eq!(status, StatusCode::OK, "connection {i}");
        conns.push(c);
    }
    let gateway = gw.gateway.as_ref().unwrap();
    assert_eq!(gateway.connections_per_worker(), vec![3, 3, 3, 3]);

    // Every connection, wherever it ended up, keeps serving.
    let access = access.unwrap();
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(c.api_get(&access).await, StatusCode::OK, "connection {i}");
    }

    // Closed connections are uncounted (bounded wait for the server to notice).
    drop(conns);
    common::eventually_ok(
        Duration::from_secs(10),
        "closed connections to be uncounted",
        move || async move {
            let counts = gateway.connections_per_worker();
            if counts.iter().all(|&n| n == 0) {
                Ok(())
            } else {
                Err(format!("still counted: {counts:?}"))
            }
        },
    )
    .await;
}
