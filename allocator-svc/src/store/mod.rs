//! Storage behind one trait, implemented once for every backend by [`sql::SqlStore`]
//! (PostgreSQL, MySQL/MariaDB, SQLite); [`postgres::PgStore`] adds PostgreSQL's coalesced hot
//! path on top of it. One conformance suite (`tests/api/conformance.rs`) proves every backend
//! behaves the same.
//!
//! Concurrency contract, on every backend:
//! - every method is one transaction (run again whole when the database aborts it for another:
//!   a deadlock or a lock-wait timeout);
//! - identical acquires (same tenant and request id) that overlap end with one lease,
//!   replayed to the others, not a refusal while a twin holds an extension (PostgreSQL: an
//!   advisory lock on the pair, and a fresh look-up before a refusal; MySQL: the second waits
//!   at the lease's unique request id, or at the tenant row, or, finding nothing free, for the
//!   acquires holding free extensions, and then replays the first's lease; SQLite: one writer
//!   at a time; docs/reliability.md has MySQL's limits);
//! - an acquire that must respect a cap or move the round-robin cursor first locks the tenant's
//!   `tenant_state` row, so those acquires are serialised per tenant; uncapped LRU and affinity
//!   acquires never take it (they pick with `for update skip locked`); a missing per-tenant
//!   row is created in a transaction of its own first, never inside the locking one;
//! - anything that ends a lease locks the lease row before the extension row, so release, renew,
//!   the reaper and the admin paths cannot deadlock with each other; a path that ends several
//!   leases in one transaction (coalesced releases, force-release of a collector, forced batch
//!   deletes) locks them in lease id order first (the reaper skips locked rows instead);
//! - deleting extensions locks the tenant's `pool_counts` row (which the delete trigger updates)
//!   before any extension row, so overlapping batch deletes queue instead of deadlocking;
//! - PostgreSQL coalesces concurrent LRU acquires of a tenant (and releases) into one statement
//!   (`coalesce`); capped batches lock the tenant row first, like the serialised path;
//! - only acquire turns an extension `in_use`, so the cap check under the tenant lock cannot be
//!   outrun by another path.
//!
//! SQLite serialises all writers with `begin immediate` (and single statements, which are their
//! own transactions), which gives the same guarantees without row locks; there, triggers mark
//! an extension in use when its lease is inserted (refusing one that is not available) and free
//! it when its lease ends (see `sql.rs`); releases that find the writer busy are coalesced into
//! one statement ([`sql::SqlStore::coalesced`]).

pub mod postgres;
pub mod sql;

use async_trait::async_trait;
use cco_platform::db::DbError;
use cco_platform::sql::Row;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{
    AllocError, CollectorId, ConfigId, ExtStatus, Extension, ExtensionNumber, ExtensionUsage,
    Lease, PoolCounts, ReleaseReason, RequestId, Strategy, TenantId,
};

/// A validated acquire, with the policy already applied.
#[derive(Debug, Clone)]
pub struct AcquireCmd {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Collector.
    pub collector_id: CollectorId,
    /// Idempotency key.
    pub request_id: RequestId,
    /// Strategy to use.
    pub strategy: Strategy,
    /// Lease time.
    pub ttl_seconds: u32,
    /// Rest applied when the lease ends.
    pub cooldown_seconds: u32,
    /// Most live leases of the tenant; `None` = no cap.
    pub cap: Option<u32>,
    /// What identifies "the same request" besides its id.
    pub fingerprint: String,
}

/// What an acquire did.
#[derive(Debug, Clone)]
pub enum AcquireOutcome {
    /// A lease (new, or the earlier one for this request id).
    Granted {
        /// The lease.
        lease: Lease,
        /// True when it was granted earlier for the same request id.
        replayed: bool,
    },
    /// The request id was used before with other parameters.
    Conflict {
        /// The earlier lease.
        existing: Lease,
    },
    /// No extension can be leased now.
    PoolEmpty(PoolCounts),
    /// The tenant already holds `live` leases, at or above `cap`.
    CapReached {
        /// The cap.
        cap: u32,
        /// Live leases counted.
        live: u32,
    },
}

/// What a release (or renew) did.
#[derive(Debug, Clone)]
pub enum LeaseChange {
    /// This call changed the lease.
    Changed(Lease),
    /// Nothing changed, for `reason`.
    Unchanged {
        /// The lease as it stands.
        lease: Lease,
        /// Why nothing changed.
        reason: String,
    },
    /// No such lease (or extension, for admin paths).
    NotFound,
}

