//! [`EmbeddedStore`]: the [`Store`] implementation over fjall, and its on-disk layout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use idem_core::store::transition;
use idem_core::{
    BeginOutcome, BeginRequest, CompleteRequest, LeaseToken, Record, RecordId, RecordState, Store,
    StoreError, Timestamp, TransitionOutcome,
};

use crate::writer::{Operation, Writer};

/// The database's directory inside the store's directory.
pub const DATABASE_DIR: &str = "records";

/// Records by id: the 32-byte SHA-256 [`RecordId`] to an encoded [`Record`].
pub(crate) const RECORDS: &str = "records_v1";

/// The expiry index: the record's expiry (8 bytes, big-endian milliseconds, so keys sort by
/// time) followed by its 32-byte id, to nothing. The sweeper finds expired records in order
/// without scanning the records.
pub(crate) const EXPIRY: &str = "expiry_v1";

/// The expiry index key of a record.
pub(crate) fn expiry_key(expires_at: Timestamp, id: &RecordId) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&expires_at.as_millis().to_be_bytes());
    key[8..].copy_from_slice(id.as_bytes());
    key
}

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
}

/// The two keyspaces of the store.
#[derive(Clone)]
pub(crate) struct Keyspaces {
    pub(crate) database: Database,
    pub(crate) records: Keyspace,
    pub(crate) expiry: Keyspace,
}

/// A durable [`Store`] in one fjall database. Cloning it shares the same database and writer.
///
/// One process at a time: fjall locks its directory, so a second opening of the same
/// directory gets [`OpenError::Database`]. Several instances sharing records need the
/// PostgreSQL or Redis store.
#[derive(Clone)]
pub struct EmbeddedStore {
    keyspaces: Arc<Keyspaces>,
    writer: Writer,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the store in `directory`, creating the directory and the database
    /// ([`DATABASE_DIR`]) if needed, recovering whatever the journal holds after a crash, and
    /// starts its writer thread.
    ///
    /// # Errors
    /// The directory cannot be created, or the database cannot be opened.
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, OpenError> {
        let directory = directory.as_ref();
        std::fs::create_dir_all(directory).map_err(|source| OpenError::Directory {
            path: directory.to_owned(),
            source,
        })?;
        let path = directory.join(DATABASE_DIR);
        let database_error = |source: fjall::Error| OpenError::Database {
            path: path.clone(),
            source: Box::new(source),
        };
        let database = Database::builder(&path).open().map_err(database_error)?;
        let records = database
            .keyspace(RECORDS, KeyspaceCreateOptions::default)
            .map_err(database_error)?;
        let expiry = database
            .keyspace(EXPIRY, KeyspaceCreateOptions::default)
            .map_err(database_error)?;
        let keyspaces = Arc::new(Keyspaces {
            database,
            records,
            expiry,
        });
        let writer = Writer::start(Arc::clone(&keyspaces));
        Ok(Self { keyspaces, writer })
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
        read_record(&self.keyspaces.records, &id)
    }
}

pub(crate) fn read_record(records: &Keyspace, id: &RecordId) -> Result<Option<Record>, StoreError> {
    let Some(bytes) = records.get(id.as_bytes()).map_err(unavailable)? else {
        return Ok(None);
    };
    Record::decode(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupted(Box::new(e)))
}

pub(crate) fn unavailable(error: fjall::Error) -> StoreError {
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
