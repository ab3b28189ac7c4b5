//! PostgreSQL-specific behaviour beyond the conformance suite: migrations, faults, races on
//! the takeover paths of `begin`, leases decided by the database's own clock, and the
//! durability settings read from the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, Fingerprint, LeaseToken, ManualClock,
    OnLapse, RecordId, RecordState, Store, StoreError, StoredResponse, SystemClock, Timestamp,
    TransitionOutcome,
};
use idem_postgres::{
    ACQUIRE_TIMEOUT, CONNECT_TIMEOUT, ConnectError, OPERATION_TIMEOUT, PostgresStore,
};

/// Small pools: these tests run in parallel with each other.
const TEST_POOL_SIZE: u32 = 4;
/// Concurrent begins racing on one key at a takeover.
const RACERS: usize = 64;
/// Slack over a documented timeout for a busy test machine.
const SLACK: Duration = Duration::from_secs(2);
/// A lease short enough to lapse by real time within a test.
const SHORT_LEASE: Duration = Duration::from_millis(300);

fn url() -> String {
    std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A store on the database's own clock, as in production.
async fn store() -> PostgresStore {
    store_at(&url()).await
}

async fn store_at(url: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .max_connections(TEST_POOL_SIZE)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL at {url} must be reachable: {error}"))
}

/// A store whose time moves only when the test moves `clock`.
async fn store_with_clock(clock: &ManualClock) -> PostgresStore {
    PostgresStore::builder(&url())
        .max_connections(TEST_POOL_SIZE)
        .clock(clock.clone())
        .connect()
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL at {} must be reachable: {error}", url()))
}

/// A manual clock at the real time, so records it writes look like everyone else's.
fn manual_clock() -> ManualClock {
    ManualClock::new(SystemClock.now())
}

/// A URL nothing listens on: port 1 is reserved and closed.
const CLOSED_PORT_URL: &str = "postgres://postgres@127.0.0.1:1/test";

fn request(id: RecordId, name: &str, lease: Duration, on_lapse: OnLapse) -> BeginRequest {
    BeginRequest {
        id,
        fingerprint: Fingerprint::builder()
            .part("postgres-test", name.as_bytes())
            .finish(),
        token: LeaseToken::random(),
        lease,
        ttl: Duration::from_secs(3600),
        on_lapse,
    }
}

fn fresh_id() -> RecordId {
    RecordId::from_bytes(rand::random())
}

fn completion(id: RecordId, token: LeaseToken) -> CompleteRequest {
    CompleteRequest {
        id,
        token,
        response: StoredResponse {
            status: 201,
            headers: vec![],
            body: Some("done".into()),
        },
        ttl: Duration::from_secs(3600),
    }
}

/// The token of the in-flight record `id`.
async fn in_flight_token(store: &PostgresStore, id: RecordId) -> LeaseToken {
    let snapshot = store
        .get(id)
        .await
        .expect("get")
        .expect("the record is live");
    match snapshot.record.state {
        RecordState::InFlight { token, .. } => token,
        RecordState::Completed { .. } => panic!("the record is in flight"),
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let first = store().await;
    first.migrate().await.expect("migrating again does nothing");
    // Several instances starting at once: the advisory lock lets one migrate at a time.
    let starts: Vec<_> = (0..4).map(|_| tokio::spawn(store())).collect();
    for start in starts {
        let store = start.await.expect("task");
        let outcome = store
            .begin(request(
                fresh_id(),
                "migrated",
                Duration::from_secs(30),
                OnLapse::ReportUnknown,
            ))
            .await
            .expect("the schema is usable");
        assert_eq!(outcome, BeginOutcome::Acquired);
    }
}

#[tokio::test]
async fn unreachable_server_is_unavailable_promptly_not_a_hang() {
    let store = PostgresStore::builder(CLOSED_PORT_URL)
        .connect_lazy()
        .expect("a valid URL");
    let started = Instant::now();
    let outcome = store
        .begin(request(
            fresh_id(),
            "down",
            Duration::from_secs(30),
            OnLapse::ReportUnknown,
        ))
        .await;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "expected Unavailable, got {outcome:?}"
    );
    assert!(
        started.elapsed() < ACQUIRE_TIMEOUT + SLACK,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connect_to_an_unreachable_server_fails_with_its_cause() {
    let started = Instant::now();
    let error = PostgresStore::connect(CLOSED_PORT_URL)
        .await
        .expect_err("nothing listens there");
    assert!(matches!(error, ConnectError::Connect(_)), "{error:?}");
    assert!(
        started.elapsed() < CONNECT_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(
        PostgresStore::connect("not a url").await,
        Err(ConnectError::InvalidUrl(_))
    ));
}

/// Many begins racing at one instant on a record that may be acquired again: exactly one
/// acquires. This is the path where `begin` finds the row acquirable in its snapshot and must
/// decide on the latest version under the row lock. `first` is begun, then `clock` moves by
/// `wait`, then the racers begin with `on_lapse`.
async fn exactly_one_acquires_again(
    store: Arc<PostgresStore>,
    clock: &ManualClock,
    first: BeginRequest,
    wait: Duration,
    on_lapse: OnLapse,
) {
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    clock.advance(wait);
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            let retry = request(first.id, "takeover", Duration::from_secs(30), on_lapse);
            tokio::spawn(async move {
                barrier.wait().await;
                (
                    retry.token,
                    store.begin(retry).await.expect("begin answers"),
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        match racer.await.expect("task") {
            (token, BeginOutcome::Acquired) => winners.push(token),
            (_, BeginOutcome::InFlight { .. }) => {}
            (_, other) => panic!("unexpected outcome in a takeover race: {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of {RACERS} acquires the record again"
    );
    assert_eq!(
        in_flight_token(&store, first.id).await,
        winners[0],
        "the winner's token is the record's"
    );
    assert_eq!(
        store
            .complete(completion(first.id, first.token))
            .await
            .expect("complete"),
        TransitionOutcome::StaleLease,
        "the first owner is fenced off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_many_concurrent_takeovers_of_a_lapsed_lease_acquires() {
    let clock = manual_clock();
    let store = Arc::new(store_with_clock(&clock).await);
    let first = request(
        fresh_id(),
        "takeover",
        Duration::from_secs(1),
        OnLapse::ReportUnknown,
    );
    exactly_one_acquires_again(
        store,
        &clock,
        first,
        Duration::from_secs(2),
        OnLapse::TakeOver,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_many_concurrent_begins_on_an_expired_record_acquires() {
    let clock = manual_clock();
    let store = Arc::new(store_with_clock(&clock).await);
    let first = BeginRequest {
        ttl: Duration::from_secs(1),
        ..request(
            fresh_id(),
            "takeover",
            Duration::from_secs(1),
            OnLapse::ReportUnknown,
        )
    };
    // An expired record is absent: it is acquired without asking to take over.
    exactly_one_acquires_again(
        store,
        &clock,
        first,
        Duration::from_secs(5),
        OnLapse::ReportUnknown,
    )
    .await;
}

#[tokio::test]
async fn with_the_database_clock_a_lease_lapses_by_real_time() {
    let store = store().await;
    let first = request(fresh_id(), "lapse", SHORT_LEASE, OnLapse::ReportUnknown);
    let id = first.id;
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    match store
        .begin(request(id, "lapse", SHORT_LEASE, OnLapse::ReportUnknown))
        .await
        .expect("begin")
    {
        BeginOutcome::InFlight { lease_left } => {
            assert!(lease_left <= SHORT_LEASE, "{lease_left:?}");
        }
        other => panic!("expected InFlight while the lease is live, got {other:?}"),
    }

    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(200)).await;
    assert_eq!(
        store
            .begin(request(id, "lapse", SHORT_LEASE, OnLapse::ReportUnknown))
            .await
            .expect("begin"),
        BeginOutcome::OutcomeUnknown,
        "a lapsed lease is reported, not taken over"
    );
    assert_eq!(
        in_flight_token(&store, id).await,
        first.token,
        "reporting the outcome unknown changes nothing"
    );

    let takeover = request(id, "lapse", Duration::from_secs(30), OnLapse::TakeOver);
    assert_eq!(
        store.begin(takeover.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    assert_eq!(in_flight_token(&store, id).await, takeover.token);
    assert_eq!(
        store
            .renew(id, first.token, SHORT_LEASE)
            .await
            .expect("renew"),
        TransitionOutcome::StaleLease,
        "the lapsed owner is fenced off"
    );
}

/// The transaction that wrote the row's current version: unchanged while nothing writes it.
async fn row_version(store: &PostgresStore, id: RecordId) -> String {
    sqlx::query_scalar("SELECT xmin::text FROM idem_records WHERE id = $1")
        .bind(id.as_bytes().as_slice())
        .fetch_one(store.pool())
        .await
        .expect("the row exists")
}

#[tokio::test]
async fn replays_and_outcome_unknown_answers_write_nothing() {
    let clock = manual_clock();
    let store = store_with_clock(&clock).await;

    let lapsed = request(fresh_id(), "read-only", SHORT_LEASE, OnLapse::ReportUnknown);
    assert_eq!(
        store.begin(lapsed.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    clock.advance(SHORT_LEASE * 2);
    let version = row_version(&store, lapsed.id).await;
    for _ in 0..2 {
        let retry = request(lapsed.id, "read-only", SHORT_LEASE, OnLapse::ReportUnknown);
        assert_eq!(
            store.begin(retry).await.expect("begin"),
            BeginOutcome::OutcomeUnknown
        );
    }
    assert_eq!(row_version(&store, lapsed.id).await, version);

    let done = request(fresh_id(), "read-only", SHORT_LEASE, OnLapse::TakeOver);
    store.begin(done.clone()).await.expect("begin");
    store
        .complete(completion(done.id, done.token))
        .await
        .expect("complete");
    let version = row_version(&store, done.id).await;
    for _ in 0..2 {
        let retry = request(done.id, "read-only", SHORT_LEASE, OnLapse::TakeOver);
        assert!(matches!(
            store.begin(retry).await.expect("begin"),
            BeginOutcome::Replay(_)
        ));
    }
    assert_eq!(row_version(&store, done.id).await, version);
}

#[tokio::test]
async fn renewing_keeps_a_record_in_flight_past_its_first_lease() {
    let store = store().await;
    let first = request(fresh_id(), "renew", SHORT_LEASE, OnLapse::ReportUnknown);
    let id = first.id;
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    // Three times the first lease, renewing every half lease.
    for _ in 0..6 {
        tokio::time::sleep(SHORT_LEASE / 2).await;
        assert_eq!(
            store
                .renew(id, first.token, SHORT_LEASE)
                .await
                .expect("renew"),
            TransitionOutcome::Applied
        );
    }
    assert!(
        matches!(
            store
                .begin(request(id, "renew", SHORT_LEASE, OnLapse::TakeOver))
                .await
                .expect("begin"),
            BeginOutcome::InFlight { .. }
        ),
        "a renewed lease is live, and not taken over"
    );

    // Once lapsed (and not taken over) it may still be renewed by its owner.
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(200)).await;
    assert_eq!(
        store
            .renew(id, first.token, SHORT_LEASE)
            .await
            .expect("renew"),
        TransitionOutcome::Applied
    );
    assert!(matches!(
        store
            .begin(request(id, "renew", SHORT_LEASE, OnLapse::ReportUnknown))
            .await
            .expect("begin"),
        BeginOutcome::InFlight { .. }
    ));
    assert_eq!(
        store
            .complete(completion(id, first.token))
            .await
            .expect("complete"),
        TransitionOutcome::Applied
    );
}

/// Begins run again with the owner's own token (replies lost, the driver re-ran them) race
/// with takeovers of its lapsed lease: exactly one token ends up acquiring, every begin that
/// carries it is answered `Acquired`, and the record holds it with a whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn begins_run_again_with_their_own_token_race_takeovers_safely() {
    let clock = manual_clock();
    let store = Arc::new(store_with_clock(&clock).await);
    let first = request(
        fresh_id(),
        "own token",
        Duration::from_secs(30),
        OnLapse::ReportUnknown,
    );
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    // Run again while the lease is live: acquired, nothing written.
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    clock.advance(Duration::from_secs(31));
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|n| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            let racer = if n % 2 == 0 {
                first.clone()
            } else {
                request(
                    first.id,
                    "own token",
                    Duration::from_secs(30),
                    OnLapse::TakeOver,
                )
            };
            tokio::spawn(async move {
                barrier.wait().await;
                (
                    racer.token,
                    store.begin(racer).await.expect("begin answers"),
                )
            })
        })
        .collect();
    let mut winners = std::collections::HashSet::new();
    for racer in racers {
        match racer.await.expect("task") {
            (token, BeginOutcome::Acquired) => {
                winners.insert(token);
            }
            (_, BeginOutcome::InFlight { .. }) => {}
            (_, other) => panic!("unexpected outcome in a race: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "one token acquires: {winners:?}");
    let winner = *winners.iter().next().expect("a winner");
    assert_eq!(in_flight_token(&store, first.id).await, winner);
    let snapshot = store.get(first.id).await.expect("get").expect("live");
    assert_eq!(snapshot.lease_left(), Some(Duration::from_secs(30)));
    assert_eq!(
        snapshot.expires_in(),
        Duration::from_secs(30) + first.ttl,
        "kept a TTL past the lease"
    );
}

/// A renewal moves the expiry forward by as much as the lease: the record is still kept a TTL
/// past its renewed lease.
#[tokio::test]
async fn renewing_carries_the_expiry_a_ttl_past_the_lease() {
    let clock = manual_clock();
    let store = store_with_clock(&clock).await;
    let first = BeginRequest {
        ttl: Duration::from_secs(10),
        ..request(
            fresh_id(),
            "expiry",
            Duration::from_secs(5),
            OnLapse::ReportUnknown,
        )
    };
    let id = first.id;
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    clock.advance(Duration::from_secs(8));
    assert_eq!(
        store
            .renew(id, first.token, Duration::from_secs(60))
            .await
            .expect("renew"),
        TransitionOutcome::Applied
    );
    let snapshot = store.get(id).await.expect("get").expect("live");
    assert_eq!(
        snapshot.now,
        clock.now(),
        "the test clock is the store's now"
    );
    assert_eq!(snapshot.lease_left(), Some(Duration::from_secs(60)));
    assert_eq!(snapshot.expires_in(), Duration::from_secs(70));
}

#[tokio::test]
async fn get_answers_the_database_clock() {
    let store = store().await;
    let first = request(
        fresh_id(),
        "clock",
        Duration::from_secs(30),
        OnLapse::ReportUnknown,
    );
    let id = first.id;
    store.begin(first).await.expect("begin");
    let snapshot = store.get(id).await.expect("get").expect("live");
    // The test server runs on this machine, so its clock is ours give or take a little.
    let ours = SystemClock.now();
    let skew = ours.until(snapshot.now).max(snapshot.now.until(ours));
    assert!(skew < Duration::from_secs(5), "skew {skew:?}");
    let lease_left = snapshot.lease_left().expect("in flight");
    assert!(
        lease_left <= Duration::from_secs(30) && lease_left > Duration::from_secs(25),
        "{lease_left:?}"
    );
}

#[tokio::test]
async fn durations_of_forever_saturate_instead_of_overflowing() {
    let store = store().await;
    let first = BeginRequest {
        ttl: Duration::MAX,
        ..request(fresh_id(), "forever", Duration::MAX, OnLapse::ReportUnknown)
    };
    let id = first.id;
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    assert_eq!(
        store
            .renew(id, first.token, Duration::MAX)
            .await
            .expect("renew"),
        TransitionOutcome::Applied
    );
    let snapshot = store.get(id).await.expect("get").expect("live");
    assert_eq!(
        snapshot.record.expires_at,
        Timestamp::from_millis(u64::try_from(i64::MAX).expect("positive"))
    );
    let complete = CompleteRequest {
        ttl: Duration::MAX,
        ..completion(id, first.token)
    };
    assert_eq!(
        store.complete(complete).await.expect("complete"),
        TransitionOutcome::Applied
    );
}

#[tokio::test]
async fn durability_risks_are_read_from_the_server() {
    let store = store().await;
    let risks = store
        .durability_risks()
        .await
        .expect("the settings are readable");
    for risk in &risks {
        assert!(
            !risk.setting.is_empty() && !risk.risk.is_empty(),
            "{risk:?}"
        );
        assert!(!risk.refuse, "no PostgreSQL setting deletes live records");
    }

    // `synchronous_commit` is read as idem's own sessions have it (it may be set per role,
    // database or connection).
    let separator = if url().contains('?') { '&' } else { '?' };
    let asynchronous = store_at(&format!(
        "{}{separator}options=-c%20synchronous_commit%3Doff",
        url()
    ))
    .await;
    let risks = asynchronous
        .durability_risks()
        .await
        .expect("the settings are readable");
    assert!(
        risks
            .iter()
            .any(|risk| risk.setting == "synchronous_commit=off" && !risk.refuse),
        "{risks:?}"
    );
}

use idem_core::testkit::faults as support;

/// PostgreSQL's port when the URL names none.
const DEFAULT_PORT: u16 = 5432;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_is_unavailable_promptly_then_the_pool_recovers() {
    let (host_port, through) = support::split_authority(&url());
    let target = support::resolve(&host_port, DEFAULT_PORT).await;
    let proxy = support::Proxy::start("127.0.0.1:0".parse().expect("address"), target).await;
    let address = proxy.address;
    let store = PostgresStore::builder(&through(address))
        .max_connections(2)
        .connect()
        .await
        .expect("PostgreSQL through the proxy");
    support::outage_is_unavailable_promptly_then_recovers(
        &store,
        proxy,
        target,
        OPERATION_TIMEOUT + SLACK,
    )
    .await;
}

#[tokio::test]
async fn a_silent_server_is_unavailable_within_the_timeouts_not_a_hang() {
    let silent = support::Silent::start().await;
    let store = PostgresStore::builder(&format!("postgres://postgres@{}/test", silent.address))
        .connect_lazy()
        .expect("a valid URL");
    support::silent_server_is_unavailable_within(&store, OPERATION_TIMEOUT + SLACK).await;
}

/// Two instances (two pools) of one database: a duplicate waiting on one is woken by the
/// other's completion through `NOTIFY`. The waiter's pool has one connection: its `LISTEN`
/// must not take it (every statement after would wait for a connection and fail).
#[tokio::test]
async fn a_duplicate_waiting_on_another_instance_is_woken_by_notify() {
    let pool_of_one = PostgresStore::builder(&url())
        .max_connections(1)
        .connect()
        .await
        .expect("PostgreSQL must be reachable");
    idem_core::testkit::instances::a_waiter_on_another_instance_is_woken_by_the_announcement(
        store().await,
        pool_of_one,
    )
    .await;
}
