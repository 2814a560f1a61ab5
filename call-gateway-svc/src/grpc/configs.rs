//! TenantConfigs and TenantPolicies over gRPC.

use cco_contracts::gateway::v1 as pb;
use cco_contracts::time::to_timestamp as ts;
use cco_platform::auth::Principal;
use cco_platform::mask::secret_tail;
use secrecy::{ExposeSecret, SecretString};
use tonic::{Request, Response, Status};

use super::{done, opt_text, strategy_from_pb, strategy_to_pb, tenant_of};
use crate::domain::config::{
    ApiEncoding, CallMode, CallerSelection, ConfigFields, Credentials, TenantConfig,
};
use crate::domain::phone::NumberKind;
use crate::domain::{GwError, parse_uuid};
use crate::service::Configs;

/// Serves TenantConfigs and TenantPolicies.
#[derive(Clone, Debug)]
pub struct ConfigsGrpc {
    configs: Configs,
}

impl ConfigsGrpc {
    /// Serves `configs`.
    pub fn new(configs: Configs) -> Self {
        Self { configs }
    }
}

fn secret_view(s: &SecretString) -> pb::SecretView {
    let v = s.expose_secret();
    pb::SecretView {
        set: !v.is_empty(),
        mask: secret_tail(v),
    }
}

fn selection_from_pb(v: i32) -> Result<Option<CallerSelection>, GwError> {
    match pb::CallerNumberSelection::try_from(v) {
        Ok(pb::CallerNumberSelection::Unspecified) => Ok(None),
        Ok(pb::CallerNumberSelection::DefaultNumber) => Ok(Some(CallerSelection::DefaultNumber)),
        Ok(pb::CallerNumberSelection::RoundRobin) => Ok(Some(CallerSelection::RoundRobin)),
        Ok(pb::CallerNumberSelection::Random) => Ok(Some(CallerSelection::Random)),
        Err(_) => Err(GwError::invalid(
            "caller_number_selection",
            format!("unknown value {v}"),
        )),
    }
}

fn mode_from_pb(v: i32) -> Result<Option<CallMode>, GwError> {
    match pb::CallMode::try_from(v) {
        Ok(pb::CallMode::Unspecified) => Ok(None),
        Ok(pb::CallMode::DoubleCall) => Ok(Some(CallMode::DoubleCall)),
        Ok(pb::CallMode::MakeCall) => Ok(Some(CallMode::MakeCall)),
        Err(_) => Err(GwError::invalid("call_mode", format!("unknown value {v}"))),
    }
}

fn encoding_from_pb(v: i32) -> Result<Option<ApiEncoding>, GwError> {
    match pb::ApiEncoding::try_from(v) {
        Ok(pb::ApiEncoding::Unspecified) => Ok(None),
        Ok(pb::ApiEncoding::FormUrlencoded) => Ok(Some(ApiEncoding::FormUrlencoded)),
        Ok(pb::ApiEncoding::Multipart) => Ok(Some(ApiEncoding::Multipart)),
        Err(_) => Err(GwError::invalid(
            "api_encoding",
            format!("unknown value {v}"),
        )),
    }
}

fn credentials_from_pb(c: Option<pb::Credentials>) -> Result<Option<Credentials>, GwError> {
    let Some(c) = c else { return Ok(None) };
    match c.kind {
        None => Err(GwError::invalid("credentials", "give access_token or app")),
        Some(pb::credentials::Kind::AccessToken(t)) => {
            Ok(Some(Credentials::AccessToken(SecretString::from(t))))
        }
        Some(pb::credentials::Kind::App(a)) => Ok(Some(Credentials::App {
            app_id: a.app_id,
            access_key: SecretString::from(a.access_key),
        })),
    }
}

fn fields_from_input(c: pb::ConfigInput) -> Result<ConfigFields, GwError> {
    Ok(ConfigFields {
        supplier_id: Some(c.supplier_id),
        api_url: Some(c.api_url),
        credentials: credentials_from_pb(c.credentials)?,
        caller_number_pool: Some(c.caller_number_pool),
        default_caller_number: opt_text(c.default_caller_number),
        caller_selection: selection_from_pb(c.caller_number_selection)?,
        call_mode: mode_from_pb(c.call_mode)?,
        destination_prefix: Some(c.destination_prefix),
        max_concurrent_calls: c.max_concurrent_calls,
        call_timeout_seconds: c.call_timeout_seconds,
        api_timeout_ms: c.api_timeout_ms,
        allocation_strategy: strategy_from_pb("allocation_strategy", c.allocation_strategy)?,
        lease_ttl_seconds: c.lease_ttl_seconds,
        cooldown_seconds: c.cooldown_seconds,
        callback_secret: opt_text(c.callback_secret).map(SecretString::from),
        callback_ip_allowlist: Some(c.callback_ip_allowlist),
        callback_time_zone: opt_text(c.callback_time_zone),
        is_active: c.is_active,
        phone_region: opt_text(c.phone_region),
        api_encoding: encoding_from_pb(c.api_encoding)?,
        allowed_number_types: Some(number_types_from_pb(&c.allowed_number_types)?),
    })
}

