//! Every setting of `idem proxy` and `idem serve`, declared once.
//!
//! Each field below is at the same time a flag (its name in kebab case), an environment
//! variable (`IDEM_` and its name in upper case) and a key of the TOML config file (its name;
//! the proxy's and the service's own settings under `[proxy]` and `[serve]`). Its doc comment
//! is the help text of all three, and its default is in [`CommonSettings::defaults`],
//! [`ProxySettings::defaults`] or [`ServeSettings::defaults`]. `idem --help`,
//! `idem config check` and `docs/reference/configuration.md` are all written from these
//! declarations ([`crate::config`] layers and resolves them).
//!
//! Every field is an `Option`: `None` means "not said here", so that flags, the environment,
//! the file and the defaults can be layered field by field without a line per field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::routes::RouteRule;

/// Settings shared by `proxy` and `serve` (the top level of the config file).
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonSettings {
    /// Address to accept requests on.
    #[arg(long, env = "IDEM_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Serve TLS on --listen with this certificate chain (PEM); needs --tls-key. HTTP/2 is
    /// offered by ALPN beside HTTP/1.1 [default: plain TCP, HTTP/1.1 and h2c].
    #[arg(long, env = "IDEM_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "IDEM_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Where records live: `memory://`, `postgres://…` (`?sslmode=require` or `verify-full`
    /// for TLS), `redis://…`, `rediss://…` (TLS), `redis+cluster://host:port,…` (`rediss+cluster://`
    /// for TLS), or a directory for the embedded store.
    #[arg(long, env = "IDEM_STORE", value_name = "URL")]
    pub store: Option<String>,

    /// A name that keeps this deployment's records apart from another's on the same
    /// PostgreSQL (a schema of that name) or Redis (the key prefix): two gateways with
    /// different namespaces never see each other's keys [default: `public` on PostgreSQL,
    /// `idem` on Redis].
    #[arg(long, env = "IDEM_STORE_NAMESPACE", value_name = "NAME")]
    pub store_namespace: Option<String>,

    /// The most connections to PostgreSQL this instance opens (Redis multiplexes one).
    #[arg(long, env = "IDEM_STORE_POOL_SIZE", value_name = "COUNT")]
    pub store_pool_size: Option<u32>,

    /// A CA certificate (PEM) that the store's TLS certificate is checked against: for
    /// PostgreSQL (`sslmode=verify-ca` or `verify-full`) besides the system's roots, for
    /// `rediss://` in place of them [default: the system's roots].
    #[arg(long, env = "IDEM_STORE_CA_FILE", value_name = "FILE")]
    pub store_ca_file: Option<PathBuf>,

    /// Create or upgrade the store's schema on start (PostgreSQL). Turn off when the
    /// database user may not change the schema, and run `idem migrate` once instead.
    #[arg(long, env = "IDEM_MIGRATE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub migrate: Option<bool>,

    /// How long completed responses are replayed: `2s`, `15m`, `24h`.
    #[arg(long, env = "IDEM_TTL", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub ttl: Option<Duration>,

    /// How long one execution owns its key before a retry may take it over; renewed while
    /// the execution runs.
    #[arg(long, env = "IDEM_LEASE", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub lease: Option<Duration>,

    /// Let a duplicate of an in-flight request wait up to this long (at most 1h) for its
    /// result instead of answering 409 at once [default: no wait].
    #[arg(long, env = "IDEM_WAIT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub wait: Option<Duration>,

    /// How long this instance answers retries of a completed key from its own memory
    /// instead of asking PostgreSQL or Redis again (completed records never change); a
    /// record deleted by hand or expired meanwhile keeps replaying here for at most this
    /// long (at most 60s). `0s` turns it off; the memory and embedded stores have none.
    #[arg(long, env = "IDEM_REPLAY_CACHE", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub replay_cache: Option<Duration>,

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
    /// or its previous response ends.
    #[arg(long, env = "IDEM_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub header_read_timeout: Option<Duration>,

    /// How long an idle keep-alive connection stays open; `0s` closes each connection after
    /// one request. At most --header-read-timeout, which also counts idle time [default:
    /// 15s, or --header-read-timeout when shorter].
    #[arg(long, env = "IDEM_KEEP_ALIVE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub keep_alive_timeout: Option<Duration>,

    /// How many client connections are served at once; more wait to be accepted.
    #[arg(long, env = "IDEM_MAX_CONNECTIONS", value_name = "COUNT")]
    pub max_connections: Option<usize>,

    /// How long a keyed request's body may take to arrive in full; later, 408 and nothing
    /// executed.
    #[arg(long, env = "IDEM_BODY_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub body_read_timeout: Option<Duration>,

    /// How long a write to a client may make no progress (it stopped reading) before its
    /// connection is closed.
    #[arg(long, env = "IDEM_SEND_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub send_timeout: Option<Duration>,

    /// How long requests in flight may take to finish after SIGTERM before the process
    /// exits anyway (their keys then lapse into an unknown outcome). Keep it below your
    /// supervisor's stop timeout (systemd's `TimeoutStopSec`, Kubernetes'
    /// `terminationGracePeriodSeconds`).
    #[arg(long, env = "IDEM_DRAIN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub drain_timeout: Option<Duration>,

    /// Address for `GET /metrics`, `/healthz`, `/readyz` and `/status`; never the public
    /// address [default: none].
    #[arg(long, env = "IDEM_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// The status answered when a key is reused for a different request: 422 (the IETF
    /// draft's), 409 or 400.
    #[arg(long, env = "IDEM_MISMATCH_STATUS", value_name = "STATUS")]
    pub mismatch_status: Option<u16>,

    /// An upstream's or operation's status that means "not processed, try later": passed to
    /// the client, the key released so that a retry executes; repeat or separate by commas,
    /// `none` for no such status. Only statuses answered before any effect.
    #[arg(
        long = "transient-status",
        env = "IDEM_TRANSIENT_STATUSES",
        value_name = "STATUS",
        value_delimiter = ','
    )]
    #[serde(default, deserialize_with = "statuses::deserialize")]
    pub transient_statuses: Option<Vec<String>>,

    /// Where each error's `type` points: `<URL>#<code>`, your copy of the error reference
    /// [default: the error reference on docs.rs, `idem_http::errors`].
    #[arg(long, env = "IDEM_PROBLEM_BASE_URL", value_name = "URL")]
    pub problem_base_url: Option<String>,

    /// A CA certificate (PEM) that `https://` upstreams and operations are checked against,
    /// besides the system's roots.
    #[arg(long, env = "IDEM_UPSTREAM_CA_FILE", value_name = "FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "IDEM_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Export traces over OTLP/HTTP (JSON) to this collector (`http://collector:4318`; the
    /// path `/v1/traces` is added when none is given): a span per request, store call and
    /// upstream call, with W3C `traceparent` taken from requests and passed upstream. Needs
    /// a binary built with the `otlp` feature [default: no traces].
    #[arg(long, env = "IDEM_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Start even on a store whose settings let it delete live records on its own (a Redis
    /// eviction policy other than noeviction): such a store may re-run operations.
    #[arg(long, env = "IDEM_ACCEPT_STORE_RISKS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub accept_store_risks: Option<bool>,
}

