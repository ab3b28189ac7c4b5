//! Keeping leases alive: one background task per engine renews the lease of every execution
//! still running, every third of the lease.
//!
//! A task per execution did the same, but every execution then paid for a spawn, a timer and
//! an abort (a cross-thread wake-up on a multi-threaded runtime), whether it lasted a
//! millisecond or a minute. Here an execution only inserts itself in a map and removes itself
//! when finished; the one renewer task wakes every sixth of the lease and renews the leases
//! that are due, concurrently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::engine::{Shared, timed};
use crate::{LeaseToken, RecordId, Store, TransitionOutcome};

/// Shortest pause between two looks at the registry, whatever the lease: a store is not
/// hammered by a tiny lease (tests use leases of a hundred milliseconds).
const MIN_TICK: Duration = Duration::from_millis(5);
/// Renewals in flight at once: enough for thousands of executions per tick, few enough not to
/// take every connection of a pool.
const CONCURRENT_RENEWALS: usize = 32;

/// The executions whose leases an engine keeps alive, and its renewer task.
#[derive(Default)]
pub(crate) struct Renewals {
    entries: Mutex<HashMap<(RecordId, LeaseToken), Arc<LeaseState>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What the renewer and the execution share about one lease.
#[derive(Debug)]
pub(crate) struct LeaseState {
    /// A renewal found the key no longer ours (taken over, resolved, expired).
    lost: AtomicBool,
    /// The key was finished: a renewal that then finds it gone is not a loss.
    settled: AtomicBool,
    /// When the lease was last renewed (or acquired).
    renewed_at: Mutex<Instant>,
}

impl LeaseState {
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_settled(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }
}

/// One execution's place in the registry; dropping it stops the renewals.
pub(crate) struct Registration<S: Store> {
    shared: Weak<Shared<S>>,
    key: (RecordId, LeaseToken),
    pub(crate) state: Arc<LeaseState>,
}

impl<S: Store> Registration<S> {
    /// Starts renewing `token`'s lease on `id`, and the engine's renewer if it is not running.
    pub(crate) fn start(shared: &Arc<Shared<S>>, id: RecordId, token: LeaseToken) -> Self {
        let state = Arc::new(LeaseState {
            lost: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            renewed_at: Mutex::new(Instant::now()),
        });
        lock(&shared.renewals.entries).insert((id, token), Arc::clone(&state));
        ensure_renewer(shared);
        Self {
            shared: Arc::downgrade(shared),
            key: (id, token),
            state,
        }
    }
}

impl<S: Store> Drop for Registration<S> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.renewals.entries).remove(&self.key);
        }
    }
}

/// A poisoned lock only means a renewal panicked mid-update of a map or an instant: both are
/// whole values, safe to keep using.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Spawns the renewer on the current runtime unless one runs. A renewer whose runtime shut
/// down (an engine shared across test runtimes) is replaced.
fn ensure_renewer<S: Store>(shared: &Arc<Shared<S>>) {
    let mut task = lock(&shared.renewals.task);
    if task.as_ref().is_some_and(|running| !running.is_finished()) {
        return;
    }
    // Without a runtime there is nothing to renew on: the lease lapses unless finished first.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        *task = Some(runtime.spawn(renew_while_the_engine_lives(Arc::downgrade(shared))));
    }
}

async fn renew_while_the_engine_lives<S: Store>(shared: Weak<Shared<S>>) {
    let Some(lease) = shared.upgrade().map(|shared| shared.lease) else {
        return;
    };
    let due_after = lease / 3;
    let tick = (lease / 6).max(MIN_TICK);
    loop {
        tokio::time::sleep(tick).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let due: Vec<((RecordId, LeaseToken), Arc<LeaseState>)> = lock(&shared.renewals.entries)
            .iter()
            .filter(|(_, state)| now.duration_since(*lock(&state.renewed_at)) >= due_after)
            .map(|(key, state)| (*key, Arc::clone(state)))
            .collect();
        futures_util::stream::iter(due)
            .for_each_concurrent(CONCURRENT_RENEWALS, |((id, token), state)| {
                let shared = Arc::clone(&shared);
                async move { renew(&shared, id, token, &state).await }
            })
            .await;
    }
}

async fn renew<S: Store>(shared: &Shared<S>, id: RecordId, token: LeaseToken, state: &LeaseState) {
    let started = Instant::now();
    match timed("renew", shared.store.renew(id, token, shared.lease)).await {
        Ok(TransitionOutcome::Applied) => {
            *lock(&state.renewed_at) = started;
            metrics::counter!("idem_lease_renewals_total", "result" => "renewed").increment(1);
        }
        Ok(TransitionOutcome::StaleLease) => {
            lock(&shared.renewals.entries).remove(&(id, token));
            if !state.settled.load(Ordering::Relaxed) {
                state.lost.store(true, Ordering::Relaxed);
                metrics::counter!("idem_lease_renewals_total", "result" => "lost").increment(1);
                tracing::error!(record = %id, "this execution's lease was taken over or resolved while it ran; its result will not be stored");
            }
        }
        // Still due at the next tick: tried again a sixth of the lease later, several times
        // before the lease can lapse.
        Err(error) => {
            metrics::counter!("idem_lease_renewals_total", "result" => "failed").increment(1);
            tracing::warn!(%error, record = %id, "renewing a lease failed; trying again at the next tick");
        }
    }
}
