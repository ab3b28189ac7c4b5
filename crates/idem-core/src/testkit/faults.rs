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
