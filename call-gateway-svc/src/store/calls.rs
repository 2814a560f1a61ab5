//! Storage of calls: communication records, unmatched callbacks, the lease-release outbox, the
//! pool-deletion outbox, the caller-number cursor and call events, written once for every
//! backend ([`GatewayStore`]); domain types at the edge, rows inside.

use async_trait::async_trait;
use cco_platform::args;
use cco_platform::sql::{Arg, Backend, Mode, Row, Tx};
use chrono::{DateTime, Utc};

use super::compliance::GateRecord;
use super::rows::{call_from, record_from, row_from};
use super::{GatewayStore, db_err};
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
    /// key) exists already. `gate` is the compliance gate's attempt and decision to write in
    /// the same transaction (when the tenant's policy counts nothing, the gate defers them
    /// here instead of a transaction of its own).
    async fn insert_call(
        &self,
        call: &Call,
        gate: Option<&GateRecord>,
    ) -> Result<Option<Call>, GwError>;
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

fn event_from(r: &Row) -> Result<CallEvent, GwError> {
    let kind = r.text("event_type").map_err(db_err)?;
    let status = r.text("status").map_err(db_err)?;
    let result = r.opt_text("result").map_err(db_err)?;
    let id = r.i64("event_id").map_err(db_err)?;
    Ok(CallEvent {
        event_id: u64::try_from(id).map_err(|_| crate::store::corrupt("event_id"))?,
        tenant_id: r.text("tenant_id").map_err(db_err)?,
        call_id: r.text("call_id").map_err(db_err)?,
        kind: EventType::parse(&kind).ok_or_else(|| crate::store::corrupt("event_type"))?,
        status: CallStatus::parse(&status).ok_or_else(|| crate::store::corrupt("event status"))?,
        collector_id: r.text("collector_id").map_err(db_err)?,
        case_id: r.text("case_id").map_err(db_err)?,
        extension_number: r.opt_text("extension_number").map_err(db_err)?,
        result: result.as_deref().and_then(CallResult::parse),
        talk_seconds: r
            .opt_i32("talk_seconds")
            .map_err(db_err)?
            .and_then(|t| u32::try_from(t).ok()),
        error_code: r.opt_text("error_code").map_err(db_err)?,
        error_message: r.opt_text("error_message").map_err(db_err)?,
        occurred_at: r.time("occurred_at").map_err(db_err)?,
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

/// Reads one call back by id ($1) after a write, where the backend has no `returning`.
const CALL_BY_ID: &str = concat!(
    "select ",
    record_cols!(),
    " from communication_records where call_id = $1"
);

fn unmatched_from(r: &Row) -> Result<Unmatched, sqlx::Error> {
    Ok(Unmatched {
        id: r.text("id")?,
        tenant_id: r.opt_text("tenant_id")?,
        customuuid: r.opt_text("customuuid")?,
        memberid: r.opt_text("memberid")?,
        infinity_uuid: r.opt_text("infinity_uuid")?,
        source_ip: r.opt_text("source_ip")?,
        payload: r.text("payload")?,
        reason: r.text("reason")?,
        received_at: r.time("received_at")?,
    })
}

/// The call a `returning record_cols` statement returned, with its event.
fn changed(row: &Row, kind: EventType, now: DateTime<Utc>) -> Result<CallEvent, GwError> {
    let call = call_from(record_from(row).map_err(db_err)?)?;
    Ok(CallEvent::of(&call, kind, now))
}

/// True for an error worth running the transaction again for.
fn contended(e: &GwError) -> bool {
    matches!(e, GwError::Contention(_))
}

fn call_of(row: &Row) -> Result<Call, GwError> {
    call_from(record_from(row).map_err(db_err)?)
}

impl GatewayStore {
    async fn write_tx(&self) -> Result<Tx, GwError> {
        self.db.begin(Mode::Write).await.map_err(db_err)
    }

    /// MySQL: locks the cache epoch row first. Every write of configs and collectors bumps it
    /// through a trigger, so a transaction that writes several of them would otherwise hold the
    /// counter while waiting for a row another holds while waiting for the counter.
    pub(crate) async fn lock_epoch(&self, tx: &mut Tx) -> Result<(), GwError> {
        if self.db.backend() == Backend::MySql {
            tx.exec()
                .execute(super::LOCK_EPOCH, args![])
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Whether transactions lock rows (PostgreSQL, MySQL) rather than the database (SQLite).
    fn row_locks(&self) -> bool {
        self.db.backend() != Backend::Sqlite
    }

    /// Updates one call (by id, `$1`) with `set` where `cond` holds; the call as it stands
    /// after, or `None` when nothing matched.
    async fn update_call(
        &self,
        tx: &mut Tx,
        set_where: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, GwError> {
        self.write_returning(
            tx,
            &format!("update communication_records set {set_where}"),
            record_cols!(),
            args,
            CALL_BY_ID,
            &args[..1],
        )
        .await
        .map_err(db_err)
    }

    /// Writes `events` (of calls this transaction changed) as its last statements. Where
    /// rows lock (PostgreSQL, MySQL) they are written without an id, and the sequencer
    /// ([`CallStore::sequence_events`]) numbers them after the commit, so that no call's
    /// transaction ever waits on another's for its tenant's counter. On SQLite, whose write
    /// transactions run one at a time anyway, each takes the next id of its tenant from
    /// the counter at once (ids commit in order by construction).
    async fn append_events(
        &self,
        tx: &mut Tx,
        mut events: Vec<CallEvent>,
    ) -> Result<Vec<String>, GwError> {
        events.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        let mut tenants: Vec<String> = events.iter().map(|e| e.tenant_id.clone()).collect();
        tenants.dedup();
        for e in &mut events {
            let id: Option<i64> = if self.row_locks() {
                None
            } else {
                let row = tx
                    .exec()
                    .fetch_one(
                        "insert into call_event_seq (tenant_id, last_id, pruned_through) values ($1, 1, 0) \
                         on conflict (tenant_id) do update set last_id = call_event_seq.last_id + 1 \
                         returning last_id",
                        args![&e.tenant_id],
                    )
                    .await
                    .map_err(db_err)?;
                let id = row.i64("last_id").map_err(db_err)?;
                e.event_id =
                    u64::try_from(id).map_err(|_| crate::store::corrupt("call_event_seq"))?;
                Some(id)
            };
            tx.exec()
                .execute(
                    &format!(
                        "insert into call_events ({EVENT_COLS}) values \
                         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                    ),
                    args![
                        &e.tenant_id,
                        id,
                        &e.call_id,
                        e.kind.as_str(),
                        e.status.as_str(),
                        &e.collector_id,
                        &e.case_id,
                        &e.extension_number,
                        e.result.map(|r| r.as_str()),
                        e.talk_seconds.map(|t| i32::try_from(t).unwrap_or(i32::MAX)),
                        &e.error_code,
                        &e.error_message,
                        e.occurred_at
                    ],
                )
                .await
                .map_err(db_err)?;
        }
        Ok(tenants)
    }

    /// Numbers one tenant's committed events that have no id yet, in one short
    /// transaction holding the tenant's counter row; false when there was nothing to
    /// number or another replica holds the tenant.
    async fn sequence_tenant(&self, tenant: &str) -> Result<bool, GwError> {
        let d = self.db.dialect();
        // Created when missing (checked first with a read that locks nothing: MySQL's
        // "ignore" would wait for the counter row another replica holds).
        let known = self
            .db
            .fetch_optional(
                "select last_id from call_event_seq where tenant_id = $1",
                args![tenant],
            )
            .await
            .map_err(db_err)?;
        if known.is_none() {
            self.db
                .execute(
                    &d.insert_or_ignore(
                        "call_event_seq",
                        "tenant_id, last_id, pruned_through",
                        "($1, 0, 0)",
                        "tenant_id",
                    ),
                    args![tenant],
                )
                .await
                .map_err(db_err)?;
        }
        let mut tx = self.write_tx().await?;
        let last = tx
            .exec()
            .fetch_optional(
                &format!(
                    "select last_id from call_event_seq where tenant_id = $1{}",
                    d.skip_locked()
                ),
                args![tenant],
            )
            .await
            .map_err(db_err)?;
        let Some(last) = last else {
            return Ok(false);
        };
        let last = last.i64("last_id").map_err(db_err)?;
        // The committed events without an id, oldest first, numbered from last + 1.
        let numbered = match self.db.backend() {
            Backend::MySql => {
                // The derived table is materialised (its window function keeps it from being
                // merged), which lets MySQL update the table it reads.
                let n = tx
                    .exec()
                    .execute(
                        "update call_events e join \
                           (select seq, row_number() over (order by seq) as n from \
                             (select seq from call_events where tenant_id = $1 and event_id is null \
                              order by seq limit $3) s) p on e.seq = p.seq \
                         set e.event_id = $2 + p.n",
                        args![tenant, last, SEQUENCE_BATCH],
                    )
                    .await
                    .map_err(db_err)?;
                i64::try_from(n).map_err(|_| crate::store::corrupt("call_events"))?
            }
            _ => tx
                .exec()
                .fetch_all(
                    "update call_events e set event_id = $2 + p.n from \
                     (select seq, row_number() over (order by seq) as n from \
                      (select seq from call_events where tenant_id = $1 and event_id is null order by seq limit $3) s) p \
                     where e.seq = p.seq returning e.event_id",
                    args![tenant, last, SEQUENCE_BATCH],
                )
                .await
                .map_err(db_err)?
                .len()
                .try_into()
                .map_err(|_| crate::store::corrupt("call_events"))?,
        };
        if numbered == 0 {
            return Ok(false);
        }
        let top = last
            .checked_add(numbered)
            .ok_or_else(|| crate::store::corrupt("call_event_seq"))?;
        tx.exec()
            .execute(
                "update call_event_seq set last_id = $2 where tenant_id = $1",
                args![tenant, top],
            )
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    /// Commits a transaction that wrote events of `tenants`, then wakes this process's
    /// watchers of them (other replicas hear of them through the database).
    async fn commit_waking(&self, tx: Tx, tenants: Vec<String>) -> Result<(), GwError> {
        tx.commit().await.map_err(db_err)?;
        for t in &tenants {
            self.feed.events_written(t);
        }
        Ok(())
    }

    async fn queue_release(
        &self,
        tx: &mut Tx,
        o: &Release,
        now: DateTime<Utc>,
    ) -> Result<(), GwError> {
        // The same lease is queued once; a second completion of the same call cannot add it again.
        let sql = self.db.dialect().insert_or_ignore(
            "lease_release_outbox",
            "lease_id, call_id, fencing_token, reason, attempts, next_attempt_at, created_at, updated_at",
            "($1, $2, $3, $4, 0, $5, $6, $6)",
            "lease_id",
        );
        tx.exec()
            .execute(
                &sql,
                args![
                    &o.lease_id,
                    o.call_id.as_str(),
                    o.fencing_token,
                    o.reason.as_str(),
                    now + RELEASE_GRACE,
                    now
                ],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Claims the rows of an outbox table that are due at `now`, at most `limit`: each row
    /// read has its due time moved to `claim_until` where it is still the one read (a
    /// replica that read the same row loses there). Returns the rows claimed, as read.
    #[allow(clippy::too_many_arguments)]
    async fn claim_due(
        &self,
        tx: &mut Tx,
        table: &'static str,
        key: &'static str,
        cols: &'static str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Row>, GwError> {
        let rows = tx
            .exec()
            .fetch_all(
                &format!(
                    "select {key}, {cols}, attempts, next_attempt_at from {table} \
                     where next_attempt_at <= $1 order by next_attempt_at limit $2"
                ),
                args![now, limit],
            )
            .await
            .map_err(db_err)?;
        let claim = format!(
            "update {table} set next_attempt_at = $3, attempts = attempts + 1, updated_at = $4 \
             where {key} = $1 and next_attempt_at = $2"
        );
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.text(key).map_err(db_err)?;
            let due = row.time("next_attempt_at").map_err(db_err)?;
            let n = tx
                .exec()
                .execute(&claim, args![&id, due, claim_until, now])
                .await
                .map_err(db_err)?;
            if n == 1 {
                claimed.push(row);
            }
        }
        Ok(claimed)
    }
}

impl GatewayStore {
    async fn try_insert_call(
        &self,
        call: &Call,
        gate: Option<&GateRecord>,
    ) -> Result<Option<Call>, GwError> {
        let r = &row_from(call)?;
        let mut tx = self.write_tx().await?;
        let res = tx
            .exec()
            .execute(
                concat!(
                    "insert into communication_records (",
                    record_cols!(),
                    ") values ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, \
                     $30, $31, $32, $33, $34, $35, $36, $37, $38, $39)"
                ),
                args![
                    &r.call_id,
                    &r.tenant_id,
                    &r.config_id,
                    &r.supplier_id,
                    &r.case_id,
                    &r.collector_id,
                    &r.destination_number,
                    &r.dialled_number,
                    &r.caller_number,
                    &r.extension_number,
                    &r.extension_id,
                    &r.lease_id,
                    r.fencing_token,
                    r.lease_expires_at,
                    r.lease_released,
                    &r.call_mode,
                    r.call_timeout_seconds,
                    &r.status,
                    &r.result,
                    r.start_time,
                    r.answer_time,
                    r.end_time,
                    r.talk_seconds,
                    r.total_seconds,
                    r.hangup_cause,
                    &r.hangup_side,
                    &r.record_url,
                    &r.record_filename,
                    &r.custom_params,
                    &r.infinity_uuid,
                    r.infinity_cdr_id,
                    &r.error_code,
                    &r.error_message,
                    &r.idempotency_key,
                    r.attempts,
                    &r.raw_callback,
                    r.reconcile_after,
                    r.created_at,
                    r.updated_at
                ],
            )
            .await;
        match res {
            Ok(_) => {
                if let Some(g) = gate {
                    self.write_gate(&mut tx, g).await?;
                }
                let woken = self
                    .append_events(
                        &mut tx,
                        vec![CallEvent::of(call, EventType::Created, call.created_at)],
                    )
                    .await?;
                self.commit_waking(tx, woken).await?;
                Ok(None)
            }
            Err(e) if cco_platform::db::is_unique_violation(&e) => {
                tx.rollback().await.map_err(db_err)?;
                let existing = match self
                    .call(&call.id)
                    .await?
                    .filter(|c| c.tenant_id == call.tenant_id)
                {
                    Some(e) => Some(e),
                    None => match &r.idempotency_key {
                        Some(k) => {
                            let row = self
                                .db
                                .fetch_optional(
                                    concat!(
                                        "select ",
                                        record_cols!(),
                                        " from communication_records where tenant_id = $1 and idempotency_key = $2"
                                    ),
                                    args![&r.tenant_id, k],
                                )
                                .await
                                .map_err(db_err)?;
                            row.as_ref().map(call_of).transpose()?
                        }
                        None => None,
                    },
                };
                existing.map(Some).ok_or_else(|| {
                    GwError::Internal(anyhow::anyhow!("call id conflict without a record"))
                })
            }
            Err(e) => Err(db_err(e)),
        }
    }
}

#[async_trait]
impl CallStore for GatewayStore {
    fn locks_rows(&self) -> bool {
        self.row_locks()
    }

    async fn insert_call(
        &self,
        call: &Call,
        gate: Option<&GateRecord>,
    ) -> Result<Option<Call>, GwError> {
        // Identical MakeCalls (one idempotency key) racing: MySQL may abort all but one of the
        // waiting inserts as deadlocks; run again, they find the winner's record.
        cco_platform::sql::retry(contended, || self.try_insert_call(call, gate)).await
    }

    async fn call(&self, id: &CallId) -> Result<Option<Call>, GwError> {
        // By primary key alone (callers compare the tenant): with the tenant in the
        // WHERE, a planner without statistics may walk a tenant-prefix index instead
        // (all of the tenant's calls).
        let row = self
            .db
            .fetch_optional(CALL_BY_ID, args![id.as_str()])
            .await
            .map_err(db_err)?;
        row.as_ref().map(call_of).transpose()
    }

    async fn open_call_for_case(
        &self,
        tenant: &TenantId,
        case_id: &str,
    ) -> Result<Option<Call>, GwError> {
        let row = self
            .db
            .fetch_optional(
                concat!(
                    "select ",
                    record_cols!(),
                    " from communication_records where tenant_id = $1 and case_id = $2 \
                     and status in ('dialing', 'ringing', 'unknown', 'expired') order by created_at desc limit 1"
                ),
                args![tenant.as_str(), case_id],
            )
            .await
            .map_err(db_err)?;
        row.as_ref().map(call_of).transpose()
    }

    // The status conditions of these single-row updates are wrapped in coalesce(..) so
    // the planner cannot prove them to imply the partial index of open calls and walk
    // that index (every open call, and every dead entry since the last vacuum) instead
    // of the primary key. Same meaning: status is never null.
    async fn mark_ringing(&self, accepted: &[Accepted]) -> Result<Vec<Rung>, GwError> {
        // A batch skips calls another transaction holds; a lone dial waits for them.
        let skip = accepted.len() > 1;
        let skip_locked = self.db.dialect().skip_locked();
        let now = Utc::now();
        let mut rung = vec![Rung::Ringing; accepted.len()];
        // Rows are taken in one order (calls by id, then collectors by key), so two
        // batches never wait on each other in a cycle.
        let mut calls: Vec<(usize, &Accepted)> = accepted.iter().enumerate().collect();
        calls.sort_by(|a, b| a.1.call_id.as_str().cmp(b.1.call_id.as_str()));
        let mut collectors: Vec<&Accepted> = accepted.iter().collect();
        // Stable: of one collector's dials, the last accepted comes last and is kept.
        collectors.sort_by(|a, b| {
            (a.tenant_id.as_str(), a.collector_id.as_str())
                .cmp(&(b.tenant_id.as_str(), b.collector_id.as_str()))
        });
        let mut tx = self.write_tx().await?;
        let mut events = Vec::with_capacity(accepted.len());
        for (i, a) in calls {
            let id = a.call_id.as_str();
            let updated = if skip && self.db.backend() == Backend::MySql {
                // MySQL cannot update a table through a subquery on it: lock first.
                let held = tx
                    .exec()
                    .fetch_optional(
                        &format!(
                            "select call_id from communication_records where call_id = $1{skip_locked}"
                        ),
                        args![id],
                    )
                    .await
                    .map_err(db_err)?;
                match held {
                    None => None,
                    Some(_) => {
                        self.update_call(
                            &mut tx,
                            "status = 'ringing', updated_at = $2 where call_id = $1 \
                             and coalesce(status = 'dialing', false)",
                            args![id, now],
                        )
                        .await?
                    }
                }
            } else if skip {
                self.update_call(
                    &mut tx,
                    &format!(
                        "status = 'ringing', updated_at = $2 where call_id = \
                         (select call_id from communication_records where call_id = $1{skip_locked}) \
                         and coalesce(status = 'dialing', false)"
                    ),
                    args![id, now],
                )
                .await?
            } else {
                self.update_call(
                    &mut tx,
                    "status = 'ringing', updated_at = $2 where call_id = $1 \
                     and coalesce(status = 'dialing', false)",
                    args![id, now],
                )
                .await?
            };
            if let Some(row) = &updated {
                events.push(changed(row, EventType::Ringing, now)?);
            } else {
                // Read in the same transaction: no second round of commits for it.
                let row = tx
                    .exec()
                    .fetch_one(CALL_BY_ID, args![id])
                    .await
                    .map_err(db_err)?;
                let call = call_of(&row)?;
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
            let same_next = collectors
                .get(k + 1)
                .is_some_and(|b| b.tenant_id == a.tenant_id && b.collector_id == a.collector_id);
            if same_next {
                continue;
            }
            // Written only when it changed: most calls of a collector reuse nothing,
            // but an unchanged row is not rewritten.
            tx.exec()
                .execute(
                    "update collectors set last_extension_number = $3, updated_at = $4 \
                     where tenant_id = $1 and collector_id = $2 \
                     and (last_extension_number is null or last_extension_number <> $3)",
                    args![
                        a.tenant_id.as_str(),
                        a.collector_id.as_str(),
                        &a.extension,
                        now
                    ],
                )
                .await
                .map_err(db_err)?;
        }
        let woken = self.append_events(&mut tx, events).await?;
        self.commit_waking(tx, woken).await?;
        Ok(rung)
    }

    async fn set_attempt(&self, id: &CallId, l: &Lease, attempts: u32) -> Result<(), GwError> {
        let now = Utc::now();
        let mut tx = self.write_tx().await?;
        let row = self
            .update_call(
                &mut tx,
                "extension_number = $2, extension_id = $3, lease_id = $4, fencing_token = $5, \
                 lease_expires_at = $6, lease_released = false, attempts = $7, error_code = null, \
                 error_message = null, updated_at = $8 \
                 where call_id = $1 and coalesce(status = 'dialing', false)",
                args![
                    id.as_str(),
                    &l.extension_number,
                    &l.extension_id,
                    &l.lease_id,
                    l.fencing_token,
                    l.expires_at,
                    i32::try_from(attempts).unwrap_or(i32::MAX),
                    now
                ],
            )
            .await?;
        let woken = match &row {
            Some(row) => {
                self.append_events(&mut tx, vec![changed(row, EventType::Dialing, now)?])
                    .await?
            }
            None => Vec::new(),
        };
        self.commit_waking(tx, woken).await
    }

    async fn mark_failed(
        &self,
        id: &CallId,
        code: &str,
        message: &str,
        release: Option<&Release>,
    ) -> Result<(), GwError> {
        let now = Utc::now();
        let mut tx = self.write_tx().await?;
        let row = self
            .update_call(
                &mut tx,
                "status = 'failed', error_code = $2, error_message = $3, \
                 lease_released = case when $4 then lease_released else true end, updated_at = $5 \
                 where call_id = $1 and coalesce(status = 'dialing', false)",
                args![id.as_str(), code, message, release.is_some(), now],
            )
            .await?;
        let mut woken = Vec::new();
        if let Some(row) = &row {
            if let Some(o) = release {
                self.queue_release(&mut tx, o, now).await?;
            }
            woken = self
                .append_events(&mut tx, vec![changed(row, EventType::Failed, now)?])
                .await?;
        }
        self.commit_waking(tx, woken).await
    }

    async fn mark_unknown(&self, id: &CallId, message: &str) -> Result<bool, GwError> {
        let now = Utc::now();
        let mut tx = self.write_tx().await?;
        let row = self
            .update_call(
                &mut tx,
                "status = 'unknown', error_code = 'ambiguous', error_message = $2, updated_at = $3 \
                 where call_id = $1 and coalesce(status = 'dialing', false)",
                args![id.as_str(), message, now],
            )
            .await?;
        let woken = match &row {
            Some(row) => {
                self.append_events(&mut tx, vec![changed(row, EventType::Unknown, now)?])
                    .await?
            }
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
        let row = tx
            .exec()
            .fetch_optional(
                &format!("{CALL_BY_ID}{}", self.db.dialect().for_update()),
                args![id.as_str()],
            )
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let call = call_of(&row)?;
        if &call.tenant_id != tenant {
            return Ok(None);
        }
        // Only an open or expired record takes a completion: a duplicate (same Infinity
        // uuid, or any second report) finds it completed and changes nothing.
        if !(call.status.is_open() || call.status == CallStatus::Expired) {
            return Ok(Some(Settled {
                outcome: Completed::AlreadyCompleted,
                call,
                release: None,
                tried: false,
            }));
        }
        let c = record(&call);
        let owed = call.owed_release(reason);
        let res = self
            .write_returning(
                &mut tx,
                "update communication_records set status = 'completed', result = $2, start_time = $3, \
                 answer_time = $4, end_time = $5, talk_seconds = $6, total_seconds = $7, hangup_cause = $8, \
                 hangup_side = $9, record_url = $10, record_filename = $11, infinity_uuid = $12, \
                 infinity_cdr_id = $13, raw_callback = $14, error_code = null, error_message = null, \
                 updated_at = $15 where call_id = $1",
                record_cols!(),
                args![
                    id.as_str(),
                    c.result.as_str(),
                    c.start_time,
                    c.answer_time,
                    c.end_time,
                    int(c.talk_seconds),
                    int(c.total_seconds),
                    c.hangup_cause.map(int),
                    c.hangup_side.map(|h| h.as_str()),
                    &c.record_url,
                    &c.record_filename,
                    &c.infinity_uuid,
                    c.infinity_cdr_id.and_then(|v| i64::try_from(v).ok()),
                    &c.raw,
                    now
                ],
                CALL_BY_ID,
                args![id.as_str()],
            )
            .await;
        let updated = match res {
            Ok(Some(r)) => call_of(&r)?,
            Ok(None) => {
                return Err(GwError::Internal(anyhow::anyhow!(
                    "call {id} vanished under its row lock"
                )));
            }
            // The same Infinity uuid already completed another call of the tenant: a
            // duplicate (the transaction is rolled back).
            Err(e) if cco_platform::db::is_unique_violation(&e) => {
                return Ok(Some(Settled {
                    outcome: Completed::AlreadyCompleted,
                    call,
                    release: None,
                    tried: false,
                }));
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
                tx.exec()
                    .execute(
                        "update communication_records set lease_released = true where call_id = $1",
                        args![id.as_str()],
                    )
                    .await
                    .map_err(db_err)?;
                updated.lease_released = true;
                None
            }
            Some(o) => {
                self.queue_release(&mut tx, &o, now).await?;
                Some(o)
            }
            None => None,
        };
        let woken = self
            .append_events(
                &mut tx,
                vec![CallEvent::of(&updated, EventType::Completed, now)],
            )
            .await?;
        self.commit_waking(tx, woken).await?;
        Ok(Some(Settled {
            outcome: Completed::Applied,
            call: updated,
            release,
            tried,
        }))
    }

    async fn expire(&self, id: &CallId, release: Option<&Release>) -> Result<bool, GwError> {
        let now = Utc::now();
        let mut tx = self.write_tx().await?;
        let row = self
            .update_call(
                &mut tx,
                "status = 'expired', error_code = 'expired', \
                 error_message = 'no call record from Infinity within the maximum age', updated_at = $2 \
                 where call_id = $1 and coalesce(status in ('dialing', 'ringing', 'unknown'), false)",
                args![id.as_str(), now],
            )
            .await?;
        let mut woken = Vec::new();
        if let Some(row) = &row {
            if let Some(o) = release {
                self.queue_release(&mut tx, o, now).await?;
            }
            woken = self
                .append_events(&mut tx, vec![changed(row, EventType::Expired, now)?])
                .await?;
        }
        self.commit_waking(tx, woken).await?;
        Ok(row.is_some())
    }

    async fn claim_open(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Call>, GwError> {
        let mut tx = self.write_tx().await?;
        let rows = tx
            .exec()
            .fetch_all(
                concat!(
                    "select ",
                    record_cols!(),
                    " from communication_records \
                     where status in ('dialing', 'ringing', 'unknown') and reconcile_after <= $1 \
                     order by reconcile_after limit $2"
                ),
                args![now, limit],
            )
            .await
            .map_err(db_err)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let r = record_from(row).map_err(db_err)?;
            // Claim by moving reconcile_after; a replica that read the same row loses here.
            let n = tx
                .exec()
                .execute(
                    "update communication_records set reconcile_after = $3 \
                     where call_id = $1 and reconcile_after = $2",
                    args![&r.call_id, r.reconcile_after, claim_until],
                )
                .await
                .map_err(db_err)?;
            if n == 1 {
                claimed.push(r);
            }
        }
        tx.commit().await.map_err(db_err)?;
        claimed.into_iter().map(call_from).collect()
    }

    async fn set_lease_expiry(&self, id: &CallId, at: DateTime<Utc>) -> Result<(), GwError> {
        self.db
            .execute(
                "update communication_records set lease_expires_at = $2, updated_at = $3 where call_id = $1",
                args![id.as_str(), at, Utc::now()],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn list_calls(&self, f: &CallFilter) -> Result<Vec<Call>, GwError> {
        let (before_t, before_id) = match &f.before {
            Some((t, id)) => (Some(*t), Some(id.as_str())),
            None => (None, None),
        };
        let rows = self
            .db
            .fetch_all(
                concat!(
                    "select ",
                    record_cols!(),
                    " from communication_records where tenant_id = $1 \
                     and ($2 is null or collector_id = $2) and ($3 is null or case_id = $3) \
                     and ($4 is null or status = $4) \
                     and ($5 is null or created_at >= $5) and ($6 is null or created_at < $6) \
                     and ($7 is null or created_at < $7 or (created_at = $7 and call_id < $8)) \
                     and ($10 is null or result = $10) \
                     order by created_at desc, call_id desc limit $9"
                ),
                args![
                    f.tenant_id.as_str(),
                    &f.collector_id,
                    &f.case_id,
                    f.status.map(|s| s.as_str()),
                    f.since,
                    f.until,
                    before_t,
                    before_id,
                    f.limit,
                    f.result.map(|r| r.as_str())
                ],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(call_of).collect()
    }

    async fn summarize_calls(&self, f: &SummaryFilter) -> Result<Vec<SummaryRow>, GwError> {
        let rows = match f.window {
            SummaryWindow::Created(since, until) => {
                self.db
                    .fetch_all(
                        "select status, result, hangup_cause, count(*) as n from communication_records \
                         where tenant_id = $1 and ($2 is null or collector_id = $2) \
                         and created_at >= $3 and created_at < $4 group by status, result, hangup_cause",
                        args![f.tenant_id.as_str(), &f.collector_id, since, until],
                    )
                    .await
            }
            // The status list matches the open-calls partial index's predicate.
            SummaryWindow::Open => {
                self.db
                    .fetch_all(
                        "select status, result, hangup_cause, count(*) as n from communication_records \
                         where status in ('dialing', 'ringing', 'unknown') and tenant_id = $1 \
                         and ($2 is null or collector_id = $2) group by status, result, hangup_cause",
                        args![f.tenant_id.as_str(), &f.collector_id],
                    )
                    .await
            }
        }
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let status = r.text("status").map_err(db_err)?;
                let result = r.opt_text("result").map_err(db_err)?;
                let cause = r.opt_i32("hangup_cause").map_err(db_err)?;
                let n = r.i64("n").map_err(db_err)?;
                Ok(SummaryRow {
                    status: CallStatus::parse(&status)
                        .ok_or_else(|| crate::store::corrupt("status"))?,
                    result: result
                        .as_deref()
                        .map(|r| {
                            CallResult::parse(r).ok_or_else(|| crate::store::corrupt("result"))
                        })
                        .transpose()?,
                    hangup_cause: cause.and_then(|c| u32::try_from(c).ok()),
                    count: u64::try_from(n).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn insert_unmatched(&self, u: &Unmatched) -> Result<(), GwError> {
        self.db
            .execute(
                "insert into unmatched_callbacks (id, tenant_id, customuuid, memberid, infinity_uuid, \
                 source_ip, payload, reason, received_at, created_at, updated_at) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9)",
                args![
                    &u.id,
                    &u.tenant_id,
                    &u.customuuid,
                    &u.memberid,
                    &u.infinity_uuid,
                    &u.source_ip,
                    &u.payload,
                    &u.reason,
                    u.received_at
                ],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn unmatched(&self, tenant_id: Option<&str>) -> Result<Vec<Unmatched>, GwError> {
        let rows = self
            .db
            .fetch_all(
                "select id, tenant_id, customuuid, memberid, infinity_uuid, source_ip, payload, reason, \
                 received_at from unmatched_callbacks where ($1 is null or tenant_id = $1) \
                 order by received_at",
                args![tenant_id],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(unmatched_from)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Release>, GwError> {
        let mut tx = self.write_tx().await?;
        let rows = self
            .claim_due(
                &mut tx,
                "lease_release_outbox",
                "lease_id",
                "call_id, fencing_token, reason",
                now,
                claim_until,
                limit,
            )
            .await?;
        tx.commit().await.map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let call_id = row.text("call_id").map_err(db_err)?;
                let reason = row.text("reason").map_err(db_err)?;
                Ok(Release {
                    lease_id: row.text("lease_id").map_err(db_err)?,
                    call_id: CallId::parse("call_id", &call_id)
                        .map_err(|_| crate::store::corrupt("outbox call_id"))?,
                    fencing_token: row.i64("fencing_token").map_err(db_err)?,
                    reason: ReleaseReason::parse(&reason)
                        .ok_or_else(|| crate::store::corrupt("outbox reason"))?,
                    attempts: row.i32("attempts").map_err(db_err)?.saturating_add(1),
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
            tx.exec()
                .execute(
                    "update communication_records set lease_released = true, updated_at = $3 \
                     where call_id = $1 and lease_id = $2 and lease_released = false",
                    args![call.as_str(), lease_id, now],
                )
                .await
                .map_err(db_err)?;
        }
        for (lease_id, _) in by_lease {
            tx.exec()
                .execute(
                    "delete from lease_release_outbox where lease_id = $1",
                    args![lease_id],
                )
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn outbox_retry(
        &self,
        lease_id: &str,
        error: &str,
        next: DateTime<Utc>,
    ) -> Result<(), GwError> {
        self.db
            .execute(
                "update lease_release_outbox set last_error = $2, next_attempt_at = $3, updated_at = $4 \
                 where lease_id = $1",
                args![lease_id, error, next, Utc::now()],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn snapshot(&self, now: DateTime<Utc>) -> Result<Snapshot, GwError> {
        // Open calls are counted through the partial index of open calls; the outboxes
        // are small. One read-only transaction: one commit for the three reads.
        let mut tx = self.db.begin(Mode::Read).await.map_err(db_err)?;
        let rows = tx
            .exec()
            .fetch_all(
                "select status, count(*) as n, min(case when reconcile_after <= $1 then reconcile_after end) as due \
                 from communication_records where status in ('dialing', 'ringing', 'unknown') group by status",
                args![now],
            )
            .await
            .map_err(db_err)?;
        let mut open = Vec::new();
        let mut due: Option<DateTime<Utc>> = None;
        for r in &rows {
            let status = r.text("status").map_err(db_err)?;
            let n = r.i64("n").map_err(db_err)?;
            let d = r.opt_time("due").map_err(db_err)?;
            due = match (due, d) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(st) = CallStatus::parse(&status) {
                open.push((st, n));
            }
        }
        let outbox = tx
            .exec()
            .fetch_one(
                "select count(*) as n, min(created_at) as oldest from lease_release_outbox",
                args![],
            )
            .await
            .map_err(db_err)?;
        let pool_purges = tx
            .exec()
            .fetch_one("select count(*) as n from pool_purge_outbox", args![])
            .await
            .map_err(db_err)?
            .i64("n")
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Snapshot {
            now,
            open,
            outbox_depth: outbox.i64("n").map_err(db_err)?,
            outbox_oldest: outbox.opt_time("oldest").map_err(db_err)?,
            pool_purges,
            reconcile_due_since: due,
        })
    }

    async fn delete_config(&self, tenant_id: &str) -> Result<Option<DeletedConfig>, GwError> {
        let now = Utc::now();
        let d = self.db.dialect();
        let mut tx = self.write_tx().await?;
        self.lock_epoch(&mut tx).await?;
        let config_id = if d.has_returning() {
            tx.exec()
                .fetch_optional(
                    "delete from infinity_call_configs where tenant_id = $1 returning config_id",
                    args![tenant_id],
                )
                .await
        } else {
            let found = tx
                .exec()
                .fetch_optional(
                    "select config_id from infinity_call_configs where tenant_id = $1 for update",
                    args![tenant_id],
                )
                .await;
            if let Ok(Some(_)) = &found {
                tx.exec()
                    .execute(
                        "delete from infinity_call_configs where tenant_id = $1",
                        args![tenant_id],
                    )
                    .await
                    .map_err(db_err)?;
            }
            found
        }
        .map_err(db_err)?;
        let Some(config_id) = config_id else {
            return Ok(None);
        };
        let config_id = config_id.text("config_id").map_err(db_err)?;
        // Calls before collectors: the order the ringing marks take rows in.
        const END_OPEN: &str = "update communication_records set status = 'failed', error_code = $2, \
             error_message = 'the tenant''s Infinity config was deleted while the call was open', updated_at = $3 \
             where tenant_id = $1 and status in ('dialing', 'ringing', 'unknown')";
        let open = if d.has_returning() {
            tx.exec()
                .fetch_all(
                    &format!("{END_OPEN} returning {}", record_cols!()),
                    args![tenant_id, CONFIG_DELETED, now],
                )
                .await
                .map_err(db_err)?
        } else {
            // The open calls, read without a lock, then locked by primary key in id order,
            // ended (those still open) and read back by id: an open call committed after the
            // read is not touched here (its dial finds the config gone).
            let mut ids = tx
                .exec()
                .fetch_all(
                    "select call_id from communication_records \
                     where tenant_id = $1 and status in ('dialing', 'ringing', 'unknown')",
                    args![tenant_id],
                )
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| r.text("call_id"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            ids.sort();
            let mut rows = Vec::with_capacity(ids.len());
            if !ids.is_empty() {
                let place = |from: usize, n: usize| {
                    (from..from + n)
                        .map(|i| format!("${i}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let a: Vec<Arg<'_>> = ids.iter().map(|id| Arg::Text(id)).collect();
                // Locked in id order; those no longer open are left alone.
                let open = tx
                    .exec()
                    .fetch_all(
                        &format!(
                            "select call_id from communication_records where call_id in ({}) \
                             and status in ('dialing', 'ringing', 'unknown') order by call_id for update",
                            place(1, ids.len())
                        ),
                        &a,
                    )
                    .await
                    .map_err(db_err)?
                    .iter()
                    .map(|r| r.text("call_id"))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db_err)?;
                if !open.is_empty() {
                    let mut a = vec![
                        Arg::Text(tenant_id),
                        Arg::Text(CONFIG_DELETED),
                        Arg::Time(now),
                    ];
                    a.extend(open.iter().map(|id| Arg::Text(id)));
                    tx.exec()
                        .execute(
                            &format!("{END_OPEN} and call_id in ({})", place(4, open.len())),
                            &a,
                        )
                        .await
                        .map_err(db_err)?;
                    for id in &open {
                        rows.push(
                            tx.exec()
                                .fetch_one(CALL_BY_ID, args![id])
                                .await
                                .map_err(db_err)?,
                        );
                    }
                }
            }
            rows
        };
        tx.exec()
            .execute(
                "delete from collectors where tenant_id = $1",
                args![tenant_id],
            )
            .await
            .map_err(db_err)?;
        let mut releases = Vec::new();
        let mut events = Vec::with_capacity(open.len());
        for row in &open {
            let call = call_of(row)?;
            if let Some(o) = call.owed_release(ReleaseReason::Cancelled) {
                self.queue_release(&mut tx, &o, now).await?;
                releases.push(o);
            }
            events.push(CallEvent::of(&call, EventType::Failed, now));
        }
        tx.exec()
            .execute(
                &d.insert_or_ignore(
                    "pool_purge_outbox",
                    "config_id, tenant_id, attempts, next_attempt_at, created_at, updated_at",
                    "($1, $2, 0, $3, $3, $3)",
                    "config_id",
                ),
                args![&config_id, tenant_id, now],
            )
            .await
            .map_err(db_err)?;
        let woken = self.append_events(&mut tx, events).await?;
        self.commit_waking(tx, woken).await?;
        self.feed.bump();
        Ok(Some(DeletedConfig {
            config_id,
            calls_ended: u32::try_from(open.len()).unwrap_or(u32::MAX),
            releases,
        }))
    }

    async fn claim_pool_purges(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PoolPurge>, GwError> {
        let mut tx = self.write_tx().await?;
        let rows = self
            .claim_due(
                &mut tx,
                "pool_purge_outbox",
                "config_id",
                "tenant_id",
                now,
                claim_until,
                limit,
            )
            .await?;
        tx.commit().await.map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok(PoolPurge {
                    config_id: row.text("config_id").map_err(db_err)?,
                    tenant_id: row.text("tenant_id").map_err(db_err)?,
                    attempts: row.i32("attempts").map_err(db_err)?.saturating_add(1),
                })
            })
            .collect()
    }

    async fn pool_purge_done(&self, config_id: &str) -> Result<(), GwError> {
        self.db
            .execute(
                "delete from pool_purge_outbox where config_id = $1",
                args![config_id],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn pool_purge_retry(
        &self,
        config_id: &str,
        error: &str,
        next: DateTime<Utc>,
    ) -> Result<(), GwError> {
        self.db
            .execute(
                "update pool_purge_outbox set last_error = $2, next_attempt_at = $3, updated_at = $4 \
                 where config_id = $1",
                args![config_id, error, next, Utc::now()],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn next_caller_index(&self, tenant_id: &str) -> Result<i64, GwError> {
        let now = Utc::now();
        let upsert = self.db.dialect().upsert(
            "caller_number_cursors",
            "tenant_id, next_index, created_at, updated_at",
            "($1, 1, $2, $2)",
            "tenant_id",
            "next_index = caller_number_cursors.next_index + 1, updated_at = new(updated_at)",
        );
        // A tenant's first cursor raced by several dials: MySQL may abort all but one of the
        // inserts as deadlocks; run again, they find the row.
        let row = cco_platform::sql::retry(contended, || async {
            self.write_returning_once(
                false,
                &upsert,
                "next_index - 1 as i",
                args![tenant_id, now],
                "select next_index - 1 as i from caller_number_cursors where tenant_id = $1",
                args![tenant_id],
            )
            .await
        })
        .await?;
        row.ok_or_else(|| crate::store::corrupt("caller_number_cursors"))?
            .i64("i")
            .map_err(db_err)
    }

    fn event_wakes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.feed.events.subscribe()
    }

    async fn events(
        &self,
        tenant_id: &str,
        after: u64,
        limit: u32,
        filter: &EventFilter,
    ) -> Result<Vec<CallEvent>, GwError> {
        // One statement per shape (not `$4 is null or ...`), so each uses its index.
        let (column, value) = match (&filter.call_id, &filter.collector_id) {
            (Some(c), _) => (" and call_id = $4", Some(c)),
            (None, Some(c)) => (" and collector_id = $4", Some(c)),
            (None, None) => ("", None),
        };
        let sql = format!(
            "select {EVENT_COLS} from call_events where tenant_id = $1 and event_id > $2{column} \
             order by event_id limit $3"
        );
        let mut a = vec![
            Arg::Text(tenant_id),
            Arg::I64(i64::try_from(after).unwrap_or(i64::MAX)),
            Arg::I64(limit.into()),
        ];
        if let Some(v) = value {
            a.push(Arg::Text(v));
        }
        let rows = self.db.fetch_all(&sql, &a).await.map_err(db_err)?;
        let events = rows.iter().map(event_from).collect::<Result<Vec<_>, _>>()?;
        Ok(events
            .into_iter()
            .filter(|e| {
                filter
                    .collector_id
                    .as_ref()
                    .is_none_or(|c| *c == e.collector_id)
            })
            .collect())
    }

    async fn sequence_events(&self, tenants: &[String]) -> Result<Vec<String>, GwError> {
        if !self.row_locks() {
            return Ok(Vec::new());
        }
        // The tenants with events still to number, those waiting longest first (so no
        // tenant is starved by busier ones); one indexed query, nothing locked when
        // there is no work.
        let waiting = self
            .db
            .fetch_all(
                "select tenant_id from call_events where event_id is null \
                 group by tenant_id order by min(seq) limit $1",
                args![SEQUENCE_TENANTS],
            )
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.text("tenant_id"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        let todo: Vec<String> = if tenants.is_empty() {
            waiting
        } else {
            waiting
                .into_iter()
                .filter(|t| tenants.contains(t))
                .collect()
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
        let rows = self
            .db
            .fetch_all("select tenant_id, last_id from call_event_seq", args![])
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let last = r.i64("last_id").map_err(db_err)?;
                Ok((
                    r.text("tenant_id").map_err(db_err)?,
                    u64::try_from(last).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn event_bounds(&self, tenant_id: &str) -> Result<EventBounds, GwError> {
        let row = self
            .db
            .fetch_optional(
                "select pruned_through, last_id from call_event_seq where tenant_id = $1",
                args![tenant_id],
            )
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(EventBounds::default());
        };
        let get = |c: &str| -> Result<u64, GwError> {
            let v = row.i64(c).map_err(db_err)?;
            u64::try_from(v).map_err(|_| crate::store::corrupt("call_event_seq"))
        };
        Ok(EventBounds {
            pruned_through: get("pruned_through")?,
            last_id: get("last_id")?,
        })
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, GwError> {
        // Per tenant, everything up to its newest event older than `before` goes: a
        // prefix of its ids, whatever the replicas' clocks did in between. Each mark is
        // its own short statement (a counter row is locked for one update, never across
        // the delete), and the delete locks no counter.
        let marks = self
            .db
            .fetch_all(
                "select tenant_id, max(event_id) as through from call_events \
                 where occurred_at < $1 and event_id is not null group by tenant_id",
                args![before],
            )
            .await
            .map_err(db_err)?;
        for m in &marks {
            let tenant = m.text("tenant_id").map_err(db_err)?;
            let Some(through) = m.opt_i64("through").map_err(db_err)? else {
                continue;
            };
            self.db
                .execute(
                    "update call_event_seq set pruned_through = $2 where tenant_id = $1 and pruned_through < $2",
                    args![&tenant, through],
                )
                .await
                .map_err(db_err)?;
        }
        if marks.is_empty() {
            return Ok(0);
        }
        self.db
            .execute(
                "delete from call_events where event_id <= (select s.pruned_through from call_event_seq s \
                 where s.tenant_id = call_events.tenant_id)",
                args![],
            )
            .await
            .map_err(db_err)
    }

    async fn relay_events(
        &self,
        tenants: u32,
        batch: u32,
        publish: Publish<'_>,
    ) -> Result<u64, GwError> {
        let now = Utc::now();
        // Every tenant with events gets its relay row, so that it can be locked.
        let add_rows = match self.db.backend() {
            // A no-op update where the row exists (the target table may not be read in a
            // subquery of the insert on MySQL).
            Backend::MySql => {
                "insert into call_event_relay (tenant_id, relayed_through, updated_at) \
                 select s.tenant_id, 0, $1 from call_event_seq s \
                 on duplicate key update relayed_through = call_event_relay.relayed_through"
            }
            _ => {
                "insert into call_event_relay (tenant_id, relayed_through, updated_at) \
                 select s.tenant_id, 0, $1 from call_event_seq s \
                 where not exists (select 1 from call_event_relay r where r.tenant_id = s.tenant_id) \
                 on conflict (tenant_id) do nothing"
            }
        };
        self.db
            .execute(add_rows, args![now])
            .await
            .map_err(db_err)?;
        let mut published = 0u64;
        let pending = self
            .db
            .fetch_all(
                "select r.tenant_id from call_event_relay r join call_event_seq s on s.tenant_id = r.tenant_id \
                 where s.last_id > r.relayed_through order by r.updated_at limit $1",
                args![tenants],
            )
            .await
            .map_err(db_err)?;
        for row in pending {
            let tenant = row.text("tenant_id").map_err(db_err)?;
            // Claimed for a while rather than locked: publishing waits on NATS, and
            // no transaction stays open across it. A replica that finds the tenant
            // claimed skips it.
            let now = Utc::now();
            let claim = now + RELAY_CLAIM;
            let claimed = self
                .db
                .execute(
                    "update call_event_relay set claimed_until = $2 where tenant_id = $1 \
                     and (claimed_until is null or claimed_until < $3)",
                    args![&tenant, claim, now],
                )
                .await
                .map_err(db_err)?;
            if claimed == 0 {
                continue;
            }
            let marks = self
                .db
                .fetch_one(
                    "select r.relayed_through, s.pruned_through from call_event_relay r \
                     join call_event_seq s on s.tenant_id = r.tenant_id where r.tenant_id = $1",
                    args![&tenant],
                )
                .await
                .map_err(db_err)?;
            let through = marks.i64("relayed_through").map_err(db_err)?;
            let pruned = marks.i64("pruned_through").map_err(db_err)?;
            if pruned > through {
                tracing::error!(tenant = %tenant, from = through.saturating_add(1), to = pruned,
                    "call events deleted by retention before the relay published them");
            }
            let start = through.max(pruned);
            let rows = self
                .db
                .fetch_all(
                    &format!(
                        "select {EVENT_COLS} from call_events where tenant_id = $1 and event_id > $2 \
                         order by event_id limit $3"
                    ),
                    args![&tenant, start, batch],
                )
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
            self.db
                .execute(
                    "update call_event_relay set relayed_through = case when relayed_through < $2 then $2 else relayed_through end, \
                     claimed_until = case when claimed_until = $4 then null else claimed_until end, updated_at = $3 \
                     where tenant_id = $1",
                    args![&tenant, last, Utc::now(), claim],
                )
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
