//! Serving an axum router on an [`HttpListener`]: the connection cap and idle timeout of
//! [`crate::listen`], a deadline for the TLS handshake and the request headers, a deadline for
//! the whole request body, HTTP/1.1 and HTTP/2, and a graceful drain on shutdown.
//!
//! Handlers may read the peer with `ConnectInfo<SocketAddr>`. Bodies reach handlers already
//! read (at most [`MAX_BODY`] bytes; a route may set a lower `DefaultBodyLimit`): a client that
//! trickles its body gets `408` when the body deadline passes, so no handler ever waits on a
//! slow client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::listen::{GuardedBody, HttpListener, Tracked};

/// The largest request body any HTTP route reads.
pub const MAX_BODY: usize = 1024 * 1024;

/// How long open connections get to finish after shutdown before they are dropped.
pub const DRAIN: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
struct BodyDeadline(Duration);

/// Reads the whole body within the deadline before the handler runs.
async fn read_body_within(
    State(deadline): State<BodyDeadline>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(deadline.0, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            "request body not received within the body read timeout",
        )
            .into_response(),
        Ok(Err(_)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large or broken",
        )
            .into_response(),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets open requests finish
/// (up to [`DRAIN`]). `tls` serves https.
///
/// # Errors
/// Never after start; the signature leaves room for set-up failures.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: HttpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(
        BodyDeadline(Duration::from_secs(
            settings.body_read_timeout_seconds.max(1),
        )),
        read_body_within,
    ));
    let header_timeout = Duration::from_secs(settings.header_read_timeout_seconds.max(1));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let tasks = TaskTracker::new();
    let mut incoming = std::pin::pin!(crate::listen::incoming(listener, settings.limits()));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            next = incoming.next() => match next {
                Some(Ok(s)) => s,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        tasks.spawn(connection(
            stream,
            router.clone(),
            builder.clone(),
            acceptor.clone(),
            header_timeout,
            shutdown.clone(),
        ));
    }
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::warn!("HTTP connections still open after the drain period; dropping them");
    }
    Ok(())
}

async fn connection(
    stream: Tracked,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) {
    let peer = stream
        .remote_addr()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let state = stream.state().clone();
    let service = tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = state.begin();
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let resp = router.oneshot(req).await?;
            Ok::<_, Infallible>(resp.map(|b| Body::new(GuardedBody::new(b, guard))))
        }
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    match tls {
        None => drive(&builder, TokioIo::new(stream), service, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    drive(&builder, TokioIo::new(tls_stream), service, shutdown).await;
                }
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn drive<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    shutdown: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            return;
        }
        () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "HTTP connection ended with an error while draining");
    }
}
