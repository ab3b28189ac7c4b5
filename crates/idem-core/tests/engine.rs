//! The engine's protocol over the memory store: leases and their renewal, lapsed owners,
//! finishing through store faults, operator resolution, waiting, expiry and sweeping.
//!
//! Pure expiry logic runs on a [`ManualClock`] read by the store. Renewal runs on tokio
//! timers, which a manual clock does not drive: tests of renewal use real, short leases.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idem_core::{
    Begin, BeginOptions, CompleteRequest, Engine, Fingerprint, Finish, IdempotencyKey, KeyPolicy,
    LeaseToken, ManualClock, MemoryStore, OnLapse, RecordId, RecordSnapshot, RecordState,
    Resolution, Resolved, Scope, Store, StoreError, StoredResponse, Timestamp, TransitionOutcome,
};

/// A lease short enough for a test to outlive several of them.
const SHORT_LEASE: Duration = Duration::from_millis(150);
const HOUR: Duration = Duration::from_secs(3600);

fn id(key: &str) -> RecordId {
    RecordId::new(
        &Scope::anonymous(),
        &IdempotencyKey::parse(key.as_bytes(), KeyPolicy::Any).unwrap(),
    )
}

fn request(body: &str) -> Fingerprint {
    Fingerprint::builder()
        .method("POST")
        .path_and_query("/x")
        .body(body.as_bytes())
        .finish()
}

fn response(body: &'static str) -> StoredResponse {
    StoredResponse {
        status: 200,
        headers: vec![],
        body: Some(body.into()),
    }
}

fn clock() -> ManualClock {
    ManualClock::new(Timestamp::from_millis(1_000_000))
}

fn take_over<S: Store>(engine: &Engine<S>) -> BeginOptions {
    BeginOptions {
        on_lapse: OnLapse::TakeOver,
        ..engine.options()
    }
}

/// Polls `condition` every 5 ms for up to five seconds.
async fn eventually<F: Future<Output = bool>>(mut condition: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

async fn is_completed<S: Store>(engine: &Engine<S>, id: RecordId) -> bool {
    matches!(
        engine.status(id).await.unwrap(),
        Some(RecordSnapshot {
            record: idem_core::Record {
                state: RecordState::Completed { .. },
                ..
            },
            ..
        })
    )
}

#[tokio::test]
async fn in_flight_reports_the_remaining_lease() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .lease(Duration::from_secs(30))
        .build();
    let Begin::Acquired(_execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    clock.advance(Duration::from_secs(10));
    match engine.begin(id("k"), request("a")).await.unwrap() {
        Begin::InFlight { retry_after } => assert_eq!(retry_after, Duration::from_secs(20)),
        other => panic!("expected in flight, got {other:?}"),
    }
    assert!(matches!(
        engine.begin(id("k"), request("b")).await.unwrap(),
        Begin::Mismatch { .. }
    ));
}

#[tokio::test]
async fn lapsed_lease_is_an_unknown_outcome_and_its_owner_can_still_complete() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .lease(Duration::from_secs(5))
        .build();
    let Begin::Acquired(first) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    clock.advance(Duration::from_secs(6));
    assert!(matches!(
        engine.begin(id("k"), request("a")).await.unwrap(),
        Begin::OutcomeUnknown
    ));
    assert!(matches!(
        engine.begin(id("k"), request("b")).await.unwrap(),
        Begin::Mismatch { .. }
    ));
    assert!(matches!(
        first.complete(response("late")).await,
        Finish::Done
    ));
    assert!(
        matches!(engine.begin(id("k"), request("a")).await.unwrap(), Begin::Replay(r) if r == response("late"))
    );
}

#[tokio::test]
async fn lapsed_lease_is_taken_over_when_allowed_and_the_first_owner_is_fenced() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .lease(Duration::from_secs(5))
        .build();
    let Begin::Acquired(first) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    clock.advance(Duration::from_secs(6));
    let Begin::Acquired(second) = engine
        .begin_with(id("k"), request("a"), take_over(&engine))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_ne!(first.token(), second.token());
    assert!(matches!(
        first.complete(response("stale")).await,
        Finish::LeaseLost
    ));
    assert!(matches!(
        second.complete(response("fresh")).await,
        Finish::Done
    ));
    assert!(
        matches!(engine.begin(id("k"), request("a")).await.unwrap(), Begin::Replay(r) if r == response("fresh"))
    );
}

