//! The formats of the contract's two strings, the idempotency key and the lease token, as
//! OpenAPI schemas. They exist for the document only: requests are still parsed by
//! `idem_core::IdempotencyKey::parse` and `extract::lease_token`, and the tests below hold
//! each pattern to what that parser accepts, so the document says what the server enforces
//! (a client generated from it never sends a key the server refuses).

use std::borrow::Cow;

use idem_core::MAX_KEY_LEN;
use serde_json::json;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// The punctuation a bare (unquoted) key may hold besides letters and digits: an RFC 8941
/// sf-token's characters (RFC 9110 `tchar`, `:` and `/`), as `IdempotencyKey::parse` takes them.
const BARE_KEY_PUNCTUATION: &str = "!#$%&'*+-.^_`|~:/";

/// The `Idempotency-Key` header's value and the `{key}` path segment (decoded): both go
/// through the same parser, so one schema describes both.
pub struct KeyFormat;

impl PartialSchema for KeyFormat {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(format!(
                "An idempotency key: 1 to {MAX_KEY_LEN} characters, either bare (letters, digits \
                 and {BARE_KEY_PUNCTUATION}) or an RFC 8941 sf-string (\"...\": printable ASCII, \
                 with \\\" and \\\\ as the only escapes). `abc` and `\"abc\"` are the same key. \
                 A UUID v4 per logical operation is recommended."
            )))
            .min_length(Some(1))
            // A quoted key of MAX_KEY_LEN escaped characters, with its two quotes.
            .max_length(Some(2 * MAX_KEY_LEN + 2))
            .pattern(Some(key_pattern()))
            .examples([json!("7e0b5145-1d2c-4f0e-9f2a-8c3d9a1b2c3d")])
            .into()
    }
}

impl ToSchema for KeyFormat {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("IdempotencyKey")
    }
}

/// A lease token: the decimal form of a 64-bit unsigned integer.
pub struct LeaseTokenFormat;

impl PartialSchema for LeaseTokenFormat {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A lease token, as the begin answer gives it: a decimal 64-bit unsigned integer \
                 (0 to 18446744073709551615), as a string so that JavaScript clients keep every digit.",
            ))
            .min_length(Some(1))
            .max_length(Some(u64::MAX.to_string().len()))
            .pattern(Some(decimal_pattern(u64::MAX)))
            .examples([json!("42")])
            .into()
    }
}

impl ToSchema for LeaseTokenFormat {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("LeaseToken")
    }
}

/// A bare key of 1 to [`MAX_KEY_LEN`] sf-token characters, or an sf-string whose content (its
/// escapes counted as one character each) is 1 to [`MAX_KEY_LEN`] characters long.
fn key_pattern() -> String {
    let punctuation: String = BARE_KEY_PUNCTUATION
        .chars()
        .flat_map(|c| match c {
            // The characters with a meaning inside a character class.
            '\\' | ']' | '^' | '-' => vec!['\\', c],
            _ => vec![c],
        })
        .collect();
    // Printable ASCII less `"` (0x22) and `\` (0x5C), or one of those two escaped.
    let quoted = r#"[ !#-\[\]-~]|\\["\\]"#;
    format!("^(?:[A-Za-z0-9{punctuation}]{{1,{MAX_KEY_LEN}}}|\"(?:{quoted}){{1,{MAX_KEY_LEN}}}\")$")
}

/// The decimal numbers from 0 to `max` without leading zeros, as a regular expression:
/// the numbers with fewer digits, then for each digit of `max` its prefix followed by a
/// smaller digit and any digits, then `max` itself. (`parse::<u64>` also takes leading zeros
/// and a `+`; the document describes the form the server hands out.)
fn decimal_pattern(max: u64) -> String {
    let max = max.to_string();
    let width = max.len();
    let mut alternatives = vec!["0".to_owned()];
    if width > 1 {
        alternatives.push(format!("[1-9][0-9]{{0,{}}}", width - 2));
    }
    for (index, digit) in max.bytes().enumerate() {
        let lowest = if index == 0 { b'1' } else { b'0' };
        if digit > lowest {
            let below = match digit - 1 {
                top if top == lowest => char::from(top).to_string(),
                top => format!("[{}-{}]", char::from(lowest), char::from(top)),
            };
            let rest = match width - index - 1 {
                0 => String::new(),
                count => format!("[0-9]{{{count}}}"),
            };
            alternatives.push(format!("{}{below}{rest}", &max[..index]));
        }
    }
    if max != "0" {
        alternatives.push(max);
    }
    format!("^(?:{})$", alternatives.join("|"))
}

