//! `path`: the normal form of a request path.

use std::borrow::Cow;

use idem_http::path::{PathError, normalize};

/// Normalises `data` (when it is UTF-8) as a request path. A normal form starts with `/`, has
/// no empty, `.` or `..` segment, no raw `\`, and only escapes in upper case of characters
/// that are neither unreserved nor ambiguous (`/`, `\`, NUL); it is its own normal form. A
/// refusal says why truthfully.
pub fn path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    match normalize(path) {
        Ok(normal) => {
            if let Cow::Borrowed(same) = normal {
                assert_eq!(same, path, "a borrowed normal form is the path itself");
            }
            check_normal(&normal);
            assert_eq!(
                normalize(&normal).as_deref(),
                Ok(&*normal),
                "normalising {path:?} twice changes it"
            );
        }
        Err(PathError::NotAbsolute) => assert!(!path.starts_with('/'), "{path:?}"),
        Err(PathError::Backslash) => assert!(path.contains('\\'), "{path:?}"),
        Err(PathError::DotSegmentParameter | PathError::EmptySegmentParameter) => {
            assert!(
                path.contains(';'),
                "a parameter error without a ';': {path:?}"
            );
        }
        Err(_) => assert!(
            path.contains('%'),
            "an escape error without a '%': {path:?}"
        ),
    }
}

fn check_normal(normal: &str) {
    assert!(normal.starts_with('/'), "{normal:?} is not absolute");
    assert!(!normal.contains("//"), "{normal:?} has an empty segment");
    assert!(!normal.contains('\\'), "{normal:?} holds a '\\'");
    assert!(
        normal
            .split('/')
            .skip(1)
            .all(|segment| segment != "." && segment != ".."),
        "{normal:?} has a dot segment"
    );
    let bytes = normal.as_bytes();
    for (index, _) in normal.match_indices('%') {
        let digits = bytes.get(index + 1..index + 3).unwrap_or_default();
        assert!(
            digits.len() == 2
                && digits
                    .iter()
                    .all(|digit| digit.is_ascii_digit() || (b'A'..=b'F').contains(digit)),
            "{normal:?}: the escape at {index} is not two upper-case hex digits"
        );
        let decoded = u8::from_str_radix(std::str::from_utf8(digits).unwrap_or("0"), 16)
            .expect("two hex digits");
        assert!(
            !(decoded.is_ascii_alphanumeric() || b"-._~/\\\0".contains(&decoded)),
            "{normal:?}: the escape at {index} is of {:?}, which a normal form never escapes",
            char::from(decoded)
        );
    }
}
