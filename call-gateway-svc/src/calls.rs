//! The call flow: MakeCall, settling a call from Infinity's record (callback or GetBill), the
//! lease-release outbox, and the reconciler. No SQL and no protobuf here.
//!
//! Order of MakeCall (SPEC section 4): validate; replay an existing call for the idempotency
//! key; check config, collector and callback number; pick the caller number; lease an
//! extension (request id = call id, so identical concurrent requests share one lease); write the
//! record as `dialing` and commit; only then ask Infinity to dial. Every later transition is one
//! transaction that also queues the lease release when the lease must go (the outbox), so a
//! release is never lost even if the allocator is down or the gateway restarts.

use std::collections::BTreeMap;

use cco_contracts::allocator::v1 as apb;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::domain::config::{CallMode, CallerSelection, Strategy, TenantConfig};
use crate::domain::phone::Phone;
use crate::domain::{CaseId, CollectorId, GwError, IdempotencyKey, TenantId};
use crate::infinity::{BillQuery, DialParams, InfinityError, record};
use crate::service::Gateway;
use crate::store::calls::{Attempt, Completed, Completion, OutboxRow, PoolPurgeRow, RecordRow};

/// A validated MakeCall request.
#[derive(Debug, Clone)]
pub struct MakeCallInput {
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

/// The call id of an idempotency key: the same key always names the same call.
pub fn call_id_for_key(tenant: &TenantId, key: &IdempotencyKey) -> String {
    let d = Sha256::digest(format!("{}\u{1f}{}", tenant.as_str(), key.as_str()).as_bytes());
    hex::encode(&d[..16])
}

/// Our own id for a call without an idempotency key (32 lowercase hex).
pub fn new_call_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn status_msg(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn release_reason(reason: &str) -> apb::ReleaseReason {
    match reason {
        "dial_failed" => apb::ReleaseReason::DialFailed,
        "reconciled" => apb::ReleaseReason::Reconciled,
        "cancelled" => apb::ReleaseReason::Cancelled,
        _ => apb::ReleaseReason::CallEnded,
    }
}

/// Maps an allocator refusal to the gateway's error.
fn from_allocator(s: &tonic::Status) -> GwError {
    match s.code() {
        Code::ResourceExhausted => GwError::ResourceExhausted(s.message().to_owned()),
        Code::FailedPrecondition => GwError::FailedPrecondition(s.message().to_owned()),
        Code::NotFound => GwError::FailedPrecondition(s.message().to_owned()),
        Code::InvalidArgument => GwError::Internal(anyhow::anyhow!(
            "allocator refused our request: {}",
            s.message()
        )),
        _ => GwError::Unavailable(format!("allocator unavailable: {}", status_msg(s))),
    }
}

fn ts(t: Option<cco_contracts::pbjson_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.as_ref().and_then(cco_contracts::time::from_timestamp)
}

struct Leased {
    lease_id: String,
    extension_id: String,
    extension_number: String,
    fencing_token: i64,
    expires_at: Option<DateTime<Utc>>,
}

impl Gateway {
    /// Leases an extension for `request_id`. The allocator replays the lease of a request id it
    /// has seen; if that lease has ended meanwhile (an earlier attempt gave it back), a live one
    /// is asked for under a derived request id, so a retry never dials on a freed extension.
    async fn lease(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
        strategy: Option<Strategy>,
        request_id: &str,
    ) -> Result<Leased, GwError> {
        for n in 0..4 {
            let rid = if n == 0 {
                request_id.to_owned()
            } else {
                format!("{request_id}.r{n}")
            };
            let l = self.lease_once(tenant, collector, strategy, &rid).await?;
            if l.released_at.is_none() {
                return Ok(Leased {
                    lease_id: l.lease_id,
                    extension_id: l.extension_id,
                    extension_number: l.extension_number,
                    fencing_token: i64::try_from(l.fencing_token).unwrap_or(0),
                    expires_at: ts(l.expires_at),
                });
            }
            tracing::info!(request_id = %rid, "replayed lease has ended; asking for a live one");
        }
        Err(GwError::Unavailable(format!(
            "no live lease for request {request_id} after 4 attempts"
        )))
    }

    async fn lease_once(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
        strategy: Option<Strategy>,
        request_id: &str,
    ) -> Result<apb::Lease, GwError> {
        let strategy = match strategy {
            None => apb::Strategy::Unspecified,
            Some(Strategy::Lru) => apb::Strategy::Lru,
            Some(Strategy::RoundRobin) => apb::Strategy::RoundRobin,
            Some(Strategy::CollectorAffinity) => apb::Strategy::CollectorAffinity,
        };
        let req = apb::AcquireRequest {
            tenant_id: tenant.as_str().to_owned(),
            collector_id: collector.as_str().to_owned(),
            strategy: strategy.into(),
            request_id: request_id.to_owned(),
            ttl_seconds: 0,
        };
        // Acquire is idempotent per request id: when an answer is lost (timeout, restart),
        // asking again returns the lease that may already have been granted instead of leaking it.
        let mut attempt = 0;
        let resp = loop {
            let mut client = self.allocator.leases.clone();
            match client.acquire(req.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(s)
                    if attempt < 2
                        && matches!(
                            s.code(),
                            Code::Unavailable
                                | Code::Cancelled
                                | Code::DeadlineExceeded
                                | Code::Unknown
                        ) =>
                {
                    attempt += 1;
                    tracing::warn!(error = %status_msg(&s), attempt, "acquire failed; asking again with the same request id");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * 3u64.pow(attempt)))
                        .await;
                }
                Err(s) => return Err(from_allocator(&s)),
            }
        };
        resp.lease
            .ok_or_else(|| GwError::Internal(anyhow::anyhow!("allocator answered without a lease")))
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

    /// Places a call (see the module docs). Returns the record as it stands and whether this
    /// request was a replay of an earlier one.
    #[tracing::instrument(skip_all, fields(tenant_id = %input.tenant, collector_id = %input.collector, call_id))]
    pub async fn make_call(&self, input: MakeCallInput) -> Result<(RecordRow, bool), GwError> {
        check_custom_params(&input.custom_params)?;
        let cfg = match self.config(&input.tenant).await {
            Ok(c) => c,
            Err(GwError::NotFound(m)) => return Err(GwError::FailedPrecondition(m)),
            Err(e) => return Err(e),
        };
        let destination = Phone::parse(&input.destination, cfg.phone_region)
            .and_then(|p| p.check_kind(&cfg.allowed_number_types).map(|()| p))
            .map_err(|m| GwError::invalid("destination_number", m))?;
        let call_id = match &input.idempotency_key {
            Some(k) => call_id_for_key(&input.tenant, k),
            None => new_call_id(),
        };
        tracing::Span::current().record("call_id", tracing::field::display(&call_id));
        if input.idempotency_key.is_some()
            && let Some(existing) = self.calls.record(input.tenant.as_str(), &call_id).await?
        {
            return self
                .replay(existing, &input, &destination)
                .map(|r| (r, true));
        }
        if !cfg.is_active {
            return Err(GwError::FailedPrecondition(format!(
                "tenant {} is inactive: its Infinity call config is switched off",
                input.tenant
            )));
        }
        let collector = match self.collector(&input.tenant, &input.collector).await {
            Ok(c) => c,
            Err(GwError::NotFound(m)) => return Err(GwError::NotFound(m)),
            Err(e) => return Err(e),
        };
        if !collector.active {
            return Err(GwError::FailedPrecondition(format!(
                "collector {} is inactive",
                input.collector
            )));
        }
        if cfg.call_mode == CallMode::DoubleCall && collector.callback_number.is_none() {
            return Err(GwError::FailedPrecondition(format!(
                "collector {} has no callback number; double_call rings it first (set one with UpsertCollector)",
                input.collector
            )));
        }
        let caller = self
            .pick_caller(&cfg, input.caller_number.as_deref())
            .await?;
        let lease = self
            .lease(&input.tenant, &input.collector, input.strategy, &call_id)
            .await?;
        let dialled = format!(
            "{}{}",
            cfg.destination_prefix,
            destination.dial_digits(cfg.phone_region)
        );
        let now = Utc::now();
        let row = RecordRow {
            call_id: call_id.clone(),
            tenant_id: input.tenant.as_str().to_owned(),
            config_id: cfg.config_id.to_string(),
            supplier_id: cfg.supplier_id.clone(),
            case_id: input.case_id.as_str().to_owned(),
            collector_id: input.collector.as_str().to_owned(),
            destination_number: destination.e164().to_owned(),
            dialled_number: dialled.clone(),
            caller_number: caller.e164().to_owned(),
            extension_number: Some(lease.extension_number.clone()),
            extension_id: Some(lease.extension_id.clone()),
            lease_id: Some(lease.lease_id.clone()),
            fencing_token: Some(lease.fencing_token),
            lease_expires_at: lease.expires_at,
            lease_released: false,
            call_mode: cfg.call_mode.as_str().to_owned(),
            call_timeout_seconds: i32::try_from(cfg.call_timeout_seconds).unwrap_or(60),
            status: "dialing".into(),
            custom_params: serde_json::to_string(&input.custom_params)
                .map_err(|e| GwError::Internal(e.into()))?,
            idempotency_key: input
                .idempotency_key
                .as_ref()
                .map(|k| k.as_str().to_owned()),
            attempts: 1,
            reconcile_after: now + self.tuning.reconcile_after,
            created_at: now,
            updated_at: now,
            ..RecordRow::default()
        };
        // Written and committed before anything is sent to Infinity.
        let inserted = match self.calls.insert_record(&row).await {
            Ok(i) => i,
            Err(e) => {
                // No record means nobody else would ever free this lease: give it back now.
                self.flush_release(&OutboxRow {
                    lease_id: lease.lease_id.clone(),
                    call_id: call_id.clone(),
                    fencing_token: lease.fencing_token,
                    reason: "cancelled".into(),
                    attempts: 0,
                })
                .await;
                return Err(e);
            }
        };
        if let Some(existing) = inserted {
            // An identical concurrent request won the race: it dials, we report its call.
            return self
                .replay(existing, &input, &destination)
                .map(|r| (r, true));
        }
        tracing::info!(extension = %lease.extension_number, destination = %destination.masked(), "dialing");
        let record = self
            .dial(
                &cfg,
                row,
                &collector.callback_number,
                &caller,
                &dialled,
                input.strategy,
            )
            .await?;
        Ok((record, false))
    }

    fn replay(
        &self,
        existing: RecordRow,
        input: &MakeCallInput,
        destination: &Phone,
    ) -> Result<RecordRow, GwError> {
        if existing.collector_id != input.collector.as_str()
            || existing.case_id != input.case_id.as_str()
            || existing.destination_number != destination.e164()
        {
            return Err(GwError::WithCall {
                call_id: existing.call_id.clone(),
                inner: Box::new(GwError::FailedPrecondition(
                    "idempotency_key: already used for another call (different collector, case or destination)".into(),
                )),
            });
        }
        Ok(existing)
    }

    /// Sends the dial (twice at most: once more on another extension after codes 1010-1014).
    async fn dial(
        &self,
        cfg: &TenantConfig,
        mut row: RecordRow,
        callback_number: &Option<Phone>,
        caller: &Phone,
        dialled: &str,
        strategy: Option<Strategy>,
    ) -> Result<RecordRow, GwError> {
        let ep = Self::endpoint(cfg);
        let tenant = cfg.tenant_id.clone();
        let collector = CollectorId::parse("collector_id", &row.collector_id)?;
        loop {
            let params = DialParams {
                extnumber: row.extension_number.clone().unwrap_or_default(),
                destnumber: dialled.to_owned(),
                anumber: callback_number
                    .as_ref()
                    .map(|p| p.dial_digits(cfg.phone_region))
                    .unwrap_or_default(),
                bnumber: dialled.to_owned(),
                disnumber: caller.dial_digits(cfg.phone_region),
                userid: row.collector_id.clone(),
                memberid: row.case_id.clone(),
                customuuid: row.call_id.clone(),
                chengshudu: row.tenant_id.clone(),
            };
            let sent = match cfg.call_mode {
                CallMode::DoubleCall => self.infinity.double_call(&ep, &params).await,
                CallMode::MakeCall => self.infinity.make_call(&ep, &params).await,
            };
            let release = || OutboxRow::owed_by(&row, "dial_failed");
            match sent {
                Ok(_) => {
                    self.calls.mark_ringing(&row.call_id).await?;
                    if let Some(ext) = &row.extension_number {
                        self.calls
                            .set_last_extension(&row.tenant_id, &row.collector_id, ext)
                            .await?;
                    }
                    tracing::info!(call_id = %row.call_id, "Infinity accepted the dial");
                    return self.current(row).await;
                }
                Err(e) if e.is_extension_error() => {
                    let code = e.code().unwrap_or_default().to_owned();
                    tracing::warn!(call_id = %row.call_id, code = %code, extension = ?row.extension_number, "extension refused by Infinity; taking it offline");
                    // Force-offline ends our own lease in the same step (reason extension_offline).
                    let offline = self.take_offline(&row).await;
                    if !offline {
                        self.fail(&row, &e, release().as_ref()).await?;
                        return self.current(row).await;
                    }
                    if row.attempts >= 2 {
                        self.fail(&row, &e, None).await?;
                        return self.current(row).await;
                    }
                    match self
                        .lease(&tenant, &collector, strategy, &format!("{}-2", row.call_id))
                        .await
                    {
                        Ok(l) => {
                            let attempt = Attempt {
                                extension_number: l.extension_number.clone(),
                                extension_id: l.extension_id.clone(),
                                lease_id: l.lease_id.clone(),
                                fencing_token: l.fencing_token,
                                lease_expires_at: l.expires_at,
                                attempts: 2,
                            };
                            self.calls.set_attempt(&row.call_id, &attempt).await?;
                            row.extension_number = Some(l.extension_number);
                            row.extension_id = Some(l.extension_id);
                            row.lease_id = Some(l.lease_id);
                            row.fencing_token = Some(l.fencing_token);
                            row.attempts = 2;
                        }
                        Err(err) => {
                            self.calls
                                .mark_failed(
                                    &row.call_id,
                                    &code,
                                    &format!("{e}; no other extension: {err}"),
                                    None,
                                )
                                .await?;
                            return self.current(row).await;
                        }
                    }
                }
                Err(e @ (InfinityError::Refused { .. } | InfinityError::Auth { .. })) => {
                    self.fail(&row, &e, release().as_ref()).await?;
                    return self.current(row).await;
                }
                Err(InfinityError::NotSent(m)) => {
                    let e = InfinityError::NotSent(m.clone());
                    self.fail(&row, &e, release().as_ref()).await?;
                    return Err(GwError::WithCall {
                        call_id: row.call_id.clone(),
                        inner: Box::new(GwError::Unavailable(format!(
                            "Infinity is unreachable: {m}"
                        ))),
                    });
                }
                Err(InfinityError::Upstream(m) | InfinityError::Ambiguous(m)) => {
                    // The dial may have happened: keep the lease until the callback, the
                    // reconciler or the maximum age settles it.
                    tracing::warn!(call_id = %row.call_id, error = %m, "dial outcome unknown; lease kept");
                    self.calls.mark_unknown(&row.call_id, &m).await?;
                    return self.current(row).await;
                }
            }
        }
    }

    async fn current(&self, row: RecordRow) -> Result<RecordRow, GwError> {
        Ok(self
            .calls
            .record(&row.tenant_id, &row.call_id)
            .await?
            .unwrap_or(row))
    }

    async fn fail(
        &self,
        row: &RecordRow,
        e: &InfinityError,
        release: Option<&OutboxRow>,
    ) -> Result<(), GwError> {
        let (code, message) = match e {
            InfinityError::Refused { code, message } => (code.clone(), message.clone()),
            InfinityError::Auth { ret, message } => (ret.to_string(), message.clone()),
            InfinityError::NotSent(m) => ("not_sent".into(), m.clone()),
            InfinityError::Upstream(m) => ("upstream_error".into(), m.clone()),
            InfinityError::Ambiguous(m) => ("ambiguous".into(), m.clone()),
        };
        tracing::info!(call_id = %row.call_id, code = %code, "dial failed; releasing the extension");
        self.calls
            .mark_failed(&row.call_id, &code, &message, release)
            .await?;
        if let Some(o) = release {
            self.flush_release(o).await;
        }
        Ok(())
    }

    async fn take_offline(&self, row: &RecordRow) -> bool {
        let mut pool = self.allocator.pool.clone();
        let res = pool
            .update_extension(apb::UpdateExtensionRequest {
                tenant_id: row.tenant_id.clone(),
                extension_id: row.extension_id.clone().unwrap_or_default(),
                status: Some(apb::ExtensionStatus::Offline.into()),
                number: None,
                force: true,
            })
            .await;
        match res {
            Ok(_) => true,
            Err(s) => {
                tracing::warn!(error = %status_msg(&s), "could not take the extension offline");
                false
            }
        }
    }

    /// Sends one owed release to the allocator now; on success the outbox row goes, otherwise
    /// it stays for the background worker. Never fails the caller.
    pub async fn flush_release(&self, o: &OutboxRow) {
        let mut client = self.allocator.leases.clone();
        let res = client
            .release(apb::ReleaseRequest {
                lease_id: o.lease_id.clone(),
                fencing_token: u64::try_from(o.fencing_token).unwrap_or(0),
                reason: release_reason(&o.reason).into(),
                tenant_id: String::new(),
            })
            .await;
        let done = match res {
            Ok(r) => {
                let r = r.into_inner();
                if !r.released {
                    tracing::info!(lease_id = %o.lease_id, reason = %r.reason, "release changed nothing (stale or already released)");
                }
                true
            }
            Err(s) if s.code() == Code::NotFound || s.code() == Code::InvalidArgument => true,
            Err(s) => {
                let backoff =
                    chrono::Duration::seconds(i64::from(o.attempts.clamp(0, 6)).pow(2).max(1));
                let _ = self
                    .calls
                    .outbox_retry(&o.lease_id, &status_msg(&s), Utc::now() + backoff)
                    .await;
                tracing::warn!(lease_id = %o.lease_id, error = %status_msg(&s), "release failed; will retry");
                false
            }
        };
        if done && let Err(e) = self.calls.outbox_done(&o.lease_id, &o.call_id).await {
            tracing::warn!(error = %e, "could not clear the outbox row; it will be retried");
        }
    }

    /// Asks the allocator to delete a deleted config's extension pool now; on success the
    /// outbox row goes, otherwise it stays for the background worker. Never fails the caller.
    pub async fn flush_pool_purge(&self, p: &PoolPurgeRow) {
        let mut client = self.allocator.pool.clone();
        let res = client
            .delete_config_pool(apb::DeleteConfigPoolRequest {
                tenant_id: p.tenant_id.clone(),
                config_id: p.config_id.clone(),
            })
            .await;
        match res {
            Ok(r) => {
                let r = r.into_inner();
                tracing::info!(config_id = %p.config_id, deleted = r.deleted, leases_ended = r.leases_ended, "extension pool of the deleted config removed");
                if let Err(e) = self.calls.pool_purge_done(&p.config_id).await {
                    tracing::warn!(error = %e, "could not clear the pool purge row; it will be retried");
                }
            }
            Err(s) => {
                let backoff = chrono::Duration::seconds(i64::from(p.attempts.clamp(1, 6)).pow(2));
                let _ = self
                    .calls
                    .pool_purge_retry(&p.config_id, &status_msg(&s), Utc::now() + backoff)
                    .await;
                tracing::warn!(config_id = %p.config_id, error = %status_msg(&s), "pool deletion failed; will retry");
            }
        }
    }

    /// Applies Infinity's record of a finished call (callback or GetBill) and frees the lease.
    #[tracing::instrument(skip_all, fields(call_id = %row.call_id, tenant_id = %row.tenant_id))]
    pub async fn settle(&self, row: &RecordRow, c: &Completion) -> Result<Completed, GwError> {
        let release = OutboxRow::owed_by(row, "call_ended");
        let outcome = self
            .calls
            .complete(&row.call_id, c, release.as_ref())
            .await?;
        if outcome == Completed::Applied {
            tracing::info!(result = %c.result, talk_seconds = c.talk_seconds, "call completed");
            if let Some(o) = &release {
                self.flush_release(o).await;
            }
        }
        Ok(outcome)
    }

    /// Sends every owed release that is due (background worker).
    pub async fn drain_outbox(&self) -> Result<usize, GwError> {
        let now = Utc::now();
        let due = self
            .calls
            .claim_outbox(now, now + chrono::Duration::seconds(30), 100)
            .await?;
        for o in &due {
            self.flush_release(o).await;
        }
        let purges = self
            .calls
            .claim_pool_purges(now, now + chrono::Duration::seconds(60), 10)
            .await?;
        for p in &purges {
            self.flush_pool_purge(p).await;
        }
        Ok(due.len() + purges.len())
    }

    /// One reconciler pass: looks up open calls with GetBill, settles what Infinity knows,
    /// keeps the leases of calls that may still be live, and expires calls past the maximum age.
    pub async fn reconcile(&self) -> Result<usize, GwError> {
        let now = Utc::now();
        let claimed = self
            .calls
            .claim_open(now, now + self.tuning.reconcile_every, 100)
            .await?;
        for row in &claimed {
            if let Err(e) = self.reconcile_one(row, now).await {
                tracing::warn!(call_id = %row.call_id, error = %e, "reconcile failed; will retry");
            }
        }
        Ok(claimed.len())
    }

    async fn reconcile_one(&self, row: &RecordRow, now: DateTime<Utc>) -> Result<(), GwError> {
        let tenant = TenantId::parse("tenant_id", &row.tenant_id)?;
        let cfg = self.config(&tenant).await.ok();
        if let Some(cfg) = &cfg {
            let tz = cfg.callback_time_zone;
            let fmt =
                |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string();
            let q = BillQuery {
                starttime: fmt(row
                    .created_at
                    .checked_sub_signed(chrono::Duration::minutes(10))
                    .unwrap_or(row.created_at)),
                endtime: fmt(now
                    .checked_add_signed(chrono::Duration::minutes(1))
                    .unwrap_or(now)),
                customuuid: Some(row.call_id.clone()),
                currentpage: 1,
                itemsperpage: 10,
            };
            match self.infinity.get_bill(&Self::endpoint(cfg), &q).await {
                Ok(page) => {
                    let found = page.bills.iter().find(|b| {
                        b.get("customuuid").and_then(serde_json::Value::as_str)
                            == Some(row.call_id.as_str())
                    });
                    if let Some(bill) = found {
                        let map = record::flatten(bill);
                        let raw = serde_json::Value::Object(bill.clone()).to_string();
                        let window = record::TimeWindow::around(row.created_at, now);
                        let c = record::completion(&map, tz, window, raw);
                        self.settle(row, &c).await?;
                        return Ok(());
                    }
                }
                Err(e) => tracing::warn!(call_id = %row.call_id, error = %e, "GetBill failed"),
            }
        }
        if now - row.created_at > self.tuning.max_call_age {
            let release = OutboxRow::owed_by(row, "reconciled");
            if self.calls.expire(&row.call_id, release.as_ref()).await? {
                tracing::info!(call_id = %row.call_id, "no record from Infinity within the maximum age: expired, lease freed");
                if let Some(o) = &release {
                    self.flush_release(o).await;
                }
            }
            return Ok(());
        }
        // Possibly still live: keep the extension ours until the call settles.
        let due = row
            .lease_expires_at
            .is_none_or(|t| t - now < self.tuning.reconcile_every * 3);
        if let (true, Some(lease_id), Some(cfg)) = (due, &row.lease_id, &cfg) {
            let mut client = self.allocator.leases.clone();
            match client
                .renew(apb::RenewRequest {
                    lease_id: lease_id.clone(),
                    fencing_token: u64::try_from(row.fencing_token.unwrap_or(0)).unwrap_or(0),
                    ttl_seconds: cfg.lease_ttl_seconds,
                    tenant_id: String::new(),
                })
                .await
            {
                Ok(r) => {
                    if let Some(at) = r.into_inner().lease.and_then(|l| ts(l.expires_at)) {
                        self.calls.set_lease_expiry(&row.call_id, at).await?;
                    }
                }
                Err(s) => {
                    tracing::warn!(call_id = %row.call_id, error = %status_msg(&s), "lease renewal failed")
                }
            }
        }
        Ok(())
    }

    /// A call of a tenant.
    pub async fn call(&self, tenant: &TenantId, call_id: &str) -> Result<RecordRow, GwError> {
        self.calls
            .record(tenant.as_str(), call_id)
            .await?
            .ok_or_else(|| {
                GwError::NotFound(format!("call_id: no call {call_id} in tenant {tenant}"))
            })
    }

    /// A download link for the call's recording: recordurl, else GetRecodeFile(recordfilename).
    pub async fn recording(
        &self,
        tenant: &TenantId,
        call_id: &str,
    ) -> Result<(String, String, &'static str), GwError> {
        let row = self.call(tenant, call_id).await?;
        if row.status != "completed" {
            return Err(GwError::FailedPrecondition(format!(
                "call {call_id} is {}: no recording yet",
                row.status
            )));
        }
        if let Some(url) = row.record_url.filter(|u| !u.is_empty()) {
            return Ok((url, String::new(), "recordurl"));
        }
        let Some(file) = row.record_filename.filter(|f| !f.is_empty()) else {
            return Err(GwError::NotFound(format!(
                "call_id: call {call_id} has no recording"
            )));
        };
        let cfg = self.config(tenant).await?;
        match self
            .infinity
            .recording_link(&Self::endpoint(&cfg), &file)
            .await
        {
            Ok(l) => Ok((l.url, l.expires, "get_recode_file")),
            Err(InfinityError::Refused { code, message }) if code == "1029" => {
                Err(GwError::NotFound(format!(
                    "call_id: Infinity no longer has the recording ({message})"
                )))
            }
            Err(e) => Err(GwError::Unavailable(e.to_string())),
        }
    }

    /// Asks Infinity to hang up the call's extension (best effort).
    pub async fn hang_up(&self, tenant: &TenantId, call_id: &str) -> Result<String, GwError> {
        let row = self.call(tenant, call_id).await?;
        if !matches!(row.status.as_str(), "dialing" | "ringing" | "unknown") {
            return Err(GwError::FailedPrecondition(format!(
                "call {call_id} is {}: nothing to hang up",
                row.status
            )));
        }
        let cfg = self.config(tenant).await?;
        let ext = row.extension_number.unwrap_or_default();
        match self.infinity.hangup(&Self::endpoint(&cfg), &ext).await {
            Ok(m) => Ok(m),
            Err(InfinityError::Refused { code, message }) if code == "1015" => {
                Err(GwError::FailedPrecondition(format!(
                    "extension {ext} is not in a call ({message})"
                )))
            }
            Err(InfinityError::Refused { code, message }) if code == "400" => {
                Err(GwError::Unimplemented(format!(
                    "the tenant's Infinity does not support App.Sip_Call.HangupCall ({message})"
                )))
            }
            Err(InfinityError::Refused { code, message }) => Err(GwError::FailedPrecondition(
                format!("Infinity refused the hang-up: {code} {message}"),
            )),
            Err(e @ InfinityError::Auth { .. }) => Err(GwError::FailedPrecondition(e.to_string())),
            Err(e) => Err(GwError::Unavailable(e.to_string())),
        }
    }
}
