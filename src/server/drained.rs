//! HTTP/1.1 connections hold no TLS read buffer between reads.
//!
//! rustls (patched, patches/rustls) keeps a 4 KiB deframer buffer for
//! reading records, and keeps it for the connection's life: every idle
//! keep-alive connection held it (about a quarter of its memory). HTTP/2
//! connections give it back when h2 reports them idle (`coalesce`); an
//! HTTP/1.1 connection has no such report, but it does not need one: a read
//! that finds nothing to read (`Pending`) leaves the deframer empty unless a
//! record arrived in part, and rustls gives back only an empty buffer. The
//! buffer goes to rustls's per-thread spares and the next read on the
//! thread (this connection's, or another's) takes it back without
//! reserving or zero-filling anything: a busy connection pays a push and a
//! pop per read that waits, and an idle one holds nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::coalesce::ReleaseIdle;

/// Gives back the transport's read buffer whenever a read waits.
pub(crate) struct Drained<T> {
    inner: T,
}

impl<T> Drained<T> {
    pub(crate) fn new(inner: T) -> Drained<T> {
        Drained { inner }
    }
}

impl<T: AsyncRead + ReleaseIdle + Unpin> AsyncRead for Drained<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if r.is_pending() {
            this.inner.release_idle();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Drained<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stream that records releases and whether it had anything to read.
    struct Recorder {
        rx: tokio::io::DuplexStream,
        releases: usize,
    }

    impl ReleaseIdle for Recorder {
        fn release_idle(&mut self) {
            self.releases += 1;
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().rx).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().rx).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().rx).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().rx).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_read_that_waits_gives_the_buffer_back_and_one_that_reads_does_not() {
        let (rx, mut peer) = tokio::io::duplex(64);
        let mut d = Drained::new(Recorder { rx, releases: 0 });
        let mut buf = [0u8; 8];

        // Something to read: no release.
        peer.write_all(b"abc").await.unwrap();
        let n = d.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"abc");
        assert_eq!(d.inner.releases, 0);

        // Nothing to read: the read waits, and the buffer goes back.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut d).poll_read(&mut cx, &mut rb).is_pending());
        assert_eq!(d.inner.releases, 1);

        // Writes pass through untouched.
        d.write_all(b"xyz").await.unwrap();
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"xyz");
        assert_eq!(d.inner.releases, 1);
    }
}
