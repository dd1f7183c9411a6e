//! The upstream keep-alive pool, seen from a test upstream that numbers its
//! connections: reuse, streaming large bodies, an upstream that closes idle
//! or `Connection: close` connections, and idle connections aging out.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::common;
use crate::common::TestGateway;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokengate::config::HumanDuration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Frames of the chunked test body, and how many.
const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 16;

/// A body of `CHUNKS` frames of `CHUNK` bytes with no length, so hyper sends
/// it chunked; byte `i` of the whole body is `i % 251`.
struct Chunked {
    sent: usize,
}

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == CHUNKS {
            return Poll::Ready(None);
        }
        let start = self.sent * CHUNK;
        let data: Vec<u8> = (start..start + CHUNK)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        self.sent += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }
}

/// A `/chunked` answer arrived complete and in order.
fn assert_whole_chunked_body(r: &common::Resp) {
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), CHUNK * CHUNKS);
    let in_order = r
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == u8::try_from(i % 251).unwrap());
    assert!(in_order, "the body arrived out of order or changed");
}

type TestBody = http_body_util::Either<http_body_util::Full<Bytes>, Chunked>;

struct Counting {
    addr: SocketAddr,
    /// Connections accepted so far; each answer names its connection's number.
    accepted: Arc<AtomicUsize>,
    /// Connections still open.
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that numbers its connections. `/chunked` streams 1 MiB chunked,
/// `/close` answers with `Connection: close`. With `drop_after`, it closes every
/// connection once it has been idle that long after its first answer, without
/// telling the client.
async fn counting_upstream(drop_after: Option<Duration>) -> Counting {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (acc, op) = (accepted.clone(), open.clone());
    // The accept loop of this test double (not a polling loop): it blocks in
    // `accept` until the gateway connects.
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let id = acc.fetch_add(1, Ordering::SeqCst) + 1;
            op.fetch_add(1, Ordering::SeqCst);
            let op = op.clone();
            tokio::spawn(async move {
                let answered = Arc::new(Notify::new());
                let svc = hyper::service::service_fn({
                    let answered = answered.clone();
                    move |req: Request<Incoming>| {
                        let answered = answered.clone();
                        async move {
                            let b = Response::builder().header("x-conn", id.to_string());
                            let r = match req.uri().path() {
                                "/chunked" => b.body(TestBody::Right(Chunked { sent: 0 })),
                                "/close" => b
                                    .header("connection", "close")
                                    .body(TestBody::Left(Bytes::from_static(b"bye").into())),
                                _ => b.body(TestBody::Left(Bytes::from_static(b"ok").into())),
                            };
                            answered.notify_one();
                            Ok::<_, Infallible>(r.unwrap())
                        }
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc);
                match drop_after {
                    Some(d) => {
                        // This double's idle timeout: elapsed time is the
                        // behaviour it simulates. Dropping `conn` closes the
                        // socket without a `Connection: close`.
                        let idle = async {
                            answered.notified().await;
                            tokio::time::sleep(d).await;
                        };
                        tokio::select! {
                            _ = conn => {}
                            _ = idle => {}
                        }
                    }
                    None => {
                        let _ = conn.await;
                    }
                }
                op.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Counting {
        addr,
        accepted,
        open,
        task,
    }
}

/// An upstream with a keep-alive timeout that, like lighttpd, acts on it only
/// when the next event on the connection wakes it up: a request arriving on
/// a connection idle for `keep_alive` or longer is read, then the connection
/// is closed without an answer (no FIN is sent before, so the gateway cannot
/// see it coming). GET only (no request bodies); each answer names its
/// connection's number in `x-conn`.
async fn lazily_closing_upstream(keep_alive: Duration) -> Counting {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (acc, op) = (accepted.clone(), open.clone());
    // The accept loop of this test double (not a polling loop).
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let id = acc.fetch_add(1, Ordering::SeqCst) + 1;
            op.fetch_add(1, Ordering::SeqCst);
            let op = op.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered: Option<std::time::Instant> = None;
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    buf.drain(..end + 4);
                    // This double's keep-alive timeout: elapsed time is the
                    // behaviour it simulates.
                    if answered.is_some_and(|t| t.elapsed() >= keep_alive) {
                        break;
                    }
                    let head =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-conn: {id}\r\n\r\nok");
                    if tcp.write_all(head.as_bytes()).await.is_err() {
                        break;
                    }
                    answered = Some(std::time::Instant::now());
                }
                op.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Counting {
        addr,
        accepted,
        open,
        task,
    }
}

/// Waits until every connection to `up` has been closed (by either side).
async fn upstream_closed_all(up: &Counting, what: &str) {
    let open = &up.open;
    common::eventually_ok(Duration::from_secs(10), what, move || async move {
        match open.load(Ordering::SeqCst) {
            0 => Ok(()),
            n => Err(format!("{n} still open")),
        }
    })
    .await;
}

async fn gateway(
    up: &Counting,
    tweak: impl FnOnce(&mut tokengate::config::FileConfig),
) -> (TestGateway, String) {
    let gw = TestGateway::start_with(up.addr, |f| {
        // One worker, so every request shares one pool.
        f.public.workers = 1;
        tweak(f);
    })
    .await;
    let (_, refresh) = gw.create_token("pool").await;
    let access = gw.exchange(&refresh).await;
    (gw, access)
}

#[tokio::test]
async fn connections_are_reused_even_after_a_streamed_chunked_body() {
    let up = counting_upstream(None).await;
    let (gw, access) = gateway(&up, |_| {}).await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        let r = gw.client.api_get("/x", &access).await;
        assert_eq!(r.status, StatusCode::OK);
        conns.push(r.header("x-conn").unwrap());
    }
    assert!(
        conns.iter().all(|c| *c == conns[0]),
        "one upstream connection: {conns:?}"
    );

    // 1 MiB chunked: the connection must keep moving while the body streams,
    // arrive intact, and go back to the pool afterwards.
    let r = gw.client.api_get("/chunked", &access).await;
    assert_whole_chunked_body(&r);
    assert_eq!(r.header("x-conn"), Some(conns[0].clone()));
    let r = gw.client.api_get("/x", &access).await;
    assert_eq!(r.header("x-conn"), Some(conns[0].clone()));
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_reused() {
    // `Connection: close`: the next request needs a new connection.
    let up = counting_upstream(None).await;
    let (gw, access) = gateway(&up, |_| {}).await;
    let r = gw.client.api_get("/close", &access).await;
    assert_eq!(r.status, StatusCode::OK);
    let first = r.header("x-conn").unwrap();
    let r = gw.client.api_get("/x", &access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_ne!(r.header("x-conn").unwrap(), first);

    // An upstream that silently drops idle keep-alive connections: the stale
    // one is noticed and the request goes out on a fresh connection.
    let up = counting_upstream(Some(Duration::from_millis(150))).await;
    let (gw, access) = gateway(&up, |_| {}).await;
    for round in 1..=3 {
        let r = gw.client.api_get("/x", &access).await;
        assert_eq!(r.status, StatusCode::OK, "round {round}: {}", r.text());
        assert_eq!(r.header("x-conn"), Some(round.to_string()));
        // The next round starts once the upstream has dropped this connection.
        upstream_closed_all(&up, "the upstream to drop the idle connection").await;
    }
}

/// Apache, lighttpd and Node close keep-alive connections idle for 5 s by
/// default; lighttpd does so lazily, when the next request arrives. With the
/// default `upstream.pool_idle_timeout` the gateway never sends a request on
/// a connection idle that long (it used to, and got a 502: the flaky
/// `path_confusion::lighttpd`).
#[tokio::test]
async fn connections_idle_as_long_as_common_upstream_keep_alive_timeouts_are_not_reused() {
    let up = lazily_closing_upstream(Duration::from_secs(5)).await;
    let (gw, access) = gateway(&up, |_| {}).await;
    for _ in 0..2 {
        let r = gw.client.api_get("/x", &access).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header("x-conn").as_deref(), Some("1"), "reused at once");
    }
    // Past the upstream's keep-alive timeout (real time is the behaviour
    // under test: the pool's clock and the upstream's).
    tokio::time::sleep(Duration::from_millis(5_300)).await;
    let r = gw.client.api_get("/x", &access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("x-conn").as_deref(), Some("2"), "a new connection");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let up = counting_upstream(None).await;
    let (gw, access) = gateway(&up, |f| {
        f.upstream.pool_idle_timeout = HumanDuration(Duration::from_secs(1));
    })
    .await;
    let r = gw.client.api_get("/x", &access).await;
    assert_eq!(r.status, StatusCode::OK);
    // One connection made (not "one open": a stall of a second on a
    // loaded machine and the sweeper may have closed it already).
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    // The sweeper runs every second here.
    upstream_closed_all(&up, "the gateway to close the idle upstream connection").await;
    // And the gateway simply connects again.
    let r = gw.client.api_get("/x", &access).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-conn").as_deref(), Some("2"));
}

#[tokio::test]
async fn pooling_can_be_turned_off() {
    let up = counting_upstream(None).await;
    let (gw, access) = gateway(&up, |f| f.upstream.pool_max_idle_per_host = 0).await;
    for _ in 0..3 {
        assert_eq!(
            gw.client.api_get("/x", &access).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn many_http2_streams_at_once_share_the_pool() {
    let up = counting_upstream(None).await;
    // 40 streams of 1 MiB at once: on a loaded machine (a debug build, shared
    // cores) the test configuration's 2 s response timeout turns some into
    // 504s. Timing is not what this test is about, so the bound is generous.
    let (gw, access) = gateway(&up, |f| {
        f.upstream.response_timeout = HumanDuration(Duration::from_secs(30));
    })
    .await;
    let gw = Arc::new(gw);
    let batch = |path: &'static str| {
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let gw = gw.clone();
                let access = access.clone();
                tokio::spawn(async move {
                    let req = gw
                        .client
                        .public_req("GET", path)
                        .header("authorization", format!("Bearer {access}"))
                        .body(http_body_util::Full::new(Bytes::new()))
                        .unwrap();
                    gw.client.send_h2(req).await
                })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    // Small answers and 1 MiB chunked ones, interleaved on one HTTP/2
    // connection: every one arrives whole (writes are coalesced per batch).
    for r in batch("/x").await {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_eq!(&r.body[..], b"ok");
    }
    let opened = up.accepted.load(Ordering::SeqCst);
    assert!((1..=40).contains(&opened), "{opened} upstream connections");
    for r in batch("/chunked").await {
        assert_whole_chunked_body(&r);
    }
    assert!(
        up.accepted.load(Ordering::SeqCst) <= 40,
        "connections were reused"
    );
}
