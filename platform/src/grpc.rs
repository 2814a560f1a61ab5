//! Serving helpers: health, reflection, the per-RPC trace span, and the shutdown signal.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
pub use tonic_health::ServingStatus;
pub use tonic_health::server::HealthReporter;

/// Builds the `grpc.health.v1` service and its reporter; everything starts NOT_SERVING until
/// the caller marks its services serving.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// Builds the reflection service (v1) over every contract of the workspace.
///
/// # Errors
/// Fails only if the embedded descriptor set is corrupt (a build problem).
pub fn reflection() -> anyhow::Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cco_contracts::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?)
}

/// Builds the span of one RPC.
pub type MakeRpcSpan = fn(&http::Request<tonic::body::Body>) -> tracing::Span;

/// The trace layer returned by [`trace_layer`].
pub type RpcTraceLayer = tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::GrpcErrorsAsFailures>,
    MakeRpcSpan,
    tower_http::trace::DefaultOnRequest,
    tower_http::trace::DefaultOnResponse,
    tower_http::trace::DefaultOnBodyChunk,
    tower_http::trace::DefaultOnEos,
    tower_http::trace::DefaultOnFailure,
>;

/// A trace layer that opens one span per RPC, named after the gRPC path.
pub fn trace_layer() -> RpcTraceLayer {
    fn make_span(req: &http::Request<tonic::body::Body>) -> tracing::Span {
        tracing::info_span!("rpc", path = %req.uri().path())
    }
    // Non-OK gRPC codes are mostly the client's business (INVALID_ARGUMENT, NOT_FOUND, ...):
    // the services log their own internal errors, so the layer reports failures at debug.
    tower_http::trace::TraceLayer::new_for_grpc()
        .make_span_with(make_span as MakeRpcSpan)
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG))
}

/// Binds a TCP listener; port 0 picks a free port (see `local_addr`).
///
/// # Errors
/// Names the address that could not be bound.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = format!("{host}:{port}");
    tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {addr}: {e}"))
}

/// Turns a bound listener into tonic's incoming stream, with TCP_NODELAY for low latency.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Waits for Ctrl-C or SIGTERM, then cancels `token`.
pub async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
        () = token.cancelled() => {},
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

/// Formats a socket address as an `http://` endpoint for clients.
pub fn endpoint(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Runs `server` until it ends by itself after `shutdown` (in-flight calls done), or until
/// `grace` has passed since `shutdown` was cancelled, whichever is first.
///
/// # Errors
/// The server's own failure.
pub async fn serve_with_grace<F, E>(
    server: F,
    shutdown: CancellationToken,
    grace: std::time::Duration,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    tokio::select! {
        r = server => r.map_err(Into::into),
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("in-flight calls did not finish within the grace period");
            Ok(())
        }
    }
}
