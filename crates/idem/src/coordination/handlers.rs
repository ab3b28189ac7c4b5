//! The coordination API's handlers, one per endpoint, with their OpenAPI annotations. Each
//! receives a parsed request (`extract`), asks the engine, and hands the outcome to `respond`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use idem_core::{Begin, BeginOptions, Execution, Finish, RecordState, TransitionOutcome};
use idem_http::ProblemCode;
use tracing::Instrument;

use super::AppState;
use super::api::{CompleteRequest, OperationRequest, RenewRequest, StatusBody};
use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, KeyedOperation, LeaseTokenQuery, RecordPath, lease_token};
use super::formats::{KeyFormat, LeaseTokenFormat};
use super::operation::Operations;
use super::respond::{self, Settlement};
use idem_core::DynStore;

// The answers several endpoints share, described once for the document.
const BAD_KEYED_REQUEST: &str = "`IDEMPOTENCY_KEY_MISSING` (no `Idempotency-Key` header), `IDEMPOTENCY_KEY_INVALID` (a key outside its format, or the header sent twice), `INVALID_JSON` (the body is not JSON, or its payload names a member twice, nests deeper than 128 levels or holds a number whose exponent is beyond ±999999999), `INVALID_REQUEST` (a member missing, unknown, of the wrong type, or an empty `operation`) `PRINCIPAL_MISSING` (the scoping header or cookie sent more than once) or `REQUEST_BODY_UNREADABLE` (the upload broke off: nothing was executed, retry with the same key)";
const BAD_LEASE_REQUEST: &str = "`IDEMPOTENCY_KEY_INVALID` (the path's key), `INVALID_JSON` (the body is not JSON), `INVALID_REQUEST` (a member missing, unknown or of the wrong type) or `LEASE_TOKEN_INVALID` (not a decimal 64-bit integer)";
const BODY_TIMEOUT: &str = "`REQUEST_BODY_TIMEOUT`: the body did not arrive within `--body-read-timeout`; nothing was executed";
const BODY_TOO_LARGE: &str = "`PAYLOAD_TOO_LARGE`: the body is over 1 MiB";
const STORED_OPERATION_ERROR: &str = "The stored answer of an `execute` with this key whose operation failed (502) or did not answer in time (504), replayed";
const OPERATION_REJECTED: &str = "`OPERATION_REJECTED`: the operation refused the request with a 4xx of its own, answered with that status and the operation's answer in `error.operation`; kept for the key and replayed";
const STORED_OPERATION_REJECTED: &str = "The stored answer of an `execute` with this key whose operation refused the request (`OPERATION_REJECTED`, with the operation's 4xx), replayed";
const MISMATCH: &str = "`IDEMPOTENCY_KEY_MISMATCH`: the key was used with another operation or payload (`error.differs` says which); 409 or 400 instead under `--mismatch-status`";
const STORE_UNAVAILABLE: &str =
    "`STORE_UNAVAILABLE` or `STORE_FULL`: nothing was executed; retry later with the same key";

