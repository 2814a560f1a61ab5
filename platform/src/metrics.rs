//! The Prometheus registry and the `/metrics` HTTP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

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

/// Serves `GET /metrics` (and `GET /healthz`) on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, registry, Router::new(), None, shutdown).await
}

/// Like [`serve`], with the service's own routes merged in, over TLS when `tls` is given;
/// handlers may read the peer address with `ConnectInfo<SocketAddr>`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    routes: Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(registry)
        .merge(routes);
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            axum::serve(listener, service)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
        Some(cfg) => {
            let handle = axum_server::Handle::new();
            let h2 = handle.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                h2.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            axum_server::from_tcp_rustls(listener.into_std()?, cfg)?
                .handle(handle)
                .serve(service)
                .await
        }
    }
}

/// The address a listener is bound to, or an error naming the problem.
pub fn local_addr(listener: &tokio::net::TcpListener) -> anyhow::Result<SocketAddr> {
    Ok(listener.local_addr()?)
}

/// Labels of an RPC outcome: bounded (the RPC name and the gRPC code, never an id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The RPC, e.g. `acquire`.
    pub op: &'static str,
    /// The gRPC code name, e.g. `ok` or `resource_exhausted`.
    pub code: &'static str,
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