#[tokio::test]
async fn the_engine_default_may_take_lapsed_leases_over() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .lease(Duration::from_secs(5))
        .on_lapse(OnLapse::TakeOver)
        .build();
    let Begin::Acquired(first) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let _ = first.detach();
    clock.advance(Duration::from_secs(5));
    assert!(matches!(
        engine.begin(id("k"), request("a")).await.unwrap(),
        Begin::Acquired(_)
    ));
}

#[tokio::test]
async fn completed_records_expire_after_their_ttl() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .ttl(Duration::from_secs(60))
        .build();
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    assert!(matches!(
        execution.complete(response("first")).await,
        Finish::Done
    ));
    clock.advance(Duration::from_secs(59));
    assert!(matches!(
        engine.begin(id("k"), request("a")).await.unwrap(),
        Begin::Replay(_)
    ));
    clock.advance(Duration::from_secs(1));
    assert_eq!(engine.status(id("k")).await.unwrap(), None);
    assert!(matches!(
        engine.begin(id("k"), request("other")).await.unwrap(),
        Begin::Acquired(_)
    ));
}

#[tokio::test]
async fn per_record_ttl_overrides_the_default() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone())).build();
    let options = BeginOptions {
        ttl: HOUR,
        ..engine.options()
    };
    let Begin::Acquired(execution) = engine
        .begin_with(id("k"), request("a"), options)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(execution.ttl(), HOUR);
    assert!(matches!(
        execution.complete(response("r")).await,
        Finish::Done
    ));
    clock.advance(HOUR);
    assert_eq!(
        engine.status(id("k")).await.unwrap(),
        None,
        "an hour, not the default day"
    );
}

/// An execution running for many leases keeps its key: its lease is renewed, so a duplicate
/// is told it is in flight, never that its outcome is unknown, and never takes it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_execution_keeps_its_key() {
    let engine = Engine::builder(MemoryStore::new())
        .lease(SHORT_LEASE)
        .build();
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let started = Instant::now();
    let mut duplicates = 0;
    while started.elapsed() < SHORT_LEASE * 8 {
        for options in [engine.options(), take_over(&engine)] {
            match engine
                .begin_with(id("k"), request("a"), options)
                .await
                .unwrap()
            {
                Begin::InFlight { retry_after } => assert!(retry_after <= SHORT_LEASE),
                other => panic!(
                    "a duplicate of a running execution got {other:?} after {:?}",
                    started.elapsed()
                ),
            }
            duplicates += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(duplicates > 20);
    assert!(!execution.lease_lost());
    assert!(matches!(
        execution.complete(response("done")).await,
        Finish::Done
    ));
    assert!(
        matches!(engine.begin(id("k"), request("a")).await.unwrap(), Begin::Replay(r) if r == response("done"))
    );
}

/// An owner that vanished (its renewal stopped, nothing settled: what a crash leaves) lets its
/// lease lapse: the key is then reported as of unknown outcome, or taken over when allowed,
/// which fences the vanished owner off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_owner_leaves_an_unknown_outcome() {
    let engine = Engine::builder(MemoryStore::new())
        .lease(SHORT_LEASE)
        .build();
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let (record, token) = execution.detach();
    assert!(matches!(
        engine.begin(id("k"), request("a")).await.unwrap(),
        Begin::InFlight { .. }
    ));
    tokio::time::sleep(SHORT_LEASE * 3).await;
    assert!(matches!(
        engine.begin(record, request("a")).await.unwrap(),
        Begin::OutcomeUnknown
    ));
    let snapshot = engine.status(record).await.unwrap().unwrap();
    assert_eq!(snapshot.lease_left(), Some(Duration::ZERO));
    assert!(
        matches!(snapshot.record.state, RecordState::InFlight { token: held, .. } if held == token)
    );

    let Begin::Acquired(successor) = engine
        .begin_with(record, request("a"), take_over(&engine))
        .await
        .unwrap()
    else {
        panic!("a lapsed lease is taken over when allowed")
    };
    assert!(matches!(
        engine
            .resume(record, token, engine.ttl())
            .complete(response("ghost"))
            .await,
        Finish::LeaseLost
    ));
    assert!(matches!(
        successor.complete(response("second")).await,
        Finish::Done
    ));
    assert!(
        matches!(engine.begin(record, request("a")).await.unwrap(), Begin::Replay(r) if r == response("second"))
    );
}

/// A store that fails the first `failures` completions, and, with `lose_begin_answers`,
/// applies every begin then loses its answer; it forwards everything else.
#[derive(Debug, Clone)]
struct FaultyStore {
    store: MemoryStore,
    failures: usize,
    completions: Arc<AtomicUsize>,
    lose_begin_answers: bool,
}

