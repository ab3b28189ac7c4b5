//! `idem proxy` and `idem serve` against hostile clients: replays that must not reach another
//! caller, paths spelled to escape a rule, clients that send half a request and stall, and
//! clients that fill the store or forge forwarding headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Idem, Upstream, client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn proxy(upstream: &str, extra: &[&str]) -> Idem {
    Idem::proxy_on_memory(upstream, extra)
}

fn address(idem: &Idem) -> String {
    idem.url.trim_start_matches("http://").to_owned()
}

/// Sends `request` as written (no client library normalises its path) on a new connection
/// and reads the answer to its end: the status and the body as JSON, when it is JSON.
async fn raw(idem: &Idem, request: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(address(idem)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post(path: &str, key: Option<&str>) -> String {
    let key = key.map_or(String::new(), |key| format!("Idempotency-Key: {key}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: api.test\r\n{key}Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )
}

#[tokio::test]
async fn a_replay_never_carries_another_callers_cookie() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &[]);
    let client = client();
    let login = |cookie: Option<&'static str>| {
        let mut request = client
            .post(idem.url("/sessions"))
            .header("idempotency-key", "login-1")
            .body("{}");
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    let first = login(Some("tracking=a")).await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["set-cookie"], "session=secret-1; HttpOnly");
    // A stranger with the same key and body, and no credentials at all.
    let stranger = login(None).await.unwrap();
    assert_eq!(stranger.status(), 201);
    assert_eq!(stranger.headers()["x-idempotent-replayed"], "true");
    assert!(
        stranger.headers().get("set-cookie").is_none(),
        "the first caller's session must not be replayed"
    );
    assert_eq!(upstream.calls("/sessions"), 1);
}

#[tokio::test]
async fn set_cookie_is_replayed_only_when_allowed_by_name() {
    let upstream = Upstream::start().await;
    let idem = proxy(
        &upstream.url(),
        &["--replay-header", "set-cookie,x-upstream"],
    );
    let send = || {
        client()
            .post(idem.url("/sessions"))
            .header("idempotency-key", "login-2")
            .body("{}")
            .send()
    };
    send().await.unwrap();
    let replay = send().await.unwrap();
    assert_eq!(replay.headers()["x-idempotent-replayed"], "true");
    assert_eq!(replay.headers()["set-cookie"], "session=secret-1; HttpOnly");
    assert_eq!(replay.headers()["x-upstream"], "yes");
    assert_eq!(replay.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn a_session_cookie_scopes_keys_and_other_cookies_do_not() {
    let upstream = Upstream::start().await;
    let idem = proxy(
        &upstream.url(),
        &["--scope-cookie", "session", "--require-principal"],
    );
    let client = client();
    let charge = |cookie: Option<&'static str>| {
        let mut request = client
            .post(idem.url("/charges"))
            .header("idempotency-key", "shared-key")
            .body("{}");
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    let alice = charge(Some("session=alice")).await.unwrap();
    assert_eq!(alice.headers()["x-idempotent-replayed"], "false");
    let bob = charge(Some("session=bob")).await.unwrap();
    assert_eq!(
        bob.headers()["x-idempotent-replayed"],
        "false",
        "another session never sees alice's record"
    );
    let alice_again = charge(Some("theme=dark; session=alice; lang=en"))
        .await
        .unwrap();
    assert_eq!(
        alice_again.headers()["x-idempotent-replayed"],
        "true",
        "unrelated cookies do not change whose key it is"
    );
    let nobody = charge(None).await.unwrap();
    assert_eq!(nobody.status(), 400);
    let problem: Value = nobody.json().await.unwrap();
    assert_eq!(problem["code"], "principal_missing");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("session cookie"),
        "{problem}"
    );
    assert_eq!(upstream.calls("/charges"), 2);
}

#[tokio::test]
async fn no_spelling_of_a_path_escapes_a_route_rule() {
    let upstream = Upstream::start().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[[proxy.routes]]\npath = \"/payments/**\"\nrequire_key = true\n",
    )
    .unwrap();
    let idem = proxy(
        &upstream.url(),
        &["--config", config.path().to_str().unwrap()],
    );
    for spelling in [
        "/%70ayments/x",
        "/%70%61yments/x",
        "//payments/x",
        "/other/../payments/x",
        "/./payments/x",
        "/%2e%2e/payments/x",
        "/PAYMENTS/../payments/x",
        // Spellings that servers behind a gateway read as `/payments/x`: another case (ASP.NET),
        // a segment's parameters (Tomcat, Spring), a trailing slash (Express).
        "/PAYMENTS/x",
        "/Pay%6Dents/x",
        "/payments;jsessionid=1/x",
        "/payments/x/",
    ] {
        let (status, problem) = raw(&idem, &post(spelling, None)).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("idempotency_key_missing")),
            "{spelling}"
        );
    }
    // An extension method `post` is POST to Django and Werkzeug: it needs its key too.
    let lower_case = post("/payments/x", None).replacen("POST", "post", 1);
    let (status, problem) = raw(&idem, &lower_case).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("idempotency_key_missing")),
        "method post"
    );
    for ambiguous in [
        "/payments%2fx",
        "/payments%5Cx",
        "/payments/x%00",
        "/pay%zzments",
        "/x/..;/payments/y",
        // A segment of parameters only is no segment to Tomcat: `/payments/x` there.
        "/;x/payments/x",
        "/webhooks/;/../payments/x",
    ] {
        let (status, problem) = raw(&idem, &post(ambiguous, Some("k-amb"))).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("path_ambiguous")),
            "{ambiguous}"
        );
    }
    assert_eq!(
        upstream.seen.lock().unwrap().calls.len(),
        0,
        "nothing forwarded"
    );

    // With a key, every spelling is one request; the upstream gets the path as sent.
    let (status, body) = raw(&idem, &post("/%70ayments//x", Some("pay-1"))).await;
    assert_eq!(
        (status, body["path"].as_str()),
        (201, Some("/%70ayments//x"))
    );
    let (status, _) = raw(&idem, &post("/payments/./x", Some("pay-1"))).await;
    assert_eq!(status, 201, "the same request, replayed");
    assert_eq!(
        upstream.seen.lock().unwrap().calls.values().sum::<usize>(),
        1
    );
}

