//! [`Refusal`]: every answer the layer gives instead of running the handler or replaying,
//! as one value that renders itself as problem+json and records itself in the metrics.

use std::time::Duration;

use http::{HeaderValue, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use crate::body::ResponseBody;
use crate::headers::retry_after;
use crate::metrics::Disposition;
use crate::problem::{ProblemCode, problem_with_status};

/// An answer that is not the handler's: its code, what to do about it, and how it counts.
#[derive(Debug)]
pub(crate) struct Refusal {
    disposition: Disposition,
    code: ProblemCode,
    detail: String,
    members: Map<String, Value>,
    retry_after: Option<HeaderValue>,
    status: Option<http::StatusCode>,
}

impl Refusal {
    pub(crate) fn new(
        disposition: Disposition,
        code: ProblemCode,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            disposition,
            code,
            detail: detail.into(),
            members: Map::new(),
            retry_after: None,
            status: None,
        }
    }

    /// An extra member of the problem document.
    pub(crate) fn member(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.members.insert(name.to_owned(), value.into());
        self
    }

    /// Answers with `status` instead of the code's own.
    pub(crate) fn status(mut self, status: http::StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// A `Retry-After` for a wait of `wait`, capped at `cap`.
    pub(crate) fn retry_after(mut self, wait: Duration, cap: Duration) -> Self {
        self.retry_after = Some(retry_after(wait, cap));
        self
    }

    /// The problem+json response; records the disposition.
    pub(crate) fn into_response(self) -> http::Response<ResponseBody> {
        self.disposition.record();
        let status = self.status.unwrap_or_else(|| self.code.status());
        let mut response = problem_with_status(self.code, status, &self.detail, self.members)
            .map(|body| body.map_err(|never| match never {}).boxed_unsync());
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, seconds);
        }
        response
    }
}
