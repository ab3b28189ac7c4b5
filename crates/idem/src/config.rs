//! The settings a command runs with, layered and resolved: for each setting of
//! [`crate::settings`], a flag wins over its environment variable (both read by clap), which
//! wins over the config file, which wins over the default. Layering is one generic step over
//! the serialized settings ([`layer`]), so no field is merged by hand; then every value is
//! checked and parsed once, into [`Proxy`] or [`Serve`].
//!
//! The file's format is in `idem.example.toml` (a test parses it) and every key in
//! `docs/reference/configuration.md` (written by [`reference`]; a test fails when stale).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::cli::Cli;
use crate::routes::RouteTable;
use crate::settings::{
    CommonArgs, CommonSettings, KeyFormat, LogFormat, OperationEntry, ProxyArgs, ProxySettings,
    ServeArgs, ServeSettings,
};
use crate::store::{StoreLocation, StoreOptions};
use crate::upstream::Upstream;
use http::{HeaderName, Method};
use idem_core::{JsonFilter, KeyPolicy, OnLapse};
use idem_http::ReplayedHeaders;
use idem_http::headers::NOT_REPLAYED_BY_DEFAULT;

/// How long an idle keep-alive connection stays open when nothing says: 15 s, or the header
/// read timeout when shorter (the wait for the next head counts toward both).
const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings that are one choice written as several keys: a flag for any of them replaces
/// the file's value for all of them (a `--scope-header` flag over a file's `scope_cookie`
/// scopes by the header, instead of refusing both).
const ONE_CHOICE: [&[&str]; 2] = [
    &["scope_header", "scope_cookie"],
    &["replay_headers", "no_replay_headers"],
];

/// The config file, split into its sections, as written.
#[derive(Debug, Default)]
pub struct FileConfig {
    /// Where it was read from, for error messages.
    name: String,
    /// The top level: the shared settings.
    common: Map<String, Value>,
    /// `[proxy]`.
    proxy: Map<String, Value>,
    /// `[serve]`.
    serve: Map<String, Value>,
}

impl FileConfig {
    /// Reads the file named by `--config`, or nothing.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text, &format!("config file {}", path.display()))
    }

    /// Parses a config file's text; `name` says where it came from in errors.
    pub fn parse(text: &str, name: &str) -> anyhow::Result<Self> {
        let table: toml::Table = toml::from_str(text).with_context(|| format!("invalid {name}"))?;
        let Value::Object(mut common) = serde_json::to_value(table)? else {
            anyhow::bail!("invalid {name}: not a table");
        };
        let mut section = |key: &str| match common.remove(key) {
            None => Ok(Map::new()),
            Some(Value::Object(table)) => Ok(table),
            Some(_) => Err(anyhow::anyhow!(
                "invalid {name}: `{key}` must be a table ([{key}])"
            )),
        };
        let (proxy, serve) = (section("proxy")?, section("serve")?);
        Ok(Self {
            name: name.to_owned(),
            common,
            proxy,
            serve,
        })
    }
}

/// `flags` over `file` over `defaults`, key by key: the value of the first layer that says
/// anything (a `None` says nothing). `section` names the file's table in errors.
fn layer<T: Serialize + DeserializeOwned>(
    defaults: &T,
    file: &Map<String, Value>,
    flags: &T,
    name: &str,
    section: &str,
) -> anyhow::Result<T> {
    let said = |settings: &T| -> anyhow::Result<Map<String, Value>> {
        let Value::Object(mut map) = serde_json::to_value(settings)? else {
            anyhow::bail!("settings serialize to a table");
        };
        map.retain(|_, value| !value.is_null());
        Ok(map)
    };
    let (mut merged, mut file, flags) = (said(defaults)?, file.clone(), said(flags)?);
    for choice in ONE_CHOICE {
        if choice.iter().any(|key| flags.contains_key(*key)) {
            choice.iter().for_each(|key| drop(file.remove(*key)));
        }
        if choice
            .iter()
            .any(|key| file.contains_key(*key) || flags.contains_key(*key))
        {
            choice.iter().for_each(|key| drop(merged.remove(*key)));
        }
    }
    merged.extend(file);
    merged.extend(flags);
    serde_path_to_error::deserialize(Value::Object(merged)).map_err(|error| {
        let path = error.path().to_string();
        let key = match (section, path.as_str()) {
            (section, ".") => section.to_owned(),
            ("", path) => path.to_owned(),
            (section, path) => format!("{section}.{path}"),
        };
        anyhow::anyhow!("{name}: `{key}`: {}", error.into_inner())
    })
}

/// The shared settings as they apply: flags, environment, file, defaults.
fn layered_common(args: &CommonArgs, file: &FileConfig) -> anyhow::Result<CommonSettings> {
    layer(
        &CommonSettings::defaults(),
        &file.common,
        &args.settings,
        &file.name,
        "",
    )
}

