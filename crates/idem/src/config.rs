//! The settings a command runs with: flags, then environment variables (both through clap),
//! then the TOML config file, then the defaults below.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! store = "./idem-data"          # memory://, postgres://…, redis://…, or a directory
//! # store = "memory://?max_records=1000000&max_bytes=1GiB"   # the memory store's bounds (> 0)
//! ttl = "24h"
//! lease = "30s"
//! # wait = "2s"                  # a duplicate waits for the result (at most 1h); default 409
//! replay_cache = "5s"            # PostgreSQL, Redis: replays answered from memory this long; "0s": off
//! admin_listen = "127.0.0.1:9090"
//! log_format = "json"            # or "human" (the default)
//! # otlp_endpoint = "http://collector:4318"   # traces over OTLP/HTTP (the `otlp` feature)
//! accept_store_risks = false     # true: start on a Redis that may evict records
//! scope_cookie = "session"       # or scope_header = "x-api-key"; default Authorization
//! header_read_timeout = "15s"
//! keep_alive_timeout = "15s"     # "0s": one request per connection; at most header_read_timeout
//! max_connections = 4096
//! body_read_timeout = "30s"
//! send_timeout = "30s"           # a client that stops reading is cut off after this
//! mismatch_status = 422          # or 409, 400
//! transient_statuses = [429, 503]   # "not processed, try later": passed on, key released
//! problem_base_url = "https://docs.example.com/idem/errors"   # error `type`s point here
//!
//! [proxy]
//! upstream = "http://127.0.0.1:3000"
//! upstream_timeout = "30s"
//! require_key = false
//! require_principal = false
//! trusted_proxies = ["10.0.0.0/8"]
//! no_replay_headers = ["x-session-hint"] # or replay_headers = [...], an allow list; not both
//! # replay_headers = []          # an empty allow list: only Content-Type, Content-Encoding
//! canonical_json = true          # key order, whitespace, 1.0 vs 1: the same request
//! fingerprint_headers = ["x-tenant"]
//! fingerprint_exclude = ["/sent_at"]     # JSON pointers; or fingerprint_include = [...]
//!
//! [[proxy.routes]]               # first match wins
//! method = "POST"                # or "*"
//! path = "/payments/**"          # `*` one segment, `**` the rest
//! require_key = true
//! ttl = "1h"
//! on_lapse = "report_unknown"    # or "take_over": re-run after a crash (safe operations only)
//!
//! [[proxy.routes]]
//! path = "/webhooks/**"
//! skip = true                    # forwarded untouched
//!
//! [serve]
//! operation_timeout = "30s"
//! max_operation_response = "1MiB"
//!
//! [serve.operations]
//! "payment.charge" = "http://127.0.0.1:4000/charge"
//! "report.render" = { url = "http://127.0.0.1:4000/render", on_lapse = "take_over" }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::cli::{CommonArgs, LogFormat, ProxyArgs, parse_duration};
use crate::routes::{LapsePolicy, RouteRule, RouteTable};
use crate::store::StoreLocation;
use crate::upstream::Upstream;
use http::HeaderName;
use idem_core::{JsonFilter, OnLapse};
use idem_http::ReplayedHeaders;
use idem_http::headers::NOT_REPLAYED_BY_DEFAULT;

/// Where `idem` listens when told nothing: loopback only, so a first run exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The embedded store's directory when `--store` is not given.
pub const DEFAULT_STORE: &str = "./idem-data";
/// How long an upstream or operation may take before its outcome is unknown.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client has to send a request head: long enough for a slow mobile link, short
/// enough that a client sending half a head and going silent frees its connection soon.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an idle keep-alive connection stays open (as long as the head may take, which
/// also counts idle time).
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(15);
/// How many connections are served at once: far above what one instance needs, far below
/// the file descriptors a default Linux process may open under a raised limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// How long a write to a client may make no progress (its receive window full) before the
/// connection is closed: long enough for a slow mobile link, short enough that clients that
/// never read cannot hold every connection slot.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest operation answer `idem serve` reads and keeps: the layer's stored-response
/// limit, for the same reason (replays are API results, not downloads).
pub const DEFAULT_MAX_OPERATION_RESPONSE: usize = idem_http::DEFAULT_MAX_STORED_RESPONSE;

