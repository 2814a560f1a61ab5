//! What ends a call and frees its lease: Infinity's record of the call (the callback, or the
//! reconciler's GetBill lookup), expiry at the maximum age, and the two outboxes that carry
//! what the allocator owes back (lease releases, pools of deleted configs). Safe with several
//! replicas: outbox rows and open calls are claimed in the database before they are worked on,
//! and every step is idempotent.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use cco_platform::coalesce::Batcher;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::CallTuning;
use super::tenants::Tenants;
use crate::domain::call::{Call, CallId, Release, ReleaseReason};
use crate::domain::config::TenantConfig;
use crate::domain::{CaseId, GwError, TenantId};
use crate::metrics::GatewayMetrics;
use crate::ports::{LeaseError, Leases, Pbx};
use crate::store::calls::{CallStore, Completed, PoolPurge, RecordOf, ReleaseNow, Unmatched};

/// What a callback did to the call it names.
#[derive(Debug, Clone, PartialEq)]
pub enum CallbackOutcome {
    /// The call (by customuuid, or the open call of the case by memberid) took the record, or
    /// had taken one already.
    Settled(CallId, Completed),
    /// No call matches; the reason says what was looked for.
    Unmatched(String),
}

/// Releases the allocator confirmed, waiting to be cleared from the outbox together.
type Confirmations = Batcher<(), (String, CallId), ()>;

/// The longest a completing transaction waits for the allocator to confirm a release before
/// it queues the release in the outbox instead.
pub const RELEASE_IN_TX_DEADLINE: Duration = Duration::from_millis(500);

/// A release confirmed slower than this also sends the next completions' releases through the
/// outbox for a while (see [`ALLOCATOR_DOWN_FOR_MS`]).
const RELEASE_IN_TX_SLOW: Duration = Duration::from_millis(100);

/// After a release failed, timed out or was slow, completions queue their releases without trying for
/// this long, so an allocator outage does not hold every callback's transaction open.
const ALLOCATOR_DOWN_FOR_MS: i64 = 5_000;

fn allocator_down(until: &AtomicI64) {
    until.store(
        Utc::now()
            .timestamp_millis()
            .saturating_add(ALLOCATOR_DOWN_FOR_MS),
        Ordering::Relaxed,
    );
}

/// Settling calls and their leases.
#[derive(Clone)]
pub struct Settling {
    tenants: Tenants,
    calls: Arc<dyn CallStore>,
    leases: Arc<dyn Leases>,
    pbx: Arc<dyn Pbx>,
    tuning: CallTuning,
    metrics: GatewayMetrics,
    confirmations: Arc<Confirmations>,
    /// Until when (Unix milliseconds) releases are not tried inside a transaction.
    allocator_down_until: Arc<AtomicI64>,
}

impl std::fmt::Debug for Settling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settling").finish_non_exhaustive()
    }
}

fn backoff(attempts: i32) -> chrono::Duration {
    chrono::Duration::seconds(i64::from(attempts.clamp(1, 6)).pow(2))
}

