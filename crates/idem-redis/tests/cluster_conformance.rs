//! The store conformance suite against a real Redis Cluster: every record's key carries a
//! hash tag, so each Lua script touches one slot. The nodes come from
//! `IDEM_TEST_REDIS_CLUSTER_URLS` (comma-separated; `scripts/test` starts a throwaway
//! three-node cluster on 127.0.0.1:7101-7103 when none answers). It fails, never skips, when
//! the cluster is unreachable. As in `conformance.rs`, the suite's manual clock replaces
//! Redis's.

use idem_redis::RedisStore;

fn urls() -> Vec<String> {
    std::env::var("IDEM_TEST_REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103".to_owned()
        })
        .split(',')
        .map(|url| url.trim().to_owned())
        .collect()
}

idem_core::store_conformance_tests!(
    |clock| async move {
        RedisStore::builder()
            .clock(clock)
            .connect_cluster(&urls())
            .await
            .unwrap_or_else(|error| {
                panic!("Redis Cluster at {:?} must be reachable: {error}", urls())
            })
    },
    native_expiry
);
