//! Parsing at the edge: the coordination API's extractors. Each reads its part of the request
//! once, into typed values, and refuses with the contract's error ([`ApiError`]), so that the
//! handlers only ever see a well-formed request.
//!
//! - [`KeyedOperation`]: begin and execute: the `Idempotency-Key` header and the
//!   `{operation, payload}` body, with the record and fingerprint they make.
//! - [`RecordPath`]: the record named by the `{key}` path segment.
//! - [`JsonBody`]: any other JSON body; [`LeaseTokenQuery`]: `?lease_token=` on a release.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idem_core::{Fingerprint, IdempotencyKey, KeyPolicy, LeaseToken, RecordId};
use idem_http::IDEMPOTENCY_KEY;
use idem_http::ProblemCode;
use idem_http::headers::idempotency_key;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::AppState;
use super::api::{OperationRequest, ReleaseQuery};
use super::error::ApiError;

/// The largest request body accepted: payloads are operation inputs, not uploads.
pub const MAX_BODY: usize = 1024 * 1024;

/// A begin or execute request: its key, the operation and payload it names, and what they
/// make: the record in the store and the fingerprint that tells one request from another.
#[derive(Debug)]
pub struct KeyedOperation {
    /// The `Idempotency-Key` header.
    pub key: IdempotencyKey,
    /// The key within the caller's scope.
    pub id: RecordId,
    /// A non-empty operation name (registered or not: execute checks).
    pub operation: String,
    /// The payload, as sent.
    pub payload: Box<RawValue>,
    /// The operation and the canonical JSON of the payload.
    pub fingerprint: Fingerprint,
}

impl FromRequest<AppState> for KeyedOperation {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let key = header_key(&parts)?;
        let OperationRequest { operation, payload } =
            parse_json(&read_body(body, state.body_read_timeout).await?)?;
        if operation.is_empty() {
            return Err(ApiError::new(
                ProblemCode::InvalidRequest,
                "`operation` must not be empty",
            ));
        }
        // The payload is forwarded as sent (a `RawValue`: numbers keep every digit); its
        // canonical form, exact numbers included, is what identifies it.
        let fingerprint = Fingerprint::builder()
            .canonical_json(true)
            .operation(&operation)
            .try_body(payload.get().as_bytes())
            .map_err(|error| {
                ApiError::new(
                    ProblemCode::InvalidJson,
                    format!("`payload` has no single meaning: {error}"),
                )
            })?
            .finish();
        Ok(Self {
            id: RecordId::new(&scope(state, &parts)?, &key),
            key,
            operation,
            payload,
            fingerprint,
        })
    }
}

/// The record named by the `{key}` path segment, in the caller's scope.
#[derive(Debug)]
pub struct RecordPath(pub RecordId);

impl FromRequestParts<AppState> for RecordPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(key) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::new(
                    ProblemCode::KeyInvalid,
                    format!("the key in the path is invalid: {rejection}"),
                )
            })?;
        let key = IdempotencyKey::parse(key.as_bytes(), KeyPolicy::Any)
            .map_err(|error| ApiError::new(ProblemCode::KeyInvalid, error.to_string()))?;
        Ok(Self(RecordId::new(&scope(state, parts)?, &key)))
    }
}

/// The caller's scope; refused when what it is read from was sent more than once (servers
/// disagree on which one counts, so idem does not pick one).
fn scope(state: &AppState, parts: &Parts) -> Result<idem_core::Scope, ApiError> {
    if let Some(reason) = state.scope.ambiguity(parts) {
        return Err(ApiError::new(
            ProblemCode::PrincipalMissing,
            format!("keys are scoped by their caller, and {reason}: which one counts is ambiguous"),
        ));
    }
    Ok(state.scope.scope(parts))
}

/// A JSON body, read within [`MAX_BODY`] and parsed once into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        parse_json(&read_body(request.into_body(), state.body_read_timeout).await?).map(Self)
    }
}

/// The lease token of `?lease_token=…`.
#[derive(Debug)]
pub struct LeaseTokenQuery(pub LeaseToken);

impl<S: Send + Sync> FromRequestParts<S> for LeaseTokenQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Ok(Query(query)) = Query::<ReleaseQuery>::from_request_parts(parts, state).await else {
            return Err(ApiError::new(
                ProblemCode::LeaseTokenInvalid,
                "pass ?lease_token= with the token from the begin answer",
            ));
        };
        lease_token(&query.lease_token).map(Self)
    }
}