impl CommonSettings {
    /// What a setting is when nothing says otherwise. `None`: unset by default, as its help
    /// text says.
    pub fn defaults() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            store: Some("./idem-data".into()),
            store_pool_size: Some(idem_postgres::DEFAULT_MAX_CONNECTIONS),
            migrate: Some(true),
            ttl: Some(idem_core::DEFAULT_TTL),
            lease: Some(idem_core::DEFAULT_LEASE),
            replay_cache: Some(idem_core::DEFAULT_REPLAY_CACHE_MAX_AGE),
            // Long enough for a slow mobile link, short enough that a client sending half a
            // head and going silent frees its connection soon.
            header_read_timeout: Some(Duration::from_secs(15)),
            // Far above what one instance needs, far below the file descriptors a default
            // Linux process may open under a raised limit.
            max_connections: Some(4096),
            body_read_timeout: Some(idem_http::DEFAULT_BODY_READ_TIMEOUT),
            // Long enough for a slow mobile link, short enough that clients that never read
            // cannot hold every connection slot.
            send_timeout: Some(Duration::from_secs(30)),
            // The upstream timeout: a request forwarded just before SIGTERM may finish.
            drain_timeout: Some(Duration::from_secs(30)),
            mismatch_status: Some(422),
            transient_statuses: Some(
                idem_http::DEFAULT_TRANSIENT_STATUSES
                    .iter()
                    .map(|status| status.as_u16().to_string())
                    .collect(),
            ),
            log_format: Some(LogFormat::Human),
            accept_store_risks: Some(false),
            ..Self::default()
        }
    }
}

