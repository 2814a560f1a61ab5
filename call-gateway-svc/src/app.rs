//! Start-up: `Application::build` connects, migrates and binds (port 0 works); then
//! `run_until_stopped` serves gRPC and HTTP until the token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cco_contracts::gateway::v1::calls_server::CallsServer;
use cco_contracts::gateway::v1::collectors_server::CollectorsServer;
use cco_contracts::gateway::v1::compliance_policies_server::CompliancePoliciesServer;
use cco_contracts::gateway::v1::tenant_configs_server::TenantConfigsServer;
use cco_contracts::gateway::v1::tenant_policies_server::TenantPoliciesServer;
use cco_platform::db::{DbPool, Migrations};
use cco_platform::grpc::GrpcServer;
use cco_platform::metrics::RpcMetrics;
use prometheus_client::registry::Registry;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::allocator::AllocatorClient;
use crate::grpc::{CallsGrpc, CollectorsGrpc, ComplianceGrpc, ConfigsGrpc};
use crate::infinity::InfinityClient;
use crate::metrics::{GatewayMetrics, MeteredPbx};
use crate::service::{Compliance, Services, SystemClock};
use crate::settings::Settings;
use crate::store::calls::CallStore;
use crate::store::{ConfigStore, GatewayStore};

static PG_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/gateway/postgres");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/gateway/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/gateway/sqlite");

/// The gateway's migrations for each backend.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &PG_MIGRATIONS,
    mysql: Some(&MYSQL_MIGRATIONS),
    sqlite: &SQLITE_MIGRATIONS,
};

/// Builds the stores for a connected pool.
pub fn stores_for(db: &DbPool) -> (Arc<dyn ConfigStore>, Arc<dyn CallStore>) {
    let s = Arc::new(GatewayStore::new(db.clone()));
    (s.clone(), s)
}

/// A built, bound, not yet serving gateway.
pub struct Application {
    settings: Settings,
    db: DbPool,
    services: Services,
    changes: Arc<dyn ConfigStore>,
    registry: Registry,
    metrics: GatewayMetrics,
    grpc_listener: TcpListener,
    grpc_addr: SocketAddr,
    http_listener: TcpListener,
    http_addr: SocketAddr,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("grpc_addr", &self.grpc_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Connects, migrates if configured, and binds the listeners.
    ///
    /// # Errors
    /// Names the setting, database or address that failed.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, None).await
    }

    /// Like [`Application::build`] on listeners bound beforehand (gRPC, HTTP), so that two
    /// services can learn each other's address before either starts.
    ///
    /// # Errors
    /// Names the setting or database that failed.
    pub async fn build_with(
        settings: Settings,
        listeners: Option<(TcpListener, TcpListener)>,
    ) -> anyhow::Result<Self> {
        settings.validate()?;
        let db = DbPool::connect(&settings.database).await?;
        if settings.database.migrate_on_start {
            db.migrate(MIGRATIONS).await?;
        }
        let gateway_store = Arc::new(GatewayStore::new(db.clone()));
        let (store, calls): (Arc<dyn ConfigStore>, Arc<dyn CallStore>) =
            (gateway_store.clone(), gateway_store.clone());
        let mut registry = Registry::default();
        let metrics = GatewayMetrics::register(&mut registry);
        let changes = store.clone();
        let infinity = InfinityClient::new()?.with_allowed_hosts(settings.allowed_hosts()?);
        let tuning = settings.tuning();
        let compliance = Compliance::new(
            gateway_store,
            store.clone(),
            tuning.cache_ttl,
            metrics.clone(),
            Arc::new(SystemClock),
            settings.compliance.gate(),
        );
        let services = Services::new(
            store,
            calls,
            settings.cipher()?,
            Arc::new(MeteredPbx::new(Arc::new(infinity), metrics.clone())),
            Arc::new(AllocatorClient::new(&settings.allocator)?),
            compliance,
            tuning,
            metrics.clone(),
        );
        services.register_metrics(&mut registry);
        let (grpc_listener, http_listener) = match listeners {
            Some(l) => l,
            None => (
                cco_platform::grpc::bind(&settings.grpc.host, settings.grpc.port).await?,
                cco_platform::grpc::bind(&settings.http.host, settings.http.port).await?,
            ),
        };
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        Ok(Self {
            settings,
            db,
            services,
            changes,
            registry,
            metrics,
            grpc_listener,
            grpc_addr,
            http_listener,
            http_addr,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` is cancelled, then drains (up to `shutdown_grace_seconds`).
    ///
    /// # Errors
    /// Returns a serving failure.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut registry = self.registry;
        let rpc_metrics = RpcMetrics::register(&mut registry, "gateway");
        let auth = self.settings.auth.layer(crate::grpc::roles)?;
        let background = shutdown.child_token();
        let routes =
            cco_platform::metrics::routes(Arc::new(registry)).merge(crate::http::callback::routes(
                self.services.settling.clone(),
                self.metrics.clone(),
                self.settings.calls.signature_tolerance_seconds,
            ));
        let http_task = tokio::spawn(cco_platform::http::serve(
            self.http_listener,
            routes,
            self.settings.http.clone(),
            self.settings.http.tls.http("http.tls").await?,
            background.clone(),
        ));
        let changes = self.changes.clone();
        let feed = background.clone();
        let follower = tokio::spawn(async move { changes.follow_changes(feed).await });
        let workers = tokio::spawn(crate::background::run(
            self.services.settling.clone(),
            Duration::from_millis(self.settings.calls.outbox_interval_ms),
            Duration::from_millis(self.settings.calls.reconcile_interval_ms),
            background.clone(),
        ));
        let pruner = tokio::spawn(prune_compliance(
            self.services.compliance.clone(),
            Duration::from_secs(self.settings.compliance.prune_interval_seconds),
            background.clone(),
        ));
        // Watch streams end on `shutdown` itself, so that the drain does not wait for them.
        let hub = tokio::spawn(self.services.events.clone().run(shutdown.clone()));
        let relay = crate::relay::spawn(
            &self.settings.events,
            self.services.events.clone(),
            background.clone(),
        );
        let configs = ConfigsGrpc::new(self.services.configs.clone());
        tracing::info!(addr = %self.grpc_addr, http = %self.http_addr, backend = self.db.backend(), "gateway serving");
        let grace = Duration::from_secs(self.settings.shutdown_grace_seconds);
        let result = GrpcServer::new()
            .add_service(TenantConfigsServer::new(configs.clone()))
            .add_service(TenantPoliciesServer::new(configs))
            .add_service(CollectorsServer::new(CollectorsGrpc::new(
                self.services.collectors.clone(),
            )))
            .add_service(CompliancePoliciesServer::new(ComplianceGrpc::new(
                self.services.compliance.clone(),
                self.services.tenants.clone(),
            )))
            .add_service(CallsServer::new(CallsGrpc::new(
                self.services.calls.clone(),
                self.services.events.clone(),
            )))
            .with_metrics(rpc_metrics)
            .serve(
                self.grpc_listener,
                &self.settings.grpc,
                auth,
                shutdown.clone(),
                grace,
            )
            .await;
        background.cancel();
        let _ = workers.await;
        let _ = pruner.await;
        let _ = hub.await;
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        let _ = follower.await;
        let _ = http_task.await;
        self.db.close().await;
        tracing::info!("gateway stopped");
        result
    }
}

/// Deletes what the compliance retention lets go, every `every` until `stop`.
async fn prune_compliance(compliance: Compliance, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match compliance.prune().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned compliance records past their retention"),
            Err(e) => tracing::warn!(error = %e, "could not prune compliance records"),
        }
    }
}
