//! The allocator's one store: every operation written once over the platform's SQL layer
//! ([`cco_platform::sql`]), for PostgreSQL, MySQL/MariaDB and SQLite. What differs between
//! them comes from the dialect (the clock, locking clauses, upserts, date arithmetic) and is
//! spliced into the statements once, in [`Statements::new`]; the PostgreSQL store
//! ([`super::postgres`]) adds only its tuned hot path on top of this one.
//!
//! Locking, per backend:
//! - PostgreSQL and MySQL run every transaction at READ COMMITTED with row locks. Free
//!   extensions are picked with `for update skip locked`; a capped or round-robin acquire first
//!   locks the tenant's `tenant_state` row (upserted), so the count and the cursor are read
//!   under it. Identical acquires: on PostgreSQL they take turns (a transaction-scoped
//!   advisory lock); on MySQL they meet at the lease's unique request id, the tenant row, or
//!   a pick that waits for the acquires in flight before a refusal (see `try_acquire`).
//!   Anything that ends a lease locks the lease row before the extension row; several leases
//!   are locked in lease id order first. A transaction the database aborts as a deadlock or
//!   lock-wait timeout is run again ([`retry`]).
//! - SQLite writers start with `begin immediate` (one writer at a time, in this process's
//!   queue), so the same statements need no row locks: the dialect leaves the clauses out.
//!   There the lease row drives its extension (triggers of migration 0005): inserting a lease
//!   marks its extension in use and ending it frees the extension, in the same statement, so
//!   an LRU or affinity acquire ([`lite_acquire`]) and a release are one statement each, their
//!   own transaction, with no `begin immediate` and commit round trips.
//!
//! Times come from the database clock ([`Dialect::now`]), so instances share one clock.

use std::collections::HashSet;

use cco_platform::args;
use cco_platform::coalesce::{Batcher, Limits};
use cco_platform::sql::{self, Arg, Backend, Db, Dialect, Exec, Mode, Row, Tx};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    AcquireCmd, AcquireOutcome, DeleteOutcome, ExtUpdate, LeaseChange, ListFilter, UpdateOutcome,
    col, counts_from, db_err, ext_cols, extension_from, is_unique_violation, lease_cols,
    lease_from, replay, unchanged_reason,
};
use crate::domain::{
    AllocError, CollectorId, ExtStatus, Extension, ExtensionNumber, ExtensionUsage, Lease,
    PoolCounts, ReleaseReason, Strategy, TenantId,
};

/// Numbers inserted per statement by an import.
const IMPORT_CHUNK: usize = 500;

/// MySQL: the most extensions an uncapped acquire that found nothing free waits for, one by
/// one, before it refuses (see [`SqlStore::try_acquire`]): more than the acquires that can be
/// in flight on a tenant's pool with the default connection pools of a few instances.
const WAIT_PICK_LIMIT: usize = 100;

/// The statements of the store, written once and completed for one backend.
#[derive(Debug)]
struct Statements {
    /// Picks (and locks) one free extension: $1 tenant; LRU order.
    pick_lru: String,
    /// $1 tenant, $2 the extension to try.
    pick_affinity: String,
    /// $1 tenant, $2 the cursor number.
    pick_rr_after: String,
    /// $1 tenant.
    pick_rr_first: String,
    /// MySQL, when an uncapped pick found nothing: the extensions free as last committed (a
    /// plain read, no lock), in LRU order, up to [`WAIT_PICK_LIMIT`]; the pick skipped them,
    /// so acquires in flight (or an admin change) hold them. $1 tenant. None elsewhere.
    held_free: Option<String>,
    /// MySQL: locks one of those by primary key if it is still free, waiting for its holder:
    /// $1 tenant, $2 id. None elsewhere.
    lock_if_free: Option<String>,
    /// Marks the picked extension in use: $1 id, $2 lease id, $3 collector, $4 ttl seconds;
    /// on MySQL $5 the lease's time, the pick's `picked_at` (see [`Picked`]). None on SQLite,
    /// where inserting the lease does it (a trigger; see [`lite_acquire`]).
    lease_extension: Option<String>,
    /// Inserts the lease from the extension row just leased.
    insert_lease: String,
    /// Locks the tenant's state row and reads its cursor: $1 tenant.
    lock_tenant: String,
    /// Creates the tenant's state row if missing (its own transaction): $1 tenant.
    create_tenant: String,
    /// $1 tenant, $2 cursor.
    set_cursor: String,
    /// Ends a live lease with a matching token: $1 lease, $2 token, $3 reason. On SQLite this
    /// frees its extension too (a trigger).
    end_lease: String,
    /// [`Self::insert_lease`] and [`Self::end_lease`] answer the lease's columns (`returning`,
    /// on PostgreSQL and SQLite): one statement each instead of the write and a read back. MySQL
    /// builds a granted lease from what its pick read ([`Picked`]) and reads an ended one back.
    returning: bool,
    /// Frees the extension of a lease just ended: $1 extension, $2 lease. None on SQLite, where
    /// ending the lease does it (a trigger).
    free_extension: Option<String>,
    /// MySQL: [`Self::end_lease`] and [`Self::free_extension`] in one statement, a
    /// multi-table update (the lease row is read, and locked, first: it is the constant
    /// table): $1 lease, $2 token, $3 reason. None elsewhere.
    end_and_free: Option<String>,
    /// SQLite's LRU acquire in one statement ([`lite_acquire`]).
    lite_acquire_lru: Option<String>,
    /// As [`Self::lite_acquire_lru`], trying the collector's last extension first.
    lite_acquire_affinity: Option<String>,
    /// As [`Self::lite_acquire_lru`], of the extension already picked ($10): the serialised
    /// path's lease insert on SQLite.
    lite_acquire_picked: Option<String>,
    /// Extends a live, unexpired lease: $1 lease, $2 token, $3 ttl seconds.
    renew_lease: String,
    /// $1 extension, $2 lease.
    renew_extension: String,
    /// $1 tenant.
    counts: String,
    /// $1 limit.
    due: String,
    /// $1 tenant, $2 since, $3 until.
    usage: String,
    /// $1 id, $2 tenant, $3 status, $4 number.
    update_extension: String,
    /// $1 tenant.
    lock_pool_counts: String,
    /// Creates the tenant's counter row if missing (its own transaction): $1 tenant.
    create_pool_counts: String,
}

