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
use sqlx::Row;
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

    /// Every lease ever granted, as intervals.
    pub async fn intervals(&self) -> Vec<Interval> {
        match &self.pool {
            cco_platform::db::DbPool::Postgres(p) => sqlx::query(
                "select extension_id::text as e, (extract(epoch from acquired_at) * 1000)::bigint as a, \
                 (extract(epoch from released_at) * 1000)::bigint as r, fencing_token, release_reason from leases",
            )
            .fetch_all(p)
            .await
            .unwrap()
            .iter()
            .map(|r| Interval {
                extension_id: r.get("e"),
                acquired_ms: r.get("a"),
                released_ms: r.get("r"),
                fencing_token: r.get("fencing_token"),
                reason: r.get("release_reason"),
            })
            .collect(),
            cco_platform::db::DbPool::Sqlite(p) => sqlx::query(
                "select extension_id as e, acquired_at as a, released_at as r, fencing_token, release_reason from leases",
            )
            .fetch_all(p)
            .await
            .unwrap()
            .iter()
            .map(|r| Interval {
                extension_id: r.get("e"),
                acquired_ms: r.get("a"),
                released_ms: r.get("r"),
                fencing_token: r.get("fencing_token"),
                reason: r.get("release_reason"),
            })
            .collect(),
        }
    }

    /// Counts leases of one tenant with one request id.
    pub async fn leases_for_request(&self, tenant: &str, request_id: &str) -> i64 {
        let sql = "select count(*) from leases where tenant_id = $1 and request_id = $2";
        match &self.pool {
            cco_platform::db::DbPool::Postgres(p) => sqlx::query_scalar(sql)
                .bind(tenant)
                .bind(request_id)
                .fetch_one(p)
                .await
                .unwrap(),
            cco_platform::db::DbPool::Sqlite(p) => sqlx::query_scalar(sql)
                .bind(tenant)
                .bind(request_id)
                .fetch_one(p)
                .await
                .unwrap(),
        }
    }

    /// Counts in-use extensions and live leases of a tenant; they must always agree.
    pub async fn live(&self, tenant: &str) -> (i64, i64) {
        let a = "select count(*) from extensions where tenant_id = $1 and status = 'in_use'";
        let b = "select count(*) from leases where tenant_id = $1 and released_at is null";
        match &self.pool {
            cco_platform::db::DbPool::Postgres(p) => (
                sqlx::query_scalar(a)
                    .bind(tenant)
                    .fetch_one(p)
                    .await
                    .unwrap(),
                sqlx::query_scalar(b)
                    .bind(tenant)
                    .fetch_one(p)
                    .await
                    .unwrap(),
            ),
            cco_platform::db::DbPool::Sqlite(p) => (
                sqlx::query_scalar(a)
                    .bind(tenant)
                    .fetch_one(p)
                    .await
                    .unwrap(),
                sqlx::query_scalar(b)
                    .bind(tenant)
                    .fetch_one(p)
                    .await
                    .unwrap(),
            ),
        }
    }

    /// A tenant's pool counted row by row: total, available, in use, offline, and available
    /// rows with a cooldown set (all still cooling when the test's cooldown is long).
    pub async fn status_counts(&self, tenant: &str) -> [i64; 5] {
        let sql = "select count(*), \
             coalesce(sum(case when status = 'available' then 1 else 0 end), 0), \
             coalesce(sum(case when status = 'in_use' then 1 else 0 end), 0), \
             coalesce(sum(case when status = 'offline' then 1 else 0 end), 0), \
             coalesce(sum(case when status = 'available' and available_at is not null then 1 else 0 end), 0) \
             from extensions where tenant_id = $1";
        let row: (i64, i64, i64, i64, i64) = match &self.pool {
            cco_platform::db::DbPool::Postgres(p) => {
                sqlx::query_as(sql).bind(tenant).fetch_one(p).await.unwrap()
            }
            cco_platform::db::DbPool::Sqlite(p) => {
                sqlx::query_as(sql).bind(tenant).fetch_one(p).await.unwrap()
            }
        };
        [row.0, row.1, row.2, row.3, row.4]
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
