//! The layer's HTTP behaviour, end to end through an axum router.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::BodyExt;
use idem_core::{
    BeginOutcome, BeginRequest, CompleteRequest, KeyPolicy, LeaseToken, MemoryStore, OnLapse,
    RecordId, RecordSnapshot, Store, StoreError, Timestamp, TransitionOutcome,
};
use idem_http::{
    CancelPolicy, IdempotencyLayer, IdempotencyLayerBuilder, ScopeSource, StoreFailureMode,
};
use serde_json::Value;
use tower::ServiceExt;

/// Counts how often the handlers really ran.
#[derive(Clone, Default)]
struct Executions(Arc<AtomicUsize>);

impl Executions {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

fn app<St: Store>(layer: IdempotencyLayer<St>, executions: &Executions) -> Router {
    let charge = executions.clone();
    let fail = executions.clone();
    let read = executions.clone();
    let big = executions.clone();
    Router::new()
        .route(
            "/charges",
            post(move |headers: HeaderMap, body: Bytes| async move {
                let n = charge.bump();
                let tag = headers
                    .get("x-tag")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                Response::builder()
                    .status(StatusCode::CREATED)
                    .header("content-type", "application/json")
                    .header("set-cookie", "session=1")
                    .header("set-cookie", "theme=dark")
                    .header("link", "</charges/1>; rel=self")
                    .header("link", "</customers/7>; rel=customer")
                    .header("connection", "x-hop")
                    .header("x-hop", "per-connection")
                    .body(Body::from(format!(
                        "{{\"charge\":{n},\"tag\":\"{tag}\",\"echo\":{}}}",
                        String::from_utf8_lossy(&body).len()
                    )))
                    .unwrap()
            })
            .get(move || async move {
                read.bump();
                "listing"
            }),
        )
        .route(
            "/fail",
            post(move || async move {
                fail.bump();
                (StatusCode::INTERNAL_SERVER_ERROR, "boom")
            }),
        )
        .route(
            "/big",
            post(move || async move {
                big.bump();
                vec![b'x'; 3000]
            }),
        )
        .layer(layer)
}

fn post_with_key(path: &str, key: &str, body: &'static str) -> Request<Body> {
    Request::post(path)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn problem_code(body: &Bytes) -> String {
    let document: Value = serde_json::from_slice(body).unwrap();
    document["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn new_key_executes_once_and_retries_replay_the_first_response() {
    let executions = Executions::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), &executions);

    let (status, headers, body) =
        send(&app, post_with_key("/charges", "k1", "{\"amount\":10}")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["x-idempotent-replayed"], "false");
    assert_eq!(executions.count(), 1);

    for _ in 0..3 {
        let (again, replay_headers, replay_body) =
            send(&app, post_with_key("/charges", "k1", "{\"amount\":10}")).await;
        assert_eq!(again, StatusCode::CREATED);
        assert_eq!(replay_body, body);
        assert_eq!(replay_headers["x-idempotent-replayed"], "true");
        assert_eq!(replay_headers["content-type"], "application/json");
        let links: Vec<_> = replay_headers.get_all("link").iter().collect();
        assert_eq!(
            links,
            ["</charges/1>; rel=self", "</customers/7>; rel=customer"],
            "repeated headers are replayed in order"
        );
        assert!(
            replay_headers.get("set-cookie").is_none(),
            "cookies belong to the first caller, not to the result"
        );
        assert!(
            replay_headers.get("x-hop").is_none(),
            "headers named by Connection are per-connection"
        );
        assert_eq!(replay_headers["content-length"], body.len().to_string());
    }
    assert_eq!(executions.count(), 1, "retries never execute");

    send(&app, post_with_key("/charges", "k2", "{\"amount\":10}")).await;
    assert_eq!(executions.count(), 2, "a new key is a new operation");
}

#[tokio::test]
async fn safe_methods_and_keyless_requests_pass_through() {
    let executions = Executions::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), &executions);
    for _ in 0..2 {
        let request = Request::get("/charges")
            .header("idempotency-key", "k")
            .body(Body::empty())
            .unwrap();
        let (status, headers, _) = send(&app, request).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("x-idempotent-replayed").is_none());
    }
    for _ in 0..2 {
        let (status, headers, _) = send(
            &app,
            Request::post("/charges").body(Body::from("{}")).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(headers.get("x-idempotent-replayed").is_none());
    }
    assert_eq!(executions.count(), 4);
}

#[tokio::test]
async fn covered_methods_are_configurable() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .methods([http::Method::PUT])
        .build();
    let app = app(layer, &executions);
    send(&app, post_with_key("/charges", "k", "{}")).await;
    let (_, headers, _) = send(&app, post_with_key("/charges", "k", "{}")).await;
    assert!(
        headers.get("x-idempotent-replayed").is_none(),
        "POST is no longer covered"
    );
    assert_eq!(executions.count(), 2);
}

