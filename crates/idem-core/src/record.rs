//! What a store keeps per key: the record's state, its lease and fencing token, and the
//! stored response that a replay returns.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Fingerprint;

/// A point in time, in milliseconds since the Unix epoch.
///
/// Each store reads its own clock (see [`store`](crate::store)); a timestamp is only ever
/// compared with others from the same clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(u64);

impl Timestamp {
    /// A timestamp from milliseconds since the Unix epoch.
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + duration`, saturating (a TTL of `Duration::MAX` means "never expires").
    #[must_use]
    pub fn plus(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// How long from `self` until `later`; zero if `later` is not later.
    #[must_use]
    pub fn until(self, later: Self) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }
}

/// The fencing token of one execution: whoever holds the current token owns the record.
///
/// Each acquisition draws a fresh random token, so an owner whose lease was taken over holds
/// a token the record no longer carries, and its completion or release is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseToken(u64);

impl LeaseToken {
    /// A fresh random token.
    #[must_use]
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// A token from the value a store kept.
    #[must_use]
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }

    /// The token's value.
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

/// The result of a completed execution, replayed byte for byte to every retry.
///
/// The core knows no HTTP: `status` and `headers` are whatever the caller stored (the HTTP
/// layer stores the response's status code and its end-to-end headers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The status code.
    pub status: u16,
    /// Header names and values, in order, repeated names kept.
    pub headers: Vec<(String, Bytes)>,
    /// The body, or `None` when it was too large to store: the execution happened, but its
    /// response cannot be replayed.
    pub body: Option<Bytes>,
}

impl StoredResponse {
    /// Approximate bytes this response occupies in a store.
    #[must_use]
    pub fn stored_size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        headers + self.body.as_ref().map_or(0, Bytes::len)
    }
}

/// The state of one record, as a store reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    /// One execution owns the key until `lease_until`.
    InFlight {
        /// The request the owner is executing.
        fingerprint: Fingerprint,
        /// The owner's fencing token.
        token: LeaseToken,
        /// When the lease lapses and a retry may take the key over.
        lease_until: Timestamp,
    },
    /// The execution finished; its response is replayed until `expires_at`.
    Completed {
        /// The request that was executed.
        fingerprint: Fingerprint,
        /// What a replay returns.
        response: StoredResponse,
    },
}

/// A whole record: its state and when it is forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// In flight or completed.
    pub state: RecordState,
    /// After this instant the record behaves as absent and may be swept.
    pub expires_at: Timestamp,
}

/// Why stored record bytes could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("stored idempotency record is unreadable (format version {version}): {source}")]
pub struct RecordDecodeError {
    version: u8,
    #[source]
    source: postcard::Error,
}

/// The first byte of an encoded header list, so its format can change too.
const HEADERS_FORMAT_VERSION: u8 = 1;

/// A header list as bytes, for stores that keep headers in their own column or field: a
/// format byte, then postcard (length-prefixed names and values, so values may hold any
/// bytes).
#[must_use]
pub fn encode_headers(headers: &[(String, Bytes)]) -> Vec<u8> {
    let mut encoded = vec![HEADERS_FORMAT_VERSION];
    // Serialising plain data with postcard into a Vec cannot fail.
    if let Ok(bytes) = postcard::to_stdvec(headers) {
        encoded.extend_from_slice(&bytes);
    }
    encoded
}

/// Reads back what [`encode_headers`] wrote.
///
/// # Errors
/// The bytes are not a header list of a format version this build knows.
pub fn decode_headers(bytes: &[u8]) -> Result<Vec<(String, Bytes)>, RecordDecodeError> {
    match bytes.split_first() {
        Some((&HEADERS_FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|source| RecordDecodeError {
                version: HEADERS_FORMAT_VERSION,
                source,
            })
        }
        Some((&version, _)) => Err(RecordDecodeError {
            version,
            source: postcard::Error::DeserializeBadEncoding,
        }),
        None => Err(RecordDecodeError {
            version: 0,
            source: postcard::Error::DeserializeUnexpectedEnd,
        }),
    }
}

/// The first byte of every encoded record, so the format can change without misreading old
/// records.
const RECORD_FORMAT_VERSION: u8 = 1;

impl Record {
    /// When the lease of an in-flight record lapses; `None` for a completed one.
    #[must_use]
    pub fn lease_until(&self) -> Option<Timestamp> {
        match self.state {
            RecordState::InFlight { lease_until, .. } => Some(lease_until),
            RecordState::Completed { .. } => None,
        }
    }

    /// Whether the record is past its expiry at `now`.
    #[must_use]
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }

    /// A compact, versioned binary encoding for byte-oriented stores.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![RECORD_FORMAT_VERSION];
        // Serialising plain data with postcard into a Vec cannot fail.
        if let Ok(encoded) = postcard::to_stdvec(self) {
            bytes.extend_from_slice(&encoded);
        }
        bytes
    }

    /// Reads back what [`encode`](Self::encode) wrote.
    ///
    /// # Errors
    /// The bytes are not a record of a format version this build knows.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordDecodeError> {
        match bytes.split_first() {
            Some((&RECORD_FORMAT_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|source| RecordDecodeError {
                    version: RECORD_FORMAT_VERSION,
                    source,
                })
            }
            Some((&version, _)) => Err(RecordDecodeError {
                version,
                source: postcard::Error::DeserializeBadEncoding,
            }),
            None => Err(RecordDecodeError {
                version: 0,
                source: postcard::Error::DeserializeUnexpectedEnd,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_its_encoding() {
        let record = Record {
            state: RecordState::Completed {
                fingerprint: Fingerprint::from_bytes([7; 32]),
                response: StoredResponse {
                    status: 201,
                    headers: vec![("content-type".into(), Bytes::from_static(b"text/plain"))],
                    body: Some(Bytes::from_static(b"created")),
                },
            },
            expires_at: Timestamp::from_millis(42),
        };
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn headers_round_trip_with_any_bytes() {
        let headers = vec![("x-a".to_owned(), Bytes::from_static(&[0, 0xff, b'"']))];
        assert_eq!(decode_headers(&encode_headers(&headers)).unwrap(), headers);
        let error = decode_headers(&[7]).expect_err("format 7 does not exist");
        assert_eq!(
            (error.version, error.source),
            (7, postcard::Error::DeserializeBadEncoding)
        );
    }

    #[test]
    fn unknown_format_version_is_an_error_not_a_misread() {
        let error = Record::decode(&[9, 1, 2, 3]).expect_err("format 9 does not exist");
        assert_eq!(
            (error.version, error.source.clone()),
            (9, postcard::Error::DeserializeBadEncoding)
        );
        assert!(
            error.to_string().contains("format version 9"),
            "the error names the version it found: {error}"
        );
        let error = Record::decode(&[]).expect_err("no bytes, no record");
        assert_eq!(
            (error.version, error.source),
            (0, postcard::Error::DeserializeUnexpectedEnd)
        );
    }

    #[test]
    fn a_known_version_with_a_damaged_body_is_an_error_of_that_version() {
        let mut bytes = Record {
            state: RecordState::Completed {
                fingerprint: Fingerprint::from_bytes([7; 32]),
                response: StoredResponse {
                    status: 200,
                    headers: vec![],
                    body: None,
                },
            },
            expires_at: Timestamp::from_millis(42),
        }
        .encode();
        bytes.truncate(bytes.len() / 2);
        let error = Record::decode(&bytes).expect_err("half a record");
        assert_eq!(error.version, RECORD_FORMAT_VERSION);
    }

    #[test]
    fn timestamps_saturate() {
        let t = Timestamp::from_millis(u64::MAX - 1);
        assert_eq!(t.plus(Duration::MAX), Timestamp::from_millis(u64::MAX));
        assert_eq!(
            Timestamp::from_millis(5).until(Timestamp::from_millis(3)),
            Duration::ZERO
        );
    }
}
