//! [`ReplayCache`]: the completed records a network store answered with, kept in this process
//! for a few seconds, so that retries of one key (a client retrying in a loop, a batch resent
//! whole) are replayed without a round trip to the store.
//!
//! **Why it is safe.** A completed record never changes: no transition applies to it until it
//! expires (`Store::complete` is final, resolutions apply to in-flight records only), so a
//! cached completion is the store's answer for as long as the record lives. The cache answers
//! only a request with the same fingerprint for the same record id (which folds in the
//! caller's scope), exactly what the store would have replayed; anything else asks the store.
//!
//! **What it can contradict, for at most its maximum age** (and never longer than the
//! request's TTL): a record deleted outside idem (a row deleted by hand, a Redis `FLUSHDB` or
//! eviction) or one that expired meanwhile. Within that window a retry on this instance still
//! replays, where the store would have executed it again (for the expired or deleted record)
//! or, if the key was reused meanwhile by another request, refused it as a mismatch. An
//! operator's resolution through this engine (`Engine::resolve`) may likewise find a cached
//! completion and answer that the key is not in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use tokio::time::Instant;

use super::{
    BeginOutcome, BeginRequest, CompleteRequest, DurabilityRisk, RecordSnapshot, Store, StoreError,
    TransitionOutcome, Watch,
};
use crate::{Fingerprint, LeaseToken, RecordId, StoredResponse};

/// How long a cached completion is answered from by default: long enough for a client's quick
/// retries, short enough that a record deleted outside idem stops replaying within seconds.
pub const DEFAULT_REPLAY_CACHE_MAX_AGE: Duration = Duration::from_secs(5);

/// The longest maximum age the gateway accepts: past a minute, "a record deleted or expired
/// is still replayed for a while" stops being a short, documented window.
pub const MAX_REPLAY_CACHE_AGE: Duration = Duration::from_secs(60);

/// The most bytes of responses the cache holds by default (least-recently-hit evicted first).
pub const DEFAULT_REPLAY_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// What an entry costs beyond its response's bytes: its id, fingerprint, times and the cache's
/// own bookkeeping, rounded up.
const ENTRY_OVERHEAD: u64 = 160;

/// A store whose replays are answered from this process for up to a maximum age; every other
/// operation goes to the inner store. See the module documentation for what that may
/// contradict.
pub struct ReplayCache<S> {
    store: S,
    max_age: Duration,
    replays: Cache<RecordId, Arc<CachedReplay>, ByBytes>,
}

/// A completion the store answered with, to the request with this fingerprint.
struct CachedReplay {
    fingerprint: Fingerprint,
    response: StoredResponse,
    /// When the entry stops answering: the cache's maximum age after it was stored, or the
    /// request's TTL if shorter (a record kept a second must not be replayed for five).
    fresh_until: Instant,
    weight: u64,
}

/// Weighs an entry by the bytes it holds.
#[derive(Clone)]
struct ByBytes;

impl Weighter<RecordId, Arc<CachedReplay>> for ByBytes {
    fn weight(&self, _: &RecordId, replay: &Arc<CachedReplay>) -> u64 {
        replay.weight
    }
}

impl<S> ReplayCache<S> {
    /// Caches `store`'s replays for up to `max_age`, holding at most `max_bytes` of them.
    pub fn new(store: S, max_age: Duration, max_bytes: u64) -> Self {
        let estimated_entries = usize::try_from(max_bytes / (ENTRY_OVERHEAD + 512))
            .unwrap_or(usize::MAX)
            .max(1);
        Self {
            store,
            max_age,
            replays: Cache::with_weighter(estimated_entries, max_bytes, ByBytes),
        }
    }

    /// The cached response to `request`, if one is young enough and was answered to the same
    /// request.
    fn cached(&self, request: &BeginRequest) -> Option<StoredResponse> {
        let replay = self.replays.get(&request.id)?;
        (Instant::now() < replay.fresh_until && replay.fingerprint == request.fingerprint)
            .then(|| replay.response.clone())
    }
}

impl<S: Store> Store for ReplayCache<S> {
    async fn begin(&self, request: BeginRequest) -> Result<BeginOutcome, StoreError> {
        if let Some(response) = self.cached(&request) {
            metrics::counter!("idem_replay_cache_hits_total").increment(1);
            return Ok(BeginOutcome::Replay(response));
        }
        let (id, fingerprint) = (request.id, request.fingerprint);
        let fresh_for = self.max_age.min(request.ttl);
        let outcome = self.store.begin(request).await?;
        if let BeginOutcome::Replay(response) = &outcome {
            let weight = ENTRY_OVERHEAD + response_bytes(response);
            self.replays.insert(
                id,
                Arc::new(CachedReplay {
                    fingerprint,
                    response: response.clone(),
                    fresh_until: Instant::now() + fresh_for,
                    weight,
                }),
            );
        }
        Ok(outcome)
    }

    fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send {
        self.store.renew(id, token, lease)
    }

