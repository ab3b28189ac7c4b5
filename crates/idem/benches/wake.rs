//! How long a waiting duplicate (`Engine::wait_for_in_flight`) takes to answer once the
//! execution it waits for completes: the time from the owner's `complete` returning to the
//! waiter's `begin` returning the replay, as p50/p99/max over many owner/waiter pairs. Not a
//! criterion bench: the figure is a latency distribution of one event.
//!
//! Three placements, each with the store's announcements and without them (the waiter then
//! re-reads the record on the engine's 5-200 ms backoff, as before announcements existed), in
//! one run:
//! - *same process*: owner and waiter share one engine on the memory store;
//! - *across instances* on PostgreSQL and on Redis: owner and waiter are two engines on two
//!   connections of one store, as two gateways would be (`IDEM_BENCH_POSTGRES_URL`,
//!   `IDEM_BENCH_REDIS_URL`; `scripts/bench` sets them, unset skips that store with a line).
//!
//! `cargo bench -p idem-gateway --bench wake`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use idem_core::testkit::instances::Instrumented;
use idem_core::{
    Begin, Engine, Fingerprint, IdempotencyKey, KeyPolicy, MemoryStore, RecordId, Scope, Store,
    StoredResponse,
};
use idem_postgres::PostgresStore;
use idem_redis::RedisStore;

/// Owner/waiter pairs measured per placement.
const PAIRS: usize = 200;

fn fresh_id() -> RecordId {
    let key = format!("wake-{:016x}", rand::random::<u64>());
    RecordId::new(
        &Scope::anonymous(),
        &IdempotencyKey::parse(key.as_bytes(), KeyPolicy::Any).expect("a valid key"),
    )
}

fn fingerprint() -> Fingerprint {
    Fingerprint::builder()
        .method("POST")
        .path_and_query("/charges")
        .body(b"{}")
        .finish()
}

fn response() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: Vec::new(),
        body: Some("{}".into()),
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

/// Completion-to-answer delays of `PAIRS` pairs, the owner on `owner`, the duplicate on
/// `waiter`.
async fn delays<O: Store, W: Store>(owner: &Engine<O>, waiter: &Engine<W>) -> Vec<Duration> {
    let mut delays = Vec::with_capacity(PAIRS);
    for index in 0..PAIRS {
        let id = fresh_id();
        let Ok(Begin::Acquired(execution)) = owner.begin(id, fingerprint()).await else {
            panic!("the owner acquires a fresh key");
        };
        let waiter = {
            let waiter = waiter.clone();
            tokio::spawn(async move {
                let begun = waiter.begin(id, fingerprint()).await;
                (Instant::now(), matches!(begun, Ok(Begin::Replay(_))))
            })
        };
        // The owner works for a while (0 to 60 ms, spread over the pairs) while the waiter
        // waits; a polling waiter's interval has grown by then as it would in production.
        tokio::time::sleep(Duration::from_millis((index as u64 * 7) % 61)).await;
        let _ = execution.complete(response()).await;
        let completed = Instant::now();
        let (answered, replayed) = waiter.await.expect("the waiter task");
        assert!(replayed, "the waiter is answered with the stored response");
        delays.push(answered.saturating_duration_since(completed));
    }
    delays.sort();
    delays
}

fn report(placement: &str, variant: &str, delays: &[Duration]) {
    println!(
        "wake: {placement:<28} {variant:<22} completion to answer: p50 {:>10.3?}  p99 {:>10.3?}  max {:>10.3?}",
        percentile(delays, 0.50),
        percentile(delays, 0.99),
        delays[delays.len() - 1]
    );
}

fn waiting<S: Store>(store: S) -> Engine<S> {
    Engine::builder(store)
        .wait_for_in_flight(Duration::from_secs(10))
        .build()
}

/// Both variants across two instances of one network store: `connect` opens one instance.
async fn across<S: Store, F: Future<Output = S>>(placement: &str, connect: impl Fn() -> F) {
    let owner = Engine::new(connect().await);
    let polling = waiting(Instrumented::without_announcements(connect().await));
    report(
        placement,
        "re-read on a backoff",
        &delays(&owner, &polling).await,
    );
    let announced = waiting(connect().await);
    report(placement, "announced", &delays(&owner, &announced).await);
}

#[tokio::main]
async fn main() {
    let memory = MemoryStore::new();
    let engine = waiting(memory.clone());
    report(
        "same process (memory)",
        "woken in process",
        &delays(&engine, &engine).await,
    );
    match std::env::var("IDEM_BENCH_POSTGRES_URL") {
        Ok(url) => {
            across("across instances (PostgreSQL)", || async {
                PostgresStore::connect(&url).await.expect("PostgreSQL")
            })
            .await;
        }
        Err(_) => println!("wake: PostgreSQL skipped: IDEM_BENCH_POSTGRES_URL is not set"),
    }
    match std::env::var("IDEM_BENCH_REDIS_URL") {
        Ok(url) => {
            across("across instances (Redis)", || async {
                RedisStore::connect(&url).await.expect("Redis")
            })
            .await;
        }
        Err(_) => println!("wake: Redis skipped: IDEM_BENCH_REDIS_URL is not set"),
    }
}