/// The command line of `proxy` and `serve`: the shared settings and the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// The shared settings.
    #[command(flatten)]
    pub settings: CommonSettings,

    /// A TOML config file (see `idem.example.toml`); flags and environment variables win
    /// over it.
    #[arg(long, env = "IDEM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `idem proxy`'s own settings (`[proxy]` in the config file).
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// The API to forward to: `http://127.0.0.1:3000`, `https://api.internal` (maybe with a
    /// path prefix).
    #[arg(long, env = "IDEM_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// How long to wait for the upstream's response headers before the outcome is unknown
    /// (504, kept for replay). The lease is renewed meanwhile.
    #[arg(long, env = "IDEM_UPSTREAM_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub upstream_timeout: Option<Duration>,

    /// Speak HTTP/2 to an `http://` upstream without asking first (h2c with prior knowledge,
    /// as gRPC servers expect). `https://` upstreams get HTTP/2 when they offer it by ALPN.
    #[arg(long, env = "IDEM_UPSTREAM_HTTP2", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub upstream_http2: Option<bool>,

    /// The methods covered; others are forwarded untouched (repeatable, or separate by
    /// commas).
    #[arg(
        long = "method",
        env = "IDEM_METHODS",
        value_name = "METHOD",
        value_delimiter = ','
    )]
    pub methods: Option<Vec<String>>,

    /// The request header that carries the key.
    #[arg(long, env = "IDEM_KEY_HEADER", value_name = "NAME")]
    pub key_header: Option<String>,

    /// Which keys are accepted: `any` (1-255 visible ASCII characters) or `uuid` (a UUID
    /// version 4 only; other keys get 400).
    #[arg(long, env = "IDEM_KEY_FORMAT", value_enum)]
    pub key_format: Option<KeyFormat>,

    /// Refuse mutations without a key (400) on every route.
    #[arg(long, env = "IDEM_REQUIRE_KEY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub require_key: Option<bool>,

    /// Refuse keyed mutations that carry no principal (no `Authorization`, or no
    /// --scope-header / --scope-cookie) with 400 `principal_missing`.
    #[arg(long, env = "IDEM_REQUIRE_PRINCIPAL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub require_principal: Option<bool>,

    /// The largest request body accepted on a keyed request; larger: 413, nothing forwarded.
    #[arg(long, env = "IDEM_MAX_REQUEST_BODY", value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, with = "size")]
    pub max_request_body: Option<usize>,

    /// The largest response body stored for replay; a larger one reaches the first client in
    /// full, and its retries get 410 `response_not_stored`.
    #[arg(long, env = "IDEM_MAX_STORED_RESPONSE", value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, with = "size")]
    pub max_stored_response: Option<usize>,

    /// Store and replay the upstream's 5xx answers. Off: a 5xx releases the key and a retry
    /// forwards again; only for an upstream whose 5xx guarantee that nothing happened.
    #[arg(long, env = "IDEM_STORE_SERVER_ERRORS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub store_server_errors: Option<bool>,

    /// Peers whose `X-Forwarded-*` and `Forwarded` headers are believed and extended
    /// (a load balancer in front of idem), as CIDRs, e.g. `10.0.0.0/8` (repeatable). From
    /// any other peer those headers are replaced [default: none].
    #[arg(
        long = "trusted-proxy",
        env = "IDEM_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Option<Vec<String>>,

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
    pub replay_headers: Option<Vec<String>>,

    /// Never store or replay this response header, besides the default ones (repeatable).
    #[arg(
        long = "no-replay-header",
        env = "IDEM_NO_REPLAY_HEADERS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub no_replay_headers: Option<Vec<String>>,

    /// Fingerprint JSON bodies in canonical form (RFC 8785 member order and whitespace,
    /// numbers by exact value): key order, whitespace and `1.0` for `1` are the same request.
    /// A JSON body naming a member twice is then refused with 400.
    #[arg(long, env = "IDEM_CANONICAL_JSON", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub canonical_json: Option<bool>,

    /// A request header that is part of what makes two requests the same, e.g. a tenant
    /// header or `host` (repeatable).
    #[arg(
        long = "fingerprint-header",
        env = "IDEM_FINGERPRINT_HEADERS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub fingerprint_headers: Option<Vec<String>>,

    /// A JSON pointer into the body that does not count, e.g. `/sent_at` or `/items/*/nonce`
    /// (repeatable; turns --canonical-json on).
    #[arg(
        long = "fingerprint-exclude",
        env = "IDEM_FINGERPRINT_EXCLUDE",
        value_name = "POINTER",
        value_delimiter = ','
    )]
    pub fingerprint_exclude: Option<Vec<String>>,

    /// A JSON pointer into the body that counts; when given, nothing else in the body does
    /// (repeatable; turns --canonical-json on).
    #[arg(
        long = "fingerprint-include",
        env = "IDEM_FINGERPRINT_INCLUDE",
        value_name = "POINTER",
        value_delimiter = ','
    )]
    pub fingerprint_include: Option<Vec<String>>,

    /// Per-route rules, `[[proxy.routes]]` in the config file only (see the example file).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteRule>,
}

