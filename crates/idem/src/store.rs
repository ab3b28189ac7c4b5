//! Opening the store named by `--store`.

use anyhow::Context;
use std::time::Duration;

use idem_core::{DEFAULT_REPLAY_CACHE_BYTES, DynStore, MemoryStore, ReplayCache, Store};
use idem_embedded::EmbeddedStore;
use idem_postgres::PostgresStore;
use idem_redis::RedisStore;

/// What `--store` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `memory://?max_records=N&max_bytes=SIZE`: records in this process only, bounded.
    Memory {
        /// The most records held.
        max_records: usize,
        /// The most bytes of stored responses held.
        max_bytes: usize,
    },
    /// A directory for the embedded store.
    Embedded(String),
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
    /// `redis://…` or `rediss://…` (TLS).
    Redis(String),
    /// `redis+cluster://host1:port,host2:port` (`rediss+cluster://` for TLS): each node's
    /// URL.
    RedisCluster(Vec<String>),
}

/// How a store is reached, besides its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// The PostgreSQL schema or the Redis key prefix; `None`: the store's default.
    pub namespace: Option<String>,
    /// The most PostgreSQL connections.
    pub pool_size: u32,
    /// The CA a store's TLS certificate is checked against.
    pub ca_file: Option<std::path::PathBuf>,
    /// Whether PostgreSQL's schema is created or upgraded on start.
    pub migrate: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            pool_size: idem_postgres::DEFAULT_MAX_CONNECTIONS,
            ca_file: None,
            migrate: true,
        }
    }
}

impl StoreOptions {
    /// Refuses options the store cannot honour, rather than ignoring them.
    pub fn check(&self, location: &StoreLocation) -> anyhow::Result<()> {
        let shared = matches!(
            location,
            StoreLocation::Postgres(_) | StoreLocation::Redis(_) | StoreLocation::RedisCluster(_)
        );
        if let Some(namespace) = &self.namespace {
            anyhow::ensure!(
                shared,
                "--store-namespace applies to PostgreSQL and Redis, shared by several gateways; {} is one process's",
                location.describe()
            );
            // One rule for both stores: a PostgreSQL identifier written without quotes, and
            // a Redis prefix without the braces of a hash tag.
            let mut bytes = namespace.bytes();
            anyhow::ensure!(
                namespace.len() <= 63
                    && bytes
                        .next()
                        .is_some_and(|first| first.is_ascii_lowercase() || first == b'_')
                    && bytes.all(|byte| {
                        byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_'
                    }),
                "--store-namespace {namespace:?}: use lowercase letters, digits and _, not starting with a digit (at most 63)"
            );
        }
        anyhow::ensure!(self.pool_size > 0, "--store-pool-size must be at least 1");
        if let Some(path) = &self.ca_file {
            anyhow::ensure!(
                shared,
                "--store-ca-file applies to PostgreSQL and Redis over TLS"
            );
            anyhow::ensure!(
                path.is_file(),
                "--store-ca-file {}: no such file",
                path.display()
            );
            // sqlx checks the server's certificate only under these modes; under `prefer`
            // (the default) or `require` a CA file would be silently ignored.
            if let StoreLocation::Postgres(url) = location {
                anyhow::ensure!(
                    url.contains("sslmode=verify-full") || url.contains("sslmode=verify-ca"),
                    "--store-ca-file: add ?sslmode=verify-full (or verify-ca) to the PostgreSQL URL, or the certificate is never checked against it"
                );
            }
            if let StoreLocation::Redis(url) = location {
                anyhow::ensure!(
                    url.starts_with("rediss://"),
                    "--store-ca-file: use rediss:// for Redis over TLS"
                );
            }
            if let StoreLocation::RedisCluster(nodes) = location {
                anyhow::ensure!(
                    nodes.iter().all(|node| node.starts_with("rediss://")),
                    "--store-ca-file: use rediss+cluster:// for a Redis Cluster over TLS"
                );
            }
        }
        Ok(())
    }
}