impl Settling {
    pub(super) fn new(
        tenants: Tenants,
        calls: Arc<dyn CallStore>,
        leases: Arc<dyn Leases>,
        pbx: Arc<dyn Pbx>,
        tuning: CallTuning,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            confirmations: Arc::new(Batcher::new(tuning.coalesce, |j: &(String, CallId)| {
                j.0.as_str()
            })),
            allocator_down_until: Arc::default(),
            tenants,
            calls,
            leases,
            pbx,
            tuning,
            metrics,
        }
    }

    pub(super) fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.confirmations.register(
            registry,
            "gateway_coalesced_release_confirmations",
            "release confirmations",
        );
    }

    /// The tenant's config for checking a callback; `None` when the tenant has none (or the
    /// text is not a tenant id).
    pub async fn callback_config(&self, tenant: &str) -> Result<Option<TenantConfig>, GwError> {
        match TenantId::parse("tenant_id", tenant) {
            Ok(t) => self.tenants.find(&t).await,
            Err(_) => Ok(None),
        }
    }

    /// A call by our id, whatever its tenant (the generic callback URL learns the tenant from
    /// the call it names).
    pub async fn call(&self, id: &CallId) -> Result<Option<Call>, GwError> {
        self.calls.call(id).await
    }

    /// Settles the call a tenant's callback names with the record `record` makes of it: by
    /// `customuuid` (our call id), else the newest open call of the case in `memberid`.
    pub async fn settle_callback(
        &self,
        tenant: &TenantId,
        customuuid: Option<&str>,
        memberid: Option<&str>,
        record: RecordOf<'_>,
    ) -> Result<CallbackOutcome, GwError> {
        let id = match customuuid.and_then(|c| CallId::parse("customuuid", c).ok()) {
            Some(id) => Some(id),
            None => match memberid.and_then(|m| CaseId::parse("memberid", m).ok()) {
                Some(case) => self
                    .calls
                    .open_call_for_case(tenant, case.as_str())
                    .await?
                    .map(|c| c.id),
                None => None,
            },
        };
        if let Some(id) = id
            && let Some(done) = self.settle(tenant, &id, record).await?
        {
            return Ok(CallbackOutcome::Settled(id, done));
        }
        Ok(CallbackOutcome::Unmatched(format!(
            "no call matches customuuid {} or memberid {}",
            cco_platform::validate::quote(customuuid.unwrap_or_default()),
            cco_platform::validate::quote(memberid.unwrap_or_default())
        )))
    }

    /// Keeps a callback that matched no call, for audit and reconciliation.
    pub async fn record_unmatched(&self, u: &Unmatched) -> Result<(), GwError> {
        self.calls.insert_unmatched(u).await
    }

    /// Applies Infinity's record of a finished call (callback or GetBill) and frees the lease,
    /// in one transaction. On PostgreSQL the release is sent while the transaction holds the
    /// call (at most [`RELEASE_IN_TX_DEADLINE`]); only if the allocator does not confirm it at
    /// once is it queued in the outbox, in the same transaction. On SQLite (whose write
    /// transaction locks the whole database) it is queued and sent after the commit. `None`
    /// when the tenant has no such call.
    #[tracing::instrument(skip_all, fields(call_id = %id, tenant_id = %tenant))]
    pub async fn settle(
        &self,
        tenant: &TenantId,
        id: &CallId,
        record: RecordOf<'_>,
    ) -> Result<Option<Completed>, GwError> {
        let leases = self.leases.clone();
        let down_until = self.allocator_down_until.clone();
        let release_now = move |r: Release| -> BoxFuture<'static, Option<bool>> {
            let (leases, down_until) = (leases.clone(), down_until.clone());
            Box::pin(async move {
                // The allocator was slow or down a moment ago: do not hold the transaction for
                // it; the release is sent after the commit instead (and retried from the
                // outbox if that fails too).
                if Utc::now().timestamp_millis() < down_until.load(Ordering::Relaxed) {
                    return None;
                }
                let started = std::time::Instant::now();
                match tokio::time::timeout(RELEASE_IN_TX_DEADLINE, leases.release(&r)).await {
                    Ok(Ok(_) | Err(LeaseError::Refused(_))) => {
                        if started.elapsed() > RELEASE_IN_TX_SLOW {
                            // Confirmed, but slowly: while the allocator is this slow, do not
                            // hold callbacks' transactions (and connections) open for it.
                            tracing::warn!(lease_id = %r.lease_id, ms = started.elapsed().as_millis(), "allocator slow to release; releases go through the outbox for a while");
                            allocator_down(&down_until);
                        }
                        Some(true)
                    }
                    Ok(Err(LeaseError::Unreachable(e))) => {
                        tracing::warn!(lease_id = %r.lease_id, error = %e, "release failed; queued in the outbox");
                        allocator_down(&down_until);
                        Some(false)
                    }
                    Err(_) => {
                        tracing::warn!(lease_id = %r.lease_id, "allocator slow to release; queued in the outbox");
                        allocator_down(&down_until);
                        Some(false)
                    }
                }
            })
        };
        let in_tx: Option<ReleaseNow<'_>> = self.calls.locks_rows().then_some(&release_now);
        let Some(done) = self
            .calls
            .complete(tenant, id, record, ReleaseReason::CallEnded, in_tx)
            .await?
        else {
            return Ok(None);
        };
        if done.outcome == Completed::Applied {
            tracing::info!(result = ?done.call.result.map(|r| r.as_str()), talk_seconds = ?done.call.talk_seconds, "call completed");
            if let (Some(r), false) = (&done.release, done.tried) {
                self.flush_release(r).await;
            }
        }
        Ok(Some(done.outcome))
    }

    /// Sends one owed release to the allocator now; on success (or when the allocator knows no
    /// such lease) the outbox row goes (confirmations arriving together are cleared in one
    /// transaction), otherwise it stays for the background worker. Never fails the caller.
    pub async fn flush_release(&self, r: &Release) {
        let done = match self.leases.release(r).await {
            Ok(_) | Err(LeaseError::Refused(_)) => true,
            Err(LeaseError::Unreachable(e)) => {
                let next = Utc::now() + backoff(r.attempts);
                let _ = self.calls.outbox_retry(&r.lease_id, &e, next).await;
                tracing::warn!(lease_id = %r.lease_id, error = %e, "release failed; will retry");
                false
            }
        };
        if done {
            let calls = self.calls.clone();
            let run = move |(), jobs: Vec<(String, CallId)>| {
                let calls = calls.clone();
                async move {
                    if let Err(e) = calls.outbox_done(&jobs).await {
                        tracing::warn!(error = %e, releases = jobs.len(), "could not clear confirmed releases from the outbox; they will be sent again");
                    }
                    vec![(); jobs.len()]
                }
            };
            let _ = self
                .confirmations
                .submit((), (r.lease_id.clone(), r.call_id.clone()), run)
                .await;
        }
    }

    /// Asks the allocator to delete a deleted config's extension pool now; on success the
    /// outbox row goes, otherwise it stays for the background worker. Never fails the caller.
    pub async fn flush_pool_purge(&self, p: &PoolPurge) {
        match self
            .leases
            .delete_config_pool(&p.tenant_id, &p.config_id)
            .await
        {
            Ok((deleted, leases_ended)) => {
                tracing::info!(config_id = %p.config_id, deleted, leases_ended, "extension pool of the deleted config removed");
                if let Err(e) = self.calls.pool_purge_done(&p.config_id).await {
                    tracing::warn!(error = %e, "could not clear the pool purge row; it will be retried");
                }
            }
            Err(e) => {
                let error = e.to_string();
                let next = Utc::now() + backoff(p.attempts);
                let _ = self
                    .calls
                    .pool_purge_retry(&p.config_id, &error, next)
                    .await;
                tracing::warn!(config_id = %p.config_id, error = %error, "pool deletion failed; will retry");
            }
        }
    }

    /// Sends every owed release and pool deletion that is due (background worker).
    pub async fn drain_outbox(&self) -> Result<usize, GwError> {
        let now = Utc::now();
        let due = self
            .calls
            .claim_outbox(now, now + chrono::Duration::seconds(30), 100)
            .await?;
        for r in &due {
            self.flush_release(r).await;
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
        for call in &claimed {
            if let Err(e) = self.reconcile_one(call, now).await {
                tracing::warn!(call_id = %call.id, error = %e, "reconcile failed; will retry");
            }
        }
        Ok(claimed.len())
    }

    async fn reconcile_one(&self, call: &Call, now: DateTime<Utc>) -> Result<(), GwError> {
        let cfg = self.tenants.find(&call.tenant_id).await?;
        if let Some(cfg) = &cfg {
            match self.pbx.find_record(cfg, call, now).await {
                Ok(Some(c)) => {
                    self.settle(&call.tenant_id, &call.id, &|_| c.clone())
                        .await?;
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(call_id = %call.id, error = %e, "GetBill failed"),
            }
        }
        if now - call.created_at > self.tuning.max_call_age {
            let release = call.owed_release(ReleaseReason::Reconciled);
            if self.calls.expire(&call.id, release.as_ref()).await? {
                tracing::info!(call_id = %call.id, "no record from Infinity within the maximum age: expired, lease freed");
                if let Some(r) = &release {
                    self.flush_release(r).await;
                }
            }
            return Ok(());
        }
        // Possibly still live: keep the extension ours until the call settles.
        let due = call
            .lease
            .as_ref()
            .and_then(|l| l.expires_at)
            .is_none_or(|t| t - now < self.tuning.reconcile_every * 3);
        if let (true, Some(lease), Some(cfg)) = (due, &call.lease, &cfg) {
            match self
                .leases
                .renew(&lease.lease_id, lease.fencing_token, cfg.lease_ttl_seconds)
                .await
            {
                Ok(Some(at)) => self.calls.set_lease_expiry(&call.id, at).await?,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(call_id = %call.id, error = %e, "lease renewal failed")
                }
            }
        }
        Ok(())
    }

    /// Updates the gauges of open calls, the outboxes and the reconciler's lag.
    pub async fn observe(&self) -> Result<(), GwError> {
        let snapshot = self.calls.snapshot(Utc::now()).await?;
        self.metrics.observe(&snapshot);
        Ok(())
    }
}
