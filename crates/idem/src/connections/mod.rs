//! Accepting and serving connections, with the limits that keep slow and greedy clients from
//! holding the server down:
//!
//! - a client has `header_read_timeout` to send a request head, counted from when the
//!   connection opens or the previous response ends, so half a head and silence is closed;
//! - an idle keep-alive connection is closed after `keep_alive_timeout`;
//! - a client that stops reading its response (its receive window stays full) is cut off
//!   once a write has made no progress for `send_timeout` (watched by the connection's task,
//!   see `write_progress`), so it cannot hold a slot;
//! - at most `max_connections` are served at once: past that, new connections wait in the
//!   listen backlog until one closes, and the ones already open are served as usual;
//! - on shutdown, accepting stops and every connection finishes its request and closes.
//!
//! Connections speak HTTP/1.1 or HTTP/2: over TLS (`--tls-cert`) as ALPN chose, over plain
//! TCP HTTP/2 when the client starts with its preface (h2c with prior knowledge, as gRPC
//! clients do). The same limits hold for both:
//!
//! - the first request must begin within the header read timeout of the connection's accept,
//!   TLS handshake and protocol detection included (hyper times only HTTP/1.1 heads);
//! - an HTTP/2 connection carries at most [`MAX_STREAMS`] requests at once;
//! - a client that stops granting HTTP/2 flow-control window is cut off like one that stops
//!   reading its socket (see `held_bodies`);
//! - `keep_alive_timeout = 0s` closes an HTTP/2 connection after its first response, as it
//!   does an HTTP/1.1 one; an idle connection closing gracefully gets the send timeout to
//!   flush, not longer.
//!
//! HTTP/2 requests are given the `Host` header their `:authority` names and one `Cookie`
//! line (RFC 9113 §8.2.3), so that the layer, the fingerprint and an HTTP/1.1 upstream see
//! the same request whichever protocol the client spoke.
//!
//! Written on hyper's connection API rather than `axum::serve`, which sets no timer (so
//! hyper's header read timeout never runs) and bounds nothing.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use held_bodies::HeldBodies;
use write_progress::{WatchedStream, WriteProgress};

mod held_bodies;
mod write_progress;

/// The connection limits, resolved from the settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a client has to send a whole request head.
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection stays open; `None`: one request per connection.
    pub keep_alive_timeout: Option<Duration>,
    /// How many connections are served at once.
    pub max_connections: usize,
    /// How long a write to the client may make no progress before the connection is closed.
    pub send_timeout: Duration,
}

/// Marks a request that came over TLS (in its extensions): the proxy tells the upstream
/// `proto=https`.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// The most requests one HTTP/2 connection carries at once (nginx's
/// `http2_max_concurrent_streams` is 128): with `max_connections`, what bounds the requests
/// in flight, and so the memory buffered bodies take.
pub const MAX_STREAMS: u32 = 128;

/// How long to wait before accepting again after the process ran out of file descriptors
/// (or another resource): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connections of one listener: a permit each, so that the count is bounded and the
/// drain can wait for all of them.
pub struct Connections {
    permits: Arc<Semaphore>,
    max: u32,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
}

impl Connections {
    /// Room for `limits.max_connections` connections, each over TLS when `tls` is given.
    pub fn new(limits: ConnectionLimits, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        // A semaphore counts in u32 for `acquire_many`; more connections than that is not a
        // limit anyone sets.
        let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            limits,
            tls: tls.map(TlsAcceptor::from),
        }
    }

    /// Accepts and serves connections until `shutdown` turns true; each connection then
    /// finishes its request and closes (see [`drained`](Self::drained)).
    pub async fn serve(&self, listener: TcpListener, app: Router, shutdown: watch::Receiver<bool>) {
        let mut stop = shutdown.clone();
        let stopped = async move {
            // An error means the sender is gone: nobody can ask for a shutdown any more.
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let mut stopped = pin!(stopped);
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_closed) => return,
                },
                () = &mut stopped => return,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        if !is_per_connection(&error) {
                            tracing::warn!(%error, "cannot accept connections; retrying shortly");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                        continue;
                    }
                },
                () = &mut stopped => return,
            };
            serve_connection(
                stream,
                peer,
                app.clone(),
                self.limits,
                self.tls.clone(),
                permit,
                shutdown.clone(),
            );
        }
    }

    /// Whether every connection closed by `deadline`.
    pub async fn drained(&self, deadline: Instant) -> bool {
        tokio::time::timeout_at(deadline, self.permits.acquire_many(self.max))
            .await
            .is_ok()
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        (self.max as usize).saturating_sub(self.permits.available_permits())
    }
}

