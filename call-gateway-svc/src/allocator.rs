//! The [`Leases`] port over allocator-svc's gRPC API: the only gateway module that knows the
//! allocator's contracts. Converts domain types to protobuf and back, maps the allocator's
//! status codes into the gateway's terms, and asks again (same request id) when an Acquire's
//! answer is lost. The channel connects lazily: the allocator may start later.

use std::time::Duration;

use async_trait::async_trait;
use cco_contracts::allocator::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::domain::call::{Lease, Release, ReleaseReason};
use crate::domain::config::Strategy;
use crate::domain::{CollectorId, GwError, TenantId};
use crate::ports::{Acquired, LeaseError, Leases};
use crate::settings::AllocatorSettings;

type Ch = InterceptedService<Channel, BearerInterceptor>;

/// gRPC clients of both allocator services over one channel.
#[derive(Clone, Debug)]
pub struct AllocatorClient {
    leases: pb::extension_allocator_client::ExtensionAllocatorClient<Ch>,
    pool: pb::extension_pool_client::ExtensionPoolClient<Ch>,
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// The allocator's answer in the gateway's terms: a refusal the caller acts on, or trouble
/// reaching it (retried by whoever owns the request).
fn classify(s: &tonic::Status) -> LeaseError {
    let m = s.message().to_owned();
    match s.code() {
        Code::ResourceExhausted => LeaseError::Refused(GwError::ResourceExhausted(m)),
        Code::FailedPrecondition | Code::NotFound => {
            LeaseError::Refused(GwError::FailedPrecondition(m))
        }
        Code::InvalidArgument => LeaseError::Refused(GwError::Internal(anyhow::anyhow!(
            "allocator refused our request: {}",
            status_text(s)
        ))),
        _ => LeaseError::Unreachable(status_text(s)),
    }
}

fn strategy(s: Option<Strategy>) -> pb::Strategy {
    match s {
        None => pb::Strategy::Unspecified,
        Some(Strategy::Lru) => pb::Strategy::Lru,
        Some(Strategy::RoundRobin) => pb::Strategy::RoundRobin,
        Some(Strategy::CollectorAffinity) => pb::Strategy::CollectorAffinity,
    }
}

fn reason(r: ReleaseReason) -> pb::ReleaseReason {
    match r {
        ReleaseReason::CallEnded => pb::ReleaseReason::CallEnded,
        ReleaseReason::DialFailed => pb::ReleaseReason::DialFailed,
        ReleaseReason::Reconciled => pb::ReleaseReason::Reconciled,
        ReleaseReason::Cancelled => pb::ReleaseReason::Cancelled,
    }
}

fn time(t: Option<cco_contracts::pbjson_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.as_ref().and_then(cco_contracts::time::from_timestamp)
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
}

#[async_trait]
impl Leases for AllocatorClient {
    async fn acquire(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
        strategy_override: Option<Strategy>,
        request_id: &str,
    ) -> Result<Acquired, LeaseError> {
        let req = pb::AcquireRequest {
            tenant_id: tenant.as_str().to_owned(),
            collector_id: collector.as_str().to_owned(),
            strategy: strategy(strategy_override).into(),
            request_id: request_id.to_owned(),
            ttl_seconds: 0,
        };
        // Acquire is idempotent per request id: when an answer is lost (timeout, restart),
        // asking again returns the lease that may already have been granted instead of leaking it.
        let mut attempt = 0;
        let resp = loop {
            let mut client = self.leases.clone();
            match client.acquire(req.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(s)
                    if attempt < 2
                        && matches!(
                            s.code(),
                            Code::Unavailable
                                | Code::Cancelled
                                | Code::DeadlineExceeded
                                | Code::Unknown
                                // The allocator's database kept aborting the transaction.
                                | Code::Aborted
                        ) =>
                {
                    attempt += 1;
                    tracing::warn!(error = %status_text(&s), attempt, "acquire failed; asking again with the same request id");
                    tokio::time::sleep(Duration::from_millis(100 * 3u64.pow(attempt))).await;
                }
                Err(s) => return Err(classify(&s)),
            }
        };
        let l = resp.lease.ok_or_else(|| {
            LeaseError::Refused(GwError::Internal(anyhow::anyhow!(
                "allocator answered without a lease"
            )))
        })?;
        Ok(Acquired {
            ended: l.released_at.is_some(),
            lease: Lease {
                lease_id: l.lease_id,
                extension_id: l.extension_id,
                extension_number: l.extension_number,
                fencing_token: i64::try_from(l.fencing_token).unwrap_or(0),
                expires_at: time(l.expires_at),
            },
        })
    }

