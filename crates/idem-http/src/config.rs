//! The layer's settings: every option, its default, and the policies they choose between.
//! [`IdempotencyLayerBuilder`](crate::IdempotencyLayerBuilder) sets them; the service reads
//! them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method};
use idem_core::{JsonFilter, KeyPolicy, OnLapse};

use crate::headers::{IDEMPOTENCY_KEY, ReplayedHeaders, X_IDEMPOTENT_REPLAYED};
use crate::scope::ScopeSource;

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

/// Responses that mean "not processed, try later" (RFC 9110: 429 Too Many Requests, 503
/// Service Unavailable): passed on to the client, and the key released, so that the retry the
/// client makes after `Retry-After` executes. Other 5xx are stored by default: a 500 or a 502
/// may come after the handler's effect, and replaying it is the only answer that never runs
/// the operation twice.
pub const DEFAULT_TRANSIENT_STATUSES: [http::StatusCode; 2] = [
    http::StatusCode::TOO_MANY_REQUESTS,
    http::StatusCode::SERVICE_UNAVAILABLE,
];

/// How long the layer reads a response body to store it (default 30 s). A body still
/// streaming after that (server-sent events, a stalled upstream) reaches the client as it
/// comes, and the key is completed without it: retries are told it cannot be replayed.
pub const DEFAULT_BODY_BUFFER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a keyed request's body may take to arrive in full (default 30 s): a client that
/// trickles its body would otherwise hold a task and a buffer for as long as it likes. A body
/// still arriving after that is answered with 408 `request_body_timeout`, nothing executed.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The statuses a mismatch may be answered with: 422 (the IETF draft's), 409, 400.
pub const MISMATCH_STATUSES: [http::StatusCode; 3] = [
    http::StatusCode::UNPROCESSABLE_ENTITY,
    http::StatusCode::CONFLICT,
    http::StatusCode::BAD_REQUEST,
];

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
    /// The replay TTL when no per-request rule sets one; `None`: the engine's.
    pub(crate) ttl: Option<Duration>,
    pub(crate) key_header: HeaderName,
    pub(crate) replayed_header: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: RequestPredicate,
    pub(crate) skip: RequestPredicate,
    pub(crate) ttl_for: Option<RequestTtl>,
    pub(crate) key_policy: KeyPolicy,
    pub(crate) scope: ScopeSource,
    /// Refuse keyed requests that carry no principal, rather than scoping them anonymously.
    pub(crate) require_principal: bool,
    pub(crate) replayed_headers: ReplayedHeaders,
    pub(crate) max_request_body: usize,
    pub(crate) body_read_timeout: Duration,
    pub(crate) max_stored_response: usize,
    pub(crate) store_server_errors: bool,
    /// Statuses that mean "not processed, try later": passed on, and the key released.
    pub(crate) transient_statuses: Vec<http::StatusCode>,
    pub(crate) failure_mode: StoreFailureMode,
    pub(crate) canonical_json: bool,
    /// Request headers that are part of what makes two requests the same.
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    /// Which members of a JSON body count (canonical JSON only).
    pub(crate) json_filter: JsonFilter,
    /// The status of a mismatch answer: 422 (the IETF draft), 409 or 400.
    pub(crate) mismatch_status: http::StatusCode,
    pub(crate) max_retry_after: Duration,
    pub(crate) on_cancel: CancelPolicy,
    pub(crate) on_lapse: OnLapse,
    pub(crate) on_lapse_for: Option<RequestOnLapse>,
    pub(crate) body_buffer_timeout: Duration,
}

impl Config {
    /// Whether `method` is covered. An extension method that differs from a covered one only
    /// in ASCII case (`post`) is covered too: hyper passes it on as sent, and many servers
    /// (Django, Werkzeug) upper-case it and run it as `POST`, so it must not escape the key.
    pub(crate) fn covers(&self, method: &Method) -> bool {
        self.methods.contains(method)
            || (!method
                .as_str()
                .bytes()
                .all(|byte| byte.is_ascii_uppercase())
                && self
                    .methods
                    .iter()
                    .any(|covered| covered.as_str().eq_ignore_ascii_case(method.as_str())))
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("key_header", &self.key_header)
            .field("methods", &self.methods)
            .field("key_policy", &self.key_policy)
            .field("scope", &self.scope)
            .field("require_principal", &self.require_principal)
            .field("replayed_headers", &self.replayed_headers)
            .field("max_request_body", &self.max_request_body)
            .field("max_stored_response", &self.max_stored_response)
            .field("store_server_errors", &self.store_server_errors)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ttl: None,
            key_header: IDEMPOTENCY_KEY,
            replayed_header: X_IDEMPOTENT_REPLAYED,
            methods: vec![Method::POST, Method::PUT, Method::PATCH, Method::DELETE],
            require_key: Arc::new(|_| false),
            skip: Arc::new(|_| false),
            ttl_for: None,
            key_policy: KeyPolicy::Any,
            scope: ScopeSource::Authorization,
            require_principal: false,
            replayed_headers: ReplayedHeaders::default(),
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_stored_response: DEFAULT_MAX_STORED_RESPONSE,
            store_server_errors: true,
            transient_statuses: DEFAULT_TRANSIENT_STATUSES.to_vec(),
            failure_mode: StoreFailureMode::FailClosed,
            canonical_json: false,
            fingerprint_headers: Vec::new(),
            json_filter: JsonFilter::default(),
            mismatch_status: http::StatusCode::UNPROCESSABLE_ENTITY,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            on_cancel: CancelPolicy::RunToCompletion,
            on_lapse: OnLapse::ReportUnknown,
            on_lapse_for: None,
            body_buffer_timeout: DEFAULT_BODY_BUFFER_TIMEOUT,
        }
    }
}
