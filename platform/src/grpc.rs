//! Serving gRPC, written once for both services: [`GrpcServer`] puts every service of a port
//! behind the same stack (per-RPC span, request hygiene, API keys and roles), registers each in
//! `grpc.health.v1` and flips all of them to NOT_SERVING on shutdown, advertises exactly the
//! port's services through reflection (`v1` and `v1alpha`), and enforces the listener's limits
//! (connection cap, idle timeout, request timeout, HTTP/2 keep-alive; see [`crate::listen`]).
//!
//! Every RPC passes [`RpcLayer`]: it is counted as in progress on its connection (for the idle
//! timeout), timed and counted by method and code ([`RpcMetrics`], when the server has them),
//! and its status is cleaned. Request hygiene: a request that tonic cannot read (bytes that are not the
//! message, a string that is not UTF-8, a truncated frame, a missing message) is the client's
//! fault, so its `INTERNAL` becomes `INVALID_ARGUMENT`; the services' own internal errors always
//! say exactly [`INTERNAL_MESSAGE`] and stay `INTERNAL`. Every status message leaving the port is
//! capped at [`MAX_STATUS_MESSAGE`] bytes, whatever produced it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::{Code, Status};
pub use tonic_health::ServingStatus;
pub use tonic_health::server::HealthReporter;

use std::sync::Arc;

use crate::auth::AuthLayer;
use crate::listen::{GrpcListener, GuardedBody};
use crate::metrics::RpcMetrics;

/// The message of every `INTERNAL` status the services send themselves (the cause is logged).
pub const INTERNAL_MESSAGE: &str = "internal error";

/// The longest status message sent to a client, in bytes.
pub const MAX_STATUS_MESSAGE: usize = 512;

/// `message` cut to at most [`MAX_STATUS_MESSAGE`] bytes on a character boundary.
pub fn cap_message(message: &str) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message.to_owned();
    }
    let mut end = MAX_STATUS_MESSAGE - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// A status with its message capped (see [`cap_message`]).
pub fn status(code: Code, message: &str) -> Status {
    Status::new(code, cap_message(message))
}

/// The services of one gRPC port.
#[derive(Debug, Default)]
pub struct GrpcServer {
    routes: tonic::service::Routes,
    names: Vec<&'static str>,
    metrics: Option<RpcMetrics>,
}

impl GrpcServer {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service; it is reported SERVING while the server runs and listed by reflection.
    #[must_use]
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(svc);
        self
    }

    /// Counts and times every RPC in `metrics` (see [`RpcMetrics`]).
    #[must_use]
    pub fn with_metrics(mut self, metrics: RpcMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The names of the services added so far.
    pub fn service_names(&self) -> &[&'static str] {
        &self.names
    }

    /// Serves on `listener` until `shutdown` is cancelled; then every service reports
    /// NOT_SERVING, new connections are refused, and in-flight calls get up to `grace` to finish.
    ///
    /// # Errors
    /// A TLS file that cannot be read, or the server's own failure.
    pub async fn serve(
        self,
        listener: TcpListener,
        settings: &GrpcListener,
        auth: AuthLayer,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        for name in &self.names {
            reporter
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        let routes = self
            .routes
            .add_service(health)
            .add_service(reflection(&self.names).build_v1()?)
            .add_service(reflection(&self.names).build_v1alpha()?);
        let origins = settings.web.origins("grpc")?;
        // HTTP/1.1 too: browsers' gRPC-Web over plaintext cannot negotiate HTTP/2.
        let mut builder = tonic::transport::Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(settings.max_concurrent_streams)
            .http2_keepalive_interval(crate::listen::seconds(settings.keepalive_interval_seconds))
            .http2_keepalive_timeout(crate::listen::seconds(settings.keepalive_timeout_seconds));
        if let Some(tls) = settings.tls.tonic("grpc.tls")? {
            builder = builder.tls_config(tls)?;
        }
        let names = self.names.clone();
        let stop = shutdown.clone();
        let accounting = self.metrics.map(|m| Accounting {
            ops: Arc::new(crate::metrics::method_ops(&names)),
            metrics: m,
        });
        let server = builder
            .layer(cors(origins))
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(trace_layer())
            .layer(RpcLayer {
                metrics: accounting,
                limits: Limits {
                    in_flight: Arc::default(),
                    max_in_flight: usize::try_from(settings.max_in_flight).unwrap_or(usize::MAX),
                    timeout: crate::listen::seconds(settings.request_timeout_seconds),
                },
            })
            .layer(auth)
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                crate::listen::incoming(listener, settings.limits()),
                async move {
                    stop.cancelled().await;
                    for name in names.iter().copied().chain([""]) {
                        reporter
                            .set_service_status(name, ServingStatus::NotServing)
                            .await;
                    }
                },
            );
        serve_with_grace(server, shutdown, grace).await
    }
}

