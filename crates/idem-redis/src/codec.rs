//! How a record is laid out in Redis, and reading it back: the key of a record, the fields of
//! its hash, and the replies of the scripts.
//!
//! A record is one hash at `{prefix}:{<hex id>}` with the fields
//!
//! | field | value |
//! |---|---|
//! | `state` | `in_flight` or `completed` |
//! | `fp` | the fingerprint, 32 raw bytes |
//! | `token`, `lease_until` | the owner's token and lease (in flight only) |
//! | `expires_at` | when the record is forgotten |
//! | `status`, `headers`, `has_body`, `body` | the stored response (completed only) |
//!
//! Tokens and times are decimal strings (see `lua/prelude.lua`); `headers` is a format byte
//! then postcard; `has_body` is `1`, or `0` for a response stored without its body, so an
//! empty body and no body stay distinct.

use std::collections::HashMap;

use bytes::Bytes;
use idem_core::{
    BeginOutcome, Fingerprint, LeaseToken, RecordId, RecordState, StoredResponse, Timestamp,
};
use redis::Value;

/// A reply or a stored record that this build cannot read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable idempotency record in Redis: {0}")]
pub(crate) struct DecodeError(String);

fn unreadable(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

/// The key of a record. The braces are a Redis Cluster hash tag: only the hex id decides the
/// slot, so any key a record may gain later (`{prefix}:{<hex id>}:suffix`) lands in the same
/// slot as this one and a script can still touch both atomically.
pub(crate) fn record_key(prefix: &str, id: RecordId) -> String {
    format!("{prefix}:{{{}}}", id.to_hex())
}

/// A decimal u64 as the scripts store and compare it.
fn decimal(field: &str, bytes: &[u8]) -> Result<u64, DecodeError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| unreadable(format!("{field} is not a decimal number")))
}

fn response(
    status: &[u8],
    headers: &[u8],
    has_body: &[u8],
    body: Vec<u8>,
) -> Result<StoredResponse, DecodeError> {
    let status =
        u16::try_from(decimal("status", status)?).map_err(|_| unreadable("status out of range"))?;
    let body = match has_body {
        b"1" => Some(Bytes::from(body)),
        b"0" => None,
        _ => return Err(unreadable("has_body is neither 0 nor 1")),
    };
    Ok(StoredResponse {
        status,
        headers: idem_core::decode_headers(headers)
            .map_err(|error| unreadable(format!("headers: {error}")))?,
        body,
    })
}

/// The strings of a script's reply array; `None` for a nil (a field that was missing).
fn strings(reply: Value) -> Result<Vec<Option<Vec<u8>>>, DecodeError> {
    let Value::Array(items) = reply else {
        return Err(unreadable(format!(
            "script replied {reply:?}, not an array"
        )));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::BulkString(bytes) => Ok(Some(bytes)),
            Value::SimpleString(text) => Ok(Some(text.into_bytes())),
            Value::Nil => Ok(None),
            other => Err(unreadable(format!("script replied {other:?} in its array"))),
        })
        .collect()
}

