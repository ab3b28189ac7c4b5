//! [`WatchedStream`]: a connection's stream that counts what it writes, so that the
//! connection's task can tell a client that stopped reading from a slow one.
//!
//! Written by hand instead of `tokio-io-timeout`, which arms or resets a timer on every read
//! and write: measured on the replay path (perf, same run, 2026-12-02), those timer
//! operations were about a tenth of the CPU the gateway had added per request. Here a write
//! costs two relaxed atomic stores, and one timer per connection (the task's check, every
//! quarter of the send timeout) does the watching.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection has written, and whether a write is waiting for the client now.
#[derive(Debug, Default)]
pub(super) struct WriteProgress {
    written: AtomicU64,
    blocked: AtomicBool,
}

impl WriteProgress {
    /// Bytes written so far, and whether the last write is still waiting for room.
    pub(super) fn snapshot(&self) -> (u64, bool) {
        (
            self.written.load(Ordering::Relaxed),
            self.blocked.load(Ordering::Relaxed),
        )
    }

    fn record<T>(&self, poll: &Poll<io::Result<T>>, written: impl FnOnce(&T) -> usize) {
        match poll {
            Poll::Ready(Ok(value)) => {
                self.written
                    .fetch_add(written(value) as u64, Ordering::Relaxed);
                self.blocked.store(false, Ordering::Relaxed);
            }
            Poll::Ready(Err(_)) => self.blocked.store(false, Ordering::Relaxed),
            Poll::Pending => self.blocked.store(true, Ordering::Relaxed),
        }
    }
}

/// A stream whose writes are counted in a [`WriteProgress`]; reads pass through untouched.
pub(super) struct WatchedStream<S> {
    inner: S,
    progress: Arc<WriteProgress>,
}

impl<S> WatchedStream<S> {
    pub(super) fn new(inner: S, progress: Arc<WriteProgress>) -> Self {
        Self { inner, progress }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress.record(&poll, |written| *written);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress.record(&poll, |written| *written);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress.record(&poll, |()| 0);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress.record(&poll, |()| 0);
        poll
    }
}
