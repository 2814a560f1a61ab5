//! Storage of calls: communication records, unmatched callbacks, the lease-release outbox, the
//! pool-deletion outbox and the caller-number cursor. The same portable SQL for PostgreSQL and
//! SQLite (one macro); domain types at the edge, rows inside.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::rows::{call_from, record_from, row_from};
use super::{PgGatewayStore, SqliteGatewayStore, db_err};
use crate::domain::call::{
    Call, CallId, CallResult, CallStatus, Completion, Lease, Release, ReleaseReason,
};
use crate::domain::event::{CallEvent, EventType};
use crate::domain::{CollectorId, GwError, TenantId};

/// An outbox row is due for the background worker this long after it was written: whoever
/// writes it sends the release at once, and the row is deleted when the allocator confirms, so
/// the worker only sees rows whose immediate release failed or whose writer went away.
pub const RELEASE_GRACE: chrono::Duration = chrono::Duration::seconds(5);

/// Events numbered by one sequencer transaction at most.
const SEQUENCE_BATCH: i64 = 5_000;

/// Tenants one sequencer pass looks at, at most (those waiting longest first).
const SEQUENCE_TENANTS: i64 = 1_000;

/// How long a replica relaying a tenant's events to NATS holds the tenant.
const RELAY_CLAIM: chrono::Duration = chrono::Duration::seconds(30);

/// A dial Infinity accepted: the call goes dialing -> ringing, and the collector's last
/// extension is written if it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub call_id: CallId,
    pub tenant_id: TenantId,
    pub collector_id: CollectorId,
    pub extension: String,
}

/// What marking an accepted dial ringing found.
#[derive(Debug, Clone, PartialEq)]
pub enum Rung {
    /// dialing -> ringing.
    Ringing,
    /// The call had moved on (a callback completed it first): here it is.
    MovedOn(Box<Call>),
    /// Another transaction holds the call (a callback completing it): not waited for inside a
    /// batch, so that one call cannot hold up the others; mark it again on its own.
    Busy,
}

/// What completing a call did.
#[derive(Debug, Clone)]
pub struct Settled {
    pub outcome: Completed,
    /// The call as it stands afterwards.
    pub call: Call,
    /// The release still owed and queued in the outbox with the completion, if any.
    pub release: Option<Release>,
    /// Whether the release was already tried inside the transaction (then the outbox row is
    /// left to the background worker instead of being sent again at once).
    pub tried: bool,
}

/// Builds a call's completion from the call as locked in the completing transaction.
pub type RecordOf<'a> = &'a (dyn Fn(&Call) -> Completion + Send + Sync);

/// Sends a release while the completing transaction holds the call: `Some(true)` when the
/// allocator confirmed it (or knows no such lease), so no outbox row is written at all;
/// `Some(false)` when it was tried and failed (the outbox row waits for the worker); `None`
/// when it was not tried (the caller sends it after the commit).
pub type ReleaseNow<'a> =
    &'a (dyn Fn(Release) -> futures::future::BoxFuture<'static, Option<bool>> + Send + Sync);

/// A callback that matched no call.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmatched {
    pub id: String,
    pub tenant_id: Option<String>,
    pub customuuid: Option<String>,
    pub memberid: Option<String>,
    pub infinity_uuid: Option<String>,
    pub source_ip: Option<String>,
    pub payload: String,
    pub reason: String,
    pub received_at: DateTime<Utc>,
}

/// Filters of a listing (newest first).
#[derive(Debug, Clone)]
pub struct CallFilter {
    pub tenant_id: TenantId,
    pub collector_id: Option<String>,
    pub case_id: Option<String>,
    pub status: Option<CallStatus>,
    pub result: Option<CallResult>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Continue after (created_at, call id).
    pub before: Option<(DateTime<Utc>, String)>,
    pub limit: u32,
}

/// Which calls to count: those created in a window, or those still open.
#[derive(Debug, Clone)]
pub struct SummaryFilter {
    pub tenant_id: TenantId,
    pub collector_id: Option<String>,
    pub window: SummaryWindow,
}

/// The calls a summary counts.
#[derive(Debug, Clone, Copy)]
pub enum SummaryWindow {
    /// Created at or after the first time and before the second.
    Created(DateTime<Utc>, DateTime<Utc>),
    /// Dialing, ringing or unknown, however old (read through the open-calls index).
    Open,
}

/// How many calls share a status, a result and a hang-up cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    pub status: CallStatus,
    pub result: Option<CallResult>,
    pub hangup_cause: Option<u32>,
    pub count: u64,
}

/// What a completion did.
#[derive(Debug, Clone, PartialEq)]
pub enum Completed {
    /// The record was open (or expired) and is now completed; the release was queued.
    Applied,
    /// Already completed (a duplicate or a late second report): nothing changed.
    AlreadyCompleted,
}

/// What deleting a tenant's config did, in its one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedConfig {
    /// The deleted config.
    pub config_id: String,
    /// Open calls ended (status failed, error code [`CONFIG_DELETED`]).
    pub calls_ended: u32,
    /// The releases those calls owe (also queued in the outbox).
    pub releases: Vec<Release>,
}

/// A config's extension pool the allocator still has to delete.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPurge {
    pub config_id: String,
    pub tenant_id: String,
    pub attempts: i32,
}

/// Figures of the call store, for the gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// When they were read.
    pub now: DateTime<Utc>,
    /// Open calls by status.
    pub open: Vec<(CallStatus, i64)>,
    /// Lease releases owed.
    pub outbox_depth: i64,
    /// When the oldest of them was written.
    pub outbox_oldest: Option<DateTime<Utc>>,
    /// Pools of deleted configs still to delete.
    pub pool_purges: i64,
    /// Since when the oldest open call due for reconciliation has been due.
    pub reconcile_due_since: Option<DateTime<Utc>>,
}

/// The error code of a call ended because its tenant's config was deleted.
pub const CONFIG_DELETED: &str = "config_deleted";