    async fn release(&self, r: &Release) -> Result<bool, LeaseError> {
        let mut client = self.leases.clone();
        let res = client
            .release(pb::ReleaseRequest {
                lease_id: r.lease_id.clone(),
                fencing_token: u64::try_from(r.fencing_token).unwrap_or(0),
                reason: reason(r.reason).into(),
                tenant_id: String::new(),
            })
            .await;
        match res {
            Ok(resp) => {
                let resp = resp.into_inner();
                if !resp.released {
                    tracing::info!(lease_id = %r.lease_id, reason = %resp.reason, "release changed nothing (stale or already released)");
                }
                Ok(resp.released)
            }
            // No such lease (or one we cannot name): there is nothing left to free.
            Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => {
                Err(LeaseError::Refused(GwError::NotFound(status_text(&s))))
            }
            Err(s) => Err(LeaseError::Unreachable(status_text(&s))),
        }
    }

    async fn renew(
        &self,
        lease_id: &str,
        fencing_token: i64,
        ttl_seconds: u32,
    ) -> Result<Option<DateTime<Utc>>, LeaseError> {
        let mut client = self.leases.clone();
        let r = client
            .renew(pb::RenewRequest {
                lease_id: lease_id.to_owned(),
                fencing_token: u64::try_from(fencing_token).unwrap_or(0),
                ttl_seconds,
                tenant_id: String::new(),
            })
            .await
            .map_err(|s| classify(&s))?;
        Ok(r.into_inner().lease.and_then(|l| time(l.expires_at)))
    }

    async fn take_offline(&self, tenant: &TenantId, extension_id: &str) -> Result<(), LeaseError> {
        let mut pool = self.pool.clone();
        pool.update_extension(pb::UpdateExtensionRequest {
            tenant_id: tenant.as_str().to_owned(),
            extension_id: extension_id.to_owned(),
            status: Some(pb::ExtensionStatus::Offline.into()),
            number: None,
            force: true,
        })
        .await
        .map(|_| ())
        .map_err(|s| classify(&s))
    }

    async fn in_use(&self, tenant: &TenantId) -> Result<u32, LeaseError> {
        let mut client = self.leases.clone();
        let s = client
            .stats(pb::StatsRequest {
                tenant_id: tenant.as_str().to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|s| classify(&s))?
            .into_inner();
        Ok(s.in_use)
    }

    async fn pool_numbers(&self, tenant: &TenantId) -> Result<Vec<String>, LeaseError> {
        let mut client = self.pool.clone();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_extensions(pb::ListExtensionsRequest {
                    tenant_id: tenant.as_str().to_owned(),
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .map_err(|s| classify(&s))?
                .into_inner();
            out.extend(page.extensions.into_iter().map(|e| e.number));
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    async fn delete_config_pool(
        &self,
        tenant_id: &str,
        config_id: &str,
    ) -> Result<(u32, u32), LeaseError> {
        let mut client = self.pool.clone();
        let r = client
            .delete_config_pool(pb::DeleteConfigPoolRequest {
                tenant_id: tenant_id.to_owned(),
                config_id: config_id.to_owned(),
            })
            .await
            .map_err(|s| LeaseError::Unreachable(status_text(&s)))?
            .into_inner();
        Ok((r.deleted, r.leases_ended))
    }
}