/// The config file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    store: Option<String>,
    ttl: Option<String>,
    lease: Option<String>,
    wait: Option<String>,
    replay_cache: Option<String>,
    scope_header: Option<String>,
    scope_cookie: Option<String>,
    header_read_timeout: Option<String>,
    keep_alive_timeout: Option<String>,
    max_connections: Option<usize>,
    body_read_timeout: Option<String>,
    send_timeout: Option<String>,
    mismatch_status: Option<u16>,
    transient_statuses: Option<Vec<u16>>,
    problem_base_url: Option<String>,
    admin_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    otlp_endpoint: Option<String>,
    accept_store_risks: Option<bool>,
    #[serde(default)]
    proxy: ProxyFile,
    #[serde(default)]
    serve: ServeFile,
}

/// `[proxy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    upstream: Option<String>,
    require_key: Option<bool>,
    upstream_timeout: Option<String>,
    require_principal: Option<bool>,
    trusted_proxies: Option<Vec<String>>,
    replay_headers: Option<Vec<String>>,
    no_replay_headers: Option<Vec<String>>,
    canonical_json: Option<bool>,
    fingerprint_headers: Option<Vec<String>>,
    fingerprint_exclude: Option<Vec<String>>,
    fingerprint_include: Option<Vec<String>>,
    #[serde(default)]
    routes: Vec<RouteRule>,
}

/// `[serve]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    #[serde(default)]
    operations: BTreeMap<String, OperationFile>,
    operation_timeout: Option<String>,
    max_operation_response: Option<bytesize::ByteSize>,
}

/// One `[serve.operations]` entry: its URL, or a table with the URL and a policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OperationFile {
    Url(String),
    Table {
        url: String,
        #[serde(default)]
        on_lapse: Option<LapsePolicy>,
    },
}

/// A registered operation, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Where it is POSTed.
    pub url: String,
    /// What a retry does after the instance executing it died mid-way.
    pub on_lapse: OnLapse,
}

impl From<OperationFile> for Operation {
    fn from(file: OperationFile) -> Self {
        match file {
            OperationFile::Url(url) => Self {
                url,
                on_lapse: OnLapse::ReportUnknown,
            },
            OperationFile::Table { url, on_lapse } => Self {
                url,
                on_lapse: on_lapse.map_or(OnLapse::ReportUnknown, OnLapse::from),
            },
        }
    }
}

impl FileConfig {
    /// Reads the file named by `--config`, or nothing.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Settings shared by both commands, resolved and checked: every value is parsed here, once.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The public address.
    pub listen: SocketAddr,
    /// Where records live.
    pub store: StoreLocation,
    /// How long completed responses are replayed.
    pub ttl: Duration,
    /// How long one execution owns its key between renewals.
    pub lease: Duration,
    /// How long a duplicate waits for an in-flight result; `None`: 409 at once.
    pub wait: Option<Duration>,
    /// How long a network store's replays are answered from this process; zero: never.
    pub replay_cache: Duration,
    /// The header whose value scopes keys; `None`: `Authorization` (or the cookie).
    pub scope_header: Option<HeaderName>,
    /// The cookie whose value scopes keys, when no header does.
    pub scope_cookie: Option<String>,
    /// How long a client has to send a request head.
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection stays open; `None`: no keep-alive.
    pub keep_alive_timeout: Option<Duration>,
    /// How many connections are served at once.
    pub max_connections: usize,
    /// How long a request body may take to arrive.
    pub body_read_timeout: Duration,
    /// How long a write to a client may make no progress.
    pub send_timeout: Duration,
    /// The status of a mismatch answer.
    pub mismatch_status: http::StatusCode,
    /// Upstream or operation statuses that mean "not processed": passed on, key released.
    pub transient_statuses: Vec<http::StatusCode>,
    /// Where problem types point, if not the default.
    pub problem_base_url: Option<String>,
    /// The admin listener's address, if any.
    pub admin_listen: Option<SocketAddr>,
    /// How logs are written.
    pub log_format: LogFormat,
    /// Where traces are exported, if anywhere.
    pub otlp_endpoint: Option<String>,
    /// Start on a store whose settings may delete live records.
    pub accept_store_risks: bool,
}

