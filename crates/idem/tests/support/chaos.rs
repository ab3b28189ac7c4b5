//! Fault injection for `tests/faults.rs`: a TCP relay that can be cut and restored, a Redis
//! server of the test's own that can be killed -9 and restarted on its data, libfaketime for
//! an instance with a skewed clock, a cheap random source, and upstreams that record every
//! execution per idempotency key.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::any;
use tokio::io::{AsyncReadExt, AsyncWriteExt, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

// ---------------------------------------------------------------------------------------------
// Randomness without a dependency: xorshift64*, seeded per thread from std's random hasher keys.

/// A random `u64`.
pub fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0xfa_u8) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A random number in `0..bound` (`bound` > 0).
pub fn below(bound: u64) -> u64 {
    random() % bound
}

/// A random duration in `0..=max`.
pub fn jitter(max: Duration) -> Duration {
    Duration::from_millis(below(max.as_millis() as u64 + 1))
}

/// A name no earlier run used: the stores keep records between runs.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{:x}",
        std::process::id(),
        below(1 << 32)
    )
}

// ---------------------------------------------------------------------------------------------
// Which fault tools must be present.

/// Whether missing fault tools (libfaketime, redis-server) fail the suite instead of skipping
/// parts of it: in CI, and under `scripts/test` (which installs them).
pub fn tools_required() -> bool {
    ["CI", "IDEM_REQUIRE_FAULT_TOOLS"].iter().any(|name| {
        std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0" && value != "false")
    })
}

/// Reports that `what` is missing for `needed_for`: a panic where the tools are required, a
/// loud line otherwise (the caller then skips `needed_for`).
pub fn tool_missing(what: &str, needed_for: &str) {
    let install = "install it (scripts/test does: apt-get install -y faketime redis-server)";
    if tools_required() {
        panic!(
            "FAULT TOOL MISSING: {what}, needed for {needed_for}; {install}. Required because CI or IDEM_REQUIRE_FAULT_TOOLS is set."
        );
    }
    let bar = "!".repeat(78);
    eprintln!("\n{bar}\n!!! SKIPPED {needed_for}: {what} is missing; {install}.\n{bar}\n");
}

/// How far the skewed instance's clock runs ahead.
pub const SKEW: Duration = Duration::from_secs(30);

/// libfaketime's preload library (Debian package `faketime`), if installed.
pub fn faketime_library() -> Option<PathBuf> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ];
    std::env::var_os("IDEM_FAKETIME_LIB")
        .map(PathBuf::from)
        .into_iter()
        .chain(candidates.iter().map(PathBuf::from))
        .find(|path| path.is_file())
}

/// The environment that runs a process with its wall clock `SKEW` ahead. Only the wall clock:
/// monotonic clocks are never compared across machines, so skewing them would test nothing.
pub fn skewed_env(library: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), library.display().to_string()),
        ("FAKETIME".into(), format!("+{}s", SKEW.as_secs())),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_DONT_RESET".into(), "1".into()),
    ]
}

