//! What keeps one client from holding a connection for nothing: each
//! connection reports its activity (requests started, responses in progress,
//! progress toward the client) through a few counters, and a watcher task
//! per connection closes it when
//!
//! - no first request arrives within `header_read_timeout` (an HTTP/2
//!   client that never sends its preface or a request: dropped);
//! - it has been idle, no request in progress, for `idle_timeout` (closed
//!   gracefully: HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`);
//! - a response has been waiting on the client for `send_timeout` with no
//!   progress: the client stopped reading, or keeps an HTTP/2 flow-control
//!   window at zero (dropped, which also frees the upstream connection the
//!   response was streaming from).
//!
//! The counters are written only by the connection's own tasks. On a public
//! worker (a current-thread runtime) those all run on one thread, so a count
//! is a plain load and store of an atomic, not a locked read-modify-write
//! (each of which drains the core's store buffer: about nine per request
//! otherwise); where tasks may run on several threads (the admin listener's
//! runtime) they are read-modify-writes. The watcher wakes a few times per
//! timeout, not per request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::clients::StreamSlot;

/// A connection's activity, written by the connection and read by its watcher.
#[derive(Default)]
pub(crate) struct Activity {
    /// Requests (HTTP/2: streams) whose handler was called.
    requests: AtomicU64,
    /// Requests whose handler or response body is not finished.
    in_flight: AtomicUsize,
    /// Response bodies whose last poll produced a frame that the connection
    /// has not come back past: they wait for the client, not the upstream.
    waiting_on_client: AtomicUsize,
    /// Counts body polls and socket writes that went through after a full
    /// socket: any change means data is moving toward the client.
    progress: AtomicU64,
    /// The last socket write found the send buffer full.
    write_blocked: AtomicBool,
    /// Every writer runs on one thread (see the module's note).
    one_thread: bool,
    /// That thread, checked at each count in debug builds: a change that
    /// moved a connection's body or guard to another thread would otherwise
    /// lose counts silently.
    #[cfg(debug_assertions)]
    owner: Option<std::thread::ThreadId>,
}

/// Counts one up (`+1`) or down (`-1`) on a counter of an [`Activity`]: a
/// load and a store when its writers share one thread, else a
/// read-modify-write. The watcher (on the same thread on a public worker,
/// possibly another on the admin listener) reads it either way (relaxed:
/// it only looks for change).
macro_rules! count {
    ($activity:expr, $counter:ident, +1) => {
        count!(@ $activity, $counter, wrapping_add, fetch_add)
    };
    ($activity:expr, $counter:ident, -1) => {
        count!(@ $activity, $counter, wrapping_sub, fetch_sub)
    };
    (@ $activity:expr, $counter:ident, $wrapping:ident, $fetch:ident) => {{
        let a = &$activity;
        if a.one_thread {
            #[cfg(debug_assertions)]
            debug_assert!(
                a.owner.is_none_or(|t| t == std::thread::current().id()),
                "an activity count written from another thread"
            );
            a.$counter
                .store(a.$counter.load(Relaxed).$wrapping(1), Relaxed);
        } else {
            a.$counter.$fetch(1, Relaxed);
        }
    }};
}

impl Activity {
    /// The activity of a connection served by the calling task: its counts
    /// are plain stores when the task's runtime is a current-thread one,
    /// whose tasks (this connection's streams and bodies among them) all run
    /// on the thread that drives it.
    pub(crate) fn for_this_runtime() -> Activity {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let one_thread =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
        Activity {
            one_thread,
            #[cfg(debug_assertions)]
            owner: one_thread.then(|| std::thread::current().id()),
            ..Activity::default()
        }
    }

    /// Marks a request as started; the guard ends it when dropped (with its
    /// response body, or with the handler if the client went away first).
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        count!(self, requests, +1);
        count!(self, in_flight, +1);
        InFlight(self.clone(), None)
    }

    fn snapshot(&self) -> Counters {
        Counters {
            requests: self.requests.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            waiting_on_client: self.waiting_on_client.load(Relaxed) > 0
                || self.write_blocked.load(Relaxed),
            progress: self.progress.load(Relaxed),
        }
    }
}

/// One request in progress; over HTTP/2 it also holds its place in the
/// client's stream share.
pub(crate) struct InFlight(Arc<Activity>, Option<StreamSlot>);