#[tokio::test]
async fn missing_key_is_refused_where_required() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .require_key_when(|parts| parts.uri.path() == "/charges")
        .build();
    let app = app(layer, &executions);
    let (status, headers, body) = send(
        &app,
        Request::post("/charges").body(Body::from("{}")).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(problem_code(&body), "idempotency_key_missing");
    let (status, _, _) = send(&app, Request::post("/fail").body(Body::empty()).unwrap()).await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "other routes do not require a key"
    );
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn invalid_keys_are_refused_and_execute_nothing() {
    let executions = Executions::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), &executions);
    let too_long = "k".repeat(256);
    for key in ["", "has space", "\"unterminated", too_long.as_str()] {
        let (status, _, body) = send(&app, post_with_key("/charges", key, "{}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "key {key:?}");
        assert_eq!(problem_code(&body), "idempotency_key_invalid");
    }
    let twice = Request::post("/charges")
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, body) = send(&app, twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_code(&body), "idempotency_key_invalid");
    assert_eq!(executions.count(), 0);
}

#[tokio::test]
async fn uuid_v4_policy_and_quoted_keys() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .key_policy(KeyPolicy::UuidV4)
        .build();
    let app = app(layer, &executions);
    let (status, _, body) = send(&app, post_with_key("/charges", "not-a-uuid", "{}")).await;
    assert_eq!(
        (status, problem_code(&body).as_str()),
        (StatusCode::BAD_REQUEST, "idempotency_key_invalid")
    );
    let uuid = "9b2f3c1e-5d4a-4c8b-9e7f-1a2b3c4d5e6f";
    send(&app, post_with_key("/charges", uuid, "{}")).await;
    // The sf-string form of the same key is the same key.
    let (_, headers, _) = send(
        &app,
        post_with_key("/charges", &format!("\"{uuid}\""), "{}"),
    )
    .await;
    assert_eq!(headers["x-idempotent-replayed"], "true");
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn reused_key_with_a_different_request_is_a_mismatch() {
    let executions = Executions::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), &executions);
    send(&app, post_with_key("/charges", "k", "{\"amount\":10}")).await;
    let (status, _, body) = send(&app, post_with_key("/charges", "k", "{\"amount\":99}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_code(&body), "idempotency_key_mismatch");
    let (status, _, _) = send(
        &app,
        post_with_key("/charges?currency=eur", "k", "{\"amount\":10}"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the query is part of the request"
    );
    let (status, _, _) = send(&app, post_with_key("/fail", "k", "{\"amount\":10}")).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the path is part of the request"
    );
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn canonical_json_fingerprints_ignore_key_order_and_whitespace() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .canonical_json(true)
        .build();
    let app = app(layer, &executions);
    send(&app, post_with_key("/charges", "k", "{\"a\":1,\"b\":2}")).await;
    let (status, headers, _) = send(
        &app,
        post_with_key("/charges", "k", "{ \"b\": 2, \"a\": 1 }"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["x-idempotent-replayed"], "true");
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn keys_are_scoped_per_principal() {
    let executions = Executions::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), &executions);
    let as_user = |user: &str| {
        Request::post("/charges")
            .header("idempotency-key", "shared-key")
            .header("authorization", format!("Bearer {user}"))
            .body(Body::from("{}"))
            .unwrap()
    };
    let (_, _, alice) = send(&app, as_user("alice")).await;
    let (_, headers, bob) = send(&app, as_user("bob")).await;
    assert_eq!(
        headers["x-idempotent-replayed"], "false",
        "bob never sees alice's record"
    );
    assert_ne!(alice, bob);
    let (_, headers, alice_again) = send(&app, as_user("alice")).await;
    assert_eq!(headers["x-idempotent-replayed"], "true");
    assert_eq!(alice_again, alice);
    assert_eq!(executions.count(), 2);

    let by_tenant = IdempotencyLayer::builder(MemoryStore::new())
        .scope(ScopeSource::Header(http::HeaderName::from_static(
            "x-tenant",
        )))
        .build();
    let tenant_app = app_with(by_tenant, &executions);
    let as_tenant = |tenant: &str| {
        Request::post("/charges")
            .header("idempotency-key", "shared-key")
            .header("x-tenant", tenant)
            .body(Body::from("{}"))
            .unwrap()
    };
    send(&tenant_app, as_tenant("t1")).await;
    let (_, headers, _) = send(&tenant_app, as_tenant("t2")).await;
    assert_eq!(headers["x-idempotent-replayed"], "false");
}

fn app_with<St: Store>(layer: IdempotencyLayer<St>, executions: &Executions) -> Router {
    app(layer, executions)
}

#[tokio::test]
async fn request_body_over_the_limit_is_refused_before_executing() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .max_request_body(16)
        .build();
    let app = app(layer, &executions);
    let (status, _, body) = send(
        &app,
        post_with_key("/charges", "k", "{\"this body is\":\"too long\"}"),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_code(&body), "request_body_too_large");
    // A streamed body without Content-Length is cut at the limit too.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..8).map(|_| Ok(Bytes::from_static(b"abcd"))).collect();
    let streamed = Request::post("/charges")
        .header("idempotency-key", "k2")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let (status, _, _) = send(&app, streamed).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(executions.count(), 0);
    // Nothing was recorded: the same key with an acceptable body executes.
    let (status, _, _) = send(&app, post_with_key("/charges", "k", "{}")).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn server_errors_are_stored_by_default_and_optionally_released() {
    let executions = Executions::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), &executions);
    for _ in 0..2 {
        let (status, _, body) = send(&app, post_with_key("/fail", "k", "")).await;
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::INTERNAL_SERVER_ERROR, b"boom".as_ref())
        );
    }
    assert_eq!(
        executions.count(),
        1,
        "a stored 5xx is replayed, not re-executed"
    );

    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .store_server_errors(false)
        .build();
    let app = app_with(layer, &executions);
    for _ in 0..2 {
        let (_, headers, _) = send(&app, post_with_key("/fail", "k", "")).await;
        assert_eq!(headers["x-idempotent-replayed"], "false");
    }
    assert_eq!(
        executions.count(),
        2,
        "an unstored 5xx frees the key for a retry"
    );
}

