//! The command line: every flag, with its environment variable. Values left unset here fall
//! back to the config file, then to the defaults in [`crate::config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// At-most-once execution for HTTP APIs: a gateway (`idem proxy`) and a coordination
/// service (`idem serve`) over one idempotency engine.
#[derive(Debug, Parser)]
#[command(name = "idem", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put idempotency in front of any HTTP API: replays retried mutations carrying an
    /// `Idempotency-Key`, forwards everything else.
    Proxy(ProxyArgs),
    /// Serve the coordination API (`POST /v1/idempotency/execute` and the begin / complete /
    /// release flow under `/v1/idempotency/records`).
    Serve(ServeArgs),
    /// Create or upgrade the store's schema (PostgreSQL) and exit. `proxy` and `serve` also
    /// migrate on start.
    Migrate {
        /// The store, as for `--store`.
        #[arg(long, env = "IDEM_STORE", value_name = "URL")]
        store: String,
    },
    /// Print the coordination API's OpenAPI 3.1 document.
    Openapi,
    /// Look up one record by its key, and resolve a key whose execution's owner died.
    Records {
        /// What to do.
        #[command(subcommand)]
        action: RecordsAction,
    },
}

/// `idem records …`.
#[derive(Debug, Subcommand)]
pub enum RecordsAction {
    /// Print the record as JSON: absent, in_flight, outcome_unknown or completed.
    Show(RecordArgs),
    /// Delete a record whose owner died (outcome unknown): the next retry executes. Only when
    /// you know the operation did not take effect.
    Release(RecordArgs),
    /// Complete a record whose owner died with the answer every retry will get. Only when you
    /// know what the operation did.
    Complete {
        /// Which record.
        #[command(flatten)]
        record: RecordArgs,
        /// The status code replayed.
        #[arg(long)]
        status: u16,
        /// A header replayed, `name: value` (repeatable).
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The body replayed.
        #[arg(long, default_value = "")]
        body: String,
    },
}

/// Which record `idem records` acts on.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The store, as for `--store`.
    #[arg(long, env = "IDEM_STORE", value_name = "URL")]
    pub store: String,
    /// The idempotency key, as the client sent it.
    #[arg(long)]
    pub key: String,
    /// The value of what scoped the request: the `Authorization` header, the `--scope-header`
    /// header, or the `--scope-cookie` cookie's value; leave out for requests that carried
    /// none.
    #[arg(long, env = "IDEM_RECORD_CREDENTIAL", hide_env_values = true)]
    pub credential: Option<String>,
    /// The instances' `--lease`: a key lapsed less than a lease ago is not resolved (its
    /// owner may only be cut off from the store) [default: 30s].
    #[arg(long, env = "IDEM_LEASE", value_name = "DURATION", value_parser = parse_duration)]
    pub lease: Option<std::time::Duration>,
    /// How long after a key's lease lapsed it may be resolved [default: the lease plus 15
    /// minutes, during which an owner cut off from the store keeps retrying its completion].
    /// Shorter only when you know the owner is gone (its process stopped).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<std::time::Duration>,
    /// How long a completion is replayed [default: 24h].
    #[arg(long, env = "IDEM_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<std::time::Duration>,
}

/// Options shared by `proxy` and `serve`.
#[derive(Debug, Args, Default)]
pub struct CommonArgs {
    /// Address to accept requests on [default: 127.0.0.1:8080].
    #[arg(long, env = "IDEM_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Where records live: `memory://`, `postgres://…`, `redis://…`, `redis+cluster://…`,
    /// or a directory for the embedded store [default: ./idem-data].
    #[arg(long, env = "IDEM_STORE", value_name = "URL")]
    pub store: Option<String>,

    /// How long completed responses are replayed: `2s`, `15m`, `24h` [default: 24h].
    #[arg(long, env = "IDEM_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<std::time::Duration>,

    /// How long one execution owns its key before a retry may take it over; keep it above
    /// the upstream's slowest response [default: 60s].
    #[arg(long, env = "IDEM_LEASE", value_name = "DURATION", value_parser = parse_duration)]
    pub lease: Option<std::time::Duration>,

    /// Let a duplicate of an in-flight request wait up to this long for its result instead
    /// of answering 409 at once [default: no wait].
    #[arg(long, env = "IDEM_WAIT", value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<std::time::Duration>,