/// Settings shared by both commands, resolved and checked: every value is parsed here, once.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The public address.
    pub listen: SocketAddr,
    /// The listener's certificate and key, when it serves TLS.
    pub tls: Option<TlsFiles>,
    /// Where records live.
    pub store: StoreLocation,
    /// How the store is reached: namespace, pool, TLS roots, migrations.
    pub store_options: StoreOptions,
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
    /// How long requests in flight may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// The status of a mismatch answer.
    pub mismatch_status: http::StatusCode,
    /// Upstream or operation statuses that mean "not processed": passed on, key released.
    pub transient_statuses: Vec<http::StatusCode>,
    /// Where problem types point, if not the default.
    pub problem_base_url: Option<String>,
    /// A CA that `https://` upstreams and operations are checked against, besides the
    /// system's roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// The admin listener's address, if any.
    pub admin_listen: Option<SocketAddr>,
    /// How logs are written.
    pub log_format: LogFormat,
    /// Where traces are exported, if anywhere.
    pub otlp_endpoint: Option<String>,
    /// Start on a store whose settings may delete live records.
    pub accept_store_risks: bool,
}

/// The listener's certificate chain and private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// `idem proxy`'s settings, resolved.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// What both commands share.
    pub common: ServerSettings,
    /// Where requests are forwarded.
    pub upstream: Upstream,
    /// Whether an `http://` upstream is spoken to in HTTP/2 (prior knowledge).
    pub upstream_http2: bool,
    /// The methods covered.
    pub methods: Vec<Method>,
    /// The header carrying the key.
    pub key_header: HeaderName,
    /// Which keys are accepted.
    pub key_policy: KeyPolicy,
    /// Whether every mutation must carry a key when no route rule says.
    pub require_key: bool,
    /// How long the upstream may take to answer before the outcome is unknown.
    pub upstream_timeout: Duration,
    /// The per-route rules.
    pub routes: RouteTable,
    /// Whether keyed requests without a principal are refused.
    pub require_principal: bool,
    /// The largest request body accepted on a keyed request.
    pub max_request_body: usize,
    /// The largest response body stored for replay.
    pub max_stored_response: usize,
    /// Whether 5xx answers are stored and replayed.
    pub store_server_errors: bool,
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

/// A registered operation, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Where it is POSTed.
    pub url: String,
    /// What a retry does after the instance executing it died mid-way.
    pub on_lapse: OnLapse,
}