impl Statements {
    fn new(d: Dialect) -> Self {
        let now = d.now();
        let lock = d.for_update();
        let skip = d.skip_locked();
        let free = format!(
            "tenant_id = $1 and status = 'available' and (available_at is null or available_at <= {now})"
        );
        // Pick orders wholly covered by an index, so a pick reads free rows in order and
        // stops at the first it can lock. (On MySQL a pick that sorted would lock every free
        // row it read until commit, and concurrent picks would skip them all: a pool that
        // looks empty. MySQL keeps the number's length in a stored column for its indexes.)
        let lru_order = match d.0 {
            // PostgreSQL sorts nulls last unless told; MySQL and SQLite sort them first.
            Backend::Postgres => "last_released_at asc nulls first, length(number), number",
            Backend::MySql => "last_released_at, number_len, number",
            Backend::Sqlite => "last_released_at, length(number), number",
        };
        let number_order = number_order(d);
        let number_after = match d.0 {
            Backend::Postgres => "(length(number), number) > (length($2::text), $2::text)",
            Backend::MySql => "(number_len, number) > (char_length($2), $2)",
            Backend::Sqlite => "(length(number), number) > (length($2), $2)",
        };
        let ttl = match d.0 {
            Backend::Postgres => "$4::float8",
            _ => "$4",
        };
        let renew_ttl = match d.0 {
            Backend::Postgres => "$3::float8",
            _ => "$3",
        };
        let ended_at = "(select released_at from leases where lease_id = $2)";
        let cooldown = "(select cooldown_seconds from leases where lease_id = $2)";
        let insert_lease =
            "insert into leases (lease_id, tenant_id, extension_id, extension_number, \
             collector_id, request_id, request_fingerprint, strategy, fencing_token, \
             cooldown_seconds, acquired_at, expires_at, created_at, updated_at) \
             select $1, tenant_id, id, number, $2, $3, $4, $5, fencing_token, $6, last_used_at, \
             lease_expires_at, last_used_at, last_used_at from extensions where id = $7"
                .to_owned();
        let end_lease = format!(
            "update leases set released_at = {now}, release_reason = $3, updated_at = {now} \
             where lease_id = $1 and fencing_token = $2 and released_at is null"
        );
        let returning = d.0 != Backend::MySql;
        // Without `returning` (MySQL), a pick reads what the lease needs besides its request
        // (number, token, the database clock) under the row's lock, and the lease is built
        // from it; the lease's time goes into the update as $5. The clock is the statement's
        // start, which can precede the commit of the release that freed the row (the pick
        // reads the row later): the lease starts no earlier than that release ended, so the
        // extension's history never overlaps.
        let (picked, at) = if returning {
            ("id".to_owned(), now)
        } else {
            (
                format!(
                    "id, number, fencing_token, \
                     cast(greatest({now}, coalesce(last_released_at, {now})) as datetime(6)) \
                     as picked_at"
                ),
                "$5",
            )
        };
        let cols = if returning {
            concat!(" returning ", lease_cols!())
        } else {
            ""
        };
        let lite = d.0 == Backend::Sqlite;
        let lru_pick =
            format!("(select id from extensions where {free} order by {lru_order} limit 1)");
        let affinity_pick = format!(
            "coalesce((select id from extensions where {free} and id = \
               (select extension_id from leases where tenant_id = $1 and collector_id = $3 \
                order by acquired_at desc limit 1)), {lru_pick})"
        );
        Self {
            lite_acquire_lru: lite.then(|| lite_acquire(d, &lru_pick)),
            lite_acquire_affinity: lite.then(|| lite_acquire(d, &affinity_pick)),
            lite_acquire_picked: lite.then(|| lite_acquire(d, "$10")),
            insert_lease: format!("{insert_lease}{cols}"),
            end_lease: format!("{end_lease}{cols}"),
            returning,
            pick_lru: format!(
                "select {picked} from extensions where {free} order by {lru_order} limit 1{skip}"
            ),
            pick_affinity: format!(
                "select {picked} from extensions where id = $2 and {free}{skip}"
            ),
            pick_rr_after: format!(
                "select {picked} from extensions where {free} and {number_after} \
                 order by {number_order} limit 1{skip}"
            ),
            pick_rr_first: format!(
                "select {picked} from extensions where {free} order by {number_order} limit 1{skip}"
            ),
            held_free: (d.0 == Backend::MySql).then(|| {
                format!(
                    "select id from extensions where {free} order by {lru_order} \
                     limit {WAIT_PICK_LIMIT}"
                )
            }),
            lock_if_free: (d.0 == Backend::MySql).then(|| {
                format!("select {picked} from extensions where id = $2 and {free}{lock}")
            }),
            lease_extension: (!lite).then(|| {
                format!(
                    "update extensions set status = 'in_use', current_lease_id = $2, \
                 current_collector_id = $3, lease_expires_at = {}, \
                 fencing_token = fencing_token + 1, last_collector_id = $3, last_used_at = {at}, \
                 use_count = use_count + 1, available_at = null, updated_at = {at} \
                 where id = $1 and status = 'available'",
                    d.plus_secs(at, ttl)
                )
            }),
            lock_tenant: format!("select rr_cursor from tenant_state where tenant_id = $1{lock}"),
            create_tenant: d.insert_or_ignore(
                "tenant_state",
                "tenant_id, created_at, updated_at",
                &format!("($1, {now}, {now})"),
                "tenant_id",
            ),
            set_cursor: format!(
                "update tenant_state set rr_cursor = $2, updated_at = {now} where tenant_id = $1"
            ),
            free_extension: (!lite).then(|| {
                format!(
                    "update extensions set \
                   status = case when status = 'in_use' then 'available' else status end, \
                   current_lease_id = null, current_collector_id = null, lease_expires_at = null, \
                   last_released_at = {ended_at}, \
                   available_at = case when {cooldown} > 0 then {} else null end, \
                   updated_at = {ended_at} \
                 where id = $1 and current_lease_id = $2",
                    d.plus_secs(ended_at, cooldown)
                )
            }),
            end_and_free: (d.0 == Backend::MySql).then(|| {
                // `now` is the statement's start time on MySQL, so the lease's end and the
                // extension's last release are the same instant, as elsewhere.
                format!(
                    "update leases l left join extensions e \
                       on e.id = l.extension_id and e.current_lease_id = l.lease_id \
                     set l.released_at = {now}, l.release_reason = $3, l.updated_at = {now}, \
                       e.status = case when e.status = 'in_use' then 'available' else e.status end, \
                       e.current_lease_id = null, e.current_collector_id = null, \
                       e.lease_expires_at = null, e.last_released_at = {now}, \
                       e.available_at = case when l.cooldown_seconds > 0 then {} else null end, \
                       e.updated_at = {now} \
                     where l.lease_id = $1 and l.fencing_token = $2 and l.released_at is null",
                    d.plus_secs(now, "l.cooldown_seconds")
                )
            }),
            renew_lease: format!(
                "update leases set expires_at = {}, updated_at = {now} \
                 where lease_id = $1 and fencing_token = $2 and released_at is null \
                   and expires_at > {now}",
                d.plus_secs(now, renew_ttl)
            ),
            renew_extension: format!(
                "update extensions set \
                   lease_expires_at = (select expires_at from leases where lease_id = $2), \
                   updated_at = {now} \
                 where id = $1 and current_lease_id = $2"
            ),
            counts: format!(
                "select coalesce((select total from pool_counts where tenant_id = $1), 0) as total, \
                   (select count(*) from extensions where tenant_id = $1 and status = 'in_use') as in_use, \
                   (select count(*) from extensions where tenant_id = $1 and status = 'offline') as offline, \
                   (select count(*) from extensions where tenant_id = $1 and status = 'available' \
                      and available_at is not null and available_at > {now}) as cooling"
            ),
            due: format!(
                "select current_lease_id from extensions \
                 where status = 'in_use' and lease_expires_at <= {now} \
                 order by lease_expires_at limit $1"
            ),
            usage: format!(
                "select e.id, e.number, count(l.lease_id) as leases, \
                   coalesce(sum({}), 0.0) as busy \
                 from extensions e \
                 left join leases l on l.extension_id = e.id and l.acquired_at < $3 \
                   and coalesce(l.released_at, {now}) > $2 \
                 where e.tenant_id = $1 \
                 group by e.id, e.number \
                 order by length(e.number), e.number",
                d.secs_between(
                    &d.greatest("l.acquired_at", "$2"),
                    &d.least(&format!("coalesce(l.released_at, {now})"), "$3"),
                )
            ),
            update_extension: format!(
                "update extensions set \
                   status = case when {s} is null or status = 'in_use' then status else {s} end, \
                   number = coalesce({n}, number), updated_at = {now} \
                 where id = $1 and tenant_id = $2 \
                   and ({n} is null or number = {n} or status <> 'in_use')",
                s = if d.0 == Backend::Postgres {
                    "$3::text"
                } else {
                    "$3"
                },
                n = if d.0 == Backend::Postgres {
                    "$4::text"
                } else {
                    "$4"
                },
            ),
            lock_pool_counts: format!("select total from pool_counts where tenant_id = $1{lock}"),
            create_pool_counts: d.insert_or_ignore(
                "pool_counts",
                "tenant_id, total",
                "($1, 0)",
                "tenant_id",
            ),
        }
    }
}

/// SQLite's acquire in one statement: the lease row inserted from the picked extension (`pick`,
/// an SQL expression for its id), answering its columns; the trigger `leases_take_extension`
/// marks the extension in use in the same statement. One statement is its own transaction, so
/// it needs no `begin immediate` and commit round trips. Nothing picked, or the cap ($9, else
/// null) reached: no row. $1 tenant, $2 lease id, $3 collector, $4 request id, $5 fingerprint,
/// $6 strategy, $7 cooldown seconds, $8 ttl seconds.
fn lite_acquire(d: Dialect, pick: &str) -> String {
    let now = d.now();
    format!(
        "insert into leases (lease_id, tenant_id, extension_id, extension_number, \
           collector_id, request_id, request_fingerprint, strategy, fencing_token, \
           cooldown_seconds, acquired_at, expires_at, created_at, updated_at) \
         select $2, tenant_id, id, number, $3, $4, $5, $6, fencing_token + 1, $7, {now}, {}, \
           {now}, {now} \
         from extensions \
         where id = {pick} and ($9 is null or \
           (select count(*) from extensions where tenant_id = $1 and status = 'in_use') < $9) \
         returning {}",
        d.plus_secs(now, "$8"),
        lease_cols!(),
    )
}

/// The parameters of [`lite_acquire`]'s statements, in its order; `picked` is $10, the extension
/// already picked.
fn lite_acquire_args(
    cmd: &AcquireCmd,
    lease_id: Uuid,
    cap: Option<u32>,
    picked: Option<Uuid>,
) -> Vec<Arg<'_>> {
    let mut args = vec![
        Arg::Text(cmd.tenant_id.as_str()),
        Arg::Uuid(lease_id),
        Arg::Text(cmd.collector_id.as_str()),
        Arg::Text(cmd.request_id.as_str()),
        Arg::Text(cmd.fingerprint.as_str()),
        Arg::Text(cmd.strategy.as_str()),
        Arg::I64(i64::from(cmd.cooldown_seconds)),
        Arg::I64(i64::from(cmd.ttl_seconds)),
        Arg::OptI64(cap.map(i64::from)),
    ];
    args.extend(picked.map(Arg::Uuid));
    args
}

