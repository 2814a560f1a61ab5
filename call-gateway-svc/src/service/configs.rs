//! Tenant configs: create, read, update (versioned), toggle, delete, the allocator's policy view,
//! and TestConnection.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use secrecy::SecretString;
use uuid::Uuid;

use super::settling::Settling;
use super::tenants::{Tenants, no_config};
use crate::domain::config::{ConfigFields, Credentials, Policy, TenantConfig};
use crate::domain::{GwError, TenantId};
use crate::ports::{Leases, Pbx, PbxError};
use crate::store::Versioned;
use crate::store::calls::{CallStore, PoolPurge};

/// What TestConnection found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    /// Infinity answered with success.
    pub ok: bool,
    /// `login` or `list_extensions`.
    pub method: &'static str,
    /// Infinity's code or the failure class.
    pub code: String,
    /// Infinity's text or what went wrong.
    pub message: String,
    /// Round trip of the test.
    pub latency_ms: u32,
    /// Company name (login).
    pub company_name: String,
    /// Extensions Infinity knows.
    pub extension_count: u32,
    /// Of those, registered.
    pub registered_count: u32,
    /// The pool was compared.
    pub pool_checked: bool,
    /// Why it was not.
    pub pool_check_error: String,
    /// Pool numbers Infinity does not know.
    pub unknown_to_infinity: Vec<String>,
    /// Pool numbers Infinity reports unregistered.
    pub unregistered: Vec<String>,
}

/// Tenant configs.
#[derive(Clone)]
pub struct Configs {
    tenants: Tenants,
    calls: Arc<dyn CallStore>,
    leases: Arc<dyn Leases>,
    pbx: Arc<dyn Pbx>,
    settling: Settling,
}

impl std::fmt::Debug for Configs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configs").finish_non_exhaustive()
    }
}

fn stale(tenant: &TenantId, given: i64, current: i64) -> GwError {
    GwError::Aborted(format!(
        "version: config of tenant {tenant} is at version {current}, not {given}; read it again and reapply your change"
    ))
}

impl Configs {
    pub(super) fn new(
        tenants: Tenants,
        calls: Arc<dyn CallStore>,
        leases: Arc<dyn Leases>,
        pbx: Arc<dyn Pbx>,
        settling: Settling,
    ) -> Self {
        Self {
            tenants,
            calls,
            leases,
            pbx,
            settling,
        }
    }

