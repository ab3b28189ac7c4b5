//! What the coordination API answers, in one place: every outcome of the engine (a begin, a
//! finish, a renewal, a key's status) and of an operation call, mapped to its response. The
//! handlers decide what to do; this module decides what that looks like on the wire.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use idem_core::{
    Begin, Clock, LeaseToken, RecordSnapshot, RecordState, Store, StoredResponse, SystemClock,
    TransitionOutcome,
};
use idem_http::headers::retry_after;
use idem_http::{DEFAULT_MAX_RETRY_AFTER, ProblemCode};
use serde_json::value::RawValue;

use super::api::StatusBody;
use super::error::{ApiError, JSON};
use super::operation::OperationReply;

/// The answer to a begin that did not acquire the key: the stored answer, processing, or an
/// error. Acquiring is each handler's own business (execute runs the operation, begin hands
/// the lease to the client), so an acquired begin never comes here.
pub fn not_acquired<S: Store>(
    begin: Begin<S>,
    mismatch_status: StatusCode,
) -> Result<Response, ApiError> {
    match begin {
        Begin::Replay(stored) => Ok(replay(&stored)),
        Begin::InFlight { retry_after } => Ok(processing(retry_after)),
        Begin::OutcomeUnknown => Err(ApiError::outcome_unknown()),
        Begin::Mismatch { differing } => {
            Err(ApiError::mismatch(&differing).with_status(mismatch_status))
        }
        _ => Err(ApiError::internal()),
    }
}

/// 201: the caller owns the key with `token` for `lease`.
pub fn acquired(token: LeaseToken, lease: Duration) -> Response {
    let answer = StatusBody::Acquired {
        lease_token: token.as_u64().to_string(),
        lease_expires_at: SystemClock.now().plus(lease).as_millis(),
        lease_ms: millis(lease),
    };
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// 200 for a renewed lease that lasts `lease` from now; 409 for a lost one.
pub fn renewed(outcome: TransitionOutcome, lease: Duration) -> Result<Response, ApiError> {
    match outcome {
        TransitionOutcome::Applied => Ok(Json(StatusBody::Renewed {
            lease_ms: millis(lease),
        })
        .into_response()),
        TransitionOutcome::StaleLease => Err(ApiError::lease_lost()),
    }
}

/// The answer to a two-phase complete or release: `done`, unless the lease was lost.
pub fn transitioned(outcome: TransitionOutcome, done: Response) -> Result<Response, ApiError> {
    match outcome {
        TransitionOutcome::Applied => Ok(done),
        TransitionOutcome::StaleLease => Err(ApiError::lease_lost()),
    }
}

/// A key's status: completed (its stored answer), processing, of unknown outcome, or absent.
pub fn key_status(snapshot: Option<RecordSnapshot>) -> Result<Response, ApiError> {
    let Some(snapshot) = snapshot else {
        return Err(ApiError::new(
            ProblemCode::NotFound,
            "no record for this key (never used, released, or expired)",
        ));
    };
    match (snapshot.lease_left(), snapshot.record.state) {
        (Some(left), _) if left.is_zero() => Err(ApiError::outcome_unknown()),
        (Some(left), _) => Ok(processing(left)),
        (None, RecordState::Completed { response, .. }) => Ok(replay(&response)),
        (None, RecordState::InFlight { .. }) => Err(ApiError::outcome_unknown()),
    }
}

/// What an operation call leaves for its key.
#[derive(Debug)]
pub enum Settlement {
    /// An answer to keep for the key, replayed to every retry.
    Keep(StoredResponse),
    /// Nothing was delivered: release the key (a retry executes) and answer this error.
    Release(ApiError),
}

/// The settlement of an operation call: its result, or the error kept in its place; only an
/// unreachable operation leaves the key free.
pub fn settlement(outcome: OperationReply) -> Settlement {
    let kept = match outcome {
        OperationReply::Succeeded(result) => return Settlement::Keep(completed(result)),
        OperationReply::Unreachable(reason) => {
            tracing::warn!(reason, "operation unreachable; releasing the key");
            return Settlement::Release(ApiError::new(
                ProblemCode::OperationUnreachable,
                "the operation could not be reached; nothing was executed, retry with the same key",
            ));
        }
        OperationReply::Busy {
            status,
            retry_after,
        } => {
            tracing::warn!(%status, "operation answered not processed; releasing the key");
            let when = if retry_after.is_some() {
                "after Retry-After"
            } else {
                "later"
            };
            return Settlement::Release(
                ApiError::new(
                    ProblemCode::OperationUnreachable,
                    format!(
                        "the operation answered HTTP {status} (not processed); nothing was kept, retry {when} with the same key"
                    ),
                )
                .with_retry_after(retry_after),
            );
        }
        OperationReply::Rejected { status, body } => ApiError::rejected(status, body),
        OperationReply::Failed { status } => {
            // The operation's 5xx says how it broke, which is its business, not the
            // caller's: logged here (the execution's span carries the record id and the
            // operation), hidden there.
            tracing::error!(%status, "operation failed; its answer is hidden and kept for this key");
            ApiError::new(
                ProblemCode::OperationFailed,
                "the operation failed; this answer is kept for this key (the service's log has the details)",
            )
        }
        OperationReply::InvalidResponse => ApiError::new(
            ProblemCode::OperationInvalidResponse,
            "the operation answered a body that is not JSON; this answer is kept for this key",
        ),
        OperationReply::TooLarge { limit } => {
            tracing::warn!(
                limit,
                "operation answered a body over the limit; kept as invalid"
            );
            ApiError::new(
                ProblemCode::OperationInvalidResponse,
                format!(
                    "the operation answered a body over {limit} bytes (--max-operation-response), which is not kept; this answer is kept for this key"
                ),
            )
        }
        OperationReply::OutcomeUnknown(reason) => {
            tracing::warn!(reason, "operation outcome unknown");
            ApiError::new(
                ProblemCode::OperationOutcomeUnknown,
                "the operation did not answer in time and may have executed; this answer is kept for this key so it never executes twice: check the outcome, then use a new key",
            )
        }
    };
    Settlement::Keep(kept.stored())
}

/// The completed answer for `result`, as kept for its key.
pub fn completed(result: Box<RawValue>) -> StoredResponse {
    let body = serde_json::to_vec(&StatusBody::Completed { result }).unwrap_or_default();
    StoredResponse {
        status: StatusCode::OK.as_u16(),
        headers: Vec::new(),
        body: Some(Bytes::from(body)),
    }
}

/// A kept answer, replayed as it was first sent.
pub fn replay(stored: &StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = stored.body.clone().unwrap_or_default();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

/// 202 with `Retry-After` for a wait of `wait`.
fn processing(wait: Duration) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(StatusBody::Processing)).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        retry_after(wait, DEFAULT_MAX_RETRY_AFTER),
    );
    response
}

/// `duration` in whole milliseconds, as the documents carry it.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