impl StoreLocation {
    /// Reads a `--store` value.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        anyhow::ensure!(
            !text.is_empty(),
            "--store is empty: use memory://, postgres://…, redis://… or a directory"
        );
        Ok(
            match text
                .split_once("://")
                .map(|(scheme, rest)| (scheme.to_ascii_lowercase(), rest))
            {
                Some((scheme, rest)) if scheme == "memory" => memory(rest)?,
                Some((scheme, _)) if scheme == "postgres" || scheme == "postgresql" => {
                    Self::Postgres(text.to_owned())
                }
                Some((scheme, _)) if scheme == "redis" || scheme == "rediss" => {
                    Self::Redis(text.to_owned())
                }
                Some((scheme, rest)) if scheme == "redis+cluster" || scheme == "rediss+cluster" => {
                    let node_scheme = scheme.trim_end_matches("+cluster");
                    Self::RedisCluster(
                        rest.split(',')
                            .map(|node| format!("{node_scheme}://{}", node.trim()))
                            .collect(),
                    )
                }
                Some((scheme, _)) if scheme == "file" => {
                    Self::Embedded(text["file://".len()..].to_owned())
                }
                Some((scheme, _)) => anyhow::bail!(
                    "unknown store scheme {scheme:?}: use memory://, postgres://…, redis://…, redis+cluster://… or a directory"
                ),
                None => Self::Embedded(text.to_owned()),
            },
        )
    }

    /// A description for logs, without credentials.
    pub fn describe(&self) -> String {
        match self {
            Self::Memory {
                max_records,
                max_bytes,
            } => format!("memory (at most {max_records} records, {max_bytes} bytes)"),
            Self::Embedded(path) => format!("embedded at {path}"),
            Self::Postgres(_) => "postgresql".into(),
            Self::Redis(url) if url.starts_with("rediss") => "redis (TLS)".into(),
            Self::Redis(_) => "redis".into(),
            Self::RedisCluster(nodes) => format!("redis cluster ({} seed nodes)", nodes.len()),
        }
    }
}

/// `memory://` and its bounds: `max_records=N`, `max_bytes=SIZE` (`1GiB`).
fn memory(rest: &str) -> anyhow::Result<StoreLocation> {
    let mut max_records = idem_core::DEFAULT_MEMORY_MAX_RECORDS;
    let mut max_bytes = idem_core::DEFAULT_MEMORY_MAX_BYTES;
    let query = rest.trim_start_matches('/');
    let query = query.strip_prefix('?').unwrap_or(query);
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "max_records" => {
                max_records = value.parse().ok().filter(|&n| n > 0).with_context(|| {
                    format!("memory:// max_records={value:?}: expected a count above 0")
                })?;
            }
            "max_bytes" => {
                max_bytes = crate::cli::parse_size(value)
                    .map_err(|error| anyhow::anyhow!("memory:// max_bytes={value:?}: {error}"))?;
                anyhow::ensure!(max_bytes > 0, "memory:// max_bytes must be above 0");
            }
            other => anyhow::bail!(
                "memory:// has no setting {other:?}: use max_records=N and max_bytes=SIZE"
            ),
        }
    }
    Ok(StoreLocation::Memory {
        max_records,
        max_bytes,
    })
}

/// Opens (and for databases, connects to and migrates) the store; a network store's replays
/// are answered from this process for up to `replay_cache` (zero: never; see
/// [`ReplayCache`]).
pub async fn open(
    location: &StoreLocation,
    options: &StoreOptions,
    replay_cache: Duration,
) -> anyhow::Result<DynStore> {
    Ok(match location {
        StoreLocation::Memory {
            max_records,
            max_bytes,
        } => DynStore::new(MemoryStore::new().with_limits(*max_records, *max_bytes)),
        StoreLocation::Embedded(path) => {
            DynStore::new(EmbeddedStore::open(path).with_context(|| {
                format!(
                    "cannot open the embedded store in {path} (is another idem process using it?)"
                )
            })?)
        }
        StoreLocation::Postgres(url) => cached(
            postgres(url, options)
                .connect()
                .await
                .context("cannot connect to the PostgreSQL store")?,
            replay_cache,
        ),
        StoreLocation::Redis(url) => cached(
            redis(options)?
                .connect(url)
                .await
                .context("cannot connect to the Redis store")?,
            replay_cache,
        ),
        StoreLocation::RedisCluster(nodes) => cached(
            redis(options)?
                .connect_cluster(nodes)
                .await
                .context("cannot connect to the Redis cluster store")?,
            replay_cache,
        ),
    })
}

fn postgres(url: &str, options: &StoreOptions) -> idem_postgres::PostgresStoreBuilder {
    let mut builder = PostgresStore::builder(url)
        .max_connections(options.pool_size)
        .migrate(options.migrate);
    if let Some(schema) = &options.namespace {
        builder = builder.schema(schema);
    }
    if let Some(path) = &options.ca_file {
        builder = builder.ssl_root_cert(path);
    }
    builder
}

