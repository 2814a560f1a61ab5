//! What the process-level fault tests share: channels to a service on a local port, and the
//! tenant `t1` every scenario starts from.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use infinity_sim::Simulator;
use tonic::transport::{Channel, Endpoint};

/// The `cco` binary: `cco serve allocator|gateway` runs one service per process.
pub const CCO: &str = env!("CARGO_BIN_EXE_cco");

/// The endpoint of a service listening on 127.0.0.1:`port` (add a timeout before connecting).
pub fn endpoint(port: u16) -> Endpoint {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap()
}

/// Tenant `t1`'s config on `sim`, calling back with `secret`; callers override the rest.
pub fn config(sim: &Simulator, secret: &str) -> pb::ConfigInput {
    pb::ConfigInput {
        tenant_id: "t1".into(),
        api_url: sim.api_url(),
        credentials: Some(pb::Credentials {
            kind: Some(pb::credentials::Kind::AccessToken(
                "0123456789abcdef0123456789abcdef".into(),
            )),
        }),
        caller_number_pool: vec!["02566823420".into()],
        callback_secret: secret.into(),
        ..Default::default()
    }
}

/// Creates tenant `t1` with `config` through `gateway`, collectors `c0..c{collectors}` (callback
/// numbers 13800138000 up), and imports `extensions` into the pool through `allocator`.
pub async fn tenant(
    gateway: Channel,
    allocator: Channel,
    config: pb::ConfigInput,
    collectors: usize,
    extensions: &[String],
) {
    let admin = BearerInterceptor::new("dev-admin-key");
    pb::tenant_configs_client::TenantConfigsClient::with_interceptor(
        gateway.clone(),
        admin.clone(),
    )
    .create_config(pb::CreateConfigRequest {
        config: Some(config),
    })
    .await
    .unwrap();
    let mut coll =
        pb::collectors_client::CollectorsClient::with_interceptor(gateway, admin.clone());
    for w in 0..collectors {
        coll.upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: format!("c{w}"),
            callback_number: format!("13800138{w:03}"),
            display_name: String::new(),
            active: None,
        })
        .await
        .unwrap();
    }
    apb::extension_pool_client::ExtensionPoolClient::with_interceptor(allocator, admin)
        .batch_import(apb::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: String::new(),
            numbers: extensions.to_vec(),
        })
        .await
        .unwrap();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One service process (`cco serve <service>`), restartable with the same environment.
pub struct Svc {
    env: Vec<(String, String)>,
    service: &'static str,
    pub port: u16,
    pub child: Child,
}

impl Svc {
    pub fn spawn(service: &'static str, port: u16, env: Vec<(String, String)>) -> Self {
        let child = Self::start(service, &env);
        Self {
            env,
            service,
            port,
            child,
        }
    }

    fn start(service: &str, env: &[(String, String)]) -> Child {
        Command::new(CCO)
            .args(["serve", service])
            .envs(env.iter().cloned())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    pub fn restart(&mut self) {
        self.child = Self::start(self.service, &self.env);
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

pub async fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(CCO)
            .args([
                "health",
                "--timeout",
                "2",
                "--endpoint",
                &format!("http://127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "service on {port} never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn allocator_env(db: &str, port: u16, gateway_port: u16) -> Vec<(String, String)> {
    [
        ("ALLOCATOR__DATABASE__URL", db.to_owned()),
        ("ALLOCATOR__GRPC__HOST", "127.0.0.1".into()),
        ("ALLOCATOR__GRPC__PORT", port.to_string()),
        ("ALLOCATOR__METRICS__ENABLED", "false".into()),
        (
            "ALLOCATOR__POLICY__GATEWAY_URL",
            format!("http://127.0.0.1:{gateway_port}"),
        ),
        ("ALLOCATOR__POLICY__CACHE_TTL_MS", "1000".into()),
        ("ALLOCATOR__DATABASE__ACQUIRE_TIMEOUT_MS", "2000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub fn gateway_env(db: &str, port: u16, http: u16, allocator_port: u16) -> Vec<(String, String)> {
    [
        ("GATEWAY__DATABASE__URL", db.to_owned()),
        ("GATEWAY__GRPC__HOST", "127.0.0.1".into()),
        ("GATEWAY__GRPC__PORT", port.to_string()),
        ("GATEWAY__HTTP__HOST", "127.0.0.1".into()),
        ("GATEWAY__HTTP__PORT", http.to_string()),
        (
            "GATEWAY__ALLOCATOR__URL",
            format!("http://127.0.0.1:{allocator_port}"),
        ),
        ("GATEWAY__ALLOCATOR__TIMEOUT_MS", "2000".into()),
        ("GATEWAY__DATABASE__ACQUIRE_TIMEOUT_MS", "2000".into()),
        ("GATEWAY__CALLS__OUTBOX_INTERVAL_MS", "200".into()),
        ("GATEWAY__CALLS__RECONCILE_INTERVAL_MS", "500".into()),
        ("GATEWAY__CALLS__RECONCILE_AFTER_SECONDS", "3".into()),
        ("GATEWAY__CALLS__RECONCILE_EVERY_SECONDS", "2".into()),
        ("GATEWAY__CALLS__MAX_CALL_AGE_SECONDS", "30".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
