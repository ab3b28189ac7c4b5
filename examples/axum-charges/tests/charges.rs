//! The example does what its doc says: a retried charge is replayed, not charged twice.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use example_axum_charges::{Charge, Ledger, app};
use http_body_util::BodyExt;
use idem_embedded::EmbeddedStore;
use tower::ServiceExt;

fn charge(key: &str) -> Request<Body> {
    Request::post("/charges")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(r#"{"amount":1000,"currency":"eur"}"#))
        .unwrap()
}

#[tokio::test]
async fn retried_charge_is_replayed_not_charged_twice() {
    let directory = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::default());
    let app = app(
        EmbeddedStore::open(directory.path()).unwrap(),
        Arc::clone(&ledger),
    );

    let mut charges = Vec::new();
    for _ in 0..3 {
        let response = app
            .clone()
            .oneshot(charge("8d0c6f0e-31b5-4b59-9a55-4b7d1e0f6a11"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        charges.push(serde_json::from_slice::<Charge>(&body).unwrap());
    }
    assert!(charges.iter().all(|c| c.id == "ch_1"));
    assert_eq!(ledger.charges_made(), 1);

    app.clone()
        .oneshot(charge("another-attempt"))
        .await
        .unwrap();
    assert_eq!(ledger.charges_made(), 2);
}
