//! Placing calls, and the queries about them.
//!
//! Order of MakeCall (SPEC section 4): validate; replay an existing call for the idempotency
//! key; check config, collector and callback number; pick the caller number; lease an
//! extension (request id = call id, so identical concurrent requests share one lease); write the
//! record as `dialing` and commit; only then ask Infinity to dial. Every later transition is one
//! transaction that also queues the lease release when the lease must go (the outbox), so a
//! release is never lost even if the allocator is down or the gateway restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cco_platform::coalesce::Batcher;
use chrono::Utc;

use super::CallTuning;
use super::collectors::Collectors;
use super::compliance::{Admission, Compliance, GateInput, Verdict, number_refusal};
use super::settling::Settling;
use super::tenants::Tenants;
use crate::domain::call::{Call, CallId, CallStatus, Lease, ReleaseReason};
use crate::domain::collector::Collector;
use crate::domain::config::{CallMode, CallerSelection, Strategy, TenantConfig};
use crate::domain::phone::Phone;
use crate::domain::{CaseId, CollectorId, GwError, IdempotencyKey, TenantId};
use crate::metrics::GatewayMetrics;
use crate::ports::{Dial, LeaseError, Leases, Pbx, PbxError};
use crate::store::calls::{Accepted, CallFilter, CallStore, Rung, SummaryFilter, SummaryRow};

/// Dials Infinity accepted, waiting to be marked ringing together.
type Ringing = Batcher<(), Accepted, Result<Rung, GwError>>;

/// A validated MakeCall request.
#[derive(Debug, Clone)]
pub struct MakeCall {
    /// Tenant.
    pub tenant: TenantId,
    /// Collector.
    pub collector: CollectorId,
    /// Case.
    pub case_id: CaseId,
    /// The debtor's number as given (parsed in the tenant's region).
    pub destination: String,
    /// A requested caller number.
    pub caller_number: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Custom parameters.
    pub custom_params: BTreeMap<String, String>,
    /// Strategy override.
    pub strategy: Option<Strategy>,
    /// The debtor's time zone from the case (used when the number does not determine one).
    pub debtor_time_zone: Option<chrono_tz::Tz>,
    /// A supervisor's one-call override of a compliance refusal.
    pub override_id: Option<String>,
}

/// A recording's download link and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// The URL.
    pub url: String,
    /// Its expiry as Infinity wrote it (GetRecodeFile links only).
    pub expires: String,
    /// `recordurl` or `get_recode_file`.
    pub source: &'static str,
}

/// The destination parsed in the tenant's region: `Ok(Err(why))` when it is an emergency number
/// or a kind the tenant does not allow (the compliance gate's NUMBER_TYPE_BLOCKED), an error
/// naming the field when it is no phone number.
fn destination(cfg: &TenantConfig, raw: &str) -> Result<Result<Phone, String>, GwError> {
    match Phone::parse(raw, cfg.phone_region) {
        Ok(p) => Ok(p.check_kind(&cfg.allowed_number_types).map(|()| p)),
        Err(m) if crate::domain::phone::is_emergency_refusal(&m) => Ok(Err(m)),
        Err(m) => Err(GwError::invalid("destination_number", m)),
    }
}

/// Validates custom parameters: at most 20, keys 1-64 and values up to 256 characters, no
/// control or invisible formatting characters in either.
pub fn check_custom_params(p: &BTreeMap<String, String>) -> Result<(), GwError> {
    use cco_platform::validate::{quote, text};
    if p.len() > 20 {
        return Err(GwError::invalid(
            "custom_params",
            format!("at most 20 entries, got {}", p.len()),
        ));
    }
    for (k, v) in p {
        if k.is_empty() {
            return Err(GwError::invalid("custom_params", "keys must not be empty"));
        }
        text(k, 64)
            .map_err(|m| GwError::invalid("custom_params", format!("key {}: {m}", quote(k))))?;
        text(v, 256).map_err(|m| {
            GwError::invalid("custom_params", format!("value of {}: {m}", quote(k)))
        })?;
    }
    Ok(())
}