impl InFlight {
    /// Holds `stream` for as long as this request is in progress.
    pub(crate) fn holding(mut self, stream: StreamSlot) -> InFlight {
        self.1 = Some(stream);
        self
    }

    /// Wraps the response body so it reports its progress, to the
    /// connection's watcher and to the handler's `report`; the request
    /// stays in flight until that body is dropped.
    pub(crate) fn track<B, F: Report>(self, body: B, report: F) -> Tracked<B, F> {
        Tracked {
            report,
            inner: body,
            guard: self,
            holding: false,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        count!(self.0, in_flight, -1);
    }
}

/// What a handler learns as one of its responses goes out: each frame
/// handed to the connection, and (when it is dropped) that the response is
/// done or abandoned. It rides in the connection's own body wrapper
/// ([`Tracked`]), so a response passes one wrapper, not one per concern.
pub(crate) trait Report: Default + Send + Unpin + 'static {
    /// `frame` goes to the connection.
    fn sent(&mut self, frame: &Frame<Bytes>);
}

/// A handler with nothing to report.
impl Report for () {
    #[inline]
    fn sent(&mut self, _: &Frame<Bytes>) {}
}

/// The response body as the connection sends it: reports whether it waits
/// on the client, and what went out to the handler's [`Report`].
pub(crate) struct Tracked<B, F = ()> {
    /// Declared first, so dropped first: the handler's report is made
    /// before the body (and the upstream connection it may hold) goes.
    report: F,
    inner: B,
    guard: InFlight,
    /// Our last poll produced a frame (counted in `waiting_on_client`).
    holding: bool,
}

impl<B, F> Tracked<B, F> {
    fn release(&mut self) {
        if self.holding {
            self.holding = false;
            count!(self.guard.0, waiting_on_client, -1);
        }
    }
}

impl<B, F> Drop for Tracked<B, F> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<B: Body<Data = Bytes> + Unpin, F: Report> Body for Tracked<B, F> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        // Polled again: the connection took the last frame further.
        this.release();
        count!(this.guard.0, progress, +1);
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            this.report.sent(frame);
            this.holding = true;
            count!(this.guard.0, waiting_on_client, +1);
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

