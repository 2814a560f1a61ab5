//! Collectors (催员) and their callback numbers.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::cache::Cache;
use super::tenants::Tenants;
use crate::domain::collector::Collector;
use crate::domain::phone::Phone;
use crate::domain::{CollectorId, GwError, TenantId};
use crate::metrics::GatewayMetrics;
use crate::store::ConfigStore;

/// Most collectors in one page.
pub const MAX_PAGE: u32 = 1_000;

/// Collectors.
#[derive(Clone)]
pub struct Collectors {
    tenants: Tenants,
    store: Arc<dyn ConfigStore>,
    cache: Arc<Cache<(TenantId, CollectorId), Collector>>,
}

impl std::fmt::Debug for Collectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collectors").finish_non_exhaustive()
    }
}

fn not_found(tenant: &TenantId, collector: &CollectorId) -> GwError {
    GwError::NotFound(format!(
        "collector_id: no collector {collector} in tenant {tenant}"
    ))
}

impl Collectors {
    pub(super) fn new(
        tenants: Tenants,
        store: Arc<dyn ConfigStore>,
        cache_ttl: Duration,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            cache: Arc::new(Cache::new("collector", cache_ttl, store.clone(), metrics)),
            tenants,
            store,
        }
    }

    /// Creates or replaces a collector; the callback number is read in the tenant's region
    /// and must be of a type the tenant may dial.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, collector_id = %collector))]
    pub async fn upsert(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
        callback_number: &str,
        display_name: &str,
        active: bool,
    ) -> Result<Collector, GwError> {
        cco_platform::validate::text(display_name, 128)
            .map_err(|m| GwError::invalid("display_name", m))?;
        let cfg = match self.tenants.config(tenant).await {
            Ok(c) => c,
            Err(GwError::NotFound(m)) => return Err(GwError::FailedPrecondition(m)),
            Err(e) => return Err(e),
        };
        let number = if callback_number.trim().is_empty() {
            None
        } else {
            Some(
                Phone::parse(callback_number, cfg.phone_region)
                    .and_then(|p| p.check_kind(&cfg.allowed_number_types).map(|()| p))
                    .map_err(|m| GwError::invalid("callback_number", m))?,
            )
        };
        let now = Utc::now();
        self.store
            .upsert_collector(&Collector {
                tenant_id: tenant.clone(),
                collector_id: collector.clone(),
                callback_number: number,
                display_name: display_name.to_owned(),
                active,
                last_extension_number: None,
                created_at: now,
                updated_at: now,
            })
            .await
    }

    /// A collector as a call needs it (active, callback number), read through the cache: its
    /// last extension may be behind.
    pub async fn for_call(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<Collector, GwError> {
        self.cache
            .get(&(tenant.clone(), collector.clone()), || {
                self.store.collector(tenant.as_str(), collector.as_str())
            })
            .await?
            .ok_or_else(|| not_found(tenant, collector))
    }

    /// One collector, as stored now.
    pub async fn get(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<Collector, GwError> {
        self.store
            .collector(tenant.as_str(), collector.as_str())
            .await?
            .ok_or_else(|| not_found(tenant, collector))
    }

    /// One page of collectors and the id to continue after.
    pub async fn list(
        &self,
        tenant: &TenantId,
        after: Option<String>,
        active: Option<bool>,
        page_size: u32,
    ) -> Result<(Vec<Collector>, Option<String>), GwError> {
        let limit = match page_size {
            0 => 100,
            n if n > MAX_PAGE => {
                return Err(GwError::invalid(
                    "page_size",
                    format!("must be at most {MAX_PAGE}, got {n}"),
                ));
            }
            n => n,
        };
        let mut list = self
            .store
            .list_collectors(tenant.as_str(), after.as_deref(), active, limit + 1)
            .await?;
        let next = if list.len() > limit as usize {
            list.truncate(limit as usize);
            list.last().map(|c| c.collector_id.as_str().to_owned())
        } else {
            None
        };
        Ok((list, next))
    }

    /// Deletes a collector.
    pub async fn delete(&self, tenant: &TenantId, collector: &CollectorId) -> Result<(), GwError> {
        if self
            .store
            .delete_collector(tenant.as_str(), collector.as_str())
            .await?
        {
            Ok(())
        } else {
            Err(not_found(tenant, collector))
        }
    }
}
