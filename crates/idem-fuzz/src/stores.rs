//! `redis_record`, `postgres_record`, `embedded_record`: reading back what each store keeps.
//! What a store hands back may be anything (another build's format, a torn write, a
//! hand-edited row): decoding must refuse what it cannot read, never panic, and what it does
//! read must be a record that reads back the same once written again.

use bytes::Bytes;
use idem_postgres::fuzzing::{RecordColumns, columns_for, record_from_columns};
use redis::Value;

use crate::input::Input;

/// How deep a generated Redis reply nests: the scripts reply flat arrays; a little nesting
/// covers the replies they never send.
const MAX_REPLY_DEPTH: usize = 2;
/// At most this many items per generated array.
const MAX_REPLY_ITEMS: usize = 16;

/// The words the Redis codec compares with, and values it reads.
const REDIS_WORDS: &[&[u8]] = &[
    b"acquired",
    b"mismatch",
    b"unknown",
    b"in_flight",
    b"replay",
    b"corrupt",
    b"completed",
    b"state",
    b"fp",
    b"token",
    b"lease_until",
    b"expires_at",
    b"status",
    b"headers",
    b"has_body",
    b"body",
    b"0",
    b"1",
    b"200",
    b"65536",
    b"-1",
    b"18446744073709551615",
    b"18446744073709551616",
    b"",
    &[0xab; 32],
    &[0x01, 0x00],
    &[0x01, 0x01, 0x01, b'a', 0x01, b'b'],
];

/// Decodes a Redis reply drawn from `data` as the reply of `begin.lua` and of `get.lua`.
/// A snapshot it reads is of a record still alive at the clock the reply carries.
pub fn redis_record(data: &[u8]) {
    let mut input = Input::new(data);
    let reply = if input.below(8) == 0 {
        reply_value(&mut input, 0)
    } else {
        Value::Array(reply_items(&mut input, 0))
    };
    // Any outcome or refusal will do, as long as decoding returns one.
    let _ = idem_redis::fuzzing::begin_outcome(reply.clone());
    if let Ok(Some(snapshot)) = idem_redis::fuzzing::snapshot(reply) {
        assert!(
            snapshot.now < snapshot.record.expires_at,
            "an expired record read as alive: {snapshot:?}"
        );
    }
}

fn reply_items(input: &mut Input<'_>, depth: usize) -> Vec<Value> {
    (0..input.below(MAX_REPLY_ITEMS + 1))
        .map(|_| reply_value(input, depth + 1))
        .collect()
}

fn reply_value(input: &mut Input<'_>, depth: usize) -> Value {
    let kinds = if depth < MAX_REPLY_DEPTH { 10 } else { 7 };
    match input.below(kinds) {
        0 => Value::Nil,
        1 | 2 => Value::BulkString(input.word(REDIS_WORDS)),
        3 => Value::SimpleString(String::from_utf8_lossy(&input.word(REDIS_WORDS)).into_owned()),
        4 => Value::Int(input.i64()),
        5 => Value::Okay,
        6 => Value::Boolean(input.flag()),
        7 => Value::Array(reply_items(input, depth)),
        8 => Value::Set(reply_items(input, depth)),
        _ => Value::Map(
            reply_items(input, depth)
                .into_iter()
                .map(|key| (key, Value::Nil))
                .collect(),
        ),
    }
}

/// Decodes a row's columns drawn from `data`; a record read from them is written back as the
/// store writes it and reads back the same.
pub fn postgres_record(data: &[u8]) {
    let mut input = Input::new(data);
    let state = match input.below(5) {
        0 => input.text(),
        1 | 2 => "in_flight".to_owned(),
        _ => "completed".to_owned(),
    };
    let fingerprint = if input.below(8) == 0 {
        input.bytes().to_vec()
    } else {
        vec![input.byte(); 32]
    };
    let small = |input: &mut Input<'_>| i64::from(input.byte()) - 8;
    let columns = RecordColumns {
        state,
        fingerprint,
        token: input.i64(),
        lease_until: if input.flag() {
            small(&mut input)
        } else {
            input.i64()
        },
        expires_at: if input.flag() {
            small(&mut input)
        } else {
            input.i64()
        },
        response_status: input.flag().then(|| {
            if input.flag() {
                i32::from(input.byte()) * 300 - 100
            } else {
                i32::from_be_bytes([input.byte(), input.byte(), input.byte(), input.byte()])
            }
        }),
        response_headers: input.flag().then(|| headers(&mut input)),
        response_body: input.flag().then(|| input.bytes().to_vec()),
    };
    if let Ok(record) = record_from_columns(columns) {
        assert_eq!(
            record_from_columns(columns_for(&record)).as_ref(),
            Ok(&record),
            "a record read from a row, written back, reads back the same"
        );
    }
}

/// An encoded header list, or bytes of the input's own.
fn headers(input: &mut Input<'_>) -> Vec<u8> {
    if input.below(4) == 0 {
        return input.bytes().to_vec();
    }
    let headers: Vec<(String, Bytes)> = (0..input.below(4))
        .map(|_| (input.text(), Bytes::copy_from_slice(input.bytes())))
        .collect();
    idem_core::encode_headers(&headers)
}

/// Decodes `data` as the bytes the embedded store keeps for a record; a record read from them
/// encodes to bytes that read back the same.
pub fn embedded_record(data: &[u8]) {
    if let Ok(record) = idem_embedded::fuzzing::decode_record(data) {
        assert_eq!(
            idem_embedded::fuzzing::decode_record(&record.encode()).as_ref(),
            Ok(&record),
            "a record read from disk, written again, reads back the same"
        );
    }
}
