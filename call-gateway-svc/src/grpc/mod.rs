//! The gRPC transport: protobuf <-> domain, tenant scopes, and the one mapping from
//! [`GwError`] to `tonic::Status`. One handler per service, each holding the domain service it
//! calls: [`ConfigsGrpc`] (TenantConfigs and TenantPolicies), [`CollectorsGrpc`],
//! [`CallsGrpc`], [`ComplianceGrpc`] (CompliancePolicies). Handlers convert and call; the rules live in [`crate::service`].

mod calls;
mod collectors;
mod compliance;
mod configs;

pub use calls::{CallsGrpc, event_to_pb};
pub use collectors::CollectorsGrpc;
pub use compliance::ComplianceGrpc;
pub use configs::ConfigsGrpc;

use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::{Principal, Role};
use cco_platform::grpc::{INTERNAL_MESSAGE, cap_message, status};
use cco_platform::validate::quote;
use tonic::{Code, Response, Status};

use crate::domain::compliance::Refusal;
use crate::domain::config::Strategy;
use crate::domain::{GwError, TenantId};

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
            GwError::Contention(m) => status(Code::Aborted, &m),
            GwError::Unimplemented(m) => status(Code::Unimplemented, &m),
            GwError::ResourceExhausted(m) => status(Code::ResourceExhausted, &m),
            GwError::OutOfRange(m) => status(Code::OutOfRange, &m),
            GwError::WithCall { call_id, inner } => {
                let inner = Status::from(*inner);
                let message = cap_message(&format!("{} (call_id {call_id})", inner.message()));
                let mut md = inner.metadata().clone();
                if let Ok(v) = call_id.parse() {
                    md.insert("x-call-id", v);
                }
                Status::with_metadata(inner.code(), message, md)
            }
            GwError::Refused(r) => refusal_status(&r),
            GwError::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                Status::internal(INTERNAL_MESSAGE)
            }
        }
    }
}

/// The `google.rpc.ErrorInfo` domain of the compliance gate's refusals.
pub const ERROR_DOMAIN: &str = "cco.infinity";

/// A compliance refusal as `FAILED_PRECONDITION` with an `ErrorInfo` (reason, rule inputs) and,
/// when a later time passes, a `RetryInfo` with the delay until then.
fn refusal_status(r: &Refusal) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let metadata: std::collections::HashMap<String, String> = r
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut details = ErrorDetails::with_error_info(r.reason.as_str(), ERROR_DOMAIN, metadata);
    if let Some(at) = r.retry_at {
        let delay = (at - chrono::Utc::now()).to_std().unwrap_or_default();
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(
        Code::FailedPrecondition,
        cap_message(&format!(
            "refused by compliance ({}): {}",
            r.reason.as_str(),
            r.message
        )),
        details,
    )
}

