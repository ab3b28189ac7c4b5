//! Checks of the engine over two instances of one shared store (two connections, as two
//! processes would hold): what a store that announces finishes gives waiting duplicates.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{
    Begin, BeginOutcome, BeginRequest, CompleteRequest, Engine, Fingerprint, Finish,
    IdempotencyKey, KeyPolicy, LeaseToken, RecordId, RecordSnapshot, Scope, Store, StoreError,
    TransitionOutcome, Watch,
};

/// How long the waiting duplicate may wait in all: far past the engine's fallback re-read.
const WAIT: Duration = Duration::from_secs(30);
/// How long the owner runs once the duplicate watches, before it completes. A duplicate
/// polling on the engine's backoff (5 ms doubling to 200 ms) reads the record four times
/// meanwhile; one woken by the announcement begins again without reading it, and reads it
/// once if the machine stalls for a whole fallback period (a second).
const OWNER_RUNS: Duration = Duration::from_millis(200);
const MOST_READS_WHEN_ANNOUNCED: usize = 1;
/// How long the duplicate may take to start watching.
const WATCH_WITHIN: Duration = Duration::from_secs(10);
/// A duplicate whose announcement was lost is answered by its fallback re-read, a second
/// after it watched: 800 ms after the completion. One woken answers within milliseconds;
/// this leaves room for a loaded machine.
const WOKEN_WITHIN: Duration = Duration::from_millis(500);

/// A duplicate waiting on one instance for an execution owned by another is answered the
/// stored response when the owner completes, woken by the store's announcement rather than
/// by re-reading the record on a backoff.
///
/// # Panics
/// The duplicate is not replayed, or it polled the record, or it was answered only by the
/// fallback re-read (the announcement was lost).
pub async fn a_waiter_on_another_instance_is_woken_by_the_announcement<S: Store>(
    owner_store: S,
    waiter_store: S,
) {
    let owner = Engine::new(owner_store);
    let waiter_store = Instrumented::new(waiter_store);
    let (reads, watches) = (waiter_store.reads(), Arc::clone(&waiter_store.watches));
    let waiter = Engine::builder(waiter_store)
        .wait_for_in_flight(WAIT)
        .build();
    let key = IdempotencyKey::parse(
        format!("announced-{}", rand::random::<u64>()).as_bytes(),
        KeyPolicy::Any,
    )
    .expect("a valid key");
    let id = RecordId::new(&Scope::anonymous(), &key);
    let fingerprint = Fingerprint::builder()
        .method("POST")
        .path_and_query("/charges")
        .finish();
    let Begin::Acquired(execution) = owner.begin(id, fingerprint).await.expect("begin") else {
        panic!("the first request executes");
    };
    let duplicate = tokio::spawn(async move {
        let answer = waiter.begin(id, fingerprint).await.expect("begin");
        (answer, Instant::now())
    });
    // Completing before the duplicate even asked would test nothing.
    let watching = async {
        while watches.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WATCH_WITHIN, watching)
        .await
        .expect("the duplicate waits and watches the record");
    tokio::time::sleep(OWNER_RUNS).await;
    let response = crate::StoredResponse {
        status: 201,
        headers: Vec::new(),
        body: Some(Bytes::from_static(b"charged")),
    };
    let finish = execution.complete(response.clone()).await;
    assert!(matches!(finish, Finish::Done), "completed: {finish:?}");
    let completed_at = Instant::now();
    let (answer, answered_at) = duplicate.await.expect("the duplicate's task");
    let Begin::Replay(replayed) = answer else {
        panic!("the duplicate replays the owner's response");
    };
    assert_eq!(replayed, response);
    let reads = reads.load(Ordering::Relaxed);
    assert!(
        reads <= MOST_READS_WHEN_ANNOUNCED,
        "the duplicate read the record {reads} times: it polled instead of being woken"
    );
    let late = answered_at.saturating_duration_since(completed_at);
    assert!(
        late < WOKEN_WITHIN,
        "answered {late:?} after the completion: by the fallback re-read, not the announcement"
    );
}

/// A store seen through: it counts the records read through it (`get`), and may hide the
/// store's announcements from the engine, which then waits as on a store without them (the
/// baseline the wake benchmark measures beside them).
pub struct Instrumented<S> {
    store: S,
    reads: Arc<AtomicUsize>,
    watches: Arc<AtomicUsize>,
    announce: bool,
}

impl<S> Instrumented<S> {
    /// `store`, announcing as it does.
    pub fn new(store: S) -> Self {
        Self {
            store,
            reads: Arc::default(),
            watches: Arc::default(),
            announce: true,
        }
    }

    /// `store`, its announcements hidden: every watch answers [`Watch::Unsupported`].
    pub fn without_announcements(store: S) -> Self {
        Self {
            announce: false,
            ..Self::new(store)
        }
    }

    /// The count of records read so far, live.
    #[must_use]
    pub fn reads(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.reads)
    }
}

impl<S: Store> Store for Instrumented<S> {
    fn begin(
        &self,
        request: BeginRequest,
    ) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send {
        self.store.begin(request)
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
    fn get(
        &self,
        id: RecordId,
    ) -> impl Future<Output = Result<Option<RecordSnapshot>, StoreError>> + Send {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.store.get(id)
    }
    fn sweep_expired(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        self.store.sweep_expired(limit)
    }
    async fn watch(&self, id: RecordId) -> Result<Watch, StoreError> {
        self.watches.fetch_add(1, Ordering::Relaxed);
        if self.announce {
            self.store.watch(id).await
        } else {
            Ok(Watch::Unsupported)
        }
    }
}
