//! The gateway's client of the allocator (lazy connection; the allocator may start later).

use std::time::Duration;

use cco_contracts::allocator::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use secrecy::ExposeSecret;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::settings::AllocatorSettings;

type Ch = InterceptedService<Channel, BearerInterceptor>;

/// gRPC clients of both allocator services over one channel.
#[derive(Clone, Debug)]
pub struct AllocatorClient {
    /// Acquire, Release, Renew, Stats.
    pub leases: pb::extension_allocator_client::ExtensionAllocatorClient<Ch>,
    /// ListExtensions, GetExtension, UpdateExtension.
    pub pool: pb::extension_pool_client::ExtensionPoolClient<Ch>,
}

impl AllocatorClient {
    /// Builds the clients; nothing connects until the first call.
    ///
    /// # Errors
    /// When the URL is malformed.
    pub fn new(s: &AllocatorSettings) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(s.url.clone())
            .map_err(|e| anyhow::anyhow!("allocator.url: {e}"))?
            .connect_timeout(Duration::from_millis(s.timeout_ms))
            .timeout(Duration::from_millis(s.timeout_ms))
            .tcp_nodelay(true);
        if let Some(tls) = s.tls.tonic("allocator.tls")? {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("allocator.tls: {e}"))?;
        }
        let channel = endpoint.connect_lazy();
        let auth = BearerInterceptor::new(s.api_key.expose_secret());
        Ok(Self {
            leases: pb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
                channel.clone(),
                auth.clone(),
            ),
            pool: pb::extension_pool_client::ExtensionPoolClient::with_interceptor(channel, auth),
        })
    }

    /// Every extension number in the tenant's pool, following pages.
    ///
    /// # Errors
    /// The allocator's status.
    pub async fn pool_numbers(&self, tenant_id: &str) -> Result<Vec<(String, i32)>, tonic::Status> {
        let mut client = self.pool.clone();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_extensions(pb::ListExtensionsRequest {
                    tenant_id: tenant_id.to_owned(),
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.extend(page.extensions.into_iter().map(|e| (e.number, e.status)));
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// Live leases of the tenant (extensions in use).
    ///
    /// # Errors
    /// The allocator's status.
    pub async fn in_use(&self, tenant_id: &str) -> Result<u32, tonic::Status> {
        let mut client = self.leases.clone();
        let s = client
            .stats(pb::StatsRequest {
                tenant_id: tenant_id.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(s.in_use)
    }
}