#[tokio::test]
async fn clients_that_stall_mid_head_are_cut_off_and_block_nobody() {
    let upstream = Upstream::start().await;
    // The keep-alive timeout is the shorter, so that the idle connection below is closed by
    // it and not by the header read timeout.
    let idem = proxy(
        &upstream.url(),
        &["--header-read-timeout", "3s", "--keep-alive-timeout", "1s"],
    );
    let mut stalled = Vec::new();
    let stall_began = Instant::now();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(address(&idem)).await.unwrap();
        stream
            .write_all(b"POST /charges HTTP/1.1\r\nHost: api.test\r\nIdempotency-")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let started = Instant::now();
    let (status, _) = raw(&idem, &post("/charges", Some("normal-1"))).await;
    assert_eq!(status, 201);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a normal client is served while 200 others stall: {:?}",
        started.elapsed()
    );
    // Each stalled connection is closed once its header read timeout passes.
    for mut stream in stalled {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut rest))
            .await
            .expect("the server closes a stalled connection");
        assert!(closed.is_err() || !String::from_utf8_lossy(&rest).contains("201"));
    }
    assert!(
        stall_began.elapsed() < Duration::from_secs(7),
        "every stalled connection is closed soon after its 3 s: {:?}",
        stall_began.elapsed()
    );

    // An idle keep-alive connection is closed after the keep-alive timeout.
    let mut idle = TcpStream::connect(address(&idem)).await.unwrap();
    idle.write_all(b"GET /items HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let idle_since = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut answer))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(read.is_ok());
    assert!(
        idle_since.elapsed() < Duration::from_millis(2500),
        "closed by the keep-alive timeout, before the header read timeout: {:?}",
        idle_since.elapsed()
    );
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 201"));
}

