//! Work that finishes a key after its request is gone: completions retried through a store
//! fault, executions whose client hung up. It runs on the current runtime, and a server
//! shutting down waits for it ([`wait_idle`]) before the runtime stops, so that a deploy does
//! not turn finished work into keys of unknown outcome.
//!
//! Counted in one process-wide gauge rather than tracked per engine: a process drains all of
//! its background work at once, whichever engine or layer started it.

use std::future::Future;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static IDLE: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Decrements the gauge when the work ends, finished or cancelled.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        if RUNNING.fetch_sub(1, Ordering::AcqRel) == 1 {
            IDLE.notify_waiters();
        }
        metrics::gauge!("idem_background_tasks").decrement(1.0);
    }
}

/// Runs `work` on the current runtime, counted until it ends. Without a runtime (the process
/// is shutting down) the work is dropped: whatever key it would have finished lapses and is
/// reported as of unknown outcome.
pub fn spawn<F: Future<Output = ()> + Send + 'static>(work: F) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    RUNNING.fetch_add(1, Ordering::AcqRel);
    metrics::gauge!("idem_background_tasks").increment(1.0);
    let running = Running;
    runtime.spawn(async move {
        let _running = running;
        work.await;
    });
}

/// How much background work is running now.
#[must_use]
pub fn running() -> usize {
    RUNNING.load(Ordering::Acquire)
}

/// Waits until no background work runs, for at most `limit`; answers whether it all ended.
pub async fn wait_idle(limit: Duration) -> bool {
    let wait = async {
        loop {
            let idle = IDLE.notified();
            if running() == 0 {
                return;
            }
            idle.await;
        }
    };
    tokio::time::timeout(limit, wait).await.is_ok()
}
