//! The canonical form of a JSON document, so that two bodies that mean the same thing are the
//! same request and two that do not never are.
//!
//! The structure follows RFC 8785 (JSON Canonicalization Scheme): no insignificant
//! whitespace, object members sorted by the UTF-16 code units of their names, strings written
//! with the fewest escapes. Numbers depart from JCS on purpose: JCS writes them as IEEE
//! doubles, which would make `123456789012345678901234` and `123456789012345678901235` one
//! number. Here a number is its exact decimal value: `1`, `1.0` and `1e0` are one number,
//! and no two different values ever are.
//!
//! A document with a member name twice is refused: parsers disagree on which one counts (the
//! first, the last, an error), so the fingerprint could not say what the request means.
//!
//! Written by hand because no crate does this: `serde_json` reads numbers as `f64` (or keeps
//! literals only with a crate-wide feature that changes how every other number in the build is
//! read) and silently keeps the last duplicate member; the JCS crates canonicalise through
//! `f64`. One pass, with the same depth limit as `serde_json`, so a hostile body costs time in
//! proportion to its size.

use std::cmp::Ordering;

/// Nesting deeper than this is refused: as `serde_json`'s own recursion limit.
pub const MAX_DEPTH: usize = 128;

/// Why a body has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// Not JSON (RFC 8259), or not UTF-8, at this byte offset.
    #[error("not JSON at byte {0}")]
    Syntax(usize),
    /// An object names a member twice; the JSON pointer of the object.
    #[error("the member {member:?} appears twice in the object at {pointer:?}")]
    DuplicateMember {
        /// The JSON pointer of the object (`""` for the document).
        pointer: String,
        /// The repeated name.
        member: String,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A number whose exponent is beyond ±[`MAX_EXPONENT`]: no API means such a number, and
    /// its exact value could not be written without arithmetic that saturates.
    #[error("a number's exponent is beyond ±{MAX_EXPONENT}")]
    NumberOutOfRange,
}

/// The largest exponent magnitude a number may have (`1e999999999` is accepted, not
/// `1e1000000000`). With it, the arithmetic on a body's digits never saturates.
pub const MAX_EXPONENT: i64 = 999_999_999;

