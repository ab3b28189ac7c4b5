//! The monitoring files under `deploy/` (Prometheus alert rules and their unit tests, the
//! Grafana dashboard) name only metrics the binary exports, and are valid for Prometheus:
//! `promtool check rules` and `promtool test rules` run on the alerts, and every dashboard
//! query is checked as a recording rule. `scripts/test` installs promtool (Debian's
//! `prometheus` package) and sets `IDEM_REQUIRE_PROMTOOL=1`, so there a missing promtool
//! fails; elsewhere those checks are skipped with a line saying so. The systemd unit is
//! checked with `systemd-analyze verify` the same way (`IDEM_REQUIRE_SYSTEMD_ANALYZE`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

/// The `idem_…` names in `text`.
fn idem_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(offset) = text[at..].find("idem_") {
        let start = at + offset;
        let starts_a_name =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |length| start + length);
        if starts_a_name {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// The metric names the code emits: every `"idem_…"` string literal in the crates' sources
/// (a few are not metrics, which only makes the check lenient, never wrong about a name
/// that is absent).
fn exported() -> BTreeSet<String> {
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root().join("crates")).unwrap() {
        let source = krate.unwrap().path().join("src");
        if source.is_dir() {
            rust_files(&source, &mut files);
        }
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for literal in text.split('"').skip(1).step_by(2) {
            if literal.starts_with("idem_") && idem_names(literal).len() == 1 {
                names.insert(literal.to_owned());
            }
        }
    }
    names
}

/// A series name in a query, as the metric that produces it: a histogram's `_bucket`,
/// `_count` and `_sum` are its own.
fn metric_of(series: &str, exported: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_count", "_sum"] {
        if let Some(base) = series.strip_suffix(suffix)
            && exported.contains(base)
        {
            return base.to_owned();
        }
    }
    series.to_owned()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(root().join("deploy/grafana/idem-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn dashboard_queries() -> Vec<String> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().clone())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_query_and_alert_names_a_metric_the_binary_exports() {
    let exported = exported();
    assert!(exported.contains("idem_requests_total"), "{exported:?}");
    let alerts = std::fs::read_to_string(root().join("deploy/prometheus/idem-alerts.yml")).unwrap();
    let tests =
        std::fs::read_to_string(root().join("deploy/prometheus/idem-alerts.test.yml")).unwrap();
    let mut named = BTreeSet::new();
    for text in [alerts, tests, dashboard_queries().join("\n")] {
        named.extend(idem_names(&text));
    }
    let unknown: Vec<_> = named
        .iter()
        .filter(|series| !exported.contains(&metric_of(series, &exported)))
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/ names series no code exports: {unknown:?}"
    );
    assert!(
        named.len() >= 8,
        "the files were read and name the metrics they watch: {named:?}"
    );
}

#[test]
fn the_dashboard_shows_what_an_operator_is_paged_about() {
    let titles: Vec<String> = dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|panel| panel["title"].as_str().unwrap().to_lowercase())
        .collect();
    for wanted in [
        "hit rate",
        "duplicates prevented",
        "unknown outcomes",
        "store latency",
    ] {
        assert!(
            titles.iter().any(|title| title.contains(wanted)),
            "no panel for {wanted}: {titles:?}"
        );
    }
}

/// `tool`, or `None` (with a line) where it is not installed and `required` (a variable
/// `scripts/test` sets) is not set.
fn required_tool(tool: &'static str, required: &str) -> Option<&'static str> {
    let present = Command::new(tool).arg("--version").output().is_ok();
    if !present {
        assert!(
            std::env::var_os(required).is_none(),
            "{tool} is required ({required}) but not installed (scripts/test installs it)"
        );
        eprintln!("{tool} is not installed: its checks of deploy/ are skipped");
        return None;
    }
    Some(tool)
}

/// promtool, or `None` (with a line) where it is not installed and not required.
fn promtool() -> Option<&'static str> {
    required_tool("promtool", "IDEM_REQUIRE_PROMTOOL")
}

