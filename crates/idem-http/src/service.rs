//! [`IdempotencyService`]: what happens to one request.
//!
//! 1. Not a covered method, or no key where none is required: pass through untouched.
//! 2. Parse the key (400), buffer the body up to the limit (413), fingerprint the request.
//! 3. Ask the engine: replay the stored response, 409 while in flight or when an earlier
//!    owner died, 422 on mismatch, or acquire the key and run the inner service once.
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

use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use idem_core::{
    Begin, BeginOptions, BoxError, Engine, Execution, Fingerprint, Finish, IdempotencyKey,
    RecordId, Store, StoreError, StoredResponse,
};
use tower::Service;
use tracing::Instrument;

use crate::body::ResponseBody;
use crate::completion::store_response;
use crate::config::{CancelPolicy, Config, StoreFailureMode};
use crate::finish::FinishOnDrop;
use crate::headers::idempotency_key;
use crate::metrics::Disposition;
use crate::problem::ProblemCode;
use crate::refusal::Refusal;
use crate::replay::replay_response;

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

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
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
        let call = KeyedCall {
            inner,
            engine: self.engine.clone(),
            config: Arc::clone(&self.config),
            request_body: PhantomData,
        };
        if !call.config.covers(request.method()) {
            return Box::pin(call.pass_through(request));
        }
        // At debug level, as tower-http's trace spans: at info, formatting this span's fields
        // for every request cost 1-2 µs of the gateway's CPU (docs/benchmarks.md). Warnings
        // logged inside carry its fields once debug is on (`RUST_LOG=idem_http=debug`).
        let span = tracing::debug_span!(
            "idempotency",
            method = %request.method(),
            path = %request.uri().path(),
            outcome = tracing::field::Empty,
        );
        Box::pin(crate::report::reported(call.handle(request)).instrument(span))
    }
}

/// One request on its way through the layer.
struct KeyedCall<S, St, ReqBody> {
    inner: S,
    engine: Engine<St>,
    config: Arc<Config>,
    request_body: PhantomData<fn(ReqBody)>,
}

/// What the engine is asked about: whose record, which request, kept how long.
struct Identity {
    id: RecordId,
    fingerprint: Fingerprint,
    options: BeginOptions,
}

