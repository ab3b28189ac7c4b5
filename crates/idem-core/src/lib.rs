//! The idempotency engine behind idem: at most one execution per idempotency key, and a
//! deterministic replay of its result to every retry.
//!
//! - [`IdempotencyKey`] parses the client's `Idempotency-Key`; [`Scope`] says whose key it
//!   is; both hash into the [`RecordId`] a store keeps (never the key in clear).
//! - [`Fingerprint`] says what makes two requests the same: a reused key with another
//!   fingerprint is a mismatch, never a replay.
//! - [`Store`] is the narrow backend interface, one atomic call per state transition;
//!   [`MemoryStore`] is the in-process backend. Other crates add durable ones.
//! - [`Engine`] runs the protocol: [`Begin`] answers acquired, replay, in flight, outcome
//!   unknown or mismatch. An [`Execution`] owns an acquired key: it renews the lease while the
//!   operation runs and completes or releases the key, retrying through store faults.
//! - [`Engine::run`] is the same protocol for a typed function that is not an HTTP handler
//!   (a queue consumer, a job): a [`Call`]'s key, its input fingerprinted as canonical JSON,
//!   its output replayed.
//! - [`store::transition`] is the executable spec of the five transitions every store shares.
//!
//! # Modules
//!
//! One concept per module; the imports between them go one way (`engine` →
//! `execution` → `renewal` → `engine_state` → `store`, and everything → the value types).
//!
//! | module | what lives there |
//! |---|---|
//! | `key` | [`IdempotencyKey`]: parsing the client's header, and the [`KeyPolicy`] it must meet |
//! | `scope` | [`Scope`] (whose key it is) and the hashed [`RecordId`] a store keeps |
//! | `fingerprint` | [`Fingerprint`]: what makes two requests the same, lane by lane ([`FingerprintPart`]) |
//! | [`canonical_json`] | the exact canonical form of a JSON body (RFC 8785 structure, exact numbers, no duplicate members) |
//! | `record` | what a store keeps per key: [`Record`], [`RecordState`], [`StoredResponse`], [`LeaseToken`], [`Timestamp`], and their byte encodings |
//! | `clock` | [`Clock`]: where an in-process store reads the time ([`ManualClock`] in tests) |
//! | [`store`] | the [`Store`] trait, one atomic call per transition, its requests, answers and errors; [`DynStore`] for a store chosen at run time |
//! | [`store::transition`] | the transitions as pure functions: the semantics every store shares |
//! | `memory` | [`MemoryStore`], the in-process store |
//! | `engine` | [`Engine`]: who executes, who replays, who waits; [`Engine::resolve`] for operators |
//! | `execution` | [`Execution`]: the guard that owns an acquired key until it is completed or released |
//! | [`function`] | [`Engine::run`]: a typed function executed at most once per [`Call`] key, its result replayed (queue consumers, jobs) |
//! | `renewal` | the one background task per engine that renews the leases of running executions |
//! | `engine_state` | what the engine, its executions and its renewer share: the store, the settings, the lease registry |
//! | `testkit` | (feature `testkit`) the store conformance suite, a reference model and network faults |
//!
//! ```
//! use idem_core::{Begin, Engine, Fingerprint, IdempotencyKey, KeyPolicy, MemoryStore};
//! use idem_core::{RecordId, Scope, StoredResponse};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::new(MemoryStore::new());
//! let key = IdempotencyKey::parse(b"\"8e03978e-40d5-43e8-bc93-6894a57f9324\"", KeyPolicy::UuidV4)?;
//! let id = RecordId::new(&Scope::from_secret("Bearer sk_test_alice"), &key);
//! let charge = || Fingerprint::builder().method("POST").path_and_query("/charges").body(b"{\"amount\":1000}").finish();
//!
//! // The first attempt owns the key and executes.
//! let Begin::Acquired(execution) = engine.begin(id, charge()).await? else { unreachable!() };
//! let response = StoredResponse { status: 201, headers: vec![], body: Some("ch_1".into()) };
//! let _ = execution.complete(response.clone()).await;
//!
//! // A retry with the same key and request gets the stored result, and executes nothing.
//! let Begin::Replay(replayed) = engine.begin(id, charge()).await? else { unreachable!() };
//! assert_eq!(replayed, response);
//! # Ok(())
//! # }
//! ```

pub mod background;
pub mod canonical_json;
mod clock;
mod engine;
mod engine_state;
mod execution;
mod fingerprint;
pub mod function;
mod key;
mod memory;
mod record;
mod renewal;
mod scope;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    Begin, BeginOptions, DEFAULT_LEASE, DEFAULT_TTL, Engine, EngineBuilder,
    MIN_UNKNOWN_OUTCOME_KEPT, Resolution, Resolved, SweeperHandle,
};
pub use execution::{Execution, Finish};
pub use fingerprint::{Fingerprint, FingerprintBuilder, FingerprintPart, JsonFilter};
pub use function::{Call, RunError};
pub use key::{IdempotencyKey, KeyError, KeyPolicy, MAX_KEY_LEN};
pub use memory::{DEFAULT_MEMORY_MAX_BYTES, DEFAULT_MEMORY_MAX_RECORDS, MemoryStore};
pub use record::{
    LeaseToken, Record, RecordDecodeError, RecordState, StoredResponse, Timestamp, decode_headers,
    encode_headers,
};
pub use scope::{RecordId, Scope};
pub use store::{
    BeginOutcome, BeginRequest, BoxError, CompleteRequest, DEFAULT_REPLAY_CACHE_BYTES,
    DEFAULT_REPLAY_CACHE_MAX_AGE, DurabilityRisk, DynStore, ErasedStore, FinishFeed,
    FinishListener, MAX_REPLAY_CACHE_AGE, OnLapse, OperationTimedOut, RecordSnapshot, ReplayCache,
    Store, StoreError, TransitionOutcome, Watch, bounded, store_time_of,
};

#[doc(hidden)]
pub mod __private {
    pub use tokio;
}
