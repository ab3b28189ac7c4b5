//! `redis_record`: see `idem_fuzz::redis_record` for what it fuzzes and the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idem_fuzz::redis_record(data));
