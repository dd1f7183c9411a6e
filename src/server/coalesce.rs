//! Write coalescing for HTTP/2 connections.
//!
//! On an HTTP/2 connection many responses are in flight at once, and each
//! completes on its own when its upstream answer arrives. h2 flushes whenever
//! it has written what is pending, so under load almost every response became
//! its own TLS record and its own `writev` (measured: 0.98 client writes per
//! request, against HAProxy's 0.16). This wrapper holds written bytes until a
//! flush, and answers the first flush of a batch by yielding once: the
//! worker's other ready tasks (typically more responses for this connection)
//! run first and join the batch, then the next flush writes it all.
//! The added delay is one pass of the worker's run queue.
//!
//! This relies on h2 flushing only when it has written what is pending. h2
//! also flushed to make room behind every DATA frame over 256 bytes (whose
//! payload it chains rather than copies), which sent batches out two
//! responses at a time; the patched h2 (patches/h2, section 12) writes there
//! without flushing.
//!
//! An idle connection holds no buffer here and none in rustls for reading:
//! h2 (patched, patches/h2) tells the transport that a connection has gone
//! idle (no stream open, everything written, nothing more to read) by a
//! zero-length write, once, right after giving back its own buffers. This
//! wrapper then gives back its buffer and asks the transport below
//! (`ReleaseIdle`: rustls, patched) to give back its read buffer. Doing it
//! at that moment, not later, lets the next connection's allocations reuse
//! the memory instead of leaving holes in the heap. A connection with
//! streams in flight never sends the hint.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::Counted;

/// A transport that can give back memory it holds only for reading, when
/// the connection has gone idle.
pub(crate) trait ReleaseIdle {
    fn release_idle(&mut self);
}

impl<T: ReleaseIdle> ReleaseIdle for Counted<T> {
    fn release_idle(&mut self) {
        self.get_mut().release_idle();
    }
}

impl<IO> ReleaseIdle for tokio_rustls::server::TlsStream<IO> {
    fn release_idle(&mut self) {
        // rustls (patched): its deframer buffer, when it holds no bytes.
        self.get_mut().1.release_idle_buffers();
    }
}

/// Beyond this many buffered bytes a write goes out at once (large bodies
/// stream instead of piling up).
const HIGH_WATER: usize = 64 * 1024;
/// A buffer that grew past this is given back after it drains, so an idle
/// connection does not keep a large allocation.
const KEEP_CAPACITY: usize = 4 * 1024;

pub(crate) struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the inner writer has taken.
    written: usize,
    /// The current batch has already yielded once.
    yielded: bool,
}

impl<T> Coalesce<T> {
    pub(crate) fn new(inner: T) -> Coalesce<T> {
        Coalesce {
            inner,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }

    #[cfg(test)]
    fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T> Coalesce<T> {
    /// A buffer with nothing reserved (new, given back while idle, or after
    /// a large batch) reserves `KEEP_CAPACITY` in one step, not by doubling
    /// from a few bytes (each step a copy).
    #[inline]
    fn reserve_first(&mut self, len: usize) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(len.max(KEEP_CAPACITY));
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Hands everything buffered to the inner writer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + ReleaseIdle + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            // The idle hint (see the module's comment); with nothing
            // waiting to be written (h2 flushed before it), give back.
            if this.buf.is_empty() {
                this.buf = Vec::new();
                this.inner.release_idle();
            }
            return Poll::Ready(Ok(0));
        }
        if this.buf.len() >= HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        this.reserve_first(data.len());
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() >= HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        this.reserve_first(bufs.iter().map(|b| b.len()).sum());
        let mut n = 0;
        for b in bufs {
            this.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records each write the wrapper makes.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        releases: usize,
    }

    impl ReleaseIdle for Recorder {
        fn release_idle(&mut self) {
            self.releases += 1;
        }
    }

    /// The idle hint, as h2 gives it: a zero-length write.
    fn hint(c: &mut Coalesce<Recorder>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(c).poll_write(&mut cx, &[]) {
            Poll::Ready(Ok(0)) => {}
            other => panic!("the hint answered {other:?}"),
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            d: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().writes.push(d.to_vec());
            Poll::Ready(Ok(d.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_between_flushes_go_out_as_one() {
        let mut c = Coalesce::new(Recorder::default());
        c.write_all(b"frame one;").await.unwrap();
        c.write_all(b"frame two;").await.unwrap();
        assert!(
            c.get_ref().writes.is_empty(),
            "nothing written before a flush"
        );
        // The first flush yields once, then writes everything in one go.
        c.flush().await.unwrap();
        assert_eq!(c.get_ref().writes, vec![b"frame one;frame two;".to_vec()]);
        assert_eq!(c.get_ref().flushes, 1);
        // An empty flush passes straight through.
        c.flush().await.unwrap();
        assert_eq!(c.get_ref().writes.len(), 1);
        assert_eq!(c.get_ref().flushes, 2);
    }

    #[tokio::test]
    async fn the_idle_hint_gives_the_buffers_back_and_writing_goes_on() {
        let mut c = Coalesce::new(Recorder::default());
        c.write_all(b"a response").await.unwrap();
        // Bytes wait to be written: the hint changes nothing.
        hint(&mut c);
        assert_eq!(c.get_ref().releases, 0);
        c.flush().await.unwrap();
        assert!(
            c.buf.capacity() > 0,
            "kept after a flush, for the next batch"
        );
        // Idle: this buffer and the transport's are given back.
        hint(&mut c);
        assert_eq!(c.buf.capacity(), 0);
        assert_eq!(c.get_ref().releases, 1);
        // It writes as before afterwards.
        c.write_all(b"later").await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(
            c.get_ref().writes,
            vec![b"a response".to_vec(), b"later".to_vec()]
        );
    }

    #[tokio::test]
    async fn large_bodies_stream_past_the_high_water_mark() {
        let mut c = Coalesce::new(Recorder::default());
        let chunk = vec![7u8; 40 * 1024];
        for _ in 0..4 {
            c.write_all(&chunk).await.unwrap();
        }
        assert!(!c.get_ref().writes.is_empty(), "written before any flush");
        c.shutdown().await.unwrap();
        let total: usize = c.get_ref().writes.iter().map(Vec::len).sum();
        assert_eq!(total, 4 * chunk.len(), "every byte written by shutdown");
    }
}
