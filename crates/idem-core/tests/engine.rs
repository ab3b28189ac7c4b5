//! The engine's protocol over the memory store: leases, waiting, expiry and sweeping.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use idem_core::{
    Begin, Engine, Fingerprint, IdempotencyKey, KeyPolicy, ManualClock, MemoryStore, RecordId,
    RecordState, Scope, StoredResponse, Timestamp, TransitionOutcome,
};

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

#[tokio::test]
async fn in_flight_reports_the_remaining_lease() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::new())
        .lease(Duration::from_secs(30))
        .clock(clock.clone())
        .build();
    let Begin::Acquired(_lease) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    clock.advance(Duration::from_secs(10));
    match engine.begin(id("k"), request("a")).await.unwrap() {
        Begin::InFlight { retry_after } => assert_eq!(retry_after, Duration::from_secs(20)),
        other => panic!("expected in flight, got {other:?}"),
    }
    assert!(matches!(
        engine.begin(id("k"), request("b")).await.unwrap(),
        Begin::Mismatch
    ));
}

#[tokio::test]
async fn dropped_lease_releases_the_key() {
    let engine = Engine::new(MemoryStore::new());
    let Begin::Acquired(lease) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    drop(lease);
    // The release runs on the runtime in the background.
    for _ in 0..100 {
        if engine.status(id("k")).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches!(
        engine.begin(id("k"), request("a")).await.unwrap(),
        Begin::Acquired(_)
    ));
}

#[tokio::test]
async fn lapsed_lease_is_taken_over_and_the_first_owner_cannot_complete() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::new())
        .lease(Duration::from_secs(5))
        .clock(clock.clone())
        .build();
    let Begin::Acquired(first) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    clock.advance(Duration::from_secs(6));
    let Begin::Acquired(second) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    assert_ne!(first.token(), second.token());
    assert_eq!(
        first.complete(response("stale")).await.unwrap(),
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        second.complete(response("fresh")).await.unwrap(),
        TransitionOutcome::Applied
    );
    assert!(
        matches!(engine.begin(id("k"), request("a")).await.unwrap(), Begin::Replay(r) if r == response("fresh"))
    );
}

#[tokio::test]
async fn completed_records_expire_after_their_ttl() {
    let clock = clock();
    let engine = Engine::builder(MemoryStore::new())
        .ttl(Duration::from_secs(60))
        .clock(clock.clone())
        .build();
    let Begin::Acquired(lease) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    lease.complete(response("first")).await.unwrap();
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
    let engine = Engine::builder(MemoryStore::new())
        .clock(clock.clone())
        .build();
    let Begin::Acquired(lease) = engine
        .begin_with_ttl(id("k"), request("a"), Duration::from_secs(3600))
        .await
        .unwrap()
    else {
        panic!()
    };
    lease.complete(response("r")).await.unwrap();
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        engine.status(id("k")).await.unwrap(),
        None,
        "an hour, not the default day"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_duplicate_gets_the_replay_once_the_owner_completes() {
    let engine = Engine::builder(MemoryStore::new())
        .wait_for_in_flight(Duration::from_secs(10))
        .build();
    let Begin::Acquired(lease) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let waiter = tokio::spawn({
        let engine = engine.clone();
        async move { engine.begin(id("k"), request("a")).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!waiter.is_finished());
    lease.complete(response("done")).await.unwrap();
    assert!(matches!(waiter.await.unwrap(), Begin::Replay(r) if r == response("done")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_duplicate_takes_over_a_released_key() {
    let engine = Engine::builder(MemoryStore::new())
        .wait_for_in_flight(Duration::from_secs(10))
        .build();
    let Begin::Acquired(lease) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let waiter = tokio::spawn({
        let engine = engine.clone();
        async move { engine.begin(id("k"), request("a")).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    lease.release().await.unwrap();
    assert!(matches!(waiter.await.unwrap(), Begin::Acquired(_)));
}

#[tokio::test]
async fn waiting_is_bounded() {
    let engine = Engine::builder(MemoryStore::new())
        .wait_for_in_flight(Duration::from_millis(50))
        .build();
    let Begin::Acquired(_lease) = engine.begin(id("k"), request("a")).await.unwrap() else {
        panic!()
    };
    let started = std::time::Instant::now();
    assert!(matches!(
        engine.begin(id("k"), request("a")).await.unwrap(),
        Begin::InFlight { .. }
    ));
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn sweeper_reclaims_expired_records() {
    let clock = clock();
    let store = MemoryStore::new();
    let engine = Engine::builder(store.clone())
        .ttl(Duration::from_secs(1))
        .clock(clock.clone())
        .build();
    for n in 0..25 {
        let Begin::Acquired(lease) = engine
            .begin(id(&format!("k{n}")), request("a"))
            .await
            .unwrap()
        else {
            panic!()
        };
        lease.complete(response("r")).await.unwrap();
    }
    let Begin::Acquired(_live) = engine
        .begin_with_ttl(id("live"), request("a"), Duration::from_secs(3600))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(store.len(), 26);
    clock.advance(Duration::from_secs(2));
    let _sweeper = engine.spawn_sweeper(Duration::from_millis(10), 10);
    for _ in 0..200 {
        if store.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        store.len(),
        1,
        "expired records swept in batches, the live one kept"
    );
    assert!(matches!(
        engine.status(id("live")).await.unwrap(),
        Some(RecordState::InFlight { .. })
    ));
}
