//! `idem proxy`: a reverse proxy that applies the layer's semantics to every request and
//! forwards to the upstream.
//!
//! What happens when the upstream fails decides whether a retry may execute:
//! - the request was never delivered (connection refused, DNS, connect timeout): 502
//!   `upstream_unreachable`, and the key is released, so a retry executes;
//! - the request was delivered but no response came in time, or the connection broke (the
//!   upstream may have executed it): 504 `upstream_outcome_unknown`, stored like any
//!   response, so every retry with that key gets the same 504 until the record expires and
//!   the operation is never executed twice. The client checks the outcome upstream, then
//!   uses a new key.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use http::{HeaderMap, HeaderValue, Request, Response, Version, header};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idem_http::headers::remove_hop_by_hop;
use idem_http::{InnerBody, ProblemCode, ResponseBody};
use ipnet::IpNet;
use tower::ServiceBuilder;
use tracing::Instrument;

use crate::access_log::{AccessLogLayer, UPSTREAM_DURATION, UpstreamTime};
use crate::config;
use crate::connections::OverTls;
use crate::path_guard::OneMeaningPerPathLayer;
use crate::server::Server;
use crate::upstream::Upstream;

/// How long a TCP connect to the upstream may take. A connect that fails delivers nothing,
/// so its error is a clean 502 with the key released; kept well under the response timeout
/// so that a slow connect is never mistaken for an unknown outcome.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request could not be forwarded at all.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The upstream could not be reached; nothing was delivered.
    #[error("upstream unreachable: {0}")]
    NotDelivered(#[source] hyper_util::client::legacy::Error),
    /// The request's target could not be rebuilt for the upstream.
    #[error("cannot build the upstream request: {0}")]
    BadTarget(#[from] http::Error),
}

type UpstreamClient = Client<HttpsConnector<HttpConnector>, InnerBody<Body>>;

/// The innermost service: sends one request upstream.
#[derive(Clone)]
struct Forwarder {
    client: UpstreamClient,
    upstream: std::sync::Arc<Upstream>,
    timeout: Duration,
    /// Peers whose forwarding headers are believed and extended.
    trusted_proxies: std::sync::Arc<[IpNet]>,
}

impl tower::Service<Request<InnerBody<Body>>> for Forwarder {
    type Response = Response<ResponseBody>;
    type Error = ForwardError;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, ForwardError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ForwardError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<InnerBody<Body>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.forward(request).await })
    }
}

impl Forwarder {
    async fn forward(
        &self,
        request: Request<InnerBody<Body>>,
    ) -> Result<Response<ResponseBody>, ForwardError> {
        let (mut parts, body) = request.into_parts();
        let client_address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        let over_tls = parts.extensions.get::<OverTls>().is_some();
        // HTTP/2 requests name their host in the `:authority` pseudo-header, not `Host`.
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        });
        parts.uri = self.upstream.target(&parts.uri)?;
        // `TE: trailers` is hop-by-hop, yet says something the upstream needs to know: that
        // the client reads trailers (gRPC servers refuse calls without it). Passed on as
        // HTTP/2 allows it, alone.
        let accepts_trailers = parts
            .headers
            .get_all(header::TE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|coding| coding.trim().eq_ignore_ascii_case("trailers"));
        remove_hop_by_hop(&mut parts.headers);
        if accepts_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        // The upstream connection's own version is chosen by the client (ALPN, or h2c when
        // configured); a request marked HTTP/2 would be refused on an HTTP/1.1 connection.
        parts.version = Version::HTTP_11;
        // A `[::]` listener sees IPv4 peers as `::ffff:a.b.c.d`: compared, and named
        // downstream, as the IPv4 addresses they are.
        let client_address =
            client_address.map(|peer| SocketAddr::new(peer.ip().to_canonical(), peer.port()));
        let trusted = client_address.is_some_and(|peer| {
            self.trusted_proxies
                .iter()
                .any(|network| network.contains(&peer.ip()))
        });
        if !trusted {
            // A client may write anything in these: only a trusted proxy's word is passed on.
            for name in FORWARDING_HEADERS {
                parts.headers.remove(name);
            }
        }
        add_forwarding_headers(
            &mut parts.headers,
            client_address,
            original_host.as_ref(),
            over_tls,
        );
        if let Ok(host) = HeaderValue::from_str(self.upstream.authority().as_str()) {
            parts.headers.insert(header::HOST, host);
        }
        let span = tracing::info_span!(
            target: crate::traces::TARGET,
            "upstream",
            http.request.method = %parts.method,
            server.address = %self.upstream.authority(),
        );
        crate::traces::pass_on(&span, &mut parts.headers);
        let sent = std::time::Instant::now();
        match tokio::time::timeout(
            self.timeout,
            self.client.request(Request::from_parts(parts, body)),
        )
        .instrument(span)
        .await
        {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                let took = sent.elapsed();
                record_upstream(status_class(parts.status), took);
                parts.extensions.insert(UpstreamTime(took));
                remove_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(
                    parts,
                    body.map_err(Into::into).boxed_unsync(),
                ))
            }
            Ok(Err(error)) if error.is_connect() => {
                record_upstream(UPSTREAM_FAILED, sent.elapsed());
                Err(ForwardError::NotDelivered(error))
            }
            Ok(Err(error)) => {
                record_upstream(UPSTREAM_FAILED, sent.elapsed());
                tracing::warn!(%error, "upstream connection failed after the request was sent; outcome unknown");
                Ok(outcome_unknown(
                    "the upstream connection broke after the request was sent",
                ))
            }
            Err(_elapsed) => {
                record_upstream(UPSTREAM_FAILED, sent.elapsed());
                tracing::warn!(timeout = ?self.timeout, "upstream did not answer in time; outcome unknown");
                Ok(outcome_unknown("the upstream did not answer in time"))
            }
        }
    }
}