#[tokio::test]
async fn response_too_large_to_store_is_executed_once_and_never_replayed() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .max_stored_response(1000)
        .build();
    let app = app(layer, &executions);
    let (status, headers, body) = send(&app, post_with_key("/big", "k", "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-idempotent-replayed"], "false");
    assert_eq!(body.len(), 3000, "the first client gets the whole response");
    let (status, _, body) = send(&app, post_with_key("/big", "k", "")).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(problem_code(&body), "response_not_stored");
    let document: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(document["original_status"], 200);
    assert_eq!(
        executions.count(),
        1,
        "at most once holds even when the response is not stored"
    );
}

/// A handler that blocks until released, to hold a key in flight.
fn gated_app<St: Store>(
    layer: IdempotencyLayer<St>,
    gate: Arc<tokio::sync::Semaphore>,
    executions: &Executions,
) -> Router {
    let executions = executions.clone();
    Router::new()
        .route(
            "/slow",
            post(move || async move {
                executions.bump();
                let _permit = gate.acquire().await.unwrap();
                (StatusCode::CREATED, "done")
            }),
        )
        .layer(layer)
}

#[tokio::test]
async fn duplicate_of_a_request_in_flight_gets_409_with_retry_after() {
    let executions = Executions::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let app = gated_app(
        IdempotencyLayer::new(MemoryStore::new()),
        Arc::clone(&gate),
        &executions,
    );
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/slow", "k", "")).await }
    });
    while executions.count() == 0 {
        tokio::task::yield_now().await;
    }
    let (status, headers, body) = send(&app, post_with_key("/slow", "k", "")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem_code(&body), "request_in_progress");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=5).contains(&retry_after),
        "Retry-After {retry_after} is capped at the default 5 s"
    );
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().0, StatusCode::CREATED);
    let (status, headers, _) = send(&app, post_with_key("/slow", "k", "")).await;
    assert_eq!(
        (status, &headers["x-idempotent-replayed"]),
        (
            StatusCode::CREATED,
            &"true".parse::<http::HeaderValue>().unwrap()
        )
    );
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn duplicate_can_wait_for_the_request_in_flight_and_get_its_replay() {
    let executions = Executions::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .wait_for_in_flight(Duration::from_secs(10))
        .build();
    let app = gated_app(layer, Arc::clone(&gate), &executions);
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/slow", "k", "")).await }
    });
    while executions.count() == 0 {
        tokio::task::yield_now().await;
    }
    let duplicate = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/slow", "k", "")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !duplicate.is_finished(),
        "the duplicate waits instead of answering 409"
    );
    gate.add_permits(1);
    let (status, headers, body) = duplicate.await.unwrap();
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::CREATED, b"done".as_ref())
    );
    assert_eq!(headers["x-idempotent-replayed"], "true");
    assert_eq!(first.await.unwrap().0, StatusCode::CREATED);
    assert_eq!(executions.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_duplicates_execute_once() {
    let executions = Executions::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let app = gated_app(
        IdempotencyLayer::new(MemoryStore::new()),
        Arc::clone(&gate),
        &executions,
    );
    let duplicates: Vec<_> = (0..200)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, post_with_key("/slow", "same", "")).await.0 })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.add_permits(1);
    let mut created = 0;
    for duplicate in duplicates {
        match duplicate.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(created >= 1);
    assert_eq!(
        executions.count(),
        1,
        "200 concurrent duplicates, one execution"
    );
}

#[tokio::test]
async fn with_the_release_policy_a_cancelled_request_releases_the_key() {
    let executions = Executions::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let app = gated_app(
        IdempotencyLayer::builder(MemoryStore::new())
            .on_cancel(CancelPolicy::Release)
            .build(),
        Arc::clone(&gate),
        &executions,
    );
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/slow", "k", "")).await }
    });
    while executions.count() == 0 {
        tokio::task::yield_now().await;
    }
    first.abort(); // the client hung up while the handler ran
    assert!(first.await.unwrap_err().is_cancelled());
    gate.add_permits(10);
    // The release runs in the background; the retry acquires as soon as it has.
    let mut status = StatusCode::CONFLICT;
    for _ in 0..100 {
        status = send(&app, post_with_key("/slow", "k", "")).await.0;
        if status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        executions.count(),
        2,
        "the retry executed: nothing had completed"
    );
}

