//! [`Engine`]: the idempotency protocol on top of a [`Store`]: who executes, who replays,
//! who waits, and a [`Lease`] that gives the key back if its owner never finishes.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, Fingerprint, LeaseToken, RecordId,
    RecordState, Store, StoreError, StoredResponse, SystemClock, Timestamp, TransitionOutcome,
};

/// How long a completed record is replayed by default: a day, as Stripe and the IETF draft's
/// examples suggest; long enough for any client's retry schedule.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long an execution owns its key by default before a retry may take it over. It must
/// exceed the slowest handler: an owner still running when its lease lapses can be overtaken
/// and the operation executed twice. A minute covers ordinary request timeouts.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// First pause between two looks at an in-flight record while waiting for it.
const WAIT_POLL_START: Duration = Duration::from_millis(5);
/// Longest pause between two looks: bounds how late a waiter notices a completion.
const WAIT_POLL_MAX: Duration = Duration::from_millis(200);

/// Runs the idempotency protocol over a store. Cheap to clone: clones share the store.
pub struct Engine<S> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    store: S,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    lease: Duration,
    wait: Option<Duration>,
}

impl<S> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("ttl", &self.shared.ttl)
            .field("lease", &self.shared.lease)
            .field("wait", &self.shared.wait)
            .finish_non_exhaustive()
    }
}

/// What [`Engine::begin`] decided for one request.
#[derive(Debug)]
pub enum Begin<S: Store> {
    /// This caller owns the key: execute, then [`Lease::complete`] or [`Lease::release`].
    Acquired(Lease<S>),
    /// The same request already completed: answer with this response, execute nothing.
    Replay(StoredResponse),
    /// The same request is executing elsewhere; ask the client to retry after the hint.
    InFlight {
        /// How long until the other execution's lease lapses.
        retry_after: Duration,
    },
    /// The key was used for a different request: refuse.
    Mismatch,
}

/// Builds an [`Engine`] with non-default settings.
#[derive(Debug)]
pub struct EngineBuilder<S> {
    store: S,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    lease: Duration,
    wait: Option<Duration>,
}

impl<S: Store> EngineBuilder<S> {
    /// How long completed records are replayed (default [`DEFAULT_TTL`]).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long an execution owns its key before a retry may take it over (default
    /// [`DEFAULT_LEASE`]).
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

    /// Reads time from `clock` instead of the system clock.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The engine.
    #[must_use]
    pub fn build(self) -> Engine<S> {
        Engine {
            shared: Arc::new(Shared {
                store: self.store,
                clock: self.clock,
                ttl: self.ttl,
                lease: self.lease,
                wait: self.wait,
            }),
        }
    }
}

impl<S: Store> Engine<S> {
    /// An engine with the default TTL and lease, the system clock, and no waiting.
    #[must_use]
    pub fn new(store: S) -> Self {
        Self::builder(store).build()
    }

    /// Starts an engine with non-default settings.
    #[must_use]
    pub fn builder(store: S) -> EngineBuilder<S> {
        EngineBuilder {
            store,
            clock: Arc::new(SystemClock),
            ttl: DEFAULT_TTL,
            lease: DEFAULT_LEASE,
            wait: None,
        }
    }

    /// The store underneath.
    #[must_use]
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The clock the engine reads.
    #[must_use]
    pub fn clock(&self) -> &dyn Clock {
        &*self.shared.clock
    }

    /// The default TTL of completed records.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// Decides what to do with a request, keeping completed records for the default TTL.
    ///
    /// # Errors
    /// The store could not answer; nothing may be executed.
    pub async fn begin(
        &self,
        id: RecordId,
        fingerprint: Fingerprint,
    ) -> Result<Begin<S>, StoreError> {
        self.begin_with_ttl(id, fingerprint, self.shared.ttl).await
    }