/// A parsed document: numbers kept as their exact canonical decimal text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Json {
    /// An array element a JSON-pointer filter left out. It keeps its place, so the elements
    /// after it keep their indexes (`[A,B,C]` less `/0` and `/1` is `[-,-,C]`, never `[C]`
    /// nor `[B]`), and is written `-`, which no parsed document contains.
    Omitted,
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, in its canonical form.
    Number(String),
    /// A string, decoded.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, members sorted by the UTF-16 code units of their names, no name twice.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses `bytes` as one JSON document.
    ///
    /// # Errors
    /// Not JSON, a member named twice, or nested too deep.
    pub fn parse(bytes: &[u8]) -> Result<Self, JsonError> {
        let text =
            std::str::from_utf8(bytes).map_err(|error| JsonError::Syntax(error.valid_up_to()))?;
        let mut parser = Parser {
            text: text.as_bytes(),
            source: text,
            at: 0,
            pointer: Vec::new(),
        };
        parser.skip_whitespace();
        let value = parser.value(0)?;
        parser.skip_whitespace();
        if parser.at != parser.text.len() {
            return Err(JsonError::Syntax(parser.at));
        }
        Ok(value)
    }

    /// The canonical text of this document.
    #[must_use]
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    /// Removes the value at `pointer` (RFC 6901), if there is one; `*` stands for every
    /// member or element at its level.
    pub fn remove(&mut self, pointer: &str) {
        let tokens = pointer_tokens(pointer);
        if !tokens.is_empty() {
            self.remove_tokens(&tokens);
        }
    }

    /// Keeps only the values at `pointers` (RFC 6901, `*` for any member or element), and the
    /// objects and arrays that lead to them; an empty list keeps everything.
    #[must_use]
    pub fn only(&self, pointers: &[String]) -> Self {
        if pointers.is_empty() {
            return self.clone();
        }
        let paths: Vec<Vec<String>> = pointers.iter().map(|p| pointer_tokens(p)).collect();
        if paths.iter().any(Vec::is_empty) {
            return self.clone();
        }
        self.keep(&paths).unwrap_or(Self::Null)
    }

    fn keep(&self, paths: &[Vec<String>]) -> Option<Self> {
        if paths.iter().any(Vec::is_empty) {
            return Some(self.clone());
        }
        let below = |name: &str| -> Vec<Vec<String>> {
            paths
                .iter()
                .filter(|path| path[0] == "*" || path[0] == name)
                .map(|path| path[1..].to_vec())
                .collect()
        };
        match self {
            Self::Object(members) => {
                let kept: Vec<(String, Self)> = members
                    .iter()
                    .filter_map(|(name, value)| {
                        let paths = below(name);
                        (!paths.is_empty())
                            .then(|| value.keep(&paths).map(|kept| (name.clone(), kept)))
                            .flatten()
                    })
                    .collect();
                (!kept.is_empty()).then_some(Self::Object(kept))
            }
            Self::Array(items) => {
                // Elements keep their indexes: one with nothing kept stays as `Omitted`, so
                // `[{"id":1},{}]` and `[{},{"id":1}]` stay apart.
                let kept: Vec<Self> = items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| {
                        let paths = below(&index.to_string());
                        (!paths.is_empty())
                            .then(|| item.keep(&paths))
                            .flatten()
                            .unwrap_or(Self::Omitted)
                    })
                    .collect();
                kept.iter()
                    .any(|item| *item != Self::Omitted)
                    .then_some(Self::Array(kept))
            }
            _ => None,
        }
    }

    fn remove_tokens(&mut self, tokens: &[String]) {
        let (first, rest) = (&tokens[0], &tokens[1..]);
        match self {
            Self::Object(members) => {
                if rest.is_empty() {
                    members.retain(|(name, _)| first != "*" && name != first);
                } else {
                    for (name, value) in members.iter_mut() {
                        if first == "*" || name == first {
                            value.remove_tokens(rest);
                        }
                    }
                }
            }
            Self::Array(items) => {
                if rest.is_empty() {
                    // Left in place as `Omitted`: removing would move the elements after
                    // it to other indexes, where later pointers would find them.
                    for (index, item) in items.iter_mut().enumerate() {
                        if first == "*" || *first == index.to_string() {
                            *item = Self::Omitted;
                        }
                    }
                } else {
                    for (index, item) in items.iter_mut().enumerate() {
                        if first == "*" || *first == index.to_string() {
                            item.remove_tokens(rest);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Omitted => out.push(b'-'),
            Self::Null => out.extend_from_slice(b"null"),
            Self::Bool(true) => out.extend_from_slice(b"true"),
            Self::Bool(false) => out.extend_from_slice(b"false"),
            Self::Number(text) => out.extend_from_slice(text.as_bytes()),
            Self::String(text) => write_string(text, out),
            Self::Array(items) => {
                out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Self::Object(members) => {
                out.push(b'{');
                for (index, (name, value)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write_string(name, out);
                    out.push(b':');
                    value.write(out);
                }
                out.push(b'}');
            }
        }
    }
}

/// The reference tokens of an RFC 6901 pointer (`""` is the whole document: no tokens).
fn pointer_tokens(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .strip_prefix('/')
        .unwrap_or(pointer)
        .split('/')
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Whether `pointer` is an RFC 6901 JSON pointer (empty, or starting with `/`, with `~` only
/// in `~0` and `~1`).
#[must_use]
pub fn is_pointer(pointer: &str) -> bool {
    (pointer.is_empty() || pointer.starts_with('/'))
        && pointer
            .split('~')
            .skip(1)
            .all(|after| after.starts_with('0') || after.starts_with('1'))
}

/// JCS string form: `"` and `\` escaped, control characters as `\b \t \n \f \r` or `\u00xx`,
/// everything else as itself.
fn write_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for character in text.chars() {
        match character {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            control if u32::from(control) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", u32::from(control)).as_bytes());
            }
            other => {
                let mut buffer = [0; 4];
                out.extend_from_slice(other.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// JCS member order: by the UTF-16 code units of the names.
fn utf16_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

struct Parser<'a> {
    text: &'a [u8],
    source: &'a str,
    at: usize,
    /// The member names and indexes down to the value being parsed, for error messages.
    pointer: Vec<String>,
}

impl<'a> Parser<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.at) {
            self.at += 1;
        }
    }

    fn error(&self) -> JsonError {
        JsonError::Syntax(self.at)
    }

    fn expect(&mut self, literal: &[u8]) -> Result<(), JsonError> {
        if self.text[self.at..].starts_with(literal) {
            self.at += literal.len();
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        match self.text.get(self.at) {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.expect(b"true").map(|()| Json::Bool(true)),
            Some(b'f') => self.expect(b"false").map(|()| Json::Bool(false)),
            Some(b'n') => self.expect(b"null").map(|()| Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Json::Number),
            _ => Err(self.error()),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.at += 1;
        let mut members: Vec<(String, Json)> = Vec::new();
        self.skip_whitespace();
        if self.text.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.text.get(self.at) != Some(&b'"') {
                return Err(self.error());
            }
            let name = self.string()?;
            self.skip_whitespace();
            self.expect(b":")?;
            self.skip_whitespace();
            self.pointer.push(name.clone());
            let value = self.value(depth + 1)?;
            self.pointer.pop();
            members.push((name, value));
            self.skip_whitespace();
            match self.text.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    break;
                }
                _ => return Err(self.error()),
            }
        }
        members.sort_by(|a, b| utf16_order(&a.0, &b.0));
        if let Some(pair) = members.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(JsonError::DuplicateMember {
                pointer: self
                    .pointer
                    .iter()
                    .map(|token| format!("/{}", token.replace('~', "~0").replace('/', "~1")))
                    .collect(),
                member: pair[0].0.clone(),
            });
        }
        Ok(Json::Object(members))
    }

    fn array(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.at += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.text.get(self.at) == Some(&b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_whitespace();
            self.pointer.push(items.len().to_string());
            items.push(self.value(depth + 1)?);
            self.pointer.pop();
            self.skip_whitespace();
            match self.text.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.error()),
            }
        }
    }

    /// A string at `self.at` (on its opening quote), decoded. Lone surrogates are refused, as
    /// I-JSON (RFC 7493) and JCS require.
    fn string(&mut self) -> Result<String, JsonError> {
        self.at += 1;
        let mut out = String::new();
        loop {
            let start = self.at;
            while let Some(&byte) = self.text.get(self.at) {
                if byte == b'"' || byte == b'\\' || byte < 0x20 {
                    break;
                }
                self.at += 1;
            }
            // The input is a `str` and the run stops only at ASCII bytes, so it is whole
            // characters.
            out.push_str(
                self.source
                    .get(start..self.at)
                    .ok_or(JsonError::Syntax(start))?,
            );
            match self.text.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let escaped = match self.text.get(self.at) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.at += 1;
                            let unit = self.hex4()?;
                            let code = match unit {
                                0xD800..=0xDBFF => {
                                    self.expect(b"\\u")?;
                                    let low = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&low) {
                                        return Err(self.error());
                                    }
                                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return Err(self.error()),
                                unit => unit,
                            };
                            out.push(char::from_u32(code).ok_or_else(|| self.error())?);
                            continue;
                        }
                        _ => return Err(self.error()),
                    };
                    self.at += 1;
                    out.push(escaped);
                }
                _ => return Err(self.error()),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .source
            .get(self.at..self.at + 4)
            .filter(|digits| digits.bytes().all(|byte| byte.is_ascii_hexdigit()))
            .ok_or_else(|| self.error())?;
        self.at += 4;
        u32::from_str_radix(digits, 16).map_err(|_| self.error())
    }

    /// A number at `self.at`, as its exact canonical decimal (see [`canonical_number`]).
    fn number(&mut self) -> Result<String, JsonError> {
        let start = self.at;
        let negative = self.text.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let integer = self.digits();
        if integer.is_empty() || (integer.len() > 1 && integer.starts_with('0')) {
            return Err(JsonError::Syntax(start));
        }
        let mut fraction = "";
        if self.text.get(self.at) == Some(&b'.') {
            self.at += 1;
            fraction = self.digits();
            if fraction.is_empty() {
                return Err(self.error());
            }
        }
        let mut exponent: i64 = 0;
        if let Some(b'e' | b'E') = self.text.get(self.at) {
            self.at += 1;
            let exponent_negative = match self.text.get(self.at) {
                Some(b'-') => {
                    self.at += 1;
                    true
                }
                Some(b'+') => {
                    self.at += 1;
                    false
                }
                _ => false,
            };
            let digits = self.digits();
            if digits.is_empty() {
                return Err(self.error());
            }
            let significant = digits.trim_start_matches('0');
            let magnitude = if significant.is_empty() {
                0
            } else {
                significant
                    .parse::<i64>()
                    .ok()
                    .filter(|magnitude| *magnitude <= MAX_EXPONENT)
                    .ok_or(JsonError::NumberOutOfRange)?
            };
            exponent = if exponent_negative {
                -magnitude
            } else {
                magnitude
            };
        }
        Ok(canonical_number(negative, integer, fraction, exponent))
    }

    fn digits(&mut self) -> &'a str {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.text.get(self.at) {
            self.at += 1;
        }
        let source: &'a str = self.source;
        source.get(start..self.at).unwrap_or_default()
    }
}

