//! The client's `Idempotency-Key`: parsing, validation and the optional UUID v4 policy.
//!
//! The IETF draft defines the header as an RFC 8941 sf-string (`"abc"`); many clients send
//! a bare token (`abc`), so both are accepted and mean the same key.

use std::fmt;

/// The longest key accepted, in characters. The draft sets no limit; 255 is what Stripe
/// accepts, and it bounds what we hash and log.
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key: 1 to [`MAX_KEY_LEN`] visible ASCII characters.
///
/// The key is kept in clear only in memory, for the duration of one request; stores only
/// ever see it hashed into a [`RecordId`](crate::RecordId).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Which keys a deployment accepts beyond the basic syntax.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyPolicy {
    /// Any 1 to 255 visible ASCII characters.
    #[default]
    Any,
    /// Only a UUID version 4 (`7e0b5145-1d2c-4f0e-9f2a-8c3d9a1b2c3d`), any letter case.
    UuidV4,
}

/// Why a header value is not an acceptable idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The value is empty (or an empty sf-string `""`).
    #[error("the idempotency key is empty; send 1 to 255 visible ASCII characters")]
    Empty,
    /// The value is longer than [`MAX_KEY_LEN`].
    #[error("the idempotency key is {0} characters long; at most 255 are accepted")]
    TooLong(usize),
    /// The value holds a character outside visible ASCII (or a stray quote or backslash).
    #[error(
        "the idempotency key contains a character that is not visible ASCII at position {0}; \
         use letters, digits and punctuation only (a UUID v4 is recommended)"
    )]
    InvalidCharacter(usize),
    /// A bare (unquoted) key with a character an RFC 8941 token cannot hold: a comma, say,
    /// which is what two `Idempotency-Key` fields merged by an intermediary look like.
    #[error(
        "the bare idempotency key has {1:?} at position {0}, which a bare key may not hold \
         (letters, digits and !#$%&'*+-.^_`|~:/ only); send it quoted (\"...\") instead"
    )]
    NotAToken(usize, char),
    /// A quoted sf-string that is not terminated, or has text after its closing quote.
    #[error("the idempotency key is a malformed quoted string; send \"key\" or a bare key")]
    MalformedQuotedString,
    /// The policy requires a UUID v4 and the key is not one.
    #[error("this API requires the idempotency key to be a UUID version 4")]
    NotUuidV4,
}

impl IdempotencyKey {
    /// Parses a header value as an sf-string (`"abc"`) or a bare token (`abc`), then checks it
    /// against `policy`.
    ///
    /// # Errors
    /// A [`KeyError`] that says what is wrong with the value; nothing else happens.
    pub fn parse(value: &[u8], policy: KeyPolicy) -> Result<Self, KeyError> {
        let key = match value {
            [b'"', rest @ ..] => parse_sf_string(rest)?,
            bare => parse_bare(bare)?,
        };
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(key.len()));
        }
        if policy == KeyPolicy::UuidV4 && !is_uuid_v4(&key) {
            return Err(KeyError::NotUuidV4);
        }
        Ok(Self(key))
    }

    /// The key as the client sent it, without sf-string quoting.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bare key: the characters of an RFC 8941 sf-token (RFC 9110 `tchar`, `:` and `/`), in
/// any position (a bare UUID may start with a digit). Anything else (a comma, a space, a
/// semicolon) must be quoted, so that two merged fields (`a, b`) are never taken for one key.
fn parse_bare(value: &[u8]) -> Result<String, KeyError> {
    if let Some(position) = value.iter().position(|b| !b.is_ascii_graphic()) {
        return Err(KeyError::InvalidCharacter(position));
    }
    if let Some(position) = value.iter().position(|&b| !is_token_char(b)) {
        return Err(KeyError::NotAToken(position, char::from(value[position])));
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

/// RFC 9110 `tchar`, plus the `:` and `/` an RFC 8941 sf-token also allows.
fn is_token_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&byte)
}

/// The inside of an RFC 8941 sf-string after its opening quote: printable ASCII (space
/// included), with `\"` and `\\` as the only escapes, ending at the closing quote.
fn parse_sf_string(rest: &[u8]) -> Result<String, KeyError> {
    let mut key = String::with_capacity(rest.len());
    let mut bytes = rest.iter().enumerate();
    while let Some((index, &byte)) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some((_, &escaped @ (b'"' | b'\\'))) => key.push(char::from(escaped)),
                _ => return Err(KeyError::MalformedQuotedString),
            },
            b'"' if index + 1 == rest.len() => return Ok(key),
            b'"' => return Err(KeyError::MalformedQuotedString),
            b' '..=b'~' => key.push(char::from(byte)),
            // +1: the position counts the opening quote.
            _ => return Err(KeyError::InvalidCharacter(index + 1)),
        }
    }
    Err(KeyError::MalformedQuotedString)
}

