//! One call is one trace: with `*__LOG__OTLP_ENDPOINT` set, the gateway and the allocator
//! (separate processes, as deployed) export their spans over OTLP/gRPC to a collector (played
//! here by a real OTLP TraceService server), and the Acquire that a MakeCall causes in the
//! allocator belongs to the MakeCall's trace, under a span of the gateway.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use cco_platform::testing::{Backend, TestDb};
use infinity_sim::{SimConfig, Simulator};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::common::{Svc, allocator_env, free_port, gateway_env, wait_ready};

/// A span as the collector received it, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| text(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The `rpc` span of `service` for the method whose path ends with `method`.
fn rpc<'a>(spans: &'a [Received], service: &str, method: &str) -> Option<&'a Span> {
    spans
        .iter()
        .filter(|r| r.service == service && r.span.name == "rpc")
        .map(|r| &r.span)
        .find(|s| text(&s.attributes, "path").is_some_and(|p| p.ends_with(method)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_is_one_trace_across_gateway_and_allocator() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let sim = Simulator::start(SimConfig {
        extensions: vec![("8001".into(), true)],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (alloc_db, gw_db) = (
        TestDb::new(Backend::Postgres).await,
        TestDb::new(Backend::Postgres).await,
    );
    let (ap, gp, gh) = (free_port(), free_port(), free_port());
    let mut a_env = allocator_env(&alloc_db.url, ap, gp);
    a_env.push(("ALLOCATOR__LOG__OTLP_ENDPOINT".into(), otlp.clone()));
    let mut g_env = gateway_env(&gw_db.url, gp, gh, ap);
    g_env.push(("GATEWAY__LOG__OTLP_ENDPOINT".into(), otlp.clone()));
    let allocator = Svc::spawn("allocator", ap, a_env);
    let gateway = Svc::spawn("gateway", gp, g_env);
    wait_ready(ap).await;
    wait_ready(gp).await;
    let channel = |port: u16| async move {
        crate::common::endpoint(port)
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap()
    };
    let secret = "trace-test-callback-secret";
    crate::common::tenant(
        channel(gp).await,
        channel(ap).await,
        crate::common::config(&sim, secret),
        1,
        &["8001".to_owned()],
    )
    .await;
    sim.state().set_callback_url(Some(format!(
        "http://127.0.0.1:{gh}/api/v1/infinity/callback/t1/{secret}"
    )));
    let call = pb::calls_client::CallsClient::with_interceptor(
        channel(gp).await,
        BearerInterceptor::new("dev-caller-key"),
    )
    .make_call(pb::MakeCallRequest {
        tenant_id: "t1".into(),
        collector_id: "c0".into(),
        case_id: "case-1".into(),
        destination_number: "13900139000".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert!(!call.call_id.is_empty());
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.state().callbacks_answered() < 1 {
        assert!(Instant::now() < deadline, "the callback never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A graceful stop exports whatever is still buffered.
    gateway.stop();
    allocator.stop();
    sim.stop().await;

    let spans = collector.spans.lock().unwrap().clone();
    let make_call = rpc(&spans, "call-gateway-svc", "/MakeCall")
        .unwrap_or_else(|| panic!("no MakeCall span from the gateway among {}", spans.len()));
    let acquire = rpc(&spans, "allocator-svc", "/Acquire")
        .unwrap_or_else(|| panic!("no Acquire span from the allocator among {}", spans.len()));
    assert_eq!(
        acquire.trace_id, make_call.trace_id,
        "the allocator's Acquire is in the MakeCall's trace"
    );
    let parent = spans
        .iter()
        .find(|r| r.span.span_id == acquire.parent_span_id)
        .expect("the Acquire's parent span was exported");
    assert_eq!(parent.service, "call-gateway-svc", "{parent:?}");
    assert_eq!(parent.span.trace_id, make_call.trace_id);
    // The gateway's own spans of the call (MakeCall's service span) are in the same trace.
    assert!(
        spans.iter().any(|r| r.service == "call-gateway-svc"
            && r.span.name == "make_call"
            && r.span.trace_id == make_call.trace_id),
        "make_call span in the MakeCall trace"
    );
    drop((alloc_db, gw_db));
}
