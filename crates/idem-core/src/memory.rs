//! [`MemoryStore`]: records in process memory, for tests and single-process deployments that
//! can afford to forget everything on restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::store::transition::{self, Write};
use crate::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, LeaseToken, Record, RecordId,
    RecordSnapshot, RecordState, Store, StoreError, SystemClock, Timestamp, TransitionOutcome,
};

/// How many independently locked shards the map is split into. A power of two comfortably
/// above the core count keeps two requests from contending on one lock unless they share a
/// key; more shards only cost memory.
const SHARD_COUNT: usize = 64;

/// The most records a [`MemoryStore`] holds unless told otherwise: a day of 10 new keys a
/// second, about 130 MiB of bookkeeping; a client inventing keys cannot grow the process past
/// that.
pub const DEFAULT_MEMORY_MAX_RECORDS: usize = 1_000_000;

/// The most bytes a [`MemoryStore`] holds unless told otherwise (1 GiB): records and their
/// stored responses.
pub const DEFAULT_MEMORY_MAX_BYTES: usize = 1024 * 1024 * 1024;

/// How often, at most, a full store scans every shard for expired records to make room: a
/// store kept full by live records would otherwise scan on every refused begin.
const RECLAIM_INTERVAL_MS: u64 = 1_000;

/// The bookkeeping size of one record besides its response: id, fingerprint, state, map slot.
const RECORD_OVERHEAD: usize = 128;

/// A sharded, in-memory [`Store`]. Cloning it shares the same records.
///
/// Nothing survives the process: use the embedded store where completed records must outlive
/// a restart. Leases and expiry follow the process's clock (the only one there is), or the
/// clock given to [`with_clock`](Self::with_clock).
///
/// It is bounded ([`DEFAULT_MEMORY_MAX_RECORDS`], [`DEFAULT_MEMORY_MAX_BYTES`], or
/// [`with_limits`](Self::with_limits)): once full, expired records are reclaimed, and a begin
/// that still finds no room is refused with [`StoreError::Full`] (the HTTP layer answers 503,
/// nothing executed). Completions are never refused: a response already produced is kept,
/// even if it takes the store over its byte bound. Concurrent begins may overshoot the bounds
/// by at most their number.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shards: Arc<[Mutex<HashMap<RecordId, Record>>]>,
    clock: Arc<dyn Clock>,
    usage: Arc<Usage>,
}

/// What the store holds, kept beside the shards so that a begin checks its bounds without
/// taking every lock.
#[derive(Debug)]
struct Usage {
    records: AtomicUsize,
    bytes: AtomicUsize,
    max_records: usize,
    max_bytes: usize,
    /// When (by the store's clock, in ms) a full store last scanned for expired records.
    last_reclaim: AtomicU64,
}

impl Usage {
    fn is_full(&self) -> bool {
        self.records.load(Ordering::Relaxed) >= self.max_records
            || self.bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    fn account(&self, before: Option<&Record>, after: Option<&Record>) {
        match (before, after) {
            (None, Some(_)) => {
                self.records.fetch_add(1, Ordering::Relaxed);
            }
            (Some(_), None) => {
                self.records.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let (old, new) = (before.map_or(0, record_size), after.map_or(0, record_size));
        if new >= old {
            self.bytes.fetch_add(new - old, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(old - new, Ordering::Relaxed);
        }
    }
}

fn record_size(record: &Record) -> usize {
    RECORD_OVERHEAD
        + match &record.state {
            RecordState::Completed { response, .. } => response.stored_size(),
            RecordState::InFlight { .. } => 0,
        }
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
            usage: Arc::new(Usage {
                records: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                max_records: DEFAULT_MEMORY_MAX_RECORDS,
                max_bytes: DEFAULT_MEMORY_MAX_BYTES,
                last_reclaim: AtomicU64::new(0),
            }),
        }
    }

    /// This store, holding at most `max_records` records and `max_bytes` bytes of stored
    /// responses. Call it before the store is shared: clones made earlier keep the old bounds.
    #[must_use]
    pub fn with_limits(mut self, max_records: usize, max_bytes: usize) -> Self {
        self.usage = Arc::new(Usage {
            records: AtomicUsize::new(self.usage.records.load(Ordering::Relaxed)),
            bytes: AtomicUsize::new(self.usage.bytes.load(Ordering::Relaxed)),
            max_records,
            max_bytes,
            last_reclaim: AtomicU64::new(0),
        });
        self
    }

    /// Approximate bytes of the records held (responses plus a fixed overhead per record).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.usage.bytes.load(Ordering::Relaxed)
    }

    /// Makes room for a new record, or says why there is none. A begin for a key already
    /// held needs no room (it replaces or answers from that record).
    fn make_room(&self, id: &RecordId) -> Result<(), StoreError> {
        if !self.usage.is_full() || self.shard(id).contains_key(id) {
            return Ok(());
        }
        let now = self.clock.now().as_millis();
        let last = self.usage.last_reclaim.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= RECLAIM_INTERVAL_MS
            && self
                .usage
                .last_reclaim
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let reclaimed = self.remove_expired(usize::MAX);
            tracing::debug!(reclaimed, "memory store full: expired records reclaimed");
        }
        if self.usage.is_full() {
            return Err(StoreError::Full(format!(
                "the memory store holds {} records and {} bytes, its bounds are {} records and {} bytes",
                self.usage.records.load(Ordering::Relaxed),
                self.usage.bytes.load(Ordering::Relaxed),
                self.usage.max_records,
                self.usage.max_bytes,
            )));
        }
        Ok(())
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
                self.usage.account(shard.get(&id), Some(&record));
                shard.insert(id, record);
            }
            Write::Delete => {
                let removed = shard.remove(&id);
                self.usage.account(removed.as_ref(), None);
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
        self.make_room(&request.id)?;
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
        Ok(self.remove_expired(limit))
    }
}

