//! The Prometheus registry and the `/metrics` HTTP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

async fn render(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `GET /metrics` (Prometheus text) and `GET /healthz`, to be merged with a service's own
/// routes and served by [`crate::http::serve`].
pub fn routes(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(registry)
}

/// The address a listener is bound to, or an error naming the problem.
pub fn local_addr(listener: &tokio::net::TcpListener) -> anyhow::Result<SocketAddr> {
    Ok(listener.local_addr()?)
}

/// Labels of an RPC outcome: bounded (the method, from the port's own services, and the gRPC
/// code; never an id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The RPC in snake case, e.g. `acquire`; `other` for health, reflection and unknown paths.
    pub op: String,
    /// The gRPC code name, e.g. `ok` or `resource_exhausted`.
    pub code: &'static str,
}

/// The label of an RPC's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// The RPC in snake case.
    pub op: String,
}

/// Every RPC of a gRPC port, counted by method and code, and timed by method, in the server
/// build for both services: `<prefix>_rpc_outcomes_total{op,code}` and
/// `<prefix>_rpc_duration_seconds{op}` (until the response headers: the whole call for unary
/// RPCs).
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    duration: Family<OpLabel, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    ])
}

impl RpcMetrics {
    /// Creates the metrics and registers them under `prefix` (e.g. `allocator`).
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let m = Self {
            outcomes: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        };
        registry.register(
            format!("{prefix}_rpc_outcomes"),
            "RPC outcomes by method and gRPC code",
            m.outcomes.clone(),
        );
        registry.register(
            format!("{prefix}_rpc_duration_seconds"),
            "RPC latency by method, until the response headers",
            m.duration.clone(),
        );
        m
    }

    /// Records one RPC.
    pub fn record(&self, op: &str, code: tonic::Code, seconds: f64) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                op: op.to_owned(),
                code: code_name(code),
            })
            .inc();
        self.duration
            .get_or_create(&OpLabel { op: op.to_owned() })
            .observe(seconds);
    }
}

/// `BatchDeleteExtensions` as `batch_delete_extensions`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The op label of every method of `services` (full names), keyed by gRPC path, from the
/// contracts' descriptor set.
pub fn method_ops(services: &[&str]) -> HashMap<String, String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(cco_contracts::FILE_DESCRIPTOR_SET) else {
        return HashMap::new();
    };
    let mut ops = HashMap::new();
    for file in &set.file {
        for svc in &file.service {
            let full = format!("{}.{}", file.package(), svc.name());
            if !services.contains(&full.as_str()) {
                continue;
            }
            for m in &svc.method {
                ops.insert(format!("/{full}/{}", m.name()), snake_case(m.name()));
            }
        }
    }
    ops
}

/// The snake_case name of a gRPC code, for metric labels.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "ok",
        C::Cancelled => "cancelled",
        C::Unknown => "unknown",
        C::InvalidArgument => "invalid_argument",
        C::DeadlineExceeded => "deadline_exceeded",
        C::NotFound => "not_found",
        C::AlreadyExists => "already_exists",
        C::PermissionDenied => "permission_denied",
        C::ResourceExhausted => "resource_exhausted",
        C::FailedPrecondition => "failed_precondition",
        C::Aborted => "aborted",
        C::OutOfRange => "out_of_range",
        C::Unimplemented => "unimplemented",
        C::Internal => "internal",
        C::Unavailable => "unavailable",
        C::DataLoss => "data_loss",
        C::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ops_are_snake_case_methods_of_the_named_services() {
        assert_eq!(super::snake_case("GetConfigById"), "get_config_by_id");
        let ops = super::method_ops(&["cco.infinity.allocator.v1.ExtensionAllocator"]);
        assert_eq!(
            ops.get("/cco.infinity.allocator.v1.ExtensionAllocator/Acquire")
                .map(String::as_str),
            Some("acquire")
        );
        assert!(!ops.contains_key("/cco.infinity.allocator.v1.ExtensionPool/BatchImport"));
    }
}