    /// How long this instance answers retries of a completed key from its own memory
    /// instead of asking PostgreSQL or Redis again (completed records never change); a
    /// record deleted by hand or expired meanwhile keeps replaying here for at most this
    /// long. `0s` turns it off; the memory and embedded stores have none [default: 5s].
    #[arg(long, env = "IDEM_REPLAY_CACHE", value_name = "DURATION", value_parser = parse_duration)]
    pub replay_cache: Option<std::time::Duration>,

    /// Scope keys by this header (an API key, a tenant id) instead of `Authorization`.
    #[arg(
        long,
        env = "IDEM_SCOPE_HEADER",
        value_name = "NAME",
        conflicts_with = "scope_cookie"
    )]
    pub scope_header: Option<String>,

    /// Scope keys by this cookie's value (a session cookie) instead of `Authorization`: two
    /// sessions sending the same key never see each other's records.
    #[arg(long, env = "IDEM_SCOPE_COOKIE", value_name = "NAME")]
    pub scope_cookie: Option<String>,

    /// How long a client has to send a whole request head, from when its connection opens
    /// or its previous response ends [default: 15s].
    #[arg(long, env = "IDEM_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub header_read_timeout: Option<std::time::Duration>,

    /// How long an idle keep-alive connection stays open; `0s` closes each connection after
    /// one request. At most --header-read-timeout, which also counts idle time [default: 15s].
    #[arg(long, env = "IDEM_KEEP_ALIVE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub keep_alive_timeout: Option<std::time::Duration>,

    /// How many client connections are served at once; more wait to be accepted
    /// [default: 4096].
    #[arg(long, env = "IDEM_MAX_CONNECTIONS", value_name = "COUNT")]
    pub max_connections: Option<usize>,

    /// How long a keyed request's body may take to arrive in full; later, 408 and nothing
    /// executed [default: 30s].
    #[arg(long, env = "IDEM_BODY_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub body_read_timeout: Option<std::time::Duration>,

    /// Address for `GET /metrics`, `/healthz` and `/readyz`; never the public address
    /// [default: none].
    #[arg(long, env = "IDEM_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// How long a write to a client may make no progress (it stopped reading) before its
    /// connection is closed [default: 30s].
    #[arg(long, env = "IDEM_SEND_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub send_timeout: Option<std::time::Duration>,

    /// The status answered when a key is reused for a different request: 422 (the IETF
    /// draft's), 409 or 400 [default: 422].
    #[arg(long, env = "IDEM_MISMATCH_STATUS", value_name = "STATUS")]
    pub mismatch_status: Option<u16>,

    /// An upstream's or operation's status that means "not processed, try later": passed to
    /// the client, the key released so that a retry executes; repeat or separate by commas,
    /// `none` for no such status. Only statuses answered before any effect [default: 429,503].
    #[arg(
        long = "transient-status",
        env = "IDEM_TRANSIENT_STATUSES",
        value_name = "STATUS",
        value_delimiter = ','
    )]
    pub transient_statuses: Vec<String>,

    /// Where each error's `type` points: `<URL>#<code>`, your copy of the error reference
    /// [default: the repository's docs/guides/errors.md].
    #[arg(long, env = "IDEM_PROBLEM_BASE_URL", value_name = "URL")]
    pub problem_base_url: Option<String>,

    /// Log format [default: human].
    #[arg(long, env = "IDEM_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Export traces over OTLP/HTTP (JSON) to this collector (`http://collector:4318`; the
    /// path `/v1/traces` is added when none is given): a span per request, store call and
    /// upstream call, with W3C `traceparent` taken from requests and passed upstream. Needs
    /// a binary built with the `otlp` feature [default: no traces].
    #[arg(long, env = "IDEM_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// A TOML config file; flags and environment variables win over it.
    #[arg(long, env = "IDEM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Start even on a store whose settings let it delete live records on its own (a Redis
    /// eviction policy other than noeviction): such a store may re-run operations.
    #[arg(long, env = "IDEM_ACCEPT_STORE_RISKS")]
    pub accept_store_risks: bool,
}