/// `idem proxy`'s settings, resolved.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// What both commands share.
    pub common: ServerSettings,
    /// Where requests are forwarded.
    pub upstream: Upstream,
    /// Whether every mutation must carry a key when no route rule says.
    pub require_key: bool,
    /// How long the upstream may take to answer before the outcome is unknown.
    pub upstream_timeout: Duration,
    /// The per-route rules.
    pub routes: RouteTable,
    /// Whether keyed requests without a principal are refused.
    pub require_principal: bool,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which response headers are stored and replayed.
    pub replayed_headers: ReplayedHeaders,
    /// Whether JSON bodies are fingerprinted in canonical form.
    pub canonical_json: bool,
    /// Request headers that are part of the fingerprint.
    pub fingerprint_headers: Vec<HeaderName>,
    /// Which members of a JSON body count.
    pub json_filter: JsonFilter,
}

/// `idem serve`'s settings, resolved.
#[derive(Debug, Clone)]
pub struct Serve {
    /// What both commands share.
    pub common: ServerSettings,
    /// The registered operations, by name.
    pub operations: BTreeMap<String, Operation>,
    /// How long an operation may take to answer before its outcome is unknown.
    pub operation_timeout: Duration,
    /// The largest operation answer read and kept, in bytes.
    pub max_operation_response: usize,
}

fn file_duration(field: &str, value: Option<&String>) -> anyhow::Result<Option<Duration>> {
    value
        .map(|text| {
            parse_duration(text).map_err(|error| anyhow::anyhow!("config file `{field}`: {error}"))
        })
        .transpose()
}

/// The longest `--wait`: a duplicate that waits longer than a client's own timeout helps
/// nobody, and an hour bounds the tasks a burst of duplicates can hold.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Refuses settings that would quietly break the guarantee: a zero lease lets every duplicate
/// take an in-flight key over; a zero TTL forgets every result at once.
fn check(common: &ServerSettings) -> anyhow::Result<()> {
    anyhow::ensure!(
        !common.lease.is_zero(),
        "--lease must be longer than 0s: it is how long one execution owns its key"
    );
    anyhow::ensure!(
        !common.ttl.is_zero(),
        "--ttl must be longer than 0s: it is how long results are replayed"
    );
    anyhow::ensure!(
        common.replay_cache <= idem_core::MAX_REPLAY_CACHE_AGE,
        "--replay-cache must be at most 60s: it is how long a record deleted or expired may still be replayed"
    );
    if let Some(wait) = common.wait {
        anyhow::ensure!(wait <= MAX_WAIT, "--wait must be at most 1h");
    }
    anyhow::ensure!(
        !common.header_read_timeout.is_zero(),
        "--header-read-timeout must be longer than 0s"
    );
    anyhow::ensure!(
        common
            .keep_alive_timeout
            .is_none_or(|idle| idle <= common.header_read_timeout),
        "--keep-alive-timeout cannot exceed --header-read-timeout: the wait for the next request's head counts toward both"
    );
    anyhow::ensure!(
        common.max_connections > 0,
        "--max-connections must be at least 1"
    );
    anyhow::ensure!(
        !common.body_read_timeout.is_zero(),
        "--body-read-timeout must be longer than 0s"
    );
    anyhow::ensure!(
        !common.send_timeout.is_zero(),
        "--send-timeout must be longer than 0s"
    );
    Ok(())
}

/// The connection limits of the public listener.
impl ServerSettings {
    /// What [`crate::connections`] enforces.
    pub fn connection_limits(&self) -> crate::connections::ConnectionLimits {
        crate::connections::ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            max_connections: self.max_connections,
            send_timeout: self.send_timeout,
        }
    }
}

/// A header name from a flag or the file, or an error naming where it came from.
fn header_name(flag: &str, name: &str) -> anyhow::Result<HeaderName> {
    HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| anyhow::anyhow!("{flag} {name:?} is not a valid header name"))
}

