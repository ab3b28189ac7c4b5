//! Operators resolving a stuck key (`idem records`, the admin listener's `/records`), and the
//! store settings idem refuses or names at start, against the real binary on real PostgreSQL
//! and on a Redis server of the test's own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/chaos.rs"]
mod chaos;
mod support;

use std::process::{Command, Output};
use std::time::Duration;

use chaos::{RedisServer, unique};
use serde_json::Value;
use support::{Idem, Upstream, client};

fn postgres_url() -> String {
    std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs `idem records ACTION --store … --key … [extra]` and returns its output.
fn records(action: &str, key: &str, credential: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(["records", action, "--store", &postgres_url(), "--key", key])
        .args(["--credential", credential, "--lease", "1s", "--grace", "1s"])
        .args(extra)
        .output()
        .expect("idem records runs")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "idem records failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("idem records prints JSON")
}

fn proxy(upstream: &Upstream, admin: bool) -> Idem {
    let (store, upstream) = (postgres_url(), upstream.url());
    let mut args = vec!["proxy", "--listen", "127.0.0.1:0", "--store", &store];
    args.extend(["--upstream", &upstream, "--lease", "1s"]);
    if admin {
        args.extend(["--admin-listen", "127.0.0.1:0"]);
    }
    Idem::start(&args)
}

/// Leaves `key` in flight under a dead owner: the proxy is killed -9 while the upstream
/// hangs, and the lease (1 s) lapses.
async fn crash_mid_execution(upstream: &Upstream, key: &str, credential: &str) {
    let dying = proxy(upstream, false);
    let before = upstream.calls("/hang");
    let url = dying.url("/hang");
    let request = client()
        .post(url)
        .header("idempotency-key", key)
        .header("authorization", credential)
        .send();
    let sent = tokio::spawn(request);
    while upstream.calls("/hang") == before {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dying.kill_9();
    assert!(sent.await.unwrap().is_err(), "the client lost its answer");
    // The lease (1 s) lapses, then a whole lease more before an operator may resolve it.
    tokio::time::sleep(Duration::from_millis(2300)).await;
}

async fn problem_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn an_operator_completes_or_releases_a_key_whose_owner_died() {
    let upstream = Upstream::start().await;
    let credential = "Bearer sk_test_operator";
    let (completed, released) = (unique("op-complete"), unique("op-release"));
    crash_mid_execution(&upstream, &completed, credential).await;
    crash_mid_execution(&upstream, &released, credential).await;
    assert_eq!(upstream.calls("/hang"), 2);

    let shown = json_of(&records("show", &completed, credential, &[]));
    assert_eq!(shown["state"], "outcome_unknown", "{shown}");
    let other_caller = json_of(&records("show", &completed, "Bearer someone-else", &[]));
    assert_eq!(
        other_caller["state"], "absent",
        "records are scoped by credential"
    );

    let live = proxy(&upstream, false);
    let retry = |key: &str| {
        client()
            .post(live.url("/hang"))
            .header("idempotency-key", key)
            .header("authorization", credential)
            .send()
    };
    assert_eq!(
        problem_code(retry(&completed).await.unwrap()).await,
        (409, "outcome_unknown".to_owned()),
        "never executed again on its own"
    );

    // The operator checked: the first key's operation happened. Retries replay this answer.
    let resolved = json_of(&records(
        "complete",
        &completed,
        credential,
        &[
            "--status",
            "201",
            "--header",
            "content-type: application/json",
            "--body",
            "{\"id\":\"ch_recovered\"}",
        ],
    ));
    assert_eq!(resolved["state"], "completed", "{resolved}");
    let replay = retry(&completed).await.unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["x-idempotent-replayed"], "true");
    assert_eq!(replay.text().await.unwrap(), "{\"id\":\"ch_recovered\"}");

    // The second key's did not: released, the next retry executes.
    let resolved = json_of(&records("release", &released, credential, &[]));
    assert_eq!(resolved["state"], "absent", "{resolved}");
    assert_eq!(upstream.calls("/hang"), 2, "resolving executes nothing");
    let executes = tokio::time::timeout(Duration::from_millis(500), retry(&released)).await;
    assert!(executes.is_err(), "the upstream hangs again: it was called");
    assert_eq!(upstream.calls("/hang"), 3, "the released key executed");

    // Resolving twice is refused with a reason: the answer is final.
    let again = records("release", &completed, credential, &[]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("completed"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[tokio::test]
async fn a_live_execution_cannot_be_resolved_and_the_admin_listener_shows_it() {
    let upstream = Upstream::start().await;
    let instance = proxy(&upstream, true);
    let admin = instance.admin_url.clone().unwrap();
    let key = unique("op-live");
    let credential = "Bearer sk_test_live";
    let request = client()
        .post(instance.url("/hang"))
        .header("idempotency-key", &key)
        .header("authorization", credential)
        .send();
    let _running = tokio::spawn(request);
    while upstream.calls("/hang") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Two leases later the owner still renews: the key is in flight, not unknown.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let shown: Value = client()
        .get(format!("{admin}/records/{key}"))
        .header("x-idem-credential", credential)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["state"], "in_flight", "{shown}");

    let refused = client()
        .post(format!("{admin}/records/{key}/release"))
        .header("x-idem-credential", credential)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let reason: Value = refused.json().await.unwrap();
    assert!(
        reason["error"]
            .as_str()
            .unwrap()
            .contains("may still be executing"),
        "{reason}"
    );
    let cli = records("release", &key, credential, &[]);
    assert!(!cli.status.success(), "the command line refuses it too");

    // The public listener knows nothing of /records.
    let public = client()
        .get(instance.url(&format!("/records/{key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(upstream.calls(&format!("/records/{key}")), 1);
    drop(public);
}

#[tokio::test]
async fn an_evicting_redis_is_refused_unless_accepted_and_named_in_readyz() {
    assert!(
        RedisServer::available(),
        "redis-server is needed (scripts/test installs it)"
    );
    let redis = RedisServer::start().await;
    let set = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .output()
        .expect("redis-cli runs");
    assert!(set.status.success());
    let store = redis.url();
    let refused = Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--store", &store])
        .args(["--upstream", "http://127.0.0.1:9"])
        .output()
        .expect("idem runs");
    assert!(!refused.status.success(), "refused to start");
    let log = String::from_utf8_lossy(&refused.stderr);
    assert!(
        log.contains("maxmemory-policy") && log.contains("--accept-store-risks"),
        "{log}"
    );

    let accepted = Idem::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &store,
        "--upstream",
        "http://127.0.0.1:9",
        "--admin-listen",
        "127.0.0.1:0",
        "--accept-store-risks",
    ]);
    let ready = client()
        .get(format!("{}/readyz", accepted.admin_url.clone().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body = ready.text().await.unwrap();
    assert!(body.contains("store risk: maxmemory-policy"), "{body}");
}
