//! The allocator's rules: applies tenant policies, validates batches, and turns store outcomes
//! into results or errors. No SQL and no protobuf here.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::domain::{
    AllocError, CollectorId, ConfigId, ExtStatus, Extension, ExtensionNumber, ExtensionUsage,
    Lease, PoolCounts, ReleaseReason, RequestId, Strategy, TenantId,
};
use crate::policy::PolicySource;
use crate::store::{
    AcquireCmd, AcquireOutcome, DeleteOutcome, ExtUpdate, LeaseChange, ListFilter, Store,
    UpdateOutcome,
};

/// The most characters of an import line echoed in the report.
pub const ECHO_CHARS: usize = 40;

/// Most numbers in one BatchImport, and ids in one BatchDeleteExtensions.
pub const MAX_BATCH: usize = 10_000;
/// Most extensions in one page.
pub const MAX_PAGE: u32 = 1_000;
/// Page size when none is given.
pub const DEFAULT_PAGE: u32 = 100;

/// How many more times an Acquire runs when its pick found no free extension but the pool's
/// count, read right after on a fresh snapshot, shows some. On PostgreSQL a pick reads the
/// free rows its statement's snapshot saw, in LRU order, skipping locked ones; when many
/// clients lease one tenant's pool and the pick's backend falls behind (two busy cores), the
/// others can take every row ahead of it, while the rows they free meanwhile are newer than
/// its snapshot: "pool empty" with extensions free (seen: 4-14 in 3 s, 32 clients on 34
/// extensions). A new statement takes a new snapshot.
pub const RACED_PICK_RETRIES: u32 = 3;

/// A validated acquire request.
#[derive(Debug, Clone)]
pub struct AcquireInput {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Collector.
    pub collector_id: CollectorId,
    /// Idempotency key.
    pub request_id: RequestId,
    /// Requested strategy; `None` uses the policy's default.
    pub strategy: Option<Strategy>,
    /// Requested lease time; `None` uses the policy's.
    pub ttl_seconds: Option<u32>,
}

/// A lease time given by a client: 1-86400 seconds, 0 for "the policy's".
pub fn parse_ttl(field: &'static str, v: u32) -> Result<Option<u32>, AllocError> {
    match v {
        0 => Ok(None),
        1..=86_400 => Ok(Some(v)),
        _ => Err(AllocError::invalid(
            field,
            format!("must be 1-86400 seconds (or 0 for the policy's), got {v}"),
        )),
    }
}

/// One line's outcome in a batch import.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportLine {
    /// Imported as extension id.
    Imported(Uuid),
    /// Already there, or repeated; the reason says which.
    Duplicate(String),
    /// Not a valid number; the reason says why.
    Invalid(String),
}

/// The outcome of a batch import: `(1-based line, trimmed input, outcome)` per non-blank line.
pub type ImportReport = Vec<(u32, String, ImportLine)>;

/// The allocator service.
#[derive(Clone)]
pub struct Allocator {
    store: Arc<dyn Store>,
    policy: Arc<dyn PolicySource>,
}

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocator")
            .field("backend", &self.store.backend())
            .finish()
    }
}

impl Allocator {
    /// Builds the service over a store and a policy source.
    pub fn new(store: Arc<dyn Store>, policy: Arc<dyn PolicySource>) -> Self {
        Self { store, policy }
    }

