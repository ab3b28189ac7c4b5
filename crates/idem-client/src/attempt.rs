//! One logical attempt: the request, its key, and the retry loop.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use reqwest::Url;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::RetryPolicy;

/// Why a call produced no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL or path does not make a URL.
    #[error("invalid URL {0}")]
    InvalidUrl(String),
    /// A header name or value is not valid HTTP.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// The JSON body could not be serialised.
    #[error("cannot serialise the JSON body: {0}")]
    Body(#[from] serde_json::Error),
    /// Every attempt failed before an answer came back; the last error is kept. The request
    /// may have executed once: retry later with the same key ([`ClientError::key`]).
    #[error("no answer after {attempts} attempts with idempotency key {key}: {source}")]
    Transport {
        /// The key every attempt carried.
        key: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The idempotency key of the failed attempt, to retry it later, if one was sent.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Transport { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The answer to a logical attempt.
#[derive(Debug, Clone)]
pub struct IdemResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    key: String,
    attempts: u32,
}

impl IdemResponse {
    /// The status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    #[must_use]
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// The body is not JSON of that shape.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Whether the server replayed a stored answer (`X-Idempotent-Replayed: true`): the
    /// operation had already executed, for this key, before this answer.
    #[must_use]
    pub fn replayed(&self) -> bool {
        is_replay(&self.headers)
    }

    /// The idempotency key this attempt carried.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How many requests were sent (1 when the first one was answered).
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The `code` member of a problem+json (or `{"error":{"code"}}`) error body, if any.
    #[must_use]
    pub fn error_code(&self) -> Option<String> {
        let document: serde_json::Value = self.json().ok()?;
        document
            .get("code")
            .or_else(|| document.get("error")?.get("code"))?
            .as_str()
            .map(str::to_owned)
    }

    /// What idem advises after an error: `same_key` (this client retried already, up to its
    /// budget), `new_key` (check what happened, then send a new request with a new key) or
    /// `never` (fix the request); `None` for answers that are not idem's errors.
    #[must_use]
    pub fn retry_advice(&self) -> Option<String> {
        if self.status.is_success() {
            return None;
        }
        retry_advice(&self.body)
    }
}

fn is_replay(headers: &HeaderMap) -> bool {
    headers
        .get("x-idempotent-replayed")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// One logical attempt, being built. Send it with [`Attempt::send`].
#[derive(Debug)]
pub struct Attempt {
    http: reqwest::Client,
    url: Result<Url, String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    key: String,
    retry: RetryPolicy,
}

impl Attempt {
    pub(crate) fn new(
        http: reqwest::Client,
        url: Result<Url, String>,
        method: Method,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            url,
            method,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            key: uuid::Uuid::new_v4().to_string(),
            retry,
        }
    }

    /// Uses `key` instead of a generated UUID v4: to resume a logical attempt that an
    /// earlier process started (keep the key somewhere durable before the first send).
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// The key this attempt will carry.
    #[must_use]
    pub fn idempotency_key(&self) -> &str {
        &self.key
    }

    /// Adds a header. An `Idempotency-Key` header sets the attempt's key (as [`Attempt::key`]).
    ///
    /// # Errors
    /// The name or value is not valid HTTP.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, ClientError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|error| ClientError::InvalidHeader(error.to_string()))?;
        let value = HeaderValue::from_str(value)
            .map_err(|error| ClientError::InvalidHeader(error.to_string()))?;
        if name.as_str() == "idempotency-key" {
            // One key per attempt: an explicit header is the attempt's key, not a second one.
            self.key = value
                .to_str()
                .map(str::to_owned)
                .map_err(|error| ClientError::InvalidHeader(error.to_string()))?;
            return Ok(self);
        }
        self.headers.append(name, value);
        Ok(self)
    }

    /// Sends `value` as a JSON body.
    ///
    /// # Errors
    /// `value` cannot be serialised.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, ClientError> {
        self.body = Bytes::from(serde_json::to_vec(value)?);
        self.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(self)
    }

    /// Sends raw bytes as the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the request, retrying with the same key as [`RetryPolicy`] allows.
    ///
    /// # Errors
    /// No attempt got an answer ([`ClientError::Transport`]), or the URL or a header is
    /// invalid. Every HTTP answer, error statuses included, is an `Ok`.
    pub async fn send(self) -> Result<IdemResponse, ClientError> {
        let url = self.url.clone().map_err(ClientError::InvalidUrl)?;
        let key = HeaderValue::from_str(&self.key)
            .map_err(|error| ClientError::InvalidHeader(error.to_string()))?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let retries_left = attempts <= self.retry.max_retries;
            match self.send_once(&url, &key).await {
                Ok(answer) if retries_left && answer.worth_retrying() => {
                    let wait = self.retry.delay(attempts - 1, retry_after(&answer.headers));
                    tokio::time::sleep(wait).await;
                }
                Ok(answer) => return Ok(answer.into_response(self.key, attempts)),
                // No answer (or one that broke off): the request may have arrived, and the
                // key makes sending it again safe.
                Err(_) if retries_left => {
                    tokio::time::sleep(self.retry.delay(attempts - 1, None)).await;
                }
                Err(source) => {
                    return Err(ClientError::Transport {
                        key: self.key,
                        attempts,
                        source,
                    });
                }
            }
        }
    }

    /// Sends the request once with `key`, and reads the whole answer.
    async fn send_once(&self, url: &Url, key: &HeaderValue) -> Result<HttpAnswer, reqwest::Error> {
        let response = self
            .http
            .request(self.method.clone(), url.clone())
            .headers(self.headers.clone())
            .header("idempotency-key", key.clone())
            .body(self.body.clone())
            .send()
            .await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok(HttpAnswer {
            status,
            headers,
            body,
        })
    }
}

