//! [`FinishOnDrop`]: a future that runs to completion even when its caller stops waiting.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Wraps a future so that, dropped before it finished (the client hung up and the server
/// dropped the request's future), the rest of it is handed to the runtime and finishes there.
///
/// This is how [`CancelPolicy::RunToCompletion`](crate::CancelPolicy::RunToCompletion) keeps
/// an execution going without its client. Spawning the execution up front did the same, but
/// every request then paid for a task and a cross-thread wake-up (27 µs in
/// `docs/benchmarks.md`); here the common case, a caller that waits, polls the future in
/// place and spawns nothing. Written by hand: no crate we know of detaches on drop.
pub(crate) struct FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// Taken out while being polled, so that a future that panics is never handed on.
    future: Option<Pin<Box<F>>>,
}

impl<F> FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    pub(crate) fn new(future: F) -> Self {
        Self {
            future: Some(Box::pin(future)),
        }
    }
}

impl<F> Future for FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Polled again after it finished (a caller's bug): it stays pending.
        let Some(mut future) = self.future.take() else {
            return Poll::Pending;
        };
        match future.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(output),
            Poll::Pending => {
                self.future = Some(future);
                Poll::Pending
            }
        }
    }
}

impl<F> Drop for FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        // Counted as background work, which a server shutting down waits for. Without a
        // runtime the execution stops here, and its key lapses into an unknown outcome.
        idem_core::background::spawn(async move {
            let _ = future.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_dropped_future_finishes_on_the_runtime() {
        let finished = Arc::new(AtomicBool::new(false));
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let wrapped = FinishOnDrop::new({
            let finished = Arc::clone(&finished);
            async move {
                let _ = wait.await;
                finished.store(true, Ordering::SeqCst);
            }
        });
        // Polled once, then abandoned by its caller.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), wrapped)
                .await
                .is_err()
        );
        assert!(!finished.load(Ordering::SeqCst));
        release.send(()).unwrap();
        for _ in 0..100 {
            if finished.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the abandoned future never finished");
    }

    #[tokio::test]
    async fn a_future_that_panicked_is_not_handed_on() {
        let wrapped = FinishOnDrop::new(async { panic!("handler panics") });
        let outcome = tokio::spawn(wrapped).await;
        assert!(outcome.unwrap_err().is_panic());
    }
}