/// Filter and page of a listing.
#[derive(Debug, Clone)]
pub struct ListFilter {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Only this config id.
    pub config_id: Option<ConfigId>,
    /// Only this status.
    pub status: Option<ExtStatus>,
    /// Only held by this collector.
    pub collector_id: Option<CollectorId>,
    /// Start after this number (number order).
    pub after_number: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// Changes to one extension.
#[derive(Debug, Clone)]
pub struct ExtUpdate {
    /// New status (available or offline).
    pub status: Option<ExtStatus>,
    /// New number.
    pub number: Option<ExtensionNumber>,
    /// Allow ending a live lease.
    pub force: bool,
}

/// What an update did.
#[derive(Debug, Clone)]
pub enum UpdateOutcome {
    /// Updated.
    Updated(Box<Extension>),
    /// No such extension.
    NotFound,
    /// The extension is in use and `force` was not given.
    InUse,
    /// Another extension of the tenant has that number.
    NumberTaken,
    /// A new number for an extension in a live call (the call's record names the old one).
    NumberInUse,
}

/// What deleting one extension did.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteOutcome {
    /// Deleted; with the lease a forced delete ended.
    Deleted(Option<Uuid>),
    /// No such extension.
    NotFound,
    /// In use and not forced.
    InUse,
}

/// The allocator's storage.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// Registers the store's own metrics (coalescing counters on PostgreSQL).
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
    /// Coalescing so far: `(operation, statements, requests)`; empty where it does not apply.
    fn coalescing(&self) -> Vec<(&'static str, u64, u64)> {
        Vec::new()
    }
    /// Leases an extension (idempotent per tenant and request id).
    async fn acquire(&self, cmd: &AcquireCmd) -> Result<AcquireOutcome, AllocError>;
    /// Ends a lease if the token matches and it is live.
    async fn release(
        &self,
        lease_id: Uuid,
        token: i64,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError>;
    /// Extends a live, unexpired lease to now + `ttl_seconds`.
    async fn renew(
        &self,
        lease_id: Uuid,
        token: i64,
        ttl_seconds: u32,
    ) -> Result<LeaseChange, AllocError>;
    /// Reads one lease.
    async fn get_lease(&self, lease_id: Uuid) -> Result<Option<Lease>, AllocError>;
    /// Ends up to `limit` leases whose expiry has passed (reason expired); returns them.
    async fn reap_expired(&self, limit: u32) -> Result<Vec<Lease>, AllocError>;
    /// Counts the tenant's pool.
    async fn counts(&self, tenant: &TenantId) -> Result<PoolCounts, AllocError>;
    /// Per-extension usage over `[since, until)`.
    async fn usage(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<ExtensionUsage>, AllocError>;
    /// Inserts numbers in one transaction; `None` for a number already in the pool.
    async fn import(
        &self,
        tenant: &TenantId,
        config_id: &str,
        numbers: &[ExtensionNumber],
    ) -> Result<Vec<Option<Uuid>>, AllocError>;
    /// Lists extensions in number order.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Extension>, AllocError>;
    /// Reads one extension.
    async fn get_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Extension>, AllocError>;
    /// Changes status or number.
    async fn update_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        update: &ExtUpdate,
    ) -> Result<UpdateOutcome, AllocError>;
    /// Ends the extension's live lease (reason given).
    async fn release_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError>;
    /// Deletes extensions in one transaction.
    async fn delete_extensions(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
        force: bool,
    ) -> Result<Vec<DeleteOutcome>, AllocError>;
    /// Ends every live lease of a collector; returns their ids.
    async fn force_release_collector(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<Vec<Uuid>, AllocError>;
    /// Live leases across all tenants (for the gauge).
    async fn live_leases(&self) -> Result<i64, AllocError>;
}

/// Maps a database error to the allocator's (the classification lives in the platform).
pub(crate) fn db_err(e: sqlx::Error) -> AllocError {
    DbError::from(e).into()
}

impl From<DbError> for AllocError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => {
                AllocError::Unavailable(format!("database unavailable: {m}"))
            }
            DbError::Contention(m) => AllocError::Contention(m),
            DbError::Other(e) => AllocError::Internal(e.into()),
        }
    }
}

pub(crate) use cco_platform::db::is_unique_violation;

/// Column list shared by every lease query (a macro, so queries stay `&'static str`).
macro_rules! lease_cols {
    () => {
        "lease_id, tenant_id, extension_id, extension_number, collector_id, request_id, \
         request_fingerprint, strategy, fencing_token, acquired_at, expires_at, released_at, release_reason"
    };
}
pub(crate) use lease_cols;

