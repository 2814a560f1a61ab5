//! Harness for the gateway's integration tests: a real gateway (and, where needed, a real
//! allocator wired to it both ways) on port 0 over fresh databases, the Infinity simulator,
//! and real gRPC clients.

use std::net::SocketAddr;
use std::time::Duration;

use allocator_svc::settings::PolicySourceKind;
use call_gateway_svc::app::Application;
use call_gateway_svc::settings::Settings;
use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
pub use cco_platform::testing::{Backend, Raw, TestDb};
use infinity_sim::{SimConfig, Simulator};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const ADMIN: &str = "dev-admin-key";
pub const CALLER: &str = "dev-caller-key";
pub const PEER: &str = "dev-peer-key";
/// Admin limited to tenant `t-a`.
pub const SCOPED_ADMIN: &str = "scoped-admin-key";
/// Caller limited to tenant `t-a`.
pub const SCOPED_CALLER: &str = "scoped-caller-key";
/// Peer limited to tenant `t-a`.
pub const SCOPED_PEER: &str = "scoped-peer-key";
pub const KEYS: &str = "admin:dev-admin-key;caller:dev-caller-key;peer:dev-peer-key;\
     admin:scoped-admin-key:t-a;caller:scoped-caller-key:t-a;peer:scoped-peer-key:t-a";
pub const SIM_TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// The HS256 secret both services of a test stack accept people's tokens with.
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef-0123";

/// A person's HS256 token (an hour) for `tenant`: `collector` names a collector's own id.
pub fn person(role: &str, tenant: &str, collector: Option<&str>) -> String {
    cco_platform::jwt::mint_person(
        JWT_SECRET,
        &cco_platform::jwt::Person {
            tenants: vec![tenant.to_owned()],
            role: role.to_owned(),
            collector_id: collector.map(str::to_owned),
            sub: None,
            issuer: String::new(),
            audience: String::new(),
            ttl_seconds: 3_600,
        },
    )
    .unwrap()
}

type Ch = InterceptedService<Channel, BearerInterceptor>;
pub type Configs = pb::tenant_configs_client::TenantConfigsClient<Ch>;
pub type Policies = pb::tenant_policies_client::TenantPoliciesClient<Ch>;
pub type Collectors = pb::collectors_client::CollectorsClient<Ch>;
pub type Alloc = apb::extension_allocator_client::ExtensionAllocatorClient<Ch>;
pub type Pool = apb::extension_pool_client::ExtensionPoolClient<Ch>;

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

pub fn gateway_settings(db_url: &str, allocator_url: &str) -> Settings {
    let mut s = Settings::default();
    s.grpc.host = "127.0.0.1".into();
    s.http.host = "127.0.0.1".into();
    // Any free port: tests run in parallel, and a caller that builds without listeners of its
    // own must not take the defaults (two such tests at once collided on 50052).
    s.grpc.port = 0;
    s.http.port = 0;
    s.database.url = db_url.to_owned();
    s.auth.api_keys = SecretString::from(KEYS);
    s.auth.jwt.secret = SecretString::from(JWT_SECRET);
    s.allocator.url = allocator_url.to_owned();
    s.allocator.timeout_ms = 5_000;
    s.shutdown_grace_seconds = 5;
    s
}

/// A running service (either kind).
pub struct Running {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// The gateway, and the allocator wired to it (policies from the gateway, leases for it).
pub struct Stack {
    pub gateway: Running,
    pub gateway_http: SocketAddr,
    pub allocator: Option<Running>,
    pub gateway_db: TestDb,
    pub allocator_db: Option<TestDb>,
}

impl Stack {
    /// A gateway alone; its allocator URL points at a closed port.
    pub async fn gateway_only(backend: Backend) -> Self {
        Self::start(backend, false, |_| {}).await
    }

    /// A gateway and an allocator pointing at each other, each on its own database.
    pub async fn pair(backend: Backend) -> Self {
        Self::start(backend, true, |_| {}).await
    }

