//! How long a waiting duplicate (`Engine::wait_for_in_flight`) takes to answer once the
//! execution it waits for completes in the same process: the time from the owner's
//! `complete` returning to the waiter's `begin` returning the replay. Not a criterion bench:
//! the figure is a latency distribution of one event, printed as p50/p99/max.
//!
//! `cargo bench -p idem-core --bench wake`

use std::time::{Duration, Instant};

use idem_core::{
    Begin, Engine, Fingerprint, IdempotencyKey, KeyPolicy, MemoryStore, RecordId, Scope,
    StoredResponse,
};

/// Owner/waiter pairs measured.
const PAIRS: usize = 300;

fn id(index: usize) -> RecordId {
    let key = format!("wake-{index}");
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

#[tokio::main]
async fn main() {
    let engine = Engine::builder(MemoryStore::new())
        .wait_for_in_flight(Duration::from_secs(10))
        .build();
    let mut delays = Vec::with_capacity(PAIRS);
    for index in 0..PAIRS {
        let id = id(index);
        let Ok(Begin::Acquired(execution)) = engine.begin(id, fingerprint()).await else {
            panic!("the owner acquires a fresh key");
        };
        let waiter = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let begun = engine.begin(id, fingerprint()).await;
                (Instant::now(), matches!(begun, Ok(Begin::Replay(_))))
            })
        };
        // The owner works for a while (0 to 60 ms, spread over the pairs) while the waiter
        // waits; the waiter's poll interval has grown by then as it would in production.
        tokio::time::sleep(Duration::from_millis((index as u64 * 7) % 61)).await;
        let _ = execution.complete(response()).await;
        let completed = Instant::now();
        let (answered, replayed) = waiter.await.expect("the waiter task");
        assert!(replayed, "the waiter is answered with the stored response");
        delays.push(answered.saturating_duration_since(completed));
    }
    delays.sort();
    println!(
        "wake: {PAIRS} waiters in the owner's process, completion to answer: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&delays, 0.50),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}
