//! Harness for the allocator's integration tests: real allocator instances on port 0 over a
//! fresh database, real gRPC clients, and invariant queries on the lease history.

use std::net::SocketAddr;

use allocator_svc::app::Application;
use allocator_svc::settings::{PolicySourceKind, Settings};
use cco_contracts::allocator::v1 as pb;
use cco_platform::auth::BearerInterceptor;
pub use cco_platform::testing::{Backend, TestDb};
use pb::extension_allocator_client::ExtensionAllocatorClient;
use pb::extension_pool_client::ExtensionPoolClient;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const ADMIN: &str = "dev-admin-key";
pub const CALLER: &str = "dev-caller-key";
pub const PEER: &str = "dev-peer-key";
/// A caller key limited to tenant `t-a`.
pub const SCOPED: &str = "scoped-caller-key";
/// An admin key limited to tenant `t-a`.
pub const SCOPED_ADMIN: &str = "scoped-admin-key";
pub const KEYS: &str = "admin:dev-admin-key;caller:dev-caller-key;peer:dev-peer-key;\
     caller:scoped-caller-key:t-a;admin:scoped-admin-key:t-a";

pub type AllocClient = ExtensionAllocatorClient<InterceptedService<Channel, BearerInterceptor>>;
pub type PoolClient = ExtensionPoolClient<InterceptedService<Channel, BearerInterceptor>>;

/// Settings for a test instance: loopback, port 0, static policy, fast reaper.
pub fn settings(db_url: &str) -> Settings {
    let mut s = Settings::default();
    s.grpc.host = "127.0.0.1".into();
    s.grpc.port = 0;
    s.metrics.host = "127.0.0.1".into();
    s.metrics.port = 0;
    s.database.url = db_url.to_owned();
    s.database.max_connections = 8;
    s.auth.api_keys = SecretString::from(KEYS);
    s.policy.source = PolicySourceKind::Static;
    s.reaper.interval_ms = 200;
    s.shutdown_grace_seconds = 5;
    s
}

/// One running allocator.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub stop: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Builds and starts an instance.
    pub async fn spawn(settings: Settings) -> Self {
        cco_platform::telemetry::init_for_tests();
        let app = Application::build(settings)
            .await
            .expect("allocator builds");
        let addr = app.grpc_addr();
        let metrics_addr = app.metrics_addr();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self {
            addr,
            metrics_addr,
            stop,
            handle,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to allocator")
    }

    pub async fn alloc(&self, key: &str) -> AllocClient {
        ExtensionAllocatorClient::with_interceptor(
            self.channel().await,
            BearerInterceptor::new(key),
        )
    }

    pub async fn pool(&self, key: &str) -> PoolClient {
        ExtensionPoolClient::with_interceptor(self.channel().await, BearerInterceptor::new(key))
    }

    /// Stops the instance and waits for it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.handle.await.expect("join").expect("clean stop");
    }
}

