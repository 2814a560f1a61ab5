//! The gRPC policy source against a small `TenantPolicies` server started inside the test:
//! the allocator follows the gateway's policy, presents its peer key, reports inactive and
//! unknown tenants, serves a cached policy while the gateway is down, and answers UNAVAILABLE
//! when nothing is cached. Run on both backends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::common::*;
use allocator_svc::settings::PolicySourceKind;
use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as gpb;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

#[derive(Clone, Default)]
struct FakePolicies {
    policies: Arc<Mutex<HashMap<String, gpb::TenantPolicy>>>,
    auth_seen: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl gpb::tenant_policies_server::TenantPolicies for FakePolicies {
    async fn get_tenant_policy(
        &self,
        req: Request<gpb::GetTenantPolicyRequest>,
    ) -> Result<Response<gpb::TenantPolicy>, Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.auth_seen.lock().unwrap().push(auth);
        let tenant = req.into_inner().tenant_id;
        self.policies
            .lock()
            .unwrap()
            .get(&tenant)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found("no config"))
    }
}

fn policy(
    tenant: &str,
    active: bool,
    strategy: gpb::AllocationStrategy,
    cap: u32,
) -> gpb::TenantPolicy {
    gpb::TenantPolicy {
        tenant_id: tenant.into(),
        active,
        config_id: "cfg-1".into(),
        default_strategy: strategy.into(),
        max_concurrent_calls: cap,
        lease_ttl_seconds: 120,
        cooldown_seconds: 0,
    }
}

async fn start_fake(
    fake: FakePolicies,
) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let handle = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(gpb::tenant_policies_server::TenantPoliciesServer::new(fake))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                s2.cancelled_owned(),
            )
            .await
            .unwrap();
    });
    (format!("http://{addr}"), stop, handle)
}

/// The allocator applies the gateway's strategy, cap and active flag, and presents its peer key.
async fn follows_gateway_policy(b: Backend) {
    let fake = FakePolicies::default();
    fake.policies.lock().unwrap().insert(
        "t1".into(),
        policy("t1", true, gpb::AllocationStrategy::RoundRobin, 1),
    );
    let (url, stop, handle) = start_fake(fake.clone()).await;
    let db = TestDb::new(b).await;
    let mut s = settings(&db.url);
    s.policy.source = PolicySourceKind::Grpc;
    s.policy.gateway_url = url;
    s.policy.cache_ttl_ms = 0;
    let app = TestApp::spawn(s).await;
    let mut pool = app.pool(ADMIN).await;
    let ids = import(&mut pool, "t1", &["1", "2", "3"]).await;
    let ext = pool
        .get_extension(apb::GetExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ext.config_id, "cfg-1", "config id taken from the policy");
    let mut c = app.alloc(CALLER).await;
    let l = c
        .acquire(acquire_req("t1", "c", "r1"))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(l.strategy, apb::Strategy::RoundRobin as i32);
    let ttl = l.expires_at.unwrap().seconds - l.acquired_at.unwrap().seconds;
    assert!(
        (119..=121).contains(&ttl),
        "policy lease TTL 120 s, got {ttl}"
    );
    let capped = c.acquire(acquire_req("t1", "c", "r2")).await.unwrap_err();
    assert_eq!(capped.code(), Code::ResourceExhausted);
    assert!(
        capped.message().contains("max_concurrent_calls is 1"),
        "{}",
        capped.message()
    );
    // The gateway raises the cap and switches to LRU: the next acquire follows at once.
    fake.policies.lock().unwrap().insert(
        "t1".into(),
        policy("t1", true, gpb::AllocationStrategy::Lru, 2),
    );
    let l2 = c
        .acquire(acquire_req("t1", "c", "r3"))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(l2.strategy, apb::Strategy::Lru as i32);
    fake.policies.lock().unwrap().insert(
        "t1".into(),
        policy("t1", false, gpb::AllocationStrategy::Lru, 5),
    );
    let inactive = c.acquire(acquire_req("t1", "c", "r4")).await.unwrap_err();
    assert_eq!(inactive.code(), Code::FailedPrecondition);
    assert!(
        inactive.message().contains("inactive"),
        "{}",
        inactive.message()
    );
    let unknown = c.acquire(acquire_req("t9", "c", "r5")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    assert!(
        unknown.message().contains("no Infinity call config"),
        "{}",
        unknown.message()
    );
    assert!(
        fake.auth_seen
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "Bearer dev-peer-key")
    );
    app.shutdown().await;
    stop.cancel();
    handle.await.unwrap();
}

/// With the gateway down: a tenant whose policy is cached keeps working; one never seen gets
/// UNAVAILABLE naming the policy service.
async fn gateway_down(b: Backend) {
    let fake = FakePolicies::default();
    fake.policies.lock().unwrap().insert(
        "t1".into(),
        policy("t1", true, gpb::AllocationStrategy::Lru, 0),
    );
    let (url, stop, handle) = start_fake(fake).await;
    let db = TestDb::new(b).await;
    let mut s = settings(&db.url);
    s.policy.source = PolicySourceKind::Grpc;
    s.policy.gateway_url = url;
    s.policy.cache_ttl_ms = 0;
    s.policy.stale_ttl_ms = 600_000;
    s.policy.timeout_ms = 500;
    let app = TestApp::spawn(s).await;
    let mut pool = app.pool(ADMIN).await;
    import(&mut pool, "t1", &["1", "2"]).await;
    let mut c = app.alloc(CALLER).await;
    c.acquire(acquire_req("t1", "c", "r1")).await.unwrap();
    stop.cancel();
    handle.await.unwrap();
    let cached = c.acquire(acquire_req("t1", "c", "r2")).await;
    assert!(
        cached.is_ok(),
        "stale cached policy serves while the gateway is down: {cached:?}"
    );
    let e = c.acquire(acquire_req("t2", "c", "r3")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("tenant policy service"),
        "{}",
        e.message()
    );
    app.shutdown().await;
}

cco_platform::on_every_backend!(follows_gateway_policy, gateway_down);