    /// [`begin`](Self::begin), keeping this record for `ttl` once completed.
    ///
    /// # Errors
    /// The store could not answer; nothing may be executed.
    pub async fn begin_with_ttl(
        &self,
        id: RecordId,
        fingerprint: Fingerprint,
        ttl: Duration,
    ) -> Result<Begin<S>, StoreError> {
        // An absurd limit that overflows `Instant` means "no wait" rather than a panic.
        let deadline = self
            .shared
            .wait
            .and_then(|limit| Instant::now().checked_add(limit));
        let mut pause = WAIT_POLL_START;
        loop {
            let begun = self.try_begin(id, fingerprint, ttl).await?;
            let (Begin::InFlight { .. }, Some(deadline)) = (&begun, deadline) else {
                return Ok(begun);
            };
            // Wait for the owner to finish: poll the record (it may live in another process,
            // so there is nothing local to be notified by) until it completes, is released or
            // lapses, or until the deadline; then decide again.
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(begun);
                }
                tokio::time::sleep(pause.min(deadline - now)).await;
                pause = (pause * 2).min(WAIT_POLL_MAX);
                match self.status(id).await? {
                    Some(RecordState::InFlight { lease_until, .. })
                        if lease_until > self.shared.clock.now() => {}
                    _ => break,
                }
            }
        }
    }

    async fn try_begin(
        &self,
        id: RecordId,
        fingerprint: Fingerprint,
        ttl: Duration,
    ) -> Result<Begin<S>, StoreError> {
        let now = self.shared.clock.now();
        let token = LeaseToken::random();
        let lease_until = now.plus(self.shared.lease);
        let request = BeginRequest {
            id,
            fingerprint,
            token,
            now,
            lease_until,
            expires_at: now.plus(ttl),
        };
        let outcome = timed("begin", self.shared.store.begin(request)).await?;
        Ok(match outcome {
            BeginOutcome::Acquired => Begin::Acquired(Lease {
                engine: self.clone(),
                id,
                token,
                ttl,
                lease_until,
                finished: false,
            }),
            BeginOutcome::Replay(response) => Begin::Replay(response),
            BeginOutcome::InFlight { lease_until } => Begin::InFlight {
                retry_after: now.until(lease_until),
            },
            BeginOutcome::Mismatch => Begin::Mismatch,
        })
    }

    /// Rebuilds the lease a client holds by its token (a two-phase flow across requests). The
    /// store checks the token: a stale one completes or releases nothing.
    #[must_use]
    pub fn resume_lease(&self, id: RecordId, token: LeaseToken, ttl: Duration) -> Lease<S> {
        let lease_until = self.shared.clock.now().plus(self.shared.lease);
        Lease {
            engine: self.clone(),
            id,
            token,
            ttl,
            lease_until,
            finished: false,
        }
    }

    /// The lease duration new executions get.
    #[must_use]
    pub fn lease_duration(&self) -> Duration {
        self.shared.lease
    }

    /// The record's current state, or `None` if the key is free.
    ///
    /// # Errors
    /// The store could not answer.
    pub async fn status(&self, id: RecordId) -> Result<Option<RecordState>, StoreError> {
        timed("get", self.shared.store.get(id, self.shared.clock.now())).await
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
                    let now = engine.shared.clock.now();
                    match engine.shared.store.sweep_expired(now, batch).await {
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

/// Ownership of one key for one execution.
///
/// Finish it with [`complete`](Self::complete) or [`release`](Self::release). Dropped
/// unfinished (the handler panicked, the request was cancelled), it releases the key in the
/// background so a retry can execute: nothing was completed, so nothing is lost.
pub struct Lease<S: Store> {
    engine: Engine<S>,
    id: RecordId,
    token: LeaseToken,
    ttl: Duration,
    lease_until: Timestamp,
    finished: bool,
}

impl<S: Store> fmt::Debug for Lease<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Lease<S> {
    /// The record this lease owns.
    #[must_use]
    pub fn id(&self) -> RecordId {
        self.id
    }

    /// The fencing token this lease holds.
    #[must_use]
    pub fn token(&self) -> LeaseToken {
        self.token
    }

    /// How long the completed record will be kept.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the lease lapses, as stored (for a resumed lease: an estimate from the engine's
    /// lease duration).
    #[must_use]
    pub fn lease_until(&self) -> Timestamp {
        self.lease_until
    }

    /// Stores `response` for replay. [`TransitionOutcome::StaleLease`] means another
    /// execution took the key over after this lease lapsed; the response was not stored.
    ///
    /// # Errors
    /// The store could not answer. The record stays in flight until its lease lapses, and a
    /// retry after that executes again: keep the lease longer than a store outage you want
    /// to ride out.
    pub async fn complete(
        mut self,
        response: StoredResponse,
    ) -> Result<TransitionOutcome, StoreError> {
        self.finished = true;
        let now = self.engine.shared.clock.now();
        let request = CompleteRequest {
            id: self.id,
            token: self.token,
            response,
            now,
            expires_at: now.plus(self.ttl),
        };
        timed("complete", self.engine.shared.store.complete(request)).await
    }

    /// Hands the lease to someone outside this process (a client of a two-phase API): it will
    /// not be released on drop, and comes back with [`Engine::resume_lease`].
    #[must_use]
    pub fn detach(mut self) -> (RecordId, LeaseToken) {
        self.finished = true;
        (self.id, self.token)
    }

    /// Gives the key back without a result: the next request with it executes.
    ///
    /// # Errors
    /// The store could not answer; the key stays owned until its lease lapses.
    pub async fn release(mut self) -> Result<TransitionOutcome, StoreError> {
        self.finished = true;
        release(&self.engine, self.id, self.token).await
    }
}

async fn release<S: Store>(
    engine: &Engine<S>,
    id: RecordId,
    token: LeaseToken,
) -> Result<TransitionOutcome, StoreError> {
    let now = engine.shared.clock.now();
    timed("release", engine.shared.store.release(id, token, now)).await
}

impl<S: Store> Drop for Lease<S> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (engine, id, token) = (self.engine.clone(), self.id, self.token);
        // Without a runtime (the process is shutting down) the lease lapses on its own.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = release(&engine, id, token).await {
                    tracing::warn!(%error, record = %id, "releasing an abandoned idempotency key failed; it frees when its lease lapses");
                }
            });
        }
    }
}

/// Runs one store operation, recording its latency and errors.
async fn timed<T>(
    operation: &'static str,
    future: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = future.await;
    metrics::histogram!("idem_store_operation_duration_seconds", "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    if let Err(error) = &result {
        metrics::counter!("idem_store_errors_total", "operation" => operation).increment(1);
        tracing::warn!(%error, operation, "idempotency store operation failed");
    }
    result
}
