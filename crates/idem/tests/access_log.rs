//! `idem proxy`'s access log and request ids, read from the process's own stderr: one JSON
//! line per request with what idempotency did, the request id passed upstream and returned,
//! and never a key, a cookie or a credential.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::{Idem, Upstream, client};

const KEY: &str = "key-that-must-not-be-logged-7f3a";
const SECRET: &str = "Bearer secret-token-that-must-not-be-logged";
const COOKIE: &str = "session=cookie-that-must-not-be-logged";

/// The access-log lines written so far (target `idem::access`).
fn access_lines(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "idem::access")
        .collect()
}

/// Starts `idem` with `args`, its JSON logs (access lines included) written to `log`.
fn start_logging_to(log: &std::path::Path, args: &[&str]) -> Idem {
    let mut args = args.to_vec();
    args.extend(["--log-format", "json"]);
    Idem::start_with(
        &args,
        &[("RUST_LOG", "warn,idem::access=info")],
        Stdio::from(std::fs::File::create(log).unwrap()),
    )
}

/// Waits for the `count`th access line (each is written once its response is ready).
async fn wait_for_lines(log: &std::path::Path, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let lines = access_lines(log);
        if lines.len() >= count {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {count} access lines: {:?}", access_lines(log));
}

#[tokio::test]
async fn every_request_gets_one_line_and_a_request_id_and_no_secret_is_written() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        "[[proxy.routes]]\nmethod = \"POST\"\npath = \"/charges/**\"\nrequire_key = true\n",
    )
    .unwrap();
    let idem = start_logging_to(
        &log,
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory://",
            "--upstream",
            &upstream.url(),
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let send = |request_id: Option<&str>, body: &'static str| {
        let mut request = client()
            .post(idem.url("/charges/ch_1"))
            .header("idempotency-key", KEY)
            .header("authorization", SECRET)
            .header("cookie", COOKIE)
            .header("content-type", "application/json")
            .body(body);
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };

    let first = send(Some("req-abc.123"), "{\"amount\":1}").await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["x-request-id"], "req-abc.123", "returned");
    assert_eq!(
        upstream.last_headers()["x-request-id"],
        "req-abc.123",
        "passed upstream"
    );
    let replay = send(Some("has spaces, so replaced"), "{\"amount\":1}")
        .await
        .unwrap();
    let generated = replay.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let mismatch = send(None, "{\"amount\":2}").await.unwrap();
    assert_eq!(mismatch.status(), 422);
    let unrouted = client().get(idem.url("/health")).send().await.unwrap();
    assert!(unrouted.status().is_success());

    let lines = wait_for_lines(&log, 4).await;
    assert_eq!(lines.len(), 4, "one line per request: {lines:?}");
    let fields: Vec<&Value> = lines.iter().map(|line| &line["fields"]).collect();
    let (executed, replayed) = (fields[0], fields[1]);
    assert_eq!(executed["outcome"], "executed");
    assert_eq!(executed["method"], "POST");
    assert_eq!(executed["route"], "POST /charges/**");
    assert_eq!(executed["status"], 201);
    assert_eq!(executed["request_id"], "req-abc.123");
    let record = executed["record"].as_str().unwrap();
    assert_eq!(record.len(), 64, "the record's hash");
    for duration in ["store_ms", "upstream_ms", "total_ms"] {
        assert!(executed[duration].as_f64().unwrap() > 0.0, "{duration}");
    }
    assert_eq!(replayed["outcome"], "replayed");
    assert_eq!(replayed["record"], record, "the same record");
    assert_eq!(replayed["request_id"], generated.as_str());
    assert!(
        replayed.get("upstream_ms").is_none(),
        "a replay reaches no upstream"
    );
    assert_eq!(fields[2]["outcome"], "mismatch");
    assert_eq!(fields[2]["status"], 422);
    assert_eq!(fields[3]["outcome"], "-", "a GET is not the layer's");
    assert_eq!(fields[3]["route"], "-", "no rule matched");

    let metrics = idem.metrics().await;
    assert!(
        metrics.contains("idem_upstream_duration_seconds_count{status_class=\"2xx\"} 2"),
        "the executed POST and the GET reached the upstream, the replay and mismatch did not:\n{metrics}"
    );
    assert!(
        metrics.contains("idem_upstream_duration_seconds_bucket{status_class=\"2xx\",le=\"30\"}"),
        "the upstream's own buckets, up to its timeout"
    );
    for series in [
        "idem_route_requests_total{route=\"POST /charges/**\",outcome=\"executed\"} 1",
        "idem_route_requests_total{route=\"POST /charges/**\",outcome=\"replayed\"} 1",
        "idem_route_requests_total{route=\"POST /charges/**\",outcome=\"mismatch\"} 1",
        "idem_executions_in_flight 0",
    ] {
        assert!(metrics.contains(series), "{series} in:\n{metrics}");
    }

    let everything = std::fs::read_to_string(&log).unwrap();
    for secret in [KEY, "secret-token", "cookie-that-must", "amount"] {
        assert!(
            !everything.contains(secret),
            "{secret} in the log:\n{everything}"
        );
    }
}

#[tokio::test]
async fn idem_serve_writes_a_line_per_call_with_its_route_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let idem = start_logging_to(
        &log,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--store",
            "memory://",
        ],
    );
    let begun = client()
        .post(idem.url("/v1/idempotency/records"))
        .header("idempotency-key", KEY)
        .header("x-request-id", "serve-call-1")
        .body(r#"{"operation":"user.create","payload":{"email":"a@example.com"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(begun.status(), 201);
    assert_eq!(begun.headers()["x-request-id"], "serve-call-1");
    let status = client()
        .get(idem.url(&format!("/v1/idempotency/records/{KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 202, "still in flight");

    let lines = wait_for_lines(&log, 2).await;
    let fields: Vec<&Value> = lines.iter().map(|line| &line["fields"]).collect();
    assert_eq!(fields[0]["route"], "/v1/idempotency/records");
    assert_eq!(fields[0]["status"], 201);
    assert_eq!(fields[0]["request_id"], "serve-call-1");
    assert!(
        fields[0]["store_ms"].as_f64().unwrap() > 0.0,
        "the begin's store time"
    );
    assert_eq!(
        fields[1]["route"], "/v1/idempotency/records/{key}",
        "the pattern, never the key"
    );
    let everything = std::fs::read_to_string(&log).unwrap();
    assert!(
        !everything.contains(KEY),
        "the key in the log:\n{everything}"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_still_gets_its_line() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let idem = start_logging_to(
        &log,
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory://",
            "--upstream",
            &upstream.url(),
        ],
    );
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(idem.url("/hang"))
        .header("idempotency-key", "hung-up-1")
        .header("x-request-id", "impatient-1")
        .body("{}")
        .send()
        .await;
    assert!(gave_up.is_err(), "the upstream never answers");
    let lines = wait_for_lines(&log, 1).await;
    let fields = &lines[0]["fields"];
    assert_eq!(fields["status"], 499, "{fields}");
    assert_eq!(fields["outcome"], "client_closed");
    assert_eq!(fields["request_id"], "impatient-1");
}
