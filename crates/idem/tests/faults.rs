//! At-most-once under faults, with real processes.
//!
//! Several `idem proxy` processes share one store (PostgreSQL through a relay that is cut and
//! restored; a Redis of the test's own, killed -9 and restarted on its fsynced append-only
//! file; the Redis Cluster when `IDEM_TEST_REDIS_CLUSTER_URLS` names one). One of them runs
//! with its wall clock 30 s ahead (libfaketime). Clients send every operation several times,
//! concurrently and one after another, to random instances, retrying like real clients, while
//! instances are killed -9 and restarted and the store goes away and comes back. The upstream
//! records every execution; a checker over the whole history then proves that no key was
//! executed twice, that every success for a key carried the same body, and that every
//! acknowledged success is still replayed once the store is back.
//!
//! The bounded run here takes a few hundred keys per scenario; `scripts/faults` runs a long
//! one (`IDEM_FAULTS_KEYS`, `IDEM_FAULTS_ROUNDS`). Each scenario prints one `faults:` line
//! of figures (quoted in docs/reliability.md).
//!
//! The focused regression tests at the end pin the failures the fault suite was built for:
//! a slow response body, a completion lost to a store outage, and a skewed clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/chaos.rs"]
mod chaos;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::{Pace, RecordingUpstream, RedisServer, Relay, SlowBodyUpstream, below, jitter, unique};
use serde_json::Value;
use support::{Idem, client};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// The tests of this file run one at a time: each starts several processes and measures
/// leases of a second or two, which a 2-core machine running two of them at once would blur.
static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn postgres_url() -> String {
    std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("IDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(default)
}

// =============================================================================================
// The scenario.

/// How big a run is.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Logical operations (idempotency keys).
    keys: usize,
    /// Sends of each operation (1 original + duplicates).
    sends: usize,
    /// Fault rounds: each kills an instance, takes the store away, kills another instance.
    rounds: usize,
    /// Operations in flight at once.
    concurrency: usize,
    /// `idem proxy` processes.
    instances: usize,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            keys: env_number("IDEM_FAULTS_KEYS", 300).max(20),
            sends: env_number("IDEM_FAULTS_SENDS", 4).max(2),
            rounds: env_number("IDEM_FAULTS_ROUNDS", 1).max(1),
            concurrency: env_number("IDEM_FAULTS_CONCURRENCY", 24).max(1),
            instances: env_number("IDEM_FAULTS_INSTANCES", 4).max(2),
        }
    }
}

/// Every instance's lease: short, so that lapses (a killed owner, a lost store) show within
/// the run, and shorter than the slowest executions, so that renewal is exercised.
const LEASE: &str = "1s";
/// The upstream: 0-300 ms, and 2.5 s (longer than the lease) for 2 % of the executions.
const PACE: Pace = Pace {
    fast_max: Duration::from_millis(300),
    slow: Duration::from_millis(2500),
    slow_per_mille: 20,
};
/// How long a client keeps retrying one send before it gives up.
const GIVE_UP: Duration = Duration::from_secs(6);
/// How long the final check keeps retrying (busy or unavailable answers) per key.
const FINAL_GIVE_UP: Duration = Duration::from_secs(20);
/// How long a store outage lasts.
const OUTAGE: Duration = Duration::from_secs(3);
/// How long after the store returns before an instance is killed again: long enough for the
/// completions it retries in the background to land (their backoff tops out at 2 s). A
/// process killed while holding a completion it could not store yet takes it along; that is
/// the documented limit of answering before the store is back, not what this suite measures.
const SETTLE: Duration = Duration::from_secs(4);

/// The store the instances share, and the fault it can suffer.
enum Backend {
    /// PostgreSQL through a relay: the fault cuts the relay for `OUTAGE`, then restores it.
    Postgres(Relay, String),
    /// A Redis of the test's own: the fault kills it -9 and restarts it on its data.
    Redis(RedisServer),
    /// The shared Redis Cluster: no store fault (other tests use it).
    Cluster(String),
}

impl Backend {
    fn store_url(&self) -> String {
        match self {
            Self::Postgres(relay, url) => relay.url_through(url),
            Self::Redis(server) => server.url(),
            Self::Cluster(url) => url.clone(),
        }
    }

