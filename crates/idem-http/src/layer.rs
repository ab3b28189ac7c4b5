//! [`IdempotencyLayer`] and its builder: every option of the middleware, in one place.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method};
use idem_core::{Engine, EngineBuilder, KeyPolicy, OnLapse, Store};
use tower::Layer;

use crate::scope::ScopeSource;
use crate::service::IdempotencyService;

/// The request body the layer reads at most to fingerprint a request: 10 MiB, the most the
/// IETF-draft-minded APIs we model accept for a JSON mutation. A larger body is answered
/// with 413 and nothing is executed.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 10 * 1024 * 1024;

/// The largest response body stored for replay: 1 MiB. Replays are for API results (JSON
/// documents), not downloads; a larger response still reaches the first client in full, but
/// its retries get [`ProblemCode::ResponseNotStored`](crate::ProblemCode::ResponseNotStored).
pub const DEFAULT_MAX_STORED_RESPONSE: usize = 1024 * 1024;

/// The longest `Retry-After` sent with a 409: the real wait is usually far shorter than the
/// lease (the owner finishes early), so clients are told to look again soon.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long the layer reads a response body to store it (default 30 s). A body still
/// streaming after that (server-sent events, a stalled upstream) reaches the client as it
/// comes, and the key is completed without it: retries are told it cannot be replayed.
pub const DEFAULT_BODY_BUFFER_TIMEOUT: Duration = Duration::from_secs(30);

/// The header that carries the key (IETF draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The header that tells a client whether a response was replayed.
pub const X_IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("x-idempotent-replayed");

/// What to do when the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreFailureMode {
    /// Answer 503 and execute nothing (the default): at-most-once holds through an outage.
    #[default]
    FailClosed,
    /// Execute the request without idempotency: availability over at-most-once. Duplicates
    /// during the outage may execute twice.
    FailOpen,
}

/// What happens to a key when the request is cancelled (the client disconnects) while the
/// inner service is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CancelPolicy {
    /// Run the inner service in its own task, so it finishes even if the client goes away,
    /// and store its response for the retry (the default). Right whenever the work cannot be
    /// recalled once started: a gateway that already forwarded the request, a handler that
    /// writes to a database or calls a payment API. Costs one task spawn per executed
    /// request (see `docs/benchmarks.md`).
    #[default]
    RunToCompletion,
    /// Drop the inner service's future with the request and release the key, so a retry
    /// executes. Only for handlers with no side effect before their first await point that
    /// can be cancelled: a handler cancelled after its side effect would run twice.
    Release,
}

type RequestPredicate = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;
type RequestTtl = Arc<dyn Fn(&Parts) -> Option<Duration> + Send + Sync>;
type RequestOnLapse = Arc<dyn Fn(&Parts) -> Option<OnLapse> + Send + Sync>;

/// The layer's settings, shared by every clone of the layer and its services.
pub(crate) struct Config {
    pub(crate) key_header: HeaderName,
    pub(crate) replayed_header: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: RequestPredicate,
    pub(crate) skip: RequestPredicate,
    pub(crate) ttl_for: Option<RequestTtl>,
    pub(crate) key_policy: KeyPolicy,
    pub(crate) scope: ScopeSource,
    pub(crate) max_request_body: usize,
    pub(crate) max_stored_response: usize,
    pub(crate) store_server_errors: bool,
    pub(crate) failure_mode: StoreFailureMode,
    pub(crate) canonical_json: bool,
    pub(crate) max_retry_after: Duration,
    pub(crate) on_cancel: CancelPolicy,
    pub(crate) on_lapse: OnLapse,
    pub(crate) on_lapse_for: Option<RequestOnLapse>,
    pub(crate) body_buffer_timeout: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("key_header", &self.key_header)
            .field("methods", &self.methods)
            .field("key_policy", &self.key_policy)
            .field("scope", &self.scope)
            .field("max_request_body", &self.max_request_body)
            .field("max_stored_response", &self.max_stored_response)
            .field("store_server_errors", &self.store_server_errors)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

/// A tower [`Layer`] that makes the services it wraps honour the `Idempotency-Key` header.
///
/// ```
/// use axum::{Router, routing::post};
/// use idem_core::MemoryStore;
/// use idem_http::IdempotencyLayer;
///
/// let app: Router = Router::new()
///     .route("/charges", post(|| async { "charged" }))
///     .layer(IdempotencyLayer::new(MemoryStore::new()));
/// ```
///
/// See [`IdempotencyLayerBuilder`] for every option and its default.
pub struct IdempotencyLayer<St> {
    pub(crate) engine: Engine<St>,
    pub(crate) config: Arc<Config>,
}

impl<St> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<St> fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("engine", &self.engine)
            .field("config", &self.config)
            .finish()
    }
}

