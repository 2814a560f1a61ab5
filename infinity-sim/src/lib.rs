//! A simulator of the Infinity (Yunhu) call-centre HTTP API, as documented in
//! `shared/infinity-api-notes.md`: one POST endpoint, `service=App.X.Y` form fields, the
//! `{ret, data: {status, desc, errors, result, reqtime, rsptime}, msg}` envelope, and after a
//! dial the vendor's call-record callback JSON posted to a configured URL.
//!
//! Behaviour per destination number is scripted ([`Script`]): answered after N s with M talk
//! seconds, no answer, busy, rejected, refused with a business code, extension not registered
//! (1014), token expired (600), slow (beyond the client's timeout; the call still happens),
//! HTTP 500, garbage body; and the callback lost, duplicated, delayed or sent with camelCase
//! keys. Every request is logged so tests can assert "exactly one dial for this call".
//!
//! Use it as a library ([`Simulator::start`], port 0 works) or as the `infinity-sim` binary;
//! `/control/*` endpoints script it over HTTP.

mod api;
mod control;
mod record;
mod state;

pub use record::{CallbackMode, Outcome, Recording, Script};
pub use state::{LoggedRequest, SimConfig, SimState};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// A running simulator.
#[derive(Debug)]
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<SimState>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Binds `config.host:config.port` (port 0 picks one) and starts serving.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(config: SimConfig) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(config, addr)?);
        let app = axum::Router::new()
            .merge(control::routes())
            .fallback(api::handle)
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { s2.cancelled().await })
            .await;
        });
        Ok(Self {
            addr,
            state,
            stop,
            handle,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API URL to configure in a tenant config.
    pub fn api_url(&self) -> String {
        format!("http://{}/openapi/V2.0.6/", self.addr)
    }

    /// The shared state, for scripting and assertions in tests.
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}
