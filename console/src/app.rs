//! The console application: shared state, the gRPC clients (one channel per service, each call
//! carrying the signed-in person's own credential), the routes, and the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as gpb;
use cco_platform::auth::BearerInterceptor;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::pages;
use crate::session::{Sealer, Session};
use crate::settings::{Settings, Upstream};

/// A client channel that sends one person's credential.
pub type Ch = InterceptedService<Channel, BearerInterceptor>;

/// A demo person offered by the development sign-in (`cco stack` only).
#[derive(Clone)]
pub struct DevPerson {
    /// Who it is ("alice (collector)").
    pub label: String,
    /// Their token.
    pub token: String,
}

impl std::fmt::Debug for DevPerson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPerson")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// State shared by every request.
#[derive(Debug)]
pub struct State {
    /// The settings.
    pub settings: Settings,
    /// Seals session cookies.
    pub sealer: Sealer,
    gateway: Channel,
    gateway_streams: Channel,
    allocator: Channel,
    /// The development sign-in's people; empty in production (only `cco stack` sets them).
    pub dev_people: Vec<DevPerson>,
}

impl State {
    fn auth(s: &Session) -> BearerInterceptor {
        BearerInterceptor::new(&s.credential)
    }

    /// TenantConfigs, as `s`.
    pub fn configs(&self, s: &Session) -> gpb::tenant_configs_client::TenantConfigsClient<Ch> {
        gpb::tenant_configs_client::TenantConfigsClient::with_interceptor(
            self.gateway.clone(),
            Self::auth(s),
        )
    }

    /// Collectors, as `s`.
    pub fn collectors(&self, s: &Session) -> gpb::collectors_client::CollectorsClient<Ch> {
        gpb::collectors_client::CollectorsClient::with_interceptor(
            self.gateway.clone(),
            Self::auth(s),
        )
    }

    /// Calls, as `s`.
    pub fn calls(&self, s: &Session) -> gpb::calls_client::CallsClient<Ch> {
        gpb::calls_client::CallsClient::with_interceptor(self.gateway.clone(), Self::auth(s))
    }

    /// A Calls client without a request deadline (for WatchCalls streams), as `s`.
    pub fn watch(&self, s: &Session) -> gpb::calls_client::CallsClient<Ch> {
        gpb::calls_client::CallsClient::with_interceptor(
            self.gateway_streams.clone(),
            Self::auth(s),
        )
    }

    /// ExtensionPool, as `s`.
    pub fn pool(&self, s: &Session) -> apb::extension_pool_client::ExtensionPoolClient<Ch> {
        apb::extension_pool_client::ExtensionPoolClient::with_interceptor(
            self.allocator.clone(),
            Self::auth(s),
        )
    }

    /// ExtensionAllocator (Stats), as `s`.
    pub fn leases(
        &self,
        s: &Session,
    ) -> apb::extension_allocator_client::ExtensionAllocatorClient<Ch> {
        apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
            self.allocator.clone(),
            Self::auth(s),
        )
    }

    /// Whether both services answer their health check.
    pub async fn ready(&self) -> bool {
        let check = |ch: Channel| async move {
            let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
            let r = c
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            r.is_ok_and(|r| {
                r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            })
        };
        let (g, a) = tokio::join!(check(self.gateway.clone()), check(self.allocator.clone()));
        g && a
    }
}

/// A lazily connecting channel; `timeout` is the deadline of each call (none for streams).
fn channel(name: &str, up: &Upstream, timeout: Option<Duration>) -> anyhow::Result<Channel> {
    let mut ep = Endpoint::from_shared(up.url.clone())
        .map_err(|e| anyhow::anyhow!("{name}.url: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(tls) = up.tls.tonic(&format!("{name}.tls"))? {
        ep = ep.tls_config(tls)?;
    }
    if let Some(t) = timeout {
        ep = ep.timeout(t);
    }
    Ok(ep.connect_lazy())
}

/// The console, bound and ready to run.
#[derive(Debug)]
pub struct Console {
    listener: TcpListener,
    router: Router,
}

impl Console {
    /// Builds the console on `settings.http`, or on `listener` when given (tests, `cco stack`).
    ///
    /// # Errors
    /// Bad settings, or the port cannot be bound.
    pub async fn build(
        settings: Settings,
        listener: Option<TcpListener>,
        dev_people: Vec<DevPerson>,
    ) -> anyhow::Result<Self> {
        settings.validate()?;
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        let gateway = channel("gateway", &settings.gateway, Some(timeout))?;
        let gateway_streams = channel("gateway", &settings.gateway, None)?;
        let allocator = channel("allocator", &settings.allocator, Some(timeout))?;
        let listener = match listener {
            Some(l) => l,
            None => cco_platform::grpc::bind(&settings.http.host, settings.http.port).await?,
        };
        let state = Arc::new(State {
            sealer: Sealer::new(settings.session.secret.expose_secret()),
            settings,
            gateway,
            gateway_streams,
            allocator,
            dev_people,
        });
        Ok(Self {
            listener,
            router: routes(state),
        })
    }

    /// Where it listens.
    ///
    /// # Errors
    /// When the socket has no address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is cancelled; open live streams end with it.
    ///
    /// # Errors
    /// When serving fails.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "console listening");
        let router = self.router.layer(axum::Extension(stop.clone()));
        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
        Ok(())
    }
}

fn routes(state: Arc<State>) -> Router {
    use pages::{calls, collectors, config, live, overview, pool, signin, workbench};
    Router::new()
        .route("/", get(signin::home))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(signin::ready))
        .route("/assets/console.js", get(crate::views::script))
        .route("/assets/console.css", get(crate::views::style))
        .route("/lang/{tag}", get(signin::language))
        .route("/sign-in", get(signin::page).post(signin::with_token))
        .route("/sign-in/key", post(signin::with_key))
        .route("/sign-in/dev", post(signin::dev))
        .route("/sign-in/handoff", get(signin::handoff))
        .route("/sign-out", post(signin::sign_out))
        .route("/tenant", post(signin::switch_tenant))
        .route("/config", get(config::page).post(config::save))
        .route("/config/toggle", post(config::toggle))
        .route("/config/test", post(config::test))
        .route("/pool", get(pool::page))
        .route("/pool/stats", get(pool::stats_fragment))
        .route("/pool/import", post(pool::import))
        .route("/pool/action", post(pool::action))
        .route("/pool/delete", post(pool::delete_confirm))
        .route("/pool/delete/confirm", post(pool::delete))
        .route("/pool/force-release", post(pool::force_release))
        .route("/pool/usage", get(pool::usage))
        .route("/collectors", get(collectors::page).post(collectors::save))
        .route("/collectors/edit/{id}", get(collectors::edit))
        .route("/collectors/delete", post(collectors::delete))
        .route("/workbench", get(workbench::page).post(workbench::call))
        .route("/workbench/case", post(workbench::case))
        .route("/calls", get(calls::page))
        .route("/calls/{id}", get(calls::detail))
        .route("/calls/{id}/panel", get(calls::panel_fragment))
        .route("/calls/{id}/row", get(calls::row_fragment))
        .route("/calls/{id}/recording", get(calls::recording))
        .route("/calls/{id}/hangup", post(calls::hang_up))
        .route("/overview", get(overview::page))
        .route("/overview/panel", get(overview::panel))
        .route("/live/calls", get(live::calls))
        .route("/live/call/{id}", get(live::call))
        .layer(axum::middleware::from_fn(crate::web::security_headers))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