/// The admin listener has the public one's timeouts and a small connection limit of its own:
/// clients stalling on an admin port left reachable are cut off, and health checks resume.
#[tokio::test]
async fn the_admin_listener_cuts_off_stalled_clients_too() {
    let upstream = Upstream::start().await;
    let idem = proxy(
        &upstream.url(),
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--header-read-timeout",
            "1s",
        ],
    );
    let admin = idem.admin_url.clone().unwrap();
    let admin_address = admin.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(&admin_address).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHo")
            .await
            .unwrap();
        stalled.push(stream);
    }
    for mut stream in stalled {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("the admin listener closes a stalled connection")
            .ok();
    }
    let health = client()
        .get(format!("{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn connections_past_the_limit_wait_their_turn() {
    let upstream = Upstream::start().await;
    let idem = proxy(
        &upstream.url(),
        &[
            "--max-connections",
            "1",
            "--header-read-timeout",
            "1s",
            "--keep-alive-timeout",
            "1s",
        ],
    );
    let mut hog = TcpStream::connect(address(&idem)).await.unwrap();
    hog.write_all(b"POST /charges HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (status, _) = raw(&idem, &post("/charges", Some("queued-1"))).await;
    assert_eq!(status, 201);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "served only once the one allowed connection was closed: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_body_that_trickles_in_is_refused_and_the_key_stays_free() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &["--body-read-timeout", "1s"]);
    let mut stream = TcpStream::connect(address(&idem)).await.unwrap();
    stream
        .write_all(b"POST /charges HTTP/1.1\r\nHost: api.test\r\nIdempotency-Key: slow-1\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{\"a\"")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(upstream.calls("/charges"), 0);
    let response = client()
        .post(idem.url("/charges"))
        .header("idempotency-key", "slow-1")
        .body("{\"a\":12345}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "the retry executes");
}

#[tokio::test]
async fn forwarding_headers_are_believed_from_trusted_proxies_only() {
    let upstream = Upstream::start().await;
    let forged = |request: reqwest::RequestBuilder| {
        request
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("x-real-ip", "203.0.113.9")
            .header("forwarded", "for=203.0.113.9;proto=https")
            .header("x-original-url", "/admin")
    };
    let idem = proxy(&upstream.url(), &[]);
    forged(client().get(idem.url("/whoami")))
        .send()
        .await
        .unwrap();
    let seen = upstream.last_headers();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], address(&idem));
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert!(seen.get("x-real-ip").is_none());
    assert!(
        seen.get("x-original-url").is_none(),
        "a client cannot re-target the upstream"
    );
    assert_eq!(
        seen["forwarded"],
        format!("for=127.0.0.1;proto=http;host=\"{}\"", address(&idem))
    );
    drop(idem);

    let idem = proxy(&upstream.url(), &["--trusted-proxy", "127.0.0.0/8"]);
    forged(client().get(idem.url("/whoami")))
        .send()
        .await
        .unwrap();
    let seen = upstream.last_headers();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "evil.example");
    // A trusted proxy that added a line of its own, rather than appending to the client's,
    // keeps its line: every line is one list, in order.
    client()
        .get(idem.url("/whoami"))
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-for", "192.0.2.7")
        .header("forwarded", "for=198.51.100.1")
        .header("forwarded", "for=192.0.2.7")
        .send()
        .await
        .unwrap();
    let lines = upstream.last_headers();
    assert_eq!(
        lines["x-forwarded-for"],
        "198.51.100.1, 192.0.2.7, 127.0.0.1"
    );
    assert_eq!(lines.get_all("x-forwarded-for").iter().count(), 1);
    // A client's non-ASCII byte in the line a trusted proxy appended to does not drop the
    // line, and with it the proxy's entry for the client.
    client()
        .get(idem.url("/whoami"))
        .header(
            "x-forwarded-for",
            reqwest::header::HeaderValue::from_bytes(b"x\x80, 198.51.100.1").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        upstream.last_headers()["x-forwarded-for"].as_bytes(),
        b"x\x80, 198.51.100.1, 127.0.0.1"
    );
    assert!(
        lines["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=198.51.100.1, for=192.0.2.7, for=127.0.0.1;"),
        "{:?}",
        lines["forwarded"]
    );
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(
        seen["forwarded"],
        format!(
            "for=203.0.113.9;proto=https, for=127.0.0.1;proto=http;host=\"{}\"",
            address(&idem)
        )
    );
}

#[tokio::test]
async fn a_full_memory_store_answers_503_and_executes_nothing() {
    let upstream = Upstream::start().await;
    let idem = Idem::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory://?max_records=2",
        "--upstream",
        &upstream.url(),
    ]);
    let send = |key: &'static str| {
        client()
            .post(idem.url("/charges"))
            .header("idempotency-key", key)
            .body("{}")
            .send()
    };
    assert_eq!(send("fill-1").await.unwrap().status(), 201);
    assert_eq!(send("fill-2").await.unwrap().status(), 201);
    let full = send("fill-3").await.unwrap();
    assert_eq!(full.status(), 503);
    let problem: Value = full.json().await.unwrap();
    assert_eq!(problem["code"], "store_full");
    assert_eq!(
        send("fill-1").await.unwrap().headers()["x-idempotent-replayed"],
        "true",
        "held keys still replay"
    );
    assert_eq!(upstream.calls("/charges"), 2);
}