fn redis(options: &StoreOptions) -> anyhow::Result<idem_redis::RedisStoreBuilder> {
    let mut builder = RedisStore::builder();
    if let Some(prefix) = &options.namespace {
        builder = builder.key_prefix(prefix);
    }
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read --store-ca-file {}", path.display()))?;
        builder = builder.tls_root_cert(pem);
    }
    Ok(builder)
}

/// `store` behind a replay cache of `max_age`, or as it is for a zero age.
fn cached(store: impl Store, max_age: Duration) -> DynStore {
    if max_age.is_zero() {
        DynStore::new(store)
    } else {
        DynStore::new(ReplayCache::new(store, max_age, DEFAULT_REPLAY_CACHE_BYTES))
    }
}

/// Creates or upgrades the schema of a store that has one (`idem migrate`); the others need
/// nothing.
pub async fn migrate(location: &StoreLocation, options: &StoreOptions) -> anyhow::Result<()> {
    match location {
        StoreLocation::Postgres(url) => {
            // `connect` runs the embedded, versioned migrations (under an advisory lock, so
            // instances starting together do not race).
            postgres(
                url,
                &StoreOptions {
                    migrate: true,
                    ..options.clone()
                },
            )
            .connect()
            .await
            .context("cannot migrate the PostgreSQL store")?;
            Ok(())
        }
        other => {
            tracing::info!(store = %other.describe(), "this store has no schema to migrate");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreLocation::parse("memory://").unwrap(),
            StoreLocation::Memory {
                max_records: idem_core::DEFAULT_MEMORY_MAX_RECORDS,
                max_bytes: idem_core::DEFAULT_MEMORY_MAX_BYTES,
            }
        );
        assert_eq!(
            StoreLocation::parse("memory://?max_records=10&max_bytes=1MiB").unwrap(),
            StoreLocation::Memory {
                max_records: 10,
                max_bytes: 1024 * 1024,
            }
        );
        assert_eq!(
            StoreLocation::parse("./idem-data").unwrap(),
            StoreLocation::Embedded("./idem-data".into())
        );
        assert_eq!(
            StoreLocation::parse("file:///var/lib/idem").unwrap(),
            StoreLocation::Embedded("/var/lib/idem".into())
        );
        assert!(matches!(
            StoreLocation::parse("postgresql://u@h/db").unwrap(),
            StoreLocation::Postgres(_)
        ));
        assert!(matches!(
            StoreLocation::parse("redis://h:6379").unwrap(),
            StoreLocation::Redis(_)
        ));
        assert_eq!(
            StoreLocation::parse("redis+cluster://a:1,b:2").unwrap(),
            StoreLocation::RedisCluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            StoreLocation::parse("rediss+cluster://a:1,b:2").unwrap(),
            StoreLocation::RedisCluster(vec!["rediss://a:1".into(), "rediss://b:2".into()])
        );
        assert_eq!(
            StoreLocation::parse("rediss://h:6380").unwrap(),
            StoreLocation::Redis("rediss://h:6380".into())
        );
        let options = |namespace: &str| StoreOptions {
            namespace: Some(namespace.into()),
            ..StoreOptions::default()
        };
        let redis = StoreLocation::parse("redis://h").unwrap();
        assert!(options("shop_2").check(&redis).is_ok());
        for (namespace, location, reason) in [
            ("Shop", &redis, "lowercase"),
            ("a{b}", &redis, "lowercase"),
            ("1a", &redis, "lowercase"),
            (
                "shop",
                &StoreLocation::parse("memory://").unwrap(),
                "one process's",
            ),
        ] {
            let error = options(namespace).check(location).unwrap_err().to_string();
            assert!(error.contains(reason), "{namespace:?}: {error}");
        }
        for (location, reason) in [
            ("mysql://x", "unknown store scheme"),
            ("", "--store is empty"),
            ("memory://?max_records=0", "expected a count above 0"),
            ("memory://?max_bytes=lots", "max_bytes"),
            ("memory://?size=1", "no setting \"size\""),
        ] {
            let error = StoreLocation::parse(location).unwrap_err().to_string();
            assert!(error.contains(reason), "{location:?}: {error}");
        }
    }
}
