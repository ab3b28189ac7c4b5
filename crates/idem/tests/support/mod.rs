//! Shared helpers for the process-level tests: the real `idem` binary on loopback, and a
//! small upstream that counts what it executes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{any, post};

/// A running `idem` process, killed (SIGKILL) when dropped.
pub struct Idem {
    pub child: Child,
    pub url: String,
    pub admin_url: Option<String>,
}

impl Idem {
    /// Starts `idem` with `args` and waits for its "listening" lines.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// `idem proxy` on the memory store in front of `upstream`, with `extra` flags.
    #[allow(dead_code, reason = "not every test binary starts a proxy this way")]
    pub fn proxy_on_memory(upstream: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory://",
            "--upstream",
            upstream,
        ];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(args, env, Stdio::inherit())
    }

    /// Starts `idem` with `args` and `env`, its logs going to `stderr` (a log file, for tests
    /// whose faults make the processes noisy).
    pub fn start_with(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Self {
        Self::try_start_with(args, env, stderr).expect("idem announces its address")
    }

    /// As [`start_with`](Self::start_with), but a process that exits (or stays silent for
    /// 30 s) before announcing its address is an error, not a panic (and is killed).
    pub fn try_start_with(
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Result<Self, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_idem"));
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("RUST_LOG", "warn");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("idem starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let wants_admin = args.contains(&"--admin-listen");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut url, mut admin_url) = (None, None);
        while url.is_none() || (wants_admin && admin_url.is_none()) {
            let line = match receiver.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => line,
                Err(error) => {
                    let _ = child.kill();
                    let status = child.wait();
                    return Err(format!(
                        "idem did not announce its address ({error}); exit: {status:?}"
                    ));
                }
            };
            let address = line.rsplit(' ').next().unwrap().to_owned();
            if line.contains(" admin listening") {
                admin_url = Some(address);
            } else if line.contains(" listening on ") {
                url = Some(address);
            }
        }
        Ok(Self {
            child,
            url: url.unwrap(),
            admin_url,
        })
    }

    /// The Prometheus text its admin listener serves.
    #[allow(dead_code, reason = "not every test binary reads metrics")]
    pub async fn metrics(&self) -> String {
        let admin = self
            .admin_url
            .as_ref()
            .expect("started with --admin-listen");
        client()
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGKILL: no cleanup of any kind.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Idem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the upstream saw.
#[derive(Default)]
pub struct Seen {
    pub calls: HashMap<String, usize>,
    pub last_headers: Option<HeaderMap>,
}

/// A test upstream on loopback. `POST /slow` takes 400 ms, `POST /hang` never answers,
/// `/status/{code}` answers that status, anything else answers 201 with a counter (and
/// `/sessions…` a `Set-Cookie` with it).
#[derive(Clone)]
pub struct Upstream {
    pub address: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(address: &str) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Self::router(&seen);
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { address, seen }
    }

    fn router(seen: &Arc<Mutex<Seen>>) -> Router {
        Router::new()
            .route("/slow", post(slow))
            .route("/hang", post(hang))
            .fallback(any(echo))
            .with_state(Arc::clone(seen))
    }

    /// The same upstream over TLS with `config` (HTTP/2 or HTTP/1.1, as ALPN chooses).
    #[allow(dead_code, reason = "only the TLS tests serve TLS")]
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Self::router(&seen);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Self { address, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn calls(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .calls
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.seen.lock().unwrap().last_headers.clone().unwrap()
    }
}

fn record(seen: &Mutex<Seen>, path: &str, headers: HeaderMap) -> usize {
    let mut seen = seen.lock().unwrap();
    seen.last_headers = Some(headers);
    let count = seen.calls.entry(path.to_owned()).or_default();
    *count += 1;
    *count
}

async fn echo(
    State(seen): State<Arc<Mutex<Seen>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let n = record(&seen, uri.path(), headers);
    let status = uri
        .path()
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::CREATED);
    let body = format!(
        "{{\"path\":\"{}\",\"execution\":{n},\"received\":{}}}",
        uri.path(),
        body.len()
    );
    // `/sessions…` logs the caller in, as a cookie-session API does.
    let cookie = format!("session=secret-{n}; HttpOnly");
    let mut response = (
        status,
        [("content-type", "application/json"), ("x-upstream", "yes")],
        body,
    )
        .into_response();
    if uri.path().starts_with("/sessions")
        && let Ok(value) = http::HeaderValue::from_str(&cookie)
    {
        response.headers_mut().insert("set-cookie", value);
    }
    response
}

async fn slow(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap) -> impl IntoResponse {
    let n = record(&seen, "/slow", headers);
    tokio::time::sleep(Duration::from_millis(400)).await;
    (StatusCode::CREATED, format!("{{\"slow\":{n}}}"))
}

async fn hang(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap) -> impl IntoResponse {
    record(&seen, "/hang", headers);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    StatusCode::OK
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}
