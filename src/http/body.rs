//! Bounded request bodies, and what happens to the rest of one that is too
//! large.
//!
//! A server that answers 413 without reading the body and then closes the
//! connection makes the kernel reset it (unread data on close), and the
//! client often sees the reset instead of the answer. So a moderately
//! oversized body is read to its end and thrown away (at most
//! [`DRAIN_FACTOR`] times the limit, for at most [`MAX_DRAIN_TIME`]): the
//! client reads its 413 and the connection carries the next request. A body
//! larger than that is not worth the bandwidth: it gets its 413 with
//! `Connection: close`, without a byte read.

use std::pin::pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use tokio::time::{timeout_at, Instant};

use super::{error, Reply};

/// How much of an oversized body is drained, as a multiple of the limit
/// (the token endpoint's 8 KiB → 32 KiB; the admin API's 64 KiB → 256 KiB).
const DRAIN_FACTOR: usize = 4;
/// The longest an oversized body is drained for (within the body read
/// timeout): a slow sender of a body we will refuse anyway gets no more.
const MAX_DRAIN_TIME: Duration = Duration::from_secs(5);

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Over the limit, and read to its end: the connection can go on.
    TooLarge,
    /// Over the limit and too large (or too slow) to drain: the rest is
    /// unread, so the connection must close after the answer.
    TooLargeUnread,
    Timeout,
    /// The client broke off or sent a malformed body.
    Aborted,
}

impl BodyError {
    pub(crate) fn description(self) -> &'static str {
        match self {
            BodyError::TooLarge | BodyError::TooLargeUnread => "request body is too large",
            BodyError::Timeout => "request body was not received in time",
            BodyError::Aborted => "request body could not be read",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            BodyError::TooLarge | BodyError::TooLargeUnread => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout | BodyError::Aborted => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the body was left unread (in part): then the answer says
    /// `Connection: close`, so the client does not send another request on
    /// a connection the server is about to close.
    pub(crate) fn leaves_body_unread(self) -> bool {
        !matches!(self, BodyError::TooLarge)
    }

    /// The answer: `{"error": "invalid_request", …}` with [`Self::status`],
    /// plus `Connection: close` when the body was left unread. (HTTP/2 has
    /// no `Connection` header; hyper drops it there.)
    pub(crate) fn reply(self) -> Reply {
        let mut r = error(self.status(), "invalid_request", self.description());
        if self.leaves_body_unread() {
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// Reads a whole body of at most `limit` bytes within `timeout`. A declared
/// `Content-Length` over the limit is refused before the body is read (and
/// drained, if small enough); so is a body that grows past the limit as it
/// arrives.
pub(crate) async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let drain_budget = u64::try_from(limit.saturating_mul(DRAIN_FACTOR)).unwrap_or(u64::MAX);
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = pin!(body);
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        // A client waiting for `100 Continue` has sent nothing yet: reading
        // would invite the body we are about to refuse.
        let waits = headers.contains_key(EXPECT);
        if n > drain_budget || waits {
            return Err(BodyError::TooLargeUnread);
        }
        return Err(drain(body, 0, drain_budget, drain_deadline(start, deadline)).await);
    }
    let mut buf = BytesMut::new();
    loop {
        let frame = match timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(_))) => return Err(BodyError::Aborted),
            Ok(Some(Ok(frame))) => frame,
        };
        let Some(data) = frame.data_ref() else {
            continue; // trailers: nothing to keep
        };
        if buf.len().saturating_add(data.len()) > limit {
            let seen = u64::try_from(buf.len().saturating_add(data.len())).unwrap_or(u64::MAX);
            drop(buf);
            return Err(drain(body, seen, drain_budget, drain_deadline(start, deadline)).await);
        }
        buf.extend_from_slice(data);
    }
}

/// Draining stops at the body read deadline or [`MAX_DRAIN_TIME`] after the
/// request began, whichever comes first.
fn drain_deadline(start: Instant, read_deadline: Instant) -> Instant {
    read_deadline.min(start + MAX_DRAIN_TIME)
}

