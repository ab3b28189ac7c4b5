//! The [`Store`] trait: the narrow interface every backend implements, one atomic operation
//! per state transition of a record.
//!
//! ```text
//!                      renew (same token: the lease moves forward)
//!                          ┌──┐
//!                          ▼  │
//!   absent ──begin──▶ in-flight ──complete──▶ completed ──(expiry)──▶ absent
//!                        │  │
//!                release │  │ lease lapsed (the owner died or lost the store):
//!                        ▼  ▼ begin answers OutcomeUnknown, or takes over if allowed
//!                      absent
//! ```
//!
//! An in-flight record expires a whole TTL after its lease lapses (a renewal moves its expiry
//! along with its lease), never with the lease: until then a lapsed lease answers
//! `OutcomeUnknown`, so a crashed execution is never run again just because its record
//! expired. A completed record expires a TTL after its completion.
//!
//! Each method is one atomic step, so a backend can implement it in one round trip
//! (`INSERT … ON CONFLICT … RETURNING`, a Lua script, one write transaction).
//!
//! **The store's clock decides.** Requests carry durations (a lease of 30 s, a TTL of a day),
//! never instants: each store reads its own clock when it applies a transition. PostgreSQL
//! reads `clock_timestamp()`, Redis `TIME` inside the script, so instances whose clocks
//! disagree by minutes still agree on every lease. The memory and embedded stores live in one
//! process, whose clock is the only one there is; they read a [`Clock`](crate::Clock) given
//! at construction (a [`ManualClock`](crate::ManualClock) in tests).
//!
//! The semantics every store shares are written once, as plain functions, in [`transition`];
//! the conformance suite in `idem_core::testkit` is their executable definition.

mod erased;
mod replay_cache;
pub mod transition;
mod watch;

use std::future::Future;
use std::time::Duration;

pub use erased::{DynStore, ErasedStore};
pub use replay_cache::{
    DEFAULT_REPLAY_CACHE_BYTES, DEFAULT_REPLAY_CACHE_MAX_AGE, MAX_REPLAY_CACHE_AGE, ReplayCache,
};
pub(crate) use watch::announced;
pub use watch::{FinishFeed, FinishListener, Watch};

use crate::{Fingerprint, LeaseToken, Record, RecordId, StoredResponse, Timestamp};

/// Any error a backend's driver raises.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a `begin` does with a record whose owner's lease lapsed without a result.
///
/// Leases are renewed while their owner runs, so a lapsed lease means the owner died (or lost
/// the store) mid-execution: the operation may or may not have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnLapse {
    /// Answer [`BeginOutcome::OutcomeUnknown`] and change nothing (the default): the
    /// operation is never executed a second time on its own. An operator resolves the key,
    /// or the client checks the resource and uses a new key.
    #[default]
    ReportUnknown,
    /// Take the key over with a new token and execute again. Only for operations that are
    /// safe to re-run (they check for their own earlier effect, or have none).
    TakeOver,
}

/// Ask for ownership of a record.
#[derive(Debug, Clone)]
pub struct BeginRequest {
    /// The record.
    pub id: RecordId,
    /// The request about to be executed.
    pub fingerprint: Fingerprint,
    /// The token the new owner will hold if it acquires the record.
    pub token: LeaseToken,
    /// How long the lease lasts from the store's now, unless renewed.
    pub lease: Duration,
    /// How long an in-flight record is kept past its lease: it expires a whole TTL after its
    /// lease lapses (renewals carry that gap along), so a crashed owner's key answers
    /// [`BeginOutcome::OutcomeUnknown`] for a TTL rather than expiring with the lease. A
    /// completion sets its own TTL, from its now.
    pub ttl: Duration,
    /// What to do with a record whose lease lapsed.
    pub on_lapse: OnLapse,
}

/// What [`Store::begin`] found, exactly one of five answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BeginOutcome {
    /// The caller now owns the record with the request's token: execute.
    Acquired,
    /// The key was completed by the same request: replay this response.
    Replay(StoredResponse),
    /// Another execution of the same request owns the key, its lease live for `lease_left`.
    InFlight {
        /// How long until that owner's lease lapses unless renewed.
        lease_left: Duration,
    },
    /// An execution of the same request began but its owner's lease lapsed without a result,
    /// and the request did not ask to take over: the operation may have happened.
    OutcomeUnknown,
    /// The key belongs to a different request (another fingerprint): refuse.
    Mismatch,
}

