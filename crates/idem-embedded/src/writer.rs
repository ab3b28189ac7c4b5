//! The single writer thread and its group commit.
//!
//! Every state transition is queued here. The thread takes the first waiting request, then
//! every other one already queued (up to [`MAX_BATCH`]), decides them one after another
//! against the stored records plus the writes of the batch so far, writes the net result as
//! one atomic fjall batch whose journal is fsynced (one fsync for the whole batch), and only
//! then answers each caller. A batch is thus equivalent to running its requests one by one,
//! and callers are answered only once their write is durable. The writer is the only writer,
//! so deciding from a read and then writing is race-free.
//!
//! The store's clock is read here, by the thread, as each transition is decided: every
//! decision uses one now, the same for its lease, its expiry and its answer, and transitions
//! decided later never see an earlier now than the ones before them on a monotonic clock.
//!
//! Each request travels with the channel its answer goes back on, typed by the request
//! ([`Request::Output`]): an answer of the wrong kind cannot be sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fjall::PersistMode;
use idem_core::store::transition::{self, Write};
use idem_core::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, LeaseToken, Record, RecordId, StoreError,
    Timestamp, TransitionOutcome,
};
use tokio::sync::{mpsc, oneshot};

use crate::layout::{self, ExpiryKey, Keyspaces, ReadError};

/// Most requests committed together. Larger batches amortise the fsync further but make the
/// first caller in a batch wait for all the others; past a few hundred, the fsync is no
/// longer the cost.
const MAX_BATCH: usize = 512;

/// Requests that may wait in the queue before callers are made to wait to enqueue: bounds
/// memory under overload and pushes back on the callers.
const QUEUE_CAPACITY: usize = 8192;

/// Why a whole batch failed: the database could not be read or written.
type DatabaseError = fjall::Error;

/// A transition the writer decides and commits.
pub(crate) trait Request: Send + 'static {
    /// What the caller is answered.
    type Output: Send + 'static;

    /// Decides the transition at `now` against the batch's view of the records, recording
    /// its writes in the batch. A record that cannot be decoded fails this request alone
    /// (`Ok(Err(_))`); a database error fails the whole batch (`Err(_)`).
    fn decide(
        &self,
        batch: &mut Batch<'_>,
        now: Timestamp,
    ) -> Result<Result<Self::Output, StoreError>, DatabaseError>;
}

impl Request for BeginRequest {
    type Output = BeginOutcome;

    fn decide(
        &self,
        batch: &mut Batch<'_>,
        now: Timestamp,
    ) -> Result<Result<BeginOutcome, StoreError>, DatabaseError> {
        batch.transition(self.id, |current| transition::begin(current, self, now))
    }
}

/// [`Store::renew`](idem_core::Store::renew).
pub(crate) struct Renew {
    pub(crate) id: RecordId,
    pub(crate) token: LeaseToken,
    pub(crate) lease: Duration,
}

impl Request for Renew {
    type Output = TransitionOutcome;

    fn decide(
        &self,
        batch: &mut Batch<'_>,
        now: Timestamp,
    ) -> Result<Result<TransitionOutcome, StoreError>, DatabaseError> {
        batch.transition(self.id, |current| {
            transition::renew(current, self.token, self.lease, now)
        })
    }
}

impl Request for CompleteRequest {
    type Output = TransitionOutcome;

    fn decide(
        &self,
        batch: &mut Batch<'_>,
        now: Timestamp,
    ) -> Result<Result<TransitionOutcome, StoreError>, DatabaseError> {
        batch.transition(self.id, |current| transition::complete(current, self, now))
    }
}

/// [`Store::release`](idem_core::Store::release).
pub(crate) struct Release {
    pub(crate) id: RecordId,
    pub(crate) token: LeaseToken,
}

impl Request for Release {
    type Output = TransitionOutcome;

    fn decide(
        &self,
        batch: &mut Batch<'_>,
        now: Timestamp,
    ) -> Result<Result<TransitionOutcome, StoreError>, DatabaseError> {
        batch.transition(self.id, |current| {
            transition::release(current, self.token, now)
        })
    }
}

/// [`Store::sweep_expired`](idem_core::Store::sweep_expired).
pub(crate) struct Sweep {
    pub(crate) limit: usize,
}

impl Request for Sweep {
    type Output = usize;

