//! The admin listener's live status page, in a real browser: Playwright (`playwright-core`
//! from npm, `tests/browser/`) drives headless Chromium (Debian's `chromium`) over CDP; it
//! loads `/status` from a proxy under load, waits for the page's own polls in real time, reads
//! the figures it shows twice and checks that they move, and writes a screenshot for a person
//! to look at (`$CARGO_TARGET_TMPDIR/status-page.png`, its path printed).
//!
//! `scripts/test` installs Chromium, Node.js and the script's package and sets
//! `IDEM_REQUIRE_CHROMIUM=1`, so there a missing piece fails; elsewhere the browser test is
//! skipped with a line saying what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::{Idem, Upstream, client};

/// The browser and the Playwright script, or `None` (with a line) where either is missing
/// and neither is required.
fn browser_and_script() -> Option<(String, PathBuf)> {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(on_path);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let playwright = dir.join("node_modules/playwright-core").is_dir();
    let node = Command::new("node").arg("--version").output().is_ok();
    match browser {
        Some(browser) if playwright && node => Some((browser.display().to_string(), dir)),
        _ => {
            let missing = format!(
                "chromium: {}, node: {node}, tests/browser/node_modules (npm ci): {playwright}",
                browser.is_some()
            );
            assert!(
                std::env::var_os("IDEM_REQUIRE_CHROMIUM").is_none(),
                "the status page's browser test is required (IDEM_REQUIRE_CHROMIUM) but a piece is missing: {missing}"
            );
            eprintln!("the status page's browser test is skipped: {missing}");
            None
        }
    }
}

/// The absolute path of a program on `PATH` (Playwright wants one).
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn number(text: &str) -> f64 {
    let (scale, digits) = match text.strip_suffix('k') {
        Some(digits) => (1e3, digits),
        None => (1.0, text.strip_suffix('M').map_or(text, |digits| digits)),
    };
    digits
        .parse::<f64>()
        .map(|value| value * scale)
        .unwrap_or_else(|_| panic!("{text:?} is not a figure"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_figures_that_move_under_load() {
    let Some((browser, script_dir)) = browser_and_script() else {
        return;
    };
    let upstream = Upstream::start().await;
    let idem = Idem::proxy_on_memory(&upstream.url(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = idem.admin_url.clone().unwrap();
    let public = idem.url("/charges");
    let stop = Arc::new(AtomicBool::new(false));
    // Load: new keys and a retry of each, so there are executions and replays to show.
    let load = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let client = client();
            let mut sent = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let answer = client
                    .post(&public)
                    .header("idempotency-key", format!("status-page-{}", sent / 2))
                    .header("content-type", "application/json")
                    .body("{\"amount\":1}")
                    .send()
                    .await
                    .unwrap();
                assert!(answer.status().is_success());
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let run = {
        let (page, path) = (format!("{admin}/status"), screenshot.clone());
        tokio::task::spawn_blocking(move || {
            // Bounded by coreutils' `timeout`: a browser that hangs fails the test, not the suite.
            Command::new("timeout")
                .args(["90", "node", "status_page.mjs", &browser, &page])
                .arg(&path)
                .current_dir(&script_dir)
                .output()
                .expect("node runs")
        })
        .await
        .unwrap()
    };
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    assert!(
        run.status.success(),
        "the Playwright script failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let readings: Vec<Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON reading"))
        .collect();
    assert_eq!(readings.len(), 2, "{readings:?}");
    for reading in &readings {
        assert_eq!(reading["health"], "store: healthy");
        assert!(
            reading["charts"].as_u64().unwrap() >= 1,
            "charts are drawn: {reading}"
        );
        assert!(
            reading["latency"].as_str().unwrap().ends_with("ms"),
            "{reading}"
        );
        assert!(
            reading["hitRate"].as_str().unwrap().ends_with('%'),
            "{reading}"
        );
    }
    let executed = |reading: &Value| number(reading["executed"].as_str().unwrap());
    assert!(
        executed(&readings[1]) > executed(&readings[0]) && executed(&readings[0]) > 0.0,
        "executions move under load: {readings:?}"
    );
    assert!(number(readings[1]["duplicates"].as_str().unwrap()) > 0.0);
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("status page screenshot: {}", screenshot.display());
}

#[tokio::test]
async fn the_page_and_its_figures_are_on_the_admin_listener_only() {
    let upstream = Upstream::start().await;
    let idem = Idem::proxy_on_memory(&upstream.url(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = idem.admin_url.clone().unwrap();
    let page = client()
        .get(format!("{admin}/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("status.json"));
    let figures: serde_json::Value = client()
        .get(format!("{admin}/status.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(figures["store_healthy"], true);
    let public = client().get(idem.url("/status")).send().await.unwrap();
    assert_eq!(
        upstream.calls("/status"),
        1,
        "the public port forwards /status upstream"
    );
    assert!(public.headers().contains_key("x-upstream"));
}
