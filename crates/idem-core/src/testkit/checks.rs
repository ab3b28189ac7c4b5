//! One function per guarantee of the [`Store`] trait. `store_conformance_tests!` runs each
//! as its own test; they are public so a store's own tests can call one directly.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, Fingerprint, LeaseToken, RecordId,
    RecordState, Store, StoredResponse, SystemClock, Timestamp, TransitionOutcome,
};

/// Duplicates racing on one key in the concurrency check: "hundreds of tasks".
const RACERS: usize = 300;
const HOUR: Duration = Duration::from_secs(3600);
const SECOND: Duration = Duration::from_secs(1);

#[doc(hidden)]
pub fn salted_id(salt: u64, key: u8) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt.to_be_bytes());
    hasher.update([key]);
    hasher.finalize().into()
}

/// A record id no other test uses.
fn fresh_id() -> RecordId {
    RecordId::from_bytes(salted_id(rand::random(), 0))
}

fn fingerprint(name: &str) -> Fingerprint {
    Fingerprint::builder()
        .part("conformance", name.as_bytes())
        .finish()
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn begin_request(id: RecordId, name: &str, now: Timestamp) -> BeginRequest {
    BeginRequest {
        id,
        fingerprint: fingerprint(name),
        token: LeaseToken::random(),
        now,
        lease_until: now.plus(Duration::from_secs(30)),
        expires_at: now.plus(HOUR),
    }
}

fn sample_response() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![
            (
                "content-type".into(),
                Bytes::from_static(b"application/json"),
            ),
            ("set-cookie".into(), Bytes::from_static(b"a=1")),
            ("set-cookie".into(), Bytes::from_static(b"b=2")),
            ("x-binary".into(), Bytes::from_static(&[0x80, 0xff, b' '])),
        ],
        body: Some(Bytes::from_static(
            b"{\"id\":\"ch_1\",\"amount\":1000}\0\xff",
        )),
    }
}

async fn complete<S: Store>(
    store: &S,
    request: &BeginRequest,
    response: StoredResponse,
    now: Timestamp,
) -> TransitionOutcome {
    store
        .complete(CompleteRequest {
            id: request.id,
            token: request.token,
            response,
            now,
            expires_at: now.plus(HOUR),
        })
        .await
        .expect("complete answers")
}

/// An absent key is acquired by the first begin.
pub async fn absent_key_is_acquired<S: Store>(store: S) {
    let request = begin_request(fresh_id(), "a", now());
    assert_eq!(
        store.begin(request).await.expect("begin answers"),
        BeginOutcome::Acquired
    );
}

/// Hundreds of concurrent begins of one absent key: exactly one acquires, every other one is
/// told the request is in flight.
pub async fn exactly_one_of_many_concurrent_begins_acquires<S: Store>(store: S) {
    let store = Arc::new(store);
    let id = fresh_id();
    let at = now();
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .begin(begin_request(id, "race", at))
                    .await
                    .expect("begin answers")
            })
        })
        .collect();
    let mut acquired = 0;
    for task in tasks {
        match task.await.expect("task finishes") {
            BeginOutcome::Acquired => acquired += 1,
            BeginOutcome::InFlight { .. } => {}
            other => panic!("unexpected outcome in a race of identical requests: {other:?}"),
        }
    }
    assert_eq!(
        acquired, 1,
        "exactly one of {RACERS} concurrent begins must acquire"
    );
}

/// Concurrent begins spread over many keys: each key has exactly one owner.
pub async fn exactly_one_owner_per_key_under_concurrency_on_many_keys<S: Store>(store: S) {
    const KEYS: usize = 20;
    const PER_KEY: usize = 10;
    let store = Arc::new(store);
    let ids: Vec<RecordId> = (0..KEYS).map(|_| fresh_id()).collect();
    let at = now();
    let tasks: Vec<_> = (0..KEYS * PER_KEY)
        .map(|n| {
            let store = Arc::clone(&store);
            let id = ids[n % KEYS];
            tokio::spawn(async move {
                (
                    id,
                    store
                        .begin(begin_request(id, "many", at))
                        .await
                        .expect("begin answers"),
                )
            })
        })
        .collect();
    let mut owners = HashSet::new();
    for task in tasks {
        let (id, outcome) = task.await.expect("task finishes");
        if outcome == BeginOutcome::Acquired {
            assert!(owners.insert(id), "two owners for one key");
        }
    }
    assert_eq!(owners.len(), KEYS, "every key gets an owner");
}