/// Errors that concern one connection (reset before it was accepted), not the listener.
fn is_per_connection(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection in its own task, which holds `permit` until the connection closes.
fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    permit: OwnedSemaphorePermit,
    shutdown: watch::Receiver<bool>,
) {
    // Responses are written whole by hyper; Nagle would only delay the last segment.
    let _ = stream.set_nodelay(true);
    let accepted = Instant::now();
    // Hyper bounds reading the head, not writing the response: a client that never reads
    // would hold its slot (and the drain) for as long as it likes. Its writes are watched
    // (below TLS, where the bytes leave) instead.
    let progress = Arc::new(WriteProgress::default());
    let stream = WatchedStream::new(stream, Arc::clone(&progress));
    tokio::spawn(async move {
        let _permit = permit;
        match tls {
            None => {
                drive(
                    stream, peer, app, limits, progress, shutdown, false, accepted,
                )
                .await
            }
            Some(acceptor) => {
                // The handshake counts as the first request's head: a client that opens a
                // connection and goes silent is closed as one that sends half a head.
                match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(stream)) => {
                        drive(
                            stream, peer, app, limits, progress, shutdown, true, accepted,
                        )
                        .await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                    }
                    Err(_elapsed) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    });
}

/// Serves the requests of one connection (after its TLS handshake, if any) until it closes,
/// stalls, idles out, or the server shuts down.
#[allow(
    clippy::too_many_arguments,
    reason = "one connection's parts, passed once"
)]
async fn drive<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    progress: Arc<WriteProgress>,
    mut shutdown: watch::Receiver<bool>,
    over_tls: bool,
    accepted: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let held = Arc::new(HeldBodies::new());
    let service = {
        let (activity, held) = (Arc::clone(&activity), Arc::clone(&held));
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let http2 = request.version() == http::Version::HTTP_2;
            if http2 {
                let uri = request.uri().clone();
                as_one_message(request.headers_mut(), &uri);
            }
            request.extensions_mut().insert(ConnectInfo(peer));
            if over_tls {
                request.extensions_mut().insert(OverTls);
            }
            let busy = Busy::new(Arc::clone(&activity));
            let call = app.clone().oneshot(request.map(Body::new));
            // Over HTTP/1.1 a client that stops reading blocks the socket, which the write
            // watch sees: only HTTP/2 responses need their frames watched.
            let held = http2.then(|| Arc::clone(&held));
            async move {
                let response = call.await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| HeldBodies::watch(held.as_ref(), body, busy)),
                )
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(limits.keep_alive_timeout.is_some());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = pin!(connection);
    // Closing because the server stops (the drain bounds it) or because the connection
    // idled out (then only unsent bytes are left: the send timeout bounds it).
    let mut closing = false;
    let mut idle_closed: Option<Instant> = None;
    let first_request_by = accepted + limits.header_read_timeout;
    // `0s` (no keep-alive): an HTTP/2 connection closes once idle after its first response.
    let idle_limit = limits.keep_alive_timeout.unwrap_or(Duration::ZERO);
    let mut stall = StallWatch::new(limits.send_timeout);
    loop {
        // Before the first request, the deadline is the first request's (looked at again
        // after one keep-alive period, in case a request began meanwhile); after, the idle
        // one. Moved only when it passes: waking the task on every request would cost two
        // timer registrations a request.
        let deadline = if activity.started() {
            activity.idle_deadline(idle_limit)
        } else if idle_limit.is_zero() {
            first_request_by
        } else {
            first_request_by.min(Instant::now() + idle_limit)
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection closed with an error");
                }
                return;
            }
            changed = shutdown.wait_for(|stop| *stop), if !closing => {
                // Finish the request in progress, then close; a sender gone (`Err`) means
                // the server is stopping too.
                let _ = changed;
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = stall.check.tick() => {
                if stall.stalled(progress.snapshot()) || held.longest_held() >= limits.send_timeout {
                    tracing::debug!(%peer, "client stopped reading its answer; connection closed");
                    return;
                }
                if idle_closed.is_some_and(|since| since.elapsed() >= limits.send_timeout) {
                    tracing::debug!(%peer, "idle connection did not finish closing; dropped");
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline), if !closing => {
                if !activity.started() && Instant::now() >= first_request_by {
                    tracing::debug!(%peer, "no request within the header read timeout; connection closed");
                    return;
                }
                if activity.started() && activity.idle_for() >= idle_limit {
                    tracing::debug!(%peer, "idle keep-alive connection closed");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    idle_closed = Some(Instant::now());
                }
            }
        }
    }
}