    /// The store (for the reaper).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Leases an extension for `input`, under the tenant's policy.
    #[tracing::instrument(skip_all, fields(tenant_id = %input.tenant_id, collector_id = %input.collector_id, request_id = %input.request_id, lease_id))]
    pub async fn acquire(&self, input: AcquireInput) -> Result<(Lease, bool), AllocError> {
        let policy = match self.policy.policy(&input.tenant_id).await {
            Ok(p) => p,
            Err(AllocError::NotFound(m)) => return Err(AllocError::FailedPrecondition(m)),
            Err(e) => return Err(e),
        };
        if !policy.active {
            return Err(AllocError::FailedPrecondition(format!(
                "tenant {} is inactive: its Infinity call config is switched off",
                input.tenant_id
            )));
        }
        let strategy = input.strategy.unwrap_or(policy.default_strategy);
        let ttl = input.ttl_seconds.unwrap_or(policy.lease_ttl_seconds);
        let fingerprint = format!(
            "{}|{}|{}",
            input.collector_id,
            input.strategy.map_or("default", Strategy::as_str),
            input.ttl_seconds.unwrap_or(0)
        );
        let cmd = AcquireCmd {
            tenant_id: input.tenant_id.clone(),
            collector_id: input.collector_id,
            request_id: input.request_id,
            strategy,
            ttl_seconds: ttl,
            cooldown_seconds: policy.cooldown_seconds,
            cap: policy.max_concurrent_calls,
            fingerprint,
        };
        let mut outcome = self.store.acquire(&cmd).await?;
        for _ in 0..RACED_PICK_RETRIES {
            match &outcome {
                AcquireOutcome::PoolEmpty(c) if c.free_now() > 0 => {
                    tracing::debug!(free = c.free_now(), "pick raced: running the acquire again");
                    outcome = self.store.acquire(&cmd).await?;
                }
                _ => break,
            }
        }
        match outcome {
            AcquireOutcome::Granted { lease, replayed } => {
                tracing::Span::current()
                    .record("lease_id", tracing::field::display(lease.lease_id));
                tracing::info!(extension = %lease.extension_number, fencing_token = lease.fencing_token, replayed, "lease granted");
                Ok((lease, replayed))
            }
            AcquireOutcome::Conflict { existing } => Err(AllocError::FailedPrecondition(format!(
                "request_id: {:?} was already used for lease {} with different parameters (collector, strategy or ttl)",
                existing.request_id, existing.lease_id
            ))),
            AcquireOutcome::CapReached { cap, live } => {
                Err(AllocError::ResourceExhausted(format!(
                    "concurrency cap reached: tenant {} holds {live} live leases, max_concurrent_calls is {cap}",
                    input.tenant_id
                )))
            }
            AcquireOutcome::PoolEmpty(c) => Err(AllocError::ResourceExhausted(format!(
                "pool empty: no free extension for tenant {} ({} total, {} in use, {} offline, {} cooling down)",
                input.tenant_id, c.total, c.in_use, c.offline, c.cooling_down
            ))),
        }
    }

    /// Reads a lease (for tenant checks).
    pub async fn lease(&self, lease_id: Uuid) -> Result<Lease, AllocError> {
        self.store
            .get_lease(lease_id)
            .await?
            .ok_or_else(|| AllocError::NotFound(format!("lease_id: no lease {lease_id}")))
    }