/// A completed key replays its response byte for byte (status, every header in order, body)
/// to a begin with the same fingerprint, without acquiring.
pub async fn completed_key_replays_the_stored_response<S: Store>(store: S) {
    let at = now();
    let first = begin_request(fresh_id(), "pay", at);
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    assert_eq!(
        complete(&store, &first, sample_response(), at).await,
        TransitionOutcome::Applied
    );
    for _ in 0..2 {
        let retry = begin_request(first.id, "pay", at.plus(SECOND));
        assert_eq!(
            store.begin(retry).await.expect("begin"),
            BeginOutcome::Replay(sample_response())
        );
    }
}

/// A response stored without its body (too large to keep) replays as such.
pub async fn response_without_body_is_replayed_as_such<S: Store>(store: S) {
    let at = now();
    let first = begin_request(fresh_id(), "big", at);
    store.begin(first.clone()).await.expect("begin");
    let bodiless = StoredResponse {
        status: 200,
        headers: vec![],
        body: None,
    };
    assert_eq!(
        complete(&store, &first, bodiless.clone(), at).await,
        TransitionOutcome::Applied
    );
    let empty = StoredResponse {
        status: 204,
        headers: vec![],
        body: Some(Bytes::new()),
    };
    let second = begin_request(fresh_id(), "empty", at);
    store.begin(second.clone()).await.expect("begin");
    assert_eq!(
        complete(&store, &second, empty.clone(), at).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        store
            .begin(begin_request(first.id, "big", at))
            .await
            .expect("begin"),
        BeginOutcome::Replay(bodiless)
    );
    assert_eq!(
        store
            .begin(begin_request(second.id, "empty", at))
            .await
            .expect("begin"),
        BeginOutcome::Replay(empty)
    );
}

/// The same key with another fingerprint is a mismatch, whether the first request is in
/// flight, completed, or in flight with a lapsed lease; and it changes nothing.
pub async fn different_fingerprint_is_a_mismatch<S: Store>(store: S) {
    let at = now();
    let first = begin_request(fresh_id(), "original", at);
    store.begin(first.clone()).await.expect("begin");
    let other = begin_request(first.id, "other", at);
    assert_eq!(
        store.begin(other.clone()).await.expect("begin"),
        BeginOutcome::Mismatch
    );
    let lapsed = begin_request(first.id, "other", first.lease_until.plus(SECOND));
    assert_eq!(
        store.begin(lapsed).await.expect("begin"),
        BeginOutcome::Mismatch
    );
    // The original owner is undisturbed.
    assert_eq!(
        complete(&store, &first, sample_response(), at).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        store.begin(other).await.expect("begin"),
        BeginOutcome::Mismatch
    );
    let same = begin_request(first.id, "original", at);
    assert_eq!(
        store.begin(same).await.expect("begin"),
        BeginOutcome::Replay(sample_response())
    );
}

/// A duplicate of an in-flight request is told when the owner's lease lapses.
pub async fn duplicate_of_in_flight_request_is_told_the_lease<S: Store>(store: S) {
    let at = now();
    let first = begin_request(fresh_id(), "slow", at);
    store.begin(first.clone()).await.expect("begin");
    let duplicate = begin_request(first.id, "slow", at.plus(SECOND));
    assert_eq!(
        store.begin(duplicate).await.expect("begin"),
        BeginOutcome::InFlight {
            lease_until: first.lease_until
        }
    );
}

/// Releasing frees the key for any request; a second release, or a release by another
/// token, changes nothing.
pub async fn release_frees_the_key<S: Store>(store: S) {
    let at = now();
    let first = begin_request(fresh_id(), "fails", at);
    store.begin(first.clone()).await.expect("begin");
    let stranger = LeaseToken::random();
    assert_eq!(
        store
            .release(first.id, stranger, at)
            .await
            .expect("release"),
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        store
            .release(first.id, first.token, at)
            .await
            .expect("release"),
        TransitionOutcome::Applied
    );
    assert_eq!(
        store
            .release(first.id, first.token, at)
            .await
            .expect("release"),
        TransitionOutcome::StaleLease
    );
    assert_eq!(store.get(first.id, at).await.expect("get"), None);
    let next = begin_request(first.id, "another request", at);
    assert_eq!(
        store.begin(next).await.expect("begin"),
        BeginOutcome::Acquired
    );
}

