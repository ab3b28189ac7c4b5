//! A tower [`Layer`](tower::Layer) that makes any axum or hyper service honour the
//! `Idempotency-Key` header (IETF `draft-ietf-httpapi-idempotency-key-header`): a retried
//! POST executes at most once and gets the first response replayed.
//!
//! ```
//! use axum::{Router, routing::post};
//! use idem_embedded::EmbeddedStore;
//! use idem_http::IdempotencyLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let app: Router = Router::new()
//!     .route("/charges", post(|body: String| async move { format!("charged {body}") }))
//!     .layer(IdempotencyLayer::new(EmbeddedStore::open(dir.path())?));
//! # Ok(())
//! # }
//! ```
//!
//! For each request with a covered method (POST, PUT, PATCH, DELETE by default):
//!
//! | situation | answer |
//! |---|---|
//! | no key (and none required) | passed through untouched |
//! | new key | executed once; response stored; `X-Idempotent-Replayed: false` |
//! | same key, same request, completed | stored response replayed; `X-Idempotent-Replayed: true` |
//! | same key, same request, still running | 409 with `Retry-After` (or a bounded wait) |
//! | same key, same request, its process died mid-way | 409 `outcome_unknown`, nothing executed |
//! | same key, different request | 422 |
//! | missing (where required) or malformed key | 400 |
//! | body over the limit | 413, nothing executed |
//! | store unreachable | 503, nothing executed (or executed without idempotency, fail open) |
//!
//! Errors are `application/problem+json` with a stable `code` ([`ProblemCode`]).

mod completion;
mod finish;
mod layer;
mod problem;
mod response;
mod scope;
mod service;

pub use layer::{
    CancelPolicy, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_RETRY_AFTER, DEFAULT_MAX_STORED_RESPONSE,
    IDEMPOTENCY_KEY, IdempotencyLayer, IdempotencyLayerBuilder, StoreFailureMode,
    X_IDEMPOTENT_REPLAYED,
};
pub use problem::{PROBLEM_JSON, ProblemCode};
pub use response::ResponseBody;
pub use scope::ScopeSource;
pub use service::{IdempotencyService, InnerBody};

/// The Rust examples of the guides in `docs/guides/` (`crates/idem/tests/docs.rs` runs their
/// shell examples), compiled and run as doctests so that
/// the documentation cannot drift from the API.
#[cfg(doctest)]
mod guides {
    #[doc = include_str!("../../../docs/guides/axum.md")]
    mod axum_guide {}
    #[doc = include_str!("../../../README.md")]
    mod readme {}
}