/// The `status_class` of an upstream that gave no answer: refused, broke or timed out.
const UPSTREAM_FAILED: &str = "error";

/// One sample of [`UPSTREAM_DURATION`]: recorded here, where the forwarding runs to its end
/// even when the client hung up, not in the access log, which a hang-up drops.
fn record_upstream(status_class: &'static str, took: Duration) {
    metrics::histogram!(UPSTREAM_DURATION, "status_class" => status_class)
        .record(took.as_secs_f64());
}

/// `2xx`, `4xx`...: a label with five values, whatever statuses the upstream invents.
fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn outcome_unknown(what: &str) -> Response<ResponseBody> {
    let detail = format!(
        "{what}: it may or may not have executed the request. This answer is kept for this idempotency key so the request is never executed twice; check the outcome upstream, then use a new key"
    );
    ProblemCode::UpstreamOutcomeUnknown
        .response(&detail)
        .map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

/// The headers through which proxies tell the upstream who the client was, and where and
/// how it called (and, for some servers, which URL to route: `X-Original-URL`,
/// `X-Rewrite-URL`). Only those set by a trusted proxy (`--trusted-proxy`) are passed on;
/// from anyone else they are removed, and idem's own `X-Forwarded-For/-Host/-Proto` and
/// `Forwarded` added.
const FORWARDING_HEADERS: [&str; 15] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-original-forwarded-for",
    "x-original-url",
    "x-rewrite-url",
];

/// Adds this hop to the forwarding headers: after the earlier hops' when the peer is a trusted
/// proxy, alone otherwise (the untrusted ones were removed before).
fn add_forwarding_headers(
    headers: &mut HeaderMap,
    client: Option<SocketAddr>,
    host: Option<&HeaderValue>,
    over_tls: bool,
) {
    let Some(client) = client else { return };
    let proto = if over_tls { "https" } else { "http" };
    let ip = client.ip().to_string();
    let forwarded_for = appended(joined(headers, "x-forwarded-for"), &ip);
    let node = if client.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip
    };
    let mut forwarded = format!("for={node};proto={proto}");
    if let Some(host) = host.and_then(|value| value.to_str().ok()) {
        forwarded.push_str(";host=");
        forwarded.push_str(&quoted_string(host));
        // A TLS terminator in front of idem already said which host and scheme the client
        // used: keep its word.
        if !headers.contains_key("x-forwarded-host")
            && let Ok(value) = HeaderValue::from_str(host)
        {
            headers.insert("x-forwarded-host", value);
        }
    }
    let forwarded = appended(joined(headers, header::FORWARDED.as_str()), &forwarded);
    for (name, value) in [("x-forwarded-for", forwarded_for), ("forwarded", forwarded)] {
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.insert(name, value);
        }
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
}

/// Every line of a list header, in order, as one comma-separated list (RFC 9110 §5.3): a
/// trusted proxy that added a line of its own instead of appending to the client's must not
/// lose its line to the client's. Bytes, not text: a client that puts a non-ASCII byte in the
/// line a trusted proxy appends to must not get the whole line, and the proxy's entry for the
/// client with it, dropped.
fn joined(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let lines: Vec<&[u8]> = headers
        .get_all(name)
        .iter()
        .map(|value| value.as_bytes().trim_ascii())
        .filter(|line| !line.is_empty())
        .collect();
    (!lines.is_empty()).then(|| lines.join(&b", "[..]))
}

/// `earlier, this`, or `this` alone.
fn appended(earlier: Option<Vec<u8>>, this: &str) -> Vec<u8> {
    match earlier {
        Some(mut list) => {
            list.extend_from_slice(b", ");
            list.extend_from_slice(this.as_bytes());
            list
        }
        None => this.as_bytes().to_vec(),
    }
}

