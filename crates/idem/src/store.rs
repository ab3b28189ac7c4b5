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
    /// `redis://…`.
    Redis(String),
    /// `redis+cluster://host1:port,host2:port`.
    RedisCluster(Vec<String>),
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
                Some((scheme, _)) if scheme == "redis" => Self::Redis(text.to_owned()),
                Some((scheme, _)) if scheme == "rediss" => anyhow::bail!(
                    "rediss:// (Redis over TLS) is not built into this binary; reach Redis over a private network or a TLS tunnel with redis://"
                ),
                Some((scheme, rest)) if scheme == "redis+cluster" => Self::RedisCluster(
                    rest.split(',')
                        .map(|node| format!("redis://{}", node.trim()))
                        .collect(),
                ),
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
pub async fn open(location: &StoreLocation, replay_cache: Duration) -> anyhow::Result<DynStore> {
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
            PostgresStore::connect(url)
                .await
                .context("cannot connect to the PostgreSQL store")?,
            replay_cache,
        ),
        StoreLocation::Redis(url) => cached(
            RedisStore::connect(url)
                .await
                .context("cannot connect to the Redis store")?,
            replay_cache,
        ),
        StoreLocation::RedisCluster(nodes) => cached(
            RedisStore::connect_cluster(nodes)
                .await
                .context("cannot connect to the Redis cluster store")?,
            replay_cache,
        ),
    })
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
pub async fn migrate(location: &StoreLocation) -> anyhow::Result<()> {
    match location {
        StoreLocation::Postgres(url) => {
            // `connect` runs the embedded, versioned migrations (under an advisory lock, so
            // instances starting together do not race).
            PostgresStore::connect(url)
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
        for (location, reason) in [
            ("mysql://x", "unknown store scheme"),
            ("rediss://h:6380", "not built into this binary"),
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