    pub async fn start(
        backend: Backend,
        with_allocator: bool,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        Self::start_tuned(backend, with_allocator, tweak, |_| {}).await
    }

    /// [`Stack::start`] with the allocator's settings tweaked too.
    pub async fn start_tuned(
        backend: Backend,
        with_allocator: bool,
        tweak: impl FnOnce(&mut Settings),
        tweak_allocator: impl FnOnce(&mut allocator_svc::settings::Settings),
    ) -> Self {
        cco_platform::telemetry::init_for_tests();
        let gw_grpc = listener().await;
        let gw_http = listener().await;
        let gw_addr = gw_grpc.local_addr().unwrap();
        let al_grpc = listener().await;
        let al_addr = al_grpc.local_addr().unwrap();
        let (allocator, allocator_db, allocator_url) = if with_allocator {
            let db = TestDb::new(backend).await;
            let mut s = allocator_svc::settings::Settings::default();
            s.database.url = db.url.clone();
            s.auth.api_keys = SecretString::from(KEYS);
            s.auth.jwt.secret = SecretString::from(JWT_SECRET);
            s.policy.source = PolicySourceKind::Grpc;
            s.policy.gateway_url = format!("http://{gw_addr}");
            s.policy.cache_ttl_ms = 0;
            s.reaper.interval_ms = 200;
            s.shutdown_grace_seconds = 5;
            tweak_allocator(&mut s);
            let app = allocator_svc::app::Application::build_with(s, Some((al_grpc, None)))
                .await
                .unwrap();
            let stop = CancellationToken::new();
            let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
            (
                Some(Running {
                    addr: al_addr,
                    stop,
                    handle,
                }),
                Some(db),
                format!("http://{al_addr}"),
            )
        } else {
            drop(al_grpc);
            (None, None, format!("http://{al_addr}"))
        };
        let db = TestDb::new(backend).await;
        let mut s = gateway_settings(&db.url, &allocator_url);
        tweak(&mut s);
        let app = Application::build_with(s, Some((gw_grpc, gw_http)))
            .await
            .unwrap();
        let gateway_http = app.http_addr();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self {
            gateway: Running {
                addr: gw_addr,
                stop,
                handle,
            },
            gateway_http,
            allocator,
            gateway_db: db,
            allocator_db,
        }
    }

    pub async fn configs(&self, key: &str) -> Configs {
        pb::tenant_configs_client::TenantConfigsClient::with_interceptor(
            self.gateway.channel().await,
            BearerInterceptor::new(key),
        )
    }

    pub async fn policies(&self, key: &str) -> Policies {
        pb::tenant_policies_client::TenantPoliciesClient::with_interceptor(
            self.gateway.channel().await,
            BearerInterceptor::new(key),
        )
    }

    pub async fn collectors(&self, key: &str) -> Collectors {
        pb::collectors_client::CollectorsClient::with_interceptor(
            self.gateway.channel().await,
            BearerInterceptor::new(key),
        )
    }

    pub async fn alloc(&self, key: &str) -> Alloc {
        let ch = self.allocator.as_ref().expect("allocator").channel().await;
        apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
            ch,
            BearerInterceptor::new(key),
        )
    }

    pub async fn pool(&self, key: &str) -> Pool {
        let ch = self.allocator.as_ref().expect("allocator").channel().await;
        apb::extension_pool_client::ExtensionPoolClient::with_interceptor(
            ch,
            BearerInterceptor::new(key),
        )
    }

    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
        if let Some(a) = self.allocator {
            a.shutdown().await;
        }
    }
}