/// The exact canonical text of `±integer.fraction × 10^exponent`: no leading or trailing
/// zeros, `-0` is `0`, written plainly when that takes at most 21 digits (as JCS writes the
/// integers and short decimals APIs send), else as `d.ddde±n`.
fn canonical_number(negative: bool, integer: &str, fraction: &str, exponent: i64) -> String {
    let digits: String = integer.chars().chain(fraction.chars()).collect();
    let leading = digits.len() - digits.trim_start_matches('0').len();
    let significant = digits[leading..].trim_end_matches('0');
    if significant.is_empty() {
        return "0".to_owned();
    }
    let trailing = digits.len() - leading - significant.len();
    // The value is `significant × 10^scale`.
    let fraction_len = i64::try_from(fraction.len()).unwrap_or(i64::MAX);
    let trailing = i64::try_from(trailing).unwrap_or(i64::MAX);
    let scale = exponent
        .saturating_sub(fraction_len)
        .saturating_add(trailing);
    let length = i64::try_from(significant.len()).unwrap_or(i64::MAX);
    let sign = if negative { "-" } else { "" };
    // Where the decimal point falls, counted from the first significant digit.
    let point = length.saturating_add(scale);
    if (1..=21).contains(&point) && scale >= 0 {
        // An integer of at most 21 digits.
        let zeros = usize::try_from(scale).unwrap_or(0);
        return format!("{sign}{significant}{}", "0".repeat(zeros));
    }
    if (1..=21).contains(&point) {
        let (whole, part) = significant.split_at(usize::try_from(point).unwrap_or(0));
        return format!("{sign}{whole}.{part}");
    }
    if (-5..=0).contains(&point) {
        let zeros = usize::try_from(-point).unwrap_or(0);
        return format!("{sign}0.{}{significant}", "0".repeat(zeros));
    }
    let (first, rest) = significant.split_at(1);
    let exponent = point.saturating_sub(1);
    let exponent_sign = if exponent < 0 { "-" } else { "+" };
    let dot = if rest.is_empty() { "" } else { "." };
    format!(
        "{sign}{first}{dot}{rest}e{exponent_sign}{}",
        exponent.unsigned_abs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> String {
        String::from_utf8(Json::parse(text.as_bytes()).unwrap().canonical()).unwrap()
    }

    #[test]
    fn structure_follows_jcs() {
        assert_eq!(
            canonical(r#" { "b" : [ 1 , true , null ] , "a" : "x" } "#),
            r#"{"a":"x","b":[1,true,null]}"#
        );
        // RFC 8785 §3.2.3: sorted by UTF-16 code units, so U+1F600 (a surrogate pair,
        // 0xD83D…) sorts before U+FB33 (0xFB33).
        assert_eq!(
            canonical("{\"\u{fb33}\":1,\"\u{1f600}\":2}"),
            "{\"\u{1f600}\":2,\"\u{fb33}\":1}"
        );
        assert_eq!(
            canonical(r#""\u0041\/\u00e9\n\u001f\ud83d\ude00""#),
            "\"A/\u{e9}\\n\\u001f\u{1f600}\""
        );
    }

    #[test]
    fn numbers_are_exact_decimal_values() {
        for (sent, normal) in [
            ("0", "0"),
            ("-0", "0"),
            ("0.000", "0"),
            ("1", "1"),
            ("1.0", "1"),
            ("1e0", "1"),
            ("10E-1", "1"),
            ("100", "100"),
            ("1e2", "100"),
            ("1.5", "1.5"),
            ("-1.50", "-1.5"),
            ("0.001", "0.001"),
            ("1e-7", "1e-7"),
            ("123456789012345678901234", "1.23456789012345678901234e+23"),
            ("123456789012345678901", "123456789012345678901"),
            ("1e20", "100000000000000000000"),
            ("1e21", "1e+21"),
            ("1e22", "1e+22"),
            ("12.5e-3", "0.0125"),
            ("1e999999999", "1e+999999999"),
        ] {
            assert_eq!(canonical(sent), normal, "{sent}");
        }
        assert_ne!(
            canonical("123456789012345678901234"),
            canonical("123456789012345678901235"),
            "no f64 round trip"
        );
    }

    #[test]
    fn duplicates_and_malformed_documents_are_refused() {
        assert_eq!(
            Json::parse(br#"{"a":{"b":1,"b":2}}"#).unwrap_err(),
            JsonError::DuplicateMember {
                pointer: "/a".into(),
                member: "b".into()
            }
        );
        assert!(matches!(
            Json::parse(br#"{"a":1,"a":1}"#),
            Err(JsonError::DuplicateMember { .. })
        ));
        for bad in [
            "",
            "{",
            "[1,]",
            "01",
            "1.",
            "-",
            "1e",
            "\"\\ud800\"",
            "\"\\x\"",
            "nul",
            "{} {}",
            "\"a\u{1}\"",
        ] {
            assert!(
                matches!(Json::parse(bad.as_bytes()), Err(JsonError::Syntax(_))),
                "{bad:?}"
            );
        }
        for huge in [
            "1e1000000000",
            "1e-99999999999999999999",
            "[10e9223372036854775807]",
        ] {
            assert_eq!(
                Json::parse(huge.as_bytes()).unwrap_err(),
                JsonError::NumberOutOfRange,
                "{huge}"
            );
        }
        assert_eq!(canonical("1e0000000000000000000002"), "100");
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 2), "]".repeat(MAX_DEPTH + 2));
        assert_eq!(
            Json::parse(deep.as_bytes()).unwrap_err(),
            JsonError::TooDeep
        );
        assert!(
            Json::parse(format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH)).as_bytes())
                .is_ok()
        );
    }

    #[test]
    fn pointers_select_what_counts() {
        let document = Json::parse(br#"{"amount":1,"meta":{"nonce":"x","ts":2},"items":[{"id":1,"at":3},{"id":2,"at":4}]}"#).unwrap();
        let mut without = document.clone();
        without.remove("/meta/nonce");
        without.remove("/items/*/at");
        assert_eq!(
            String::from_utf8(without.canonical()).unwrap(),
            r#"{"amount":1,"items":[{"id":1},{"id":2}],"meta":{"ts":2}}"#
        );
        let only = document.only(&["/amount".into(), "/items/*/id".into()]);
        assert_eq!(
            String::from_utf8(only.canonical()).unwrap(),
            r#"{"amount":1,"items":[{"id":1},{"id":2}]}"#
        );
        assert!(
            is_pointer("/a~1b/~0c") && is_pointer("") && !is_pointer("a") && !is_pointer("/a~2")
        );
    }

    /// Left out elements keep their place: removing them shifted the rest, so two pointers
    /// removed `[A,B,C]`'s first and third element, and `[A,B,C]` and `[X,B,Y]` were one
    /// request; an include closed up the array, so an id's position did not count.
    #[test]
    fn filtered_arrays_keep_every_elements_index() {
        let canonical = |body: &[u8], filter: &dyn Fn(Json) -> Json| {
            String::from_utf8(filter(Json::parse(body).unwrap()).canonical()).unwrap()
        };
        let exclude_first_two = |mut document: Json| {
            document.remove("/items/0");
            document.remove("/items/1");
            document
        };
        assert_eq!(
            canonical(br#"{"items":["A","B","C"]}"#, &exclude_first_two),
            r#"{"items":[-,-,"C"]}"#
        );
        assert_ne!(
            canonical(br#"{"items":["A","B","C"]}"#, &exclude_first_two),
            canonical(br#"{"items":["X","B","Y"]}"#, &exclude_first_two)
        );
        let ids = |document: Json| document.only(&["/items/*/id".into()]);
        assert_ne!(
            canonical(br#"{"items":[{"id":1},{}]}"#, &ids),
            canonical(br#"{"items":[{},{"id":1}]}"#, &ids)
        );
        assert_eq!(
            canonical(br#"{"items":[{"id":1,"at":2},{"at":3}]}"#, &ids),
            r#"{"items":[{"id":1},-]}"#
        );
    }
}
