//! [`IdempotencyService`]: what happens to one request.
//!
//! 1. Not a covered method, or no key where none is required: pass through untouched.
//! 2. Parse the key (400), buffer the body up to the limit (413), fingerprint the request.
//! 3. Ask the engine: replay the stored response, 409 while in flight, 422 on mismatch, or
//!    acquire the key and run the inner service once.
//! 4. Store what the inner service answered (status, end-to-end headers, body) and return it.
//!    The lease is renewed while the inner service runs; the inner service runs to completion
//!    even if the client hangs up (unless [`CancelPolicy::Release`] says otherwise). A panic or
//!    an inner error before a response releases the key.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use idem_core::{
    Begin, BeginOptions, Engine, Execution, Fingerprint, Finish, IdempotencyKey, RecordId, Store,
    StoredResponse,
};
use serde_json::{Map, Value};
use tower::Service;
use tracing::Instrument;

use crate::completion::store_response;
use crate::finish::FinishOnDrop;
use crate::layer::{CancelPolicy, Config, StoreFailureMode};
use crate::problem::{ProblemCode, problem};
use crate::response::{ResponseBody, replay_response};
use idem_core::BoxError;

/// The request body the inner service receives: the buffered body of a keyed request, or the
/// untouched body of a request passed through.
pub type InnerBody<B> = Either<Full<Bytes>, B>;

/// The middleware built by [`IdempotencyLayer`](crate::IdempotencyLayer).
pub struct IdempotencyService<S, St> {
    inner: S,
    engine: Engine<St>,
    config: Arc<Config>,
}

impl<S: Clone, St> Clone for IdempotencyService<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            engine: self.engine.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for IdempotencyService<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, St> IdempotencyService<S, St> {
    pub(crate) fn new(inner: S, engine: Engine<St>, config: Arc<Config>) -> Self {
        Self {
            inner,
            engine,
            config,
        }
    }
}

/// What became of a request, for metrics and the tracing span.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Disposition {
    PassedThrough,
    Executed,
    Replayed,
    InFlight,
    OutcomeUnknown,
    Mismatch,
    KeyMissing,
    KeyInvalid,
    BodyTooLarge,
    BodyUnreadable,
    StoreUnavailable,
    FailedOpen,
    NotReplayable,
}

impl Disposition {
    const fn label(self) -> &'static str {
        match self {
            Self::PassedThrough => "passed_through",
            Self::Executed => "executed",
            Self::Replayed => "replayed",
            Self::InFlight => "in_flight",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::Mismatch => "mismatch",
            Self::KeyMissing => "key_missing",
            Self::KeyInvalid => "key_invalid",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyUnreadable => "body_unreadable",
            Self::StoreUnavailable => "store_unavailable",
            Self::FailedOpen => "failed_open",
            Self::NotReplayable => "not_replayable",
        }
    }

    pub(crate) fn record(self) {
        metrics::counter!("idem_requests_total", "outcome" => self.label()).increment(1);
        tracing::Span::current().record("outcome", self.label());
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S, St>
where
    S: Service<Request<InnerBody<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    St: Store,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this request; the fresh clone stays.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let call = Call {
            inner,
            engine: self.engine.clone(),
            config: Arc::clone(&self.config),
            request_body: PhantomData,
        };
        if !call.config.methods.contains(request.method()) {
            return Box::pin(call.pass_through(request));
        }
        let span = tracing::info_span!(
            "idempotency",
            method = %request.method(),
            path = %request.uri().path(),
            outcome = tracing::field::Empty,
        );
        Box::pin(call.handle(request).instrument(span))
    }
}

/// One request's worth of the service.
struct Call<S, St, ReqBody> {
    inner: S,
    engine: Engine<St>,
    config: Arc<Config>,
    request_body: PhantomData<fn(ReqBody)>,
}

