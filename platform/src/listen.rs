//! Listeners that defend themselves, for every port of both services.
//!
//! - A cap on open connections per listener: a connection over the cap is accepted and closed
//!   at once (the client sees the connection end rather than hanging in the kernel backlog).
//! - An idle timeout: a connection with no request in progress for that long is closed. "In
//!   progress" means from the moment a request's headers reached the service until its response
//!   body was sent, so HTTP/2 pings and a slow TLS handshake or header do not count as activity;
//!   a silent connection, one that never finishes its headers, or a keep-alive connection
//!   nobody uses is closed after the timeout, while a long call or stream never is.
//! - The HTTP-specific limits (header and body read timeouts) live in [`crate::http`], the
//!   gRPC ones (request timeout, HTTP/2 keep-alive) in [`crate::grpc`]; the settings of both
//!   kinds of port are here.
//!
//! How it works: each accepted stream is wrapped in [`Tracked`], which holds the connection's
//! slot (a semaphore permit) and shares a [`ConnState`] with the request layer: the layer counts
//! requests in progress ([`ConnState::begin`]); the stream, whenever a read or write would wait,
//! checks the idle deadline and fails the I/O with `TimedOut` once it has passed, which ends the
//! connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::tls::ServerTls;

/// A gRPC port: where it listens, its TLS, and the limits that protect it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcListener {
    /// Interface to bind.
    pub host: String,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// TLS (and mutual TLS) for the port; plaintext when not set.
    pub tls: ServerTls,
    /// Most connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: u32,
    /// Most RPCs in progress on one connection (HTTP/2 streams); more are refused by HTTP/2.
    pub max_concurrent_streams: u32,
    /// Most RPCs in progress on the port; one more is answered `RESOURCE_EXHAUSTED` at once.
    pub max_in_flight: u32,
    /// A connection with no RPC in progress for this long is closed; 0 never closes one.
    pub idle_timeout_seconds: u64,
    /// Deadline of one RPC, from its headers to the handler's answer (reading the request
    /// included; a client's shorter `grpc-timeout` wins); 0 for none.
    pub request_timeout_seconds: u64,
    /// HTTP/2 pings to a connection this often, to find dead peers; 0 sends none.
    pub keepalive_interval_seconds: u64,
    /// A ping not answered within this long closes the connection.
    pub keepalive_timeout_seconds: u64,
    /// gRPC-Web for browsers (`*__GRPC__WEB__*`).
    pub web: GrpcWeb,
}

/// gRPC-Web (binary and text, over HTTP/1.1 or HTTP/2) is always served beside native gRPC;
/// this lists the web origins a browser may call it from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcWeb {
    /// Comma-separated origins (`https://console.example.com,http://localhost:5173`) allowed
    /// to call the port from a browser; empty (the default) allows no cross-origin call.
    /// `*` is refused: origins are always listed.
    pub allowed_origins: String,
}

impl GrpcWeb {
    /// The allowed origins, checked.
    ///
    /// # Errors
    /// Names `{prefix}.web.allowed_origins` and the entry that is not an origin.
    pub fn origins(&self, prefix: &str) -> anyhow::Result<Vec<http::HeaderValue>> {
        let mut out = Vec::new();
        for raw in self.allowed_origins.split(',') {
            let o = raw.trim();
            if o.is_empty() {
                continue;
            }
            let field = format!("{prefix}.web.allowed_origins");
            if o == "*" {
                anyhow::bail!("{field}: `*` is not allowed; list each origin");
            }
            http::Uri::try_from(o)
                .ok()
                .filter(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some_and(|a| !a.as_str().contains('@'))
                        && u.path_and_query()
                            .is_none_or(|p| p.as_str() == "/" && !o.ends_with('/'))
                })
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{field}: {o:?} is not an origin (scheme://host[:port], no path)"
                    )
                })?;
            out.push(
                http::HeaderValue::from_str(o)
                    .map_err(|_| anyhow::anyhow!("{field}: {o:?} is not an origin"))?,
            );
        }
        Ok(out)
    }
}

