//! Who a key belongs to, and the hashed identifier under which a record is stored.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::IdempotencyKey;

/// The principal a key is scoped to: two callers that happen to send the same key never see
/// each other's records.
///
/// The engine treats the scope as opaque bytes; the HTTP layer derives it from the request
/// (by default a hash of the `Authorization` header).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Scope(Vec<u8>);

impl Scope {
    /// The scope shared by every caller that presents no credentials.
    #[must_use]
    pub fn anonymous() -> Self {
        Self(Vec::new())
    }

    /// A scope from any bytes that identify the principal (a user id, a credential hash...).
    #[must_use]
    pub fn new(principal: impl AsRef<[u8]>) -> Self {
        Self(principal.as_ref().to_vec())
    }

    /// A scope from a secret (an `Authorization` header, an API key): only its SHA-256 is
    /// kept, so the secret never reaches a log or a store.
    #[must_use]
    pub fn from_secret(secret: impl AsRef<[u8]>) -> Self {
        Self(Sha256::digest(secret.as_ref()).to_vec())
    }

    /// The principal bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", hex::encode(&self.0))
    }
}

/// The identifier a record is stored under: SHA-256 of the scope and the key.
///
/// Stores only ever see this hash, never the key in clear, so a leaked store does not leak
/// keys that could be replayed, and keys cannot be enumerated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId([u8; 32]);

impl RecordId {
    /// The record of `key` within `scope`.
    #[must_use]
    pub fn new(scope: &Scope, key: &IdempotencyKey) -> Self {
        let mut hasher = Sha256::new();
        // Length-prefix the scope so that no (scope, key) pair can collide with another by
        // moving bytes across the boundary.
        hasher.update((scope.0.len() as u64).to_be_bytes());
        hasher.update(&scope.0);
        hasher.update(key.as_str().as_bytes());
        Self(hasher.finalize().into())
    }

    /// Rebuilds an id from the 32 bytes a store kept.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes of the hash.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, for text-keyed stores and logs.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({})", self.to_hex())
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPolicy;

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::parse(text.as_bytes(), KeyPolicy::Any).unwrap()
    }

    #[test]
    fn same_key_in_two_scopes_is_two_records() {
        let alice = Scope::from_secret("Bearer alice");
        let bob = Scope::from_secret("Bearer bob");
        assert_ne!(
            RecordId::new(&alice, &key("k")),
            RecordId::new(&bob, &key("k"))
        );
        assert_eq!(
            RecordId::new(&alice, &key("k")),
            RecordId::new(&alice, &key("k"))
        );
    }

    #[test]
    fn scope_and_key_boundary_cannot_be_shifted() {
        assert_ne!(
            RecordId::new(&Scope::new("ab"), &key("c")),
            RecordId::new(&Scope::new("a"), &key("bc"))
        );
    }

    #[test]
    fn id_does_not_contain_the_key_in_clear() {
        let id = RecordId::new(&Scope::anonymous(), &key("secret-key"));
        assert!(!id.to_hex().contains(&hex::encode("secret")));
        assert_eq!(RecordId::from_bytes(*id.as_bytes()), id);
    }
}