fn number_types_from_pb(v: &[i32]) -> Result<Vec<NumberKind>, GwError> {
    v.iter()
        .map(|t| match pb::NumberType::try_from(*t) {
            Ok(pb::NumberType::PremiumRate) => Ok(NumberKind::PremiumRate),
            Ok(pb::NumberType::Satellite) => Ok(NumberKind::Satellite),
            Ok(pb::NumberType::InternationalNetwork) => Ok(NumberKind::InternationalNetwork),
            Ok(pb::NumberType::PersonalNumber) => Ok(NumberKind::PersonalNumber),
            Ok(pb::NumberType::Unspecified) | Err(_) => Err(GwError::invalid(
                "allowed_number_types",
                format!("unknown number type {t}"),
            )),
        })
        .collect()
}

fn number_type_to_pb(k: NumberKind) -> pb::NumberType {
    match k {
        NumberKind::PremiumRate => pb::NumberType::PremiumRate,
        NumberKind::Satellite => pb::NumberType::Satellite,
        NumberKind::InternationalNetwork => pb::NumberType::InternationalNetwork,
        NumberKind::PersonalNumber => pb::NumberType::PersonalNumber,
        NumberKind::Regular => pb::NumberType::Unspecified,
    }
}

fn fields_from_update(u: pb::UpdateConfigRequest) -> Result<ConfigFields, GwError> {
    Ok(ConfigFields {
        supplier_id: u.supplier_id,
        api_url: u.api_url,
        credentials: credentials_from_pb(u.credentials)?,
        caller_number_pool: u.caller_number_pool.map(|c| c.numbers),
        default_caller_number: u.default_caller_number,
        caller_selection: u
            .caller_number_selection
            .map(selection_from_pb)
            .transpose()?
            .flatten(),
        call_mode: u.call_mode.map(mode_from_pb).transpose()?.flatten(),
        destination_prefix: u.destination_prefix,
        max_concurrent_calls: u.max_concurrent_calls,
        call_timeout_seconds: u.call_timeout_seconds,
        api_timeout_ms: u.api_timeout_ms,
        allocation_strategy: u
            .allocation_strategy
            .map(|v| strategy_from_pb("allocation_strategy", v))
            .transpose()?
            .flatten(),
        lease_ttl_seconds: u.lease_ttl_seconds,
        cooldown_seconds: u.cooldown_seconds,
        callback_secret: u.callback_secret.map(SecretString::from),
        callback_ip_allowlist: u.callback_ip_allowlist.map(|l| l.cidrs),
        callback_time_zone: u.callback_time_zone,
        is_active: u.is_active,
        phone_region: u.phone_region,
        api_encoding: u.api_encoding.map(encoding_from_pb).transpose()?.flatten(),
        allowed_number_types: u
            .allowed_number_types
            .map(|l| number_types_from_pb(&l.types))
            .transpose()?,
    })
}

fn config_to_pb(c: &TenantConfig, generated: Option<&SecretString>) -> pb::TenantConfig {
    let credentials = match &c.credentials {
        Credentials::AccessToken(t) => pb::CredentialsView {
            mode: "access_token".into(),
            access_token: Some(secret_view(t)),
            app_id: String::new(),
            access_key: None,
        },
        Credentials::App { app_id, access_key } => pb::CredentialsView {
            mode: "app".into(),
            access_token: None,
            app_id: app_id.clone(),
            access_key: Some(secret_view(access_key)),
        },
    };
    pb::TenantConfig {
        config_id: c.config_id.to_string(),
        tenant_id: c.tenant_id.as_str().to_owned(),
        supplier_id: c.supplier_id.clone(),
        api_url: c.api_url.clone(),
        credentials: Some(credentials),
        caller_number_pool: c
            .caller_number_pool
            .iter()
            .map(|p| p.e164().to_owned())
            .collect(),
        default_caller_number: c.default_caller_number.e164().to_owned(),
        caller_number_selection: match c.caller_selection {
            CallerSelection::DefaultNumber => pb::CallerNumberSelection::DefaultNumber,
            CallerSelection::RoundRobin => pb::CallerNumberSelection::RoundRobin,
            CallerSelection::Random => pb::CallerNumberSelection::Random,
        }
        .into(),
        call_mode: match c.call_mode {
            CallMode::DoubleCall => pb::CallMode::DoubleCall,
            CallMode::MakeCall => pb::CallMode::MakeCall,
        }
        .into(),
        destination_prefix: c.destination_prefix.clone(),
        max_concurrent_calls: c.max_concurrent_calls,
        call_timeout_seconds: c.call_timeout_seconds,
        api_timeout_ms: c.api_timeout_ms,
        allocation_strategy: strategy_to_pb(c.allocation_strategy).into(),
        lease_ttl_seconds: c.lease_ttl_seconds,
        cooldown_seconds: c.cooldown_seconds,
        callback_secret: Some(secret_view(&c.callback_secret)),
        callback_ip_allowlist: c
            .callback_ip_allowlist
            .iter()
            .map(ToString::to_string)
            .collect(),
        callback_time_zone: c.callback_time_zone.name().to_owned(),
        is_active: c.is_active,
        phone_region: c.phone_region.as_ref().to_owned(),
        api_encoding: match c.api_encoding {
            ApiEncoding::FormUrlencoded => pb::ApiEncoding::FormUrlencoded,
            ApiEncoding::Multipart => pb::ApiEncoding::Multipart,
        }
        .into(),
        version: u64::try_from(c.version).unwrap_or(0),
        created_at: Some(ts(c.created_at)),
        updated_at: Some(ts(c.updated_at)),
        allowed_number_types: c
            .allowed_number_types
            .iter()
            .map(|k| number_type_to_pb(*k).into())
            .collect(),
        new_callback_secret: generated
            .map(|s| s.expose_secret().to_owned())
            .unwrap_or_default(),
    }
}

