//! A tiny payments API made idempotent with one line: `.layer(IdempotencyLayer::new(store))`.
//!
//! `POST /charges` creates a charge with a new id each time it executes; behind the layer, a
//! retried POST with the same `Idempotency-Key` gets the first charge back instead of a
//! second one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use idem_core::Store;
use idem_http::IdempotencyLayer;
use serde::{Deserialize, Serialize};

/// What a client asks for.
#[derive(Debug, Deserialize)]
pub struct NewCharge {
    /// In the currency's smallest unit.
    pub amount: u64,
    /// ISO 4217 code.
    pub currency: String,
}

/// What the API answers.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Charge {
    /// A new id per execution: a duplicate charge would show as a new id.
    pub id: String,
    /// As requested.
    pub amount: u64,
    /// As requested.
    pub currency: String,
}

/// The application's state: a counter standing in for a payment processor.
#[derive(Debug, Default)]
pub struct Ledger {
    charges: AtomicU64,
}

impl Ledger {
    /// How many charges were really made.
    #[must_use]
    pub fn charges_made(&self) -> u64 {
        self.charges.load(Ordering::SeqCst)
    }
}

async fn create_charge(
    State(ledger): State<Arc<Ledger>>,
    Json(new): Json<NewCharge>,
) -> (StatusCode, Json<Charge>) {
    let n = ledger.charges.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        Json(Charge {
            id: format!("ch_{n}"),
            amount: new.amount,
            currency: new.currency,
        }),
    )
}

/// The router, made idempotent by the layer over `store`.
pub fn app<St: Store>(store: St, ledger: Arc<Ledger>) -> Router {
    Router::new()
        .route("/charges", post(create_charge))
        .with_state(ledger)
        .layer(IdempotencyLayer::new(store))
}