impl<St: Store> IdempotencyLayer<St> {
    /// The layer with every default: POST, PUT, PATCH and DELETE covered, keys optional,
    /// scoped by `Authorization`, 24 h replay, fail closed.
    #[must_use]
    pub fn new(store: St) -> Self {
        Self::builder(store).build()
    }

    /// Starts a layer with non-default settings.
    #[must_use]
    pub fn builder(store: St) -> IdempotencyLayerBuilder<St> {
        IdempotencyLayerBuilder::from_engine_builder(Engine::builder(store))
    }

    /// The engine underneath, to read a key's status or run a sweeper.
    #[must_use]
    pub fn engine(&self) -> &Engine<St> {
        &self.engine
    }
}

impl<S, St> Layer<S> for IdempotencyLayer<St> {
    type Service = IdempotencyService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::new(inner, self.engine.clone(), Arc::clone(&self.config))
    }
}

/// Builds an [`IdempotencyLayer`]. Every option has a default that suits a JSON API.
pub struct IdempotencyLayerBuilder<St> {
    engine: EngineBuilder<St>,
    config: Config,
}

impl<St> fmt::Debug for IdempotencyLayerBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<St: Store> IdempotencyLayerBuilder<St> {
    /// A builder over an engine configured elsewhere (lease, wait).
    #[must_use]
    pub fn from_engine_builder(engine: EngineBuilder<St>) -> Self {
        Self {
            engine,
            config: Config {
                key_header: IDEMPOTENCY_KEY,
                replayed_header: X_IDEMPOTENT_REPLAYED,
                methods: vec![Method::POST, Method::PUT, Method::PATCH, Method::DELETE],
                require_key: Arc::new(|_| false),
                skip: Arc::new(|_| false),
                ttl_for: None,
                key_policy: KeyPolicy::Any,
                scope: ScopeSource::Authorization,
                max_request_body: DEFAULT_MAX_REQUEST_BODY,
                max_stored_response: DEFAULT_MAX_STORED_RESPONSE,
                store_server_errors: true,
                failure_mode: StoreFailureMode::FailClosed,
                canonical_json: false,
                max_retry_after: DEFAULT_MAX_RETRY_AFTER,
                on_cancel: CancelPolicy::RunToCompletion,
                on_lapse: OnLapse::ReportUnknown,
                on_lapse_for: None,
                body_buffer_timeout: DEFAULT_BODY_BUFFER_TIMEOUT,
            },
        }
    }