    /// Creates a tenant's config; returns it and the callback secret if one was generated.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    pub async fn create(
        &self,
        tenant: TenantId,
        fields: ConfigFields,
    ) -> Result<(TenantConfig, Option<SecretString>), GwError> {
        let (cfg, generated) = TenantConfig::create(tenant, fields, Utc::now())?;
        self.pbx.check_api_url(&cfg.api_url)?;
        self.tenants.insert(&cfg).await?;
        tracing::info!(config_id = %cfg.config_id, "config created");
        Ok((cfg, generated))
    }

    /// The tenant's config.
    pub async fn get(&self, tenant: &TenantId) -> Result<TenantConfig, GwError> {
        self.tenants.fresh(tenant).await
    }

    /// A config by id.
    pub async fn get_by_id(&self, id: Uuid) -> Result<TenantConfig, GwError> {
        self.tenants.config_by_id(id).await
    }

    /// Applies a partial update if `version` is current; returns the new config and a
    /// generated callback secret, if any.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, version))]
    pub async fn update(
        &self,
        tenant: &TenantId,
        version: i64,
        mut fields: ConfigFields,
        regenerate_secret: bool,
    ) -> Result<(TenantConfig, Option<SecretString>), GwError> {
        if version <= 0 {
            return Err(GwError::invalid(
                "version",
                "is required: send the version you read",
            ));
        }
        if regenerate_secret && fields.callback_secret.is_some() {
            return Err(GwError::invalid(
                "regenerate_callback_secret",
                "cannot be combined with callback_secret",
            ));
        }
        let generated = regenerate_secret.then(crate::domain::config::generate_secret);
        if let Some(s) = &generated {
            fields.callback_secret = Some(s.clone());
        }
        let mut cfg = self.tenants.fresh(tenant).await?;
        if cfg.version != version {
            return Err(stale(tenant, version, cfg.version));
        }
        let url_changed = fields.api_url.is_some();
        cfg.apply(fields)?;
        if url_changed {
            self.pbx.check_api_url(&cfg.api_url)?;
        }
        cfg.version = version.saturating_add(1);
        cfg.updated_at = Utc::now();
        match self.tenants.update(&cfg, version).await? {
            Versioned::Updated => Ok((cfg, generated)),
            Versioned::Stale(current) => Err(stale(tenant, version, current)),
            Versioned::NotFound => Err(no_config(tenant)),
        }
    }

    /// Flips `is_active`; `version` 0 skips the version check (still atomic).
    pub async fn toggle(&self, tenant: &TenantId, version: i64) -> Result<TenantConfig, GwError> {
        for _ in 0..5 {
            let current = self.tenants.fresh(tenant).await?;
            if version != 0 && current.version != version {
                return Err(stale(tenant, version, current.version));
            }
            let fields = ConfigFields {
                is_active: Some(!current.is_active),
                ..ConfigFields::default()
            };
            match self.update(tenant, current.version, fields, false).await {
                Err(GwError::Aborted(_)) if version == 0 => continue,
                other => return other.map(|(c, _)| c),
            }
        }
        Err(GwError::Aborted(format!(
            "tenant_id: config of {tenant} keeps changing; try again"
        )))
    }

    /// Deletes a config with its collectors; refused while the tenant holds extensions unless
    /// forced. Open calls are ended (failed, `config_deleted`) and their leases released, and
    /// the config's extension pool is deleted in the allocator: in the gateway's database in
    /// one transaction, towards the allocator through the outbox. Returns the calls ended.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, force))]
    pub async fn delete(&self, tenant: &TenantId, force: bool) -> Result<u32, GwError> {
        if !force {
            match self.leases.in_use(tenant).await {
                Ok(0) => {}
                Ok(n) => {
                    return Err(GwError::FailedPrecondition(format!(
                        "tenant {tenant} has {n} live calls (extensions in use); end them or set force"
                    )));
                }
                Err(e) => {
                    return Err(GwError::Unavailable(format!(
                        "cannot check the tenant's live calls: allocator {e}; set force to delete anyway"
                    )));
                }
            }
        }
        let Some(deleted) = self.calls.delete_config(tenant.as_str()).await? else {
            return Err(no_config(tenant));
        };
        tracing::info!(config_id = %deleted.config_id, calls_ended = deleted.calls_ended, "config deleted");
        for r in &deleted.releases {
            self.settling.flush_release(r).await;
        }
        self.settling
            .flush_pool_purge(&PoolPurge {
                config_id: deleted.config_id,
                tenant_id: tenant.as_str().to_owned(),
                attempts: 0,
            })
            .await;
        Ok(deleted.calls_ended)
    }

    /// The allocator's view of the tenant.
    pub async fn policy(&self, tenant: &TenantId) -> Result<Policy, GwError> {
        Ok(Policy::from(&self.tenants.config(tenant).await?))
    }

    /// Logs in (app credentials) and lists extensions, compares them with the allocator's pool,
    /// and reports. Never dials.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    pub async fn test_connection(&self, tenant: &TenantId) -> Result<TestReport, GwError> {
        let cfg = self.tenants.config(tenant).await?;
        let started = Instant::now();
        let mut report = TestReport {
            method: match cfg.credentials {
                Credentials::App { .. } => "login",
                Credentials::AccessToken(_) => "list_extensions",
            },
            ..TestReport::default()
        };
        let outcome: Result<(), PbxError> = async {
            if let Credentials::App { .. } = cfg.credentials {
                report.company_name = self.pbx.login(&cfg).await?;
            }
            let exts = self.pbx.extensions(&cfg).await?;
            report.extension_count = u32::try_from(exts.len()).unwrap_or(u32::MAX);
            report.registered_count =
                u32::try_from(exts.iter().filter(|e| e.registered).count()).unwrap_or(u32::MAX);
            match self.leases.pool_numbers(tenant).await {
                Ok(pool) => {
                    report.pool_checked = true;
                    for number in pool {
                        match exts.iter().find(|e| e.number == number) {
                            None => report.unknown_to_infinity.push(number),
                            Some(e) if !e.registered => report.unregistered.push(number),
                            Some(_) => {}
                        }
                    }
                }
                Err(e) => report.pool_check_error = format!("allocator {e}"),
            }
            Ok(())
        }
        .await;
        report.latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        match outcome {
            Ok(()) => {
                report.ok = true;
                report.code = "ok".into();
            }
            Err(e) => {
                let (code, message) = match &e {
                    PbxError::Ambiguous(m) => ("timeout".into(), m.clone()),
                    other => other.code_and_message(),
                };
                report.code = code;
                report.message = message;
            }
        }
        tracing::info!(ok = report.ok, code = %report.code, latency_ms = report.latency_ms, "connection tested");
        Ok(report)
    }
}
