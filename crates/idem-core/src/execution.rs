//! [`Execution`]: the one guard that owns a key from the moment it is acquired until it is
//! finished. While it lives its lease is renewed in the background (the engine's renewer),
//! so the lease only lapses when this process died or lost the store; finishing it
//! (complete, release) retries through transient store faults; and dropped unfinished, it
//! finishes the key as it was told to.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::engine_state::EngineState;
use crate::renewal::Registration;
use crate::store::timed;
use crate::{
    CompleteRequest, LeaseToken, RecordId, Store, StoreError, StoredResponse, TransitionOutcome,
};

/// First pause before a failed completion or release is tried again.
const SETTLE_RETRY_START: Duration = Duration::from_millis(50);
/// Longest a completion or release is retried in the background before the key is left to
/// lapse: outlasts any store failover, and bounds the work a store outage can pile up.
pub(crate) const MAX_SETTLE: Duration = Duration::from_secs(15 * 60);
/// Longest pause between two tries: how late a completion lands after the store returns.
const SETTLE_RETRY_MAX: Duration = Duration::from_secs(2);

/// How an execution ended, as [`Execution::complete`] and [`Execution::release`] report it.
#[derive(Debug)]
#[must_use]
#[non_exhaustive]
pub enum Finish {
    /// The store applied it.
    Done,
    /// Another execution took the key over (this one's lease lapsed and a request allowed to
    /// take over came), or an operator resolved it: nothing changed.
    LeaseLost,
    /// The store could not answer. The transition is retried in the background, with the
    /// lease renewed meanwhile, until it lands or the key is proven lost: no request can
    /// execute the operation again in the meantime.
    Retrying(StoreError),
}

/// How the key is finished: released, or completed with a response.
#[derive(Debug, Clone)]
enum Settlement {
    Release,
    Complete(StoredResponse),
}

/// Ownership of one key for one execution.
///
/// Finish it with [`complete`](Self::complete) or [`release`](Self::release). Dropped
/// unfinished it releases the key (the handler panicked or was cancelled before it produced
/// anything), unless [`complete_if_dropped`](Self::complete_if_dropped) gave it a response to
/// store instead, or it came from [`Engine::resume`](crate::Engine::resume) (the key belongs
/// to a client then).
pub struct Execution<S: Store> {
    owned: Option<OwnedKey<S>>,
    /// What to do with the key if the guard is dropped unfinished.
    if_dropped: Option<Settlement>,
    id: RecordId,
    token: LeaseToken,
    ttl: Duration,
}

/// The key and the renewal that keeps it: what a background settlement carries on with.
struct OwnedKey<S: Store> {
    engine: Arc<EngineState<S>>,
    id: RecordId,
    token: LeaseToken,
    ttl: Duration,
    renewal: Registration<S>,
}

