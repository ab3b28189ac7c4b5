//! Finishes announced across instances: a duplicate waiting for an execution that runs in
//! another process asks the store to announce its finish ([`Store::watch`](super::Store::watch)),
//! and is woken by the announcement instead of re-reading the record on a backoff.
//!
//! A network store announces on a channel of its own backend (PostgreSQL `NOTIFY`, Redis
//! `PUBLISH`), and only for records a waiter marked as watched, so executions nobody waits
//! for pay nothing. Each process holds one subscription per store ([`FinishListener`]), shared
//! by all of its waiters through a broadcast channel.
//!
//! Announcements are a shortcut, not a guarantee: one sent while a subscription is
//! reconnecting is lost. The engine therefore still re-reads the record, on a slower backoff,
//! so a lost announcement delays a waiter by at most that backoff and never misleads it.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, broadcast};
use tokio::task::AbortHandle;

use super::StoreError;
use crate::RecordId;

/// The ids of watched records whose execution finished (completed or released), as a store's
/// subscription receives them. A receiver that falls behind by more than the channel holds is
/// told it lagged: it must then read its record again.
pub type FinishFeed = broadcast::Receiver<RecordId>;

/// How many announcements a feed holds for a waiter that has not read them yet. Waiters keep
/// up easily (each only compares ids); one that lags re-reads its record.
const FEED_CAPACITY: usize = 1024;

/// How long after a failed start the subscription is not tried again: waiters meanwhile
/// re-read on their backoff at once, instead of each queueing behind another attempt.
const RETRY_START_AFTER: Duration = Duration::from_secs(5);

/// What [`Store::watch`](super::Store::watch) did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Watch {
    /// The store does not announce finishes: the waiter re-reads the record on a backoff.
    /// (The memory and embedded stores live in one process, where the engine wakes its
    /// waiters itself.)
    Unsupported,
    /// The record is not in flight any more: decide again now.
    NotInFlight,
    /// The record's finish will be announced on this feed, subscribed before the record was
    /// marked, so no finish after the mark is missed while the subscription holds.
    Announced(FinishFeed),
}

/// One process's subscription to a store's announcements, started on the first watch and
/// shared by every waiter after it. Dropping it stops the subscription's task.
#[derive(Debug, Default)]
pub struct FinishListener {
    started: OnceCell<(broadcast::Sender<RecordId>, AbortOnDrop)>,
    /// When the last start failed.
    failed_at: Mutex<Option<Instant>>,
}

impl FinishListener {
    /// A feed of the store's announcements. The first call runs `start` with the sender to
    /// announce on; `start` subscribes and answers once it listens, with the task that
    /// forwards what it receives. A failed start is tried again by a call made
    /// [`RETRY_START_AFTER`] later; calls before that fail at once.
    ///
    /// # Errors
    /// `start`'s error: the subscription could not be made, now or a moment ago.
    pub async fn subscribe<Start, Started>(&self, start: Start) -> Result<FinishFeed, StoreError>
    where
        Start: FnOnce(broadcast::Sender<RecordId>) -> Started,
        Started: Future<Output = Result<AbortHandle, StoreError>>,
    {
        if let Some((sender, _)) = self.started.get() {
            return Ok(sender.subscribe());
        }
        let failed_recently = self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < RETRY_START_AFTER);
        if failed_recently {
            return Err(StoreError::unavailable(
                "the finish announcements' subscription failed a moment ago",
            ));
        }
        let started = self
            .started
            .get_or_try_init(|| async {
                let (sender, _) = broadcast::channel(FEED_CAPACITY);
                let task = start(sender.clone()).await?;
                Ok::<_, StoreError>((sender, AbortOnDrop(task)))
            })
            .await;
        match started {
            Ok((sender, _)) => Ok(sender.subscribe()),
            Err(error) => {
                *self
                    .failed_at
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                Err(error)
            }
        }
    }
}

/// Stops the forwarding task with the listener that owns it.
#[derive(Debug)]
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits for `id`'s finish to be announced on `feed`. Resolves at once on a lagged feed (an
/// announcement may have been dropped: read again); never resolves without a feed, or once
/// the feed closed (the waiter's backoff re-read is left).
pub(crate) async fn announced(feed: &mut Option<FinishFeed>, id: RecordId) {
    if let Some(receiver) = feed {
        loop {
            match receiver.recv().await {
                Ok(finished) if finished == id => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        *feed = None;
    }
    std::future::pending().await
}
