//! `idem proxy` as a process, in front of a real upstream on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Idem, Upstream, client, free_port};

fn proxy(upstream: &str, extra: &[&str]) -> Idem {
    Idem::proxy_on_memory(upstream, extra)
}

async fn code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let document: Value = response.json().await.unwrap();
    (
        status,
        document["code"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn post_twice_executes_once_and_replays() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &[]);
    let client = client();
    let send = || {
        client
            .post(idem.url("/charges?currency=eur"))
            .header("idempotency-key", "order-1")
            .header("content-type", "application/json")
            .body(r#"{"amount":1000}"#)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["x-idempotent-replayed"], "false");
    assert_eq!(first.headers()["x-upstream"], "yes");
    let first_body = first.text().await.unwrap();

    let seen = upstream.last_headers();
    assert_eq!(
        seen["idempotency-key"], "order-1",
        "the upstream can log the key"
    );
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert!(
        seen["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=127.0.0.1;proto=http")
    );
    assert_eq!(seen["host"], upstream.address.to_string());

    let second = send().await.unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["x-idempotent-replayed"], "true");
    assert_eq!(second.text().await.unwrap(), first_body);
    assert_eq!(upstream.calls("/charges"), 1);
}

#[tokio::test]
async fn reads_and_keyless_requests_are_forwarded_untouched() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &[]);
    for _ in 0..2 {
        let response = client()
            .get(idem.url("/items"))
            .header("idempotency-key", "k")
            .send()
            .await
            .unwrap();
        assert!(response.headers().get("x-idempotent-replayed").is_none());
        let response = client()
            .post(idem.url("/charges"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(response.headers().get("x-idempotent-replayed").is_none());
    }
    assert_eq!(upstream.calls("/items"), 2);
    assert_eq!(upstream.calls("/charges"), 2);
}

#[tokio::test]
async fn bad_requests_get_structured_errors_and_execute_nothing() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &["--require-key"]);
    let client = client();

    let missing = client
        .post(idem.url("/charges"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(code(missing).await, (400, "idempotency_key_missing".into()));

    let invalid = client
        .post(idem.url("/charges"))
        .header("idempotency-key", "")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(code(invalid).await, (400, "idempotency_key_invalid".into()));

    // Announced as over 10 MiB: refused from the headers alone, before any body is read.
    let head = too_large_head(&idem);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("request_body_too_large"), "{head}");
    assert_eq!(upstream.calls("/charges"), 0);

    client
        .post(idem.url("/charges"))
        .header("idempotency-key", "k")
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    let mismatch = client
        .post(idem.url("/charges"))
        .header("idempotency-key", "k")
        .body("{\"a\":2}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(mismatch).await,
        (422, "idempotency_key_mismatch".into())
    );
    assert_eq!(upstream.calls("/charges"), 1);
}

fn too_large_head(idem: &Idem) -> String {
    use std::io::{Read, Write};
    let address = idem.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /charges HTTP/1.1\r\nHost: {address}\r\nIdempotency-Key: big\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        10 * 1024 * 1024 + 1
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[tokio::test]
async fn concurrent_duplicates_execute_once_and_get_409_with_retry_after() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &[]);
    let client = client();
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let request = client
                .post(idem.url("/slow"))
                .header("idempotency-key", "same")
                .body("{}");
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect();
    let (mut created, mut conflicts) = (0, 0);
    for request in requests {
        let response = request.await.unwrap();
        match response.status().as_u16() {
            201 => created += 1,
            409 => {
                assert!(response.headers().contains_key("retry-after"));
                assert_eq!(code(response).await.1, "request_in_progress");
                conflicts += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        upstream.calls("/slow"),
        1,
        "50 concurrent duplicates, one execution"
    );
    assert!(
        created >= 1 && conflicts >= 1,
        "created {created}, conflicts {conflicts}"
    );
}

#[tokio::test]
async fn duplicates_can_wait_for_the_first_result() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &["--wait", "5s"]);
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let request = client()
                .post(idem.url("/slow"))
                .header("idempotency-key", "w")
                .body("{}");
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 201);
    }
    assert_eq!(upstream.calls("/slow"), 1);
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_the_key_is_released() {
    let port = free_port();
    let idem = proxy(&format!("http://127.0.0.1:{port}"), &[]);
    let send = || {
        client()
            .post(idem.url("/charges"))
            .header("idempotency-key", "retry-me")
            .body("{}")
            .send()
    };
    assert_eq!(
        code(send().await.unwrap()).await,
        (502, "upstream_unreachable".into())
    );
    // The upstream comes up: the retry executes, because nothing was delivered before.
    let upstream = Upstream::start_on(&format!("127.0.0.1:{port}")).await;
    let retry = send().await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["x-idempotent-replayed"], "false");
    assert_eq!(upstream.calls("/charges"), 1);
}