/// Storage of calls.
#[async_trait]
pub trait CallStore: Send + Sync + 'static {
    /// Inserts a new record; `Ok(Some(existing))` when the call id (or the tenant's idempotency
    /// key) exists already.
    async fn insert_call(&self, call: &Call) -> Result<Option<Call>, GwError>;
    /// A call by id (any tenant; callers check the tenant).
    async fn call(&self, id: &CallId) -> Result<Option<Call>, GwError>;
    /// The newest open (or expired) call of a case (correlation by memberid).
    async fn open_call_for_case(
        &self,
        tenant: &TenantId,
        case_id: &str,
    ) -> Result<Option<Call>, GwError>;
    /// Whether a transaction locks only the rows it touches (PostgreSQL), so it may stay open
    /// across a short request to the allocator; SQLite locks the whole database.
    fn locks_rows(&self) -> bool;
    /// dialing -> ringing (only from dialing) for every accepted dial, and each collector's
    /// last extension, in one transaction; returns, per dial, what it found (a callback may
    /// have completed the call already).
    async fn mark_ringing(&self, accepted: &[Accepted]) -> Result<Vec<Rung>, GwError>;
    /// Records a new dial attempt on another extension.
    async fn set_attempt(&self, id: &CallId, lease: &Lease, attempts: u32) -> Result<(), GwError>;
    /// dialing -> failed with the reason; queues the release unless `release` is none.
    async fn mark_failed(
        &self,
        id: &CallId,
        code: &str,
        message: &str,
        release: Option<&Release>,
    ) -> Result<(), GwError>;
    /// dialing -> unknown (lease kept).
    async fn mark_unknown(&self, id: &CallId, message: &str) -> Result<bool, GwError>;
    /// Completes a tenant's open (or expired) call with the record `record` makes of it, in one
    /// transaction that locks the call first. The release it owes (reason `reason`) is sent by
    /// `release_now` inside the transaction when given (see [`Self::locks_rows`]); whatever
    /// is still owed after that is queued in the outbox in the same transaction. `None` when
    /// the tenant has no such call.
    async fn complete(
        &self,
        tenant: &TenantId,
        id: &CallId,
        record: RecordOf<'_>,
        reason: ReleaseReason,
        release_now: Option<ReleaseNow<'_>>,
    ) -> Result<Option<Settled>, GwError>;
    /// open -> expired and queues the release, in one transaction; false if no longer open.
    async fn expire(&self, id: &CallId, release: Option<&Release>) -> Result<bool, GwError>;
    /// Open calls whose reconcile time has come; claims them until `claim_until`.
    async fn claim_open(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Call>, GwError>;
    /// Remembers a renewed lease expiry.
    async fn set_lease_expiry(&self, id: &CallId, at: DateTime<Utc>) -> Result<(), GwError>;
    /// Lists calls, newest first.
    async fn list_calls(&self, f: &CallFilter) -> Result<Vec<Call>, GwError>;
    /// The calls of a window counted by status, result and hang-up cause.
    async fn summarize_calls(&self, f: &SummaryFilter) -> Result<Vec<SummaryRow>, GwError>;
    /// Stores a callback that matched no call.
    async fn insert_unmatched(&self, u: &Unmatched) -> Result<(), GwError>;
    /// Unmatched callbacks of a tenant (audit).
    async fn unmatched(&self, tenant_id: Option<&str>) -> Result<Vec<Unmatched>, GwError>;
    /// Releases due now; claims them until `claim_until`.
    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Release>, GwError>;
    /// The allocator confirmed these releases (lease id, call): drop their rows and mark the
    /// calls' leases released, in one transaction.
    async fn outbox_done(&self, done: &[(String, CallId)]) -> Result<(), GwError>;
    /// The allocator could not be reached: try again at `next`.
    async fn outbox_retry(
        &self,
        lease_id: &str,
        error: &str,
        next: DateTime<Utc>,
    ) -> Result<(), GwError>;
    /// The figures for the gauges, at `now`.
    async fn snapshot(&self, now: DateTime<Utc>) -> Result<Snapshot, GwError>;
    /// Deletes a tenant's config and collectors, ends its open calls (status failed, error
    /// code [`CONFIG_DELETED`]) queueing the releases they owe, and queues the deletion of the
    /// config's extension pool, all in one transaction. `None` when the tenant had no config.
    async fn delete_config(&self, tenant_id: &str) -> Result<Option<DeletedConfig>, GwError>;
    /// Pool deletions due now; claims them until `claim_until`.
    async fn claim_pool_purges(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PoolPurge>, GwError>;
    /// The allocator deleted the pool: drop the row.
    async fn pool_purge_done(&self, config_id: &str) -> Result<(), GwError>;
    /// The allocator could not be reached: try again at `next`.
    async fn pool_purge_retry(
        &self,
        config_id: &str,
        error: &str,
        next: DateTime<Utc>,
    ) -> Result<(), GwError>;
    /// The next caller-number index of a tenant (0, 1, 2, ...).
    async fn next_caller_index(&self, tenant_id: &str) -> Result<i64, GwError>;

    /// Tenants this process has just written events of (after the commit); other replicas'
    /// events are found by polling [`CallStore::event_heads`].
    fn event_wakes(&self) -> tokio::sync::broadcast::Receiver<String>;

    /// Numbers the committed events that have no id yet, for `tenants` (or, when empty, for
    /// every tenant that has such events, at most 1,000, longest waiting first), each tenant in
    /// its own short transaction that holds the tenant's counter row to its commit; a tenant another replica
    /// is numbering is skipped. Returns the tenants that got new ids. A no-op where events are
    /// numbered in their own transaction (SQLite).
    async fn sequence_events(&self, tenants: &[String]) -> Result<Vec<String>, GwError>;

    /// Every tenant's last event id (one small table: a row per tenant).
    async fn event_heads(&self) -> Result<Vec<(String, u64)>, GwError>;

    /// A tenant's events after `after` (of one call or one collector when `filter` says so),
    /// in id order, at most `limit`.
    async fn events(
        &self,
        tenant_id: &str,
        after: u64,
        limit: u32,
        filter: &EventFilter,
    ) -> Result<Vec<CallEvent>, GwError>;

    /// A tenant's event bounds: the last id deleted by retention, and the last id written
    /// (both 0 before its first event).
    async fn event_bounds(&self, tenant_id: &str) -> Result<EventBounds, GwError>;

    /// Deletes every tenant's events written before `before` (a prefix of each tenant's ids);
    /// returns how many.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, GwError>;

    /// Publishes the events of up to `tenants` tenants that the relay has not published yet,
    /// through `publish` (the events of one tenant in id order, at most `batch` of them), and
    /// records how far each got. A tenant another replica is relaying is skipped. Returns the
    /// number of events published.
    async fn relay_events(
        &self,
        tenants: u32,
        batch: u32,
        publish: Publish<'_>,
    ) -> Result<u64, GwError>;
}

/// Which of a tenant's events to read (indexed: a call's or a collector's events are found
/// without reading the others).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub call_id: Option<String>,
    pub collector_id: Option<String>,
}

/// A tenant's event ids: `pruned_through < id <= last_id` are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventBounds {
    pub pruned_through: u64,
    pub last_id: u64,
}

/// Publishes one tenant's events in order; returns how many of them (a prefix) were
/// acknowledged.
pub type Publish<'a> =
    &'a (dyn Fn(Vec<CallEvent>) -> futures::future::BoxFuture<'static, usize> + Send + Sync);

const EVENT_COLS: &str = "tenant_id, event_id, call_id, event_type, status, collector_id, case_id, \
     extension_number, result, talk_seconds, error_code, error_message, occurred_at";

fn event_from<R: Row>(r: &R) -> Result<CallEvent, GwError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i32>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = r.try_get("event_type").map_err(db_err)?;
    let status: String = r.try_get("status").map_err(db_err)?;
    let result: Option<String> = r.try_get("result").map_err(db_err)?;
    let id: i64 = r.try_get("event_id").map_err(db_err)?;
    Ok(CallEvent {
        event_id: u64::try_from(id).map_err(|_| crate::store::corrupt("event_id"))?,
        tenant_id: r.try_get("tenant_id").map_err(db_err)?,
        call_id: r.try_get("call_id").map_err(db_err)?,
        kind: EventType::parse(&kind).ok_or_else(|| crate::store::corrupt("event_type"))?,
        status: CallStatus::parse(&status).ok_or_else(|| crate::store::corrupt("event status"))?,
        collector_id: r.try_get("collector_id").map_err(db_err)?,
        case_id: r.try_get("case_id").map_err(db_err)?,
        extension_number: r.try_get("extension_number").map_err(db_err)?,
        result: result.as_deref().and_then(CallResult::parse),
        talk_seconds: r
            .try_get::<Option<i32>, _>("talk_seconds")
            .map_err(db_err)?
            .and_then(|t| u32::try_from(t).ok()),
        error_code: r.try_get("error_code").map_err(db_err)?,
        error_message: r.try_get("error_message").map_err(db_err)?,
        occurred_at: r.try_get("occurred_at").map_err(db_err)?,
    })
}