fn version_of(v: u64) -> Result<i64, GwError> {
    i64::try_from(v).map_err(|_| GwError::invalid("version", "is out of range"))
}

#[tonic::async_trait]
impl pb::tenant_configs_server::TenantConfigs for ConfigsGrpc {
    async fn create_config(
        &self,
        req: Request<pb::CreateConfigRequest>,
    ) -> Result<Response<pb::TenantConfig>, Status> {
        let p = Principal::from_request(&req)?;
        let input = req.into_inner().config.unwrap_or_default();
        done(
            async {
                let tenant = tenant_of(&p, &input.tenant_id)?;
                let fields = fields_from_input(input)?;
                let (cfg, generated) = self.configs.create(tenant, fields).await?;
                Ok(config_to_pb(&cfg, generated.as_ref()))
            }
            .await,
        )
    }

    async fn get_config(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::TenantConfig>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                Ok(config_to_pb(&self.configs.get(&tenant).await?, None))
            }
            .await,
        )
    }

    async fn get_config_by_id(
        &self,
        req: Request<pb::GetConfigByIdRequest>,
    ) -> Result<Response<pb::TenantConfig>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let id = parse_uuid("config_id", &r.config_id)?;
                let cfg = self.configs.get_by_id(id).await?;
                tenant_of(&p, cfg.tenant_id.as_str())?;
                Ok(config_to_pb(&cfg, None))
            }
            .await,
        )
    }

    async fn update_config(
        &self,
        req: Request<pb::UpdateConfigRequest>,
    ) -> Result<Response<pb::TenantConfig>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let version = version_of(r.version)?;
                let regenerate = r.regenerate_callback_secret;
                let fields = fields_from_update(r)?;
                let (cfg, generated) = self
                    .configs
                    .update(&tenant, version, fields, regenerate)
                    .await?;
                Ok(config_to_pb(&cfg, generated.as_ref()))
            }
            .await,
        )
    }

    async fn delete_config(
        &self,
        req: Request<pb::DeleteConfigRequest>,
    ) -> Result<Response<pb::DeleteConfigResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                Ok(pb::DeleteConfigResponse {
                    calls_ended: self.configs.delete(&tenant, r.force).await?,
                    deleted: true,
                })
            }
            .await,
        )
    }

    async fn toggle_config(
        &self,
        req: Request<pb::ToggleConfigRequest>,
    ) -> Result<Response<pb::TenantConfig>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                Ok(config_to_pb(
                    &self.configs.toggle(&tenant, version_of(r.version)?).await?,
                    None,
                ))
            }
            .await,
        )
    }

    async fn test_connection(
        &self,
        req: Request<pb::TestConnectionRequest>,
    ) -> Result<Response<pb::TestConnectionResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let t = self.configs.test_connection(&tenant).await?;
                Ok(pb::TestConnectionResponse {
                    ok: t.ok,
                    method: t.method.into(),
                    code: t.code,
                    message: t.message,
                    latency_ms: t.latency_ms,
                    company_name: t.company_name,
                    extension_count: t.extension_count,
                    registered_count: t.registered_count,
                    pool_checked: t.pool_checked,
                    pool_check_error: t.pool_check_error,
                    unknown_to_infinity: t.unknown_to_infinity,
                    unregistered: t.unregistered,
                })
            }
            .await,
        )
    }
}

#[tonic::async_trait]
impl pb::tenant_policies_server::TenantPolicies for ConfigsGrpc {
    async fn get_tenant_policy(
        &self,
        req: Request<pb::GetTenantPolicyRequest>,
    ) -> Result<Response<pb::TenantPolicy>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let policy = self.configs.policy(&tenant).await?;
                Ok(pb::TenantPolicy {
                    tenant_id: tenant.as_str().to_owned(),
                    active: policy.active,
                    config_id: policy.config_id.to_string(),
                    default_strategy: strategy_to_pb(policy.strategy).into(),
                    max_concurrent_calls: policy.max_concurrent_calls,
                    lease_ttl_seconds: policy.lease_ttl_seconds,
                    cooldown_seconds: policy.cooldown_seconds,
                })
            }
            .await,
        )
    }
}
