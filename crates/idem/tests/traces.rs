//! OpenTelemetry traces (the `otlp` feature, `--otlp-endpoint`): a proxied request's spans
//! (the request, its store calls, the upstream call) reach an OTLP/HTTP receiver this test
//! runs, in the trace the client's `traceparent` named, and the upstream is sent a
//! `traceparent` of that trace.
#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use support::{Idem, Upstream, client};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

/// An OTLP/HTTP receiver that keeps every body posted to `/v1/traces`.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&received);
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: String| {
            let kept = Arc::clone(&kept);
            async move {
                kept.lock().unwrap().push(body);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_traced_in_its_callers_trace_and_the_trace_goes_upstream() {
    let upstream = Upstream::start().await;
    let (collector, received) = receiver().await;
    let idem = Idem::start_with_env(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory://",
            "--upstream",
            &upstream.url(),
            "--otlp-endpoint",
            &collector,
        ],
        // Batches leave every 100 ms instead of every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let answer = client()
        .post(idem.url("/charges"))
        .header("idempotency-key", "traced-1")
        .header("x-request-id", "traced-request-1")
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());

    let sent_upstream = upstream.last_headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = sent_upstream.split('-').collect();
    assert_eq!(parts[1], TRACE_ID, "the upstream is in the caller's trace");
    assert_ne!(parts[2], CLIENT_SPAN, "as a child of idem's own span");

    let mut seen = String::new();
    for _ in 0..100 {
        seen = received.lock().unwrap().concat();
        if ["\"request\"", "\"store\"", "\"upstream\""]
            .iter()
            .all(|name| seen.contains(name))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in ["\"request\"", "\"store\"", "\"upstream\""] {
        assert!(seen.contains(name), "no span {name} exported:\n{seen}");
    }
    assert!(
        seen.contains(TRACE_ID),
        "the spans are in the caller's trace:\n{seen}"
    );
    assert!(!seen.contains("traced-1"), "never the key:\n{seen}");
}
