//! What `proxy` and `serve` share: the store, the engine settings, the background sweeper,
//! the admin listener, and serving with a graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use http::HeaderName;
use idem_core::{Engine, Store, SweeperHandle};
use idem_http::{IdempotencyLayerBuilder, ScopeSource};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::config::Common;
use crate::store::{SharedStore, StoreLocation};

/// How often expired records are swept. Expired records already behave as absent; the sweep
/// only reclaims space, so once a minute is plenty.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Records deleted per sweep batch: small enough that one batch never holds the store for
/// long, large enough to keep up with a busy day's expiries.
const SWEEP_BATCH: usize = 500;
/// How long in-flight requests may take to finish after SIGTERM before the process exits
/// anyway; the keys of requests still running then lapse with their lease.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Time given to background store writes (releases, completions) before the process exits.
const RELEASE_GRACE: Duration = Duration::from_millis(500);

/// A started server: store open, sweeper and admin listener running.
pub struct Server {
    common: Common,
    store: SharedStore,
    engine: Engine<SharedStore>,
    shutdown: watch::Receiver<bool>,
    _sweeper: SweeperHandle,
}

impl Server {
    /// Opens the store, starts the sweeper, the admin listener and the signal handler.
    pub async fn start(common: Common, metrics: PrometheusHandle) -> anyhow::Result<Self> {
        let location = StoreLocation::parse(&common.store)?;
        let store = crate::store::open(&location).await?;
        tracing::info!(store = %location.describe(), "store open");
        check_durability(&store, common.accept_store_risks).await?;
        let mut engine = Engine::builder(store.clone())
            .ttl(common.ttl)
            .lease(common.lease);
        if let Some(wait) = common.wait {
            engine = engine.wait_for_in_flight(wait);
        }
        let engine = engine.build();
        let sweeper = engine.spawn_sweeper(SWEEP_INTERVAL, SWEEP_BATCH);

        let (trigger, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: no new connections, finishing requests in flight");
            let _ = trigger.send(true);
        });
        if let Some(address) = common.admin_listen {
            anyhow::ensure!(
                address.port() == 0 || address != common.listen,
                "--admin-listen must differ from --listen: the admin port never shares the public port"
            );
            let (engine, signal) = (engine.clone(), signalled(shutdown.clone()));
            let listener = tokio::net::TcpListener::bind(address).await?;
            tokio::spawn(async move {
                if let Err(error) = crate::admin::serve(listener, metrics, engine, signal).await {
                    tracing::error!(%error, "admin listener failed");
                }
            });
        }
        Ok(Self {
            common,
            store,
            engine,
            shutdown,
            _sweeper: sweeper,
        })
    }

    /// The engine, with the configured TTL and lease.
    pub fn engine(&self) -> &Engine<SharedStore> {
        &self.engine
    }

    /// A layer builder with the shared settings applied: TTL, lease, wait, scope.
    pub fn layer_builder(&self) -> IdempotencyLayerBuilder<SharedStore> {
        let mut engine = Engine::builder(self.store.clone())
            .ttl(self.common.ttl)
            .lease(self.common.lease);
        if let Some(wait) = self.common.wait {
            engine = engine.wait_for_in_flight(wait);
        }
        let mut builder = IdempotencyLayerBuilder::from_engine_builder(engine);
        if let Some(scope) = self.scope_source() {
            builder = builder.scope(scope);
        }
        builder
    }

    /// The scope source `--scope-header` asks for, if any.
    pub fn scope_source(&self) -> Option<ScopeSource> {
        let name = self.common.scope_header.as_deref()?;
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Some(ScopeSource::Header(name)),
            Err(_) => {
                tracing::error!(
                    header = name,
                    "invalid --scope-header; scoping by Authorization"
                );
                None
            }
        }
    }

    /// Serves `app` on the public address until a shutdown signal, then drains.
    pub async fn serve(self, name: &str, app: Router) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.common.listen).await?;
        crate::announce(name, listener.local_addr()?);
        let shutdown = self.shutdown.clone();
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signalled(shutdown.clone()));
        let mut task = tokio::spawn(async move { server.await });
        tokio::select! {
            result = &mut task => return Ok(result??),
            () = signalled(shutdown) => {}
        }
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut task).await {
            Ok(result) => result??,
            Err(_) => {
                tracing::warn!(timeout = ?DRAIN_TIMEOUT, "requests still in flight after the drain timeout; exiting: their keys lapse with their lease");
                task.abort();
                tokio::time::sleep(RELEASE_GRACE).await;
            }
        }
        Ok(())
    }
}

/// Reads what in the store's own settings may make it forget records, logs each risk, and
/// refuses to start on one that deletes live records on its own (eviction) unless told to
/// accept it. Settings that cannot be read are logged, not fatal.
async fn check_durability(store: &SharedStore, accept: bool) -> anyhow::Result<()> {
    let risks = match store.durability_risks().await {
        Ok(risks) => risks,
        Err(error) => {
            tracing::warn!(%error, "could not read the store's durability settings");
            return Ok(());
        }
    };
    for risk in &risks {
        tracing::warn!(setting = %risk.setting, "store durability risk: {}", risk.risk);
    }
    if let Some(risk) = risks.iter().find(|risk| risk.refuse)
        && !accept
    {
        anyhow::bail!(
            "refusing to start: the store's setting {} may delete live idempotency records and re-run operations ({}). Fix the setting, or pass --accept-store-risks to run anyway",
            risk.setting,
            risk.risk
        );
    }
    Ok(())
}

/// Resolves once the shutdown flag is set.
async fn signalled(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
