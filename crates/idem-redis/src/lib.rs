//! A Redis store for idem: records shared by every instance pointed at one Redis or one
//! Redis Cluster, so a retry landing on another instance is still replayed, never executed
//! twice.
//!
//! [`RedisStore`] keeps each record as one hash at `{prefix}:{<hex id>}` (the braces are a
//! cluster hash tag). Each state transition is one `EVALSHA` of a Lua script (`src/lua/`), so
//! it reads the clock, reads the record and writes it in one atomic step and one round trip;
//! the scripts mirror `idem_core::store::transition`.
//!
//! **Redis's clock decides.** Requests carry durations (a lease of 30 s, a TTL of a day); each
//! script reads Redis's clock (`TIME`) and judges every lease and expiry by it, never by the
//! clock of the instance that sent it, so instances whose clocks disagree by minutes still
//! agree on every lease. (Tests may hand the store a clock of their own with
//! [`RedisStoreBuilder::clock`], to move time by hand; production never does.) Every write
//! also sets the key's expiry, from the same now, to the record's logical expiry plus
//! [`EXPIRY_GRACE`], so Redis deletes expired records itself and
//! [`sweep_expired`](idem_core::Store::sweep_expired) has nothing to do.
//!
//! ```no_run
//! use idem_core::{Begin, Engine, Fingerprint, IdempotencyKey, KeyPolicy, RecordId, Scope};
//! use idem_redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::builder()
//!     .key_prefix("shop")
//!     .connect("redis://cache.internal:6379")
//!     .await?;
//! // Or, for a cluster: RedisStore::connect_cluster(&["redis://node-1:6379", "redis://node-2:6379"])
//! let engine = Engine::new(store);
//! let key = IdempotencyKey::parse(b"order-42", KeyPolicy::Any)?;
//! let id = RecordId::new(&Scope::anonymous(), &key);
//! let fingerprint = Fingerprint::builder().method("POST").path_and_query("/orders").finish();
//! assert!(matches!(engine.begin(id, fingerprint).await?, Begin::Acquired(_)));
//! # Ok(())
//! # }
//! ```
//!
//! # What Redis must be configured for
//!
//! At most one execution per key holds only as long as Redis keeps what it acknowledged. A
//! completed record that is lost means a retry executes the operation again; a lost lease
//! means a duplicate running at the same time is not stopped.
//!
//! - **Persistence.** `appendonly yes` with `appendfsync always` fsyncs every write before
//!   Redis answers: a completed record survives a crash or power loss once `complete`
//!   returned. `appendfsync everysec` (Redis's default with AOF) may lose the last second of
//!   writes on a crash; RDB snapshots alone lose everything since the last snapshot; no
//!   persistence loses everything on restart. Choose knowing that each lost completion is a
//!   possible second execution.
//! - **Memory.** Records must not be evicted: use `maxmemory-policy noeviction`, so that a
//!   full Redis refuses writes, which the engine reports as unavailable (503), rather than
//!   forgetting completed records. Every other policy may evict them, `volatile-*` included,
//!   since every record carries a TTL.
//! - **Failover.** Replication is asynchronous: a replica promoted by Sentinel or the cluster
//!   may miss the latest completions and leases, and at-most-once can then be violated for
//!   keys written just before the failover (a retry executes again, or a duplicate acquires
//!   a key whose lease was lost). `WAIT` after each write would narrow that window, not close
//!   it, at the cost of a replication round trip per request; this store does not issue it.
//!   `min-replicas-to-write` keeps a primary cut off from its replicas from accepting writes
//!   that a failover would discard. When the guarantee must survive failover, use the
//!   PostgreSQL store with a synchronous standby.
//! - **Clocks.** Only Redis's clock matters; the instances' clocks may be skewed. Each
//!   record is judged by the clock of the node that holds it, and after a failover by the
//!   promoted replica's, so keep the nodes' clocks synchronised (NTP) as for any Redis: a
//!   clock that jumps ahead lapses leases and expires records early.
//!
//! [`durability_risks`](idem_core::Store::durability_risks) reads these settings from the
//! server (every primary of a cluster) and reports what they risk: an eviction policy other
//! than `noeviction` is one idem refuses to start on unless told to accept it.
//!
//! # Modules
//!
//! | module | what lives there |
//! |---|---|
//! | `store` | [`RedisStore`]: connecting to one Redis or a cluster, the scripts, the [`Store`](idem_core::Store) implementation |
//! | `lua/` | the script of each transition (`begin.lua`, `renew.lua`, ...), and `prelude.lua` they share |
//! | `announce` | this process's subscription to the finishes of watched records, which wakes waiting duplicates |
//! | `codec` | how a record is laid out in Redis (its key, its hash's fields) and reading scripts' replies back |
//! | `durability` | the server settings that may lose records, read from every primary, and what each risks |
//! | `error` | [`ConnectError`], and how driver errors become [`StoreError`](idem_core::StoreError)s |
//! | `fuzzing` | (feature `fuzzing`) the reply decoders, for the fuzz targets in `crates/idem-fuzz` |

mod announce;
mod codec;
mod durability;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod store;

pub use error::ConnectError;
pub use store::{
    CONNECTION_TIMEOUT, DEFAULT_KEY_PREFIX, EXPIRY_GRACE, OPERATION_TIMEOUT, RESPONSE_TIMEOUT,
    RedisStore, RedisStoreBuilder,
};
