//! Redis-specific behaviour beyond the conformance suite: key layout and physical expiry,
//! key prefixes, faults.

use std::time::{Duration, Instant};

use idem_core::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, Fingerprint, LeaseToken, RecordId,
    RecordState, Store, StoreError, StoredResponse, SystemClock, Timestamp,
};
use idem_redis::{CONNECTION_TIMEOUT, ConnectError, EXPIRY_GRACE, OPERATION_TIMEOUT, RedisStore};

/// Slack over a documented timeout for a busy test machine.
const SLACK: Duration = Duration::from_secs(2);

/// A URL nothing listens on: port 1 is reserved and closed.
const CLOSED_PORT_URL: &str = "redis://127.0.0.1:1";

fn url() -> String {
    std::env::var("IDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn store_with_prefix(prefix: &str) -> RedisStore {
    RedisStore::builder()
        .key_prefix(prefix)
        .connect(&url())
        .await
        .unwrap_or_else(|error| panic!("Redis at {} must be reachable: {error}", url()))
}

/// A prefix no other test run uses, so tests can share the server.
fn unique_prefix(name: &str) -> String {
    format!("idem-test-{name}-{:016x}", rand::random::<u64>())
}

fn request(name: &str, now: Timestamp) -> BeginRequest {
    BeginRequest {
        id: RecordId::from_bytes(rand::random()),
        fingerprint: Fingerprint::builder()
            .part("redis-test", name.as_bytes())
            .finish(),
        token: LeaseToken::random(),
        now,
        lease_until: now.plus(Duration::from_secs(30)),
        expires_at: now.plus(Duration::from_secs(3600)),
    }
}

async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is reachable")
}

#[tokio::test]
async fn a_record_is_one_hash_that_redis_expires_after_a_grace_period() {
    let store = store_with_prefix(&unique_prefix("layout")).await;
    let now = SystemClock.now();
    let first = request("layout", now);
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    let key = store.key(first.id);
    assert!(
        key.ends_with(&format!(":{{{}}}", first.id.to_hex())),
        "{key}"
    );

    let mut redis = raw_connection().await;
    let kind: String = redis::cmd("TYPE")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("TYPE");
    assert_eq!(kind, "hash");
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("PTTL");
    let logical = now.until(first.expires_at) + EXPIRY_GRACE;
    let logical_ms = i64::try_from(logical.as_millis()).expect("fits");
    assert!(
        ttl_ms > logical_ms - 10_000 && ttl_ms <= logical_ms,
        "PTTL {ttl_ms} ms, expected about {logical_ms} ms"
    );

    // Completing with a short TTL shortens the physical expiry too, never below the grace.
    let response = StoredResponse {
        status: 200,
        headers: vec![],
        body: Some("ok".into()),
    };
    store
        .complete(CompleteRequest {
            id: first.id,
            token: first.token,
            response,
            now,
            expires_at: now.plus(Duration::from_secs(1)),
        })
        .await
        .expect("complete");
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("PTTL");
    let grace_ms = i64::try_from(EXPIRY_GRACE.as_millis()).expect("fits");
    assert!(
        ttl_ms > grace_ms - 10_000 && ttl_ms <= grace_ms + 1_000,
        "PTTL {ttl_ms} ms"
    );
}

#[tokio::test]
async fn stores_with_different_prefixes_never_see_each_others_records() {
    let (a, b) = (
        store_with_prefix(&unique_prefix("a")).await,
        store_with_prefix(&unique_prefix("b")).await,
    );
    let now = SystemClock.now();
    let in_a = request("shared id", now);
    assert_eq!(
        a.begin(in_a.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    assert_eq!(b.get(in_a.id, now).await.expect("get"), None);
    let in_b = BeginRequest {
        token: LeaseToken::random(),
        ..in_a.clone()
    };
    assert_eq!(
        b.begin(in_b.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    let Some(RecordState::InFlight { token, .. }) = a.get(in_a.id, now).await.expect("get") else {
        panic!("a's record is still in flight");
    };
    assert_eq!(token, in_a.token, "b's begin did not touch a's record");
}

#[tokio::test]
async fn unreachable_server_is_unavailable_promptly_not_a_hang() {
    let store = RedisStore::builder()
        .connect_lazy(CLOSED_PORT_URL)
        .expect("a valid URL");
    for _ in 0..2 {
        let started = Instant::now();
        let outcome = store.begin(request("down", SystemClock.now())).await;
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "expected Unavailable, got {outcome:?}"
        );
        assert!(
            started.elapsed() < CONNECTION_TIMEOUT + SLACK,
            "took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn connect_to_an_unreachable_server_fails_and_bad_options_are_refused() {
    let error = RedisStore::connect(CLOSED_PORT_URL)
        .await
        .expect_err("nothing listens there");
    assert!(matches!(error, ConnectError::Connect(_)), "{error:?}");
    // The cluster code path, without a cluster: no seed node answers.
    let started = Instant::now();
    let error = RedisStore::connect_cluster(&[CLOSED_PORT_URL])
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(error, ConnectError::Connect(_) | ConnectError::TimedOut(_)),
        "{error:?}"
    );
    assert!(
        started.elapsed() < OPERATION_TIMEOUT + SLACK,
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(
        RedisStore::builder()
            .key_prefix("a{b}")
            .connect_lazy(&url()),
        Err(ConnectError::InvalidKeyPrefix(_))
    ));
    assert!(matches!(
        RedisStore::connect("not a url").await,
        Err(ConnectError::InvalidUrl(_))
    ));
}

use idem_core::testkit::faults as support;

/// Redis's port when the URL names none.
const DEFAULT_PORT: u16 = 6379;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_unavailable_promptly_then_reconnects_by_itself() {
    let (host_port, through) = support::split_authority(&url());
    let target = support::resolve(&host_port, DEFAULT_PORT).await;
    let proxy = support::Proxy::start("127.0.0.1:0".parse().expect("address"), target).await;
    let address = proxy.address;
    let store = RedisStore::builder()
        .key_prefix(unique_prefix("cut"))
        .connect(&through(address))
        .await
        .expect("Redis through the proxy");
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
    let store = RedisStore::builder()
        .connect_lazy(&format!("redis://{}", silent.address))
        .expect("a valid URL");
    support::silent_server_is_unavailable_within(&store, OPERATION_TIMEOUT + SLACK).await;
}
