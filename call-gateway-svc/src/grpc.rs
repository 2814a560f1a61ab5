//! The gRPC transport: protobuf <-> domain, tenant scopes, and the one mapping from
//! [`GwError`] to `tonic::Status`.

use cco_contracts::gateway::v1 as pb;
use cco_contracts::time::{to_timestamp as ts, to_valid_timestamp};
use cco_platform::auth::{Principal, Role};
use cco_platform::grpc::{INTERNAL_MESSAGE, cap_message, status};
use cco_platform::mask::secret_tail;
use cco_platform::validate::quote;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use tonic::{Code, Request, Response, Status};

use crate::calls::MakeCallInput;
use crate::domain::collector::Collector;
use crate::domain::config::{
    ApiEncoding, CallMode, CallerSelection, ConfigFields, Credentials, Strategy, TenantConfig,
};
use crate::domain::phone::NumberKind;
use crate::domain::{CaseId, CollectorId, GwError, IdempotencyKey, TenantId, parse_uuid};
use crate::service::Gateway;
use crate::store::calls::{RecordFilter, RecordRow};

impl From<GwError> for Status {
    fn from(e: GwError) -> Self {
        match e {
            GwError::InvalidArgument { .. } => status(Code::InvalidArgument, &e.to_string()),
            GwError::NotFound(m) => status(Code::NotFound, &m),
            GwError::AlreadyExists(m) => status(Code::AlreadyExists, &m),
            GwError::Aborted(m) => status(Code::Aborted, &m),
            GwError::FailedPrecondition(m) => status(Code::FailedPrecondition, &m),
            GwError::PermissionDenied(m) => status(Code::PermissionDenied, &m),
            GwError::Unavailable(m) => status(Code::Unavailable, &m),
            GwError::Unimplemented(m) => status(Code::Unimplemented, &m),
            GwError::ResourceExhausted(m) => status(Code::ResourceExhausted, &m),
            GwError::WithCall { call_id, inner } => {
                let inner = Status::from(*inner);
                let message = cap_message(&format!("{} (call_id {call_id})", inner.message()));
                let mut md = inner.metadata().clone();
                if let Ok(v) = call_id.parse() {
                    md.insert("x-call-id", v);
                }
                Status::with_metadata(inner.code(), message, md)
            }
            GwError::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                Status::internal(INTERNAL_MESSAGE)
            }
        }
    }
}

/// Which roles may call each method.
pub fn roles(path: &str) -> Option<&'static [Role]> {
    const ADMIN: &[Role] = &[Role::Admin];
    const ADMIN_OR_PEER: &[Role] = &[Role::Admin, Role::Peer];
    const ADMIN_OR_CALLER: &[Role] = &[Role::Admin, Role::Caller];
    if path.starts_with("/cco.infinity.gateway.v1.TenantConfigs/") {
        Some(ADMIN)
    } else if path.starts_with("/cco.infinity.gateway.v1.TenantPolicies/") {
        Some(ADMIN_OR_PEER)
    } else if path.starts_with("/cco.infinity.gateway.v1.Calls/") {
        Some(ADMIN_OR_CALLER)
    } else if let Some(m) = path.strip_prefix("/cco.infinity.gateway.v1.Collectors/") {
        match m {
            "GetCollector" | "ListCollectors" => Some(ADMIN_OR_CALLER),
            _ => Some(ADMIN),
        }
    } else {
        None
    }
}

fn tenant_of(p: &Principal, raw: &str) -> Result<TenantId, GwError> {
    let t = TenantId::parse("tenant_id", raw)?;
    if p.may_access(t.as_str()) {
        Ok(t)
    } else {
        Err(GwError::PermissionDenied(format!(
            "tenant_id: this API key is not allowed to access tenant {}",
            quote(raw)
        )))
    }
}

fn secret_view(s: &SecretString) -> pb::SecretView {
    let v = s.expose_secret();
    pb::SecretView {
        set: !v.is_empty(),
        mask: secret_tail(v),
    }
}

fn strategy_to_pb(s: Strategy) -> pb::AllocationStrategy {
    match s {
        Strategy::Lru => pb::AllocationStrategy::Lru,
        Strategy::RoundRobin => pb::AllocationStrategy::RoundRobin,
        Strategy::CollectorAffinity => pb::AllocationStrategy::CollectorAffinity,
    }
}