impl ProxySettings {
    /// What a proxy setting is when nothing says otherwise.
    pub fn defaults() -> Self {
        Self {
            upstream_timeout: Some(Duration::from_secs(30)),
            upstream_http2: Some(false),
            methods: Some(
                ["POST", "PUT", "PATCH", "DELETE"]
                    .map(String::from)
                    .to_vec(),
            ),
            key_header: Some(idem_http::headers::IDEMPOTENCY_KEY.as_str().to_owned()),
            key_format: Some(KeyFormat::Any),
            require_key: Some(false),
            require_principal: Some(false),
            max_request_body: Some(idem_http::DEFAULT_MAX_REQUEST_BODY),
            max_stored_response: Some(idem_http::DEFAULT_MAX_STORED_RESPONSE),
            store_server_errors: Some(true),
            canonical_json: Some(false),
            ..Self::default()
        }
    }
}

/// `idem proxy`.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The proxy's own.
    #[command(flatten)]
    pub proxy: ProxySettings,
}

/// `idem serve`'s own settings (`[serve]` in the config file).
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Register an operation: `NAME=URL` (repeatable); `execute` POSTs the payload there.
    /// In the config file, a table `[serve.operations]` of `name = "url"` or
    /// `name = { url = "…", on_lapse = "take_over" }`; a flag wins for a name in both.
    #[arg(
        long = "operation",
        env = "IDEM_OPERATIONS",
        value_name = "NAME=URL",
        value_delimiter = ','
    )]
    #[serde(skip)]
    pub operation: Vec<String>,

    /// The operations of the config file, by name (`--operation` on the command line).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub operations: std::collections::BTreeMap<String, OperationEntry>,

    /// How long to wait for an operation's answer before its outcome is unknown. The lease
    /// is renewed meanwhile.
    #[arg(long, env = "IDEM_OPERATION_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub operation_timeout: Option<Duration>,

    /// The largest operation answer read and kept; a larger one is kept as
    /// `OPERATION_INVALID_RESPONSE`: `512KiB`, `1MiB`.
    #[arg(long, env = "IDEM_MAX_OPERATION_RESPONSE", value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, with = "size")]
    pub max_operation_response: Option<usize>,
}

impl ServeSettings {
    /// What a service setting is when nothing says otherwise.
    pub fn defaults() -> Self {
        Self {
            operation_timeout: Some(Duration::from_secs(30)),
            // The layer's stored-response limit, for the same reason: replays are API
            // results, not downloads.
            max_operation_response: Some(idem_http::DEFAULT_MAX_STORED_RESPONSE),
            ..Self::default()
        }
    }
}