/// `--replay-header` (an allow list) or `--no-replay-header` (added to the default deny
/// list), from flags or else the file (a flag of either kind replaces both of the file's
/// lists); both kinds from one source are refused.
fn replayed_headers(args: &ProxyArgs, file: &ProxyFile) -> anyhow::Result<ReplayedHeaders> {
    // `replay_headers = []` in the file is an allow list too: nothing but the body's type.
    let (only, allow_list, except) =
        if args.replay_headers.is_empty() && args.no_replay_headers.is_empty() {
            (
                file.replay_headers.clone().unwrap_or_default(),
                file.replay_headers.is_some(),
                file.no_replay_headers.clone().unwrap_or_default(),
            )
        } else {
            (
                args.replay_headers.clone(),
                !args.replay_headers.is_empty(),
                args.no_replay_headers.clone(),
            )
        };
    match (!allow_list, except.is_empty()) {
        (true, true) => Ok(ReplayedHeaders::default()),
        (false, true) => Ok(ReplayedHeaders::Only(
            only.iter()
                .map(|name| header_name("--replay-header", name))
                .collect::<anyhow::Result<_>>()?,
        )),
        (true, false) => {
            let mut denied = NOT_REPLAYED_BY_DEFAULT.to_vec();
            for name in &except {
                denied.push(header_name("--no-replay-header", name)?);
            }
            Ok(ReplayedHeaders::AllExcept(denied))
        }
        (false, false) => anyhow::bail!(
            "--replay-header (an allow list) and --no-replay-header (a deny list) cannot be combined"
        ),
    }
}

/// A cookie name: an RFC 6265 token (visible ASCII but separators), so that it can be found
/// in a `Cookie` header.
fn cookie_name(name: &str) -> anyhow::Result<String> {
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|byte| { byte.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&byte) }),
        "--scope-cookie {name:?} is not a cookie name"
    );
    Ok(name.to_owned())
}

/// `--mismatch-status`: one of the statuses a mismatch may have.
fn mismatch_status(status: Option<u16>) -> anyhow::Result<http::StatusCode> {
    let Some(status) = status else {
        return Ok(http::StatusCode::UNPROCESSABLE_ENTITY);
    };
    http::StatusCode::from_u16(status)
        .ok()
        .filter(|status| idem_http::MISMATCH_STATUSES.contains(status))
        .ok_or_else(|| {
            anyhow::anyhow!("--mismatch-status {status}: use 422 (the IETF draft's), 409 or 400")
        })
}

/// `--transient-status` (or the file's `transient_statuses`, or 429 and 503): 4xx statuses
/// and 503 only. A success or a redirect is an answer; another 5xx may follow the effect, and
/// 504 is also the gateway's own "outcome unknown", which must stay kept. `none` on the
/// command line is the empty list.
fn transient_statuses(
    flags: &[String],
    file: Option<&[u16]>,
) -> anyhow::Result<Vec<http::StatusCode>> {
    let codes: Vec<u16> = match (flags, file) {
        ([], None) => return Ok(idem_http::DEFAULT_TRANSIENT_STATUSES.to_vec()),
        ([], Some(file)) => file.to_vec(),
        ([none], _) if none.trim().eq_ignore_ascii_case("none") => Vec::new(),
        (flags, _) => flags
            .iter()
            .map(|flag| {
                flag.trim().parse::<u16>().map_err(|_| {
                    anyhow::anyhow!("--transient-status {flag:?}: a status such as 429, or none")
                })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    codes
        .into_iter()
        .map(|code| {
            http::StatusCode::from_u16(code)
                .ok()
                .filter(|status| {
                    status.is_client_error() || *status == http::StatusCode::SERVICE_UNAVAILABLE
                })
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--transient-status {code}: only a 4xx status or 503 can mean \"not processed\" (other 5xx may follow the effect, and 502 and 504 are also the gateway's own answers for an outcome it does not know)"
                    )
                })
        })
        .collect()
}

/// `--problem-base-url`: an absolute http(s) URL without a fragment (the code is appended
/// as one).
fn problem_base_url(url: &str) -> anyhow::Result<String> {
    let absolute = url
        .parse::<http::Uri>()
        .is_ok_and(|parsed| matches!(parsed.scheme_str(), Some("http" | "https")));
    anyhow::ensure!(
        absolute && !url.contains('#'),
        "--problem-base-url {url:?}: use an absolute http(s) URL without a '#'"
    );
    Ok(url.to_owned())
}

