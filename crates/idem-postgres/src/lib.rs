//! A PostgreSQL store for idem: records shared by every instance pointed at one database, so a
//! retry landing on another instance is still replayed, never executed twice.
//!
//! [`PostgresStore`] keeps one row per record in the table `idem_records`, created by migrations
//! embedded in this crate ([`PostgresStore::migrate`], run by [`PostgresStore::connect`]).
//! Every state transition is one SQL statement, one round trip, and is race-free under READ
//! COMMITTED with any number of concurrent clients: `begin` is an `INSERT … ON CONFLICT`
//! that decides on the latest committed version of the row (the statement and why it is
//! correct are documented in the crate's `src/sql.rs`). Replays, the common answer to a
//! retry, are read-only, and so is the answer that a lapsed lease's outcome is unknown.
//! Expired rows are deleted by the engine's sweeper in small batches with `FOR UPDATE SKIP
//! LOCKED`, so several instances can sweep at once without blocking requests.
//!
//! **The database's clock decides.** Each statement reads the server's `clock_timestamp()`
//! once and decides every lease and expiry against it; requests carry only durations. So
//! instances whose own clocks disagree, by seconds or by hours, still agree on every lease
//! and never take over each other's live executions. (For tests,
//! [`PostgresStoreBuilder::clock`] replaces the server's clock by one a test moves by hand;
//! production leaves the database's clock in charge.)
//!
//! Durability is PostgreSQL's: with `synchronous_commit = on` (the default) a completed
//! record survives a crash once `complete` returned; with a synchronous standby it also
//! survives failover. [`Store::durability_risks`](idem_core::Store::durability_risks) reads
//! the server's settings and reports those that can lose completed records (`fsync = off`,
//! `synchronous_commit = off`, standbys replicating asynchronously). The statements need
//! PostgreSQL 9.5 or later (`ON CONFLICT`, `SKIP LOCKED`); tested with 15.
//!
//! # Modules
//!
//! | module | what lives there |
//! |---|---|
//! | `announce` | this process's `LISTEN` for the finishes of watched records, which wakes waiting duplicates |
//! | `store` | [`PostgresStore`]: connecting, the pool, the migrations, the [`Store`](idem_core::Store) implementation |
//! | `sql` | the one statement of each transition, and why each is race-free |
//! | `row` | idem's types as columns and back: timestamps, tokens, headers, a row into a record |
//! | `durability` | the server settings that may lose commits, and what each risks |
//! | `error` | [`ConnectError`], and how driver errors become [`StoreError`](idem_core::StoreError)s |
//! | `fuzzing` | (feature `fuzzing`) the row decoder, for the fuzz targets in `crates/idem-fuzz` |
//!
//! The schema itself is in `migrations/`, embedded at build time.
//!
//! ```no_run
//! use idem_core::{Begin, Engine, Fingerprint, IdempotencyKey, KeyPolicy, RecordId, Scope};
//! use idem_postgres::PostgresStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Connects and creates the `idem_records` table if it is not there yet.
//! let store = PostgresStore::builder("postgres://idem@db.internal/app")
//!     .max_connections(16)
//!     .connect()
//!     .await?;
//! let engine = Engine::new(store);
//! let key = IdempotencyKey::parse(b"order-42", KeyPolicy::Any)?;
//! let id = RecordId::new(&Scope::anonymous(), &key);
//! let fingerprint = Fingerprint::builder().method("POST").path_and_query("/orders").finish();
//! assert!(matches!(engine.begin(id, fingerprint).await?, Begin::Acquired(_)));
//! # Ok(())
//! # }
//! ```

mod announce;
mod durability;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod row;
mod sql;
mod store;

pub use error::ConnectError;
pub use sqlx::PgPool;
pub use store::{
    ACQUIRE_TIMEOUT, CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS, MIGRATIONS_TABLE, OPERATION_TIMEOUT,
    PostgresStore, PostgresStoreBuilder,
};