/// Which roles may call each method. Service keys: admin, caller, peer; people (JWTs): admin
/// (everything of their tenants), supervisor (reads everything of their tenants, hangs up),
/// collector (places, reads and watches their own calls; reads their own collector record;
/// the handlers hold them to their own collector id).
pub fn roles(path: &str) -> Option<&'static [Role]> {
    use Role::{Admin, Caller, Collector, Peer, Supervisor};
    const ADMIN: &[Role] = &[Admin];
    const ADMIN_OR_SUPERVISOR: &[Role] = &[Admin, Supervisor];
    const POLICY: &[Role] = &[Admin, Peer, Supervisor];
    const PLACE: &[Role] = &[Admin, Caller, Collector];
    const READ_CALLS: &[Role] = &[Admin, Caller, Supervisor, Collector];
    const HANG_UP: &[Role] = &[Admin, Caller, Supervisor];
    const READ_COLLECTORS: &[Role] = &[Admin, Caller, Supervisor];
    if let Some(m) = path.strip_prefix("/cco.infinity.gateway.v1.TenantConfigs/") {
        match m {
            "GetConfig" | "GetConfigById" => Some(ADMIN_OR_SUPERVISOR),
            _ => Some(ADMIN),
        }
    } else if path.starts_with("/cco.infinity.gateway.v1.TenantPolicies/") {
        Some(POLICY)
    } else if let Some(m) = path.strip_prefix("/cco.infinity.gateway.v1.CompliancePolicies/") {
        match m {
            "GetPolicy"
            | "GetPreset"
            | "CheckDoNotCall"
            | "GrantOverride"
            | "ListComplianceDecisions" => Some(ADMIN_OR_SUPERVISOR),
            _ => Some(ADMIN),
        }
    } else if let Some(m) = path.strip_prefix("/cco.infinity.gateway.v1.Calls/") {
        match m {
            "MakeCall" => Some(PLACE),
            "CheckCall" => Some(READ_CALLS),
            "HangUp" => Some(HANG_UP),
            _ => Some(READ_CALLS),
        }
    } else if let Some(m) = path.strip_prefix("/cco.infinity.gateway.v1.Collectors/") {
        match m {
            "GetCollector" => Some(READ_CALLS),
            "ListCollectors" => Some(READ_COLLECTORS),
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

/// Fails unless the principal may act as `collector` (a collector only as themselves).
fn own(p: &Principal, field: &'static str, collector: &str) -> Result<(), GwError> {
    if p.may_act_as(collector) {
        Ok(())
    } else {
        Err(GwError::PermissionDenied(format!(
            "{field}: a collector acts only for themselves; this belongs to another collector"
        )))
    }
}

fn done<T>(r: Result<T, GwError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

/// A timestamp field, if set; the error names the field.
fn from_ts(
    field: &'static str,
    t: Option<cco_contracts::pbjson_types::Timestamp>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, GwError> {
    t.map(|t| {
        cco_contracts::time::from_timestamp(&t)
            .ok_or_else(|| GwError::invalid(field, "is not a valid timestamp"))
    })
    .transpose()
}

/// A page token for lists ordered by (time, id), newest first: opaque to clients.
fn time_token(t: chrono::DateTime<chrono::Utc>, id: &str) -> String {
    hex::encode(format!("{}|{id}", t.timestamp_micros()))
}

/// Reads a [`time_token`] back; the error names the list it must come from.
fn time_token_decode(
    token: &str,
    list: &str,
) -> Result<Option<(chrono::DateTime<chrono::Utc>, String)>, GwError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || GwError::invalid("page_token", format!("is not a token returned by {list}"));
    let s = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let (micros, id) = s.split_once('|').ok_or_else(bad)?;
    let t = chrono::DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?)
        .ok_or_else(bad)?;
    Ok(Some((t, id.to_owned())))
}

fn opt_text(v: String) -> Option<String> {
    (!v.is_empty()).then_some(v)
}

pub(crate) fn strategy_to_pb(s: Strategy) -> pb::AllocationStrategy {
    match s {
        Strategy::Lru => pb::AllocationStrategy::Lru,
        Strategy::RoundRobin => pb::AllocationStrategy::RoundRobin,
        Strategy::CollectorAffinity => pb::AllocationStrategy::CollectorAffinity,
    }
}

pub(crate) fn strategy_from_pb(field: &'static str, v: i32) -> Result<Option<Strategy>, GwError> {
    match pb::AllocationStrategy::try_from(v) {
        Ok(pb::AllocationStrategy::Unspecified) => Ok(None),
        Ok(pb::AllocationStrategy::Lru) => Ok(Some(Strategy::Lru)),
        Ok(pb::AllocationStrategy::RoundRobin) => Ok(Some(Strategy::RoundRobin)),
        Ok(pb::AllocationStrategy::CollectorAffinity) => Ok(Some(Strategy::CollectorAffinity)),
        Err(_) => Err(GwError::invalid(field, format!("unknown strategy {v}"))),
    }
}