/// An HTTP/2 request's headers as an HTTP/1.1 message would carry them: `Host` from
/// `:authority` (when no `Host` came along) and the `Cookie` fields joined into one with
/// `; ` (RFC 9113 §8.2.3).
fn as_one_message(headers: &mut http::HeaderMap, uri: &http::Uri) {
    if !headers.contains_key(http::header::HOST)
        && let Some(authority) = uri.authority()
        && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
    {
        headers.insert(http::header::HOST, host);
    }
    let cookies: Vec<&[u8]> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(http::HeaderValue::as_bytes)
        .collect();
    if cookies.len() > 1
        && let Ok(joined) = http::HeaderValue::from_bytes(&cookies.join(&b"; "[..]))
    {
        headers.insert(http::header::COOKIE, joined);
    }
}

/// Whether a connection's writes have been stuck for the send timeout: checked four times a
/// timeout, so a client that stopped reading is cut off between one and one and a half send
/// timeouts after its last byte was taken.
struct StallWatch {
    check: tokio::time::Interval,
    timeout: Duration,
    last_written: u64,
    stuck_since: Option<Instant>,
}

impl StallWatch {
    fn new(timeout: Duration) -> Self {
        let period = (timeout / 4).max(Duration::from_millis(1));
        let mut check = tokio::time::interval_at(Instant::now() + period, period);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            check,
            timeout,
            last_written: 0,
            stuck_since: None,
        }
    }

    /// Notes a check of `(written, blocked)`; true once a write has waited, with nothing
    /// written, for the whole timeout.
    fn stalled(&mut self, (written, blocked): (u64, bool)) -> bool {
        if !blocked || written != self.last_written {
            self.last_written = written;
            self.stuck_since = None;
            return false;
        }
        let since = *self.stuck_since.get_or_insert_with(Instant::now);
        since.elapsed() >= self.timeout
    }
}

/// When a connection last finished a request, how many it is serving now, and whether it
/// began one yet.
struct Activity {
    in_flight: AtomicUsize,
    last_done: Mutex<Instant>,
    started: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether a request began on this connection.
    fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    fn last_done(&self) -> Instant {
        *self
            .last_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long the connection has been idle; zero while it serves a request.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.last_done().elapsed()
    }

    /// When the connection will have been idle for `limit`, if nothing happens before.
    fn idle_deadline(&self, limit: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            Instant::now() + limit
        } else {
            self.last_done() + limit
        }
    }
}

/// Marks a connection busy while one request is being answered, its body included.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.started.store(true, Ordering::Release);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self
            .0
            .last_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_stuck_for_the_timeout_is_a_stall_and_progress_is_not() {
        let mut watch = StallWatch::new(Duration::from_millis(40));
        assert!(!watch.stalled((0, true)), "stuck, but not for long yet");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(watch.stalled((0, true)), "stuck for the whole timeout");
        assert!(!watch.stalled((10, true)), "bytes went out: not stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !watch.stalled((10, true)),
            "stuck again, the clock starts anew"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !watch.stalled((10, false)),
            "nothing waits to be written: an idle client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!watch.stalled((10, true)));
    }
}
