//! [`IdempotencyLayer`] and its builder, which sets every option of [`crate::config`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::Method;
use http::request::Parts;
use idem_core::{Engine, EngineBuilder, JsonFilter, KeyPolicy, OnLapse, Store};
use tower::Layer;

use crate::config::{CancelPolicy, Config, MISMATCH_STATUSES, StoreFailureMode};
use crate::headers::ReplayedHeaders;
use crate::scope::ScopeSource;
use crate::service::IdempotencyService;

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
    engine: EngineSource<St>,
    config: Config,
}

/// The engine a builder makes its layer over.
enum EngineSource<St> {
    Builder(EngineBuilder<St>),
    Built(Engine<St>),
}

impl<St: Store> EngineSource<St> {
    fn configure(
        self,
        setting: &str,
        apply: impl FnOnce(EngineBuilder<St>) -> EngineBuilder<St>,
    ) -> Self {
        match self {
            Self::Builder(builder) => Self::Builder(apply(builder)),
            Self::Built(engine) => {
                tracing::warn!(
                    setting,
                    "ignored: the layer was built over an engine configured elsewhere"
                );
                Self::Built(engine)
            }
        }
    }
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
            engine: EngineSource::Builder(engine),
            config: Config::default(),
        }
    }

    /// A builder over an engine already built and shared with other users (a coordination
    /// API, an admin listener), so that one process runs one engine with one renewer. The
    /// engine's own lease and wait apply: [`lease`](Self::lease) and
    /// [`wait_for_in_flight`](Self::wait_for_in_flight) are for engines the builder builds.
    #[must_use]
    pub fn from_engine(engine: Engine<St>) -> Self {
        Self {
            engine: EngineSource::Built(engine),
            config: Config::default(),
        }
    }

    /// How long completed responses are replayed (default: the engine's TTL, 24 h unless
    /// configured otherwise).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = Some(ttl);
        self
    }

    /// How long a lease lasts between renewals (default [`idem_core::DEFAULT_LEASE`]). The
    /// layer renews it while the handler runs, so it only decides how soon a key whose
    /// process died is reported as of unknown outcome.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.engine = self.engine.configure("lease", |engine| engine.lease(lease));
        self
    }

    /// Lets a duplicate of an in-flight request wait up to `limit` and get the replay,
    /// instead of a 409 at once.
    #[must_use]
    pub fn wait_for_in_flight(mut self, limit: Duration) -> Self {
        self.engine = self.engine.configure("wait_for_in_flight", |engine| {
            engine.wait_for_in_flight(limit)
        });
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

    /// How long a keyed request's body may take to arrive in full (default
    /// [`DEFAULT_BODY_READ_TIMEOUT`](crate::DEFAULT_BODY_READ_TIMEOUT)); later, 408 and
    /// nothing executed.
    #[must_use]
    pub fn body_read_timeout(mut self, limit: Duration) -> Self {
        self.config.body_read_timeout = limit;
        self
    }

    /// Refuses keyed requests that carry no principal (no `Authorization`, no scope header,
    /// no session cookie: whatever [`scope`](Self::scope) reads) with 400
    /// `principal_missing`, instead of letting every such request share one anonymous scope,
    /// where anyone who learns a key could be replayed its result (default false).
    #[must_use]
    pub fn require_principal(mut self, required: bool) -> Self {
        self.config.require_principal = required;
        self
    }

    /// Which response headers are stored and replayed (default every end-to-end header but
    /// [`NOT_REPLAYED_BY_DEFAULT`](crate::headers::NOT_REPLAYED_BY_DEFAULT): `Set-Cookie`
    /// and per-exchange credentials never reach another request).
    #[must_use]
    pub fn replayed_headers(mut self, headers: ReplayedHeaders) -> Self {
        self.config.replayed_headers = headers;
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

    /// The statuses that mean "not processed, try later" (default
    /// [`DEFAULT_TRANSIENT_STATUSES`](crate::DEFAULT_TRANSIENT_STATUSES): 429 and 503). Such a
    /// response reaches the client unchanged and the key is released, so the client's retry
    /// after `Retry-After` executes. Only for statuses your handlers answer before any effect.
    #[must_use]
    pub fn transient_statuses(
        mut self,
        statuses: impl IntoIterator<Item = http::StatusCode>,
    ) -> Self {
        self.config.transient_statuses = statuses.into_iter().collect();
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

    /// Request headers that are part of what makes two requests the same (a tenant header,
    /// `Host`), besides the method, path, query, content type and body (default none). A
    /// retry whose value differs is a mismatch.
    #[must_use]
    pub fn fingerprint_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config.fingerprint_headers = names.into_iter().collect();
        self
    }

    /// Which members of a JSON body count, as JSON pointers: a client timestamp or nonce that
    /// changes on every retry can be left out (default: the whole body). A filter that is not
    /// empty turns [`canonical_json`](Self::canonical_json) on: only a parsed body has
    /// members.
    #[must_use]
    pub fn json_filter(mut self, filter: JsonFilter) -> Self {
        self.config.canonical_json |= !filter.is_empty();
        self.config.json_filter = filter;
        self
    }

    /// The status of the answer to a key reused for a different request: 422 by default, as
    /// the IETF draft says; 409 (as some API programs specify) or 400 (as Stripe answers).
    ///
    /// # Panics
    /// Any other status: a mismatch is a client error about this key, and a client must be
    /// able to tell it from success and from a server fault.
    #[must_use]
    pub fn mismatch_status(mut self, status: http::StatusCode) -> Self {
        assert!(
            MISMATCH_STATUSES.contains(&status),
            "the mismatch status must be 400, 409 or 422, not {status}"
        );
        self.config.mismatch_status = status;
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
        let engine = match self.engine {
            EngineSource::Builder(builder) => builder.build(),
            EngineSource::Built(engine) => engine,
        };
        IdempotencyLayer {
            engine,
            config: Arc::new(self.config),
        }
    }
}
