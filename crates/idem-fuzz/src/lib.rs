//! idem's fuzz harnesses: one function per target, taking the fuzzer's bytes and panicking
//! when an invariant of the code under test breaks. `fuzz/` (cargo-fuzz, run by
//! `scripts/fuzz`) drives them for a time budget; this crate's tests replay every input kept
//! under `regressions/<target>/` (crashes found, kept as regression tests) and a bounded,
//! seeded slice of pseudo-random inputs, so the normal test suite runs them too.
//!
//! # Modules
//!
//! | module | target | what it fuzzes |
//! |---|---|---|
//! | `key` | [`key`] | `Idempotency-Key` parsing under each policy |
//! | `canonical_json` | [`canonical_json`] | the fingerprint's canonical JSON mode |
//! | `path` | [`path`] | the normal form of a request path |
//! | `routes` | [`routes`] | the proxy's route rules: compiling them, matching requests |
//! | `config` | [`config`] | the TOML config file, parsed and resolved |
//! | `stores` | [`redis_record`], [`postgres_record`], [`embedded_record`] | each store's decoding of what it keeps |
//! | `input` | | structured values drawn from the fuzzer's bytes |
//!
//! ```
//! // Every target takes any bytes; a panic is a bug in the code it fuzzes.
//! for (name, target) in idem_fuzz::TARGETS {
//!     target(b"/%70ayments//x/..");
//!     assert!(!name.is_empty());
//! }
//! ```

mod canonical_json;
mod config;
mod input;
mod key;
mod path;
mod routes;
mod stores;

pub use canonical_json::canonical_json;
pub use config::config;
pub use key::key;
pub use path::path;
pub use routes::routes;
pub use stores::{embedded_record, postgres_record, redis_record};

/// A fuzz target: any bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name; `fuzz/fuzz_targets/<name>.rs` and `regressions/<name>/` use the same
/// names.
pub const TARGETS: &[(&str, Target)] = &[
    ("key", key),
    ("canonical_json", canonical_json),
    ("path", path),
    ("routes", routes),
    ("config", config),
    ("redis_record", redis_record),
    ("postgres_record", postgres_record),
    ("embedded_record", embedded_record),
];
