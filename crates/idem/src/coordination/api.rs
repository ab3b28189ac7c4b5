//! The coordination API's documents and errors: the JSON contract, with OpenAPI schemas.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// What to execute: `POST /v1/idempotency/execute` and `POST /v1/idempotency/records`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationRequest {
    /// A registered operation, e.g. `payment.charge`.
    pub operation: String,
    /// The operation's input; with the operation, what makes two requests the same.
    pub payload: Value,
}

/// The execution finished; `result` is what the operation returned. Returned to the first
/// request and replayed, identical, to every retry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Completed {
    /// Always `completed`.
    #[schema(example = "completed")]
    pub status: String,
    /// The operation's JSON result.
    pub result: Value,
}

/// Another request with this key is executing; retry after `Retry-After`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Processing {
    /// Always `processing`.
    #[schema(example = "processing")]
    pub status: String,
}

/// The caller owns the key: execute, then complete or release with `lease_token`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Acquired {
    /// Always `acquired`.
    #[schema(example = "acquired")]
    pub status: String,
    /// The fencing token to complete or release with (a decimal 64-bit integer, as a
    /// string so that JavaScript clients keep every digit).
    pub lease_token: String,
    /// When the lease lapses unless renewed (Unix milliseconds, by this instance's clock: an
    /// estimate; `lease_ms` is exact). A lapsed lease makes the key's outcome unknown.
    pub lease_expires_at: u64,
    /// How long the lease lasts from now, in milliseconds: renew it
    /// (`POST /v1/idempotency/records/{key}/lease`) every third of this while executing.
    pub lease_ms: u64,
}

/// Renew a lease while executing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The token from the begin answer.
    pub lease_token: String,
}

/// The answer to a renewal.
#[derive(Debug, Serialize, ToSchema)]
pub struct Renewed {
    /// Always `"renewed"`.
    #[schema(example = "renewed")]
    pub status: String,
    /// How long the lease lasts from now, in milliseconds: renew again well before.
    pub lease_ms: u64,
}

/// Store the result of an execution the caller ran itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The token from the begin answer.
    pub lease_token: String,
    /// The result, replayed to every retry.
    pub result: Value,
}

/// Every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `IDEMPOTENCY_KEY_MISMATCH`.
    pub code: String,
    /// For people: what happened and what to do.
    pub message: String,
}

/// Every error the coordination API answers with. The codes are a stable API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: no `Idempotency-Key` header.
    KeyMissing,
    /// 400: the key is malformed.
    KeyInvalid,
    /// 400: the body is not JSON.
    InvalidJson,
    /// 400: the JSON lacks a field or has a wrong type or an unknown field.
    InvalidRequest,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 404: no operation of that name is registered.
    UnknownOperation,
    /// 422: the key was used with another operation or payload.
    KeyMismatch,
    /// 400: the lease token is not a token.
    LeaseTokenInvalid,
    /// 409: the lease was lost (taken over after it lapsed, completed, or released).
    LeaseLost,
    /// 409: an earlier execution with this key began and its owner vanished (crashed, or lost
    /// the store) before finishing: it may have taken effect. Never re-executed on its own.
    OutcomeUnknown,
    /// 404: no record for this key, or no such endpoint.
    NotFound,
    /// 405: the endpoint exists but not with this method.
    MethodNotAllowed,
    /// 503: the store did not answer; nothing was executed.
    StoreUnavailable,
    /// 502: the operation could not be reached; nothing was executed, retry.
    OperationUnreachable,
    /// 502: the operation answered with an error status; kept for replay.
    OperationFailed,
    /// 502: the operation answered something that is not JSON; kept for replay.
    OperationInvalidResponse,
    /// 504: the operation did not answer in time; it may have executed. Kept for replay.
    OperationOutcomeUnknown,
    /// 500: anything unexpected; details are in the server's log only.
    Internal,
}

impl ErrorCode {
    /// The `code` member.
    pub const fn code(self) -> &'static str {
        match self {
            Self::KeyMissing => "IDEMPOTENCY_KEY_MISSING",
            Self::KeyInvalid => "IDEMPOTENCY_KEY_INVALID",
            Self::InvalidJson => "INVALID_JSON",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnknownOperation => "UNKNOWN_OPERATION",
            Self::KeyMismatch => "IDEMPOTENCY_KEY_MISMATCH",
            Self::LeaseTokenInvalid => "LEASE_TOKEN_INVALID",
            Self::LeaseLost => "LEASE_LOST",
            Self::OutcomeUnknown => "OUTCOME_UNKNOWN",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::OperationUnreachable => "OPERATION_UNREACHABLE",
            Self::OperationFailed => "OPERATION_FAILED",
            Self::OperationInvalidResponse => "OPERATION_INVALID_RESPONSE",
            Self::OperationOutcomeUnknown => "OPERATION_OUTCOME_UNKNOWN",
            Self::Internal => "INTERNAL",
        }
    }

    /// The HTTP status.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::KeyMissing
            | Self::KeyInvalid
            | Self::InvalidJson
            | Self::InvalidRequest
            | Self::LeaseTokenInvalid => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownOperation | Self::NotFound => StatusCode::NOT_FOUND,
            Self::KeyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::LeaseLost | Self::OutcomeUnknown => StatusCode::CONFLICT,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::OperationUnreachable | Self::OperationFailed | Self::OperationInvalidResponse => {
                StatusCode::BAD_GATEWAY
            }
            Self::OperationOutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer: a code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.code().into(),
                message: self.message.clone(),
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code.status(), self.body()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// A JSON answer with a status.
pub fn json(status: StatusCode, value: impl Serialize) -> Response {
    (status, Json(value)).into_response()
}
