//! The decoders of what the store reads from disk, reachable from the fuzz targets
//! (`crates/idem-fuzz`) and from nothing else: stored bytes may be anything, so decoding them
//! must refuse what it cannot read rather than panic.

use idem_core::Record;

/// Decodes a record's bytes as the store reads them.
///
/// # Errors
/// The message of the [`StoreError`](idem_core::StoreError) the store would report.
pub fn decode_record(bytes: &[u8]) -> Result<Record, String> {
    crate::layout::decode_record(bytes)
        .map_err(|error| idem_core::StoreError::from(error).to_string())
}
