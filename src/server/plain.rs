//! Plain HTTP/1.1 for one short, idempotent request per connection (the
//! metrics listener, `metrics.listen`): no TLS, no handler state across
//! requests, and a connection that lives no longer than its limit, so
//! there is nothing to drain at shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::accept::{accept_loop, Capped};
use super::ClientSlots;

/// A plain listener's limits (the metrics listener's are fixed, not configured).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlainLimits {
    /// Connections at once; at the cap accepting pauses.
    pub(crate) max_connections: usize,
    /// Per client (an address; IPv6: a /64); over it, a connection is closed.
    pub(crate) max_connections_per_client: usize,
    pub(crate) header_read_timeout: Duration,
    /// The whole life of a connection.
    pub(crate) connection_timeout: Duration,
    /// hyper's read buffer: the most a request head may take.
    pub(crate) max_buf_size: usize,
}

/// Serves `answer` until `shutdown`; `name` says which listener in log lines.
pub(crate) async fn serve_plain<F>(
    name: &'static str,
    listener: TcpListener,
    limits: PlainLimits,
    answer: F,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let incoming = Capped {
        listener,
        permits: Arc::new(Semaphore::new(limits.max_connections)),
    };
    // HTTP/1.1 only: one request per connection, so streams need no share.
    let clients = ClientSlots::new(limits.max_connections_per_client, 1, limits.max_connections);
    accept_loop(name, incoming, shutdown, Duration::ZERO, move |(tcp, peer, permit)| {
        let Some(slot) = clients.take(peer.ip()) else {
            tracing::debug!(%peer, listener = name, "refused: this client holds its share of connections already");
            return None;
        };
        let answer = answer.clone();
        Some(async move {
            let svc = service_fn(move |req| {
                let reply = answer(&req);
                async move { Ok::<_, Infallible>(reply) }
            });
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_buf_size);
            let conn = b.serve_connection(TokioIo::new(tcp), svc);
            if let Ok(Err(e)) = tokio::time::timeout(limits.connection_timeout, conn).await {
                tracing::debug!(%peer, listener = name, error = %e, "connection ended with an error");
            }
            drop((permit, slot));
        })
    })
    .await;
}
