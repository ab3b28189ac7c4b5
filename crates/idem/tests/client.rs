//! The Rust client SDK against the real `idem proxy`: one logical attempt, one key, every
//! retry safe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem_client::{ClientError, IdemClient, RetryPolicy};
use serde_json::json;
use support::{Idem, Upstream, free_port};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

fn proxy(upstream: &Upstream) -> Idem {
    Idem::proxy_on_memory(&upstream.url(), &[])
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_secs(2),
    }
}

/// A front that delivers the first `lose` requests to `target` but loses their answers (the
/// connection drops once the answer starts), then relays normally: the retry-after-timeout
/// case a client cannot tell from a request that never arrived.
async fn lossy_front(target: SocketAddr, lose: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let lossy = seen.fetch_add(1, Ordering::SeqCst) < lose;
            tokio::spawn(async move {
                let mut server = TcpStream::connect(target).await.unwrap();
                if lossy {
                    let (mut client_read, _client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let forward = tokio::io::copy(&mut client_read, &mut server_write);
                    let mut first_byte = [0u8; 1];
                    tokio::select! {
                        _ = forward => {}
                        _ = server_read.read(&mut first_byte) => {} // the answer exists; drop it
                    }
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn a_lost_answer_is_retried_with_the_same_key_and_replayed() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream);
    let target: SocketAddr = idem.url.trim_start_matches("http://").parse().unwrap();
    let front = lossy_front(target, 1).await;
    let client = IdemClient::new(&format!("http://{front}"))
        .unwrap()
        .retry_policy(fast_retries());
    let response = client
        .post("/charges")
        .json(&json!({"amount": 1000}))
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.attempts(), 2);
    assert!(
        response.replayed(),
        "the second attempt got the first one's stored answer"
    );
    assert_eq!(
        upstream.calls("/charges"),
        1,
        "the charge ran once although the client sent it twice"
    );
    assert_eq!(upstream.last_headers()["idempotency-key"], response.key());
    assert_eq!(uuid_version(response.key()), Some('4'));
}

fn uuid_version(key: &str) -> Option<char> {
    (key.len() == 36).then(|| key.chars().nth(14)).flatten()
}

/// An upstream's rate limit passes through the gateway with the key released: the client
/// waits its `Retry-After` and retries with the same key, which executes.
#[tokio::test]
async fn a_rate_limit_is_retried_with_the_same_key_and_executes() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/charges",
        axum::routing::post(move || {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if call == 0 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1")],
                        "slow down",
                    )
                        .into_response()
                } else {
                    (StatusCode::CREATED, "{\"id\":\"ch_1\"}").into_response()
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let idem = Idem::proxy_on_memory(&upstream, &[]);
    let response = IdemClient::new(&idem.url)
        .unwrap()
        .retry_policy(fast_retries())
        .post("/charges")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.attempts(), 2);
    assert!(!response.replayed());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn conflict_is_retried_after_retry_after_then_replayed() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream);
    let client = IdemClient::new(&idem.url)
        .unwrap()
        .retry_policy(fast_retries());
    let first = client.post("/slow").body("{}").key("shared-attempt");
    let first = tokio::spawn(first.send());
    while upstream.calls("/slow") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = client
        .post("/slow")
        .body("{}")
        .key("shared-attempt")
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 201);
    assert!(second.attempts() >= 2, "the 409 was retried");
    assert!(second.replayed());
    assert!(!first.await.unwrap().unwrap().replayed());
    assert_eq!(upstream.calls("/slow"), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_stored_server_errors_not_re_executed() {
    let upstream = Upstream::start().await;
    let idem = proxy(&upstream);
    let client = IdemClient::new(&idem.url)
        .unwrap()
        .retry_policy(fast_retries());
    client
        .post("/charges")
        .body("{\"a\":1}")
        .key("k")
        .send()
        .await
        .unwrap();
    let mismatch = client
        .post("/charges")
        .body("{\"a\":2}")
        .key("k")
        .send()
        .await
        .unwrap();
    assert_eq!((mismatch.status().as_u16(), mismatch.attempts()), (422, 1));
    assert_eq!(
        mismatch.error_code().as_deref(),
        Some("idempotency_key_mismatch")
    );

    // A 500 is retried once: the retry is the stored 500, replayed, so it stops there.
    let failed = client.post("/status/500").body("{}").send().await.unwrap();
    assert_eq!(failed.status(), 500);
    assert_eq!(failed.attempts(), 2);
    assert!(failed.replayed());
    assert_eq!(upstream.calls("/status/500"), 1);
}

#[tokio::test]
async fn no_answer_at_all_is_an_error_carrying_the_key_to_resume_with() {
    let client = IdemClient::new(&format!("http://127.0.0.1:{}", free_port()))
        .unwrap()
        .retry_policy(RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        });
    let attempt = client.post("/charges").body("{}");
    let key = attempt.idempotency_key().to_owned();
    match attempt.send().await {
        Err(error @ ClientError::Transport { attempts: 3, .. }) => {
            assert_eq!(error.key(), Some(key.as_str()))
        }
        other => panic!("expected a transport error after 3 attempts, got {other:?}"),
    }
}
