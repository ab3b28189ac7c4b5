//! [`MemoryStore`]: records in process memory, for tests and single-process deployments that
//! can afford to forget everything on restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use crate::store::transition::{self, Write};
use crate::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, LeaseToken, Record, RecordId,
    RecordSnapshot, Store, StoreError, SystemClock, Timestamp, TransitionOutcome,
};

/// How many independently locked shards the map is split into. A power of two comfortably
/// above the core count keeps two requests from contending on one lock unless they share a
/// key; more shards only cost memory.
const SHARD_COUNT: usize = 64;

/// A sharded, in-memory [`Store`]. Cloning it shares the same records.
///
/// Nothing survives the process: use the embedded store where completed records must outlive
/// a restart. Leases and expiry follow the process's clock (the only one there is), or the
/// clock given to [`with_clock`](Self::with_clock).
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shards: Arc<[Mutex<HashMap<RecordId, Record>>]>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    #[must_use]
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// An empty store that reads time from `clock` (a [`ManualClock`](crate::ManualClock) in
    /// tests of leases and expiry).
    #[must_use]
    pub fn with_clock(clock: impl Clock) -> Self {
        Self {
            shards: (0..SHARD_COUNT)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            clock: Arc::new(clock),
        }
    }

    /// How many records are held, expired ones included until they are swept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Whether no record is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, id: &RecordId) -> MutexGuard<'_, HashMap<RecordId, Record>> {
        // The id is a SHA-256, so any of its bytes is uniformly distributed.
        lock(&self.shards[usize::from(id.as_bytes()[0]) % SHARD_COUNT])
    }

    fn apply<T>(
        &self,
        id: RecordId,
        decide: impl FnOnce(Option<&Record>, Timestamp) -> (T, Write),
    ) -> T {
        let mut shard = self.shard(&id);
        let (outcome, write) = decide(shard.get(&id), self.clock.now());
        match write {
            Write::Nothing => {}
            Write::Put(record) => {
                shard.insert(id, record);
            }
            Write::Delete => {
                shard.remove(&id);
            }
        }
        outcome
    }
}

/// Locks a shard. A panic while a shard was locked cannot leave a record half-written (each
/// transition is one `insert` or `remove`), so a poisoned lock is safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Store for MemoryStore {
    async fn begin(&self, request: BeginRequest) -> Result<BeginOutcome, StoreError> {
        Ok(self.apply(request.id, |current, now| {
            transition::begin(current, &request, now)
        }))
    }

    async fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<TransitionOutcome, StoreError> {
        Ok(self.apply(id, |current, now| {
            transition::renew(current, token, lease, now)
        }))
    }

    async fn complete(&self, request: CompleteRequest) -> Result<TransitionOutcome, StoreError> {
        Ok(self.apply(request.id, |current, now| {
            transition::complete(current, &request, now)
        }))
    }

    async fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> Result<TransitionOutcome, StoreError> {
        Ok(self.apply(id, |current, now| transition::release(current, token, now)))
    }

    async fn get(&self, id: RecordId) -> Result<Option<RecordSnapshot>, StoreError> {
        let now = self.clock.now();
        Ok(
            transition::live(self.shard(&id).get(&id), now).map(|record| RecordSnapshot {
                record: record.clone(),
                now,
            }),
        )
    }

    async fn sweep_expired(&self, limit: usize) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut swept = 0;
        for shard in self.shards.iter() {
            if swept >= limit {
                break;
            }
            // One shard at a time, so a sweep holds any one lock only briefly.
            let mut shard = lock(shard);
            let expired: Vec<RecordId> = shard
                .iter()
                .filter(|(_, record)| record.is_expired(now))
                .map(|(id, _)| *id)
                .take(limit - swept)
                .collect();
            for id in &expired {
                shard.remove(id);
            }
            swept += expired.len();
        }
        Ok(swept)
    }
}