/// A simulator with extensions 8001-8003 registered.
pub async fn sim() -> Simulator {
    Simulator::start(SimConfig {
        extensions: vec![
            ("8001".into(), true),
            ("8002".into(), true),
            ("8003".into(), true),
        ],
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// A complete, valid config input with a static token.
pub fn valid_input(tenant: &str, api_url: &str) -> pb::ConfigInput {
    pb::ConfigInput {
        tenant_id: tenant.into(),
        supplier_id: "sup-1".into(),
        api_url: api_url.into(),
        credentials: Some(pb::Credentials {
            kind: Some(pb::credentials::Kind::AccessToken(SIM_TOKEN.into())),
        }),
        caller_number_pool: vec![
            "02566823420".into(),
            "+86 138 0013 8000".into(),
            "025-66823420".into(),
        ],
        default_caller_number: String::new(),
        caller_number_selection: 0,
        call_mode: 0,
        destination_prefix: String::new(),
        max_concurrent_calls: Some(5),
        call_timeout_seconds: None,
        api_timeout_ms: Some(2_000),
        allocation_strategy: 0,
        lease_ttl_seconds: None,
        cooldown_seconds: None,
        callback_secret: String::new(),
        callback_ip_allowlist: vec![],
        callback_time_zone: String::new(),
        is_active: None,
        phone_region: String::new(),
        api_encoding: 0,
        allowed_number_types: vec![],
    }
}

/// App credentials accepted by the simulator.
pub fn app_credentials() -> pb::Credentials {
    pb::Credentials {
        kind: Some(pb::credentials::Kind::App(pb::AppCredentials {
            app_id: "sim-app".into(),
            access_key: "sim-access-key".into(),
        })),
    }
}

pub async fn create(c: &mut Configs, input: pb::ConfigInput) -> pb::TenantConfig {
    c.create_config(pb::CreateConfigRequest {
        config: Some(input),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Raw rows of a table as text, for checking what is stored (never used to drive the service).
pub async fn raw_rows(db_url: &str, table: &str) -> Vec<String> {
    let mut s = cco_platform::db::DatabaseSettings::sqlite_default("x");
    s.url = db_url.to_owned();
    let pool = cco_platform::db::DbPool::connect(&s).await.unwrap();
    let out = match &pool {
        cco_platform::db::DbPool::Postgres(p) => sqlx::query_scalar::<_, String>(
            sqlx::AssertSqlSafe(format!("select t::text from {table} t")),
        )
        .fetch_all(p)
        .await
        .unwrap(),
        cco_platform::db::DbPool::MySql(p) => {
            let cols: Vec<String> = sqlx::query_scalar(
                "select cast(column_name as char) from information_schema.columns \
                 where table_schema = database() and table_name = ? order by ordinal_position",
            )
            .bind(table)
            .fetch_all(p)
            .await
            .unwrap();
            let expr = cols
                .iter()
                .map(|c| format!("coalesce(cast({c} as char), '')"))
                .collect::<Vec<_>>()
                .join(", ");
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                "select concat_ws('|', {expr}) from {table}"
            )))
            .fetch_all(p)
            .await
            .unwrap()
        }
        cco_platform::db::DbPool::Sqlite(p) => {
            let cols: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "select name from pragma_table_info('{table}')"
            )))
            .fetch_all(p)
            .await
            .unwrap();
            let expr = cols
                .iter()
                .map(|c| format!("coalesce(cast({c} as text), '')"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                "select {expr} from {table}"
            )))
            .fetch_all(p)
            .await
            .unwrap()
        }
    };
    pool.close().await;
    out
}

/// The callback secret of [`setup`]'s tenant.
pub const SECRET: &str = "test-callback-secret-0001";
pub type CallsClient = pb::calls_client::CallsClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        cco_platform::auth::BearerInterceptor,
    >,
>;

/// A tenant `t1` ready to call: a gateway and an allocator, the simulator, collectors alice,
/// bob and nophone, the given extensions, and a Calls client with the caller key.
pub struct Ctx {
    pub stack: Stack,
    pub sim: Simulator,
    pub calls: CallsClient,
    pub callback_url: String,
}

pub async fn setup(
    b: Backend,
    mode: pb::CallMode,
    extensions: &[&str],
    tweak: impl FnOnce(&mut call_gateway_svc::settings::Settings),
) -> Ctx {
    setup_tuned(b, mode, extensions, tweak, |_| {}).await
}