impl GrpcListener {
    /// The defaults on `port`.
    pub fn on_port(port: u16) -> Self {
        Self {
            host: "0.0.0.0".into(),
            port,
            tls: ServerTls::default(),
            max_connections: 1_024,
            max_concurrent_streams: 100,
            max_in_flight: 4_096,
            idle_timeout_seconds: 300,
            request_timeout_seconds: 120,
            keepalive_interval_seconds: 60,
            keepalive_timeout_seconds: 20,
            web: GrpcWeb::default(),
        }
    }

    /// The connection limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            idle_timeout: seconds(self.idle_timeout_seconds),
        }
    }

    /// Checks the settings; errors name the setting under `prefix`.
    ///
    /// # Errors
    /// A value out of range.
    pub fn validate(&self, prefix: &str) -> anyhow::Result<()> {
        self.tls.validate(&format!("{prefix}.tls"))?;
        self.web.origins(prefix)?;
        check_max_connections(prefix, self.max_connections)?;
        for (name, v) in [
            ("max_concurrent_streams", self.max_concurrent_streams),
            ("max_in_flight", self.max_in_flight),
        ] {
            crate::config::check_range(&format!("{prefix}.{name}"), u64::from(v), 1, 1_000_000)?;
        }
        for (name, v) in [
            ("idle_timeout_seconds", self.idle_timeout_seconds),
            ("request_timeout_seconds", self.request_timeout_seconds),
            (
                "keepalive_interval_seconds",
                self.keepalive_interval_seconds,
            ),
            ("keepalive_timeout_seconds", self.keepalive_timeout_seconds),
        ] {
            crate::config::check_range(&format!("{prefix}.{name}"), v, 0, MAX_TIMEOUT_SECONDS)?;
        }
        if self.keepalive_interval_seconds > 0 && self.keepalive_timeout_seconds == 0 {
            anyhow::bail!(
                "{prefix}.keepalive_timeout_seconds: must be at least 1 when keep-alive pings are on"
            );
        }
        Ok(())
    }
}

impl Default for GrpcListener {
    fn default() -> Self {
        Self::on_port(0)
    }
}

/// An HTTP port (the gateway's callback port, the allocator's metrics port).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpListener {
    /// Serve the port at all (the allocator's metrics port may be turned off; the gateway's
    /// callback port cannot).
    pub enabled: bool,
    /// Interface to bind.
    pub host: String,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// TLS (https) for the port; plaintext when not set.
    pub tls: ServerTls,
    /// Most connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: u32,
    /// A connection with no request in progress for this long is closed; 0 never closes one.
    pub idle_timeout_seconds: u64,
    /// A request's headers (and, over https, the TLS handshake) must arrive within this long.
    pub header_read_timeout_seconds: u64,
    /// A request's whole body must arrive within this long of its headers (else 408).
    pub body_read_timeout_seconds: u64,
}

impl HttpListener {
    /// The defaults on `port`.
    pub fn on_port(port: u16) -> Self {
        Self {
            enabled: true,
            host: "0.0.0.0".into(),
            port,
            tls: ServerTls::default(),
            max_connections: 1_024,
            idle_timeout_seconds: 60,
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 30,
        }
    }

    /// The connection limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            idle_timeout: seconds(self.idle_timeout_seconds),
        }
    }

    /// Checks the settings; errors name the setting under `prefix`.
    ///
    /// # Errors
    /// A value out of range.
    pub fn validate(&self, prefix: &str) -> anyhow::Result<()> {
        self.tls.validate(&format!("{prefix}.tls"))?;
        check_max_connections(prefix, self.max_connections)?;
        crate::config::check_range(
            &format!("{prefix}.idle_timeout_seconds"),
            self.idle_timeout_seconds,
            0,
            MAX_TIMEOUT_SECONDS,
        )?;
        for (name, v) in [
            (
                "header_read_timeout_seconds",
                self.header_read_timeout_seconds,
            ),
            ("body_read_timeout_seconds", self.body_read_timeout_seconds),
        ] {
            crate::config::check_range(&format!("{prefix}.{name}"), v, 1, 3_600)?;
        }
        Ok(())
    }
}

impl Default for HttpListener {
    fn default() -> Self {
        Self::on_port(0)
    }
}

/// The longest timeout a listener setting may name: one day.
pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;

fn check_max_connections(prefix: &str, v: u32) -> anyhow::Result<()> {
    if !(1..=1_000_000).contains(&v) {
        anyhow::bail!("{prefix}.max_connections: must be 1-1000000, got {v}");
    }
    Ok(())
}