impl<S, St, ReqBody, ResBody> KeyedCall<S, St, ReqBody>
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

    /// The module documentation's four steps.
    async fn handle(self, request: Request<ReqBody>) -> Result<Response<ResponseBody>, S::Error> {
        let (parts, body) = request.into_parts();
        // 1. Requests without idempotency pass through.
        let key = match self.key(&parts) {
            Ok(Some(key)) => key,
            Ok(None) => {
                Disposition::PassedThrough.record();
                return self.pass_through(Request::from_parts(parts, body)).await;
            }
            Err(refusal) => return Ok(refusal.into_response()),
        };
        if let Some(reason) = self.config.scope.ambiguity(&parts) {
            return Ok(Refusal::new(
                Disposition::PrincipalMissing,
                ProblemCode::PrincipalMissing,
                format!(
                    "idempotency keys are scoped by their caller, and {reason}: which one counts is ambiguous; nothing was executed"
                ),
            )
            .into_response());
        }
        if self.config.require_principal && self.config.scope.principal(&parts).is_none() {
            return Ok(Refusal::new(
                Disposition::PrincipalMissing,
                ProblemCode::PrincipalMissing,
                format!(
                    "idempotency keys are scoped by their caller, and this request carries no {}; nothing was executed",
                    self.config.scope.describe()
                ),
            )
            .into_response());
        }
        // 2. The body, read once, and what identifies the request.
        let read = {
            let mut read = std::pin::pin!(read_body(self.config.max_request_body, &parts, body));
            // Most bodies are whole by the time the head is read: only one that is not yet
            // needs the deadline (and its timer, measurable on the replay path).
            match futures_util::poll!(read.as_mut()) {
                Poll::Ready(read) => read,
                Poll::Pending => tokio::time::timeout(self.config.body_read_timeout, read)
                    .await
                    .unwrap_or_else(|_elapsed| Err(body_timeout(self.config.body_read_timeout))),
            }
        };
        let body = match read {
            Ok(body) => body,
            Err(refusal) => return Ok(refusal.into_response()),
        };
        let identity = match self.identify(&parts, &key, &body) {
            Ok(identity) => identity,
            Err(refusal) => return Ok(refusal.into_response()),
        };
        crate::report::record(identity.id);
        let request = Request::from_parts(parts, Either::Left(Full::new(body)));
        // 3. The engine decides; 4. an acquired key runs the inner service and is stored.
        match self
            .engine
            .begin_with(identity.id, identity.fingerprint, identity.options)
            .await
        {
            Ok(Begin::Acquired(execution)) => self.execute(request, execution).await,
            Ok(begun) => Ok(self.answer_without_executing(begun)),
            Err(error) => self.store_failed(request, &error).await,
        }
    }

    /// The request's key: `None` when it has none and needs none (or skips idempotency).
    fn key(&self, parts: &Parts) -> Result<Option<IdempotencyKey>, Refusal> {
        if (self.config.skip)(parts) {
            return Ok(None);
        }
        let header = &self.config.key_header;
        match idempotency_key(&parts.headers, header, self.config.key_policy) {
            Ok(None) if (self.config.require_key)(parts) => Err(Refusal::new(
                Disposition::KeyMissing,
                ProblemCode::KeyMissing,
                format!(
                    "this endpoint requires an {header} header; send a new UUID v4 per logical operation and reuse it on every retry"
                ),
            )),
            Ok(key) => Ok(key),
            Err(error) => Err(Refusal::new(
                Disposition::KeyInvalid,
                ProblemCode::KeyInvalid,
                error.to_string(),
            )),
        }
    }

    /// What the engine is asked about. Refused when the body's meaning is ambiguous: a JSON
    /// member named twice (parsers disagree on which one counts).
    fn identify(
        &self,
        parts: &Parts,
        key: &IdempotencyKey,
        body: &[u8],
    ) -> Result<Identity, Refusal> {
        let config = &self.config;
        let content_type = parts.headers.get(header::CONTENT_TYPE);
        let mut builder = Fingerprint::builder()
            // Filters only mean something on a parsed body, whatever order the builder's
            // options were set in; and only a body sent as JSON is read as JSON: `1.0` and
            // `1` sent as `text/plain` are two requests to the handler reading them.
            .canonical_json(
                (config.canonical_json || !config.json_filter.is_empty())
                    && content_type.is_some_and(is_json_media_type),
            )
            .json_filter(config.json_filter.clone())
            .method(parts.method.as_str())
            .path_and_query(&fingerprinted_target(&parts.uri))
            .content_type(content_type.map(HeaderValue::as_bytes));
        for name in &config.fingerprint_headers {
            builder = builder.header(
                name.as_str(),
                parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes),
            );
        }
        let fingerprint = builder
            .try_body(body)
            .map_err(|error| {
                Refusal::new(
                    Disposition::InvalidJson,
                    ProblemCode::InvalidJson,
                    format!("the JSON body has no single meaning: {error}; nothing was executed"),
                )
            })?
            .finish();
        let ttl = config.ttl_for.as_ref().and_then(|ttl_for| ttl_for(parts));
        let on_lapse = config.on_lapse_for.as_ref().and_then(|rule| rule(parts));
        Ok(Identity {
            id: RecordId::new(&config.scope.scope(parts), key),
            fingerprint,
            options: BeginOptions {
                ttl: ttl.or(config.ttl).unwrap_or_else(|| self.engine.ttl()),
                on_lapse: on_lapse.unwrap_or(config.on_lapse),
            },
        })
    }

    /// Every answer of the engine but "acquired": the key's owner answers, or nobody does.
    fn answer_without_executing(&self, begun: Begin<St>) -> Response<ResponseBody> {
        let refusal = match begun {
            Begin::Replay(stored) => return self.replay(&stored),
            Begin::InFlight { retry_after } => Refusal::new(
                Disposition::InFlight,
                ProblemCode::RequestInProgress,
                "a request with this idempotency key is still being processed; retry after the Retry-After delay with the same key",
            )
            .retry_after(retry_after, self.config.max_retry_after),
            Begin::OutcomeUnknown => Refusal::new(
                Disposition::OutcomeUnknown,
                ProblemCode::OutcomeUnknown,
                "an earlier request with this idempotency key began executing and did not finish (its process stopped): it may or may not have taken effect. It is not executed again: check the resource, then use a new key",
            ),
            Begin::Mismatch { differing } => {
                let names: Vec<&str> = differing.iter().map(|part| part.name()).collect();
                let what = if names.is_empty() {
                    "method, path, query, headers or body".to_owned()
                } else {
                    names.join(", ")
                };
                Refusal::new(
                    Disposition::Mismatch,
                    ProblemCode::KeyMismatch,
                    format!(
                        "this idempotency key was already used for a different request (its {what} {}); use a new key for a new request",
                        if names.len() == 1 { "differs" } else { "differ" }
                    ),
                )
                .member("differs", names)
                .status(self.config.mismatch_status)
            }
            // `Begin` may grow; an answer this version does not know executes nothing.
            _ => Refusal::new(
                Disposition::StoreUnavailable,
                ProblemCode::StoreUnavailable,
                "the idempotency store gave an answer this version does not know; nothing was executed",
            ),
        };
        refusal.into_response()
    }

    /// The store did not answer: refuse (fail closed), or execute without idempotency.
    async fn store_failed(
        self,
        request: Request<InnerBody<ReqBody>>,
        error: &StoreError,
    ) -> Result<Response<ResponseBody>, S::Error> {
        match self.config.failure_mode {
            // Full is refused even failing open: executing without a record because the
            // records ran out would let anyone who fills the store turn idempotency off.
            _ if matches!(error, StoreError::Full(_)) => {
                tracing::warn!(%error, "idempotency store full; refusing the request");
                Ok(Refusal::new(
                    Disposition::StoreFull,
                    ProblemCode::StoreFull,
                    "the idempotency store holds as many records as it may; nothing was executed, retry later with the same key",
                )
                .into_response())
            }
            StoreFailureMode::FailClosed => {
                tracing::error!(%error, "idempotency store unavailable; refusing the request");
                Ok(Refusal::new(
                    Disposition::StoreUnavailable,
                    ProblemCode::StoreUnavailable,
                    "the idempotency store is unavailable; nothing was executed, retry later with the same key",
                )
                .into_response())
            }
            StoreFailureMode::FailOpen => {
                tracing::warn!(%error, "idempotency store unavailable; executing without idempotency (fail open)");
                Disposition::FailedOpen.record();
                let mut inner = self.inner;
                let response = inner.call(request).await?;
                Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
            }
        }
    }

    /// Runs the inner service once under `execution` and stores its response.
    async fn execute(
        mut self,
        request: Request<InnerBody<ReqBody>>,
        mut execution: Execution<St>,
    ) -> Result<Response<ResponseBody>, S::Error> {
        let config = Arc::clone(&self.config);
        let on_cancel = self.config.on_cancel;
        if on_cancel != CancelPolicy::Release {
            // Run to completion, nothing drops the execution but a panic (or the runtime
            // stopping), after which the operation may have happened: the key lapses into an
            // unknown outcome rather than being released for a second execution.
            execution.abandon_if_dropped();
        }
        let run = async move {
            // If this future is dropped before a response exists (a cancelled request under
            // `Release`), `execution` is dropped unfinished and releases the key.
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
            // The execution outlives a client that hangs up: it finishes on the runtime and
            // its response is stored, so the retry gets the replay.
            _ => FinishOnDrop::new(run.instrument(tracing::Span::current())).await,
        }
    }

    fn replay(&self, stored: &StoredResponse) -> Response<ResponseBody> {
        let Some(body) = stored.body.clone() else {
            return Refusal::new(
                Disposition::NotReplayable,
                ProblemCode::ResponseNotStored,
                "this request was executed, but its response was too large (or too slow) to store; it cannot be replayed and must not be retried with this key",
            )
            .member("original_status", stored.status)
            .into_response();
        };
        Disposition::Replayed.record();
        let mut response = replay_response(stored, body, &self.config.replayed_headers);
        response.headers_mut().insert(
            self.config.replayed_header.clone(),
            HeaderValue::from_static("true"),
        );
        response
    }
}

