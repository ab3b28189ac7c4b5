//! The coordination API's handlers.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idem_core::{
    Begin, BeginOptions, Clock, Fingerprint, Finish, IdempotencyKey, KeyPolicy, LeaseToken,
    RecordId, RecordState, StoredResponse, TransitionOutcome,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::api::{
    Acquired, ApiError, CompleteRequest, Completed, ErrorCode, OperationRequest, Processing,
    RenewRequest, Renewed, json,
};
use idem_http::headers::{idempotency_key, retry_after};
use idem_http::{DEFAULT_MAX_RETRY_AFTER, IDEMPOTENCY_KEY};

use super::operation::CallOutcome;
use super::{AppState, MAX_BODY};

const JSON: &str = "application/json";

/// A decoded `{operation, payload}` request with its key and record.
struct Keyed {
    key: IdempotencyKey,
    id: RecordId,
    request: OperationRequest,
    fingerprint: Fingerprint,
}

fn key_from_header(parts: &Parts) -> Result<IdempotencyKey, ApiError> {
    match idempotency_key(&parts.headers, &IDEMPOTENCY_KEY, KeyPolicy::Any) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(ApiError::new(
            ErrorCode::KeyMissing,
            "send an Idempotency-Key header: a new UUID v4 per logical operation, reused on every retry",
        )),
        Err(error) => Err(ApiError::new(ErrorCode::KeyInvalid, error.to_string())),
    }
}

fn parse_key(value: &[u8]) -> Result<IdempotencyKey, ApiError> {
    IdempotencyKey::parse(value, KeyPolicy::Any)
        .map_err(|error| ApiError::new(ErrorCode::KeyInvalid, error.to_string()))
}

async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body exceeds {MAX_BODY} bytes"),
            ));
        }
        Err(error) => {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                format!("the body could not be read: {error}"),
            ));
        }
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {error}"),
        )
    })?;
    serde_json::from_value(value).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("invalid request: {error}"),
        )
    })
}

async fn keyed(state: &AppState, parts: &Parts, body: Body) -> Result<Keyed, ApiError> {
    let key = key_from_header(parts)?;
    let request: OperationRequest = read_json(body).await?;
    if request.operation.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`operation` must not be empty",
        ));
    }
    let fingerprint = Fingerprint::builder()
        .canonical_json(true)
        .part("operation", request.operation.as_bytes())
        .body(request.payload.to_string().as_bytes())
        .finish();
    let id = RecordId::new(&state.scope.scope(parts), &key);
    Ok(Keyed {
        key,
        id,
        request,
        fingerprint,
    })
}

fn store_unavailable(error: &idem_core::StoreError) -> ApiError {
    tracing::error!(%error, "idempotency store unavailable");
    ApiError::new(
        ErrorCode::StoreUnavailable,
        "the idempotency store is unavailable; nothing was executed, retry later with the same key",
    )
}

fn outcome_unknown() -> ApiError {
    ApiError::new(
        ErrorCode::OutcomeUnknown,
        "an earlier execution with this key began and did not finish (its owner stopped): it may or may not have taken effect, so it is not executed again. Check the outcome, then use a new key",
    )
}

fn mismatch() -> ApiError {
    ApiError::new(
        ErrorCode::KeyMismatch,
        "this idempotency key was already used with a different operation or payload; use a new key for a new operation",
    )
}

