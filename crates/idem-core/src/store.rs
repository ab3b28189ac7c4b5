//! The [`Store`] trait: the narrow interface every backend implements, one atomic operation
//! per state transition of a record.
//!
//! ```text
//!   absent ──begin──▶ in-flight ──complete──▶ completed ──(expiry)──▶ absent
//!                        │  ▲
//!                release │  │ begin after the lease lapsed (takeover, new token)
//!                        ▼  │
//!                      absent
//! ```
//!
//! Each method is one atomic step, so a backend can implement it in one round trip
//! (`INSERT … ON CONFLICT … RETURNING`, a Lua script, one write transaction). The semantics
//! every store shares are written once, as plain functions, in [`transition`]; the
//! conformance suite in `idem_core::testkit` is their executable definition.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Fingerprint, LeaseToken, RecordId, RecordState, StoredResponse, Timestamp};

/// Any error a backend's driver raises.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Ask for ownership of a record.
#[derive(Debug, Clone)]
pub struct BeginRequest {
    /// The record.
    pub id: RecordId,
    /// The request about to be executed.
    pub fingerprint: Fingerprint,
    /// The token the new owner will hold if it acquires the record.
    pub token: LeaseToken,
    /// The current time.
    pub now: Timestamp,
    /// When the lease lapses if the owner neither completes nor releases.
    pub lease_until: Timestamp,
    /// When an acquired record is forgotten if its owner vanishes (at least `lease_until`).
    pub expires_at: Timestamp,
}

/// What [`Store::begin`] found, exactly one of four answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginOutcome {
    /// The caller now owns the record with the request's token: execute.
    Acquired,
    /// The key was completed by the same request: replay this response.
    Replay(StoredResponse),
    /// Another execution of the same request owns the key until `lease_until`.
    InFlight {
        /// When that owner's lease lapses.
        lease_until: Timestamp,
    },
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
    /// The current time.
    pub now: Timestamp,
    /// When the completed record is forgotten.
    pub expires_at: Timestamp,
}

/// Whether a fenced transition (complete, release) took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionOutcome {
    /// The caller held the current token; the record changed.
    Applied,
    /// The caller's token is no longer the record's (taken over, completed, released or
    /// expired): nothing changed.
    StaleLease,
}

/// A store that could not answer. The engine never guesses past one: the HTTP layer answers
/// 503 (fail closed) and executes nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend is unreachable, timed out or refused the operation; retrying later may
    /// succeed.
    #[error("idempotency store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The backend answered with data this build cannot read.
    #[error("idempotency store returned unreadable data: {0}")]
    Corrupted(#[source] BoxError),
}

impl StoreError {
    /// Wraps a driver error as [`StoreError::Unavailable`].
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}

