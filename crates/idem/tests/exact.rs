//! `idem serve` and `idem proxy` on exact requests and useful answers: a payload forwarded as
//! sent, numbers compared exactly, duplicate members refused, an operation's refusal exposed
//! and its failure hidden, and errors that tell the client program what to do next.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use support::{Idem, Upstream, client};

/// An operation on loopback: `/{status}` answers that status with a JSON body, and keeps
/// every body it was sent.
#[derive(Clone, Default)]
struct Operation {
    received: Arc<Mutex<Vec<Bytes>>>,
}

impl Operation {
    async fn start(&self) -> String {
        let app = Router::new()
            .route("/{status}", post(answer))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}")
    }

    fn calls(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

async fn answer(
    State(operation): State<Operation>,
    Path(status): Path<u16>,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    operation.received.lock().unwrap().push(body);
    let status = StatusCode::from_u16(status).unwrap();
    if status == StatusCode::CREATED {
        // A result whose number no f64 holds.
        return (
            status,
            r#"{"balance": 123456789012345678901234}"#.to_owned(),
        )
            .into_response();
    }
    if matches!(status.as_u16(), 429 | 503) {
        return (status, [("retry-after", "7")], r#"{"busy":true}"#).into_response();
    }
    let document = match status.as_u16() {
        402 => json!({"decline_code": "insufficient_funds"}),
        500 => json!({"stack": "secret internals"}),
        _ => json!({"id": "op_1"}),
    };
    (status, document.to_string()).into_response()
}

async fn serve(operation: &Operation, extra: &[&str]) -> Idem {
    let url = operation.start().await;
    let definitions: Vec<String> = [200, 201, 402, 429, 500, 503]
        .iter()
        .map(|status| format!("op{status}={url}/{status}"))
        .collect();
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--store", "memory://"];
    for definition in &definitions {
        args.extend(["--operation", definition.as_str()]);
    }
    args.extend_from_slice(extra);
    Idem::start(&args)
}

async fn execute(idem: &Idem, key: &str, body: &str) -> (u16, Value) {
    let response = client()
        .post(idem.url("/v1/idempotency/execute"))
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_payload_reaches_the_operation_as_sent_and_numbers_compare_exactly() {
    let operation = Operation::default();
    let idem = serve(&operation, &[]).await;
    let sent = r#"{"operation":"op200","payload":{"amount": 123456789012345678901234}}"#;
    let (status, _) = execute(&idem, "n-1", sent).await;
    assert_eq!(status, 200);
    assert_eq!(
        operation.received.lock().unwrap()[0],
        Bytes::from_static(br#"{"amount": 123456789012345678901234}"#),
        "forwarded byte for byte, never through f64"
    );
    let changed = r#"{"operation":"op200","payload":{"amount":123456789012345678901235}}"#;
    let (status, document) = execute(&idem, "n-1", changed).await;
    assert_eq!(status, 422, "the last digit changed: {document}");
    assert_eq!(document["error"]["code"], "IDEMPOTENCY_KEY_MISMATCH");
    assert_eq!(document["error"]["differs"], json!(["payload"]));
    assert_eq!(document["error"]["retry"], "new_key");
    let respelled = r#"{"payload":{"amount":1.23456789012345678901234e23},"operation":"op200"}"#;
    let (status, _) = execute(&idem, "n-1", respelled).await;
    assert_eq!(status, 200, "the same number, spelled otherwise, replays");
    assert_eq!(operation.calls(), 1);

    let duplicate = r#"{"operation":"op200","payload":{"amount":1,"amount":1000}}"#;
    let (status, document) = execute(&idem, "dup-1", duplicate).await;
    assert_eq!(status, 400);
    assert_eq!(document["error"]["code"], "INVALID_JSON");
    assert!(
        document["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"amount\""),
        "{document}"
    );
    assert_eq!(document["error"]["retry"], "never");
    assert_eq!(operation.calls(), 1);
}

#[tokio::test]
async fn the_result_reaches_the_client_as_the_operation_wrote_it() {
    let operation = Operation::default();
    let idem = serve(&operation, &[]).await;
    for _ in 0..2 {
        let response = client()
            .post(idem.url("/v1/idempotency/execute"))
            .header("idempotency-key", "r-1")
            .header("content-type", "application/json")
            .body(r#"{"operation":"op201","payload":{}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(
            text.contains("123456789012345678901234"),
            "every digit kept, first time and replayed: {text}"
        );
    }
}

#[tokio::test]
async fn an_operations_refusal_is_exposed_and_its_failure_hidden() {
    let operation = Operation::default();
    let idem = serve(&operation, &[]).await;
    for _ in 0..2 {
        let (status, document) =
            execute(&idem, "declined-1", r#"{"operation":"op402","payload":{}}"#).await;
        assert_eq!(status, 402, "{document}");
        assert_eq!(document["error"]["code"], "OPERATION_REJECTED");
        assert_eq!(document["error"]["operation"]["status"], 402);
        assert_eq!(
            document["error"]["operation"]["body"],
            json!({"decline_code": "insufficient_funds"})
        );
        assert_eq!(document["error"]["retry"], "new_key");
        assert!(
            document["error"]["type"]
                .as_str()
                .unwrap()
                .ends_with("/idem_http/errors/index.html#operation_rejected")
        );
    }
    for _ in 0..2 {
        let (status, document) =
            execute(&idem, "broken-1", r#"{"operation":"op500","payload":{}}"#).await;
        assert_eq!(status, 502);
        assert_eq!(document["error"]["code"], "OPERATION_FAILED");
        assert!(
            !document.to_string().contains("secret internals"),
            "{document}"
        );
        assert!(document["error"].get("operation").is_none());
    }
    assert_eq!(operation.calls(), 2, "both answers are kept, never re-run");

    for attempt in 1..=2 {
        let (status, document) =
            execute(&idem, "busy-1", r#"{"operation":"op429","payload":{}}"#).await;
        assert_eq!(status, 502);
        assert_eq!(document["error"]["code"], "OPERATION_UNREACHABLE");
        assert_eq!(document["error"]["retry"], "same_key");
        assert_eq!(
            operation.calls(),
            2 + attempt,
            "429 is not an answer: each retry runs"
        );
    }
}

/// "Not processed, try later" is passed on with the operation's `Retry-After`, the key left
/// free; which statuses mean that is a setting (`--transient-status`).
#[tokio::test]
async fn a_not_processed_answer_carries_its_retry_after_and_the_list_is_a_setting() {
    let operation = Operation::default();
    let idem = serve(&operation, &[]).await;
    for (key, body) in [
        ("rate-1", r#"{"operation":"op429","payload":{}}"#),
        ("down-1", r#"{"operation":"op503","payload":{}}"#),
    ] {
        let response = client()
            .post(idem.url("/v1/idempotency/execute"))
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502);
        assert_eq!(response.headers()["retry-after"], "7", "{key}");
        let document: Value = response.json().await.unwrap();
        assert_eq!(document["error"]["code"], "OPERATION_UNREACHABLE");
        assert_eq!(document["error"]["retry"], "same_key");
        assert!(
            document["error"]["instance"]
                .as_str()
                .unwrap()
                .starts_with("urn:uuid:"),
            "{document}"
        );
    }
    drop(idem);

    // Behind a balancer that answers 503 after its backend ran, 503 must be kept.
    let operation = Operation::default();
    let idem = serve(&operation, &["--transient-status", "429"]).await;
    let mut instances = Vec::new();
    for _ in 0..2 {
        let (status, document) =
            execute(&idem, "down-2", r#"{"operation":"op503","payload":{}}"#).await;
        assert_eq!(status, 502);
        assert_eq!(document["error"]["code"], "OPERATION_FAILED");
        assert_eq!(document["error"]["retry"], "new_key");
        instances.push(document["error"]["instance"].clone());
    }
    assert_eq!(operation.calls(), 1, "kept, never re-run");
    assert_eq!(
        instances[0], instances[1],
        "a replay is the first occurrence, instance included"
    );
}

#[tokio::test]
async fn the_mismatch_status_is_a_setting() {
    let operation = Operation::default();
    let idem = serve(&operation, &["--mismatch-status", "409"]).await;
    execute(&idem, "m-1", r#"{"operation":"op200","payload":{"a":1}}"#).await;
    let (status, document) =
        execute(&idem, "m-1", r#"{"operation":"op402","payload":{"a":1}}"#).await;
    assert_eq!(status, 409);
    assert_eq!(document["error"]["differs"], json!(["operation"]));

    let upstream = Upstream::start().await;
    let proxy = Idem::proxy_on_memory(
        &upstream.url(),
        &["--mismatch-status", "400", "--canonical-json"],
    );
    let send = |body: &'static str| {
        client()
            .post(proxy.url("/charges"))
            .header("idempotency-key", "m-2")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(send(r#"{"amount":10}"#).await.unwrap().status(), 201);
    assert_eq!(
        send(r#"{ "amount" : 10.0 }"#).await.unwrap().headers()["x-idempotent-replayed"],
        "true"
    );
    let mismatch = send(r#"{"amount":11}"#).await.unwrap();
    assert_eq!(mismatch.status(), 400);
    let problem: Value = mismatch.json().await.unwrap();
    assert_eq!(problem["code"], "idempotency_key_mismatch");
    assert_eq!(problem["differs"], json!(["body"]));
}

#[tokio::test]
async fn a_principal_sent_twice_is_refused_not_guessed() {
    let operation = Operation::default();
    let idem = serve(&operation, &[]).await;
    let response = client()
        .post(idem.url("/v1/idempotency/execute"))
        .header("idempotency-key", "p-1")
        .header("authorization", "Bearer victim")
        .header("authorization", "Bearer attacker")
        .header("content-type", "application/json")
        .body(r#"{"operation":"op200","payload":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["error"]["code"], "PRINCIPAL_MISSING");
    assert_eq!(operation.calls(), 0);
}

/// The gateway passes an upstream's "not processed" answer on and frees the key, so the retry
/// executes; `--transient-status` decides which statuses mean that.
#[tokio::test]
async fn the_gateways_not_processed_statuses_are_a_setting() {
    let upstream = Upstream::start().await;
    let start = |extra: &[&str]| Idem::proxy_on_memory(&upstream.url(), extra);
    let send = |idem: &Idem, path: &str, key: &str| {
        client()
            .post(idem.url(path))
            .header("idempotency-key", key)
            .body("{}")
            .send()
    };
    let idem = start(&[]);
    for _ in 0..2 {
        let answer = send(&idem, "/status/503", "busy-a").await.unwrap();
        assert_eq!(answer.status(), 503);
        assert_eq!(answer.headers()["x-idempotent-replayed"], "false");
    }
    assert_eq!(upstream.calls("/status/503"), 2, "each retry executes");
    drop(idem);

    let idem = start(&["--transient-status", "429,418"]);
    for _ in 0..2 {
        assert_eq!(
            send(&idem, "/status/418", "busy-b").await.unwrap().status(),
            418
        );
        send(&idem, "/status/503", "kept-b").await.unwrap();
    }
    assert_eq!(upstream.calls("/status/418"), 2, "418 is now not processed");
    assert_eq!(
        upstream.calls("/status/503"),
        3,
        "503 is an answer now: stored and replayed"
    );
}