/// Execute a registered operation at most once per key.
#[utoipa::path(post, path = "/v1/idempotency/execute", tag = "execute",
    params(("Idempotency-Key" = KeyFormat, Header, description = "One logical attempt; reused on every retry")),
    request_body = OperationRequest,
    responses(
        (status = 200, description = "Executed now, or replayed: `completed`", body = StatusBody,
            links(("status" = (operation_id = "status", parameters(("key" = "$request.header.Idempotency-Key"))))),
            example = json!({"status": "completed", "result": {"id": "ch_1"}})),
        (status = 202, description = "Another request with this key is executing: `processing`", body = StatusBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying with the same key")),
            example = json!({"status": "processing"})),
        (status = 400, description = concat!("`IDEMPOTENCY_KEY_MISSING` (no `Idempotency-Key` header), `IDEMPOTENCY_KEY_INVALID` (a key outside its format, or the header sent twice), `INVALID_JSON` (the body is not JSON, or its payload names a member twice, nests deeper than 128 levels or holds a number whose exponent is beyond ±999999999), `INVALID_REQUEST` (a member missing, unknown, of the wrong type, or an empty `operation`) `PRINCIPAL_MISSING` (the scoping header or cookie sent more than once) or `REQUEST_BODY_UNREADABLE` (the upload broke off: nothing was executed, retry with the same key)", "; or `OPERATION_REJECTED` with the operation's own 400"), body = ErrorBody),
        (status = 404, description = "`UNKNOWN_OPERATION`: no operation of that name is registered; or `OPERATION_REJECTED` with the operation's own 404", body = ErrorBody),
        (status = 408, description = "`REQUEST_BODY_TIMEOUT`: the body did not arrive within `--body-read-timeout`; nothing was executed; or `OPERATION_REJECTED` with the operation's own 408", body = ErrorBody),
        (status = 409, description = "`OUTCOME_UNKNOWN`: an earlier execution's owner vanished mid-way; `IDEMPOTENCY_KEY_MISMATCH` under `--mismatch-status 409`; or `OPERATION_REJECTED` with the operation's own 409", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body is over 1 MiB; or `OPERATION_REJECTED` with the operation's own 413", body = ErrorBody),
        (status = 422, description = "`IDEMPOTENCY_KEY_MISMATCH`: the key was used with another operation or payload (`error.differs` says which); or `OPERATION_REJECTED` with the operation's own 422", body = ErrorBody),
        (status = "4XX", description = OPERATION_REJECTED, body = ErrorBody),
        (status = 502, description = "`OPERATION_UNREACHABLE` (nothing was delivered, or the operation answered a status of `--transient-status`, 429 or 503 by default, saying it did not process it: the key is free, retry with it, after `Retry-After` when sent), `OPERATION_FAILED` or `OPERATION_INVALID_RESPONSE` (kept for the key and replayed)", body = ErrorBody,
            headers(("Retry-After" = String, description = "`OPERATION_UNREACHABLE` only, when the operation sent one: its `Retry-After`, as it sent it"))),
        (status = 503, description = STORE_UNAVAILABLE, body = ErrorBody),
        (status = 504, description = "`OPERATION_OUTCOME_UNKNOWN`: the operation did not answer in time (kept for the key and replayed)", body = ErrorBody),
    ))]
pub async fn execute(
    State(state): State<AppState>,
    request: KeyedOperation,
) -> Result<Response, ApiError> {
    if !state.operations.contains(&request.operation) {
        return Err(ApiError::new(
            ProblemCode::UnknownOperation,
            format!("no operation named {:?} is registered", request.operation),
        ));
    }
    let options = BeginOptions {
        on_lapse: state.operations.on_lapse(&request.operation),
        ..state.engine.options()
    };
    // Every line logged about this execution names its record (never the key) and operation.
    let span = tracing::info_span!("execute", record = %request.id, operation = %request.operation);
    let begun = state
        .engine
        .begin_with(request.id, request.fingerprint, options)
        .await
        .map_err(|error| ApiError::store_unavailable(&error))?;
    match begun {
        Begin::Acquired(execution) => {
            // The call runs in its own task: a client that hangs up must not cancel an
            // operation that may already have been delivered.
            let task = tokio::spawn(
                run_once(state.operations.clone(), request, execution).instrument(span),
            );
            task.await.map_err(|error| {
                tracing::error!(%error, "execute task failed");
                ApiError::internal()
            })?
        }
        other => respond::not_acquired(other, state.mismatch_status),
    }
}

/// Calls the operation once under `execution`, and keeps what it answered for the key (or
/// releases the key when nothing was delivered).
async fn run_once(
    operations: Operations,
    request: KeyedOperation,
    mut execution: Execution<DynStore>,
) -> Result<Response, ApiError> {
    // From here the operation may run: if this task dies (a panic) before the key is
    // finished, the key lapses into an unknown outcome rather than being released for a
    // second execution.
    execution.abandon_if_dropped();
    let outcome = operations
        .call(&request.operation, &request.payload, request.key.as_str())
        .await;
    let stored = match respond::settlement(outcome) {
        Settlement::Keep(stored) => stored,
        Settlement::Release(error) => {
            if let Finish::Retrying(error) = execution.release().await {
                tracing::warn!(%error, "releasing after an unreachable operation failed; retrying in the background");
            }
            return Err(error);
        }
    };
    let response = respond::replay(&stored);
    match execution.complete(stored).await {
        Finish::LeaseLost => tracing::error!(
            "the key was taken over or resolved while the operation ran; result not stored"
        ),
        Finish::Retrying(error) => tracing::warn!(
            %error,
            "storing the result failed; retrying in the background while the lease is renewed"
        ),
        _ => {}
    }
    Ok(response)
}