/// A handler that panics may have had its effect first: by default its key lapses into an
/// unknown outcome and is never executed again; under `Release` the retry executes.
#[tokio::test]
async fn a_panicking_handler_leaves_its_key_unknown_or_released_by_policy() {
    for policy in [CancelPolicy::RunToCompletion, CancelPolicy::Release] {
        let layer = IdempotencyLayer::builder(MemoryStore::new())
            .lease(Duration::from_millis(100))
            .on_cancel(policy)
            .build();
        let panics = Arc::new(AtomicBool::new(true));
        let executions = Executions::default();
        let service = tower::ServiceBuilder::new().layer(layer).service_fn({
            let (panics, executions) = (Arc::clone(&panics), executions.clone());
            move |_request: Request<idem_http::InnerBody<Body>>| {
                let (panics, executions) = (Arc::clone(&panics), executions.clone());
                async move {
                    executions.bump();
                    assert!(!panics.load(Ordering::SeqCst), "handler panics");
                    Ok::<_, std::convert::Infallible>(Response::new(Body::from("ok")))
                }
            }
        });
        let call = tokio::spawn(service.clone().oneshot(post_with_key("/p", "k", "")));
        assert!(call.await.unwrap_err().is_panic());
        panics.store(false, Ordering::SeqCst);
        let mut answer = None;
        for _ in 0..100 {
            let response = service
                .clone()
                .oneshot(post_with_key("/p", "k", ""))
                .await
                .unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            if status != StatusCode::CONFLICT || problem_code(&body) == "outcome_unknown" {
                answer = Some((status, body));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, body) = answer.unwrap();
        match policy {
            CancelPolicy::Release => {
                assert_eq!(status, StatusCode::OK, "the retry executed");
                assert_eq!(executions.count(), 2);
            }
            _ => {
                assert_eq!(problem_code(&body), "outcome_unknown");
                assert_eq!(executions.count(), 1, "never executed again");
            }
        }
    }
}

#[tokio::test]
async fn inner_service_error_releases_the_key() {
    let fails = Arc::new(AtomicBool::new(true));
    let service = tower::ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service_fn({
            let fails = Arc::clone(&fails);
            move |_request: Request<idem_http::InnerBody<Body>>| {
                let fails = fails.load(Ordering::SeqCst);
                async move {
                    if fails {
                        Err("upstream refused")
                    } else {
                        Ok(Response::new(Body::from("ok")))
                    }
                }
            }
        });
    assert!(
        service
            .clone()
            .oneshot(post_with_key("/p", "k", ""))
            .await
            .is_err()
    );
    fails.store(false, Ordering::SeqCst);
    let response = service
        .clone()
        .oneshot(post_with_key("/p", "k", ""))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-idempotent-replayed"], "false");
}

/// A store that can be switched off, to simulate an outage, or that loses only some
/// transitions: the next `failing_completes` completions, or every renewal.
#[derive(Clone, Default)]
struct FlakyStore {
    inner: MemoryStore,
    down: Arc<AtomicBool>,
    failing_completes: Arc<AtomicUsize>,
    renewals_fail: Arc<AtomicBool>,
}

impl FlakyStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::unavailable("connection refused"))
        } else {
            Ok(())
        }
    }
}

impl Store for FlakyStore {
    async fn begin(&self, request: BeginRequest) -> Result<BeginOutcome, StoreError> {
        self.check()?;
        self.inner.begin(request).await
    }
    async fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<TransitionOutcome, StoreError> {
        self.check()?;
        if self.renewals_fail.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("connection reset"));
        }
        self.inner.renew(id, token, lease).await
    }
    async fn complete(&self, request: CompleteRequest) -> Result<TransitionOutcome, StoreError> {
        self.check()?;
        let failing =
            self.failing_completes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(StoreError::unavailable("connection reset"));
        }
        self.inner.complete(request).await
    }
    async fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> Result<TransitionOutcome, StoreError> {
        self.check()?;
        self.inner.release(id, token).await
    }
    async fn get(&self, id: RecordId) -> Result<Option<RecordSnapshot>, StoreError> {
        self.check()?;
        self.inner.get(id).await
    }
    async fn sweep_expired(&self, limit: usize) -> Result<usize, StoreError> {
        self.check()?;
        self.inner.sweep_expired(limit).await
    }
}

