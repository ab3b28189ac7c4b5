//! [`EmbeddedStore`]: the [`Store`] implementation over fjall.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use idem_core::store::transition;
use idem_core::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, LeaseToken, Record, RecordId,
    RecordSnapshot, RecordState, Store, StoreError, SystemClock, TransitionOutcome,
};

use crate::layout::{DATABASE_DIR, Keyspaces};
use crate::writer::{Release, Renew, Sweep, Writer};

/// See [`EmbeddedStore::commit_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Durable commits (each one journal fsync).
    pub commits: u64,
    /// State transitions those commits carried.
    pub operations: u64,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The directory could not be created.
    #[error("cannot create the store directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// fjall could not open or create the database (locked by another process, corrupt,
    /// unwritable...).
    #[error("cannot open the embedded store {path}: {source}")]
    Database {
        /// The database directory.
        path: PathBuf,
        /// Why.
        source: Box<fjall::Error>,
    },
    /// The writer thread, through which every transition goes, could not be started.
    #[error("cannot start the embedded store's writer thread: {source}")]
    Writer {
        /// Why.
        source: std::io::Error,
    },
}

/// A durable [`Store`] in one fjall database. Cloning it shares the same database and writer.
///
/// One process at a time: fjall locks its directory, so a second opening of the same
/// directory gets [`OpenError::Database`]. Several instances sharing records need the
/// PostgreSQL or Redis store.
///
/// Leases and expiry follow the process's clock (the only one there is), or the clock given
/// to [`EmbeddedStoreBuilder::clock`]. The writer thread reads it as it decides each
/// transition.
#[derive(Clone)]
pub struct EmbeddedStore {
    keyspaces: Keyspaces,
    clock: Arc<dyn Clock>,
    writer: Writer,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// Opens an [`EmbeddedStore`] with non-default settings; see [`EmbeddedStore::builder`].
#[derive(Debug)]
pub struct EmbeddedStoreBuilder {
    directory: PathBuf,
    clock: Arc<dyn Clock>,
}

impl EmbeddedStoreBuilder {
    /// The clock leases and expiry follow (default [`SystemClock`]; a
    /// [`ManualClock`](idem_core::ManualClock) in tests of leases and expiry).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Opens the store, creating the directory and the database ([`DATABASE_DIR`]) if
    /// needed, recovering whatever the journal holds after a crash, and starts its writer
    /// thread.
    ///
    /// # Errors
    /// The directory cannot be created, the database cannot be opened, or the writer thread
    /// cannot be started.
    pub fn open(self) -> Result<EmbeddedStore, OpenError> {
        let Self { directory, clock } = self;
        std::fs::create_dir_all(&directory).map_err(|source| OpenError::Directory {
            path: directory.clone(),
            source,
        })?;
        let path = directory.join(DATABASE_DIR);
        let keyspaces = Keyspaces::open(&path).map_err(|source| OpenError::Database {
            path,
            source: Box::new(source),
        })?;
        let writer = Writer::start(keyspaces.clone(), Arc::clone(&clock))
            .map_err(|source| OpenError::Writer { source })?;
        Ok(EmbeddedStore {
            keyspaces,
            clock,
            writer,
        })
    }
}

impl EmbeddedStore {
    /// Opens the store in `directory` on the system clock; see
    /// [`EmbeddedStoreBuilder::open`].
    ///
    /// # Errors
    /// The directory cannot be created, the database cannot be opened, or the writer thread
    /// cannot be started.
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::builder(directory).open()
    }

    /// Starts opening the store in `directory` with non-default settings.
    #[must_use]
    pub fn builder(directory: impl AsRef<Path>) -> EmbeddedStoreBuilder {
        EmbeddedStoreBuilder {
            directory: directory.as_ref().to_owned(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Counts of durable commits and of the operations they carried since the store opened:
    /// `operations / commits` is the group commit's batching factor.
    #[must_use]
    pub fn commit_stats(&self) -> CommitStats {
        let counters = self.writer.counters();
        CommitStats {
            commits: counters.commits.load(Ordering::Relaxed),
            operations: counters.operations.load(Ordering::Relaxed),
        }
    }

    /// Reads one record from the latest committed state, without waiting for the writer.
    ///
    /// The read runs on the calling task rather than on the blocking pool: a record is one
    /// lookup, almost always in memory (fjall's memtable or block cache), and a hop to the
    /// blocking pool costs more than the read itself (measured in `docs/benchmarks.md`).
    fn read(&self, id: RecordId) -> Result<Option<Record>, StoreError> {
        Ok(self.keyspaces.read_record(&id)?)
    }
}

impl Store for EmbeddedStore {
    async fn begin(&self, request: BeginRequest) -> Result<BeginOutcome, StoreError> {
        // Fast path: a completed record answers a replay (or a mismatch) from the latest
        // committed state, with no write and no fsync. Completion is final until expiry, so
        // that answer is still the answer; anything else goes through the writer, which
        // decides again atomically.
        if let Some(
            record @ Record {
                state: RecordState::Completed { .. },
                ..
            },
        ) = &self.read(request.id)?
        {
            let now = self.clock.now();
            if !record.is_expired(now) {
                return Ok(transition::begin(Some(record), &request, now).0);
            }
        }
        self.writer.submit(request).await
    }

    async fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<TransitionOutcome, StoreError> {
        self.writer.submit(Renew { id, token, lease }).await
    }

    async fn complete(&self, request: CompleteRequest) -> Result<TransitionOutcome, StoreError> {
        self.writer.submit(request).await
    }

    async fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> Result<TransitionOutcome, StoreError> {
        self.writer.submit(Release { id, token }).await
    }

    async fn get(&self, id: RecordId) -> Result<Option<RecordSnapshot>, StoreError> {
        let record = self.read(id)?;
        let now = self.clock.now();
        Ok(
            transition::live(record.as_ref(), now).map(|record| RecordSnapshot {
                record: record.clone(),
                now,
            }),
        )
    }

    async fn sweep_expired(&self, limit: usize) -> Result<usize, StoreError> {
        self.writer.submit(Sweep { limit }).await
    }
}