/// After the lease lapses, a retry takes the key over with a new token; the old owner can
/// then neither complete nor release, and the new owner's completion is what replays.
pub async fn lapsed_lease_is_taken_over_and_the_old_owner_is_fenced<S: Store>(store: S) {
    let at = now();
    let old = begin_request(fresh_id(), "crashy", at);
    store.begin(old.clone()).await.expect("begin");
    let later = old.lease_until.plus(SECOND);
    let new = begin_request(old.id, "crashy", later);
    assert_eq!(
        store.begin(new.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    let stale = StoredResponse {
        status: 500,
        headers: vec![],
        body: Some(Bytes::from_static(b"stale")),
    };
    assert_eq!(
        complete(&store, &old, stale, later).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        store
            .release(old.id, old.token, later)
            .await
            .expect("release"),
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        complete(&store, &new, sample_response(), later).await,
        TransitionOutcome::Applied
    );
    let retry = begin_request(old.id, "crashy", later);
    assert_eq!(
        store.begin(retry).await.expect("begin"),
        BeginOutcome::Replay(sample_response())
    );
}

/// A lease that lapsed but was not taken over still belongs to its owner, whose completion is
/// kept (refusing it would let a retry execute a second time).
pub async fn lapsed_lease_not_taken_over_can_still_complete<S: Store>(store: S) {
    let at = now();
    let slow = begin_request(fresh_id(), "slow", at);
    store.begin(slow.clone()).await.expect("begin");
    let later = slow.lease_until.plus(SECOND);
    assert_eq!(
        complete(&store, &slow, sample_response(), later).await,
        TransitionOutcome::Applied
    );
    let retry = begin_request(slow.id, "slow", later);
    assert_eq!(
        store.begin(retry).await.expect("begin"),
        BeginOutcome::Replay(sample_response())
    );
}

/// Completion is final: the owner cannot complete again, release, or be taken over.
pub async fn completion_is_final<S: Store>(store: S) {
    let at = now();
    let owner = begin_request(fresh_id(), "once", at);
    store.begin(owner.clone()).await.expect("begin");
    assert_eq!(
        complete(&store, &owner, sample_response(), at).await,
        TransitionOutcome::Applied
    );
    let other = StoredResponse {
        status: 202,
        headers: vec![],
        body: None,
    };
    assert_eq!(
        complete(&store, &owner, other, at).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        store
            .release(owner.id, owner.token, at)
            .await
            .expect("release"),
        TransitionOutcome::StaleLease
    );
    let long_after_lease = owner.lease_until.plus(HOUR / 2);
    let retry = begin_request(owner.id, "once", long_after_lease);
    assert_eq!(
        store.begin(retry).await.expect("begin"),
        BeginOutcome::Replay(sample_response())
    );
}

/// A record past its expiry behaves as absent: any request acquires it, its old owner is
/// fenced, and it reads as absent.
pub async fn expired_record_behaves_as_absent<S: Store>(store: S) {
    let at = now();
    let first = begin_request(fresh_id(), "old", at);
    store.begin(first.clone()).await.expect("begin");
    store
        .complete(CompleteRequest {
            id: first.id,
            token: first.token,
            response: sample_response(),
            now: at,
            expires_at: at.plus(SECOND),
        })
        .await
        .expect("complete");
    let just_before = at.plus(Duration::from_millis(999));
    assert!(matches!(
        store.get(first.id, just_before).await.expect("get"),
        Some(RecordState::Completed { .. })
    ));
    let after = at.plus(SECOND);
    assert_eq!(store.get(first.id, after).await.expect("get"), None);
    let fresh = begin_request(first.id, "new request", after);
    assert_eq!(
        store.begin(fresh).await.expect("begin"),
        BeginOutcome::Acquired
    );

    // An in-flight record whose whole record expired: its owner is fenced off.
    let abandoned = BeginRequest {
        expires_at: at.plus(SECOND),
        lease_until: at.plus(SECOND),
        ..begin_request(fresh_id(), "gone", at)
    };
    store.begin(abandoned.clone()).await.expect("begin");
    assert_eq!(
        store
            .release(abandoned.id, abandoned.token, after)
            .await
            .expect("release"),
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        complete(&store, &abandoned, sample_response(), after).await,
        TransitionOutcome::StaleLease
    );
}

/// `get` reports absent, in flight (with fingerprint, token and lease) and completed.
pub async fn status_reports_each_state<S: Store>(store: S) {
    let at = now();
    let request = begin_request(fresh_id(), "status", at);
    assert_eq!(store.get(request.id, at).await.expect("get"), None);
    store.begin(request.clone()).await.expect("begin");
    assert_eq!(
        store.get(request.id, at).await.expect("get"),
        Some(RecordState::InFlight {
            fingerprint: request.fingerprint,
            token: request.token,
            lease_until: request.lease_until
        })
    );
    complete(&store, &request, sample_response(), at).await;
    assert_eq!(
        store.get(request.id, at).await.expect("get"),
        Some(RecordState::Completed {
            fingerprint: request.fingerprint,
            response: sample_response()
        })
    );
}

/// The sweeper deletes expired records, in batches no larger than asked, and nothing live.
pub async fn sweep_deletes_only_expired_records<S: Store>(store: S) {
    // Ten days in the past: records that expire there cannot belong to a test running now,
    // so this sweep cannot disturb tests sharing the store.
    let past = now().plus(Duration::ZERO);
    let past = Timestamp::from_millis(past.as_millis() - 10 * 24 * 3600 * 1000);
    let mut short_lived = Vec::new();
    for _ in 0..5 {
        let request = BeginRequest {
            lease_until: past.plus(SECOND),
            expires_at: past.plus(SECOND),
            ..begin_request(fresh_id(), "short", past)
        };
        store.begin(request.clone()).await.expect("begin");
        short_lived.push(request);
    }
    let long_lived = begin_request(fresh_id(), "long", past);
    store.begin(long_lived.clone()).await.expect("begin");

    let sweep_at = past.plus(Duration::from_secs(2));
    let first_batch = store.sweep_expired(sweep_at, 2).await.expect("sweep");
    assert!(
        first_batch <= 2,
        "a sweep deletes at most its batch ({first_batch} > 2)"
    );
    let mut swept = first_batch;
    loop {
        let batch = store.sweep_expired(sweep_at, 100).await.expect("sweep");
        swept += batch;
        if batch == 0 {
            break;
        }
    }
    assert!(
        swept >= short_lived.len(),
        "every expired record is swept ({swept} < {})",
        short_lived.len()
    );
    // Swept records are gone even for a reader whose clock says they are live.
    for request in &short_lived {
        assert_eq!(store.get(request.id, past).await.expect("get"), None);
    }
    assert!(
        store
            .get(long_lived.id, sweep_at)
            .await
            .expect("get")
            .is_some(),
        "live records survive"
    );
}

/// For stores that expire records natively: records past their expiry read as absent and
/// are acquired afresh, while live ones are kept, whether or not `sweep_expired` deletes
/// anything (it must still never delete more than its batch).
pub async fn expired_records_behave_as_absent_without_a_sweep<S: Store>(store: S) {
    let at = now();
    let short = BeginRequest {
        lease_until: at.plus(SECOND),
        expires_at: at.plus(SECOND),
        ..begin_request(fresh_id(), "short", at)
    };
    store.begin(short.clone()).await.expect("begin");
    let long = begin_request(fresh_id(), "long", at);
    store.begin(long.clone()).await.expect("begin");
    let later = at.plus(Duration::from_secs(2));
    assert!(store.sweep_expired(later, 1).await.expect("sweep") <= 1);
    assert_eq!(store.get(short.id, later).await.expect("get"), None);
    assert!(
        store.get(long.id, later).await.expect("get").is_some(),
        "live records survive"
    );
    let fresh = begin_request(short.id, "another", later);
    assert_eq!(
        store.begin(fresh).await.expect("begin"),
        BeginOutcome::Acquired
    );
}

/// Operations on one record never touch another.
pub async fn records_are_isolated_by_id<S: Store>(store: S) {
    let at = now();
    let a = begin_request(fresh_id(), "same", at);
    let b = begin_request(fresh_id(), "same", at);
    assert_eq!(
        store.begin(a.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    assert_eq!(
        store.begin(b.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    complete(&store, &a, sample_response(), at).await;
    assert!(matches!(
        store.get(b.id, at).await.expect("get"),
        Some(RecordState::InFlight { .. })
    ));
    assert_eq!(
        store.release(b.id, b.token, at).await.expect("release"),
        TransitionOutcome::Applied
    );
    assert!(matches!(
        store.get(a.id, at).await.expect("get"),
        Some(RecordState::Completed { .. })
    ));
}
