//! The gateway's rules for tenant configs, policies, collectors and TestConnection.
//! No SQL and no protobuf here; secrets are sealed before they reach the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::SecretString;
use uuid::Uuid;

use crate::allocator::AllocatorClient;
use crate::crypto::Cipher;
use crate::domain::collector::Collector;
use crate::domain::config::{
    ApiEncoding, CallMode, CallerSelection, ConfigFields, Credentials, Policy, Strategy,
    TenantConfig,
};
use crate::domain::phone::{NumberKind, Phone, parse_region};
use crate::domain::{CollectorId, GwError, TenantId};
use crate::infinity::{Endpoint, InfinityClient, InfinityError};
use crate::store::calls::{CallStore, PoolPurgeRow};
use crate::store::{CollectorRow, ConfigRow, GatewayStore, Versioned};

/// Most collectors in one page.
pub const MAX_PAGE: u32 = 1_000;

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

/// The gateway's services.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) store: Arc<dyn GatewayStore>,
    pub(crate) calls: Arc<dyn CallStore>,
    pub(crate) cipher: Cipher,
    pub(crate) infinity: Arc<InfinityClient>,
    pub(crate) allocator: AllocatorClient,
    pub(crate) tuning: CallTuning,
}

/// Timings of the call flow's background work.
#[derive(Debug, Clone)]
pub struct CallTuning {
    /// Open calls are first looked up with GetBill this long after they were created.
    pub reconcile_after: chrono::Duration,
    /// An open call with no record from Infinity after this long is expired and its lease freed.
    pub max_call_age: chrono::Duration,
    /// How often a claimed open call is looked at again.
    pub reconcile_every: chrono::Duration,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

fn corrupt(what: impl std::fmt::Display) -> GwError {
    GwError::Internal(anyhow::anyhow!("stored config is corrupt: {what}"))
}

impl Gateway {
    /// Builds the service.
    pub fn new(
        store: Arc<dyn GatewayStore>,
        calls: Arc<dyn CallStore>,
        cipher: Cipher,
        infinity: Arc<InfinityClient>,
        allocator: AllocatorClient,
        tuning: CallTuning,
    ) -> Self {
        Self {
            store,
            calls,
            cipher,
            infinity,
            allocator,
            tuning,
        }
    }

    fn seal(&self, s: &SecretString, tenant: &str, field: &str) -> Result<String, GwError> {
        self.cipher
            .seal(s, tenant, field)
            .map_err(|e| GwError::Internal(anyhow::anyhow!(e)))
    }

    fn open(&self, sealed: &str, tenant: &str, field: &str) -> Result<SecretString, GwError> {
        self.cipher.open(sealed, tenant, field).map_err(corrupt)
    }

    fn seal_row(&self, c: &TenantConfig) -> Result<ConfigRow, GwError> {
        let t = c.tenant_id.as_str();
        let (mode, app_id, token, key) = match &c.credentials {
            Credentials::AccessToken(tok) => (
                "access_token",
                None,
                Some(self.seal(tok, t, "access_token")?),
                None,
            ),
            Credentials::App { app_id, access_key } => (
                "app",
                Some(app_id.clone()),
                None,
                Some(self.seal(access_key, t, "access_key")?),
            ),
        };
        let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        Ok(ConfigRow {
            config_id: c.config_id.to_string(),
            tenant_id: t.to_owned(),
            supplier_id: c.supplier_id.clone(),
            api_url: c.api_url.clone(),
            credential_mode: mode.to_owned(),
            app_id,
            access_token_sealed: token,
            access_key_sealed: key,
            caller_number_pool: serde_json::to_string(
                &c.caller_number_pool
                    .iter()
                    .map(Phone::e164)
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| GwError::Internal(e.into()))?,
            default_caller_number: c.default_caller_number.e164().to_owned(),
            caller_number_selection: c.caller_selection.as_str().to_owned(),
            call_mode: c.call_mode.as_str().to_owned(),
            destination_prefix: c.destination_prefix.clone(),
            max_concurrent_calls: to_i32(c.max_concurrent_calls),
            call_timeout_seconds: to_i32(c.call_timeout_seconds),
            api_timeout_ms: to_i32(c.api_timeout_ms),
            allocation_strategy: c.allocation_strategy.as_str().to_owned(),
            lease_ttl_seconds: to_i32(c.lease_ttl_seconds),
            cooldown_seconds: to_i32(c.cooldown_seconds),
            callback_secret_sealed: self.seal(&c.callback_secret, t, "callback_secret")?,
            callback_ip_allowlist: serde_json::to_string(
                &c.callback_ip_allowlist
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| GwError::Internal(e.into()))?,
            callback_time_zone: c.callback_time_zone.name().to_owned(),
            is_active: c.is_active,
            phone_region: c.phone_region.as_ref().to_owned(),
            api_encoding: c.api_encoding.as_str().to_owned(),
            allowed_number_types: serde_json::to_string(
                &c.allowed_number_types
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| GwError::Internal(e.into()))?,
            version: c.version,
            created_at: c.created_at,
            updated_at: c.updated_at,
        })
    }

