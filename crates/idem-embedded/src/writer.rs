//! The single writer thread and its group commit.
//!
//! Every state transition is queued here. The thread takes the first waiting operation, then
//! every other one already queued (up to [`MAX_BATCH`]), applies them one after another in
//! one write transaction, commits once (one fsync), and only then answers each caller. Each
//! operation still sees the writes of those before it, so a batch is equivalent to running
//! its operations one by one; callers are answered only once their write is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use idem_core::store::transition::{self, Write};
use idem_core::{
    BeginOutcome, BeginRequest, CompleteRequest, LeaseToken, Record, RecordId, StoreError,
    Timestamp, TransitionOutcome,
};
use redb::{Database, ReadableTable, Table};
use tokio::sync::{mpsc, oneshot};

use crate::store::{EXPIRY, RECORDS};

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
    pub(crate) fn start(database: Arc<Database>) -> Self {
        let (queue, operations) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("idem-embedded-writer".into())
            .spawn(move || run(&database, operations, &thread_counters))
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

fn run(database: &Database, mut operations: mpsc::Receiver<Operation>, counters: &Counters) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = operations.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match operations.try_recv() {
                Ok(operation) => batch.push(operation),
                Err(_) => break,
            }
        }
        match apply_and_commit(database, &batch) {
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

fn apply_and_commit(database: &Database, batch: &[Operation]) -> Result<Vec<Answer>, redb::Error> {
    let transaction = database.begin_write()?;
    let mut answers = Vec::with_capacity(batch.len());
    {
        let mut records = transaction.open_table(RECORDS)?;
        let mut expiry = transaction.open_table(EXPIRY)?;
        let mut tables = Tables {
            records: &mut records,
            expiry: &mut expiry,
        };
        for operation in batch {
            answers.push(tables.apply(operation)?);
        }
    }
    transaction.commit()?;
    Ok(answers)
}

struct Tables<'a, 'txn> {
    records: &'a mut Table<'txn, &'static [u8; 32], &'static [u8]>,
    expiry: &'a mut Table<'txn, (u64, &'static [u8; 32]), ()>,
}

impl Tables<'_, '_> {
    /// Applies one operation. A record that cannot be decoded fails that operation alone; a
    /// redb error fails the whole batch.
    fn apply(&mut self, operation: &Operation) -> Result<Answer, redb::Error> {
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

    fn transition<T>(
        &mut self,
        id: RecordId,
        decide: impl FnOnce(Option<&Record>) -> (T, Write),
    ) -> Result<Result<T, StoreError>, redb::Error> {
        let current = match self.records.get(id.as_bytes())? {
            None => None,
            Some(bytes) => match Record::decode(bytes.value()) {
                Ok(record) => Some(record),
                Err(error) => return Ok(Err(StoreError::Corrupted(Box::new(error)))),
            },
        };
        let (outcome, write) = decide(current.as_ref());
        match write {
            Write::Nothing => {}
            Write::Put(record) => {
                if let Some(old) = &current {
                    self.expiry
                        .remove((old.expires_at.as_millis(), id.as_bytes()))?;
                }
                self.records
                    .insert(id.as_bytes(), record.encode().as_slice())?;
                self.expiry
                    .insert((record.expires_at.as_millis(), id.as_bytes()), ())?;
            }
            Write::Delete => {
                self.records.remove(id.as_bytes())?;
                if let Some(old) = &current {
                    self.expiry
                        .remove((old.expires_at.as_millis(), id.as_bytes()))?;
                }
            }
        }
        Ok(Ok(outcome))
    }

    fn sweep(&mut self, now: Timestamp, limit: usize) -> Result<usize, redb::Error> {
        let due: Vec<(u64, [u8; 32])> = self
            .expiry
            .range((0, &[0u8; 32])..=(now.as_millis(), &[u8::MAX; 32]))?
            .take(limit)
            .map(|entry| {
                entry.map(|(key, _)| {
                    let (at, id) = key.value();
                    (at, *id)
                })
            })
            .collect::<Result<_, _>>()?;
        for (expires_at, id) in &due {
            self.expiry.remove((*expires_at, id))?;
            self.records.remove(id)?;
        }
        Ok(due.len())
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
