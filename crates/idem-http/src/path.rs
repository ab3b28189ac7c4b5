//! One path, one meaning: the normal form of a request path that route rules match and
//! fingerprints hash, so that no spelling of a path (`/%70ayments`, `/a/../payments`,
//! `//payments`) escapes a rule written for `/payments`.
//!
//! The normal form follows RFC 3986: percent-encoded unreserved characters are decoded
//! (§6.2.2.2), the remaining escapes are written in upper case (§6.2.2.1), dot segments are
//! removed (§5.2.4) and runs of `/` are collapsed to one, as nginx's `merge_slashes` does.
//! A path whose meaning differs between servers is refused rather than guessed at: an encoded
//! `/` or `\` (one server splits a segment on it, another does not), a raw `\` (some servers
//! read it as `/`), an encoded NUL, and a `%` that starts no escape.
//!
//! Written by hand: the `url` and `percent-encoding` crates decode every escape or none, and
//! neither refuses the ambiguous ones; the whole rule fits in this module.

use std::borrow::Cow;

/// Why a path has no single meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Not an origin-form path (it must start with `/`).
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hexadecimal digits.
    #[error("the request path holds a '%' that starts no percent-encoding")]
    BadEscape,
    /// `%2F` or `%5C`: a separator that servers disagree on.
    #[error("the request path holds an encoded '/' or '\\', which servers read differently")]
    EncodedSeparator,
    /// A raw `\`, which some servers read as `/`.
    #[error("the request path holds a '\\', which some servers read as '/'")]
    Backslash,
    /// `%00`, which ends the path early in some servers.
    #[error("the request path holds an encoded NUL")]
    EncodedNul,
    /// A `.` or `..` segment with a `;` parameter (`/a/..;/b`): Java servers remove the
    /// parameter, then the dot segment, so it means `/b` there and `/a/..;/b` elsewhere.
    #[error("the request path holds a dot segment with a ';' parameter")]
    DotSegmentParameter,
    /// A segment that is only `;` parameters (`/;x/payments`, `/a/;/../b`): Java servers
    /// remove the parameters, then the empty segment it leaves, so the segment is not there
    /// for them and is one segment elsewhere.
    #[error("the request path holds a segment that is only ';' parameters")]
    EmptySegmentParameter,
}

/// The normal form of `path` (only the path: no query), borrowed when `path` is already
/// normal, which is the common case and costs one scan.
///
/// ```
/// use idem_http::path::normalize;
///
/// assert_eq!(normalize("/%70ayments//x/./y/../z").unwrap(), "/payments/x/z");
/// assert_eq!(normalize("/files/a%2fb").unwrap_err().to_string(),
///     "the request path holds an encoded '/' or '\\', which servers read differently");
/// ```
///
/// # Errors
/// The path is ambiguous: see [`PathError`].
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes())?;
    for segment in decoded.split('/') {
        if let Some((name, _)) = segment.split_once(';') {
            match name {
                "." | ".." => return Err(PathError::DotSegmentParameter),
                "" => return Err(PathError::EmptySegmentParameter),
                _ => {}
            }
        }
    }
    let normal = remove_dot_segments(&decoded);
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

/// No escape, no parameter, no empty segment, no dot segment: nothing to do. One pass over
/// the bytes (every request's path comes here), looking at each segment as it ends.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Where the current segment starts (just after its `/`).
    let mut segment_start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        match byte {
            b'%' | b';' => return false,
            b'/' => {
                if index > 0 && !is_plain_segment(&bytes[segment_start..index]) {
                    return false;
                }
                segment_start = index + 1;
            }
            _ => {}
        }
    }
    // The last segment may be empty (a trailing slash), never a dot segment.
    !matches!(&bytes[segment_start..], b"." | b"..")
}

/// A segment between two slashes that needs no normalising: not empty, not `.` or `..`.
fn is_plain_segment(segment: &[u8]) -> bool {
    !matches!(segment, b"" | b"." | b"..")
}

/// Decodes escapes of unreserved characters, upper-cases the others, refuses the ambiguous.
fn decode_unreserved(path: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut index = 0;
    while index < path.len() {
        let byte = path[index];
        if byte != b'%' {
            out.push(byte);
            index += 1;
            continue;
        }
        let (Some(high), Some(low)) = (
            path.get(index + 1).and_then(|digit| hex(*digit)),
            path.get(index + 2).and_then(|digit| hex(*digit)),
        ) else {
            return Err(PathError::BadEscape);
        };
        let decoded = high << 4 | low;
        match decoded {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0 => return Err(PathError::EncodedNul),
            _ if is_unreserved(decoded) => out.push(decoded),
            _ => out.extend([
                b'%',
                HEX_UPPER[usize::from(high)],
                HEX_UPPER[usize::from(low)],
            ]),
        }
        index += 3;
    }
    // The input was UTF-8 and only ASCII escapes became ASCII characters, so this is UTF-8;
    // the lossy conversion never replaces anything.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §5.2.4 on a path that starts with `/`, with empty segments dropped too. A `..`
/// above the root stays at the root, as the RFC says. A path that ended in a segment
/// (`/a/b`) still does; one that ended in `/`, `.` or `..` ends in `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            segment => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/a;v=1/b",
            "/",
            "/payments",
            "/payments/",
            "/a/b.json",
            "/a/.well-known/x",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(same)) if same == path),
                "{path}"
            );
        }
    }

    #[test]
    fn every_spelling_of_a_path_has_one_normal_form() {
        for (spelling, normal) in [
            ("/%70ayments/x", "/payments/x"),
            ("/%70%61yments/x", "/payments/x"),
            ("//payments///x", "/payments/x"),
            ("/./payments/x", "/payments/x"),
            ("/other/../payments/x", "/payments/x"),
            ("/../../payments/x", "/payments/x"),
            ("/%2e%2E/payments/x", "/payments/x"),
            ("/payments/%2e/x", "/payments/x"),
            ("/payments/x/.", "/payments/x/"),
            ("/payments/x/..", "/payments/"),
            ("/payments/x//", "/payments/x/"),
            ("/a/%7euser", "/a/~user"),
            ("/a/b%3fc", "/a/b%3Fc"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café/../x", "/x"),
            ("/..", "/"),
            ("//", "/"),
        ] {
            assert_eq!(normalize(spelling).unwrap(), normal, "{spelling}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (path, error) in [
            ("payments", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\b", PathError::Backslash),
            ("/a%00", PathError::EncodedNul),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a/..;/b", PathError::DotSegmentParameter),
            ("/a/%2e%2e;x=1/b", PathError::DotSegmentParameter),
            ("/a/.;/b", PathError::DotSegmentParameter),
            ("/;x/payments/p1", PathError::EmptySegmentParameter),
            ("/webhooks/;/../payments", PathError::EmptySegmentParameter),
            ("/items/;", PathError::EmptySegmentParameter),
        ] {
            assert_eq!(normalize(path).unwrap_err(), error, "{path:?}");
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for path in ["/%70ayments//x/../y/", "/a/%7e/%41%2a", "/./.././a//b/.."] {
            let once = normalize(path).unwrap().into_owned();
            assert_eq!(normalize(&once).unwrap(), once, "{path}");
        }
    }
}