impl Store for FaultyStore {
    async fn begin(
        &self,
        request: idem_core::BeginRequest,
    ) -> Result<idem_core::BeginOutcome, StoreError> {
        let outcome = self.store.begin(request).await?;
        if self.lose_begin_answers {
            return Err(StoreError::unavailable("the answer was lost"));
        }
        Ok(outcome)
    }
    async fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<TransitionOutcome, StoreError> {
        self.store.renew(id, token, lease).await
    }
    async fn complete(&self, request: CompleteRequest) -> Result<TransitionOutcome, StoreError> {
        if self.completions.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(StoreError::unavailable("injected fault"));
        }
        self.store.complete(request).await
    }
    async fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> Result<TransitionOutcome, StoreError> {
        self.store.release(id, token).await
    }
    async fn get(&self, id: RecordId) -> Result<Option<RecordSnapshot>, StoreError> {
        self.store.get(id).await
    }
    async fn sweep_expired(&self, limit: usize) -> Result<usize, StoreError> {
        self.store.sweep_expired(limit).await
    }
}

/// A completion the store fails is retried in the background, with the lease renewed
/// meanwhile, until it lands: in the meantime a duplicate is told the request is in flight,
/// and never acquires the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_completion_lands_in_the_background() {
    let completions = Arc::new(AtomicUsize::new(0));
    let store = FaultyStore {
        lose_begin_answers: false,
        store: MemoryStore::new(),
        // Retried after 0, 50, 100, 200 and 400 ms: several leases.
        failures: 5,
        completions: Arc::clone(&completions),
    };
    let engine = Engine::builder(store).lease(SHORT_LEASE).build();
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    assert!(matches!(
        execution.complete(response("late")).await,
        Finish::Retrying(StoreError::Unavailable(_))
    ));
    let started = Instant::now();
    let mut in_flight = 0;
    loop {
        match engine
            .begin_with(id("k"), request("a"), take_over(&engine))
            .await
            .unwrap()
        {
            Begin::InFlight { .. } => in_flight += 1,
            Begin::Replay(replayed) => {
                assert_eq!(replayed, response("late"));
                break;
            }
            other => panic!(
                "while the completion is retried a duplicate got {other:?} after {:?}",
                started.elapsed()
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the completion never landed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(in_flight > 0);
    assert_eq!(completions.load(Ordering::SeqCst), 6);
    assert!(
        started.elapsed() > SHORT_LEASE * 2,
        "the retries outlived several leases"
    );
}

/// An operator may not resolve a key whose owner is alive; once its lease lapsed, the
/// resolution applies.
#[tokio::test]
async fn resolve_refuses_a_live_lease_and_applies_on_a_lapsed_one() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .lease(Duration::from_secs(30))
        // A grace of one lease (the default adds the 15 minutes a settlement may retry).
        .resolve_after(Duration::from_secs(30))
        .build();
    assert_eq!(
        engine
            .resolve(id("absent"), Resolution::Release)
            .await
            .unwrap(),
        Resolved::NotInFlight(None)
    );

    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    // Live: the lease left, plus a whole lease of grace after it lapses.
    assert_eq!(
        engine.resolve(id("k"), Resolution::Release).await.unwrap(),
        Resolved::StillRunning {
            lease_left: Duration::from_secs(60)
        }
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        engine
            .resolve(id("k"), Resolution::Complete(response("operator")))
            .await
            .unwrap(),
        Resolved::StillRunning {
            lease_left: Duration::from_secs(50)
        }
    );
    let _ = execution.detach();
    // Lapsed less than a lease ago: its owner may only be cut off from the store.
    clock.advance(Duration::from_secs(40));
    assert_eq!(
        engine.resolve(id("k"), Resolution::Release).await.unwrap(),
        Resolved::StillRunning {
            lease_left: Duration::from_secs(10)
        }
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        engine
            .resolve(id("k"), Resolution::Complete(response("operator")))
            .await
            .unwrap(),
        Resolved::Applied
    );
    assert!(
        matches!(engine.begin(id("k"), request("a")).await.unwrap(), Begin::Replay(r) if r == response("operator"))
    );
    assert!(matches!(
        engine.resolve(id("k"), Resolution::Release).await.unwrap(),
        Resolved::NotInFlight(Some(_))
    ));

    let Begin::Acquired(execution) = engine.begin(id("j"), request("a")).await.unwrap() else {
        panic!()
    };
    let _ = execution.detach();
    clock.advance(Duration::from_secs(31));
    assert!(matches!(
        engine.begin(id("j"), request("a")).await.unwrap(),
        Begin::OutcomeUnknown
    ));
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        engine.resolve(id("j"), Resolution::Release).await.unwrap(),
        Resolved::Applied
    );
    assert_eq!(engine.status(id("j")).await.unwrap(), None);
    assert!(matches!(
        engine.begin(id("j"), request("a")).await.unwrap(),
        Begin::Acquired(_)
    ));
}