    fn open_row(&self, r: ConfigRow) -> Result<TenantConfig, GwError> {
        let t = r.tenant_id.as_str();
        let credentials = match (
            r.credential_mode.as_str(),
            &r.access_token_sealed,
            &r.app_id,
            &r.access_key_sealed,
        ) {
            ("access_token", Some(tok), _, _) => {
                Credentials::AccessToken(self.open(tok, t, "access_token")?)
            }
            ("app", _, Some(app_id), Some(key)) => Credentials::App {
                app_id: app_id.clone(),
                access_key: self.open(key, t, "access_key")?,
            },
            (m, ..) => return Err(corrupt(format!("credential_mode {m:?} without its secret"))),
        };
        let pool: Vec<String> = serde_json::from_str(&r.caller_number_pool).map_err(corrupt)?;
        let pool = pool
            .iter()
            .map(|n| Phone::from_e164(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        let nets: Vec<String> = serde_json::from_str(&r.callback_ip_allowlist).map_err(corrupt)?;
        let nets = nets
            .iter()
            .map(|n| n.parse())
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        let kinds: Vec<String> = serde_json::from_str(&r.allowed_number_types).map_err(corrupt)?;
        let allowed_number_types = kinds
            .iter()
            .map(|k| NumberKind::parse(k).ok_or_else(|| corrupt(format!("number type {k:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let to_u32 = |v: i32| u32::try_from(v).unwrap_or(0);
        Ok(TenantConfig {
            config_id: Uuid::parse_str(&r.config_id).map_err(corrupt)?,
            tenant_id: TenantId::parse("tenant_id", t).map_err(corrupt)?,
            supplier_id: r.supplier_id,
            api_url: r.api_url,
            credentials,
            caller_number_pool: pool,
            default_caller_number: Phone::from_e164(&r.default_caller_number).map_err(corrupt)?,
            caller_selection: CallerSelection::parse(&r.caller_number_selection)
                .ok_or_else(|| corrupt("selection"))?,
            call_mode: CallMode::parse(&r.call_mode).ok_or_else(|| corrupt("call_mode"))?,
            destination_prefix: r.destination_prefix,
            max_concurrent_calls: to_u32(r.max_concurrent_calls),
            call_timeout_seconds: to_u32(r.call_timeout_seconds),
            api_timeout_ms: to_u32(r.api_timeout_ms),
            allocation_strategy: Strategy::parse(&r.allocation_strategy)
                .ok_or_else(|| corrupt("strategy"))?,
            lease_ttl_seconds: to_u32(r.lease_ttl_seconds),
            cooldown_seconds: to_u32(r.cooldown_seconds),
            callback_secret: self.open(&r.callback_secret_sealed, t, "callback_secret")?,
            callback_ip_allowlist: nets,
            callback_time_zone: r.callback_time_zone.parse().map_err(corrupt)?,
            is_active: r.is_active,
            phone_region: parse_region(&r.phone_region).map_err(corrupt)?,
            api_encoding: ApiEncoding::parse(&r.api_encoding)
                .ok_or_else(|| corrupt("api_encoding"))?,
            allowed_number_types,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }

    /// Creates a tenant's config; returns it and the callback secret if one was generated.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    pub async fn create_config(
        &self,
        tenant: TenantId,
        fields: ConfigFields,
    ) -> Result<(TenantConfig, Option<SecretString>), GwError> {
        let (cfg, generated) = TenantConfig::create(tenant, fields, Utc::now())?;
        self.infinity.allowed_hosts().check(&cfg.api_url)?;
        self.store.insert_config(&self.seal_row(&cfg)?).await?;
        tracing::info!(config_id = %cfg.config_id, "config created");
        Ok((cfg, generated))
    }

    /// The tenant's config.
    pub async fn config(&self, tenant: &TenantId) -> Result<TenantConfig, GwError> {
        let row = self
            .store
            .config_by_tenant(tenant.as_str())
            .await?
            .ok_or_else(|| {
                GwError::NotFound(format!(
                    "tenant_id: tenant {tenant} has no Infinity call config"
                ))
            })?;
        self.open_row(row)
    }

    /// A config by id.
    pub async fn config_by_id(&self, id: Uuid) -> Result<TenantConfig, GwError> {
        let row = self
            .store
            .config_by_id(&id.to_string())
            .await?
            .ok_or_else(|| GwError::NotFound(format!("config_id: no config {id}")))?;
        self.open_row(row)
    }

    /// Applies a partial update if `version` is current; returns the new config and a
    /// generated callback secret, if any.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, version))]
    pub async fn update_config(
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
        let mut cfg = self.config(tenant).await?;
        if cfg.version != version {
            return Err(stale(tenant, version, cfg.version));
        }
        let url_changed = fields.api_url.is_some();
        cfg.apply(fields)?;
        if url_changed {
            self.infinity.allowed_hosts().check(&cfg.api_url)?;
        }
        cfg.version = version.saturating_add(1);
        cfg.updated_at = Utc::now();
        match self
            .store
            .update_config(&self.seal_row(&cfg)?, version)
            .await?
        {
            Versioned::Updated => Ok((cfg, generated)),
            Versioned::Stale(current) => Err(stale(tenant, version, current)),
            Versioned::NotFound => Err(GwError::NotFound(format!(
                "tenant_id: tenant {tenant} has no Infinity call config"
            ))),
        }
    }

    /// Flips `is_active`; `version` 0 skips the version check (still atomic).
    pub async fn toggle_config(
        &self,
        tenant: &TenantId,
        version: i64,
    ) -> Result<TenantConfig, GwError> {
        for _ in 0..5 {
            let current = self.config(tenant).await?;
            if version != 0 && current.version != version {
                return Err(stale(tenant, version, current.version));
            }
            let fields = ConfigFields {
                is_active: Some(!current.is_active),
                ..ConfigFields::default()
            };
            match self
                .update_config(tenant, current.version, fields, false)
                .await
            {
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
    pub async fn delete_config(&self, tenant: &TenantId, force: bool) -> Result<u32, GwError> {
        if !force {
            match self.allocator.in_use(tenant.as_str()).await {
                Ok(0) => {}
                Ok(n) => {
                    return Err(GwError::FailedPrecondition(format!(
                        "tenant {tenant} has {n} live calls (extensions in use); end them or set force"
                    )));
                }
                Err(s) => {
                    return Err(GwError::Unavailable(format!(
                        "cannot check the tenant's live calls: allocator {:?}: {}; set force to delete anyway",
                        s.code(),
                        s.message()
                    )));
                }
            }
        }
        let Some(deleted) = self.calls.delete_config(tenant.as_str()).await? else {
            return Err(GwError::NotFound(format!(
                "tenant_id: tenant {tenant} has no Infinity call config"
            )));
        };
        tracing::info!(config_id = %deleted.config_id, calls_ended = deleted.calls_ended, "config deleted");
        for o in &deleted.releases {
            self.flush_release(o).await;
        }
        self.flush_pool_purge(&PoolPurgeRow {
            config_id: deleted.config_id,
            tenant_id: tenant.as_str().to_owned(),
            attempts: 0,
        })
        .await;
        Ok(deleted.calls_ended)
    }

    /// The allocator's view of the tenant.
    pub async fn policy(&self, tenant: &TenantId) -> Result<Policy, GwError> {
        Ok(Policy::from(&self.config(tenant).await?))
    }

    /// How to reach the tenant's Infinity.
    pub fn endpoint(cfg: &TenantConfig) -> Endpoint {
        Endpoint {
            api_url: cfg.api_url.clone(),
            credentials: cfg.credentials.clone(),
            timeout: Duration::from_millis(u64::from(cfg.api_timeout_ms)),
            encoding: cfg.api_encoding,
        }
    }

    /// Logs in (app credentials) and lists extensions, compares them with the allocator's pool,
    /// and reports. Never dials.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    pub async fn test_connection(&self, tenant: &TenantId) -> Result<TestReport, GwError> {
        let cfg = self.config(tenant).await?;
        let ep = Self::endpoint(&cfg);
        let started = Instant::now();
        let mut report = TestReport {
            method: match cfg.credentials {
                Credentials::App { .. } => "login",
                Credentials::AccessToken(_) => "list_extensions",
            },
            ..TestReport::default()
        };
        let outcome: Result<(), InfinityError> = async {
            if let Credentials::App { .. } = cfg.credentials {
                report.company_name = self.infinity.login(&ep).await?.company_name;
            }
            let exts = self.infinity.sip_numbers(&ep).await?;
            report.extension_count = u32::try_from(exts.len()).unwrap_or(u32::MAX);
            report.registered_count =
                u32::try_from(exts.iter().filter(|e| e.registered).count()).unwrap_or(u32::MAX);
            match self.allocator.pool_numbers(tenant.as_str()).await {
                Ok(pool) => {
                    report.pool_checked = true;
                    for (number, _) in pool {
                        match exts.iter().find(|e| e.extnumber == number) {
                            None => report.unknown_to_infinity.push(number),
                            Some(e) if !e.registered => report.unregistered.push(number),
                            Some(_) => {}
                        }
                    }
                }
                Err(s) => {
                    report.pool_check_error = format!("allocator {:?}: {}", s.code(), s.message())
                }
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
                    InfinityError::Refused { code, message } => (code.clone(), message.clone()),
                    InfinityError::Auth { ret, message } => (ret.to_string(), message.clone()),
                    InfinityError::Upstream(m) => ("upstream_error".into(), m.clone()),
                    InfinityError::NotSent(m) => ("not_sent".into(), m.clone()),
                    InfinityError::Ambiguous(m) => ("timeout".into(), m.clone()),
                };
                report.code = code;
                report.message = message;
            }
        }
        tracing::info!(ok = report.ok, code = %report.code, latency_ms = report.latency_ms, "connection tested");
        Ok(report)
    }

    fn collector_from(row: CollectorRow) -> Result<Collector, GwError> {
        Ok(Collector {
            tenant_id: TenantId::parse("tenant_id", &row.tenant_id).map_err(corrupt)?,
            collector_id: CollectorId::parse("collector_id", &row.collector_id).map_err(corrupt)?,
            callback_number: row
                .callback_number
                .as_deref()
                .map(Phone::from_e164)
                .transpose()
                .map_err(corrupt)?,
            display_name: row.display_name,
            active: row.active,
            last_extension_number: row.last_extension_number,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    /// Creates or replaces a collector; the callback number is read in the tenant's region.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, collector_id = %collector))]
    pub async fn upsert_collector(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
        callback_number: &str,
        display_name: &str,
        active: bool,
    ) -> Result<Collector, GwError> {
        cco_platform::validate::text(display_name, 128)
            .map_err(|m| GwError::invalid("display_name", m))?;
        let cfg = match self.config(tenant).await {
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
        let row = self
            .store
            .upsert_collector(&CollectorRow {
                tenant_id: tenant.as_str().to_owned(),
                collector_id: collector.as_str().to_owned(),
                callback_number: number.as_ref().map(|p| p.e164().to_owned()),
                display_name: display_name.to_owned(),
                active,
                last_extension_number: None,
                created_at: now,
                updated_at: now,
            })
            .await?;
        Self::collector_from(row)
    }

    /// One collector.
    pub async fn collector(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<Collector, GwError> {
        let row = self
            .store
            .collector(tenant.as_str(), collector.as_str())
            .await?
            .ok_or_else(|| {
                GwError::NotFound(format!(
                    "collector_id: no collector {collector} in tenant {tenant}"
                ))
            })?;
        Self::collector_from(row)
    }

    /// One page of collectors and the id to continue after.
    pub async fn list_collectors(
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
        let mut rows = self
            .store
            .list_collectors(tenant.as_str(), after.as_deref(), active, limit + 1)
            .await?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.collector_id.clone())
        } else {
            None
        };
        let list = rows
            .into_iter()
            .map(Self::collector_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((list, next))
    }

    /// Deletes a collector.
    pub async fn delete_collector(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<(), GwError> {
        if self
            .store
            .delete_collector(tenant.as_str(), collector.as_str())
            .await?
        {
            Ok(())
        } else {
            Err(GwError::NotFound(format!(
                "collector_id: no collector {collector} in tenant {tenant}"
            )))
        }
    }
}

fn stale(tenant: &TenantId, given: i64, current: i64) -> GwError {
    GwError::Aborted(format!(
        "version: config of tenant {tenant} is at version {current}, not {given}; read it again and reapply your change"
    ))
}