fn strategy_from_pb(field: &'static str, v: i32) -> Result<Option<Strategy>, GwError> {
    match pb::AllocationStrategy::try_from(v) {
        Ok(pb::AllocationStrategy::Unspecified) => Ok(None),
        Ok(pb::AllocationStrategy::Lru) => Ok(Some(Strategy::Lru)),
        Ok(pb::AllocationStrategy::RoundRobin) => Ok(Some(Strategy::RoundRobin)),
        Ok(pb::AllocationStrategy::CollectorAffinity) => Ok(Some(Strategy::CollectorAffinity)),
        Err(_) => Err(GwError::invalid(field, format!("unknown strategy {v}"))),
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

fn opt_text(v: String) -> Option<String> {
    (!v.is_empty()).then_some(v)
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

fn collector_to_pb(c: &Collector) -> pb::Collector {
    pb::Collector {
        tenant_id: c.tenant_id.as_str().to_owned(),
        collector_id: c.collector_id.as_str().to_owned(),
        callback_number: c
            .callback_number
            .as_ref()
            .map(|p| p.e164().to_owned())
            .unwrap_or_default(),
        display_name: c.display_name.clone(),
        active: c.active,
        last_extension_number: c.last_extension_number.clone().unwrap_or_default(),
        created_at: Some(ts(c.created_at)),
        updated_at: Some(ts(c.updated_at)),
    }
}

fn version_of(v: u64) -> Result<i64, GwError> {
    i64::try_from(v).map_err(|_| GwError::invalid("version", "is out of range"))
}

/// Serves TenantConfigs, TenantPolicies and Collectors.
#[derive(Clone, Debug)]
pub struct GatewayGrpc {
    svc: Gateway,
}

impl GatewayGrpc {
    /// Wraps the service.
    pub fn new(svc: Gateway) -> Self {
        Self { svc }
    }
}

fn done<T>(r: Result<T, GwError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl pb::tenant_configs_server::TenantConfigs for GatewayGrpc {
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
                let (cfg, generated) = self.svc.create_config(tenant, fields).await?;
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
                Ok(config_to_pb(&self.svc.config(&tenant).await?, None))
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
                let cfg = self.svc.config_by_id(id).await?;
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
                    .svc
                    .update_config(&tenant, version, fields, regenerate)
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
                    calls_ended: self.svc.delete_config(&tenant, r.force).await?,
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
                    &self
                        .svc
                        .toggle_config(&tenant, version_of(r.version)?)
                        .await?,
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
                let t = self.svc.test_connection(&tenant).await?;
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
impl pb::tenant_policies_server::TenantPolicies for GatewayGrpc {
    async fn get_tenant_policy(
        &self,
        req: Request<pb::GetTenantPolicyRequest>,
    ) -> Result<Response<pb::TenantPolicy>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let policy = self.svc.policy(&tenant).await?;
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

fn page_token_decode(token: &str) -> Result<Option<String>, GwError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || GwError::invalid("page_token", "is not a token returned by ListCollectors");
    let s = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    CollectorId::parse("page_token", &s).map_err(|_| bad())?;
    Ok(Some(s))
}

#[tonic::async_trait]
impl pb::collectors_server::Collectors for GatewayGrpc {
    async fn upsert_collector(
        &self,
        req: Request<pb::UpsertCollectorRequest>,
    ) -> Result<Response<pb::Collector>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let collector = CollectorId::parse("collector_id", &r.collector_id)?;
                let c = self
                    .svc
                    .upsert_collector(
                        &tenant,
                        &collector,
                        &r.callback_number,
                        &r.display_name,
                        r.active.unwrap_or(true),
                    )
                    .await?;
                Ok(collector_to_pb(&c))
            }
            .await,
        )
    }

    async fn get_collector(
        &self,
        req: Request<pb::GetCollectorRequest>,
    ) -> Result<Response<pb::Collector>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let collector = CollectorId::parse("collector_id", &r.collector_id)?;
                Ok(collector_to_pb(
                    &self.svc.collector(&tenant, &collector).await?,
                ))
            }
            .await,
        )
    }

    async fn list_collectors(
        &self,
        req: Request<pb::ListCollectorsRequest>,
    ) -> Result<Response<pb::ListCollectorsResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let after = page_token_decode(&r.page_token)?;
                let (list, next) = self
                    .svc
                    .list_collectors(&tenant, after, r.active, r.page_size)
                    .await?;
                Ok(pb::ListCollectorsResponse {
                    collectors: list.iter().map(collector_to_pb).collect(),
                    next_page_token: next.map(hex::encode).unwrap_or_default(),
                })
            }
            .await,
        )
    }

    async fn delete_collector(
        &self,
        req: Request<pb::DeleteCollectorRequest>,
    ) -> Result<Response<pb::DeleteCollectorResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let collector = CollectorId::parse("collector_id", &r.collector_id)?;
                self.svc.delete_collector(&tenant, &collector).await?;
                Ok(pb::DeleteCollectorResponse { deleted: true })
            }
            .await,
        )
    }
}

