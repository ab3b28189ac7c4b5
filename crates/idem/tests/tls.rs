//! TLS and HTTP/2 through the real binary, with certificates made here (a CA and a leaf for
//! `localhost` and 127.0.0.1, by rcgen), never with network access:
//!
//! - an `https://` upstream checked against `--upstream-ca-file`, behind idem's own TLS
//!   listener, over HTTP/2 (ALPN) and HTTP/1.1; an upstream whose CA is not trusted is
//!   never sent the request;
//! - HTTP/2 without TLS (h2c) and a gRPC-style bidirectional stream with trailers through
//!   the proxy to an h2c upstream;
//! - PostgreSQL that accepts TLS connections only (`sslmode=verify-full`), a server of its
//!   own started here, in a store namespace;
//! - Redis and a Redis Cluster that speak TLS only (`rediss://`, `rediss+cluster://`),
//!   servers of their own started here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::{Idem, Upstream, free_port};

/// A CA and a server certificate it signed, as PEM files in a temporary directory.
struct Pki {
    directory: tempfile::TempDir,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Self {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "idem test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca).unwrap();
        let pki = Self {
            directory: tempfile::tempdir().unwrap(),
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(pki.ca(), &pki.ca_pem).unwrap();
        std::fs::write(pki.cert(), &pki.cert_pem).unwrap();
        std::fs::write(pki.key(), &pki.key_pem).unwrap();
        pki
    }

    fn ca(&self) -> PathBuf {
        self.directory.path().join("ca.pem")
    }

    fn cert(&self) -> PathBuf {
        self.directory.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.directory.path().join("key.pem")
    }

    /// A server config with this certificate, offering h2 and http/1.1.
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        let chain = vec![
            rustls::pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap(),
        ];
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A client that trusts this CA only, offering HTTP/2 by ALPN or not.
    fn client(&self, http2: bool) -> reqwest::Client {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let builder = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(30));
        if http2 { builder } else { builder.http1_only() }
            .build()
            .unwrap()
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `idem proxy` on `store` in front of `upstream`, with `extra` flags.
fn proxy_on(store: &str, upstream: &str, extra: &[&str]) -> Idem {
    let mut args = vec![
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--upstream",
        upstream,
    ];
    args.extend_from_slice(extra);
    Idem::start(&args)
}

#[tokio::test]
async fn an_https_upstream_behind_a_tls_listener_over_http2_and_http1() {
    let pki = Pki::new();
    let upstream = Upstream::start_tls(pki.server_config()).await;
    let upstream_url = format!("https://localhost:{}", upstream.address.port());
    let idem = Idem::proxy_on_memory(
        &upstream_url,
        &[
            "--upstream-ca-file",
            path(&pki.ca()),
            "--tls-cert",
            path(&pki.cert()),
            "--tls-key",
            path(&pki.key()),
        ],
    );
    assert!(idem.url.starts_with("https://"), "{}", idem.url);
    let http2 = pki.client(true);
    let http1 = pki.client(false);
    let mut bodies = Vec::new();
    for (client, version) in [
        (&http2, http::Version::HTTP_2),
        (&http1, http::Version::HTTP_11),
        (&http2, http::Version::HTTP_2),
    ] {
        let response = client
            .post(idem.url("/charges"))
            .header("idempotency-key", "tls-1")
            .body("{\"amount\":1}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), 201);
        bodies.push(response.text().await.unwrap());
    }
    assert!(bodies.iter().all(|body| body == &bodies[0]), "{bodies:?}");
    assert_eq!(upstream.calls("/charges"), 1, "executed once over TLS");
    let headers = upstream.last_headers();
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert!(
        headers["forwarded"]
            .to_str()
            .unwrap()
            .contains("proto=https"),
        "{headers:?}"
    );

    // An upstream whose CA idem does not trust never gets the request: 502, key released.
    let untrusted = Idem::proxy_on_memory(&upstream_url, &[]);
    let response = support::client()
        .post(untrusted.url("/charges"))
        .header("idempotency-key", "tls-2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        upstream.calls("/charges"),
        1,
        "nothing sent to an untrusted upstream"
    );
}

/// An h2c upstream for gRPC-style calls: echoes each request body frame back as soon as it
/// arrives, then ends with `grpc-status: 0` trailers; answers 400 without `te: trailers`,
/// as gRPC servers do.
async fn grpc_echo_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let te = request
                            .headers()
                            .get("te")
                            .is_some_and(|value| value == "trailers");
                        let (sender, receiver) = tokio::sync::mpsc::channel::<
                            Result<Frame<Bytes>, std::convert::Infallible>,
                        >(8);
                        let mut body = request.into_body();
                        tokio::spawn(async move {
                            while let Some(Ok(frame)) = body.frame().await {
                                if let Ok(data) = frame.into_data()
                                    && sender.send(Ok(Frame::data(data))).await.is_err()
                                {
                                    return;
                                }
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            let _ = sender.send(Ok(Frame::trailers(trailers))).await;
                        });
                        let body = StreamBody::new(tokio_stream(receiver));
                        let status = if te { 200 } else { 400 };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    address
}

/// A receiver as a stream of frames.
fn tokio_stream<T>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |context| receiver.poll_recv(context))
}

#[tokio::test]
async fn a_grpc_style_stream_passes_through_the_proxy_over_h2c() {
    let upstream = grpc_echo_upstream().await;
    let idem = Idem::proxy_on_memory(&format!("http://{upstream}"), &["--upstream-http2"]);
    let address = idem.url.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("idem speaks HTTP/2 without TLS (h2c, prior knowledge)");
    tokio::spawn(connection);
    let (frames, receiver) =
        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(8);
    let request = hyper::Request::post(format!("http://{address}/echo.Echo/Chat"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(tokio_stream(receiver)))
        .unwrap();
    frames
        .send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello"))))
        .await
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("the response starts while the request still streams")
        .unwrap();
    assert_eq!(response.status(), 200, "te: trailers reached the upstream");
    let mut body = response.into_body();
    async fn next(body: &mut hyper::body::Incoming) -> Frame<Bytes> {
        tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap()
    }
    // Each message comes back before the next one is sent: both directions stream.
    assert_eq!(
        next(&mut body).await.into_data().unwrap(),
        &b"\0\0\0\0\x05hello"[..]
    );
    frames
        .send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x05world"))))
        .await
        .unwrap();
    assert_eq!(
        next(&mut body).await.into_data().unwrap(),
        &b"\0\0\0\0\x05world"[..]
    );
    drop(frames);
    let trailers = next(&mut body).await.into_trailers().unwrap();
    assert_eq!(trailers["grpc-status"], "0", "trailers pass through");
}

/// POSTs `/orders` with `key` twice through `idem`: both answered 201, the upstream ran it
/// once more than `before`.
async fn ordered_once(idem: &Idem, upstream: &Upstream, key: &str, before: usize) {
    for _ in 0..2 {
        let response = support::client()
            .post(idem.url("/orders"))
            .header("idempotency-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    assert_eq!(upstream.calls("/orders"), before + 1, "{key} executed once");
}

/// A process killed when the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `port` on loopback accepts connections.
fn wait_for_port(port: u16, what: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start on port {port}");
}

/// A command run as the `postgres` user when this test runs as root (PostgreSQL refuses to
/// run as root), as it is otherwise.
fn as_postgres(program: &Path) -> Command {
    // SAFETY-free check of the effective user: `id -u` prints it.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"0\n"));
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// PostgreSQL's server binaries (Debian keeps them out of the PATH).
fn postgres_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin").join(name))
                .filter(|path| path.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("PostgreSQL's {name} not found under /usr/lib/postgresql: install postgresql (scripts/test does)")
    })
}

/// A PostgreSQL server of this test's own, on `port`, that accepts TLS connections only.
fn postgres_with_tls_only(pki: &Pki, port: u16) -> (Server, tempfile::TempDir) {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let cert = directory.path().join("server.crt");
    let key = directory.path().join("server.key");
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(directory.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Owned by whoever runs the server.
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(directory.path())
        .status();
    let initdb = as_postgres(&postgres_bin("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(initdb.success(), "initdb failed");
    std::fs::write(
        data.join("pg_hba.conf"),
        "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
    )
    .unwrap();
    let server = as_postgres(&postgres_bin("postgres"))
        .arg("-D")
        .arg(&data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "ssl=on",
        ])
        .arg("-c")
        .arg(format!("ssl_cert_file={}", cert.display()))
        .arg("-c")
        .arg(format!("ssl_key_file={}", key.display()))
        .arg("-c")
        .arg(format!(
            "unix_socket_directories={}",
            directory.path().display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(server);
    wait_for_port(port, "PostgreSQL");
    (server, directory)
}

#[tokio::test]
async fn postgres_over_tls_only_with_verify_full_and_a_namespace() {
    let pki = Pki::new();
    let port = free_port();
    let (_postgres, _data) = postgres_with_tls_only(&pki, port);
    let upstream = Upstream::start().await;
    let store = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full");
    let idem = proxy_on(
        &store,
        &upstream.url(),
        &[
            "--store-ca-file",
            path(&pki.ca()),
            "--store-namespace",
            "gateway_a",
        ],
    );
    ordered_once(&idem, &upstream, "pg-tls-1", 0).await;
    // The record is in the namespace's schema, on a server that refuses plain connections.
    let rows = as_postgres(Path::new("psql"))
        .arg(format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require"
        ))
        .args(["-tAc", "SELECT count(*) FROM gateway_a.idem_records"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout).trim(), "1");
    drop(idem);

    // Another namespace on the same database does not see gateway_a's key.
    let other = proxy_on(
        &store,
        &upstream.url(),
        &[
            "--store-ca-file",
            path(&pki.ca()),
            "--store-namespace",
            "gateway_b",
        ],
    );
    let response = support::client()
        .post(other.url("/orders"))
        .header("idempotency-key", "pg-tls-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-idempotent-replayed"], "false");
    assert_eq!(upstream.calls("/orders"), 2);

    // Without the CA, verify-full refuses the server's certificate: idem does not start.
    let refused = Idem::try_start_with(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.url(),
            "--store",
            &store,
        ],
        &[],
        Stdio::null(),
    );
    assert!(refused.is_err(), "started against an unverified server");
}

/// A Redis server of this test's own that speaks TLS only, with `extra` arguments.
fn redis_with_tls_only(pki: &Pki, port: u16, extra: &[&str]) -> Server {
    let server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--tls-cert-file", path(&pki.cert())])
        .args(["--tls-key-file", path(&pki.key())])
        .args(["--tls-ca-cert-file", path(&pki.ca())])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (install redis-server; scripts/test does)");
    let server = Server(server);
    wait_for_port(port, "redis-server");
    server
}

fn redis_cli(pki: &Pki, port: u16, arguments: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args([
            "--tls",
            "--cacert",
            path(&pki.ca()),
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(arguments)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn redis_over_tls_only_with_a_namespace() {
    let pki = Pki::new();
    let port = free_port();
    let _redis = redis_with_tls_only(&pki, port, &[]);
    let upstream = Upstream::start().await;
    let store = format!("rediss://127.0.0.1:{port}");
    let idem = proxy_on(
        &store,
        &upstream.url(),
        &[
            "--store-ca-file",
            path(&pki.ca()),
            "--store-namespace",
            "shop",
        ],
    );
    ordered_once(&idem, &upstream, "redis-tls-1", 0).await;
    let keys = redis_cli(&pki, port, &["--scan", "--pattern", "shop:*"]);
    assert_eq!(
        keys.lines().count(),
        1,
        "one record under the namespace: {keys}"
    );

    let refused = Idem::try_start_with(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.url(),
            "--store",
            &store,
        ],
        &[],
        Stdio::null(),
    );
    assert!(refused.is_err(), "started against an unverified Redis");
}

#[tokio::test]
async fn a_redis_cluster_over_tls_only() {
    let pki = Pki::new();
    let directory = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _nodes: Vec<Server> = ports
        .iter()
        .map(|port| {
            let config = directory.path().join(format!("nodes-{port}.conf"));
            redis_with_tls_only(
                &pki,
                *port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--tls-cluster",
                    "yes",
                    "--cluster-config-file",
                    path(&config),
                ],
            )
        })
        .collect();
    let nodes: Vec<String> = ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(nodes.iter().map(String::as_str));
    create.push("--cluster-yes");
    redis_cli(&pki, ports[0], &create);
    for _ in 0..100 {
        if redis_cli(&pki, ports[0], &["cluster", "info"]).contains("cluster_state:ok") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let upstream = Upstream::start().await;
    let store = format!("rediss+cluster://{}", nodes.join(","));
    let idem = proxy_on(
        &store,
        &upstream.url(),
        &["--store-ca-file", path(&pki.ca())],
    );
    for (before, key) in ["a", "b", "c", "d", "e", "f"].into_iter().enumerate() {
        ordered_once(&idem, &upstream, key, before).await;
    }
}
