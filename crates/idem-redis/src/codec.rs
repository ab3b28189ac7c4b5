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
//! | `expires_at` | when the record is forgotten, on Redis's clock |
//! | `status`, `headers`, `has_body`, `body` | the stored response (completed only) |
//! | `watched` | `1` once a waiter asked for its finish to be announced (in flight only) |
//!
//! Tokens and times are decimal strings (see `lua/prelude.lua`), times in milliseconds of the
//! clock the scripts read (Redis's `TIME`, unless a test gave the store a clock of its own);
//! `headers` is a format byte
//! then postcard; `has_body` is `1`, or `0` for a response stored without its body, so an
//! empty body and no body stay distinct.

use std::collections::HashMap;

use bytes::Bytes;
use idem_core::{
    BeginOutcome, Fingerprint, LeaseToken, Record, RecordId, RecordSnapshot, RecordState,
    StoredResponse, Timestamp,
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

/// The record a key names (`{prefix}:{<hex id>}`, as [`record_key`] writes it), or `None` for
/// a key of another prefix or shape: the message `complete.lua` and `release.lua` announce.
pub(crate) fn record_id_from_key(prefix: &str, key: &str) -> Option<RecordId> {
    let hex = key
        .strip_prefix(prefix)?
        .strip_prefix(":{")?
        .strip_suffix('}')?;
    let mut bytes = [0_u8; 32];
    hex::decode_to_slice(hex, &mut bytes).ok()?;
    Some(RecordId::from_bytes(bytes))
}

/// A decimal u64 as the scripts store and compare it.
fn decimal(field: &str, bytes: &[u8]) -> Result<u64, DecodeError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| unreadable(format!("{field} is not a decimal number")))
}

