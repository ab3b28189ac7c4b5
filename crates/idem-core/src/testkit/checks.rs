//! One function per guarantee of the [`Store`] trait. `store_conformance_tests!` runs each
//! as its own test; they are public so a store's own tests can call one directly.
//!
//! Every check receives the store and the [`ManualClock`] the store reads, and moves time
//! only with [`ManualClock::advance`]: a store's answers are exact to the millisecond.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, Fingerprint, LeaseToken, ManualClock,
    OnLapse, Record, RecordId, RecordSnapshot, RecordState, Store, StoredResponse, Timestamp,
    TransitionOutcome, Watch,
};

/// Duplicates racing on one key in the concurrency check: "hundreds of tasks".
const RACERS: usize = 300;
/// The lease of the checks' executions.
const LEASE: Duration = Duration::from_secs(30);
/// The TTL of the checks' records. Every record a check keeps lives at least a minute (see
/// the module documentation of `testkit`), so a sweep by another check cannot reach it.
const TTL: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);
const MILLISECOND: Duration = Duration::from_millis(1);
/// The lease and TTL of the records the sweep checks let expire: short, so a sweep at their
/// expiry reaches only records expiring at about the real now.
const SHORT: Duration = Duration::from_millis(10);
/// How long the records the sweep checks let expire live: an in-flight one a TTL past its
/// lease, both [`SHORT`].
const SHORT_LIVED: Duration = Duration::from_millis(20);

#[doc(hidden)]
#[must_use]
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

/// A begin of `id` for the request `name` with a fresh token, the checks' lease and TTL,
/// reporting a lapsed lease rather than taking it over.
fn begin_request(id: RecordId, name: &str) -> BeginRequest {
    BeginRequest {
        id,
        fingerprint: fingerprint(name),
        token: LeaseToken::random(),
        lease: LEASE,
        ttl: TTL,
        on_lapse: OnLapse::ReportUnknown,
    }
}

/// The same begin, with a fresh token, allowed to take a lapsed lease over.
fn taking_over(request: &BeginRequest) -> BeginRequest {
    BeginRequest {
        token: LeaseToken::random(),
        on_lapse: OnLapse::TakeOver,
        ..request.clone()
    }
}

/// The same begin with a fresh token (another attempt of the same request).
fn retry(request: &BeginRequest) -> BeginRequest {
    BeginRequest {
        token: LeaseToken::random(),
        ..request.clone()
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

fn other_response() -> StoredResponse {
    StoredResponse {
        status: 500,
        headers: vec![],
        body: Some(Bytes::from_static(b"stale")),
    }
}

async fn begin<S: Store>(store: &S, request: BeginRequest) -> BeginOutcome {
    store.begin(request).await.expect("begin answers")
}

async fn complete<S: Store>(
    store: &S,
    request: &BeginRequest,
    response: StoredResponse,
) -> TransitionOutcome {
    complete_for(store, request, response, TTL).await
}

async fn complete_for<S: Store>(
    store: &S,
    request: &BeginRequest,
    response: StoredResponse,
    ttl: Duration,
) -> TransitionOutcome {
    store
        .complete(CompleteRequest {
            id: request.id,
            token: request.token,
            response,
            ttl,
        })
        .await
        .expect("complete answers")
}

async fn renew<S: Store>(store: &S, request: &BeginRequest, lease: Duration) -> TransitionOutcome {
    store
        .renew(request.id, request.token, lease)
        .await
        .expect("renew answers")
}

async fn release<S: Store>(store: &S, request: &BeginRequest) -> TransitionOutcome {
    store
        .release(request.id, request.token)
        .await
        .expect("release answers")
}

async fn get<S: Store>(store: &S, id: RecordId) -> Option<RecordSnapshot> {
    store.get(id).await.expect("get answers")
}

/// The record as `get` reads it, checking that the snapshot carries the store's clock.
async fn record<S: Store>(store: &S, clock: &ManualClock, id: RecordId) -> Option<Record> {
    let snapshot = get(store, id).await?;
    assert_eq!(
        snapshot.now,
        clock.now(),
        "a snapshot carries the store's clock"
    );
    Some(snapshot.record)
}

/// The record `request` leaves when it acquires at `at`: kept a whole TTL past its lease.
fn acquired_at(request: &BeginRequest, at: Timestamp) -> Record {
    let lease_until = at.plus(request.lease);
    Record {
        state: RecordState::InFlight {
            fingerprint: request.fingerprint,
            token: request.token,
            lease_until,
        },
        expires_at: lease_until.plus(request.ttl),
    }
}

/// An absent key is acquired by the first begin, which stores it in flight with its token,
/// its lease from the store's now, and an expiry a TTL past that lease.
pub async fn absent_key_is_acquired<S: Store>(store: S, clock: ManualClock) {
    let request = begin_request(fresh_id(), "a");
    let at = clock.now();
    assert_eq!(begin(&store, request.clone()).await, BeginOutcome::Acquired);
    assert_eq!(
        record(&store, &clock, request.id).await,
        Some(acquired_at(&request, at))
    );
}

/// Hundreds of concurrent begins of one absent key: exactly one acquires, every other one is
/// told the request is in flight.
pub async fn exactly_one_of_many_concurrent_begins_acquires<S: Store>(
    store: S,
    _clock: ManualClock,
) {
    let store = Arc::new(store);
    let id = fresh_id();
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                begin(&*store, begin_request(id, "race")).await
            })
        })
        .collect();
    let mut acquired = 0;
    for task in tasks {
        match task.await.expect("task finishes") {
            BeginOutcome::Acquired => acquired += 1,
            BeginOutcome::InFlight { lease_left } => assert_eq!(
                lease_left, LEASE,
                "the clock did not move: the whole lease is left"
            ),
            other => panic!("unexpected outcome in a race of identical requests: {other:?}"),
        }
    }
    assert_eq!(
        acquired, 1,
        "exactly one of {RACERS} concurrent begins must acquire"
    );
}