/// A two-phase flow: the execution is handed to a client by its token, renewed by it, and
/// finished by resuming it.
#[tokio::test]
async fn a_detached_execution_is_renewed_and_resumed_by_its_token() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .lease(Duration::from_secs(30))
        .build();
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let (record, token) = execution.detach();
    clock.advance(Duration::from_secs(20));
    assert_eq!(
        engine.renew(record, token).await.unwrap(),
        TransitionOutcome::Applied
    );
    assert_eq!(
        engine.renew(record, LeaseToken::random()).await.unwrap(),
        TransitionOutcome::StaleLease
    );
    clock.advance(Duration::from_secs(20));
    match engine.begin(record, request("a")).await.unwrap() {
        Begin::InFlight { retry_after } => assert_eq!(retry_after, Duration::from_secs(10)),
        other => panic!("the renewed lease is live, got {other:?}"),
    }
    assert!(matches!(
        engine
            .resume(record, LeaseToken::random(), engine.ttl())
            .complete(response("forged"))
            .await,
        Finish::LeaseLost
    ));
    assert!(matches!(
        engine
            .resume(record, token, engine.ttl())
            .complete(response("two-phase"))
            .await,
        Finish::Done
    ));
    assert!(
        matches!(engine.begin(record, request("a")).await.unwrap(), Begin::Replay(r) if r == response("two-phase"))
    );
}

/// A running execution whose key was taken over notices it at its next renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_execution_notices_at_its_next_renewal() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .lease(Duration::from_millis(300))
        .build();
    let Begin::Acquired(first) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    // The store's clock jumps past the lease before the first renewal (100 ms of real time).
    clock.advance(Duration::from_secs(1));
    let Begin::Acquired(second) = engine
        .begin_with(id("k"), request("a"), take_over(&engine))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(eventually(|| async { first.lease_lost() }).await);
    assert!(!second.lease_lost());
    assert!(matches!(
        first.complete(response("stale")).await,
        Finish::LeaseLost
    ));
    assert!(matches!(
        second.complete(response("fresh")).await,
        Finish::Done
    ));
}

