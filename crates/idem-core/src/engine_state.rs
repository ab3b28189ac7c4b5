//! What an [`Engine`](crate::Engine), its [`Execution`](crate::Execution)s and its lease
//! renewer share: the store and the engine's settings ([`EngineState`]), the registry of the
//! leases being kept alive ([`LeaseRegistry`]) and what is known of each lease
//! ([`LeaseState`]).
//!
//! These live apart from their three users (`engine`, `execution`, `renewal`) so that each of
//! them imports this module and none imports another's internals: the imports stay one way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{LeaseToken, OnLapse, RecordId};

/// The gauge of the executions this process runs now (leases it keeps alive), whatever
/// their engine.
pub(crate) const EXECUTIONS_IN_FLIGHT: &str = "idem_executions_in_flight";

/// One execution in the registry: the record, the token that holds it, and a number of its
/// own (two executions may hold one token: a two-phase client resuming its lease twice).
pub(crate) type LeaseKey = (RecordId, LeaseToken, u64);

/// An engine's store and settings, shared by its clones, its executions and its renewer.
pub(crate) struct EngineState<S> {
    pub(crate) store: S,
    /// How long completed records are kept by default.
    pub(crate) ttl: Duration,
    /// How long a lease lasts between renewals.
    pub(crate) lease: Duration,
    /// How long a duplicate of an in-flight request waits for it, if at all.
    pub(crate) wait: Option<Duration>,
    pub(crate) on_lapse: OnLapse,
    /// How long after its lease lapsed a key may be resolved by an operator.
    pub(crate) resolve_after: Duration,
    pub(crate) leases: LeaseRegistry,
}

/// The leases an engine keeps alive, the one renewer task that renews them, and the
/// duplicates in this process waiting for one of those executions to finish.
#[derive(Default)]
pub(crate) struct LeaseRegistry {
    entries: Mutex<HashMap<LeaseKey, Arc<LeaseState>>>,
    next_serial: AtomicU64,
    renewer: Mutex<Option<JoinHandle<()>>>,
    /// Woken when an execution of the record leaves the registry: after its completion or
    /// release was applied (or given up), so a waiter that reads the record then sees it.
    /// With the number of waiters holding each entry: the last one out removes it.
    waiters: Mutex<HashMap<RecordId, (Arc<Notify>, usize)>>,
}

impl LeaseRegistry {
    /// Starts keeping the lease of `token` on `id` alive; answers its key in the registry.
    pub(crate) fn insert(
        &self,
        id: RecordId,
        token: LeaseToken,
        state: Arc<LeaseState>,
    ) -> LeaseKey {
        let key = (id, token, self.next_serial.fetch_add(1, Ordering::Relaxed));
        lock(&self.entries).insert(key, state);
        metrics::gauge!(EXECUTIONS_IN_FLIGHT).increment(1.0);
        key
    }

    /// Stops keeping `key`'s lease alive, and wakes the duplicates waiting for its record.
    pub(crate) fn remove(&self, key: &LeaseKey) {
        if lock(&self.entries).remove(key).is_some() {
            metrics::gauge!(EXECUTIONS_IN_FLIGHT).decrement(1.0);
        }
        // Not removed here: a waiter woken while the record is still in flight (an execution
        // that was abandoned, or one of two resuming one lease) waits on for the next finish.
        if let Some((waiters, _)) = lock(&self.waiters).get(&key.0) {
            waiters.notify_waiters();
        }
    }

    /// Whether an execution of this process holds a lease on `id`.
    pub(crate) fn holds(&self, id: RecordId) -> bool {
        lock(&self.entries).keys().any(|(held, _, _)| *held == id)
    }

    /// A duplicate of `id`'s in-flight request starts waiting in this process: it is woken
    /// when an execution of `id` here finishes. An owner in another process wakes nobody, so
    /// waiters still re-read the record on a backoff.
    pub(crate) fn wait_for(&self, id: RecordId) -> Waiting<'_> {
        let notify = {
            let mut waiters = lock(&self.waiters);
            let (notify, count) = waiters.entry(id).or_default();
            *count += 1;
            Arc::clone(notify)
        };
        Waiting {
            registry: self,
            id,
            notify,
        }
    }
}

/// One duplicate waiting for a record's execution; the last one dropped removes its entry.
pub(crate) struct Waiting<'a> {
    registry: &'a LeaseRegistry,
    id: RecordId,
    notify: Arc<Notify>,
}

impl Waiting<'_> {
    /// Resolves when an execution of the record in this process finishes. Created before
    /// reading the record, it is woken by a finish between the read and the await too
    /// (tokio's `notify_waiters` reaches every `Notified` created before it, polled or not).
    pub(crate) fn finished(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiters = lock(&self.registry.waiters);
        if let Some((_, count)) = waiters.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                waiters.remove(&self.id);
            }
        }
    }
}

impl LeaseRegistry {
    /// The leases last renewed at least `due_after` before `now`.
    pub(crate) fn due(
        &self,
        now: Instant,
        due_after: Duration,
    ) -> Vec<(LeaseKey, Arc<LeaseState>)> {
        lock(&self.entries)
            .iter()
            .filter(|(_, state)| now.duration_since(state.renewed_at()) >= due_after)
            .map(|(key, state)| (*key, Arc::clone(state)))
            .collect()
    }

    /// The renewer task's slot, locked: whoever holds it decides whether to start one.
    pub(crate) fn renewer(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        lock(&self.renewer)
    }
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
    /// A lease acquired (or resumed) just now.
    pub(crate) fn new() -> Self {
        Self {
            lost: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            renewed_at: Mutex::new(Instant::now()),
        }
    }

    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }

    pub(crate) fn settled(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_settled(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }

    fn renewed_at(&self) -> Instant {
        *lock(&self.renewed_at)
    }

    pub(crate) fn mark_renewed(&self, at: Instant) {
        *lock(&self.renewed_at) = at;
    }
}

/// A poisoned lock only means a renewal panicked mid-update of a map or an instant: both are
/// whole values, safe to keep using.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IdempotencyKey, KeyPolicy, Scope};

    fn id() -> RecordId {
        let key = IdempotencyKey::parse(b"waited-for", KeyPolicy::Any).expect("a key");
        RecordId::new(&Scope::anonymous(), &key)
    }

    #[test]
    fn the_last_waiter_out_removes_the_entry_and_a_finish_keeps_it() {
        let registry = LeaseRegistry::default();
        let first = registry.wait_for(id());
        let second = registry.wait_for(id());
        let key = registry.insert(
            id(),
            crate::LeaseToken::random(),
            Arc::new(LeaseState::new()),
        );
        registry.remove(&key);
        assert_eq!(
            lock(&registry.waiters).len(),
            1,
            "still waited for after a finish"
        );
        drop(first);
        assert_eq!(lock(&registry.waiters).len(), 1);
        drop(second);
        assert!(
            lock(&registry.waiters).is_empty(),
            "no entry outlives its waiters"
        );
    }
}