#[tokio::test]
async fn an_operation_answering_too_much_is_kept_as_invalid_and_never_rerun() {
    use axum::routing::post;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/export",
        post(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { format!("{{\"rows\":\"{}\"}}", "x".repeat(64 * 1024)) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let operation = format!("export=http://{}/export", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let idem = Idem::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory://",
        "--operation",
        &operation,
        "--max-operation-response",
        "16KiB",
    ]);
    for _ in 0..2 {
        let response = client()
            .post(idem.url("/v1/idempotency/execute"))
            .header("idempotency-key", "export-1")
            .header("content-type", "application/json")
            .body(r#"{"operation":"export","payload":{}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502);
        let document: Value = response.json().await.unwrap();
        assert_eq!(document["error"]["code"], "OPERATION_INVALID_RESPONSE");
        assert!(
            document["error"]["message"]
                .as_str()
                .unwrap()
                .contains("16384 bytes"),
            "{document}"
        );
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_never_reads_its_answer_is_cut_off() {
    use axum::routing::get;
    let app = axum::Router::new().route("/big", get(|| async { vec![b'x'; 8 * 1024 * 1024] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let idem = proxy(
        &upstream,
        &[
            "--max-connections",
            "1",
            "--send-timeout",
            "1s",
            "--header-read-timeout",
            "5s",
            "--keep-alive-timeout",
            "5s",
        ],
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut hog = socket
        .connect(address(&idem).parse().unwrap())
        .await
        .unwrap();
    hog.write_all(b"GET /big HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    // The hog never reads: its window fills, idem's writes stall, and after the send timeout
    // its connection (the only one allowed) is closed, so the next client is served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, _) = raw(
        &idem,
        "GET /whoami HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "served once the stalled writer was cut off: {:?}",
        started.elapsed()
    );
    drop(hog);
}

/// An HTTP/2 (h2c, prior knowledge) connection to `idem`: the request sender, its
/// connection driven in the background.
async fn h2c(
    idem: &Idem,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let stream = TcpStream::connect(address(idem)).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// Connections that say nothing, or half of HTTP/2's preface, are closed once the header
/// read timeout from their accept has passed, even with no keep-alive (the worst case: no
/// idle timer runs at all).
#[tokio::test]
async fn silent_connections_and_half_prefaces_are_closed_within_the_header_read_timeout() {
    let upstream = Upstream::start().await;
    let idem = proxy(
        &upstream.url(),
        &["--header-read-timeout", "1s", "--keep-alive-timeout", "0s"],
    );
    let began = Instant::now();
    let mut held = Vec::new();
    for index in 0..20 {
        let mut stream = TcpStream::connect(address(&idem)).await.unwrap();
        if index % 2 == 0 {
            stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        held.push(stream);
    }
    for mut stream in held {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the server closes a connection that sent no request")
            .ok();
    }
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "closed about 1 s after their accept: {:?}",
        began.elapsed()
    );
}

/// An HTTP/2 client that stops granting flow-control window (it never reads the body) never
/// blocks the socket; it is cut off after the send timeout all the same, so the only
/// connection slot frees.
#[tokio::test]
async fn an_http2_client_that_stops_granting_window_is_cut_off() {
    use axum::routing::get;
    let app = axum::Router::new().route("/big", get(|| async { vec![b'x'; 8 * 1024 * 1024] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let idem = proxy(
        &upstream,
        &["--max-connections", "1", "--send-timeout", "1s"],
    );
    let mut hog = h2c(&idem).await;
    let request = hyper::Request::get("http://api.test/big")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    // The head arrives; the body is never read, so the window is never granted again.
    let _unread = hog.send_request(request).await.unwrap();
    let started = Instant::now();
    let (status, _) = raw(
        &idem,
        "GET /whoami HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "served once the stalled HTTP/2 reader was cut off: {:?}",
        started.elapsed()
    );
}

/// The same request over HTTP/1.1 and HTTP/2 is one request: `Host` (fingerprinted here) is
/// what `:authority` names, so a retry that changes protocol is replayed, and another host
/// is still another request.
#[tokio::test]
async fn a_retry_over_http2_is_the_same_request_as_over_http1() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream.url(), &["--fingerprint-header", "host"]);
    let (status, _) = raw(&idem, &post("/charges", Some("h2-same"))).await;
    assert_eq!(status, 201);
    let mut sender = h2c(&idem).await;
    let retry = |authority: &str| {
        hyper::Request::post(format!("http://{authority}/charges"))
            .header("idempotency-key", "h2-same")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };
    let replayed = sender.send_request(retry("api.test")).await.unwrap();
    assert_eq!(replayed.status(), 201);
    assert_eq!(replayed.headers()["x-idempotent-replayed"], "true");
    let other_host = sender.send_request(retry("other.test")).await.unwrap();
    assert_eq!(other_host.status(), 422, "another host is another request");
    assert_eq!(upstream.calls("/charges"), 1);
}
