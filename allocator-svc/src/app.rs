//! Start-up: `Application::build` connects, migrates and binds (port 0 works); then
//! `run_until_stopped` serves gRPC, `/metrics` and the reaper until the token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cco_contracts::allocator::v1::extension_allocator_server::ExtensionAllocatorServer;
use cco_contracts::allocator::v1::extension_pool_server::ExtensionPoolServer;
use cco_platform::db::{DbPool, Migrations};
use cco_platform::grpc::GrpcServer;
use cco_platform::metrics::RpcMetrics;
use cco_platform::sql::Db;
use prometheus_client::registry::Registry;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::grpc::AllocatorGrpc;
use crate::metrics::Metrics;
use crate::policy::{GrpcPolicy, PolicySource, StaticPolicy};
use crate::service::Allocator;
use crate::settings::{CoalesceSettings, PolicySourceKind, Settings};
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sql::SqlStore;

static PG_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/allocator/postgres");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/allocator/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/allocator/sqlite");

/// The allocator's migrations for each backend.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &PG_MIGRATIONS,
    mysql: Some(&MYSQL_MIGRATIONS),
    sqlite: &SQLITE_MIGRATIONS,
};

/// Builds the store for a connected pool.
pub fn store_for(db: &DbPool, coalesce: &CoalesceSettings) -> Arc<dyn Store> {
    match db {
        DbPool::Postgres(p) => Arc::new(PgStore::new(p.clone(), coalesce.limits())),
        DbPool::MySql(_) | DbPool::Sqlite(_) => {
            Arc::new(SqlStore::coalesced(Db::new(db.clone()), coalesce.limits()))
        }
    }
}

/// A built, bound, not yet serving allocator.
pub struct Application {
    settings: Settings,
    db: DbPool,
    svc: Allocator,
    grpc_listener: TcpListener,
    grpc_addr: SocketAddr,
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("grpc_addr", &self.grpc_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Connects to the database, migrates it if configured, and binds the listeners.
    ///
    /// # Errors
    /// Names the setting, database or address that failed.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, None).await
    }

    /// Like [`Application::build`] on listeners bound beforehand (gRPC, optional metrics), so
    /// that two services can learn each other's address before either starts.
    ///
    /// # Errors
    /// Names the setting or database that failed.
    pub async fn build_with(
        settings: Settings,
        listeners: Option<(TcpListener, Option<TcpListener>)>,
    ) -> anyhow::Result<Self> {
        settings.validate()?;
        let db = DbPool::connect(&settings.database).await?;
        if settings.database.migrate_on_start {
            db.migrate(MIGRATIONS).await?;
        }
        let policy: Arc<dyn PolicySource> = match settings.policy.source {
            PolicySourceKind::Static => Arc::new(StaticPolicy::new(&settings.policy)),
            PolicySourceKind::Grpc => Arc::new(GrpcPolicy::new(&settings.policy)?),
        };
        let svc = Allocator::new(store_for(&db, &settings.coalesce), policy);
        let (grpc_listener, metrics_listener) = match listeners {
            Some(l) => l,
            None => {
                let g = cco_platform::grpc::bind(&settings.grpc.host, settings.grpc.port).await?;
                let m = if settings.metrics.enabled {
                    Some(
                        cco_platform::grpc::bind(&settings.metrics.host, settings.metrics.port)
                            .await?,
                    )
                } else {
                    None
                };
                (g, m)
            }
        };
        let grpc_addr = grpc_listener.local_addr()?;
        let metrics_addr = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        Ok(Self {
            settings,
            db,
            svc,
            grpc_listener,
            grpc_addr,
            metrics_listener,
            metrics_addr,
        })
    }

    /// The service (for in-process tools such as the load generator).
    pub fn allocator(&self) -> &Allocator {
        &self.svc
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound metrics address, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Serves until `shutdown` is cancelled; then reports NOT_SERVING, lets in-flight calls
    /// finish (up to `shutdown_grace_seconds`), stops the reaper and closes the database.
    ///
    /// # Errors
    /// Returns a serving failure.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        self.svc.store().register_metrics(&mut registry);
        let rpc_metrics = RpcMetrics::register(&mut registry, "allocator");
        let auth = self.settings.auth.layer(crate::grpc::roles)?;
        let background = shutdown.child_token();
        let reaper = tokio::spawn(crate::reaper::run(
            self.svc.clone(),
            metrics.clone(),
            Duration::from_millis(self.settings.reaper.interval_ms),
            self.settings.reaper.batch_size,
            background.clone(),
        ));
        let metrics_task = match self.metrics_listener {
            Some(l) => {
                let tls = self.settings.metrics.tls.http("metrics.tls").await?;
                Some(tokio::spawn(cco_platform::http::serve(
                    l,
                    cco_platform::metrics::routes(Arc::new(registry)),
                    self.settings.metrics.clone(),
                    tls,
                    background.clone(),
                )))
            }
            None => None,
        };

        let grpc = AllocatorGrpc::new(self.svc.clone(), metrics).with_server(
            rpc_metrics.clone(),
            shutdown.clone(),
            cco_platform::listen::seconds(self.settings.grpc.request_timeout_seconds),
        );
        tracing::info!(addr = %self.grpc_addr, metrics = ?self.metrics_addr, backend = self.db.backend(), "allocator serving");
        let grace = Duration::from_secs(self.settings.shutdown_grace_seconds);
        let result = GrpcServer::new()
            .add_service(ExtensionAllocatorServer::new(grpc.clone()))
            .add_service(ExtensionPoolServer::new(grpc))
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
        let _ = reaper.await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        self.db.close().await;
        tracing::info!("allocator stopped");
        result
    }
}