    /// Performs the store fault; returns once the store is back.
    async fn fault(&mut self, log: &FaultLog) {
        match self {
            Self::Postgres(relay, _) => {
                relay.cut();
                log.cuts.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(OUTAGE).await;
                relay.restore().await;
            }
            Self::Redis(server) => {
                server.kill_9();
                log.store_restarts.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(OUTAGE / 3).await;
                server.restart().await;
            }
            Self::Cluster(_) => {}
        }
    }
}

/// One `idem proxy` process, restarted on the same port after each kill.
struct Instance {
    index: usize,
    /// Everything but `--listen`.
    args: Vec<String>,
    env: Vec<(String, String)>,
    skewed: bool,
    log: PathBuf,
    process: Mutex<Option<Idem>>,
    /// Where it listens: chosen by the first start, kept by the restarts.
    port: AtomicU16,
}

impl Instance {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port.load(Ordering::SeqCst))
    }

    fn try_spawn(&self, port: u16) -> Result<Idem, String> {
        let listen = format!("127.0.0.1:{port}");
        let args: Vec<&str> = ["proxy", "--listen", &listen]
            .into_iter()
            .chain(self.args.iter().map(String::as_str))
            .collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        Idem::try_start_with(&args, &env, Stdio::from(log))
    }

    /// Starts the process: on its port if it has one, else (or if that port was taken
    /// meanwhile, by a client connection's ephemeral port) on a new one.
    fn start(&self) {
        let port = self.port.load(Ordering::SeqCst);
        let idem = match self.try_spawn(port) {
            Ok(idem) => idem,
            Err(first) if port != 0 => self.try_spawn(0).unwrap_or_else(|second| {
                panic!(
                    "instance {} did not start on port {port} ({first}) nor on another ({second}); its log:\n{}",
                    self.index,
                    self.log_tail(40)
                )
            }),
            Err(error) => panic!(
                "instance {} did not start ({error}); its log:\n{}",
                self.index,
                self.log_tail(40)
            ),
        };
        let port = idem
            .url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("a port in the announced address");
        self.port.store(port, Ordering::SeqCst);
        *self.process.lock().unwrap() = Some(idem);
    }

    fn admin_url(&self) -> String {
        self.process
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|idem| idem.admin_url.clone())
            .expect("a running instance with an admin port")
    }

    /// kill -9, a short while down (clients get refused), then the same command again.
    async fn kill_and_restart(self: Arc<Self>) {
        let idem = self.process.lock().unwrap().take();
        tokio::task::spawn_blocking(move || idem.map(Idem::kill_9))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200) + jitter(Duration::from_millis(500))).await;
        let this = Arc::clone(&self);
        tokio::task::spawn_blocking(move || this.start())
            .await
            .unwrap();
    }

    /// Whether the process exited on its own (it should never).
    fn crashed(&self) -> Option<String> {
        let mut process = self.process.lock().unwrap();
        let idem = process.as_mut()?;
        match idem.child.try_wait() {
            Ok(Some(status)) => Some(format!("instance {} exited: {status}", self.index)),
            _ => None,
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// What the fault driver did.
#[derive(Default)]
struct FaultLog {
    kills: AtomicUsize,
    cuts: AtomicUsize,
    store_restarts: AtomicUsize,
}

/// One answer (or failure) a client got.
#[derive(Debug, Clone)]
struct Answer {
    key: usize,
    send: usize,
    attempt: u32,
    instance: usize,
    status: Option<u16>,
    code: String,
    replayed: Option<bool>,
    body: String,
    error: Option<String>,
    final_check: bool,
}

impl Answer {
    fn success(&self) -> bool {
        self.status
            .is_some_and(|status| (200..300).contains(&status))
    }

    fn outcome_unknown(&self) -> bool {
        self.status == Some(409) && self.code == "outcome_unknown"
    }

    /// What a real client retries with the same key: a failed connection, an unavailable
    /// store, a request still in progress, any other 5xx except the stored 504.
    fn retryable(&self) -> bool {
        match self.status {
            None => true,
            Some(409) => self.code == "request_in_progress",
            Some(504) if self.code == "upstream_outcome_unknown" => false,
            Some(status) => status >= 500,
        }
    }

    fn describe(&self) -> String {
        match (&self.status, &self.error) {
            (Some(status), _) => format!(
                "{status} {} replayed={:?} via #{} attempt {}: {}",
                self.code, self.replayed, self.instance, self.attempt, self.body
            ),
            (None, error) => format!(
                "no answer via #{} attempt {}: {error:?}",
                self.instance, self.attempt
            ),
        }
    }
}

/// Everything the clients share.
struct Run {
    keys: Vec<String>,
    instances: Vec<Arc<Instance>>,
    client: reqwest::Client,
    history: Mutex<Vec<Answer>>,
}

impl Run {
    fn request_body(&self, key: usize) -> String {
        format!(
            "{{\"order\":\"{}\",\"amount\":{}}}",
            self.keys[key],
            100 + key
        )
    }

    /// One HTTP request for `key` to `instance`.
    async fn attempt(&self, key: usize, send: usize, attempt: u32, instance: usize) -> Answer {
        let mut answer = Answer {
            key,
            send,
            attempt,
            instance,
            status: None,
            code: String::new(),
            replayed: None,
            body: String::new(),
            error: None,
            final_check: false,
        };
        let response = self
            .client
            .post(format!("{}/charges", self.instances[instance].url()))
            .header("idempotency-key", &self.keys[key])
            .header("content-type", "application/json")
            .body(self.request_body(key))
            .send()
            .await;
        match response {
            Err(error) => answer.error = Some(error.to_string()),
            Ok(response) => {
                let status = response.status().as_u16();
                answer.replayed = response
                    .headers()
                    .get("x-idempotent-replayed")
                    .map(|value| value == "true");
                let problem = response
                    .headers()
                    .get("content-type")
                    .is_some_and(|value| value == "application/problem+json");
                match response.text().await {
                    // The connection broke mid-body (the instance was killed): no answer.
                    Err(error) => answer.error = Some(format!("{status}, then {error}")),
                    Ok(body) => {
                        if problem {
                            answer.code = serde_json::from_str::<Value>(&body)
                                .ok()
                                .and_then(|document| document["code"].as_str().map(str::to_owned))
                                .unwrap_or_default();
                        }
                        answer.status = Some(status);
                        answer.body = body;
                    }
                }
            }
        }
        answer
    }

    /// One logical send: retried with the same key, on random instances, until an answer a
    /// client would keep or `give_up`.
    async fn send(&self, key: usize, send: usize, give_up: Duration, final_check: bool) -> Answer {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let instance = below(self.instances.len() as u64) as usize;
            let mut answer = self.attempt(key, send, attempt, instance).await;
            answer.final_check = final_check;
            self.history.lock().unwrap().push(answer.clone());
            if !answer.retryable() || started.elapsed() >= give_up {
                return answer;
            }
            let backoff = Duration::from_millis(50 << attempt.min(3));
            tokio::time::sleep(backoff + jitter(Duration::from_millis(100))).await;
            attempt += 1;
        }
    }

    /// All the sends of one operation: a burst of concurrent ones, then the rest one after
    /// another.
    async fn operate(self: Arc<Self>, key: usize, sends: usize) {
        let burst = 1 + below(sends as u64) as usize;
        let mut concurrent = JoinSet::new();
        for send in 0..burst {
            let run = Arc::clone(&self);
            concurrent.spawn(async move { run.send(key, send, GIVE_UP, false).await });
        }
        while let Some(done) = concurrent.join_next().await {
            done.unwrap();
        }
        for send in burst..sends {
            tokio::time::sleep(jitter(Duration::from_millis(150))).await;
            self.send(key, send, GIVE_UP, false).await;
        }
    }
}

/// Kills, store faults and restarts, triggered by how many operations have been launched, so
/// that every fault happens under load whatever the machine's speed.
async fn drive_faults(
    run: Arc<Run>,
    mut backend: Backend,
    mut launched: watch::Receiver<usize>,
    settings: Settings,
    log: Arc<FaultLog>,
) -> (Backend, Option<Instant>) {
    let usable = settings.keys * 9 / 10;
    let mut restored_at: Option<Instant> = None;
    let mut kill_number = 0;
    for round in 0..settings.rounds {
        let base = usable * round / settings.rounds;
        let span = usable / settings.rounds;
        for (fraction, action) in [(10, "kill"), (40, "store"), (75, "kill")] {
            let threshold = base + span * fraction / 100;
            let _ = launched.wait_for(|count| *count >= threshold).await;
            match action {
                "kill" => {
                    if let Some(restored) = restored_at {
                        tokio::time::sleep_until((restored + SETTLE).into()).await;
                    }
                    // Every instance in turn, the skewed one included.
                    let target = (kill_number * 3 + round) % run.instances.len();
                    kill_number += 1;
                    Arc::clone(&run.instances[target]).kill_and_restart().await;
                    log.kills.fetch_add(1, Ordering::SeqCst);
                }
                _ => {
                    if !matches!(backend, Backend::Cluster(_)) {
                        backend.fault(&log).await;
                        restored_at = Some(Instant::now());
                    }
                }
            }
        }
    }
    (backend, restored_at)
}

/// The figures of one scenario.
#[derive(Debug, Default)]
struct Figures {
    keys: usize,
    sends: usize,
    requests: usize,
    duplicates: usize,
    executions: usize,
    executed_more_than_once: usize,
    slow_executions: usize,
    succeeded_keys: usize,
    replays: usize,
    kills: usize,
    cuts: usize,
    store_restarts: usize,
    outcome_unknown: usize,
    outcome_unknown_keys: usize,
    unknown_then_replayed: usize,
    in_progress: usize,
    unavailable: usize,
    connection_errors: usize,
    gave_up: usize,
    finals: usize,
    violations: Vec<String>,
}

/// The checker: the whole history against what the upstream executed.
fn check(run: &Run, executions: &HashMap<String, Vec<chaos::Executed>>, figures: &mut Figures) {
    let history = run.history.lock().unwrap();
    let mut by_key: BTreeMap<usize, Vec<&Answer>> = BTreeMap::new();
    for answer in history.iter() {
        by_key.entry(answer.key).or_default().push(answer);
        if answer.final_check {
            figures.finals += 1;
            continue;
        }
        figures.requests += 1;
        match (answer.status, answer.code.as_str()) {
            (None, _) => figures.connection_errors += 1,
            (Some(409), "outcome_unknown") => figures.outcome_unknown += 1,
            (Some(409), "request_in_progress") => figures.in_progress += 1,
            (Some(503), _) => figures.unavailable += 1,
            _ => {}
        }
        if answer.success() && answer.replayed == Some(true) {
            figures.replays += 1;
        }
    }
    // A send gave up when its last attempt was still one a client would retry.
    let mut last_of_send: HashMap<(usize, usize), &Answer> = HashMap::new();
    for answer in history.iter().filter(|answer| !answer.final_check) {
        let entry = last_of_send
            .entry((answer.key, answer.send))
            .or_insert(answer);
        if answer.attempt >= entry.attempt {
            *entry = answer;
        }
    }
    figures.gave_up = last_of_send
        .values()
        .filter(|answer| answer.retryable())
        .count();
    figures.executions = executions.values().map(Vec::len).sum();
    figures.slow_executions = executions.values().flatten().filter(|e| e.slow).count();
    figures.executed_more_than_once = executions.values().filter(|e| e.len() > 1).count();

    let mut violations = Vec::new();
    let mut violate = |text: String| violations.push(text);
    for (key, name) in run.keys.iter().enumerate() {
        let executed = executions.get(name).map_or(&[][..], Vec::as_slice);
        // 1. At most once: the property everything else serves.
        if executed.len() > 1 {
            violate(format!(
                "key {name} executed {} times: {:?}",
                executed.len(),
                executed
            ));
        }
        let answers = by_key.get(&key).map_or(&[][..], Vec::as_slice);
        let (finals, load): (Vec<&Answer>, Vec<&Answer>) =
            answers.iter().partition(|answer| answer.final_check);
        let successes: Vec<&&Answer> = load.iter().filter(|answer| answer.success()).collect();
        if !successes.is_empty() {
            figures.succeeded_keys += 1;
        }
        if load.iter().any(|answer| answer.outcome_unknown()) {
            figures.outcome_unknown_keys += 1;
        }
        // 2. Every success for a key is the one execution's answer.
        if let Some(first) = successes.first() {
            match executed.first() {
                None => violate(format!(
                    "key {name} answered {} but never executed",
                    first.describe()
                )),
                Some(execution) => {
                    let mut others: Vec<&str> = successes
                        .iter()
                        .filter(|success| success.body != execution.body)
                        .map(|success| success.body.as_str())
                        .collect();
                    others.sort_unstable();
                    others.dedup();
                    if !others.is_empty() {
                        violate(format!(
                            "key {name}: successes carried {others:?}, its first execution answered {:?}",
                            execution.body
                        ));
                    }
                }
            }
            let fresh = successes
                .iter()
                .filter(|answer| answer.replayed == Some(false))
                .count();
            if fresh > 1 {
                violate(format!(
                    "key {name} answered as freshly executed {fresh} times"
                ));
            }
        }
        if load.iter().any(|answer| answer.outcome_unknown())
            && finals
                .last()
                .is_some_and(|last| last.success() && last.replayed == Some(true))
        {
            figures.unknown_then_replayed += 1;
        }
        // 3. No acknowledged completion lost: the final request replays it.
        if !successes.is_empty() || load.iter().any(|answer| answer.outcome_unknown()) {
            match finals.last() {
                None => violate(format!("key {name}: no final answer recorded")),
                Some(last) if !successes.is_empty() => {
                    let expected = &successes[0].body;
                    if !(last.success() && last.replayed == Some(true) && &last.body == expected) {
                        violate(format!(
                            "key {name}: acknowledged with {expected}, but the final request got {}",
                            last.describe()
                        ));
                    }
                }
                Some(last) => {
                    // Only outcome_unknown before: it stays so, or the owner's completion landed
                    // (its lease lapsed while it lost the store, but it was alive).
                    let replayed = last.success()
                        && last.replayed == Some(true)
                        && executed.first().is_some_and(|e| e.body == last.body);

                    if !(last.outcome_unknown() || replayed) {
                        violate(format!(
                            "key {name}: outcome_unknown before, but the final request got {}",
                            last.describe()
                        ));
                    }
                }
            }
        }
    }
    figures.violations.extend(violations);
}

struct Scenario {
    name: &'static str,
    backend: Backend,
}

async fn run_scenario(scenario: Scenario) {
    let settings = Settings::from_env();
    let started = Instant::now();
    let logs = tempfile::tempdir().unwrap();
    let upstream = RecordingUpstream::start(PACE).await;
    let store = scenario.backend.store_url();

    let skew_env = match chaos::faketime_library() {
        Some(library) => {
            let env = chaos::skewed_env(&library);
            chaos::assert_skew_works(&env);
            Some(env)
        }
        None => {
            chaos::tool_missing(
                "libfaketime (/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1)",
                "the skewed-clock instance (every instance runs on the real clock: clock skew is NOT exercised)",
            );
            None
        }
    };

    let mut instances = Vec::new();
    for index in 0..settings.instances {
        let skewed = index == settings.instances - 1 && skew_env.is_some();
        let args: Vec<String> = [
            "--admin-listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--upstream",
            &upstream.url(),
            "--lease",
            LEASE,
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        let instance = Arc::new(Instance {
            index,
            args,
            env: if skewed {
                skew_env.clone().unwrap()
            } else {
                Vec::new()
            }
            .into_iter()
            .chain([("NO_COLOR".to_owned(), "1".to_owned())])
            .collect(),
            skewed,
            log: logs.path().join(format!("instance-{index}.log")),
            process: Mutex::new(None),
            port: AtomicU16::new(0),
        });
        let starting = Arc::clone(&instance);
        tokio::task::spawn_blocking(move || starting.start())
            .await
            .unwrap();
        instances.push(instance);
    }
    // The skew took effect in the proxy itself: its own Date headers run ahead.
    for instance in &instances {
        let offset = chaos::clock_offset_of(&instance.admin_url()).await;
        let expected = if instance.skewed {
            chaos::SKEW.as_secs() as i64
        } else {
            0
        };
        assert!(
            (offset - expected).abs() <= 2,
            "instance {} runs {offset}s off this process's clock, expected {expected}s",
            instance.index
        );
    }

    let prefix = unique(&format!("faults-{}", scenario.name));
    let run = Arc::new(Run {
        keys: (0..settings.keys)
            .map(|key| format!("{prefix}-{key}"))
            .collect(),
        instances,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        history: Mutex::new(Vec::new()),
    });

    // The load, with the faults driven alongside.
    let log = Arc::new(FaultLog::default());
    let (progress, launched) = watch::channel(0usize);
    let driver = tokio::spawn(drive_faults(
        Arc::clone(&run),
        scenario.backend,
        launched,
        settings,
        Arc::clone(&log),
    ));
    let gate = settings.keys * 9 / 10;
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let mut operations = JoinSet::new();
    let mut driver = Some(driver);
    let mut finished_driver = None;
    for key in 0..settings.keys {
        if key == gate {
            // The last tenth waits for the fault schedule to end: no fault without load.
            finished_driver = Some(driver.take().unwrap().await.unwrap());
        }
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let _ = progress.send(key + 1);
        let run = Arc::clone(&run);
        operations.spawn(async move {
            run.operate(key, settings.sends).await;
            drop(permit);
        });
    }
    while let Some(done) = operations.join_next().await {
        done.unwrap();
    }
    let (backend, restored_at) = match finished_driver {
        Some(finished) => finished,
        None => driver.take().unwrap().await.unwrap(),
    };
    let load_time = started.elapsed();

    // The store is back (and settled): every acknowledged answer must replay.
    if let Some(restored) = restored_at {
        tokio::time::sleep_until((restored + SETTLE).into()).await;
    }
    let wanted: Vec<usize> = {
        let history = run.history.lock().unwrap();
        let mut keys: Vec<usize> = history
            .iter()
            .filter(|answer| answer.success() || answer.outcome_unknown())
            .map(|answer| answer.key)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    };
    let mut finals = JoinSet::new();
    let final_permits = Arc::new(Semaphore::new(32));
    for key in wanted {
        let permit = Arc::clone(&final_permits).acquire_owned().await.unwrap();
        let run = Arc::clone(&run);
        finals.spawn(async move {
            run.send(key, usize::MAX, FINAL_GIVE_UP, true).await;
            drop(permit);
        });
    }
    while let Some(done) = finals.join_next().await {
        done.unwrap();
    }

    let mut figures = Figures {
        keys: settings.keys,
        sends: settings.keys * settings.sends,
        duplicates: settings.keys * (settings.sends - 1),
        kills: log.kills.load(Ordering::SeqCst),
        cuts: log.cuts.load(Ordering::SeqCst),
        store_restarts: log.store_restarts.load(Ordering::SeqCst),
        ..Figures::default()
    };
    check(&run, &upstream.executions(), &mut figures);
    for instance in &run.instances {
        if let Some(crash) = instance.crashed() {
            figures.violations.push(crash);
        }
    }
    let line = format!(
        "faults: scenario={} instances={} skewed={} lease={LEASE} keys={} sends={} duplicates={} requests={} executions={} executed_more_than_once={} slow_executions={} succeeded_keys={} replays={} kills={} cuts={} store_restarts={} outcome_unknown={} outcome_unknown_keys={} unknown_then_replayed={} in_progress={} unavailable={} connection_errors={} gave_up={} finals={} violations={} load={:.1}s total={:.1}s",
        scenario.name,
        settings.instances,
        usize::from(skew_env.is_some()),
        figures.keys,
        figures.sends,
        figures.duplicates,
        figures.requests,
        figures.executions,
        figures.executed_more_than_once,
        figures.slow_executions,
        figures.succeeded_keys,
        figures.replays,
        figures.kills,
        figures.cuts,
        figures.store_restarts,
        figures.outcome_unknown,
        figures.outcome_unknown_keys,
        figures.unknown_then_replayed,
        figures.in_progress,
        figures.unavailable,
        figures.connection_errors,
        figures.gave_up,
        figures.finals,
        figures.violations.len(),
        load_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    println!("{line}");
    if let Ok(path) = std::env::var("IDEM_FAULTS_REPORT") {
        use std::io::Write;
        let mut report = File::options()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(report, "{line}").unwrap();
    }

    if !figures.violations.is_empty() {
        for violation in figures.violations.iter().take(30) {
            eprintln!("VIOLATION: {violation}");
        }
        for instance in &run.instances {
            eprintln!(
                "--- instance {} log (last lines) ---\n{}",
                instance.index,
                instance.log_tail(40)
            );
        }
        panic!(
            "{} violation(s) of at-most-once in scenario {}: {line}",
            figures.violations.len(),
            scenario.name
        );
    }
    // The faults happened as planned, and the run is not vacuous.
    assert_eq!(figures.kills, 2 * settings.rounds, "{line}");
    match &backend {
        Backend::Postgres(..) => assert_eq!(figures.cuts, settings.rounds, "{line}"),
        Backend::Redis(_) => assert_eq!(figures.store_restarts, settings.rounds, "{line}"),
        Backend::Cluster(_) => {}
    }
    assert!(
        figures.succeeded_keys * 2 >= figures.keys,
        "most operations must succeed despite the faults: {line}"
    );
    drop(backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_under_faults_postgres() {
    let _exclusive = EXCLUSIVE.lock().await;
    let url = postgres_url();
    let relay = Relay::start(chaos::target_of(&url, 5432).await).await;
    run_scenario(Scenario {
        name: "postgres",
        backend: Backend::Postgres(relay, url),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_under_faults_redis() {
    let _exclusive = EXCLUSIVE.lock().await;
    if !RedisServer::available() {
        chaos::tool_missing("redis-server", "the Redis crash scenario");
        return;
    }
    let server = RedisServer::start().await;
    run_scenario(Scenario {
        name: "redis",
        backend: Backend::Redis(server),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_under_faults_redis_cluster() {
    let _exclusive = EXCLUSIVE.lock().await;
    let Ok(urls) = std::env::var("IDEM_TEST_REDIS_CLUSTER_URLS") else {
        eprintln!(
            "at_most_once_under_faults_redis_cluster: IDEM_TEST_REDIS_CLUSTER_URLS is not set; skipped"
        );
        return;
    };
    let nodes: Vec<&str> = urls
        .split(',')
        .map(|url| {
            url.trim()
                .trim_start_matches("redis://")
                .trim_end_matches('/')
        })
        .filter(|node| !node.is_empty())
        .collect();
    run_scenario(Scenario {
        name: "redis-cluster",
        backend: Backend::Cluster(format!("redis+cluster://{}", nodes.join(","))),
    })
    .await;
}

// =============================================================================================
// Focused regression tests.

/// One request; its status, problem code, replay header and body.
async fn post(url: &str, key: &str) -> (u16, String, Option<String>, String) {
    let response = client()
        .post(format!("{url}/charges"))
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body("{\"amount\":7}")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("x-idempotent-replayed")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    let code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|document| document["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code, replayed, body)
}

/// Retries while the key is busy or the store unavailable, as a client would.
async fn post_until_settled(
    url: &str,
    key: &str,
    limit: Duration,
) -> (u16, String, Option<String>, String) {
    let deadline = Instant::now() + limit;
    loop {
        let answer = post(url, key).await;
        let busy = answer.0 == 503 || (answer.0 == 409 && answer.1 == "request_in_progress");
        if !busy || Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (a) The upstream sends its headers at 0.5 s and its body over 2 s more, with a 1 s lease:
/// the lease must be renewed while the body is read, so that a retry at 1.3 s is not
/// forwarded a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_body_keeps_its_key_owned() {
    let _exclusive = EXCLUSIVE.lock().await;
    let upstream =
        SlowBodyUpstream::start(Duration::from_millis(500), Duration::from_secs(2)).await;
    let idem = Idem::proxy_on_memory(
        &upstream.url(),
        &["--lease", "1s", "--upstream-timeout", "3s"],
    );
    let key = unique("slow-body");
    let started = Instant::now();
    let first = {
        let (url, key) = (idem.url.clone(), key.clone());
        tokio::spawn(async move { post(&url, &key).await })
    };
    tokio::time::sleep_until((started + Duration::from_millis(1300)).into()).await;
    let retry = post(&idem.url, &key).await;
    assert_eq!(
        (retry.0, retry.1.as_str()),
        (409, "request_in_progress"),
        "a retry while the body streams is not forwarded: {retry:?}"
    );
    assert_eq!(upstream.calls(), 1);

    let first = first.await.unwrap();
    assert_eq!(first.0, 201, "{first:?}");
    assert_eq!(first.2.as_deref(), Some("false"));
    assert_eq!(
        first.3,
        chaos::slow_body(1),
        "the client got the whole body"
    );
    let after = post(&idem.url, &key).await;
    assert_eq!(after.0, 201);
    assert_eq!(after.2.as_deref(), Some("true"));
    assert_eq!(after.3, first.3);
    assert_eq!(upstream.calls(), 1, "executed once");
}

/// (c) The store goes away while the upstream executes (a 1 s handler) and stays away 3 s:
/// the client still gets its 201, the completion is retried in the background, and a retry
/// after the store returns replays it instead of executing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_lost_to_a_store_outage_lands_when_the_store_returns() {
    let _exclusive = EXCLUSIVE.lock().await;
    if !RedisServer::available() {
        chaos::tool_missing("redis-server", "the lost-completion test");
        return;
    }
    let redis = RedisServer::start().await;
    let relay = Relay::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let upstream = RecordingUpstream::start(Pace::fixed(Duration::from_secs(1))).await;
    let idem = Idem::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &relay.url_through(&redis.url()),
        "--upstream",
        &upstream.url(),
    ]);
    let key = unique("lost-completion");
    let first = {
        let (url, key) = (idem.url.clone(), key.clone());
        tokio::spawn(async move { post(&url, &key).await })
    };
    while upstream.count(&key) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.cut();
    let cut_at = Instant::now();
    let first = first.await.unwrap();
    assert_eq!(first.0, 201, "the client gets its answer: {first:?}");
    assert_eq!(first.2.as_deref(), Some("false"));
    tokio::time::sleep_until((cut_at + Duration::from_secs(3)).into()).await;
    relay.restore().await;

    let retry = post_until_settled(&idem.url, &key, Duration::from_secs(15)).await;
    assert_eq!(retry.0, 201, "the completion landed: {retry:?}");
    assert_eq!(retry.2.as_deref(), Some("true"));
    assert_eq!(retry.3, first.3);
    assert_eq!(upstream.count(&key), 1, "executed once");
}

/// (d) Two instances on one store, B's clock 30 s ahead (more than the lease). A request
/// executes 3 s on A; retries through B at 1 s and 2.5 s must see it in progress and never
/// execute it, then replay A's answer. Leases are decided by the store's clock, so B's skew
/// cannot make A's live lease look lapsed.
async fn a_skewed_clock_never_takes_over(store: &str) {
    let Some(library) = chaos::faketime_library() else {
        chaos::tool_missing(
            "libfaketime (/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1)",
            "the clock-skew test",
        );
        return;
    };
    let skew = chaos::skewed_env(&library);
    chaos::assert_skew_works(&skew);
    let skew: Vec<(&str, &str)> = skew
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let upstream = RecordingUpstream::start(Pace::fixed(Duration::from_secs(3))).await;
    let args = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--upstream",
        &upstream.url(),
        "--lease",
        "10s",
        "--upstream-timeout",
        "5s",
    ];
    let a = Idem::start(&args);
    let b = Idem::start_with_env(&args, &skew);
    let a_offset = chaos::clock_offset_of(a.admin_url.as_ref().unwrap()).await;
    let b_offset = chaos::clock_offset_of(b.admin_url.as_ref().unwrap()).await;
    assert!(
        a_offset.abs() <= 2,
        "A runs on the real clock ({a_offset}s)"
    );
    assert!(
        (b_offset - chaos::SKEW.as_secs() as i64).abs() <= 2,
        "B's clock is skewed ({b_offset}s)"
    );

    let key = unique("skew");
    let first = {
        let (url, key) = (a.url.clone(), key.clone());
        tokio::spawn(async move { post(&url, &key).await })
    };
    while upstream.count(&key) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let began = Instant::now();
    for at in [Duration::from_secs(1), Duration::from_millis(2500)] {
        tokio::time::sleep_until((began + at).into()).await;
        let retry = post(&b.url, &key).await;
        assert_eq!(
            (retry.0, retry.1.as_str()),
            (409, "request_in_progress"),
            "through the skewed instance at {at:?}: {retry:?}"
        );
        assert_eq!(upstream.count(&key), 1, "never executed through B");
    }
    let first = first.await.unwrap();
    assert_eq!(first.0, 201, "{first:?}");
    let replay = post(&b.url, &key).await;
    assert_eq!(replay.0, 201, "{replay:?}");
    assert_eq!(replay.2.as_deref(), Some("true"));
    assert_eq!(replay.3, first.3);
    assert_eq!(upstream.count(&key), 1, "executed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_clock_never_takes_over_on_postgres() {
    let _exclusive = EXCLUSIVE.lock().await;
    a_skewed_clock_never_takes_over(&postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_clock_never_takes_over_on_redis() {
    let _exclusive = EXCLUSIVE.lock().await;
    a_skewed_clock_never_takes_over(&redis_url()).await;
}
