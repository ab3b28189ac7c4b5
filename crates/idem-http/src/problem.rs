//! Error codes and error responses. [`ProblemCode`] is the one vocabulary of errors: the layer
//! and the gateway render it as RFC 9457 `application/problem+json` documents with a
//! snake_case `code` member ([`ProblemCode::code`]); the coordination service (`idem serve`)
//! renders the same codes in its `{"error":{"code","message"}}` documents, in SCREAMING_CASE
//! ([`ProblemCode::coordination_code`]).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Map, Value, json};

/// The media type of every error this layer answers with.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where each problem `type` points unless [`set_problem_base`] says otherwise: the error
/// reference as this crate's documentation on docs.rs carries it ([`crate::errors`], the
/// text of `docs/guides/errors.md`), one anchor per code (`…#store_unavailable`), for the
/// version that answered.
pub const DEFAULT_PROBLEM_BASE: &str = concat!(
    "https://docs.rs/idem-http/",
    env!("CARGO_PKG_VERSION"),
    "/idem_http/errors/index.html"
);

/// The documentation base of this process's problem types. One per process: where clients are
/// sent to read about an error is a property of the deployment (the docs it hosts), not of a
/// route.
static PROBLEM_BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Points every problem `type` (and its `Link: rel="describedby"`) at `base#code` instead of
/// [`DEFAULT_PROBLEM_BASE`]: the error reference as your deployment publishes it. Only the
/// first call counts (it returns whether it was that one); errors answered before it point at
/// the default.
pub fn set_problem_base(base: impl Into<String>) -> bool {
    PROBLEM_BASE.set(base.into()).is_ok()
}

fn problem_base() -> &'static str {
    PROBLEM_BASE
        .get()
        .map_or(DEFAULT_PROBLEM_BASE, String::as_str)
}

/// What a client program should do after an error, so that it does not have to guess from
/// the status code: the `retry` member of every error document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryAdvice {
    /// Send the same request again with the same key, after `Retry-After` when there is one:
    /// nothing happened yet, or it is still happening (`same_key`).
    SameKey,
    /// Never send this key again: its answer is final (kept for it, or of unknown outcome),
    /// or it belongs to another request. Check what happened (fix the request if it was
    /// refused), then send a new request with a new key (`new_key`).
    NewKey,
    /// Do not send this request again as it is: it is malformed, too large or not allowed,
    /// and nothing was kept for its key. Fix it first (`never`).
    Never,
}

impl RetryAdvice {
    /// The member's value: `same_key`, `new_key` or `never`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SameKey => "same_key",
            Self::NewKey => "new_key",
            Self::Never => "never",
        }
    }
}

