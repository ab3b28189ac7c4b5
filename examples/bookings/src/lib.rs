//! Seed 004's bookings API. There, a FastAPI route became idempotent with
//! `@idempotent(ttl_seconds=3600)`; here the same is one `.layer(...)` on that route alone:
//!
//! ```ignore
//! .route("/bookings", post(create_booking).layer(IdempotencyLayer::builder(store).ttl(ONE_HOUR).build()))
//! ```
//!
//! Other routes are untouched, and replays of a booking stop after an hour.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use idem_core::Store;
use idem_http::IdempotencyLayer;
use serde::{Deserialize, Serialize};

/// How long a booking's response is replayed: the seed's `ttl_seconds=3600`.
pub const ONE_HOUR: Duration = Duration::from_secs(3600);

/// What a client books.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct BookingRequest {
    /// The service booked.
    pub service_id: String,
    /// Who for.
    pub customer_name: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    /// `HH:MM`.
    pub time: String,
}

/// A confirmed booking.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Booking {
    /// A new id per booking made.
    pub booking_id: String,
    /// What was booked.
    #[serde(flatten)]
    pub request: BookingRequest,
}

/// Counts bookings really made.
#[derive(Debug, Default)]
pub struct Calendar {
    made: AtomicU64,
}

impl Calendar {
    /// Bookings made so far.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::SeqCst)
    }
}

async fn create_booking(
    State(calendar): State<Arc<Calendar>>,
    Json(request): Json<BookingRequest>,
) -> (StatusCode, Json<Booking>) {
    let n = calendar.made.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        Json(Booking {
            booking_id: format!("bk_{n}"),
            request,
        }),
    )
}

/// The router. Replays expire by `store`'s clock (tests give the store a `ManualClock`).
pub fn app<St: Store>(store: St, calendar: Arc<Calendar>) -> Router {
    let idempotent = IdempotencyLayer::builder(store).ttl(ONE_HOUR).build();
    Router::new()
        .route("/bookings", post(create_booking).layer(idempotent))
        .route("/health", get(|| async { "ok" }))
        .with_state(calendar)
}