/// The stored answer, replayed as it was first sent.
fn replay(stored: &StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = stored.body.clone().unwrap_or_default();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

fn processing(wait: std::time::Duration) -> Response {
    let mut response = json(
        StatusCode::ACCEPTED,
        Processing {
            status: "processing".into(),
        },
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        retry_after(wait, DEFAULT_MAX_RETRY_AFTER),
    );
    response
}

fn completed_response(result: Value) -> StoredResponse {
    let body = serde_json::to_vec(&Completed {
        status: "completed".into(),
        result,
    })
    .unwrap_or_default();
    StoredResponse {
        status: 200,
        headers: Vec::new(),
        body: Some(Bytes::from(body)),
    }
}

fn error_response(error: &ApiError) -> StoredResponse {
    StoredResponse {
        status: error.code.status().as_u16(),
        headers: Vec::new(),
        body: Some(Bytes::from(error.body())),
    }
}

/// Execute a registered operation at most once per key.
#[utoipa::path(post, path = "/v1/idempotency/execute", tag = "execute",
    params(("Idempotency-Key" = String, Header, description = "One logical attempt; reused on every retry")),
    request_body = OperationRequest,
    responses(
        (status = 200, description = "Executed now, or replayed", body = Completed),
        (status = 202, description = "Another request with this key is executing", body = Processing),
        (status = 400, description = "Missing or invalid key, malformed JSON, missing fields", body = super::api::ErrorBody),
        (status = 404, description = "Unknown operation", body = super::api::ErrorBody),
        (status = 409, description = "An earlier execution's owner vanished mid-way: outcome unknown", body = super::api::ErrorBody),
        (status = 422, description = "Key reused with another operation or payload", body = super::api::ErrorBody),
        (status = 502, description = "Operation unreachable (retry) or failed (replayed)", body = super::api::ErrorBody),
        (status = 503, description = "Store unavailable; nothing executed", body = super::api::ErrorBody),
        (status = 504, description = "Operation outcome unknown (replayed)", body = super::api::ErrorBody),
    ))]
pub async fn execute(
    State(state): State<AppState>,
    parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let Keyed {
        key,
        id,
        request,
        fingerprint,
    } = keyed(&state, &parts, body).await?;
    if !state.operations.contains(&request.operation) {
        return Err(ApiError::new(
            ErrorCode::UnknownOperation,
            format!("no operation named {:?} is registered", request.operation),
        ));
    }
    let options = BeginOptions {
        on_lapse: state.operations.on_lapse(&request.operation),
        ..state.engine.options()
    };
    match state
        .engine
        .begin_with(id, fingerprint, options)
        .await
        .map_err(|error| store_unavailable(&error))?
    {
        Begin::Replay(stored) => Ok(replay(&stored)),
        Begin::InFlight { retry_after } => Ok(processing(retry_after)),
        Begin::OutcomeUnknown => Err(outcome_unknown()),
        Begin::Mismatch => Err(mismatch()),
        Begin::Acquired(execution) => {
            // The call runs in its own task: a client that hangs up must not cancel an
            // operation that may already have been delivered.
            let operations = state.operations.clone();
            let task = tokio::spawn(async move {
                let outcome = operations
                    .call(&request.operation, &request.payload, key.as_str())
                    .await;
                let stored = match outcome {
                    CallOutcome::Succeeded(result) => completed_response(result),
                    CallOutcome::Unreachable(reason) => {
                        if let Finish::Retrying(error) = execution.release().await {
                            tracing::warn!(%error, "releasing after an unreachable operation failed; retrying in the background");
                        }
                        tracing::warn!(reason, "operation unreachable; key released");
                        return Err(ApiError::new(
                            ErrorCode::OperationUnreachable,
                            "the operation could not be reached; nothing was executed, retry with the same key",
                        ));
                    }
                    CallOutcome::Failed { status } => error_response(&ApiError::new(
                        ErrorCode::OperationFailed,
                        format!(
                            "the operation answered HTTP {status}; this answer is kept for this key"
                        ),
                    )),
                    CallOutcome::InvalidResponse => error_response(&ApiError::new(
                        ErrorCode::OperationInvalidResponse,
                        "the operation answered a body that is not JSON; this answer is kept for this key",
                    )),
                    CallOutcome::OutcomeUnknown(reason) => {
                        tracing::warn!(reason, "operation outcome unknown");
                        error_response(&ApiError::new(
                            ErrorCode::OperationOutcomeUnknown,
                            "the operation did not answer in time and may have executed; this answer is kept for this key so it never executes twice: check the outcome, then use a new key",
                        ))
                    }
                };
                let response = replay(&stored);
                match execution.complete(stored).await {
                    Finish::Done => {}
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
            });
            task.await.map_err(|error| {
                tracing::error!(%error, "execute task failed");
                ApiError::new(ErrorCode::Internal, "internal error")
            })?
        }
        _ => Err(ApiError::new(ErrorCode::Internal, "internal error")),
    }
}

/// Begin: acquire the key to execute yourself, or learn its state.
#[utoipa::path(post, path = "/v1/idempotency/records", tag = "records",
    params(("Idempotency-Key" = String, Header, description = "One logical attempt; reused on every retry")),
    request_body = OperationRequest,
    responses(
        (status = 201, description = "Acquired: execute, then complete or release", body = Acquired),
        (status = 200, description = "Already completed: the stored result", body = Completed),
        (status = 202, description = "Another execution holds the key", body = Processing),
        (status = 400, description = "Missing or invalid key, malformed JSON", body = super::api::ErrorBody),
        (status = 409, description = "An earlier execution's owner vanished mid-way: outcome unknown", body = super::api::ErrorBody),
        (status = 422, description = "Key reused with another operation or payload", body = super::api::ErrorBody),
        (status = 503, description = "Store unavailable", body = super::api::ErrorBody),
    ))]
