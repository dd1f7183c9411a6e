//! Bounded request bodies, and what happens to the rest of one that is too
//! large.
//!
//! A server that answers 413 without reading the body and then closes the
//! connection makes the kernel reset it (unread data on close), and the
//! client often sees the reset instead of the answer: Python's `requests`,
//! for one, sends the whole body before it reads a byte. So:
//!
//! - a moderately oversized body (at most [`DRAIN_FACTOR`] times the limit,
//!   within [`MAX_DRAIN_TIME`]) is read to its end before the 413, and the
//!   connection carries the next request;
//! - a larger one, up to [`LINGER_BYTES`] beyond the limit, gets its 413 at
//!   once with `Connection: close`, and over HTTP/1 the connection lingers
//!   as nginx's does: the rest of the body is read and thrown away in the
//!   background (at most [`LINGER_TIME`], and [`LINGER_READ_TIMEOUT`] between
//!   reads) before it closes, so the client gets to read its answer;
//! - a body declared larger than that, or one waiting for `100 Continue`,
//!   is not read at all: 413 with `Connection: close`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT};
use http::{StatusCode, Version};
use http_body_util::BodyExt;
use tokio::time::{timeout_at, Instant};

use super::{error, Reply};

/// How much of an oversized body is drained before the answer, as a multiple
/// of the limit (the token endpoint's 8 KiB → 32 KiB; the admin API's 64 KiB
/// → 256 KiB): small enough to cost nothing, and the connection stays open.
const DRAIN_FACTOR: usize = 4;
/// The longest an oversized body is drained for before the answer (within
/// the body read timeout): past it the 413 goes out and the rest lingers.
const MAX_DRAIN_TIME: Duration = Duration::from_secs(5);
/// How far beyond the limit a body is read (and thrown away) after its 413,
/// so the client can read the answer: a mistaken upload of a file is
/// typically a few MiB; a larger one costs more bandwidth than a readable
/// error is worth, and is cut off.
pub(crate) const LINGER_BYTES: u64 = 16 << 20;
/// The longest a connection lingers after its 413 (nginx's `lingering_time`).
const LINGER_TIME: Duration = Duration::from_secs(30);
/// The longest a lingering connection waits for more of the body (nginx's
/// `lingering_timeout`): a client that stopped sending is not waited for.
const LINGER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Over the limit, and read to its end: the connection can go on.
    TooLarge,
    /// Over the limit and not read to its end before the answer (it may
    /// still be lingering): the connection must close after the answer.
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
/// drained or left to linger, if small enough); so is a body that grows past
/// the limit as it arrives.
pub(crate) async fn read_body<B>(
    head: &http::request::Parts,
    mut body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Send,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let limits = Budgets::new(limit);
    let declared = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        // A client waiting for `100 Continue` has sent nothing yet: reading
        // would invite the body we are about to refuse.
        let waits = head.headers.contains_key(EXPECT);
        if n > limits.linger || waits {
            return Err(BodyError::TooLargeUnread);
        }
        if n > limits.drain {
            return Err(linger(head.version, body, 0, limits.linger));
        }
        return Err(drain(
            head.version,
            body,
            0,
            limits,
            drain_deadline(start, deadline),
        )
        .await);
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
            return Err(drain(
                head.version,
                body,
                seen,
                limits,
                drain_deadline(start, deadline),
            )
            .await);
        }
        buf.extend_from_slice(data);
    }
}

/// How much of an oversized body is read, in bytes.
#[derive(Debug, Clone, Copy)]
struct Budgets {
    /// Before the answer (the connection stays open).
    drain: u64,
    /// In all, lingering after the answer included.
    linger: u64,
}

impl Budgets {
    fn new(limit: usize) -> Budgets {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        Budgets {
            drain: limit.saturating_mul(DRAIN_FACTOR as u64),
            linger: limit.saturating_add(LINGER_BYTES),
        }
    }
}

/// Draining stops at the body read deadline or [`MAX_DRAIN_TIME`] after the
/// request began, whichever comes first.
fn drain_deadline(start: Instant, read_deadline: Instant) -> Instant {
    read_deadline.min(start + MAX_DRAIN_TIME)
}

/// Reads and drops the rest of an oversized body (`seen` bytes of it read
/// already) while it stays within the drain budget and `deadline`; past
/// either, the rest is left to [`linger`].
async fn drain<B>(
    version: Version,
    mut body: B,
    mut seen: u64,
    budgets: Budgets,
    deadline: Instant,
) -> BodyError
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Send,
{
    loop {
        match timeout_at(deadline, body.frame()).await {
            Ok(None) => return BodyError::TooLarge,
            Ok(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                seen = seen.saturating_add(len);
                if seen > budgets.drain {
                    return linger(version, body, seen, budgets.linger);
                }
            }
            // Too slow: answer now, and let the rest linger.
            Err(_) => return linger(version, body, seen, budgets.linger),
            // The body broke off: nothing left to read.
            Ok(Some(Err(_))) => return BodyError::TooLargeUnread,
        }
    }
}

