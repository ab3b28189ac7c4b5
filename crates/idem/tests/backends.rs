//! Several `idem proxy` instances sharing one real PostgreSQL, then one real Redis: hundreds
//! of concurrent duplicates spread over them execute the upstream exactly once, and a store
//! that goes away mid-run gives 503 (nothing executed, nothing completed lost) until it comes
//! back, with no restart.
//!
//! The servers come from `IDEM_TEST_POSTGRES_URL` and `IDEM_TEST_REDIS_URL` (defaults: the
//! loopback servers `scripts/test` guarantees). These tests fail, never skip, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use idem_core::testkit::faults;
use support::{Idem, Upstream, client};

const INSTANCES: usize = 3;
const DUPLICATES: usize = 300;

fn postgres_url() -> String {
    std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("IDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn proxies(store: &str, upstream: &Upstream, count: usize) -> Vec<Idem> {
    (0..count)
        .map(|_| {
            Idem::start(&[
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--store",
                store,
                "--upstream",
                &upstream.url(),
            ])
        })
        .collect()
}

/// A key no earlier run used: the servers keep records between runs.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

async fn duplicates_across_instances_execute_once(store: &str) {
    let upstream = Upstream::start().await;
    let instances = proxies(store, &upstream, INSTANCES);
    let key = unique("multi");
    let client = client();
    let requests: Vec<_> = (0..DUPLICATES)
        .map(|n| {
            let request = client
                .post(instances[n % INSTANCES].url("/slow"))
                .header("idempotency-key", &key)
                .header("content-type", "application/json")
                .body("{\"amount\":1}");
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for request in requests {
        *statuses.entry(request.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        upstream.calls("/slow"),
        1,
        "{DUPLICATES} duplicates over {INSTANCES} instances: one execution ({statuses:?})"
    );
    assert!(
        statuses.keys().all(|status| [201, 409].contains(status)),
        "{statuses:?}"
    );

    let mut bodies = Vec::new();
    for instance in &instances {
        let replay = client
            .post(instance.url("/slow"))
            .header("idempotency-key", &key)
            .header("content-type", "application/json")
            .body("{\"amount\":1}")
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 201);
        assert_eq!(replay.headers()["x-idempotent-replayed"], "true");
        bodies.push(replay.text().await.unwrap());
    }
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "every instance replays the same response"
    );
    assert_eq!(upstream.calls("/slow"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_duplicates_across_instances_execute_once() {
    duplicates_across_instances_execute_once(&postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_duplicates_across_instances_execute_once() {
    duplicates_across_instances_execute_once(&redis_url()).await;
}

async fn store_outage_fails_closed_and_recovers(url: &str, default_port: u16) {
    let (host_port, through) = faults::split_authority(url);
    let target = faults::resolve(&host_port, default_port).await;
    let relay = faults::Proxy::start("127.0.0.1:0".parse().unwrap(), target).await;
    let relay_address = relay.address;
    let upstream = Upstream::start().await;
    let idem = Idem::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &through(relay_address),
        "--upstream",
        &upstream.url(),
    ]);
    let send = |key: String| {
        client()
            .post(idem.url("/charges"))
            .header("idempotency-key", key)
            .body("{}")
            .send()
    };
    let before = unique("before");
    let first = send(before.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first_body = first.text().await.unwrap();

    drop(relay); // the store's connections are cut, new ones refused
    let during = unique("during");
    let refused = send(during.clone()).await.unwrap();
    assert_eq!(refused.status(), 503);
    let document: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(document["code"], "store_unavailable");
    assert_eq!(
        upstream.calls("/charges"),
        1,
        "nothing executed while the store was away"
    );

    let _restored = faults::Proxy::start(relay_address, target).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let recovered = loop {
        let response = send(during.clone()).await.unwrap();
        if response.status() != 503 || Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        recovered.status(),
        201,
        "service recovers by itself when the store returns"
    );
    let replay = send(before).await.unwrap();
    assert_eq!(
        replay.headers()["x-idempotent-replayed"],
        "true",
        "what completed before the outage is kept"
    );
    assert_eq!(replay.text().await.unwrap(), first_body);
    assert_eq!(upstream.calls("/charges"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_closed_and_recovers() {
    store_outage_fails_closed_and_recovers(&postgres_url(), 5432).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_and_recovers() {
    store_outage_fails_closed_and_recovers(&redis_url(), 6379).await;
}

/// The cache-hit count an instance reports on its admin listener.
async fn replay_cache_hits(idem: &Idem) -> u64 {
    idem.metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix("idem_replay_cache_hits_total "))
        .map_or(0, |count| count.trim().parse().unwrap())
}

/// Retries of a completed key on one instance are answered from its cache after the first
/// replay (the same bytes, the replay marker), never for another request with the key, and not
/// at all with `--replay-cache 0s`.
async fn replays_come_from_the_instance_cache(store: &str) {
    let upstream = Upstream::start().await;
    let start = |cache: &str| {
        Idem::start(&[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--store",
            store,
            "--upstream",
            &upstream.url(),
            "--replay-cache",
            cache,
        ])
    };
    let (cached, uncached) = (start("5s"), start("0s"));
    let key = unique("cached");
    let send = |idem: &Idem, body: &'static str| {
        client()
            .post(idem.url("/charges"))
            .header("idempotency-key", &key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = send(&cached, "{\"amount\":1}").await.unwrap();
    assert_eq!(first.status(), 201);
    let first_body = first.bytes().await.unwrap();
    for idem in [&cached, &cached, &cached, &uncached, &uncached] {
        let replay = send(idem, "{\"amount\":1}").await.unwrap();
        assert_eq!(replay.status(), 201);
        assert_eq!(replay.headers()["x-idempotent-replayed"], "true");
        assert_eq!(replay.bytes().await.unwrap(), first_body);
    }
    let other = send(&cached, "{\"amount\":2}").await.unwrap();
    assert_eq!(
        other.status(),
        422,
        "another request with the key is still refused"
    );
    assert_eq!(upstream.calls("/charges"), 1);
    assert_eq!(
        replay_cache_hits(&cached).await,
        2,
        "the first replay asks the store, the next two are cached"
    );
    assert_eq!(replay_cache_hits(&uncached).await, 0, "--replay-cache 0s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replays_come_from_the_instance_cache() {
    replays_come_from_the_instance_cache(&postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replays_come_from_the_instance_cache() {
    replays_come_from_the_instance_cache(&redis_url()).await;
}
