//! The "request finished" point: what the public listener's response
//! reports as it goes out (`server::Report`, carried in the connection's
//! body wrapper): when it has been sent (or dropped) the request is counted
//! in the worker's metrics and written to the access log, with its whole
//! duration and the body bytes that went to the connection.
//!
//! With metrics and the access log both off, it holds `None` and costs a
//! test per frame.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes};
use hyper::body::Frame;

use crate::access_log::{AccessLog, Entry};
use crate::metrics::{RouteLabel, WorkerMetrics};
use crate::server::Report;

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

/// Reports a request when its response is done: counts the body bytes
/// sent, and on drop records the request.
#[derive(Default)]
pub(crate) struct Done(Option<Box<(Pending, u64)>>);

impl Done {
    pub(crate) fn new(pending: Option<Pending>) -> Done {
        Done(pending.map(|p| Box::new((p, 0))))
    }
}

impl Report for Done {
    #[inline]
    fn sent(&mut self, frame: &Frame<Bytes>) {
        if let (Some(p), Some(d)) = (&mut self.0, frame.data_ref()) {
            p.1 += d.remaining() as u64;
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let Some(p) = self.0.take() else {
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
