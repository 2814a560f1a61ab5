//! The compliance gate (SPEC section 9) and its administration: policies, do-not-call lists,
//! overrides, the decisions' audit.
//!
//! Order of the gate inside MakeCall, before any extension is leased: the number's type, the
//! do-not-call lists (tenant and global), holidays and calling windows in the debtor's local
//! time, then the frequency caps and the cool-down, counted by the store under row locks in
//! the same transaction that records the attempt and the decision. Every decision is audited.
//! A refusal of the windows, holidays, caps or cool-down may be let through once by a
//! supervisor's override where the tenant's policy allows overrides; do-not-call entries and
//! blocked number types never are.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::cache::Cache;
use crate::domain::compliance::{
    Decision, DncEntry, GLOBAL_SCOPE, Outcome, Policy, Reason, Refusal, ZoneSource, debtor_zone,
};
use crate::domain::phone::Phone;
use crate::domain::{GwError, TenantId};
use crate::metrics::GatewayMetrics;
use crate::store::ConfigStore;
use crate::store::compliance::{
    Attempt, ComplianceStore, DecisionFilter, GateRecord, Override, Reserved, StoredPolicy,
};

/// Where the gate reads the time: the system clock, or one a test sets.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Attempts are kept this much longer than the longest window a rule may have.
const ATTEMPT_RETENTION: chrono::Duration = chrono::Duration::days(33);

/// Settings of the gate.
#[derive(Debug, Clone)]
pub struct ComplianceSettings {
    /// Decisions older than this are deleted.
    pub decision_retention: chrono::Duration,
    /// Longest validity of an override.
    pub max_override_seconds: u32,
}

impl Default for ComplianceSettings {
    fn default() -> Self {
        Self {
            decision_retention: chrono::Duration::days(3 * 365),
            max_override_seconds: 86_400,
        }
    }
}

/// One dial (or question about one) put to the gate.
#[derive(Debug, Clone)]
pub struct GateInput<'a> {
    /// Tenant.
    pub tenant: &'a TenantId,
    /// Collector.
    pub collector: &'a str,
    /// Case.
    pub case_id: &'a str,
    /// The debtor's number.
    pub number: &'a Phone,
    /// The debtor's zone from the case, if given.
    pub case_zone: Option<Tz>,
    /// The call id it will be dialled under.
    pub call_id: &'a str,
    /// A supervisor's override to use if a rule refuses.
    pub override_id: Option<&'a str>,
}

/// What the gate let through, and so what a dial that does not happen must undo.
#[derive(Debug, Clone)]
pub enum Admission {
    /// The attempt and decision are to be written with the call record (the policy counts
    /// nothing): nothing is written yet.
    Deferred(Box<GateRecord>),
    /// The attempt and decision are committed: withdraw them if nothing is sent.
    Counted,
    /// An identical request (same call id) was counted: nothing of this request's to undo.
    Duplicate,
}

/// What CheckCall answers.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Why not, or `None` when a call would be placed now.
    pub refusal: Option<Refusal>,
    /// The debtor's zone, where one applies.
    pub zone: Option<(Tz, ZoneSource)>,
    /// The rule inputs (zone, local time, counts).
    pub details: BTreeMap<String, String>,
}

/// A do-not-call import's outcome.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// Lines written.
    pub accepted: u64,
    /// Lines refused, each with its number and why (the first [`MAX_LINE_ERRORS`]).
    pub errors: Vec<(u64, String)>,
    /// Lines refused in all.
    pub rejected: u64,
}

/// Line errors reported at most per import.
pub const MAX_LINE_ERRORS: usize = 1_000;
/// Lines one import may hold.
pub const MAX_IMPORT_LINES: u64 = 100_000;

/// The compliance gate and its administration.
#[derive(Clone)]
pub struct Compliance {
    store: Arc<dyn ComplianceStore>,
    policies: Arc<Cache<TenantId, Option<Arc<Policy>>>>,
    clock: Arc<dyn Clock>,
    settings: ComplianceSettings,
}

impl std::fmt::Debug for Compliance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compliance").finish_non_exhaustive()
    }
}

fn refused(r: Refusal) -> GwError {
    GwError::Refused(Box::new(r))
}

impl Compliance {
    /// Over `store`; policies are cached like configs (`changes` tells when they change).
    pub fn new(
        store: Arc<dyn ComplianceStore>,
        changes: Arc<dyn ConfigStore>,
        cache_ttl: Duration,
        metrics: GatewayMetrics,
        clock: Arc<dyn Clock>,
        settings: ComplianceSettings,
    ) -> Self {
        Self {
            store,
            policies: Arc::new(Cache::new("compliance_policy", cache_ttl, changes, metrics)),
            clock,
            settings,
        }
    }

