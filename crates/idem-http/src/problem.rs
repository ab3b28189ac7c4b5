//! Error responses: RFC 9457 `application/problem+json` documents, each with a stable
//! machine-readable `code` member that clients can match on.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Map, Value, json};

/// The media type of every error this layer answers with.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every error the layer can answer with. The `code` strings are a stable API: clients match
/// on them, so they never change once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemCode {
    /// 400: the route requires an `Idempotency-Key` and the request has none.
    KeyMissing,
    /// 400: the `Idempotency-Key` is malformed, too long, repeated, or not a UUID v4 where
    /// one is required.
    KeyInvalid,
    /// 422: the key was already used for a different request (method, path, query, content
    /// type or body differ).
    KeyMismatch,
    /// 409: a request with this key is still being processed; retry after `Retry-After`.
    RequestInProgress,
    /// 409: an earlier request with this key began executing and its process died (or lost
    /// the store) before it finished: the operation may or may not have happened. Never
    /// executed again on its own: check the resource, then use a new key (or an operator
    /// resolves the key).
    OutcomeUnknown,
    /// 413: the request body exceeds the layer's limit; nothing was executed.
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
}

impl ProblemCode {
    /// Every code, for documentation and tests.
    pub const ALL: [Self; 11] = [
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
    ];

    /// The machine-readable `code` member.
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
        }
    }

    /// The HTTP status answered with.
    #[must_use]
    pub const fn status(self) -> StatusCode {
        match self {
            Self::KeyMissing | Self::KeyInvalid | Self::RequestBodyUnreadable => {
                StatusCode::BAD_REQUEST
            }
            Self::KeyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RequestInProgress | Self::OutcomeUnknown => StatusCode::CONFLICT,
            Self::RequestBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::ResponseNotStored => StatusCode::GONE,
            Self::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            Self::UpstreamOutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
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
        }
    }

    /// The problem document for this code, with a `detail` saying what to do.
    #[must_use]
    pub fn response(self, detail: &str) -> Response<Full<Bytes>> {
        problem(self, detail, Map::new())
    }

    /// The problem `type` URI: a URN, since the codes are defined here and not on a web page.
    #[must_use]
    pub fn type_uri(self) -> String {
        format!("urn:idem:problem:{}", self.code())
    }
}

/// Builds the problem document for `code`, with a `detail` saying what to do and any extra
/// members.
pub(crate) fn problem(
    code: ProblemCode,
    detail: &str,
    extra: Map<String, Value>,
) -> Response<Full<Bytes>> {
    let mut document = json!({
        "type": code.type_uri(),
        "title": code.title(),
        "status": code.status().as_u16(),
        "code": code.code(),
        "detail": detail,
    });
    if let Value::Object(members) = &mut document {
        members.extend(extra);
    }
    let mut response = Response::new(Full::new(Bytes::from(document.to_string())));
    *response.status_mut() = code.status();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
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
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let document: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(document["code"], code.code());
            assert_eq!(document["status"], code.status().as_u16());
            assert_eq!(document["type"], code.type_uri());
            assert_eq!(document["detail"], "what to do");
            assert!(document["title"].is_string());
        }
    }
}