/// Reads and drops the rest of an oversized body (`seen` bytes of it read
/// already) while it stays within `budget` bytes and `deadline`.
async fn drain<B: hyper::body::Body<Data = Bytes>>(
    mut body: std::pin::Pin<&mut B>,
    mut seen: u64,
    budget: u64,
    deadline: Instant,
) -> BodyError {
    loop {
        match timeout_at(deadline, body.frame()).await {
            Ok(None) => return BodyError::TooLarge,
            Ok(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                seen = seen.saturating_add(len);
                if seen > budget {
                    return BodyError::TooLargeUnread;
                }
            }
            // Timed out, or the body broke off: either way not read to its end.
            Err(_) | Ok(Some(Err(_))) => return BodyError::TooLargeUnread,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::body::Frame;

    use super::*;
    use crate::http::full;

    fn length(n: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from(n));
        h
    }

    /// A body that sends its chunks, then either ends or stalls for ever.
    struct Chunks {
        chunks: VecDeque<&'static [u8]>,
        stall: bool,
    }

    impl Chunks {
        fn new(n: usize, chunk: &'static [u8], stall: bool) -> Chunks {
            Chunks {
                chunks: std::iter::repeat_n(chunk, n).collect(),
                stall,
            }
        }
    }

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.chunks.pop_front() {
                Some(c) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(c))))),
                None if self.stall => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    #[tokio::test]
    async fn bodies_are_bounded() {
        let t = Duration::from_secs(1);
        let small = full("abc");
        assert_eq!(
            read_body(&HeaderMap::new(), small, 3, t).await.unwrap(),
            "abc"
        );
        let big = full("abcd");
        assert_eq!(
            read_body(&HeaderMap::new(), big, 3, t).await,
            Err(BodyError::TooLarge)
        );
        // Declared over the limit but within the drain budget: drained.
        assert_eq!(
            read_body(&length(10), full("0123456789"), 3, t).await,
            Err(BodyError::TooLarge)
        );
        // Declared beyond the drain budget: not a byte read.
        assert_eq!(
            read_body(&length(13), full(""), 3, t).await,
            Err(BodyError::TooLargeUnread)
        );
        let mut expect = length(10);
        expect.insert(EXPECT, HeaderValue::from_static("100-continue"));
        assert_eq!(
            read_body(&expect, full(""), 3, t).await,
            Err(BodyError::TooLargeUnread)
        );
    }

    #[tokio::test]
    async fn counted_bodies_are_drained_only_within_the_budget() {
        let t = Duration::from_secs(1);
        let none = HeaderMap::new();
        // limit 3, budget 12: 6 chunks of 2 bytes drain; 7 do not.
        let r = read_body(&none, Chunks::new(6, b"xx", false), 3, t).await;
        assert_eq!(r, Err(BodyError::TooLarge));
        let r = read_body(&none, Chunks::new(7, b"xx", false), 3, t).await;
        assert_eq!(r, Err(BodyError::TooLargeUnread));
        let r = read_body(&none, Chunks::new(1, b"xx", false), 3, t).await;
        assert_eq!(r.unwrap(), "xx");
    }

    #[tokio::test]
    async fn reading_and_draining_are_bounded_in_time() {
        let t = Duration::from_millis(200);
        // Within the limit, then silence: the body read timeout.
        let r = read_body(&HeaderMap::new(), Chunks::new(1, b"x", true), 3, t).await;
        assert_eq!(r, Err(BodyError::Timeout));
        // Over the limit, then silence: draining stops at the same deadline
        // (or MAX_DRAIN_TIME, if sooner) and leaves the rest unread.
        let r = read_body(&length(10), Chunks::new(1, b"01234", true), 3, t).await;
        assert_eq!(r, Err(BodyError::TooLargeUnread));
        assert!(
            drain_deadline(Instant::now(), Instant::now() + Duration::from_secs(60))
                <= Instant::now() + MAX_DRAIN_TIME
        );
    }

    #[test]
    fn answers() {
        let r = BodyError::TooLarge.reply();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(r.headers().get(CONNECTION).is_none());
        let r = BodyError::TooLargeUnread.reply();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.headers()[CONNECTION], "close");
        assert_eq!(BodyError::Timeout.reply().status(), StatusCode::BAD_REQUEST);
    }
}