/// `idem proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,

    /// The API to forward to, e.g. `http://127.0.0.1:3000`.
    #[arg(long, env = "IDEM_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// Refuse mutations without an `Idempotency-Key` (400) on every route.
    #[arg(long, env = "IDEM_REQUIRE_KEY")]
    pub require_key: bool,

    /// How long to wait for the upstream's response headers before the outcome is unknown
    /// (504, kept for replay) [default: 30s]. The lease is renewed meanwhile.
    #[arg(long, env = "IDEM_UPSTREAM_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub upstream_timeout: Option<std::time::Duration>,

    /// Refuse keyed mutations that carry no principal (no `Authorization`, or no
    /// --scope-header / --scope-cookie) with 400 `principal_missing`.
    #[arg(long, env = "IDEM_REQUIRE_PRINCIPAL")]
    pub require_principal: bool,

    /// Peers whose `X-Forwarded-*` and `Forwarded` headers are believed and extended
    /// (a load balancer in front of idem), as CIDRs, e.g. `10.0.0.0/8` (repeatable). From
    /// any other peer those headers are replaced [default: none].
    #[arg(
        long = "trusted-proxy",
        env = "IDEM_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,

    /// Store and replay only these response headers (and the body's `Content-Type` and
    /// `Content-Encoding`), repeatable. `Set-Cookie` is replayed only if listed here
    /// [default: every end-to-end header but `Set-Cookie`, `Set-Cookie2`,
    /// `Authentication-Info`, `Proxy-Authentication-Info`].
    #[arg(
        long = "replay-header",
        env = "IDEM_REPLAY_HEADERS",
        value_name = "NAME",
        value_delimiter = ',',
        conflicts_with = "no_replay_headers"
    )]
    pub replay_headers: Vec<String>,

    /// Fingerprint JSON bodies in canonical form (RFC 8785 member order and whitespace,
    /// numbers by exact value): key order, whitespace and `1.0` for `1` are the same request.
    /// A JSON body naming a member twice is then refused with 400.
    #[arg(long, env = "IDEM_CANONICAL_JSON")]
    pub canonical_json: bool,

    /// A request header that is part of what makes two requests the same, e.g. a tenant
    /// header or `host` (repeatable).
    #[arg(
        long = "fingerprint-header",
        env = "IDEM_FINGERPRINT_HEADERS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub fingerprint_headers: Vec<String>,

    /// A JSON pointer into the body that does not count, e.g. `/sent_at` or `/items/*/nonce`
    /// (repeatable; turns --canonical-json on).
    #[arg(
        long = "fingerprint-exclude",
        env = "IDEM_FINGERPRINT_EXCLUDE",
        value_name = "POINTER",
        value_delimiter = ','
    )]
    pub fingerprint_exclude: Vec<String>,

    /// A JSON pointer into the body that counts; when given, nothing else in the body does
    /// (repeatable; turns --canonical-json on).
    #[arg(
        long = "fingerprint-include",
        env = "IDEM_FINGERPRINT_INCLUDE",
        value_name = "POINTER",
        value_delimiter = ','
    )]
    pub fingerprint_include: Vec<String>,

    /// Never store or replay this response header, besides the default ones (repeatable).
    #[arg(
        long = "no-replay-header",
        env = "IDEM_NO_REPLAY_HEADERS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub no_replay_headers: Vec<String>,
}

/// `idem serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Register an operation: `NAME=URL` (repeatable); `execute` POSTs the payload there.
    #[arg(
        long = "operation",
        env = "IDEM_OPERATIONS",
        value_name = "NAME=URL",
        value_delimiter = ','
    )]
    pub operations: Vec<String>,

    /// How long to wait for an operation's answer before its outcome is unknown [default:
    /// 30s]. The lease is renewed meanwhile.
    #[arg(long, env = "IDEM_OPERATION_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub operation_timeout: Option<std::time::Duration>,

    /// The largest operation answer read and kept; a larger one is kept as
    /// `OPERATION_INVALID_RESPONSE`: `512KiB`, `1MiB` [default: 1MiB].
    #[arg(long, env = "IDEM_MAX_OPERATION_RESPONSE", value_name = "SIZE", value_parser = parse_size)]
    pub max_operation_response: Option<usize>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Parses `1048576`, `512KiB`, `1MiB`, `10MB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text
        .parse()
        .map_err(|error| format!("{error} (use e.g. 512KiB, 1MiB)"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{text} is too large"))
}

/// Parses `2s`, `15m`, `24h`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (use e.g. 2s, 15m, 24h)"))
}
