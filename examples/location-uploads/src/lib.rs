//! Seed 001: a mobile app uploads locations, one at a time or in batches, and network retries
//! must not create duplicate records. Locations live in PostgreSQL; so do the idempotency
//! records (`idem-postgres`), so every replica of the API shares them.
//!
//! - `POST /v1/locations` and `POST /v1/locations/batch` answer `200 {"processedCount": n}`.
//! - With an optional `Idempotency-Key`, a retry within 24 hours returns the cached 200 with
//!   the same `processedCount` and inserts nothing; after 24 hours the key expires.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use idem_core::Store;
use idem_http::IdempotencyLayer;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// Keys expire after a day, as the story asks.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// One location fix.
#[derive(Debug, Clone, Deserialize)]
pub struct Location {
    /// The uploading device.
    pub device_id: String,
    /// Degrees.
    pub latitude: f64,
    /// Degrees.
    pub longitude: f64,
}

/// A batch upload.
#[derive(Debug, Deserialize)]
pub struct Batch {
    /// The fixes, in order.
    pub locations: Vec<Location>,
}

/// The answer to both uploads.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Processed {
    /// How many locations were stored.
    pub processed_count: usize,
}

/// Creates the example's table.
///
/// # Errors
/// PostgreSQL refused.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    // Two replicas starting together would race on `CREATE TABLE IF NOT EXISTS` (PostgreSQL
    // can report a duplicate type): serialise them with a transaction-scoped advisory lock.
    let mut transaction = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('example_locations'))")
        .execute(&mut *transaction)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_locations (
            id bigserial PRIMARY KEY,
            device_id text NOT NULL,
            latitude double precision NOT NULL,
            longitude double precision NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await
}

async fn insert(pool: &PgPool, locations: &[Location]) -> Result<Json<Processed>, StatusCode> {
    let mut transaction = pool
        .begin()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    for location in locations {
        sqlx::query(
            "INSERT INTO example_locations (device_id, latitude, longitude) VALUES ($1, $2, $3)",
        )
        .bind(&location.device_id)
        .bind(location.latitude)
        .bind(location.longitude)
        .execute(&mut *transaction)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    }
    transaction
        .commit()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(Json(Processed {
        processed_count: locations.len(),
    }))
}

async fn upload(
    State(pool): State<PgPool>,
    Json(location): Json<Location>,
) -> Result<Json<Processed>, StatusCode> {
    insert(&pool, &[location]).await
}

async fn upload_batch(
    State(pool): State<PgPool>,
    Json(batch): Json<Batch>,
) -> Result<Json<Processed>, StatusCode> {
    insert(&pool, &batch.locations).await
}

/// The API, with idempotency records in `store` (whose clock decides when they expire).
pub fn app<St: Store>(pool: PgPool, store: St) -> Router {
    Router::new()
        .route("/v1/locations", post(upload))
        .route("/v1/locations/batch", post(upload_batch))
        .with_state(pool)
        .layer(
            IdempotencyLayer::builder(store)
                .ttl(KEY_TTL)
                // A 503 here means the upload's transaction did not commit, so nothing was
                // stored: release the key and let the retry upload for real. (A failed COMMIT
                // is ambiguous; for location fixes a rare duplicate point beats a lost one.)
                .store_server_errors(false)
                .build(),
        )
}
