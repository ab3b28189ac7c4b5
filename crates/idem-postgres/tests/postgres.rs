//! PostgreSQL-specific behaviour beyond the conformance suite: migrations, faults, and races
//! on the takeover paths of `begin`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::{
    BeginOutcome, BeginRequest, Clock, Fingerprint, LeaseToken, RecordId, Store, StoreError,
    SystemClock, Timestamp,
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

fn url() -> String {
    std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn store() -> PostgresStore {
    PostgresStore::builder(&url())
        .max_connections(TEST_POOL_SIZE)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL at {} must be reachable: {error}", url()))
}

/// A URL nothing listens on: port 1 is reserved and closed.
const CLOSED_PORT_URL: &str = "postgres://postgres@127.0.0.1:1/test";

fn request(id: RecordId, name: &str, now: Timestamp, lease: Duration) -> BeginRequest {
    BeginRequest {
        id,
        fingerprint: Fingerprint::builder()
            .part("postgres-test", name.as_bytes())
            .finish(),
        token: LeaseToken::random(),
        now,
        lease_until: now.plus(lease),
        expires_at: now.plus(Duration::from_secs(3600)),
    }
}

fn fresh_id() -> RecordId {
    RecordId::from_bytes(rand::random())
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let first = store().await;
    first.migrate().await.expect("migrating again does nothing");
    // Several instances starting at once: the advisory lock lets one migrate at a time.
    let starts: Vec<_> = (0..4).map(|_| tokio::spawn(store())).collect();
    for start in starts {
        let store = start.await.expect("task");
        let now = SystemClock.now();
        let outcome = store
            .begin(request(
                fresh_id(),
                "migrated",
                now,
                Duration::from_secs(30),
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
            SystemClock.now(),
            Duration::from_secs(30),
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

/// Many begins racing at one instant on a record that may be taken over: exactly one
/// acquires. This is the path where `begin` finds the row acquirable in its snapshot and
/// must decide on the latest version under the row lock.
async fn exactly_one_takes_over(store: Arc<PostgresStore>, first: BeginRequest, at: Timestamp) {
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            let retry = request(first.id, "takeover", at, Duration::from_secs(30));
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
        "exactly one of {RACERS} takes the record over"
    );
    let Some(idem_core::RecordState::InFlight { token, .. }) =
        store.get(first.id, at).await.expect("get")
    else {
        panic!("the record is in flight after the race");
    };
    assert_eq!(token, winners[0], "the winner's token is the record's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_many_concurrent_takeovers_of_a_lapsed_lease_acquires() {
    let store = Arc::new(store().await);
    let now = SystemClock.now();
    let first = request(fresh_id(), "takeover", now, Duration::from_secs(1));
    exactly_one_takes_over(store, first, now.plus(Duration::from_secs(2))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_many_concurrent_begins_on_an_expired_record_acquires() {
    let store = Arc::new(store().await);
    let now = SystemClock.now();
    let first = BeginRequest {
        expires_at: now.plus(Duration::from_secs(1)),
        ..request(fresh_id(), "takeover", now, Duration::from_secs(1))
    };
    exactly_one_takes_over(store, first, now.plus(Duration::from_secs(5))).await;
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