#[tokio::test]
async fn store_outage_fails_closed_by_default_and_recovers() {
    let executions = Executions::default();
    let store = FlakyStore::default();
    let app = app(IdempotencyLayer::new(store.clone()), &executions);
    send(&app, post_with_key("/charges", "done-before", "{}")).await;
    store.down.store(true, Ordering::SeqCst);
    let (status, _, body) = send(&app, post_with_key("/charges", "k", "{}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_code(&body), "store_unavailable");
    assert_eq!(executions.count(), 1, "nothing executed during the outage");
    store.down.store(false, Ordering::SeqCst);
    let (_, headers, _) = send(&app, post_with_key("/charges", "done-before", "{}")).await;
    assert_eq!(
        headers["x-idempotent-replayed"], "true",
        "what completed before the outage is kept"
    );
    let (status, _, _) = send(&app, post_with_key("/charges", "k", "{}")).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "service recovers with the store"
    );
}

#[tokio::test]
async fn fail_open_executes_without_idempotency_during_an_outage() {
    let executions = Executions::default();
    let store = FlakyStore::default();
    store.down.store(true, Ordering::SeqCst);
    let layer = IdempotencyLayerBuilder::from_engine_builder(idem_core::Engine::builder(store))
        .on_store_failure(StoreFailureMode::FailOpen)
        .build();
    let app = app(layer, &executions);
    let (status, _, _) = send(&app, post_with_key("/charges", "k", "{}")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn completed_records_survive_a_restart_on_the_embedded_store() {
    let directory = tempfile::tempdir().unwrap();
    let executions = Executions::default();
    let first_body = {
        let store = idem_embedded::EmbeddedStore::open(directory.path()).unwrap();
        let app = app(IdempotencyLayer::new(store), &executions);
        send(&app, post_with_key("/charges", "k", "{}")).await.2
    };
    // Let the first store's writer thread notice it is gone and close the file.
    let mut reopened = None;
    for _ in 0..100 {
        match idem_embedded::EmbeddedStore::open(directory.path()) {
            Ok(store) => {
                reopened = Some(store);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let app = app_with(IdempotencyLayer::new(reopened.unwrap()), &executions);
    let (_, headers, body) = send(&app, post_with_key("/charges", "k", "{}")).await;
    assert_eq!(headers["x-idempotent-replayed"], "true");
    assert_eq!(body, first_body);
    assert_eq!(executions.count(), 1);
}

#[test]
fn metrics_count_each_outcome() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let executions = Executions::default();
                let app = app(IdempotencyLayer::new(MemoryStore::new()), &executions);
                send(&app, post_with_key("/charges", "k", "{}")).await;
                send(&app, post_with_key("/charges", "k", "{}")).await;
                send(&app, post_with_key("/charges", "k", "{\"other\":1}")).await;
                send(&app, post_with_key("/charges", "bad key", "{}")).await;
            });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let count = |outcome: &str| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                key.key().name() == "idem_requests_total"
                    && key
                        .key()
                        .labels()
                        .any(|label| label.key() == "outcome" && label.value() == outcome)
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .unwrap_or(0)
    };
    assert_eq!(count("executed"), 1);
    assert_eq!(count("replayed"), 1);
    assert_eq!(count("mismatch"), 1);
    assert_eq!(count("key_invalid"), 1);
    let latency_recorded = snapshot.iter().any(|(key, _, _, value)| {
        key.key().name() == "idem_store_operation_duration_seconds"
            && matches!(value, DebugValue::Histogram(v) if !v.is_empty())
    });
    assert!(latency_recorded, "store latency is recorded");
}

#[tokio::test]
async fn client_hanging_up_after_the_handler_ran_never_makes_it_run_twice() {
    for policy in [CancelPolicy::RunToCompletion, CancelPolicy::Release] {
        hang_up_while_the_body_is_read(policy).await;
    }
}

async fn hang_up_while_the_body_is_read(policy: CancelPolicy) {
    let executions = Executions::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let app = Router::new()
        .route(
            "/stream",
            post({
                let (executions, gate) = (executions.clone(), Arc::clone(&gate));
                move || async move {
                    executions.bump();
                    // The handler has done its work; its body arrives later.
                    let body = futures_util::stream::once(async move {
                        let _permit = gate.acquire_owned().await.unwrap();
                        Ok::<_, std::io::Error>(Bytes::from_static(b"late body"))
                    });
                    Body::from_stream(body)
                }
            }),
        )
        .layer(
            IdempotencyLayer::builder(MemoryStore::new())
                .on_cancel(policy)
                .build(),
        );
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/stream", "k", "")).await }
    });
    while executions.count() == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    first.abort(); // the client hangs up while the response body is being read
    assert!(first.await.unwrap_err().is_cancelled());
    if policy == CancelPolicy::RunToCompletion {
        // The execution goes on without its client: the body is read and stored.
        let (status, _, body) = send(&app, post_with_key("/stream", "k", "")).await;
        assert_eq!(status, StatusCode::CONFLICT, "{policy:?}");
        assert_eq!(problem_code(&body), "request_in_progress");
        gate.add_permits(1);
    }
    let mut answer = (StatusCode::CONFLICT, HeaderMap::new(), Bytes::new());
    for _ in 0..100 {
        answer = send(&app, post_with_key("/stream", "k", "")).await;
        if answer.0 != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match policy {
        CancelPolicy::RunToCompletion => {
            assert_eq!(
                (answer.0, answer.2.as_ref()),
                (StatusCode::OK, b"late body".as_ref())
            );
            assert_eq!(answer.1["x-idempotent-replayed"], "true");
        }
        _ => assert_eq!(
            answer.0,
            StatusCode::GONE,
            "executed, response unknown: never replayed, never re-run"
        ),
    }
    assert_eq!(executions.count(), 1, "{policy:?}");
}

#[tokio::test]
async fn skipped_routes_pass_through_and_routes_can_have_their_own_ttl() {
    let clock = idem_core::ManualClock::new(Timestamp::from_millis(1_000_000_000));
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::with_clock(clock.clone()))
        .skip_when(|parts| parts.uri.path() == "/fail")
        .ttl_for(|parts| (parts.uri.path() == "/charges").then_some(Duration::from_secs(3600)))
        .build();
    let app = app(layer, &executions);
    for _ in 0..2 {
        let (_, headers, _) = send(&app, post_with_key("/fail", "k", "")).await;
        assert!(
            headers.get("x-idempotent-replayed").is_none(),
            "skipped routes are untouched"
        );
    }
    assert_eq!(executions.count(), 2);
    send(&app, post_with_key("/charges", "k", "{}")).await;
    send(&app, post_with_key("/big", "k2", "")).await;
    clock.advance(Duration::from_secs(3601));
    let (_, headers, _) = send(&app, post_with_key("/charges", "k", "{}")).await;
    assert_eq!(
        headers["x-idempotent-replayed"], "false",
        "the route's 1 h TTL has passed"
    );
    let (_, headers, _) = send(&app, post_with_key("/big", "k2", "")).await;
    assert_eq!(
        headers["x-idempotent-replayed"], "true",
        "other routes keep the 24 h default"
    );
}