/// `Some(duration)` for a positive number of seconds, `None` for 0.
pub fn seconds(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

/// What a listener enforces on its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: u32,
    /// Close a connection with no request in progress for this long.
    pub idle_timeout: Option<Duration>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One connection's requests in progress and when the last one ended, shared by the stream
/// (which enforces the idle timeout) and the request layer (which counts).
#[derive(Debug)]
pub struct ConnState {
    in_flight: AtomicU32,
    /// Milliseconds since [`epoch`] at which the connection last became idle.
    idle_since_ms: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(now_ms()),
        }
    }

    /// Marks a request in progress until the guard drops.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }
}

/// A request in progress on its connection (see [`ConnState::begin`]).
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // The idle clock restarts when the last request ends.
        self.0.idle_since_ms.store(now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a [`Tracked`] stream tells the server about itself (tonic puts it into every request's
/// extensions, wrapped in `TlsConnectInfo` over TLS).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer.
    pub remote_addr: Option<SocketAddr>,
    /// The connection's request count.
    pub state: Arc<ConnState>,
}

/// An accepted TCP stream holding its connection slot and enforcing the idle timeout.
#[derive(Debug)]
pub struct Tracked {
    inner: TcpStream,
    state: Arc<ConnState>,
    idle: Option<Duration>,
    timer: Pin<Box<Sleep>>,
    remote_addr: Option<SocketAddr>,
    _slot: OwnedSemaphorePermit,
}

impl Tracked {
    /// The shared request count of this connection.
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    /// The peer address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// Ready with an error once the connection has been idle for the timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(idle) = self.idle else {
            return Poll::Pending;
        };
        loop {
            let now = Instant::now();
            let deadline = if self.state.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again one timeout from now.
                now.checked_add(idle).unwrap_or(now)
            } else {
                let since = self.state.idle_since_ms.load(Ordering::Acquire);
                let at = epoch()
                    .checked_add(Duration::from_millis(since))
                    .and_then(|t| t.checked_add(idle))
                    .unwrap_or(now);
                if now >= at {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle for longer than the idle timeout",
                    ));
                }
                at
            };
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => this.poll_idle(cx).map(Err),
            ready => ready,
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            // A peer that stops reading our answers is idle too.
            Poll::Pending => this.poll_idle(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_idle(cx).map(Err),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Tracked {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            remote_addr: self.remote_addr,
            state: self.state.clone(),
        }
    }
}

/// The connection state tonic put into a request's extensions (plaintext or TLS).
pub fn conn_state(ext: &http::Extensions) -> Option<&Arc<ConnState>> {
    ext.get::<ConnInfo>()
        .or_else(|| {
            ext.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
                .map(|t| t.get_ref())
        })
        .map(|c| &c.state)
}

/// Accepts connections from `listener` under `limits`: TCP_NODELAY on, at most
/// `max_connections` open, each wrapped in [`Tracked`].
pub fn incoming(listener: TcpListener, limits: Limits) -> impl Stream<Item = io::Result<Tracked>> {
    let slots = Arc::new(Semaphore::new(
        usize::try_from(limits.max_connections).unwrap_or(usize::MAX),
    ));
    futures::stream::unfold(
        (listener, slots, limits),
        |(listener, slots, limits)| async move {
            loop {
                let (stream, addr) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return Some((Err(e), (listener, slots, limits)));
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(peer = %addr, max = limits.max_connections, "connection refused: listener at its connection cap");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let tracked = Tracked {
                    inner: stream,
                    state: Arc::new(ConnState::new()),
                    idle: limits.idle_timeout,
                    timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
                    remote_addr: Some(addr),
                    _slot: slot,
                };
                return Some((Ok(tracked), (listener, slots, limits)));
            }
        },
    )
}

pin_project_lite::pin_project! {
    /// A response body that keeps a guard (its request counted as in progress) until it is
    /// sent.
    pub struct GuardedBody<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> GuardedBody<B, G> {
    /// Wraps `inner`; `guard` drops when the body has been sent (or dropped).
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B, G> http_body::Body for GuardedBody<B, G>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // Sent: the request is no longer in progress.
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
