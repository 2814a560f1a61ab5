//! TLS on the gRPC ports and the callback port, and mutual TLS between the allocator and the
//! gateway, with certificates generated here (rcgen): a whole call goes through; a plaintext
//! client, a client without a certificate and a client with a certificate from another CA are
//! refused.

use std::path::Path;
use std::time::Duration;

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use cco_platform::testing::{Backend, TestDb};
use cco_platform::tls::{ClientTls, ServerTls};
use infinity_sim::{SimConfig, Simulator};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn write(dir: &Path, name: &str, data: &str) {
    std::fs::write(dir.join(name), data).unwrap();
}

/// A CA, server certificates for 127.0.0.1/localhost, and client certificates; plus a second,
/// unrelated CA with its own client certificate.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    for (prefix, names) in [("", vec!["server", "client"]), ("rogue-", vec!["client"])] {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{prefix}test ca"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        write(dir.path(), &format!("{prefix}ca.pem"), &ca.pem());
        let issuer = Issuer::new(ca_params, ca_key);
        for name in names {
            let key = KeyPair::generate().unwrap();
            let mut p =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            let cert = p.signed_by(&key, &issuer).unwrap();
            write(dir.path(), &format!("{prefix}{name}.pem"), &cert.pem());
            write(
                dir.path(),
                &format!("{prefix}{name}.key"),
                &key.serialize_pem(),
            );
        }
    }
    Pki { dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_between_services_and_tls_to_clients() {
    cco_platform::telemetry::init_for_tests();
    let pki = pki();
    let server = ServerTls {
        cert_path: pki.path("server.pem"),
        key_path: pki.path("server.key"),
        client_ca_path: pki.path("ca.pem"),
    };
    let client = ClientTls {
        ca_path: pki.path("ca.pem"),
        domain: "localhost".into(),
        cert_path: pki.path("client.pem"),
        key_path: pki.path("client.key"),
    };
    let gw_db = TestDb::new(Backend::Sqlite).await;
    let al_db = TestDb::new(Backend::Sqlite).await;
    let gl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let al = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (g, h, a) = (
        gl.local_addr().unwrap().port(),
        hl.local_addr().unwrap().port(),
        al.local_addr().unwrap().port(),
    );

    let mut gs = call_gateway_svc::settings::Settings::default();
    gs.database.url = gw_db.url.clone();
    gs.grpc.tls = server.clone();
    gs.http.tls = ServerTls {
        client_ca_path: String::new(),
        ..server.clone()
    };
    gs.allocator.url = format!("https://127.0.0.1:{a}");
    gs.allocator.tls = client.clone();
    let mut als = allocator_svc::settings::Settings::default();
    als.database.url = al_db.url.clone();
    als.grpc.tls = server.clone();
    als.policy.gateway_url = format!("https://127.0.0.1:{g}");
    als.policy.gateway_tls = client.clone();
    let stop = CancellationToken::new();
    let gw = tokio::spawn(
        call_gateway_svc::app::Application::build_with(gs, Some((gl, hl)))
            .await
            .unwrap()
            .run_until_stopped(stop.clone()),
    );
    let alloc = tokio::spawn(
        allocator_svc::app::Application::build_with(als, Some((al, None)))
            .await
            .unwrap()
            .run_until_stopped(stop.clone()),
    );

    let ca_pem = std::fs::read(pki.path("ca.pem")).unwrap();
    let sim = Simulator::start(SimConfig {
        extensions: vec![("8001".into(), true)],
        callback_url: Some(format!(
            "https://localhost:{h}/api/v1/infinity/callback/t1/tls-test-callback-secret"
        )),
        callback_ca_pem: Some(ca_pem.clone()),
        ..SimConfig::default()
    })
    .await
    .unwrap();

    let tls = |identity: Option<(&str, &str)>, ca: &str| {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(pki.path(ca)).unwrap()))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            c = c.identity(Identity::from_pem(
                std::fs::read(pki.path(cert)).unwrap(),
                std::fs::read(pki.path(key)).unwrap(),
            ));
        }
        c
    };
    let channel = |port: u16, cfg: Option<ClientTlsConfig>| {
        let scheme = if cfg.is_some() { "https" } else { "http" };
        let mut e = Endpoint::from_shared(format!("{scheme}://127.0.0.1:{port}"))
            .unwrap()
            .timeout(Duration::from_secs(10));
        if let Some(cfg) = cfg {
            e = e.tls_config(cfg).unwrap();
        }
        e.connect_lazy()
    };
    let good = |port: u16| {
        channel(
            port,
            Some(tls(Some(("client.pem", "client.key")), "ca.pem")),
        )
    };
    let admin = BearerInterceptor::new("dev-admin-key");

    let mut configs =
        pb::tenant_configs_client::TenantConfigsClient::with_interceptor(good(g), admin.clone());
    configs
        .create_config(pb::CreateConfigRequest {
            config: Some(pb::ConfigInput {
                tenant_id: "t1".into(),
                api_url: sim.api_url(),
                credentials: Some(pb::Credentials {
                    kind: Some(pb::credentials::Kind::AccessToken(
                        "0123456789abcdef0123456789abcdef".into(),
                    )),
                }),
                caller_number_pool: vec!["02566823420".into()],
                callback_secret: "tls-test-callback-secret".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    pb::collectors_client::CollectorsClient::with_interceptor(good(g), admin.clone())
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: "c".into(),
            callback_number: "13800138000".into(),
            display_name: String::new(),
            active: None,
        })
        .await
        .unwrap();
    apb::extension_pool_client::ExtensionPoolClient::with_interceptor(good(a), admin.clone())
        .batch_import(apb::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: String::new(),
            numbers: vec!["8001".into()],
        })
        .await
        .unwrap();
    // A whole call: gateway -> allocator (mTLS), allocator -> gateway policy (mTLS), Infinity's
    // callback over https.
    let mut calls = pb::calls_client::CallsClient::with_interceptor(
        good(g),
        BearerInterceptor::new("dev-caller-key"),
    );
    let call = calls
        .make_call(pb::MakeCallRequest {
            tenant_id: "t1".into(),
            collector_id: "c".into(),
            case_id: "k".into(),
            destination_number: "13900139000".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = calls
            .get_call(pb::GetCallRequest {
                tenant_id: "t1".into(),
                call_id: call.call_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if r.status == pb::CallStatus::Completed as i32 && r.lease_released {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never completed over TLS: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Refused: plaintext, TLS without a client certificate, a certificate from another CA.
    for (what, ch) in [
        ("plaintext", channel(g, None)),
        (
            "no client certificate",
            channel(g, Some(tls(None, "ca.pem"))),
        ),
        (
            "certificate of another CA",
            channel(
                g,
                Some(tls(
                    Some(("rogue-client.pem", "rogue-client.key")),
                    "ca.pem",
                )),
            ),
        ),
        ("plaintext to the allocator", channel(a, None)),
        (
            "no client certificate to the allocator",
            channel(a, Some(tls(None, "ca.pem"))),
        ),
    ] {
        let e = pb::tenant_configs_client::TenantConfigsClient::with_interceptor(ch, admin.clone())
            .get_config(pb::GetConfigRequest {
                tenant_id: "t1".into(),
            })
            .await
            .expect_err(what);
        assert!(
            matches!(
                e.code(),
                // TLS 1.3 rejects a missing client certificate after the client's side of the
                // handshake, so the refusal can surface as a closed connection (Cancelled).
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
            "{what}: {e:?}"
        );
    }
    // The callback port speaks https only.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plain = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{h}/api/v1/infinity/callback/call-record"
        ))
        .body("{}")
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain http to the callback port"
    );
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).unwrap()])
        .build()
        .unwrap()
        .get(format!("https://localhost:{h}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(https.text().await.unwrap(), "ok");
    sim.stop().await;
    stop.cancel();
    gw.await.unwrap().unwrap();
    alloc.await.unwrap().unwrap();
}