macro_rules! record_cols {
    () => {
        "call_id, tenant_id, config_id, supplier_id, case_id, collector_id, destination_number, dialled_number, \
         caller_number, extension_number, extension_id, lease_id, fencing_token, lease_expires_at, lease_released, \
         call_mode, call_timeout_seconds, status, result, start_time, answer_time, end_time, talk_seconds, \
         total_seconds, hangup_cause, hangup_side, record_url, record_filename, custom_params, infinity_uuid, \
         infinity_cdr_id, error_code, error_message, idempotency_key, attempts, raw_callback, reconcile_after, \
         created_at, updated_at"
    };
}

fn unmatched_from<R: Row>(r: &R) -> Result<Unmatched, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Unmatched {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        customuuid: r.try_get("customuuid")?,
        memberid: r.try_get("memberid")?,
        infinity_uuid: r.try_get("infinity_uuid")?,
        source_ip: r.try_get("source_ip")?,
        payload: r.try_get("payload")?,
        reason: r.try_get("reason")?,
        received_at: r.try_get("received_at")?,
    })
}

macro_rules! call_store {
    ($name:ident, $db:ty, $begin_write:literal, $lock:literal, $skip_locked:literal, $row_locks:literal) => {
        impl $name {
            async fn write_tx(&self) -> Result<sqlx::Transaction<'static, $db>, GwError> {
                if $begin_write.is_empty() {
                    self.pool.begin().await.map_err(db_err)
                } else {
                    self.pool.begin_with($begin_write).await.map_err(db_err)
                }
            }
        }

        /// Writes `events` (of calls this transaction changed) as its last statements. Where
        /// rows lock (PostgreSQL) they are written without an id, and the sequencer
        /// ([`CallStore::sequence_events`]) numbers them after the commit, so that no call's
        /// transaction ever waits on another's for its tenant's counter. On SQLite, whose write
        /// transactions run one at a time anyway, each takes the next id of its tenant from
        /// the counter at once (ids commit in order by construction).
        async fn append_events<'c>(tx: &mut sqlx::Transaction<'c, $db>, mut events: Vec<CallEvent>) -> Result<Vec<String>, GwError> {
            events.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
            let mut tenants: Vec<String> = events.iter().map(|e| e.tenant_id.clone()).collect();
            tenants.dedup();
            for e in &mut events {
                let id: Option<i64> = if $row_locks {
                    None
                } else {
                    let id: i64 = sqlx::query_scalar(
                    "insert into call_event_seq (tenant_id, last_id, pruned_through) values ($1, 1, 0) \
                     on conflict (tenant_id) do update set last_id = call_event_seq.last_id + 1 returning last_id",
                )
                    .bind(&e.tenant_id)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(db_err)?;
                    e.event_id = u64::try_from(id).map_err(|_| crate::store::corrupt("call_event_seq"))?;
                    Some(id)
                };
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "insert into call_events ({EVENT_COLS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                )))
                .bind(&e.tenant_id).bind(id).bind(&e.call_id).bind(e.kind.as_str()).bind(e.status.as_str())
                .bind(&e.collector_id).bind(&e.case_id).bind(&e.extension_number).bind(e.result.map(|r| r.as_str()))
                .bind(e.talk_seconds.map(|t| i32::try_from(t).unwrap_or(i32::MAX))).bind(&e.error_code)
                .bind(&e.error_message).bind(e.occurred_at)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
            }
            Ok(tenants)
        }

        impl $name {
            /// Numbers one tenant's committed events that have no id yet, in one short
            /// transaction holding the tenant's counter row; false when there was nothing to
            /// number or another replica holds the tenant.
            async fn sequence_tenant(&self, tenant: &str) -> Result<bool, GwError> {
                sqlx::query(
                    "insert into call_event_seq (tenant_id, last_id, pruned_through) values ($1, 0, 0) \
                     on conflict (tenant_id) do nothing",
                )
                .bind(tenant)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                let mut tx = self.write_tx().await?;
                let last: Option<i64> = sqlx::query_scalar(concat!(
                    "select last_id from call_event_seq where tenant_id = $1", $skip_locked
                ))
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                let Some(last) = last else {
                    return Ok(false);
                };
                // The committed events without an id, oldest first, numbered from last + 1.
                let numbered: Vec<i64> = sqlx::query_scalar(
                    "update call_events e set event_id = $2 + p.n from \
                     (select seq, row_number() over (order by seq) as n from \
                      (select seq from call_events where tenant_id = $1 and event_id is null order by seq limit $3) s) p \
                     where e.seq = p.seq returning e.event_id",
                )
                .bind(tenant)
                .bind(last)
                .bind(SEQUENCE_BATCH)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
                let Some(top) = numbered.iter().max().copied() else {
                    return Ok(false);
                };
                sqlx::query("update call_event_seq set last_id = $2 where tenant_id = $1")
                    .bind(tenant)
                    .bind(top)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }

            /// Commits a transaction that wrote events of `tenants`, then wakes this process's
            /// watchers of them (other replicas hear of them through the database).
            async fn commit_waking(&self, tx: sqlx::Transaction<'static, $db>, tenants: Vec<String>) -> Result<(), GwError> {
                tx.commit().await.map_err(db_err)?;
                for t in &tenants {
                    self.feed.events_written(t);
                }
                Ok(())
            }
        }

        /// The call a `returning record_cols` statement returned, with its event.
        fn changed(row: &<$db as sqlx::Database>::Row, kind: EventType, now: DateTime<Utc>) -> Result<CallEvent, GwError> {
            let call = call_from(record_from(row).map_err(db_err)?)?;
            Ok(CallEvent::of(&call, kind, now))
        }

        async fn queue_release<'c>(tx: &mut sqlx::Transaction<'c, $db>, o: &Release, now: DateTime<Utc>) -> Result<(), GwError> {
            // The same lease is queued once; a second completion of the same call cannot add it again.
            sqlx::query(
                "insert into lease_release_outbox (lease_id, call_id, fencing_token, reason, attempts, next_attempt_at, created_at, updated_at) \
                 values ($1, $2, $3, $4, 0, $5, $6, $6) on conflict (lease_id) do nothing",
            )
            .bind(&o.lease_id)
            .bind(o.call_id.as_str())
            .bind(o.fencing_token)
            .bind(o.reason.as_str())
            .bind(now + RELEASE_GRACE)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
            Ok(())
        }

        /// Claims the rows of an outbox table that are due at `now`, at most `limit`: each row
        /// read has its due time moved to `claim_until` where it is still the one read (a
        /// replica that read the same row loses there). Returns the rows claimed, as read.
        async fn claim_due<'c>(
            tx: &mut sqlx::Transaction<'c, $db>,
            table: &'static str,
            key: &'static str,
            cols: &'static str,
            now: DateTime<Utc>,
            claim_until: DateTime<Utc>,
            limit: u32,
        ) -> Result<Vec<<$db as sqlx::Database>::Row>, GwError> {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "select {key}, {cols}, attempts, next_attempt_at from {table} \
                 where next_attempt_at <= $1 order by next_attempt_at limit $2"
            )))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut **tx)
            .await
            .map_err(db_err)?;
            let claim = format!(
                "update {table} set next_attempt_at = $3, attempts = attempts + 1, updated_at = $4 \
                 where {key} = $1 and next_attempt_at = $2"
            );
            let mut claimed = Vec::with_capacity(rows.len());
            for row in rows {
                let id: String = row.try_get(key).map_err(db_err)?;
                let due: DateTime<Utc> = row.try_get("next_attempt_at").map_err(db_err)?;
                let n = sqlx::query(sqlx::AssertSqlSafe(claim.clone()))
                    .bind(&id)
                    .bind(due)
                    .bind(claim_until)
                    .bind(now)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                if n == 1 {
                    claimed.push(row);
                }
            }
            Ok(claimed)
        }

        #[async_trait]
        impl CallStore for $name {
            fn locks_rows(&self) -> bool {
                $row_locks
            }

            async fn insert_call(&self, call: &Call) -> Result<Option<Call>, GwError> {
                let r = &row_from(call)?;
                let mut tx = self.write_tx().await?;
                let res = sqlx::query(concat!(
                    "insert into communication_records (", record_cols!(), ") values ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, \
                     $30, $31, $32, $33, $34, $35, $36, $37, $38, $39)"
                ))
                .bind(&r.call_id).bind(&r.tenant_id).bind(&r.config_id).bind(&r.supplier_id).bind(&r.case_id)
                .bind(&r.collector_id).bind(&r.destination_number).bind(&r.dialled_number).bind(&r.caller_number)
                .bind(&r.extension_number).bind(&r.extension_id).bind(&r.lease_id).bind(r.fencing_token)
                .bind(r.lease_expires_at).bind(r.lease_released).bind(&r.call_mode).bind(r.call_timeout_seconds)
                .bind(&r.status).bind(&r.result).bind(r.start_time).bind(r.answer_time).bind(r.end_time)
                .bind(r.talk_seconds).bind(r.total_seconds).bind(r.hangup_cause).bind(&r.hangup_side)
                .bind(&r.record_url).bind(&r.record_filename).bind(&r.custom_params).bind(&r.infinity_uuid)
                .bind(r.infinity_cdr_id).bind(&r.error_code).bind(&r.error_message).bind(&r.idempotency_key)
                .bind(r.attempts).bind(&r.raw_callback).bind(r.reconcile_after).bind(r.created_at).bind(r.updated_at)
                .execute(&mut *tx)
                .await;
                match res {
                    Ok(_) => {
                        let woken = append_events(&mut tx, vec![CallEvent::of(call, EventType::Created, call.created_at)]).await?;
                        self.commit_waking(tx, woken).await?;
                        Ok(None)
                    }
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                        tx.rollback().await.map_err(db_err)?;
                        let existing = match self.call(&call.id).await?.filter(|c| c.tenant_id == call.tenant_id) {
                            Some(e) => Some(e),
                            None => match &r.idempotency_key {
                                Some(k) => {
                                    let row = sqlx::query(concat!("select ", record_cols!(), " from communication_records where tenant_id = $1 and idempotency_key = $2"))
                                        .bind(&r.tenant_id)
                                        .bind(k)
                                        .fetch_optional(&self.pool)
                                        .await
                                        .map_err(db_err)?;
                                    row.as_ref().map(record_from).transpose().map_err(db_err)?.map(call_from).transpose()?
                                }
                                None => None,
                            },
                        };
                        existing
                            .map(Some)
                            .ok_or_else(|| GwError::Internal(anyhow::anyhow!("call id conflict without a record")))
                    }
                    Err(e) => Err(db_err(e)),
                }
            }

            async fn call(&self, id: &CallId) -> Result<Option<Call>, GwError> {
                // By primary key alone (callers compare the tenant): with the tenant in the
                // WHERE, a planner without statistics may walk a tenant-prefix index instead
                // (all of the tenant's calls).
                let row = sqlx::query(concat!("select ", record_cols!(), " from communication_records where call_id = $1"))
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(record_from).transpose().map_err(db_err)?.map(call_from).transpose()
            }

            async fn open_call_for_case(&self, tenant: &TenantId, case_id: &str) -> Result<Option<Call>, GwError> {
                let row = sqlx::query(concat!(
                    "select ", record_cols!(), " from communication_records where tenant_id = $1 and case_id = $2 \
                     and status in ('dialing', 'ringing', 'unknown', 'expired') order by created_at desc limit 1"
                ))
                .bind(tenant.as_str())
                .bind(case_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                row.as_ref().map(record_from).transpose().map_err(db_err)?.map(call_from).transpose()
            }

            // The status conditions of these single-row updates are wrapped in coalesce(..) so
            // the planner cannot prove them to imply the partial index of open calls and walk
            // that index (every open call, and every dead entry since the last vacuum) instead
            // of the primary key. Same meaning: status is never null.
            async fn mark_ringing(&self, accepted: &[Accepted]) -> Result<Vec<Rung>, GwError> {
                // A batch skips calls another transaction holds; a lone dial waits for them.
                let skip = accepted.len() > 1;
                let now = Utc::now();
                let mut rung = vec![Rung::Ringing; accepted.len()];
                // Rows are taken in one order (calls by id, then collectors by key), so two
                // batches never wait on each other in a cycle.
                let mut calls: Vec<(usize, &Accepted)> = accepted.iter().enumerate().collect();
                calls.sort_by(|a, b| a.1.call_id.as_str().cmp(b.1.call_id.as_str()));
                let mut collectors: Vec<&Accepted> = accepted.iter().collect();
                // Stable: of one collector's dials, the last accepted comes last and is kept.
                collectors.sort_by(|a, b| (a.tenant_id.as_str(), a.collector_id.as_str()).cmp(&(b.tenant_id.as_str(), b.collector_id.as_str())));
                let mut tx = self.write_tx().await?;
                let mut events = Vec::with_capacity(accepted.len());
                for (i, a) in calls {
                    let updated = if skip {
                        sqlx::query(concat!(
                            "update communication_records set status = 'ringing', updated_at = $2 where call_id = \
                             (select call_id from communication_records where call_id = $1", $skip_locked, ") \
                             and coalesce(status = 'dialing', false) returning ", record_cols!()
                        ))
                    } else {
                        sqlx::query(concat!(
                            "update communication_records set status = 'ringing', updated_at = $2 where call_id = $1 \
                             and coalesce(status = 'dialing', false) returning ", record_cols!()
                        ))
                    }
                    .bind(a.call_id.as_str())
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    if let Some(row) = &updated {
                        events.push(changed(row, EventType::Ringing, now)?);
                    } else {
                        // Read in the same transaction: no second round of commits for it.
                        let row = sqlx::query(concat!("select ", record_cols!(), " from communication_records where call_id = $1"))
                            .bind(a.call_id.as_str())
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(db_err)?;
                        let call = call_from(record_from(&row).map_err(db_err)?)?;
                        if let Some(r) = rung.get_mut(i) {
                            // Still dialing, yet not updated: skipped, being completed.
                            *r = if call.status == CallStatus::Dialing {
                                Rung::Busy
                            } else {
                                Rung::MovedOn(Box::new(call))
                            };
                        }
                    }
                }
                for (k, a) in collectors.iter().enumerate() {
                    let same_next = collectors.get(k + 1).is_some_and(|b| b.tenant_id == a.tenant_id && b.collector_id == a.collector_id);
                    if same_next {
                        continue;
                    }
                    // Written only when it changed: most calls of a collector reuse nothing,
                    // but an unchanged row is not rewritten.
                    sqlx::query(
                        "update collectors set last_extension_number = $3, updated_at = $4 where tenant_id = $1 and collector_id = $2 \
                         and (last_extension_number is null or last_extension_number <> $3)",
                    )
                    .bind(a.tenant_id.as_str())
                    .bind(a.collector_id.as_str())
                    .bind(&a.extension)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                }
                let woken = append_events(&mut tx, events).await?;
                self.commit_waking(tx, woken).await?;
                Ok(rung)
            }

            async fn set_attempt(&self, id: &CallId, l: &Lease, attempts: u32) -> Result<(), GwError> {
                let now = Utc::now();
                let mut tx = self.write_tx().await?;
                let row = sqlx::query(concat!(
                    "update communication_records set extension_number = $2, extension_id = $3, lease_id = $4, fencing_token = $5, \
                     lease_expires_at = $6, lease_released = false, attempts = $7, error_code = null, error_message = null, updated_at = $8 \
                     where call_id = $1 and coalesce(status = 'dialing', false) returning ", record_cols!()
                ))
                .bind(id.as_str()).bind(&l.extension_number).bind(&l.extension_id).bind(&l.lease_id).bind(l.fencing_token)
                .bind(l.expires_at).bind(i32::try_from(attempts).unwrap_or(i32::MAX)).bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                let woken = match &row {
                    Some(row) => append_events(&mut tx, vec![changed(row, EventType::Dialing, now)?]).await?,
                    None => Vec::new(),
                };
                self.commit_waking(tx, woken).await
            }

            async fn mark_failed(&self, id: &CallId, code: &str, message: &str, release: Option<&Release>) -> Result<(), GwError> {
                let now = Utc::now();
                let mut tx = self.write_tx().await?;
                let row = sqlx::query(concat!(
                    "update communication_records set status = 'failed', error_code = $2, error_message = $3, \
                     lease_released = case when $4 then lease_released else true end, updated_at = $5 \
                     where call_id = $1 and coalesce(status = 'dialing', false) returning ", record_cols!()
                ))
                .bind(id.as_str()).bind(code).bind(message).bind(release.is_some()).bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                let mut woken = Vec::new();
                if let Some(row) = &row {
                    if let Some(o) = release {
                        queue_release(&mut tx, o, now).await?;
                    }
                    woken = append_events(&mut tx, vec![changed(row, EventType::Failed, now)?]).await?;
                }
                self.commit_waking(tx, woken).await
            }

            async fn mark_unknown(&self, id: &CallId, message: &str) -> Result<bool, GwError> {
                let now = Utc::now();
                let mut tx = self.write_tx().await?;
                let row = sqlx::query(concat!(
                    "update communication_records set status = 'unknown', error_code = 'ambiguous', error_message = $2, updated_at = $3 \
                     where call_id = $1 and coalesce(status = 'dialing', false) returning ", record_cols!()
                ))
                .bind(id.as_str()).bind(message).bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                let woken = match &row {
                    Some(row) => append_events(&mut tx, vec![changed(row, EventType::Unknown, now)?]).await?,
                    None => Vec::new(),
                };
                self.commit_waking(tx, woken).await?;
                Ok(row.is_some())
            }

            async fn complete(
                &self,
                tenant: &TenantId,
                id: &CallId,
                record: RecordOf<'_>,
                reason: ReleaseReason,
                release_now: Option<ReleaseNow<'_>>,
            ) -> Result<Option<Settled>, GwError> {
                let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
                let now = Utc::now();
                let mut tx = self.write_tx().await?;
                let row = sqlx::query(concat!("select ", record_cols!(), " from communication_records where call_id = $1", $lock))
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let call = call_from(record_from(&row).map_err(db_err)?)?;
                if &call.tenant_id != tenant {
                    return Ok(None);
                }
                // Only an open or expired record takes a completion: a duplicate (same Infinity
                // uuid, or any second report) finds it completed and changes nothing.
                if !(call.status.is_open() || call.status == CallStatus::Expired) {
                    return Ok(Some(Settled { outcome: Completed::AlreadyCompleted, call, release: None, tried: false }));
                }
                let c = record(&call);
                let owed = call.owed_release(reason);
                let res = sqlx::query(concat!(
                    "update communication_records set status = 'completed', result = $2, start_time = $3, answer_time = $4, \
                     end_time = $5, talk_seconds = $6, total_seconds = $7, hangup_cause = $8, hangup_side = $9, \
                     record_url = $10, record_filename = $11, infinity_uuid = $12, infinity_cdr_id = $13, raw_callback = $14, \
                     error_code = null, error_message = null, updated_at = $15 \
                     where call_id = $1 returning ", record_cols!()
                ))
                .bind(id.as_str()).bind(c.result.as_str()).bind(c.start_time).bind(c.answer_time).bind(c.end_time)
                .bind(int(c.talk_seconds)).bind(int(c.total_seconds)).bind(c.hangup_cause.map(int)).bind(c.hangup_side.map(|h| h.as_str()))
                .bind(&c.record_url).bind(&c.record_filename).bind(&c.infinity_uuid).bind(c.infinity_cdr_id.and_then(|v| i64::try_from(v).ok()))
                .bind(&c.raw).bind(now)
                .fetch_one(&mut *tx)
                .await;
                let updated = match res {
                    Ok(r) => call_from(record_from(&r).map_err(db_err)?)?,
                    // The same Infinity uuid already completed another call of the tenant: a
                    // duplicate (the transaction is rolled back).
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                        return Ok(Some(Settled { outcome: Completed::AlreadyCompleted, call, release: None, tried: false }));
                    }
                    Err(e) => return Err(db_err(e)),
                };
                // Only now that the completion is written (it can still turn out a duplicate
                // above) may the lease go: it is sent while this transaction holds the call. If
                // the commit failed afterwards, the call would stay open with its lease already
                // free; the callback's retry completes it and the second release changes nothing.
                // `None` from the sender: it did not try (the allocator is known to be slow or
                // down), so the caller sends the release after the commit.
                let sent = match (&owed, release_now) {
                    (Some(r), Some(send)) => send(r.clone()).await,
                    _ => None,
                };
                let tried = sent.is_some();
                let released = sent.unwrap_or(false);
                let mut updated = updated;
                let release = match owed {
                    Some(_) if released => {
                        sqlx::query("update communication_records set lease_released = true where call_id = $1")
                            .bind(id.as_str())
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                        updated.lease_released = true;
                        None
                    }
                    Some(o) => {
                        queue_release(&mut tx, &o, now).await?;
                        Some(o)
                    }
                    None => None,
                };
                let woken = append_events(&mut tx, vec![CallEvent::of(&updated, EventType::Completed, now)]).await?;
                self.commit_waking(tx, woken).await?;
                Ok(Some(Settled { outcome: Completed::Applied, call: updated, release, tried }))
            }

            async fn expire(&self, id: &CallId, release: Option<&Release>) -> Result<bool, GwError> {
                let now = Utc::now();
                let mut tx = self.write_tx().await?;
                let row = sqlx::query(concat!(
                    "update communication_records set status = 'expired', error_code = 'expired', \
                     error_message = 'no call record from Infinity within the maximum age', updated_at = $2 \
                     where call_id = $1 and coalesce(status in ('dialing', 'ringing', 'unknown'), false) returning ", record_cols!()
                ))
                .bind(id.as_str())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                let mut woken = Vec::new();
                if let Some(row) = &row {
                    if let Some(o) = release {
                        queue_release(&mut tx, o, now).await?;
                    }
                    woken = append_events(&mut tx, vec![changed(row, EventType::Expired, now)?]).await?;
                }
                self.commit_waking(tx, woken).await?;
                Ok(row.is_some())
            }

            async fn claim_open(&self, now: DateTime<Utc>, claim_until: DateTime<Utc>, limit: u32) -> Result<Vec<Call>, GwError> {
                let mut tx = self.write_tx().await?;
                let rows = sqlx::query(concat!(
                    "select ", record_cols!(), " from communication_records \
                     where status in ('dialing', 'ringing', 'unknown') and reconcile_after <= $1 \
                     order by reconcile_after limit $2"
                ))
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
                let mut claimed = Vec::with_capacity(rows.len());
                for row in &rows {
                    let r = record_from(row).map_err(db_err)?;
                    // Claim by moving reconcile_after; a replica that read the same row loses here.
                    let n = sqlx::query("update communication_records set reconcile_after = $3 where call_id = $1 and reconcile_after = $2")
                        .bind(&r.call_id)
                        .bind(r.reconcile_after)
                        .bind(claim_until)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .rows_affected();
                    if n == 1 {
                        claimed.push(r);
                    }
                }
                tx.commit().await.map_err(db_err)?;
                claimed.into_iter().map(call_from).collect()
            }

            async fn set_lease_expiry(&self, id: &CallId, at: DateTime<Utc>) -> Result<(), GwError> {
                sqlx::query("update communication_records set lease_expires_at = $2, updated_at = $3 where call_id = $1")
                    .bind(id.as_str())
                    .bind(at)
                    .bind(Utc::now())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn list_calls(&self, f: &CallFilter) -> Result<Vec<Call>, GwError> {
                let (before_t, before_id) = match &f.before {
                    Some((t, id)) => (Some(*t), Some(id.clone())),
                    None => (None, None),
                };
                let rows = sqlx::query(concat!(
                    "select ", record_cols!(), " from communication_records where tenant_id = $1 \
                     and ($2 is null or collector_id = $2) and ($3 is null or case_id = $3) and ($4 is null or status = $4) \
                     and ($5 is null or created_at >= $5) and ($6 is null or created_at < $6) \
                     and ($7 is null or created_at < $7 or (created_at = $7 and call_id < $8)) \
                     and ($10 is null or result = $10) \
                     order by created_at desc, call_id desc limit $9"
                ))
                .bind(f.tenant_id.as_str()).bind(&f.collector_id).bind(&f.case_id).bind(f.status.map(|s| s.as_str()))
                .bind(f.since).bind(f.until).bind(before_t).bind(before_id).bind(i64::from(f.limit))
                .bind(f.result.map(|r| r.as_str()))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter()
                    .map(|r| record_from(r).map_err(db_err).and_then(call_from))
                    .collect()
            }

            async fn summarize_calls(&self, f: &SummaryFilter) -> Result<Vec<SummaryRow>, GwError> {
                let rows = match f.window {
                    SummaryWindow::Created(since, until) => sqlx::query(
                        "select status, result, hangup_cause, count(*) as n from communication_records \
                         where tenant_id = $1 and ($2 is null or collector_id = $2) \
                         and created_at >= $3 and created_at < $4 group by status, result, hangup_cause",
                    )
                    .bind(f.tenant_id.as_str()).bind(&f.collector_id).bind(since).bind(until)
                    .fetch_all(&self.pool)
                    .await,
                    // The status list matches the open-calls partial index's predicate.
                    SummaryWindow::Open => sqlx::query(
                        "select status, result, hangup_cause, count(*) as n from communication_records \
                         where status in ('dialing', 'ringing', 'unknown') and tenant_id = $1 \
                         and ($2 is null or collector_id = $2) group by status, result, hangup_cause",
                    )
                    .bind(f.tenant_id.as_str()).bind(&f.collector_id)
                    .fetch_all(&self.pool)
                    .await,
                }
                .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        let status: String = r.try_get("status").map_err(db_err)?;
                        let result: Option<String> = r.try_get("result").map_err(db_err)?;
                        let cause: Option<i32> = r.try_get("hangup_cause").map_err(db_err)?;
                        let n: i64 = r.try_get("n").map_err(db_err)?;
                        Ok(SummaryRow {
                            status: CallStatus::parse(&status)
                                .ok_or_else(|| crate::store::corrupt("status"))?,
                            result: result
                                .as_deref()
                                .map(|r| CallResult::parse(r).ok_or_else(|| crate::store::corrupt("result")))
                                .transpose()?,
                            hangup_cause: cause.and_then(|c| u32::try_from(c).ok()),
                            count: u64::try_from(n).unwrap_or(0),
                        })
                    })
                    .collect()
            }

            async fn insert_unmatched(&self, u: &Unmatched) -> Result<(), GwError> {
                sqlx::query(
                    "insert into unmatched_callbacks (id, tenant_id, customuuid, memberid, infinity_uuid, source_ip, payload, reason, \
                     received_at, created_at, updated_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9)",
                )
                .bind(&u.id).bind(&u.tenant_id).bind(&u.customuuid).bind(&u.memberid).bind(&u.infinity_uuid)
                .bind(&u.source_ip).bind(&u.payload).bind(&u.reason).bind(u.received_at)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn unmatched(&self, tenant_id: Option<&str>) -> Result<Vec<Unmatched>, GwError> {
                let rows = sqlx::query("select * from unmatched_callbacks where ($1 is null or tenant_id = $1) order by received_at")
                    .bind(tenant_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter().map(unmatched_from).collect::<Result<_, _>>().map_err(db_err)
            }

            async fn claim_outbox(&self, now: DateTime<Utc>, claim_until: DateTime<Utc>, limit: u32) -> Result<Vec<Release>, GwError> {
                let mut tx = self.write_tx().await?;
                let rows = claim_due(&mut tx, "lease_release_outbox", "lease_id", "call_id, fencing_token, reason", now, claim_until, limit).await?;
                tx.commit().await.map_err(db_err)?;
                rows.iter()
                    .map(|row| {
                        let call_id: String = row.try_get("call_id").map_err(db_err)?;
                        let reason: String = row.try_get("reason").map_err(db_err)?;
                        Ok(Release {
                            lease_id: row.try_get("lease_id").map_err(db_err)?,
                            call_id: CallId::parse("call_id", &call_id).map_err(|_| crate::store::corrupt("outbox call_id"))?,
                            fencing_token: row.try_get("fencing_token").map_err(db_err)?,
                            reason: ReleaseReason::parse(&reason).ok_or_else(|| crate::store::corrupt("outbox reason"))?,
                            attempts: row.try_get::<i32, _>("attempts").map_err(db_err)?.saturating_add(1),
                        })
                    })
                    .collect()
            }

            async fn outbox_done(&self, done: &[(String, CallId)]) -> Result<(), GwError> {
                let now = Utc::now();
                // Calls first, then outbox rows, each in key order: the order every other
                // transaction that touches both takes them in.
                let mut by_call: Vec<&(String, CallId)> = done.iter().collect();
                by_call.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
                let mut by_lease: Vec<&(String, CallId)> = done.iter().collect();
                by_lease.sort_by(|a, b| a.0.cmp(&b.0));
                let mut tx = self.write_tx().await?;
                for (lease_id, call) in by_call {
                    // Once: the request path and the background worker may both confirm one release.
                    sqlx::query("update communication_records set lease_released = true, updated_at = $3 where call_id = $1 and lease_id = $2 and lease_released = false")
                        .bind(call.as_str())
                        .bind(lease_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                for (lease_id, _) in by_lease {
                    sqlx::query("delete from lease_release_outbox where lease_id = $1")
                        .bind(lease_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                tx.commit().await.map_err(db_err)
            }

            async fn outbox_retry(&self, lease_id: &str, error: &str, next: DateTime<Utc>) -> Result<(), GwError> {
                sqlx::query("update lease_release_outbox set last_error = $2, next_attempt_at = $3, updated_at = $4 where lease_id = $1")
                    .bind(lease_id)
                    .bind(error)
                    .bind(next)
                    .bind(Utc::now())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn snapshot(&self, now: DateTime<Utc>) -> Result<Snapshot, GwError> {
                // Open calls are counted through the partial index of open calls; the outboxes
                // are small. One read-only transaction: one commit for the three reads.
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let rows = sqlx::query(
                    "select status, count(*) as n, min(case when reconcile_after <= $1 then reconcile_after end) as due \
                     from communication_records where status in ('dialing', 'ringing', 'unknown') group by status",
                )
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
                let mut open = Vec::new();
                let mut due: Option<DateTime<Utc>> = None;
                for r in &rows {
                    let status: String = r.try_get("status").map_err(db_err)?;
                    let n: i64 = r.try_get("n").map_err(db_err)?;
                    let d: Option<DateTime<Utc>> = r.try_get("due").map_err(db_err)?;
                    due = match (due, d) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    if let Some(st) = CallStatus::parse(&status) {
                        open.push((st, n));
                    }
                }
                let outbox = sqlx::query("select count(*) as n, min(created_at) as oldest from lease_release_outbox")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let pool_purges: i64 = sqlx::query_scalar("select count(*) from pool_purge_outbox")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(Snapshot {
                    now,
                    open,
                    outbox_depth: outbox.try_get("n").map_err(db_err)?,
                    outbox_oldest: outbox.try_get("oldest").map_err(db_err)?,
                    pool_purges,
                    reconcile_due_since: due,
                })
            }

            async fn delete_config(&self, tenant_id: &str) -> Result<Option<DeletedConfig>, GwError> {
                let now = Utc::now();
                let mut tx = self.write_tx().await?;
                let config_id: Option<String> = sqlx::query_scalar("delete from infinity_call_configs where tenant_id = $1 returning config_id")
                    .bind(tenant_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let Some(config_id) = config_id else {
                    return Ok(None);
                };
                // Calls before collectors: the order the ringing marks take rows in.
                let open = sqlx::query(concat!(
                    "update communication_records set status = 'failed', error_code = $2, \
                     error_message = 'the tenant''s Infinity config was deleted while the call was open', updated_at = $3 \
                     where tenant_id = $1 and status in ('dialing', 'ringing', 'unknown') returning ", record_cols!()
                ))
                .bind(tenant_id)
                .bind(CONFIG_DELETED)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
                sqlx::query("delete from collectors where tenant_id = $1")
                    .bind(tenant_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let mut releases = Vec::new();
                let mut events = Vec::with_capacity(open.len());
                for row in &open {
                    let call = call_from(record_from(row).map_err(db_err)?)?;
                    if let Some(o) = call.owed_release(ReleaseReason::Cancelled) {
                        queue_release(&mut tx, &o, now).await?;
                        releases.push(o);
                    }
                    events.push(CallEvent::of(&call, EventType::Failed, now));
                }
                sqlx::query(
                    "insert into pool_purge_outbox (config_id, tenant_id, attempts, next_attempt_at, created_at, updated_at) \
                     values ($1, $2, 0, $3, $3, $3) on conflict (config_id) do nothing",
                )
                .bind(&config_id)
                .bind(tenant_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                let woken = append_events(&mut tx, events).await?;
                self.commit_waking(tx, woken).await?;
                self.feed.bump();
                Ok(Some(DeletedConfig {
                    config_id,
                    calls_ended: u32::try_from(open.len()).unwrap_or(u32::MAX),
                    releases,
                }))
            }

            async fn claim_pool_purges(&self, now: DateTime<Utc>, claim_until: DateTime<Utc>, limit: u32) -> Result<Vec<PoolPurge>, GwError> {
                let mut tx = self.write_tx().await?;
                let rows = claim_due(&mut tx, "pool_purge_outbox", "config_id", "tenant_id", now, claim_until, limit).await?;
                tx.commit().await.map_err(db_err)?;
                rows.iter()
                    .map(|row| {
                        Ok(PoolPurge {
                            config_id: row.try_get("config_id").map_err(db_err)?,
                            tenant_id: row.try_get("tenant_id").map_err(db_err)?,
                            attempts: row.try_get::<i32, _>("attempts").map_err(db_err)?.saturating_add(1),
                        })
                    })
                    .collect()
            }

            async fn pool_purge_done(&self, config_id: &str) -> Result<(), GwError> {
                sqlx::query("delete from pool_purge_outbox where config_id = $1")
                    .bind(config_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn pool_purge_retry(&self, config_id: &str, error: &str, next: DateTime<Utc>) -> Result<(), GwError> {
                sqlx::query("update pool_purge_outbox set last_error = $2, next_attempt_at = $3, updated_at = $4 where config_id = $1")
                    .bind(config_id)
                    .bind(error)
                    .bind(next)
                    .bind(Utc::now())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn next_caller_index(&self, tenant_id: &str) -> Result<i64, GwError> {
                let now = Utc::now();
                sqlx::query_scalar(
                    "insert into caller_number_cursors (tenant_id, next_index, created_at, updated_at) values ($1, 1, $2, $2) \
                     on conflict (tenant_id) do update set next_index = caller_number_cursors.next_index + 1, updated_at = $2 \
                     returning next_index - 1",
                )
                .bind(tenant_id)
                .bind(now)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)
            }

            fn event_wakes(&self) -> tokio::sync::broadcast::Receiver<String> {
                self.feed.events.subscribe()
            }

            async fn events(&self, tenant_id: &str, after: u64, limit: u32, filter: &EventFilter) -> Result<Vec<CallEvent>, GwError> {
                // One statement per shape (not `$4 is null or ...`), so each uses its index.
                let (column, value) = match (&filter.call_id, &filter.collector_id) {
                    (Some(c), _) => (" and call_id = $4", Some(c)),
                    (None, Some(c)) => (" and collector_id = $4", Some(c)),
                    (None, None) => ("", None),
                };
                let sql = format!(
                    "select {EVENT_COLS} from call_events where tenant_id = $1 and event_id > $2{column} order by event_id limit $3"
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(i64::try_from(after).unwrap_or(i64::MAX))
                    .bind(i64::from(limit));
                if let Some(v) = value {
                    q = q.bind(v);
                }
                let rows = q.fetch_all(&self.pool).await.map_err(db_err)?;
                let events = rows.iter().map(event_from).collect::<Result<Vec<_>, _>>()?;
                Ok(events
                    .into_iter()
                    .filter(|e| filter.collector_id.as_ref().is_none_or(|c| *c == e.collector_id))
                    .collect())
            }

            async fn sequence_events(&self, tenants: &[String]) -> Result<Vec<String>, GwError> {
                if !$row_locks {
                    return Ok(Vec::new());
                }
                // The tenants with events still to number, those waiting longest first (so no
                // tenant is starved by busier ones); one indexed query, nothing locked when
                // there is no work.
                let waiting: Vec<String> = sqlx::query_scalar(
                    "select tenant_id from call_events where event_id is null \
                     group by tenant_id order by min(seq) limit $1",
                )
                .bind(SEQUENCE_TENANTS)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                let todo: Vec<String> = if tenants.is_empty() {
                    waiting
                } else {
                    waiting.into_iter().filter(|t| tenants.contains(t)).collect()
                };
                let mut advanced = Vec::new();
                for tenant in todo {
                    // One tenant's failure does not hold up the others.
                    match self.sequence_tenant(&tenant).await {
                        Ok(true) => advanced.push(tenant),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(tenant = %tenant, error = %e, "cannot number call events"),
                    }
                }
                Ok(advanced)
            }

            async fn event_heads(&self) -> Result<Vec<(String, u64)>, GwError> {
                let rows = sqlx::query("select tenant_id, last_id from call_event_seq")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        let last: i64 = r.try_get("last_id").map_err(db_err)?;
                        Ok((r.try_get("tenant_id").map_err(db_err)?, u64::try_from(last).unwrap_or(0)))
                    })
                    .collect()
            }

            async fn event_bounds(&self, tenant_id: &str) -> Result<EventBounds, GwError> {
                let row = sqlx::query("select pruned_through, last_id from call_event_seq where tenant_id = $1")
                    .bind(tenant_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                let Some(row) = row else {
                    return Ok(EventBounds::default());
                };
                let get = |c: &str| -> Result<u64, GwError> {
                    let v: i64 = row.try_get(c).map_err(db_err)?;
                    u64::try_from(v).map_err(|_| crate::store::corrupt("call_event_seq"))
                };
                Ok(EventBounds { pruned_through: get("pruned_through")?, last_id: get("last_id")? })
            }

            async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, GwError> {
                // Per tenant, everything up to its newest event older than `before` goes: a
                // prefix of its ids, whatever the replicas' clocks did in between. Each mark is
                // its own short statement (a counter row is locked for one update, never across
                // the delete), and the delete locks no counter.
                let marks = sqlx::query(
                    "select tenant_id, max(event_id) as through from call_events \
                     where occurred_at < $1 and event_id is not null group by tenant_id",
                )
                .bind(before)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                for m in &marks {
                    let tenant: String = m.try_get("tenant_id").map_err(db_err)?;
                    let Some(through) = m.try_get::<Option<i64>, _>("through").map_err(db_err)? else {
                        continue;
                    };
                    sqlx::query("update call_event_seq set pruned_through = $2 where tenant_id = $1 and pruned_through < $2")
                        .bind(&tenant)
                        .bind(through)
                        .execute(&self.pool)
                        .await
                        .map_err(db_err)?;
                }
                if marks.is_empty() {
                    return Ok(0);
                }
                let n = sqlx::query(
                    "delete from call_events where event_id <= (select s.pruned_through from call_event_seq s \
                     where s.tenant_id = call_events.tenant_id)",
                )
                .execute(&self.pool)
                .await
                .map_err(db_err)?
                .rows_affected();
                Ok(n)
            }

            async fn relay_events(&self, tenants: u32, batch: u32, publish: Publish<'_>) -> Result<u64, GwError> {
                let now = Utc::now();
                // Every tenant with events gets its relay row, so that it can be locked.
                sqlx::query(
                    "insert into call_event_relay (tenant_id, relayed_through, updated_at) \
                     select s.tenant_id, 0, $1 from call_event_seq s \
                     where not exists (select 1 from call_event_relay r where r.tenant_id = s.tenant_id) \
                     on conflict (tenant_id) do nothing",
                )
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                let mut published = 0u64;
                let pending = sqlx::query(
                    "select r.tenant_id from call_event_relay r join call_event_seq s on s.tenant_id = r.tenant_id \
                     where s.last_id > r.relayed_through order by r.updated_at limit $1",
                )
                .bind(i64::from(tenants))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                for row in pending {
                    let tenant: String = row.try_get("tenant_id").map_err(db_err)?;
                    // Claimed for a while rather than locked: publishing waits on NATS, and
                    // no transaction stays open across it. A replica that finds the tenant
                    // claimed skips it.
                    let now = Utc::now();
                    let claim = now + RELAY_CLAIM;
                    let claimed = sqlx::query(
                        "update call_event_relay set claimed_until = $2 where tenant_id = $1 \
                         and (claimed_until is null or claimed_until < $3)",
                    )
                    .bind(&tenant)
                    .bind(claim)
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                    if claimed == 0 {
                        continue;
                    }
                    let marks = sqlx::query(
                        "select r.relayed_through, s.pruned_through from call_event_relay r \
                         join call_event_seq s on s.tenant_id = r.tenant_id where r.tenant_id = $1",
                    )
                    .bind(&tenant)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?;
                    let through: i64 = marks.try_get("relayed_through").map_err(db_err)?;
                    let pruned: i64 = marks.try_get("pruned_through").map_err(db_err)?;
                    if pruned > through {
                        tracing::error!(tenant = %tenant, from = through + 1, to = pruned,
                            "call events deleted by retention before the relay published them");
                    }
                    let start = through.max(pruned);
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "select {EVENT_COLS} from call_events where tenant_id = $1 and event_id > $2 order by event_id limit $3"
                    )))
                    .bind(&tenant)
                    .bind(start)
                    .bind(i64::from(batch))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                    let events = rows.iter().map(event_from).collect::<Result<Vec<_>, _>>()?;
                    let ids: Vec<u64> = events.iter().map(|e| e.event_id).collect();
                    let acked = publish(events).await;
                    let last = match acked.checked_sub(1).and_then(|i| ids.get(i)) {
                        Some(id) => i64::try_from(*id).unwrap_or(i64::MAX),
                        None => start,
                    };
                    // Only forward: a replica whose claim ran out cannot move it back; and only
                    // its own claim is given up (another replica may hold the tenant by now).
                    sqlx::query(
                        "update call_event_relay set relayed_through = case when relayed_through < $2 then $2 else relayed_through end, \
                         claimed_until = case when claimed_until = $4 then null else claimed_until end, updated_at = $3 \
                         where tenant_id = $1",
                    )
                    .bind(&tenant)
                    .bind(last)
                    .bind(Utc::now())
                    .bind(claim)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                    published += u64::try_from(acked).unwrap_or(0);
                    if acked < ids.len() {
                        break;
                    }
                }
                Ok(published)
            }
        }
    };
}

mod pg {
    use super::*;
    call_store!(
        PgGatewayStore,
        sqlx::Postgres,
        "",
        " for update",
        " for update skip locked",
        true
    );
}

mod lite {
    use super::*;
    call_store!(
        SqliteGatewayStore,
        sqlx::Sqlite,
        "begin immediate",
        "",
        "",
        false
    );
}
