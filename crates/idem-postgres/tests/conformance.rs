//! The store conformance suite against a real PostgreSQL ([`url`]). It fails, never skips,
//! when the server is unreachable.
//!
//! Each test's store decides leases and expiry by the suite's `ManualClock` (see
//! `PostgresStoreBuilder::clock`), so the suite moves time by hand instead of sleeping; the
//! database's own clock, which production uses, is tested in `tests/postgres.rs`.

use idem_postgres::PostgresStore;

/// Connections per test's pool: the suite runs its tests in parallel, each with its own
/// store, and must not exhaust the server's `max_connections`.
const TEST_POOL_SIZE: u32 = 4;

/// `IDEM_TEST_POSTGRES_URL`, or the local test server.
fn url() -> String {
    std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

idem_core::store_conformance_tests!(|clock| async move {
    PostgresStore::builder(&url())
        .max_connections(TEST_POOL_SIZE)
        .clock(clock)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL at {} must be reachable: {error}", url()))
});
