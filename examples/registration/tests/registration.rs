//! Seed 000's task 4.4: tests of idempotent registration.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use example_registration::{RegisterError, RegisterRequest, Registrar, app};
use idem_core::{Engine, MemoryStore};
use tower::ServiceExt;

const KEY: &str = "3c5b8a4e-9f1d-4c2b-8e7a-6d5f4c3b2a19";

fn request(email: &str, key: Option<&str>) -> RegisterRequest {
    RegisterRequest {
        email: email.into(),
        idempotency_key: key.map(Into::into),
    }
}

#[tokio::test]
async fn retried_registration_returns_the_same_account() {
    let registrar = Registrar::new(Engine::new(MemoryStore::new()));
    let first = registrar
        .register(&request("a@example.com", Some(KEY)))
        .await
        .unwrap();
    let retry = registrar
        .register(&request("a@example.com", Some(KEY)))
        .await
        .unwrap();
    assert_eq!(first, retry);
    assert_eq!(registrar.accounts(), 1);
}

#[tokio::test]
async fn same_key_with_another_email_is_refused() {
    let registrar = Registrar::new(Engine::new(MemoryStore::new()));
    registrar
        .register(&request("a@example.com", Some(KEY)))
        .await
        .unwrap();
    let reused = registrar
        .register(&request("b@example.com", Some(KEY)))
        .await;
    assert!(matches!(reused, Err(RegisterError::KeyReused)));
    assert_eq!(registrar.accounts(), 1);
}

#[tokio::test]
async fn keys_must_be_uuid_v4_and_are_optional() {
    let registrar = Registrar::new(Engine::new(MemoryStore::new()));
    for bad in ["abc-123", "7e0b5145-1d2c-1f0e-9f2a-8c3d9a1b2c3d", ""] {
        let refused = registrar
            .register(&request("a@example.com", Some(bad)))
            .await;
        assert!(
            matches!(refused, Err(RegisterError::InvalidKey(_))),
            "{bad:?}"
        );
    }
    assert_eq!(
        registrar.accounts(),
        0,
        "nothing created for an invalid key"
    );
    registrar
        .register(&request("a@example.com", None))
        .await
        .unwrap();
    assert!(matches!(
        registrar.register(&request("a@example.com", None)).await,
        Err(RegisterError::EmailTaken)
    ));
}

#[tokio::test]
async fn over_http_the_statuses_are_201_422_and_400() {
    let registrar = Arc::new(Registrar::new(Engine::new(MemoryStore::new())));
    let app = app(Arc::clone(&registrar));
    let post = |email: &str, key: &str| {
        Request::post("/register")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(format!("{{\"email\":\"{email}\"}}")))
            .unwrap()
    };
    assert_eq!(
        app.clone()
            .oneshot(post("a@example.com", KEY))
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.clone()
            .oneshot(post("a@example.com", KEY))
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.clone()
            .oneshot(post("b@example.com", KEY))
            .await
            .unwrap()
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.clone()
            .oneshot(post("c@example.com", "nope"))
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(registrar.accounts(), 1);
}
