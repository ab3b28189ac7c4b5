//! The admin listener: `GET /metrics` (Prometheus text), `/healthz` (the process answers),
//! `/readyz` (the store answers, and what in its settings may make it forget records), and
//! `/records/{key}` to look a record up and resolve it (see [`crate::records`]), and the
//! live status page (`/status`, `/status.json`: see [`crate::status_page`]). It never shares
//! the public address: resolving a key is an operator's act.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::routing::{get, post};
use idem_core::{Engine, IdempotencyKey, KeyPolicy, RecordId, Scope, Store};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::Value;

use idem_core::DynStore;

use crate::connections::{ConnectionLimits, Connections};
use crate::status_page;

/// Histogram buckets, in seconds, for every histogram but the upstream's: from a
/// memory store's microseconds to a network store's timeout, so `histogram_quantile` works
/// on any backend.
const STORE_LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Buckets for the upstream's time to a response head (and `idem serve`'s calls, which run
/// operations): from a local API's millisecond to the default upstream timeout (30 s).
const UPSTREAM_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus recorder behind the `metrics` facade, once per process.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets(STORE_LATENCY_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(crate::access_log::UPSTREAM_DURATION.to_owned()),
                UPSTREAM_LATENCY_BUCKETS,
            )
        })
        // `idem serve`'s calls last as long as the operations they run.
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full("idem_coordination_request_duration_seconds".to_owned()),
                UPSTREAM_LATENCY_BUCKETS,
            )
        })
        .map_err(|error| anyhow::anyhow!("invalid metrics buckets: {error}"))?
        .install_recorder()
        .map_err(|error| anyhow::anyhow!("cannot install the metrics recorder: {error}"))
        .inspect(|_| zero_alerted_series())
}

/// Creates at 0 the series the alerts (`deploy/prometheus/idem-alerts.yml`) and the status
/// page watch for rare events: a counter appears at its first event, already at 1, and
/// `increase()` sees no increase in a series that did not exist a moment before, so the
/// first unknown outcome or given-up completion after a start would never alert.
fn zero_alerted_series() {
    metrics::counter!("idem_outcome_unknown_total").increment(0);
    for transition in ["complete", "release"] {
        metrics::counter!("idem_settlements_total", "transition" => transition, "result" => "gave_up")
            .increment(0);
    }
    for outcome in ["store_unavailable", "store_full", "failed_open", "mismatch"] {
        metrics::counter!("idem_requests_total", "outcome" => outcome).increment(0);
    }
    metrics::gauge!("idem_executions_in_flight").increment(0.0);
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    engine: Engine<DynStore>,
}

/// The most connections the admin listener serves at once: a scraper, a probe or two and an
/// operator need a handful; a slowloris on an admin port left open must not hold the file
/// descriptors the public listener needs.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Serves the admin address until `shutdown` turns true, with the public listener's
/// timeouts (a client that stalls mid-head is cut off) and at most
/// [`ADMIN_MAX_CONNECTIONS`] connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    engine: Engine<DynStore>,
    limits: ConnectionLimits,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route(
            "/status",
            get(|| async { axum::response::Html(status_page::PAGE) }),
        )
        .route("/status.json", get(status))
        .route("/records/{key}", get(show_record))
        .route("/records/{key}/release", post(release_record))
        .route("/records/{key}/complete", post(complete_record))
        .with_state(AdminState { metrics, engine });
    crate::announce("admin", listener.local_addr()?, false);
    let limits = ConnectionLimits {
        max_connections: limits.max_connections.min(ADMIN_MAX_CONNECTIONS),
        ..limits
    };
    Connections::new(limits, None)
        .serve(listener, app, shutdown)
        .await;
    Ok(())
}

async fn render_metrics(State(state): State<AdminState>) -> String {
    state.metrics.render()
}

/// Ready when the store answers a read of a key nobody uses. The body also lists what in the
/// store's settings may make it forget records (read anew each time: settings change).
async fn ready(State(state): State<AdminState>) -> (StatusCode, String) {
    let Some(risks) = store_health(&state.engine).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "store unavailable\n".into(),
        );
    };
    let mut body = String::from("ready\n");
    for risk in risks {
        body.push_str(&format!("store risk: {risk}\n"));
    }
    (StatusCode::OK, body)
}

