//! [`Engine`]: the idempotency protocol on top of a [`Store`]: who executes, who replays,
//! who waits, and who is told the outcome is unknown. The key an execution owns is finished
//! by its [`Execution`] guard.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::futures::Notified;

use crate::engine_state::{EngineState, LeaseRegistry, Waiting};
use crate::execution::{Execution, MAX_SETTLE};
use crate::store::{announced, timed};
use crate::{
    BeginOutcome, BeginRequest, Fingerprint, FingerprintPart, LeaseToken, OnLapse, RecordId,
    RecordSnapshot, RecordState, Store, StoreError, StoredResponse, TransitionOutcome, Watch,
};

/// How long a completed record is replayed by default: a day, as Stripe and the IETF draft's
/// examples suggest; long enough for any client's retry schedule.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a lease lasts between two renewals by default. An execution's owner renews it
/// every third of this while it runs, so it only lapses when the owner died or lost the store
/// for this long: short enough that a crashed execution is reported promptly, long enough to
/// ride out a store failover.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The least time a key whose owner died is reported as of unknown outcome, whatever the
/// replay TTL: long enough for a client's retries to see it and an operator to resolve it.
pub const MIN_UNKNOWN_OUTCOME_KEPT: Duration = Duration::from_secs(60 * 60);

/// First pause between two looks at an in-flight record while waiting for it.
const WAIT_POLL_START: Duration = Duration::from_millis(5);
/// Longest pause between two looks: bounds how late a waiter notices a completion on a
/// store that does not announce finishes.
const WAIT_POLL_MAX: Duration = Duration::from_millis(200);
/// The pause between two looks when the store announces the finish: the look only notices a
/// lapsed lease (an owner that died) or an announcement lost while the store's subscription
/// was reconnecting.
const WAIT_FALLBACK: Duration = Duration::from_secs(1);

/// Runs the idempotency protocol over a store. Cheap to clone: clones share the store.
pub struct Engine<S> {
    state: Arc<EngineState<S>>,
}

impl<S> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
        }
    }
}

impl<S> fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("ttl", &self.state.ttl)
            .field("lease", &self.state.lease)
            .field("wait", &self.state.wait)
            .field("on_lapse", &self.state.on_lapse)
            .finish_non_exhaustive()
    }
}

/// What [`Engine::begin`] decided for one request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Begin<S: Store> {
    /// This caller owns the key: execute, then finish the [`Execution`].
    Acquired(Execution<S>),
    /// The same request already completed: answer with this response, execute nothing.
    Replay(StoredResponse),
    /// The same request is executing elsewhere; ask the client to retry after the hint.
    InFlight {
        /// How long until the other execution's lease lapses unless renewed.
        retry_after: Duration,
    },
    /// An execution of the same request began, and its owner vanished (crashed, or lost the
    /// store for a whole lease) without a result: the operation may have happened. Nothing
    /// is executed; the client should check the resource, then use a new key.
    OutcomeUnknown,
    /// The key was used for a different request: refuse.
    Mismatch {
        /// The parts of the request that differ from the first one's (method, path, headers,
        /// body); empty when the first request's record could not be read again.
        differing: Vec<FingerprintPart>,
    },
}

/// Per-request settings of [`Engine::begin_with`]; [`Engine::options`] gives the engine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginOptions {
    /// How long the record is kept once completed.
    pub ttl: Duration,
    /// What to do when the key's previous owner vanished.
    pub on_lapse: OnLapse,
}

/// How an operator resolves a key (see [`Engine::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// Delete the record: the next request with the key executes.
    Release,
    /// Complete the record with this response: every request with the key replays it.
    Complete(StoredResponse),
}

/// What [`Engine::resolve`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolved {
    /// The resolution was applied.
    Applied,
    /// Nothing to resolve: the key is absent or completed (the record, if any).
    NotInFlight(Option<RecordSnapshot>),
    /// The key's owner may be alive: its lease is live, or lapsed less than a lease ago (an
    /// owner cut off from the store may still come back and renew). Resolving it could run
    /// the operation twice, so nothing was changed.
    StillRunning {
        /// How long to wait before a resolution may be tried again.
        lease_left: Duration,
    },
}