fn call_status_to_pb(s: &str) -> pb::CallStatus {
    match s {
        "dialing" => pb::CallStatus::Dialing,
        "ringing" => pb::CallStatus::Ringing,
        "unknown" => pb::CallStatus::Unknown,
        "completed" => pb::CallStatus::Completed,
        "failed" => pb::CallStatus::Failed,
        "expired" => pb::CallStatus::Expired,
        _ => pb::CallStatus::Unspecified,
    }
}

fn call_status_from_pb(v: i32) -> Result<Option<&'static str>, GwError> {
    Ok(match pb::CallStatus::try_from(v) {
        Ok(pb::CallStatus::Unspecified) => None,
        Ok(pb::CallStatus::Dialing) => Some("dialing"),
        Ok(pb::CallStatus::Ringing) => Some("ringing"),
        Ok(pb::CallStatus::Unknown) => Some("unknown"),
        Ok(pb::CallStatus::Completed) => Some("completed"),
        Ok(pb::CallStatus::Failed) => Some("failed"),
        Ok(pb::CallStatus::Expired) => Some("expired"),
        Err(_) => {
            return Err(GwError::invalid(
                "status",
                format!("unknown call status {v}"),
            ));
        }
    })
}

fn call_result_to_pb(s: Option<&str>) -> pb::CallResult {
    match s {
        Some("connected") => pb::CallResult::Connected,
        Some("no_answer") => pb::CallResult::NoAnswer,
        Some("busy") => pb::CallResult::Busy,
        Some("rejected") => pb::CallResult::Rejected,
        Some("cancelled") => pb::CallResult::Cancelled,
        Some("failed") => pb::CallResult::Failed,
        Some("not_connected") => pb::CallResult::NotConnected,
        _ => pb::CallResult::Unspecified,
    }
}

fn record_to_pb(r: &RecordRow) -> pb::CommunicationRecord {
    let u32_of = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    pb::CommunicationRecord {
        call_id: r.call_id.clone(),
        tenant_id: r.tenant_id.clone(),
        supplier_id: r.supplier_id.clone(),
        case_id: r.case_id.clone(),
        collector_id: r.collector_id.clone(),
        destination_number: r.destination_number.clone(),
        dialled_number: r.dialled_number.clone(),
        caller_number: r.caller_number.clone(),
        extension_number: r.extension_number.clone().unwrap_or_default(),
        lease_id: r.lease_id.clone().unwrap_or_default(),
        fencing_token: r
            .fencing_token
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(0),
        call_mode: r.call_mode.clone(),
        status: call_status_to_pb(&r.status).into(),
        result: call_result_to_pb(r.result.as_deref()).into(),
        start_time: r.start_time.and_then(to_valid_timestamp),
        answer_time: r.answer_time.and_then(to_valid_timestamp),
        end_time: r.end_time.and_then(to_valid_timestamp),
        talk_seconds: u32_of(r.talk_seconds),
        total_seconds: u32_of(r.total_seconds),
        hangup_cause: u32_of(r.hangup_cause),
        hangup_side: r.hangup_side.clone().unwrap_or_default(),
        record_url: r.record_url.clone().unwrap_or_default(),
        record_filename: r.record_filename.clone().unwrap_or_default(),
        custom_params: serde_json::from_str(&r.custom_params).unwrap_or_default(),
        infinity_uuid: r.infinity_uuid.clone().unwrap_or_default(),
        infinity_cdr_id: r
            .infinity_cdr_id
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
        error_code: r.error_code.clone().unwrap_or_default(),
        error_message: r.error_message.clone().unwrap_or_default(),
        idempotency_key: r.idempotency_key.clone().unwrap_or_default(),
        attempts: u32_of(Some(r.attempts)),
        raw_callback: r.raw_callback.clone().unwrap_or_default(),
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        lease_released: r.lease_released,
    }
}

fn from_ts(
    field: &'static str,
    t: Option<cco_contracts::pbjson_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, GwError> {
    t.map(|t| {
        cco_contracts::time::from_timestamp(&t)
            .ok_or_else(|| GwError::invalid(field, "is not a valid timestamp"))
    })
    .transpose()
}

fn call_page_decode(token: &str) -> Result<Option<(DateTime<Utc>, String)>, GwError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || GwError::invalid("page_token", "is not a token returned by ListCalls");
    let s = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let (micros, id) = s.split_once('|').ok_or_else(bad)?;
    let t = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok(Some((t, id.to_owned())))
}