/// A lease token as the begin answer gave it: a decimal 64-bit integer.
pub fn lease_token(text: &str) -> Result<LeaseToken, ApiError> {
    // Only the form the begin answer gives: `parse` alone would also take `+42` and `0042`,
    // so that many strings named one token, and the document's format would not hold.
    let canonical = text.bytes().all(|byte| byte.is_ascii_digit())
        && !(text.len() > 1 && text.starts_with('0'));
    text.parse::<u64>()
        .ok()
        .filter(|_| canonical)
        .map(LeaseToken::from_u64)
        .ok_or_else(|| {
            ApiError::new(
                ProblemCode::LeaseTokenInvalid,
                "lease_token must be the decimal token from the begin answer",
            )
        })
}

fn header_key(parts: &Parts) -> Result<IdempotencyKey, ApiError> {
    match idempotency_key(&parts.headers, &IDEMPOTENCY_KEY, KeyPolicy::Any) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(ApiError::new(
            ProblemCode::KeyMissing,
            "send an Idempotency-Key header: a new UUID v4 per logical operation, reused on every retry",
        )),
        Err(error) => Err(ApiError::new(ProblemCode::KeyInvalid, error.to_string())),
    }
}

/// Reads a body within [`MAX_BODY`] and `timeout`: a client trickling its body holds a task
/// for no longer than that.
async fn read_body(body: Body, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    let Ok(read) = tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect()).await
    else {
        return Err(ApiError::new(
            ProblemCode::RequestBodyTimeout,
            format!("the body did not arrive within {timeout:?}; nothing was executed"),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::new(
            ProblemCode::RequestBodyTooLarge,
            format!("the body exceeds {MAX_BODY} bytes"),
        )),
        // The client broke off its upload: nothing was read, so nothing was executed, and the
        // same request may be sent again as it is.
        Err(error) => Err(ApiError::new(
            ProblemCode::RequestBodyUnreadable,
            format!(
                "the body could not be read ({error}); nothing was executed, retry with the same key"
            ),
        )),
    }
}

/// Parses `bytes` once into `T`. A body that is not JSON is `INVALID_JSON`; JSON that is not
/// a `T` is `INVALID_REQUEST`, naming the member at fault by its path.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| refusal(bytes, &error))?;
    deserializer.end().map_err(|error| not_json(&error))?;
    Ok(parsed)
}

fn refusal(bytes: &[u8], error: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = error.inner();
    // A wrong member can be met before a syntax error further on: a body that is not JSON at
    // all is always `INVALID_JSON`, whatever came first. Checked on this error path only.
    if inner.classify() != Category::Data || serde_json::from_slice::<IgnoredAny>(bytes).is_err() {
        return not_json(inner);
    }
    let message = match error.path().to_string().as_str() {
        "." => format!("invalid request: {inner}"),
        path => format!("invalid request: `{path}`: {inner}"),
    };
    ApiError::new(ProblemCode::InvalidRequest, message)
}

fn not_json(error: &serde_json::Error) -> ApiError {
    ApiError::new(
        ProblemCode::InvalidJson,
        format!("the body is not valid JSON: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordination::api::CompleteRequest;

    fn code_of(error: &ApiError) -> String {
        let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap_or_default();
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn message_of(error: &ApiError) -> String {
        let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap_or_default();
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn the_payload_is_kept_as_sent() {
        let body = br#"{"operation":"a.b","payload":{ "z": 1, "a": [true] }}"#;
        let request: OperationRequest = parse_json(body).expect("a valid request");
        assert_eq!(request.operation, "a.b");
        assert_eq!(request.payload.get(), r#"{ "z": 1, "a": [true] }"#);
    }

    #[test]
    fn a_member_of_the_wrong_type_is_named_by_its_path() {
        let error = parse_json::<CompleteRequest>(br#"{"lease_token":7,"result":{}}"#)
            .expect_err("a number is not a token");
        assert_eq!(code_of(&error), "INVALID_REQUEST");
        assert!(
            message_of(&error).starts_with("invalid request: `lease_token`: invalid type"),
            "{}",
            message_of(&error)
        );
    }

    #[test]
    fn a_wrong_member_before_a_syntax_error_is_still_invalid_json() {
        let error =
            parse_json::<OperationRequest>(br#"{"extra":1, not json"#).expect_err("not JSON");
        assert_eq!(code_of(&error), "INVALID_JSON");
        let error = parse_json::<OperationRequest>(br#"{"operation":"x","payload":{}} 1"#)
            .expect_err("trailing data");
        assert_eq!(code_of(&error), "INVALID_JSON");
    }

    #[test]
    fn a_missing_or_unknown_member_is_an_invalid_request() {
        for body in [
            r#"{"payload":{}}"#,
            r#"{"operation":"x"}"#,
            r#"{"operation":"x","payload":{},"extra":1}"#,
        ] {
            let error = parse_json::<OperationRequest>(body.as_bytes()).expect_err(body);
            assert_eq!(code_of(&error), "INVALID_REQUEST", "{body}");
        }
    }
}
