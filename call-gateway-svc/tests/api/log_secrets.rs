//! Captures every log line of a full call flow (config with app credentials, TestConnection, a
//! collector, a call, its callback, a refused call, a forged callback) at trace level for the
//! services' own code, and proves no token, access key, callback secret or unmasked phone
//! number reaches a log.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use cco_contracts::gateway::v1 as pb;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

const ACCESS_KEY: &str = "sim-access-key";
const CALLBACK_SECRET: &str = "log-test-callback-secret-77";

/// Runs the flow on a runtime of its own whose threads all log into `capture`, so the other
/// tests of this binary (running in parallel) neither add to nor depend on the capture.
#[test]
fn no_secret_or_phone_number_in_logs() {
    let capture = Capture::default();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new(
                "info,allocator_svc=trace,call_gateway_svc=trace,cco_platform=trace,infinity_sim=trace",
            ))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(capture.clone()),
            ),
    );
    let for_threads = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .on_thread_start(move || {
            // The default stays for the thread's life: the guard is never dropped.
            std::mem::forget(tracing::dispatcher::set_default(&for_threads));
        })
        .enable_all()
        .build()
        .unwrap();
    let _main = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(flow(capture));
}

async fn flow(capture: Capture) {
    let sim = sim().await;
    let stack = Stack::pair(Backend::Sqlite).await;
    let mut configs = stack.configs(ADMIN).await;
    let mut input = valid_input("t1", &sim.api_url());
    input.credentials = Some(app_credentials());
    input.callback_secret = CALLBACK_SECRET.into();
    create(&mut configs, input).await;
    configs
        .test_connection(pb::TestConnectionRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap();
    stack
        .collectors(ADMIN)
        .await
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
            callback_number: "13800138001".into(),
            display_name: "A".into(),
            active: None,
        })
        .await
        .unwrap();
    stack
        .pool(ADMIN)
        .await
        .batch_import(cco_contracts::allocator::v1::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: String::new(),
            numbers: vec!["8001".into(), "8002".into()],
        })
        .await
        .unwrap();
    sim.state().set_callback_url(Some(format!(
        "http://{}/api/v1/infinity/callback/t1/{CALLBACK_SECRET}",
        stack.gateway_http
    )));
    sim.state().set_script(
        Some("13900139002"),
        infinity_sim::Script {
            outcome: infinity_sim::Outcome::Refused,
            ..Default::default()
        },
    );
    let mut calls = pb::calls_client::CallsClient::with_interceptor(
        stack.gateway.channel().await,
        cco_platform::auth::BearerInterceptor::new(CALLER),
    );
    let ok = calls
        .make_call(pb::MakeCallRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
            case_id: "c1".into(),
            destination_number: "13900139001".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    calls
        .make_call(pb::MakeCallRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
            case_id: "c2".into(),
            destination_number: "13900139002".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = calls
            .get_call(pb::GetCallRequest {
                tenant_id: "t1".into(),
                call_id: ok.call_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if r.lease_released && r.status == pb::CallStatus::Completed as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "call never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let forged = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/infinity/callback/t1/wrong-secret-123456789",
            stack.gateway_http
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    let tokens: Vec<String> = sim
        .state()
        .requests(None)
        .into_iter()
        .filter_map(|r| r.params.get("token").cloned())
        .collect();
    assert!(!tokens.is_empty(), "the flow used Infinity tokens");
    stack.shutdown().await;
    sim.stop().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("call completed") && logs.contains("dialing"),
        "the flow was logged: {} bytes",
        logs.len()
    );
    let masked = cco_platform::mask::phone("+8613900139001");
    assert!(
        logs.contains(&masked),
        "the destination is logged, masked ({masked})"
    );
    let mut forbidden: Vec<String> = vec![
        ACCESS_KEY.into(),
        CALLBACK_SECRET.into(),
        "dev-caller-key".into(),
        "dev-admin-key".into(),
    ];
    forbidden.extend(tokens);
    for number in ["13800138001", "13900139001", "13900139002"] {
        forbidden.push(number.into());
        forbidden.push(format!("+86{number}"));
    }
    for f in &forbidden {
        assert!(!logs.contains(f.as_str()), "{f:?} appears in the logs");
    }
}