#[tokio::test]
async fn by_default_a_cancelled_execution_runs_to_completion_and_is_stored() {
    let executions = Executions::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    // The default: a handler whose client hung up after its side effect must not run twice.
    let layer = IdempotencyLayer::new(MemoryStore::new());
    let app = gated_app(layer, Arc::clone(&gate), &executions);
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/slow", "k", "")).await }
    });
    while executions.count() == 0 {
        tokio::task::yield_now().await;
    }
    first.abort(); // the client hangs up while the handler runs
    assert!(first.await.unwrap_err().is_cancelled());
    let (status, _, _) = send(&app, post_with_key("/slow", "k", "")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the execution goes on without its client"
    );
    gate.add_permits(1);
    let mut replayed = None;
    for _ in 0..100 {
        let (status, headers, _) = send(&app, post_with_key("/slow", "k", "")).await;
        if status == StatusCode::CREATED {
            replayed = Some(headers["x-idempotent-replayed"].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(replayed.unwrap(), "true");
    assert_eq!(executions.count(), 1);
}

/// A handler whose body streams its second event after 600 ms.
fn streaming_app<St: Store>(layer: IdempotencyLayer<St>, executions: &Executions) -> Router {
    let executions = executions.clone();
    Router::new()
        .route(
            "/events",
            post(move || async move {
                executions.bump();
                let chunks = futures_util::stream::unfold(0, |n| async move {
                    match n {
                        0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"event 1\n")), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(600)).await;
                            Some((Ok(Bytes::from_static(b"event 2\n")), 2))
                        }
                        _ => None,
                    }
                });
                Body::from_stream(chunks)
            }),
        )
        .layer(layer)
}

#[tokio::test]
async fn a_response_body_streaming_for_several_leases_keeps_its_key_and_is_replayed_whole() {
    let executions = Executions::default();
    let app = streaming_app(
        IdempotencyLayer::builder(MemoryStore::new())
            .lease(Duration::from_millis(150))
            .build(),
        &executions,
    );
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/events", "stream", "")).await }
    });
    // Two leases in: the lease is renewed while the body streams, so the key is in flight.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (status, _, body) = send(&app, post_with_key("/events", "stream", "")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem_code(&body), "request_in_progress");
    let (status, _, whole) = first.await.unwrap();
    assert_eq!(
        (status, whole.as_ref()),
        (StatusCode::OK, b"event 1\nevent 2\n".as_ref())
    );
    let (status, headers, replayed) = send(&app, post_with_key("/events", "stream", "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-idempotent-replayed"], "true");
    assert_eq!(replayed, whole, "the whole body was stored");
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn a_response_body_streaming_past_the_buffer_timeout_is_completed_without_it() {
    let executions = Executions::default();
    let app = streaming_app(
        IdempotencyLayer::builder(MemoryStore::new())
            .body_buffer_timeout(Duration::from_millis(200))
            .build(),
        &executions,
    );
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/events", "stream", "")).await }
    });
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (status, _, body) = send(&app, post_with_key("/events", "stream", "")).await;
    assert_eq!(
        status,
        StatusCode::GONE,
        "completed without a body, never re-executed"
    );
    assert_eq!(problem_code(&body), "response_not_stored");
    let (status, _, whole) = first.await.unwrap();
    assert_eq!(
        (status, whole.as_ref()),
        (StatusCode::OK, b"event 1\nevent 2\n".as_ref()),
        "the first client still gets everything"
    );
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn a_handler_slower_than_several_leases_keeps_its_key() {
    let executions = Executions::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .lease(Duration::from_millis(100))
        .build();
    let app = gated_app(layer, Arc::clone(&gate), &executions);
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/slow", "k", "")).await }
    });
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, body) = send(&app, post_with_key("/slow", "k", "")).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(problem_code(&body), "request_in_progress");
    }
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().0, StatusCode::CREATED);
    assert_eq!(executions.count(), 1, "five leases long, one execution");
}

#[tokio::test]
async fn an_owner_that_lost_the_store_leaves_its_key_of_unknown_outcome() {
    let executions = Executions::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let store = FlakyStore::default();
    let layer = IdempotencyLayer::builder(store.clone())
        .lease(Duration::from_millis(100))
        .build();
    let app = gated_app(layer, Arc::clone(&gate), &executions);
    // The owner cannot renew (as if cut off from the store): its lease lapses mid-execution.
    store.renewals_fail.store(true, Ordering::SeqCst);
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/slow", "k", "")).await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, headers, body) = send(&app, post_with_key("/slow", "k", "")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem_code(&body), "outcome_unknown");
    assert!(
        headers.get("retry-after").is_none(),
        "retrying does not help"
    );
    assert_eq!(executions.count(), 1, "never executed again on its own");
    // The owner was only cut off: it finishes, and its completion is still accepted.
    store.renewals_fail.store(false, Ordering::SeqCst);
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().0, StatusCode::CREATED);
    let (status, headers, _) = send(&app, post_with_key("/slow", "k", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["x-idempotent-replayed"], "true");
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn take_over_re_executes_a_key_whose_owner_vanished() {
    let executions = Executions::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let store = FlakyStore::default();
    let layer = IdempotencyLayer::builder(store.clone())
        .lease(Duration::from_millis(100))
        .on_lapse_for(|parts| (parts.uri.path() == "/slow").then_some(OnLapse::TakeOver))
        .build();
    let app = gated_app(layer, Arc::clone(&gate), &executions);
    store.renewals_fail.store(true, Ordering::SeqCst);
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/slow", "k", "")).await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Renewals stay cut until the retry took over: a renewal that reached the store first
    // would revive the lapsed lease (its owner is alive) and the retry would be told 409.
    let second = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with_key("/slow", "k", "")).await }
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while executions.count() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the retry took the key over and executed");
    store.renewals_fail.store(false, Ordering::SeqCst);
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().0, StatusCode::CREATED);
    assert_eq!(second.await.unwrap().0, StatusCode::CREATED);
    assert_eq!(executions.count(), 2, "the route opted into re-execution");
}