/// Builds an [`Engine`] with non-default settings.
#[derive(Debug)]
pub struct EngineBuilder<S> {
    resolve_after: Option<Duration>,
    store: S,
    ttl: Duration,
    lease: Duration,
    wait: Option<Duration>,
    on_lapse: OnLapse,
}

impl<S: Store> EngineBuilder<S> {
    /// How long completed records are replayed (default [`DEFAULT_TTL`]).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a lease lasts between renewals (default [`DEFAULT_LEASE`]): how long after an
    /// owner vanished its key is reported as [`Begin::OutcomeUnknown`] (or taken over).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Lets a duplicate of an in-flight request wait up to `limit` for it to finish and
    /// replay its result, instead of answering [`Begin::InFlight`] at once.
    #[must_use]
    pub fn wait_for_in_flight(mut self, limit: Duration) -> Self {
        self.wait = Some(limit);
        self
    }

    /// What a request does with a key whose owner vanished (default
    /// [`OnLapse::ReportUnknown`]). [`OnLapse::TakeOver`] re-executes: only for operations
    /// that are safe to run twice.
    #[must_use]
    pub fn on_lapse(mut self, on_lapse: OnLapse) -> Self {
        self.on_lapse = on_lapse;
        self
    }

    /// How long after a key's lease lapsed [`Engine::resolve`] may act on it (default: a lease
    /// plus the 15 minutes an owner cut off from the store keeps retrying its completion).
    /// Shorter risks resolving a key whose owner is alive and about to store its result.
    #[must_use]
    pub fn resolve_after(mut self, grace: Duration) -> Self {
        self.resolve_after = Some(grace);
        self
    }

    /// The engine.
    #[must_use]
    pub fn build(self) -> Engine<S> {
        Engine {
            state: Arc::new(EngineState {
                store: self.store,
                ttl: self.ttl,
                lease: self.lease,
                wait: self.wait,
                on_lapse: self.on_lapse,
                resolve_after: self
                    .resolve_after
                    .unwrap_or_else(|| self.lease.saturating_add(MAX_SETTLE)),
                leases: LeaseRegistry::default(),
            }),
        }
    }
}

impl<S: Store> Engine<S> {
    /// An engine with the default TTL and lease, reporting lapsed keys, and no waiting.
    #[must_use]
    pub fn new(store: S) -> Self {
        Self::builder(store).build()
    }

    /// Starts an engine with non-default settings.
    #[must_use]
    pub fn builder(store: S) -> EngineBuilder<S> {
        EngineBuilder {
            resolve_after: None,
            store,
            ttl: DEFAULT_TTL,
            lease: DEFAULT_LEASE,
            wait: None,
            on_lapse: OnLapse::ReportUnknown,
        }
    }

    /// The store underneath.
    #[must_use]
    pub fn store(&self) -> &S {
        &self.state.store
    }

