//! The decoders of the scripts' replies, reachable from the fuzz targets (`crates/idem-fuzz`)
//! and from nothing else: a reply is whatever Redis hands back, so decoding one must refuse
//! every malformed value rather than panic. Errors become their message, since the error type
//! is the crate's own.

use idem_core::{BeginOutcome, RecordSnapshot};
use redis::Value;

/// Decodes the reply of `lua/begin.lua`, as the store does.
///
/// # Errors
/// The message of the reply's decoding error.
pub fn begin_outcome(reply: Value) -> Result<BeginOutcome, String> {
    crate::codec::begin_outcome(reply).map_err(|error| error.to_string())
}

/// Decodes the reply of `lua/get.lua`, as the store does.
///
/// # Errors
/// The message of the reply's decoding error.
pub fn snapshot(reply: Value) -> Result<Option<RecordSnapshot>, String> {
    crate::codec::snapshot(reply).map_err(|error| error.to_string())
}
