//! The booking route replays for an hour, then books again; the seed's client request works
//! as written.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use example_bookings::{Booking, Calendar, app};
use http_body_util::BodyExt;
use idem_core::{ManualClock, MemoryStore, Timestamp};
use tower::ServiceExt;

fn book() -> Request<Body> {
    Request::post("/bookings")
        .header("idempotency-key", "7e0b5145-1d2c-4f0e-9f2a-8c3d9a1b2c3d")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"service_id":"service_123","customer_name":"John Doe","date":"2025-08-07","time":"10:00"}"#,
        ))
        .unwrap()
}

async fn booking(app: &axum::Router) -> (StatusCode, String, Booking) {
    let response = app.clone().oneshot(book()).await.unwrap();
    let status = response.status();
    let replayed = response.headers()["x-idempotent-replayed"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, replayed, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_booking_is_replayed_for_an_hour_then_forgotten() {
    let clock = ManualClock::new(Timestamp::from_millis(1_750_000_000_000));
    let calendar = Arc::new(Calendar::default());
    let app = app(
        MemoryStore::with_clock(clock.clone()),
        Arc::clone(&calendar),
    );

    let (status, replayed, first) = booking(&app).await;
    assert_eq!(
        (status, replayed.as_str(), first.booking_id.as_str()),
        (StatusCode::CREATED, "false", "bk_1")
    );
    clock.advance(Duration::from_secs(59 * 60));
    let (_, replayed, again) = booking(&app).await;
    assert_eq!((replayed.as_str(), again), ("true", first));
    assert_eq!(calendar.made(), 1);

    clock.advance(Duration::from_secs(60));
    let (_, replayed, later) = booking(&app).await;
    assert_eq!(
        (replayed.as_str(), later.booking_id.as_str()),
        ("false", "bk_2"),
        "after the hour the key is free again"
    );
}

#[tokio::test]
async fn other_routes_are_not_touched() {
    let app = app(
        MemoryStore::with_clock(ManualClock::new(Timestamp::from_millis(0))),
        Arc::new(Calendar::default()),
    );
    let response = app
        .oneshot(
            Request::get("/health")
                .header("idempotency-key", "k")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(response.headers().get("x-idempotent-replayed").is_none());
}
