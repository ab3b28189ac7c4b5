//! One path, one meaning, at the gateway's door: route rules and fingerprints work on the
//! path's normal form ([`idem_http::path`]), so no spelling of a path escapes a rule, and a path
//! with no single meaning is refused here, before anything else sees it. A path that has one
//! is forwarded as the client sent it: the upstream reads it as it always did (an object
//! store's `//` stays), and every reading it can have is the one the rules judged.
//!
//! A tower layer rather than `axum::middleware::from_fn`, which boxes and clones the inner
//! service for every request: measured on the replay path (perf, 2026-12-02), that was the
//! largest single share of the CPU the gateway had added per request.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::Either;
use http::{Request, Response};
use idem_http::ProblemCode;
use tower::{Layer, Service};

/// Puts [`OneMeaningPerPath`] in front of a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct OneMeaningPerPathLayer;

impl<S> Layer<S> for OneMeaningPerPathLayer {
    type Service = OneMeaningPerPath<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OneMeaningPerPath { inner }
    }
}

/// Answers 400 `path_ambiguous` for a path with no single meaning; passes the rest on.
#[derive(Debug, Clone)]
pub struct OneMeaningPerPath<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for OneMeaningPerPath<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<Body>, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        // Only origin-form targets have a path to normalise; `*` and authority forms match
        // no rule (every rule starts with '/') and are forwarded as they came.
        if path.starts_with('/')
            && let Err(error) = idem_http::path::normalize(path)
        {
            return Either::Left(ready(Ok(ambiguous_path(&error.to_string()))));
        }
        Either::Right(self.inner.call(request))
    }
}

fn ambiguous_path(reason: &str) -> Response<Body> {
    // Counted with the layer's outcomes: the request never reaches the layer.
    metrics::counter!("idem_requests_total", "outcome" => "path_ambiguous").increment(1);
    tracing::info!(reason, "request path refused: no single meaning");
    ProblemCode::PathAmbiguous
        .response(&format!(
            "{reason}; nothing was forwarded. Send the path with its characters as they are (or percent-encode only what must be)"
        ))
        .map(Body::new)
}
