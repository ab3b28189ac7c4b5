//! What makes two requests "the same": a SHA-256 over the parts of a request that must match
//! for a retry to be replayed rather than refused as a mismatch.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical_json::{Json, JsonError};

/// A digest of a request's identifying parts: 24 bytes of a SHA-256 over every part, which
/// decides whether two requests are the same, then a 2-byte tag per lane (the method or
/// operation, the target, the identifying headers, the body), so that a mismatch can say which
/// part differed ([`differing`](Self::differing)). It fits the 32 bytes every store keeps, and
/// costs one SHA-256, as a digest without lanes did.
///
/// Build one with [`Fingerprint::builder`]: the same key with a different fingerprint is a
/// mismatch, never a replay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint([u8; 32]);

/// A part of a request that a fingerprint tells apart from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FingerprintPart {
    /// The HTTP method, or the coordination service's operation name.
    Method,
    /// The path and query.
    Target,
    /// The content type and the other identifying headers.
    Headers,
    /// The body (its canonical form, where canonical JSON is on).
    Body,
}

impl FingerprintPart {
    /// Every part, in lane order.
    pub const ALL: [Self; 4] = [Self::Method, Self::Target, Self::Headers, Self::Body];

    /// Its name in error documents: `method`, `path`, `header` or `body`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Target => "path",
            Self::Headers => "header",
            Self::Body => "body",
        }
    }

    const fn lane(self) -> usize {
        match self {
            Self::Method => 0,
            Self::Target => 1,
            Self::Headers => 2,
            Self::Body => 3,
        }
    }
}

/// Where the lane tags start in a [`Fingerprint`]: after the 24 bytes of the SHA-256.
const TAGS: usize = 24;
/// The bytes of one lane's tag.
const TAG: usize = 2;

impl Fingerprint {
    /// Starts a fingerprint; add each identifying part in a fixed order.
    #[must_use]
    pub fn builder() -> FingerprintBuilder {
        FingerprintBuilder {
            hasher: Sha256::new(),
            lanes: [TAG_SEED; 4],
            canonical_json: false,
            filter: JsonFilter::default(),
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

    /// Whether this fingerprint, kept by a version whose fingerprints were a whole SHA-256
    /// (no lane tags), is that of the same request as `current`: the first 24 bytes agree and
    /// the tags do not. A retry that spans the upgrade is then the same request, not a
    /// mismatch. (For a body fingerprinted as canonical JSON the canonical form changed too,
    /// so only raw bodies match across that upgrade.)
    #[must_use]
    pub fn same_request_earlier_layout(&self, current: &Self) -> bool {
        self.0[..TAGS] == current.0[..TAGS] && self.0[TAGS..] != current.0[TAGS..]
    }

    /// The parts in which `other` differs from this fingerprint, in lane order. A diagnosis,
    /// not the decision (the SHA-256 decides): two different parts share a 16-bit tag once in
    /// 65,536 times, and are then not named.
    #[must_use]
    pub fn differing(&self, other: &Self) -> Vec<FingerprintPart> {
        FingerprintPart::ALL
            .into_iter()
            .filter(|part| {
                let tag = TAGS + part.lane() * TAG..TAGS + (part.lane() + 1) * TAG;
                self.0[tag.clone()] != other.0[tag]
            })
            .collect()
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", hex::encode(self.0))
    }
}

/// Which members of a JSON body count, as RFC 6901 JSON pointers (`*` for any member or
/// element at its level): only `include` (when not empty), less `exclude`. For bodies that
/// carry a client timestamp or nonce that changes on every retry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonFilter {
    /// When not empty, only these values count.
    pub include: Vec<String>,
    /// These values never count.
    pub exclude: Vec<String>,
}

impl JsonFilter {
    /// Whether the filter keeps everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    fn apply(&self, document: Json) -> Json {
        let mut kept = if self.include.is_empty() {
            document
        } else {
            document.only(&self.include)
        };
        for pointer in &self.exclude {
            kept.remove(pointer);
        }
        kept
    }
}

/// Accumulates the parts of a fingerprint. Every part is length-prefixed and labelled, so
/// moving bytes from one part to the next changes the digest.
#[derive(Clone)]
pub struct FingerprintBuilder {
    hasher: Sha256,
    /// Each lane's [`tag_hash`] state, for the tags.
    lanes: [u64; 4],
    canonical_json: bool,
    filter: JsonFilter,
}

