//! `idem serve` as a process: the execute contract, the records flow, and the OpenAPI
//! document, against real operations on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Idem, Upstream, client, free_port};

fn serve(upstream: &Upstream, extra: &[&str]) -> Idem {
    let charge = format!("payment.charge={}/charge", upstream.url());
    let slow = format!("report.build={}/slow", upstream.url());
    let failing = format!("email.send={}/status/500", upstream.url());
    let hanging = format!("ledger.post={}/hang", upstream.url());
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory://",
        "--operation",
        &charge,
        "--operation",
        &slow,
        "--operation",
        &failing,
        "--operation",
        &hanging,
        "--operation-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    Idem::start(&args)
}

async fn execute(idem: &Idem, key: Option<&str>, body: &str) -> (StatusCode, Value) {
    let mut request = client()
        .post(idem.url("/v1/idempotency/execute"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn execute_runs_an_operation_once_and_replays_its_result() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    let body = r#"{"operation":"payment.charge","payload":{"amount":1000,"currency":"eur"}}"#;
    let (status, first) = execute(&idem, Some("pay-1"), body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["status"], "completed");
    assert_eq!(first["result"]["path"], "/charge");
    assert_eq!(upstream.last_headers()["idempotency-key"], "pay-1");
    // The same payload with other key order and spacing is the same request.
    let reordered =
        r#"{ "payload": {"currency":"eur", "amount":1000}, "operation":"payment.charge" }"#;
    let (status, replay) = execute(&idem, Some("pay-1"), reordered).await;
    assert_eq!((status, &replay), (StatusCode::OK, &first));
    assert_eq!(upstream.calls("/charge"), 1);
}

#[tokio::test]
async fn duplicate_while_executing_is_processing() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    let body = r#"{"operation":"report.build","payload":{}}"#;
    let first = tokio::spawn({
        let url = idem.url("/v1/idempotency/execute");
        async move {
            client()
                .post(url)
                .header("idempotency-key", "r")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    while upstream.calls("/slow") == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (status, document) = execute(&idem, Some("r"), body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(document, json!({"status": "processing"}));
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(upstream.calls("/slow"), 1);
}

#[tokio::test]
async fn every_bad_request_gets_a_structured_error() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    let good = r#"{"operation":"payment.charge","payload":{"amount":1}}"#;
    let cases = [
        (
            None,
            good,
            StatusCode::BAD_REQUEST,
            "IDEMPOTENCY_KEY_MISSING",
        ),
        (
            Some(""),
            good,
            StatusCode::BAD_REQUEST,
            "IDEMPOTENCY_KEY_INVALID",
        ),
        (
            Some("k"),
            "{not json",
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
        ),
        (
            Some("k"),
            r#"{"payload":{}}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            Some("k"),
            r#"{"operation":"x","payload":{},"extra":1}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            Some("k"),
            r#"{"operation":"nope","payload":{}}"#,
            StatusCode::NOT_FOUND,
            "UNKNOWN_OPERATION",
        ),
    ];
    for (key, body, status, code) in cases {
        let (got, document) = execute(&idem, key, body).await;
        assert_eq!(
            (got, document["error"]["code"].as_str().unwrap()),
            (status, code),
            "{body}"
        );
        assert!(
            document["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert_eq!(upstream.calls("/charge"), 0, "nothing executed");
    execute(&idem, Some("used"), good).await;
    let other = r#"{"operation":"payment.charge","payload":{"amount":2}}"#;
    let (status, document) = execute(&idem, Some("used"), other).await;
    assert_eq!(
        (status, document["error"]["code"].as_str().unwrap()),
        (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_MISMATCH")
    );
    let other_operation = r#"{"operation":"email.send","payload":{"amount":1}}"#;
    let (status, _) = execute(&idem, Some("used"), other_operation).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let wrong_method = client()
        .patch(idem.url("/v1/idempotency/records/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong_method.json::<Value>().await.unwrap()["error"]["code"],
        "METHOD_NOT_ALLOWED"
    );
    let bad_path = client()
        .get(idem.url("/v1/idempotency/records/%FF"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bad_path.json::<Value>().await.unwrap()["error"]["code"],
        "IDEMPOTENCY_KEY_INVALID"
    );
    let unknown = client().get(idem.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"]["code"],
        "NOT_FOUND"
    );
}

#[tokio::test]
async fn a_member_of_the_wrong_type_is_named_by_its_path() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    let (status, document) = execute(&idem, Some("k"), r#"{"operation":7,"payload":{}}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(document["error"]["code"], "INVALID_REQUEST");
    let message = document["error"]["message"].as_str().unwrap();
    assert!(message.contains("`operation`"), "{message}");
    let wrong_token = client()
        .put(idem.url("/v1/idempotency/records/k"))
        .json(&json!({"lease_token": 7, "result": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_token.status(), StatusCode::BAD_REQUEST);
    let document: Value = wrong_token.json().await.unwrap();
    assert_eq!(document["error"]["code"], "INVALID_REQUEST");
    let message = document["error"]["message"].as_str().unwrap();
    assert!(message.contains("`lease_token`"), "{message}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_payload_too_large_and_nothing_executes() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    let padding = "x".repeat(1024 * 1024);
    let body = format!(r#"{{"operation":"payment.charge","payload":{{"note":"{padding}"}}}}"#);
    let (status, document) = execute(&idem, Some("big"), &body).await;
    assert_eq!(
        (status, document["error"]["code"].as_str().unwrap()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );
    assert_eq!(upstream.calls("/charge"), 0);
}

#[tokio::test]
async fn the_operation_receives_the_payload_as_sent() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    let payload = r#"{ "currency": "eur", "amount": 1000 }"#;
    let body = format!(r#"{{"operation":"payment.charge","payload":{payload}}}"#);
    let (status, document) = execute(&idem, Some("as-sent"), &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["result"]["received"], payload.len());
}

#[tokio::test]
async fn failed_and_unknown_outcomes_are_kept_unreachable_ones_released() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    for _ in 0..2 {
        let (status, document) = execute(
            &idem,
            Some("f"),
            r#"{"operation":"email.send","payload":{}}"#,
        )
        .await;
        assert_eq!(
            (status, document["error"]["code"].as_str().unwrap()),
            (StatusCode::BAD_GATEWAY, "OPERATION_FAILED")
        );
        let (status, document) = execute(
            &idem,
            Some("h"),
            r#"{"operation":"ledger.post","payload":{}}"#,
        )
        .await;
        assert_eq!(
            (status, document["error"]["code"].as_str().unwrap()),
            (StatusCode::GATEWAY_TIMEOUT, "OPERATION_OUTCOME_UNKNOWN")
        );
    }
    assert_eq!(upstream.calls("/status/500"), 1);
    assert_eq!(upstream.calls("/hang"), 1);

    let port = free_port();
    let operation = format!("late.op=http://127.0.0.1:{port}/late");
    let idem = Idem::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory://",
        "--operation",
        &operation,
    ]);
    let body = r#"{"operation":"late.op","payload":{}}"#;
    let (status, document) = execute(&idem, Some("u"), body).await;
    assert_eq!(
        (status, document["error"]["code"].as_str().unwrap()),
        (StatusCode::BAD_GATEWAY, "OPERATION_UNREACHABLE")
    );
    let late = Upstream::start_on(&format!("127.0.0.1:{port}")).await;
    let (status, _) = execute(&idem, Some("u"), body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "nothing was delivered, so the retry executes"
    );
    assert_eq!(late.calls("/late"), 1);
}

#[tokio::test]
async fn begin_complete_release_and_status() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    let client = client();
    let body = r#"{"operation":"user.create","payload":{"email":"a@example.com"}}"#;
    let begin = |key: &str| {
        client
            .post(idem.url("/v1/idempotency/records"))
            .header("idempotency-key", key)
            .body(body)
            .send()
    };

    let acquired = begin("signup-1").await.unwrap();
    assert_eq!(acquired.status(), StatusCode::CREATED);
    let acquired: Value = acquired.json().await.unwrap();
    assert_eq!(acquired["status"], "acquired");
    let token = acquired["lease_token"].as_str().unwrap().to_owned();
    assert!(acquired["lease_expires_at"].as_u64().unwrap() > 0);

    let duplicate = begin("signup-1").await.unwrap();
    assert_eq!(duplicate.status(), StatusCode::ACCEPTED);
    let status = client
        .get(idem.url("/v1/idempotency/records/signup-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::ACCEPTED);

    let wrong = client
        .put(idem.url("/v1/idempotency/records/signup-1"))
        .json(&json!({"lease_token": "12345", "result": {"id": "wrong"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::CONFLICT);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"]["code"],
        "LEASE_LOST"
    );
    let malformed = client
        .put(idem.url("/v1/idempotency/records/signup-1"))
        .json(&json!({"lease_token": "not-a-number", "result": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        malformed.json::<Value>().await.unwrap()["error"]["code"],
        "LEASE_TOKEN_INVALID"
    );

    let completed = client
        .put(idem.url("/v1/idempotency/records/signup-1"))
        .json(&json!({"lease_token": token, "result": {"user_id": "u_1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(completed.status(), StatusCode::OK);
    let expected = json!({"status": "completed", "result": {"user_id": "u_1"}});
    assert_eq!(completed.json::<Value>().await.unwrap(), expected);
    let replay = begin("signup-1").await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.json::<Value>().await.unwrap(), expected);
    // A completion retried after a lost answer finds its own result stored: a success; a
    // different result under the same token is refused.
    let retried = client
        .put(idem.url("/v1/idempotency/records/signup-1"))
        .json(&json!({"lease_token": token, "result": {"user_id": "u_1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(retried.json::<Value>().await.unwrap(), expected);
    let other = client
        .put(idem.url("/v1/idempotency/records/signup-1"))
        .json(&json!({"lease_token": token, "result": {"user_id": "u_2"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::CONFLICT);
    let status = client
        .get(idem.url("/v1/idempotency/records/signup-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.json::<Value>().await.unwrap(), expected);

    // Release gives the key back; the next begin acquires again.
    let acquired: Value = begin("signup-2").await.unwrap().json().await.unwrap();
    let token = acquired["lease_token"].as_str().unwrap();
    let released = client
        .delete(idem.url(&format!(
            "/v1/idempotency/records/signup-2?lease_token={token}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), StatusCode::NO_CONTENT);
    let again = client
        .delete(idem.url(&format!(
            "/v1/idempotency/records/signup-2?lease_token={token}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::NO_CONTENT,
        "a release retried after a lost answer finds the key free: a success"
    );
    assert_eq!(
        begin("signup-2").await.unwrap().status(),
        StatusCode::CREATED
    );
    let absent = client
        .get(idem.url("/v1/idempotency/records/never-used"))
        .send()
        .await
        .unwrap();
    assert_eq!(absent.status(), StatusCode::NOT_FOUND);
}

/// Regression (found by Schemathesis against docs/openapi.json): `parse::<u64>` also took
/// `+42` and `0042` as token 42, so the document's format (the begin answer's decimal form)
/// did not say what the server accepted, and many strings named one token.
#[tokio::test]
async fn a_lease_token_is_accepted_only_in_the_form_begin_gives_it() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    let client = client();
    let acquired: Value = client
        .post(idem.url("/v1/idempotency/records"))
        .header("idempotency-key", "token-forms")
        .body(r#"{"operation":"user.create","payload":{}}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = acquired["lease_token"].as_str().unwrap().to_owned();
    let code = |response: reqwest::Response| async move {
        let status = response.status();
        let document: Value = response.json().await.unwrap();
        (
            status,
            document["error"]["code"].as_str().unwrap().to_owned(),
        )
    };
    let refused = (StatusCode::BAD_REQUEST, "LEASE_TOKEN_INVALID".to_owned());
    for other_form in [
        format!("+{token}"),
        format!("0{token}"),
        format!(" {token}"),
    ] {
        let complete = client
            .put(idem.url("/v1/idempotency/records/token-forms"))
            .json(&json!({"lease_token": other_form, "result": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            code(complete).await,
            refused,
            "complete with {other_form:?}"
        );
        let renew = client
            .post(idem.url("/v1/idempotency/records/token-forms/lease"))
            .json(&json!({"lease_token": other_form}))
            .send()
            .await
            .unwrap();
        assert_eq!(code(renew).await, refused, "renew with {other_form:?}");
    }
    let release = client
        .delete(idem.url(&format!(
            "/v1/idempotency/records/token-forms?lease_token=%2B{token}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(code(release).await, refused);
    let status = client
        .get(idem.url("/v1/idempotency/records/token-forms"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        status.status(),
        StatusCode::ACCEPTED,
        "still held by the lease"
    );
    let completed = client
        .put(idem.url("/v1/idempotency/records/token-forms"))
        .json(&json!({"lease_token": token, "result": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(completed.status(), StatusCode::OK);
}

/// What docs/openapi.json says of `{key}`: the header's key, percent-encoded, in either of its
/// forms (`abc` and `"abc"` are one key).
#[tokio::test]
async fn the_path_key_is_the_header_key_percent_encoded() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    let client = client();
    for key in ["k%41", r#""a b%\"""#] {
        let begun = client
            .post(idem.url("/v1/idempotency/records"))
            .header("idempotency-key", key)
            .body(r#"{"operation":"user.create","payload":{}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(begun.status(), StatusCode::CREATED, "{key}");
    }
    let status_of = |path: &str| {
        client
            .get(idem.url(&format!("/v1/idempotency/records/{path}")))
            .send()
    };
    for (path, status) in [
        ("k%2541", StatusCode::ACCEPTED),
        ("%22k%2541%22", StatusCode::ACCEPTED),
        // `%41` decodes to `A`: another key, never used.
        ("k%41", StatusCode::NOT_FOUND),
        ("%22a%20b%25%5C%22%22", StatusCode::ACCEPTED),
        // Unquoted, a space is not a key's character.
        ("a%20b%25%22", StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(status_of(path).await.unwrap().status(), status, "{path}");
    }
}

#[tokio::test]
async fn openapi_document_is_served_and_matches_the_committed_copy() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &[]);
    let served: Value = client()
        .get(idem.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let committed: Value =
        serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
    assert_eq!(served, committed);
    assert_eq!(served["openapi"], "3.1.0");
    for path in [
        "/v1/idempotency/execute",
        "/v1/idempotency/records",
        "/v1/idempotency/records/{key}",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} documented");
    }
}

#[tokio::test]
async fn the_admin_port_counts_coordination_requests() {
    let upstream = Upstream::start().await;
    let idem = serve(&upstream, &["--admin-listen", "127.0.0.1:0"]);
    let body = r#"{"operation":"payment.charge","payload":{"amount":3}}"#;
    execute(&idem, Some("counted"), body).await;
    execute(&idem, Some("counted"), body).await;
    execute(&idem, None, body).await;
    let admin = idem.admin_url.clone().unwrap();
    let metrics = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |status: &str| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with("idem_coordination_requests_total{")
                    && line.contains("route=\"/v1/idempotency/execute\"")
                    && line.contains(&format!("status=\"{status}\""))
            })
            .and_then(|line| line.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(count("200").as_deref(), Some("2"), "{metrics}");
    assert_eq!(count("400").as_deref(), Some("1"), "{metrics}");
}
