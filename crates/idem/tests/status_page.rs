//! The admin listener's live status page, in a real browser: headless Chromium (Debian's
//! `chromium`) loads `/status` from a proxy under load, runs its script, and the figures it
//! shows move between two loads; a screenshot is written for a person to look at
//! (`$CARGO_TARGET_TMPDIR/status-page.png`, its path printed).
//!
//! `scripts/test` installs Chromium and sets `IDEM_REQUIRE_CHROMIUM=1`, so there a missing
//! browser fails; elsewhere the browser checks are skipped with a line saying so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{Idem, Upstream, client};

/// How much page time the browser lets pass before it reports: a few polls.
const PAGE_TIME_MS: &str = "7000";

fn chromium() -> Option<&'static str> {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(candidate).arg("--version").output().is_ok() {
            return Some(candidate);
        }
    }
    assert!(
        std::env::var_os("IDEM_REQUIRE_CHROMIUM").is_none(),
        "Chromium is required (IDEM_REQUIRE_CHROMIUM) but not installed: apt-get install chromium"
    );
    eprintln!("Chromium is not installed: the status page's browser test is skipped");
    None
}

/// The browser's flags for a page with `PAGE_TIME_MS` of its time to run, then `last`.
fn headless(browser: &str, url: &str, last: &[&str]) -> std::process::Output {
    // Bounded by coreutils' `timeout`: a browser that hangs fails the test, not the suite.
    Command::new("timeout")
        .args(["60", browser])
        .args([
            "--headless",
            "--disable-dev-shm-usage",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,900",
            &format!("--virtual-time-budget={PAGE_TIME_MS}"),
        ])
        .args(last)
        .arg(url)
        .output()
        .expect("the browser runs")
}

/// The text of the element with `id` in a dumped DOM.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let open = start + dom[start..].find('>').unwrap() + 1;
    let close = open + dom[open..].find('<').unwrap();
    &dom[open..close]
}

fn number(text: &str) -> f64 {
    text.trim_end_matches(['k', 'M', ' ', '%'])
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a figure"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_figures_that_move_under_load() {
    let Some(browser) = chromium() else { return };
    let upstream = Upstream::start().await;
    let idem = Idem::proxy_on_memory(&upstream.url(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = idem.admin_url.clone().unwrap();
    let public = idem.url("/charges");
    let stop = Arc::new(AtomicBool::new(false));
    // Load: new keys and retries of them, so there are executions and replays to show.
    let load = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let client = client();
            let mut sent = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("status-page-{}", sent / 2);
                let answer = client
                    .post(&public)
                    .header("idempotency-key", key)
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = format!("{admin}/status");
    let dump = |url: String| async move {
        tokio::task::spawn_blocking(move || headless(browser, &url, &["--dump-dom"]))
            .await
            .unwrap()
    };
    let first = dump(page.clone()).await;
    let first = String::from_utf8_lossy(&first.stdout).into_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = dump(page.clone()).await;
    let second = String::from_utf8_lossy(&second.stdout).into_owned();
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let shot = {
        let (page, path) = (page.clone(), screenshot.clone());
        tokio::task::spawn_blocking(move || {
            headless(
                browser,
                &page,
                &[&format!("--screenshot={}", path.display())],
            )
        })
        .await
        .unwrap()
    };
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    for dom in [&first, &second] {
        assert_eq!(text_of(dom, "store-health"), "store: healthy");
        let polls: u32 = dom
            .split("data-polls=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|polls| polls.parse().ok())
            .expect("the page counts its polls");
        assert!(polls >= 2, "the page polled {polls} times");
        assert!(
            text_of(dom, "hit-rate").ends_with('%'),
            "a hit rate once replays came"
        );
        assert!(text_of(dom, "store-latency").ends_with("ms"));
        assert!(dom.contains("<polyline"), "charts are drawn");
    }
    let (before, after) = (
        number(text_of(&first, "executed-total")),
        number(text_of(&second, "executed-total")),
    );
    assert!(
        after > before && before > 0.0,
        "executions move under load: {before} then {after}"
    );
    assert!(
        number(text_of(&second, "duplicates-prevented")) > 0.0,
        "retries were replayed"
    );
    assert!(shot.status.success(), "{shot:?}");
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
