//! CompliancePolicies over gRPC: policies, do-not-call lists, overrides, decisions.

use cco_contracts::gateway::v1 as pb;
use cco_contracts::time::{to_timestamp as ts, to_valid_timestamp};
use cco_platform::auth::Principal;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use phonenumber::country::Id as Region;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{done, from_ts, tenant_of, time_token, time_token_decode};
use crate::domain::compliance::{
    Cap, DncEntry, DncReason, GLOBAL_SCOPE, Holiday, Outcome, PRESETS, Policy, Reason, Span,
    parse_prefix, weekday_name,
};
use crate::domain::phone::Phone;
use crate::domain::{CaseId, CollectorId, GwError, TenantId};
use crate::service::{Compliance, ImportReport, MAX_IMPORT_LINES, MAX_LINE_ERRORS, Tenants};
use crate::store::compliance::{DecisionFilter, StoredPolicy};

/// Serves CompliancePolicies.
#[derive(Clone, Debug)]
pub struct ComplianceGrpc {
    compliance: Compliance,
    tenants: Tenants,
}

impl ComplianceGrpc {
    /// Serves `compliance`; `tenants` gives each tenant's phone region (numbers in a tenant's
    /// list are read in it).
    pub fn new(compliance: Compliance, tenants: Tenants) -> Self {
        Self {
            compliance,
            tenants,
        }
    }

    /// The list a request names: a tenant the caller may access, or the global list (admin
    /// keys valid for every tenant only).
    fn scope(p: &Principal, raw: &str) -> Result<String, GwError> {
        if raw == GLOBAL_SCOPE {
            if p.tenants.is_some() {
                return Err(GwError::PermissionDenied(
                    "tenant_id: the global do-not-call list (\"*\") is written by admin keys valid for every tenant only".into(),
                ));
            }
            return Ok(GLOBAL_SCOPE.to_owned());
        }
        Ok(tenant_of(p, raw)?.as_str().to_owned())
    }

    /// The region numbers of `scope` are read in (`None`: the global list, international
    /// form only).
    async fn region(&self, scope: &str) -> Result<Option<Region>, GwError> {
        if scope == GLOBAL_SCOPE {
            return Ok(None);
        }
        let t = TenantId::parse("tenant_id", scope)?;
        Ok(Some(self.tenants.config(&t).await?.phone_region))
    }
}

/// A number or prefix of a do-not-call entry as stored digits.
fn entry_digits(raw: &str, prefix: bool, region: Option<Region>) -> Result<String, String> {
    if prefix {
        return parse_prefix(raw);
    }
    let phone = match region {
        Some(r) => Phone::parse(raw, r)?,
        None => {
            let t = raw.trim();
            if !(t.starts_with('+') || t.starts_with("00")) {
                return Err("global entries are written in international form (+...)".into());
            }
            // In international form the region is not used.
            Phone::parse(t, Region::US)?
        }
    };
    Ok(phone.e164().trim_start_matches('+').to_owned())
}

fn reason_from_pb(v: i32) -> Result<Option<DncReason>, GwError> {
    Ok(match pb::DoNotCallReason::try_from(v) {
        Ok(pb::DoNotCallReason::Unspecified) => None,
        Ok(pb::DoNotCallReason::CeaseContact) => Some(DncReason::CeaseContact),
        Ok(pb::DoNotCallReason::WrongNumber) => Some(DncReason::WrongNumber),
        Ok(pb::DoNotCallReason::AttorneyRepresented) => Some(DncReason::AttorneyRepresented),
        Ok(pb::DoNotCallReason::Complaint) => Some(DncReason::Complaint),
        Err(_) => return Err(GwError::invalid("reason", format!("unknown reason {v}"))),
    })
}

fn reason_to_pb(r: DncReason) -> pb::DoNotCallReason {
    match r {
        DncReason::CeaseContact => pb::DoNotCallReason::CeaseContact,
        DncReason::WrongNumber => pb::DoNotCallReason::WrongNumber,
        DncReason::AttorneyRepresented => pb::DoNotCallReason::AttorneyRepresented,
        DncReason::Complaint => pb::DoNotCallReason::Complaint,
    }
}

fn entry_to_pb(e: &DncEntry) -> pb::DoNotCallEntry {
    pb::DoNotCallEntry {
        tenant_id: e.scope.clone(),
        number: format!("+{}", e.digits),
        prefix: e.prefix,
        reason: reason_to_pb(e.reason).into(),
        note: e.note.clone(),
        expires_at: e.expires_at.and_then(to_valid_timestamp),
        created_at: Some(ts(e.created_at)),
    }
}