/// Every error idem answers with, on every surface. Both renderings of a code (`code` and
/// `coordination_code`) are a stable API: clients match on them, so they never change once
/// released. The first group is the layer's and the gateway's; the second the coordination
/// service's own; the codes of both surfaces (the key, the body limit, the store, unknown
/// outcomes) are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemCode {
    /// 400: the route requires an `Idempotency-Key` and the request has none.
    KeyMissing,
    /// 400: the `Idempotency-Key` is malformed, too long, repeated, or not a UUID v4 where
    /// one is required.
    KeyInvalid,
    /// 422: the key was already used for a different request (method, path, query, content
    /// type or body differ; for the coordination service: operation or payload).
    KeyMismatch,
    /// 409: a request with this key is still being processed; retry after `Retry-After`.
    /// (The coordination service answers `202 {"status":"processing"}` instead: not an error.)
    RequestInProgress,
    /// 409: an earlier request with this key began executing and its process died (or lost
    /// the store) before it finished: the operation may or may not have happened. Never
    /// executed again on its own: check the resource, then use a new key (or an operator
    /// resolves the key).
    OutcomeUnknown,
    /// 413: the request body exceeds the limit; nothing was executed.
    RequestBodyTooLarge,
    /// 400: the request body could not be read (the client aborted the upload).
    RequestBodyUnreadable,
    /// 503: the idempotency store did not answer; nothing was executed.
    StoreUnavailable,
    /// 410: the request was executed, but its response was too large to store, so it cannot
    /// be replayed.
    ResponseNotStored,
    /// 502: a gateway could not deliver the request upstream (connection refused, no route);
    /// nothing was executed and the key was released, so a retry executes.
    UpstreamUnreachable,
    /// 504: a gateway delivered the request but got no answer in time (or the connection
    /// broke): the upstream may or may not have executed it. Stored and replayed, so it is
    /// never executed twice; check the outcome upstream, then use a new key.
    UpstreamOutcomeUnknown,
    /// 400: the body is not JSON (or could not be read).
    InvalidJson,
    /// 400: the JSON lacks a field, has a field of the wrong type, or has an unknown field.
    InvalidRequest,
    /// 404: no operation of that name is registered.
    UnknownOperation,
    /// 400: the lease token is not a token.
    LeaseTokenInvalid,
    /// 409: the lease was lost (taken over after it lapsed, completed, or released).
    LeaseLost,
    /// 404: no record for this key, or no such endpoint.
    NotFound,
    /// 405: the endpoint exists but not with this method.
    MethodNotAllowed,
    /// 502: the operation could not be reached; nothing was executed and the key was
    /// released, so a retry executes.
    OperationUnreachable,
    /// 502: the operation answered with an error status; kept for replay.
    OperationFailed,
    /// 502: the operation answered something that is not JSON; kept for replay.
    OperationInvalidResponse,
    /// 504: the operation did not answer in time; it may have executed. Kept for replay.
    OperationOutcomeUnknown,
    /// 500: anything unexpected; details are in the server's log only.
    Internal,
    /// 400: keys are scoped by a principal (a credential header or a session cookie) and
    /// this keyed request carries none; nothing was executed.
    PrincipalMissing,
    /// 408: the request body did not arrive within the body read timeout; nothing was
    /// executed, retry with the same key.
    RequestBodyTimeout,
    /// 400: the request path has no single meaning (an encoded `/` or `\`, a raw `\`, an
    /// encoded NUL, a broken percent-encoding); nothing was forwarded.
    PathAmbiguous,
    /// 503: the idempotency store holds as many records as it may; nothing was executed,
    /// retry later with the same key.
    StoreFull,
    /// The operation refused the request with a 4xx of its own (a card declined, a payload
    /// it rejects): its deterministic answer, kept for the key and returned with the
    /// operation's status and body. (422 is only this code's nominal status; the answer
    /// carries the operation's.)
    OperationRejected,
}

impl ProblemCode {
    /// Every code, for documentation and tests.
    pub const ALL: [Self; 28] = [
        Self::KeyMissing,
        Self::KeyInvalid,
        Self::KeyMismatch,
        Self::RequestInProgress,
        Self::OutcomeUnknown,
        Self::RequestBodyTooLarge,
        Self::RequestBodyUnreadable,
        Self::StoreUnavailable,
        Self::ResponseNotStored,
        Self::UpstreamUnreachable,
        Self::UpstreamOutcomeUnknown,
        Self::InvalidJson,
        Self::InvalidRequest,
        Self::UnknownOperation,
        Self::LeaseTokenInvalid,
        Self::LeaseLost,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::OperationUnreachable,
        Self::OperationFailed,
        Self::OperationInvalidResponse,
        Self::OperationOutcomeUnknown,
        Self::Internal,
        Self::PrincipalMissing,
        Self::RequestBodyTimeout,
        Self::PathAmbiguous,
        Self::StoreFull,
        Self::OperationRejected,
    ];