/// Imports `numbers` into `tenant` and returns their extension ids in order.
pub async fn import(pool: &mut PoolClient, tenant: &str, numbers: &[&str]) -> Vec<String> {
    let resp = pool
        .batch_import(pb::BatchImportRequest {
            tenant_id: tenant.into(),
            config_id: String::new(),
            numbers: numbers.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
        .expect("import")
        .into_inner();
    assert_eq!(resp.imported as usize, numbers.len(), "{resp:?}");
    resp.results.into_iter().map(|r| r.extension_id).collect()
}

pub fn acquire_req(tenant: &str, collector: &str, request_id: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        tenant_id: tenant.into(),
        collector_id: collector.into(),
        strategy: 0,
        request_id: request_id.into(),
        ttl_seconds: 0,
    }
}

/// Acquires and returns the lease (panics on error).
pub async fn lease(
    c: &mut AllocClient,
    tenant: &str,
    collector: &str,
    strategy: pb::Strategy,
) -> pb::Lease {
    let mut req = acquire_req(tenant, collector, &uuid::Uuid::new_v4().to_string());
    req.strategy = strategy.into();
    c.acquire(req)
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease")
}

/// Releases a lease (panics unless released).
pub async fn release(c: &mut AllocClient, l: &pb::Lease) {
    let r = c
        .release(pb::ReleaseRequest {
            lease_id: l.lease_id.clone(),
            fencing_token: l.fencing_token,
            reason: pb::ReleaseReason::CallEnded.into(),
            tenant_id: String::new(),
        })
        .await
        .expect("release")
        .into_inner();
    assert!(r.released, "{r:?}");
}

/// Direct database access for invariant checks (never used to drive the service).
pub struct Inspect {
    pool: cco_platform::db::DbPool,
}

/// One lease interval, in unix milliseconds.
#[derive(Debug, Clone)]
pub struct Interval {
    pub extension_id: String,
    pub acquired_ms: i64,
    pub released_ms: Option<i64>,
    pub fencing_token: i64,
    pub reason: Option<String>,
}

impl Inspect {
    pub async fn new(url: &str) -> Self {
        let mut s = cco_platform::db::DatabaseSettings::sqlite_default("x");
        s.url = url.to_owned();
        s.max_connections = 2;
        Self {
            pool: cco_platform::db::DbPool::connect(&s)
                .await
                .expect("inspect connect"),
        }
    }

    fn db(&self) -> cco_platform::sql::Db {
        cco_platform::sql::Db::new(self.pool.clone())
    }

    async fn count(&self, sql: &str, tenant: &str, more: Option<&str>) -> i64 {
        let mut args = vec![cco_platform::sql::Arg::Text(tenant)];
        args.extend(more.map(cco_platform::sql::Arg::Text));
        self.db()
            .fetch_one(sql, &args)
            .await
            .unwrap()
            .i64("n")
            .unwrap()
    }

    /// Every lease ever granted, as intervals.
    pub async fn intervals(&self) -> Vec<Interval> {
        self.db()
            .fetch_all(
                "select extension_id, acquired_at, released_at, fencing_token, release_reason \
                 from leases",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| Interval {
                extension_id: r.uuid("extension_id").unwrap().to_string(),
                acquired_ms: r.time("acquired_at").unwrap().timestamp_millis(),
                released_ms: r
                    .opt_time("released_at")
                    .unwrap()
                    .map(|t| t.timestamp_millis()),
                fencing_token: r.i64("fencing_token").unwrap(),
                reason: r.opt_text("release_reason").unwrap(),
            })
            .collect()
    }

    /// Counts leases of one tenant with one request id.
    pub async fn leases_for_request(&self, tenant: &str, request_id: &str) -> i64 {
        self.count(
            "select count(*) as n from leases where tenant_id = $1 and request_id = $2",
            tenant,
            Some(request_id),
        )
        .await
    }

    /// Counts in-use extensions and live leases of a tenant; they must always agree.
    pub async fn live(&self, tenant: &str) -> (i64, i64) {
        (
            self.count(
                "select count(*) as n from extensions where tenant_id = $1 and status = 'in_use'",
                tenant,
                None,
            )
            .await,
            self.count(
                "select count(*) as n from leases where tenant_id = $1 and released_at is null",
                tenant,
                None,
            )
            .await,
        )
    }

    /// A tenant's pool counted row by row: total, available, in use, offline, and available
    /// rows with a cooldown set (all still cooling when the test's cooldown is long).
    pub async fn status_counts(&self, tenant: &str) -> [i64; 5] {
        let r = self
            .db()
            .fetch_one(
                "select count(*) as total, \
                 coalesce(sum(case when status = 'available' then 1 else 0 end), 0) as available, \
                 coalesce(sum(case when status = 'in_use' then 1 else 0 end), 0) as in_use, \
                 coalesce(sum(case when status = 'offline' then 1 else 0 end), 0) as offline, \
                 coalesce(sum(case when status = 'available' and available_at is not null \
                   then 1 else 0 end), 0) as cooling \
                 from extensions where tenant_id = $1",
                &[cco_platform::sql::Arg::Text(tenant)],
            )
            .await
            .unwrap();
        ["total", "available", "in_use", "offline", "cooling"].map(|c| r.i64(c).unwrap())
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// Asserts that no two leases of one extension overlap in time, and that fencing tokens of
/// an extension strictly increase with acquisition time.
pub fn assert_no_overlaps(intervals: &[Interval]) {
    let mut by_ext: std::collections::HashMap<&str, Vec<&Interval>> =
        std::collections::HashMap::new();
    for i in intervals {
        by_ext.entry(&i.extension_id).or_default().push(i);
    }
    for (ext, mut list) in by_ext {
        list.sort_by_key(|i| (i.fencing_token, i.acquired_ms));
        for w in list.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(
                a.fencing_token < b.fencing_token,
                "extension {ext}: tokens repeat: {a:?} {b:?}"
            );
            let a_end = a.released_ms.unwrap_or_else(|| {
                panic!("extension {ext}: lease {a:?} still live while a later lease exists: {b:?}")
            });
            assert!(
                a_end <= b.acquired_ms,
                "extension {ext}: leases overlap: {a:?} and {b:?}"
            );
        }
    }
}

/// A fresh database of `backend` and a pool of at most `max_connections` on it (otherwise the
/// default settings), not migrated.
pub async fn connect(backend: Backend, max_connections: u32) -> (TestDb, cco_platform::db::DbPool) {
    let db = TestDb::new(backend).await;
    let mut s = cco_platform::db::DatabaseSettings::sqlite_default("x");
    s.url = db.url.clone();
    s.max_connections = max_connections;
    let pool = cco_platform::db::DbPool::connect(&s).await.unwrap();
    (db, pool)
}