/// Store the response of an execution.
#[derive(Debug, Clone)]
pub struct CompleteRequest {
    /// The record.
    pub id: RecordId,
    /// The token the owner acquired the record with.
    pub token: LeaseToken,
    /// What replays will return.
    pub response: StoredResponse,
    /// How long the completed record is kept from the store's now.
    pub ttl: Duration,
}

/// Whether a fenced transition (renew, complete, release) took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionOutcome {
    /// The caller held the current token; the record changed.
    Applied,
    /// The caller's token is no longer the record's (taken over, completed, released or
    /// expired): nothing changed.
    StaleLease,
}

/// A record as a store holds it, with the store's clock when it was read, so a caller can
/// tell how long a lease has left without reading a clock of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSnapshot {
    /// The record.
    pub record: Record,
    /// The store's clock when the record was read.
    pub now: Timestamp,
}

impl RecordSnapshot {
    /// How long the lease of an in-flight record has left (zero once lapsed); `None` for a
    /// completed record.
    #[must_use]
    pub fn lease_left(&self) -> Option<Duration> {
        self.record.lease_until().map(|until| self.now.until(until))
    }

    /// How long until the record is forgotten.
    #[must_use]
    pub fn expires_in(&self) -> Duration {
        self.now.until(self.record.expires_at)
    }
}

/// A store that could not answer. The engine never guesses past one: the HTTP layer answers
/// 503 (fail closed) and executes nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend is unreachable, timed out or refused the operation; retrying later may
    /// succeed.
    #[error("idempotency store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The backend answered with data this build cannot read.
    #[error("idempotency store returned unreadable data: {0}")]
    Corrupted(#[source] BoxError),
    /// The store holds as many records as it is allowed to (the memory store's bound) and
    /// none has expired: nothing was written. Retrying once records expire may succeed.
    #[error("idempotency store is full: {0}")]
    Full(String),
}

impl StoreError {
    /// Wraps a driver error as [`StoreError::Unavailable`].
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}

/// The error of an operation that did not answer within its bound.
#[derive(Debug, thiserror::Error)]
#[error("the idempotency store did not answer {operation} within {limit:?}")]
pub struct OperationTimedOut {
    /// The transition that timed out.
    pub operation: &'static str,
    /// The bound it ran under.
    pub limit: Duration,
}

/// Runs one network round trip under `limit`, so that a store that stopped answering (a
/// half-open connection, a driver retrying forever) becomes [`StoreError::Unavailable`]
/// instead of a request that hangs. Shared by the network stores.
///
/// # Errors
/// The future's own error, or [`OperationTimedOut`] as `Unavailable`.
pub async fn bounded<T>(
    operation: &'static str,
    limit: Duration,
    future: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::unavailable(OperationTimedOut {
            operation,
            limit,
        })),
    }
}

tokio::task_local! {
    /// The time the store operations of one request took so far, for [`store_time_of`].
    static STORE_TIME: std::cell::Cell<Duration>;
}

/// Runs `future` and answers, with its output, how long the store operations made on its
/// behalf (by the engine, through the same task) took in all: the store's share of a
/// request's time, for an access log. Operations the renewer or a background settlement
/// makes on another task are not counted.
pub async fn store_time_of<F: Future>(future: F) -> (F::Output, Duration) {
    STORE_TIME
        .scope(std::cell::Cell::new(Duration::ZERO), async {
            let output = future.await;
            (output, STORE_TIME.with(std::cell::Cell::get))
        })
        .await
}

/// Runs one store operation on the engine's behalf, recording its latency and errors (the
/// `idem_store_*` metrics, and the request's share in [`store_time_of`]). Every call the
/// engine, an execution or the renewer makes goes through it.
pub(crate) async fn timed<T>(
    operation: &'static str,
    future: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    // A trace span (exported only when the binary traces: `idem --otlp-endpoint`).
    let span = tracing::info_span!(target: "idem::trace", "store", db.operation.name = operation);
    let result = tracing::Instrument::instrument(future, span).await;
    let took = started.elapsed();
    // Outside `store_time_of` (the renewer, a test) nobody counts.
    let _ = STORE_TIME.try_with(|spent| spent.set(spent.get() + took));
    metrics::histogram!("idem_store_operation_duration_seconds", "operation" => operation)
        .record(took.as_secs_f64());
    if let Err(error) = &result {
        metrics::counter!("idem_store_errors_total", "operation" => operation).increment(1);
        tracing::warn!(%error, operation, "idempotency store operation failed");
    }
    result
}