#[tokio::test]
async fn dropping_an_unfinished_execution_releases_the_key() {
    let engine = Engine::new(MemoryStore::new());
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    drop(execution);
    // The release runs on the runtime in the background.
    assert!(eventually(|| async { engine.status(id("k")).await.unwrap().is_none() }).await);
    assert!(matches!(
        engine.begin(id("k"), request("a")).await.unwrap(),
        Begin::Acquired(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_handler_releases_the_key() {
    let engine = Engine::new(MemoryStore::new());
    let handler = tokio::spawn({
        let engine = engine.clone();
        async move {
            let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap()
            else {
                panic!()
            };
            std::future::pending::<()>().await;
            drop(execution);
        }
    });
    assert!(eventually(|| async { engine.status(id("k")).await.unwrap().is_some() }).await);
    handler.abort();
    assert!(eventually(|| async { engine.status(id("k")).await.unwrap().is_none() }).await);
}

#[tokio::test]
async fn complete_if_dropped_completes_instead_of_releasing() {
    let engine = Engine::new(MemoryStore::new());
    let Begin::Acquired(mut execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    execution.complete_if_dropped(response("gathered"));
    drop(execution);
    assert!(eventually(|| is_completed(&engine, id("k"))).await);
    assert!(
        matches!(engine.begin(id("k"), request("a")).await.unwrap(), Begin::Replay(r) if r == response("gathered"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_duplicate_gets_the_replay_once_the_owner_completes() {
    let engine = Engine::builder(MemoryStore::new())
        .wait_for_in_flight(Duration::from_secs(10))
        .build();
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let waiter = tokio::spawn({
        let engine = engine.clone();
        async move { engine.begin(id("k"), request("a")).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!waiter.is_finished());
    assert!(matches!(
        execution.complete(response("done")).await,
        Finish::Done
    ));
    assert!(matches!(waiter.await.unwrap(), Begin::Replay(r) if r == response("done")));
}

/// On the paused clock: the waiter re-reads the record at 5, 15, 35, 75 and 155 ms; its owner,
/// in the same process, completes at 150 ms. Woken by the owner, it answers at 150 ms; polling
/// alone, it would answer at 155 ms.
#[tokio::test(start_paused = true)]
async fn a_waiting_duplicate_is_woken_by_its_owner_in_this_process_not_polled() {
    let engine = Engine::builder(MemoryStore::new())
        .wait_for_in_flight(Duration::from_secs(10))
        .build();
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let waiter = tokio::spawn({
        let engine = engine.clone();
        async move {
            let begun = engine.begin(id("k"), request("a")).await.unwrap();
            (tokio::time::Instant::now(), begun)
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let completed_at = tokio::time::Instant::now();
    assert!(matches!(
        execution.complete(response("done")).await,
        Finish::Done
    ));
    let (answered_at, begun) = waiter.await.unwrap();
    assert!(matches!(begun, Begin::Replay(r) if r == response("done")));
    assert_eq!(
        answered_at - completed_at,
        Duration::ZERO,
        "answered when its owner finished, not at its next re-read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_duplicate_takes_over_a_released_key() {
    let engine = Engine::builder(MemoryStore::new())
        .wait_for_in_flight(Duration::from_secs(10))
        .build();
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let waiter = tokio::spawn({
        let engine = engine.clone();
        async move { engine.begin(id("k"), request("a")).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(matches!(execution.release().await, Finish::Done));
    assert!(matches!(waiter.await.unwrap(), Begin::Acquired(_)));
}

#[tokio::test]
async fn waiting_is_bounded() {
    let engine = Engine::builder(MemoryStore::new())
        .wait_for_in_flight(Duration::from_millis(50))
        .build();
    let Begin::Acquired(_execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let started = Instant::now();
    assert!(matches!(
        engine.begin(id("k"), request("a")).await.unwrap(),
        Begin::InFlight { .. }
    ));
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn sweeper_reclaims_expired_records() {
    let clock = clock();
    let store = MemoryStore::with_clock(clock.clone());
    let engine = Engine::builder(store.clone())
        .ttl(Duration::from_secs(1))
        .build();
    for n in 0..25 {
        let Begin::Acquired(execution) = engine
            .begin(id(&format!("k{n}")), request("a"))
            .await
            .unwrap()
        else {
            panic!()
        };
        assert!(matches!(
            execution.complete(response("r")).await,
            Finish::Done
        ));
    }
    let options = BeginOptions {
        ttl: HOUR,
        ..engine.options()
    };
    let Begin::Acquired(_live) = engine
        .begin_with(id("live"), request("a"), options)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(store.len(), 26);
    clock.advance(Duration::from_secs(2));
    let _sweeper = engine.spawn_sweeper(Duration::from_millis(10), 10);
    assert!(eventually(|| async { store.len() == 1 }).await);
    assert_eq!(
        store.len(),
        1,
        "expired records swept in batches, the live one kept"
    );
    assert!(matches!(
        engine.status(id("live")).await.unwrap(),
        Some(RecordSnapshot {
            record: idem_core::Record {
                state: RecordState::InFlight { .. },
                ..
            },
            ..
        })
    ));
}

/// A resolution takes the key over before it acts, so the owner it replaced can neither
/// complete nor renew it afterwards, should it come back.
#[tokio::test]
async fn a_resolution_fences_the_owner_it_replaced() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .lease(Duration::from_secs(30))
        // A grace of one lease (the default adds the 15 minutes a settlement may retry).
        .resolve_after(Duration::from_secs(30))
        .build();
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let (_, token) = execution.detach();
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        engine.resolve(id("k"), Resolution::Release).await.unwrap(),
        Resolved::Applied
    );
    assert_eq!(
        engine
            .complete_by_token(id("k"), token, response("late"), HOUR)
            .await
            .unwrap(),
        TransitionOutcome::StaleLease,
        "the owner it replaced stores nothing"
    );
    assert_eq!(
        engine.renew(id("k"), token).await.unwrap(),
        TransitionOutcome::StaleLease
    );
    assert!(matches!(
        engine.begin(id("k"), request("a")).await.unwrap(),
        Begin::Acquired(_)
    ));
}

/// A begin whose answer was lost (nothing executed) gives its key back in the background,
/// instead of leaving it in flight to lapse into an unknown outcome.
#[tokio::test]
async fn a_begin_whose_answer_was_lost_gives_its_key_back() {
    let store = FaultyStore {
        store: MemoryStore::new(),
        failures: 0,
        completions: Arc::new(AtomicUsize::new(0)),
        lose_begin_answers: true,
    };
    let engine = Engine::new(store.clone());
    assert!(engine.begin(id("k"), request("a")).await.is_err());
    let mut status = engine.status(id("k")).await.unwrap();
    for _ in 0..100 {
        if status.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = engine.status(id("k")).await.unwrap();
    }
    assert_eq!(status, None, "released: a retry executes");
}

/// By default a key is resolvable only once an owner cut off from the store has stopped
/// retrying its completion: a lease after the lapse plus the 15 minutes a settlement lasts.
#[tokio::test]
async fn by_default_a_resolution_waits_out_an_owner_that_may_still_complete() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .lease(Duration::from_secs(30))
        .build();
    let Begin::Acquired(execution) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let _ = execution.detach();
    clock.advance(Duration::from_secs(30 + 31));
    assert!(matches!(
        engine.resolve(id("k"), Resolution::Release).await.unwrap(),
        Resolved::StillRunning { .. }
    ));
    clock.advance(Duration::from_secs(15 * 60));
    assert_eq!(
        engine.resolve(id("k"), Resolution::Release).await.unwrap(),
        Resolved::Applied
    );
}

/// A replay TTL shorter than the lease does not let a crashed execution's record expire
/// into a second execution: it is reported as of unknown outcome for at least an hour.
#[tokio::test]
async fn a_short_replay_ttl_still_reports_a_crash_as_unknown() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::with_clock(clock.clone()))
        .lease(Duration::from_secs(30))
        .build();
    let options = BeginOptions {
        ttl: Duration::from_secs(1),
        ..engine.options()
    };
    let Begin::Acquired(execution) = engine
        .begin_with(id("k"), request("a"), options)
        .await
        .unwrap()
    else {
        panic!()
    };
    let _ = execution.detach();
    clock.advance(Duration::from_secs(45));
    assert!(matches!(
        engine
            .begin_with(id("k"), request("a"), options)
            .await
            .unwrap(),
        Begin::OutcomeUnknown
    ));
    clock.advance(idem_core::MIN_UNKNOWN_OUTCOME_KEPT);
    assert!(matches!(
        engine
            .begin_with(id("k"), request("a"), options)
            .await
            .unwrap(),
        Begin::Acquired(_)
    ));
}

/// A record kept by the previous version (its fingerprint a whole SHA-256, no lane tags) is
/// the same request as a retry after the upgrade: replayed, or in flight, never a mismatch
/// whose advice (a new key) would run it again.
#[tokio::test]
async fn a_retry_across_the_fingerprint_upgrade_is_the_same_request() {
    let store = MemoryStore::with_clock(clock());
    let engine = Engine::builder(store.clone()).build();
    let current = request("a");
    let mut earlier = *current.as_bytes();
    for byte in &mut earlier[24..] {
        *byte ^= 0x5a;
    }
    let earlier = Fingerprint::from_bytes(earlier);
    for (key, completed) in [("done", true), ("running", false)] {
        let token = LeaseToken::random();
        let begun = store
            .begin(idem_core::BeginRequest {
                id: id(key),
                fingerprint: earlier,
                token,
                lease: Duration::from_secs(30),
                ttl: HOUR,
                on_lapse: OnLapse::ReportUnknown,
            })
            .await
            .unwrap();
        assert!(matches!(begun, idem_core::BeginOutcome::Acquired));
        if completed {
            store
                .complete(CompleteRequest {
                    id: id(key),
                    token,
                    response: response("kept"),
                    ttl: HOUR,
                })
                .await
                .unwrap();
        }
    }
    match engine.begin(id("done"), current).await.unwrap() {
        Begin::Replay(stored) => assert_eq!(stored, response("kept")),
        other => panic!("expected the replay, got {other:?}"),
    }
    assert!(matches!(
        engine.begin(id("running"), current).await.unwrap(),
        Begin::InFlight { .. }
    ));
    // Another body is still a mismatch (against an earlier record its tags are noise, so the
    // parts it names are not to be trusted across the upgrade).
    assert!(matches!(
        engine.begin(id("done"), request("b")).await.unwrap(),
        Begin::Mismatch { .. }
    ));
}