/// A backend for idempotency records. Every method is one atomic state transition; a
/// backend must give each guarantee below to every caller on every instance sharing it.
///
/// Time comes from the caller (`now`): stores compare the timestamps they are given and do
/// not read a clock of their own.
pub trait Store: Send + Sync + 'static {
    /// Atomically decides who owns `request.id`:
    /// - absent, expired, or in flight with a lapsed lease and the same fingerprint: store an
    ///   in-flight record with `request.token`, `lease_until`, `expires_at` and answer
    ///   [`BeginOutcome::Acquired`] (a lapsed owner is thereby fenced off);
    /// - completed, same fingerprint: [`BeginOutcome::Replay`];
    /// - in flight with a live lease, same fingerprint: [`BeginOutcome::InFlight`];
    /// - in flight or completed with another fingerprint: [`BeginOutcome::Mismatch`].
    ///
    /// Of any number of concurrent calls for one absent id, exactly one acquires.
    fn begin(
        &self,
        request: BeginRequest,
    ) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send;

    /// If the record is in flight with `request.token`, atomically makes it completed with
    /// `request.response` until `request.expires_at`; otherwise changes nothing and answers
    /// [`TransitionOutcome::StaleLease`].
    ///
    /// A lease that lapsed without being taken over still belongs to its owner: its
    /// completion is accepted, because refusing it would discard the result of an execution
    /// that did happen and let a retry execute a second time.
    fn complete(
        &self,
        request: CompleteRequest,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send;

    /// If the record is in flight with `token` (and not expired at `now`), atomically deletes it (the key is free again);
    /// otherwise changes nothing and answers [`TransitionOutcome::StaleLease`].
    fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
        now: Timestamp,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send;

    /// The record's state at `now`, or `None` if it is absent or expired.
    fn get(
        &self,
        id: RecordId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<RecordState>, StoreError>> + Send;

    /// Deletes up to `limit` records that expired at or before `now` and answers how many it
    /// deleted. Expired records already behave as absent; this only reclaims space. Safe to
    /// run from several instances at once, and must not block the other operations for long.
    fn sweep_expired(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe form of [`Store`], for choosing a backend at run time (from a URL, say).
///
/// Every [`Store`] is an `ErasedStore`; [`DynStore`] makes one a [`Store`] again.
pub trait ErasedStore: Send + Sync + 'static {
    /// See [`Store::begin`].
    fn begin(&self, request: BeginRequest) -> BoxFuture<'_, Result<BeginOutcome, StoreError>>;
    /// See [`Store::complete`].
    fn complete(
        &self,
        request: CompleteRequest,
    ) -> BoxFuture<'_, Result<TransitionOutcome, StoreError>>;
    /// See [`Store::release`].
    fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<TransitionOutcome, StoreError>>;
    /// See [`Store::get`].
    fn get(
        &self,
        id: RecordId,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<RecordState>, StoreError>>;
    /// See [`Store::sweep_expired`].
    fn sweep_expired(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>>;
}

impl<S: Store> ErasedStore for S {
    fn begin(&self, request: BeginRequest) -> BoxFuture<'_, Result<BeginOutcome, StoreError>> {
        Box::pin(Store::begin(self, request))
    }
    fn complete(
        &self,
        request: CompleteRequest,
    ) -> BoxFuture<'_, Result<TransitionOutcome, StoreError>> {
        Box::pin(Store::complete(self, request))
    }
    fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<TransitionOutcome, StoreError>> {
        Box::pin(Store::release(self, id, token, now))
    }
    fn get(
        &self,
        id: RecordId,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<RecordState>, StoreError>> {
        Box::pin(Store::get(self, id, now))
    }
    fn sweep_expired(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(Store::sweep_expired(self, now, limit))
    }
}

/// Any store behind one type, chosen at run time (from a URL, say): a [`Store`] that
/// forwards to an [`ErasedStore`], at the cost of one allocation per call. Cloning shares the
/// store.
///
/// A newtype rather than `impl Store for Arc<dyn ErasedStore>`: the compiler cannot always
/// prove a trait object's `'static` bound inside `Send` futures, and a type without a
/// lifetime sidesteps it.
#[derive(Clone)]
pub struct DynStore(Arc<dyn ErasedStore>);

impl DynStore {
    /// Erases `store`'s type.
    pub fn new(store: impl Store) -> Self {
        Self(Arc::new(store))
    }
}

impl std::fmt::Debug for DynStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DynStore")
    }
}

impl Store for DynStore {
    fn begin(
        &self,
        request: BeginRequest,
    ) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send {
        self.0.begin(request)
    }
    fn complete(
        &self,
        request: CompleteRequest,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send {
        self.0.complete(request)
    }
    fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
        now: Timestamp,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send {
        self.0.release(id, token, now)
    }
    fn get(
        &self,
        id: RecordId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<RecordState>, StoreError>> + Send {
        self.0.get(id, now)
    }
    fn sweep_expired(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        self.0.sweep_expired(now, limit)
    }
}

/// The shared semantics of the transitions, as pure functions over the record a store holds.
///
/// Stores that can run Rust inside their atomic section (the memory store under a lock, the
/// embedded store inside a write transaction) call these; stores that run the transition in
/// the database (SQL, Lua) mirror them, and the conformance suite checks that they agree.
pub mod transition {
    use super::{BeginOutcome, BeginRequest, CompleteRequest, TransitionOutcome};
    use crate::{LeaseToken, Record, RecordState, Timestamp};

    /// What a store must write after a transition.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Write {
        /// Leave the record as it is.
        Nothing,
        /// Replace (or create) the record.
        Put(Record),
        /// Delete the record.
        Delete,
    }

    /// [`Store::begin`](super::Store::begin) applied to the current record.
    #[must_use]
    pub fn begin(current: Option<&Record>, request: &BeginRequest) -> (BeginOutcome, Write) {
        let live = current.filter(|record| !record.is_expired(request.now));
        let acquire = || {
            let record = Record {
                state: RecordState::InFlight {
                    fingerprint: request.fingerprint,
                    token: request.token,
                    lease_until: request.lease_until,
                },
                expires_at: request.expires_at.max(request.lease_until),
            };
            (BeginOutcome::Acquired, Write::Put(record))
        };
        match live.map(|record| &record.state) {
            None => acquire(),
            Some(
                RecordState::InFlight { fingerprint, .. }
                | RecordState::Completed { fingerprint, .. },
            ) if *fingerprint != request.fingerprint => (BeginOutcome::Mismatch, Write::Nothing),
            Some(RecordState::Completed { response, .. }) => {
                (BeginOutcome::Replay(response.clone()), Write::Nothing)
            }
            Some(RecordState::InFlight { lease_until, .. }) if *lease_until <= request.now => {
                acquire()
            }
            Some(RecordState::InFlight { lease_until, .. }) => (
                BeginOutcome::InFlight {
                    lease_until: *lease_until,
                },
                Write::Nothing,
            ),
        }
    }

    /// [`Store::complete`](super::Store::complete) applied to the current record.
    #[must_use]
    pub fn complete(
        current: Option<&Record>,
        request: &CompleteRequest,
    ) -> (TransitionOutcome, Write) {
        match owned_in_flight(current, request.token, request.now) {
            Some(fingerprint) => {
                let record = Record {
                    state: RecordState::Completed {
                        fingerprint,
                        response: request.response.clone(),
                    },
                    expires_at: request.expires_at,
                };
                (TransitionOutcome::Applied, Write::Put(record))
            }
            None => (TransitionOutcome::StaleLease, Write::Nothing),
        }
    }

    /// [`Store::release`](super::Store::release) applied to the current record.
    #[must_use]
    pub fn release(
        current: Option<&Record>,
        token: LeaseToken,
        now: Timestamp,
    ) -> (TransitionOutcome, Write) {
        match owned_in_flight(current, token, now) {
            Some(_) => (TransitionOutcome::Applied, Write::Delete),
            None => (TransitionOutcome::StaleLease, Write::Nothing),
        }
    }

    /// The state a reader sees at `now`.
    #[must_use]
    pub fn visible(current: Option<&Record>, now: Timestamp) -> Option<RecordState> {
        current
            .filter(|record| !record.is_expired(now))
            .map(|record| record.state.clone())
    }

    fn owned_in_flight(
        current: Option<&Record>,
        token: LeaseToken,
        now: Timestamp,
    ) -> Option<crate::Fingerprint> {
        match current
            .filter(|record| !record.is_expired(now))
            .map(|record| &record.state)
        {
            Some(RecordState::InFlight {
                fingerprint,
                token: held,
                ..
            }) if *held == token => Some(*fingerprint),
            _ => None,
        }
    }
}
