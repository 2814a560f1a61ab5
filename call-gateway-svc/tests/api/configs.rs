//! Tenant configs, policies and collectors through the real gateway, on PostgreSQL and SQLite.

use crate::common::*;
use cco_contracts::gateway::v1 as pb;
use tonic::Code;

const API: &str = "http://127.0.0.1:9/openapi";

/// A created config: defaults applied, numbers normalised and deduplicated, secrets masked,
/// the generated callback secret shown once; readable by tenant and by id; a second config of
/// the tenant is ALREADY_EXISTS.
async fn create_and_read_a_config(b: Backend) {
    let stack = Stack::pair(b).await;
    let mut c = stack.configs(ADMIN).await;
    let created = create(&mut c, valid_input("t1", API)).await;
    assert_eq!(created.version, 1);
    assert_eq!(
        created.caller_number_pool,
        ["+862566823420", "+8613800138000"],
        "normalised and deduplicated"
    );
    assert_eq!(
        created.default_caller_number, "+862566823420",
        "defaults to the first pool number"
    );
    assert_eq!(created.call_mode, pb::CallMode::DoubleCall as i32);
    assert_eq!(
        (created.call_timeout_seconds, created.lease_ttl_seconds),
        (60, 1800)
    );
    assert_eq!(created.callback_time_zone, "Asia/Shanghai");
    assert!(created.is_active);
    let creds = created.credentials.clone().unwrap();
    assert_eq!(creds.mode, "access_token");
    assert_eq!(creds.access_token.clone().unwrap().mask, "****cdef");
    assert_eq!(
        created.new_callback_secret.len(),
        64,
        "generated secret shown once"
    );
    let secret_view = created.callback_secret.clone().unwrap();
    assert!(
        secret_view.set
            && created
                .new_callback_secret
                .ends_with(&secret_view.mask[4..])
    );
    let got = get(&mut c).await;
    assert!(got.new_callback_secret.is_empty(), "never shown again");
    let by_id = c
        .get_config_by_id(pb::GetConfigByIdRequest {
            config_id: created.config_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.tenant_id, "t1");
    let dup = c
        .create_config(pb::CreateConfigRequest {
            config: Some(valid_input("t1", API)),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    stack.shutdown().await;
}

async fn get(c: &mut Configs) -> pb::TenantConfig {
    c.get_config(pb::GetConfigRequest {
        tenant_id: "t1".into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// A partial update changes only the fields given.
async fn partial_update_changes_only_the_fields_given(b: Backend) {
    let stack = Stack::pair(b).await;
    let mut c = stack.configs(ADMIN).await;
    let created = create(&mut c, valid_input("t1", API)).await;
    let upd = c
        .update_config(pb::UpdateConfigRequest {
            tenant_id: "t1".into(),
            version: 1,
            max_concurrent_calls: Some(42),
            call_mode: Some(pb::CallMode::MakeCall.into()),
            callback_ip_allowlist: Some(pb::IpAllowList {
                cidrs: vec!["203.0.113.0/24".into(), "198.51.100.7".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (upd.version, upd.max_concurrent_calls, upd.call_mode),
        (2, 42, pb::CallMode::MakeCall as i32)
    );
    assert_eq!(
        upd.callback_ip_allowlist,
        ["203.0.113.0/24", "198.51.100.7/32"]
    );
    assert_eq!(upd.api_url, created.api_url);
    assert_eq!(upd.caller_number_pool, created.caller_number_pool);
    assert_eq!(upd.credentials, created.credentials);
    assert_eq!(upd.callback_secret, created.callback_secret);
    stack.shutdown().await;
}

/// Two admins read the same version: the second write is ABORTED and changes nothing.
async fn stale_updates_lose(b: Backend) {
    let stack = Stack::pair(b).await;
    let mut c = stack.configs(ADMIN).await;
    create(&mut c, valid_input("t1", API)).await;
    let write = |supplier: &str| pb::UpdateConfigRequest {
        tenant_id: "t1".into(),
        version: 1,
        supplier_id: Some(supplier.into()),
        ..Default::default()
    };
    c.update_config(write("sup-2")).await.unwrap();
    let stale = c.update_config(write("sup-3")).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert!(
        stale.message().starts_with("version:"),
        "{}",
        stale.message()
    );
    let now = get(&mut c).await;
    assert_eq!(
        (now.supplier_id.as_str(), now.version),
        ("sup-2", 2),
        "the losing write changed nothing"
    );
    stack.shutdown().await;
}

/// regenerate_callback_secret shows a new secret once.
async fn callback_secret_rotation(b: Backend) {
    let stack = Stack::pair(b).await;
    let mut c = stack.configs(ADMIN).await;
    let created = create(&mut c, valid_input("t1", API)).await;
    let rotated = c
        .update_config(pb::UpdateConfigRequest {
            tenant_id: "t1".into(),
            version: 1,
            regenerate_callback_secret: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.new_callback_secret.len(), 64);
    assert_ne!(rotated.new_callback_secret, created.new_callback_secret);
    stack.shutdown().await;
}

/// ToggleConfig flips is_active, version-checked when a version is given.
async fn toggle_flips_is_active(b: Backend) {
    let stack = Stack::pair(b).await;
    let mut c = stack.configs(ADMIN).await;
    create(&mut c, valid_input("t1", API)).await;
    let toggle = |version| pb::ToggleConfigRequest {
        tenant_id: "t1".into(),
        version,
    };
    let off = c.toggle_config(toggle(0)).await.unwrap().into_inner();
    assert!(!off.is_active);
    let stale = c.toggle_config(toggle(1)).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let on = c
        .toggle_config(toggle(off.version))
        .await
        .unwrap()
        .into_inner();
    assert!(on.is_active);
    stack.shutdown().await;
}

/// DeleteConfig of a tenant without live calls deletes it.
async fn delete_a_config(b: Backend) {
    let stack = Stack::pair(b).await;
    let mut c = stack.configs(ADMIN).await;
    create(&mut c, valid_input("t1", API)).await;
    let del = c
        .delete_config(pb::DeleteConfigRequest {
            tenant_id: "t1".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((del.deleted, del.calls_ended), (true, 0));
    let gone = c
        .get_config(pb::GetConfigRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    stack.shutdown().await;
}

/// Every field is validated with an error that names it, and nothing is written.
async fn validation_names_every_field(b: Backend) {
    let stack = Stack::gateway_only(b).await;
    let mut c = stack.configs(ADMIN).await;
    type Mutate = fn(&mut pb::ConfigInput);
    let cases: Vec<(&str, Mutate)> = vec![
        ("tenant_id:", |i| i.tenant_id = "bad tenant".into()),
        ("supplier_id:", |i| i.supplier_id = "sup/1".into()),
        ("api_url:", |i| i.api_url = "ftp://x".into()),
        ("api_url:", |i| i.api_url = "http://".into()),
        ("credentials:", |i| i.credentials = None),
        ("credentials.access_token:", |i| {
            i.credentials = Some(pb::Credentials {
                kind: Some(pb::credentials::Kind::AccessToken("short".into())),
            })
        }),
        ("credentials.app.app_id:", |i| {
            i.credentials = Some(pb::Credentials {
                kind: Some(pb::credentials::Kind::App(pb::AppCredentials {
                    app_id: "".into(),
                    access_key: "k".into(),
                })),
            })
        }),
        ("credentials.app.access_key:", |i| {
            i.credentials = Some(pb::Credentials {
                kind: Some(pb::credentials::Kind::App(pb::AppCredentials {
                    app_id: "a".into(),
                    access_key: "".into(),
                })),
            })
        }),
        ("caller_number_pool:", |i| i.caller_number_pool = vec![]),
        ("caller_number_pool:", |i| {
            i.caller_number_pool = vec!["12ab".into()]
        }),
        ("default_caller_number:", |i| {
            i.default_caller_number = "13900139000".into()
        }),
        ("destination_prefix:", |i| {
            i.destination_prefix = "52a".into()
        }),
        ("max_concurrent_calls:", |i| {
            i.max_concurrent_calls = Some(0)
        }),
        ("max_concurrent_calls:", |i| {
            i.max_concurrent_calls = Some(10_001)
        }),
        ("call_timeout_seconds:", |i| {
            i.call_timeout_seconds = Some(5)
        }),
        ("api_timeout_ms:", |i| i.api_timeout_ms = Some(100)),
        ("lease_ttl_seconds:", |i| i.lease_ttl_seconds = Some(9)),
        ("cooldown_seconds:", |i| i.cooldown_seconds = Some(99_999)),
        ("callback_secret:", |i| i.callback_secret = "short".into()),
        ("callback_ip_allowlist:", |i| {
            i.callback_ip_allowlist = vec!["10.0.0.0/33".into()]
        }),
        ("callback_time_zone:", |i| {
            i.callback_time_zone = "Mars/Olympus".into()
        }),
        ("phone_region:", |i| i.phone_region = "XX".into()),
        ("caller_number_selection:", |i| {
            i.caller_number_selection = 99
        }),
        ("call_mode:", |i| i.call_mode = 99),
        ("allocation_strategy:", |i| i.allocation_strategy = 99),
        ("api_encoding:", |i| i.api_encoding = 99),
    ];
    for (field, mutate) in cases {
        let mut input = valid_input("t1", API);
        mutate(&mut input);
        let e = c
            .create_config(pb::CreateConfigRequest {
                config: Some(input),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(field),
            "want {field}, got {}",
            e.message()
        );
    }
    let nothing = c
        .get_config(pb::GetConfigRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        nothing.code(),
        Code::NotFound,
        "no invalid config was written"
    );
    // Updates validate too, and a refused update changes nothing.
    create(&mut c, valid_input("t1", API)).await;
    let e = c
        .update_config(pb::UpdateConfigRequest {
            tenant_id: "t1".into(),
            version: 1,
            max_concurrent_calls: Some(7),
            call_timeout_seconds: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message().starts_with("call_timeout_seconds:"),
        "{}",
        e.message()
    );
    let e = c
        .update_config(pb::UpdateConfigRequest {
            tenant_id: "t1".into(),
            version: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("version:"), "{}", e.message());
    let now = c
        .get_config(pb::GetConfigRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((now.version, now.max_concurrent_calls), (1, 5));
    stack.shutdown().await;
}

/// The access token, access key and callback secret are sealed at rest: the raw rows hold none.
async fn secrets_encrypted_at_rest(b: Backend) {
    let stack = Stack::gateway_only(b).await;
    let mut c = stack.configs(ADMIN).await;
    let mut a = valid_input("t-token", API);
    a.callback_secret = "callback-secret-value-1234".into();
    create(&mut c, a).await;
    let mut b2 = valid_input("t-app", API);
    b2.credentials = Some(pb::Credentials {
        kind: Some(pb::credentials::Kind::App(pb::AppCredentials {
            app_id: "my-app".into(),
            access_key: "very-secret-access-key".into(),
        })),
    });
    create(&mut c, b2).await;
    let rows = raw_rows(&stack.gateway_db.url, "infinity_call_configs").await;
    assert_eq!(rows.len(), 2);
    for r in &rows {
        for secret in [
            SIM_TOKEN,
            "very-secret-access-key",
            "callback-secret-value-1234",
        ] {
            assert!(!r.contains(secret), "secret {secret} stored in clear: {r}");
        }
        assert!(r.contains("v1.dev1."), "sealed values name their key: {r}");
    }
    let got = c
        .get_config(pb::GetConfigRequest {
            tenant_id: "t-app".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let creds = got.credentials.unwrap();
    assert_eq!(
        (creds.mode.as_str(), creds.app_id.as_str()),
        ("app", "my-app")
    );
    assert_eq!(creds.access_key.unwrap().mask, "****-key");
    stack.shutdown().await;
}

/// Tenants t-a and t-b with configs, and collector bob in t-b.
async fn two_tenants(b: Backend) -> (Stack, pb::TenantConfig) {
    let stack = Stack::gateway_only(b).await;
    let mut admin = stack.configs(ADMIN).await;
    create(&mut admin, valid_input("t-a", API)).await;
    let tb = create(&mut admin, valid_input("t-b", API)).await;
    let mut coll = stack.collectors(ADMIN).await;
    coll.upsert_collector(pb::UpsertCollectorRequest {
        tenant_id: "t-b".into(),
        collector_id: "bob".into(),
        callback_number: "13800138001".into(),
        display_name: "Bob".into(),
        active: None,
    })
    .await
    .unwrap();
    (stack, tb)
}

/// No key and wrong keys are UNAUTHENTICATED; caller keys cannot administer configs, policies
/// or collectors.
async fn keys_and_roles(b: Backend) {
    let (stack, _) = two_tenants(b).await;
    for key in ["", "nope-nope-nope"] {
        let e = stack
            .configs(key)
            .await
            .get_config(pb::GetConfigRequest {
                tenant_id: "t-a".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let e = stack
        .configs(CALLER)
        .await
        .create_config(pb::CreateConfigRequest {
            config: Some(valid_input("t-c", API)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = stack
        .policies(CALLER)
        .await
        .get_tenant_policy(pb::GetTenantPolicyRequest {
            tenant_id: "t-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = stack
        .collectors(CALLER)
        .await
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t-a".into(),
            collector_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    stack.shutdown().await;
}

/// A key scoped to t-a never reads or changes t-b's config or collectors, and t-b is untouched.
async fn scoped_keys_stay_in_their_tenant(b: Backend) {
    let (stack, tb) = two_tenants(b).await;
    let mut admin = stack.configs(ADMIN).await;
    let mut scoped = stack.configs(SCOPED_ADMIN).await;
    scoped
        .get_config(pb::GetConfigRequest {
            tenant_id: "t-a".into(),
        })
        .await
        .unwrap();
    for e in [
        scoped
            .get_config(pb::GetConfigRequest {
                tenant_id: "t-b".into(),
            })
            .await
            .unwrap_err(),
        scoped
            .get_config_by_id(pb::GetConfigByIdRequest {
                config_id: tb.config_id.clone(),
            })
            .await
            .unwrap_err(),
        scoped
            .update_config(pb::UpdateConfigRequest {
                tenant_id: "t-b".into(),
                version: 1,
                max_concurrent_calls: Some(1),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        scoped
            .toggle_config(pb::ToggleConfigRequest {
                tenant_id: "t-b".into(),
                version: 0,
            })
            .await
            .unwrap_err(),
        scoped
            .delete_config(pb::DeleteConfigRequest {
                tenant_id: "t-b".into(),
                force: true,
            })
            .await
            .unwrap_err(),
        scoped
            .test_connection(pb::TestConnectionRequest {
                tenant_id: "t-b".into(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let mut scoped_coll = stack.collectors(SCOPED_CALLER).await;
    let e = scoped_coll
        .get_collector(pb::GetCollectorRequest {
            tenant_id: "t-b".into(),
            collector_id: "bob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = scoped_coll
        .list_collectors(pb::ListCollectorsRequest {
            tenant_id: "t-b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let still = admin
        .get_config(pb::GetConfigRequest {
            tenant_id: "t-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((still.version, still.is_active), (1, true), "t-b untouched");
    stack.shutdown().await;
}

/// A peer reads a tenant's policy; a tenant without a config is NOT_FOUND.
async fn peers_read_policies(b: Backend) {
    let (stack, tb) = two_tenants(b).await;
    let p = stack
        .policies(PEER)
        .await
        .get_tenant_policy(pb::GetTenantPolicyRequest {
            tenant_id: "t-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (p.config_id.as_str(), p.max_concurrent_calls, p.active),
        (tb.config_id.as_str(), 5, true)
    );
    let e = stack
        .policies(PEER)
        .await
        .get_tenant_policy(pb::GetTenantPolicyRequest {
            tenant_id: "t-z".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    stack.shutdown().await;
}

/// A gateway with tenant `t-mx` (region MX) and an admin Collectors client.
async fn mx_tenant(b: Backend) -> (Stack, Collectors) {
    let stack = Stack::gateway_only(b).await;
    let mut admin = stack.configs(ADMIN).await;
    let mut mx = valid_input("t-mx", API);
    mx.phone_region = "MX".into();
    mx.caller_number_pool = vec!["55 1234 5678".into()];
    create(&mut admin, mx).await;
    let c = stack.collectors(ADMIN).await;
    (stack, c)
}

async fn upsert(c: &mut Collectors, id: &str, number: &str) -> pb::Collector {
    c.upsert_collector(pb::UpsertCollectorRequest {
        tenant_id: "t-mx".into(),
        collector_id: id.into(),
        callback_number: number.into(),
        display_name: String::new(),
        active: None,
    })
    .await
    .unwrap()
    .into_inner()
}

/// A collector's number is read in the tenant's region; an upsert replaces name, number and
/// state; any caller of the tenant reads it back.
async fn collectors_are_read_in_the_tenants_region_and_replaced(b: Backend) {
    let (stack, mut c) = mx_tenant(b).await;
    let ana = upsert(&mut c, "ana", "55 8765 4321").await;
    assert_eq!(
        (ana.callback_number.as_str(), ana.active),
        ("+525587654321", true)
    );
    let again = c
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t-mx".into(),
            collector_id: "ana".into(),
            callback_number: "".into(),
            display_name: "Ana M".into(),
            active: Some(false),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            again.callback_number.as_str(),
            again.display_name.as_str(),
            again.active
        ),
        ("", "Ana M", false)
    );
    upsert(&mut c, "c00", "5512345678").await;
    let caller_view = stack
        .collectors(CALLER)
        .await
        .get_collector(pb::GetCollectorRequest {
            tenant_id: "t-mx".into(),
            collector_id: "c00".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caller_view.callback_number, "+525512345678");
    stack.shutdown().await;
}

/// Listing pages through every collector in id order, and filters by state.
async fn collectors_page_and_filter_by_state(b: Backend) {
    let (stack, mut c) = mx_tenant(b).await;
    c.upsert_collector(pb::UpsertCollectorRequest {
        tenant_id: "t-mx".into(),
        collector_id: "ana".into(),
        active: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..12 {
        upsert(&mut c, &format!("c{i:02}"), "5512345678").await;
    }
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_collectors(pb::ListCollectorsRequest {
                tenant_id: "t-mx".into(),
                page_size: 5,
                page_token: token.clone(),
                active: None,
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.collectors.into_iter().map(|c| c.collector_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids.len(), 13);
    assert_eq!(ids[0], "ana");
    let active = c
        .list_collectors(pb::ListCollectorsRequest {
            tenant_id: "t-mx".into(),
            page_size: 100,
            page_token: String::new(),
            active: Some(true),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.collectors.len(), 12);
    stack.shutdown().await;
}

/// A bad number or id is refused with the field named; a tenant without a config cannot have
/// collectors.
async fn bad_collectors_are_refused(b: Backend) {
    let (stack, mut c) = mx_tenant(b).await;
    let bad = c
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t-mx".into(),
            collector_id: "x".into(),
            callback_number: "12".into(),
            display_name: String::new(),
            active: None,
        })
        .await
        .unwrap_err();
    assert!(
        bad.message().starts_with("callback_number:"),
        "{}",
        bad.message()
    );
    let bad = c
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t-mx".into(),
            collector_id: "x y".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        bad.message().starts_with("collector_id:"),
        "{}",
        bad.message()
    );
    let none = c
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t-none".into(),
            collector_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::FailedPrecondition);
    stack.shutdown().await;
}

/// A deleted collector is gone; deleting it again is NOT_FOUND.
async fn deleted_collectors_are_gone(b: Backend) {
    let (stack, mut c) = mx_tenant(b).await;
    upsert(&mut c, "ana", "55 8765 4321").await;
    c.delete_collector(pb::DeleteCollectorRequest {
        tenant_id: "t-mx".into(),
        collector_id: "ana".into(),
    })
    .await
    .unwrap();
    let gone = c
        .get_collector(pb::GetCollectorRequest {
            tenant_id: "t-mx".into(),
            collector_id: "ana".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let gone = c
        .delete_collector(pb::DeleteCollectorRequest {
            tenant_id: "t-mx".into(),
            collector_id: "ana".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    stack.shutdown().await;
}

/// DeleteConfig is refused while the tenant holds extensions (live calls) unless forced, and
/// refused with UNAVAILABLE when the allocator cannot be asked.
async fn delete_refused_while_live(b: Backend) {
    let stack = Stack::pair(b).await;
    let mut c = stack.configs(ADMIN).await;
    create(&mut c, valid_input("t1", API)).await;
    let mut pool = stack.pool(ADMIN).await;
    pool.batch_import(cco_contracts::allocator::v1::BatchImportRequest {
        tenant_id: "t1".into(),
        config_id: String::new(),
        numbers: vec!["8001".into()],
    })
    .await
    .unwrap();
    let mut alloc = stack.alloc(CALLER).await;
    alloc
        .acquire(cco_contracts::allocator::v1::AcquireRequest {
            tenant_id: "t1".into(),
            collector_id: "c".into(),
            strategy: 0,
            request_id: "r1".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap();
    let e = c
        .delete_config(pb::DeleteConfigRequest {
            tenant_id: "t1".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("1 live calls"), "{}", e.message());
    assert!(
        c.delete_config(pb::DeleteConfigRequest {
            tenant_id: "t1".into(),
            force: true
        })
        .await
        .unwrap()
        .into_inner()
        .deleted
    );
    stack.shutdown().await;

    let lonely = Stack::gateway_only(b).await;
    let mut c = lonely.configs(ADMIN).await;
    create(&mut c, valid_input("t1", API)).await;
    let e = c
        .delete_config(pb::DeleteConfigRequest {
            tenant_id: "t1".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    c.get_config(pb::GetConfigRequest {
        tenant_id: "t1".into(),
    })
    .await
    .unwrap();
    lonely.shutdown().await;
}

cco_platform::on_every_backend!(
    create_and_read_a_config,
    partial_update_changes_only_the_fields_given,
    stale_updates_lose,
    callback_secret_rotation,
    toggle_flips_is_active,
    delete_a_config,
    validation_names_every_field,
    secrets_encrypted_at_rest,
    keys_and_roles,
    scoped_keys_stay_in_their_tenant,
    peers_read_policies,
    collectors_are_read_in_the_tenants_region_and_replaced,
    collectors_page_and_filter_by_state,
    bad_collectors_are_refused,
    deleted_collectors_are_gone,
    delete_refused_while_live
);