/// The connection's socket, noting when the client stops taking data.
pub(crate) struct Counted<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Counted<T> {
        Counted { inner, activity }
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    fn note<R>(&self, r: &Poll<io::Result<R>>) {
        let blocked = &self.activity.write_blocked;
        match r {
            Poll::Pending => {
                if !blocked.load(Relaxed) {
                    blocked.store(true, Relaxed);
                }
            }
            Poll::Ready(_) => {
                if blocked.load(Relaxed) {
                    blocked.store(false, Relaxed);
                    count!(self.activity, progress, +1);
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.note(&r);
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The deadlines the watcher enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    pub(crate) first_request: Duration,
    pub(crate) idle: Duration,
    pub(crate) send: Duration,
}

impl Deadlines {
    /// How often the watcher looks: often enough that each deadline is kept
    /// within a quarter of itself, rarely enough to cost nothing per request.
    pub(crate) fn period(&self) -> Duration {
        (self.first_request.min(self.idle).min(self.send) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(15))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    requests: u64,
    in_flight: usize,
    waiting_on_client: bool,
    progress: u64,
}

/// What the watcher decides at a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Fine,
    /// Idle too long: close gracefully.
    Idle,
    /// Drop the connection now, for this reason.
    Drop(&'static str),
}

/// The watcher's memory between looks.
pub(crate) struct Watch {
    started: Instant,
    last: Counters,
    /// Since when nothing changed that would reset the idle clock.
    quiet_since: Instant,
    /// Since when a response has waited on the client without progress.
    stalled_since: Option<Instant>,
}

impl Watch {
    pub(crate) fn new(now: Instant) -> Watch {
        Watch {
            started: now,
            last: Counters {
                requests: 0,
                in_flight: 0,
                waiting_on_client: false,
                progress: 0,
            },
            quiet_since: now,
            stalled_since: None,
        }
    }

    /// Whether nothing has happened on the connection (no request started or
    /// in flight) since the look before the last one: it is idle, not between
    /// two requests.
    pub(crate) fn quiet(&self, now: Instant) -> bool {
        self.last.in_flight == 0 && self.quiet_since < now
    }

    pub(crate) fn look(&mut self, activity: &Activity, now: Instant, d: &Deadlines) -> Verdict {
        self.judge(activity.snapshot(), now, d)
    }

    fn judge(&mut self, c: Counters, now: Instant, d: &Deadlines) -> Verdict {
        let prev = std::mem::replace(&mut self.last, c);
        if c.requests == 0 && now.duration_since(self.started) >= d.first_request {
            return Verdict::Drop("no request within the first-request deadline");
        }
        if c.waiting_on_client && c.progress == prev.progress {
            let since = *self.stalled_since.get_or_insert(now);
            if now.duration_since(since) >= d.send {
                return Verdict::Drop("the client stopped taking the response");
            }
        } else {
            self.stalled_since = None;
        }
        if c.in_flight > 0 || c.requests != prev.requests {
            self.quiet_since = now;
        } else if c.requests > 0 && now.duration_since(self.quiet_since) >= d.idle {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Deadlines = Deadlines {
        first_request: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        send: Duration::from_secs(30),
    };

    fn c(requests: u64, in_flight: usize, waiting: bool, progress: u64) -> Counters {
        Counters {
            requests,
            in_flight,
            waiting_on_client: waiting,
            progress,
        }
    }

    #[test]
    fn a_silent_connection_is_dropped_at_the_first_request_deadline() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0);
        let s = Duration::from_secs;
        assert_eq!(w.judge(c(0, 0, false, 0), t0 + s(5), &D), Verdict::Fine);
        assert!(matches!(
            w.judge(c(0, 0, false, 0), t0 + s(10), &D),
            Verdict::Drop(_)
        ));
        let mut w = Watch::new(t0);
        assert_eq!(w.judge(c(1, 0, false, 0), t0 + s(11), &D), Verdict::Fine);
    }

    #[test]
    fn quiet_means_nothing_happened_since_the_previous_look() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Watch::new(t0);
        // A request arrived since the last look: not quiet.
        w.judge(c(1, 0, false, 3), t0 + s(1), &D);
        assert!(!w.quiet(t0 + s(1)));
        // Nothing new for a whole period: quiet.
        w.judge(c(1, 0, false, 3), t0 + s(2), &D);
        assert!(w.quiet(t0 + s(2)));
        // A request in progress is never quiet, however long it runs.
        w.judge(c(2, 1, false, 3), t0 + s(3), &D);
        w.judge(c(2, 1, false, 3), t0 + s(4), &D);
        assert!(!w.quiet(t0 + s(4)));
    }

    #[test]
    fn idle_is_counted_from_the_last_request() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Watch::new(t0);
        assert_eq!(w.judge(c(1, 1, false, 3), t0 + s(1), &D), Verdict::Fine);
        // A long request is not idleness.
        assert_eq!(w.judge(c(1, 1, false, 3), t0 + s(100), &D), Verdict::Fine);
        assert_eq!(w.judge(c(1, 0, false, 3), t0 + s(101), &D), Verdict::Fine);
        assert_eq!(w.judge(c(1, 0, false, 3), t0 + s(159), &D), Verdict::Fine);
        assert_eq!(w.judge(c(1, 0, false, 3), t0 + s(160), &D), Verdict::Idle);
    }

    #[test]
    fn a_response_the_client_does_not_take_is_dropped_at_the_send_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Watch::new(t0);
        assert_eq!(w.judge(c(1, 1, true, 5), t0 + s(1), &D), Verdict::Fine);
        assert_eq!(w.judge(c(1, 1, true, 5), t0 + s(2), &D), Verdict::Fine);
        // Progress resets the clock: a slow reader is not a stalled one.
        assert_eq!(w.judge(c(1, 1, true, 6), t0 + s(31), &D), Verdict::Fine);
        assert_eq!(w.judge(c(1, 1, true, 6), t0 + s(40), &D), Verdict::Fine);
        assert!(matches!(
            w.judge(c(1, 1, true, 6), t0 + s(70), &D),
            Verdict::Drop(_)
        ));
        // Waiting on the upstream (nothing held for the client) never counts.
        let mut w = Watch::new(t0);
        assert_eq!(w.judge(c(1, 1, false, 5), t0 + s(1), &D), Verdict::Fine);
        assert_eq!(w.judge(c(1, 1, false, 5), t0 + s(500), &D), Verdict::Fine);
    }

    #[test]
    fn tracked_bodies_report_frames_held_for_the_client() {
        use http_body_util::{BodyExt, Full};
        let a = Arc::new(Activity::default());
        let guard = a.start();
        assert_eq!(a.snapshot().in_flight, 1);
        let mut body = guard.track(Full::new(Bytes::from_static(b"x")), ());
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        let r = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(matches!(r, Poll::Ready(Some(Ok(_)))));
        assert!(a.snapshot().waiting_on_client);
        let r = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(matches!(r, Poll::Ready(None)));
        assert!(!a.snapshot().waiting_on_client);
        drop(body);
        assert_eq!(a.snapshot().in_flight, 0);
        // Collecting a body end to end leaves nothing counted.
        let body = a.start().track(Full::new(Bytes::from_static(b"y")), ());
        let _ = futures_block_on(body.collect());
        assert_eq!(a.snapshot(), c(2, 0, false, a.snapshot().progress));
    }

    #[test]
    fn counts_are_plain_stores_only_where_one_thread_writes_them() {
        use http_body_util::Full;
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(
            current
                .block_on(async { Activity::for_this_runtime() })
                .one_thread
        );
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        assert!(
            !multi
                .block_on(async { Activity::for_this_runtime() })
                .one_thread
        );
        assert!(!Activity::for_this_runtime().one_thread);
        // Either way the watcher sees the same counts.
        for one_thread in [true, false] {
            let a = Arc::new(Activity {
                one_thread,
                ..Activity::default()
            });
            let first = a.start();
            let second = a.start();
            assert_eq!(a.snapshot(), c(2, 2, false, 0));
            drop(first);
            let mut body = second.track(Full::new(Bytes::from_static(b"x")), ());
            let waker = futures_noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(Pin::new(&mut body).poll_frame(&mut cx).is_ready());
            assert_eq!(a.snapshot(), c(2, 1, true, 1));
            drop(body);
            assert_eq!(a.snapshot(), c(2, 0, false, 1));
        }
    }

    #[test]
    fn counts_from_many_threads_add_up_on_a_shared_runtime() {
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        // What a connection on the admin listener's runtime gets.
        let a = Arc::new(multi.block_on(async { Activity::for_this_runtime() }));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        drop(a.start());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(a.snapshot(), c(40_000, 0, false, 0));
    }

    #[test]
    #[cfg(debug_assertions)]
    fn a_count_from_another_thread_is_caught_in_debug_builds() {
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let a = Arc::new(current.block_on(async { Activity::for_this_runtime() }));
        drop(a.start());
        let moved = std::thread::spawn(move || drop(a.start())).join();
        assert!(moved.is_err());
    }

    /// Counts the data bytes sent, and notes in-flight requests when dropped.
    #[derive(Default)]
    struct Counting {
        bytes: Arc<AtomicU64>,
        at_drop: Arc<std::sync::Mutex<Option<usize>>>,
        activity: Option<Arc<Activity>>,
    }

    impl Report for Counting {
        fn sent(&mut self, frame: &Frame<Bytes>) {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            self.bytes.fetch_add(n, Relaxed);
        }
    }

    impl Drop for Counting {
        fn drop(&mut self) {
            let in_flight = self.activity.as_ref().map(|a| a.snapshot().in_flight);
            *self.at_drop.lock().unwrap() = in_flight;
        }
    }

    #[test]
    fn a_handlers_report_sees_every_frame_and_ends_before_the_request() {
        use http_body_util::BodyExt;
        let a = Arc::new(Activity::default());
        let mut report = Counting::default();
        report.activity = Some(a.clone());
        let (bytes, at_drop) = (report.bytes.clone(), report.at_drop.clone());
        let frames = Frames(["abc", "de", ""].map(Bytes::from).into());
        let body = a.start().track(frames, report);
        let collected = futures_block_on(body.collect()).unwrap().to_bytes();
        assert_eq!(collected, "abcde");
        assert_eq!(bytes.load(Relaxed), 5);
        // Reported while the request was still in flight; then it ended.
        assert_eq!(*at_drop.lock().unwrap(), Some(1));
        assert_eq!(a.snapshot().in_flight, 0);
    }

    /// A body of these data frames, each ready at once.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }

    fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }
}
