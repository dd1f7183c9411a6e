//! The "request finished" point: the public listener's response body,
//! wrapped so that when it has been sent (or dropped) the request is
//! counted in the worker's metrics and written to the access log, with its
//! whole duration and the body bytes that went to the connection.
//!
//! With metrics and the access log both off, the wrapper holds `None` and
//! only forwards.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};

use crate::access_log::{AccessLog, Entry};
use crate::metrics::{RouteLabel, WorkerMetrics};

/// What the handler learns about a request on its way, for the log line.
pub(crate) struct Note {
    pub(crate) route: RouteLabel,
    /// The client, behind trusted proxies.
    pub(crate) client: Option<IpAddr>,
    pub(crate) upstream: Option<Duration>,
    /// The refresh token's id and name; taken only with the access log on.
    pub(crate) token: Option<(u64, String)>,
}

impl Note {
    pub(crate) fn new() -> Note {
        Note {
            route: RouteLabel::Proxy,
            client: None,
            upstream: None,
            token: None,
        }
    }
}

/// A request being measured: started at `start`, answered with `status`.
pub(crate) struct Pending {
    pub(crate) start: Instant,
    pub(crate) status: u16,
    pub(crate) note: Note,
    pub(crate) metrics: Option<Arc<WorkerMetrics>>,
    /// The access log and what only it needs: method and path.
    pub(crate) access: Option<(Arc<AccessLog>, http::Method, String)>,
}

/// A response body that reports the request when it is done.
pub(crate) struct Finished<B> {
    inner: B,
    pending: Option<Box<(Pending, u64)>>,
}

impl<B> Finished<B> {
    pub(crate) fn new(inner: B, pending: Option<Pending>) -> Finished<B> {
        Finished {
            inner,
            pending: pending.map(|p| Box::new((p, 0))),
        }
    }
}

impl<B> Drop for Finished<B> {
    fn drop(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let (p, bytes) = *p;
        let took = p.start.elapsed();
        if let Some(m) = &p.metrics {
            m.request(p.note.route, p.status, took);
        }
        if let (Some((log, method, path)), Some(client)) = (p.access, p.note.client) {
            log.record(Entry {
                time: SystemTime::now(),
                client,
                method,
                path,
                status: p.status,
                bytes,
                duration: took,
                upstream: p.note.upstream,
                token: p.note.token,
            });
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Finished<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(p)) = (&r, &mut this.pending) {
            if let Some(d) = f.data_ref() {
                p.1 += d.remaining() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
