//! The admin listener: `GET /metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the store answers). It never shares the public address.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use idem_core::{Engine, IdempotencyKey, KeyPolicy, RecordId, Scope};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::store::SharedStore;

/// Installs the Prometheus recorder behind the `metrics` facade, once per process.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
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