/// The fingerprint settings: canonical JSON (on by flag, or by any JSON pointer), the
/// identifying headers, and the JSON pointers that count or do not.
fn fingerprint(
    args: &ProxyArgs,
    file: &ProxyFile,
) -> anyhow::Result<(bool, Vec<HeaderName>, JsonFilter)> {
    let from = |flag: &Vec<String>, file: &Option<Vec<String>>| {
        if flag.is_empty() {
            file.clone().unwrap_or_default()
        } else {
            flag.clone()
        }
    };
    let headers = from(&args.fingerprint_headers, &file.fingerprint_headers)
        .iter()
        .map(|name| header_name("--fingerprint-header", name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let filter = JsonFilter {
        include: from(&args.fingerprint_include, &file.fingerprint_include),
        exclude: from(&args.fingerprint_exclude, &file.fingerprint_exclude),
    };
    for pointer in filter.include.iter().chain(&filter.exclude) {
        anyhow::ensure!(
            !pointer.is_empty() && idem_core::canonical_json::is_pointer(pointer),
            "--fingerprint-include/--fingerprint-exclude {pointer:?} is not a JSON pointer (e.g. /sent_at, /items/*/nonce)"
        );
    }
    let canonical =
        args.canonical_json || file.canonical_json.unwrap_or(false) || !filter.is_empty();
    Ok((canonical, headers, filter))
}

/// `--trusted-proxy` CIDRs (a bare address is a /32 or /128).
fn trusted_proxies(values: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    values
        .iter()
        .map(|value| {
            let value = value.trim();
            value
                .parse::<ipnet::IpNet>()
                .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "--trusted-proxy {value:?} is not a CIDR (e.g. 10.0.0.0/8) or an address"
                    )
                })
        })
        .collect()
}

fn common(args: CommonArgs, file: &FileConfig) -> anyhow::Result<ServerSettings> {
    let listen = match args.listen.or(file.listen) {
        Some(listen) => listen,
        None => DEFAULT_LISTEN.parse()?,
    };
    // The scope is one setting written two ways: a scope flag replaces the file's, whichever
    // of the two the file names, as every other flag replaces its file key.
    let scope_from_args = args.scope_header.is_some() || args.scope_cookie.is_some();
    // An unset keep-alive timeout follows a shorter header-read timeout instead of refusing
    // to start: the wait for the next request's head counts toward both.
    let header_read_timeout = args
        .header_read_timeout
        .or(file_duration(
            "header_read_timeout",
            file.header_read_timeout.as_ref(),
        )?)
        .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT);
    let common = ServerSettings {
        listen,
        store: StoreLocation::parse(
            &args
                .store
                .or_else(|| file.store.clone())
                .unwrap_or_else(|| DEFAULT_STORE.into()),
        )?,
        ttl: args
            .ttl
            .or(file_duration("ttl", file.ttl.as_ref())?)
            .unwrap_or(idem_core::DEFAULT_TTL),
        lease: args
            .lease
            .or(file_duration("lease", file.lease.as_ref())?)
            .unwrap_or(idem_core::DEFAULT_LEASE),
        wait: args.wait.or(file_duration("wait", file.wait.as_ref())?),
        replay_cache: args
            .replay_cache
            .or(file_duration("replay_cache", file.replay_cache.as_ref())?)
            .unwrap_or(idem_core::DEFAULT_REPLAY_CACHE_MAX_AGE),
        scope_header: if scope_from_args {
            args.scope_header.clone()
        } else {
            file.scope_header.clone()
        }
        .map(|name| header_name("--scope-header", &name))
        .transpose()?,
        scope_cookie: if scope_from_args {
            args.scope_cookie.clone()
        } else {
            file.scope_cookie.clone()
        }
        .map(|name| cookie_name(&name))
        .transpose()?,
        header_read_timeout,
        keep_alive_timeout: Some(
            args.keep_alive_timeout
                .or(file_duration(
                    "keep_alive_timeout",
                    file.keep_alive_timeout.as_ref(),
                )?)
                .unwrap_or_else(|| DEFAULT_KEEP_ALIVE_TIMEOUT.min(header_read_timeout)),
        )
        .filter(|idle| !idle.is_zero()),
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        body_read_timeout: args
            .body_read_timeout
            .or(file_duration(
                "body_read_timeout",
                file.body_read_timeout.as_ref(),
            )?)
            .unwrap_or(idem_http::DEFAULT_BODY_READ_TIMEOUT),
        send_timeout: args
            .send_timeout
            .or(file_duration("send_timeout", file.send_timeout.as_ref())?)
            .unwrap_or(DEFAULT_SEND_TIMEOUT),
        mismatch_status: mismatch_status(args.mismatch_status.or(file.mismatch_status))?,
        transient_statuses: transient_statuses(
            &args.transient_statuses,
            file.transient_statuses.as_deref(),
        )?,
        problem_base_url: args
            .problem_base_url
            .clone()
            .or_else(|| file.problem_base_url.clone())
            .map(|url| problem_base_url(&url))
            .transpose()?,
        admin_listen: args.admin_listen.or(file.admin_listen),
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Human),
        otlp_endpoint: args.otlp_endpoint.clone().or(file.otlp_endpoint.clone()),
        accept_store_risks: args.accept_store_risks || file.accept_store_risks.unwrap_or(false),
    };
    anyhow::ensure!(
        common.scope_header.is_none() || common.scope_cookie.is_none(),
        "scope keys by a header or by a cookie, not both (--scope-header, --scope-cookie)"
    );
    check(&common)?;
    Ok(common)
}

