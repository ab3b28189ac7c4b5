//! `canonical_json`: see `idem_fuzz::canonical_json` for what it fuzzes and the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idem_fuzz::canonical_json(data));
