//! [`ApiError`]: every error the coordination API answers with. Its code is a
//! [`ProblemCode`], the one error vocabulary of idem, rendered here in the contract's shape:
//! `{"error":{"code","message"}}` with the SCREAMING_CASE
//! [`coordination_code`](ProblemCode::coordination_code) and the code's HTTP status. The errors
//! that several handlers answer with are built here, once.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use idem_core::{StoreError, StoredResponse};
use idem_http::ProblemCode;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every document the API answers with, errors included.
pub const JSON: &str = "application/json";

/// Every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `IDEMPOTENCY_KEY_MISMATCH`.
    pub code: String,
    /// For people: what happened and what to do.
    pub message: String,
}

/// An error answer: a code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    code: ProblemCode,
    message: String,
}

impl ApiError {
    /// An error with `code`, and a `message` saying what happened and what to do.
    pub fn new(code: ProblemCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The store did not answer: nothing was executed.
    pub fn store_unavailable(error: &StoreError) -> Self {
        tracing::error!(%error, "idempotency store unavailable");
        Self::new(
            ProblemCode::StoreUnavailable,
            "the idempotency store is unavailable; nothing was executed, retry later with the same key",
        )
    }

    /// An earlier execution with the key began and its owner vanished before finishing.
    pub fn outcome_unknown() -> Self {
        Self::new(
            ProblemCode::OutcomeUnknown,
            "an earlier execution with this key began and did not finish (its owner stopped): it may or may not have taken effect, so it is not executed again. Check the outcome, then use a new key",
        )
    }

    /// The key was used with another operation or payload.
    pub fn mismatch() -> Self {
        Self::new(
            ProblemCode::KeyMismatch,
            "this idempotency key was already used with a different operation or payload; use a new key for a new operation",
        )
    }

    /// The lease no longer owns the key.
    pub fn lease_lost() -> Self {
        Self::new(
            ProblemCode::LeaseLost,
            "this lease no longer owns the key (it lapsed and was taken over, or was already completed or released)",
        )
    }

    /// Anything unexpected; the details go to the log only.
    pub fn internal() -> Self {
        Self::new(ProblemCode::Internal, "internal error")
    }

    /// The JSON document of this error.
    pub fn body(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.coordination_code().into(),
                message: self.message.clone(),
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// This error as an answer kept for a key and replayed to every retry.
    pub fn stored(&self) -> StoredResponse {
        StoredResponse {
            status: self.code.status().as_u16(),
            headers: Vec::new(),
            body: Some(Bytes::from(self.body())),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code.status(), self.body()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
        response
    }
}