    /// Ends a lease; `Ok(Unchanged)` when the token is stale or the lease already ended.
    #[tracing::instrument(skip_all, fields(lease_id = %lease_id, fencing_token = token, reason = reason.as_str()))]
    pub async fn release(
        &self,
        lease_id: Uuid,
        token: i64,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError> {
        match self.store.release(lease_id, token, reason).await? {
            LeaseChange::NotFound => Err(AllocError::NotFound(format!(
                "lease_id: no lease {lease_id}"
            ))),
            other => Ok(other),
        }
    }

    /// Extends a live lease.
    #[tracing::instrument(skip_all, fields(lease_id = %lease.lease_id, tenant_id = %lease.tenant_id))]
    pub async fn renew(
        &self,
        lease: &Lease,
        token: i64,
        ttl: Option<u32>,
    ) -> Result<Lease, AllocError> {
        let ttl = match ttl {
            Some(t) => t,
            None => {
                let tenant = TenantId::parse("tenant_id", &lease.tenant_id)?;
                self.policy.policy(&tenant).await?.lease_ttl_seconds
            }
        };
        match self.store.renew(lease.lease_id, token, ttl).await? {
            LeaseChange::Changed(l) => Ok(l),
            LeaseChange::Unchanged { reason, .. } => Err(AllocError::FailedPrecondition(reason)),
            LeaseChange::NotFound => Err(AllocError::NotFound(format!(
                "lease_id: no lease {}",
                lease.lease_id
            ))),
        }
    }

    /// Counts the pool, and optionally usage over `[since, until)`.
    pub async fn stats(
        &self,
        tenant: &TenantId,
        window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> Result<(PoolCounts, Vec<ExtensionUsage>), AllocError> {
        let counts = self.store.counts(tenant).await?;
        let usage = match window {
            Some((since, until)) => {
                if since >= until {
                    return Err(AllocError::invalid(
                        "usage_since",
                        "must be before usage_until",
                    ));
                }
                self.store.usage(tenant, since, until).await?
            }
            None => Vec::new(),
        };
        Ok((counts, usage))
    }

    /// The default usage window: the 24 hours before `until` (default now).
    pub fn usage_window(
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> (DateTime<Utc>, DateTime<Utc>) {
        let until = until.unwrap_or_else(Utc::now);
        let day_before = until
            .checked_sub_signed(Duration::hours(24))
            .unwrap_or(until);
        (since.unwrap_or(day_before), until)
    }

    /// Imports numbers, reporting each non-blank line; valid new lines go in one transaction.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, lines = numbers.len()))]
    pub async fn import(
        &self,
        tenant: &TenantId,
        config_id: Option<ConfigId>,
        numbers: &[String],
    ) -> Result<ImportReport, AllocError> {
        if numbers.len() > MAX_BATCH {
            return Err(AllocError::invalid(
                "numbers",
                format!(
                    "at most {MAX_BATCH} entries per request, got {}",
                    numbers.len()
                ),
            ));
        }
        let policy = match self.policy.policy(tenant).await {
            Ok(p) => p,
            Err(AllocError::NotFound(m)) => return Err(AllocError::FailedPrecondition(m)),
            Err(e) => return Err(e),
        };
        let config_id = match (config_id, policy.config_id.is_empty()) {
            (Some(c), true) => c.as_str().to_owned(),
            (Some(c), false) if c.as_str() == policy.config_id => policy.config_id.clone(),
            (Some(c), false) => {
                return Err(AllocError::FailedPrecondition(format!(
                    "config_id: tenant {tenant} uses config {:?}, not {:?}",
                    policy.config_id,
                    c.as_str()
                )));
            }
            (None, _) => policy.config_id.clone(),
        };
        let mut report: ImportReport = Vec::new();
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut valid: Vec<ExtensionNumber> = Vec::new();
        let mut valid_at: Vec<usize> = Vec::new();
        for (i, raw) in numbers.iter().enumerate() {
            let line = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let input = raw.trim();
            if input.is_empty() {
                continue;
            }
            let outcome = match ExtensionNumber::parse_reason(input) {
                Err(reason) => ImportLine::Invalid(format!("number {reason}")),
                Ok(n) => match seen.get(n.as_str()) {
                    Some(first) => ImportLine::Duplicate(format!("repeats line {first}")),
                    None => {
                        seen.insert(n.as_str().to_owned(), line);
                        valid.push(n);
                        valid_at.push(report.len());
                        ImportLine::Imported(Uuid::nil())
                    }
                },
            };
            // The report echoes each line; a line far longer than any number is cut, so the
            // answer to 10,000 lines stays small.
            let shown = if input.chars().count() > ECHO_CHARS {
                format!("{}…", input.chars().take(ECHO_CHARS).collect::<String>())
            } else {
                input.to_owned()
            };
            report.push((line, shown, outcome));
        }
        if !valid.is_empty() {
            let ids = self.store.import(tenant, &config_id, &valid).await?;
            for (pos, id) in valid_at.into_iter().zip(ids) {
                report[pos].2 = match id {
                    Some(id) => ImportLine::Imported(id),
                    None => ImportLine::Duplicate("already in the pool".into()),
                };
            }
        }
        Ok(report)
    }

    /// Lists one page; returns the extensions and the number to continue after.
    pub async fn list(
        &self,
        mut filter: ListFilter,
    ) -> Result<(Vec<Extension>, Option<String>), AllocError> {
        filter.limit = match filter.limit {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(AllocError::invalid(
                    "page_size",
                    format!("must be at most {MAX_PAGE}, got {n}"),
                ));
            }
            n => n,
        };
        let limit = filter.limit as usize;
        // Ask for one more than the page to know whether another page follows.
        filter.limit += 1;
        let mut rows = self.store.list(&filter).await?;
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|e| e.number.clone())
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Reads one extension.
    pub async fn get_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Extension, AllocError> {
        self.store
            .get_extension(tenant, id)
            .await?
            .ok_or_else(|| not_found_ext(id))
    }

    /// Changes an extension's status or number.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, extension_id = %id))]
    pub async fn update_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        update: ExtUpdate,
    ) -> Result<Extension, AllocError> {
        if update.status == Some(ExtStatus::InUse) {
            return Err(AllocError::invalid(
                "status",
                "only available or offline can be set; leases are taken with Acquire",
            ));
        }
        if update.status.is_none() && update.number.is_none() {
            return Err(AllocError::invalid(
                "status",
                "nothing to change: give status or number",
            ));
        }
        match self.store.update_extension(tenant, id, &update).await? {
            UpdateOutcome::Updated(e) => Ok(*e),
            UpdateOutcome::NotFound => Err(not_found_ext(id)),
            UpdateOutcome::InUse => Err(AllocError::FailedPrecondition(format!(
                "extension {id} is in use: set force to end its lease and take it offline"
            ))),
            UpdateOutcome::NumberInUse => Err(AllocError::FailedPrecondition(format!(
                "number: extension {id} is in a live call; its number can change once the call has ended"
            ))),
            UpdateOutcome::NumberTaken => Err(AllocError::FailedPrecondition(format!(
                "number: another extension of tenant {tenant} already has number {:?}",
                update.number.as_ref().map_or("", ExtensionNumber::as_str)
            ))),
        }
    }

    /// Frees an extension by hand.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, extension_id = %id))]
    pub async fn release_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<LeaseChange, AllocError> {
        match self
            .store
            .release_extension(tenant, id, ReleaseReason::Manual)
            .await?
        {
            LeaseChange::NotFound => match self.store.get_extension(tenant, id).await? {
                Some(_) => Ok(LeaseChange::NotFound),
                None => Err(not_found_ext(id)),
            },
            other => Ok(other),
        }
    }

    /// Deletes extensions in one transaction.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, count = ids.len()))]
    pub async fn delete_extensions(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
        force: bool,
    ) -> Result<Vec<DeleteOutcome>, AllocError> {
        if ids.is_empty() {
            return Err(AllocError::invalid("extension_ids", "give at least one id"));
        }
        if ids.len() > MAX_BATCH {
            return Err(AllocError::invalid(
                "extension_ids",
                format!("at most {MAX_BATCH} ids per request, got {}", ids.len()),
            ));
        }
        self.store.delete_extensions(tenant, ids, force).await
    }

    /// Deletes every extension of `tenant` imported under `config` (the gateway deleted that
    /// config), ending their leases; returns how many were deleted and how many leases ended.
    /// Runs in batches of [`MAX_BATCH`], each one transaction, until none is left: safe to
    /// repeat, and a config's extensions never come back (imports name the current config id).
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, config_id = %config))]
    pub async fn delete_config_pool(
        &self,
        tenant: &TenantId,
        config: &ConfigId,
    ) -> Result<(u32, u32), AllocError> {
        let (mut deleted, mut ended) = (0u32, 0u32);
        let mut idle_rounds = 0;
        loop {
            let page = self
                .store
                .list(&ListFilter {
                    tenant_id: tenant.clone(),
                    config_id: Some(config.clone()),
                    status: None,
                    collector_id: None,
                    after_number: None,
                    limit: u32::try_from(MAX_BATCH).unwrap_or(u32::MAX),
                })
                .await?;
            if page.is_empty() {
                break;
            }
            let ids: Vec<Uuid> = page.iter().map(|e| e.id).collect();
            let mut progress = false;
            for outcome in self.store.delete_extensions(tenant, &ids, true).await? {
                if let DeleteOutcome::Deleted(lease) = outcome {
                    progress = true;
                    deleted = deleted.saturating_add(1);
                    if lease.is_some() {
                        ended = ended.saturating_add(1);
                    }
                }
            }
            // A forced batch delete skips an extension leased after it was listed (lock
            // order); the next round takes it. Give up after a few rounds without progress.
            idle_rounds = if progress { 0 } else { idle_rounds + 1 };
            if idle_rounds >= 3 {
                return Err(AllocError::Unavailable(format!(
                    "config {config} of tenant {tenant}: extensions keep being leased; try again"
                )));
            }
        }
        tracing::info!(deleted, leases_ended = ended, "config pool deleted");
        Ok((deleted, ended))
    }

    /// Frees all of a collector's live leases.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, collector_id = %collector))]
    pub async fn force_release_collector(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<Vec<Uuid>, AllocError> {
        self.store.force_release_collector(tenant, collector).await
    }
}

fn not_found_ext(id: Uuid) -> AllocError {
    AllocError::NotFound(format!("extension_id: no extension {id} in this tenant"))
}