/// Concurrent begins spread over many keys: each key has exactly one owner.
pub async fn exactly_one_owner_per_key_under_concurrency_on_many_keys<S: Store>(
    store: S,
    _clock: ManualClock,
) {
    const KEYS: usize = 20;
    const PER_KEY: usize = 10;
    let store = Arc::new(store);
    let ids: Vec<RecordId> = (0..KEYS).map(|_| fresh_id()).collect();
    let tasks: Vec<_> = (0..KEYS * PER_KEY)
        .map(|n| {
            let store = Arc::clone(&store);
            let id = ids[n % KEYS];
            tokio::spawn(async move { (id, begin(&*store, begin_request(id, "many")).await) })
        })
        .collect();
    let mut owners = HashSet::new();
    for task in tasks {
        let (id, outcome) = task.await.expect("task finishes");
        match outcome {
            BeginOutcome::Acquired => assert!(owners.insert(id), "two owners for one key"),
            BeginOutcome::InFlight { .. } => {}
            other => panic!("unexpected outcome in a race of identical requests: {other:?}"),
        }
    }
    assert_eq!(owners.len(), KEYS, "every key gets an owner");
}

/// A completed key replays its response byte for byte (status, every header in order, body)
/// to a begin with the same fingerprint, without acquiring, long after the lease would have
/// lapsed.
pub async fn completed_key_replays_the_stored_response<S: Store>(store: S, clock: ManualClock) {
    let first = begin_request(fresh_id(), "pay");
    assert_eq!(begin(&store, first.clone()).await, BeginOutcome::Acquired);
    assert_eq!(
        complete(&store, &first, sample_response()).await,
        TransitionOutcome::Applied
    );
    for request in [retry(&first), taking_over(&first)] {
        assert_eq!(
            begin(&store, request).await,
            BeginOutcome::Replay(sample_response())
        );
    }
    clock.advance(LEASE + SECOND);
    for request in [retry(&first), taking_over(&first)] {
        assert_eq!(
            begin(&store, request).await,
            BeginOutcome::Replay(sample_response())
        );
    }
}

