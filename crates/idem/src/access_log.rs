//! One access-log line per request, and its request id.
//!
//! The request id is the client's `X-Request-Id` when it sent one usable id (1 to 128
//! characters of letters, digits and `-_.:+/=@`), otherwise a fresh UUID; either way it is
//! set on the request passed upstream and on the response. The line (target `idem::access`,
//! at info; JSON with `--log-format json`) names the method, the route (the proxy's rule the
//! request matched, or `idem serve`'s route pattern), the status, what the idempotency layer did (`outcome`), the record (a hash of
//! scope and key), the time spent in the store, upstream and in all, and the request id.
//! Keys, bodies, cookies and `Authorization` are never written. A request whose client hung
//! up before its answer still gets its line, with status 499 (nginx's "client closed
//! request") and the outcome `client_closed`.
//!
//! Written by hand rather than with tower-http's request-id layers: `SetRequestId` keeps any
//! value a client sends, however long or malformed, and one layer reading the response's
//! extensions writes the line without another future per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Request, Response};
use idem_http::RequestOutcome;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::routes::RouteTable;

/// The header that carries the request id.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client request id kept: longer ones are replaced (a log line is no place for
/// a client's kilobytes).
const MAX_REQUEST_ID_LEN: usize = 128;

/// The layer's outcomes by route (the rule a request matched, or `-`).
pub const ROUTE_REQUESTS: &str = "idem_route_requests_total";

/// The histogram of the upstream's time to a response head, by status class (`error` when it
/// gave none): the gateway's view of the API behind it. Recorded by the proxy's forwarder.
pub const UPSTREAM_DURATION: &str = "idem_upstream_duration_seconds";

/// How long the upstream took to answer a request's head, put in the response's extensions
/// by the proxy's forwarder.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTime(pub Duration);

/// How a request's route is named in its line.
#[derive(Debug, Clone)]
enum RouteNames {
    /// By the first of the proxy's rules it matches.
    Rules(Arc<RouteTable>),
    /// By the axum route that matched it (the layer runs after routing).
    Matched,
}

/// Adds request ids and access-log lines to a service.
#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    routes: RouteNames,
}

impl AccessLogLayer {
    /// Names each request's route by the first of `routes` it matches (`idem proxy`).
    pub fn new(routes: Arc<RouteTable>) -> Self {
        Self {
            routes: RouteNames::Rules(routes),
        }
    }

    /// Names each request's route by axum's route pattern (`idem serve`), for a layer added
    /// to a router with `Router::layer`, which runs after routing.
    pub fn matched_paths() -> Self {
        Self {
            routes: RouteNames::Matched,
        }
    }
}

