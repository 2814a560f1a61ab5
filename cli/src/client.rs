//! gRPC clients of both services, with the API key on every call.

use std::time::Duration;

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as gpb;
use cco_platform::auth::BearerInterceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

type Ch = InterceptedService<Channel, BearerInterceptor>;

/// Where to connect and with which key.
#[derive(Debug, Clone)]
pub struct Target {
    /// The allocator's endpoint.
    pub allocator: String,
    /// The gateway's endpoint.
    pub gateway: String,
    /// The API key.
    pub api_key: String,
    /// Deadline of one call.
    pub timeout: Duration,
}

fn channel(url: &str, timeout: Duration) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| anyhow::anyhow!("bad endpoint {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .connect_lazy())
}

impl Target {
    fn auth(&self) -> BearerInterceptor {
        BearerInterceptor::new(&self.api_key)
    }

    /// ExtensionAllocator.
    pub fn leases(
        &self,
    ) -> anyhow::Result<apb::extension_allocator_client::ExtensionAllocatorClient<Ch>> {
        Ok(
            apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
                channel(&self.allocator, self.timeout)?,
                self.auth(),
            ),
        )
    }

    /// ExtensionPool.
    pub fn pool(&self) -> anyhow::Result<apb::extension_pool_client::ExtensionPoolClient<Ch>> {
        Ok(
            apb::extension_pool_client::ExtensionPoolClient::with_interceptor(
                channel(&self.allocator, self.timeout)?,
                self.auth(),
            ),
        )
    }

    /// TenantConfigs.
    pub fn configs(&self) -> anyhow::Result<gpb::tenant_configs_client::TenantConfigsClient<Ch>> {
        Ok(
            gpb::tenant_configs_client::TenantConfigsClient::with_interceptor(
                channel(&self.gateway, self.timeout)?,
                self.auth(),
            ),
        )
    }

    /// Collectors.
    pub fn collectors(&self) -> anyhow::Result<gpb::collectors_client::CollectorsClient<Ch>> {
        Ok(gpb::collectors_client::CollectorsClient::with_interceptor(
            channel(&self.gateway, self.timeout)?,
            self.auth(),
        ))
    }

    /// CompliancePolicies.
    pub fn compliance(
        &self,
    ) -> anyhow::Result<gpb::compliance_policies_client::CompliancePoliciesClient<Ch>> {
        Ok(
            gpb::compliance_policies_client::CompliancePoliciesClient::with_interceptor(
                channel(&self.gateway, self.timeout)?,
                self.auth(),
            ),
        )
    }

    /// Calls.
    pub fn calls(&self) -> anyhow::Result<gpb::calls_client::CallsClient<Ch>> {
        Ok(gpb::calls_client::CallsClient::with_interceptor(
            channel(&self.gateway, self.timeout)?,
            self.auth(),
        ))
    }
}
