//! `idem serve`: at-most-once execution as a JSON service.
//!
//! - `POST /v1/idempotency/execute`: run a registered operation at most once per key and
//!   answer its result (replayed to every retry).
//! - `POST /v1/idempotency/records`: begin, for clients that execute themselves: acquire a
//!   lease, or get the replay / processing / mismatch answer.
//! - `POST /v1/idempotency/records/{key}/lease`: renew the lease while executing.
//! - `PUT /v1/idempotency/records/{key}`: complete with the lease token and the result.
//! - `DELETE /v1/idempotency/records/{key}?lease_token=…`: release the key.
//! - `GET /v1/idempotency/records/{key}`: a key's status.
//! - `GET /v1/openapi.json`: this API's OpenAPI 3.1 document.
//!
//! # Modules
//!
//! - `api`: the JSON documents (requests, and [`StatusBody`](api::StatusBody), every answer that is
//!   not an error) with their OpenAPI schemas; `error`: `ApiError`, an
//!   [`idem_http::ProblemCode`] rendered as the contract's `{"error":{"code","message"}}`.
//! - `extract`: the extractors that parse a request once, at the edge; `handlers`: one per
//!   endpoint, reading as its steps; `respond`: every outcome mapped to its answer.
//! - `formats`: the key's and the lease token's formats, as the document states them.
//! - `operation`: calling a registered operation.

mod api;
mod error;
mod extract;
mod formats;
mod handlers;
mod operation;
mod respond;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use idem_core::Engine;
use idem_http::ScopeSource;
use utoipa::OpenApi;

use crate::access_log::AccessLogLayer;
use crate::config;
use crate::server::Server;
use idem_core::DynStore;

pub use operation::Operations;

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    engine: Engine<DynStore>,
    operations: Operations,
    scope: Arc<ScopeSource>,
    body_read_timeout: std::time::Duration,
    /// The status of a mismatch answer (`--mismatch-status`).
    mismatch_status: axum::http::StatusCode,
}

/// The OpenAPI document, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "idem coordination API",
        description = "At-most-once execution per idempotency key, as a service."
    ),
    paths(
        handlers::execute,
        handlers::begin,
        handlers::complete,
        handlers::renew,
        handlers::release,
        handlers::status
    ),
    components(schemas(
        api::OperationRequest,
        api::StatusBody,
        api::CompleteRequest,
        api::RenewRequest,
        error::ErrorBody,
        error::ErrorDetail,
        error::OperationAnswer,
        formats::KeyFormat,
        formats::LeaseTokenFormat
    ))
)]
struct ApiDoc;

/// The OpenAPI document as pretty JSON, as committed in `docs/openapi.json`.
pub fn openapi_json() -> String {
    let document = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"));
    // utoipa 5 writes a Link Object's fields in snake case, which OpenAPI tools (Schemathesis
    // among them) do not read: without `operationId` no link is followed and the records
    // flow is never tested with a real lease token. Only a Link has these members (no schema
    // here has a property of these names), and in pretty JSON a key is always `"name": `.
    document
        .replace("\"operation_id\": ", "\"operationId\": ")
        .replace("\"request_body\": ", "\"requestBody\": ")
}

/// The router over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/idempotency/execute", post(handlers::execute))
        .route("/v1/idempotency/records", post(handlers::begin))
        .route(
            "/v1/idempotency/records/{key}",
            get(handlers::status)
                .put(handlers::complete)
                .delete(handlers::release),
        )
        .route("/v1/idempotency/records/{key}/lease", post(handlers::renew))
        .route(
            "/v1/openapi.json",
            get(|| async { ([("content-type", "application/json")], openapi_json()) }),
        )
        .route_layer(axum::middleware::from_fn(count_requests))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        // After routing, so that each line names the route pattern.
        .layer(AccessLogLayer::matched_paths())
        .with_state(state)
}

/// Counts every answer of the API by method, route pattern and status
/// (`idem_coordination_requests_total`), and times it by route pattern
/// (`idem_coordination_request_duration_seconds`): the service's own hit rate, conflicts,
/// errors and latency, on the admin port beside the store's metrics. Route patterns, not
/// paths, keep the label set small.
async fn count_requests(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics::histogram!("idem_coordination_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "idem_coordination_requests_total",
        "method" => method,
        "route" => route,
        "status" => status
    )
    .increment(1);
    response
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config: config::Serve, server: Server) -> anyhow::Result<()> {
    let operations = Operations::new(
        &config.operations,
        config.operation_timeout,
        config.max_operation_response,
        config.common.transient_statuses.clone(),
        config.common.upstream_ca_file.as_deref(),
    )?;
    if config.operations.is_empty() {
        tracing::warn!(
            "no operation registered: execute will answer UNKNOWN_OPERATION; the records flow works"
        );
    }
    tracing::info!(operations = ?operations.names().collect::<Vec<_>>(), "serving");
    let state = AppState {
        engine: server.engine().clone(),
        operations,
        scope: Arc::new(server.scope_source()),
        body_read_timeout: server.settings().body_read_timeout,
        mismatch_status: server.settings().mismatch_status,
    };
    server.serve("serve", router(state)).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_openapi_document_is_the_generated_one() {
        let committed = include_str!("../../../../docs/openapi.json");
        assert_eq!(
            committed.trim(),
            super::openapi_json().trim(),
            "docs/openapi.json is stale: regenerate it with `cargo run -p idem-gateway -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn links_name_their_target_operations_as_openapi_spells_it() {
        let document: serde_json::Value =
            serde_json::from_str(&super::openapi_json()).expect("the document is JSON");
        let links =
            &document["paths"]["/v1/idempotency/records"]["post"]["responses"]["201"]["links"];
        assert_eq!(links["complete"]["operationId"], "complete");
        assert_eq!(
            links["complete"]["requestBody"]["lease_token"],
            "$response.body#/lease_token"
        );
        let text = super::openapi_json();
        assert!(!text.contains("\"operation_id\"") && !text.contains("\"request_body\""));
    }
}
