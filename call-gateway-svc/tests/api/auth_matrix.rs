//! Every RPC of both services x (no key, wrong key, wrong role, a key of another tenant) gets the
//! right code, and so does every RPC x every person role (a token of another tenant, a role
//! the RPC is not for, a collector acting for another collector); none of it changes anything. The RPCs are enumerated from the contracts'
//! descriptor set, so a new RPC is covered the day it is added. Requests are built dynamically
//! (prost-reflect) with the other tenant's ids filled in.

use crate::common::*;
use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::{Role, RoleTable};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use tonic::Code;

async fn send(
    channel: tonic::transport::Channel,
    path: &str,
    body: Vec<u8>,
    key: Option<&str>,
) -> Code {
    send_raw(channel, path, body, key)
        .await
        .map_or_else(|s| s.code(), |_| Code::Ok)
}

/// The allocator's lease channel checks the tenant of each command and answers a refusal in
/// the command's reply: sends one Acquire for tenant t-b on it, returns the reply's code.
async fn lease_command_code(channel: tonic::transport::Channel, path: &str, key: &str) -> Code {
    assert!(
        path.ends_with("/LeaseChannel"),
        "{path}: a stream this test does not know"
    );
    let command = apb::LeaseCommand {
        id: 1,
        command: Some(apb::lease_command::Command::Acquire(apb::AcquireRequest {
            tenant_id: "t-b".into(),
            collector_id: "c1".into(),
            request_id: "r1".into(),
            ..Default::default()
        })),
    };
    match send_raw(channel, path, command.encode_to_vec(), Some(key)).await {
        Err(s) => s.code(),
        Ok(bytes) => match apb::LeaseReply::decode(bytes.as_slice()).map(|r| r.reply) {
            Ok(Some(apb::lease_reply::Reply::Error(e))) => Code::from(e.code),
            _ => Code::Ok,
        },
    }
}

/// The request for `input`, naming tenant t-b and its objects wherever the message has room.
fn request(input: &MessageDescriptor, ids: &[(&str, String)]) -> Vec<u8> {
    let mut m = DynamicMessage::new(input.clone());
    for (field, value) in ids {
        if let Some(f) = input.get_field_by_name(field) {
            if f.is_list() {
                m.set_field(&f, Value::List(vec![Value::String(value.clone())]));
            } else if f.kind().as_message().is_some() {
                continue;
            } else if matches!(f.kind(), prost_reflect::Kind::Uint64) {
                m.set_field(&f, Value::U64(value.parse().unwrap()));
            } else {
                m.set_field(&f, Value::String(value.clone()));
            }
        }
    }
    // CreateConfig, SetPolicy and AddDoNotCall carry the tenant inside a message.
    for name in ["config", "policy", "entry"] {
        if let Some(f) = input
            .get_field_by_name(name)
            .filter(|f| f.kind().as_message().is_some())
        {
            let inner = f.kind().as_message().unwrap().clone();
            let mut c = DynamicMessage::new(inner.clone());
            c.set_field_by_name("tenant_id", Value::String("t-b".into()));
            m.set_field(&f, Value::Message(c));
        }
    }
    m.encode_to_vec()
}

fn key_for(role: Role, scoped: bool) -> &'static str {
    match (role, scoped) {
        (Role::Admin, false) => ADMIN,
        (Role::Caller, false) => CALLER,
        (Role::Peer, false) => PEER,
        (Role::Admin, true) => SCOPED_ADMIN,
        (Role::Caller, true) => SCOPED_CALLER,
        (Role::Peer, true) => SCOPED_PEER,
        (Role::Supervisor | Role::Collector, _) => unreachable!("people have tokens, not keys"),
    }
}

