//! The live status page of the admin listener (`GET /status`, never on the public one): one
//! self-contained HTML page (no scripts or styles from elsewhere) that polls
//! `GET /status.json` every two seconds and draws, over the minutes it has been open, the
//! request rates by outcome, the hit rate and the store's latency, beside the totals and the
//! store's health.
//!
//! `/status.json` is read from the same Prometheus recorder `/metrics` renders, so the page
//! and the scraper never disagree: the counters as they stand, which the page turns into
//! rates between two polls.

use serde::Serialize;

/// The page: HTML, CSS and JavaScript in one file, embedded at build time.
pub const PAGE: &str = include_str!("status_page.html");

/// What one poll of `/status.json` answers.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Snapshot {
    /// Whether the store answered a read just now.
    pub store_healthy: bool,
    /// What in the store's settings may make it forget records.
    pub store_risks: Vec<String>,
    /// `idem_requests_total` by outcome, since the process started.
    pub requests: std::collections::BTreeMap<String, f64>,
    /// `idem_outcome_unknown_total`.
    pub outcome_unknown: f64,
    /// `idem_executions_in_flight`.
    pub executions_in_flight: f64,
    /// `idem_store_operation_duration_seconds`, every operation together: count and sum.
    pub store_calls: f64,
    /// Seconds spent in store calls in all.
    pub store_seconds: f64,
}

impl Snapshot {
    /// The figures of the page from Prometheus text (what `/metrics` serves).
    pub fn from_prometheus(text: &str) -> Self {
        let mut snapshot = Self::default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            match name {
                "idem_requests_total" => {
                    if let Some(outcome) = label(labels, "outcome") {
                        *snapshot.requests.entry(outcome.to_owned()).or_default() += value;
                    }
                }
                "idem_outcome_unknown_total" => snapshot.outcome_unknown += value,
                "idem_executions_in_flight" => snapshot.executions_in_flight += value,
                "idem_store_operation_duration_seconds_count" => snapshot.store_calls += value,
                "idem_store_operation_duration_seconds_sum" => snapshot.store_seconds += value,
                _ => {}
            }
        }
        snapshot
    }
}

/// The value of label `name` in `a="x",b="y"}` (the exporter's own rendering: values are
/// quoted, and the outcome labels idem writes never hold quotes or commas).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_reads_its_figures_from_the_prometheus_text() {
        let text = "# TYPE idem_requests_total counter\n\
            idem_requests_total{outcome=\"executed\"} 7\n\
            idem_requests_total{outcome=\"replayed\"} 3\n\
            idem_outcome_unknown_total 1\n\
            idem_executions_in_flight 2\n\
            idem_store_operation_duration_seconds_sum{operation=\"begin\"} 0.5\n\
            idem_store_operation_duration_seconds_sum{operation=\"complete\"} 0.25\n\
            idem_store_operation_duration_seconds_count{operation=\"begin\"} 10\n\
            idem_store_operation_duration_seconds_count{operation=\"complete\"} 7\n\
            idem_store_operation_duration_seconds_bucket{operation=\"begin\",le=\"0.1\"} 10\n";
        let snapshot = Snapshot::from_prometheus(text);
        assert_eq!(snapshot.requests["executed"], 7.0);
        assert_eq!(snapshot.requests["replayed"], 3.0);
        assert_eq!(snapshot.outcome_unknown, 1.0);
        assert_eq!(snapshot.executions_in_flight, 2.0);
        assert_eq!(snapshot.store_calls, 17.0);
        assert!((snapshot.store_seconds - 0.75).abs() < 1e-9);
    }

    #[test]
    fn the_page_needs_nothing_from_elsewhere() {
        for outside in ["http://", "https://", "<link", "src="] {
            assert!(!PAGE.contains(outside), "{outside} in the page");
        }
    }
}