    fn complete(
        &self,
        request: CompleteRequest,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send {
        self.store.complete(request)
    }

    fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send {
        self.store.release(id, token)
    }

    /// Always the store's: status reads (waiters, operators) see the record as it is.
    fn get(
        &self,
        id: RecordId,
    ) -> impl Future<Output = Result<Option<RecordSnapshot>, StoreError>> + Send {
        self.store.get(id)
    }

    fn sweep_expired(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        self.store.sweep_expired(limit)
    }

    fn durability_risks(
        &self,
    ) -> impl Future<Output = Result<Vec<DurabilityRisk>, StoreError>> + Send {
        self.store.durability_risks()
    }

    fn watch(&self, id: RecordId) -> impl Future<Output = Result<Watch, StoreError>> + Send {
        self.store.watch(id)
    }
}

/// The bytes a response holds: its body and its header lines.
fn response_bytes(response: &StoredResponse) -> u64 {
    let headers: usize = response
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    let body = response.body.as_ref().map_or(0, bytes::Bytes::len);
    u64::try_from(headers + body).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Clock, ManualClock, MemoryStore, OnLapse, SystemClock};

    fn request(id: RecordId, fingerprint: &str) -> BeginRequest {
        BeginRequest {
            id,
            fingerprint: Fingerprint::builder()
                .part("test", fingerprint.as_bytes())
                .finish(),
            token: LeaseToken::random(),
            lease: Duration::from_secs(30),
            ttl: Duration::from_secs(3600),
            on_lapse: OnLapse::ReportUnknown,
        }
    }

    fn response(body: &'static str) -> StoredResponse {
        StoredResponse {
            status: 201,
            headers: vec![(
                "content-type".into(),
                bytes::Bytes::from_static(b"text/plain"),
            )],
            body: Some(bytes::Bytes::from_static(body.as_bytes())),
        }
    }

    /// A completed record (kept an hour) on the memory store behind a cache; answers the
    /// store's clock, the cache and the first request.
    async fn completed(max_age: Duration) -> (ManualClock, ReplayCache<MemoryStore>, BeginRequest) {
        let clock = ManualClock::new(SystemClock.now());
        let store = MemoryStore::with_clock(clock.clone());
        let cache = ReplayCache::new(store, max_age, DEFAULT_REPLAY_CACHE_BYTES);
        let first = request(RecordId::from_bytes([7; 32]), "charge 10");
        assert_eq!(
            cache.begin(first.clone()).await.unwrap(),
            BeginOutcome::Acquired
        );
        let completion = CompleteRequest {
            id: first.id,
            token: first.token,
            response: response("charged"),
            ttl: Duration::from_secs(3600),
        };
        assert_eq!(
            cache.complete(completion).await.unwrap(),
            TransitionOutcome::Applied
        );
        (clock, cache, first)
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_is_answered_from_the_cache_until_its_max_age() {
        let (clock, cache, first) = completed(Duration::from_secs(5)).await;
        let retry = request(first.id, "charge 10");
        assert_eq!(
            cache.begin(retry.clone()).await.unwrap(),
            BeginOutcome::Replay(response("charged")),
            "the first replay comes from the store"
        );
        // The record expires in the store: the store would now execute the request again.
        clock.advance(Duration::from_secs(7200));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            cache.begin(retry.clone()).await.unwrap(),
            BeginOutcome::Replay(response("charged")),
            "within its max age the cache answers, whatever the store holds"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            cache.begin(retry).await.unwrap(),
            BeginOutcome::Acquired,
            "past its max age the store decides again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_is_never_fresh_longer_than_the_requests_ttl() {
        let (_clock, cache, first) = completed(Duration::from_secs(60)).await;
        let short = BeginRequest {
            ttl: Duration::from_secs(2),
            ..request(first.id, "charge 10")
        };
        cache.begin(short.clone()).await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        let hits = cache.cached(&short);
        assert_eq!(hits, None, "kept a 2 s TTL, not the cache's 60 s");
    }

    #[tokio::test]
    async fn another_request_with_a_cached_key_is_decided_by_the_store() {
        let (_clock, cache, first) = completed(Duration::from_secs(60)).await;
        let retry = request(first.id, "charge 10");
        cache.begin(retry).await.unwrap();
        assert_eq!(
            cache.begin(request(first.id, "charge 99")).await.unwrap(),
            BeginOutcome::Mismatch,
            "a cached completion is only answered to the request it was answered to"
        );
    }

    #[tokio::test]
    async fn in_flight_answers_are_never_cached() {
        let store = MemoryStore::new();
        let cache = ReplayCache::new(store.clone(), Duration::from_secs(60), 1 << 20);
        let first = request(RecordId::from_bytes([9; 32]), "slow");
        assert_eq!(
            cache.begin(first.clone()).await.unwrap(),
            BeginOutcome::Acquired
        );
        let duplicate = request(first.id, "slow");
        assert!(matches!(
            cache.begin(duplicate.clone()).await.unwrap(),
            BeginOutcome::InFlight { .. }
        ));
        assert_eq!(
            store.release(first.id, first.token).await.unwrap(),
            TransitionOutcome::Applied
        );
        assert_eq!(
            cache.begin(duplicate).await.unwrap(),
            BeginOutcome::Acquired,
            "a released key executes"
        );
    }

    #[test]
    fn an_entry_weighs_its_bytes() {
        assert_eq!(response_bytes(&response("charged")), 12 + 10 + 7);
    }
}