#[tokio::test]
async fn upstream_timeout_is_504_kept_for_replay_and_never_re_executed() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &["--upstream-timeout", "300ms"]);
    let send = || {
        client()
            .post(idem.url("/hang"))
            .header("idempotency-key", "unknown")
            .body("{}")
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.headers()["x-idempotent-replayed"], "false");
    assert_eq!(code(first).await, (504, "upstream_outcome_unknown".into()));
    let retry = send().await.unwrap();
    assert_eq!(retry.headers()["x-idempotent-replayed"], "true");
    assert_eq!(code(retry).await, (504, "upstream_outcome_unknown".into()));
    assert_eq!(
        upstream.calls("/hang"),
        1,
        "the outcome is unknown, so it never runs twice"
    );
}

#[tokio::test]
async fn completed_requests_survive_kill_9_on_the_default_store() {
    let upstream = Upstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("idem-data");
    let store = store.to_str().unwrap();
    let args = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--upstream",
        &upstream.url(),
    ];
    let send = |idem: &Idem| {
        client()
            .post(idem.url("/charges"))
            .header("idempotency-key", "durable")
            .body("{\"amount\":5}")
            .send()
    };
    let idem = Idem::start(&args);
    let first = send(&idem).await.unwrap().text().await.unwrap();
    idem.kill_9();

    let idem = Idem::start(&args);
    let replay = send(&idem).await.unwrap();
    assert_eq!(replay.headers()["x-idempotent-replayed"], "true");
    assert_eq!(replay.text().await.unwrap(), first);
    assert_eq!(upstream.calls("/charges"), 1);
}