/// Number order (shorter numbers first, then text order), as the backend's indexes hold it.
fn number_order(d: Dialect) -> &'static str {
    match d.0 {
        Backend::MySql => "number_len, number",
        _ => "length(number), number",
    }
}

/// `$start, $start+1, ...`: `n` placeholders for an `in (...)` list.
fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The allocator's store on any backend.
#[derive(Clone)]
pub struct SqlStore {
    db: Db,
    sql: std::sync::Arc<Statements>,
    /// SQLite: releases coalesced into one statement (one writer turn) while the writer is
    /// busy ([`SqlStore::coalesced`]); `None` runs each alone.
    releases: Option<std::sync::Arc<LiteReleases>>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend())
            .field("coalesced_releases", &self.releases.is_some())
            .finish_non_exhaustive()
    }
}

/// A SQLite release waiting to be coalesced.
struct LiteRelease {
    lease_id: Uuid,
    lease_text: String,
    token: i64,
    reason: ReleaseReason,
}

type LiteReleases = Batcher<(), LiteRelease, Result<LeaseChange, AllocError>>;

/// The most releases one SQLite statement ends: each batch size is a statement of its own in
/// the writer connection's statement cache (sqlx keeps 100), beside the hot ones.
const LITE_MAX_BATCH: usize = 32;

/// `e` again, for each job of a batch that failed as a whole.
fn same_error(e: &AllocError) -> AllocError {
    match e {
        AllocError::Unavailable(m) => AllocError::Unavailable(m.clone()),
        AllocError::Contention(m) => AllocError::Contention(m.clone()),
        other => AllocError::Internal(anyhow::anyhow!("release batch: {other}")),
    }
}

/// SQLite: ends up to `n` leases in one statement, answering the ended ones' columns; the
/// trigger `leases_free_extension` frees each one's extension. Parameters, per lease `i` from
/// 0: `$3i+1` lease id, `$3i+2` token, `$3i+3` reason. SQLite's `now` is one instant for the
/// whole statement.
fn lite_end_leases(d: Dialect, n: usize) -> String {
    let now = d.now();
    let rows = (0..n)
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "update leases set released_at = {now}, release_reason = r.column3, updated_at = {now} \
         from (values {rows}) as r \
         where leases.lease_id = r.column1 and leases.fencing_token = r.column2 \
           and leases.released_at is null \
         returning {}",
        lease_cols!()
    )
}

/// A transaction that found a per-tenant row it locks missing: it was rolled back; the caller
/// creates the row in a transaction of its own and runs it again. (Created inside the locking
/// transaction, the first rows of a tenant raced by many transactions deadlock on MySQL: its
/// duplicate-key checks take gap locks even at READ COMMITTED.)
enum Step<T> {
    Done(T),
    Missing(PerTenant),
}

/// The per-tenant rows a transaction locks.
#[derive(Debug, Clone, Copy)]
enum PerTenant {
    /// `tenant_state` (capped and round-robin acquires).
    State,
    /// `pool_counts` (deletes).
    Counts,
}

/// True for an error worth running the transaction again for.
fn contended(e: &AllocError) -> bool {
    matches!(e, AllocError::Contention(_))
}

/// An extension a pick locked.
struct Picked {
    id: Uuid,
    /// Without `returning` (MySQL): what the lease needs besides its request, read by the pick
    /// under the row's lock, so the granted lease is not read back.
    read: Option<PickRead>,
}

struct PickRead {
    number: String,
    /// The extension's token before this lease (the lease's is one more).
    token: i64,
    /// The database clock when the pick ran: the lease's acquired time.
    at: DateTime<Utc>,
}

impl Picked {
    fn from(r: &Row, returning: bool) -> Result<Self, AllocError> {
        let read = if returning {
            None
        } else {
            Some(PickRead {
                number: col(r.text("number"))?,
                token: col(r.i64("fencing_token"))?,
                at: col(r.time("picked_at"))?,
            })
        };
        Ok(Self {
            id: col(r.uuid("id"))?,
            read,
        })
    }
}

impl PickRead {
    /// The lease the acquire's update and insert wrote (`lease_extension`, `insert_lease`):
    /// the token one more, acquired at the pick's time, expiring `ttl_seconds` later.
    fn lease(
        self,
        cmd: &AcquireCmd,
        lease_id: Uuid,
        extension_id: Uuid,
    ) -> Result<Lease, AllocError> {
        let fencing_token = self.token.checked_add(1).ok_or_else(|| {
            AllocError::Internal(anyhow::anyhow!(
                "extension {extension_id}: fencing token {} cannot grow",
                self.token
            ))
        })?;
        let expires_at = chrono::TimeDelta::try_seconds(i64::from(cmd.ttl_seconds))
            .and_then(|ttl| self.at.checked_add_signed(ttl))
            .ok_or_else(|| {
                AllocError::Internal(anyhow::anyhow!(
                    "lease {lease_id}: {} + {} s is out of range",
                    self.at,
                    cmd.ttl_seconds
                ))
            })?;
        Ok(Lease {
            lease_id,
            extension_id,
            extension_number: self.number,
            tenant_id: cmd.tenant_id.as_str().to_owned(),
            collector_id: cmd.collector_id.as_str().to_owned(),
            request_id: cmd.request_id.as_str().to_owned(),
            strategy: cmd.strategy,
            fencing_token,
            acquired_at: self.at,
            expires_at,
            released_at: None,
            release_reason: None,
        })
    }
}

async fn find_lease(ex: Exec<'_>, lease_id: Uuid) -> Result<Option<(Lease, String)>, AllocError> {
    let row = ex
        .fetch_optional(
            concat!("select ", lease_cols!(), " from leases where lease_id = $1"),
            args![lease_id],
        )
        .await
        .map_err(db_err)?;
    row.as_ref().map(lease_from).transpose()
}

async fn find_by_request(
    ex: Exec<'_>,
    tenant: &str,
    request_id: &str,
) -> Result<Option<(Lease, String)>, AllocError> {
    let row = ex
        .fetch_optional(
            concat!(
                "select ",
                lease_cols!(),
                " from leases where tenant_id = $1 and request_id = $2"
            ),
            args![tenant, request_id],
        )
        .await
        .map_err(db_err)?;
    row.as_ref().map(lease_from).transpose()
}

async fn get_ext(
    ex: Exec<'_>,
    tenant: &TenantId,
    id: Uuid,
    lock: &str,
) -> Result<Option<Extension>, AllocError> {
    let sql = format!(
        "select {} from extensions where id = $1 and tenant_id = $2{lock}",
        ext_cols!()
    );
    let row = ex
        .fetch_optional(&sql, args![id, tenant.as_str()])
        .await
        .map_err(db_err)?;
    row.as_ref().map(extension_from).transpose()
}

/// Why a release or renew changed nothing: no such lease, or its state and token.
async fn unchanged(ex: Exec<'_>, lease_id: Uuid, token: i64) -> Result<LeaseChange, AllocError> {
    Ok(match find_lease(ex, lease_id).await? {
        None => LeaseChange::NotFound,
        Some((lease, _)) => {
            let reason = unchanged_reason(&lease, token);
            LeaseChange::Unchanged { lease, reason }
        }
    })
}

impl SqlStore {
    /// Wraps a migrated pool.
    pub fn new(db: Db) -> Self {
        let sql = std::sync::Arc::new(Statements::new(db.dialect()));
        Self {
            db,
            sql,
            releases: None,
        }
    }

    /// [`Self::new`], with SQLite's releases coalesced within `limits` (elsewhere, and with a
    /// `max_batch` of 1, the same as [`Self::new`]). SQLite has one writer at a time, so
    /// releases that find the writer busy are queued and ended together, in one statement and
    /// one writer turn, when it is free; a release that finds it free runs alone at once.
    pub fn coalesced(db: Db, limits: Limits) -> Self {
        let lite = db.backend() == Backend::Sqlite && limits.max_batch > 1;
        let mut store = Self::new(db);
        if lite {
            let limits = Limits {
                max_batch: limits.max_batch.min(LITE_MAX_BATCH),
                ..limits
            };
            store.releases = Some(std::sync::Arc::new(Batcher::new(
                limits,
                |j: &LiteRelease| &j.lease_text,
            )));
        }
        store
    }

    /// SQLite releases waiting for the next coalesced statement (0 when not coalesced).
    pub fn queued_releases(&self) -> usize {
        self.releases.as_ref().map_or(0, |r| r.queued(&()))
    }

