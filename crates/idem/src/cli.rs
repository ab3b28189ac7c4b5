//! The command line: the commands, and the flags of those that are not servers. The servers'
//! settings are declared in [`crate::settings`]; values left unset on the command line fall
//! back to the config file, then to the defaults there (see [`crate::config`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::settings::{
    CommonArgs, CommonSettings, LogFormat, ProxyArgs, ProxySettings, ServeArgs, ServeSettings,
    parse_duration, parse_size,
};

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
    Proxy(Box<ProxyArgs>),
    /// Serve the coordination API (`POST /v1/idempotency/execute` and the begin / complete /
    /// release flow under `/v1/idempotency/records`).
    Serve(Box<ServeArgs>),
    /// Create or upgrade the store's schema (PostgreSQL) and exit. `proxy` and `serve` also
    /// migrate on start.
    Migrate(StoreArgs),
    /// Print the coordination API's OpenAPI 3.1 document.
    Openapi,
    /// Check a config file and print the settings it gives, with every default filled in.
    Config {
        /// What to do.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Look up one record by its key, and resolve a key whose execution's owner died.
    Records {
        /// What to do.
        #[command(subcommand)]
        action: RecordsAction,
    },
}

/// `idem config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Read FILE as `idem proxy --config FILE` and `idem serve --config FILE` would (with
    /// the `IDEM_*` environment variables), refuse what they would refuse, and print the
    /// effective settings as TOML: those of `[proxy]` when it names an upstream, those of
    /// `[serve]` when it has operations.
    Check {
        /// The config file.
        file: PathBuf,
    },
    /// Print the reference of every setting (flag, environment variable, TOML key, default,
    /// meaning) as Markdown: `docs/reference/configuration.md`.
    #[command(hide = true)]
    Reference,
}

/// Which store a command that is not a server works on: the flags, else the config file's
/// `store`, `store_namespace` and `store_ca_file`, as the servers would read them.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store, as for `idem proxy --store` [default: the config file's, else
    /// ./idem-data].
    #[arg(long, env = "IDEM_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// As for `idem proxy --store-namespace`.
    #[arg(long, env = "IDEM_STORE_NAMESPACE", value_name = "NAME")]
    pub store_namespace: Option<String>,
    /// As for `idem proxy --store-ca-file`.
    #[arg(long, env = "IDEM_STORE_CA_FILE", value_name = "FILE")]
    pub store_ca_file: Option<PathBuf>,
    /// The servers' config file, for the store settings the flags leave out.
    #[arg(long, env = "IDEM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// Which store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The idempotency key, as the client sent it.
    #[arg(long)]
    pub key: String,
    /// The value of what scoped the request: the `Authorization` header, the `--scope-header`
    /// header, or the `--scope-cookie` cookie's value; leave out for requests that carried
    /// none.
    #[arg(long, env = "IDEM_RECORD_CREDENTIAL", hide_env_values = true)]
    pub credential: Option<String>,
    /// The key belongs to this idempotent function (Rust's `Engine::run` `Call` name, or
    /// Python's `@idempotent_function` name: its module and qualified name by default), not
    /// to an HTTP request.
    #[arg(long, value_name = "NAME", conflicts_with = "credential")]
    pub function: Option<String>,
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
