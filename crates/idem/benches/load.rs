//! The gateway under load, side by side in one run: the upstream alone, then the same
//! upstream through `idem proxy` on each store, on the new-key path (every request a fresh
//! key: execute and store) and the replay path (every request repeats a completed key).
//!
//! Each scenario runs `CONCURRENCY` client loops for `IDEM_LOAD_SECONDS` (default 5) over
//! loopback and prints throughput, p50 and p99 latency, the throughput ratio to the upstream
//! alone, and store calls per request (read from the proxy's own metrics).
//!
//! Stores other than memory and embedded are included when `IDEM_BENCH_POSTGRES_URL` /
//! `IDEM_BENCH_REDIS_URL` are set (`scripts/bench` sets them). With `IDEM_LOAD_BASELINE_BIN`
//! naming another build of `idem` (the previous release, say), every proxy scenario runs
//! with that binary too, right before this one, so the two are compared in one run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;

/// Concurrent client loops: enough to keep a 2-core machine busy and let group commit and
/// connection pools work, few enough that the load generator does not starve the proxy.
const CONCURRENCY: usize = 32;
const BODY: &str = r#"{"amount":1000,"currency":"eur","customer":"cus_123"}"#;

struct Proxy {
    child: Child,
    url: String,
    admin: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(binary: &str, upstream: &str, store: &str) -> Proxy {
    let mut child = Command::new(binary)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--store",
            store,
            "--upstream",
            upstream,
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("idem starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut admin) = (None, None);
    while url.is_none() || admin.is_none() {
        let line = lines.next().expect("announce line").unwrap();
        let address = line.rsplit(' ').next().unwrap().to_owned();
        if line.contains(" admin ") {
            admin = Some(address)
        } else {
            url = Some(address)
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Proxy {
        child,
        url: url.unwrap(),
        admin: admin.unwrap(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    NewKey,
    Replay,
}

struct Figures {
    requests: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(url: &str, path: Path, seconds: u64) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or_default();
    let counter = Arc::new(AtomicU64::new(0));
    if path == Path::Replay {
        let warm_up = client
            .post(format!("{url}/charges"))
            .header("idempotency-key", format!("{run}-replayed"))
            .header("content-type", "application/json")
            .body(BODY);
        assert!(warm_up.send().await.unwrap().status().is_success());
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, counter, url) = (client.clone(), Arc::clone(&counter), url.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let key = match path {
                        // The network stores outlive a run: a key from an earlier run would be
                        // a replay, so every run's keys are its own.
                        Path::NewKey => {
                            format!("{run}-k-{}", counter.fetch_add(1, Ordering::Relaxed))
                        }
                        Path::Replay => format!("{run}-replayed"),
                    };
                    let sent = Instant::now();
                    let response = client
                        .post(format!("{url}/charges"))
                        .header("idempotency-key", key)
                        .header("content-type", "application/json")
                        .body(BODY)
                        .send()
                        .await
                        .expect("request");
                    assert!(
                        response.status().is_success(),
                        "status {}",
                        response.status()
                    );
                    response.bytes().await.unwrap();
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |quantile: f64| {
        latencies[((latencies.len() as f64 * quantile) as usize).min(latencies.len() - 1)]
    };
    Figures {
        requests: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Store calls per request, from the proxy's Prometheus metrics.
async fn store_calls(admin: &str, requests: usize) -> f64 {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let calls: f64 = text
        .lines()
        .filter(|line| line.starts_with("idem_store_operation_duration_seconds_count"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // The replay scenario's warm-up request adds a few calls; negligible against thousands.
    calls / requests.max(1) as f64
}

fn main() {
    let seconds: u64 = std::env::var("IDEM_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let app = Router::new().route(
            "/charges",
            post(|body: String| async move {
                (
                    axum::http::StatusCode::CREATED,
                    format!("{{\"id\":\"ch_1\",\"len\":{}}}", body.len()),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let data = tempfile::tempdir().unwrap();
        let embedded = data.path().join("idem-data").to_str().unwrap().to_owned();
        // Unbounded for the run: a bench writes more keys than the memory store's default
        // bound (a build without bounds ignores the query).
        let memory = "memory://?max_records=1000000000&max_bytes=64GiB".to_owned();
        let mut stores = vec![("memory", memory), ("embedded", embedded)];
        for (name, variable) in [
            ("postgres", "IDEM_BENCH_POSTGRES_URL"),
            ("redis", "IDEM_BENCH_REDIS_URL"),
        ] {
            if let Some(url) = std::env::var(variable).ok().filter(|url| !url.is_empty()) {
                stores.push((name, url));
            }
        }

        println!(
            "load: {CONCURRENCY} concurrent clients, {seconds} s per scenario, loopback, one run"
        );
        println!(
            "{:<40} {:>10} {:>10} {:>10} {:>8} {:>12}",
            "scenario", "req/s", "p50", "p99", "ratio", "store calls"
        );
        let baseline = load(&upstream, Path::NewKey, seconds).await;
        print_row("upstream alone", &baseline, baseline.per_second, None);
        let mut binaries = Vec::new();
        if let Some(previous) = std::env::var("IDEM_LOAD_BASELINE_BIN")
            .ok()
            .filter(|path| !path.is_empty())
        {
            binaries.push(("(previous) ", previous));
        }
        binaries.push(("", env!("CARGO_BIN_EXE_idem").to_owned()));
        for (name, store) in &stores {
            for path in [Path::NewKey, Path::Replay] {
                for (which, binary) in &binaries {
                    let proxy = start_proxy(binary, &upstream, store);
                    let figures = load(&proxy.url, path, seconds).await;
                    let calls = store_calls(&proxy.admin, figures.requests).await;
                    let label = format!(
                        "{which}proxy {name} {}",
                        if path == Path::NewKey {
                            "new key"
                        } else {
                            "replay"
                        }
                    );
                    print_row(&label, &figures, baseline.per_second, Some(calls));
                }
            }
        }
    });
}

fn print_row(label: &str, figures: &Figures, baseline: f64, calls: Option<f64>) {
    println!(
        "{label:<40} {:>10.0} {:>8.2}ms {:>8.2}ms {:>7.2}x {:>12}",
        figures.per_second,
        figures.p50.as_secs_f64() * 1000.0,
        figures.p99.as_secs_f64() * 1000.0,
        figures.per_second / baseline,
        calls.map_or_else(|| "-".to_owned(), |calls| format!("{calls:.2}"))
    );
}