    /// The pool.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.db.backend().name()
    }

    fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    async fn begin(&self, mode: Mode) -> Result<Tx, AllocError> {
        self.db.begin(mode).await.map_err(db_err)
    }

    /// Ends a live lease whose token matches and frees its extension (lease row first).
    /// Returns the ended lease, or `None` if nothing matched.
    async fn end_lease(
        &self,
        tx: &mut Tx,
        lease_id: Uuid,
        token: i64,
        reason: ReleaseReason,
    ) -> Result<Option<Lease>, AllocError> {
        let args = args![lease_id, token, reason.as_str()];
        let lease = if self.sql.returning {
            let row = tx
                .exec()
                .fetch_optional(&self.sql.end_lease, args)
                .await
                .map_err(db_err)?;
            match row {
                Some(r) => lease_from(&r)?.0,
                None => return Ok(None),
            }
        } else {
            let n = tx
                .exec()
                .execute(&self.sql.end_lease, args)
                .await
                .map_err(db_err)?;
            if n == 0 {
                return Ok(None);
            }
            let Some((lease, _)) = find_lease(tx.exec(), lease_id).await? else {
                return Err(AllocError::Internal(anyhow::anyhow!(
                    "lease {lease_id} vanished while it was ended"
                )));
            };
            lease
        };
        if let Some(free) = &self.sql.free_extension {
            tx.exec()
                .execute(free, args![lease.extension_id, lease_id])
                .await
                .map_err(db_err)?;
        }
        Ok(Some(lease))
    }

    /// Locks the live ones of `ids` in lease id order (by primary key, so in that order on
    /// every backend); returns their `lease_id` and `fencing_token`.
    async fn lock_leases(&self, tx: &mut Tx, ids: &[Uuid]) -> Result<Vec<Row>, AllocError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "select lease_id, fencing_token from leases where lease_id in ({}) \
             and released_at is null order by lease_id{}",
            placeholders(1, ids.len()),
            self.dialect().for_update()
        );
        let a: Vec<Arg<'_>> = ids.iter().map(|&id| Arg::Uuid(id)).collect();
        tx.exec().fetch_all(&sql, &a).await.map_err(db_err)
    }

    async fn counts_on(&self, ex: Exec<'_>, tenant: &str) -> Result<PoolCounts, AllocError> {
        let r = ex
            .fetch_one(&self.sql.counts, args![tenant])
            .await
            .map_err(db_err)?;
        counts_from(&r)
    }

    /// Ends the live lease of extension `id` (if any) inside `tx`, leaving the extension row
    /// locked. Returns the extension as it stands afterwards and the lease ended.
    async fn end_extension_lease(
        &self,
        tx: &mut Tx,
        tenant: &TenantId,
        id: Uuid,
        reason: ReleaseReason,
    ) -> Result<Option<(Extension, Option<Lease>)>, AllocError> {
        // Lease before extension: read the live lease without a lock, end it through the lease
        // row, then lock the extension and confirm nothing was re-leased in between. Each pass
        // runs under a savepoint: a pass that finds the extension re-leased rolls back to it,
        // which drops the extension row lock before the next pass locks the new lease (holding
        // the extension while waiting for a lease would invert the lock order of release).
        let lock = self.dialect().for_update();
        for _ in 0..5 {
            tx.exec()
                .execute("savepoint end_extension_lease", args![])
                .await
                .map_err(db_err)?;
            let Some(peek) = get_ext(tx.exec(), tenant, id, "").await? else {
                return Ok(None);
            };
            let ended = match peek.current_lease_id {
                Some(l) => self.end_lease(tx, l, peek.fencing_token, reason).await?,
                None => None,
            };
            let Some(ext) = get_ext(tx.exec(), tenant, id, lock).await? else {
                return Ok(None);
            };
            if ext.current_lease_id.is_none() {
                tx.exec()
                    .execute("release savepoint end_extension_lease", args![])
                    .await
                    .map_err(db_err)?;
                return Ok(Some((ext, ended)));
            }
            if ended.is_some() {
                // Cannot happen: we hold the row lock since ending the lease.
                return Err(AllocError::Internal(anyhow::anyhow!(
                    "extension re-leased under lock"
                )));
            }
            if self.db.backend() == Backend::MySql {
                // InnoDB keeps the row locks taken after a savepoint when rolling back to it:
                // the extension would stay locked while the next pass waits for the new lease.
                // The whole transaction is rolled back and run again instead.
                return Err(AllocError::Contention(
                    "extension re-leased while its lease was ended".into(),
                ));
            }
            tx.exec()
                .execute("rollback to savepoint end_extension_lease", args![])
                .await
                .map_err(db_err)?;
        }
        Err(AllocError::Unavailable(
            "extension keeps being re-leased; try again".into(),
        ))
    }

    /// PostgreSQL: makes identical acquires (same tenant and request id) take turns until `tx`
    /// ends. MySQL and SQLite need no turn (see [`Self::try_acquire`]).
    async fn take_turn(
        &self,
        tx: &mut Tx,
        tenant: &str,
        request_id: &str,
    ) -> Result<(), AllocError> {
        if self.db.backend() != Backend::Postgres {
            return Ok(());
        }
        tx.exec()
            .execute(
                "select pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))",
                args![tenant, request_id],
            )
            .await
            .map(drop)
            .map_err(db_err)
    }

    /// The serialised acquire: every strategy, with or without a cap. On SQLite, LRU and
    /// affinity acquires that are granted take one statement first ([`Self::acquire_lite`]).
    pub async fn acquire(&self, cmd: &AcquireCmd) -> Result<AcquireOutcome, AllocError> {
        let tenant = cmd.tenant_id.as_str();
        if let Some(granted) = sql::retry(contended, || self.acquire_lite(cmd)).await? {
            return Ok(granted);
        }
        sql::retry(contended, || async {
            loop {
                match self.try_acquire(cmd).await? {
                    Step::Done(outcome) => return Ok(outcome),
                    Step::Missing(row) => self.create_row(row, tenant).await?,
                }
            }
        })
        .await
    }

    /// SQLite, LRU and affinity: the acquire in one statement ([`lite_acquire`]). `None`:
    /// nothing was granted (the cap, an empty pool, or the request id's earlier lease when the
    /// pool had nothing to pick), or round robin, which this path does not do; the serialised
    /// path answers those. A request id already used makes the insert fail: its lease is
    /// replayed.
    async fn acquire_lite(&self, cmd: &AcquireCmd) -> Result<Option<AcquireOutcome>, AllocError> {
        let sql = match cmd.strategy {
            Strategy::Lru => self.sql.lite_acquire_lru.as_deref(),
            Strategy::CollectorAffinity => self.sql.lite_acquire_affinity.as_deref(),
            Strategy::RoundRobin => None,
        };
        let Some(sql) = sql else {
            return Ok(None);
        };
        let written = self
            .db
            .write(sql, &lite_acquire_args(cmd, Uuid::now_v7(), cmd.cap, None))
            .await;
        match written {
            Ok(rows) => match rows.first() {
                Some(row) => Ok(Some(AcquireOutcome::Granted {
                    lease: lease_from(row)?.0,
                    replayed: false,
                })),
                None => Ok(None),
            },
            Err(e) if is_unique_violation(&e) => self.replay_or_vanished(cmd).await.map(Some),
            Err(e) => Err(db_err(e)),
        }
    }

    /// Creates a per-tenant row a transaction found missing, in a transaction of its own.
    async fn create_row(&self, row: PerTenant, tenant: &str) -> Result<(), AllocError> {
        let sql = match row {
            PerTenant::State => &self.sql.create_tenant,
            PerTenant::Counts => &self.sql.create_pool_counts,
        };
        self.db
            .execute(sql, args![tenant])
            .await
            .map(drop)
            .map_err(db_err)
    }

    async fn try_acquire(&self, cmd: &AcquireCmd) -> Result<Step<AcquireOutcome>, AllocError> {
        let tenant = cmd.tenant_id.as_str();
        let request_id = cmd.request_id.as_str();
        let mut tx = self.begin(Mode::Write).await?;
        // Identical requests must end with one lease, replayed to all of them, and never with
        // a refusal beside a grant. PostgreSQL: they run one at a time (an advisory lock); the
        // second waits here until the first commits, then finds its lease below. SQLite: one
        // writer at a time already. MySQL, without a turn (a committed turn row cost a third
        // commit per pair): twins that both pick meet at the lease's unique request id, where
        // the second waits for the first to commit and replays it; capped and round-robin
        // twins queue on the tenant row and look the id up under it; an uncapped twin that
        // found nothing free waits for the acquires in flight (`held_free`, `lock_if_free`)
        // before it looks again and refuses.
        self.take_turn(&mut tx, tenant, request_id).await?;
        let serial = cmd.cap.is_some() || cmd.strategy == Strategy::RoundRobin;
        let mut cursor: Option<String> = None;
        if serial {
            // Locks the tenant row until commit: capped and round-robin acquires of one tenant
            // run one at a time, so the count and the cursor below cannot be outrun.
            let row = tx
                .exec()
                .fetch_optional(&self.sql.lock_tenant, args![tenant])
                .await
                .map_err(db_err)?;
            let Some(row) = row else {
                return Ok(Step::Missing(PerTenant::State));
            };
            cursor = col(row.opt_text("rr_cursor"))?;
        }
        // A request id used before is answered here, before anything is picked; MySQL's
        // uncapped acquires leave that to the lease's unique key (a used id fails the insert
        // and is replayed) and save the trip.
        if (serial || self.db.backend() != Backend::MySql)
            && let Some((l, fp)) = find_by_request(tx.exec(), tenant, request_id).await?
        {
            return Ok(Step::Done(replay(l, &fp, cmd)));
        }
        if let Some(cap) = cmd.cap {
            let live = tx
                .exec()
                .fetch_one(
                    "select count(*) as n from extensions where tenant_id = $1 and status = 'in_use'",
                    args![tenant],
                )
                .await
                .map_err(db_err)?;
            let live = u32::try_from(col(live.i64("n"))?).unwrap_or(u32::MAX);
            if live >= cap {
                return Ok(Step::Done(AcquireOutcome::CapReached { cap, live }));
            }
        }
        let collector = cmd.collector_id.as_str();
        let returning = self.sql.returning;
        let pick = async |tx: &mut Tx, sql: &str, arg: Option<Arg<'_>>| {
            let row = match arg {
                Some(a) => tx.exec().fetch_optional(sql, &[Arg::Text(tenant), a]).await,
                None => tx.exec().fetch_optional(sql, args![tenant]).await,
            };
            row.map_err(db_err)?
                .map(|r| Picked::from(&r, returning))
                .transpose()
        };
        let picked = match cmd.strategy {
            Strategy::Lru => pick(&mut tx, &self.sql.pick_lru, None).await?,
            Strategy::CollectorAffinity => {
                let last = tx
                    .exec()
                    .fetch_optional(
                        "select extension_id from leases where tenant_id = $1 and collector_id = $2 \
                         order by acquired_at desc limit 1",
                        args![tenant, collector],
                    )
                    .await
                    .map_err(db_err)?
                    .map(|r| col(r.uuid("extension_id")))
                    .transpose()?;
                let mut got = None;
                if let Some(ext) = last {
                    got = pick(&mut tx, &self.sql.pick_affinity, Some(Arg::Uuid(ext))).await?;
                }
                match got {
                    Some(id) => Some(id),
                    None => pick(&mut tx, &self.sql.pick_lru, None).await?,
                }
            }
            Strategy::RoundRobin => {
                let mut got = None;
                if let Some(c) = &cursor {
                    got = pick(&mut tx, &self.sql.pick_rr_after, Some(Arg::Text(c))).await?;
                }
                match got {
                    Some(id) => Some(id),
                    None => pick(&mut tx, &self.sql.pick_rr_first, None).await?,
                }
            }
        };
        let picked = match (picked, &self.sql.held_free, &self.sql.lock_if_free) {
            (None, Some(held), Some(lock)) if !serial => {
                // MySQL: wait for the acquires in flight, then take what they left or replay a
                // twin among them. Each held extension is locked by primary key in turn (the
                // order every other path locks an extension in; this transaction holds no
                // other lock meanwhile, as READ COMMITTED lets go of a row that no longer
                // matches), which waits for its holder to commit or roll back.
                let held = tx
                    .exec()
                    .fetch_all(held, args![tenant])
                    .await
                    .map_err(db_err)?;
                let mut got = None;
                for row in &held {
                    let id = col(row.uuid("id"))?;
                    got = pick(&mut tx, lock, Some(Arg::Uuid(id))).await?;
                    if let Some(Picked {
                        read: Some(read), ..
                    }) = &mut got
                    {
                        // The lock may have waited (up to the server's lock timeout): the
                        // lease starts now, not when the waiting statement began.
                        let now = format!("select {} as picked_at", self.dialect().now());
                        let row = tx.exec().fetch_one(&now, &[]).await.map_err(db_err)?;
                        read.at = read.at.max(col(row.time("picked_at"))?);
                    }
                    if got.is_some() {
                        break;
                    }
                }
                if got.is_none()
                    && let Some((l, fp)) = find_by_request(tx.exec(), tenant, request_id).await?
                {
                    return Ok(Step::Done(replay(l, &fp, cmd)));
                }
                got
            }
            (picked, ..) => picked,
        };
        let Some(picked) = picked else {
            let counts = self.counts_on(tx.exec(), tenant).await?;
            return Ok(Step::Done(AcquireOutcome::PoolEmpty(counts)));
        };
        let extension_id = picked.id;
        let lease_id = Uuid::now_v7();
        let inserted = match (&self.sql.lease_extension, &self.sql.lite_acquire_picked) {
            (Some(lease_extension), _) => {
                let mut a = vec![
                    Arg::Uuid(extension_id),
                    Arg::Uuid(lease_id),
                    Arg::Text(collector),
                    Arg::I64(i64::from(cmd.ttl_seconds)),
                ];
                if let Some(read) = &picked.read {
                    a.push(Arg::Time(read.at));
                }
                let n = tx
                    .exec()
                    .execute(lease_extension, &a)
                    .await
                    .map_err(db_err)?;
                if n != 1 {
                    return Err(AllocError::Internal(anyhow::anyhow!(
                        "extension {extension_id} changed under its row lock"
                    )));
                }
                self.insert_lease(&mut tx, cmd, lease_id, extension_id)
                    .await
            }
            // SQLite: the lease's insert marks its extension in use.
            (None, Some(insert)) => tx
                .exec()
                .fetch_optional(
                    insert,
                    &lite_acquire_args(cmd, lease_id, None, Some(extension_id)),
                )
                .await
                .map(|row| row.map(|r| lease_from(&r))),
            (None, None) => {
                return Err(AllocError::Internal(anyhow::anyhow!(
                    "no statement leases an extension on {}",
                    self.backend()
                )));
            }
        };
        let lease = match inserted {
            Ok(Some(lease)) => lease?.0,
            // No `returning`: the lease is what the pick read and the update wrote.
            Ok(None) => match picked.read {
                Some(read) => read.lease(cmd, lease_id, extension_id)?,
                None => {
                    return Err(AllocError::Internal(anyhow::anyhow!(
                        "lease {lease_id} inserted without its columns on {}",
                        self.backend()
                    )));
                }
            },
            // A concurrent identical request won: undo ours and return theirs.
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await.map_err(db_err)?;
                return self.replay_or_vanished(cmd).await.map(Step::Done);
            }
            Err(e) => return Err(db_err(e)),
        };
        if cmd.strategy == Strategy::RoundRobin {
            tx.exec()
                .execute(
                    &self.sql.set_cursor,
                    args![tenant, lease.extension_number.as_str()],
                )
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Step::Done(AcquireOutcome::Granted {
            lease,
            replayed: false,
        }))
    }

    /// Inserts the lease of the extension just marked in use (PostgreSQL's one-store path and
    /// MySQL), answering it where the backend can (`returning`).
    async fn insert_lease(
        &self,
        tx: &mut Tx,
        cmd: &AcquireCmd,
        lease_id: Uuid,
        extension_id: Uuid,
    ) -> Result<Option<Result<(Lease, String), AllocError>>, sqlx::Error> {
        let args = args![
            lease_id,
            cmd.collector_id.as_str(),
            cmd.request_id.as_str(),
            cmd.fingerprint.as_str(),
            cmd.strategy.as_str(),
            i64::from(cmd.cooldown_seconds),
            extension_id
        ];
        if self.sql.returning {
            tx.exec()
                .fetch_optional(&self.sql.insert_lease, args)
                .await
                .map(|row| row.map(|r| lease_from(&r)))
        } else {
            // The lease is built from the pick (`PickRead::lease`); the count stands in for
            // the read-back that would have found it missing.
            tx.exec()
                .execute(&self.sql.insert_lease, args)
                .await
                .map(|n| {
                    (n != 1).then(|| {
                        Err(AllocError::Internal(anyhow::anyhow!(
                            "lease {lease_id}: {n} rows inserted for one"
                        )))
                    })
                })
        }
    }

    /// The lease an earlier request with this id got, replayed to `cmd`.
    pub async fn replay_or_vanished(&self, cmd: &AcquireCmd) -> Result<AcquireOutcome, AllocError> {
        let conn = &mut self.db.conn().await.map_err(db_err)?;
        match find_by_request(conn.exec(), cmd.tenant_id.as_str(), cmd.request_id.as_str()).await? {
            Some((l, fp)) => Ok(replay(l, &fp, cmd)),
            None => Err(AllocError::Internal(anyhow::anyhow!(
                "request id {} vanished after it was seen",
                cmd.request_id
            ))),
        }
    }

    /// The lease of `cmd`'s request id, replayed, if it has one (a fresh look-up).
    pub async fn replay_if_used(
        &self,
        cmd: &AcquireCmd,
    ) -> Result<Option<AcquireOutcome>, AllocError> {
        let conn = &mut self.db.conn().await.map_err(db_err)?;
        Ok(
            find_by_request(conn.exec(), cmd.tenant_id.as_str(), cmd.request_id.as_str())
                .await?
                .map(|(l, fp)| replay(l, &fp, cmd)),
        )
    }

    /// The counts of a tenant's pool, when an acquire found it empty.
    pub async fn pool_empty(&self, tenant: &str) -> Result<AcquireOutcome, AllocError> {
        let conn = &mut self.db.conn().await.map_err(db_err)?;
        Ok(AcquireOutcome::PoolEmpty(
            self.counts_on(conn.exec(), tenant).await?,
        ))
    }

    /// Ends a lease if the token matches and it is live.
    pub async fn release(
        &self,
        lease_id: Uuid,
        token: i64,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError> {
        // SQLite: a release that would wait for the writer queues to be ended with the others
        // that wait; with the writer free it runs at once (the batch task's hand-off cost a
        // lone release a fifth of its speed at 1 client).
        if let Some(releases) = self.releases.as_ref().filter(|_| self.db.writer_busy()) {
            let store = self.clone();
            let run = move |(), jobs: Vec<LiteRelease>| {
                let store = store.clone();
                async move { store.release_lite_batch(jobs).await }
            };
            let job = LiteRelease {
                lease_id,
                lease_text: lease_id.to_string(),
                token,
                reason,
            };
            return releases.submit((), job, run).await.unwrap_or_else(|| {
                Err(AllocError::Internal(anyhow::anyhow!("release batch lost")))
            });
        }
        if self.sql.free_extension.is_none() {
            return self.release_lite(lease_id, token, reason).await;
        }
        if let Some(end_and_free) = &self.sql.end_and_free {
            // MySQL: one statement, its own transaction, then the ended lease read back (it
            // does not change once ended) on the same connection.
            let (n, mut conn) = sql::retry(contended, || async {
                let mut conn = self.db.conn().await.map_err(db_err)?;
                let n = conn
                    .exec()
                    .execute(end_and_free, args![lease_id, token, reason.as_str()])
                    .await
                    .map_err(db_err)?;
                Ok((n, conn))
            })
            .await?;
            if n == 0 {
                return unchanged(conn.exec(), lease_id, token).await;
            }
            return match find_lease(conn.exec(), lease_id).await? {
                Some((lease, _)) => Ok(LeaseChange::Changed(lease)),
                None => Err(AllocError::Internal(anyhow::anyhow!(
                    "lease {lease_id} vanished after it was ended"
                ))),
            };
        }
        sql::retry(contended, || async {
            let mut tx = self.begin(Mode::Write).await?;
            let out = match self.end_lease(&mut tx, lease_id, token, reason).await? {
                Some(l) => LeaseChange::Changed(l),
                None => unchanged(tx.exec(), lease_id, token).await?,
            };
            tx.commit().await.map_err(db_err)?;
            Ok(out)
        })
        .await
    }

    /// SQLite: ending the lease frees its extension (a trigger), so the release is one
    /// statement, its own transaction.
    async fn release_lite(
        &self,
        lease_id: Uuid,
        token: i64,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError> {
        let ended = sql::retry(contended, || async {
            self.db
                .write(&self.sql.end_lease, args![lease_id, token, reason.as_str()])
                .await
                .map_err(db_err)
        })
        .await?;
        match ended.first() {
            Some(row) => Ok(LeaseChange::Changed(lease_from(row)?.0)),
            None => {
                unchanged(
                    self.db.conn().await.map_err(db_err)?.exec(),
                    lease_id,
                    token,
                )
                .await
            }
        }
    }

    /// SQLite: coalesced releases, one result per job in order: a lone one alone, more in one
    /// statement ([`lite_end_leases`]); leases it did not end are looked up to say why. (The
    /// batcher never puts one lease twice in a batch.)
    async fn release_lite_batch(
        &self,
        jobs: Vec<LiteRelease>,
    ) -> Vec<Result<LeaseChange, AllocError>> {
        if let [j] = jobs.as_slice() {
            return vec![self.release_lite(j.lease_id, j.token, j.reason).await];
        }
        let sql = lite_end_leases(self.dialect(), jobs.len());
        let args: Vec<Arg<'_>> = jobs
            .iter()
            .flat_map(|j| {
                [
                    Arg::Uuid(j.lease_id),
                    Arg::I64(j.token),
                    Arg::Text(j.reason.as_str()),
                ]
            })
            .collect();
        let written = sql::retry(contended, || async {
            self.db.write(&sql, &args).await.map_err(db_err)
        })
        .await;
        let rows = match written {
            Ok(rows) => rows,
            Err(e) => {
                // Nothing was written (the statement is its own transaction). No one lease can
                // make it fail on SQLite (no row lock, no constraint a release can break), so
                // running the jobs one by one would only repeat the failure (a busy file, a
                // lost disk) once per job: every job gets the error.
                return jobs.iter().map(|_| Err(same_error(&e))).collect();
            }
        };
        let ended = rows
            .iter()
            .map(|row| lease_from(row).map(|(l, _)| (l.lease_id, l)))
            .collect::<Result<std::collections::HashMap<_, _>, _>>();
        let mut ended = match ended {
            Ok(ended) => ended,
            Err(e) => {
                return jobs
                    .iter()
                    .map(|_| Err(AllocError::Internal(anyhow::anyhow!("release batch: {e}"))))
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(jobs.len());
        for j in &jobs {
            out.push(match ended.remove(&j.lease_id) {
                Some(l) => Ok(LeaseChange::Changed(l)),
                None => match self.db.conn().await.map_err(db_err) {
                    Ok(mut conn) => unchanged(conn.exec(), j.lease_id, j.token).await,
                    Err(e) => Err(e),
                },
            });
        }
        out
    }

    /// Extends a live, unexpired lease to now + `ttl_seconds`.
    pub async fn renew(
        &self,
        lease_id: Uuid,
        token: i64,
        ttl_seconds: u32,
    ) -> Result<LeaseChange, AllocError> {
        sql::retry(contended, || async {
            let mut tx = self.begin(Mode::Write).await?;
            let n = tx
                .exec()
                .execute(
                    &self.sql.renew_lease,
                    args![lease_id, token, i64::from(ttl_seconds)],
                )
                .await
                .map_err(db_err)?;
            let out = if n == 1 {
                let Some((lease, _)) = find_lease(tx.exec(), lease_id).await? else {
                    return Err(AllocError::Internal(anyhow::anyhow!(
                        "lease {lease_id} vanished while it was renewed"
                    )));
                };
                tx.exec()
                    .execute(
                        &self.sql.renew_extension,
                        args![lease.extension_id, lease_id],
                    )
                    .await
                    .map_err(db_err)?;
                LeaseChange::Changed(lease)
            } else {
                unchanged(tx.exec(), lease_id, token).await?
            };
            tx.commit().await.map_err(db_err)?;
            Ok(out)
        })
        .await
    }

    /// Reads one lease.
    pub async fn get_lease(&self, lease_id: Uuid) -> Result<Option<Lease>, AllocError> {
        let conn = &mut self.db.conn().await.map_err(db_err)?;
        Ok(find_lease(conn.exec(), lease_id).await?.map(|(l, _)| l))
    }

    /// Ends up to `limit` leases whose expiry has passed (reason expired); returns them.
    pub async fn reap_expired(&self, limit: u32) -> Result<Vec<Lease>, AllocError> {
        sql::retry(contended, || self.try_reap(limit)).await
    }

    async fn try_reap(&self, limit: u32) -> Result<Vec<Lease>, AllocError> {
        let mut tx = self.begin(Mode::Write).await?;
        // Due leases are found through the extensions holding them (an index on in-use expiry),
        // then their lease rows are locked first, as every path that ends a lease does. skip
        // locked: several instances reap side by side without waiting on each other; four times
        // the limit in candidates, so leases another reaper (or a release) holds leave room for
        // the rest.
        let candidates: Vec<Uuid> = tx
            .exec()
            .fetch_all(&self.sql.due, args![i64::from(limit).saturating_mul(4)])
            .await
            .map_err(db_err)?
            .iter()
            .filter_map(|r| r.opt_uuid("current_lease_id").transpose())
            .collect::<Result<_, _>>()
            .map_err(db_err)?;
        let mut reaped = Vec::new();
        if !candidates.is_empty() {
            let sql = format!(
                "select lease_id, fencing_token from leases where lease_id in ({}) \
                 and released_at is null and expires_at <= {} order by lease_id limit ${}{}",
                placeholders(1, candidates.len()),
                self.dialect().now(),
                candidates.len() + 1,
                self.dialect().skip_locked(),
            );
            let mut a: Vec<Arg<'_>> = candidates.iter().map(|&id| Arg::Uuid(id)).collect();
            a.push(Arg::I64(limit.into()));
            let due = tx.exec().fetch_all(&sql, &a).await.map_err(db_err)?;
            for r in due {
                let id = col(r.uuid("lease_id"))?;
                let token = col(r.i64("fencing_token"))?;
                if let Some(l) = self
                    .end_lease(&mut tx, id, token, ReleaseReason::Expired)
                    .await?
                {
                    reaped.push(l);
                }
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(reaped)
    }

    /// Counts the tenant's pool.
    pub async fn counts(&self, tenant: &TenantId) -> Result<PoolCounts, AllocError> {
        let conn = &mut self.db.conn().await.map_err(db_err)?;
        self.counts_on(conn.exec(), tenant.as_str()).await
    }

    /// Per-extension usage over `[since, until)`.
    pub async fn usage(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<ExtensionUsage>, AllocError> {
        let rows = self
            .db
            .fetch_all(&self.sql.usage, args![tenant.as_str(), since, until])
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let leases = col(r.i64("leases"))?;
                Ok(ExtensionUsage {
                    extension_id: col(r.uuid("id"))?,
                    extension_number: col(r.text("number"))?,
                    lease_count: u32::try_from(leases).unwrap_or(u32::MAX),
                    busy_seconds: col(r.f64("busy"))?.max(0.0),
                })
            })
            .collect()
    }

    /// Inserts numbers in one transaction; `None` for a number already in the pool.
    pub async fn import(
        &self,
        tenant: &TenantId,
        config_id: &str,
        numbers: &[ExtensionNumber],
    ) -> Result<Vec<Option<Uuid>>, AllocError> {
        let ids: Vec<Uuid> = numbers.iter().map(|_| Uuid::now_v7()).collect();
        let d = self.dialect();
        let now = d.now();
        let inserted = sql::retry(contended, || async {
            let mut tx = self.begin(Mode::Write).await?;
            let mut inserted = HashSet::new();
            for (chunk_ids, chunk) in ids.chunks(IMPORT_CHUNK).zip(numbers.chunks(IMPORT_CHUNK)) {
                // Numbers already in the pool are left out first, with a read that locks
                // nothing: MySQL's "ignore" locks the existing row it skips until commit (a
                // re-import would hold in-use extensions away from their releases). What a
                // concurrent import adds meanwhile is still skipped by the insert below.
                let existing_sql = format!(
                    "select number from extensions where tenant_id = $1 and number in ({})",
                    placeholders(2, chunk.len())
                );
                let mut a = vec![Arg::Text(tenant.as_str())];
                a.extend(chunk.iter().map(|n| Arg::Text(n.as_str())));
                let existing: HashSet<String> = tx
                    .exec()
                    .fetch_all(&existing_sql, &a)
                    .await
                    .map_err(db_err)?
                    .iter()
                    .map(|r| r.text("number"))
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?;
                let (chunk_ids, chunk): (Vec<Uuid>, Vec<&ExtensionNumber>) = chunk_ids
                    .iter()
                    .zip(chunk)
                    .filter(|(_, n)| !existing.contains(n.as_str()))
                    .map(|(id, n)| (*id, n))
                    .unzip();
                if chunk.is_empty() {
                    continue;
                }
                // $1 tenant, $2 config, then (id, number) pairs.
                let values = (0..chunk.len())
                    .map(|i| format!("(${}, $1, $2, ${}, {now}, {now})", 3 + 2 * i, 4 + 2 * i))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = d.insert_or_ignore(
                    "extensions",
                    "id, tenant_id, config_id, number, created_at, updated_at",
                    &values,
                    "tenant_id, number",
                );
                let mut a = vec![Arg::Text(tenant.as_str()), Arg::Text(config_id)];
                for (id, n) in chunk_ids.iter().zip(chunk) {
                    a.push(Arg::Uuid(*id));
                    a.push(Arg::Text(n.as_str()));
                }
                tx.exec().execute(&sql, &a).await.map_err(db_err)?;
                let check = format!(
                    "select id from extensions where id in ({})",
                    placeholders(1, chunk_ids.len())
                );
                let a: Vec<Arg<'_>> = chunk_ids.iter().map(|&id| Arg::Uuid(id)).collect();
                for r in tx.exec().fetch_all(&check, &a).await.map_err(db_err)? {
                    inserted.insert(col(r.uuid("id"))?);
                }
            }
            tx.commit().await.map_err(db_err)?;
            Ok(inserted)
        })
        .await?;
        Ok(ids
            .into_iter()
            .map(|id| inserted.contains(&id).then_some(id))
            .collect())
    }

    /// Lists extensions in number order; only the filters given are in the statement.
    pub async fn list(&self, f: &ListFilter) -> Result<Vec<Extension>, AllocError> {
        let mut sql = format!(
            "select {} from extensions where tenant_id = $1",
            ext_cols!()
        );
        let filters = [
            (
                " and config_id = $n",
                f.config_id.as_ref().map(|c| c.as_str()),
            ),
            (" and status = $n", f.status.map(ExtStatus::as_str)),
            (
                " and current_collector_id = $n",
                f.collector_id.as_ref().map(|c| c.as_str()),
            ),
            (
                match self.db.backend() {
                    Backend::MySql => " and (number_len, number) > (char_length($n), $n)",
                    _ => " and (length(number), number) > (length($n), $n)",
                },
                f.after_number.as_deref(),
            ),
        ];
        let mut a = vec![Arg::Text(f.tenant_id.as_str())];
        for (cond, value) in filters {
            if let Some(v) = value {
                a.push(Arg::Text(v));
                sql.push_str(&cond.replace("$n", &format!("${}", a.len())));
            }
        }
        a.push(Arg::I64(f.limit.into()));
        sql.push_str(&format!(
            " order by {} limit ${}",
            number_order(self.dialect()),
            a.len()
        ));
        let rows = self.db.fetch_all(&sql, &a).await.map_err(db_err)?;
        rows.iter().map(extension_from).collect()
    }

    /// Reads one extension.
    pub async fn get_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Extension>, AllocError> {
        let conn = &mut self.db.conn().await.map_err(db_err)?;
        get_ext(conn.exec(), tenant, id, "").await
    }

    /// Changes status or number.
    pub async fn update_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        u: &ExtUpdate,
    ) -> Result<UpdateOutcome, AllocError> {
        sql::retry(contended, || self.try_update_extension(tenant, id, u)).await
    }

    async fn try_update_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        u: &ExtUpdate,
    ) -> Result<UpdateOutcome, AllocError> {
        let mut tx = self.begin(Mode::Write).await?;
        let Some(current) = get_ext(tx.exec(), tenant, id, "").await? else {
            return Ok(UpdateOutcome::NotFound);
        };
        if u.status == Some(ExtStatus::Offline) && current.status == ExtStatus::InUse {
            if !u.force {
                return Ok(UpdateOutcome::InUse);
            }
            if self
                .end_extension_lease(&mut tx, tenant, id, ReleaseReason::ExtensionOffline)
                .await?
                .is_none()
            {
                return Ok(UpdateOutcome::NotFound);
            }
        }
        let res = tx
            .exec()
            .execute(
                &self.sql.update_extension,
                args![
                    id,
                    tenant.as_str(),
                    u.status.map(ExtStatus::as_str),
                    u.number.as_ref().map(ExtensionNumber::as_str)
                ],
            )
            .await;
        let n = match res {
            Ok(n) => n,
            Err(e) if is_unique_violation(&e) => return Ok(UpdateOutcome::NumberTaken),
            Err(e) => return Err(db_err(e)),
        };
        if n == 0 {
            // The extension exists (read above): only a number change while in use is refused.
            return Ok(if u.number.is_some() {
                UpdateOutcome::NumberInUse
            } else {
                UpdateOutcome::NotFound
            });
        }
        let Some(ext) = get_ext(tx.exec(), tenant, id, "").await? else {
            return Ok(UpdateOutcome::NotFound);
        };
        tx.commit().await.map_err(db_err)?;
        Ok(UpdateOutcome::Updated(Box::new(ext)))
    }

    /// Ends the extension's live lease (reason given).
    pub async fn release_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError> {
        let ended = sql::retry(contended, || async {
            let mut tx = self.begin(Mode::Write).await?;
            let out = self
                .end_extension_lease(&mut tx, tenant, id, reason)
                .await?;
            tx.commit().await.map_err(db_err)?;
            Ok(out)
        })
        .await?;
        let Some((ext, ended)) = ended else {
            return Ok(LeaseChange::NotFound);
        };
        if let Some(l) = ended {
            return Ok(LeaseChange::Changed(l));
        }
        let conn = &mut self.db.conn().await.map_err(db_err)?;
        let last = conn
            .exec()
            .fetch_optional(
                "select lease_id from leases where extension_id = $1 order by acquired_at desc limit 1",
                args![ext.id],
            )
            .await
            .map_err(db_err)?
            .map(|r| col(r.uuid("lease_id")))
            .transpose()?;
        Ok(match last {
            Some(l) => match find_lease(conn.exec(), l).await? {
                Some((lease, _)) => LeaseChange::Unchanged {
                    lease,
                    reason: "extension is not in use".into(),
                },
                None => LeaseChange::NotFound,
            },
            None => LeaseChange::NotFound,
        })
    }

    /// Deletes extensions in one transaction.
    pub async fn delete_extensions(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
        force: bool,
    ) -> Result<Vec<DeleteOutcome>, AllocError> {
        sql::retry(contended, || async {
            loop {
                match self.try_delete_extensions(tenant, ids, force).await? {
                    Step::Done(out) => return Ok(out),
                    Step::Missing(row) => self.create_row(row, tenant.as_str()).await?,
                }
            }
        })
        .await
    }

    async fn try_delete_extensions(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
        force: bool,
    ) -> Result<Step<Vec<DeleteOutcome>>, AllocError> {
        let mut tx = self.begin(Mode::Write).await?;
        // The delete trigger updates the tenant's pool_counts row: take that lock before any
        // extension row, so two overlapping batch deletes queue here instead of deadlocking
        // (each holding the counter and waiting for an extension the other has). Then the live
        // leases of those extensions, in lease id order, as every multi-lease path does.
        let counter = tx
            .exec()
            .fetch_optional(&self.sql.lock_pool_counts, args![tenant.as_str()])
            .await
            .map_err(db_err)?;
        if counter.is_none() {
            return Ok(Step::Missing(PerTenant::Counts));
        }
        let mut locked = HashSet::new();
        if force && !ids.is_empty() {
            // The live leases of those extensions, read without a lock, then locked by primary
            // key in lease id order.
            let sql = format!(
                "select current_lease_id from extensions \
                 where tenant_id = $1 and id in ({}) and status = 'in_use'",
                placeholders(2, ids.len()),
            );
            let mut a = vec![Arg::Text(tenant.as_str())];
            a.extend(ids.iter().map(|&id| Arg::Uuid(id)));
            let mut leases = Vec::new();
            for r in tx.exec().fetch_all(&sql, &a).await.map_err(db_err)? {
                leases.extend(col(r.opt_uuid("current_lease_id"))?);
            }
            for r in self.lock_leases(&mut tx, &leases).await? {
                locked.insert(col(r.uuid("lease_id"))?);
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(ext) = get_ext(tx.exec(), tenant, id, "").await? else {
                out.push(DeleteOutcome::NotFound);
                continue;
            };
            let mut ended = None;
            if ext.status == ExtStatus::InUse {
                // Only leases locked above, in order, are ended here: one leased since then
                // would be waited for out of order (a deadlock with a batch of releases), so
                // that extension is reported in use, as a race with a new lease always was.
                if !force || !ext.current_lease_id.is_some_and(|l| locked.contains(&l)) {
                    out.push(DeleteOutcome::InUse);
                    continue;
                }
                match self
                    .end_extension_lease(&mut tx, tenant, id, ReleaseReason::ExtensionDeleted)
                    .await?
                {
                    Some((_, l)) => ended = l.map(|l| l.lease_id),
                    None => {
                        out.push(DeleteOutcome::NotFound);
                        continue;
                    }
                }
            }
            let n = tx
                .exec()
                .execute(
                    "delete from extensions where id = $1 and tenant_id = $2 and status <> 'in_use'",
                    args![id, tenant.as_str()],
                )
                .await
                .map_err(db_err)?;
            out.push(if n == 1 {
                DeleteOutcome::Deleted(ended)
            } else {
                DeleteOutcome::InUse
            });
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Step::Done(out))
    }

    /// Ends every live lease of a collector; returns their ids.
    pub async fn force_release_collector(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<Vec<Uuid>, AllocError> {
        sql::retry(contended, || async {
            let mut tx = self.begin(Mode::Write).await?;
            // The collector's live leases, read without a lock, then locked by primary key in
            // id order (locking in the collector index's order, or before a sort, would not
            // keep the order every multi-lease path takes).
            let ids = tx
                .exec()
                .fetch_all(
                    "select lease_id from leases \
                     where tenant_id = $1 and collector_id = $2 and released_at is null",
                    args![tenant.as_str(), collector.as_str()],
                )
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| r.uuid("lease_id"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            let live = self.lock_leases(&mut tx, &ids).await?;
            let mut ended = Vec::new();
            for r in live {
                let id = col(r.uuid("lease_id"))?;
                let token = col(r.i64("fencing_token"))?;
                if let Some(l) = self
                    .end_lease(&mut tx, id, token, ReleaseReason::CollectorForced)
                    .await?
                {
                    ended.push(l.lease_id);
                }
            }
            tx.commit().await.map_err(db_err)?;
            Ok(ended)
        })
        .await
    }

    /// Live leases across all tenants (for the gauge). An extension is in use exactly while its
    /// lease is live (one transaction changes both), so this counts in-use extensions.
    pub async fn live_leases(&self) -> Result<i64, AllocError> {
        let r = self
            .db
            .fetch_one(
                "select count(*) as n from extensions where status = 'in_use'",
                args![],
            )
            .await
            .map_err(db_err)?;
        col(r.i64("n"))
    }
}

#[async_trait::async_trait]
impl super::Store for SqlStore {
    fn backend(&self) -> &'static str {
        SqlStore::backend(self)
    }
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(r) = &self.releases {
            r.register(registry, "allocator_coalesced_release", "release requests");
        }
    }
    fn coalescing(&self) -> Vec<(&'static str, u64, u64)> {
        self.releases
            .iter()
            .map(|r| ("release", r.statements.get(), r.jobs.get()))
            .collect()
    }
    async fn acquire(&self, cmd: &AcquireCmd) -> Result<AcquireOutcome, AllocError> {
        SqlStore::acquire(self, cmd).await
    }
    async fn release(
        &self,
        lease_id: Uuid,
        token: i64,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError> {
        SqlStore::release(self, lease_id, token, reason).await
    }
    async fn renew(
        &self,
        lease_id: Uuid,
        token: i64,
        ttl_seconds: u32,
    ) -> Result<LeaseChange, AllocError> {
        SqlStore::renew(self, lease_id, token, ttl_seconds).await
    }
    async fn get_lease(&self, lease_id: Uuid) -> Result<Option<Lease>, AllocError> {
        SqlStore::get_lease(self, lease_id).await
    }
    async fn reap_expired(&self, limit: u32) -> Result<Vec<Lease>, AllocError> {
        SqlStore::reap_expired(self, limit).await
    }
    async fn counts(&self, tenant: &TenantId) -> Result<PoolCounts, AllocError> {
        SqlStore::counts(self, tenant).await
    }
    async fn usage(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<ExtensionUsage>, AllocError> {
        SqlStore::usage(self, tenant, since, until).await
    }
    async fn import(
        &self,
        tenant: &TenantId,
        config_id: &str,
        numbers: &[ExtensionNumber],
    ) -> Result<Vec<Option<Uuid>>, AllocError> {
        SqlStore::import(self, tenant, config_id, numbers).await
    }
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Extension>, AllocError> {
        SqlStore::list(self, filter).await
    }
    async fn get_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Extension>, AllocError> {
        SqlStore::get_extension(self, tenant, id).await
    }
    async fn update_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        update: &ExtUpdate,
    ) -> Result<UpdateOutcome, AllocError> {
        SqlStore::update_extension(self, tenant, id, update).await
    }
    async fn release_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError> {
        SqlStore::release_extension(self, tenant, id, reason).await
    }
    async fn delete_extensions(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
        force: bool,
    ) -> Result<Vec<DeleteOutcome>, AllocError> {
        SqlStore::delete_extensions(self, tenant, ids, force).await
    }
    async fn force_release_collector(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<Vec<Uuid>, AllocError> {
        SqlStore::force_release_collector(self, tenant, collector).await
    }
    async fn live_leases(&self) -> Result<i64, AllocError> {
        SqlStore::live_leases(self).await
    }
}
