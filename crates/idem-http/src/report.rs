//! What the layer did with one request, for an access log: a [`RequestOutcome`] in the
//! response's extensions, read by whatever wraps the layer (`idem proxy`'s access log).

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use http::Response;
use idem_core::{RecordId, store_time_of};

/// What the layer did with a request, put in its response's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestOutcome {
    /// The `outcome` label of `idem_requests_total` (`executed`, `replayed`, `in_flight`,
    /// `mismatch`, `key_missing`, ...).
    pub outcome: &'static str,
    /// The record the request's key names (a hash of scope and key: never the key), once the
    /// request was identified.
    pub record: Option<RecordId>,
    /// How long the store took for it (begin, completion, waits' reads).
    pub store_time: Duration,
}

/// What is known so far of the request being handled.
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    outcome: Option<&'static str>,
    record: Option<RecordId>,
}

tokio::task_local! {
    static REPORT: Cell<Report>;
}

/// Notes the request's outcome (see `Disposition::record`).
pub(crate) fn outcome(label: &'static str) {
    // Outside `reported` (a completion finished in the background) nobody reads it.
    let _ = REPORT.try_with(|report| {
        report.set(Report {
            outcome: Some(label),
            ..report.get()
        });
    });
}

/// Notes the record the request names.
pub(crate) fn record(id: RecordId) {
    let _ = REPORT.try_with(|report| {
        report.set(Report {
            record: Some(id),
            ..report.get()
        });
    });
}

/// Runs the layer's handling of one request and puts what it did, if it noted an outcome, in
/// the response's extensions.
pub(crate) async fn reported<B, E>(
    handling: impl Future<Output = Result<Response<B>, E>>,
) -> Result<Response<B>, E> {
    let ((result, report), store_time) =
        store_time_of(REPORT.scope(Cell::new(Report::default()), async {
            let result = handling.await;
            (result, REPORT.with(Cell::get))
        }))
        .await;
    result.map(|mut response| {
        if let Some(outcome) = report.outcome {
            response.extensions_mut().insert(RequestOutcome {
                outcome,
                record: report.record,
                store_time,
            });
        }
        response
    })
}