impl RouteNames {
    fn name(&self, parts: &http::request::Parts) -> Option<Arc<str>> {
        match self {
            Self::Rules(table) => table.pattern(parts),
            Self::Matched => parts
                .extensions
                .get::<axum::extract::MatchedPath>()
                .map(|path| Arc::from(path.as_str())),
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service of [`AccessLogLayer`].
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    routes: RouteNames,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let request_id = request_id(request.headers().get_all(&X_REQUEST_ID));
        request
            .headers_mut()
            .insert(X_REQUEST_ID, request_id.clone());
        let method = method_label(request.method());
        let (parts, body) = request.into_parts();
        let route = self.routes.name(&parts);
        // The request's trace span (exported only with `--otlp-endpoint`), a child of the
        // caller's trace when it sent a `traceparent`.
        let span = tracing::info_span!(
            target: crate::traces::TARGET,
            "request",
            http.request.method = method,
            http.route = route.as_deref().unwrap_or("-"),
            idem.request_id = request_id.to_str().unwrap_or("-"),
            http.response.status_code = tracing::field::Empty,
            idem.outcome = tracing::field::Empty,
        );
        crate::traces::continue_trace(&span, &parts.headers);
        let response = {
            let _entered = span.enter();
            self.inner.call(Request::from_parts(parts, body))
        };
        let mut line = Line {
            method,
            route,
            request_id,
            started,
            written: false,
        };
        Box::pin(
            async move {
                // The store's share, counted here for services that call the engine directly
                // (`idem serve`); the idempotency layer counts its own and reports it.
                let (response, store_time) = idem_core::store_time_of(response).await;
                let mut response = match response {
                    Ok(response) => response,
                    Err(error) => {
                        let status = http::StatusCode::INTERNAL_SERVER_ERROR.as_u16();
                        line.write(status, None, Some(store_time), None);
                        return Err(error);
                    }
                };
                let outcome = response.extensions().get::<RequestOutcome>().copied();
                let store_time = outcome.map_or(store_time, |outcome| outcome.store_time);
                let upstream = response
                    .extensions()
                    .get::<UpstreamTime>()
                    .map(|time| time.0);
                response
                    .headers_mut()
                    .insert(X_REQUEST_ID, line.request_id.clone());
                let current = tracing::Span::current();
                current.record("http.response.status_code", response.status().as_u16());
                if let Some(outcome) = outcome {
                    current.record("idem.outcome", outcome.outcome);
                }
                line.write(
                    response.status().as_u16(),
                    outcome.map(|outcome| (outcome.outcome, outcome.record)),
                    Some(store_time),
                    upstream,
                );
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The status written for a client that hung up before its answer (nginx's).
const CLIENT_CLOSED: u16 = 499;

/// One request's line: written when its answer is ready, or, when the client hung up first
/// (the request's future dropped), with status 499 and the outcome `client_closed`.
struct Line {
    method: &'static str,
    route: Option<Arc<str>>,
    request_id: HeaderValue,
    started: Instant,
    written: bool,
}

impl Line {
    fn write(
        &mut self,
        status: u16,
        outcome: Option<(&'static str, Option<idem_core::RecordId>)>,
        store_time: Option<Duration>,
        upstream: Option<Duration>,
    ) {
        self.written = true;
        let route = self.route.as_deref().unwrap_or("-");
        if let Some((outcome, _)) = outcome {
            // By route: the hit rate and the duplicates prevented of each of the proxy's
            // rules (bounded: the rules are the config's, `-` for the rest). The label shares
            // the rule's text rather than copying it per request.
            let label = self.route.as_ref().map_or_else(
                || metrics::SharedString::const_str("-"),
                |route| metrics::SharedString::from(Arc::clone(route)),
            );
            metrics::counter!(ROUTE_REQUESTS, "route" => label, "outcome" => outcome).increment(1);
        }
        tracing::info!(
            target: "idem::access",
            method = self.method,
            route,
            status,
            outcome = outcome.map_or("-", |(outcome, _)| outcome),
            record = outcome.and_then(|(_, record)| record).map(|id| id.to_hex()),
            store_ms = store_time.map(millis),
            upstream_ms = upstream.map(millis),
            total_ms = millis(self.started.elapsed()),
            request_id = self.request_id.to_str().unwrap_or("-"),
            "request"
        );
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.written {
            self.write(CLIENT_CLOSED, Some(("client_closed", None)), None, None);
        }
    }
}

/// The method as logged: the standard ones by name, any other as `OTHER` (an extension
/// method may be as long as the client likes).
fn method_label(method: &http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT",
    ];
    STANDARD
        .into_iter()
        .find(|name| *name == method.as_str())
        .unwrap_or("OTHER")
}

/// The client's request id if it sent exactly one usable value, else a fresh one.
fn request_id(sent: http::header::GetAll<'_, HeaderValue>) -> HeaderValue {
    let mut values = sent.iter();
    match (values.next(), values.next()) {
        (Some(value), None) if usable(value.as_bytes()) => value.clone(),
        _ => HeaderValue::try_from(uuid::Uuid::new_v4().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("-")),
    }
}

/// 1 to [`MAX_REQUEST_ID_LEN`] bytes of letters, digits and `-_.:+/=@`: what tracing
/// systems and load balancers generate, and nothing a log reader could mistake for syntax.
fn usable(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:+/=@".contains(byte))
}

/// Milliseconds with microsecond precision, as the log's durations read.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_is_kept_only_when_usable_and_alone() {
        for kept in [
            "abc-123",
            "req_01HZX:7/+=@a",
            &"a".repeat(MAX_REQUEST_ID_LEN),
        ] {
            assert!(usable(kept.as_bytes()), "{kept}");
        }
        for replaced in [
            "",
            "has space",
            "quote\"",
            "semi;colon",
            &"a".repeat(129),
            "é",
        ] {
            assert!(!usable(replaced.as_bytes()), "{replaced}");
        }
        let mut headers = http::HeaderMap::new();
        headers.append(X_REQUEST_ID, HeaderValue::from_static("one"));
        headers.append(X_REQUEST_ID, HeaderValue::from_static("two"));
        let generated = request_id(headers.get_all(&X_REQUEST_ID));
        assert!(
            uuid::Uuid::parse_str(generated.to_str().unwrap()).is_ok(),
            "two ids sent: which one counts is ambiguous, so a fresh one"
        );
    }

    #[test]
    fn durations_read_in_milliseconds() {
        assert!((millis(Duration::from_micros(1_234)) - 1.234).abs() < f64::EPSILON);
    }
}
