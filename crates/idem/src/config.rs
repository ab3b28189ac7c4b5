//! The settings a command runs with: flags, then environment variables (both through clap),
//! then the TOML config file, then the defaults below.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! store = "./idem-data"          # memory://, postgres://…, redis://…, or a directory
//! ttl = "24h"
//! admin_listen = "127.0.0.1:9090"
//!
//! [proxy]
//! upstream = "http://127.0.0.1:3000"
//! require_key = false
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

use crate::cli::{CommonArgs, LogFormat, parse_duration};
use crate::routes::{LapsePolicy, RouteRule, RouteTable};
use crate::store::StoreLocation;
use crate::upstream::Upstream;
use http::HeaderName;
use idem_core::OnLapse;

/// Where `idem` listens when told nothing: loopback only, so a first run exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The embedded store's directory when `--store` is not given.
pub const DEFAULT_STORE: &str = "./idem-data";
/// How long an upstream or operation may take before its outcome is unknown.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// The config file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    store: Option<String>,
    ttl: Option<String>,
    lease: Option<String>,
    wait: Option<String>,
    scope_header: Option<String>,
    admin_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
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
    /// The header whose value scopes keys; `None`: `Authorization`.
    pub scope_header: Option<HeaderName>,
    /// The admin listener's address, if any.
    pub admin_listen: Option<SocketAddr>,
    /// How logs are written.
    pub log_format: LogFormat,
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
    if let Some(wait) = common.wait {
        anyhow::ensure!(wait <= MAX_WAIT, "--wait must be at most 1h");
    }
    Ok(())
}

fn common(args: CommonArgs, file: &FileConfig) -> anyhow::Result<ServerSettings> {
    let listen = match args.listen.or(file.listen) {
        Some(listen) => listen,
        None => DEFAULT_LISTEN.parse()?,
    };
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
        scope_header: args
            .scope_header
            .or_else(|| file.scope_header.clone())
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    anyhow::anyhow!("--scope-header {name:?} is not a valid header name")
                })
            })
            .transpose()?,
        admin_listen: args.admin_listen.or(file.admin_listen),
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Human),
        accept_store_risks: args.accept_store_risks || file.accept_store_risks.unwrap_or(false),
    };
    check(&common)?;
    Ok(common)
}

/// Resolves `idem proxy`'s settings.
pub fn proxy(args: crate::cli::ProxyArgs) -> anyhow::Result<Proxy> {
    let file = FileConfig::load(args.common.config.as_deref())?;
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
        assert_eq!(resolved.common.store, StoreLocation::Memory);
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
            ("--scope-header", "bad header", "not a valid header name"),
            (
                "--upstream-timeout",
                "0s",
                "--upstream-timeout must be longer than 0s",
            ),
            ("--store", "mysql://db", "unknown store scheme"),
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