/// A response stored without its body (too large to keep) replays as such, and so does an
/// empty body.
pub async fn response_without_body_is_replayed_as_such<S: Store>(store: S, _clock: ManualClock) {
    let first = begin_request(fresh_id(), "big");
    begin(&store, first.clone()).await;
    let bodiless = StoredResponse {
        status: 200,
        headers: vec![],
        body: None,
    };
    assert_eq!(
        complete(&store, &first, bodiless.clone()).await,
        TransitionOutcome::Applied
    );
    let empty = StoredResponse {
        status: 204,
        headers: vec![],
        body: Some(Bytes::new()),
    };
    let second = begin_request(fresh_id(), "empty");
    begin(&store, second.clone()).await;
    assert_eq!(
        complete(&store, &second, empty.clone()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        begin(&store, retry(&first)).await,
        BeginOutcome::Replay(bodiless)
    );
    assert_eq!(
        begin(&store, retry(&second)).await,
        BeginOutcome::Replay(empty)
    );
}

/// The same key with another fingerprint is a mismatch, whether the first request is in
/// flight or completed; and it changes nothing.
pub async fn different_fingerprint_is_a_mismatch<S: Store>(store: S, clock: ManualClock) {
    let first = begin_request(fresh_id(), "original");
    let at = clock.now();
    begin(&store, first.clone()).await;
    let other = begin_request(first.id, "other");
    assert_eq!(begin(&store, other.clone()).await, BeginOutcome::Mismatch);
    assert_eq!(
        begin(&store, taking_over(&other)).await,
        BeginOutcome::Mismatch
    );
    // The original owner is undisturbed.
    assert_eq!(
        record(&store, &clock, first.id).await,
        Some(acquired_at(&first, at))
    );
    assert_eq!(
        complete(&store, &first, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(begin(&store, retry(&other)).await, BeginOutcome::Mismatch);
    assert_eq!(
        begin(&store, retry(&first)).await,
        BeginOutcome::Replay(sample_response())
    );
}

/// A different fingerprint is a mismatch even once the owner's lease lapsed, whatever the
/// request's `on_lapse`: never [`BeginOutcome::OutcomeUnknown`], never a takeover; the
/// record is unchanged and still its owner's.
pub async fn mismatch_wins_over_a_lapsed_lease<S: Store>(store: S, clock: ManualClock) {
    let first = begin_request(fresh_id(), "original");
    let at = clock.now();
    begin(&store, first.clone()).await;
    clock.advance(LEASE + SECOND);
    let other = begin_request(first.id, "other");
    assert_eq!(begin(&store, other.clone()).await, BeginOutcome::Mismatch);
    assert_eq!(
        begin(&store, taking_over(&other)).await,
        BeginOutcome::Mismatch
    );
    assert_eq!(
        record(&store, &clock, first.id).await,
        Some(acquired_at(&first, at))
    );
    assert_eq!(
        begin(&store, retry(&first)).await,
        BeginOutcome::OutcomeUnknown
    );
    assert_eq!(
        complete(&store, &first, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(begin(&store, retry(&other)).await, BeginOutcome::Mismatch);
}

/// A duplicate of an in-flight request is told how long the owner's lease has left, to the
/// millisecond, whether or not it may take a lapsed lease over (a live one is never taken).
pub async fn duplicate_of_in_flight_request_is_told_the_lease_left<S: Store>(
    store: S,
    clock: ManualClock,
) {
    let first = begin_request(fresh_id(), "slow");
    let at = clock.now();
    begin(&store, first.clone()).await;
    assert_eq!(
        begin(&store, retry(&first)).await,
        BeginOutcome::InFlight { lease_left: LEASE }
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        begin(&store, retry(&first)).await,
        BeginOutcome::InFlight {
            lease_left: Duration::from_secs(20)
        }
    );
    clock.advance(Duration::from_secs(20) - MILLISECOND);
    assert_eq!(
        begin(&store, taking_over(&first)).await,
        BeginOutcome::InFlight {
            lease_left: MILLISECOND
        }
    );
    assert_eq!(
        record(&store, &clock, first.id).await,
        Some(acquired_at(&first, at)),
        "answering in flight changes nothing"
    );
}

/// Releasing frees the key for any request; a second release, or a release by another
/// token, changes nothing.
pub async fn release_frees_the_key<S: Store>(store: S, clock: ManualClock) {
    let first = begin_request(fresh_id(), "fails");
    let at = clock.now();
    begin(&store, first.clone()).await;
    let stranger = retry(&first);
    assert_eq!(
        release(&store, &stranger).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        record(&store, &clock, first.id).await,
        Some(acquired_at(&first, at))
    );
    assert_eq!(release(&store, &first).await, TransitionOutcome::Applied);
    assert_eq!(release(&store, &first).await, TransitionOutcome::StaleLease);
    assert_eq!(get(&store, first.id).await, None);
    let next = begin_request(first.id, "another request");
    assert_eq!(begin(&store, next).await, BeginOutcome::Acquired);
}

/// Once the owner's lease lapsed, a begin of the same request that does not ask to take over
/// is told the outcome is unknown, again and again, and changes nothing: the owner still holds
/// the key, completes it, and then every retry replays.
pub async fn lapsed_lease_answers_outcome_unknown_and_changes_nothing<S: Store>(
    store: S,
    clock: ManualClock,
) {
    let owner = begin_request(fresh_id(), "crashy");
    let at = clock.now();
    begin(&store, owner.clone()).await;
    clock.advance(LEASE);
    for _ in 0..2 {
        assert_eq!(
            begin(&store, retry(&owner)).await,
            BeginOutcome::OutcomeUnknown
        );
    }
    clock.advance(MINUTE);
    assert_eq!(
        begin(&store, retry(&owner)).await,
        BeginOutcome::OutcomeUnknown
    );
    assert_eq!(
        record(&store, &clock, owner.id).await,
        Some(acquired_at(&owner, at)),
        "reporting an unknown outcome changes nothing"
    );
    assert_eq!(
        complete(&store, &owner, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        begin(&store, retry(&owner)).await,
        BeginOutcome::Replay(sample_response())
    );
}

/// A lease that lapsed but was not taken over still belongs to its owner, whose completion is
/// kept (refusing it would discard the result of an execution that did happen), and so is its
/// release.
pub async fn lapsed_lease_not_taken_over_can_still_complete<S: Store>(
    store: S,
    clock: ManualClock,
) {
    let slow = begin_request(fresh_id(), "slow");
    begin(&store, slow.clone()).await;
    let gave_up = begin_request(fresh_id(), "gave up");
    begin(&store, gave_up.clone()).await;
    clock.advance(LEASE + SECOND);
    assert_eq!(
        complete(&store, &slow, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        begin(&store, taking_over(&slow)).await,
        BeginOutcome::Replay(sample_response())
    );
    assert_eq!(release(&store, &gave_up).await, TransitionOutcome::Applied);
    assert_eq!(get(&store, gave_up.id).await, None);
    assert_eq!(begin(&store, retry(&gave_up)).await, BeginOutcome::Acquired);
}

/// Once the lease lapsed, a begin allowed to take over acquires the key with its new token and
/// a fresh lease; the old owner is fenced off (it can neither renew, complete nor release),
/// and the new owner's completion is what replays.
pub async fn lapsed_lease_is_taken_over_and_the_old_owner_is_fenced<S: Store>(
    store: S,
    clock: ManualClock,
) {
    let old = begin_request(fresh_id(), "crashy");
    begin(&store, old.clone()).await;
    clock.advance(LEASE + SECOND);
    let new = taking_over(&old);
    let later = clock.now();
    assert_eq!(begin(&store, new.clone()).await, BeginOutcome::Acquired);
    assert_eq!(
        record(&store, &clock, old.id).await,
        Some(acquired_at(&new, later))
    );
    assert_eq!(
        begin(&store, taking_over(&old)).await,
        BeginOutcome::InFlight { lease_left: LEASE },
        "the new owner's lease is live"
    );
    assert_eq!(
        renew(&store, &old, LEASE).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        complete(&store, &old, other_response()).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(release(&store, &old).await, TransitionOutcome::StaleLease);
    assert_eq!(
        record(&store, &clock, old.id).await,
        Some(acquired_at(&new, later)),
        "the fenced owner changed nothing"
    );
    assert_eq!(
        complete(&store, &new, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        begin(&store, retry(&old)).await,
        BeginOutcome::Replay(sample_response())
    );
}

/// Renewing a live lease moves it to a whole lease from now: past the original lease a
/// duplicate is still told the request is in flight (and is never allowed to take it over).
pub async fn renew_extends_a_live_lease<S: Store>(store: S, clock: ManualClock) {
    let owner = begin_request(fresh_id(), "long");
    let at = clock.now();
    begin(&store, owner.clone()).await;
    clock.advance(Duration::from_secs(20));
    assert_eq!(
        renew(&store, &owner, LEASE).await,
        TransitionOutcome::Applied
    );
    let renewed_at = clock.now();
    assert_eq!(
        record(&store, &clock, owner.id).await,
        Some(Record {
            state: RecordState::InFlight {
                fingerprint: owner.fingerprint,
                token: owner.token,
                lease_until: renewed_at.plus(LEASE),
            },
            // The expiry moved forward with the lease: still a TTL past it.
            expires_at: at.plus(LEASE + TTL + Duration::from_secs(20)),
        })
    );
    // Past the original lease (at + 30 s), within the renewed one (at + 50 s).
    clock.advance(Duration::from_secs(20));
    assert_eq!(
        begin(&store, retry(&owner)).await,
        BeginOutcome::InFlight {
            lease_left: Duration::from_secs(10)
        }
    );
    assert_eq!(
        begin(&store, taking_over(&owner)).await,
        BeginOutcome::InFlight {
            lease_left: Duration::from_secs(10)
        }
    );
    // A renewal may also shorten the lease: it is a whole lease from now, whatever it was.
    assert_eq!(
        renew(&store, &owner, SECOND).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        begin(&store, retry(&owner)).await,
        BeginOutcome::InFlight { lease_left: SECOND }
    );
    assert_eq!(
        complete(&store, &owner, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        begin(&store, retry(&owner)).await,
        BeginOutcome::Replay(sample_response())
    );
}

/// An owner whose lease lapsed without being taken over (it lost the store for a while) may
/// renew it: the key is its own again, live, and duplicates are told it is in flight.
pub async fn owner_can_renew_a_lapsed_lease_not_taken_over<S: Store>(store: S, clock: ManualClock) {
    let owner = begin_request(fresh_id(), "partitioned");
    begin(&store, owner.clone()).await;
    clock.advance(LEASE + SECOND);
    assert_eq!(
        begin(&store, retry(&owner)).await,
        BeginOutcome::OutcomeUnknown
    );
    assert_eq!(
        renew(&store, &owner, LEASE).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        begin(&store, retry(&owner)).await,
        BeginOutcome::InFlight { lease_left: LEASE }
    );
    assert_eq!(
        begin(&store, taking_over(&owner)).await,
        BeginOutcome::InFlight { lease_left: LEASE }
    );
    assert_eq!(
        complete(&store, &owner, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        begin(&store, retry(&owner)).await,
        BeginOutcome::Replay(sample_response())
    );
}

/// A renewal by a token the record does not hold (a stranger's, or the owner's once the key
/// was completed or released, or of a key never begun) is refused and changes nothing: it
/// neither extends a lease nor brings a record back.
pub async fn renew_with_a_stale_or_foreign_token_changes_nothing<S: Store>(
    store: S,
    clock: ManualClock,
) {
    let lapsed_owner = a_foreign_renewal_moves_no_lease(&store, &clock).await;
    a_finished_or_absent_record_is_not_renewed(&store, &clock, &lapsed_owner).await;
}

/// A stranger's renewal neither moves a live lease nor revives a lapsed one. Answers the
/// owner, whose lease has lapsed (not taken over).
async fn a_foreign_renewal_moves_no_lease<S: Store>(
    store: &S,
    clock: &ManualClock,
) -> BeginRequest {
    let owner = begin_request(fresh_id(), "owned");
    let at = clock.now();
    begin(store, owner.clone()).await;
    clock.advance(Duration::from_secs(20));
    let stranger = retry(&owner);
    assert_eq!(
        renew(store, &stranger, LEASE).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        record(store, clock, owner.id).await,
        Some(acquired_at(&owner, at)),
        "a foreign renewal moves no lease"
    );
    // ...so the lease lapses when it was going to.
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        begin(store, retry(&owner)).await,
        BeginOutcome::OutcomeUnknown
    );
    assert_eq!(
        renew(store, &stranger, LEASE).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        begin(store, retry(&owner)).await,
        BeginOutcome::OutcomeUnknown
    );
    owner
}

/// The owner's own token renews nothing once the key is completed (`owner`'s, whose lease
/// lapsed) or released, nor does any token renew a key never begun.
async fn a_finished_or_absent_record_is_not_renewed<S: Store>(
    store: &S,
    clock: &ManualClock,
    owner: &BeginRequest,
) {
    // Completed: the owner's own token renews nothing any more.
    assert_eq!(
        complete(store, owner, sample_response()).await,
        TransitionOutcome::Applied
    );
    let completed = record(store, clock, owner.id).await;
    assert_eq!(
        renew(store, owner, LEASE).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(record(store, clock, owner.id).await, completed);

    // Released: the record does not come back.
    let released = begin_request(fresh_id(), "released");
    begin(store, released.clone()).await;
    assert_eq!(release(store, &released).await, TransitionOutcome::Applied);
    assert_eq!(
        renew(store, &released, LEASE).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(get(store, released.id).await, None);

    // Never begun.
    let absent = begin_request(fresh_id(), "absent");
    assert_eq!(
        renew(store, &absent, LEASE).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(get(store, absent.id).await, None);
}

/// After `request`'s lease lapsed, with `left` until its record expires: every retry until
/// then is told the outcome is unknown (never acquires), and the record expires exactly
/// `left` later, the key then free.
async fn unknown_until_expiry<S: Store>(
    store: &S,
    clock: &ManualClock,
    request: &BeginRequest,
    left: Duration,
) {
    assert_eq!(
        begin(store, retry(request)).await,
        BeginOutcome::OutcomeUnknown,
        "a lapsed lease is an unknown outcome, not a free key"
    );
    clock.advance(left - MILLISECOND);
    assert_eq!(
        begin(store, retry(request)).await,
        BeginOutcome::OutcomeUnknown,
        "still kept a TTL after the lease lapsed"
    );
    let snapshot = get(store, request.id).await.expect("still kept");
    assert_eq!(snapshot.lease_left(), Some(Duration::ZERO));
    assert_eq!(snapshot.expires_in(), MILLISECOND);
    clock.advance(MILLISECOND);
    assert_eq!(get(store, request.id).await, None);
    assert_eq!(
        begin(store, retry(request)).await,
        BeginOutcome::Acquired,
        "expired a TTL after the lease lapsed"
    );
}

/// An in-flight record is kept a whole TTL after its lease lapses, however short its TTL and
/// however long it was renewed: the key of an owner that crashed answers
/// [`BeginOutcome::OutcomeUnknown`], never [`BeginOutcome::Acquired`], until a TTL after the
/// lapse, when it expires. A renewal moves the expiry forward with the lease, never back.
pub async fn lapsed_lease_is_kept_a_ttl_after_the_lapse<S: Store>(store: S, clock: ManualClock) {
    // A TTL shorter than the lease.
    let short_ttl = BeginRequest {
        lease: 2 * MINUTE,
        ttl: MINUTE,
        ..begin_request(fresh_id(), "short ttl")
    };
    let at = clock.now();
    assert_eq!(
        begin(&store, short_ttl.clone()).await,
        BeginOutcome::Acquired
    );
    assert_eq!(
        record(&store, &clock, short_ttl.id).await,
        Some(acquired_at(&short_ttl, at))
    );
    clock.advance(2 * MINUTE);
    unknown_until_expiry(&store, &clock, &short_ttl, MINUTE).await;

    // Renewed every 20 s for five minutes, far past the TTL it was begun with.
    let owner = BeginRequest {
        ttl: MINUTE,
        ..begin_request(fresh_id(), "renewed")
    };
    begin(&store, owner.clone()).await;
    for _ in 0..15 {
        clock.advance(Duration::from_secs(20));
        assert_eq!(
            renew(&store, &owner, LEASE).await,
            TransitionOutcome::Applied
        );
        let snapshot = get(&store, owner.id)
            .await
            .expect("kept under a live lease");
        assert_eq!(snapshot.lease_left(), Some(LEASE));
        assert_eq!(
            snapshot.expires_in(),
            LEASE + MINUTE,
            "kept a TTL past the renewed lease"
        );
    }
    assert_eq!(
        begin(&store, retry(&owner)).await,
        BeginOutcome::InFlight { lease_left: LEASE }
    );
    // A longer lease carries the expiry along; a shorter one does not bring it back.
    assert_eq!(
        renew(&store, &owner, 10 * MINUTE).await,
        TransitionOutcome::Applied
    );
    let snapshot = get(&store, owner.id).await.expect("in flight");
    assert_eq!(snapshot.expires_in(), 11 * MINUTE);
    clock.advance(9 * MINUTE);
    assert_eq!(
        begin(&store, retry(&owner)).await,
        BeginOutcome::InFlight { lease_left: MINUTE }
    );
    assert_eq!(
        renew(&store, &owner, SECOND).await,
        TransitionOutcome::Applied
    );
    let snapshot = get(&store, owner.id).await.expect("in flight");
    assert_eq!(snapshot.lease_left(), Some(SECOND));
    assert_eq!(snapshot.expires_in(), 2 * MINUTE);
    // The owner crashes: its lease lapses, and the record is kept at least a TTL more.
    clock.advance(SECOND);
    unknown_until_expiry(&store, &clock, &owner, 2 * MINUTE - SECOND).await;

    // An owner that completes after its lease lapsed is still heard within that TTL.
    let late = BeginRequest {
        lease: 2 * MINUTE,
        ttl: MINUTE,
        ..begin_request(fresh_id(), "late")
    };
    begin(&store, late.clone()).await;
    clock.advance(3 * MINUTE - MILLISECOND);
    assert_eq!(
        complete(&store, &late, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        begin(&store, retry(&late)).await,
        BeginOutcome::Replay(sample_response())
    );
}

/// A begin run again with its own token (its first reply was lost, and the driver ran it
/// again) is acquired again: while the lease is live it changes nothing, and once the lease
/// lapsed it gets a whole lease from now, its expiry carried along, rather than being told the
/// outcome is unknown. The same token with another request's fingerprint is still a mismatch,
/// and once completed, the begin replays.
pub async fn begin_run_again_with_its_own_token_is_acquired<S: Store>(
    store: S,
    clock: ManualClock,
) {
    let request = begin_request(fresh_id(), "run twice");
    let at = clock.now();
    for _ in 0..2 {
        assert_eq!(begin(&store, request.clone()).await, BeginOutcome::Acquired);
        assert_eq!(
            record(&store, &clock, request.id).await,
            Some(acquired_at(&request, at)),
            "a begin run again changes nothing"
        );
    }
    clock.advance(Duration::from_secs(20));
    assert_eq!(begin(&store, request.clone()).await, BeginOutcome::Acquired);
    assert_eq!(
        begin(&store, retry(&request)).await,
        BeginOutcome::InFlight {
            lease_left: Duration::from_secs(10)
        },
        "the lease was not moved"
    );
    let other_request = BeginRequest {
        fingerprint: fingerprint("another request"),
        ..request.clone()
    };
    assert_eq!(begin(&store, other_request).await, BeginOutcome::Mismatch);

    // Lapsed: acquired again with a fresh lease, the expiry a TTL past it.
    clock.advance(LEASE);
    let again = clock.now();
    assert_eq!(begin(&store, request.clone()).await, BeginOutcome::Acquired);
    assert_eq!(
        record(&store, &clock, request.id).await,
        Some(acquired_at(&request, again))
    );
    assert_eq!(
        begin(&store, retry(&request)).await,
        BeginOutcome::InFlight { lease_left: LEASE }
    );
    // Likewise when it may take a lapsed lease over: it keeps its own token.
    let may_take_over = BeginRequest {
        on_lapse: OnLapse::TakeOver,
        ..request.clone()
    };
    clock.advance(LEASE + SECOND);
    let later = clock.now();
    assert_eq!(
        begin(&store, may_take_over.clone()).await,
        BeginOutcome::Acquired
    );
    assert_eq!(
        record(&store, &clock, request.id).await,
        Some(acquired_at(&request, later))
    );
    assert_eq!(
        complete(&store, &request, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        begin(&store, request.clone()).await,
        BeginOutcome::Replay(sample_response())
    );
}

/// Completion is final: the owner cannot complete again, renew, release, or be taken over.
pub async fn completion_is_final<S: Store>(store: S, clock: ManualClock) {
    let owner = begin_request(fresh_id(), "once");
    begin(&store, owner.clone()).await;
    assert_eq!(
        complete(&store, &owner, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        complete(&store, &owner, other_response()).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        renew(&store, &owner, LEASE).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(release(&store, &owner).await, TransitionOutcome::StaleLease);
    clock.advance(TTL / 2);
    assert_eq!(
        begin(&store, taking_over(&owner)).await,
        BeginOutcome::Replay(sample_response())
    );
}

/// A record past its expiry behaves as absent: it reads as absent, any request acquires it,
/// and its old owner is fenced off. A completed record expires a TTL after its completion, an
/// abandoned in-flight one a TTL after its lease lapsed.
pub async fn expired_record_behaves_as_absent<S: Store>(store: S, clock: ManualClock) {
    let first = begin_request(fresh_id(), "old");
    begin(&store, first.clone()).await;
    assert_eq!(
        complete(&store, &first, sample_response()).await,
        TransitionOutcome::Applied
    );
    // An in-flight record whose owner is gone: its lease lapses, and a TTL later it expires.
    let abandoned = begin_request(fresh_id(), "gone");
    begin(&store, abandoned.clone()).await;

    clock.advance(TTL - MILLISECOND);
    assert!(matches!(
        record(&store, &clock, first.id).await,
        Some(Record {
            state: RecordState::Completed { .. },
            ..
        })
    ));
    assert!(get(&store, abandoned.id).await.is_some());
    clock.advance(MILLISECOND);
    assert_eq!(get(&store, first.id).await, None);
    assert_eq!(
        begin(&store, retry(&abandoned)).await,
        BeginOutcome::OutcomeUnknown,
        "a TTL after it began, but not yet a TTL after its lease lapsed"
    );
    clock.advance(LEASE - MILLISECOND);
    assert!(get(&store, abandoned.id).await.is_some());
    clock.advance(MILLISECOND);
    assert_eq!(get(&store, abandoned.id).await, None);

    assert_eq!(
        begin(&store, begin_request(first.id, "new request")).await,
        BeginOutcome::Acquired
    );
    // The abandoned owner is fenced off, and its record does not come back.
    assert_eq!(
        renew(&store, &abandoned, LEASE).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        release(&store, &abandoned).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        complete(&store, &abandoned, sample_response()).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(get(&store, abandoned.id).await, None);
    assert_eq!(
        begin(&store, retry(&abandoned)).await,
        BeginOutcome::Acquired
    );
}

/// `get` reports absent, in flight (with fingerprint, token, lease and expiry) and completed
/// (with its response and the completion's TTL).
pub async fn status_reports_each_state<S: Store>(store: S, clock: ManualClock) {
    let request = begin_request(fresh_id(), "status");
    assert_eq!(get(&store, request.id).await, None);
    let at = clock.now();
    begin(&store, request.clone()).await;
    assert_eq!(
        record(&store, &clock, request.id).await,
        Some(Record {
            state: RecordState::InFlight {
                fingerprint: request.fingerprint,
                token: request.token,
                lease_until: at.plus(LEASE),
            },
            expires_at: at.plus(LEASE + TTL),
        })
    );
    clock.advance(SECOND);
    let completed_at = clock.now();
    assert_eq!(
        complete_for(&store, &request, sample_response(), 2 * TTL).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        record(&store, &clock, request.id).await,
        Some(Record {
            state: RecordState::Completed {
                fingerprint: request.fingerprint,
                response: sample_response(),
            },
            expires_at: completed_at.plus(2 * TTL),
        })
    );
}

/// A snapshot carries the store's clock, so its lease left and its time to expiry are exact:
/// while the lease is live, once it lapsed (zero), and once completed (no lease).
pub async fn snapshot_reads_the_store_clock<S: Store>(store: S, clock: ManualClock) {
    let request = begin_request(fresh_id(), "snapshot");
    begin(&store, request.clone()).await;
    let snapshot = get(&store, request.id).await.expect("in flight");
    assert_eq!(snapshot.now, clock.now());
    assert_eq!(snapshot.lease_left(), Some(LEASE));
    assert_eq!(snapshot.expires_in(), LEASE + TTL);

    clock.advance(Duration::from_secs(12));
    let snapshot = get(&store, request.id).await.expect("in flight");
    assert_eq!(snapshot.now, clock.now());
    assert_eq!(snapshot.lease_left(), Some(Duration::from_secs(18)));
    assert_eq!(snapshot.expires_in(), LEASE + TTL - Duration::from_secs(12));

    clock.advance(Duration::from_secs(20));
    let snapshot = get(&store, request.id).await.expect("lapsed, still kept");
    assert_eq!(snapshot.now, clock.now());
    assert_eq!(snapshot.lease_left(), Some(Duration::ZERO));
    assert_eq!(snapshot.expires_in(), LEASE + TTL - Duration::from_secs(32));

    assert_eq!(
        complete_for(&store, &request, sample_response(), MINUTE).await,
        TransitionOutcome::Applied
    );
    clock.advance(SECOND);
    let snapshot = get(&store, request.id).await.expect("completed");
    assert_eq!(snapshot.now, clock.now());
    assert_eq!(snapshot.lease_left(), None);
    assert_eq!(snapshot.expires_in(), MINUTE - SECOND);
}

/// Operations on one record never touch another.
pub async fn records_are_isolated_by_id<S: Store>(store: S, clock: ManualClock) {
    let a = begin_request(fresh_id(), "same");
    let b = begin_request(fresh_id(), "same");
    assert_eq!(begin(&store, a.clone()).await, BeginOutcome::Acquired);
    assert_eq!(begin(&store, b.clone()).await, BeginOutcome::Acquired);
    let b_at = clock.now();
    assert_eq!(
        complete(&store, &a, sample_response()).await,
        TransitionOutcome::Applied
    );
    clock.advance(SECOND);
    assert_eq!(
        renew(&store, &a, LEASE).await,
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        record(&store, &clock, b.id).await,
        Some(acquired_at(&b, b_at))
    );
    assert_eq!(release(&store, &b).await, TransitionOutcome::Applied);
    assert!(matches!(
        record(&store, &clock, a.id).await,
        Some(Record {
            state: RecordState::Completed { .. },
            ..
        })
    ));
}

/// The records the sweep checks let expire: in flight and completed, with a lease and TTL of
/// [`SHORT`]: all of them expired [`SHORT_LIVED`] later.
async fn short_lived_records<S: Store>(store: &S) -> Vec<BeginRequest> {
    let mut short_lived = Vec::new();
    for n in 0..5 {
        let request = BeginRequest {
            lease: SHORT,
            ttl: SHORT,
            ..begin_request(fresh_id(), "short")
        };
        assert_eq!(begin(store, request.clone()).await, BeginOutcome::Acquired);
        if n % 2 == 0 {
            assert_eq!(
                complete_for(store, &request, sample_response(), SHORT).await,
                TransitionOutcome::Applied
            );
        }
        short_lived.push(request);
    }
    short_lived
}

/// The sweeper deletes expired records (by the store's clock), in batches no larger than
/// asked, and nothing live.
pub async fn sweep_deletes_only_expired_records<S: Store>(store: S, clock: ManualClock) {
    let short_lived = short_lived_records(&store).await;
    let in_flight = begin_request(fresh_id(), "long");
    begin(&store, in_flight.clone()).await;
    let completed = begin_request(fresh_id(), "long, completed");
    begin(&store, completed.clone()).await;
    assert_eq!(
        complete(&store, &completed, sample_response()).await,
        TransitionOutcome::Applied
    );

    // Nothing has expired yet: whatever a sweep deletes is some other test's garbage.
    clock.advance(SHORT_LIVED);
    let first_batch = store.sweep_expired(2).await.expect("sweep");
    assert!(
        first_batch <= 2,
        "a sweep deletes at most its batch ({first_batch} > 2)"
    );
    let mut swept = first_batch;
    loop {
        let batch = store.sweep_expired(100).await.expect("sweep");
        assert!(batch <= 100, "a sweep deletes at most its batch");
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
    for request in &short_lived {
        assert_eq!(get(&store, request.id).await, None);
        // Their owners are fenced off, and the key is free.
        assert_eq!(
            complete(&store, request, sample_response()).await,
            TransitionOutcome::StaleLease
        );
        assert_eq!(
            begin(&store, begin_request(request.id, "next")).await,
            BeginOutcome::Acquired
        );
    }
    assert_eq!(
        begin(&store, retry(&in_flight)).await,
        BeginOutcome::InFlight {
            lease_left: LEASE - SHORT_LIVED
        },
        "live records survive"
    );
    assert_eq!(
        begin(&store, retry(&completed)).await,
        BeginOutcome::Replay(sample_response()),
        "live records survive"
    );
}

/// For stores that expire records natively: records past their expiry (by the store's
/// clock) read as absent and are acquired afresh, while live ones are kept, whether or not
/// `sweep_expired` deletes anything (it must still never delete more than its batch).
pub async fn expired_records_behave_as_absent_without_a_sweep<S: Store>(
    store: S,
    clock: ManualClock,
) {
    let short_lived = short_lived_records(&store).await;
    let long = begin_request(fresh_id(), "long");
    begin(&store, long.clone()).await;
    clock.advance(SHORT_LIVED);
    assert!(store.sweep_expired(1).await.expect("sweep") <= 1);
    for request in &short_lived {
        assert_eq!(get(&store, request.id).await, None);
        assert_eq!(
            renew(&store, request, LEASE).await,
            TransitionOutcome::StaleLease
        );
        assert_eq!(
            begin(&store, begin_request(request.id, "another")).await,
            BeginOutcome::Acquired
        );
    }
    assert_eq!(
        begin(&store, retry(&long)).await,
        BeginOutcome::InFlight {
            lease_left: LEASE - SHORT_LIVED
        },
        "live records survive"
    );
}

/// A watched execution's completion and its release are announced on the feed the watch
/// answered, an execution nobody watched is not announced, and a record that is not in flight
/// cannot be watched. A store that does not announce answers `Unsupported` to every watch.
pub async fn watched_finishes_are_announced<S: Store>(store: S, _clock: ManualClock) {
    let unwatched = begin_request(fresh_id(), "nobody waits for it");
    let completed = begin_request(fresh_id(), "waited for, completes");
    let released = begin_request(fresh_id(), "waited for, released");
    for request in [&unwatched, &completed, &released] {
        assert_eq!(begin(&store, request.clone()).await, BeginOutcome::Acquired);
    }
    let mut feed = match watch(&store, completed.id).await {
        Watch::Unsupported => {
            assert!(matches!(
                watch(&store, fresh_id()).await,
                Watch::Unsupported
            ));
            return;
        }
        Watch::Announced(feed) => feed,
        other => panic!("an in-flight record is watched, not {other:?}"),
    };
    let Watch::Announced(mut released_feed) = watch(&store, released.id).await else {
        panic!("an in-flight record is watched");
    };
    // Finished first: were it announced, it would be heard before the watched one.
    assert_eq!(
        complete(&store, &unwatched, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        complete(&store, &completed, sample_response()).await,
        TransitionOutcome::Applied
    );
    assert_eq!(
        next_announced(&mut feed, &[unwatched.id, completed.id]).await,
        completed.id,
        "only watched executions are announced"
    );
    assert_eq!(release(&store, &released).await, TransitionOutcome::Applied);
    assert_eq!(
        next_announced(&mut released_feed, &[released.id]).await,
        released.id
    );
    for id in [completed.id, released.id, fresh_id()] {
        assert!(
            matches!(watch(&store, id).await, Watch::NotInFlight),
            "completed, released and absent records are not in flight"
        );
    }
}

async fn watch<S: Store>(store: &S, id: RecordId) -> Watch {
    store.watch(id).await.expect("watch answers")
}

/// The first of `ids` announced on `feed`, skipping the records of other checks that share
/// the store; fails after ten seconds without one.
async fn next_announced(feed: &mut crate::FinishFeed, ids: &[RecordId]) -> RecordId {
    let wait = async {
        loop {
            match feed.recv().await {
                Ok(id) if ids.contains(&id) => return id,
                Ok(_) => {}
                Err(error) => panic!("the feed failed: {error}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("an announcement within ten seconds")
}
