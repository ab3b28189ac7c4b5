//! The store conformance suite against a real Redis ([`url`]). It fails, never skips, when
//! the server is unreachable. Redis expires keys itself, hence the native-expiry variant.
//!
//! Each store is built with the suite's manual clock ([`RedisStoreBuilder::clock`]), so the
//! scripts judge leases and expiry by it instead of Redis's `TIME` and the suite moves time by
//! hand; `tests/redis.rs` checks the same transitions on Redis's own clock, in real time.
//!
//! [`RedisStoreBuilder::clock`]: idem_redis::RedisStoreBuilder::clock

use idem_redis::RedisStore;

/// `IDEM_TEST_REDIS_URL`, or the local test server.
fn url() -> String {
    std::env::var("IDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

idem_core::store_conformance_tests!(
    |clock| async move {
        RedisStore::builder()
            .clock(clock)
            .connect(&url())
            .await
            .unwrap_or_else(|error| panic!("Redis at {} must be reachable: {error}", url()))
    },
    native_expiry
);