/// The reply of `lua/begin.lua`.
pub(crate) fn begin_outcome(reply: Value) -> Result<BeginOutcome, DecodeError> {
    let mut items = strings(reply)?.into_iter();
    let mut next = |what: &str| {
        items
            .next()
            .flatten()
            .ok_or_else(|| unreadable(format!("begin reply without {what}")))
    };
    let outcome = next("an outcome")?;
    match outcome.as_slice() {
        b"acquired" => Ok(BeginOutcome::Acquired),
        b"mismatch" => Ok(BeginOutcome::Mismatch),
        b"in_flight" => Ok(BeginOutcome::InFlight {
            lease_until: Timestamp::from_millis(decimal("lease_until", &next("lease_until")?)?),
        }),
        b"replay" => {
            let (status, headers) = (next("status")?, next("headers")?);
            let (has_body, body) = (next("has_body")?, next("body")?);
            Ok(BeginOutcome::Replay(response(
                &status, &headers, &has_body, body,
            )?))
        }
        b"corrupt" => Err(unreadable(String::from_utf8_lossy(&next("a reason")?))),
        other => Err(unreadable(format!(
            "begin replied {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// The state of a record from its hash (`HGETALL`), or `None` if it is absent or expired at
/// `now`: Redis deletes expired keys on its own clock, later than their logical expiry.
pub(crate) fn visible_state(
    mut fields: HashMap<String, Vec<u8>>,
    now: Timestamp,
) -> Result<Option<RecordState>, DecodeError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut take = |field: &str| {
        fields
            .remove(field)
            .ok_or_else(|| unreadable(format!("record without {field}")))
    };
    let expires_at = Timestamp::from_millis(decimal("expires_at", &take("expires_at")?)?);
    if now >= expires_at {
        return Ok(None);
    }
    let fingerprint = <[u8; 32]>::try_from(take("fp")?.as_slice())
        .map(Fingerprint::from_bytes)
        .map_err(|_| unreadable("fingerprint is not 32 bytes"))?;
    let state = take("state")?;
    match state.as_slice() {
        b"in_flight" => Ok(Some(RecordState::InFlight {
            fingerprint,
            token: LeaseToken::from_u64(decimal("token", &take("token")?)?),
            lease_until: Timestamp::from_millis(decimal("lease_until", &take("lease_until")?)?),
        })),
        b"completed" => {
            let (status, headers) = (take("status")?, take("headers")?);
            let (has_body, body) = (take("has_body")?, take("body")?);
            Ok(Some(RecordState::Completed {
                fingerprint,
                response: response(&status, &headers, &has_body, body)?,
            }))
        }
        _ => Err(unreadable("unknown state")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &[u8]) -> Value {
        Value::BulkString(text.to_vec())
    }

    #[test]
    fn keys_carry_the_prefix_and_a_hash_tag_around_the_id() {
        let key = record_key("shop", RecordId::from_bytes([0xab; 32]));
        assert_eq!(key, format!("shop:{{{}}}", "ab".repeat(32)));
    }

    #[test]
    fn begin_replies_decode_and_bad_ones_are_errors() {
        let headers = idem_core::encode_headers(&[]);
        let replay = Value::Array(vec![
            bulk(b"replay"),
            bulk(b"204"),
            bulk(&headers),
            bulk(b"0"),
            bulk(b""),
        ]);
        let expected = StoredResponse {
            status: 204,
            headers: vec![],
            body: None,
        };
        assert_eq!(
            begin_outcome(replay).unwrap(),
            BeginOutcome::Replay(expected)
        );
        let in_flight = Value::Array(vec![bulk(b"in_flight"), bulk(b"18446744073709551615")]);
        assert_eq!(
            begin_outcome(in_flight).unwrap(),
            BeginOutcome::InFlight {
                lease_until: Timestamp::from_millis(u64::MAX)
            }
        );
        for bad in [
            Value::Int(1),
            Value::Array(vec![bulk(b"replay"), Value::Nil]),
            Value::Array(vec![bulk(b"corrupt"), bulk(b"no expires_at")]),
            Value::Array(vec![bulk(b"in_flight"), bulk(b"-1")]),
        ] {
            assert!(begin_outcome(bad).is_err());
        }
    }

    #[test]
    fn expired_hashes_read_as_absent() {
        let fields = HashMap::from([
            ("state".to_owned(), b"in_flight".to_vec()),
            ("fp".to_owned(), vec![1; 32]),
            ("token".to_owned(), b"7".to_vec()),
            ("lease_until".to_owned(), b"150".to_vec()),
            ("expires_at".to_owned(), b"200".to_vec()),
        ]);
        let live = visible_state(fields.clone(), Timestamp::from_millis(199)).unwrap();
        assert!(matches!(live, Some(RecordState::InFlight { .. })));
        assert_eq!(
            visible_state(fields, Timestamp::from_millis(200)).unwrap(),
            None
        );
        assert_eq!(
            visible_state(HashMap::new(), Timestamp::from_millis(0)).unwrap(),
            None
        );
    }
}