/// The people of the matrix: each role, and the collector id its token carries.
const PEOPLE: [(Role, &str, Option<&str>); 3] = [
    (Role::Admin, "admin", None),
    (Role::Supervisor, "supervisor", None),
    (Role::Collector, "collector", Some("carol")),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_refuses_missing_wrong_and_foreign_keys() {
    let sim = sim().await;
    let stack = Stack::pair(Backend::Postgres).await;
    let mut configs = stack.configs(ADMIN).await;
    create(&mut configs, valid_input("t-a", &sim.api_url())).await;
    let tb = create(&mut configs, valid_input("t-b", &sim.api_url())).await;
    let mut pool = stack.pool(ADMIN).await;
    let imported = pool
        .batch_import(apb::BatchImportRequest {
            tenant_id: "t-b".into(),
            config_id: String::new(),
            numbers: vec!["8001".into(), "8002".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut coll = stack.collectors(ADMIN).await;
    coll.upsert_collector(pb::UpsertCollectorRequest {
        tenant_id: "t-b".into(),
        collector_id: "bob".into(),
        callback_number: "13800138002".into(),
        display_name: String::new(),
        active: None,
    })
    .await
    .unwrap();
    let mut calls = pb::calls_client::CallsClient::with_interceptor(
        stack.gateway.channel().await,
        cco_platform::auth::BearerInterceptor::new(CALLER),
    );
    sim.state().set_script(
        None,
        infinity_sim::Script {
            callback: infinity_sim::CallbackMode::Lost,
            ..Default::default()
        },
    );
    let call = calls
        .make_call(pb::MakeCallRequest {
            tenant_id: "t-b".into(),
            collector_id: "bob".into(),
            case_id: "k".into(),
            destination_number: "13900139000".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let record = calls
        .get_call(pb::GetCallRequest {
            tenant_id: "t-b".into(),
            call_id: call.call_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let before_stats = stack
        .alloc(ADMIN)
        .await
        .stats(apb::StatsRequest {
            tenant_id: "t-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let dials_before = sim.state().dial_requests().len();

    let ids = [
        ("tenant_id", "t-b".to_owned()),
        ("collector_id", "bob".to_owned()),
        ("case_id", "k".to_owned()),
        ("destination_number", "13900139001".to_owned()),
        ("request_id", "matrix".to_owned()),
        ("lease_id", record.lease_id.clone()),
        ("fencing_token", record.fencing_token.to_string()),
        ("extension_id", imported.results[1].extension_id.clone()),
        ("extension_ids", imported.results[1].extension_id.clone()),
        ("config_id", tb.config_id.clone()),
        ("call_id", call.call_id.clone()),
        ("numbers", "8009".to_owned()),
        ("version", "1".to_owned()),
    ];
    let descriptors = DescriptorPool::decode(cco_contracts::FILE_DESCRIPTOR_SET).unwrap();
    let mut checked = 0;
    for service in descriptors.services() {
        let (addr, roles): (_, RoleTable) = if service.package_name() == "cco.infinity.allocator.v1"
        {
            (
                stack.allocator.as_ref().unwrap(),
                allocator_svc::grpc::roles,
            )
        } else {
            (&stack.gateway, call_gateway_svc::grpc::roles)
        };
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let allowed = roles(&path).unwrap_or_else(|| panic!("{path} has no role entry"));
            let body = request(&method.input(), &ids);
            let ch = addr.channel().await;
            assert_eq!(
                send(ch.clone(), &path, body.clone(), None).await,
                Code::Unauthenticated,
                "{path}: no key"
            );
            assert_eq!(
                send(ch.clone(), &path, body.clone(), Some("not-a-real-key")).await,
                Code::Unauthenticated,
                "{path}: wrong key"
            );
            if let Some(wrong) = [Role::Caller, Role::Peer, Role::Admin]
                .into_iter()
                .find(|r| !allowed.contains(r))
            {
                assert_eq!(
                    send(ch.clone(), &path, body.clone(), Some(key_for(wrong, false))).await,
                    Code::PermissionDenied,
                    "{path}: role {wrong:?}"
                );
            }
            let scoped = key_for(
                allowed
                    .iter()
                    .copied()
                    .find(|r| matches!(r, Role::Admin | Role::Caller | Role::Peer))
                    .unwrap_or(Role::Admin),
                true,
            );
            let code = if method.is_client_streaming() && method.is_server_streaming() {
                lease_command_code(ch.clone(), &path, scoped).await
            } else {
                send(ch.clone(), &path, body.clone(), Some(scoped)).await
            };
            assert_eq!(
                code,
                Code::PermissionDenied,
                "{path}: key of tenant t-a on t-b's data"
            );
            for (role, name, collector) in PEOPLE {
                if allowed.contains(&role) {
                    let other_tenant = person(name, "t-a", collector);
                    assert_eq!(
                        send(ch.clone(), &path, body.clone(), Some(&other_tenant)).await,
                        Code::PermissionDenied,
                        "{path}: {name} of tenant t-a on t-b's data"
                    );
                    if role == Role::Collector {
                        // carol of t-b, on bob's call, collector record and leases.
                        let carol = person(name, "t-b", collector);
                        assert_eq!(
                            send(ch.clone(), &path, body.clone(), Some(&carol)).await,
                            Code::PermissionDenied,
                            "{path}: collector carol acting for bob"
                        );
                    }
                } else {
                    let own_tenant = person(name, "t-b", collector);
                    assert_eq!(
                        send(ch.clone(), &path, body.clone(), Some(&own_tenant)).await,
                        Code::PermissionDenied,
                        "{path}: role {name} is not for it"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 32, "only {checked} RPCs enumerated");

    // Nothing changed for t-b.
    let after = configs
        .get_config(pb::GetConfigRequest {
            tenant_id: "t-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((after.version, after.is_active), (tb.version, tb.is_active));
    let after_stats = stack
        .alloc(ADMIN)
        .await
        .stats(apb::StatsRequest {
            tenant_id: "t-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after_stats, before_stats);
    let still = calls
        .get_call(pb::GetCallRequest {
            tenant_id: "t-b".into(),
            call_id: call.call_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (still.status, still.lease_released),
        (record.status, record.lease_released)
    );
    assert_eq!(
        sim.state().dial_requests().len(),
        dials_before,
        "nothing dialled"
    );
    let listed = calls
        .list_calls(pb::ListCallsRequest {
            tenant_id: "t-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.calls.len(), 1);
    let c = coll
        .get_collector(pb::GetCollectorRequest {
            tenant_id: "t-b".into(),
            collector_id: "bob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(c.active);
    stack.shutdown().await;
    sim.stop().await;
}

/// A key over its rate limit gets RESOURCE_EXHAUSTED; another key is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_rate_limit() {
    let stack = Stack::start(Backend::Sqlite, false, |s| {
        s.auth.rate_limit_per_second = 1;
        s.auth.rate_limit_burst = 5;
    })
    .await;
    let mut greedy = stack.configs(ADMIN).await;
    let mut codes = Vec::new();
    for _ in 0..20 {
        let code = match greedy
            .get_config(pb::GetConfigRequest {
                tenant_id: "t1".into(),
            })
            .await
        {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        codes.push(code);
    }
    let limited = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    assert!(
        limited >= 14,
        "burst 5 at 1/s: at least 14 of 20 refused, got {codes:?}"
    );
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Code::NotFound | Code::ResourceExhausted)),
        "{codes:?}"
    );
    let e = stack
        .policies(PEER)
        .await
        .get_tenant_policy(pb::GetTenantPolicyRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "another key still gets through: {e:?}"
    );
    stack.shutdown().await;
}