/// The status page's figures: the counters `/metrics` renders, and the store's health.
async fn status(State(state): State<AdminState>) -> axum::Json<status_page::Snapshot> {
    let mut snapshot = status_page::Snapshot::from_prometheus(&state.metrics.render());
    if let Some(risks) = store_health(&state.engine).await {
        snapshot.store_healthy = true;
        snapshot.store_risks = risks;
    }
    axum::Json(snapshot)
}

/// How long a health read may take before the store counts as unavailable: a hung store
/// must not hold the admin listener's connections (the status page polls every two seconds).
const HEALTH_READ_LIMIT: Duration = Duration::from_secs(1);

/// `None` when the store does not answer a read of a key nobody uses within
/// [`HEALTH_READ_LIMIT`]; otherwise what in its settings may make it forget records, as
/// `setting: risk` lines. Read from the store directly, not through the engine, so probes
/// stay out of the requests' store metrics (`idem_store_*`).
async fn store_health(engine: &Engine<DynStore>) -> Option<Vec<String>> {
    let key = IdempotencyKey::parse(b"idem-readiness-probe", KeyPolicy::Any).ok()?;
    let id = RecordId::new(&Scope::new("idem-admin"), &key);
    let store = engine.store();
    tokio::time::timeout(HEALTH_READ_LIMIT, store.get(id))
        .await
        .ok()?
        .ok()?;
    Some(
        match tokio::time::timeout(HEALTH_READ_LIMIT, store.durability_risks()).await {
            Ok(Ok(risks)) => risks
                .into_iter()
                .map(|risk| format!("{}: {}", risk.setting, risk.risk))
                .collect(),
            Ok(Err(error)) => vec![format!("settings unreadable: {error}")],
            Err(_) => vec!["settings unreadable: the store did not answer in time".into()],
        },
    )
}

/// The header carrying the credential that scoped the record's requests (absent: the
/// anonymous scope). A header, not the query string, so it stays out of access logs.
const CREDENTIAL_HEADER: &str = "x-idem-credential";

fn record_ref(key: String, headers: &HeaderMap) -> crate::records::RecordRef {
    crate::records::RecordRef {
        // The header's bytes as they are: a non-ASCII credential must hash the same way the
        // layer hashed it, never fall back to another scope.
        credential: headers
            .get(CREDENTIAL_HEADER)
            .map(|value| value.as_bytes().to_vec()),
        function: None,
        key,
    }
}

fn answer(result: anyhow::Result<Value>, failure: StatusCode) -> (StatusCode, Json<Value>) {
    match result {
        Ok(record) => (StatusCode::OK, Json(record)),
        Err(error) => (
            failure,
            Json(serde_json::json!({ "error": format!("{error:#}") })),
        ),
    }
}

async fn show_record(
    State(state): State<AdminState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let record = record_ref(key, &headers);
    answer(
        crate::records::show(&state.engine, &record).await,
        StatusCode::BAD_REQUEST,
    )
}

async fn release_record(
    State(state): State<AdminState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let record = record_ref(key, &headers);
    let result = crate::records::resolve(
        &state.engine,
        &record,
        idem_core::Resolution::Release,
        "admin listener",
    )
    .await;
    answer(result, StatusCode::CONFLICT)
}

/// The answer an operator completes a key with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Completion {
    status: u16,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

async fn complete_record(
    State(state): State<AdminState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    completion: Result<Json<Completion>, axum::extract::rejection::JsonRejection>,
) -> (StatusCode, Json<Value>) {
    let Ok(Json(completion)) = completion else {
        let error = "send {\"status\": 201, \"headers\": [[\"content-type\", \"application/json\"]], \"body\": \"...\"}";
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": error })),
        );
    };
    if StatusCode::from_u16(completion.status).is_err() {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": "status is not an HTTP status" })),
        );
    }
    let record = record_ref(key, &headers);
    let response = crate::records::response(completion.status, completion.headers, completion.body);
    let result = crate::records::resolve(
        &state.engine,
        &record,
        idem_core::Resolution::Complete(response),
        "admin listener",
    )
    .await;
    answer(result, StatusCode::CONFLICT)
}