/// [`setup`] with the allocator's settings tweaked too.
pub async fn setup_tuned(
    b: Backend,
    mode: pb::CallMode,
    extensions: &[&str],
    tweak: impl FnOnce(&mut call_gateway_svc::settings::Settings),
    tweak_allocator: impl FnOnce(&mut allocator_svc::settings::Settings),
) -> Ctx {
    let sim = sim().await;
    let stack = Stack::start_tuned(
        b,
        true,
        |s| {
            s.calls.outbox_interval_ms = 100;
            s.calls.reconcile_interval_ms = 100;
            s.calls.reconcile_after_seconds = 1;
            s.calls.reconcile_every_seconds = 1;
            s.calls.max_call_age_seconds = 600;
            tweak(s);
        },
        tweak_allocator,
    )
    .await;
    let mut c = stack.configs(ADMIN).await;
    let mut input = valid_input("t1", &sim.api_url());
    input.call_mode = mode.into();
    input.callback_secret = SECRET.into();
    input.destination_prefix = "9".into();
    input.max_concurrent_calls = Some(100);
    create(&mut c, input).await;
    let mut coll = stack.collectors(ADMIN).await;
    for (id, number) in [("alice", "13800138001"), ("bob", "13800138002")] {
        coll.upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: id.into(),
            callback_number: number.into(),
            display_name: id.into(),
            active: None,
        })
        .await
        .unwrap();
    }
    coll.upsert_collector(pb::UpsertCollectorRequest {
        tenant_id: "t1".into(),
        collector_id: "nophone".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut pool = stack.pool(ADMIN).await;
    pool.batch_import(apb::BatchImportRequest {
        tenant_id: "t1".into(),
        config_id: String::new(),
        numbers: extensions.iter().map(|s| (*s).to_owned()).collect(),
    })
    .await
    .unwrap();
    let callback_url = format!(
        "http://{}/api/v1/infinity/callback/t1/{SECRET}",
        stack.gateway_http
    );
    sim.state().set_callback_url(Some(callback_url.clone()));
    let calls = pb::calls_client::CallsClient::with_interceptor(
        stack.gateway.channel().await,
        cco_platform::auth::BearerInterceptor::new(CALLER),
    );
    Ctx {
        stack,
        sim,
        calls,
        callback_url,
    }
}

/// [`setup`] with extensions 8001-8003 whose dials get no callback: the test posts them.
pub async fn setup_without_callbacks(b: Backend) -> Ctx {
    let ctx = setup(
        b,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |_| {},
    )
    .await;
    ctx.sim.state().set_script(
        None,
        infinity_sim::Script {
            callback: infinity_sim::CallbackMode::Lost,
            ..Default::default()
        },
    );
    ctx
}

pub fn req(collector: &str, dest: &str) -> pb::MakeCallRequest {
    pb::MakeCallRequest {
        tenant_id: "t1".into(),
        collector_id: collector.into(),
        case_id: "case-42".into(),
        destination_number: dest.into(),
        ..Default::default()
    }
}

impl Ctx {
    pub async fn get(&mut self, call_id: &str) -> pb::CommunicationRecord {
        self.calls
            .get_call(pb::GetCallRequest {
                tenant_id: "t1".into(),
                call_id: call_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits (bounded) until the call reaches `status` with its lease released.
    pub async fn settled(
        &mut self,
        call_id: &str,
        status: pb::CallStatus,
    ) -> pb::CommunicationRecord {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get(call_id).await;
            if r.status == status as i32 && r.lease_released {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "call never reached {status:?} with its lease released: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stats(&self) -> apb::PoolStats {
        self.stack
            .alloc(CALLER)
            .await
            .stats(apb::StatsRequest {
                tenant_id: "t1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn post_callback(
        &self,
        url: &str,
        content_type: &str,
        body: String,
    ) -> (u16, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resp = reqwest::Client::new()
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// Makes Infinity answer every dial only after `ms` milliseconds.
    pub fn slow_infinity(&self, ms: u64) {
        self.sim.state().set_script(
            None,
            infinity_sim::Script {
                outcome: infinity_sim::Outcome::Slow,
                slow_ms: ms,
                ..Default::default()
            },
        );
    }

    /// Places a call from each collector to the same debtor; returns the call ids.
    pub async fn place(&mut self, collectors: &[&str]) -> Vec<String> {
        let mut ids = Vec::new();
        for c in collectors {
            let call = self.calls.make_call(req(c, "13900139000")).await.unwrap();
            ids.push(call.into_inner().call_id);
        }
        ids
    }

    pub async fn shutdown(self) {
        self.stack.shutdown().await;
        self.sim.stop().await;
    }
}

/// Sends `body` (an encoded request message) to `path` with `key`; returns the status.
pub async fn send_raw(
    channel: Channel,
    path: &str,
    body: Vec<u8>,
    key: Option<&str>,
) -> Result<Vec<u8>, tonic::Status> {
    let (mut grpc, req, path) = raw_request(channel, path, body, key).await;
    grpc.unary(req, path, Raw)
        .await
        .map(tonic::Response::into_inner)
}

/// A ready client, the request carrying `body` (and the key), and the path.
async fn raw_request(
    channel: Channel,
    path: &str,
    body: Vec<u8>,
    key: Option<&str>,
) -> (
    tonic::client::Grpc<Channel>,
    tonic::Request<Vec<u8>>,
    http::uri::PathAndQuery,
) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(body);
    if let Some(k) = key {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    (grpc, req, path.parse().unwrap())
}

/// Opens a server stream with a raw request: Ok once the server accepted it (its headers came),
/// the status when it refused.
pub async fn open_raw_stream(
    channel: Channel,
    path: &str,
    body: Vec<u8>,
    key: Option<&str>,
) -> Result<(), tonic::Status> {
    let (mut grpc, req, path) = raw_request(channel, path, body, key).await;
    grpc.server_streaming(req, path, Raw).await.map(|_| ())
}

/// Runs one statement on a database directly: an operator (or another program) writing a row
/// behind the services' back.
pub async fn exec_sql(db_url: &str, sql: &str) -> u64 {
    let mut s = cco_platform::db::DatabaseSettings::sqlite_default("x");
    s.url = db_url.to_owned();
    let pool = cco_platform::db::DbPool::connect(&s).await.unwrap();
    let n = cco_platform::sql::Db::new(pool.clone())
        .execute(sql, &[])
        .await
        .unwrap();
    pool.close().await;
    n
}

/// Runs one `select count(*) ...` on a database directly (checking what is stored).
pub async fn exec_count(db_url: &str, sql: &str) -> i64 {
    let mut s = cco_platform::db::DatabaseSettings::sqlite_default("x");
    s.url = db_url.to_owned();
    let pool = cco_platform::db::DbPool::connect(&s).await.unwrap();
    let sql = sql.replacen("count(*)", "count(*) as n", 1);
    let n = cco_platform::sql::Db::new(pool.clone())
        .fetch_one(&sql, &[])
        .await
        .unwrap()
        .i64("n")
        .unwrap();
    pool.close().await;
    n
}

/// A second gateway replica on the stack's database and allocator; returns it with a Calls
/// client (caller key) and an admin Collectors client of its own.
pub async fn second_replica(
    stack: &Stack,
    tweak: impl FnOnce(&mut Settings),
) -> (Running, CallsClient, Collectors) {
    let mut s = gateway_settings(
        &stack.gateway_db.url,
        &format!("http://{}", stack.allocator.as_ref().unwrap().addr),
    );
    tweak(&mut s);
    let grpc = listener().await;
    let addr = grpc.local_addr().unwrap();
    let app = Application::build_with(s, Some((grpc, listener().await)))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    let running = Running { addr, stop, handle };
    let ch = running.channel().await;
    let calls =
        pb::calls_client::CallsClient::with_interceptor(ch.clone(), BearerInterceptor::new(CALLER));
    let admin = pb::collectors_client::CollectorsClient::with_interceptor(
        ch,
        BearerInterceptor::new(ADMIN),
    );
    (running, calls, admin)
}