/// `text` as an RFC 9110 quoted-string (RFC 7239 `Forwarded` values): in quotes, with `"`
/// and `\\` escaped, so that a `Host` holding `;` or `"` cannot add parameters of its own.
fn quoted_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        if matches!(character, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(character);
    }
    quoted.push('"');
    quoted
}

async fn unreachable(error: ForwardError) -> impl IntoResponse {
    tracing::warn!(%error, "request not delivered upstream; key released");
    let detail = "the upstream could not be reached, so the request was not delivered and nothing was executed; retry with the same key";
    ProblemCode::UpstreamUnreachable.response(detail)
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(config: config::Proxy, server: Server) -> anyhow::Result<()> {
    let upstream = std::sync::Arc::new(config.upstream.clone());
    let routes = std::sync::Arc::new(config.routes);
    let mut connector = HttpConnector::new();
    // The response timeout also covers connecting: keep the connect timeout well inside it, so
    // that an upstream that cannot be reached is a clean 502, never an unknown outcome.
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT.min(config.upstream_timeout / 2)));
    connector.set_nodelay(true);
    // The connector takes `https://` targets; plain ones pass through it untouched.
    connector.enforce_http(false);
    let connector = crate::tls::connector(
        connector,
        config.common.upstream_ca_file.as_deref(),
        config.upstream.is_tls(),
    )?;
    let client: UpstreamClient = Client::builder(TokioExecutor::new())
        .http2_only(config.upstream_http2 && !config.upstream.is_tls())
        .build(connector);
    let forwarder = Forwarder {
        client,
        upstream: std::sync::Arc::clone(&upstream),
        timeout: config.upstream_timeout,
        trusted_proxies: config.trusted_proxies.into(),
    };

    let require_key = config.require_key;
    let access_log = AccessLogLayer::new(std::sync::Arc::clone(&routes));
    let (requires, skips, ttls, lapses) = (
        std::sync::Arc::clone(&routes),
        std::sync::Arc::clone(&routes),
        std::sync::Arc::clone(&routes),
        routes,
    );
    let layer = server
        .layer_builder()
        .require_key_when(move |parts| requires.requires_key(parts, require_key))
        .skip_when(move |parts| skips.skips(parts))
        .ttl_for(move |parts| ttls.ttl(parts))
        .on_lapse_for(move |parts| lapses.on_lapse(parts))
        .require_principal(config.require_principal)
        .methods(config.methods)
        .key_header(config.key_header)
        .key_policy(config.key_policy)
        .max_request_body(config.max_request_body)
        .max_stored_response(config.max_stored_response)
        .store_server_errors(config.store_server_errors)
        .replayed_headers(config.replayed_headers)
        .canonical_json(config.canonical_json)
        .fingerprint_headers(config.fingerprint_headers)
        .json_filter(config.json_filter)
        // Once a request is forwarded it cannot be recalled: a client that hangs up must not
        // free the key while the upstream still executes (the layer's default, kept here
        // explicitly because the gateway depends on it).
        .on_cancel(idem_http::CancelPolicy::RunToCompletion)
        .build();
    let service = ServiceBuilder::new()
        .layer(access_log)
        .layer(OneMeaningPerPathLayer)
        .layer(HandleErrorLayer::new(unreachable))
        .layer(layer)
        .service(forwarder);
    let app = Router::new().fallback_service(service);
    tracing::info!(upstream = %config.upstream, "proxying");
    server.serve("proxy", app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_cannot_add_parameters_to_forwarded() {
        assert_eq!(quoted_string("api.local:8080"), "\"api.local:8080\"");
        assert_eq!(
            quoted_string("evil\";for=10.0.0.1;x=\"\\"),
            "\"evil\\\";for=10.0.0.1;x=\\\"\\\\\""
        );
        let mut headers = HeaderMap::new();
        let host = HeaderValue::from_static("a\";proto=https");
        add_forwarding_headers(
            &mut headers,
            Some("192.0.2.1:5555".parse().unwrap()),
            Some(&host),
            false,
        );
        assert_eq!(
            headers["forwarded"],
            "for=192.0.2.1;proto=http;host=\"a\\\";proto=https\""
        );
    }

    #[test]
    fn forwarding_headers_extend_earlier_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert!(headers.get("x-secret-hop").is_none() && headers.get(header::CONNECTION).is_none());
        let host = HeaderValue::from_static("api.local:8080");
        add_forwarding_headers(
            &mut headers,
            Some("192.0.2.1:5555".parse().unwrap()),
            Some(&host),
            false,
        );
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 192.0.2.1");
        assert_eq!(
            headers["forwarded"],
            "for=192.0.2.1;proto=http;host=\"api.local:8080\""
        );
        assert_eq!(headers["x-forwarded-host"], "api.local:8080");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }
}
