//! The on-disk layout: the database directory, its two keyspaces, how records and the expiry
//! index are keyed and encoded. The store reads through it and the writer writes through it;
//! neither knows the other's internals.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use idem_core::{Record, RecordDecodeError, RecordId, StoreError, Timestamp};

/// The database's directory inside the store's directory.
pub const DATABASE_DIR: &str = "records";

/// Records by id: the 32-byte SHA-256 [`RecordId`] to an encoded [`Record`]
/// ([`Record::encode`], versioned).
const RECORDS: &str = "records_v1";

/// The expiry index: the record's expiry (8 bytes, big-endian milliseconds, so keys sort by
/// time) followed by its 32-byte id, to nothing. The sweeper finds expired records in order
/// without scanning the records.
const EXPIRY: &str = "expiry_v1";

/// The length of an expiry index key.
const EXPIRY_KEY_LEN: usize = 8 + 32;

/// An expiry index key: a record's expiry, then its id.
pub(crate) type ExpiryKey = [u8; EXPIRY_KEY_LEN];

/// The database and its two keyspaces.
#[derive(Clone)]
pub(crate) struct Keyspaces {
    pub(crate) database: Database,
    pub(crate) records: Keyspace,
    pub(crate) expiry: Keyspace,
}

impl Keyspaces {
    /// Opens (or creates) the database at `path` and its keyspaces, recovering whatever the
    /// journal holds after a crash.
    pub(crate) fn open(path: &Path) -> Result<Self, fjall::Error> {
        let database = Database::builder(path).open()?;
        let records = database.keyspace(RECORDS, KeyspaceCreateOptions::default)?;
        let expiry = database.keyspace(EXPIRY, KeyspaceCreateOptions::default)?;
        Ok(Self {
            database,
            records,
            expiry,
        })
    }

    /// Reads one record from the latest committed state.
    pub(crate) fn read_record(&self, id: &RecordId) -> Result<Option<Record>, ReadError> {
        let Some(bytes) = self
            .records
            .get(record_key(id))
            .map_err(ReadError::Database)?
        else {
            return Ok(None);
        };
        decode_record(&bytes).map(Some)
    }

    /// The expiry index keys at or before `now`, oldest first, as the index holds them.
    pub(crate) fn expired_up_to(
        &self,
        now: Timestamp,
    ) -> impl Iterator<Item = Result<ExpiryKey, fjall::Error>> + '_ {
        let mut upper = [u8::MAX; EXPIRY_KEY_LEN];
        upper[..8].copy_from_slice(&now.as_millis().to_be_bytes());
        self.expiry
            .range(..=upper)
            .filter_map(|entry| match entry.key() {
                // A key of another length is nobody's: skip it rather than fail the sweep.
                Ok(key) => ExpiryKey::try_from(&*key).ok().map(Ok),
                Err(error) => Some(Err(error)),
            })
    }
}

/// Why a record could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The database could not be read.
    Database(fjall::Error),
    /// The record's bytes are not a record this build can decode.
    Corrupted(RecordDecodeError),
}

impl From<ReadError> for StoreError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Database(error) => StoreError::unavailable(error),
            ReadError::Corrupted(error) => StoreError::Corrupted(Box::new(error)),
        }
    }
}

/// A record from the bytes the records keyspace holds for it: bytes on disk may be anything
/// (a torn sector, a newer build's format), so this refuses what it cannot read.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, ReadError> {
    Record::decode(bytes).map_err(ReadError::Corrupted)
}

/// The key of a record in the records keyspace.
pub(crate) fn record_key(id: &RecordId) -> &[u8; 32] {
    id.as_bytes()
}

/// The expiry index key of a record.
pub(crate) fn expiry_key(expires_at: Timestamp, id: &RecordId) -> ExpiryKey {
    let mut key = [0u8; EXPIRY_KEY_LEN];
    key[..8].copy_from_slice(&expires_at.as_millis().to_be_bytes());
    key[8..].copy_from_slice(id.as_bytes());
    key
}

/// The record an expiry index key points to.
pub(crate) fn expiry_key_record(key: &ExpiryKey) -> RecordId {
    let mut id = [0u8; 32];
    id.copy_from_slice(&key[8..]);
    RecordId::from_bytes(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_keys_sort_by_time_and_point_back_to_their_record() {
        let a = RecordId::from_bytes([0xff; 32]);
        let b = RecordId::from_bytes([0; 32]);
        let earlier = expiry_key(Timestamp::from_millis(1_000), &a);
        let later = expiry_key(Timestamp::from_millis(1_001), &b);
        assert!(earlier < later);
        assert_eq!(expiry_key_record(&earlier), a);
        assert_eq!(expiry_key_record(&later), b);
    }
}