/// Seconds since the epoch as `date +%s` prints them under `env`.
fn date_under(env: &[(String, String)]) -> i64 {
    let output = Command::new("date")
        .arg("+%s")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("`date` runs");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("`date +%s` prints a number")
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Proves that `env` skews a process's clock by `SKEW` (runs `date` under it).
pub fn assert_skew_works(env: &[(String, String)]) {
    let before = now_secs();
    let skewed = date_under(env);
    let offset = skewed - before;
    assert!(
        (SKEW.as_secs() as i64 - 2..=SKEW.as_secs() as i64 + 2).contains(&offset),
        "libfaketime did not skew `date` by {SKEW:?}: it is {offset}s off"
    );
}

/// How far ahead of this process's clock `admin_url`'s process runs, read from the `Date`
/// header of its `/healthz` (hyper stamps it from the process's own wall clock).
pub async fn clock_offset_of(admin_url: &str) -> i64 {
    let response = reqwest::get(format!("{admin_url}/healthz"))
        .await
        .expect("the admin port answers");
    let date = response
        .headers()
        .get("date")
        .expect("a Date header")
        .to_str()
        .unwrap()
        .to_owned();
    parse_http_date(&date).expect("an IMF-fixdate") - now_secs()
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` as seconds since the epoch.
fn parse_http_date(text: &str) -> Option<i64> {
    let mut parts = text.split_whitespace().skip(1);
    let day: i64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|name| *name == month_name)? as i64
        + 1;
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(|n| n.parse::<i64>().ok());
    let (h, m, s) = (clock.next()??, clock.next()??, clock.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

// ---------------------------------------------------------------------------------------------
// A TCP relay that can be cut.

/// Forwards every connection on `address` to `target`. [`cut`](Self::cut) drops every relayed
/// connection and closes the listening socket (new connections are refused), as a crashed
/// server or a cut link would; [`restore`](Self::restore) listens on the same address again.
pub struct Relay {
    pub address: SocketAddr,
    target: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        Self {
            address,
            target,
            task: Mutex::new(Some(Self::relay(listener, target))),
        }
    }

    fn relay(listener: TcpListener, target: SocketAddr) -> JoinHandle<()> {
        tokio::spawn(async move {
            // Dropped with this task when the relay is cut: that aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { break };
                        connections.spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(target).await {
                                let _ = inbound.set_nodelay(true);
                                let _ = outbound.set_nodelay(true);
                                let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        })
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens on the same address again.
    pub async fn restore(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                // The aborted task may not have closed its socket yet.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("cannot listen on {} again: {error}", self.address),
            }
        };
        *self.task.lock().unwrap() = Some(Self::relay(listener, self.target));
    }

    /// The URL `url` (`scheme://[credentials@]host:port/...`) through this relay.
    pub fn url_through(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let credentials = authority
            .rsplit_once('@')
            .map(|(credentials, _)| format!("{credentials}@"))
            .unwrap_or_default();
        format!("{scheme}://{credentials}{}{path}", self.address)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The `host:port` a `scheme://[credentials@]host[:port]/...` URL points at.
pub async fn target_of(url: &str, default_port: u16) -> SocketAddr {
    let rest = url.split_once("://").expect("a URL with a scheme").1;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    tokio::net::lookup_host(host_port)
        .await
        .expect("a resolvable host")
        .next()
        .expect("an address")
}

// ---------------------------------------------------------------------------------------------
// A Redis server of the test's own.

/// `redis-server` on a spare loopback port with every write fsynced to its append-only file,
/// so that a kill -9 loses nothing acknowledged; restarted on the same port and directory.
pub struct RedisServer {
    pub port: u16,
    directory: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Whether `redis-server` can be run.
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    pub async fn start() -> Self {
        let mut server = Self {
            port: crate::support::free_port(),
            directory: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    async fn spawn(&mut self) {
        let directory = self.directory.path().display().to_string();
        let log = self
            .directory
            .path()
            .join("redis.log")
            .display()
            .to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
                &directory,
                "--logfile",
                &log,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Waits until the server answers PING with PONG (not LOADING: the AOF is replayed).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "redis-server on port {} exited ({status}); log: {}",
                    self.port,
                    std::fs::read_to_string(self.directory.path().join("redis.log"))
                        .unwrap_or_default()
                );
            }
            if ping(self.port).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not become ready",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: whatever was not fsynced is lost (nothing, with `appendfsync always`).
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory, replaying the append-only file.
    pub async fn restart(&mut self) {
        self.kill_9();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill_9();
    }
}

async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
        let mut answer = [0u8; 64];
        let read = stream.read(&mut answer).await.ok()?;
        Some(answer[..read].starts_with(b"+PONG"))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// An upstream that records every execution per idempotency key.

/// One execution the upstream performed.
#[derive(Debug, Clone)]
pub struct Executed {
    /// Its number among all executions.
    pub execution: u64,
    /// The body it answered.
    pub body: String,
    /// When it began, since the upstream started.
    pub at: Duration,
    /// Whether it took the slow pace.
    pub slow: bool,
}

/// How long the upstream takes: `0..=fast_max` usually, `slow` for `slow_per_mille` of the
/// requests.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub fast_max: Duration,
    pub slow: Duration,
    pub slow_per_mille: u64,
}

impl Pace {
    pub const fn fixed(time: Duration) -> Self {
        Self {
            fast_max: time,
            slow: time,
            slow_per_mille: 1000,
        }
    }
}

struct Ledger {
    pace: Pace,
    started: Instant,
    counter: AtomicU64,
    executions: Mutex<HashMap<String, Vec<Executed>>>,
}

/// An upstream on loopback: every request is one execution, recorded under its
/// `Idempotency-Key`, answered 201 with `{"execution":N,"key":K}` after its pace.
#[derive(Clone)]
pub struct RecordingUpstream {
    pub address: SocketAddr,
    ledger: Arc<Ledger>,
}

impl RecordingUpstream {
    pub async fn start(pace: Pace) -> Self {
        let ledger = Arc::new(Ledger {
            pace,
            started: Instant::now(),
            counter: AtomicU64::new(0),
            executions: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .fallback(any(execute))
            .with_state(Arc::clone(&ledger));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { address, ledger }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every execution, by key.
    pub fn executions(&self) -> HashMap<String, Vec<Executed>> {
        self.ledger.executions.lock().unwrap().clone()
    }

    /// How many times `key` was executed.
    pub fn count(&self, key: &str) -> usize {
        self.ledger
            .executions
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, Vec::len)
    }

    /// How many executions in all.
    pub fn total(&self) -> u64 {
        self.ledger.counter.load(Ordering::SeqCst)
    }
}

async fn execute(
    State(ledger): State<Arc<Ledger>>,
    headers: HeaderMap,
    _body: Bytes,
) -> impl IntoResponse {
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let execution = ledger.counter.fetch_add(1, Ordering::SeqCst) + 1;
    let body = serde_json::json!({ "execution": execution, "key": key }).to_string();
    let pace = ledger.pace;
    let slow = below(1000) < pace.slow_per_mille;
    // Recorded before the pause: an execution whose caller dies mid-way still happened.
    ledger
        .executions
        .lock()
        .unwrap()
        .entry(key)
        .or_default()
        .push(Executed {
            execution,
            body: body.clone(),
            at: ledger.started.elapsed(),
            slow,
        });
    let pause = if slow {
        pace.slow
    } else {
        jitter(pace.fast_max)
    };
    tokio::time::sleep(pause).await;
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        body,
    )
}

// ---------------------------------------------------------------------------------------------
// An upstream whose response body is slow.

/// A raw HTTP/1.1 upstream: each request is one execution; it sends the response headers
/// after `headers_after`, then the body in `chunks` pieces spread over `body_over`.
#[derive(Clone)]
pub struct SlowBodyUpstream {
    pub address: SocketAddr,
    calls: Arc<AtomicU64>,
}

/// The body [`SlowBodyUpstream`] answers for execution `n`: 5 chunks of 20 bytes.
pub fn slow_body(n: u64) -> String {
    let body = format!("{{\"execution\":{n:>3},\"padding\":\"");
    let padding = 100 - body.len() - 2;
    format!("{body}{}\"}}", "x".repeat(padding))
}

impl SlowBodyUpstream {
    pub async fn start(headers_after: Duration, body_over: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&calls);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let _ = serve_slow_body(stream, counter, headers_after, body_over).await;
                });
            }
        });
        Self { address, calls }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn serve_slow_body(
    mut stream: TcpStream,
    calls: Arc<AtomicU64>,
    headers_after: Duration,
    body_over: Duration,
) -> std::io::Result<()> {
    // Read the request head, then as much body as it announces.
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buffer[..read]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while request.len() - head_end < length {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    let body = slow_body(n);
    tokio::time::sleep(headers_after).await;
    stream
        .write_all(
            format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    stream.flush().await?;
    let chunks = 5;
    let piece = body.len().div_ceil(chunks);
    for chunk in body.as_bytes().chunks(piece) {
        tokio::time::sleep(body_over / chunks as u32).await;
        stream.write_all(chunk).await?;
        stream.flush().await?;
    }
    stream.shutdown().await
}