/// Resolves `idem proxy`'s settings.
pub fn proxy(args: crate::cli::ProxyArgs) -> anyhow::Result<Proxy> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    let replayed_headers = replayed_headers(&args, &file.proxy)?;
    let (canonical_json, fingerprint_headers, json_filter) = fingerprint(&args, &file.proxy)?;
    let common = common(args.common, &file)?;
    let upstream = Upstream::parse(&args
        .upstream
        .or(file.proxy.upstream)
        .context("no upstream: pass --upstream URL (or IDEM_UPSTREAM, or `upstream` under [proxy] in the config file)")?)?;
    Ok(Proxy {
        common,
        upstream,
        require_key: args.require_key || file.proxy.require_key.unwrap_or(false),
        upstream_timeout: args
            .upstream_timeout
            .or(file_duration(
                "proxy.upstream_timeout",
                file.proxy.upstream_timeout.as_ref(),
            )?)
            .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
        routes: RouteTable::new(&file.proxy.routes)?,
        require_principal: args.require_principal || file.proxy.require_principal.unwrap_or(false),
        trusted_proxies: trusted_proxies(if args.trusted_proxies.is_empty() {
            file.proxy.trusted_proxies.as_deref().unwrap_or_default()
        } else {
            &args.trusted_proxies
        })?,
        replayed_headers,
        canonical_json,
        fingerprint_headers,
        json_filter,
    })
    .and_then(|proxy| {
        check_timeout("--upstream-timeout", proxy.upstream_timeout, &proxy.common)?;
        Ok(proxy)
    })
}

/// Resolves `idem serve`'s settings. Operations from flags and from the file are merged;
/// a flag wins for a name defined in both.
pub fn serve(args: crate::cli::ServeArgs) -> anyhow::Result<Serve> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    let common = common(args.common, &file)?;
    let mut operations: BTreeMap<String, Operation> = file
        .serve
        .operations
        .into_iter()
        .map(|(name, operation)| (name, operation.into()))
        .collect();
    for definition in args.operations {
        let (name, url) = definition
            .split_once('=')
            .with_context(|| format!("--operation {definition:?}: expected NAME=URL"))?;
        operations.insert(
            name.trim().to_owned(),
            Operation {
                url: url.trim().to_owned(),
                on_lapse: OnLapse::ReportUnknown,
            },
        );
    }
    Ok(Serve {
        common,
        operations,
        operation_timeout: args
            .operation_timeout
            .or(file_duration(
                "serve.operation_timeout",
                file.serve.operation_timeout.as_ref(),
            )?)
            .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
        max_operation_response: match args.max_operation_response {
            Some(size) => size,
            None => file
                .serve
                .max_operation_response
                .map(|size| usize::try_from(size.as_u64()))
                .transpose()
                .context("serve.max_operation_response is too large")?
                .unwrap_or(DEFAULT_MAX_OPERATION_RESPONSE),
        },
    })
    .and_then(|serve| {
        check_timeout(
            "--operation-timeout",
            serve.operation_timeout,
            &serve.common,
        )?;
        Ok(serve)
    })
}