#[tokio::test]
async fn admin_port_serves_health_readiness_and_metrics() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &["--admin-listen", "127.0.0.1:0"]);
    client()
        .post(idem.url("/charges"))
        .header("idempotency-key", "m")
        .body("{}")
        .send()
        .await
        .unwrap();
    client()
        .post(idem.url("/charges"))
        .header("idempotency-key", "m")
        .body("{}")
        .send()
        .await
        .unwrap();
    let admin = idem.admin_url.clone().unwrap();
    assert_ne!(admin, idem.url);
    assert_eq!(
        client()
            .get(format!("{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("idem_requests_total{outcome=\"executed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("idem_requests_total{outcome=\"replayed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("idem_store_operation_duration_seconds"),
        "{metrics}"
    );
    let public = client().get(idem.url("/metrics")).send().await.unwrap();
    assert_eq!(
        upstream.calls("/metrics"),
        1,
        "the public port forwards /metrics upstream"
    );
    assert!(public.headers().contains_key("x-upstream"));
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_then_exits() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &[]);
    let request = client()
        .post(idem.url("/slow"))
        .header("idempotency-key", "drain")
        .body("{}");
    let in_flight = tokio::spawn(async move { request.send().await.unwrap().status().as_u16() });
    while upstream.calls("/slow") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = tokio::task::spawn_blocking(move || idem.terminate())
        .await
        .unwrap();
    assert_eq!(
        in_flight.await.unwrap(),
        201,
        "the request in flight completed"
    );
    assert!(status.success(), "clean exit: {status}");
}

#[tokio::test]
async fn config_file_and_environment_set_routes_and_options() {
    let upstream = Upstream::start().await;
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("idem.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"memory://\"\n[proxy]\nupstream = \"{}\"\n\n[[proxy.routes]]\nmethod = \"POST\"\npath = \"/payments/**\"\nrequire_key = true\n\n[[proxy.routes]]\npath = \"/webhooks/*\"\nskip = true\n",
            upstream.url()
        ),
    )
    .unwrap();
    let idem = Idem::start_with_env(
        &["proxy", "--config", config.to_str().unwrap()],
        &[("IDEM_LISTEN", "127.0.0.1:0")],
    );
    let keyless = client()
        .post(idem.url("/payments/p1"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(code(keyless).await, (400, "idempotency_key_missing".into()));
    let other = client()
        .post(idem.url("/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 201, "other routes do not require a key");
    for _ in 0..2 {
        let hook = client()
            .post(idem.url("/webhooks/stripe"))
            .header("idempotency-key", "h")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(hook.headers().get("x-idempotent-replayed").is_none());
    }
    assert_eq!(
        upstream.calls("/webhooks/stripe"),
        2,
        "skipped routes are forwarded every time"
    );
}

#[test]
fn bad_configuration_is_refused_at_start_with_a_clear_message() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_idem"))
        .args([
            "proxy",
            "--store",
            "memory://",
            "--upstream",
            "ftp://api.example",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("use an http:// or https:// URL"),
        "{stderr}"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(["proxy"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("--upstream"));
}

#[tokio::test]
async fn a_client_hanging_up_never_frees_a_key_the_upstream_is_executing() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &[]);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(idem.url("/slow"))
        .header("idempotency-key", "hung-up")
        .body("{}")
        .send()
        .await;
    assert!(
        gave_up.is_err(),
        "the client timed out while the upstream was executing"
    );
    // The retry arrives while the upstream still runs: 409, not a second execution.
    let during = client()
        .post(idem.url("/slow"))
        .header("idempotency-key", "hung-up")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(during.status(), 409);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = client()
        .post(idem.url("/slow"))
        .header("idempotency-key", "hung-up")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 201);
    assert_eq!(
        after.headers()["x-idempotent-replayed"],
        "true",
        "the abandoned execution's answer was stored"
    );
    assert_eq!(upstream.calls("/slow"), 1);
}

/// The proxy dies (kill -9) while the upstream executes: the key stays held while the dead
/// owner's lease runs, and once it lapses the outcome is unknown (409 `outcome_unknown`): the
/// operation may have happened, so it is never executed again on its own (unless the route
/// opts into take-over). Returns the upstream, and the status, problem code and replay header of a retry sent
/// after the lease lapsed.
async fn kill_9_mid_request(config: Option<&str>) -> (Upstream, (u16, String), String) {
    let upstream = Upstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("idem-data");
    let store = store.to_str().unwrap();
    let config_file = data.path().join("idem.toml");
    let upstream_url = upstream.url();
    let mut args = vec![
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--upstream",
        &upstream_url,
        "--lease",
        "2s",
    ];
    if let Some(config) = config {
        std::fs::write(&config_file, config).unwrap();
        args.extend(["--config", config_file.to_str().unwrap()]);
    }
    let idem = Idem::start(&args);
    let request = client()
        .post(idem.url("/slow"))
        .header("idempotency-key", "crash")
        .body("{}");
    let in_flight = tokio::spawn(async move { request.send().await });
    while upstream.calls("/slow") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    idem.kill_9(); // the proxy dies while the upstream executes
    assert!(
        in_flight.await.unwrap().is_err(),
        "the client lost its connection"
    );

    let idem = Idem::start(&args);
    let send = || {
        client()
            .post(idem.url("/slow"))
            .header("idempotency-key", "crash")
            .body("{}")
            .send()
    };
    let held = send().await.unwrap();
    assert_eq!(
        code(held).await,
        (409, "request_in_progress".into()),
        "the dead owner's lease still holds the key: no immediate second execution"
    );
    assert_eq!(upstream.calls("/slow"), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let after_lapse = send().await.unwrap();
    let replayed = after_lapse
        .headers()
        .get("x-idempotent-replayed")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (upstream, code(after_lapse).await, replayed)
}

#[tokio::test]
async fn kill_9_mid_request_leaves_the_outcome_unknown_and_never_re_executes() {
    let (upstream, after_lapse, _) = kill_9_mid_request(None).await;
    assert_eq!(
        after_lapse,
        (409, "outcome_unknown".into()),
        "once the lease lapses the outcome is unknown: reported, never re-executed"
    );
    assert_eq!(upstream.calls("/slow"), 1, "executed once");
}

#[tokio::test]
async fn kill_9_mid_request_on_a_take_over_route_re_executes_after_the_lease() {
    let config = "[[proxy.routes]]\npath = \"/**\"\non_lapse = \"take_over\"\n";
    let (upstream, after_lapse, replayed) = kill_9_mid_request(Some(config)).await;
    assert_eq!(
        after_lapse.0, 201,
        "a take-over route re-runs the operation once the lease lapses"
    );
    assert_eq!(replayed, "false");
    assert_eq!(upstream.calls("/slow"), 2);
}
