//! The single writer thread and its group commit.
//!
//! Every state transition is queued here. The thread takes the first waiting operation, then
//! every other one already queued (up to [`MAX_BATCH`]), decides them one after another
//! against the stored records plus the writes of the batch so far, writes the net result as
//! one atomic fjall batch whose journal is fsynced (one fsync for the whole batch), and only
//! then answers each caller. A batch is thus equivalent to running its operations one by one,
//! and callers are answered only once their write is durable. The writer is the only writer,
//! so deciding from a read and then writing is race-free.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::collections::HashMap;

use fjall::PersistMode;
use idem_core::store::transition::{self, Write};
use idem_core::{
    BeginOutcome, BeginRequest, CompleteRequest, LeaseToken, Record, RecordId, StoreError,
    Timestamp, TransitionOutcome,
};
use tokio::sync::{mpsc, oneshot};

use crate::store::{Keyspaces, expiry_key, read_record};

/// Most operations committed together. Larger batches amortise the fsync further but make
/// the first caller in a batch wait for all the others; past a few hundred, the fsync is no
/// longer the cost.
const MAX_BATCH: usize = 512;

/// Operations that may wait in the queue before callers are made to wait to enqueue: bounds
/// memory under overload and pushes back on the callers.
const QUEUE_CAPACITY: usize = 8192;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued state transition and where to send its answer.
pub(crate) enum Operation {
    Begin(BeginRequest, Reply<BeginOutcome>),
    Complete(CompleteRequest, Reply<TransitionOutcome>),
    Release {
        id: RecordId,
        token: LeaseToken,
        now: Timestamp,
        reply: Reply<TransitionOutcome>,
    },
    Sweep {
        now: Timestamp,
        limit: usize,
        reply: Reply<usize>,
    },
}

/// The answer an operation produced inside the transaction, held until the commit.
enum Answer {
    Begin(Result<BeginOutcome, StoreError>),
    Transition(Result<TransitionOutcome, StoreError>),
    Swept(usize),
}

/// The queue in front of the writer thread. Cloning shares the thread; it stops once every
/// clone is dropped.
#[derive(Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Operation>,
    counters: Arc<Counters>,
}

/// What the writer has done since the store was opened.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) operations: AtomicU64,
}

impl Writer {
    pub(crate) fn start(keyspaces: Arc<Keyspaces>) -> Self {
        let (queue, operations) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("idem-embedded-writer".into())
            .spawn(move || run(&keyspaces, operations, &thread_counters))
            .map_or_else(
                |error| tracing::error!(%error, "cannot start the embedded store's writer thread"),
                drop,
            );
        Self { queue, counters }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Queues an operation and waits until it is durable.
    pub(crate) async fn submit<T>(
        &self,
        operation: impl FnOnce(Reply<T>) -> Operation,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(operation(reply)).await.map_err(|_| {
            StoreError::unavailable("the embedded store's writer thread has stopped")
        })?;
        answer.await.map_err(|_| {
            StoreError::unavailable("the embedded store's writer thread has stopped")
        })?
    }
}

fn run(keyspaces: &Keyspaces, mut operations: mpsc::Receiver<Operation>, counters: &Counters) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = operations.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match operations.try_recv() {
                Ok(operation) => batch.push(operation),
                Err(_) => break,
            }
        }
        match apply_and_commit(keyspaces, &batch) {
            Ok(answers) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters
                    .operations
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (operation, answer) in batch.drain(..).zip(answers) {
                    answer_with(operation, answer);
                }
            }
            Err(error) => {
                tracing::error!(%error, operations = batch.len(), "embedded store commit failed");
                let message = error.to_string();
                for operation in batch.drain(..) {
                    fail(operation, StoreError::unavailable(message.clone()));
                }
            }
        }
    }
}

/// Why a whole batch failed: the database could not be read or written.
type Fault = fjall::Error;

fn apply_and_commit(keyspaces: &Keyspaces, batch: &[Operation]) -> Result<Vec<Answer>, Fault> {
    let mut pending = Pending {
        keyspaces,
        records: HashMap::new(),
        expiry: HashMap::new(),
    };
    let mut answers = Vec::with_capacity(batch.len());
    for operation in batch {
        answers.push(pending.apply(operation)?);
    }
    pending.commit()?;
    Ok(answers)
}

/// The writes of a batch so far, by key: later operations read them before the store, and
/// the batch writes each key once (an atomic fjall batch gives all its writes one sequence
/// number, so two writes to one key in a batch would be ambiguous).
struct Pending<'a> {
    keyspaces: &'a Keyspaces,
    /// Record id to its new encoded record, or `None` for deleted.
    records: HashMap<RecordId, Option<Record>>,
    /// Expiry index key to present (`true`) or removed (`false`).
    expiry: HashMap<[u8; 40], bool>,
}

