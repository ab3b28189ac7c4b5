//! `idem_engine._native`: idem's engine and stores for Python, wrapped by the pure-Python
//! package in `python/idem_engine` (the ASGI middleware, the decorators, the type hints).
//!
//! | class | what it is |
//! |---|---|
//! | [`Engine`] | an engine on a store opened from a URL, as `idem proxy --store` opens it |
//! | [`HttpLayer`] | the HTTP layer itself (`idem_http::IdempotencyLayer`), its handler being Python |
//! | [`Exchange`] | one request through the layer: run the app (or not), then the answer |
//! | [`Execution`] | an idempotent function's acquired key, to complete or release |
//!
//! The HTTP semantics are not rewritten here: [`HttpLayer`] drives the Rust layer, whose
//! inner service hands the request to Python and waits for its response ([`Bridge`]). So
//! key rules, scopes, fingerprints, problem+json answers, replay headers and the records
//! themselves are byte for byte the gateway's: a key completed through Python replays
//! through `idem proxy` on the same store, and back.
//!
//! Every blocking call releases the GIL, and every `a`-prefixed method is awaitable on the
//! tokio runtime of `pyo3_async_runtimes`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use idem::store::{StoreLocation, StoreOptions};
use idem_core::{Begin, Call, DynStore, IdempotencyKey, KeyPolicy, function};
use idem_http::{
    IdempotencyLayerBuilder, IdempotencyService, InnerBody, ResponseBody, ScopeSource,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::{mpsc, oneshot};
use tower::{Layer, Service, ServiceExt};

/// A response as Python hands it over and gets it back: status, headers, body.
type Answer = (u16, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

fn error(error: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(error.to_string())
}

/// An engine on one store.
#[pyclass(frozen, module = "idem_engine._native")]
struct Engine {
    engine: idem_core::Engine<DynStore>,
}

#[pymethods]
impl Engine {
    /// Opens `store` (`memory://`, a directory, `postgres://…`, `redis://…`,
    /// `redis+cluster://…`, `rediss://…`), creating PostgreSQL's schema if needed.
    #[new]
    #[pyo3(signature = (store = "memory://", *, ttl = 86400.0, lease = 30.0, wait = None, namespace = None, ca_file = None))]
    fn new(
        py: Python<'_>,
        store: &str,
        ttl: f64,
        lease: f64,
        wait: Option<f64>,
        namespace: Option<String>,
        ca_file: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let location =
            StoreLocation::parse(store).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let options = StoreOptions {
            namespace,
            ca_file,
            ..StoreOptions::default()
        };
        options
            .check(&location)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let ttl = seconds(ttl, "ttl")?;
        let lease = seconds(lease, "lease")?;
        let wait = wait.map(|wait| seconds(wait, "wait")).transpose()?;
        let opened = py
            .detach(|| runtime().block_on(idem::store::open(&location, &options, Duration::ZERO)));
        let store = opened.map_err(|e| error(format!("{e:#}")))?;
        let mut builder = idem_core::Engine::builder(store).ttl(ttl).lease(lease);
        if let Some(wait) = wait {
            builder = builder.wait_for_in_flight(wait);
        }
        // Built inside the runtime: the engine's lease renewer runs there.
        let engine = runtime().block_on(async { builder.build() });
        Ok(Self { engine })
    }

    /// The HTTP layer on this engine (see `idem_engine.IdempotencyMiddleware`).
    #[pyo3(signature = (*, ttl = None, methods = None, require_key = false, require_principal = false, key_header = None, uuid_keys = false, scope_header = None, scope_cookie = None, canonical_json = false, mismatch_status = 422, max_request_body = None, max_stored_response = None, store_server_errors = true, transient_statuses = None))]
    #[allow(
        clippy::too_many_arguments,
        reason = "one Python call with keyword arguments"
    )]
    fn http_layer(
        &self,
        ttl: Option<f64>,
        methods: Option<Vec<String>>,
        require_key: bool,
        require_principal: bool,
        key_header: Option<String>,
        uuid_keys: bool,
        scope_header: Option<String>,
        scope_cookie: Option<String>,
        canonical_json: bool,
        mismatch_status: u16,
        max_request_body: Option<usize>,
        max_stored_response: Option<usize>,
        store_server_errors: bool,
        transient_statuses: Option<Vec<u16>>,
    ) -> PyResult<HttpLayer> {
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PyValueError::new_err(format!("{name:?} is not a header name")))
        };
        let status = |code: u16| {
            http::StatusCode::from_u16(code)
                .map_err(|_| PyValueError::new_err(format!("{code} is not an HTTP status")))
        };
        let mismatch = status(mismatch_status)?;
        if !idem_http::MISMATCH_STATUSES.contains(&mismatch) {
            return Err(PyValueError::new_err(
                "mismatch_status: use 422, 409 or 400",
            ));
        }
        let mut builder = IdempotencyLayerBuilder::from_engine(self.engine.clone())
            .require_key(require_key)
            .require_principal(require_principal)
            .canonical_json(canonical_json)
            .mismatch_status(mismatch)
            .store_server_errors(store_server_errors);
        if let Some(ttl) = ttl {
            let ttl = seconds(ttl, "ttl")?;
            builder = builder.ttl_for(move |_| Some(ttl));
        }
        if let Some(methods) = methods {
            let methods = methods
                .iter()
                .map(|name| {
                    Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                        .map_err(|_| PyValueError::new_err(format!("{name:?} is not a method")))
                })
                .collect::<PyResult<Vec<_>>>()?;
            builder = builder.methods(methods);
        }
        if let Some(name) = key_header {
            builder = builder.key_header(header(&name)?);
        }
        if uuid_keys {
            builder = builder.key_policy(KeyPolicy::UuidV4);
        }
        builder = builder.scope(match (scope_header, scope_cookie) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err(
                    "scope by a header or by a cookie, not both",
                ));
            }
            (Some(name), None) => ScopeSource::Header(header(&name)?),
            (None, Some(name)) => ScopeSource::Cookie(name),
            (None, None) => ScopeSource::Authorization,
        });
        if let Some(bytes) = max_request_body {
            builder = builder.max_request_body(bytes);
        }
        if let Some(bytes) = max_stored_response {
            builder = builder.max_stored_response(bytes);
        }
        if let Some(codes) = transient_statuses {
            builder = builder.transient_statuses(
                codes
                    .into_iter()
                    .map(status)
                    .collect::<PyResult<Vec<_>>>()?,
            );
        }
        Ok(HttpLayer {
            service: builder.build().layer(Bridge),
        })
    }

    /// Begins a call of the idempotent function `name` with `input` (JSON text): a key
    /// given, taken from the input's member at `key_from` (a JSON pointer), or the input's
    /// hash. Answers `("acquired", Execution)`, `("replay", bytes)`, `("in_flight",
    /// seconds)`, `("outcome_unknown", None)` or `("mismatch", None)`.
    #[pyo3(signature = (name, input, *, key = None, key_from = None, scope = None, ttl = None))]
    #[allow(
        clippy::too_many_arguments,
        reason = "one Python call with keyword arguments"
    )]
    fn begin_call<'py>(
        &self,
        py: Python<'py>,
        name: String,
        input: Vec<u8>,
        key: Option<String>,
        key_from: Option<String>,
        scope: Option<Vec<u8>>,
        ttl: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (call, options) = self.call(name, key, key_from, scope, ttl)?;
        let (id, fingerprint) = call.identify_json(&input).map_err(PyValueError::new_err)?;
        let engine = self.engine.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let begun = engine
                .begin_with(id, fingerprint, options)
                .await
                .map_err(error)?;
            Python::attach(|py| begun_to_python(py, begun))
        })
    }
}

