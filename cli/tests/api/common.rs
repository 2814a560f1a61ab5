//! What the process-level fault tests share: channels to a service on a local port, and the
//! tenant `t1` every scenario starts from.

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use infinity_sim::Simulator;
use tonic::transport::{Channel, Endpoint};

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