fn call_page_encode(r: &RecordRow) -> String {
    hex::encode(format!("{}|{}", r.created_at.timestamp_micros(), r.call_id))
}

fn call_id_of(raw: &str) -> Result<String, GwError> {
    if raw.len() == 32
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(raw.to_owned())
    } else {
        Err(GwError::invalid(
            "call_id",
            format!("must be 32 lowercase hex characters, got {}", quote(raw)),
        ))
    }
}

#[tonic::async_trait]
impl pb::calls_server::Calls for GatewayGrpc {
    async fn make_call(
        &self,
        req: Request<pb::MakeCallRequest>,
    ) -> Result<Response<pb::MakeCallResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let input = MakeCallInput {
                    tenant: tenant_of(&p, &r.tenant_id)?,
                    collector: CollectorId::parse("collector_id", &r.collector_id)?,
                    case_id: CaseId::parse("case_id", &r.case_id)?,
                    destination: if r.destination_number.trim().is_empty() {
                        return Err(GwError::invalid("destination_number", "is required"));
                    } else {
                        r.destination_number
                    },
                    caller_number: opt_text(r.caller_number),
                    idempotency_key: if r.idempotency_key.is_empty() {
                        None
                    } else {
                        Some(IdempotencyKey::parse(
                            "idempotency_key",
                            &r.idempotency_key,
                        )?)
                    },
                    custom_params: r.custom_params.into_iter().collect(),
                    strategy: strategy_from_pb("strategy", r.strategy)?,
                };
                let (rec, replayed) = self.svc.make_call(input).await?;
                Ok(pb::MakeCallResponse {
                    call_id: rec.call_id.clone(),
                    extension_number: rec.extension_number.clone().unwrap_or_default(),
                    caller_number: rec.caller_number.clone(),
                    status: call_status_to_pb(&rec.status).into(),
                    infinity_code: if rec.status == "failed" {
                        rec.error_code.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    infinity_message: if rec.status == "failed" {
                        rec.error_message.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    replayed,
                })
            }
            .await,
        )
    }

    async fn get_call(
        &self,
        req: Request<pb::GetCallRequest>,
    ) -> Result<Response<pb::CommunicationRecord>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                Ok(record_to_pb(
                    &self.svc.call(&tenant, &call_id_of(&r.call_id)?).await?,
                ))
            }
            .await,
        )
    }

    async fn list_calls(
        &self,
        req: Request<pb::ListCallsRequest>,
    ) -> Result<Response<pb::ListCallsResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let limit = match r.page_size {
                    0 => 50,
                    n if n > 500 => {
                        return Err(GwError::invalid(
                            "page_size",
                            format!("must be at most 500, got {n}"),
                        ));
                    }
                    n => n,
                };
                let filter = RecordFilter {
                    tenant_id: tenant.as_str().to_owned(),
                    collector_id: opt_text(r.collector_id)
                        .map(|c| {
                            CollectorId::parse("collector_id", &c).map(|c| c.as_str().to_owned())
                        })
                        .transpose()?,
                    case_id: opt_text(r.case_id)
                        .map(|c| CaseId::parse("case_id", &c).map(|c| c.as_str().to_owned()))
                        .transpose()?,
                    status: call_status_from_pb(r.status)?.map(str::to_owned),
                    since: from_ts("since", r.since)?,
                    until: from_ts("until", r.until)?,
                    before: call_page_decode(&r.page_token)?,
                    limit: limit + 1,
                };
                let mut rows = self.svc.calls.list_records(&filter).await?;
                let next = if rows.len() > limit as usize {
                    rows.truncate(limit as usize);
                    rows.last().map(call_page_encode).unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(pb::ListCallsResponse {
                    calls: rows.iter().map(record_to_pb).collect(),
                    next_page_token: next,
                })
            }
            .await,
        )
    }

    async fn get_recording(
        &self,
        req: Request<pb::GetRecordingRequest>,
    ) -> Result<Response<pb::GetRecordingResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let (url, expires, source) = self
                    .svc
                    .recording(&tenant, &call_id_of(&r.call_id)?)
                    .await?;
                Ok(pb::GetRecordingResponse {
                    url,
                    expires,
                    source: source.into(),
                })
            }
            .await,
        )
    }

    async fn hang_up(
        &self,
        req: Request<pb::HangUpRequest>,
    ) -> Result<Response<pb::HangUpResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                Ok(pb::HangUpResponse {
                    message: self.svc.hang_up(&tenant, &call_id_of(&r.call_id)?).await?,
                })
            }
            .await,
        )
    }
}