/// Leaves the rest of an oversized body (`seen` bytes of it read already) to
/// a background task that reads and drops it, over HTTP/1, while the 413
/// goes out: hyper keeps the connection open while the body is read, and
/// closes it when the body ends or the task drops it (at `budget` bytes,
/// [`LINGER_TIME`], or [`LINGER_READ_TIMEOUT`] of silence). Over HTTP/2
/// dropping the body resets only its stream, after the answer: no linger.
fn linger<B>(version: Version, body: B, seen: u64, budget: u64) -> BodyError
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Send,
{
    if version <= Version::HTTP_11 && seen <= budget {
        tokio::spawn(discard(body, seen, budget));
    }
    BodyError::TooLargeUnread
}

/// The lingering read, within [`LINGER_TIME`] and [`LINGER_READ_TIMEOUT`].
async fn discard<B>(body: B, seen: u64, budget: u64) -> bool
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    discard_within(body, seen, budget, LINGER_TIME, LINGER_READ_TIMEOUT).await
}

/// Reads and drops `body` until it ends (true), passes `budget` bytes, goes
/// `read_timeout` without a frame, or `total` has passed (false).
async fn discard_within<B>(
    mut body: B,
    mut seen: u64,
    budget: u64,
    total: Duration,
    read_timeout: Duration,
) -> bool
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let until = Instant::now() + total;
    loop {
        let wait = (Instant::now() + read_timeout).min(until);
        match timeout_at(wait, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                seen = seen.saturating_add(frame.data_ref().map_or(0, |d| d.len() as u64));
                if seen > budget {
                    tracing::debug!(
                        seen,
                        "oversized request body: cut off past the lingering budget"
                    );
                    return false;
                }
            }
            Err(_) | Ok(Some(Err(_))) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use http::HeaderMap;
    use hyper::body::Frame;

    use super::*;
    use crate::wire::full;

    /// An HTTP/1.1 request head with these headers.
    fn head(headers: HeaderMap) -> http::request::Parts {
        let mut p = http::Request::new(()).into_parts().0;
        p.headers = headers;
        p
    }

    fn length(n: u64) -> http::request::Parts {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from(n));
        head(h)
    }

    fn none() -> http::request::Parts {
        head(HeaderMap::new())
    }

    /// A body that sends its chunks, then either ends or stalls for ever;
    /// `taken` counts the chunks read (by the lingering task too).
    struct Chunks {
        chunks: VecDeque<&'static [u8]>,
        stall: bool,
        taken: Arc<AtomicUsize>,
    }

    impl Chunks {
        fn new(n: usize, chunk: &'static [u8], stall: bool) -> Chunks {
            Chunks {
                chunks: std::iter::repeat_n(chunk, n).collect(),
                stall,
                taken: Arc::default(),
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
                Some(c) => {
                    self.taken.fetch_add(1, Ordering::Relaxed);
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(c)))))
                }
                None if self.stall => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    #[tokio::test]
    async fn bodies_are_bounded() {
        let t = Duration::from_secs(1);
        let small = full("abc");
        assert_eq!(read_body(&none(), small, 3, t).await.unwrap(), "abc");
        let big = full("abcd");
        assert_eq!(
            read_body(&none(), big, 3, t).await,
            Err(BodyError::TooLarge)
        );
        // Declared over the limit but within the drain budget: drained.
        assert_eq!(
            read_body(&length(10), full("0123456789"), 3, t).await,
            Err(BodyError::TooLarge)
        );
        // Declared beyond the drain budget: answered at once (left to linger).
        assert_eq!(
            read_body(&length(13), full(""), 3, t).await,
            Err(BodyError::TooLargeUnread)
        );
        let mut expect = length(10);
        expect
            .headers
            .insert(EXPECT, HeaderValue::from_static("100-continue"));
        assert_eq!(
            read_body(&expect, full(""), 3, t).await,
            Err(BodyError::TooLargeUnread)
        );
    }

    #[tokio::test]
    async fn counted_bodies_are_drained_only_within_the_budget() {
        let t = Duration::from_secs(1);
        // limit 3, budget 12: 6 chunks of 2 bytes drain; 7 do not.
        let r = read_body(&none(), Chunks::new(6, b"xx", false), 3, t).await;
        assert_eq!(r, Err(BodyError::TooLarge));
        let r = read_body(&none(), Chunks::new(7, b"xx", false), 3, t).await;
        assert_eq!(r, Err(BodyError::TooLargeUnread));
        let r = read_body(&none(), Chunks::new(1, b"xx", false), 3, t).await;
        assert_eq!(r.unwrap(), "xx");
    }

    /// Past the drain budget the answer goes out, and over HTTP/1 the rest
    /// of the body is read in the background up to LINGER_BYTES beyond the
    /// limit; a body declared larger than that is not read at all, and
    /// nothing lingers over HTTP/2.
    #[tokio::test]
    async fn oversized_bodies_linger_within_their_budget() {
        let t = Duration::from_secs(1);
        let chunk: &'static [u8] = &[b'x'; 4096];
        let limit = 8192;
        let chunks = usize::try_from(LINGER_BYTES).unwrap() / chunk.len();
        let body = Chunks::new(chunks, chunk, false);
        let taken = body.taken.clone();
        let declared = length((chunks * chunk.len()) as u64);
        assert_eq!(
            read_body(&declared, body, limit, t).await,
            Err(BodyError::TooLargeUnread)
        );
        eventually(|| taken.load(Ordering::Relaxed) == chunks).await;

        // Counted (chunked): past the drain budget, then lingering.
        let body = Chunks::new(chunks, chunk, false);
        let taken = body.taken.clone();
        assert_eq!(
            read_body(&none(), body, limit, t).await,
            Err(BodyError::TooLargeUnread)
        );
        eventually(|| taken.load(Ordering::Relaxed) == chunks).await;

        // A counted body past the lingering budget is cut off there.
        let body = Chunks::new(2 * chunks, chunk, false);
        let taken = body.taken.clone();
        assert_eq!(
            read_body(&none(), body, limit, t).await,
            Err(BodyError::TooLargeUnread)
        );
        let cut = chunks + limit / chunk.len() + 1;
        eventually(|| taken.load(Ordering::Relaxed) == cut).await;

        // Declared past it: not a byte read.
        let body = Chunks::new(1, chunk, false);
        let taken = body.taken.clone();
        let r = read_body(&length(LINGER_BYTES + limit as u64 + 1), body, limit, t).await;
        assert_eq!(r, Err(BodyError::TooLargeUnread));
        tokio::task::yield_now().await;
        assert_eq!(taken.load(Ordering::Relaxed), 0);

        // HTTP/2: the stream is reset after the answer; nothing lingers.
        let body = Chunks::new(chunks, chunk, false);
        let taken = body.taken.clone();
        let mut h2 = length((chunks * chunk.len()) as u64);
        h2.version = Version::HTTP_2;
        assert_eq!(
            read_body(&h2, body, limit, t).await,
            Err(BodyError::TooLargeUnread)
        );
        tokio::task::yield_now().await;
        assert_eq!(taken.load(Ordering::Relaxed), 0);
    }

    /// Waits (yielding to the lingering task) until `check` holds; the
    /// bodies here never wait, so a bounded number of yields is enough.
    async fn eventually(check: impl Fn() -> bool) {
        for _ in 0..100_000 {
            if check() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the lingering read did not get there");
    }

    #[tokio::test]
    async fn reading_draining_and_lingering_are_bounded_in_time() {
        let t = Duration::from_millis(200);
        // Within the limit, then silence: the body read timeout.
        let r = read_body(&none(), Chunks::new(1, b"x", true), 3, t).await;
        assert_eq!(r, Err(BodyError::Timeout));
        // Over the limit, then silence: draining stops at the same deadline
        // (or MAX_DRAIN_TIME, if sooner) and the rest is left to linger.
        let r = read_body(&length(10), Chunks::new(1, b"01234", true), 3, t).await;
        assert_eq!(r, Err(BodyError::TooLargeUnread));
        assert!(
            drain_deadline(Instant::now(), Instant::now() + Duration::from_secs(60))
                <= Instant::now() + MAX_DRAIN_TIME
        );
        // A silent lingering body is given up after the read timeout.
        let ms = Duration::from_millis;
        let silent = Chunks::new(1, b"x", true);
        assert!(!discard_within(silent, 0, 100, ms(60_000), ms(50)).await);
        // A body that keeps coming, each byte within the read timeout, is
        // given up at the total time: otherwise this would never end.
        let trickle = Trickle(Box::pin(tokio::time::sleep(ms(5))));
        assert!(!discard_within(trickle, 0, u64::MAX, ms(200), ms(50)).await);
        // The real bounds are nginx's.
        assert_eq!(
            (LINGER_TIME, LINGER_READ_TIMEOUT),
            (Duration::from_secs(30), Duration::from_secs(5))
        );
    }

    /// A byte every 5 ms, for ever.
    struct Trickle(Pin<Box<tokio::time::Sleep>>);

    impl hyper::body::Body for Trickle {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            std::task::ready!(std::future::Future::poll(self.0.as_mut(), cx));
            self.0
                .as_mut()
                .reset(Instant::now() + Duration::from_millis(5));
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
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
