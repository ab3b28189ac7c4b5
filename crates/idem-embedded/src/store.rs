//! [`EmbeddedStore`]: the [`Store`] implementation over redb, and its on-disk layout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use idem_core::store::transition;
use idem_core::{
    BeginOutcome, BeginRequest, CompleteRequest, LeaseToken, Record, RecordId, RecordState, Store,
    StoreError, Timestamp, TransitionOutcome,
};
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::writer::{Operation, Writer};

/// The database file inside the store's directory.
pub const DATABASE_FILE: &str = "idem.redb";

/// Records by id: the 32-byte SHA-256 [`RecordId`] to an encoded [`Record`].
pub(crate) const RECORDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("records_v1");

/// The expiry index: (expires-at millis, record id) to nothing, so the sweeper finds expired
/// records in order without scanning the whole table.
pub(crate) const EXPIRY: TableDefinition<(u64, &[u8; 32]), ()> = TableDefinition::new("expiry_v1");

/// See [`EmbeddedStore::commit_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Write transactions committed (each one fsync).
    pub commits: u64,
    /// State transitions those commits carried.
    pub operations: u64,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be created.
    #[error("cannot create the store directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// redb could not open or create the database (locked by another process, corrupt,
    /// unwritable...).
    #[error("cannot open the embedded store {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: Box<redb::Error>,
    },
}

/// A durable [`Store`] in one redb file. Cloning it shares the same database and writer.
///
/// One process at a time: redb locks the file, so a second process opening the same
/// directory gets [`OpenError::Database`]. Several instances sharing records need the
/// PostgreSQL or Redis store.
#[derive(Clone)]
pub struct EmbeddedStore {
    database: Arc<Database>,
    writer: Writer,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the store in `directory`, creating the directory and the database file
    /// ([`DATABASE_FILE`]) if needed, and starts its writer thread.
    ///
    /// # Errors
    /// The directory cannot be created, or the database cannot be opened.
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, OpenError> {
        let directory = directory.as_ref();
        std::fs::create_dir_all(directory).map_err(|source| OpenError::Directory {
            path: directory.to_owned(),
            source,
        })?;
        let path = directory.join(DATABASE_FILE);
        let database_error = |source: redb::Error| OpenError::Database {
            path: path.clone(),
            source: Box::new(source),
        };
        let database = Database::create(&path).map_err(|e| database_error(e.into()))?;
        // Create both tables up front, so that readers never find them missing.
        let setup = database
            .begin_write()
            .map_err(|e| database_error(e.into()))?;
        setup
            .open_table(RECORDS)
            .map_err(|e| database_error(e.into()))?;
        setup
            .open_table(EXPIRY)
            .map_err(|e| database_error(e.into()))?;
        setup.commit().map_err(|e| database_error(e.into()))?;
        let database = Arc::new(database);
        let writer = Writer::start(Arc::clone(&database));
        Ok(Self { database, writer })
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

    /// Reads one record in a read transaction, which never waits for the writer.
    ///
    /// The read runs on the calling task rather than on the blocking pool: a record is one
    /// B-tree lookup, almost always in redb's page cache, and a hop to the blocking pool
    /// costs more than the read itself (measured in `docs/benchmarks.md`).
    fn read(&self, id: RecordId) -> Result<Option<Record>, StoreError> {
        read_record(&self.database, &id)
    }
}

fn read_record(database: &Database, id: &RecordId) -> Result<Option<Record>, StoreError> {
    let transaction = database.begin_read().map_err(|e| unavailable(e.into()))?;
    let table = transaction
        .open_table(RECORDS)
        .map_err(|e| unavailable(e.into()))?;
    let Some(bytes) = table
        .get(id.as_bytes())
        .map_err(|e| unavailable(e.into()))?
    else {
        return Ok(None);
    };
    Record::decode(bytes.value())
        .map(Some)
        .map_err(|e| StoreError::Corrupted(Box::new(e)))
}

pub(crate) fn unavailable(error: redb::Error) -> StoreError {
    StoreError::unavailable(error)
}

impl Store for EmbeddedStore {
    async fn begin(&self, request: BeginRequest) -> Result<BeginOutcome, StoreError> {
        // Fast path: a completed record answers a replay (or a mismatch) from a read
        // transaction, with no write and no fsync. Completion is final until expiry, so the
        // snapshot's answer is still the answer; anything else goes through the writer, which
        // decides again atomically.
        let current = self.read(request.id)?;
        if let Some(
            record @ Record {
                state: RecordState::Completed { .. },
                ..
            },
        ) = &current
            && !record.is_expired(request.now)
        {
            return Ok(transition::begin(Some(record), &request).0);
        }
        self.writer
            .submit(|reply| Operation::Begin(request, reply))
            .await
    }

    async fn complete(&self, request: CompleteRequest) -> Result<TransitionOutcome, StoreError> {
        self.writer
            .submit(|reply| Operation::Complete(request, reply))
            .await
    }

    async fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
        now: Timestamp,
    ) -> Result<TransitionOutcome, StoreError> {
        self.writer
            .submit(|reply| Operation::Release {
                id,
                token,
                now,
                reply,
            })
            .await
    }

    async fn get(&self, id: RecordId, now: Timestamp) -> Result<Option<RecordState>, StoreError> {
        Ok(transition::visible(self.read(id)?.as_ref(), now))
    }

    async fn sweep_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.writer
            .submit(|reply| Operation::Sweep { now, limit, reply })
            .await
    }
}