    fn decide(
        &self,
        batch: &mut Batch<'_>,
        now: Timestamp,
    ) -> Result<Result<usize, StoreError>, DatabaseError> {
        batch.sweep(now, self.limit).map(Ok)
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A request and the channel its answer goes back on.
pub(crate) struct Queued<R: Request> {
    request: R,
    reply: Reply<R::Output>,
}

/// A decided request: its result, held back until the batch is durable, and the channel it
/// then goes back on.
struct Decision<T> {
    reply: Reply<T>,
    result: Result<T, StoreError>,
}

impl<R: Request> Queued<R> {
    /// Decides the request, unless an earlier one in the batch already failed it. The clock
    /// is read now, as the transition is decided.
    fn decide(self, batch: &mut Batch<'_>, clock: &dyn Clock) -> Decision<R::Output> {
        let result = if batch.doomed_by.is_some() {
            Err(StoreError::unavailable(
                "the embedded store's commit failed",
            ))
        } else {
            match self.request.decide(batch, clock.now()) {
                Ok(result) => result,
                Err(database_error) => {
                    let result = Err(StoreError::unavailable(database_error.to_string()));
                    batch.doomed_by = Some(database_error);
                    result
                }
            }
        };
        Decision {
            reply: self.reply,
            result,
        }
    }
}

impl<T> Decision<T> {
    /// Answers the caller: with the decided result once the batch is durable, with the
    /// batch's error otherwise. A caller that stopped waiting (its request was cancelled) is
    /// no error: its write is durable all the same, and an orphaned lease is released or
    /// lapses.
    fn send(self, failure: Option<&str>) {
        let result = match failure {
            None => self.result,
            Some(message) => Err(StoreError::unavailable(message.to_owned())),
        };
        drop(self.reply.send(result));
    }
}

/// A queued request of any kind.
pub(crate) enum AnyQueued {
    Begin(Queued<BeginRequest>),
    Renew(Queued<Renew>),
    Complete(Queued<CompleteRequest>),
    Release(Queued<Release>),
    Sweep(Queued<Sweep>),
}

/// A decision of any kind of request: each variant's result has its request's output type.
enum AnyDecision {
    Begin(Decision<BeginOutcome>),
    Transition(Decision<TransitionOutcome>),
    Swept(Decision<usize>),
}

impl AnyQueued {
    fn decide(self, batch: &mut Batch<'_>, clock: &dyn Clock) -> AnyDecision {
        match self {
            Self::Begin(queued) => AnyDecision::Begin(queued.decide(batch, clock)),
            Self::Renew(queued) => AnyDecision::Transition(queued.decide(batch, clock)),
            Self::Complete(queued) => AnyDecision::Transition(queued.decide(batch, clock)),
            Self::Release(queued) => AnyDecision::Transition(queued.decide(batch, clock)),
            Self::Sweep(queued) => AnyDecision::Swept(queued.decide(batch, clock)),
        }
    }
}

impl AnyDecision {
    fn send(self, failure: Option<&str>) {
        match self {
            Self::Begin(decision) => decision.send(failure),
            Self::Transition(decision) => decision.send(failure),
            Self::Swept(decision) => decision.send(failure),
        }
    }
}

macro_rules! queued_as {
    ($request:ty, $variant:ident) => {
        impl From<Queued<$request>> for AnyQueued {
            fn from(queued: Queued<$request>) -> Self {
                Self::$variant(queued)
            }
        }
    };
}

queued_as!(BeginRequest, Begin);
queued_as!(Renew, Renew);
queued_as!(CompleteRequest, Complete);
queued_as!(Release, Release);
queued_as!(Sweep, Sweep);

/// The queue in front of the writer thread. Cloning shares the thread; it stops once every
/// clone is dropped.
#[derive(Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<AnyQueued>,
    counters: Arc<CommitCounters>,
}

/// What the writer has done since the store was opened.
#[derive(Debug, Default)]
pub(crate) struct CommitCounters {
    pub(crate) commits: AtomicU64,
    pub(crate) operations: AtomicU64,
}

impl Writer {
    /// Starts the writer thread over `keyspaces`, reading `clock`.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub(crate) fn start(keyspaces: Keyspaces, clock: Arc<dyn Clock>) -> std::io::Result<Self> {
        let (queue, operations) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(CommitCounters::default());
        let thread_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("idem-embedded-writer".into())
            .spawn(move || write_batches(&keyspaces, &*clock, operations, &thread_counters))?;
        Ok(Self { queue, counters })
    }

    pub(crate) fn counters(&self) -> &CommitCounters {
        &self.counters
    }