impl<S: Store> fmt::Debug for Execution<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Execution")
            .field("id", &self.id)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Execution<S> {
    pub(crate) fn start(
        engine: Arc<EngineState<S>>,
        id: RecordId,
        token: LeaseToken,
        ttl: Duration,
    ) -> Self {
        let mut execution = Self::resume(engine, id, token, ttl);
        execution.if_dropped = Some(Settlement::Release);
        execution
    }

    pub(crate) fn resume(
        engine: Arc<EngineState<S>>,
        id: RecordId,
        token: LeaseToken,
        ttl: Duration,
    ) -> Self {
        let renewal = Registration::start(&engine, id, token);
        Self {
            owned: Some(OwnedKey {
                engine,
                id,
                token,
                ttl,
                renewal,
            }),
            if_dropped: None,
            id,
            token,
            ttl,
        }
    }

    /// The record this execution owns.
    #[must_use]
    pub fn id(&self) -> RecordId {
        self.id
    }

    /// The fencing token it holds.
    #[must_use]
    pub fn token(&self) -> LeaseToken {
        self.token
    }

    /// How long the completed record will be kept.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether a renewal found the key taken over: the execution no longer owns it, and its
    /// result will not be stored.
    #[must_use]
    pub fn lease_lost(&self) -> bool {
        self.owned
            .as_ref()
            .is_some_and(|owned| owned.renewal.state.lost())
    }

    /// From now on, if this guard is dropped unfinished it completes the key with
    /// `response` (in the background, retrying) instead of releasing it: for a caller that
    /// has executed the operation and is still gathering its result (reading a response
    /// body) when it may be cancelled.
    pub fn complete_if_dropped(&mut self, response: StoredResponse) {
        self.if_dropped = Some(Settlement::Complete(response));
    }

    /// Stores `response` for replay. On a store fault the completion carries on in the
    /// background ([`Finish::Retrying`]): the caller may answer its client already.
    pub async fn complete(mut self, response: StoredResponse) -> Finish {
        let settlement = Settlement::Complete(response);
        // Set first: if this future is dropped during the store call, the guard carries on
        // with the same completion in the background.
        self.if_dropped = Some(settlement.clone());
        self.finish(settlement).await
    }

    /// Gives the key back without a result: the next request with it executes. On a store
    /// fault the release carries on in the background ([`Finish::Retrying`]).
    pub async fn release(mut self) -> Finish {
        self.if_dropped = Some(Settlement::Release);
        self.finish(Settlement::Release).await
    }

    /// From now on, if this guard is dropped unfinished (the code executing the operation
    /// panicked, or the runtime is shutting down) it does nothing: the lease lapses and the
    /// key is reported as of unknown outcome, never released for a second execution. For
    /// callers whose operation may have had an effect before any point where it can be
    /// dropped (the HTTP layer running executions to completion).
    pub fn abandon_if_dropped(&mut self) {
        self.if_dropped = None;
    }

    /// Stops renewing and hands the key to someone outside this process (a client of a
    /// two-phase API, who renews it and finishes it by its token).
    #[must_use]
    pub fn detach(mut self) -> (RecordId, LeaseToken) {
        self.if_dropped = None;
        (self.id, self.token)
    }

    async fn finish(&mut self, settlement: Settlement) -> Finish {
        let Some(owned) = self.owned.as_ref() else {
            return Finish::LeaseLost;
        };
        // From here a renewal that finds the key gone is the finish itself, not a loss.
        owned.renewal.state.mark_settled();
        let finish = match owned.try_once(&settlement).await {
            Ok(TransitionOutcome::Applied) => Finish::Done,
            Ok(TransitionOutcome::StaleLease) => Finish::LeaseLost,
            // Leave `if_dropped` set: dropping `self` on return hands the key to the
            // background settlement, renewal included.
            Err(error) => return Finish::Retrying(error),
        };
        self.if_dropped = None;
        finish
    }
}

impl<S: Store> Drop for Execution<S> {
    fn drop(&mut self) {
        let (Some(owned), Some(settlement)) = (self.owned.take(), self.if_dropped.take()) else {
            return;
        };
        crate::background::spawn(owned.settle_in_background(settlement));
    }
}

impl<S: Store> OwnedKey<S> {
    /// Applies `settlement` once.
    async fn try_once(&self, settlement: &Settlement) -> Result<TransitionOutcome, StoreError> {
        let store = &self.engine.store;
        match settlement {
            Settlement::Release => timed("release", store.release(self.id, self.token)).await,
            Settlement::Complete(response) => {
                let request = CompleteRequest {
                    id: self.id,
                    token: self.token,
                    response: response.clone(),
                    ttl: self.ttl,
                };
                timed("complete", store.complete(request)).await
            }
        }
    }

    /// Tries `settlement` until the store answers, renewing the lease meanwhile, for at most
    /// [`MAX_SETTLE`] (or the record's TTL, if shorter). Past that the renewals stop, the
    /// lease lapses and the key is reported as of unknown outcome, for an operator to resolve:
    /// a key is never pinned in flight by a settlement that cannot land.
    async fn settle_in_background(self, settlement: Settlement) {
        self.renewal.state.mark_settled();
        let now = tokio::time::Instant::now();
        let give_up = now
            .checked_add(self.ttl.min(MAX_SETTLE))
            .unwrap_or(now + MAX_SETTLE);
        let mut pause = SETTLE_RETRY_START;
        let what = match settlement {
            Settlement::Release => "release",
            Settlement::Complete(_) => "complete",
        };
        loop {
            match self.try_once(&settlement).await {
                Ok(TransitionOutcome::Applied) => {
                    metrics::counter!("idem_settlements_total", "transition" => what, "result" => "applied").increment(1);
                    break;
                }
                Ok(TransitionOutcome::StaleLease) => {
                    metrics::counter!("idem_settlements_total", "transition" => what, "result" => "lease_lost").increment(1);
                    tracing::warn!(record = %self.id, transition = what, "the key was taken over or resolved before this execution could finish it; nothing changed");
                    break;
                }
                Err(error) if tokio::time::Instant::now() + pause >= give_up => {
                    metrics::counter!("idem_settlements_total", "transition" => what, "result" => "gave_up").increment(1);
                    tracing::error!(%error, record = %self.id, transition = what, "gave up finishing the key; its lease will lapse and it will be reported as of unknown outcome until an operator resolves it");
                    break;
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(SETTLE_RETRY_MAX);
                }
            }
        }
    }
}
