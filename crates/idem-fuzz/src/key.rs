//! `key`: the client's `Idempotency-Key` header value, under each policy.

use idem_core::{IdempotencyKey, KeyError, KeyPolicy, MAX_KEY_LEN};

/// Parses `data` as a header value under every [`KeyPolicy`]. An accepted key is 1 to
/// [`MAX_KEY_LEN`] printable ASCII characters (a space only in the quoted form), reads back as
/// the same key when sent quoted (and bare, when it is a token), and a UUID v4 key is one any
/// policy accepts. A refusal points at the byte it names.
pub fn key(data: &[u8]) {
    let any = IdempotencyKey::parse(data, KeyPolicy::Any);
    let uuid = IdempotencyKey::parse(data, KeyPolicy::UuidV4);
    for (policy, parsed) in [(KeyPolicy::Any, &any), (KeyPolicy::UuidV4, &uuid)] {
        match parsed {
            Ok(key) => check_accepted(key, policy),
            Err(error) => check_refusal(data, error),
        }
    }
    if let Ok(key) = &uuid {
        assert_eq!(
            any.as_ref(),
            Ok(key),
            "a UUID v4 key is a key under any policy"
        );
        assert_eq!(
            key.as_str().len(),
            36,
            "a UUID v4 key is the hyphenated form"
        );
    }
}

fn check_accepted(key: &IdempotencyKey, policy: KeyPolicy) {
    let text = key.as_str();
    assert!(
        (1..=MAX_KEY_LEN).contains(&text.len()),
        "accepted a key of {} characters",
        text.len()
    );
    assert!(
        text.bytes().all(|byte| (b' '..=b'~').contains(&byte)),
        "accepted a key that is not printable ASCII: {text:?}"
    );
    let quoted = format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
    assert_eq!(
        IdempotencyKey::parse(quoted.as_bytes(), policy).as_ref(),
        Ok(key),
        "the key, quoted, reads back as itself"
    );
    let is_token = text
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&byte));
    if is_token {
        assert_eq!(
            IdempotencyKey::parse(text.as_bytes(), policy).as_ref(),
            Ok(key),
            "a token key, bare, reads back as itself"
        );
    }
}

fn check_refusal(data: &[u8], error: &KeyError) {
    match *error {
        KeyError::TooLong(length) => assert!(length > MAX_KEY_LEN, "{error}"),
        KeyError::InvalidCharacter(position) => assert!(
            data.get(position)
                .is_some_and(|byte| !byte.is_ascii_graphic()),
            "{error} in {data:?}"
        ),
        KeyError::NotAToken(position, character) => assert_eq!(
            data.get(position).copied().map(char::from),
            Some(character),
            "{error}"
        ),
        _ => {}
    }
}