    /// The default TTL of completed records.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.state.ttl
    }

    /// The lease duration executions get and renew.
    #[must_use]
    pub fn lease_duration(&self) -> Duration {
        self.state.lease
    }

    /// The engine's default [`BeginOptions`].
    #[must_use]
    pub fn options(&self) -> BeginOptions {
        BeginOptions {
            ttl: self.state.ttl,
            on_lapse: self.state.on_lapse,
        }
    }

    /// Decides what to do with a request, with the engine's default options.
    ///
    /// # Errors
    /// The store could not answer; nothing may be executed.
    pub async fn begin(
        &self,
        id: RecordId,
        fingerprint: Fingerprint,
    ) -> Result<Begin<S>, StoreError> {
        self.begin_with(id, fingerprint, self.options()).await
    }

    /// [`begin`](Self::begin) with per-request options.
    ///
    /// # Errors
    /// The store could not answer; nothing may be executed.
    pub async fn begin_with(
        &self,
        id: RecordId,
        fingerprint: Fingerprint,
        options: BeginOptions,
    ) -> Result<Begin<S>, StoreError> {
        // An absurd limit that overflows `Instant` means "no wait" rather than a panic.
        let deadline = self
            .state
            .wait
            .and_then(|limit| Instant::now().checked_add(limit));
        // Listening from before the first read: an owner in this process that finishes
        // between that read and the wait still wakes the duplicate.
        let waiting = deadline.map(|deadline| (deadline, self.state.leases.wait_for(id)));
        let mut pause = WAIT_POLL_START;
        loop {
            let finished = waiting
                .as_ref()
                .map(|(_, waiting)| Box::pin(waiting.finished()));
            let begun = self.try_begin(id, fingerprint, options).await?;
            let (Begin::InFlight { .. }, Some((deadline, waiting)), Some(finished)) =
                (&begun, &waiting, finished)
            else {
                return Ok(begun);
            };
            if !self
                .wait_for_owner(id, *deadline, waiting, finished, &mut pause)
                .await?
            {
                return Ok(begun);
            }
        }
    }

    /// Waits for the owner of `id` to finish: woken at once when the owner is an execution of
    /// this process or, on a store that announces finishes, of another; otherwise the record
    /// is re-read on a backoff until it completes, is released or lapses (with an
    /// announcement, only every [`WAIT_FALLBACK`]: for a lapse, or a lost announcement).
    /// True once it may have finished: decide again (a wake always decides again, so a key
    /// released and taken by a new owner is watched anew); false once `deadline` passed.
    async fn wait_for_owner<'a>(
        &self,
        id: RecordId,
        deadline: Instant,
        waiting: &'a Waiting<'_>,
        mut finished: Pin<Box<Notified<'a>>>,
        pause: &mut Duration,
    ) -> Result<bool, StoreError> {
        // An owner in this process wakes its waiters itself; asking the store would only add
        // a write and an announcement.
        let watch = if self.state.leases.holds(id) {
            Watch::Unsupported
        } else {
            // Within what is left of the wait: a store slow to subscribe must not hold the
            // waiter past its deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout(left, self.watch(id))
                .await
                .unwrap_or(Watch::Unsupported)
        };
        let mut feed = match watch {
            Watch::NotInFlight => return Ok(true),
            Watch::Announced(feed) => Some(feed),
            _ => None,
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let nap = if feed.is_some() {
                WAIT_FALLBACK
            } else {
                *pause
            };
            tokio::select! {
                () = &mut finished => return Ok(true),
                () = announced(&mut feed, id) => return Ok(true),
                () = tokio::time::sleep(nap.min(deadline - now)) => {
                    if feed.is_none() {
                        *pause = (*pause * 2).min(WAIT_POLL_MAX);
                    }
                }
            }
            // Listening again before the read: a finish after the read still wakes it.
            finished = Box::pin(waiting.finished());
            match self.status(id).await? {
                Some(snapshot) if snapshot.lease_left().is_some_and(|left| !left.is_zero()) => {}
                _ => return Ok(true),
            }
        }
    }

    /// Asks the store to announce `id`'s finish. A store that cannot is no reason to fail
    /// the request: the waiter falls back to re-reading the record.
    async fn watch(&self, id: RecordId) -> Watch {
        match timed("watch", self.state.store.watch(id)).await {
            Ok(watch) => watch,
            Err(_) => Watch::Unsupported,
        }
    }

    async fn try_begin(
        &self,
        id: RecordId,
        fingerprint: Fingerprint,
        options: BeginOptions,
    ) -> Result<Begin<S>, StoreError> {
        let token = LeaseToken::random();
        let request = BeginRequest {
            id,
            fingerprint,
            token,
            lease: self.state.lease,
            // How long an in-flight record outlives a lapsed lease: a short replay TTL (a
            // route's minute) must not let a crashed execution expire into a second one.
            ttl: options.ttl.max(MIN_UNKNOWN_OUTCOME_KEPT),
            on_lapse: options.on_lapse,
        };
        let outcome = match timed("begin", self.state.store.begin(request)).await {
            Ok(outcome) => outcome,
            Err(error) => {
                // The store may have acquired the key before its answer was lost (a timeout,
                // a broken connection): give it back, fenced by the token nobody else holds,
                // so that it is not reported as of unknown outcome for a whole TTL although
                // nothing ran.
                release_unanswered_begin(Arc::clone(&self.state), id, token);
                return Err(error);
            }
        };
        Ok(match outcome {
            BeginOutcome::Acquired => Begin::Acquired(Execution::start(
                Arc::clone(&self.state),
                id,
                token,
                options.ttl,
            )),
            BeginOutcome::Replay(response) => Begin::Replay(response),
            BeginOutcome::InFlight { lease_left } => Begin::InFlight {
                retry_after: lease_left,
            },
            BeginOutcome::OutcomeUnknown => {
                metrics::counter!("idem_outcome_unknown_total").increment(1);
                Begin::OutcomeUnknown
            }
            BeginOutcome::Mismatch => self.diagnose_mismatch(id, fingerprint).await,
        })
    }

    /// What a store's mismatch means: one more read, on the mismatch path only.
    ///
    /// - The key's record was written by a version whose fingerprint had no lane tags, for
    ///   this same request ([`Fingerprint::same_request_earlier_layout`]): it is this request,
    ///   answered as the store would have (replay, in flight, or unknown outcome), never as a
    ///   mismatch whose advice (a new key) would run it a second time.
    /// - Otherwise a mismatch that names the parts that differ. Best effort: a record gone or
    ///   unreadable names nothing.
    async fn diagnose_mismatch(&self, id: RecordId, fingerprint: Fingerprint) -> Begin<S> {
        let Ok(Some(snapshot)) = timed("get", self.state.store.get(id)).await else {
            return Begin::Mismatch {
                differing: Vec::new(),
            };
        };
        let lease_left = snapshot.lease_left();
        match &snapshot.record.state {
            RecordState::Completed {
                fingerprint: first,
                response,
            } if first.same_request_earlier_layout(&fingerprint) => Begin::Replay(response.clone()),
            RecordState::InFlight {
                fingerprint: first, ..
            } if first.same_request_earlier_layout(&fingerprint) => match lease_left {
                Some(left) if !left.is_zero() => Begin::InFlight { retry_after: left },
                _ => Begin::OutcomeUnknown,
            },
            RecordState::InFlight {
                fingerprint: first, ..
            }
            | RecordState::Completed {
                fingerprint: first, ..
            } => Begin::Mismatch {
                differing: first.differing(&fingerprint),
            },
        }
    }

    /// Takes back an execution whose lease a client holds by its token (a two-phase flow
    /// across requests), to renew it until it is finished. The store checks the token: a
    /// stale one completes or releases nothing. Dropped unfinished, it leaves the key to the
    /// client that holds the token.
    #[must_use]
    pub fn resume(&self, id: RecordId, token: LeaseToken, ttl: Duration) -> Execution<S> {
        Execution::resume(Arc::clone(&self.state), id, token, ttl)
    }

    /// Moves the lease of the execution holding `token` forward by a whole lease (the renew
    /// call of a two-phase flow).
    ///
    /// # Errors
    /// The store could not answer.
    pub async fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> Result<TransitionOutcome, StoreError> {
        timed("renew", self.state.store.renew(id, token, self.state.lease)).await
    }

    /// The record and the store's clock, or `None` if the key is free.
    ///
    /// # Errors
    /// The store could not answer.
    pub async fn status(&self, id: RecordId) -> Result<Option<RecordSnapshot>, StoreError> {
        timed("get", self.state.store.get(id)).await
    }

    /// An operator's resolution of a key whose owner vanished: release it or complete it.
    /// Refused while the owner may be alive (its lease live, or lapsed less than a lease
    /// ago). The key is first taken over with a new token, atomically in the store, which
    /// fences the old owner off: a resolution never races an execution.
    ///
    /// # Errors
    /// The store could not answer; nothing changed.
    pub async fn resolve(
        &self,
        id: RecordId,
        resolution: Resolution,
    ) -> Result<Resolved, StoreError> {
        let Some(snapshot) = self.status(id).await? else {
            return Ok(Resolved::NotInFlight(None));
        };
        let RecordState::InFlight { fingerprint, .. } = snapshot.record.state else {
            return Ok(Resolved::NotInFlight(Some(snapshot)));
        };
        let lease_left = snapshot.lease_left().unwrap_or_default();
        let lapsed_for = snapshot
            .record
            .lease_until()
            .map_or(Duration::ZERO, |until| until.until(snapshot.now));
        let grace = self.state.resolve_after;
        if !lease_left.is_zero() || lapsed_for < grace {
            // Live, or lapsed so recently that an owner cut off from the store may still be
            // running, or retrying its completion, and come back: wait out the grace.
            return Ok(Resolved::StillRunning {
                lease_left: lease_left.saturating_add(grace - lapsed_for.min(grace)),
            });
        }
        // Take the key over with a token of our own: atomic in the store (only if the lease is
        // still lapsed at that instant), and it fences the old owner off, so that neither its
        // late renewal nor its late completion can race the resolution.
        let token = LeaseToken::random();
        let takeover = BeginRequest {
            id,
            fingerprint,
            token,
            lease: self.state.lease,
            ttl: self.state.ttl,
            on_lapse: OnLapse::TakeOver,
        };
        match timed("begin", self.state.store.begin(takeover)).await? {
            BeginOutcome::Acquired => {}
            BeginOutcome::InFlight { lease_left } => {
                return Ok(Resolved::StillRunning { lease_left });
            }
            _ => return Ok(Resolved::NotInFlight(self.status(id).await?)),
        }
        let outcome = match resolution {
            Resolution::Release => self.release_by_token(id, token).await?,
            Resolution::Complete(response) => {
                self.complete_by_token(id, token, response, self.state.ttl)
                    .await?
            }
        };
        Ok(match outcome {
            TransitionOutcome::Applied => Resolved::Applied,
            // Only another resolution could have taken our fresh token's key over.
            TransitionOutcome::StaleLease => Resolved::NotInFlight(self.status(id).await?),
        })
    }

    /// Completes the key held by `token` with `response`, once: the complete call of a
    /// two-phase flow. On a store fault the client, who holds the token, tries again.
    ///
    /// # Errors
    /// The store could not answer; maybe nothing changed.
    pub async fn complete_by_token(
        &self,
        id: RecordId,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> Result<TransitionOutcome, StoreError> {
        let request = crate::CompleteRequest {
            id,
            token,
            response,
            ttl,
        };
        timed("complete", self.state.store.complete(request)).await
    }

    /// Releases the key held by `token`, once: the release call of a two-phase flow.
    ///
    /// # Errors
    /// The store could not answer; maybe nothing changed.
    pub async fn release_by_token(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> Result<TransitionOutcome, StoreError> {
        timed("release", self.state.store.release(id, token)).await
    }

    /// Deletes expired records in batches of `batch` every `interval`, on the current tokio
    /// runtime, until the returned handle is dropped. Store errors are logged and retried at
    /// the next tick.
    #[must_use]
    pub fn spawn_sweeper(&self, interval: Duration, batch: usize) -> SweeperHandle {
        let engine = self.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                loop {
                    match engine.state.store.sweep_expired(batch).await {
                        Ok(swept) => {
                            metrics::counter!("idem_records_swept_total").increment(swept as u64);
                            // A short batch means nothing expired is left for now.
                            if swept < batch {
                                break;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "sweeping expired idempotency records failed");
                            break;
                        }
                    }
                }
            }
        });
        SweeperHandle(task)
    }
}