    /// The machine-readable `code` member of a problem+json document (snake_case).
    #[must_use]
    pub const fn code(self) -> &'static str {
        match self {
            Self::KeyMissing => "idempotency_key_missing",
            Self::KeyInvalid => "idempotency_key_invalid",
            Self::KeyMismatch => "idempotency_key_mismatch",
            Self::RequestInProgress => "request_in_progress",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::RequestBodyTooLarge => "request_body_too_large",
            Self::RequestBodyUnreadable => "request_body_unreadable",
            Self::StoreUnavailable => "store_unavailable",
            Self::ResponseNotStored => "response_not_stored",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamOutcomeUnknown => "upstream_outcome_unknown",
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::UnknownOperation => "unknown_operation",
            Self::LeaseTokenInvalid => "lease_token_invalid",
            Self::LeaseLost => "lease_lost",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::OperationUnreachable => "operation_unreachable",
            Self::OperationFailed => "operation_failed",
            Self::OperationInvalidResponse => "operation_invalid_response",
            Self::OperationOutcomeUnknown => "operation_outcome_unknown",
            Self::Internal => "internal",
            Self::PrincipalMissing => "principal_missing",
            Self::RequestBodyTimeout => "request_body_timeout",
            Self::PathAmbiguous => "path_ambiguous",
            Self::StoreFull => "store_full",
            Self::OperationRejected => "operation_rejected",
        }
    }

    /// The `code` member of the coordination service's `{"error":{"code","message"}}`
    /// documents (SCREAMING_CASE): [`code`](Self::code) in capitals, except that a body over
    /// the limit is `PAYLOAD_TOO_LARGE` there, as the service's contract fixed it.
    #[must_use]
    pub const fn coordination_code(self) -> &'static str {
        match self {
            Self::KeyMissing => "IDEMPOTENCY_KEY_MISSING",
            Self::KeyInvalid => "IDEMPOTENCY_KEY_INVALID",
            Self::KeyMismatch => "IDEMPOTENCY_KEY_MISMATCH",
            Self::RequestInProgress => "REQUEST_IN_PROGRESS",
            Self::OutcomeUnknown => "OUTCOME_UNKNOWN",
            Self::RequestBodyTooLarge => "PAYLOAD_TOO_LARGE",
            Self::RequestBodyUnreadable => "REQUEST_BODY_UNREADABLE",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::ResponseNotStored => "RESPONSE_NOT_STORED",
            Self::UpstreamUnreachable => "UPSTREAM_UNREACHABLE",
            Self::UpstreamOutcomeUnknown => "UPSTREAM_OUTCOME_UNKNOWN",
            Self::InvalidJson => "INVALID_JSON",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::UnknownOperation => "UNKNOWN_OPERATION",
            Self::LeaseTokenInvalid => "LEASE_TOKEN_INVALID",
            Self::LeaseLost => "LEASE_LOST",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::OperationUnreachable => "OPERATION_UNREACHABLE",
            Self::OperationFailed => "OPERATION_FAILED",
            Self::OperationInvalidResponse => "OPERATION_INVALID_RESPONSE",
            Self::OperationOutcomeUnknown => "OPERATION_OUTCOME_UNKNOWN",
            Self::Internal => "INTERNAL",
            Self::PrincipalMissing => "PRINCIPAL_MISSING",
            Self::RequestBodyTimeout => "REQUEST_BODY_TIMEOUT",
            Self::PathAmbiguous => "PATH_AMBIGUOUS",
            Self::StoreFull => "STORE_FULL",
            Self::OperationRejected => "OPERATION_REJECTED",
        }
    }

    /// The HTTP status answered with, the same on every surface.
    #[must_use]
    pub const fn status(self) -> StatusCode {
        match self {
            Self::KeyMissing
            | Self::KeyInvalid
            | Self::RequestBodyUnreadable
            | Self::InvalidJson
            | Self::InvalidRequest
            | Self::LeaseTokenInvalid
            | Self::PrincipalMissing
            | Self::PathAmbiguous => StatusCode::BAD_REQUEST,
            Self::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnknownOperation | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::KeyMismatch | Self::OperationRejected => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RequestInProgress | Self::OutcomeUnknown | Self::LeaseLost => {
                StatusCode::CONFLICT
            }
            Self::RequestBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::StoreUnavailable | Self::StoreFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::ResponseNotStored => StatusCode::GONE,
            Self::UpstreamUnreachable
            | Self::OperationUnreachable
            | Self::OperationFailed
            | Self::OperationInvalidResponse => StatusCode::BAD_GATEWAY,
            Self::UpstreamOutcomeUnknown | Self::OperationOutcomeUnknown => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The short, human-readable `title` member.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::KeyMissing => "Idempotency-Key header required",
            Self::KeyInvalid => "Invalid Idempotency-Key",
            Self::KeyMismatch => "Idempotency-Key reused for a different request",
            Self::RequestInProgress => "A request with this Idempotency-Key is in progress",
            Self::OutcomeUnknown => {
                "Outcome of an earlier request with this Idempotency-Key unknown"
            }
            Self::RequestBodyTooLarge => "Request body too large",
            Self::RequestBodyUnreadable => "Request body unreadable",
            Self::StoreUnavailable => "Idempotency store unavailable",
            Self::ResponseNotStored => "Response not available for replay",
            Self::UpstreamUnreachable => "Upstream unreachable",
            Self::UpstreamOutcomeUnknown => "Upstream outcome unknown",
            Self::InvalidJson => "Request body is not JSON, or has no single meaning",
            Self::InvalidRequest => "Invalid request document",
            Self::UnknownOperation => "Unknown operation",
            Self::LeaseTokenInvalid => "Invalid lease token",
            Self::LeaseLost => "Lease lost",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::OperationUnreachable => "Operation unreachable",
            Self::OperationFailed => "Operation failed",
            Self::OperationInvalidResponse => "Operation answered something that is not JSON",
            Self::OperationOutcomeUnknown => "Operation outcome unknown",
            Self::Internal => "Internal error",
            Self::PrincipalMissing => "Keyed request without a principal",
            Self::RequestBodyTimeout => "Request body not received in time",
            Self::PathAmbiguous => "Ambiguous request path",
            Self::StoreFull => "Idempotency store full",
            Self::OperationRejected => "Operation rejected the request",
        }
    }

    /// The problem document for this code, with a `detail` saying what to do.
    #[must_use]
    pub fn response(self, detail: &str) -> Response<Full<Bytes>> {
        problem(self, detail, Map::new())
    }

    /// The problem `type` URI: the code's entry in the error reference
    /// ([`set_problem_base`]).
    #[must_use]
    pub fn type_uri(self) -> String {
        format!("{}#{}", problem_base(), self.code())
    }

    /// What the client should do next.
    #[must_use]
    pub const fn retry(self) -> RetryAdvice {
        match self {
            Self::RequestInProgress
            | Self::RequestBodyUnreadable
            | Self::RequestBodyTimeout
            | Self::StoreUnavailable
            | Self::StoreFull
            | Self::UpstreamUnreachable
            | Self::OperationUnreachable
            | Self::Internal => RetryAdvice::SameKey,
            Self::KeyMismatch
            | Self::OutcomeUnknown
            | Self::UpstreamOutcomeUnknown
            | Self::OperationOutcomeUnknown
            | Self::ResponseNotStored
            | Self::LeaseLost
            | Self::OperationFailed
            | Self::OperationInvalidResponse
            | Self::OperationRejected => RetryAdvice::NewKey,
            Self::KeyMissing
            | Self::KeyInvalid
            | Self::RequestBodyTooLarge
            | Self::InvalidJson
            | Self::InvalidRequest
            | Self::UnknownOperation
            | Self::LeaseTokenInvalid
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::PrincipalMissing
            | Self::PathAmbiguous => RetryAdvice::Never,
        }
    }
}

