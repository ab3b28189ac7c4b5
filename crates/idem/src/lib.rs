//! The `idem` binary's code, as a library so that fuzz targets and tests reach its parsers: `idem proxy` puts idempotency in front of any HTTP API; `idem serve`
//! offers at-most-once execution as a JSON service. Both run on one engine and one store
//! (the embedded store in `./idem-data` unless `--store` says otherwise).
//!
//! - `cli`: the commands; `settings`: every setting of the servers, declared once as a flag,
//!   an environment variable and a config file key; `config`: those layered (flags,
//!   environment, file, defaults) and resolved once into typed settings (`routes`: the
//!   proxy's per-route rules; `upstream`: where it forwards, over TLS or not; `store`: which
//!   store `--store` names, and opening it).
//! - `tls`: the listener's certificate, and the roots upstreams are checked against.
//! - `server`: what both commands share (one engine, the sweeper, the durability check,
//!   serving with a graceful drain); `signals`: SIGTERM and SIGINT; `admin`: metrics,
//!   health, readiness and `/records` on the admin listener; `status_page`: its live page;
//!   `traces`: OpenTelemetry spans and `traceparent`.
//! - `proxy`: the gateway (`path_guard`: refusing paths with no single meaning;
//!   `access_log`: request ids and one log line per request); `coordination`: `idem serve`'s JSON API; `records`: looking up and
//!   resolving one record, for `idem records` and the admin listener.

pub mod cli;
pub mod config;
pub mod routes;
pub mod settings;

mod access_log;
mod admin;
mod connections;
mod coordination;
mod path_guard;
mod proxy;
mod records;
mod server;
mod signals;
mod status_page;
pub mod store;
mod tls;
mod traces;
mod upstream;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, ConfigAction, LogFormat, RecordArgs, RecordsAction};

/// Runs one parsed command line to its end.
///
/// # Errors
/// Settings that do not hold, a store that cannot be opened, a listener that cannot bind.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Proxy(args) => {
            let config = config::proxy(*args)?;
            let _tracing = init_logs(
                config.common.log_format,
                config.common.otlp_endpoint.as_deref(),
            )?;
            let metrics = admin::install_recorder()?;
            let server = server::Server::start(config.common.clone(), metrics).await?;
            proxy::run(config, server).await
        }
        Command::Serve(args) => {
            let config = config::serve(*args)?;
            let _tracing = init_logs(
                config.common.log_format,
                config.common.otlp_endpoint.as_deref(),
            )?;
            let metrics = admin::install_recorder()?;
            let server = server::Server::start(config.common.clone(), metrics).await?;
            coordination::run(config, server).await
        }
        Command::Migrate(args) => {
            let _tracing = init_logs(LogFormat::Human, None)?;
            let (location, options) = config::store_of(args)?;
            store::migrate(&location, &options).await?;
            println!("idem migrate: {} is up to date", location.describe());
            Ok(())
        }
        Command::Config { action } => {
            match action {
                ConfigAction::Check { file } => print!("{}", config::check_file(&file)?),
                ConfigAction::Reference => print!("{}", config::reference()?),
            }
            Ok(())
        }
        Command::Openapi => {
            println!("{}", coordination::openapi_json());
            Ok(())
        }
        Command::Records { action } => {
            let _tracing = init_logs(LogFormat::Human, None)?;
            records_command(action).await
        }
    }
}

/// `idem records …`: one store call, the record as JSON on stdout.
async fn records_command(action: RecordsAction) -> anyhow::Result<()> {
    let (args, resolution) = match action {
        RecordsAction::Show(args) => (args, None),
        RecordsAction::Release(args) => (args, Some(idem_core::Resolution::Release)),
        RecordsAction::Complete {
            record,
            status,
            headers,
            body,
        } => {
            let headers = headers
                .iter()
                .map(|header| {
                    header
                        .split_once(':')
                        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
                        .ok_or_else(|| anyhow::anyhow!("--header {header:?}: expected NAME: VALUE"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(
                http::StatusCode::from_u16(status).is_ok(),
                "--status {status} is not an HTTP status"
            );
            let response = records::response(status, headers, body);
            (record, Some(idem_core::Resolution::Complete(response)))
        }
    };
    let RecordArgs {
        store,
        key,
        credential,
        function,
        lease,
        grace,
        ttl,
    } = args;
    let (location, options) = config::store_of(store)?;
    // No replay cache: an operator reads and resolves the store's records as they are.
    let mut engine =
        idem_core::Engine::builder(store::open(&location, &options, Duration::ZERO).await?)
            .lease(lease.unwrap_or(idem_core::DEFAULT_LEASE))
            .ttl(ttl.unwrap_or(idem_core::DEFAULT_TTL));
    if let Some(grace) = grace {
        engine = engine.resolve_after(grace);
    }
    let engine = engine.build();
    let record = records::RecordRef {
        credential: credential.map(String::into_bytes),
        function,
        key,
    };
    let answer = match resolution {
        None => records::show(&engine, &record).await?,
        Some(resolution) => records::resolve(&engine, &record, resolution, "idem records").await?,
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// What keeps the trace exporter running until the command ends (nothing without one).
#[cfg(feature = "otlp")]
type Tracing = Option<traces::Exporting>;
/// Built without the `otlp` feature: nothing to keep.
#[cfg(not(feature = "otlp"))]
struct Tracing;

/// Logs go to stderr, `RUST_LOG` filters them (default `info`); with `otlp_endpoint`, the
/// trace spans go there too (see `traces`).
fn init_logs(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Tracing> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(traces::LOG_DIRECTIVE.parse()?);
    let log = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    #[cfg(feature = "otlp")]
    {
        let (export, tracing) = match otlp_endpoint {
            Some(endpoint) => {
                let (layer, exporting) = traces::layer(endpoint)?;
                (Some(layer), Some(exporting))
            }
            None => (None, None),
        };
        tracing_subscriber::registry().with(log).with(export).init();
        Ok(tracing)
    }
    #[cfg(not(feature = "otlp"))]
    {
        anyhow::ensure!(
            otlp_endpoint.is_none(),
            "--otlp-endpoint needs a binary built with the `otlp` feature (cargo build --release -p idem-gateway --features otlp)"
        );
        tracing_subscriber::registry().with(log).init();
        Ok(Tracing)
    }
}

/// Tells whoever started us where we listen, on stdout: scripts and tests read this line to
/// find a port chosen with `--listen 127.0.0.1:0`.
fn announce(what: &str, address: SocketAddr, over_tls: bool) {
    let scheme = if over_tls { "https" } else { "http" };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "idem {what} listening on {scheme}://{address}");
    let _ = stdout.flush();
    tracing::info!(%address, "{what} listening");
}