/// One request's whole answer, before it is known whether it is the final one.
struct HttpAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl HttpAnswer {
    /// Whether asking again with the same key may bring another answer. idem's errors say so
    /// themselves (`"retry": "same_key"`); for an answer without that member (the API's
    /// own, or an older idem): a 409 (the first attempt is still executing), a 429 (a rate
    /// limit, which idem passes on with the key released) or a 5xx. A
    /// replayed answer is the stored outcome, and a key of unknown outcome stays so: retrying
    /// only brings either back.
    fn worth_retrying(&self) -> bool {
        if is_replay(&self.headers) {
            return false;
        }
        let advice = if self.status.is_client_error() || self.status.is_server_error() {
            retry_advice(&self.body)
        } else {
            None
        };
        match advice.as_deref() {
            Some(advice) => advice == "same_key",
            None => {
                !is_outcome_unknown(self.status, &self.body)
                    && (self.status == StatusCode::CONFLICT
                        || self.status == StatusCode::TOO_MANY_REQUESTS
                        || self.status.is_server_error())
            }
        }
    }

    fn into_response(self, key: String, attempts: u32) -> IdemResponse {
        IdemResponse {
            status: self.status,
            headers: self.headers,
            body: self.body,
            key,
            attempts,
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by idem and falls back to the
/// backoff).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// The `retry` member of idem's error documents: `same_key`, `new_key` or `never`
/// (problem+json's top level, or `idem serve`'s `error` object). Only a document with a
/// string `code` beside it is idem's: an API's own body that happens to hold `retry` is not.
pub(crate) fn retry_advice(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Advice {
        code: Option<String>,
        retry: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Document {
        code: Option<String>,
        retry: Option<String>,
        error: Option<Advice>,
    }
    let document: Document = serde_json::from_slice(body).ok()?;
    let top = Advice {
        code: document.code,
        retry: document.retry,
    };
    [Some(top), document.error]
        .into_iter()
        .flatten()
        .find(|advice| advice.code.is_some())
        .and_then(|advice| advice.retry)
}

/// idem's 409 `outcome_unknown` (layer, proxy) or `OUTCOME_UNKNOWN` (`idem serve`): the first
/// attempt's process died mid-way, and the key is never executed again on its own.
fn is_outcome_unknown(status: StatusCode, body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Problem {
        code: Option<String>,
        error: Option<Detail>,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        code: Option<String>,
    }
    if status != StatusCode::CONFLICT {
        return false;
    }
    serde_json::from_slice::<Problem>(body).is_ok_and(|problem| {
        problem.code.as_deref() == Some("outcome_unknown")
            || problem.error.and_then(|detail| detail.code).as_deref() == Some("OUTCOME_UNKNOWN")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_a_date_falls_back_to_the_backoff() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static(value));
            retry_after(&headers)
        };
        assert_eq!(with("3"), Some(Duration::from_secs(3)));
        assert_eq!(with(" 0 "), Some(Duration::ZERO));
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(with("-1"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn idems_retry_member_decides_before_the_status_does() {
        let answer = |status: u16, body: &'static [u8]| HttpAnswer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
        };
        assert!(
            answer(409, br#"{"code":"request_in_progress","retry":"same_key"}"#).worth_retrying()
        );
        assert!(
            answer(
                400,
                br#"{"code":"request_body_unreadable","retry":"same_key"}"#
            )
            .worth_retrying()
        );
        assert!(!answer(503, br#"{"code":"x","retry":"never"}"#).worth_retrying());
        assert!(!answer(409, br#"{"code":"outcome_unknown","retry":"new_key"}"#).worth_retrying());
        assert!(
            answer(
                503,
                br#"{"error":{"code":"STORE_UNAVAILABLE","retry":"same_key"}}"#
            )
            .worth_retrying()
        );
        assert!(
            !answer(
                422,
                br#"{"error":{"code":"IDEMPOTENCY_KEY_MISMATCH","retry":"new_key"}}"#
            )
            .worth_retrying()
        );
        assert!(
            answer(502, b"upstream's own page").worth_retrying(),
            "no advice: by status"
        );
        assert!(
            answer(503, br#"{"retry":"never"}"#).worth_retrying(),
            "a retry member without a code is not idem's advice"
        );
        assert!(!answer(404, b"{}").worth_retrying());
    }

    #[test]
    fn only_idems_own_unknown_outcome_409s_are_final() {
        let layer = br#"{"type":"urn:idem:problem:outcome_unknown","code":"outcome_unknown"}"#;
        let serve = br#"{"error":{"code":"OUTCOME_UNKNOWN","message":"..."}}"#;
        let busy = br#"{"code":"request_in_progress"}"#;
        assert!(is_outcome_unknown(StatusCode::CONFLICT, layer));
        assert!(is_outcome_unknown(StatusCode::CONFLICT, serve));
        assert!(!is_outcome_unknown(StatusCode::CONFLICT, busy));
        assert!(!is_outcome_unknown(StatusCode::CONFLICT, b"not json"));
        assert!(!is_outcome_unknown(StatusCode::GATEWAY_TIMEOUT, layer));
    }
}