/// Builds the problem document for `code`, with a `detail` saying what to do and any extra
/// members.
pub(crate) fn problem(
    code: ProblemCode,
    detail: &str,
    extra: Map<String, Value>,
) -> Response<Full<Bytes>> {
    problem_with_status(code, code.status(), detail, extra)
}

/// [`problem`] answered with `status` rather than the code's own (a configurable mismatch
/// status).
pub(crate) fn problem_with_status(
    code: ProblemCode,
    status: StatusCode,
    detail: &str,
    extra: Map<String, Value>,
) -> Response<Full<Bytes>> {
    let type_uri = code.type_uri();
    // RFC 9457 §3.1.5: `instance` names this occurrence; a URN, so it cannot be mistaken for
    // a resource a client could fetch.
    let instance = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let mut document = json!({
        "type": type_uri,
        "title": code.title(),
        "status": status.as_u16(),
        "code": code.code(),
        "detail": detail,
        "instance": instance,
        "retry": code.retry().as_str(),
    });
    if let Value::Object(members) = &mut document {
        members.extend(extra);
    }
    // At info, so that the occurrence a client quotes can be found in a default log.
    tracing::info!(code = code.code(), status = status.as_u16(), %instance, "answered with a problem");
    let mut response = Response::new(Full::new(Bytes::from(document.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    // The draft's section on error responses: point at the documentation of the error.
    if let Ok(link) = HeaderValue::from_str(&format!("<{type_uri}>; rel=\"describedby\"")) {
        headers.insert(header::LINK, link);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problem_document_has_the_rfc_9457_members_and_a_code() {
        for code in ProblemCode::ALL {
            let response = problem(code, "what to do", Map::new());
            assert_eq!(response.status(), code.status());
            assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
            assert_eq!(
                response.headers()[header::LINK],
                format!("<{}>; rel=\"describedby\"", code.type_uri())
            );
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let document: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(document["code"], code.code());
            assert_eq!(document["status"], code.status().as_u16());
            assert_eq!(document["type"], code.type_uri());
            assert!(
                code.type_uri()
                    .ends_with(&format!("/idem_http/errors/index.html#{}", code.code()))
            );
            assert_eq!(document["detail"], "what to do");
            assert!(document["title"].is_string());
            assert!(
                document["instance"]
                    .as_str()
                    .unwrap()
                    .starts_with("urn:uuid:")
            );
            assert_eq!(document["retry"], code.retry().as_str());
        }
    }

    /// Each `type` URL lands on its code's entry in the error reference.
    #[test]
    fn the_error_reference_has_an_entry_for_every_code() {
        let reference = include_str!("../errors.md");
        for code in ProblemCode::ALL {
            let heading = format!("### `{}`", code.code());
            assert!(
                reference.lines().any(|line| line.trim() == heading),
                "docs/guides/errors.md has no heading {heading}"
            );
        }
    }

    #[test]
    fn every_code_is_listed_once_and_renders_uniquely_on_both_surfaces() {
        let mut codes: Vec<&str> = ProblemCode::ALL.iter().map(|c| c.code()).collect();
        let mut contract: Vec<&str> = ProblemCode::ALL
            .iter()
            .map(|c| c.coordination_code())
            .collect();
        codes.sort_unstable();
        codes.dedup();
        contract.sort_unstable();
        contract.dedup();
        assert_eq!(
            codes.len(),
            ProblemCode::ALL.len(),
            "a code is listed twice"
        );
        assert_eq!(contract.len(), ProblemCode::ALL.len());
    }

    #[test]
    fn the_coordination_code_is_the_code_in_capitals_but_for_payload_too_large() {
        for code in ProblemCode::ALL {
            let expected = match code {
                ProblemCode::RequestBodyTooLarge => "PAYLOAD_TOO_LARGE".to_owned(),
                _ => code.code().to_uppercase(),
            };
            assert_eq!(code.coordination_code(), expected, "{code:?}");
        }
    }
}
