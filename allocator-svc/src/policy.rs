//! Tenant policies: from the gateway's `TenantPolicies` service (cached), or static settings.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use secrecy::ExposeSecret;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::domain::{AllocError, Strategy, TenantId, TenantPolicy};
use crate::settings::PolicySettings;

/// Answers "what is this tenant's policy?".
#[async_trait]
pub trait PolicySource: Send + Sync + 'static {
    /// Returns the tenant's policy; `NotFound` when the tenant has no config.
    async fn policy(&self, tenant: &TenantId) -> Result<TenantPolicy, AllocError>;
}

/// The same policy for every tenant, from settings.
#[derive(Debug, Clone)]
pub struct StaticPolicy(TenantPolicy);

impl StaticPolicy {
    /// Builds it from validated settings.
    pub fn new(s: &PolicySettings) -> Self {
        Self(TenantPolicy {
            active: s.static_active,
            config_id: s.static_config_id.clone(),
            default_strategy: Strategy::parse(&s.static_strategy).unwrap_or(Strategy::Lru),
            max_concurrent_calls: (s.static_max_concurrent_calls > 0)
                .then_some(s.static_max_concurrent_calls),
            lease_ttl_seconds: s.default_lease_ttl_seconds,
            cooldown_seconds: s.static_cooldown_seconds,
        })
    }
}

#[async_trait]
impl PolicySource for StaticPolicy {
    async fn policy(&self, _tenant: &TenantId) -> Result<TenantPolicy, AllocError> {
        Ok(self.0.clone())
    }
}

type Client = pb::tenant_policies_client::TenantPoliciesClient<
    InterceptedService<Channel, BearerInterceptor>,
>;

#[derive(Clone)]
enum Cached {
    Found(TenantPolicy),
    Missing,
}

/// Asks the gateway, caching answers for `cache_ttl` and serving a stale answer for up to
/// `stale_ttl` while the gateway cannot be reached.
pub struct GrpcPolicy {
    client: Client,
    url: String,
    cache: Mutex<HashMap<String, (Instant, Cached)>>,
    cache_ttl: Duration,
    stale_ttl: Duration,
    default_ttl: u32,
}

impl std::fmt::Debug for GrpcPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcPolicy")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl GrpcPolicy {
    /// Builds a lazily connecting client; the gateway need not be up yet.
    ///
    /// # Errors
    /// Fails when the URL is malformed.
    pub fn new(s: &PolicySettings) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(s.gateway_url.clone())
            .map_err(|e| anyhow::anyhow!("policy.gateway_url: {e}"))?
            .connect_timeout(Duration::from_millis(s.timeout_ms))
            .timeout(Duration::from_millis(s.timeout_ms));
        if let Some(tls) = s.gateway_tls.tonic("policy.gateway_tls")? {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("policy.gateway_tls: {e}"))?;
        }
        let channel = endpoint.connect_lazy();
        let client = pb::tenant_policies_client::TenantPoliciesClient::with_interceptor(
            channel,
            BearerInterceptor::new(s.gateway_api_key.expose_secret()),
        );
        Ok(Self {
            client,
            url: s.gateway_url.clone(),
            cache: Mutex::new(HashMap::new()),
            cache_ttl: Duration::from_millis(s.cache_ttl_ms),
            stale_ttl: Duration::from_millis(s.stale_ttl_ms),
            default_ttl: s.default_lease_ttl_seconds,
        })
    }

    fn cached(&self, tenant: &str, max_age: Duration) -> Option<Cached> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(tenant)
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, c)| c.clone())
    }

    fn store(&self, tenant: &str, value: Cached) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(tenant.to_owned(), (Instant::now(), value));
        }
    }

    fn convert(&self, p: pb::TenantPolicy) -> TenantPolicy {
        let strategy = match pb::AllocationStrategy::try_from(p.default_strategy) {
            Ok(pb::AllocationStrategy::RoundRobin) => Strategy::RoundRobin,
            Ok(pb::AllocationStrategy::CollectorAffinity) => Strategy::CollectorAffinity,
            _ => Strategy::Lru,
        };
        TenantPolicy {
            active: p.active,
            config_id: p.config_id,
            default_strategy: strategy,
            max_concurrent_calls: (p.max_concurrent_calls > 0).then_some(p.max_concurrent_calls),
            lease_ttl_seconds: if p.lease_ttl_seconds == 0 {
                self.default_ttl
            } else {
                p.lease_ttl_seconds.clamp(10, 86_400)
            },
            cooldown_seconds: p.cooldown_seconds.min(86_400),
        }
    }
}

fn answer(tenant: &TenantId, c: Cached) -> Result<TenantPolicy, AllocError> {
    match c {
        Cached::Found(p) => Ok(p),
        Cached::Missing => Err(AllocError::NotFound(format!(
            "tenant_id: tenant {tenant} has no Infinity call config"
        ))),
    }
}

#[async_trait]
impl PolicySource for GrpcPolicy {
    async fn policy(&self, tenant: &TenantId) -> Result<TenantPolicy, AllocError> {
        if let Some(c) = self.cached(tenant.as_str(), self.cache_ttl) {
            return answer(tenant, c);
        }
        let mut client = self.client.clone();
        let req = pb::GetTenantPolicyRequest {
            tenant_id: tenant.as_str().to_owned(),
        };
        match client.get_tenant_policy(req).await {
            Ok(resp) => {
                let p = self.convert(resp.into_inner());
                self.store(tenant.as_str(), Cached::Found(p.clone()));
                Ok(p)
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                self.store(tenant.as_str(), Cached::Missing);
                answer(tenant, Cached::Missing)
            }
            Err(s) => {
                if let Some(c) = self.cached(tenant.as_str(), self.stale_ttl) {
                    tracing::warn!(code = ?s.code(), "policy service failed; using a stale cached policy");
                    return answer(tenant, c);
                }
                Err(AllocError::Unavailable(format!(
                    "tenant policy service at {} is unavailable ({:?}: {})",
                    self.url,
                    s.code(),
                    s.message()
                )))
            }
        }
    }
}
