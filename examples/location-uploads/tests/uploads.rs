//! Story 3.3's acceptance criteria, against real PostgreSQL (`IDEM_TEST_POSTGRES_URL`, the
//! local test database by default; the test fails without it).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use example_location_uploads::{Processed, app, migrate};
use http_body_util::BodyExt;
use idem_core::ManualClock;
use idem_postgres::PostgresStore;
use tower::ServiceExt;

fn url() -> String {
    std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A device id no other run used, so rows can be counted per test.
fn device() -> String {
    format!(
        "device-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn rows(pool: &sqlx::PgPool, device: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM example_locations WHERE device_id = $1")
        .bind(device)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn upload(
    app: &axum::Router,
    path: &str,
    key: Option<&str>,
    body: String,
) -> (StatusCode, Processed, String) {
    let mut request = Request::post(path).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let replayed = response
        .headers()
        .get("x-idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap(), replayed)
}

async fn setup() -> (sqlx::PgPool, axum::Router, ManualClock) {
    let pool = sqlx::PgPool::connect(&url())
        .await
        .expect("PostgreSQL must be reachable (scripts/test starts it)");
    migrate(&pool).await.unwrap();
    // The records' clock is moved by hand, so a day can pass in a test.
    let clock = ManualClock::new(idem_core::Clock::now(&idem_core::SystemClock));
    let store = PostgresStore::builder(&url())
        .clock(clock.clone())
        .connect()
        .await
        .unwrap();
    let app = app(pool.clone(), store);
    (pool, app, clock)
}

#[tokio::test]
async fn duplicate_single_and_batch_uploads_return_the_cached_count_and_insert_nothing() {
    let (pool, app, _) = setup().await;
    let device = device();
    let single = format!(r#"{{"device_id":"{device}","latitude":48.85,"longitude":2.35}}"#);
    let key = format!("{device}-single");
    let (status, first, replayed) = upload(&app, "/v1/locations", Some(&key), single.clone()).await;
    assert_eq!(
        (status, first.processed_count, replayed.as_str()),
        (StatusCode::OK, 1, "false")
    );
    let (status, again, replayed) = upload(&app, "/v1/locations", Some(&key), single.clone()).await;
    assert_eq!(
        (status, again, replayed.as_str()),
        (StatusCode::OK, first, "true")
    );
    assert_eq!(rows(&pool, &device).await, 1);

    let batch = format!(
        r#"{{"locations":[{{"device_id":"{device}","latitude":1,"longitude":2}},{{"device_id":"{device}","latitude":3,"longitude":4}},{{"device_id":"{device}","latitude":5,"longitude":6}}]}}"#
    );
    let key = format!("{device}-batch");
    let (_, first, _) = upload(&app, "/v1/locations/batch", Some(&key), batch.clone()).await;
    let (_, again, replayed) = upload(&app, "/v1/locations/batch", Some(&key), batch).await;
    assert_eq!(
        (
            first.processed_count,
            again.processed_count,
            replayed.as_str()
        ),
        (3, 3, "true")
    );
    assert_eq!(
        rows(&pool, &device).await,
        4,
        "1 single + 3 batch, no duplicates"
    );

    let (_, _, replayed) = upload(&app, "/v1/locations", None, single).await;
    assert_eq!(replayed, "", "without a key, uploads are not deduplicated");
    assert_eq!(rows(&pool, &device).await, 5);
}

#[tokio::test]
async fn keys_expire_after_24_hours() {
    let (pool, app, clock) = setup().await;
    let device = device();
    let single = format!(r#"{{"device_id":"{device}","latitude":0,"longitude":0}}"#);
    let key = format!("{device}-expiring");
    upload(&app, "/v1/locations", Some(&key), single.clone()).await;
    clock.advance(Duration::from_secs(23 * 3600));
    let (_, _, replayed) = upload(&app, "/v1/locations", Some(&key), single.clone()).await;
    assert_eq!(replayed, "true");
    clock.advance(Duration::from_secs(3600));
    let (_, _, replayed) = upload(&app, "/v1/locations", Some(&key), single).await;
    assert_eq!(replayed, "false", "after 24 h the key is free again");
    assert_eq!(rows(&pool, &device).await, 2);
}
