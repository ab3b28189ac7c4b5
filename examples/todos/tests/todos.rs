//! The test cases of seed 002, against the example.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use example_todos::{Todo, Todos, app};
use http_body_util::BodyExt;
use idem_core::MemoryStore;
use tower::ServiceExt;

async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = app.clone().oneshot(request).await.unwrap();
    (
        response.status(),
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

fn create(key: Option<&str>, title: &str) -> Request<Body> {
    let mut request = Request::post("/todos").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request
        .body(Body::from(format!("{{\"title\":\"{title}\"}}")))
        .unwrap()
}

#[tokio::test]
async fn delete_is_idempotent() {
    let todos = Arc::new(Todos::default());
    let app = app(MemoryStore::new(), Arc::clone(&todos));
    let (_, body) = call(&app, create(None, "Test")).await;
    let id = serde_json::from_slice::<Todo>(&body).unwrap().id;
    for _ in 0..3 {
        let (status, _) = call(
            &app,
            Request::delete(format!("/todos/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, _) = call(
        &app,
        Request::get(format!("/todos/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn post_with_a_key_creates_one_todo_however_often_it_is_retried() {
    let todos = Arc::new(Todos::default());
    let app = app(MemoryStore::new(), Arc::clone(&todos));
    let (first_status, first) = call(&app, create(Some("abc-123"), "Buy milk")).await;
    let (retry_status, retry) = call(&app, create(Some("abc-123"), "Buy milk")).await;
    assert_eq!(
        (first_status, retry_status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(first, retry, "the same todo");
    assert_eq!(todos.count(), 1, "only one, not two");

    let (_, other) = call(&app, create(Some("xyz-789"), "Buy milk")).await;
    let other: Todo = serde_json::from_slice(&other).unwrap();
    assert_ne!(
        other.id,
        serde_json::from_slice::<Todo>(&first).unwrap().id,
        "a different key is a new todo"
    );
    assert_eq!(todos.count(), 2);
}
