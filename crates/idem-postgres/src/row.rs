//! Conversions between idem's types and the columns of `idem_records`: timestamps and tokens
//! as `bigint`, the header list as a compact `bytea`, and a returned row back into a
//! [`Record`].

use std::time::Duration;

use bytes::Bytes;
use idem_core::{
    Fingerprint, LeaseToken, Record, RecordState, StoredResponse, Timestamp, decode_headers,
};
use sqlx::Row;
use sqlx::postgres::PgRow;

/// The `state` of an in-flight record.
pub(crate) const IN_FLIGHT: &str = "in_flight";
/// The `state` of a completed record.
pub(crate) const COMPLETED: &str = "completed";

/// Why a row could not be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RowError {
    /// A column holds a value no build of this crate writes.
    #[error("column {column} of idem_records holds an unexpected value: {detail}")]
    Unexpected {
        /// The column.
        column: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The header list is not in a format this build knows.
    #[error("response_headers of idem_records is unreadable: {0}")]
    Headers(#[from] idem_core::RecordDecodeError),
    /// The driver could not decode a column.
    #[error(transparent)]
    Driver(#[from] sqlx::Error),
}

fn unexpected(column: &'static str, detail: impl ToString) -> RowError {
    RowError::Unexpected {
        column,
        detail: detail.to_string(),
    }
}

/// A timestamp as `bigint`. Timestamps past `i64::MAX` milliseconds (292 million years, what
/// a `Duration::MAX` TTL saturates to) are stored as `i64::MAX`: still "never", and still in
/// order.
pub(crate) fn timestamp_to_sql(timestamp: Timestamp) -> i64 {
    i64::try_from(timestamp.as_millis()).unwrap_or(i64::MAX)
}

fn timestamp_from_sql(column: &'static str, millis: i64) -> Result<Timestamp, RowError> {
    u64::try_from(millis)
        .map(Timestamp::from_millis)
        .map_err(|_| unexpected(column, format!("negative timestamp {millis}")))
}

/// A duration (a lease, a TTL) as `bigint` milliseconds, saturating like
/// [`Timestamp::plus`]; the statements add it to their now without overflowing.
pub(crate) fn duration_to_sql(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The statement's own now, from the column `now` (see `sql`).
pub(crate) fn now_from_row(row: &PgRow) -> Result<Timestamp, RowError> {
    timestamp_from_sql("now", row.try_get("now")?)
}

/// A token as `bigint`, bit for bit: tokens are random `u64`s and only ever compared for
/// equality, so the sign carries no meaning.
pub(crate) fn token_to_sql(token: LeaseToken) -> i64 {
    i64::from_be_bytes(token.as_u64().to_be_bytes())
}

fn token_from_sql(value: i64) -> LeaseToken {
    LeaseToken::from_u64(u64::from_be_bytes(value.to_be_bytes()))
}

/// The columns of `idem_records` that make up a record, as the driver decoded them: what
/// [`record_from_columns`] reads, apart from the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordColumns {
    /// `state`: `in_flight` or `completed`.
    pub state: String,
    /// `fingerprint`: 32 bytes.
    pub fingerprint: Vec<u8>,
    /// `token`: the owner's token, bit-cast.
    pub token: i64,
    /// `lease_until`: milliseconds.
    pub lease_until: i64,
    /// `expires_at`: milliseconds.
    pub expires_at: i64,
    /// `response_status`: set once completed.
    pub response_status: Option<i32>,
    /// `response_headers`: a format byte, then postcard; set once completed.
    pub response_headers: Option<Vec<u8>>,
    /// `response_body`: `NULL` for a body too large to store.
    pub response_body: Option<Vec<u8>>,
}

/// The record in a row holding the columns `state, fingerprint, token, lease_until,
/// expires_at, response_status, response_headers, response_body`.
pub(crate) fn record_from_row(row: &PgRow) -> Result<Record, RowError> {
    record_from_columns(RecordColumns {
        state: row.try_get("state")?,
        fingerprint: row.try_get("fingerprint")?,
        // `token` and `lease_until` are `NOT NULL` in every state.
        token: row.try_get("token")?,
        lease_until: row.try_get("lease_until")?,
        expires_at: row.try_get("expires_at")?,
        response_status: row.try_get("response_status")?,
        response_headers: row.try_get("response_headers")?,
        response_body: row.try_get("response_body")?,
    })
}

/// The record in a row's columns: the decoding that needs no driver, kept apart from
/// [`record_from_row`] so that it can be tested (and fuzzed) without a database.
pub(crate) fn record_from_columns(columns: RecordColumns) -> Result<Record, RowError> {
    let fingerprint = <[u8; 32]>::try_from(columns.fingerprint.as_slice())
        .map(Fingerprint::from_bytes)
        .map_err(|_| unexpected("fingerprint", "not 32 bytes"))?;
    let expires_at = timestamp_from_sql("expires_at", columns.expires_at)?;
    let state = match columns.state.as_str() {
        IN_FLIGHT => RecordState::InFlight {
            fingerprint,
            token: token_from_sql(columns.token),
            lease_until: timestamp_from_sql("lease_until", columns.lease_until)?,
        },
        COMPLETED => {
            let status = columns
                .response_status
                .ok_or_else(|| unexpected("response_status", "missing"))?;
            let headers = columns
                .response_headers
                .ok_or_else(|| unexpected("response_headers", "missing"))?;
            RecordState::Completed {
                fingerprint,
                response: StoredResponse {
                    status: u16::try_from(status)
                        .map_err(|_| unexpected("response_status", status))?,
                    headers: decode_headers(&headers)?,
                    body: columns.response_body.map(Bytes::from),
                },
            }
        }
        other => return Err(unexpected("state", other)),
    };
    Ok(Record { state, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_bit_for_bit() {
        for value in [0, 1, u64::MAX, 1 << 63, 0x0123_4567_89ab_cdef] {
            let token = LeaseToken::from_u64(value);
            assert_eq!(token_from_sql(token_to_sql(token)), token);
        }
    }

    #[test]
    fn timestamps_saturate_and_keep_their_order() {
        let now = Timestamp::from_millis(1_700_000_000_000);
        assert_eq!(timestamp_to_sql(now), 1_700_000_000_000);
        assert_eq!(timestamp_to_sql(Timestamp::from_millis(u64::MAX)), i64::MAX);
        match timestamp_from_sql("expires_at", -1) {
            Err(RowError::Unexpected { column, detail }) => {
                assert_eq!(
                    (column, detail.as_str()),
                    ("expires_at", "negative timestamp -1")
                );
            }
            other => panic!("a negative timestamp is an unexpected value, got {other:?}"),
        }
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(duration_to_sql(Duration::from_millis(1500)), 1500);
        assert_eq!(duration_to_sql(Duration::MAX), i64::MAX);
    }
}
