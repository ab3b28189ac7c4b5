//! What `proxy` and `serve` share: the store, the engine settings, the background sweeper,
//! the admin listener, and serving with a graceful shutdown.

use std::time::Duration;

use axum::Router;
use idem_core::{Engine, Store, SweeperHandle};
use idem_http::{IdempotencyLayerBuilder, ScopeSource};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::config::ServerSettings;
use crate::connections::Connections;
use idem_core::DynStore;

/// How often expired records are swept. Expired records already behave as absent; the sweep
/// only reclaims space, so once a minute is plenty.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Records deleted per sweep batch: small enough that one batch never holds the store for
/// long, large enough to keep up with a busy day's expiries.
const SWEEP_BATCH: usize = 500;
/// The shortest lease that outlives a renewal slowed down to a network store's operation
/// timeout (5 s) three times over: shorter ones work, but a slow store can lapse live leases.
const MIN_SAFE_LEASE: Duration = Duration::from_secs(15);
/// The least time given to background work (executions without their client, completions
/// retried after a store fault) before the process exits, even after a full drain.
const RELEASE_GRACE: Duration = Duration::from_millis(500);

/// A started server: store open, sweeper and admin listener running.
pub struct Server {
    common: ServerSettings,
    engine: Engine<DynStore>,
    shutdown: watch::Receiver<bool>,
    _sweeper: SweeperHandle,
}

impl Server {
    /// Opens the store, starts the sweeper, the admin listener and the signal handler.
    pub async fn start(common: ServerSettings, metrics: PrometheusHandle) -> anyhow::Result<Self> {
        if let Some(base) = &common.problem_base_url {
            idem_http::set_problem_base(base.clone());
        }
        let store =
            crate::store::open(&common.store, &common.store_options, common.replay_cache).await?;
        tracing::info!(store = %common.store.describe(), "store open");
        if let crate::store::StoreLocation::Memory { max_records, .. } = &common.store {
            // Records live a TTL: the bound is a rate. Say it, so a full store is no surprise.
            let per_second = *max_records as f64 / common.ttl.as_secs_f64().max(1.0);
            tracing::warn!(
                max_records,
                ttl = ?common.ttl,
                "the memory store forgets everything on restart and holds at most {max_records} records: about {per_second:.1} new keys per second sustained over the TTL; past that, 503 store_full"
            );
        }
        check_durability(&store, common.accept_store_risks).await?;
        if common.lease < MIN_SAFE_LEASE {
            tracing::warn!(lease = ?common.lease, "--lease is shorter than {MIN_SAFE_LEASE:?}: a renewal slowed down to the store's operation timeout (5 s) could let the lease of a live execution lapse, and its retries would be told the outcome is unknown");
        }
        let mut engine = Engine::builder(store.clone())
            .ttl(common.ttl)
            .lease(common.lease);
        if let Some(wait) = common.wait {
            engine = engine.wait_for_in_flight(wait);
        }
        let engine = engine.build();
        let sweeper = engine.spawn_sweeper(SWEEP_INTERVAL, SWEEP_BATCH);

        let shutdown = crate::signals::shutdown_on_signal();
        if let Some(address) = common.admin_listen {
            anyhow::ensure!(
                address.port() == 0 || address != common.listen,
                "--admin-listen must differ from --listen: the admin port never shares the public port"
            );
            let (engine, signal) = (engine.clone(), shutdown.clone());
            let limits = common.connection_limits();
            let listener = tokio::net::TcpListener::bind(address).await?;
            tokio::spawn(async move {
                if let Err(error) =
                    crate::admin::serve(listener, metrics, engine, limits, signal).await
                {
                    tracing::error!(%error, "admin listener failed");
                }
            });
        }
        Ok(Self {
            common,
            engine,
            shutdown,
            _sweeper: sweeper,
        })
    }

    /// The engine, with the configured TTL and lease.
    pub fn engine(&self) -> &Engine<DynStore> {
        &self.engine
    }

    /// A layer builder over this server's engine (TTL, lease, wait), with its scope and body
    /// read timeout.
    pub fn layer_builder(&self) -> IdempotencyLayerBuilder<DynStore> {
        IdempotencyLayerBuilder::from_engine(self.engine.clone())
            .scope(self.scope_source())
            .body_read_timeout(self.common.body_read_timeout)
            .mismatch_status(self.common.mismatch_status)
            .transient_statuses(self.common.transient_statuses.iter().copied())
    }

    /// Whose key it is: the `--scope-header` or `--scope-cookie` value, or `Authorization`.
    pub fn scope_source(&self) -> ScopeSource {
        match (&self.common.scope_header, &self.common.scope_cookie) {
            (Some(header), _) => ScopeSource::Header(header.clone()),
            (None, Some(cookie)) => ScopeSource::Cookie(cookie.clone()),
            (None, None) => ScopeSource::Authorization,
        }
    }

    /// The settings both commands share.
    pub fn settings(&self) -> &ServerSettings {
        &self.common
    }

    /// Serves `app` on the public address until a shutdown signal, then drains.
    pub async fn serve(self, name: &str, app: Router) -> anyhow::Result<()> {
        let tls = self
            .common
            .tls
            .as_ref()
            .map(crate::tls::server_config)
            .transpose()?;
        let listener = tokio::net::TcpListener::bind(self.common.listen).await?;
        crate::announce(name, listener.local_addr()?, tls.is_some());
        let connections = Connections::new(self.common.connection_limits(), tls);
        connections
            .serve(listener, app, self.shutdown.clone())
            .await;
        let drain_timeout = self.common.drain_timeout;
        let deadline = tokio::time::Instant::now() + drain_timeout;
        if !connections.drained(deadline).await {
            tracing::warn!(timeout = ?drain_timeout, still_open = connections.open(), "requests still in flight after the drain timeout; exiting: their keys lapse into an unknown outcome");
        }
        // Executions whose client hung up, and completions retried after a store fault, run
        // on after their requests: finish them (within the same drain budget, and at least a
        // short grace) before the runtime stops, or their keys lapse into unknown outcomes.
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(RELEASE_GRACE);
        if !idem_core::background::wait_idle(left).await {
            tracing::warn!(
                still_running = idem_core::background::running(),
                "background work still running at exit: its keys lapse into an unknown outcome"
            );
        }
        Ok(())
    }
}

/// Reads what in the store's own settings may make it forget records, logs each risk, and
/// refuses to start on one that deletes live records on its own (eviction) unless told to
/// accept it. Settings that cannot be read are logged, not fatal.
async fn check_durability(store: &DynStore, accept: bool) -> anyhow::Result<()> {
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