/// A backend for idempotency records. Every method is one atomic state transition; a
/// backend must give each guarantee below to every caller on every instance sharing it.
///
/// Every "now" below is the store's own clock (see the module documentation).
pub trait Store: Send + Sync + 'static {
    /// Atomically decides who owns `request.id`:
    /// - absent or expired: store an in-flight record with `request.token`, a lease until
    ///   `now + request.lease` and an expiry a TTL after that lease (`lease_until +
    ///   request.ttl`, saturating), and answer [`BeginOutcome::Acquired`];
    /// - in flight or completed with another fingerprint: [`BeginOutcome::Mismatch`];
    /// - completed, same fingerprint: [`BeginOutcome::Replay`];
    /// - in flight with `request.token` itself (this very begin ran before and its answer was
    ///   lost, say a driver ran it again after an I/O error): [`BeginOutcome::Acquired`],
    ///   changing nothing while the lease is live; a lapsed one is renewed to a whole lease
    ///   from now, as [`renew`](Store::renew) would;
    /// - in flight with a live lease, same fingerprint: [`BeginOutcome::InFlight`];
    /// - in flight with a lapsed lease, same fingerprint: with [`OnLapse::TakeOver`], acquire
    ///   as for an absent record (the lapsed owner is thereby fenced off); otherwise
    ///   [`BeginOutcome::OutcomeUnknown`], changing nothing.
    ///
    /// Of any number of concurrent calls for one absent id with distinct tokens, exactly one
    /// acquires.
    fn begin(
        &self,
        request: BeginRequest,
    ) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send;

    /// If the record is in flight with `token` (lapsed or not, but not taken over or expired),
    /// atomically moves its lease to `lease` from now, and its expiry forward by as much as
    /// the lease moved forward (`expires_at + max(0, new lease_until - old lease_until)`,
    /// saturating), so the record is still kept a TTL past its lease; otherwise changes
    /// nothing and answers [`TransitionOutcome::StaleLease`].
    fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send;

    /// If the record is in flight with `request.token`, atomically makes it completed with
    /// `request.response` for `request.ttl`; otherwise changes nothing and answers
    /// [`TransitionOutcome::StaleLease`].
    ///
    /// A lease that lapsed without being taken over still belongs to its owner: its
    /// completion is accepted, because refusing it would discard the result of an execution
    /// that did happen.
    fn complete(
        &self,
        request: CompleteRequest,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send;

    /// If the record is in flight with `token` (and not expired), atomically deletes it (the
    /// key is free again); otherwise changes nothing and answers
    /// [`TransitionOutcome::StaleLease`].
    fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send;

    /// The live record and the store's clock, or `None` if it is absent or expired.
    fn get(
        &self,
        id: RecordId,
    ) -> impl Future<Output = Result<Option<RecordSnapshot>, StoreError>> + Send;

    /// Deletes up to `limit` records that expired by now and answers how many it deleted.
    /// Expired records already behave as absent; this only reclaims space. Safe to run from
    /// several instances at once, and must not block the other operations for long.
    fn sweep_expired(&self, limit: usize)
    -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Asks the store to announce when the execution of `id`, in flight now, finishes
    /// (completes or is released), whichever instance runs it: [`Watch::Announced`] with the
    /// feed it will be announced on, [`Watch::NotInFlight`] when it is not in flight any more,
    /// or [`Watch::Unsupported`] (the default) for a store that does not announce. A store
    /// that does subscribes before it marks the record, so that no finish after the mark is
    /// missed; see the [`watch`](self::watch) module for what a lost announcement costs.
    fn watch(&self, id: RecordId) -> impl Future<Output = Result<Watch, StoreError>> + Send {
        let _ = id;
        std::future::ready(Ok(Watch::Unsupported))
    }

    /// What in the backend's own settings may make it forget records (an eviction policy, a
    /// write acknowledged before it is durable, asynchronous replication), read from the
    /// backend itself. Empty when nothing does. Read at start and by `/readyz`.
    fn durability_risks(
        &self,
    ) -> impl Future<Output = Result<Vec<DurabilityRisk>, StoreError>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// One setting of a backend that may make it forget records, and what that risks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurabilityRisk {
    /// The setting and its value, as the backend names them (`maxmemory-policy=allkeys-lru`).
    pub setting: String,
    /// What may happen to records because of it.
    pub risk: String,
    /// Whether idem refuses to start on it unless told to accept it: a setting under which
    /// the backend deletes live records on its own (eviction), as opposed to one that only
    /// loses the last writes in a crash.
    pub refuse: bool,
}