fn stored_response(
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

fn timestamp(field: &str, bytes: &[u8]) -> Result<Timestamp, DecodeError> {
    decimal(field, bytes).map(Timestamp::from_millis)
}

/// The strings of a script's reply array; `None` for a nil (a field that was missing).
fn reply_strings(reply: Value) -> Result<Vec<Option<Vec<u8>>>, DecodeError> {
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
    let mut items = reply_strings(reply)?.into_iter();
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
        b"unknown" => Ok(BeginOutcome::OutcomeUnknown),
        b"in_flight" => {
            let lease_until = timestamp("lease_until", &next("lease_until")?)?;
            let now = timestamp("now", &next("now")?)?;
            Ok(BeginOutcome::InFlight {
                lease_left: now.until(lease_until),
            })
        }
        b"replay" => {
            let (status, headers) = (next("status")?, next("headers")?);
            let (has_body, body) = (next("has_body")?, next("body")?);
            Ok(BeginOutcome::Replay(stored_response(
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

/// The reply of `lua/get.lua` (the script's clock, then the hash's fields and values): the
/// record and that clock, or `None` if the record is absent or expired at that clock, since
/// Redis deletes a key only a grace period after the record expired.
pub(crate) fn snapshot(reply: Value) -> Result<Option<RecordSnapshot>, DecodeError> {
    let mut items = reply_strings(reply)?.into_iter();
    let now = timestamp(
        "now",
        &items
            .next()
            .flatten()
            .ok_or_else(|| unreadable("get reply without now"))?,
    )?;
    let mut fields = HashMap::new();
    while let Some(field) = items.next() {
        let (Some(field), Some(Some(value))) = (field, items.next()) else {
            return Err(unreadable("get reply with a field without a value"));
        };
        let field = String::from_utf8(field).map_err(|_| unreadable("a field is not UTF-8"))?;
        fields.insert(field, value);
    }
    Ok(visible_record(fields, now)?.map(|record| RecordSnapshot { record, now }))
}

/// A record from its hash's fields, or `None` if it is absent or expired at `now`.
fn visible_record(
    mut fields: HashMap<String, Vec<u8>>,
    now: Timestamp,
) -> Result<Option<Record>, DecodeError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut take = |field: &str| {
        fields
            .remove(field)
            .ok_or_else(|| unreadable(format!("record without {field}")))
    };
    let expires_at = timestamp("expires_at", &take("expires_at")?)?;
    if now >= expires_at {
        return Ok(None);
    }
    let fingerprint = <[u8; 32]>::try_from(take("fp")?.as_slice())
        .map(Fingerprint::from_bytes)
        .map_err(|_| unreadable("fingerprint is not 32 bytes"))?;
    let state = take("state")?;
    let state = match state.as_slice() {
        b"in_flight" => RecordState::InFlight {
            fingerprint,
            token: LeaseToken::from_u64(decimal("token", &take("token")?)?),
            lease_until: timestamp("lease_until", &take("lease_until")?)?,
        },
        b"completed" => {
            let (status, headers) = (take("status")?, take("headers")?);
            let (has_body, body) = (take("has_body")?, take("body")?);
            RecordState::Completed {
                fingerprint,
                response: stored_response(&status, &headers, &has_body, body)?,
            }
        }
        _ => return Err(unreadable("unknown state")),
    };
    Ok(Some(Record { state, expires_at }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_key_names_its_record_and_only_in_its_own_prefix() {
        let id = RecordId::from_bytes([0x5a; 32]);
        let key = record_key("idem", id);
        assert_eq!(record_id_from_key("idem", &key), Some(id));
        assert_eq!(record_id_from_key("other", &key), None);
        assert_eq!(
            record_id_from_key("ide", &key),
            None,
            "a prefix of the prefix"
        );
        assert_eq!(record_id_from_key("idem", "idem:{ab}"), None);
        assert_eq!(record_id_from_key("idem", &key.replace('}', "")), None);
    }

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
        let in_flight = Value::Array(vec![bulk(b"in_flight"), bulk(b"1500"), bulk(b"1200")]);
        assert_eq!(
            begin_outcome(in_flight).unwrap(),
            BeginOutcome::InFlight {
                lease_left: std::time::Duration::from_millis(300)
            }
        );
        assert_eq!(
            begin_outcome(Value::Array(vec![bulk(b"unknown")])).unwrap(),
            BeginOutcome::OutcomeUnknown
        );
        for (bad, why) in [
            (Value::Int(1), "script replied int(1), not an array"),
            (
                Value::Array(vec![bulk(b"replay"), Value::Nil]),
                "begin reply without status",
            ),
            (
                Value::Array(vec![bulk(b"corrupt"), bulk(b"no expires_at")]),
                "no expires_at",
            ),
            (
                Value::Array(vec![bulk(b"in_flight"), bulk(b"-1"), bulk(b"0")]),
                "lease_until is not a decimal number",
            ),
            (
                Value::Array(vec![bulk(b"in_flight"), bulk(b"1")]),
                "begin reply without now",
            ),
            (
                Value::Array(vec![bulk(b"granted")]),
                "begin replied \"granted\"",
            ),
        ] {
            let error = begin_outcome(bad).expect_err(why);
            assert_eq!(error.0, why);
        }
    }

    #[test]
    fn get_replies_are_read_at_the_clock_they_carry() {
        let fields: Vec<&[u8]> = vec![
            b"state",
            b"in_flight",
            b"fp",
            &[1; 32],
            b"token",
            b"7",
            b"lease_until",
            b"150",
            b"expires_at",
            b"200",
        ];
        let reply = |now: &[u8]| {
            Value::Array(
                std::iter::once(bulk(now))
                    .chain(fields.iter().map(|item| bulk(item)))
                    .collect(),
            )
        };
        let live = snapshot(reply(b"120")).unwrap().expect("live at 120");
        assert_eq!(live.now, Timestamp::from_millis(120));
        assert_eq!(live.record.expires_at, Timestamp::from_millis(200));
        assert_eq!(
            live.record.state,
            RecordState::InFlight {
                fingerprint: Fingerprint::from_bytes([1; 32]),
                token: LeaseToken::from_u64(7),
                lease_until: Timestamp::from_millis(150),
            }
        );
        assert_eq!(
            live.lease_left(),
            Some(std::time::Duration::from_millis(30))
        );
        // Expired at the script's clock: absent, whether or not Redis deleted the key yet.
        assert_eq!(snapshot(reply(b"200")).unwrap(), None);
        assert_eq!(snapshot(Value::Array(vec![bulk(b"5")])).unwrap(), None);
        for (bad, why) in [
            (Value::Array(vec![]), "get reply without now"),
            (
                Value::Array(vec![bulk(b"5"), bulk(b"state")]),
                "get reply with a field without a value",
            ),
            (
                Value::Array(vec![bulk(b"5"), bulk(b"state"), bulk(b"in_flight")]),
                "record without expires_at",
            ),
        ] {
            let error = snapshot(bad).expect_err(why);
            assert_eq!(error.0, why);
        }
    }
}