    /// Now, by the gate's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn current(&self, tenant: &TenantId) -> Result<Option<Arc<Policy>>, GwError> {
        Ok(self
            .policies
            .get(tenant, || async {
                Ok(Some(
                    self.store
                        .policy(tenant.as_str())
                        .await?
                        .map(|s| Arc::new(s.policy)),
                ))
            })
            .await?
            .flatten())
    }

    /// The tenant's policy as stored (`None`: never set).
    pub async fn policy(&self, tenant: &TenantId) -> Result<Option<StoredPolicy>, GwError> {
        self.store.policy(tenant.as_str()).await
    }

    /// Validates and writes the tenant's policy if it is still at `expected`; the new version.
    pub async fn set_policy(
        &self,
        tenant: &TenantId,
        mut policy: Policy,
        expected: i64,
    ) -> Result<i64, GwError> {
        policy.validate()?;
        self.store
            .put_policy(tenant.as_str(), &policy, expected, self.now())
            .await
    }

    fn base_decision(&self, g: &GateInput<'_>, now: DateTime<Utc>) -> Decision {
        Decision {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: g.tenant.as_str().to_owned(),
            decided_at: now,
            collector_id: g.collector.to_owned(),
            case_id: g.case_id.to_owned(),
            number_masked: g.number.masked(),
            outcome: Outcome::Allowed,
            reason: None,
            details: BTreeMap::new(),
            call_id: Some(g.call_id.to_owned()),
            override_id: None,
            not_dialled: None,
        }
    }

    /// Audits a refusal and returns it as the error to give the client (with the decision's
    /// inputs, such as the debtor's zone and where it came from, in its metadata).
    async fn refuse(&self, mut d: Decision, mut r: Refusal) -> GwError {
        for (k, v) in &d.details {
            r.metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
        d.outcome = Outcome::Refused;
        d.reason = Some(r.reason);
        d.call_id = None;
        d.details
            .extend(r.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Err(e) = self.store.record_decision(&d).await {
            // The refusal stands; the client is told the audit failed rather than nothing.
            tracing::error!(error = %e, "could not audit a compliance refusal");
            return e;
        }
        refused(r)
    }

    /// Refuses a number the tenant does not allow (or an emergency number) and audits it.
    pub async fn refuse_number(
        &self,
        tenant: &TenantId,
        collector: &str,
        case_id: &str,
        masked: String,
        message: String,
    ) -> GwError {
        let now = self.now();
        let d = Decision {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.as_str().to_owned(),
            decided_at: now,
            collector_id: collector.to_owned(),
            case_id: case_id.to_owned(),
            number_masked: masked,
            outcome: Outcome::Refused,
            reason: Some(Reason::NumberTypeBlocked),
            details: BTreeMap::new(),
            call_id: None,
            override_id: None,
            not_dialled: None,
        };
        self.refuse(d, number_refusal(message)).await
    }

    /// The do-not-call refusal for `number`, if it is listed.
    async fn listed(
        &self,
        tenant: &TenantId,
        number: &Phone,
        now: DateTime<Utc>,
    ) -> Result<Option<Refusal>, GwError> {
        let digits = number.e164().trim_start_matches('+');
        let hits = self.store.dnc_matches(tenant.as_str(), digits, now).await?;
        // The tenant's own entry first, then the longest match.
        let Some(e) = hits
            .iter()
            .max_by_key(|e| (e.scope != GLOBAL_SCOPE, e.digits.len()))
        else {
            return Ok(None);
        };
        let list = if e.scope == GLOBAL_SCOPE {
            "global"
        } else {
            "tenant"
        };
        let mut r = Refusal::new(
            Reason::DoNotCall,
            format!(
                "{} is on the {list} do-not-call list ({}{})",
                number.masked(),
                e.reason.as_str(),
                if e.prefix { ", by prefix" } else { "" }
            ),
        )
        .with("rule", "do_not_call")
        .with("list", list)
        .with("entry_reason", e.reason.as_str())
        .with("match", if e.prefix { "prefix" } else { "exact" });
        if let Some(t) = e.expires_at {
            r = r.with("entry_expires_at", t.to_rfc3339());
        }
        Ok(Some(r))
    }

    /// The zone and local-time details of a dial under `policy`.
    fn zone_of(
        policy: &Policy,
        g: &GateInput<'_>,
        now: DateTime<Utc>,
        details: &mut BTreeMap<String, String>,
    ) -> Option<(Tz, ZoneSource)> {
        let zone = debtor_zone(g.number.region_code(), g.case_zone, policy.zone());
        if let Some((z, source)) = zone {
            details.insert("time_zone".into(), z.to_string());
            details.insert("zone_source".into(), source.as_str().into());
            details.insert(
                "debtor_local_time".into(),
                now.with_timezone(&z)
                    .format("%Y-%m-%dT%H:%M:%S")
                    .to_string(),
            );
        }
        zone
    }

    /// The gate at dial time: refuses (audited, `FAILED_PRECONDITION` with the details), or
    /// lets the dial through. When the tenant's policy counts attempts (caps, cool-down) or an
    /// override is used, the attempt and the decision are committed here, under the rule
    /// keys' locks, and the caller must [`Self::withdraw`] them if nothing is sent to Infinity
    /// after all; otherwise they are returned for the call record's own transaction (no
    /// commit of their own), and [`Self::not_dialled`] audits a dial that never happens.
    pub async fn admit(&self, g: &GateInput<'_>) -> Result<Admission, GwError> {
        let now = self.now();
        let mut d = self.base_decision(g, now);
        if let Some(r) = self.listed(g.tenant, g.number, now).await? {
            return Err(self.refuse(d, r).await);
        }
        let policy = self.current(g.tenant).await?.unwrap_or_default();
        let zone = Self::zone_of(&policy, g, now, &mut d.details);
        let pending = zone.and_then(|(z, _)| policy.check_hours(now, z).err());
        let override_id = g.override_id.filter(|_| policy.allow_overrides);
        if g.override_id.is_some() && override_id.is_none() {
            d.details
                .insert("override".into(), "ignored: the policy allows none".into());
        }
        let number = g.number.e164().trim_start_matches('+');
        if pending.is_none() && !policy.counts() {
            return Ok(Admission::Deferred(Box::new(GateRecord {
                tenant_id: g.tenant.as_str().to_owned(),
                call_id: g.call_id.to_owned(),
                case_id: g.case_id.to_owned(),
                number: number.to_owned(),
                collector_id: g.collector.to_owned(),
                at: now,
                decision: d,
            })));
        }
        let attempt = Attempt {
            tenant_id: g.tenant.as_str(),
            call_id: g.call_id,
            case_id: g.case_id,
            number,
            collector_id: g.collector,
            at: now,
        };
        match self
            .store
            .reserve(&attempt, &policy, pending.as_ref(), override_id, &d)
            .await?
        {
            Reserved::Allowed => Ok(Admission::Counted),
            Reserved::Duplicate => Ok(Admission::Duplicate),
            Reserved::Overridden(r) => {
                tracing::info!(reason = r.reason.as_str(), "compliance refusal overridden");
                Ok(Admission::Counted)
            }
            Reserved::Refused {
                mut refusal,
                override_unusable,
            } => {
                if override_unusable {
                    refusal.message.push_str(
                        "; the override given cannot be used for this call (expired, used already, or for another case or number)",
                    );
                    refusal = refusal.with("override", "unusable");
                } else if g.override_id.is_some() && !refusal.reason.overridable() {
                    refusal = refusal.with("override", "not allowed for this rule");
                }
                Err(self.refuse(d, refusal).await)
            }
        }
    }

    /// Audits an allowed dial that was never sent to Infinity: withdraws its committed
    /// attempt, or writes its deferred decision with the reason.
    pub async fn not_dialled(
        &self,
        tenant: &TenantId,
        call_id: &str,
        admission: Admission,
        why: &str,
    ) {
        match admission {
            Admission::Counted => self.withdraw(tenant, call_id, why).await,
            Admission::Duplicate => {}
            Admission::Deferred(g) => {
                let mut d = g.decision;
                d.call_id = None;
                d.not_dialled = Some(why.to_owned());
                if let Err(e) = self.store.record_decision(&d).await {
                    tracing::warn!(error = %e, call_id, "could not audit a dial that did not happen");
                }
            }
        }
    }

    /// Gives back the attempt of a call that was never sent to Infinity.
    pub async fn withdraw(&self, tenant: &TenantId, call_id: &str, why: &str) {
        if let Err(e) = self.store.withdraw(tenant.as_str(), call_id, why).await {
            // It stays counted: the conservative side.
            tracing::warn!(error = %e, call_id, "could not withdraw a dial attempt; it stays counted");
        }
    }

    /// CheckCall: the same question as the gate, without dialling or writing anything.
    pub async fn check(&self, g: &GateInput<'_>) -> Result<Verdict, GwError> {
        let now = self.now();
        let mut details = BTreeMap::new();
        let policy = self.current(g.tenant).await?.unwrap_or_default();
        let zone = Self::zone_of(&policy, g, now, &mut details);
        let mut refusal = self.listed(g.tenant, g.number, now).await?;
        if refusal.is_none() {
            refusal = zone.and_then(|(z, _)| policy.check_hours(now, z).err());
        }
        if let Some(r) = &mut refusal {
            for (k, v) in &details {
                r.metadata.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if refusal.is_none() {
            let attempt = Attempt {
                tenant_id: g.tenant.as_str(),
                call_id: g.call_id,
                case_id: g.case_id,
                number: g.number.e164().trim_start_matches('+'),
                collector_id: g.collector,
                at: now,
            };
            let facts = self.store.facts(&attempt, &policy).await?;
            match policy.check_counts(&facts, now) {
                Ok(c) => details.extend(c),
                Err(r) => refusal = Some(r),
            }
        }
        Ok(Verdict {
            refusal,
            zone,
            details,
        })
    }

    /// Adds (or replaces) one do-not-call entry.
    pub async fn add_dnc(&self, entry: DncEntry) -> Result<DncEntry, GwError> {
        self.store.put_dnc(std::slice::from_ref(&entry)).await?;
        Ok(entry)
    }

    /// Writes a batch of parsed entries (an import's chunk).
    pub async fn put_dnc(&self, entries: &[DncEntry]) -> Result<(), GwError> {
        self.store.put_dnc(entries).await
    }

    /// Removes one entry; whether it existed.
    pub async fn remove_dnc(
        &self,
        scope: &str,
        digits: &str,
        prefix: bool,
    ) -> Result<bool, GwError> {
        self.store.remove_dnc(scope, digits, prefix).await
    }

    /// The entries (tenant and global) that list `number` now.
    pub async fn check_dnc(
        &self,
        tenant: &TenantId,
        number: &Phone,
    ) -> Result<Vec<DncEntry>, GwError> {
        self.store
            .dnc_matches(
                tenant.as_str(),
                number.e164().trim_start_matches('+'),
                self.now(),
            )
            .await
    }

    /// Grants a one-call override; its id and expiry.
    pub async fn grant_override(
        &self,
        tenant: &TenantId,
        case_id: &str,
        number: &Phone,
        reason: &str,
        granted_by: &str,
        valid_seconds: u32,
    ) -> Result<(String, DateTime<Utc>), GwError> {
        let max = self.settings.max_override_seconds;
        // 0: an hour, or the limit when that is shorter.
        let valid_seconds = if valid_seconds == 0 {
            max.min(3_600)
        } else {
            valid_seconds
        };
        if !(1..=max).contains(&valid_seconds) {
            return Err(GwError::invalid(
                "valid_seconds",
                format!("must be 1-{max}, got {valid_seconds}"),
            ));
        }
        let policy = self.current(tenant).await?.unwrap_or_default();
        if !policy.allow_overrides {
            return Err(GwError::FailedPrecondition(format!(
                "tenant {tenant}'s compliance policy allows no overrides (allow_overrides is false)"
            )));
        }
        let now = self.now();
        let o = Override {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.as_str().to_owned(),
            case_id: case_id.to_owned(),
            number: number.e164().trim_start_matches('+').to_owned(),
            reason: reason.to_owned(),
            granted_by: granted_by.to_owned(),
            granted_at: now,
            expires_at: now
                .checked_add_signed(chrono::Duration::seconds(i64::from(valid_seconds)))
                .unwrap_or(now),
        };
        self.store.grant_override(&o).await?;
        Ok((o.id, o.expires_at))
    }

    /// Audited decisions, newest first.
    pub async fn decisions(&self, f: &DecisionFilter) -> Result<Vec<Decision>, GwError> {
        self.store.decisions(f).await
    }

    /// Deletes what the retention lets go; how many rows.
    pub async fn prune(&self) -> Result<u64, GwError> {
        let now = self.now();
        self.store
            .prune_compliance(
                now.checked_sub_signed(self.settings.decision_retention)
                    .unwrap_or(now),
                now.checked_sub_signed(ATTEMPT_RETENTION).unwrap_or(now),
            )
            .await
    }
}

/// The refusal of a blocked kind of number (`message` from the number's check).
pub fn number_refusal(message: String) -> Refusal {
    Refusal::new(
        Reason::NumberTypeBlocked,
        format!("destination_number {message}"),
    )
    .with("rule", "number_types")
}