    /// Queues `request` and waits until its transition is durable.
    pub(crate) async fn submit<R>(&self, request: R) -> Result<R::Output, StoreError>
    where
        R: Request,
        AnyQueued: From<Queued<R>>,
    {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::unavailable("the embedded store's writer thread has stopped");
        self.queue
            .send(Queued { request, reply }.into())
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The writer thread: takes a batch of waiting requests, decides them, commits them with one
/// fsync and answers their callers; until every sender is dropped.
fn write_batches(
    keyspaces: &Keyspaces,
    clock: &dyn Clock,
    mut operations: mpsc::Receiver<AnyQueued>,
    counters: &CommitCounters,
) {
    let mut queued = Vec::with_capacity(MAX_BATCH);
    let mut decided = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = operations.blocking_recv() {
        queued.push(first);
        while queued.len() < MAX_BATCH {
            match operations.try_recv() {
                Ok(operation) => queued.push(operation),
                Err(_) => break,
            }
        }
        let mut batch = Batch::new(keyspaces);
        decided.extend(
            queued
                .drain(..)
                .map(|operation| operation.decide(&mut batch, clock)),
        );
        let count = decided.len() as u64;
        match batch.commit() {
            Ok(()) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters.operations.fetch_add(count, Ordering::Relaxed);
                for decision in decided.drain(..) {
                    decision.send(None);
                }
            }
            Err(error) => {
                tracing::error!(%error, operations = count, "embedded store commit failed");
                let message = error.to_string();
                for decision in decided.drain(..) {
                    decision.send(Some(&message));
                }
            }
        }
    }
}

/// The writes of a batch so far, by key: later requests read them before the store, and the
/// batch writes each key once (an atomic fjall batch gives all its writes one sequence
/// number, so two writes to one key in a batch would be ambiguous).
pub(crate) struct Batch<'a> {
    keyspaces: &'a Keyspaces,
    /// Record id to its new record, or `None` for deleted.
    records: HashMap<RecordId, Option<Record>>,
    /// Expiry index key to present (`true`) or removed (`false`).
    expiry: HashMap<ExpiryKey, bool>,
    /// The database error that dooms the batch: nothing is written, every caller is failed.
    doomed_by: Option<DatabaseError>,
}

impl<'a> Batch<'a> {
    fn new(keyspaces: &'a Keyspaces) -> Self {
        Self {
            keyspaces,
            records: HashMap::new(),
            expiry: HashMap::new(),
            doomed_by: None,
        }
    }

    /// The record as this batch sees it: its own writes first, then the store.
    fn current(&self, id: &RecordId) -> Result<Result<Option<Record>, StoreError>, DatabaseError> {
        if let Some(pending) = self.records.get(id) {
            return Ok(Ok(pending.clone()));
        }
        match self.keyspaces.read_record(id) {
            Ok(record) => Ok(Ok(record)),
            Err(ReadError::Database(database_error)) => Err(database_error),
            Err(corrupted @ ReadError::Corrupted(_)) => Ok(Err(corrupted.into())),
        }
    }

    fn transition<T>(
        &mut self,
        id: RecordId,
        decide: impl FnOnce(Option<&Record>) -> (T, Write),
    ) -> Result<Result<T, StoreError>, DatabaseError> {
        let current = match self.current(&id)? {
            Ok(current) => current,
            Err(corrupted) => return Ok(Err(corrupted)),
        };
        let (outcome, write) = decide(current.as_ref());
        match write {
            Write::Nothing => {}
            Write::Put(record) => {
                // Whatever moved the expiry (an acquisition; a renewal, or a begin run again
                // on its own lapsed lease, carrying it along with the lease; a completion), the
                // index entry moves with it.
                if let Some(old) = &current {
                    self.expiry
                        .insert(layout::expiry_key(old.expires_at, &id), false);
                }
                self.expiry
                    .insert(layout::expiry_key(record.expires_at, &id), true);
                self.records.insert(id, Some(record));
            }
            Write::Delete => {
                if let Some(old) = &current {
                    self.expiry
                        .insert(layout::expiry_key(old.expires_at, &id), false);
                }
                self.records.insert(id, None);
            }
        }
        Ok(Ok(outcome))
    }

    /// Deletes up to `limit` records whose index entry says they expired at or before `now`.
    fn sweep(&mut self, now: Timestamp, limit: usize) -> Result<usize, DatabaseError> {
        let mut swept = 0;
        for index in self.keyspaces.expired_up_to(now) {
            if swept >= limit {
                break;
            }
            let index = index?;
            if self.expiry.get(&index) == Some(&false) {
                continue; // already removed by this batch
            }
            let id = layout::expiry_key_record(&index);
            self.expiry.insert(index, false);
            // Only a record that is still the one indexed, and still expired, is deleted.
            if let Ok(Some(record)) = self.current(&id)?
                && layout::expiry_key(record.expires_at, &id) == index
                && record.is_expired(now)
            {
                self.records.insert(id, None);
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// Writes the batch atomically and fsyncs the journal before returning; writes nothing
    /// if the batch was doomed.
    fn commit(self) -> Result<(), DatabaseError> {
        if let Some(database_error) = self.doomed_by {
            return Err(database_error);
        }
        let Keyspaces {
            database,
            records,
            expiry,
        } = self.keyspaces;
        let mut batch = database.batch().durability(Some(PersistMode::SyncAll));
        for (id, record) in self.records {
            let key = layout::record_key(&id).to_vec();
            match record {
                Some(record) => batch.insert(records, key, record.encode()),
                None => batch.remove(records, key),
            }
        }
        for (index, present) in self.expiry {
            if present {
                batch.insert(expiry, index.to_vec(), Vec::new());
            } else {
                batch.remove(expiry, index.to_vec());
            }
        }
        batch.commit()
    }
}