/// Column list shared by every extension query.
macro_rules! ext_cols {
    () => {
        "id, tenant_id, config_id, number, status, current_lease_id, current_collector_id, \
         lease_expires_at, fencing_token, last_collector_id, last_used_at, last_released_at, \
         available_at, use_count, created_at, updated_at"
    };
}
pub(crate) use ext_cols;

/// Reads a column of a row, naming it in the error.
pub(crate) fn col<T>(r: Result<T, sqlx::Error>) -> Result<T, AllocError> {
    r.map_err(db_err)
}

/// Reads the row of a counts query (columns total, in_use, offline, cooling); `available` is
/// what is neither in use nor offline. A count that does not fit or contradicts the others
/// (a total below in use + offline) is reported, not wrapped.
pub(crate) fn counts_from(r: &Row) -> Result<PoolCounts, AllocError> {
    let get = |c: &str| -> Result<u32, AllocError> {
        let v = col(r.i64(c))?;
        u32::try_from(v).map_err(|_| corrupt(c, &v.to_string()))
    };
    let (total, in_use, offline) = (get("total")?, get("in_use")?, get("offline")?);
    let available = total
        .checked_sub(in_use)
        .and_then(|a| a.checked_sub(offline))
        .ok_or_else(|| corrupt("pool_counts.total", &total.to_string()))?;
    Ok(PoolCounts {
        total,
        available,
        in_use,
        offline,
        cooling_down: get("cooling")?,
    })
}

fn corrupt(col: &str, what: &str) -> AllocError {
    AllocError::Internal(anyhow::anyhow!(
        "column {col}: unexpected stored value {what:?}"
    ))
}

/// Builds a lease from a row selected with `lease_cols!()`.
pub(crate) fn lease_from(r: &Row) -> Result<(Lease, String), AllocError> {
    let strategy = col(r.text("strategy"))?;
    let reason = col(r.opt_text("release_reason"))?;
    let lease = Lease {
        lease_id: col(r.uuid("lease_id"))?,
        extension_id: col(r.uuid("extension_id"))?,
        extension_number: col(r.text("extension_number"))?,
        tenant_id: col(r.text("tenant_id"))?,
        collector_id: col(r.text("collector_id"))?,
        request_id: col(r.text("request_id"))?,
        strategy: Strategy::parse(&strategy).ok_or_else(|| corrupt("strategy", &strategy))?,
        fencing_token: col(r.i64("fencing_token"))?,
        acquired_at: col(r.time("acquired_at"))?,
        expires_at: col(r.time("expires_at"))?,
        released_at: col(r.opt_time("released_at"))?,
        release_reason: match reason {
            None => None,
            Some(s) => Some(ReleaseReason::parse(&s).ok_or_else(|| corrupt("release_reason", &s))?),
        },
    };
    Ok((lease, col(r.text("request_fingerprint"))?))
}

/// Builds an extension from a row selected with `ext_cols!()`.
pub(crate) fn extension_from(r: &Row) -> Result<Extension, AllocError> {
    let status = col(r.text("status"))?;
    Ok(Extension {
        id: col(r.uuid("id"))?,
        tenant_id: col(r.text("tenant_id"))?,
        config_id: col(r.text("config_id"))?,
        number: col(r.text("number"))?,
        status: ExtStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        current_lease_id: col(r.opt_uuid("current_lease_id"))?,
        current_collector_id: col(r.opt_text("current_collector_id"))?,
        lease_expires_at: col(r.opt_time("lease_expires_at"))?,
        fencing_token: col(r.i64("fencing_token"))?,
        last_collector_id: col(r.opt_text("last_collector_id"))?,
        last_used_at: col(r.opt_time("last_used_at"))?,
        last_released_at: col(r.opt_time("last_released_at"))?,
        available_at: col(r.opt_time("available_at"))?,
        use_count: col(r.i64("use_count"))?,
        created_at: col(r.time("created_at"))?,
        updated_at: col(r.time("updated_at"))?,
    })
}

/// Decides between a replay and a conflict for an acquire whose request id exists.
pub(crate) fn replay(existing: Lease, fingerprint: &str, cmd: &AcquireCmd) -> AcquireOutcome {
    if fingerprint == cmd.fingerprint {
        AcquireOutcome::Granted {
            lease: existing,
            replayed: true,
        }
    } else {
        AcquireOutcome::Conflict { existing }
    }
}

/// Explains why a release or renew changed nothing, given the lease as stored.
pub(crate) fn unchanged_reason(lease: &Lease, token: i64) -> String {
    if lease.fencing_token != token {
        format!(
            "stale fencing token: the lease has token {}, got {token}",
            lease.fencing_token
        )
    } else if let Some(r) = lease.release_reason {
        format!("lease already released ({})", r.as_str())
    } else {
        "lease expired".to_owned()
    }
}