impl Engine {
    fn call(
        &self,
        name: String,
        key: Option<String>,
        key_from: Option<String>,
        scope: Option<Vec<u8>>,
        ttl: Option<f64>,
    ) -> PyResult<(Call, idem_core::BeginOptions)> {
        let mut call = Call::new(name);
        call = match (key, key_from) {
            (Some(key), None) => call.key(
                IdempotencyKey::parse(key.as_bytes(), KeyPolicy::Any)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?,
            ),
            (None, Some(pointer)) => call.key_from(pointer),
            (None, None) => call.key_from_input(),
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err("give key or key_from, not both"));
            }
        };
        if let Some(scope) = scope {
            call = call.scope(idem_core::Scope::new(scope));
        }
        let mut options = self.engine.options();
        if let Some(ttl) = ttl {
            options.ttl = seconds(ttl, "ttl")?;
        }
        Ok((call, options))
    }
}

fn begun_to_python(py: Python<'_>, begun: Begin<DynStore>) -> PyResult<Py<PyAny>> {
    Ok(match begun {
        Begin::Acquired(mut execution) => {
            // A Python function dropped mid-way may have taken effect: unknown, not released.
            execution.abandon_if_dropped();
            let execution = Execution {
                execution: Mutex::new(Some(execution)),
            };
            ("acquired", Py::new(py, execution)?)
                .into_pyobject(py)?
                .into_any()
                .unbind()
        }
        Begin::Replay(stored) => {
            let body = stored.body.unwrap_or_default();
            ("replay", PyBytes::new(py, &body))
                .into_pyobject(py)?
                .into_any()
                .unbind()
        }
        Begin::InFlight { retry_after } => ("in_flight", retry_after.as_secs_f64())
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Begin::OutcomeUnknown => ("outcome_unknown", py.None())
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Begin::Mismatch { .. } => ("mismatch", py.None())
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        _ => {
            return Err(PyRuntimeError::new_err(
                "an answer of the engine this package does not know",
            ));
        }
    })
}