fn promtool_succeeds(arguments: &[&str], dir: &Path) {
    let Some(promtool) = promtool() else { return };
    let output = Command::new(promtool)
        .args(arguments)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool {arguments:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_alerts_and_their_unit_tests_pass() {
    let dir = root().join("deploy/prometheus");
    promtool_succeeds(&["check", "rules", "idem-alerts.yml"], &dir);
    promtool_succeeds(&["test", "rules", "idem-alerts.test.yml"], &dir);
}

#[test]
fn promtool_accepts_every_dashboard_query() {
    // Grafana's variables, given values Prometheus can parse.
    let rules: Vec<String> = dashboard_queries()
        .iter()
        .enumerate()
        .map(|(index, query)| {
            let query = query
                .replace("$__rate_interval", "5m")
                .replace("$job", ".*");
            format!(
                "      - record: idem:dashboard_query_{index}\n        expr: {}\n",
                serde_json::to_string(&query).unwrap()
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("queries.yml"),
        format!(
            "groups:\n  - name: dashboard\n    rules:\n{}",
            rules.concat()
        ),
    )
    .unwrap();
    promtool_succeeds(&["check", "rules", "queries.yml"], dir.path());
}

#[test]
fn names_are_read_whole() {
    assert_eq!(
        idem_names("rate(idem_requests_total{x=\"a\"}[5m]) / idem_store_errors_total"),
        BTreeSet::from([
            "idem_requests_total".into(),
            "idem_store_errors_total".into()
        ])
    );
    assert!(idem_names("myidem_x").is_empty());
}

#[test]
fn every_alert_has_its_runbook_in_the_monitoring_guide() {
    let alerts = std::fs::read_to_string(root().join("deploy/prometheus/idem-alerts.yml")).unwrap();
    let guide = std::fs::read_to_string(root().join("docs/guides/monitoring.md")).unwrap();
    let anchors: Vec<String> = guide
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(|heading| heading.trim().to_lowercase())
        .collect();
    let mut alerts_seen = 0;
    for line in alerts.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            alerts_seen += 1;
            let runbook = format!("docs/guides/monitoring.md#{}", name.to_lowercase());
            assert!(alerts.contains(&runbook), "{name} points to {runbook}");
            assert!(
                anchors.contains(&name.to_lowercase()),
                "no section {name} in the monitoring guide"
            );
        }
    }
    assert!(alerts_seen >= 10, "{alerts_seen} alerts read");
}

/// `deploy/systemd/idem.service` is a unit systemd accepts (`systemd-analyze verify`, with
/// `ExecStart` pointed at this build), runs idem as no root user, takes every setting from
/// the config file (the example file passes `idem config check`), keeps the store in its
/// state directory, and ends the drain before systemd's stop timeout.
#[test]
fn the_systemd_unit_is_valid_and_drains_before_it_is_killed() {
    let text = std::fs::read_to_string(root().join("deploy/systemd/idem.service")).unwrap();
    let setting = |name: &str| -> Vec<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        setting("Environment").is_empty(),
        "the unit sets no IDEM_* variable: it would override the config file unseen"
    );
    assert_eq!(setting("DynamicUser"), ["yes"], "never root");
    assert_eq!(setting("StateDirectory"), ["idem"]);
    assert_eq!(setting("WorkingDirectory"), ["/var/lib/idem"]);
    assert!(setting("ExecStart")[0].ends_with("--config /etc/idem/idem.toml"));

    // The shipped config, as the unit runs it: valid, its store in the state directory, its
    // drain over before systemd's SIGKILL.
    let output = Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(["config", "check"])
        .arg(root().join("idem.example.toml"))
        .env_clear()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let effective: toml::Table =
        toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    let store = effective["store"].as_str().unwrap();
    assert!(
        !store.starts_with('/') && !store.contains("://"),
        "a path under WorkingDirectory: {store}"
    );
    let drain = humantime::parse_duration(effective["drain_timeout"].as_str().unwrap()).unwrap();
    let stop = humantime::parse_duration(&setting("TimeoutStopSec")[0]).unwrap();
    assert!(
        drain + std::time::Duration::from_secs(5) <= stop,
        "drain {drain:?} vs stop {stop:?}"
    );

    let Some(analyze) = required_tool("systemd-analyze", "IDEM_REQUIRE_SYSTEMD_ANALYZE") else {
        return;
    };
    let directory = tempfile::tempdir().unwrap();
    let unit = directory.path().join("idem.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/idem", env!("CARGO_BIN_EXE_idem")),
    )
    .unwrap();
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "systemd-analyze verify: {said}");
    // Verify reports unit problems as warnings on stderr without failing: none about ours.
    let ours: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("idem.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {said}");
}