fn is_uuid_v4(key: &str) -> bool {
    // `Uuid::try_parse` also takes the simple, braced and URN forms; a key must be the
    // hyphenated form that clients generate.
    key.len() == 36
        && uuid::Uuid::try_parse(key)
            .is_ok_and(|id| id.get_version_num() == 4 && id.get_variant() == uuid::Variant::RFC4122)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<String, KeyError> {
        IdempotencyKey::parse(value.as_bytes(), KeyPolicy::Any).map(|k| k.as_str().to_owned())
    }

    #[test]
    fn bare_and_quoted_forms_mean_the_same_key() {
        assert_eq!(parse("abc-123").unwrap(), "abc-123");
        assert_eq!(parse("\"abc-123\"").unwrap(), "abc-123");
    }

    #[test]
    fn quoted_form_allows_spaces_and_escapes() {
        assert_eq!(parse(r#""a b \"c\" \\""#).unwrap(), r#"a b "c" \"#);
    }

    #[test]
    fn rejects_empty_and_too_long() {
        assert_eq!(parse(""), Err(KeyError::Empty));
        assert_eq!(parse("\"\""), Err(KeyError::Empty));
        assert!(parse(&"k".repeat(255)).is_ok());
        assert_eq!(parse(&"k".repeat(256)), Err(KeyError::TooLong(256)));
    }

    #[test]
    fn rejects_invisible_and_non_ascii_characters() {
        assert_eq!(parse("a b"), Err(KeyError::InvalidCharacter(1)));
        assert_eq!(parse("ab\t"), Err(KeyError::InvalidCharacter(2)));
        assert_eq!(parse("clé"), Err(KeyError::InvalidCharacter(2)));
        assert_eq!(parse("\"a\u{7f}\""), Err(KeyError::InvalidCharacter(2)));
    }

    #[test]
    fn a_bare_key_holds_token_characters_only_so_merged_fields_are_refused() {
        let uuid = "7e0b5145-1d2c-4f0e-9f2a-8c3d9a1b2c3d";
        assert_eq!(
            parse(uuid).unwrap(),
            uuid,
            "a bare UUID may start with a digit"
        );
        assert_eq!(parse("order:42/v1.2").unwrap(), "order:42/v1.2");
        assert_eq!(parse("a,b"), Err(KeyError::NotAToken(1, ',')));
        assert_eq!(parse("k;v"), Err(KeyError::NotAToken(1, ';')));
        assert_eq!(parse("{k}"), Err(KeyError::NotAToken(0, '{')));
        assert_eq!(
            parse("\"a,b\"").unwrap(),
            "a,b",
            "quoted, any visible ASCII"
        );
        let message = parse("a,b").unwrap_err().to_string();
        assert!(message.contains("send it quoted"), "{message}");
    }

    #[test]
    fn rejects_malformed_quoted_strings() {
        assert_eq!(parse("\"abc"), Err(KeyError::MalformedQuotedString));
        assert_eq!(parse("\"ab\"c\""), Err(KeyError::MalformedQuotedString));
        assert_eq!(parse(r#""a\x""#), Err(KeyError::MalformedQuotedString));
    }

    #[test]
    fn uuid_v4_policy() {
        let v4 = "7e0b5145-1d2c-4f0e-9f2a-8c3d9a1b2c3d";
        let v1 = "7e0b5145-1d2c-1f0e-9f2a-8c3d9a1b2c3d";
        let policy = KeyPolicy::UuidV4;
        assert!(IdempotencyKey::parse(v4.as_bytes(), policy).is_ok());
        assert!(IdempotencyKey::parse(v4.to_uppercase().as_bytes(), policy).is_ok());
        assert_eq!(
            IdempotencyKey::parse(v1.as_bytes(), policy),
            Err(KeyError::NotUuidV4)
        );
        let braced = format!("\"{{{v4}}}\"");
        assert_eq!(
            IdempotencyKey::parse(braced.as_bytes(), policy),
            Err(KeyError::NotUuidV4)
        );
        assert_eq!(
            IdempotencyKey::parse(b"abc", policy),
            Err(KeyError::NotUuidV4)
        );
    }
}