impl FingerprintBuilder {
    /// Hash JSON bodies in canonical form ([`crate::canonical_json`]: members sorted, no
    /// insignificant whitespace, numbers by exact value), so `{"a":1,"b":2}` and
    /// `{ "b": 2, "a": 1.0 }` are the same request. A body that is not JSON is hashed as raw
    /// bytes.
    #[must_use]
    pub fn canonical_json(mut self, enabled: bool) -> Self {
        self.canonical_json = enabled;
        self
    }

    /// Only the parts of a JSON body that `filter` keeps count (canonical JSON only).
    #[must_use]
    pub fn json_filter(mut self, filter: JsonFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Adds a labelled part to the body lane: for identifying bytes that are not an HTTP
    /// request's (a job's arguments, a test's name).
    #[must_use]
    pub fn part(self, label: &str, value: &[u8]) -> Self {
        self.part_of(FingerprintPart::Body, label, value)
    }

    /// Adds a labelled part to the lane of `part`.
    #[must_use]
    pub fn part_of(mut self, part: FingerprintPart, label: &str, value: &[u8]) -> Self {
        let lane = &mut self.lanes[part.lane()];
        for bytes in [label.as_bytes(), value] {
            let length = (bytes.len() as u64).to_be_bytes();
            self.hasher.update(length);
            self.hasher.update(bytes);
            *lane = tag_hash(tag_hash(*lane, &length), bytes);
        }
        self
    }

    /// Adds the HTTP method.
    #[must_use]
    pub fn method(self, method: &str) -> Self {
        self.part_of(FingerprintPart::Method, "method", method.as_bytes())
    }

    /// Adds an operation name (the coordination service's stand-in for a method and path).
    #[must_use]
    pub fn operation(self, name: &str) -> Self {
        self.part_of(FingerprintPart::Method, "operation", name.as_bytes())
    }

    /// Adds the path and query string.
    #[must_use]
    pub fn path_and_query(self, path_and_query: &str) -> Self {
        self.part_of(FingerprintPart::Target, "path", path_and_query.as_bytes())
    }

    /// Adds the content type, or its absence.
    #[must_use]
    pub fn content_type(self, content_type: Option<&[u8]>) -> Self {
        self.part_of(
            FingerprintPart::Headers,
            "content-type",
            content_type.unwrap_or_default(),
        )
    }

    /// Adds a request header that identifies the request (a tenant header, `Host`): its
    /// lower-case name, then its values in order, or its absence.
    #[must_use]
    pub fn header<'a>(self, name: &str, values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut this = self.part_of(
            FingerprintPart::Headers,
            "header",
            name.to_ascii_lowercase().as_bytes(),
        );
        for value in values {
            this = this.part_of(FingerprintPart::Headers, "value", value);
        }
        this
    }

    /// Adds the body, canonicalised first when [`canonical_json`](Self::canonical_json) is
    /// on. A body with no canonical form (not JSON, a member named twice) is hashed raw: use
    /// [`try_body`](Self::try_body) to refuse the ones whose meaning is ambiguous.
    #[must_use]
    pub fn body(self, body: &[u8]) -> Self {
        match self.clone().try_body(body) {
            Ok(done) => done,
            Err(_) => self.part("body", body),
        }
    }

    /// Adds the body as [`body`](Self::body) does, but refuses a JSON body whose meaning is
    /// ambiguous (a member named twice) or that is nested too deep, when canonical JSON is
    /// on. A body that is not JSON at all is hashed raw.
    ///
    /// # Errors
    /// [`JsonError::DuplicateMember`], [`JsonError::TooDeep`] or
    /// [`JsonError::NumberOutOfRange`].
    pub fn try_body(self, body: &[u8]) -> Result<Self, JsonError> {
        if !self.canonical_json {
            return Ok(self.part("body", body));
        }
        match Json::parse(body) {
            Ok(document) => {
                let canonical = self.filter.apply(document).canonical();
                Ok(self.part("json-body", &canonical))
            }
            Err(JsonError::Syntax(_)) => Ok(self.part("body", body)),
            Err(error) => Err(error),
        }
    }

    /// The finished digest.
    #[must_use]
    pub fn finish(self) -> Fingerprint {
        let mut digest: [u8; 32] = self.hasher.finalize().into();
        for (lane, state) in self.lanes.into_iter().enumerate() {
            // The 64-bit state folded to 16 bits, every bit counting.
            let folded = (state ^ (state >> 16) ^ (state >> 32) ^ (state >> 48)) as u16;
            digest[TAGS + lane * TAG..TAGS + (lane + 1) * TAG]
                .copy_from_slice(&folded.to_be_bytes());
        }
        Fingerprint(digest)
    }
}

