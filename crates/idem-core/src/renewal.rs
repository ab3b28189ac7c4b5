//! Keeping leases alive: one background task per engine renews the lease of every execution
//! still running, every third of the lease.
//!
//! A task per execution did the same, but every execution then paid for a spawn, a timer and
//! an abort (a cross-thread wake-up on a multi-threaded runtime), whether it lasted a
//! millisecond or a minute. Here an execution only inserts itself in the engine's
//! [`LeaseRegistry`](crate::engine_state::LeaseRegistry) and removes itself when finished;
//! the one renewer task wakes every sixth of the lease and renews the leases that are due,
//! concurrently.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::engine_state::{EngineState, LeaseKey, LeaseState};
use crate::store::timed;
use crate::{LeaseToken, RecordId, Store, TransitionOutcome};

/// Shortest pause between two looks at the registry, whatever the lease: a store is not
/// hammered by a tiny lease (tests use leases of a hundred milliseconds).
const MIN_TICK: Duration = Duration::from_millis(5);
/// Renewals in flight at once: enough for thousands of executions per tick, few enough not to
/// take every connection of a pool.
const CONCURRENT_RENEWALS: usize = 32;

/// One execution's place in the registry; dropping it stops the renewals.
pub(crate) struct Registration<S: Store> {
    engine: Weak<EngineState<S>>,
    key: LeaseKey,
    pub(crate) state: Arc<LeaseState>,
}

impl<S: Store> Registration<S> {
    /// Starts renewing `token`'s lease on `id`, and the engine's renewer if it is not running.
    pub(crate) fn start(engine: &Arc<EngineState<S>>, id: RecordId, token: LeaseToken) -> Self {
        let state = Arc::new(LeaseState::new());
        let key = engine.leases.insert(id, token, Arc::clone(&state));
        ensure_renewer(engine);
        Self {
            engine: Arc::downgrade(engine),
            key,
            state,
        }
    }
}

impl<S: Store> Drop for Registration<S> {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.upgrade() {
            engine.leases.remove(&self.key);
        }
    }
}

/// Spawns the renewer on the current runtime unless one runs. A renewer whose runtime shut
/// down (an engine shared across test runtimes) is replaced.
fn ensure_renewer<S: Store>(engine: &Arc<EngineState<S>>) {
    let mut renewer = engine.leases.renewer();
    if renewer
        .as_ref()
        .is_some_and(|running| !running.is_finished())
    {
        return;
    }
    // Without a runtime there is nothing to renew on: the lease lapses unless finished first.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        *renewer = Some(runtime.spawn(renew_while_the_engine_lives(Arc::downgrade(engine))));
    }
}

async fn renew_while_the_engine_lives<S: Store>(engine: Weak<EngineState<S>>) {
    let Some(lease) = engine.upgrade().map(|engine| engine.lease) else {
        return;
    };
    let due_after = lease / 3;
    let tick = (lease / 6).max(MIN_TICK);
    loop {
        tokio::time::sleep(tick).await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let due = engine.leases.due(Instant::now(), due_after);
        futures_util::stream::iter(due)
            .for_each_concurrent(CONCURRENT_RENEWALS, |(key, state)| {
                let engine = Arc::clone(&engine);
                async move { renew(&engine, key, &state).await }
            })
            .await;
    }
}

async fn renew<S: Store>(engine: &EngineState<S>, key: LeaseKey, state: &LeaseState) {
    let (id, token, _) = key;
    let started = Instant::now();
    match timed("renew", engine.store.renew(id, token, engine.lease)).await {
        Ok(TransitionOutcome::Applied) => {
            state.mark_renewed(started);
            metrics::counter!("idem_lease_renewals_total", "result" => "renewed").increment(1);
        }
        Ok(TransitionOutcome::StaleLease) => {
            engine.leases.remove(&key);
            if !state.settled() {
                state.mark_lost();
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