/// Begin: acquire the key to execute yourself, or learn its state.
#[utoipa::path(post, path = "/v1/idempotency/records", tag = "records",
    params(("Idempotency-Key" = KeyFormat, Header, description = "One logical attempt; reused on every retry")),
    request_body = OperationRequest,
    responses(
        (status = 201, description = "Acquired: execute, then complete or release", body = StatusBody,
            links(
                ("complete" = (operation_id = "complete", parameters(("key" = "$request.header.Idempotency-Key")),
                    request_body = json!({"lease_token": "$response.body#/lease_token"}))),
                ("renew" = (operation_id = "renew", parameters(("key" = "$request.header.Idempotency-Key")),
                    request_body = json!({"lease_token": "$response.body#/lease_token"}))),
                ("release" = (operation_id = "release", parameters(("key" = "$request.header.Idempotency-Key"),
                    ("lease_token" = "$response.body#/lease_token")))),
                ("status" = (operation_id = "status", parameters(("key" = "$request.header.Idempotency-Key")))),
            ),
            example = json!({"status": "acquired", "lease_token": "42", "lease_expires_at": 1_767_225_600_000_u64, "lease_ms": 30000})),
        (status = 200, description = "Already completed: the stored answer", body = StatusBody,
            example = json!({"status": "completed", "result": {"id": "u_1"}})),
        (status = 202, description = "Another execution holds the key: `processing`", body = StatusBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again")),
            example = json!({"status": "processing"})),
        (status = 400, description = BAD_KEYED_REQUEST, body = ErrorBody),
        (status = 408, description = BODY_TIMEOUT, body = ErrorBody),
        (status = 409, description = "`OUTCOME_UNKNOWN`: an earlier execution's owner vanished mid-way", body = ErrorBody),
        (status = 413, description = BODY_TOO_LARGE, body = ErrorBody),
        (status = 422, description = MISMATCH, body = ErrorBody),
        (status = "4XX", description = STORED_OPERATION_REJECTED, body = ErrorBody),
        (status = 502, description = STORED_OPERATION_ERROR, body = ErrorBody),
        (status = 503, description = STORE_UNAVAILABLE, body = ErrorBody),
        (status = 504, description = STORED_OPERATION_ERROR, body = ErrorBody),
    ))]
pub async fn begin(
    State(state): State<AppState>,
    request: KeyedOperation,
) -> Result<Response, ApiError> {
    let begun = state
        .engine
        .begin(request.id, request.fingerprint)
        .await
        .map_err(|error| ApiError::store_unavailable(&error))?;
    match begun {
        Begin::Acquired(execution) => {
            // The client executes and renews from here on: this instance stops renewing.
            let (_, token) = execution.detach();
            Ok(respond::acquired(token, state.engine.lease_duration()))
        }
        other => respond::not_acquired(other, state.mismatch_status),
    }
}

/// Complete: store the result of an execution you ran under a lease.
#[utoipa::path(put, path = "/v1/idempotency/records/{key}", tag = "records",
    params(("key" = KeyFormat, Path, description = "The idempotency key, as sent in the begin request's `Idempotency-Key` header (percent-encoded)")),
    request_body = CompleteRequest,
    responses(
        (status = 200, description = "Stored; replayed to every retry: `completed`", body = StatusBody,
            links(("status" = (operation_id = "status", parameters(("key" = "$request.path.key"))))),
            example = json!({"status": "completed", "result": {"id": "u_1"}})),
        (status = 400, description = BAD_LEASE_REQUEST, body = ErrorBody),
        (status = 408, description = BODY_TIMEOUT, body = ErrorBody),
        (status = 409, description = "`LEASE_LOST`: the lease no longer owns the key", body = ErrorBody),
        (status = 413, description = BODY_TOO_LARGE, body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    ))]
pub async fn complete(
    State(state): State<AppState>,
    RecordPath(id): RecordPath,
    JsonBody(request): JsonBody<CompleteRequest>,
) -> Result<Response, ApiError> {
    let token = lease_token(&request.lease_token)?;
    let stored = respond::completed(request.result);
    let done = respond::replay(&stored);
    // Once, not retried in the background: the client holds the token and retries on 503,
    // so a store outage cannot pile up work here on behalf of anyone who sends a token.
    let outcome = state
        .engine
        .complete_by_token(id, token, stored.clone(), state.engine.ttl())
        .await
        .map_err(|error| ApiError::store_unavailable(&error))?;
    // A retry of a completion whose answer was lost finds its own result stored: a success.
    if outcome == TransitionOutcome::StaleLease
        && let Ok(Some(snapshot)) = state.engine.status(id).await
        && matches!(&snapshot.record.state, RecordState::Completed { response, .. } if *response == stored)
    {
        return Ok(done);
    }
    respond::transitioned(outcome, done)
}