pub async fn begin(
    State(state): State<AppState>,
    parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let Keyed {
        id, fingerprint, ..
    } = keyed(&state, &parts, body).await?;
    match state
        .engine
        .begin(id, fingerprint)
        .await
        .map_err(|error| store_unavailable(&error))?
    {
        Begin::Acquired(execution) => {
            // The client executes and renews from here on: this instance stops renewing.
            let (_, token) = execution.detach();
            let lease = state.engine.lease_duration();
            let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
            Ok(json(
                StatusCode::CREATED,
                Acquired {
                    status: "acquired".into(),
                    lease_token: token.as_u64().to_string(),
                    lease_expires_at: idem_core::SystemClock.now().plus(lease).as_millis(),
                    lease_ms,
                },
            ))
        }
        Begin::Replay(stored) => Ok(replay(&stored)),
        Begin::InFlight { retry_after } => Ok(processing(retry_after)),
        Begin::OutcomeUnknown => Err(outcome_unknown()),
        Begin::Mismatch => Err(mismatch()),
        _ => Err(ApiError::new(ErrorCode::Internal, "internal error")),
    }
}

fn record_id(
    state: &AppState,
    parts: &Parts,
    key: Result<Path<String>, PathRejection>,
) -> Result<RecordId, ApiError> {
    let Path(key) = key.map_err(|rejection| {
        ApiError::new(
            ErrorCode::KeyInvalid,
            format!("the key in the path is invalid: {rejection}"),
        )
    })?;
    Ok(RecordId::new(
        &state.scope.scope(parts),
        &parse_key(key.as_bytes())?,
    ))
}

fn parse_token(text: &str) -> Result<LeaseToken, ApiError> {
    text.parse::<u64>().map(LeaseToken::from_u64).map_err(|_| {
        ApiError::new(
            ErrorCode::LeaseTokenInvalid,
            "lease_token must be the decimal token from the begin answer",
        )
    })
}

fn lease_lost() -> ApiError {
    ApiError::new(
        ErrorCode::LeaseLost,
        "this lease no longer owns the key (it lapsed and was taken over, or was already completed or released)",
    )
}

/// Complete: store the result of an execution you ran under a lease.
#[utoipa::path(put, path = "/v1/idempotency/records/{key}", tag = "records",
    params(("key" = String, Path, description = "The idempotency key")),
    request_body = CompleteRequest,
    responses(
        (status = 200, description = "Stored; replayed to every retry", body = Completed),
        (status = 400, description = "Invalid key, token or body", body = super::api::ErrorBody),
        (status = 409, description = "Lease lost", body = super::api::ErrorBody),
        (status = 503, description = "Store unavailable", body = super::api::ErrorBody),
    ))]
pub async fn complete(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let id = record_id(&state, &parts, key)?;
    let request: CompleteRequest = read_json(body).await?;
    let token = parse_token(&request.lease_token)?;
    let stored = completed_response(request.result);
    let response = replay(&stored);
    match state
        .engine
        .resume(id, token, state.engine.ttl())
        .complete(stored)
        .await
    {
        Finish::LeaseLost => Err(lease_lost()),
        // Stored, or being stored: the completion is retried in the background (with the
        // lease renewed) until it lands, so no retry can execute the operation meanwhile.
        Finish::Retrying(error) => {
            tracing::warn!(%error, "storing a completion failed; retrying in the background");
            Ok(response)
        }
        _ => Ok(response),
    }
}

