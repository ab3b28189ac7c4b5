//! Redis-specific behaviour beyond the conformance suite: key layout and physical expiry,
//! key prefixes, leases judged by Redis's own clock in real time, the durability settings
//! read from the server, and faults.
//!
//! Unlike the conformance suite, these tests leave Redis's clock in charge (no
//! `RedisStoreBuilder::clock`), as production does.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idem_core::{
    BeginOutcome, BeginRequest, CompleteRequest, DurabilityRisk, Fingerprint, LeaseToken, OnLapse,
    RecordId, RecordState, Store, StoreError, StoredResponse, Timestamp, TransitionOutcome,
};
use idem_redis::{CONNECTION_TIMEOUT, ConnectError, EXPIRY_GRACE, OPERATION_TIMEOUT, RedisStore};

/// Slack over a documented timeout for a busy test machine.
const SLACK: Duration = Duration::from_secs(2);

/// A URL nothing listens on: port 1 is reserved and closed.
const CLOSED_PORT_URL: &str = "redis://127.0.0.1:1";

/// The short lease of the real-time tests: long enough that a loaded machine still renews
/// in time, short enough to wait out.
const SHORT_LEASE: Duration = Duration::from_millis(300);

fn url() -> String {
    std::env::var("IDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn cluster_urls() -> Vec<String> {
    std::env::var("IDEM_TEST_REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103".to_owned()
        })
        .split(',')
        .map(|url| url.trim().to_owned())
        .collect()
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

fn request(name: &str) -> BeginRequest {
    BeginRequest {
        id: RecordId::from_bytes(rand::random()),
        fingerprint: Fingerprint::builder()
            .part("redis-test", name.as_bytes())
            .finish(),
        token: LeaseToken::random(),
        lease: Duration::from_secs(30),
        ttl: Duration::from_secs(3600),
        on_lapse: OnLapse::ReportUnknown,
    }
}

fn response() -> StoredResponse {
    StoredResponse {
        status: 200,
        headers: vec![],
        body: Some("ok".into()),
    }
}

async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is reachable")
}

