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
    waiters: Mutex<HashMap<RecordId, Arc<Notify>>>,
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
        key
    }

    /// Stops keeping `key`'s lease alive, and wakes the duplicates waiting for its record.
    pub(crate) fn remove(&self, key: &LeaseKey) {
        lock(&self.entries).remove(key);
        if let Some(waiters) = lock(&self.waiters).remove(&key.0) {
            waiters.notify_waiters();
        }
    }

    /// A duplicate of `id`'s in-flight request starts waiting in this process: it is woken
    /// when an execution of `id` here finishes. An owner in another process wakes nobody, so
    /// waiters still re-read the record on a backoff.
    pub(crate) fn wait_for(&self, id: RecordId) -> Waiting<'_> {
        let notify = Arc::clone(lock(&self.waiters).entry(id).or_default());
        Waiting {
            registry: self,
            id,
            notify,
        }
    }
}

/// One duplicate waiting for a record's execution; dropped, it leaves no entry behind unless
/// another waiter still holds it.
pub(crate) struct Waiting<'a> {
    registry: &'a LeaseRegistry,
    id: RecordId,
    notify: Arc<Notify>,
}

impl Waiting<'_> {
    /// Resolves when an execution of the record in this process finishes. Create it before
    /// reading the record, so that a finish between the read and the await still wakes it.
    pub(crate) fn finished(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiters = lock(&self.registry.waiters);
        // Two holders left, the map and this waiter: the last one out removes the entry (a
        // finish may have removed it, or replaced it with a newer one, already).
        if waiters
            .get(&self.id)
            .is_some_and(|entry| Arc::ptr_eq(entry, &self.notify))
            && Arc::strong_count(&self.notify) == 2
        {
            waiters.remove(&self.id);
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