#[cfg(test)]
mod tests {
    use idem_core::{IdempotencyKey, KeyPolicy};

    use super::*;

    #[test]
    fn the_bare_key_characters_are_those_the_parser_accepts() {
        for byte in 0..=u8::MAX {
            let documented =
                byte.is_ascii_alphanumeric() || BARE_KEY_PUNCTUATION.as_bytes().contains(&byte);
            // A lone `"` opens a quoted key; it is refused either way.
            let accepted = IdempotencyKey::parse(&[byte], KeyPolicy::Any).is_ok();
            assert_eq!(documented, accepted, "byte {byte:#04x}");
        }
    }

    #[test]
    fn the_quoted_key_characters_are_those_the_parser_accepts() {
        for byte in 0..=u8::MAX {
            let documented = (b' '..=b'~').contains(&byte) && byte != b'"' && byte != b'\\';
            let accepted = IdempotencyKey::parse(&[b'"', byte, b'"'], KeyPolicy::Any).is_ok();
            assert_eq!(documented, accepted, "byte {byte:#04x}");
        }
        for escaped in [b'"', b'\\'] {
            assert!(IdempotencyKey::parse(&[b'"', b'\\', escaped, b'"'], KeyPolicy::Any).is_ok());
        }
    }

    #[test]
    fn the_key_length_bounds_are_the_parsers() {
        let longest = "k".repeat(MAX_KEY_LEN);
        assert!(IdempotencyKey::parse(longest.as_bytes(), KeyPolicy::Any).is_ok());
        assert!(IdempotencyKey::parse(format!("{longest}k").as_bytes(), KeyPolicy::Any).is_err());
        let escaped = format!("\"{}\"", "\\\\".repeat(MAX_KEY_LEN));
        assert_eq!(escaped.len(), 2 * MAX_KEY_LEN + 2);
        assert!(IdempotencyKey::parse(escaped.as_bytes(), KeyPolicy::Any).is_ok());
        assert!(key_pattern().contains(&format!("{{1,{MAX_KEY_LEN}}}")));
    }

    #[test]
    fn the_decimal_pattern_lists_every_number_up_to_its_maximum() {
        assert_eq!(
            decimal_pattern(205),
            "^(?:0|[1-9][0-9]{0,1}|1[0-9]{2}|20[0-4]|205)$"
        );
        assert_eq!(decimal_pattern(7), "^(?:0|[1-6]|7)$");
        assert_eq!(decimal_pattern(0), "^(?:0)$");
        // Cross-checked with Python's `re` against every number within 100 000 of u64::MAX
        // and 200 000 random 20-digit ones.
        assert_eq!(
            decimal_pattern(u64::MAX),
            concat!(
                "^(?:0|[1-9][0-9]{0,18}|1[0-7][0-9]{18}|18[0-3][0-9]{17}|184[0-3][0-9]{16}",
                "|1844[0-5][0-9]{15}|18446[0-6][0-9]{14}|184467[0-3][0-9]{13}",
                "|1844674[0-3][0-9]{12}|184467440[0-6][0-9]{10}|1844674407[0-2][0-9]{9}",
                "|18446744073[0-6][0-9]{8}|1844674407370[0-8][0-9]{6}|18446744073709[0-4][0-9]{5}",
                "|184467440737095[0-4][0-9]{4}|18446744073709550[0-9]{3}",
                "|18446744073709551[0-5][0-9]{2}|1844674407370955160[0-9]{1}",
                "|1844674407370955161[0-4]|18446744073709551615)$"
            )
        );
    }
}