/// A zero timeout would make every request an unknown outcome. A timeout longer than the
/// lease is fine: the lease is renewed for as long as the upstream (or operation) runs.
fn check_timeout(flag: &str, timeout: Duration, _common: &ServerSettings) -> anyhow::Result<()> {
    anyhow::ensure!(!timeout.is_zero(), "{flag} must be longer than 0s");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn proxy_from(args: &[&str]) -> anyhow::Result<Proxy> {
        let Command::Proxy(args) = Cli::try_parse_from(args)?.command else {
            panic!("a proxy command")
        };
        proxy(args)
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = write(
            "listen = \"127.0.0.1:7000\"\nttl = \"2h\"\nstore = \"memory://\"\n[proxy]\nupstream = \"http://file\"\n",
        );
        let path = file.path().to_str().unwrap();
        let resolved = proxy_from(&["idem", "proxy", "--config", path, "--ttl", "15m"]).unwrap();
        assert_eq!(
            resolved.common.ttl,
            Duration::from_secs(15 * 60),
            "flag wins"
        );
        assert_eq!(
            resolved.common.listen,
            "127.0.0.1:7000".parse().unwrap(),
            "file wins over default"
        );
        assert_eq!(resolved.upstream.to_string(), "http://file");
        assert!(matches!(
            resolved.common.store,
            StoreLocation::Memory {
                max_records: idem_core::DEFAULT_MEMORY_MAX_RECORDS,
                ..
            }
        ));
        assert_eq!(resolved.common.lease, idem_core::DEFAULT_LEASE, "default");
    }

    #[test]
    fn missing_upstream_and_bad_values_are_clear_errors() {
        let error = proxy_from(&["idem", "proxy"]).unwrap_err().to_string();
        assert!(error.contains("--upstream"), "{error}");
        let error = proxy_from(&["idem", "proxy", "--upstream", "http://x", "--ttl", "soon"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("24h"), "{error}");
        for (flag, value, reason) in [
            ("--lease", "0s", "--lease must be longer than 0s"),
            ("--ttl", "0s", "--ttl must be longer than 0s"),
            ("--wait", "2h", "--wait must be at most 1h"),
            (
                "--replay-cache",
                "61s",
                "--replay-cache must be at most 60s",
            ),
            ("--scope-header", "bad header", "not a valid header name"),
            (
                "--upstream-timeout",
                "0s",
                "--upstream-timeout must be longer than 0s",
            ),
            ("--store", "mysql://db", "unknown store scheme"),
            (
                "--mismatch-status",
                "418",
                "use 422 (the IETF draft's), 409 or 400",
            ),
            ("--fingerprint-exclude", "sent_at", "is not a JSON pointer"),
            (
                "--fingerprint-header",
                "bad header",
                "not a valid header name",
            ),
            ("--problem-base-url", "docs/errors", "absolute http(s) URL"),
            ("--scope-cookie", "a;b", "is not a cookie name"),
            ("--trusted-proxy", "10.0.0.0/33", "is not a CIDR"),
            (
                "--keep-alive-timeout",
                "1m",
                "cannot exceed --header-read-timeout",
            ),
            ("--max-connections", "0", "at least 1"),
        ] {
            let args = ["idem", "proxy", "--upstream", "http://x", flag, value];
            let error = format!("{:#}", proxy_from(&args).unwrap_err());
            assert!(error.contains(reason), "{flag} {value}: {error}");
        }
        let error = format!(
            "{:#}",
            proxy_from(&["idem", "proxy", "--upstream", "https://api"]).unwrap_err()
        );
        assert!(error.contains("only http://"), "{error}");
        let file = write("bogus = 1\n");
        let path = file.path().to_str().unwrap();
        let error = format!(
            "{:#}",
            proxy_from(&["idem", "proxy", "--config", path, "--upstream", "http://x"]).unwrap_err()
        );
        assert!(error.contains("bogus"), "{error}");
    }

    #[test]
    fn a_short_header_read_timeout_alone_shortens_the_keep_alive_default() {
        let resolved = proxy_from(&[
            "idem",
            "proxy",
            "--upstream",
            "http://x",
            "--header-read-timeout",
            "5s",
        ])
        .unwrap();
        assert_eq!(resolved.common.header_read_timeout, Duration::from_secs(5));
        assert_eq!(
            resolved.common.keep_alive_timeout,
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn a_scope_flag_replaces_the_files_scope_of_either_kind() {
        let file = write("scope_cookie = \"session\"\n");
        let path = file.path().to_str().unwrap();
        let resolved = proxy_from(&[
            "idem",
            "proxy",
            "--upstream",
            "http://x",
            "--config",
            path,
            "--scope-header",
            "x-api-key",
        ])
        .unwrap();
        assert_eq!(
            resolved
                .common
                .scope_header
                .as_ref()
                .map(HeaderName::as_str),
            Some("x-api-key")
        );
        assert_eq!(resolved.common.scope_cookie, None);
        let resolved =
            proxy_from(&["idem", "proxy", "--upstream", "http://x", "--config", path]).unwrap();
        assert_eq!(resolved.common.scope_cookie.as_deref(), Some("session"));
    }

    #[test]
    fn transient_statuses_come_from_flags_the_file_or_the_default() {
        let statuses = |resolved: Proxy| -> Vec<u16> {
            resolved
                .common
                .transient_statuses
                .iter()
                .map(http::StatusCode::as_u16)
                .collect()
        };
        let base = ["idem", "proxy", "--upstream", "http://x"];
        assert_eq!(statuses(proxy_from(&base).unwrap()), [429, 503]);
        let flag = |value: &str| {
            let mut args = base.to_vec();
            args.extend(["--transient-status", value]);
            proxy_from(&args)
        };
        assert_eq!(statuses(flag("429,418").unwrap()), [429, 418]);
        assert!(statuses(flag("none").unwrap()).is_empty());
        let file = write("transient_statuses = [503]\n");
        let mut args = base.to_vec();
        args.extend(["--config", file.path().to_str().unwrap()]);
        assert_eq!(statuses(proxy_from(&args).unwrap()), [503]);
        for (value, reason) in [
            ("200", "only a 4xx status or 503"),
            ("504", "only a 4xx status or 503"),
            ("soon", "a status such as 429"),
        ] {
            let error = format!("{:#}", flag(value).unwrap_err());
            assert!(error.contains(reason), "{value}: {error}");
        }
    }

    /// Every hostile-client key of the file is read, not only its flag.
    #[test]
    fn the_files_client_protections_are_read() {
        let file = write(
            "scope_cookie = \"sid\"\n[proxy]\nupstream = \"http://x\"\nrequire_principal = true\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\"]\nreplay_headers = []\n",
        );
        let resolved =
            proxy_from(&["idem", "proxy", "--config", file.path().to_str().unwrap()]).unwrap();
        assert_eq!(resolved.common.scope_cookie.as_deref(), Some("sid"));
        assert!(resolved.require_principal);
        assert_eq!(
            resolved.trusted_proxies,
            vec![
                "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
                "192.0.2.1/32".parse().unwrap()
            ]
        );
        assert_eq!(resolved.replayed_headers, ReplayedHeaders::Only(Vec::new()));
        let file = write("[proxy]\nupstream = \"http://x\"\nno_replay_headers = [\"x-hint\"]\n");
        let path = file.path().to_str().unwrap();
        let resolved = proxy_from(&["idem", "proxy", "--config", path]).unwrap();
        let ReplayedHeaders::AllExcept(denied) = resolved.replayed_headers else {
            panic!("a deny list")
        };
        assert!(denied.iter().any(|name| name == "x-hint"));
        assert!(denied.iter().any(|name| name == "set-cookie"));
        // A flag of either kind replaces both of the file's lists.
        let resolved =
            proxy_from(&["idem", "proxy", "--config", path, "--replay-header", "x-a"]).unwrap();
        assert_eq!(
            resolved.replayed_headers,
            ReplayedHeaders::Only(vec![HeaderName::from_static("x-a")])
        );
    }

    #[test]
    fn an_upstream_timeout_may_outlast_the_lease_since_leases_are_renewed() {
        let resolved = proxy_from(&[
            "idem",
            "proxy",
            "--upstream",
            "http://x",
            "--lease",
            "2s",
            "--upstream-timeout",
            "2m",
        ])
        .unwrap();
        assert_eq!(resolved.upstream_timeout, Duration::from_secs(120));
        assert_eq!(resolved.common.lease, Duration::from_secs(2));
    }

    #[test]
    fn operations_merge_flags_over_file() {
        let file = write(
            "[serve.operations]\n\"a\" = { url = \"http://file-a\", on_lapse = \"take_over\" }\n\"b\" = \"http://file-b\"\n",
        );
        let path = file.path().to_str().unwrap();
        let Command::Serve(args) = Cli::try_parse_from([
            "idem",
            "serve",
            "--config",
            path,
            "--operation",
            "b=http://flag-b",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let resolved = serve(args).unwrap();
        assert_eq!(resolved.operations["a"].url, "http://file-a");
        assert_eq!(resolved.operations["a"].on_lapse, OnLapse::TakeOver);
        assert_eq!(resolved.operations["b"].url, "http://flag-b");
        assert_eq!(resolved.operations["b"].on_lapse, OnLapse::ReportUnknown);
    }
}