/// Renew: keep the lease while you execute; call it every third of `lease_ms`.
#[utoipa::path(post, path = "/v1/idempotency/records/{key}/lease", tag = "records",
    params(("key" = String, Path, description = "The idempotency key")),
    request_body = RenewRequest,
    responses(
        (status = 200, description = "Renewed for another lease_ms", body = Renewed),
        (status = 400, description = "Invalid key, token or body", body = super::api::ErrorBody),
        (status = 409, description = "Lease lost", body = super::api::ErrorBody),
        (status = 503, description = "Store unavailable; renew again soon", body = super::api::ErrorBody),
    ))]
pub async fn renew(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let id = record_id(&state, &parts, key)?;
    let request: RenewRequest = read_json(body).await?;
    let token = parse_token(&request.lease_token)?;
    match state
        .engine
        .renew(id, token)
        .await
        .map_err(|error| store_unavailable(&error))?
    {
        TransitionOutcome::Applied => Ok(json(
            StatusCode::OK,
            Renewed {
                status: "renewed".into(),
                lease_ms: u64::try_from(state.engine.lease_duration().as_millis())
                    .unwrap_or(u64::MAX),
            },
        )),
        TransitionOutcome::StaleLease => Err(lease_lost()),
    }
}

/// `?lease_token=…` on a release.
#[derive(Debug, Deserialize)]
pub struct ReleaseQuery {
    lease_token: String,
}

/// Release: give the key back without a result; the next request with it executes.
#[utoipa::path(delete, path = "/v1/idempotency/records/{key}", tag = "records",
    params(("key" = String, Path, description = "The idempotency key"), ("lease_token" = String, Query, description = "The token from the begin answer")),
    responses(
        (status = 204, description = "Released"),
        (status = 400, description = "Invalid key or token", body = super::api::ErrorBody),
        (status = 409, description = "Lease lost", body = super::api::ErrorBody),
        (status = 503, description = "Store unavailable", body = super::api::ErrorBody),
    ))]
pub async fn release(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<ReleaseQuery>, axum::extract::rejection::QueryRejection>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let id = record_id(&state, &parts, key)?;
    let Ok(Query(query)) = query else {
        return Err(ApiError::new(
            ErrorCode::LeaseTokenInvalid,
            "pass ?lease_token= with the token from the begin answer",
        ));
    };
    match state
        .engine
        .resume(id, parse_token(&query.lease_token)?, state.engine.ttl())
        .release()
        .await
    {
        Finish::LeaseLost => Err(lease_lost()),
        Finish::Retrying(error) => {
            tracing::warn!(%error, "releasing a key failed; retrying in the background");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Status: whether a key is processing or completed (with its result).
#[utoipa::path(get, path = "/v1/idempotency/records/{key}", tag = "records",
    params(("key" = String, Path, description = "The idempotency key")),
    responses(
        (status = 200, description = "Completed: the stored answer", body = Completed),
        (status = 202, description = "Processing", body = Processing),
        (status = 404, description = "No record for this key", body = super::api::ErrorBody),
        (status = 409, description = "Its execution's owner vanished mid-way: outcome unknown", body = super::api::ErrorBody),
        (status = 503, description = "Store unavailable", body = super::api::ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let id = record_id(&state, &parts, key)?;
    match state
        .engine
        .status(id)
        .await
        .map_err(|error| store_unavailable(&error))?
    {
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            "no record for this key (never used, released, or expired)",
        )),
        Some(snapshot) => match (snapshot.lease_left(), snapshot.record.state) {
            (Some(left), _) if left.is_zero() => Err(outcome_unknown()),
            (Some(left), _) => Ok(processing(left)),
            (None, RecordState::Completed { response, .. }) => Ok(replay(&response)),
            (None, RecordState::InFlight { .. }) => Err(outcome_unknown()),
        },
    }
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; see GET /v1/openapi.json",
    )
}

/// A known path with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take this method; see GET /v1/openapi.json",
    )
}