/// Renew: keep the lease while you execute; call it every third of `lease_ms`.
#[utoipa::path(post, path = "/v1/idempotency/records/{key}/lease", tag = "records",
    params(("key" = KeyFormat, Path, description = "The idempotency key, as sent in the begin request's `Idempotency-Key` header (percent-encoded)")),
    request_body = RenewRequest,
    responses(
        (status = 200, description = "Renewed for another lease_ms: `renewed`", body = StatusBody,
            links(
                ("complete" = (operation_id = "complete", parameters(("key" = "$request.path.key")),
                    request_body = json!({"lease_token": "$request.body#/lease_token"}))),
                ("release" = (operation_id = "release", parameters(("key" = "$request.path.key"),
                    ("lease_token" = "$request.body#/lease_token")))),
            ),
            example = json!({"status": "renewed", "lease_ms": 30000})),
        (status = 400, description = BAD_LEASE_REQUEST, body = ErrorBody),
        (status = 408, description = BODY_TIMEOUT, body = ErrorBody),
        (status = 409, description = "`LEASE_LOST`: the lease no longer owns the key", body = ErrorBody),
        (status = 413, description = BODY_TOO_LARGE, body = ErrorBody),
        (status = 503, description = "Store unavailable; renew again soon", body = ErrorBody),
    ))]
pub async fn renew(
    State(state): State<AppState>,
    RecordPath(id): RecordPath,
    JsonBody(request): JsonBody<RenewRequest>,
) -> Result<Response, ApiError> {
    let token = lease_token(&request.lease_token)?;
    let outcome = state
        .engine
        .renew(id, token)
        .await
        .map_err(|error| ApiError::store_unavailable(&error))?;
    respond::renewed(outcome, state.engine.lease_duration())
}

/// Release: give the key back without a result; the next request with it executes.
#[utoipa::path(delete, path = "/v1/idempotency/records/{key}", tag = "records",
    params(("key" = KeyFormat, Path, description = "The idempotency key, as sent in the begin request's `Idempotency-Key` header (percent-encoded)"), ("lease_token" = LeaseTokenFormat, Query, description = "The token from the begin answer")),
    responses(
        (status = 204, description = "Released",
            links(("status" = (operation_id = "status", parameters(("key" = "$request.path.key")))))),
        (status = 400, description = "`IDEMPOTENCY_KEY_INVALID` (the path's key) or `LEASE_TOKEN_INVALID` (`lease_token` missing or not a decimal 64-bit integer)", body = ErrorBody),
        (status = 409, description = "`LEASE_LOST`: the lease no longer owns the key", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    ))]
pub async fn release(
    State(state): State<AppState>,
    RecordPath(id): RecordPath,
    LeaseTokenQuery(token): LeaseTokenQuery,
) -> Result<Response, ApiError> {
    let outcome = state
        .engine
        .release_by_token(id, token)
        .await
        .map_err(|error| ApiError::store_unavailable(&error))?;
    // A retry of a release whose answer was lost finds the key free: a success.
    if outcome == TransitionOutcome::StaleLease
        && let Ok(None) = state.engine.status(id).await
    {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    respond::transitioned(outcome, StatusCode::NO_CONTENT.into_response())
}

/// Status: whether a key is processing or completed (with its result).
#[utoipa::path(get, path = "/v1/idempotency/records/{key}", tag = "records",
    params(("key" = KeyFormat, Path, description = "The idempotency key, as sent in the begin request's `Idempotency-Key` header (percent-encoded)")),
    responses(
        (status = 200, description = "Completed: the stored answer", body = StatusBody,
            example = json!({"status": "completed", "result": {"id": "u_1"}})),
        (status = 202, description = "Processing", body = StatusBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again")),
            example = json!({"status": "processing"})),
        (status = 400, description = "`IDEMPOTENCY_KEY_INVALID`: the path's key is not a valid key", body = ErrorBody),
        (status = 404, description = "No record for this key", body = ErrorBody),
        (status = 409, description = "`OUTCOME_UNKNOWN`: its execution's owner vanished mid-way", body = ErrorBody),
        (status = "4XX", description = STORED_OPERATION_REJECTED, body = ErrorBody),
        (status = 502, description = STORED_OPERATION_ERROR, body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
        (status = 504, description = STORED_OPERATION_ERROR, body = ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    RecordPath(id): RecordPath,
) -> Result<Response, ApiError> {
    let snapshot = state
        .engine
        .status(id)
        .await
        .map_err(|error| ApiError::store_unavailable(&error))?;
    respond::key_status(snapshot)
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(
        ProblemCode::NotFound,
        "no such endpoint; see GET /v1/openapi.json",
    )
}

/// A known path with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ProblemCode::MethodNotAllowed,
        "this endpoint does not take this method; see GET /v1/openapi.json",
    )
}
