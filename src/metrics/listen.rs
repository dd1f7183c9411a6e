//! `metrics.listen`: the scrape on a listener of its own, plain HTTP and
//! without authentication, for a Prometheus that should not hold the admin
//! password. It answers `GET /metrics` and nothing else, so it exposes no
//! more than the scrape; keep it on loopback or a private network.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::http::{error, method_not_allowed, strip_body_for_head, Reply};
use crate::state::State;

/// Scrapers are few: a handful of connections at once is plenty, and the
/// cap keeps a misdirected client from costing more.
const MAX_CONNECTIONS: usize = 16;
/// A scraper sends its request at once.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// And a scrape connection lives no longer than this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves scrapes until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = crate::server::stopped(&mut shutdown) => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = crate::server::stopped(&mut shutdown) => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, listener = "metrics", "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let reply = answer(&state, &req);
                async move { Ok::<_, Infallible>(reply) }
            });
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(16 * 1024);
            let conn = b.serve_connection(TokioIo::new(tcp), svc);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
    // Scrapes are short and idempotent: nothing to drain.
    conns.shutdown().await;
}

fn answer(state: &State, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return method_not_allowed("GET, HEAD");
    }
    if req.uri().path() != "/metrics" {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are at /metrics",
        );
    }
    let mut r = scrape_reply(state);
    if head {
        strip_body_for_head(&mut r);
    }
    r
}

/// The scrape as an HTTP answer (here and on the admin listener): 404 when
/// metrics are off.
pub(crate) fn scrape_reply(state: &State) -> Reply {
    match super::render(state) {
        Some(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(super::text::CONTENT_TYPE),
            );
            r
        }
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are off (metrics.enabled = false)",
        ),
    }
}
