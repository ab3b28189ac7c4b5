//! idem's default store: records in one crash-safe file on disk, with no server to run.
//!
//! [`EmbeddedStore`] keeps records in [fjall], an embedded log-structured key-value store
//! whose journal is fsynced before a write is acknowledged, so a completed record survives
//! `kill -9` and power loss. All writes go through one writer thread that takes every
//! transition waiting in its queue, writes them as one atomic batch and fsyncs once (group
//! commit): under load, one fsync covers many requests instead of capping throughput at one
//! fsync per request. Replays are answered from the latest committed state without touching
//! the writer. Why fjall rather than redb or SQLite is measured in `benches/engines.rs`.
//!
//! Leases and expiry follow the process's clock, read by the writer thread as it decides each
//! transition; tests hand the store a [`ManualClock`](idem_core::ManualClock) instead
//! ([`EmbeddedStore::builder`]) to move time by hand.
//!
//! # Modules
//!
//! | module | what lives there |
//! |---|---|
//! | `store` | [`EmbeddedStore`]: opening it, the [`Store`](idem_core::Store) implementation, the read-only fast path of replays |
//! | `writer` | the single writer thread: its queue, the group commit, deciding each transition at the store's clock |
//! | `layout` | the files on disk: the database directory, its keyspaces, how records and the expiry index are keyed |
//! | `fuzzing` | (feature `fuzzing`) the record decoder, for the fuzz targets in `crates/idem-fuzz` |
//!
//! `store` hands every transition to `writer`; both read and write the database through
//! `layout`, which knows neither.
//!
//! ```
//! use idem_core::{Begin, Engine, Fingerprint, RecordId, Scope, IdempotencyKey, KeyPolicy};
//! use idem_embedded::EmbeddedStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store = EmbeddedStore::open(dir.path())?;
//! let engine = Engine::new(store);
//! let key = IdempotencyKey::parse(b"order-42", KeyPolicy::Any)?;
//! let id = RecordId::new(&Scope::anonymous(), &key);
//! let fingerprint = Fingerprint::builder().method("POST").path_and_query("/orders").finish();
//! assert!(matches!(engine.begin(id, fingerprint).await?, Begin::Acquired(_)));
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod layout;
mod store;
mod writer;

pub use layout::DATABASE_DIR;
pub use store::{CommitStats, EmbeddedStore, EmbeddedStoreBuilder, OpenError};