/// The whole request body, up to `limit` (a free function: the request's future must stay
/// `Send` whatever the inner service is, so nothing borrows the call across an await).
fn body_timeout(limit: std::time::Duration) -> Refusal {
    Refusal::new(
        Disposition::BodyTimeout,
        ProblemCode::RequestBodyTimeout,
        format!(
            "the request body did not arrive within {limit:?}; nothing was executed, retry with the same key"
        ),
    )
}

async fn read_body<B>(limit: usize, parts: &Parts, body: B) -> Result<Bytes, Refusal>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        Refusal::new(
            Disposition::BodyTooLarge,
            ProblemCode::RequestBodyTooLarge,
            format!("the request body exceeds {limit} bytes; nothing was executed"),
        )
    };
    let declared_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large()),
        Err(error) => Err(Refusal::new(
            Disposition::BodyUnreadable,
            ProblemCode::RequestBodyUnreadable,
            format!(
                "the request body could not be read ({error}); nothing was executed, retry with the same key"
            ),
        )),
    }
}

/// The path and query a fingerprint covers: the path in its normal form, so that two spellings
/// of one path are one request; a path without one (an encoded `/`) is taken as sent.
fn fingerprinted_target(uri: &http::Uri) -> std::borrow::Cow<'_, str> {
    let raw = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    match crate::path::normalize(uri.path()) {
        Ok(std::borrow::Cow::Borrowed(_)) | Err(_) => std::borrow::Cow::Borrowed(raw),
        Ok(std::borrow::Cow::Owned(mut normal)) => {
            if let Some(query) = uri.query() {
                normal.push('?');
                normal.push_str(query);
            }
            std::borrow::Cow::Owned(normal)
        }
    }
}

/// Whether a `Content-Type` names JSON: `application/json` or any `+json` type (RFC 6839),
/// parameters aside, in any ASCII case.
fn is_json_media_type(content_type: &HeaderValue) -> bool {
    let essence = content_type
        .as_bytes()
        .split(|byte| *byte == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5
            && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json")
            && essence.contains(&b'/'))
}