impl MemoryStore {
    /// Removes up to `limit` expired records, one shard lock at a time.
    fn remove_expired(&self, limit: usize) -> usize {
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
                let removed = shard.remove(id);
                self.usage.account(removed.as_ref(), None);
            }
            swept += expired.len();
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{
        Fingerprint, IdempotencyKey, KeyPolicy, ManualClock, OnLapse, Scope, StoredResponse,
    };

    fn id(n: usize) -> RecordId {
        let key = IdempotencyKey::parse(format!("key-{n}").as_bytes(), KeyPolicy::Any)
            .expect("a valid key");
        RecordId::new(&Scope::anonymous(), &key)
    }

    fn begin(id: RecordId, ttl: Duration) -> BeginRequest {
        BeginRequest {
            id,
            fingerprint: Fingerprint::builder().method("POST").finish(),
            token: LeaseToken::random(),
            lease: Duration::from_secs(30),
            ttl,
            on_lapse: OnLapse::ReportUnknown,
        }
    }

    #[tokio::test]
    async fn a_full_store_refuses_new_keys_but_answers_and_completes_held_ones() {
        let store = MemoryStore::new().with_limits(2, usize::MAX);
        let (first, second) = (
            begin(id(1), Duration::from_secs(60)),
            begin(id(2), Duration::from_secs(60)),
        );
        let token = first.token;
        assert!(matches!(
            store.begin(first.clone()).await,
            Ok(BeginOutcome::Acquired)
        ));
        assert!(matches!(
            store.begin(second).await,
            Ok(BeginOutcome::Acquired)
        ));
        let refused = store.begin(begin(id(3), Duration::from_secs(60))).await;
        assert!(
            matches!(&refused, Err(StoreError::Full(reason)) if reason.contains("2 records")),
            "{refused:?}"
        );
        assert_eq!(store.len(), 2, "a refused begin writes nothing");
        // A held key still answers, and its completion is kept even with the store full.
        assert!(matches!(
            store.begin(begin(id(1), Duration::from_secs(60))).await,
            Ok(BeginOutcome::InFlight { .. })
        ));
        let response = StoredResponse {
            status: 201,
            headers: Vec::new(),
            body: Some(Bytes::from_static(b"done")),
        };
        let completed = store
            .complete(CompleteRequest {
                id: id(1),
                token,
                response,
                ttl: Duration::from_secs(60),
            })
            .await;
        assert!(matches!(completed, Ok(TransitionOutcome::Applied)));
    }

    #[tokio::test]
    async fn expired_records_make_room_and_the_byte_bound_counts_responses() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let store =
            MemoryStore::with_clock(clock.clone()).with_limits(usize::MAX, 4 * RECORD_OVERHEAD);
        let first = begin(id(1), Duration::from_secs(1));
        let token = first.token;
        assert!(matches!(
            store.begin(first).await,
            Ok(BeginOutcome::Acquired)
        ));
        let body = Bytes::from(vec![b'x'; 3 * RECORD_OVERHEAD]);
        let response = StoredResponse {
            status: 200,
            headers: Vec::new(),
            body: Some(body),
        };
        store
            .complete(CompleteRequest {
                id: id(1),
                token,
                response,
                ttl: Duration::from_secs(1),
            })
            .await
            .expect("completes");
        assert_eq!(store.bytes(), 4 * RECORD_OVERHEAD);
        assert!(matches!(
            store.begin(begin(id(2), Duration::from_secs(1))).await,
            Err(StoreError::Full(_))
        ));
        clock.advance(Duration::from_secs(2));
        assert!(
            matches!(
                store.begin(begin(id(2), Duration::from_secs(1))).await,
                Ok(BeginOutcome::Acquired)
            ),
            "the expired record was reclaimed"
        );
        assert_eq!((store.len(), store.bytes()), (1, RECORD_OVERHEAD));
    }
}