/// The headers a gRPC-Web client sends, allowed by preflight answers.
pub const WEB_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "traceparent",
];

/// The response headers and trailers a browser script may read.
pub const WEB_EXPOSED_HEADERS: &[&str] = &[
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-call-id",
];

/// CORS for gRPC-Web: the listed origins only (none when empty), POST, the headers our clients
/// send, and the gRPC status headers and our trailers exposed. No credentials mode: clients
/// authenticate with a bearer token, never a cookie.
fn cors(origins: Vec<http::HeaderValue>) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let names = |l: &[&'static str]| -> Vec<http::HeaderName> {
        l.iter().map(|h| http::HeaderName::from_static(h)).collect()
    };
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([http::Method::POST])
        .allow_headers(names(WEB_REQUEST_HEADERS))
        .expose_headers(names(WEB_EXPOSED_HEADERS))
        .max_age(Duration::from_secs(600))
}

/// Reflection over the workspace's contracts, listing `services` (and health and reflection).
fn reflection<'a>(services: &[&'static str]) -> tonic_reflection::server::Builder<'a> {
    let mut b = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cco_contracts::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection");
    for s in services {
        b = b.with_service_name(*s);
    }
    b
}

/// Rewrites the status of a response as described in the module docs.
fn clean_status(headers: &mut http::HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let (code, message) = match status.code() {
        Code::Internal if status.message() != INTERNAL_MESSAGE => (
            Code::InvalidArgument,
            format!("the request could not be read: {}", status.message()),
        ),
        // The framework says OUT_OF_RANGE for a request over the 4 MiB message limit (the
        // services' own OUT_OF_RANGE, an event id past the retention, stays).
        Code::OutOfRange if status.message().contains("too large") => (
            Code::ResourceExhausted,
            format!("the request is too large: {}", status.message()),
        ),
        code => (code, status.message().to_owned()),
    };
    let capped = cap_message(&message);
    if code == status.code() && capped == status.message() {
        return;
    }
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    let _ = Status::new(code, capped).add_header(headers);
}

/// The layer described in the module docs: the RPC counted as in progress on its connection
/// (for the idle timeout) until its response body has been sent, its metrics, and status
/// hygiene.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: Option<Accounting>,
    limits: Limits,
}

/// The port's limits on RPCs in progress.
#[derive(Debug, Clone)]
struct Limits {
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    max_in_flight: usize,
    timeout: Option<Duration>,
}

/// One RPC in progress on the port.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The metrics of a port and the op label of each of its methods.
#[derive(Debug, Clone)]
struct Accounting {
    metrics: RpcMetrics,
    ops: Arc<std::collections::HashMap<String, String>>,
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            metrics: self.metrics.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// The service of [`RpcLayer`].
#[derive(Debug, Clone)]
pub struct Rpc<S> {
    inner: S,
    metrics: Option<Accounting>,
    limits: Limits,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Rpc<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let port = InFlight(self.limits.in_flight.clone());
        if port.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= self.limits.max_in_flight {
            drop(port);
            let busy = Status::resource_exhausted(
                "server busy: too many requests in progress on this port; retry shortly",
            );
            return Box::pin(async move { Ok(busy.into_http()) });
        }
        let guard = (
            port,
            crate::listen::conn_state(req.extensions()).map(|s| s.begin()),
        );
        let timeout = self.limits.timeout;
        let timing = self.metrics.clone().map(|a| {
            let op = a
                .ops
                .get(req.uri().path())
                .cloned()
                .unwrap_or_else(|| "other".to_owned());
            (a.metrics, op, std::time::Instant::now())
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = match timeout {
                None => fut.await?.map(tonic::body::Body::new),
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r?.map(tonic::body::Body::new),
                    Err(_) => Status::deadline_exceeded(format!(
                        "the request did not finish within the server's {} s limit",
                        t.as_secs()
                    ))
                    .into_http(),
                },
            };
            clean_status(resp.headers_mut());
            if let Some((metrics, op, started)) = timing {
                // Errors of unary RPCs come in the headers; a success carries its status in the
                // trailers, so no status here means OK.
                let code = Status::from_header_map(resp.headers()).map_or(Code::Ok, |s| s.code());
                metrics.record(&op, code, started.elapsed().as_secs_f64());
            }
            Ok(resp.map(|b| tonic::body::Body::new(GuardedBody::new(b, guard))))
        })
    }
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
        let span = tracing::info_span!("rpc", path = %req.uri().path());
        crate::telemetry::adopt_parent(&span, req.headers());
        span
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