impl Pending<'_> {
    /// Applies one operation. A record that cannot be decoded fails that operation alone; a
    /// database error fails the whole batch.
    fn apply(&mut self, operation: &Operation) -> Result<Answer, Fault> {
        Ok(match operation {
            Operation::Begin(request, _) => Answer::Begin(
                self.transition(request.id, |current| transition::begin(current, request))?,
            ),
            Operation::Complete(request, _) => Answer::Transition(
                self.transition(request.id, |current| transition::complete(current, request))?,
            ),
            Operation::Release { id, token, now, .. } => Answer::Transition(
                self.transition(*id, |current| transition::release(current, *token, *now))?,
            ),
            Operation::Sweep { now, limit, .. } => Answer::Swept(self.sweep(*now, *limit)?),
        })
    }

    /// The record as this batch sees it: its own writes first, then the store.
    fn current(&self, id: &RecordId) -> Result<Result<Option<Record>, StoreError>, Fault> {
        if let Some(pending) = self.records.get(id) {
            return Ok(Ok(pending.clone()));
        }
        match read_record(&self.keyspaces.records, id) {
            Ok(record) => Ok(Ok(record)),
            Err(StoreError::Unavailable(source)) => Err(fault(source)),
            Err(corrupted) => Ok(Err(corrupted)),
        }
    }

    fn transition<T>(
        &mut self,
        id: RecordId,
        decide: impl FnOnce(Option<&Record>) -> (T, Write),
    ) -> Result<Result<T, StoreError>, Fault> {
        let current = match self.current(&id)? {
            Ok(current) => current,
            Err(corrupted) => return Ok(Err(corrupted)),
        };
        let (outcome, write) = decide(current.as_ref());
        match write {
            Write::Nothing => {}
            Write::Put(record) => {
                if let Some(old) = &current {
                    self.expiry.insert(expiry_key(old.expires_at, &id), false);
                }
                self.expiry.insert(expiry_key(record.expires_at, &id), true);
                self.records.insert(id, Some(record));
            }
            Write::Delete => {
                if let Some(old) = &current {
                    self.expiry.insert(expiry_key(old.expires_at, &id), false);
                }
                self.records.insert(id, None);
            }
        }
        Ok(Ok(outcome))
    }

    /// Deletes up to `limit` records whose index entry says they expired at or before `now`.
    fn sweep(&mut self, now: Timestamp, limit: usize) -> Result<usize, Fault> {
        let mut upper = [u8::MAX; 40];
        upper[..8].copy_from_slice(&now.as_millis().to_be_bytes());
        let mut swept = 0;
        for entry in self.keyspaces.expiry.range(..=upper) {
            if swept >= limit {
                break;
            }
            let key = entry.key()?;
            let Ok(index) = <[u8; 40]>::try_from(&*key) else {
                continue;
            };
            if self.expiry.get(&index) == Some(&false) {
                continue; // already removed by this batch
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&index[8..]);
            let id = RecordId::from_bytes(id);
            self.expiry.insert(index, false);
            // Only a record that is still the one indexed, and still expired, is deleted.
            if let Ok(Some(record)) = self.current(&id)?
                && expiry_key(record.expires_at, &id) == index
                && record.is_expired(now)
            {
                self.records.insert(id, None);
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// Writes the batch atomically and fsyncs the journal before returning.
    fn commit(self) -> Result<(), Fault> {
        let Keyspaces {
            database,
            records,
            expiry,
        } = self.keyspaces;
        let mut batch = database.batch().durability(Some(PersistMode::SyncAll));
        for (id, record) in self.records {
            match record {
                Some(record) => batch.insert(records, id.as_bytes().to_vec(), record.encode()),
                None => batch.remove(records, id.as_bytes().to_vec()),
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

/// A read error surfaced as a store error, back to the database error that fails the batch.
fn fault(source: idem_core::BoxError) -> Fault {
    match source.downcast::<fjall::Error>() {
        Ok(error) => *error,
        Err(other) => fjall::Error::from(std::io::Error::other(other.to_string())),
    }
}

fn answer_with(operation: Operation, answer: Answer) {
    // A caller that stopped waiting (its request was cancelled) is no error: its write is
    // durable all the same, and an orphaned lease is released or lapses.
    match (operation, answer) {
        (Operation::Begin(_, reply), Answer::Begin(outcome)) => drop(reply.send(outcome)),
        (
            Operation::Complete(_, reply) | Operation::Release { reply, .. },
            Answer::Transition(outcome),
        ) => {
            drop(reply.send(outcome));
        }
        (Operation::Sweep { reply, .. }, Answer::Swept(count)) => drop(reply.send(Ok(count))),
        (operation, _) => fail(
            operation,
            StoreError::unavailable("embedded store answer mismatch"),
        ),
    }
}

fn fail(operation: Operation, error: StoreError) {
    match operation {
        Operation::Begin(_, reply) => drop(reply.send(Err(error))),
        Operation::Complete(_, reply) | Operation::Release { reply, .. } => {
            drop(reply.send(Err(error)))
        }
        Operation::Sweep { reply, .. } => drop(reply.send(Err(error))),
    }
}
