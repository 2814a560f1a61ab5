//! Reading and writing tenant configs: secrets sealed on the way into the store and opened on
//! the way out, so nothing above this module ever handles a sealed value and the store never
//! handles a clear one.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use uuid::Uuid;

use super::cache::Cache;
use crate::crypto::Cipher;
use crate::domain::config::{
    ApiEncoding, CallMode, CallerSelection, Credentials, Strategy, TenantConfig,
};
use crate::domain::phone::{NumberKind, Phone, parse_region};
use crate::domain::{GwError, TenantId};
use crate::metrics::GatewayMetrics;
use crate::store::{ConfigRow, ConfigStore, Versioned};

/// Tenant configs in and out of the store, the call path's reads through a cache.
#[derive(Clone)]
pub struct Tenants {
    store: Arc<dyn ConfigStore>,
    cipher: Cipher,
    cache: Arc<Cache<TenantId, TenantConfig>>,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

fn corrupt(what: impl std::fmt::Display) -> GwError {
    GwError::Internal(anyhow::anyhow!("stored config is corrupt: {what}"))
}

/// The error of a tenant without a config.
pub(crate) fn no_config(tenant: &TenantId) -> GwError {
    GwError::NotFound(format!(
        "tenant_id: tenant {tenant} has no Infinity call config"
    ))
}

impl Tenants {
    /// Over `store`, sealing with `cipher`; configs read on the call path are cached for at
    /// most `cache_ttl` (zero: not cached).
    pub fn new(
        store: Arc<dyn ConfigStore>,
        cipher: Cipher,
        cache_ttl: Duration,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            cache: Arc::new(Cache::new("config", cache_ttl, store.clone(), metrics)),
            store,
            cipher,
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

    /// Stores a new config; `AlreadyExists` when the tenant has one.
    pub async fn insert(&self, cfg: &TenantConfig) -> Result<(), GwError> {
        self.store.insert_config(&self.seal_row(cfg)?).await
    }

    /// Replaces a config if its stored version is `expected` (the config carries the new one).
    pub async fn update(&self, cfg: &TenantConfig, expected: i64) -> Result<Versioned, GwError> {
        self.store
            .update_config(&self.seal_row(cfg)?, expected)
            .await
    }

    /// The tenant's config, read through the cache (the call path); `NotFound` when it has
    /// none.
    pub async fn config(&self, tenant: &TenantId) -> Result<TenantConfig, GwError> {
        self.find(tenant).await?.ok_or_else(|| no_config(tenant))
    }

    /// The tenant's config through the cache, or `None`.
    pub async fn find(&self, tenant: &TenantId) -> Result<Option<TenantConfig>, GwError> {
        self.cache.get(tenant, || self.stored(tenant)).await
    }

    /// The tenant's config as stored now (administration reads it past the cache), or `None`.
    pub async fn stored(&self, tenant: &TenantId) -> Result<Option<TenantConfig>, GwError> {
        self.store
            .config_by_tenant(tenant.as_str())
            .await?
            .map(|row| self.open_row(row))
            .transpose()
    }

    /// The tenant's config as stored now; `NotFound` when it has none.
    pub async fn fresh(&self, tenant: &TenantId) -> Result<TenantConfig, GwError> {
        self.stored(tenant).await?.ok_or_else(|| no_config(tenant))
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
}
