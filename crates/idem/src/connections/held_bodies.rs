//! Responses whose next frame the connection holds for the client: how a client that stops
//! reading an HTTP/2 response is told apart from a slow upstream.
//!
//! Over HTTP/1.1 a client that stops reading fills the socket, and [`super::write_progress`]
//! sees the write block. Over HTTP/2 it can stop granting flow-control window instead: the
//! socket never blocks, hyper keeps the body's last frame and stops asking for more. So each
//! response body is wrapped in a [`WatchedBody`] that notes when it last handed a frame over
//! without being asked for the next one; a frame held for the send timeout means the client
//! is not reading. A body waiting on its upstream (`Pending`) is never held.
//!
//! The body also holds the connection's [`Busy`](super::Busy) mark until its last frame, so
//! that a long streaming response (server-sent events, a gRPC stream) counts as activity and
//! is not taken for an idle connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// One response body's state: when it handed a frame over that has not been followed by a
/// request for the next (nanoseconds after the connection's epoch, plus one; zero: none).
#[derive(Debug, Default)]
struct HeldSince(AtomicU64);

/// The response bodies of one connection.
#[derive(Debug)]
pub(super) struct HeldBodies {
    epoch: Instant,
    bodies: Mutex<Vec<Weak<HeldSince>>>,
}

impl HeldBodies {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            bodies: Mutex::new(Vec::new()),
        }
    }

    /// `body` holding `busy` until its end, its frames watched by `connection` when given
    /// (HTTP/2).
    pub(super) fn watch<B>(
        connection: Option<&Arc<Self>>,
        body: B,
        busy: super::Busy,
    ) -> WatchedBody<B> {
        let watched = connection.map(|connection| {
            let held = Arc::new(HeldSince::default());
            let mut bodies = connection
                .bodies
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Forget the bodies already dropped, so that a long connection's list stays as
            // short as its responses in flight.
            bodies.retain(|body| body.strong_count() > 0);
            bodies.push(Arc::downgrade(&held));
            (held, Arc::clone(connection))
        });
        WatchedBody {
            inner: body,
            watched,
            busy: Some(busy),
        }
    }

    /// How long the longest-held frame of this connection has waited for the client.
    pub(super) fn longest_held(&self) -> Duration {
        let now = self.nanos();
        let bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner);
        bodies
            .iter()
            .filter_map(Weak::upgrade)
            .map(|held| held.0.load(Ordering::Relaxed))
            .filter(|&since| since > 0)
            .map(|since| Duration::from_nanos(now.saturating_sub(since - 1)))
            .max()
            .unwrap_or_default()
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

/// A response body watched by [`HeldBodies`].
pub(super) struct WatchedBody<B> {
    inner: B,
    /// This body's state and its connection's list, for an HTTP/2 response.
    watched: Option<(Arc<HeldSince>, Arc<HeldBodies>)>,
    /// The connection's busy mark, released at the body's end (or drop).
    busy: Option<super::Busy>,
}

impl<B: Body + Unpin> Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_frame(context);
        let ended = match &poll {
            // The last frame: hyper sends it without asking for more (nor, always, dropping
            // the body at once), so the response is done as far as this connection waits.
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Pending => false,
        };
        if ended {
            this.busy = None;
        }
        if let Some((held, connection)) = &this.watched {
            let since = match &poll {
                Poll::Ready(Some(Ok(_))) if !ended => connection.nanos() + 1,
                _ => 0,
            };
            held.0.store(since, Ordering::Relaxed);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_frame_not_followed_by_a_request_for_the_next_is_held_and_pending_is_not() {
        let connection = Arc::new(HeldBodies::new());
        let activity = Arc::new(super::super::Activity::new());
        let (sender, receiver) =
            tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, std::convert::Infallible>>(4);
        let stream = futures_util::stream::poll_fn({
            let mut receiver = receiver;
            move |context| receiver.poll_recv(context)
        });
        let body = http_body_util::StreamBody::new(stream);
        let mut body = HeldBodies::watch(
            Some(&connection),
            body,
            super::super::Busy::new(Arc::clone(&activity)),
        );
        sender
            .send(Ok(Frame::data(bytes::Bytes::from_static(b"a"))))
            .await
            .unwrap();
        assert!(body.frame().await.is_some());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            connection.longest_held(),
            Duration::from_secs(10),
            "handed over, not asked again"
        );
        // Asked again, the body waits on its source: nothing is held.
        assert!(
            tokio::time::timeout(Duration::from_millis(1), body.frame())
                .await
                .is_err()
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(connection.longest_held(), Duration::ZERO);
        assert!(
            activity.idle_for() == Duration::ZERO,
            "busy until the last frame"
        );
        drop(sender);
        assert!(body.frame().await.is_none());
        assert!(
            activity
                .in_flight
                .load(std::sync::atomic::Ordering::Acquire)
                == 0,
            "released at the end"
        );
    }
}
