//! What group commit buys: begin + complete pairs on the embedded store, issued one at a
//! time (every write waits for its own fsync) and from many concurrent tasks (writes share
//! fsyncs), side by side with the memory store as the no-I/O reference. Prints throughput
//! and the measured operations per commit.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use idem_core::{
    BeginRequest, CompleteRequest, Fingerprint, LeaseToken, MemoryStore, OnLapse, RecordId, Store,
    StoredResponse,
};
use idem_embedded::EmbeddedStore;

async fn execute_once<S: Store>(store: &S) {
    let id = RecordId::from_bytes(rand_bytes());
    let token = LeaseToken::random();
    let fingerprint = Fingerprint::builder().body(b"bench").finish();
    let begin = BeginRequest {
        id,
        fingerprint,
        token,
        lease: Duration::from_secs(60),
        ttl: Duration::from_secs(3600),
        on_lapse: OnLapse::ReportUnknown,
    };
    store.begin(begin).await.unwrap();
    let response = StoredResponse {
        status: 201,
        headers: vec![],
        body: Some(Bytes::from_static(b"{\"id\":\"ch_1\"}")),
    };
    let complete = CompleteRequest {
        id,
        token,
        response,
        ttl: Duration::from_secs(3600),
    };
    store.complete(complete).await.unwrap();
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&LeaseToken::random().as_u64().to_le_bytes().repeat(2));
    bytes
}

/// Runs `iterations` executions spread over `concurrency` tasks and times them.
async fn run<S: Store>(store: Arc<S>, iterations: u64, concurrency: u64) -> Duration {
    let started = Instant::now();
    let per_task = iterations.div_ceil(concurrency);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..per_task {
                    execute_once(&*store).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(10)
        .configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedStore::open(directory.path()).unwrap());
    let memory = Arc::new(MemoryStore::new());

    let mut group = criterion.benchmark_group("execute");
    group.throughput(Throughput::Elements(1));
    for concurrency in [1u64, 64] {
        group.bench_with_input(
            BenchmarkId::new("embedded", concurrency),
            &concurrency,
            |b, &concurrency| {
                b.to_async(&runtime)
                    .iter_custom(|iterations| run(Arc::clone(&embedded), iterations, concurrency));
            },
        );
        group.bench_with_input(
            BenchmarkId::new("memory", concurrency),
            &concurrency,
            |b, &concurrency| {
                b.to_async(&runtime)
                    .iter_custom(|iterations| run(Arc::clone(&memory), iterations, concurrency));
            },
        );
    }
    group.finish();
    criterion.final_summary();

    let stats = embedded.commit_stats();
    #[allow(clippy::cast_precision_loss)]
    let batching = stats.operations as f64 / stats.commits.max(1) as f64;
    println!(
        "\nembedded store: {} operations in {} commits over the whole run, {batching:.1} per fsync",
        stats.operations, stats.commits
    );
}