/// The lane tags' starting state (FNV-1a's offset basis: any odd constant would do).
const TAG_SEED: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a's 64-bit prime.
const TAG_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The lane tags' hash: FNV-1a's multiply, over 8-byte little-endian words (the last one
/// padded with zeros) and rotated so high bits reach the low ones, at a word per step rather
/// than a byte. The tags need a hash that is stable across builds and releases (stores keep
/// fingerprints for days) and cheap, not a strong one: the SHA-256 beside them decides.
/// Written out because it is a few lines, and `std`'s hashers may change between releases.
fn tag_hash(state: u64, bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(state, |state, chunk| {
        let mut word = [0; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        (state ^ u64::from_le_bytes(word))
            .wrapping_mul(TAG_PRIME)
            .rotate_left(29)
    })
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
    /// prefixed by its length as a big-endian u64, its first 24 bytes; then per lane (method,
    /// path, header, body) the same pieces through `tag_hash`, folded to 16 bits.
    #[test]
    fn a_request_hashes_to_the_same_digest_in_every_process_and_build() {
        assert_eq!(
            hex::encode(request(false, "{}").as_bytes()),
            "968bec39f63afd1000e296735fdf4d4ea2ed1546fdda9b10cc7909e2361fbedf"
        );
    }

    #[test]
    fn a_mismatch_names_the_parts_that_differ() {
        let base = request(false, "{}");
        assert!(base.differing(&base).is_empty());
        assert_eq!(
            base.differing(&request(false, "{ }")),
            [FingerprintPart::Body]
        );
        let elsewhere = Fingerprint::builder()
            .method("PUT")
            .path_and_query("/charges?x=2")
            .content_type(Some(b"application/json"))
            .body(b"{}")
            .finish();
        assert_eq!(
            base.differing(&elsewhere),
            [FingerprintPart::Method, FingerprintPart::Target]
        );
        let tenant =
            |value: &'static [u8]| Fingerprint::builder().header("X-Tenant", [value]).finish();
        assert_eq!(
            tenant(b"a").differing(&tenant(b"b")),
            [FingerprintPart::Headers]
        );
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
        let one = Fingerprint::builder().part("a", b"bc").finish();
        let other = Fingerprint::builder().part("ab", b"c").finish();
        assert_ne!(one, other);
    }

    #[test]
    fn canonical_json_ignores_key_order_whitespace_and_number_spelling() {
        assert_eq!(
            request(true, r#"{"a":1,"b":[1,2]}"#),
            request(true, "{ \"b\": [1.0, 2e0],\n \"a\": 1 }")
        );
        assert_ne!(request(true, r#"{"a":1}"#), request(true, r#"{"a":2}"#));
        assert_ne!(
            request(true, r#"{"amount":123456789012345678901234}"#),
            request(true, r#"{"amount":123456789012345678901235}"#),
            "numbers are compared exactly, never through f64"
        );
        assert_ne!(
            request(false, r#"{"a":1,"b":2}"#),
            request(false, r#"{"b":2,"a":1}"#)
        );
    }

    #[test]
    fn a_duplicate_member_is_refused_not_guessed() {
        let builder = Fingerprint::builder().canonical_json(true);
        assert!(matches!(
            builder.clone().try_body(br#"{"amount":1,"amount":2}"#),
            Err(JsonError::DuplicateMember { .. })
        ));
        assert!(builder.clone().try_body(b"not json").is_ok());
        assert!(
            Fingerprint::builder().try_body(br#"{"a":1,"a":2}"#).is_ok(),
            "raw mode hashes bytes"
        );
    }

    #[test]
    fn json_filters_ignore_what_changes_on_every_retry() {
        let filter = JsonFilter {
            include: Vec::new(),
            exclude: vec!["/sent_at".into(), "/items/*/nonce".into()],
        };
        let hash = |body: &str| {
            Fingerprint::builder()
                .canonical_json(true)
                .json_filter(filter.clone())
                .body(body.as_bytes())
                .finish()
        };
        assert_eq!(
            hash(r#"{"amount":5,"sent_at":1,"items":[{"id":1,"nonce":"a"}]}"#),
            hash(r#"{"amount":5,"sent_at":2,"items":[{"id":1,"nonce":"b"}]}"#)
        );
        assert_ne!(
            hash(r#"{"amount":5,"sent_at":1}"#),
            hash(r#"{"amount":6,"sent_at":1}"#)
        );
    }

    #[test]
    fn canonical_json_falls_back_to_raw_bytes() {
        // Not JSON: hashed as the raw body, exactly as with canonical JSON off...
        assert_eq!(request(true, "not json"), request(false, "not json"));
        // ...so every byte counts, whitespace included.
        assert_ne!(request(true, "not json"), request(true, "not  json"));
    }
}