/// An idempotent function's key, owned while the function runs (its lease renewed).
#[pyclass(frozen, module = "idem_engine._native")]
struct Execution {
    execution: Mutex<Option<idem_core::Execution<DynStore>>>,
}

impl Execution {
    fn take(&self) -> PyResult<idem_core::Execution<DynStore>> {
        self.execution
            .lock()
            .map_err(error)?
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this execution is already finished"))
    }
}

#[pymethods]
impl Execution {
    /// Stores the function's result (JSON text; `None` when it could not be encoded: kept as
    /// run, with nothing to replay).
    fn acomplete<'py>(
        &self,
        py: Python<'py>,
        output: Option<Vec<u8>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let execution = self.take()?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let _ = execution.complete(function::stored(output)).await;
            Ok(())
        })
    }

    /// Releases the key: the function failed before any effect, a retry runs it again.
    fn arelease<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let execution = self.take()?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let _ = execution.release().await;
            Ok(())
        })
    }

    /// [`acomplete`](Self::acomplete), blocking (for plain functions).
    fn complete(&self, py: Python<'_>, output: Option<Vec<u8>>) -> PyResult<()> {
        let execution = self.take()?;
        let _ = py.detach(|| runtime().block_on(execution.complete(function::stored(output))));
        Ok(())
    }

    /// [`arelease`](Self::arelease), blocking.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let execution = self.take()?;
        let _ = py.detach(|| runtime().block_on(execution.release()));
        Ok(())
    }
}

/// Blocking [`Engine::begin_call`].
#[pyfunction]
#[pyo3(signature = (engine, name, input, *, key = None, key_from = None, scope = None, ttl = None))]
#[allow(
    clippy::too_many_arguments,
    reason = "one Python call with keyword arguments"
)]
fn begin_call_blocking(
    py: Python<'_>,
    engine: &Engine,
    name: String,
    input: Vec<u8>,
    key: Option<String>,
    key_from: Option<String>,
    scope: Option<Vec<u8>>,
    ttl: Option<f64>,
) -> PyResult<Py<PyAny>> {
    let (call, options) = engine.call(name, key, key_from, scope, ttl)?;
    let (id, fingerprint) = call.identify_json(&input).map_err(PyValueError::new_err)?;
    let inner = engine.engine.clone();
    let begun = py
        .detach(|| runtime().block_on(inner.begin_with(id, fingerprint, options)))
        .map_err(error)?;
    begun_to_python(py, begun)
}

/// The layer's inner service: hands the request to Python through the request's
/// [`Handoff`], and answers what Python sends back.
#[derive(Clone, Copy)]
struct Bridge;

/// One request's way to Python and back.
#[derive(Clone)]
struct Handoff(mpsc::UnboundedSender<Step>);

/// What an [`Exchange`] hands Python next.
enum Step {
    /// Run the app with the (buffered) request body, and answer through the sender.
    Run(Bytes, oneshot::Sender<Answer>),
    /// The layer's final answer.
    Done(Answer),
}

/// Python went away before it was handed the request: nothing ran, so the layer releases
/// the key.
#[derive(Debug)]
struct NotRun;