/// Calls.
#[derive(Clone)]
pub struct Calls {
    tenants: Tenants,
    collectors: Collectors,
    calls: Arc<dyn CallStore>,
    leases: Arc<dyn Leases>,
    pbx: Arc<dyn Pbx>,
    settling: Settling,
    compliance: Compliance,
    tuning: CallTuning,
    metrics: GatewayMetrics,
    ringing: Arc<Ringing>,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls").finish_non_exhaustive()
    }
}

/// Time spent waiting on others during one MakeCall (for the latency split).
#[derive(Default)]
struct Waits {
    acquire: Duration,
    infinity: Duration,
}

impl Calls {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        tenants: Tenants,
        collectors: Collectors,
        calls: Arc<dyn CallStore>,
        leases: Arc<dyn Leases>,
        pbx: Arc<dyn Pbx>,
        settling: Settling,
        compliance: Compliance,
        tuning: CallTuning,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            ringing: Arc::new(Batcher::new(tuning.coalesce, |a: &Accepted| {
                a.call_id.as_str()
            })),
            tenants,
            collectors,
            calls,
            leases,
            pbx,
            settling,
            compliance,
            tuning,
            metrics,
        }
    }

    pub(super) fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.ringing
            .register(registry, "gateway_coalesced_ringing", "accepted dials");
    }

    /// Marks an accepted dial ringing (and the collector's last extension), in one transaction
    /// with the other dials accepted meanwhile; or finds the call moved on (a callback
    /// completed it first).
    async fn accepted(&self, a: Accepted) -> Result<Rung, GwError> {
        let store = self.calls.clone();
        let run = move |(), jobs: Vec<Accepted>| {
            let store = store.clone();
            async move {
                match store.mark_ringing(&jobs).await {
                    Ok(changed) => changed.into_iter().map(Ok).collect(),
                    // One bad dial must not fail the others: each again on its own.
                    Err(_) if jobs.len() > 1 => {
                        let mut out = Vec::with_capacity(jobs.len());
                        for j in &jobs {
                            out.push(store.mark_ringing(std::slice::from_ref(j)).await.and_then(
                                |c| {
                                    c.into_iter().next().ok_or_else(|| {
                                        GwError::Internal(anyhow::anyhow!(
                                            "mark_ringing answered nothing"
                                        ))
                                    })
                                },
                            ));
                        }
                        out
                    }
                    Err(e) => vec![Err(e)],
                }
            }
        };
        let one = a.clone();
        match self.ringing.submit((), a, run).await {
            // Held by a callback's transaction: wait for it alone, outside the batch.
            Some(Ok(Rung::Busy)) => self
                .calls
                .mark_ringing(std::slice::from_ref(&one))
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| GwError::Internal(anyhow::anyhow!("mark_ringing answered nothing"))),
            Some(r) => r,
            None => Err(GwError::Internal(anyhow::anyhow!(
                "the ringing batch ended without an answer"
            ))),
        }
    }

    /// Leases an extension for `request_id`. The allocator replays the lease of a request id it
    /// has seen; if that lease has ended meanwhile (an earlier attempt gave it back), a live one
    /// is asked for under a derived request id, so a retry never dials on a freed extension.
    async fn lease(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
        strategy: Option<Strategy>,
        request_id: &str,
        waits: &mut Waits,
    ) -> Result<Lease, GwError> {
        for n in 0..4 {
            let rid = if n == 0 {
                request_id.to_owned()
            } else {
                format!("{request_id}.r{n}")
            };
            let started = Instant::now();
            let got = self.leases.acquire(tenant, collector, strategy, &rid).await;
            waits.acquire += started.elapsed();
            let got = got?;
            if !got.ended {
                return Ok(got.lease);
            }
            tracing::info!(request_id = %rid, "replayed lease has ended; asking for a live one");
        }
        Err(GwError::Unavailable(format!(
            "no live lease for request {request_id} after 4 attempts"
        )))
    }

    async fn pick_caller(
        &self,
        cfg: &TenantConfig,
        requested: Option<&str>,
    ) -> Result<Phone, GwError> {
        if let Some(raw) = requested {
            let p = Phone::parse(raw, cfg.phone_region)
                .map_err(|m| GwError::invalid("caller_number", m))?;
            if !cfg.caller_number_pool.contains(&p) {
                return Err(GwError::invalid(
                    "caller_number",
                    format!("{} is not in the tenant's caller number pool", p.masked()),
                ));
            }
            return Ok(p);
        }
        let n = cfg.caller_number_pool.len().max(1);
        let idx = match cfg.caller_selection {
            CallerSelection::DefaultNumber => return Ok(cfg.default_caller_number.clone()),
            CallerSelection::Random => rand::random_range(0..n),
            CallerSelection::RoundRobin => {
                let i = self.calls.next_caller_index(cfg.tenant_id.as_str()).await?;
                usize::try_from(i.rem_euclid(i64::try_from(n).unwrap_or(1))).unwrap_or(0)
            }
        };
        Ok(cfg
            .caller_number_pool
            .get(idx)
            .cloned()
            .unwrap_or_else(|| cfg.default_caller_number.clone()))
    }

    /// The tenant's config for a call: a tenant without one is a failed precondition.
    async fn call_config(&self, tenant: &TenantId) -> Result<TenantConfig, GwError> {
        match self.tenants.config(tenant).await {
            Err(GwError::NotFound(m)) => Err(GwError::FailedPrecondition(m)),
            other => other,
        }
    }

    /// CheckCall: whether the compliance gate would let `input` through now, and if not why
    /// and until when; nothing is dialled, counted or audited.
    pub async fn check_call(&self, input: &MakeCall) -> Result<Verdict, GwError> {
        let cfg = self.call_config(&input.tenant).await?;
        let destination = match destination(&cfg, &input.destination)? {
            Ok(p) => p,
            Err(m) => {
                return Ok(Verdict {
                    refusal: Some(number_refusal(m)),
                    zone: None,
                    details: std::collections::BTreeMap::new(),
                });
            }
        };
        self.compliance
            .check(&GateInput {
                tenant: &input.tenant,
                collector: input.collector.as_str(),
                case_id: input.case_id.as_str(),
                number: &destination,
                case_zone: input.debtor_time_zone,
                call_id: "",
                override_id: None,
            })
            .await
    }

    /// Places a call (see the module docs). Returns the call as it stands and whether this
    /// request was a replay of an earlier one.
    #[tracing::instrument(skip_all, fields(tenant_id = %input.tenant, collector_id = %input.collector, call_id))]
    pub async fn make_call(&self, input: MakeCall) -> Result<(Call, bool), GwError> {
        let started = Instant::now();
        let mut waits = Waits::default();
        let result = self.place(input, &mut waits).await;
        self.metrics
            .make_call(started.elapsed(), waits.acquire, waits.infinity);
        result
    }

    async fn place(&self, input: MakeCall, waits: &mut Waits) -> Result<(Call, bool), GwError> {
        check_custom_params(&input.custom_params)?;
        let cfg = self.call_config(&input.tenant).await?;
        let destination = match destination(&cfg, &input.destination)? {
            Ok(p) => p,
            Err(m) => {
                return Err(self
                    .compliance
                    .refuse_number(
                        &input.tenant,
                        input.collector.as_str(),
                        input.case_id.as_str(),
                        cco_platform::mask::phone(&input.destination),
                        m,
                    )
                    .await);
            }
        };
        let call_id = match &input.idempotency_key {
            Some(k) => CallId::for_key(&input.tenant, k),
            None => CallId::random(),
        };
        tracing::Span::current().record("call_id", tracing::field::display(&call_id));
        if input.idempotency_key.is_some()
            && let Some(existing) = self.tenant_call(&input.tenant, &call_id).await?
        {
            return replay(existing, &input, &destination).map(|c| (c, true));
        }
        if !cfg.is_active {
            return Err(GwError::FailedPrecondition(format!(
                "tenant {} is inactive: its Infinity call config is switched off",
                input.tenant
            )));
        }
        let collector = self
            .collectors
            .for_call(&input.tenant, &input.collector)
            .await?;
        if !collector.active {
            return Err(GwError::FailedPrecondition(format!(
                "collector {} is inactive",
                input.collector
            )));
        }
        if cfg.call_mode == CallMode::DoubleCall {
            let Some(number) = &collector.callback_number else {
                return Err(GwError::FailedPrecondition(format!(
                    "collector {} has no callback number; double_call rings it first (set one with UpsertCollector)",
                    input.collector
                )));
            };
            // Checked again at every dial: the tenant may have withdrawn the type since.
            number.check_kind(&cfg.allowed_number_types).map_err(|m| {
                GwError::FailedPrecondition(format!(
                    "collector {}'s callback number {m}",
                    input.collector
                ))
            })?;
        }
        let caller = self
            .pick_caller(&cfg, input.caller_number.as_deref())
            .await?;
        // The compliance gate: counted and audited from here on, so every way out below that
        // sends nothing to Infinity withdraws the attempt.
        let gate = self
            .compliance
            .admit(&GateInput {
                tenant: &input.tenant,
                collector: input.collector.as_str(),
                case_id: input.case_id.as_str(),
                number: &destination,
                case_zone: input.debtor_time_zone,
                call_id: call_id.as_str(),
                override_id: input.override_id.as_deref(),
            })
            .await?;
        let lease = match self
            .lease(
                &input.tenant,
                &input.collector,
                input.strategy,
                call_id.as_str(),
                waits,
            )
            .await
        {
            Ok(l) => l,
            Err(e) => {
                self.compliance
                    .not_dialled(
                        &input.tenant,
                        call_id.as_str(),
                        gate,
                        &format!("no extension: {e}"),
                    )
                    .await;
                return Err(e);
            }
        };
        let dialled = format!(
            "{}{}",
            cfg.destination_prefix,
            destination.dial_digits(cfg.phone_region)
        );
        let now = Utc::now();
        let call = Call {
            id: call_id.clone(),
            tenant_id: input.tenant.clone(),
            config_id: cfg.config_id.to_string(),
            supplier_id: cfg.supplier_id.clone(),
            case_id: input.case_id.clone(),
            collector_id: input.collector.clone(),
            destination_number: destination.e164().to_owned(),
            dialled_number: dialled,
            caller_number: caller.e164().to_owned(),
            lease: Some(lease.clone()),
            lease_released: false,
            call_mode: cfg.call_mode,
            call_timeout_seconds: cfg.call_timeout_seconds,
            status: CallStatus::Dialing,
            result: None,
            start_time: None,
            answer_time: None,
            end_time: None,
            talk_seconds: None,
            total_seconds: None,
            hangup_cause: None,
            hangup_side: None,
            record_url: None,
            record_filename: None,
            custom_params: input.custom_params.clone(),
            infinity_uuid: None,
            infinity_cdr_id: None,
            error_code: None,
            error_message: None,
            idempotency_key: input.idempotency_key.clone(),
            attempts: 1,
            raw_callback: None,
            reconcile_after: now
                .checked_add_signed(self.tuning.reconcile_after)
                .unwrap_or(now),
            created_at: now,
            updated_at: now,
        };
        // Written and committed before anything is sent to Infinity.
        let deferred = match &gate {
            Admission::Deferred(g) => Some(g.as_ref()),
            Admission::Counted | Admission::Duplicate => None,
        };
        let inserted = match self.calls.insert_call(&call, deferred).await {
            Ok(i) => i,
            Err(e) => {
                // No record means nobody else would ever free this lease: give it back now.
                if let Some(r) = call.owed_release(ReleaseReason::Cancelled) {
                    self.settling.flush_release(&r).await;
                }
                self.compliance
                    .not_dialled(
                        &input.tenant,
                        call_id.as_str(),
                        gate,
                        &format!("record not written: {e}"),
                    )
                    .await;
                return Err(e);
            }
        };
        if let Some(existing) = inserted {
            // An identical concurrent request won the race: it dials, we report its call.
            return replay(existing, &input, &destination).map(|c| (c, true));
        }
        tracing::info!(extension = %lease.extension_number, destination = %destination.masked(), "dialing");
        let call = self
            .dial(&cfg, call, &collector, &caller, input.strategy, waits)
            .await?;
        Ok((call, false))
    }

    /// Sends the dial (twice at most: once more on another extension after codes 1010-1014).
    async fn dial(
        &self,
        cfg: &TenantConfig,
        mut call: Call,
        collector: &Collector,
        caller: &Phone,
        strategy: Option<Strategy>,
        waits: &mut Waits,
    ) -> Result<Call, GwError> {
        loop {
            let extension = call
                .lease
                .as_ref()
                .map(|l| l.extension_number.clone())
                .unwrap_or_default();
            let dial = Dial {
                mode: cfg.call_mode,
                extension: extension.clone(),
                destination: call.dialled_number.clone(),
                first_leg: collector
                    .callback_number
                    .as_ref()
                    .map(|p| p.dial_digits(cfg.phone_region))
                    .unwrap_or_default(),
                caller_id: caller.dial_digits(cfg.phone_region),
                collector: call.collector_id.as_str().to_owned(),
                case: call.case_id.as_str().to_owned(),
                call_id: call.id.as_str().to_owned(),
                tenant: call.tenant_id.as_str().to_owned(),
            };
            let started = Instant::now();
            let sent = self.pbx.dial(cfg, &dial).await;
            waits.infinity += started.elapsed();
            let release = |c: &Call| c.owed_release(ReleaseReason::DialFailed);
            match sent {
                Ok(_) => {
                    let rung = self
                        .accepted(Accepted {
                            call_id: call.id.clone(),
                            tenant_id: call.tenant_id.clone(),
                            collector_id: call.collector_id.clone(),
                            extension,
                        })
                        .await;
                    tracing::info!(call_id = %call.id, "Infinity accepted the dial");
                    let rung = match rung {
                        Ok(r) => r,
                        Err(e) => {
                            // The dial went out: the caller must get its call id, never an
                            // error it might retry into a second dial. The record stays
                            // dialing with its lease; the callback or the reconciler settles it.
                            tracing::warn!(call_id = %call.id, error = %e, "could not mark the accepted dial ringing");
                            return Ok(call);
                        }
                    };
                    return Ok(match rung {
                        Rung::Ringing => {
                            call.status = CallStatus::Ringing;
                            call.updated_at = Utc::now();
                            call
                        }
                        // A callback settled it first: report what it is now.
                        Rung::MovedOn(now) => *now,
                        // Not answered by a lone mark; read what it is.
                        Rung::Busy => self.current(call).await?,
                    });
                }
                Err(e) if e.is_extension_error() => {
                    let code = e.code().unwrap_or_default().to_owned();
                    tracing::warn!(call_id = %call.id, code = %code, extension = %extension, "extension refused by Infinity; taking it offline");
                    // Force-offline ends our own lease in the same step (reason extension_offline).
                    let extension_id = call
                        .lease
                        .as_ref()
                        .map(|l| l.extension_id.clone())
                        .unwrap_or_default();
                    if let Err(err) = self
                        .leases
                        .take_offline(&call.tenant_id, &extension_id)
                        .await
                    {
                        tracing::warn!(error = %err, "could not take the extension offline");
                        self.fail(&call, &e, release(&call).as_ref()).await?;
                        return self.current(call).await;
                    }
                    if call.attempts >= 2 {
                        self.fail(&call, &e, None).await?;
                        return self.current(call).await;
                    }
                    match self
                        .lease(
                            &call.tenant_id,
                            &call.collector_id,
                            strategy,
                            &format!("{}-2", call.id),
                            waits,
                        )
                        .await
                    {
                        Ok(l) => {
                            self.calls.set_attempt(&call.id, &l, 2).await?;
                            call.lease = Some(l);
                            call.attempts = 2;
                        }
                        Err(err) => {
                            self.calls
                                .mark_failed(
                                    &call.id,
                                    &code,
                                    &format!("{e}; no other extension: {err}"),
                                    None,
                                )
                                .await?;
                            return self.current(call).await;
                        }
                    }
                }
                Err(e @ (PbxError::Refused { .. } | PbxError::Auth { .. })) => {
                    self.fail(&call, &e, release(&call).as_ref()).await?;
                    return self.current(call).await;
                }
                Err(PbxError::NotSent(m)) => {
                    let e = PbxError::NotSent(m.clone());
                    self.fail(&call, &e, release(&call).as_ref()).await?;
                    // Never reached Infinity: not an attempt the caps count.
                    self.compliance
                        .withdraw(
                            &call.tenant_id,
                            call.id.as_str(),
                            &format!("not sent to Infinity: {m}"),
                        )
                        .await;
                    return Err(GwError::WithCall {
                        call_id: call.id.as_str().to_owned(),
                        inner: Box::new(GwError::Unavailable(format!(
                            "Infinity is unreachable: {m}"
                        ))),
                    });
                }
                Err(PbxError::Upstream(m) | PbxError::Ambiguous(m)) => {
                    // The dial may have happened: keep the lease until the callback, the
                    // reconciler or the maximum age settles it.
                    tracing::warn!(call_id = %call.id, error = %m, "dial outcome unknown; lease kept");
                    self.calls.mark_unknown(&call.id, &m).await?;
                    return self.current(call).await;
                }
            }
        }
    }

    async fn current(&self, call: Call) -> Result<Call, GwError> {
        Ok(self.calls.call(&call.id).await?.unwrap_or(call))
    }

    async fn fail(
        &self,
        call: &Call,
        e: &PbxError,
        release: Option<&crate::domain::call::Release>,
    ) -> Result<(), GwError> {
        let (code, message) = e.code_and_message();
        tracing::info!(call_id = %call.id, code = %code, "dial failed; releasing the extension");
        self.calls
            .mark_failed(&call.id, &code, &message, release)
            .await?;
        if let Some(r) = release {
            self.settling.flush_release(r).await;
        }
        Ok(())
    }

    async fn tenant_call(&self, tenant: &TenantId, id: &CallId) -> Result<Option<Call>, GwError> {
        Ok(self
            .calls
            .call(id)
            .await?
            .filter(|c| &c.tenant_id == tenant))
    }

    /// A call of a tenant.
    pub async fn get(&self, tenant: &TenantId, id: &CallId) -> Result<Call, GwError> {
        self.tenant_call(tenant, id)
            .await?
            .ok_or_else(|| GwError::NotFound(format!("call_id: no call {id} in tenant {tenant}")))
    }

    /// A page of a tenant's calls, newest first (`filter.limit` + 1 are read to know whether
    /// there is a next page).
    pub async fn list(&self, filter: &CallFilter) -> Result<Vec<Call>, GwError> {
        self.calls.list_calls(filter).await
    }

    /// The calls of a window counted by status, result and hang-up cause.
    pub async fn summarize(&self, filter: &SummaryFilter) -> Result<Vec<SummaryRow>, GwError> {
        self.calls.summarize_calls(filter).await
    }

    /// A download link for the call's recording: recordurl, else GetRecodeFile(recordfilename).
    pub async fn recording(&self, tenant: &TenantId, id: &CallId) -> Result<Recording, GwError> {
        let call = self.get(tenant, id).await?;
        if call.status != CallStatus::Completed {
            return Err(GwError::FailedPrecondition(format!(
                "call {id} is {}: no recording yet",
                call.status.as_str()
            )));
        }
        if let Some(url) = call.record_url.filter(|u| !u.is_empty()) {
            return Ok(Recording {
                url,
                expires: String::new(),
                source: "recordurl",
            });
        }
        let Some(file) = call.record_filename.filter(|f| !f.is_empty()) else {
            return Err(GwError::NotFound(format!(
                "call_id: call {id} has no recording"
            )));
        };
        let cfg = self.tenants.config(tenant).await?;
        match self.pbx.recording_link(&cfg, &file).await {
            Ok(l) => Ok(Recording {
                url: l.url,
                expires: l.expires,
                source: "get_recode_file",
            }),
            Err(PbxError::Refused { code, message }) if code == "1029" => Err(GwError::NotFound(
                format!("call_id: Infinity no longer has the recording ({message})"),
            )),
            Err(e) => Err(GwError::Unavailable(e.to_string())),
        }
    }

    /// Asks Infinity to hang up the call's extension (best effort).
    pub async fn hang_up(&self, tenant: &TenantId, id: &CallId) -> Result<String, GwError> {
        let call = self.get(tenant, id).await?;
        if !call.status.is_open() {
            return Err(GwError::FailedPrecondition(format!(
                "call {id} is {}: nothing to hang up",
                call.status.as_str()
            )));
        }
        let cfg = self.tenants.config(tenant).await?;
        let Some(lease) = call.lease.filter(|_| !call.lease_released) else {
            return Err(GwError::FailedPrecondition(format!(
                "call {id} holds no extension: nothing to hang up"
            )));
        };
        // HangupCall names only the extension: make sure it is still this call's (an operator
        // may have freed it, and it may ring for another collector now). Renewing with the
        // call's own fencing token succeeds only while the lease is live and ours.
        if let Err(e) = self
            .leases
            .renew(&lease.lease_id, lease.fencing_token, cfg.lease_ttl_seconds)
            .await
        {
            return Err(match e {
                LeaseError::Refused(_) => GwError::FailedPrecondition(format!(
                    "call {id} no longer holds extension {}: not hanging up another call",
                    lease.extension_number
                )),
                unreachable @ LeaseError::Unreachable(_) => unreachable.into(),
            });
        }
        let ext = lease.extension_number;
        match self.pbx.hang_up(&cfg, &ext).await {
            Ok(m) => Ok(m),
            Err(PbxError::Refused { code, message }) if code == "1015" => {
                Err(GwError::FailedPrecondition(format!(
                    "extension {ext} is not in a call ({message})"
                )))
            }
            Err(PbxError::Refused { code, message }) if code == "400" => {
                Err(GwError::Unimplemented(format!(
                    "the tenant's Infinity does not support App.Sip_Call.HangupCall ({message})"
                )))
            }
            Err(PbxError::Refused { code, message }) => Err(GwError::FailedPrecondition(format!(
                "Infinity refused the hang-up: {code} {message}"
            ))),
            Err(e @ PbxError::Auth { .. }) => Err(GwError::FailedPrecondition(e.to_string())),
            Err(e) => Err(GwError::Unavailable(e.to_string())),
        }
    }
}

/// An existing call for the same idempotency key: the same request again, or a conflict.
fn replay(existing: Call, input: &MakeCall, destination: &Phone) -> Result<Call, GwError> {
    if existing.collector_id != input.collector
        || existing.case_id != input.case_id
        || existing.destination_number != destination.e164()
    {
        return Err(GwError::WithCall {
            call_id: existing.id.as_str().to_owned(),
            inner: Box::new(GwError::FailedPrecondition(
                "idempotency_key: already used for another call (different collector, case or destination)".into(),
            )),
        });
    }
    Ok(existing)
}