impl<S, St, ReqBody, ResBody> Call<S, St, ReqBody>
where
    S: Service<Request<InnerBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    St: Store,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    async fn pass_through(
        mut self,
        request: Request<ReqBody>,
    ) -> Result<Response<ResponseBody>, S::Error> {
        let response = self.inner.call(request.map(Either::Right)).await?;
        Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
    }

    async fn handle(self, request: Request<ReqBody>) -> Result<Response<ResponseBody>, S::Error> {
        let (parts, body) = request.into_parts();
        if (self.config.skip)(&parts) {
            Disposition::PassedThrough.record();
            return self.pass_through(Request::from_parts(parts, body)).await;
        }
        let mut keys = parts.headers.get_all(&self.config.key_header).iter();
        let key = match (keys.next(), keys.next()) {
            (None, _) if (self.config.require_key)(&parts) => {
                return Ok(self.refuse(Disposition::KeyMissing, ProblemCode::KeyMissing, &format!(
                    "this endpoint requires an {} header; send a new UUID v4 per logical operation and reuse it on every retry",
                    self.config.key_header
                )));
            }
            (None, _) => {
                Disposition::PassedThrough.record();
                return self.pass_through(Request::from_parts(parts, body)).await;
            }
            (Some(_), Some(_)) => {
                return Ok(self.refuse(
                    Disposition::KeyInvalid,
                    ProblemCode::KeyInvalid,
                    &format!("send exactly one {} header", self.config.key_header),
                ));
            }
            (Some(value), None) => {
                match IdempotencyKey::parse(value.as_bytes(), self.config.key_policy) {
                    Ok(key) => key,
                    Err(error) => {
                        return Ok(self.refuse(
                            Disposition::KeyInvalid,
                            ProblemCode::KeyInvalid,
                            &error.to_string(),
                        ));
                    }
                }
            }
        };

        let limit = self.config.max_request_body;
        let declared_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared_length.is_some_and(|length| length > limit as u64) {
            return Ok(self.body_too_large());
        }
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() => return Ok(self.body_too_large()),
            Err(error) => {
                return Ok(self.refuse(Disposition::BodyUnreadable, ProblemCode::RequestBodyUnreadable, &format!(
                    "the request body could not be read ({error}); nothing was executed, retry with the same key"
                )));
            }
        };

        let fingerprint = Fingerprint::builder()
            .canonical_json(self.config.canonical_json)
            .method(parts.method.as_str())
            .path_and_query(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()))
            .content_type(
                parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .map(HeaderValue::as_bytes),
            )
            .body(&body)
            .finish();
        let id = RecordId::new(&self.config.scope.scope(&parts), &key);
        let options = BeginOptions {
            ttl: self
                .config
                .ttl_for
                .as_ref()
                .and_then(|ttl_for| ttl_for(&parts))
                .unwrap_or_else(|| self.engine.ttl()),
            on_lapse: self
                .config
                .on_lapse_for
                .as_ref()
                .and_then(|on_lapse_for| on_lapse_for(&parts))
                .unwrap_or(self.config.on_lapse),
        };
        let request = Request::from_parts(parts, Either::Left(Full::new(body)));

        match self.engine.begin_with(id, fingerprint, options).await {
            Ok(Begin::Acquired(execution)) => self.execute(request, execution).await,
            Ok(Begin::Replay(stored)) => Ok(self.replay(&stored)),
            Ok(Begin::InFlight { retry_after }) => Ok(self.in_flight(retry_after)),
            Ok(Begin::OutcomeUnknown) => Ok(self.refuse(Disposition::OutcomeUnknown, ProblemCode::OutcomeUnknown,
                "an earlier request with this idempotency key began executing and did not finish (its process stopped): it may or may not have taken effect. It is not executed again: check the resource, then use a new key")),
            Ok(Begin::Mismatch) => Ok(self.refuse(Disposition::Mismatch, ProblemCode::KeyMismatch,
                "this idempotency key was already used for a different request (method, path, query, content type or body differ); use a new key for a new request")),
            Ok(_) => Ok(self.refuse(Disposition::StoreUnavailable, ProblemCode::StoreUnavailable,
                "the idempotency store gave an answer this version does not know; nothing was executed")),
            Err(error) => match self.config.failure_mode {
                StoreFailureMode::FailClosed => {
                    tracing::error!(%error, "idempotency store unavailable; refusing the request");
                    Ok(self.refuse(Disposition::StoreUnavailable, ProblemCode::StoreUnavailable,
                        "the idempotency store is unavailable; nothing was executed, retry later with the same key"))
                }
                StoreFailureMode::FailOpen => {
                    tracing::warn!(%error, "idempotency store unavailable; executing without idempotency (fail open)");
                    Disposition::FailedOpen.record();
                    let mut inner = self.inner;
                    let response = inner.call(request).await?;
                    Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
                }
            },
        }
    }

    /// Runs the inner service once under `execution` and stores its response.
    async fn execute(
        mut self,
        request: Request<InnerBody<ReqBody>>,
        execution: Execution<St>,
    ) -> Result<Response<ResponseBody>, S::Error> {
        let config = Arc::clone(&self.config);
        let on_cancel = self.config.on_cancel;
        let run = async move {
            // If the inner service panics, or this future is dropped before a response
            // exists, `execution` is dropped unfinished and releases the key.
            let response = match self.inner.call(request).await {
                Ok(response) => response,
                Err(error) => {
                    if let Finish::Retrying(store_error) = execution.release().await {
                        tracing::warn!(%store_error, "releasing the key after an inner error failed; retrying in the background");
                    }
                    return Err(error);
                }
            };
            Ok(store_response(response, execution, &config).await)
        };
        match on_cancel {
            CancelPolicy::Release => run.await,
            CancelPolicy::RunToCompletion => {
                // The execution outlives a client that hangs up: it finishes on the runtime
                // and its response is stored, so the retry gets the replay.
                FinishOnDrop::new(run.instrument(tracing::Span::current())).await
            }
        }
    }

    fn replay(&self, stored: &StoredResponse) -> Response<ResponseBody> {
        let Some(body) = stored.body.clone() else {
            let mut extra = Map::new();
            extra.insert("original_status".into(), Value::from(stored.status));
            return self.refuse_with(Disposition::NotReplayable, ProblemCode::ResponseNotStored,
                "this request was executed, but its response was too large to store; it cannot be replayed and must not be retried with this key", extra);
        };
        Disposition::Replayed.record();
        let mut response = replay_response(stored, body);
        response.headers_mut().insert(
            self.config.replayed_header.clone(),
            HeaderValue::from_static("true"),
        );
        response
    }

    fn in_flight(&self, retry_after: Duration) -> Response<ResponseBody> {
        let seconds = retry_after
            .min(self.config.max_retry_after)
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64;
        let mut response = self.refuse(Disposition::InFlight, ProblemCode::RequestInProgress,
            "a request with this idempotency key is still being processed; retry after the Retry-After delay with the same key");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }

    fn body_too_large(&self) -> Response<ResponseBody> {
        self.refuse(
            Disposition::BodyTooLarge,
            ProblemCode::RequestBodyTooLarge,
            &format!(
                "the request body exceeds {} bytes; nothing was executed",
                self.config.max_request_body
            ),
        )
    }

    fn refuse(
        &self,
        outcome: Disposition,
        code: ProblemCode,
        detail: &str,
    ) -> Response<ResponseBody> {
        self.refuse_with(outcome, code, detail, Map::new())
    }

    fn refuse_with(
        &self,
        outcome: Disposition,
        code: ProblemCode,
        detail: &str,
        extra: Map<String, Value>,
    ) -> Response<ResponseBody> {
        outcome.record();
        problem(code, detail, extra).map(|body| body.map_err(|never| match never {}).boxed_unsync())
    }
}
