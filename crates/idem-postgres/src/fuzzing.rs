//! The decoder of a row's columns, reachable from the fuzz targets (`crates/idem-fuzz`) and
//! from nothing else: a row may hold anything another build (or a hand-edited table) wrote,
//! so decoding it must refuse what it cannot read rather than panic.

use idem_core::{Record, RecordState, encode_headers};

pub use crate::row::RecordColumns;
use crate::row::{COMPLETED, IN_FLIGHT, timestamp_to_sql, token_to_sql};

/// Decodes a row's columns as the store does.
///
/// # Errors
/// The message of the row's decoding error.
pub fn record_from_columns(columns: RecordColumns) -> Result<Record, String> {
    crate::row::record_from_columns(columns).map_err(|error| error.to_string())
}

/// The columns the store's statements write for `record`; `token` and `lease_until` of a
/// completed record are whatever the row held before, 0 here.
#[must_use]
pub fn columns_for(record: &Record) -> RecordColumns {
    let (state, fingerprint, token, lease_until, response) = match &record.state {
        RecordState::InFlight {
            fingerprint,
            token,
            lease_until,
        } => (
            IN_FLIGHT,
            fingerprint,
            token_to_sql(*token),
            timestamp_to_sql(*lease_until),
            None,
        ),
        RecordState::Completed {
            fingerprint,
            response,
        } => (COMPLETED, fingerprint, 0, 0, Some(response)),
    };
    RecordColumns {
        state: state.to_owned(),
        fingerprint: fingerprint.as_bytes().to_vec(),
        token,
        lease_until,
        expires_at: timestamp_to_sql(record.expires_at),
        response_status: response.map(|response| i32::from(response.status)),
        response_headers: response.map(|response| encode_headers(&response.headers)),
        response_body: response.and_then(|response| response.body.as_ref().map(|b| b.to_vec())),
    }
}