#[tokio::test]
async fn a_completion_lost_to_a_store_fault_is_retried_and_never_re_executed() {
    let executions = Executions::default();
    let store = FlakyStore::default();
    store.failing_completes.store(3, Ordering::SeqCst);
    let app = app(
        IdempotencyLayer::builder(store.clone())
            .lease(Duration::from_millis(200))
            .build(),
        &executions,
    );
    let (status, headers, first) = send(&app, post_with_key("/charges", "k", "{}")).await;
    assert_eq!(status, StatusCode::CREATED, "the client gets its answer");
    assert_eq!(headers["x-idempotent-replayed"], "false");
    let mut replay = None;
    for _ in 0..200 {
        let (status, headers, body) = send(&app, post_with_key("/charges", "k", "{}")).await;
        match status {
            StatusCode::CONFLICT => assert_eq!(problem_code(&body), "request_in_progress"),
            StatusCode::CREATED => {
                assert_eq!(headers["x-idempotent-replayed"], "true");
                replay = Some(body);
                break;
            }
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(replay.unwrap(), first, "the completion landed");
    assert_eq!(executions.count(), 1);
}

/// "Not processed, try later" answers (429, 503 by default) reach the client and free the
/// key: the retry after `Retry-After` executes. Other errors stay stored.
#[tokio::test]
async fn a_rate_limit_is_passed_on_and_the_retry_executes() {
    let executions = Executions::default();
    let answers = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/limited",
            post({
                let (executions, answers) = (executions.clone(), Arc::clone(&answers));
                move || async move {
                    executions.bump();
                    match answers.fetch_add(1, Ordering::SeqCst) {
                        0 => (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1")],
                            "slow down",
                        ),
                        1 => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "1")],
                            "busy",
                        ),
                        _ => (StatusCode::CREATED, [("retry-after", "0")], "created"),
                    }
                }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()));
    let (status, headers, _) = send(&app, post_with_key("/limited", "k", "")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        headers["retry-after"], "1",
        "passed on as the upstream sent it"
    );
    let (status, _, _) = send(&app, post_with_key("/limited", "k", "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, headers, body) = send(&app, post_with_key("/limited", "k", "")).await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::CREATED, b"created".as_ref())
    );
    assert_eq!(
        headers["x-idempotent-replayed"], "false",
        "the retry executed"
    );
    let (_, headers, _) = send(&app, post_with_key("/limited", "k", "")).await;
    assert_eq!(headers["x-idempotent-replayed"], "true");
    assert_eq!(executions.count(), 3);

    // With no transient statuses, a 429 is an answer like any other: stored and replayed.
    let executions = Executions::default();
    let app = Router::new()
        .route(
            "/limited",
            post({
                let executions = executions.clone();
                move || async move {
                    executions.bump();
                    (StatusCode::TOO_MANY_REQUESTS, "slow down")
                }
            }),
        )
        .layer(
            IdempotencyLayer::builder(MemoryStore::new())
                .transient_statuses([])
                .build(),
        );
    send(&app, post_with_key("/limited", "k", "")).await;
    let (status, headers, _) = send(&app, post_with_key("/limited", "k", "")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-idempotent-replayed"], "true");
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn numbers_are_compared_exactly_and_duplicate_members_refused() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .canonical_json(true)
        .build();
    let app = app(layer, &executions);
    let (status, _, _) = send(
        &app,
        post_with_key(
            "/charges",
            "big-n",
            r#"{"amount":123456789012345678901234}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, body) = send(
        &app,
        post_with_key(
            "/charges",
            "big-n",
            r#"{"amount":123456789012345678901235}"#,
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the last digit changed"
    );
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["differs"], serde_json::json!(["body"]));
    assert_eq!(problem["retry"], "new_key");
    let (status, headers, _) = send(
        &app,
        post_with_key(
            "/charges",
            "big-n",
            r#"{ "amount" : 1.23456789012345678901234e23 }"#,
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the same number, spelled otherwise"
    );
    assert_eq!(headers["x-idempotent-replayed"], "true");

    let (status, _, body) = send(
        &app,
        post_with_key("/charges", "dup", r#"{"amount":1,"amount":1000}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["code"], "invalid_json");
    assert!(
        problem["detail"].as_str().unwrap().contains("\"amount\""),
        "{problem}"
    );
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn a_mismatch_says_what_differs_with_the_configured_status() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .fingerprint_headers([http::HeaderName::from_static("x-tenant")])
        .mismatch_status(StatusCode::CONFLICT)
        .build();
    let app = app(layer, &executions);
    let with_tenant = |tenant: &str, body: &'static str| {
        Request::post("/charges")
            .header("idempotency-key", "t-1")
            .header("x-tenant", tenant)
            .body(Body::from(body))
            .unwrap()
    };
    send(&app, with_tenant("acme", "{}")).await;
    let (status, headers, body) = send(&app, with_tenant("globex", "{}")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["code"], "idempotency_key_mismatch");
    assert_eq!(problem["status"], 409);
    assert_eq!(problem["differs"], serde_json::json!(["header"]));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("its header differs"),
        "{problem}"
    );
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("/idem_http/errors/index.html#idempotency_key_mismatch")
    );
    assert!(
        problem["instance"]
            .as_str()
            .unwrap()
            .starts_with("urn:uuid:")
    );
    assert_eq!(
        headers["link"],
        format!(
            "<{}>; rel=\"describedby\"",
            problem["type"].as_str().unwrap()
        )
    );
    let (status, _, body) = send(&app, with_tenant("globex", "{\"x\":1}")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["differs"], serde_json::json!(["header", "body"]));
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn json_pointers_leave_out_what_changes_on_every_retry() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .json_filter(idem_core::JsonFilter {
            include: Vec::new(),
            exclude: vec!["/sent_at".into()],
        })
        .build();
    let app = app(layer, &executions);
    send(
        &app,
        post_with_key("/charges", "f-1", r#"{"amount":5,"sent_at":"10:00:00"}"#),
    )
    .await;
    let (status, headers, _) = send(
        &app,
        post_with_key("/charges", "f-1", r#"{"sent_at":"10:00:03","amount":5}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["x-idempotent-replayed"], "true");
    let (status, _, _) = send(
        &app,
        post_with_key("/charges", "f-1", r#"{"amount":6,"sent_at":"10:00:03"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(executions.count(), 1);
}

#[tokio::test]
async fn a_keyed_request_without_a_principal_is_refused_when_one_is_required() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .scope(ScopeSource::Cookie("session".into()))
        .require_principal(true)
        .build();
    let app = app(layer, &executions);
    let (status, _, body) = send(&app, post_with_key("/charges", "p-1", "{}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_code(&body), "principal_missing");
    let with_session = Request::post("/charges")
        .header("idempotency-key", "p-1")
        .header("cookie", "session=s1")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, _) = send(&app, with_session).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(executions.count(), 1);
}

/// A record stored while `Set-Cookie` was replayed (an earlier version, or before the list was
/// narrowed) replays without it under today's settings: the filter applies on the way out too.
#[tokio::test]
async fn a_record_stored_with_a_cookie_replays_without_it_under_todays_settings() {
    let store = MemoryStore::new();
    let executions = Executions::default();
    let permissive = IdempotencyLayer::builder(store.clone())
        .replayed_headers(idem_http::ReplayedHeaders::AllExcept(Vec::new()))
        .build();
    let (status, headers, _) = send(
        &app(permissive, &executions),
        post_with_key("/charges", "cookie-then", "{}"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
    let today = app(IdempotencyLayer::new(store), &executions);
    let (status, headers, _) = send(&today, post_with_key("/charges", "cookie-then", "{}")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["x-idempotent-replayed"], "true");
    assert!(headers.get("set-cookie").is_none(), "{headers:?}");
    assert_eq!(
        headers.get_all("link").iter().count(),
        2,
        "others still replay"
    );
    assert_eq!(executions.count(), 1);
}

/// An extension method that is a covered method in another case (`post`) is covered: many
/// servers run it as `POST`, so it must not pass without its key.
#[tokio::test]
async fn a_covered_method_in_lower_case_is_covered() {
    let executions = Executions::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .require_key(true)
        .build();
    let app = app(layer, &executions);
    let request = Request::builder()
        .method("post")
        .uri("/charges")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_code(&body), "idempotency_key_missing");
    assert_eq!(executions.count(), 0);
}

/// Canonical JSON reads only bodies sent as JSON: `1.0` and `1` sent as `text/plain` are two
/// requests to a handler that reads text.
#[tokio::test]
async fn only_a_body_sent_as_json_is_read_as_json() {
    let executions = Executions::default();
    let app = app(
        IdempotencyLayer::builder(MemoryStore::new())
            .canonical_json(true)
            .build(),
        &executions,
    );
    let with_type = |content_type: &str, body: &'static str| {
        let key = if content_type.starts_with("text/") {
            "typed-text"
        } else {
            "typed-json"
        };
        Request::post("/charges")
            .header("idempotency-key", key)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap()
    };
    assert_eq!(
        send(&app, with_type("text/plain", "1.0")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        send(&app, with_type("text/plain", "1")).await.0,
        StatusCode::UNPROCESSABLE_ENTITY,
        "text is compared byte for byte"
    );
    assert_eq!(
        send(
            &app,
            with_type("application/problem+json; charset=utf-8", "1.0")
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let (status, headers, _) = send(
        &app,
        with_type("application/problem+json; charset=utf-8", " 1 "),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["x-idempotent-replayed"], "true", "+json is JSON");
    assert_eq!(executions.count(), 2);
}
