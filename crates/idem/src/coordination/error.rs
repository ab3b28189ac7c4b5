//! [`ApiError`]: every error the coordination API answers with. Its code is a
//! [`ProblemCode`], the one error vocabulary of idem, rendered here in the contract's shape:
//! `{"error":{"code","message"}}` with the SCREAMING_CASE
//! [`coordination_code`](ProblemCode::coordination_code) and the code's HTTP status. The errors
//! that several handlers answer with are built here, once.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use idem_core::{FingerprintPart, StoreError, StoredResponse};
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
    /// What the client should do next: `same_key` (send the same request with the same key
    /// again, after `Retry-After` when there is one), `new_key` (never use this key again:
    /// check what happened, then send a new request with a new key) or `never` (fix the
    /// request first).
    #[schema(value_type = RetryAdvice)]
    pub retry: String,
    /// Where the code is documented (the error reference, one anchor per code).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// `OPERATION_REJECTED` only: the operation's own answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationAnswer>,
    /// `IDEMPOTENCY_KEY_MISMATCH` only: what differs from the key's first request:
    /// `operation`, `payload`, or both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differs: Option<Vec<String>>,
    /// Names this occurrence of the error (`urn:uuid:…`), as RFC 9457's `instance` does: the
    /// service logs it with every error it answers, so one answer can be found in the log. A
    /// replayed answer keeps the instance of its first occurrence.
    #[schema(pattern = "^urn:uuid:[0-9a-f-]{36}$")]
    pub instance: String,
}

/// What a client does next with an error: `same_key`, `new_key` or `never`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code, reason = "described in the OpenAPI document only")]
pub enum RetryAdvice {
    /// Send the same request with the same key again, after `Retry-After` when there is one.
    SameKey,
    /// Never use this key again: check what happened, then send a new request with a new key.
    NewKey,
    /// Fix the request first.
    Never,
}

/// An operation's refusal, as it answered it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OperationAnswer {
    /// The operation's 4xx status, also the status of this answer.
    #[schema(minimum = 400, maximum = 499)]
    pub status: u16,
    /// The operation's body: its JSON as it wrote it, or its text as a string.
    #[schema(value_type = serde_json::Value)]
    pub body: Box<serde_json::value::RawValue>,
}

/// An error answer: a code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    code: ProblemCode,
    message: String,
    status: axum::http::StatusCode,
    operation: Option<OperationAnswer>,
    differs: Option<Vec<String>>,
    instance: uuid::Uuid,
    /// Boxed: rare, and `ApiError` travels in every handler's `Result`.
    retry_after: Option<Box<HeaderValue>>,
}

impl ApiError {
    /// An error with `code`, and a `message` saying what happened and what to do.
    pub fn new(code: ProblemCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: code.status(),
            operation: None,
            differs: None,
            instance: uuid::Uuid::new_v4(),
            retry_after: None,
        }
    }

    /// Answered with `Retry-After: value`: when a retry with the same key may succeed.
    #[must_use]
    pub fn with_retry_after(mut self, value: Option<HeaderValue>) -> Self {
        self.retry_after = value.map(Box::new);
        self
    }

    /// The store did not answer (or is full): nothing was executed.
    pub fn store_unavailable(error: &StoreError) -> Self {
        if matches!(error, StoreError::Full(_)) {
            tracing::warn!(%error, "idempotency store full");
            return Self::new(
                ProblemCode::StoreFull,
                "the idempotency store holds as many records as it may; nothing was executed, retry later with the same key",
            );
        }
        tracing::error!(%error, "idempotency store unavailable");
        Self::new(
            ProblemCode::StoreUnavailable,
            "the idempotency store is unavailable; nothing was executed, retry later with the same key",
        )
    }

    /// The operation refused the request with a 4xx of its own: answered with its status,
    /// its body in `operation`.
    pub fn rejected(
        status: axum::http::StatusCode,
        body: Box<serde_json::value::RawValue>,
    ) -> Self {
        Self {
            status,
            operation: Some(OperationAnswer {
                status: status.as_u16(),
                body,
            }),
            ..Self::new(
                ProblemCode::OperationRejected,
                format!(
                    "the operation refused the request (HTTP {status}); its answer is in `operation` and is kept for this key: fix the request, then use a new key"
                ),
            )
        }
    }

    /// Answered with `status` instead of the code's own (the configured mismatch status).
    #[must_use]
    pub fn with_status(mut self, status: axum::http::StatusCode) -> Self {
        self.status = status;
        self
    }

    /// An earlier execution with the key began and its owner vanished before finishing.
    pub fn outcome_unknown() -> Self {
        Self::new(
            ProblemCode::OutcomeUnknown,
            "an earlier execution with this key began and did not finish (its owner stopped): it may or may not have taken effect, so it is not executed again. Check the outcome, then use a new key",
        )
    }

    /// The key was used with another operation or payload; `differing` says which.
    pub fn mismatch(differing: &[FingerprintPart]) -> Self {
        let what = match (
            differing.contains(&FingerprintPart::Method),
            differing.contains(&FingerprintPart::Body),
        ) {
            (true, true) => "operation and payload",
            (true, false) => "operation",
            (false, true) => "payload",
            (false, false) => "operation or payload",
        };
        // The coordination surface's names: the operation stands in the method's lane and
        // the payload in the body's.
        let names = differing
            .iter()
            .map(|part| match part {
                FingerprintPart::Method => "operation",
                FingerprintPart::Body => "payload",
                other => other.name(),
            })
            .map(str::to_owned)
            .collect();
        Self {
            differs: Some(names),
            ..Self::new(
                ProblemCode::KeyMismatch,
                format!(
                    "this idempotency key was already used with a different {what}; use a new key for a new operation"
                ),
            )
        }
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
                retry: self.code.retry().as_str().into(),
                type_uri: self.code.type_uri(),
                operation: self.operation.clone(),
                differs: self.differs.clone(),
                instance: self.instance.urn().to_string(),
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// This error as an answer kept for a key and replayed to every retry (logged once, here,
    /// with its instance).
    pub fn stored(&self) -> StoredResponse {
        self.log("kept for the key");
        StoredResponse {
            status: self.status.as_u16(),
            headers: Vec::new(),
            body: Some(Bytes::from(self.body())),
        }
    }
}

impl ApiError {
    /// One log line per error answered, naming its instance and code; at `info` for the
    /// client's errors (they are ordinary answers), at `warn` for the service's.
    fn log(&self, what: &str) {
        let code = self.code.coordination_code();
        if self.status.is_server_error() {
            tracing::warn!(code, status = self.status.as_u16(), instance = %self.instance.urn(), "error {what}");
        } else {
            tracing::info!(code, status = self.status.as_u16(), instance = %self.instance.urn(), "error {what}");
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log("answered");
        let mut response = (self.status, self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
        if let Some(retry_after) = &self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::clone(retry_after));
        }
        // As the problem documents do: the draft's `describedby` link to the error's entry.
        if let Ok(link) =
            HeaderValue::from_str(&format!("<{}>; rel=\"describedby\"", self.code.type_uri()))
        {
            headers.insert(header::LINK, link);
        }
        response
    }
}
