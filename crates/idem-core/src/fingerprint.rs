//! What makes two requests "the same": a SHA-256 over the parts of a request that must match
//! for a retry to be replayed rather than refused as a mismatch.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest of a request's identifying parts.
///
/// Build one with [`Fingerprint::builder`]: the same key with a different fingerprint is a
/// mismatch, never a replay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Starts a fingerprint; add each identifying part in a fixed order.
    #[must_use]
    pub fn builder() -> FingerprintBuilder {
        FingerprintBuilder {
            hasher: Sha256::new(),
            canonical_json: false,
        }
    }

    /// Rebuilds a fingerprint from the 32 bytes a store kept.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes of the digest.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", hex::encode(self.0))
    }
}

/// Accumulates the parts of a fingerprint. Every part is length-prefixed and labelled, so
/// moving bytes from one part to the next changes the digest.
#[derive(Clone)]
pub struct FingerprintBuilder {
    hasher: Sha256,
    canonical_json: bool,
}

impl FingerprintBuilder {
    /// Hash JSON bodies in canonical form (object keys sorted, no insignificant whitespace),
    /// so `{"a":1,"b":2}` and `{ "b": 2, "a": 1 }` are the same request. A body that is not
    /// valid JSON is hashed as raw bytes.
    #[must_use]
    pub fn canonical_json(mut self, enabled: bool) -> Self {
        self.canonical_json = enabled;
        self
    }

    /// Adds a labelled part: the label keeps parts from standing in for one another.
    #[must_use]
    pub fn part(mut self, label: &str, value: &[u8]) -> Self {
        self.absorb(label.as_bytes());
        self.absorb(value);
        self
    }

    /// Adds the HTTP method (or any operation name).
    #[must_use]
    pub fn method(self, method: &str) -> Self {
        self.part("method", method.as_bytes())
    }

    /// Adds the path and query string.
    #[must_use]
    pub fn path_and_query(self, path_and_query: &str) -> Self {
        self.part("path", path_and_query.as_bytes())
    }

    /// Adds the content type, or its absence.
    #[must_use]
    pub fn content_type(self, content_type: Option<&[u8]>) -> Self {
        self.part("content-type", content_type.unwrap_or_default())
    }

    /// Adds the body, canonicalised first when [`canonical_json`](Self::canonical_json) is on.
    #[must_use]
    pub fn body(self, body: &[u8]) -> Self {
        if self.canonical_json
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        {
            let mut canonical = Vec::with_capacity(body.len());
            write_canonical_json(&value, &mut canonical);
            return self.part("json-body", &canonical);
        }
        self.part("body", body)
    }

    /// The finished digest.
    #[must_use]
    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.hasher.finalize().into())
    }

    fn absorb(&mut self, bytes: &[u8]) {
        self.hasher.update((bytes.len() as u64).to_be_bytes());
        self.hasher.update(bytes);
    }
}

/// Writes `value` with object keys sorted and no whitespace. Done by hand rather than by
/// relying on serde_json's map order, which another crate in the build can switch to insertion
/// order with the `preserve_order` feature.
fn write_canonical_json(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical_json(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &serde_json::Value, out: &mut Vec<u8>) {
    // Serialising a scalar `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(canonical: bool, body: &str) -> Fingerprint {
        Fingerprint::builder()
            .canonical_json(canonical)
            .method("POST")
            .path_and_query("/charges?x=1")
            .content_type(Some(b"application/json"))
            .body(body.as_bytes())
            .finish()
    }

    /// Stores keep fingerprints for a day or more, and a retry may reach another instance or a
    /// newer build: a request must hash to the same digest everywhere, or every retry across
    /// an upgrade would be refused as a mismatch. The digest is pinned, computed apart from
    /// this code from the documented encoding: SHA-256 over each label then each value, each
    /// prefixed by its length as a big-endian u64.
    #[test]
    fn a_request_hashes_to_the_same_digest_in_every_process_and_build() {
        assert_eq!(
            hex::encode(request(false, "{}").as_bytes()),
            "968bec39f63afd1000e296735fdf4d4ea2ed1546fdda9b10a278f223da41a228"
        );
    }

    /// The named parts are shorthands for labelled parts: the same request written either way
    /// is the same fingerprint.
    #[test]
    fn named_parts_and_the_labelled_parts_they_stand_for_match() {
        let labelled = Fingerprint::builder()
            .part("method", b"POST")
            .part("path", b"/charges?x=1")
            .part("content-type", b"application/json")
            .part("body", b"{}")
            .finish();
        assert_eq!(request(false, "{}"), labelled);
        let canonical = Fingerprint::builder()
            .part("method", b"POST")
            .part("path", b"/charges?x=1")
            .part("content-type", b"application/json")
            .part("json-body", br#"{"a":1,"b":2}"#)
            .finish();
        assert_eq!(request(true, "{ \"b\": 2, \"a\": 1 }"), canonical);
    }

    #[test]
    fn any_part_changes_the_fingerprint() {
        let base = request(false, "{}");
        assert_ne!(base, request(false, "{ }"));
        let other_path = Fingerprint::builder()
            .method("POST")
            .path_and_query("/charges?x=2")
            .content_type(Some(b"application/json"))
            .body(b"{}")
            .finish();
        assert_ne!(base, other_path);
        let no_type = Fingerprint::builder()
            .method("POST")
            .path_and_query("/charges?x=1")
            .content_type(None);
        assert_ne!(base, no_type.body(b"{}").finish());
    }

    #[test]
    fn parts_cannot_be_shifted_into_each_other() {
        let a = Fingerprint::builder()
            .method("POS")
            .path_and_query("T/x")
            .finish();
        let b = Fingerprint::builder()
            .method("POST")
            .path_and_query("/x")
            .finish();
        assert_ne!(a, b);
    }

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace() {
        assert_eq!(
            request(true, r#"{"a":1,"b":[1,2]}"#),
            request(true, "{ \"b\": [1, 2],\n \"a\": 1 }")
        );
        assert_ne!(request(true, r#"{"a":1}"#), request(true, r#"{"a":2}"#));
        assert_eq!(
            request(true, r#"{"z":{"y":1,"x":"\u0041"}}"#),
            request(true, r#"{"z":{"x":"A","y":1}}"#)
        );
        assert_ne!(
            request(false, r#"{"a":1,"b":2}"#),
            request(false, r#"{"b":2,"a":1}"#)
        );
    }

    /// Found by fuzzing: a number is hashed as serde_json writes it back, so that spelling
    /// must read back as the same number, or the canonical form of a body and the body
    /// itself would be two requests.
    #[test]
    fn canonical_json_is_its_own_canonical_form_for_numbers_too() {
        for body in [
            "[18446744073701844674407370955161]",
            "[1.8446744073701845e31]",
            "[0.1]",
        ] {
            let value: serde_json::Value = serde_json::from_str(body).unwrap();
            let mut canonical = Vec::new();
            write_canonical_json(&value, &mut canonical);
            let canonical = String::from_utf8(canonical).unwrap();
            assert_eq!(
                request(true, &canonical),
                request(true, body),
                "{body} and its canonical form {canonical}"
            );
        }
    }

    #[test]
    fn canonical_json_falls_back_to_raw_bytes() {
        // Not JSON: hashed as the raw body, exactly as with canonical JSON off...
        assert_eq!(request(true, "not json"), request(false, "not json"));
        // ...so every byte counts, whitespace included.
        assert_ne!(request(true, "not json"), request(true, "not  json"));
    }
}