impl From<OperationEntry> for Operation {
    fn from(entry: OperationEntry) -> Self {
        match entry {
            OperationEntry::Url(url) => Self {
                url,
                on_lapse: OnLapse::ReportUnknown,
            },
            OperationEntry::Table { url, on_lapse } => Self {
                url,
                on_lapse: on_lapse.map_or(OnLapse::ReportUnknown, OnLapse::from),
            },
        }
    }
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

/// The longest `--wait`: a duplicate that waits longer than a client's own timeout helps
/// nobody, and an hour bounds the tasks a burst of duplicates can hold.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Refuses settings that would quietly break the guarantee: a zero lease lets every duplicate
/// take an in-flight key over; a zero TTL forgets every result at once.
fn check(common: &ServerSettings) -> anyhow::Result<()> {
    anyhow::ensure!(
        !common.drain_timeout.is_zero(),
        "--drain-timeout must be longer than 0s: requests in flight need it to finish on SIGTERM"
    );
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
/// list); both at once are refused (a flag of either kind has already replaced the file's
/// lists, see [`ONE_CHOICE`]). `replay_headers = []` is an allow list of nothing: only the
/// body's type.
fn replayed_headers(settings: &ProxySettings) -> anyhow::Result<ReplayedHeaders> {
    match (&settings.replay_headers, &settings.no_replay_headers) {
        (None, None) => Ok(ReplayedHeaders::default()),
        (Some(only), None) => Ok(ReplayedHeaders::Only(
            only.iter()
                .map(|name| header_name("--replay-header", name))
                .collect::<anyhow::Result<_>>()?,
        )),
        (None, Some(except)) => {
            let mut denied = NOT_REPLAYED_BY_DEFAULT.to_vec();
            for name in except {
                denied.push(header_name("--no-replay-header", name)?);
            }
            Ok(ReplayedHeaders::AllExcept(denied))
        }
        (Some(_), Some(_)) => anyhow::bail!(
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
fn mismatch_status(status: u16) -> anyhow::Result<http::StatusCode> {
    http::StatusCode::from_u16(status)
        .ok()
        .filter(|status| idem_http::MISMATCH_STATUSES.contains(status))
        .ok_or_else(|| {
            anyhow::anyhow!("--mismatch-status {status}: use 422 (the IETF draft's), 409 or 400")
        })
}

/// `--transient-status`: 4xx statuses and 503 only. A success or a redirect is an answer;
/// another 5xx may follow the effect, and 504 is also the gateway's own "outcome unknown",
/// which must stay kept. `none` alone is the empty list.
fn transient_statuses(written: &[String]) -> anyhow::Result<Vec<http::StatusCode>> {
    let codes: Vec<u16> = match written {
        [none] if none.trim().eq_ignore_ascii_case("none") => Vec::new(),
        written => written
            .iter()
            .map(|status| {
                status.trim().parse::<u16>().map_err(|_| {
                    anyhow::anyhow!("--transient-status {status:?}: a status such as 429, or none")
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
fn fingerprint(settings: &ProxySettings) -> anyhow::Result<(bool, Vec<HeaderName>, JsonFilter)> {
    let headers = settings
        .fingerprint_headers
        .iter()
        .flatten()
        .map(|name| header_name("--fingerprint-header", name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let filter = JsonFilter {
        include: settings.fingerprint_include.clone().unwrap_or_default(),
        exclude: settings.fingerprint_exclude.clone().unwrap_or_default(),
    };
    for pointer in filter.include.iter().chain(&filter.exclude) {
        anyhow::ensure!(
            !pointer.is_empty() && idem_core::canonical_json::is_pointer(pointer),
            "--fingerprint-include/--fingerprint-exclude {pointer:?} is not a JSON pointer (e.g. /sent_at, /items/*/nonce)"
        );
    }
    let canonical = settings.canonical_json.unwrap_or(false) || !filter.is_empty();
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

/// A value the defaults always give.
fn given<T>(value: Option<T>, key: &str) -> anyhow::Result<T> {
    value.with_context(|| format!("`{key}` has no value (and no default)"))
}

/// The store of `idem migrate` and `idem records`: flags, environment, the config file,
/// defaults, as the servers layer them (created or upgraded as by the servers, so that a new
/// database answers "absent" rather than a missing table).
pub fn store_of(args: crate::cli::StoreArgs) -> anyhow::Result<(StoreLocation, StoreOptions)> {
    let file = FileConfig::load(args.config.as_deref())?;
    let flags = CommonArgs {
        settings: CommonSettings {
            store: args.store,
            store_namespace: args.store_namespace,
            store_ca_file: args.store_ca_file,
            ..CommonSettings::default()
        },
        config: args.config,
    };
    let settings = layered_common(&flags, &file)?;
    let location = StoreLocation::parse(&given(settings.store, "store")?)?;
    let options = StoreOptions {
        namespace: settings.store_namespace,
        pool_size: given(settings.store_pool_size, "store_pool_size")?,
        ca_file: settings.store_ca_file,
        migrate: true,
    };
    options.check(&location)?;
    Ok((location, options))
}

/// Checks and parses the shared settings.
fn common(settings: CommonSettings) -> anyhow::Result<ServerSettings> {
    anyhow::ensure!(
        settings.scope_header.is_none() || settings.scope_cookie.is_none(),
        "scope keys by a header or by a cookie, not both (--scope-header, --scope-cookie)"
    );
    let header_read_timeout = given(settings.header_read_timeout, "header_read_timeout")?;
    let store = StoreLocation::parse(&given(settings.store, "store")?)?;
    let store_options = StoreOptions {
        namespace: settings.store_namespace,
        pool_size: given(settings.store_pool_size, "store_pool_size")?,
        ca_file: settings.store_ca_file,
        migrate: given(settings.migrate, "migrate")?,
    };
    store_options.check(&store)?;
    let common = ServerSettings {
        listen: given(settings.listen, "listen")?,
        tls: match (settings.tls_cert, settings.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together: give both or neither"),
        },
        store,
        store_options,
        ttl: given(settings.ttl, "ttl")?,
        lease: given(settings.lease, "lease")?,
        wait: settings.wait,
        replay_cache: given(settings.replay_cache, "replay_cache")?,
        scope_header: settings
            .scope_header
            .map(|name| header_name("--scope-header", &name))
            .transpose()?,
        scope_cookie: settings
            .scope_cookie
            .map(|name| cookie_name(&name))
            .transpose()?,
        header_read_timeout,
        // An unset keep-alive timeout follows a shorter header-read timeout instead of
        // refusing to start: the wait for the next request's head counts toward both.
        keep_alive_timeout: match settings.keep_alive_timeout {
            Some(idle) if idle.is_zero() => None,
            Some(idle) => Some(idle),
            None => Some(DEFAULT_KEEP_ALIVE_TIMEOUT.min(header_read_timeout)),
        },
        max_connections: given(settings.max_connections, "max_connections")?,
        body_read_timeout: given(settings.body_read_timeout, "body_read_timeout")?,
        send_timeout: given(settings.send_timeout, "send_timeout")?,
        drain_timeout: given(settings.drain_timeout, "drain_timeout")?,
        mismatch_status: mismatch_status(given(settings.mismatch_status, "mismatch_status")?)?,
        transient_statuses: transient_statuses(&given(
            settings.transient_statuses,
            "transient_statuses",
        )?)?,
        problem_base_url: settings
            .problem_base_url
            .map(|url| problem_base_url(&url))
            .transpose()?,
        upstream_ca_file: settings.upstream_ca_file,
        admin_listen: settings.admin_listen,
        log_format: given(settings.log_format, "log_format")?,
        otlp_endpoint: settings.otlp_endpoint,
        accept_store_risks: given(settings.accept_store_risks, "accept_store_risks")?,
    };
    check(&common)?;
    Ok(common)
}

/// The proxy's settings as they apply, before they are checked.
fn layered_proxy(args: &ProxyArgs) -> anyhow::Result<(CommonSettings, ProxySettings)> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    let common = layered_common(&args.common, &file)?;
    let proxy = layer(
        &ProxySettings::defaults(),
        &file.proxy,
        &args.proxy,
        &file.name,
        "proxy",
    )?;
    Ok((common, proxy))
}

/// Resolves `idem proxy`'s settings.
pub fn proxy(args: ProxyArgs) -> anyhow::Result<Proxy> {
    let (common_settings, settings) = layered_proxy(&args)?;
    let common = common(common_settings)?;
    let upstream = Upstream::parse(&settings
        .upstream
        .clone()
        .context("no upstream: pass --upstream URL (or IDEM_UPSTREAM, or `upstream` under [proxy] in the config file)")?)?;
    let (canonical_json, fingerprint_headers, json_filter) = fingerprint(&settings)?;
    let upstream_timeout = given(settings.upstream_timeout, "proxy.upstream_timeout")?;
    check_timeout("--upstream-timeout", upstream_timeout)?;
    let key_header = header_name(
        "--key-header",
        &given(settings.key_header.clone(), "proxy.key_header")?,
    )?;
    let methods = given(settings.methods.clone(), "proxy.methods")?
        .iter()
        .filter(|name| !name.trim().is_empty())
        .map(|name| {
            Method::from_bytes(name.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| anyhow::anyhow!("--method {name:?} is not an HTTP method"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        !methods.is_empty(),
        "--method: name at least one method (POST, PUT, PATCH, DELETE by default): with none, no request is idempotent"
    );
    let max_request_body = given(settings.max_request_body, "proxy.max_request_body")?;
    anyhow::ensure!(max_request_body > 0, "--max-request-body must be above 0");
    Ok(Proxy {
        common,
        upstream,
        upstream_http2: given(settings.upstream_http2, "proxy.upstream_http2")?,
        methods,
        key_header,
        key_policy: match given(settings.key_format, "proxy.key_format")? {
            KeyFormat::Any => KeyPolicy::Any,
            KeyFormat::Uuid => KeyPolicy::UuidV4,
        },
        require_key: given(settings.require_key, "proxy.require_key")?,
        upstream_timeout,
        routes: RouteTable::new(&settings.routes)?,
        require_principal: given(settings.require_principal, "proxy.require_principal")?,
        max_request_body,
        max_stored_response: given(settings.max_stored_response, "proxy.max_stored_response")?,
        store_server_errors: given(settings.store_server_errors, "proxy.store_server_errors")?,
        trusted_proxies: trusted_proxies(settings.trusted_proxies.as_deref().unwrap_or_default())?,
        replayed_headers: replayed_headers(&settings)?,
        canonical_json,
        fingerprint_headers,
        json_filter,
    })
}

/// The service's settings as they apply, before they are checked (operations from flags
/// are merged in by [`serve`]).
fn layered_serve(args: &ServeArgs) -> anyhow::Result<(CommonSettings, ServeSettings)> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    let common = layered_common(&args.common, &file)?;
    let mut serve = layer(
        &ServeSettings::defaults(),
        &file.serve,
        &args.serve,
        &file.name,
        "serve",
    )?;
    // `--operation NAME=URL` adds to the file's table; a flag wins for a name in both.
    for definition in &args.serve.operation {
        let (name, url) = definition
            .split_once('=')
            .with_context(|| format!("--operation {definition:?}: expected NAME=URL"))?;
        serve.operations.insert(
            name.trim().to_owned(),
            OperationEntry::Url(url.trim().to_owned()),
        );
    }
    Ok((common, serve))
}

/// Resolves `idem serve`'s settings.
pub fn serve(args: ServeArgs) -> anyhow::Result<Serve> {
    let (common_settings, settings) = layered_serve(&args)?;
    let common = common(common_settings)?;
    let operation_timeout = given(settings.operation_timeout, "serve.operation_timeout")?;
    check_timeout("--operation-timeout", operation_timeout)?;
    Ok(Serve {
        common,
        operations: settings
            .operations
            .into_iter()
            .map(|(name, entry)| (name, entry.into()))
            .collect(),
        operation_timeout,
        max_operation_response: given(
            settings.max_operation_response,
            "serve.max_operation_response",
        )?,
    })
}

/// A zero timeout would make every request an unknown outcome. A timeout longer than the
/// lease is fine: the lease is renewed for as long as the upstream (or operation) runs.
fn check_timeout(flag: &str, timeout: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(!timeout.is_zero(), "{flag} must be longer than 0s");
    Ok(())
}

/// `idem config check FILE`: resolves the file as `proxy` and `serve` would (with the
/// environment's `IDEM_*`), and answers the effective settings as TOML.
pub fn check_file(path: &Path) -> anyhow::Result<String> {
    let config = Some(path.to_owned());
    // The environment, as the servers read it: clap parses it for an empty command line.
    let environment = |command: &str| Cli::try_parse_from(["idem", command]).map(|cli| cli.command);
    let mut proxy_args = match environment("proxy")? {
        crate::cli::Command::Proxy(args) => args,
        _ => anyhow::bail!("`idem proxy` parses as another command"),
    };
    proxy_args.common.config = config.clone();
    let mut serve_args = match environment("serve")? {
        crate::cli::Command::Serve(args) => args,
        _ => anyhow::bail!("`idem serve` parses as another command"),
    };
    serve_args.common.config = config;
    let (common_settings, proxy_settings) = layered_proxy(&proxy_args)?;
    let (_, serve_settings) = layered_serve(&serve_args)?;
    common(common_settings.clone())?;
    let mut unset = unset_keys("", &common_settings)?;
    let proxy_section = match proxy_settings.upstream.is_some() {
        true => {
            proxy(*proxy_args)?;
            unset.extend(unset_keys("proxy.", &proxy_settings)?);
            Some(proxy_settings)
        }
        false => None,
    };
    let serve_section = match serve_settings.operations.is_empty() {
        false => {
            serve(*serve_args)?;
            unset.extend(unset_keys("serve.", &serve_settings)?);
            Some(serve_settings)
        }
        true => None,
    };
    #[derive(Serialize)]
    struct Effective {
        #[serde(flatten)]
        common: CommonSettings,
        #[serde(skip_serializing_if = "Option::is_none")]
        proxy: Option<ProxySettings>,
        #[serde(skip_serializing_if = "Option::is_none")]
        serve: Option<ServeSettings>,
    }
    let mut text = format!(
        "# {}: valid. The settings it gives, defaults included:\n",
        path.display()
    );
    if proxy_section.is_none() {
        text.push_str("# (no [proxy] upstream: not checked as `idem proxy`)\n");
    }
    if serve_section.is_none() {
        text.push_str("# (no [serve] operations: not checked as `idem serve`)\n");
    }
    if !unset.is_empty() {
        text.push_str(&format!("# not set: {}\n", unset.join(", ")));
    }
    text.push('\n');
    text.push_str(&toml::to_string(&Effective {
        common: common_settings,
        proxy: proxy_section,
        serve: serve_section,
    })?);
    Ok(text)
}

/// The keys of `settings` with no value, prefixed by their section.
fn unset_keys<T: Serialize>(section: &str, settings: &T) -> anyhow::Result<Vec<String>> {
    let Value::Object(map) = serde_json::to_value(settings)? else {
        anyhow::bail!("settings serialize to a table");
    };
    Ok(map
        .into_iter()
        .filter(|(_, value)| value.is_null())
        .map(|(key, _)| format!("{section}{key}"))
        .collect())
}

/// Where a setting lives in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Common,
    Proxy,
    Serve,
}

/// One setting as the reference and `--help` show it.
struct Described {
    section: Section,
    key: String,
    flag: Option<String>,
    env: Option<String>,
    default: Option<String>,
    help: String,
}

/// Every setting of the servers, from their declarations: clap's view (flag, environment,
/// help) joined with the defaults by field name.
fn described() -> anyhow::Result<Vec<Described>> {
    let mut all = Vec::new();
    let sections: [(Section, clap::Command, Value); 3] = [
        (
            Section::Common,
            CommonSettings::augment_args(clap::Command::new("common")),
            serde_json::to_value(CommonSettings::defaults())?,
        ),
        (
            Section::Proxy,
            ProxySettings::augment_args(clap::Command::new("proxy")),
            serde_json::to_value(ProxySettings::defaults())?,
        ),
        (
            Section::Serve,
            ServeSettings::augment_args(clap::Command::new("serve")),
            serde_json::to_value(ServeSettings::defaults())?,
        ),
    ];
    for (section, command, defaults) in sections {
        for arg in command.get_arguments() {
            let key = match arg.get_id().as_str() {
                // The flag's values join the file's table of the same name.
                "operation" => "operations".to_owned(),
                id => id.to_owned(),
            };
            all.push(Described {
                section,
                default: defaults.get(&key).and_then(shown),
                key,
                flag: arg.get_long().map(|long| format!("--{long}")),
                env: arg.get_env().map(|env| env.to_string_lossy().into_owned()),
                help: arg
                    .get_long_help()
                    .or(arg.get_help())
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            });
        }
    }
    Ok(all)
}

/// A default as text: `24h`, `429, 503`; nothing for an unset one.
fn shown(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(shown)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => Some(other.to_string()),
    }
}

/// The command line with every setting's default in its help (`[default: 24h]`), taken from
/// the same declarations the layering uses.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    let Ok(described) = described() else {
        return command;
    };
    for name in ["proxy", "serve"] {
        command = command.mut_subcommand(name, |mut subcommand| {
            for setting in &described {
                let (Some(default), Some(flag)) = (&setting.default, &setting.flag) else {
                    continue;
                };
                let id = subcommand
                    .get_arguments()
                    .find(|arg| {
                        arg.get_long().map(|long| format!("--{long}")).as_ref() == Some(flag)
                    })
                    .map(|arg| arg.get_id().clone());
                if let Some(id) = id {
                    subcommand = subcommand.mut_arg(id, |arg| {
                        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                        arg.help(format!("{help} [default: {default}]"))
                    });
                }
            }
            subcommand
        });
    }
    command
}

/// `docs/reference/configuration.md`: every setting, from its declaration.
pub fn reference() -> anyhow::Result<String> {
    let mut text = String::from(
        "# Configuration reference\n\n\
         <!-- Written by `idem config reference` from crates/idem/src/settings.rs; a test fails when this file is stale. -->\n\n\
         Every setting of `idem proxy` and `idem serve` is a flag, an environment variable and a key of the TOML file named by `--config` (see [`idem.example.toml`](../../idem.example.toml)). \
         A flag wins over its environment variable, which wins over the file, which wins over the default. \
         Boolean flags take an optional value (`--require-key`, `--require-key=false`); boolean environment variables accept `true`/`false`, `yes`/`no`, `on`/`off` and `1`/`0`. \
         Durations are written `500ms`, `30s`, `15m`, `24h`; sizes `512KiB`, `1MiB` or a number of bytes. \
         `idem config check FILE` checks a file and prints the settings it gives.\n",
    );
    let described = described()?;
    for (section, title, intro) in [
        (
            Section::Common,
            "Shared by `idem proxy` and `idem serve` (top level of the file)",
            "",
        ),
        (
            Section::Proxy,
            "`idem proxy` (`[proxy]`)",
            "Per-route rules are `[[proxy.routes]]` tables: `method` (or `\"*\"`), `path` (`*` one segment, a final `**` the rest), `require_key`, `skip`, `ttl`, `on_lapse` (`report_unknown` or `take_over`); the first rule that matches applies.\n\n",
        ),
        (Section::Serve, "`idem serve` (`[serve]`)", ""),
    ] {
        text.push_str(&format!("\n## {title}\n\n{intro}| key | flag | environment | default | meaning |\n|---|---|---|---|---|\n"));
        for setting in described
            .iter()
            .filter(|setting| setting.section == section)
        {
            let cell = |value: &Option<String>| {
                value
                    .as_ref()
                    .map_or("".to_owned(), |value| format!("`{value}`"))
            };
            text.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                setting.key,
                cell(&setting.flag),
                cell(&setting.env),
                cell(&setting.default),
                setting.help.replace('\n', " ").replace('|', "\\|"),
            ));
        }
    }
    Ok(text)
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
        proxy(*args)
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
            (
                "--drain-timeout",
                "0s",
                "--drain-timeout must be longer than 0s",
            ),
            ("--method", "", "name at least one method"),
            ("--store-pool-size", "0", "at least 1"),
            ("--store-namespace", "shop", "one process's"),
        ] {
            let args = ["idem", "proxy", "--upstream", "http://x", flag, value];
            let error = format!("{:#}", proxy_from(&args).unwrap_err());
            assert!(error.contains(reason), "{flag} {value}: {error}");
        }
        let error = format!(
            "{:#}",
            proxy_from(&["idem", "proxy", "--upstream", "ftp://api"]).unwrap_err()
        );
        assert!(error.contains("http:// or https://"), "{error}");
        let file = write("bogus = 1\n");
        let path = file.path().to_str().unwrap();
        let error = format!(
            "{:#}",
            proxy_from(&["idem", "proxy", "--config", path, "--upstream", "http://x"]).unwrap_err()
        );
        assert!(error.contains("bogus"), "{error}");
    }

    #[test]
    fn every_new_setting_reaches_the_resolved_settings_from_a_flag_and_from_the_file() {
        let resolved = proxy_from(&[
            "idem",
            "proxy",
            "--upstream",
            "https://api",
            "--method",
            "post,put",
            "--key-header",
            "X-Request-Key",
            "--key-format",
            "uuid",
            "--max-request-body",
            "64KiB",
            "--max-stored-response",
            "2MiB",
            "--store-server-errors=false",
            "--drain-timeout",
            "5s",
            "--store-pool-size",
            "3",
            "--migrate=no",
            "--upstream-http2",
        ])
        .unwrap();
        assert_eq!(resolved.methods, [Method::POST, Method::PUT]);
        assert_eq!(resolved.key_header.as_str(), "x-request-key");
        assert_eq!(resolved.key_policy, KeyPolicy::UuidV4);
        assert_eq!(resolved.max_request_body, 64 * 1024);
        assert_eq!(resolved.max_stored_response, 2 * 1024 * 1024);
        assert!(!resolved.store_server_errors);
        assert!(resolved.upstream_http2);
        assert_eq!(resolved.common.drain_timeout, Duration::from_secs(5));
        assert_eq!(resolved.common.store_options.pool_size, 3);
        assert!(!resolved.common.store_options.migrate);

        let file = write(
            "store = \"postgres://db/app\"\nstore_namespace = \"shop\"\ndrain_timeout = \"10s\"\nmigrate = false\n[proxy]\nupstream = \"http://x\"\nmethods = [\"POST\"]\nkey_format = \"uuid\"\nmax_request_body = 1024\nmax_stored_response = \"4KiB\"\nstore_server_errors = false\n",
        );
        let path = file.path().to_str().unwrap();
        let resolved = proxy_from(&["idem", "proxy", "--config", path]).unwrap();
        assert_eq!(resolved.methods, [Method::POST]);
        assert_eq!(resolved.key_policy, KeyPolicy::UuidV4);
        assert_eq!(resolved.max_request_body, 1024);
        assert_eq!(resolved.max_stored_response, 4096);
        assert!(!resolved.store_server_errors);
        assert_eq!(resolved.common.drain_timeout, Duration::from_secs(10));
        assert_eq!(
            resolved.common.store_options.namespace.as_deref(),
            Some("shop")
        );
        assert!(!resolved.common.store_options.migrate);
        // A flag says false over the file's true, which a plain switch could not.
        let file = write("[proxy]\nupstream = \"http://x\"\nrequire_key = true\n");
        let path = file.path().to_str().unwrap();
        let resolved =
            proxy_from(&["idem", "proxy", "--config", path, "--require-key=false"]).unwrap();
        assert!(!resolved.require_key);
        let resolved = proxy_from(&["idem", "proxy", "--config", path]).unwrap();
        assert!(resolved.require_key);
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_key() {
        for (text, key) in [
            ("ttl = \"soon\"\n", "`ttl`"),
            ("listen = \"nowhere\"\n", "`listen`"),
            (
                "[proxy]\nupstream_timeout = 5\n",
                "`proxy.upstream_timeout`",
            ),
            (
                "[proxy]\nmax_request_body = \"lots\"\n",
                "`proxy.max_request_body`",
            ),
            ("[proxy]\nbogus = 1\n", "bogus"),
            ("proxy = 1\n", "[proxy]"),
        ] {
            let file = write(text);
            let path = file.path().to_str().unwrap();
            let error = format!(
                "{:#}",
                proxy_from(&["idem", "proxy", "--config", path, "--upstream", "http://x"])
                    .unwrap_err()
            );
            assert!(error.contains(key), "{text:?}: {error}");
            assert!(error.contains(path), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_store_ca_file_is_refused_where_it_would_be_ignored() {
        let ca = write("not read here");
        let ca = ca.path().to_str().unwrap();
        for (store, reason) in [
            ("postgres://db/app", "sslmode=verify-full"),
            ("postgres://db/app?sslmode=require", "sslmode=verify-full"),
            ("redis://cache", "rediss://"),
            ("redis+cluster://a:1,b:2", "rediss+cluster://"),
            ("memory://", "PostgreSQL and Redis"),
        ] {
            let args = [
                "idem",
                "proxy",
                "--upstream",
                "http://x",
                "--store",
                store,
                "--store-ca-file",
                ca,
            ];
            let error = format!("{:#}", proxy_from(&args).unwrap_err());
            assert!(error.contains(reason), "{store}: {error}");
        }
        let args = [
            "idem",
            "proxy",
            "--upstream",
            "http://x",
            "--store",
            "postgres://db/app?sslmode=verify-full",
            "--store-ca-file",
            ca,
        ];
        assert!(proxy_from(&args).is_ok());
    }

    #[test]
    fn the_admin_commands_read_the_store_from_the_config_file_under_their_flags() {
        let file = write("store = \"redis://cache\"\nstore_namespace = \"shop\"\n");
        let path = file.path().to_str().unwrap();
        let Command::Records {
            action: crate::cli::RecordsAction::Show(args),
        } = Cli::try_parse_from(["idem", "records", "show", "--config", path, "--key", "k"])
            .unwrap()
            .command
        else {
            panic!("records show")
        };
        let (location, options) = store_of(args.store).unwrap();
        assert_eq!(location, StoreLocation::Redis("redis://cache".into()));
        assert_eq!(options.namespace.as_deref(), Some("shop"));
        let Command::Migrate(args) = Cli::try_parse_from([
            "idem",
            "migrate",
            "--config",
            path,
            "--store-namespace",
            "other",
        ])
        .unwrap()
        .command
        else {
            panic!("migrate")
        };
        let (_, options) = store_of(args).unwrap();
        assert_eq!(options.namespace.as_deref(), Some("other"), "a flag wins");
    }

    #[test]
    fn the_tls_pair_goes_together() {
        let error = proxy_from(&[
            "idem",
            "proxy",
            "--upstream",
            "http://x",
            "--tls-cert",
            "a.pem",
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("--tls-key"), "{error}");
        let file = write("tls_cert = \"a.pem\"\n[proxy]\nupstream = \"http://x\"\n");
        let path = file.path().to_str().unwrap();
        let error = proxy_from(&["idem", "proxy", "--config", path])
            .unwrap_err()
            .to_string();
        assert!(error.contains("go together"), "{error}");
    }

    #[test]
    fn check_prints_the_effective_settings_and_refuses_what_the_servers_refuse() {
        let file = write(
            "ttl = \"2h\"\n[proxy]\nupstream = \"http://x\"\n[[proxy.routes]]\npath = \"/webhooks/**\"\nskip = true\n",
        );
        let text = check_file(file.path()).unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["ttl"].as_str(), Some("2h"));
        assert_eq!(parsed["lease"].as_str(), Some("30s"), "defaults filled in");
        assert_eq!(parsed["proxy"]["upstream"].as_str(), Some("http://x"));
        assert_eq!(
            parsed["proxy"]["routes"][0]["path"].as_str(),
            Some("/webhooks/**")
        );
        assert!(text.contains("not checked as `idem serve`"), "{text}");
        let file = write("lease = \"0s\"\n");
        let error = check_file(file.path()).unwrap_err().to_string();
        assert!(error.contains("--lease"), "{error}");
        let file = write("[proxy]\nupstream = \"gopher://x\"\n");
        assert!(check_file(file.path()).is_err());
    }

    #[test]
    fn every_flag_has_a_file_key_and_every_default_shows_in_the_help() {
        let described = described().unwrap();
        for setting in &described {
            let flag = setting.flag.as_deref().unwrap_or_default();
            let env = setting.env.as_deref().unwrap_or_default();
            assert!(flag.starts_with("--"), "{}: no flag", setting.key);
            assert!(
                env.starts_with("IDEM_"),
                "{}: no environment variable",
                setting.key
            );
            assert!(
                !(setting.default.is_some() && setting.help.contains("[default:")),
                "{}: a default both declared and written in its help",
                setting.key
            );
        }
        let mut help = Vec::new();
        command()
            .find_subcommand_mut("proxy")
            .unwrap()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(help.contains("[default: 24h]"), "{help}");
        assert!(
            help.contains("[default: POST, PUT, PATCH, DELETE]"),
            "{help}"
        );
    }

    #[test]
    fn boolean_settings_take_the_usual_spellings_the_environment_shares_the_parser() {
        for (value, expected) in [
            ("1", true),
            ("yes", true),
            ("on", true),
            ("0", false),
            ("off", false),
        ] {
            let parsed = CommonSettings::augment_args(clap::Command::new("x"))
                .try_get_matches_from(["x", &format!("--accept-store-risks={value}")])
                .unwrap();
            assert_eq!(
                parsed.get_one::<bool>("accept_store_risks").copied(),
                Some(expected),
                "{value}"
            );
        }
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
        let resolved = serve(*args).unwrap();
        assert_eq!(resolved.operations["a"].url, "http://file-a");
        assert_eq!(resolved.operations["a"].on_lapse, OnLapse::TakeOver);
        assert_eq!(resolved.operations["b"].url, "http://flag-b");
        assert_eq!(resolved.operations["b"].on_lapse, OnLapse::ReportUnknown);
    }
}