impl Service<Request<InnerBody<Full<Bytes>>>> for Bridge {
    type Response = Response<Full<Bytes>>;
    type Error = NotRun;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<InnerBody<Full<Bytes>>>) -> Self::Future {
        Box::pin(async move {
            let handoff = request.extensions().get::<Handoff>().cloned();
            let body = request
                .into_body()
                .collect()
                .await
                .map(|body| body.to_bytes())
                .unwrap_or_default();
            let (answer, answered) = oneshot::channel();
            let sent =
                handoff.is_some_and(|handoff| handoff.0.send(Step::Run(body, answer)).is_ok());
            // Python went away before running the app: nothing ran, answer as a failure.
            let (status, headers, body) = match (sent, answered.await) {
                (true, Ok(answer)) => answer,
                _ => (500, Vec::new(), Vec::new()),
            };
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = http::StatusCode::from_u16(status)
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(&name),
                    HeaderValue::from_bytes(&value),
                ) {
                    response.headers_mut().append(name, value);
                }
            }
            Ok(response)
        })
    }
}

/// The Rust HTTP layer, with Python as its handler.
#[pyclass(frozen, module = "idem_engine._native")]
struct HttpLayer {
    service: IdempotencyService<Bridge, DynStore>,
}

#[pymethods]
impl HttpLayer {
    /// Starts one request through the layer: `method`, `target` (path and query), the
    /// headers as sent, and the whole body.
    fn exchange(
        &self,
        method: &str,
        target: &str,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
    ) -> PyResult<Exchange> {
        let mut request = Request::builder()
            .method(
                Method::from_bytes(method.as_bytes())
                    .map_err(|e| PyValueError::new_err(e.to_string()))?,
            )
            .uri(target)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&name),
                HeaderValue::from_bytes(&value),
            ) {
                request.headers_mut().append(name, value);
            }
        }
        let (steps, receiver) = mpsc::unbounded_channel();
        request.extensions_mut().insert(Handoff(steps.clone()));
        let service = self.service.clone();
        runtime().spawn(async move {
            let answer = match service.oneshot(request).await {
                Ok(response) => collect(response).await,
                // Nothing ran and the key is released: a retry executes.
                Err(NotRun) => (
                    503,
                    vec![(b"retry-after".to_vec(), b"1".to_vec())],
                    b"not executed; retry with the same key".to_vec(),
                ),
            };
            let _ = steps.send(Step::Done(answer));
        });
        Ok(Exchange {
            steps: Arc::new(tokio::sync::Mutex::new(receiver)),
            answer: Arc::new(Mutex::new(None)),
        })
    }
}

async fn collect(response: Response<ResponseBody>) -> Answer {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|body| body.to_bytes().to_vec())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec()))
        .collect();
    (parts.status.as_u16(), headers, body)
}

/// One request through [`HttpLayer`].
#[pyclass(frozen, module = "idem_engine._native")]
struct Exchange {
    steps: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Step>>>,
    answer: Arc<Mutex<Option<oneshot::Sender<Answer>>>>,
}

#[pymethods]
impl Exchange {
    /// The next step: `("run", body)` (run the app with this body, then
    /// [`respond`](Self::respond)), or `("done", (status, headers, body))`.
    fn anext_step<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (steps, answer) = (Arc::clone(&self.steps), Arc::clone(&self.answer));
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let step = steps.lock().await.recv().await;
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                match step {
                    Some(Step::Run(body, sender)) => {
                        *answer.lock().map_err(error)? = Some(sender);
                        Ok(("run", PyBytes::new(py, &body))
                            .into_pyobject(py)?
                            .into_any()
                            .unbind())
                    }
                    Some(Step::Done((status, headers, body))) => {
                        let headers: Vec<(Py<PyBytes>, Py<PyBytes>)> = headers
                            .iter()
                            .map(|(name, value)| {
                                (
                                    PyBytes::new(py, name).unbind(),
                                    PyBytes::new(py, value).unbind(),
                                )
                            })
                            .collect();
                        Ok(("done", (status, headers, PyBytes::new(py, &body)))
                            .into_pyobject(py)?
                            .into_any()
                            .unbind())
                    }
                    None => Err(PyRuntimeError::new_err(
                        "the exchange ended without an answer",
                    )),
                }
            })
        })
    }

    /// The app's response to a `run` step.
    fn respond(
        &self,
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
    ) -> PyResult<()> {
        let sender = self
            .answer
            .lock()
            .map_err(error)?
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("no run step is waiting for a response"))?;
        let _ = sender.send((status, headers, body));
        Ok(())
    }
}

fn seconds(value: f64, name: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| {
            PyValueError::new_err(format!("{name} must be a positive number of seconds"))
        })
}

/// The native module.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Engine>()?;
    module.add_class::<HttpLayer>()?;
    module.add_class::<Exchange>()?;
    module.add_class::<Execution>()?;
    module.add_function(wrap_pyfunction!(begin_call_blocking, module)?)?;
    Ok(())
}
