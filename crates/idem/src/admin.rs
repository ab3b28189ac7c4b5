//! The admin listener: `GET /metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the store answers). It never shares the public address.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use idem_core::{Engine, IdempotencyKey, KeyPolicy, RecordId, Scope};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::store::SharedStore;

/// Histogram buckets, in seconds, for every histogram (today only store latency): from a
/// memory store's microseconds to a network store's timeout, so `histogram_quantile` works
/// on any backend.
const STORE_LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Installs the Prometheus recorder behind the `metrics` facade, once per process.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets(STORE_LATENCY_BUCKETS)
        .map_err(|error| anyhow::anyhow!("invalid metrics buckets: {error}"))?
        .install_recorder()
        .map_err(|error| anyhow::anyhow!("cannot install the metrics recorder: {error}"))
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    engine: Engine<SharedStore>,
}

/// Binds the admin address and serves it until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    engine: Engine<SharedStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AdminState { metrics, engine });
    crate::announce("admin", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn render_metrics(State(state): State<AdminState>) -> String {
    state.metrics.render()
}

/// Ready when the store answers a read of a key nobody uses.
async fn ready(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    let probe = IdempotencyKey::parse(b"idem-readiness-probe", KeyPolicy::Any)
        .map(|key| RecordId::new(&Scope::new("idem-admin"), &key));
    match probe {
        Ok(id) => match state.engine.status(id).await {
            Ok(_) => (StatusCode::OK, "ready\n"),
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"),
        },
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "probe key invalid\n"),
    }
}
