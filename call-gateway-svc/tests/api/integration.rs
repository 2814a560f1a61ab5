//! TestConnection against the simulator and the real allocator, and the allocator following
//! the gateway's tenant configs end to end. PostgreSQL and SQLite.

use crate::common::*;
use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use tonic::Code;

fn acquire(request_id: &str) -> apb::AcquireRequest {
    apb::AcquireRequest {
        tenant_id: "t1".into(),
        collector_id: "c1".into(),
        strategy: 0,
        request_id: request_id.into(),
        ttl_seconds: 0,
    }
}

/// Login mode: logs in, lists Infinity's extensions, compares them with the allocator's pool
/// (unknown and unregistered numbers reported), and never dials.
async fn test_connection_login_mode(b: Backend) {
    let sim = sim().await;
    sim.state().set_extensions(&["8002"], false);
    let stack = Stack::pair(b).await;
    let mut c = stack.configs(ADMIN).await;
    let mut input = valid_input("t1", &sim.api_url());
    input.credentials = Some(app_credentials());
    create(&mut c, input).await;
    let mut pool = stack.pool(ADMIN).await;
    pool.batch_import(apb::BatchImportRequest {
        tenant_id: "t1".into(),
        config_id: String::new(),
        numbers: vec!["8001".into(), "8002".into(), "8009".into()],
    })
    .await
    .unwrap();
    let r = c
        .test_connection(pb::TestConnectionRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.method.as_str(), r.company_name.as_str()),
        ("login", "Simulated Call Centre")
    );
    assert_eq!((r.extension_count, r.registered_count), (3, 2));
    assert!(r.pool_checked, "{r:?}");
    assert_eq!(r.unknown_to_infinity, ["8009"]);
    assert_eq!(r.unregistered, ["8002"]);
    assert_eq!(sim.state().requests(Some("App.Sip_Auth.Login")).len(), 1);
    assert!(
        sim.state().dial_requests().is_empty(),
        "TestConnection never dials"
    );
    stack.shutdown().await;
    sim.stop().await;
}

/// Static-token mode lists extensions; failures report Infinity's code and text, or the class;
/// without the allocator the pool is not compared and the report says why.
async fn test_connection_failures(b: Backend) {
    let sim = sim().await;
    let stack = Stack::gateway_only(b).await;
    let mut c = stack.configs(ADMIN).await;
    create(&mut c, valid_input("t1", &sim.api_url())).await;
    let r = c
        .test_connection(pb::TestConnectionRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.ok && r.method == "list_extensions" && r.extension_count == 3,
        "{r:?}"
    );
    assert!(
        !r.pool_checked && r.pool_check_error.contains("allocator"),
        "{r:?}"
    );

    let mut bad_key = valid_input("t2", &sim.api_url());
    bad_key.credentials = Some(pb::Credentials {
        kind: Some(pb::credentials::Kind::App(pb::AppCredentials {
            app_id: "sim-app".into(),
            access_key: "wrong".into(),
        })),
    });
    create(&mut c, bad_key).await;
    let r = c
        .test_connection(pb::TestConnectionRequest {
            tenant_id: "t2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.ok);
    assert_eq!(
        (r.code.as_str(), r.message.as_str()),
        ("1003", "Authorization failed")
    );

    sim.state().expire_tokens();
    let r = c
        .test_connection(pb::TestConnectionRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.ok, r.code.as_str()), (false, "600"), "{r:?}");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    create(&mut c, valid_input("t3", &format!("http://{closed}/api"))).await;
    let r = c
        .test_connection(pb::TestConnectionRequest {
            tenant_id: "t3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.ok, r.code.as_str()), (false, "not_sent"), "{r:?}");
    let e = c
        .test_connection(pb::TestConnectionRequest {
            tenant_id: "t9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    stack.shutdown().await;
    sim.stop().await;
}

/// Real allocator, real gateway: the allocator's Acquire follows the tenant's strategy, cap and
/// active flag as they change through TenantConfigs; imports use the config's id.
async fn allocator_follows_tenant_config(b: Backend) {
    let stack = Stack::pair(b).await;
    let mut c = stack.configs(ADMIN).await;
    let mut input = valid_input("t1", "http://127.0.0.1:9/");
    input.allocation_strategy = pb::AllocationStrategy::RoundRobin.into();
    input.max_concurrent_calls = Some(1);
    let cfg = create(&mut c, input).await;
    let mut pool = stack.pool(ADMIN).await;
    let wrong = pool
        .batch_import(apb::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: "other".into(),
            numbers: vec!["8001".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    let imported = pool
        .batch_import(apb::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: cfg.config_id.clone(),
            numbers: vec!["8001".into(), "8002".into(), "8003".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(imported.imported, 3);
    let mut alloc = stack.alloc(CALLER).await;
    let l1 = alloc
        .acquire(acquire("r1"))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(l1.strategy, apb::Strategy::RoundRobin as i32);
    let capped = alloc.acquire(acquire("r2")).await.unwrap_err();
    assert_eq!(capped.code(), Code::ResourceExhausted);
    assert!(
        capped.message().contains("max_concurrent_calls is 1"),
        "{}",
        capped.message()
    );

    let v2 = c
        .update_config(pb::UpdateConfigRequest {
            tenant_id: "t1".into(),
            version: cfg.version,
            max_concurrent_calls: Some(3),
            allocation_strategy: Some(pb::AllocationStrategy::Lru.into()),
            lease_ttl_seconds: Some(600),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let l2 = alloc
        .acquire(acquire("r3"))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(l2.strategy, apb::Strategy::Lru as i32);
    let ttl = l2.expires_at.unwrap().seconds - l2.acquired_at.unwrap().seconds;
    assert!(
        (599..=601).contains(&ttl),
        "lease TTL from the config, got {ttl}"
    );

    c.toggle_config(pb::ToggleConfigRequest {
        tenant_id: "t1".into(),
        version: v2.version,
    })
    .await
    .unwrap();
    let off = alloc.acquire(acquire("r4")).await.unwrap_err();
    assert_eq!(off.code(), Code::FailedPrecondition);
    assert!(off.message().contains("inactive"), "{}", off.message());
    c.toggle_config(pb::ToggleConfigRequest {
        tenant_id: "t1".into(),
        version: 0,
    })
    .await
    .unwrap();
    alloc.acquire(acquire("r5")).await.unwrap();

    c.delete_config(pb::DeleteConfigRequest {
        tenant_id: "t1".into(),
        force: true,
    })
    .await
    .unwrap();
    let none = alloc.acquire(acquire("r6")).await.unwrap_err();
    assert_eq!(none.code(), Code::FailedPrecondition);
    assert!(
        none.message().contains("no Infinity call config"),
        "{}",
        none.message()
    );
    stack.shutdown().await;
}

cco_platform::on_every_backend!(
    test_connection_login_mode,
    test_connection_failures,
    allocator_follows_tenant_config
);
