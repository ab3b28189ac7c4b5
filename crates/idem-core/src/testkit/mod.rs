//! The store conformance suite: the executable definition of the [`Store`](crate::Store)
//! trait. Every backend runs all of it with one line in its tests:
//!
//! ```ignore
//! idem_core::store_conformance_tests!(|clock| async move {
//!     MyStore::builder("...").clock(clock).connect().await.unwrap()
//! });
//! ```
//!
//! The closure is called once per test with a fresh [`ManualClock`] started at the real
//! current time, and must yield a store that reads that clock for every transition (its "now"
//! is the clock's, to the millisecond). The checks move time only by
//! [`ManualClock::advance`], never by sleeping, so they are deterministic and fast.
//!
//! Tests use random record ids, so they can share one database with other tests and with
//! each other while they run in parallel. Every record a check creates lives at least a
//! minute past the real time the check started, except the few that the sweep check creates
//! to expire within milliseconds: a sweep at that check's clock reaches only records whose
//! expiry is about the real now, so it never deletes a record another check still uses.

pub mod checks;
pub mod faults;
pub mod instances;
mod model;

use std::future::Future;

pub use model::check_against_reference_model;

#[doc(hidden)]
pub use proptest as __proptest;

use crate::{Clock, ManualClock, SystemClock};

/// Runs a conformance check on a multi-threaded runtime, so that concurrency checks race for
/// real.
///
/// # Panics
/// The runtime cannot be built.
pub fn run<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance suite")
        .block_on(future)
}

/// A fresh manual clock, stopped at the real current time.
#[must_use]
pub fn fresh_clock() -> ManualClock {
    ManualClock::new(SystemClock.now())
}

/// Runs one check: makes a fresh clock, a store on it with `make_store`, and hands both to
/// `check`, on the runtime of [`run`]. What `store_conformance_tests!` expands to.
///
/// # Panics
/// The check fails.
pub fn run_check<S, Make, Made, Check, Checked>(make_store: Make, check: Check)
where
    Make: FnOnce(ManualClock) -> Made,
    Made: Future<Output = S>,
    Check: FnOnce(S, ManualClock) -> Checked,
    Checked: Future<Output = ()>,
{
    run(async move {
        let clock = fresh_clock();
        let store = make_store(clock.clone()).await;
        check(store, clock).await;
    });
}

/// Runs [`check_against_reference_model`] on a store made by `make_store` on a fresh clock.
///
/// # Panics
/// The store disagrees with the model.
pub fn run_model_check<S, Make, Made>(make_store: Make)
where
    S: crate::Store,
    Make: FnOnce(ManualClock) -> Made,
    Made: Future<Output = S>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the model check");
    let clock = fresh_clock();
    let store = runtime.block_on(make_store(clock.clone()));
    check_against_reference_model(&runtime, store, &clock);
}

/// Generates one `#[test]` per conformance check (see [`checks`]) plus the property test
/// against the reference model, each on a store made by the given closure from a fresh
/// [`ManualClock`](crate::ManualClock):
///
/// ```ignore
/// idem_core::store_conformance_tests!(|clock| async move { MemoryStore::with_clock(clock) });
/// ```
///
/// A store whose backend deletes expired records by itself (Redis key expiry) and whose
/// `sweep_expired` therefore deletes nothing passes `native_expiry` after the closure: its
/// sweep check then verifies that expired records behave as absent, not that the sweep
/// deleted them.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make_store:expr, native_expiry $(,)?) => {
        $crate::__store_conformance_tests!($make_store; expired_records_behave_as_absent_without_a_sweep);
        $crate::__store_conformance_common!($make_store);
    };
    ($make_store:expr $(,)?) => {
        $crate::__store_conformance_tests!($make_store; sweep_deletes_only_expired_records);
        $crate::__store_conformance_common!($make_store);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_common {
    ($make_store:expr) => {
        $crate::__store_conformance_tests!($make_store;
            absent_key_is_acquired,
            exactly_one_of_many_concurrent_begins_acquires,
            exactly_one_owner_per_key_under_concurrency_on_many_keys,
            completed_key_replays_the_stored_response,
            response_without_body_is_replayed_as_such,
            different_fingerprint_is_a_mismatch,
            mismatch_wins_over_a_lapsed_lease,
            duplicate_of_in_flight_request_is_told_the_lease_left,
            release_frees_the_key,
            lapsed_lease_answers_outcome_unknown_and_changes_nothing,
            lapsed_lease_not_taken_over_can_still_complete,
            lapsed_lease_is_taken_over_and_the_old_owner_is_fenced,
            renew_extends_a_live_lease,
            owner_can_renew_a_lapsed_lease_not_taken_over,
            renew_with_a_stale_or_foreign_token_changes_nothing,
            lapsed_lease_is_kept_a_ttl_after_the_lapse,
            begin_run_again_with_its_own_token_is_acquired,
            completion_is_final,
            expired_record_behaves_as_absent,
            status_reports_each_state,
            snapshot_reads_the_store_clock,
            records_are_isolated_by_id,
            watched_finishes_are_announced,
        );
        #[test]
        fn matches_reference_model() {
            $crate::testkit::run_model_check($make_store);
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
                $crate::testkit::run_check($make_store, $crate::testkit::checks::$check);
            }
        )*
    };
}
