//! The layer's cost, measured side by side in one run: the same axum handler without the
//! layer, with the layer on the memory store (the default `CancelPolicy::RunToCompletion`,
//! which polls the execution in place and spawns it only if the client hangs up; `Release`;
//! and `Release` under a task spawned per request, which is what `RunToCompletion` cost
//! before), and on the embedded store, on the new-key path (execute, renewal registered,
//! store) and the replay path. Prints each variant's time per request as a ratio to the
//! handler alone.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use criterion::{BenchmarkId, Criterion, Throughput};
use http::Request;
use http_body_util::BodyExt;
use idem_core::MemoryStore;
use idem_embedded::EmbeddedStore;
use idem_http::{CancelPolicy, IdempotencyLayer};
use tower::ServiceExt;

const BODY: &str = r#"{"amount":1000,"currency":"eur","customer":"cus_123","description":"bench"}"#;

fn handler_router() -> Router {
    Router::new().route(
        "/charges",
        post(|body: String| async move {
            (
                http::StatusCode::CREATED,
                [("content-type", "application/json")],
                format!("{{\"id\":\"ch_1\",\"len\":{}}}", body.len()),
            )
        }),
    )
}

async fn call(app: &Router, key: Option<String>) {
    let mut request = Request::post("/charges").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(BODY)).unwrap())
        .await
        .unwrap();
    assert!(response.status().is_success());
    response.into_body().collect().await.unwrap();
}

/// `app` with every request run in a task of its own: how `RunToCompletion` was built before
/// it polled in place.
fn spawned(app: Router) -> Router {
    Router::new().fallback_service(tower::service_fn(move |request: Request<Body>| {
        let app = app.clone();
        async move {
            let response = tokio::spawn(app.oneshot(request)).await.unwrap();
            Ok::<_, std::convert::Infallible>(response.unwrap())
        }
    }))
}

fn bench_layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let embedded = {
        let _guard = runtime.enter();
        EmbeddedStore::open(directory.path()).unwrap()
    };
    let release = || {
        IdempotencyLayer::builder(MemoryStore::new().with_limits(usize::MAX, usize::MAX))
            .on_cancel(CancelPolicy::Release)
            .build()
    };
    let variants: [(&str, Router); 5] = [
        ("without_layer", handler_router()),
        (
            "memory",
            handler_router().layer(IdempotencyLayer::new(
                MemoryStore::new().with_limits(usize::MAX, usize::MAX),
            )),
        ),
        ("memory_release", handler_router().layer(release())),
        (
            "memory_release_spawned",
            spawned(handler_router().layer(release())),
        ),
        (
            "embedded",
            handler_router().layer(IdempotencyLayer::new(embedded)),
        ),
    ];
    let counter = AtomicU64::new(0);

    let mut group = c.benchmark_group("new_key");
    group.throughput(Throughput::Elements(1));
    for (name, app) in &variants {
        group.bench_with_input(BenchmarkId::from_parameter(name), app, |b, app| {
            b.to_async(&runtime).iter(|| {
                let key = format!("key-{}", counter.fetch_add(1, Ordering::Relaxed));
                call(app, Some(key))
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(1));
    for (name, app) in &variants {
        runtime.block_on(call(app, Some("replayed-key".into())));
        group.bench_with_input(BenchmarkId::from_parameter(name), app, |b, app| {
            b.to_async(&runtime)
                .iter(|| call(app, Some("replayed-key".into())));
        });
    }
    group.finish();
}

/// Reads criterion's point estimates back and prints each variant against the handler alone.
fn print_ratios() {
    let estimate = |group: &str, id: &str| -> Option<f64> {
        let path = format!("{}/criterion/{group}/{id}/new/estimates.json", target_dir());
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        json["mean"]["point_estimate"].as_f64()
    };
    println!("\nratio of time per request to the handler alone (same run):");
    for group in ["new_key", "replay"] {
        let Some(baseline) = estimate(group, "without_layer") else {
            continue;
        };
        for id in [
            "without_layer",
            "memory",
            "memory_release",
            "memory_release_spawned",
            "embedded",
        ] {
            if let Some(ns) = estimate(group, id) {
                println!(
                    "  {group:8} {id:26} {:>10.1} µs  x{:.2}",
                    ns / 1000.0,
                    ns / baseline
                );
            }
        }
    }
}

fn target_dir() -> String {
    std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").into())
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_layer(&mut criterion);
    criterion.final_summary();
    print_ratios();
}
