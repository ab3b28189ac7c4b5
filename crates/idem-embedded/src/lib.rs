//! idem's default store: records in one crash-safe file on disk, with no server to run.
//!
//! [`EmbeddedStore`] keeps records in [redb], an ACID embedded key-value store whose commits
//! are fsynced before they return, so a completed record survives `kill -9` and power loss.
//! All writes go through one writer thread that applies every transition waiting in its
//! queue inside one write transaction and commits them together (group commit): under load,
//! one fsync covers many requests instead of capping throughput at one fsync per request.
//! Replays are answered from concurrent read transactions without touching the writer.
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

mod store;
mod writer;

pub use store::{CommitStats, DATABASE_FILE, EmbeddedStore, OpenError};