/// `idem serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The service's own.
    #[command(flatten)]
    pub serve: ServeSettings,
}

/// One `[serve.operations]` entry: its URL, or a table with the URL and a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OperationEntry {
    /// Only where it is POSTed.
    Url(String),
    /// Where, and what a retry does after the executing instance died.
    Table {
        /// Where it is POSTed.
        url: String,
        /// `report_unknown` (the default) or `take_over`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_lapse: Option<crate::routes::LapsePolicy>,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Which idempotency keys are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// 1-255 visible ASCII characters.
    Any,
    /// A UUID version 4.
    Uuid,
}

/// Parses `1048576`, `512KiB`, `1MiB`, `10MB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text
        .parse()
        .map_err(|error| format!("{error} (use e.g. 512KiB, 1MiB)"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{text} is too large"))
}

/// Parses `2s`, `15m`, `24h`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (use e.g. 2s, 15m, 24h)"))
}

/// Sizes in the config file: `"1MiB"` or a number of bytes; written back exactly (`"1MiB"`
/// when whole mebibytes, else kibibytes, else bytes), never rounded as `ByteSize` displays.
mod size {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Bytes(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(
        size: &Option<usize>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match size {
            None => serializer.serialize_none(),
            Some(size) => serializer.serialize_str(&exact(*size)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<usize>, D::Error> {
        match Option::<Written>::deserialize(deserializer)? {
            None => Ok(None),
            Some(Written::Bytes(bytes)) => usize::try_from(bytes)
                .map(Some)
                .map_err(|_| serde::de::Error::custom("too large")),
            Some(Written::Text(text)) => super::parse_size(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    /// `size` in the largest binary unit that holds it whole.
    pub fn exact(size: usize) -> String {
        const KIB: usize = 1024;
        match size {
            0 => "0".into(),
            size if size % (KIB * KIB) == 0 => format!("{}MiB", size / (KIB * KIB)),
            size if size % KIB == 0 => format!("{}KiB", size / KIB),
            size => size.to_string(),
        }
    }
}

/// Durations in the config file: `"30s"`, `"1h 30m"`; written back in the largest unit that
/// holds them whole (`"24h"`, `"90s"`, `"1500ms"`).
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            None => serializer.serialize_none(),
            Some(duration) => serializer.serialize_str(&exact(*duration)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }

    /// `duration` in the largest unit that holds it whole.
    pub fn exact(duration: Duration) -> String {
        let (seconds, nanos) = (duration.as_secs(), duration.subsec_nanos());
        match (seconds, nanos) {
            (0, 0) => "0s".into(),
            (seconds, 0) if seconds % 3600 == 0 => format!("{}h", seconds / 3600),
            (seconds, 0) if seconds % 60 == 0 => format!("{}m", seconds / 60),
            (seconds, 0) => format!("{seconds}s"),
            _ if nanos % 1_000_000 == 0 => format!("{}ms", duration.as_millis()),
            _ => format!("{}ns", duration.as_nanos()),
        }
    }
}

/// `transient_statuses` in the config file: numbers (`[429, 503]`) or strings, as flags
/// give them (`"none"` included).
mod statuses {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<String>>, D::Error> {
        Ok(
            Option::<Vec<Written>>::deserialize(deserializer)?.map(|statuses| {
                statuses
                    .into_iter()
                    .map(|status| match status {
                        Written::Number(number) => number.to_string(),
                        Written::Text(text) => text,
                    })
                    .collect()
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_written_back_exactly() {
        for (size, written) in [
            (1024 * 1024, "1MiB"),
            (1536 * 1024, "1536KiB"),
            (1_000_001, "1000001"),
        ] {
            assert_eq!(size::exact(size), written);
            assert_eq!(parse_size(written), Ok(size));
        }
        for (duration, written) in [
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(1500), "1500ms"),
        ] {
            assert_eq!(duration::exact(duration), written);
            assert_eq!(parse_duration(written), Ok(duration));
        }
    }
}
