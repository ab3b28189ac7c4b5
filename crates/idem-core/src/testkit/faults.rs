//! Network faults on loopback for store tests: a TCP proxy in front of the real server that
//! can be cut (dropped) and restored (started again on the same address), and a server that
//! accepts connections and never answers. Shared by every network store's tests and by the
//! binary's outage tests, so that each simulates an outage the same way without stopping a
//! server other tests share.
#![allow(clippy::expect_used, missing_docs)]

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream, lookup_host};
use tokio::task::{JoinHandle, JoinSet};

/// Forwards every connection to `target` until dropped; dropping it resets every proxied
/// connection and refuses new ones, as a crashed server or a cut link would.
pub struct Proxy {
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on `address` (port 0: any free port).
    pub async fn start(address: SocketAddr, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(address).await.expect("a loopback port");
        let address = listener.local_addr().expect("bound");
        let task = tokio::spawn(async move {
            // Dropped with the task when the proxy is cut, which aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { address, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that accepts connections and never says anything, as a hung server or a link
/// that drops packets silently would look. Stops when dropped.
pub struct Silent {
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = listener.local_addr().expect("bound");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                held.push(connection);
            }
        });
        Self { address, task }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `host:port` of a `scheme://[user[:password]@]host:port/...` URL, and the URL with
/// that authority replaced by `with`.
pub fn split_authority(url: &str) -> (String, impl Fn(SocketAddr) -> String + use<>) {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let (credentials, host_port) = match authority.rsplit_once('@') {
        Some((credentials, host_port)) => (format!("{credentials}@"), host_port.to_owned()),
        None => (String::new(), authority.to_owned()),
    };
    let (scheme, path) = (scheme.to_owned(), path.to_owned());
    let rebuild = move |with: SocketAddr| format!("{scheme}://{credentials}{with}{path}");
    (host_port, rebuild)
}

/// The address of `host:port`, or of `host` at `default_port`.
pub async fn resolve(host_port: &str, default_port: u16) -> SocketAddr {
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    lookup_host(host_port)
        .await
        .expect("a resolvable host")
        .next()
        .expect("an address")
}

/// A begin of a record no other test uses, with a long lease and TTL.
fn fresh_begin() -> crate::BeginRequest {
    use crate::{Fingerprint, LeaseToken, RecordId};
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&rand::random::<u64>().to_be_bytes());
    id[8..16].copy_from_slice(&rand::random::<u64>().to_be_bytes());
    crate::BeginRequest {
        id: RecordId::from_bytes(id),
        fingerprint: Fingerprint::builder().part("faults", b"outage").finish(),
        token: LeaseToken::random(),
        lease: std::time::Duration::from_secs(30),
        ttl: std::time::Duration::from_secs(3600),
        on_lapse: crate::OnLapse::ReportUnknown,
    }
}

/// The outage check every network store runs: with `store` connected through `proxy` (to
/// `target`), a record is begun; the proxy is cut and the store must answer
/// [`StoreError::Unavailable`](crate::StoreError::Unavailable) within `limit`, not hang; the
/// proxy comes back on the same address and the store must find the record again by itself
/// (reconnect, pool recovery) within twice `limit`.
pub async fn outage_is_unavailable_promptly_then_recovers<S: crate::Store>(
    store: &S,
    proxy: Proxy,
    target: SocketAddr,
    limit: std::time::Duration,
) {
    use std::time::Instant;
    let first = fresh_begin();
    let id = first.id;
    assert_eq!(
        store.begin(first).await.expect("begin"),
        crate::BeginOutcome::Acquired
    );

    let address = proxy.address;
    drop(proxy);
    let started = Instant::now();
    let outcome = store.get(id).await;
    assert!(
        matches!(outcome, Err(crate::StoreError::Unavailable(_))),
        "expected Unavailable, got {outcome:?}"
    );
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());

    let _restored = Proxy::start(address, target).await;
    let deadline = Instant::now() + limit * 2;
    loop {
        match store.get(id).await {
            Ok(state) => {
                assert!(state.is_some(), "the record survived the outage");
                break;
            }
            Err(error) if Instant::now() < deadline => {
                eprintln!("not yet recovered: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(error) => panic!("the store did not recover: {error}"),
        }
    }
}

/// A store pointed at a [`Silent`] server must answer
/// [`StoreError::Unavailable`](crate::StoreError::Unavailable) within `limit`, not hang.
pub async fn silent_server_is_unavailable_within<S: crate::Store>(
    store: &S,
    limit: std::time::Duration,
) {
    let started = std::time::Instant::now();
    let outcome = store.begin(fresh_begin()).await;
    assert!(
        matches!(outcome, Err(crate::StoreError::Unavailable(_))),
        "expected Unavailable, got {outcome:?}"
    );
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
}