/// An entry's expiry must lie ahead (an expired entry applies to nothing) and within what
/// every backend stores (before the year 9999).
fn check_expiry(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<(), String> {
    match t {
        Some(t) if t <= now => Err(format!(
            "expires_at {} is not in the future",
            t.to_rfc3339()
        )),
        Some(t) if t.year() >= 9999 => Err("expires_at must be before the year 9999".into()),
        _ => Ok(()),
    }
}

fn check_note(note: &str) -> Result<(), String> {
    cco_platform::validate::text(note, 256).map_err(|m| format!("note: {m}"))
}

fn cap_from_pb(c: Option<pb::FrequencyCap>) -> Option<Cap> {
    c.map(|c| Cap {
        max_attempts: c.max_attempts,
        window_seconds: c.window_seconds,
    })
}

fn cap_to_pb(c: Option<Cap>) -> Option<pb::FrequencyCap> {
    c.map(|c| pb::FrequencyCap {
        max_attempts: c.max_attempts,
        window_seconds: c.window_seconds,
    })
}

fn policy_from_pb(p: pb::CompliancePolicy) -> Result<Policy, GwError> {
    let windows =
        if p.restrict_hours {
            let mut w: Vec<Vec<Span>> = vec![Vec::new(); 7];
            for d in &p.days {
                let i = match pb::Weekday::try_from(d.day) {
                    Ok(pb::Weekday::Unspecified) | Err(_) => {
                        return Err(GwError::invalid(
                            "days",
                            format!("unknown weekday {}", d.day),
                        ));
                    }
                    Ok(day) => usize::try_from(day as i32 - 1).unwrap_or(0),
                };
                let slot = w
                    .get_mut(i)
                    .ok_or_else(|| GwError::invalid("days", "unknown weekday"))?;
                if !slot.is_empty() {
                    return Err(GwError::invalid(
                        "days",
                        format!("{} is listed twice", weekday_name(i)),
                    ));
                }
                for t in &d.windows {
                    slot.push(Span::parse(&t.start, &t.end).map_err(|m| {
                        GwError::invalid("days", format!("{}: {m}", weekday_name(i)))
                    })?);
                }
            }
            Some(w)
        } else {
            if !p.days.is_empty() {
                return Err(GwError::invalid(
                    "days",
                    "given without restrict_hours: set restrict_hours to apply them",
                ));
            }
            None
        };
    let holidays = p
        .holidays
        .iter()
        .map(|h| {
            Ok(Holiday {
                date: NaiveDate::parse_from_str(&h.date, "%Y-%m-%d").map_err(|_| {
                    GwError::invalid(
                        "holidays",
                        format!(
                            "{} is not a date as YYYY-MM-DD",
                            cco_platform::validate::quote(&h.date)
                        ),
                    )
                })?,
                name: h.name.clone(),
            })
        })
        .collect::<Result<Vec<_>, GwError>>()?;
    Ok(Policy {
        preset: p.preset,
        windows,
        default_zone: (!p.default_time_zone.is_empty()).then_some(p.default_time_zone),
        holidays,
        number_cap: cap_from_pb(p.number_cap),
        case_cap: cap_from_pb(p.case_cap),
        collector_cap: cap_from_pb(p.collector_cap),
        case_cooldown_seconds: (p.case_cooldown_seconds > 0).then_some(p.case_cooldown_seconds),
        allow_overrides: p.allow_overrides,
    })
}

fn policy_to_pb(
    tenant: &str,
    p: &Policy,
    version: i64,
    updated_at: Option<DateTime<Utc>>,
) -> pb::CompliancePolicy {
    pb::CompliancePolicy {
        tenant_id: tenant.to_owned(),
        preset: p.preset.clone(),
        restrict_hours: p.windows.is_some(),
        days: p
            .windows
            .iter()
            .flat_map(|w| w.iter().enumerate())
            .map(|(i, spans)| pb::DayWindows {
                day: i32::try_from(i + 1).unwrap_or(0),
                windows: spans
                    .iter()
                    .map(|s| pb::TimeWindow {
                        start: Span::hhmm(s.start),
                        end: Span::hhmm(s.end),
                    })
                    .collect(),
            })
            .collect(),
        default_time_zone: p.default_zone.clone().unwrap_or_default(),
        holidays: p
            .holidays
            .iter()
            .map(|h| pb::Holiday {
                date: h.date.format("%Y-%m-%d").to_string(),
                name: h.name.clone(),
            })
            .collect(),
        number_cap: cap_to_pb(p.number_cap),
        case_cap: cap_to_pb(p.case_cap),
        collector_cap: cap_to_pb(p.collector_cap),
        case_cooldown_seconds: p.case_cooldown_seconds.unwrap_or(0),
        allow_overrides: p.allow_overrides,
        version,
        updated_at: updated_at.map(ts),
    }
}

fn stored_to_pb(tenant: &str, s: Option<StoredPolicy>) -> pb::CompliancePolicy {
    match s {
        Some(s) => policy_to_pb(tenant, &s.policy, s.version, Some(s.updated_at)),
        None => policy_to_pb(tenant, &Policy::default(), 0, None),
    }
}

/// One import line: `number[,reason[,expires_at[,note]]]`.
fn import_line(
    line: &str,
    scope: &str,
    region: Option<Region>,
    default_reason: Option<DncReason>,
    now: DateTime<Utc>,
) -> Result<DncEntry, String> {
    let mut parts = line.splitn(4, ',').map(str::trim);
    let raw = parts.next().unwrap_or_default();
    let (raw, prefix) = match raw.strip_suffix('*') {
        Some(r) => (r, true),
        None => (raw, false),
    };
    let digits = entry_digits(raw, prefix, region)?;
    let reason = match parts.next().filter(|s| !s.is_empty()) {
        Some(r) => DncReason::parse(r).ok_or_else(|| {
            format!("{r:?} is not a reason: cease_contact, wrong_number, attorney_represented or complaint")
        })?,
        None => default_reason.ok_or("no reason given and no default_reason")?,
    };
    let expires_at = match parts.next().filter(|s| !s.is_empty()) {
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|_| format!("{t:?} is not an RFC 3339 time"))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    check_expiry(expires_at, now)?;
    let note = parts.next().unwrap_or_default().to_owned();
    check_note(&note)?;
    Ok(DncEntry {
        scope: scope.to_owned(),
        digits,
        prefix,
        reason,
        note,
        expires_at,
        created_at: now,
    })
}

#[tonic::async_trait]
impl pb::compliance_policies_server::CompliancePolicies for ComplianceGrpc {
    async fn get_policy(
        &self,
        req: Request<pb::GetCompliancePolicyRequest>,
    ) -> Result<Response<pb::CompliancePolicy>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                Ok(stored_to_pb(
                    tenant.as_str(),
                    self.compliance.policy(&tenant).await?,
                ))
            }
            .await,
        )
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetCompliancePolicyRequest>,
    ) -> Result<Response<pb::CompliancePolicy>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let policy = r
                    .policy
                    .ok_or_else(|| GwError::invalid("policy", "is required"))?;
                let tenant = tenant_of(&p, &policy.tenant_id)?;
                let policy = policy_from_pb(policy)?;
                self.compliance
                    .set_policy(&tenant, policy, r.expected_version)
                    .await?;
                Ok(stored_to_pb(
                    tenant.as_str(),
                    self.compliance.policy(&tenant).await?,
                ))
            }
            .await,
        )
    }

    async fn get_preset(
        &self,
        req: Request<pb::GetPresetRequest>,
    ) -> Result<Response<pb::CompliancePolicy>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        if !r.tenant_id.is_empty() {
            tenant_of(&p, &r.tenant_id)?;
        }
        done(
            Policy::preset(&r.name)
                .map(|p| policy_to_pb(&r.tenant_id, &p, 0, None))
                .ok_or_else(|| {
                    GwError::invalid(
                        "name",
                        format!(
                            "unknown preset {}; one of {}",
                            cco_platform::validate::quote(&r.name),
                            PRESETS.join(", ")
                        ),
                    )
                }),
        )
    }

    async fn add_do_not_call(
        &self,
        req: Request<pb::AddDoNotCallRequest>,
    ) -> Result<Response<pb::DoNotCallEntry>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let e = r
                    .entry
                    .ok_or_else(|| GwError::invalid("entry", "is required"))?;
                let scope = Self::scope(&p, &e.tenant_id)?;
                let region = self.region(&scope).await?;
                let digits = entry_digits(&e.number, e.prefix, region)
                    .map_err(|m| GwError::invalid("number", m))?;
                let reason = reason_from_pb(e.reason)?
                    .ok_or_else(|| GwError::invalid("reason", "is required"))?;
                check_note(&e.note).map_err(|m| GwError::invalid("note", m))?;
                let now = self.compliance.now();
                let expires_at = from_ts("expires_at", e.expires_at)?;
                check_expiry(expires_at, now).map_err(|m| GwError::invalid("expires_at", m))?;
                let entry = self
                    .compliance
                    .add_dnc(DncEntry {
                        scope,
                        digits,
                        prefix: e.prefix,
                        reason,
                        note: e.note,
                        expires_at,
                        created_at: now,
                    })
                    .await?;
                Ok(entry_to_pb(&entry))
            }
            .await,
        )
    }

    async fn remove_do_not_call(
        &self,
        req: Request<pb::RemoveDoNotCallRequest>,
    ) -> Result<Response<pb::RemoveDoNotCallResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let scope = Self::scope(&p, &r.tenant_id)?;
                let region = self.region(&scope).await?;
                let digits = entry_digits(&r.number, r.prefix, region)
                    .map_err(|m| GwError::invalid("number", m))?;
                Ok(pb::RemoveDoNotCallResponse {
                    removed: self
                        .compliance
                        .remove_dnc(&scope, &digits, r.prefix)
                        .await?,
                })
            }
            .await,
        )
    }

    async fn import_do_not_call(
        &self,
        req: Request<Streaming<pb::ImportDoNotCallRequest>>,
    ) -> Result<Response<pb::ImportDoNotCallReport>, Status> {
        let p = Principal::from_request(&req)?;
        let mut stream = req.into_inner();
        let mut report = ImportReport::default();
        let mut scope: Option<(String, Option<Region>, Option<DncReason>)> = None;
        let mut line_no: u64 = 0;
        let now = self.compliance.now();
        let mut chunks: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            chunks = chunks.saturating_add(1);
            if chunks > MAX_IMPORT_LINES {
                return Err(GwError::invalid(
                    "lines",
                    format!(
                        "at most {MAX_IMPORT_LINES} chunks in one import; the earlier ones were written ({} accepted, {} rejected)",
                        report.accepted, report.rejected
                    ),
                )
                .into());
            }
            let (sc, region, default_reason) = match &scope {
                Some(s) => {
                    if !chunk.tenant_id.is_empty() && chunk.tenant_id != s.0 {
                        return Err(GwError::invalid(
                            "tenant_id",
                            "every chunk of an import names the same list (or none after the first)",
                        )
                        .into());
                    }
                    s.clone()
                }
                None => {
                    let sc = Self::scope(&p, &chunk.tenant_id)?;
                    let region = self.region(&sc).await?;
                    let d = reason_from_pb(chunk.default_reason)?;
                    scope = Some((sc.clone(), region, d));
                    (sc, region, d)
                }
            };
            let mut batch = Vec::with_capacity(chunk.lines.len());
            for line in &chunk.lines {
                line_no = line_no.saturating_add(1);
                if line_no > MAX_IMPORT_LINES {
                    return Err(GwError::invalid(
                        "lines",
                        format!(
                            "at most {MAX_IMPORT_LINES} lines in one import; the chunks before the one holding line {line_no} were written ({} accepted, {} rejected); nothing of that chunk was",
                            report.accepted, report.rejected
                        ),
                    )
                    .into());
                }
                let t = line.trim();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                match import_line(t, &sc, region, default_reason, now) {
                    Ok(e) => batch.push(e),
                    Err(m) => {
                        report.rejected += 1;
                        if report.errors.len() < MAX_LINE_ERRORS {
                            report.errors.push((line_no, m));
                        }
                    }
                }
            }
            self.compliance.put_dnc(&batch).await?;
            report.accepted += u64::try_from(batch.len()).unwrap_or(u64::MAX);
        }
        if scope.is_none() {
            return Err(GwError::invalid("tenant_id", "the import held no chunk").into());
        }
        Ok(Response::new(pb::ImportDoNotCallReport {
            accepted: report.accepted,
            rejected: report.rejected,
            errors: report
                .errors
                .into_iter()
                .map(|(line, error)| pb::ImportLineError { line, error })
                .collect(),
        }))
    }

    async fn check_do_not_call(
        &self,
        req: Request<pb::CheckDoNotCallRequest>,
    ) -> Result<Response<pb::CheckDoNotCallResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let region = self.tenants.config(&tenant).await?.phone_region;
                let number =
                    Phone::parse(&r.number, region).map_err(|m| GwError::invalid("number", m))?;
                let entries = self.compliance.check_dnc(&tenant, &number).await?;
                Ok(pb::CheckDoNotCallResponse {
                    listed: !entries.is_empty(),
                    entries: entries.iter().map(entry_to_pb).collect(),
                })
            }
            .await,
        )
    }

    async fn grant_override(
        &self,
        req: Request<pb::GrantOverrideRequest>,
    ) -> Result<Response<pb::ComplianceOverride>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let case = CaseId::parse("case_id", &r.case_id)?;
                let region = self.tenants.config(&tenant).await?.phone_region;
                let number = Phone::parse(&r.destination_number, region)
                    .map_err(|m| GwError::invalid("destination_number", m))?;
                let reason = r.reason.trim();
                if reason.is_empty() {
                    return Err(GwError::invalid("reason", "is required (it is audited)"));
                }
                cco_platform::validate::text(reason, 500)
                    .map_err(|m| GwError::invalid("reason", m))?;
                let (override_id, expires_at) = self
                    .compliance
                    .grant_override(
                        &tenant,
                        case.as_str(),
                        &number,
                        reason,
                        &p.key_id,
                        r.valid_seconds,
                    )
                    .await?;
                Ok(pb::ComplianceOverride {
                    override_id,
                    expires_at: Some(ts(expires_at)),
                })
            }
            .await,
        )
    }

    async fn list_compliance_decisions(
        &self,
        req: Request<pb::ListComplianceDecisionsRequest>,
    ) -> Result<Response<pb::ListComplianceDecisionsResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let limit = match r.page_size {
                    0 => 100,
                    n @ 1..=500 => n,
                    n => {
                        return Err(GwError::invalid(
                            "page_size",
                            format!("must be 1-500 (0 for 100), got {n}"),
                        ));
                    }
                };
                let f = DecisionFilter {
                    tenant_id: tenant.as_str().to_owned(),
                    collector_id: if r.collector_id.is_empty() {
                        None
                    } else {
                        Some(CollectorId::parse("collector_id", &r.collector_id)?.as_str().to_owned())
                    },
                    case_id: if r.case_id.is_empty() {
                        None
                    } else {
                        Some(CaseId::parse("case_id", &r.case_id)?.as_str().to_owned())
                    },
                    outcome: if r.outcome.is_empty() {
                        None
                    } else {
                        Some(Outcome::parse(&r.outcome).ok_or_else(|| {
                            GwError::invalid("outcome", "one of allowed, refused, overridden")
                        })?)
                    },
                    reason: if r.reason.is_empty() {
                        None
                    } else {
                        Some(Reason::parse(&r.reason).ok_or_else(|| {
                            GwError::invalid(
                                "reason",
                                "one of OUTSIDE_CALLING_HOURS, HOLIDAY, FREQUENCY_CAP, CASE_COOLDOWN, DO_NOT_CALL, NUMBER_TYPE_BLOCKED",
                            )
                        })?)
                    },
                    since: from_ts("since", r.since)?,
                    until: from_ts("until", r.until)?,
                    after: time_token_decode(&r.page_token, "ListComplianceDecisions")?,
                    limit: limit + 1,
                };
                let mut rows = self.compliance.decisions(&f).await?;
                let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
                rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                let next_page_token = match rows.last() {
                    Some(d) if more => time_token(d.decided_at, &d.id),
                    _ => String::new(),
                };
                Ok(pb::ListComplianceDecisionsResponse {
                    decisions: rows
                        .into_iter()
                        .map(|d| pb::ComplianceDecision {
                            decision_id: d.id,
                            decided_at: Some(ts(d.decided_at)),
                            tenant_id: d.tenant_id,
                            collector_id: d.collector_id,
                            case_id: d.case_id,
                            number_masked: d.number_masked,
                            outcome: d.outcome.as_str().to_owned(),
                            reason: d.reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
                            details: d.details.into_iter().collect(),
                            call_id: d.call_id.unwrap_or_default(),
                            override_id: d.override_id.unwrap_or_default(),
                            not_dialled: d.not_dialled.unwrap_or_default(),
                        })
                        .collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }
}