    /// How long completed responses are replayed (default 24 h).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.engine = self.engine.ttl(ttl);
        self
    }

    /// How long a lease lasts between renewals (default [`idem_core::DEFAULT_LEASE`]). The
    /// layer renews it while the handler runs, so it only decides how soon a key whose
    /// process died is reported as of unknown outcome.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.engine = self.engine.lease(lease);
        self
    }

    /// Lets a duplicate of an in-flight request wait up to `limit` and get the replay,
    /// instead of a 409 at once.
    #[must_use]
    pub fn wait_for_in_flight(mut self, limit: Duration) -> Self {
        self.engine = self.engine.wait_for_in_flight(limit);
        self
    }

    /// What a request does with a key whose earlier execution's process died (default
    /// [`OnLapse::ReportUnknown`]: answer 409 `outcome_unknown`, execute nothing).
    /// [`OnLapse::TakeOver`] executes again: only for handlers that are safe to re-run.
    #[must_use]
    pub fn on_lapse(mut self, on_lapse: OnLapse) -> Self {
        self.config.on_lapse = on_lapse;
        self
    }

    /// Gives the requests for which `policy` answers `Some` their own [`OnLapse`] (a route
    /// that is safe to re-run); others keep the layer's.
    #[must_use]
    pub fn on_lapse_for(
        mut self,
        policy: impl Fn(&Parts) -> Option<OnLapse> + Send + Sync + 'static,
    ) -> Self {
        self.config.on_lapse_for = Some(Arc::new(policy));
        self
    }

    /// How long a response body is read for storage (default
    /// [`DEFAULT_BODY_BUFFER_TIMEOUT`]).
    #[must_use]
    pub fn body_buffer_timeout(mut self, limit: Duration) -> Self {
        self.config.body_buffer_timeout = limit;
        self
    }

    /// The methods covered (default POST, PUT, PATCH, DELETE). Others pass through untouched.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// Requires a key on every covered request (400 without one).
    #[must_use]
    pub fn require_key(self, required: bool) -> Self {
        self.require_key_when(move |_| required)
    }

    /// Requires a key on the covered requests for which `predicate` is true (a route, a path
    /// prefix); others without a key pass through.
    #[must_use]
    pub fn require_key_when(
        mut self,
        predicate: impl Fn(&Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.config.require_key = Arc::new(predicate);
        self
    }

    /// Passes the requests for which `predicate` is true through untouched, key or not (a
    /// route that is idempotent by design, a health check).
    #[must_use]
    pub fn skip_when(mut self, predicate: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.config.skip = Arc::new(predicate);
        self
    }

    /// Gives the requests for which `ttl` answers `Some` their own replay TTL (a route whose
    /// retries come within the hour); others keep the layer's TTL.
    #[must_use]
    pub fn ttl_for(
        mut self,
        ttl: impl Fn(&Parts) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.config.ttl_for = Some(Arc::new(ttl));
        self
    }

    /// Which keys are accepted (default any 1–255 visible ASCII characters).
    #[must_use]
    pub fn key_policy(mut self, policy: KeyPolicy) -> Self {
        self.config.key_policy = policy;
        self
    }

    /// The header carrying the key (default `Idempotency-Key`).
    #[must_use]
    pub fn key_header(mut self, name: HeaderName) -> Self {
        self.config.key_header = name;
        self
    }

    /// The header telling whether a response was replayed (default `X-Idempotent-Replayed`).
    #[must_use]
    pub fn replayed_header(mut self, name: HeaderName) -> Self {
        self.config.replayed_header = name;
        self
    }

    /// Whose key is it (default: a hash of the `Authorization` header).
    #[must_use]
    pub fn scope(mut self, source: ScopeSource) -> Self {
        self.config.scope = source;
        self
    }

    /// The largest request body accepted on a keyed request (default 10 MiB).
    #[must_use]
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.config.max_request_body = bytes;
        self
    }

    /// The largest response body stored for replay (default 1 MiB).
    #[must_use]
    pub fn max_stored_response(mut self, bytes: usize) -> Self {
        self.config.max_stored_response = bytes;
        self
    }

    /// Whether 5xx responses are stored and replayed (default true: a replay is always what
    /// the first request got). When false, a 5xx releases the key and a retry executes again:
    /// only for handlers whose 5xx guarantee that nothing happened.
    #[must_use]
    pub fn store_server_errors(mut self, store: bool) -> Self {
        self.config.store_server_errors = store;
        self
    }

    /// What to do when the store is unreachable (default fail closed, 503).
    #[must_use]
    pub fn on_store_failure(mut self, mode: StoreFailureMode) -> Self {
        self.config.failure_mode = mode;
        self
    }

    /// Fingerprint JSON bodies in canonical form, so key order and whitespace do not make a
    /// retry a mismatch (default off: bytes must match).
    #[must_use]
    pub fn canonical_json(mut self, enabled: bool) -> Self {
        self.config.canonical_json = enabled;
        self
    }

    /// What a cancelled request does to its key (default [`CancelPolicy::RunToCompletion`]).
    #[must_use]
    pub fn on_cancel(mut self, policy: CancelPolicy) -> Self {
        self.config.on_cancel = policy;
        self
    }

    /// The longest `Retry-After` sent with a 409 (default 5 s).
    #[must_use]
    pub fn max_retry_after(mut self, limit: Duration) -> Self {
        self.config.max_retry_after = limit;
        self
    }

    /// The layer.
    #[must_use]
    pub fn build(self) -> IdempotencyLayer<St> {
        IdempotencyLayer {
            engine: self.engine.build(),
            config: Arc::new(self.config),
        }
    }
}
