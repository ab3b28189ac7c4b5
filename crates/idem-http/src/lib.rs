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

//! # Modules
//!
//! - `layer`: [`IdempotencyLayer`] and its builder; `config`: every option and its default
//!   ([`CancelPolicy`], [`StoreFailureMode`], the `DEFAULT_*` limits).
//! - `service`: [`IdempotencyService`], one request's four steps; `completion`: storing what
//!   the inner service answered; `replay`: answering from the store; `finish`: running an
//!   execution to its end without its client.
//! - [`headers`]: the key header, hop-by-hop headers, `Retry-After` (the gateway reuses them);
//!   `body`: [`ResponseBody`] and buffering; [`ScopeSource`]: whose key it is; [`path`]: the
//!   one normal form of a request path that fingerprints (and the gateway's rules) use.
//! - `refusal` and `problem`: every answer that is not the handler's, as problem+json with a
//!   stable [`ProblemCode`]; `metrics`: `idem_requests_total`; `report`: what the layer did
//!   with a request ([`RequestOutcome`], in the response's extensions, for an access log).
//! - [`errors`]: the error reference every problem `type` points at (the text of
//!   `docs/guides/errors.md`).

mod body;
mod completion;
mod config;
mod finish;
pub mod headers;
mod layer;
mod metrics;
pub mod path;
mod problem;
mod refusal;
mod replay;
mod report;
mod scope;
mod service;

#[doc = include_str!("../errors.md")]
pub mod errors {}

pub use body::ResponseBody;
pub use config::{
    CancelPolicy, DEFAULT_BODY_BUFFER_TIMEOUT, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_MAX_RETRY_AFTER, DEFAULT_MAX_STORED_RESPONSE, DEFAULT_TRANSIENT_STATUSES,
    MISMATCH_STATUSES, StoreFailureMode,
};
pub use headers::{IDEMPOTENCY_KEY, ReplayedHeaders, X_IDEMPOTENT_REPLAYED};
pub use layer::{IdempotencyLayer, IdempotencyLayerBuilder};
pub use problem::{DEFAULT_PROBLEM_BASE, PROBLEM_JSON, ProblemCode, RetryAdvice, set_problem_base};
pub use report::RequestOutcome;
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