/// Stops the background sweeper when dropped.
#[derive(Debug)]
pub struct SweeperHandle(tokio::task::JoinHandle<()>);

impl Drop for SweeperHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a begin whose answer was lost may still land in the store after its caller gave
/// up on it (a statement the database finishes anyway, a script a cluster client re-sends):
/// past a network store's operation timeout, with a margin.
const UNANSWERED_BEGIN_WATCH: Duration = Duration::from_secs(15);

/// Gives back, in the background, a key a begin may have acquired before its answer was lost.
/// The begin may also land later than its caller's timeout, so the record is watched for a
/// while and released whenever it holds the token: nothing ran under that token, and nobody
/// else holds it.
fn release_unanswered_begin<S: Store>(state: Arc<EngineState<S>>, id: RecordId, token: LeaseToken) {
    crate::background::spawn(async move {
        let started = tokio::time::Instant::now();
        let watch = UNANSWERED_BEGIN_WATCH.max(state.lease);
        let mut pause = Duration::from_millis(100);
        while started.elapsed() < watch {
            let holds_our_token = match timed("get", state.store.get(id)).await {
                Ok(Some(snapshot)) => matches!(
                    snapshot.record.state,
                    RecordState::InFlight { token: held, .. } if held == token
                ),
                Ok(None) => false,
                Err(_) => true,
            };
            if holds_our_token
                && let Ok(TransitionOutcome::Applied) =
                    timed("release", state.store.release(id, token)).await
            {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    });
}
