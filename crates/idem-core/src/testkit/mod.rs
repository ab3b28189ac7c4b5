//! The store conformance suite: the executable definition of the [`Store`](crate::Store)
//! trait. Every backend runs all of it with one line in its tests:
//!
//! ```ignore
//! idem_core::store_conformance_tests!(async { MyStore::connect("...").await.unwrap() });
//! ```
//!
//! The expression is evaluated once per test and must yield a store. Tests use random record
//! ids and timestamps near the real clock, so they can share one database with other tests
//! and with each other while they run in parallel.

pub mod checks;
pub mod faults;
mod model;

pub use model::check_against_reference_model;

#[doc(hidden)]
pub use proptest as __proptest;

/// Runs a conformance check on a multi-threaded runtime, so that concurrency checks race for
/// real.
pub fn run<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance suite")
        .block_on(future)
}

/// Generates one `#[test]` per conformance check (see [`checks`]) plus the property test
/// against the reference model, each on a store made by the given async expression.
///
/// A store whose backend deletes expired records by itself (Redis key expiry) and whose
/// `sweep_expired` therefore deletes nothing passes `native_expiry` after the expression:
/// its sweep check then verifies that expired records behave as absent, not that the sweep
/// deleted them.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make_store:expr, native_expiry) => {
        $crate::__store_conformance_tests!($make_store; expired_records_behave_as_absent_without_a_sweep);
        $crate::store_conformance_tests!(@common $make_store);
    };
    ($make_store:expr) => {
        $crate::__store_conformance_tests!($make_store; sweep_deletes_only_expired_records);
        $crate::store_conformance_tests!(@common $make_store);
    };
    (@common $make_store:expr) => {
        $crate::__store_conformance_tests!($make_store;
            absent_key_is_acquired,
            exactly_one_of_many_concurrent_begins_acquires,
            exactly_one_owner_per_key_under_concurrency_on_many_keys,
            completed_key_replays_the_stored_response,
            response_without_body_is_replayed_as_such,
            different_fingerprint_is_a_mismatch,
            duplicate_of_in_flight_request_is_told_the_lease,
            release_frees_the_key,
            lapsed_lease_is_taken_over_and_the_old_owner_is_fenced,
            lapsed_lease_not_taken_over_can_still_complete,
            completion_is_final,
            expired_record_behaves_as_absent,
            status_reports_each_state,
            records_are_isolated_by_id,
        );
        #[test]
        fn matches_reference_model() {
            let runtime = tokio_runtime_for_model();
            let store = runtime.block_on($make_store);
            $crate::testkit::check_against_reference_model(&runtime, store);
        }
        fn tokio_runtime_for_model() -> $crate::__private::tokio::runtime::Runtime {
            $crate::__private::tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime for the model check")
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_tests {
    ($make_store:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::testkit::run(async {
                    let store = $make_store.await;
                    $crate::testkit::checks::$check(store).await;
                });
            }
        )*
    };
}