async fn pttl(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> Duration {
    let millis: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(redis)
        .await
        .expect("PTTL");
    Duration::from_millis(u64::try_from(millis).expect("the key exists and has an expiry"))
}

/// Redis's clock, in milliseconds.
async fn redis_now(redis: &mut redis::aio::MultiplexedConnection) -> Timestamp {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(redis).await.expect("TIME");
    Timestamp::from_millis(seconds * 1000 + micros / 1000)
}

#[tokio::test]
async fn a_record_is_one_hash_that_redis_expires_after_a_grace_period() {
    let store = store_with_prefix(&unique_prefix("layout")).await;
    let first = request("layout");
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    let key = store.key(first.id);
    assert!(
        key.ends_with(&format!(":{{{}}}", first.id.to_hex())),
        "{key}"
    );

    let mut redis = raw_connection(&url()).await;
    let kind: String = redis::cmd("TYPE")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("TYPE");
    assert_eq!(kind, "hash");
    let physical = pttl(&mut redis, &key).await;
    // Kept a TTL past the lease, then the grace.
    let expected = first.lease + first.ttl + EXPIRY_GRACE;
    assert!(
        physical > expected - SLACK && physical <= expected,
        "PTTL {physical:?}, expected about {expected:?}"
    );

    // Completing with a short TTL shortens the physical expiry too, to that TTL plus the grace.
    let ttl = Duration::from_secs(1);
    let completed = store
        .complete(CompleteRequest {
            id: first.id,
            token: first.token,
            response: response(),
            ttl,
        })
        .await
        .expect("complete");
    assert_eq!(completed, TransitionOutcome::Applied);
    let physical = pttl(&mut redis, &key).await;
    assert!(
        physical > ttl + EXPIRY_GRACE - SLACK && physical <= ttl + EXPIRY_GRACE,
        "PTTL {physical:?}"
    );

    // A TTL of Duration::MAX ("never") is no physical expiry at all.
    let forever = BeginRequest {
        ttl: Duration::MAX,
        ..request("forever")
    };
    assert_eq!(
        store.begin(forever.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    let millis: i64 = redis::cmd("PTTL")
        .arg(store.key(forever.id))
        .query_async(&mut redis)
        .await
        .expect("PTTL");
    assert_eq!(millis, -1, "a key without expiry");
    let snapshot = store.get(forever.id).await.expect("get").expect("live");
    assert_eq!(snapshot.record.expires_at, Timestamp::from_millis(u64::MAX));
    store
        .release(forever.id, forever.token)
        .await
        .expect("release");
}

#[tokio::test]
async fn stores_with_different_prefixes_never_see_each_others_records() {
    let (a, b) = (
        store_with_prefix(&unique_prefix("a")).await,
        store_with_prefix(&unique_prefix("b")).await,
    );
    let in_a = request("shared id");
    assert_eq!(
        a.begin(in_a.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    assert_eq!(b.get(in_a.id).await.expect("get"), None);
    let in_b = BeginRequest {
        token: LeaseToken::random(),
        ..in_a.clone()
    };
    assert_eq!(
        b.begin(in_b.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    let snapshot = a.get(in_a.id).await.expect("get").expect("a's record");
    let RecordState::InFlight { token, .. } = snapshot.record.state else {
        panic!("a's record is still in flight");
    };
    assert_eq!(token, in_a.token, "b's begin did not touch a's record");
}

#[tokio::test]
async fn get_answers_with_redis_s_clock() {
    let store = store_with_prefix(&unique_prefix("now")).await;
    let mut redis = raw_connection(&url()).await;
    let first = request("now");
    store.begin(first.clone()).await.expect("begin");
    let before = redis_now(&mut redis).await;
    let snapshot = store.get(first.id).await.expect("get").expect("the record");
    let after = redis_now(&mut redis).await;
    assert!(
        before <= snapshot.now && snapshot.now <= after,
        "{before:?} <= {:?} <= {after:?}",
        snapshot.now
    );
    // The lease was measured from Redis's now too.
    let lease_left = snapshot.lease_left().expect("in flight");
    assert!(
        lease_left <= first.lease && lease_left > first.lease - SLACK,
        "{lease_left:?}"
    );
}

#[tokio::test]
async fn a_lease_lapses_by_redis_s_clock_then_is_unknown_until_taken_over() {
    let store = store_with_prefix(&unique_prefix("lapse")).await;
    let first = BeginRequest {
        lease: SHORT_LEASE,
        ..request("lapse")
    };
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    let duplicate = BeginRequest {
        token: LeaseToken::random(),
        ..first.clone()
    };
    match store.begin(duplicate.clone()).await.expect("begin") {
        BeginOutcome::InFlight { lease_left } => assert!(lease_left <= SHORT_LEASE),
        // A machine slow enough to let the lease lapse already: the next step covers it.
        BeginOutcome::OutcomeUnknown => {}
        other => panic!("expected InFlight, got {other:?}"),
    }

    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(100)).await;
    assert_eq!(
        store.begin(duplicate.clone()).await.expect("begin"),
        BeginOutcome::OutcomeUnknown
    );
    // Reporting changed nothing: the lapsed owner still holds the record.
    let snapshot = store.get(first.id).await.expect("get").expect("the record");
    assert!(
        matches!(snapshot.record.state, RecordState::InFlight { token, .. } if token == first.token)
    );
    assert_eq!(snapshot.lease_left(), Some(Duration::ZERO));

    let take_over = BeginRequest {
        on_lapse: OnLapse::TakeOver,
        ..duplicate
    };
    assert_eq!(
        store.begin(take_over.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    // The lapsed owner is fenced off.
    let late = CompleteRequest {
        id: first.id,
        token: first.token,
        response: response(),
        ttl: Duration::from_secs(60),
    };
    assert_eq!(
        store.complete(late).await.expect("complete"),
        TransitionOutcome::StaleLease
    );
    assert_eq!(
        store
            .renew(first.id, first.token, SHORT_LEASE)
            .await
            .expect("renew"),
        TransitionOutcome::StaleLease
    );
}

#[tokio::test]
async fn renewals_keep_a_record_in_flight_past_its_first_lease() {
    let store = store_with_prefix(&unique_prefix("renew")).await;
    let first = BeginRequest {
        lease: SHORT_LEASE,
        // A TTL shorter than the renewals: each renewal must carry the expiry along.
        ttl: SHORT_LEASE,
        ..request("renew")
    };
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    let started = Instant::now();
    while started.elapsed() < SHORT_LEASE * 3 {
        tokio::time::sleep(SHORT_LEASE / 3).await;
        assert_eq!(
            store
                .renew(first.id, first.token, SHORT_LEASE)
                .await
                .expect("renew"),
            TransitionOutcome::Applied
        );
    }
    let duplicate = BeginRequest {
        token: LeaseToken::random(),
        ..first.clone()
    };
    let outcome = store.begin(duplicate).await.expect("begin");
    assert!(
        matches!(outcome, BeginOutcome::InFlight { lease_left } if lease_left > Duration::ZERO),
        "expected InFlight, got {outcome:?}"
    );
    // The physical expiry followed the lease: a TTL past it, then the grace.
    let mut redis = raw_connection(&url()).await;
    let physical = pttl(&mut redis, &store.key(first.id)).await;
    assert!(
        physical > first.ttl + EXPIRY_GRACE && physical <= 2 * SHORT_LEASE + EXPIRY_GRACE,
        "PTTL {physical:?}"
    );

    let completed = CompleteRequest {
        id: first.id,
        token: first.token,
        response: response(),
        ttl: Duration::from_secs(60),
    };
    assert_eq!(
        store.complete(completed).await.expect("complete"),
        TransitionOutcome::Applied
    );
}

/// A begin run again with its own token after its lease lapsed (on Redis's clock) is acquired
/// again and renews the lease, carrying the physical expiry along with the logical one.
#[tokio::test]
async fn a_begin_run_again_with_its_own_token_renews_a_lapsed_lease() {
    let store = store_with_prefix(&unique_prefix("rerun")).await;
    let first = BeginRequest {
        lease: SHORT_LEASE,
        ttl: Duration::from_secs(60),
        ..request("rerun")
    };
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired
    );
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired,
        "run again under a live lease"
    );
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(200)).await;
    assert_eq!(
        store.begin(first.clone()).await.expect("begin"),
        BeginOutcome::Acquired,
        "run again once the lease lapsed"
    );
    let duplicate = BeginRequest {
        token: LeaseToken::random(),
        ..first.clone()
    };
    let outcome = store.begin(duplicate).await.expect("begin");
    assert!(
        matches!(outcome, BeginOutcome::InFlight { lease_left } if lease_left > Duration::ZERO),
        "expected InFlight, got {outcome:?}"
    );
    let mut redis = raw_connection(&url()).await;
    let physical = pttl(&mut redis, &store.key(first.id)).await;
    let expected = SHORT_LEASE + first.ttl + EXPIRY_GRACE;
    assert!(
        physical > expected - SLACK && physical <= expected,
        "PTTL {physical:?}, expected about {expected:?}"
    );
    store.release(first.id, first.token).await.expect("release");
}

#[tokio::test]
async fn the_test_server_without_persistence_is_reported() {
    let store = store_with_prefix(&unique_prefix("risks")).await;
    let risks = store.durability_risks().await.expect("durability_risks");
    let persistence = risks
        .iter()
        .find(|risk| risk.setting.starts_with("appendonly=no"))
        .unwrap_or_else(|| panic!("the appendonly risk, in {risks:?}"));
    assert!(!persistence.refuse, "{persistence:?}");
    assert!(
        risks.iter().all(|risk| !risk.refuse),
        "the test server evicts nothing: {risks:?}"
    );
}

#[tokio::test]
async fn every_primary_of_the_cluster_is_checked() {
    let store = RedisStore::connect_cluster(&cluster_urls())
        .await
        .unwrap_or_else(|error| panic!("the Redis Cluster must be reachable: {error}"));
    let risks = store.durability_risks().await.expect("durability_risks");
    let persistence = risks
        .iter()
        .find(|risk| risk.setting.starts_with("appendonly=no"))
        .unwrap_or_else(|| panic!("the appendonly risk, in {risks:?}"));
    for url in cluster_urls() {
        let node = url.trim_start_matches("redis://");
        assert!(persistence.risk.contains(node), "{node} in {persistence:?}");
    }
}

/// A Redis server of a test's own, on a free port, stopped (and its directory removed) when
/// dropped.
struct SpareRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl SpareRedis {
    async fn start(options: &[&str]) -> Self {
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let dir = std::env::temp_dir().join(format!("idem-redis-test-{port}"));
            std::fs::create_dir_all(&dir).expect("a directory for the server");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .args(options)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on the PATH");
            let mut server = Self { child, port, dir };
            if server.answers().await {
                return server;
            }
            // The port was taken meanwhile, or the server refused its options: drop it.
        }
        panic!("could not start a redis-server with {options:?}");
    }

    async fn answers(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            if self.ping().await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn ping(&self) -> redis::RedisResult<String> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async(&mut connection).await
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for SpareRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find<'a>(risks: &'a [DurabilityRisk], setting: &str) -> &'a DurabilityRisk {
    risks
        .iter()
        .find(|risk| risk.setting.starts_with(setting))
        .unwrap_or_else(|| panic!("a risk on {setting} in {risks:?}"))
}

#[tokio::test]
async fn an_evicting_server_is_refused_and_its_replicas_reported() {
    let primary = SpareRedis::start(&["--maxmemory-policy", "allkeys-lru"]).await;
    let port = primary.port.to_string();
    let _replica = SpareRedis::start(&["--replicaof", "127.0.0.1", &port]).await;
    let store = RedisStore::connect(&primary.url())
        .await
        .expect("the spare server");

    // Wait for the replica to finish its handshake.
    let mut redis = raw_connection(&primary.url()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut redis)
            .await
            .expect("INFO");
        if info.contains("connected_slaves:1") {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let risks = store.durability_risks().await.expect("durability_risks");
    let eviction = find(&risks, "maxmemory-policy=allkeys-lru");
    assert!(eviction.refuse, "{eviction:?}");
    assert!(!find(&risks, "appendonly=no").refuse);
    let replication = find(&risks, "role=master, connected_slaves=1");
    assert!(!replication.refuse, "{replication:?}");
}

#[tokio::test]
async fn a_server_that_hides_its_settings_is_one_risk_not_an_error() {
    let server = SpareRedis::start(&["--rename-command", "CONFIG", ""]).await;
    let store = RedisStore::connect(&server.url())
        .await
        .expect("the spare server");
    let risks = store.durability_risks().await.expect("durability_risks");
    assert_eq!(risks.len(), 1, "{risks:?}");
    assert!(!risks[0].refuse);
    assert!(
        risks[0].risk.contains("could not read the settings"),
        "{risks:?}"
    );
}

#[tokio::test]
async fn unreachable_server_is_unavailable_promptly_not_a_hang() {
    let store = RedisStore::builder()
        .connect_lazy(CLOSED_PORT_URL)
        .expect("a valid URL");
    for _ in 0..2 {
        let started = Instant::now();
        let outcome = store.begin(request("down")).await;
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
    let risks = store.durability_risks().await;
    assert!(
        matches!(risks, Err(StoreError::Unavailable(_))),
        "an unreachable server is not a risk but an error: {risks:?}"
    );
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

/// Two instances (two connections) of one Redis: a duplicate waiting on one is woken by the
/// other's completion through `PUBLISH`.
#[tokio::test]
async fn a_duplicate_waiting_on_another_instance_is_woken_by_publish() {
    let prefix = unique_prefix("announced");
    idem_core::testkit::instances::a_waiter_on_another_instance_is_woken_by_the_announcement(
        store_with_prefix(&prefix).await,
        store_with_prefix(&prefix).await,
    )
    .await;
}

/// The same across a cluster's nodes: the announcement is published on the node that owns
/// the record and heard by a subscriber connected to the first node.
#[tokio::test]
async fn a_duplicate_waiting_on_another_cluster_instance_is_woken_by_publish() {
    let prefix = unique_prefix("announced-cluster");
    let connect = || async {
        RedisStore::builder()
            .key_prefix(&prefix)
            .connect_cluster(&cluster_urls())
            .await
            .unwrap_or_else(|error| panic!("Redis Cluster must be reachable: {error}"))
    };
    idem_core::testkit::instances::a_waiter_on_another_instance_is_woken_by_the_announcement(
        connect().await,
        connect().await,
    )
    .await;
}
