//! PostgreSQL store: row locks with `for update skip locked`, times from the database clock
//! (`clock_timestamp()`, so every instance shares one clock and a lease granted after a release
//! is always stamped later than that release).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::{Row, Transaction};
use uuid::Uuid;

use super::{
    AcquireCmd, AcquireOutcome, DeleteOutcome, ExtUpdate, LeaseChange, ListFilter, RowRead, Store,
    UpdateOutcome, counts_from, db_err, ext_cols, extension_from, is_unique_violation, lease_cols,
    lease_from, replay, unchanged_reason,
};
use crate::domain::{
    AllocError, CollectorId, ExtStatus, Extension, ExtensionNumber, ExtensionUsage, Lease,
    PoolCounts, ReleaseReason, Strategy, TenantId,
};
use cco_platform::coalesce::{Batcher, Limits};

/// An LRU acquire waiting to be coalesced, with the lease id it will get.
struct AcquireJob {
    cmd: AcquireCmd,
    lease_id: Uuid,
}

/// A release waiting to be coalesced.
struct ReleaseJob {
    lease_id: Uuid,
    lease_text: String,
    token: i64,
    reason: ReleaseReason,
}

type AcquireBatcher = Batcher<String, AcquireJob, Result<Fast, AllocError>>;
type ReleaseBatcher = Batcher<(), ReleaseJob, Result<LeaseChange, AllocError>>;

/// The PostgreSQL implementation of [`Store`].
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    limits: Limits,
    acquires: Arc<AcquireBatcher>,
    releases: Arc<ReleaseBatcher>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Wraps a migrated pool; LRU acquires of one tenant, and releases, are coalesced
    /// within `limits` (see [`super::coalesce`]).
    pub fn new(pool: PgPool, limits: Limits) -> Self {
        Self {
            pool,
            limits,
            acquires: Arc::new(Batcher::new(limits, |j: &AcquireJob| {
                j.cmd.request_id.as_str()
            })),
            releases: Arc::new(Batcher::new(limits, |j: &ReleaseJob| &j.lease_text)),
        }
    }

    /// Acquires of `tenant` waiting for the next coalesced statement.
    pub fn queued_acquires(&self, tenant: &str) -> usize {
        self.acquires.queued(&tenant.to_owned())
    }

    /// Releases waiting for the next coalesced statement.
    pub fn queued_releases(&self) -> usize {
        self.releases.queued(&())
    }
}

impl RowRead for PgRow {
    fn text(&self, col: &str) -> Result<String, AllocError> {
        self.try_get(col).map_err(db_err)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, AllocError> {
        self.try_get(col).map_err(db_err)
    }
    fn int(&self, col: &str) -> Result<i64, AllocError> {
        self.try_get(col).map_err(db_err)
    }
    fn uuid(&self, col: &str) -> Result<Uuid, AllocError> {
        self.try_get(col).map_err(db_err)
    }
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, AllocError> {
        self.try_get(col).map_err(db_err)
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>, AllocError> {
        self.try_get(col).map_err(db_err)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, AllocError> {
        self.try_get(col).map_err(db_err)
    }
}

/// Marks the picked extension in use; the argument selects one id (locking it, skipping
/// locked rows). $1 tenant, $2 lease id, $3 collector, $4 ttl seconds, $5 strategy-specific.
macro_rules! lease_extension {
    ($pick:expr) => {
        concat!(
            "update extensions set status = 'in_use', current_lease_id = $2, \
             current_collector_id = $3, lease_expires_at = clock_timestamp() + make_interval(secs => $4), \
             fencing_token = fencing_token + 1, last_collector_id = $3, last_used_at = clock_timestamp(), \
             use_count = use_count + 1, available_at = null, updated_at = clock_timestamp() \
             where id = (",
            $pick,
            ") returning id, number, fencing_token, last_used_at, lease_expires_at"
        )
    };
}

/// A free extension of tenant $1: available and past its cooldown.
macro_rules! free {
    () => {
        "tenant_id = $1 and status = 'available' \
         and (available_at is null or available_at <= clock_timestamp())"
    };
}

const LRU_SQL: &str = lease_extension!(concat!(
    "select id from extensions where ",
    free!(),
    " order by last_released_at asc nulls first, length(number), number limit 1 for update skip locked"
));
const AFFINITY_SQL: &str = lease_extension!(concat!(
    "select id from extensions where id = $5 and ",
    free!(),
    " for update skip locked"
));
const RR_AFTER_SQL: &str = lease_extension!(concat!(
    "select id from extensions where ",
    free!(),
    " and (length(number), number) > (length($5::text), $5::text) \
     order by length(number), number limit 1 for update skip locked"
));
const RR_FIRST_SQL: &str = lease_extension!(concat!(
    "select id from extensions where ",
    free!(),
    " order by length(number), number limit 1 for update skip locked"
));

/// Ends a live lease whose token matches, and frees its extension ([`END_LEASES_SQL`]). Returns
/// the ended lease, or `None` if nothing matched.
async fn end_lease(
    conn: &mut PgConnection,
    lease_id: Uuid,
    token: i64,
    reason: ReleaseReason,
) -> Result<Option<Lease>, AllocError> {
    let row = sqlx::query(END_LEASES_SQL)
        .bind([lease_id])
        .bind([token])
        .bind([reason.as_str()])
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    row.map(|r| lease_from(&r).map(|(l, _)| l)).transpose()
}

async fn find_lease(
    conn: &mut PgConnection,
    lease_id: Uuid,
) -> Result<Option<(Lease, String)>, AllocError> {
    let row = sqlx::query(concat!(
        "select ",
        lease_cols!(),
        " from leases where lease_id = $1"
    ))
    .bind(lease_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    row.map(|r| lease_from(&r)).transpose()
}

async fn find_by_request(
    conn: &mut PgConnection,
    tenant: &str,
    request_id: &str,
) -> Result<Option<(Lease, String)>, AllocError> {
    let row = sqlx::query(concat!(
        "select ",
        lease_cols!(),
        " from leases where tenant_id = $1 and request_id = $2"
    ))
    .bind(tenant)
    .bind(request_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    row.map(|r| lease_from(&r)).transpose()
}

/// Counts a tenant's pool in one statement (one snapshot): the total from `pool_counts`, kept by
/// triggers on insert and delete, and the rows in use, offline and cooling down through their
/// partial indexes, so the cost follows those rows rather than the size of the pool.
async fn counts_on(conn: &mut PgConnection, tenant: &str) -> Result<PoolCounts, AllocError> {
    let r = sqlx::query(
        "select coalesce((select total from pool_counts where tenant_id = $1), 0) as total, \
           (select count(*) from extensions where tenant_id = $1 and status = 'in_use') as in_use, \
           (select count(*) from extensions where tenant_id = $1 and status = 'offline') as offline, \
           (select count(*) from extensions where tenant_id = $1 and status = 'available' \
              and available_at is not null and available_at > clock_timestamp()) as cooling",
    )
    .bind(tenant)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    counts_from(&r)
}

/// Ends the live lease of extension `id` (if any) inside `tx`, leaving the extension row locked.
/// Returns the extension as it stands afterwards and the lease ended.
async fn end_extension_lease(
    tx: &mut Transaction<'static, sqlx::Postgres>,
    tenant: &TenantId,
    id: Uuid,
    reason: ReleaseReason,
) -> Result<Option<(Extension, Option<Lease>)>, AllocError> {
    // Lease before extension: read the live lease without a lock, end it through the lease
    // row, then lock the extension and confirm nothing was re-leased in between. Each pass runs
    // under a savepoint: a pass that finds the extension re-leased rolls back to it, which
    // drops the extension row lock before the next pass locks the new lease (holding the
    // extension while waiting for a lease would invert the lock order of release).
    for _ in 0..5 {
        sqlx::query("savepoint end_extension_lease")
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        let peek = sqlx::query("select current_lease_id, fencing_token from extensions where id = $1 and tenant_id = $2")
            .bind(id)
            .bind(tenant.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
        let Some(peek) = peek else { return Ok(None) };
        let lease_id: Option<Uuid> = peek.try_get("current_lease_id").map_err(db_err)?;
        let token: i64 = peek.try_get("fencing_token").map_err(db_err)?;
        let ended = match lease_id {
            Some(l) => end_lease(tx, l, token, reason).await?,
            None => None,
        };
        let row = sqlx::query(concat!(
            "select ",
            ext_cols!(),
            " from extensions where id = $1 and tenant_id = $2 for update"
        ))
        .bind(id)
        .bind(tenant.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err)?;
        let Some(row) = row else { return Ok(None) };
        let ext = extension_from(&row)?;
        if ext.current_lease_id.is_none() {
            sqlx::query("release savepoint end_extension_lease")
                .execute(&mut **tx)
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
        sqlx::query("rollback to savepoint end_extension_lease")
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
    }
    Err(AllocError::Unavailable(
        "extension keeps being re-leased; try again".into(),
    ))
}

/// What the one-statement acquire found.
enum Fast {
    /// Settled: granted, replayed, conflicting or pool empty.
    Done(AcquireOutcome),
    /// Take the serialised path: an identical request holds the request-id lock right now
    /// (the serialised path waits for it and replays its lease), or this path does not apply.
    Serialised,
}

/// Uncapped LRU acquire in one statement (one round trip, one implicit transaction): try the
/// request-id lock, look the request id up, pick and lease a free extension, insert the lease.
/// If the try-lock fails a twin is in flight (the caller falls back to waiting on the lock). If
/// a twin committed after this statement's snapshot, the unique index on (tenant, request id)
/// rejects the insert and the caller replays the twin's lease. $1 tenant, $2 lease id, $3
/// collector, $4 ttl seconds, $5 request id, $6 fingerprint, $7 strategy, $8 cooldown.
/// It repeats the work of [`BATCH_LRU_SQL`] for the lone request on purpose: running one
/// request through the array statement cost a third of the 1-client throughput (and Acquire
/// p50 0.7 -> 1.1 ms) when tried.
const FAST_LRU_SQL: &str = concat!(
    "with lk as (select pg_try_advisory_xact_lock(hashtextextended($1 || chr(31) || $5, 0)) as got), \
     existing as (select lease_id from leases where tenant_id = $1 and request_id = $5), \
     e as (update extensions set status = 'in_use', current_lease_id = $2, current_collector_id = $3, \
       lease_expires_at = clock_timestamp() + make_interval(secs => $4), fencing_token = fencing_token + 1, \
       last_collector_id = $3, last_used_at = clock_timestamp(), use_count = use_count + 1, \
       available_at = null, updated_at = clock_timestamp() \
       where id = (select id from extensions where ",
    free!(),
    " order by last_released_at asc nulls first, length(number), number limit 1 for update skip locked) \
       and (select got from lk) and not exists (select 1 from existing) \
       returning id, number, fencing_token, last_used_at, lease_expires_at), \
     ins as (insert into leases (lease_id, tenant_id, extension_id, extension_number, collector_id, request_id, \
       request_fingerprint, strategy, fencing_token, cooldown_seconds, acquired_at, expires_at) \
       select $2, $1, id, number, $3, $5, $6, $7, fencing_token, $8, last_used_at, lease_expires_at from e \
       returning lease_id) \
     select (select got from lk) as got, (select count(*) from existing) as existing, \
       (select count(*) from ins) as inserted, e.id, e.number, e.fencing_token, e.last_used_at, e.lease_expires_at \
     from (select 1) as one left join e on true"
);

/// [`FAST_LRU_SQL`] for many requests of one tenant at once: every request tries its request-id
/// lock and looks its id up; with a cap ($9, else null), only as many as the cap leaves room for
/// go on; as many free extensions as there are requests left are picked (LRU order, skipping
/// locked rows) and paired with them one to one; their leases are inserted. One row per request,
/// in request order. $1 tenant; arrays $2 lease ids, $3 collectors, $4 ttl seconds, $5 request
/// ids, $6 fingerprints, $7 strategies, $8 cooldowns. With a cap, the caller has locked the
/// tenant's `tenant_state` row in an earlier statement of the same transaction, so this
/// statement's snapshot (and its count of live leases) cannot be outrun.
const BATCH_LRU_SQL: &str = concat!(
    "with req as materialized ( \
       select * from unnest($2::uuid[], $3::text[], $4::float8[], $5::text[], $6::text[], $7::text[], $8::int[]) \
         with ordinality as r(lease_id, collector, ttl, request_id, fp, strategy, cooldown, ord)), \
     lk as materialized ( \
       select r.*, pg_try_advisory_xact_lock(hashtextextended($1 || chr(31) || r.request_id, 0)) as got, \
         exists (select 1 from leases l where l.tenant_id = $1 and l.request_id = r.request_id) as existing \
       from req r), \
     live as materialized (select count(*) as n from extensions \
       where $9::int is not null and tenant_id = $1 and status = 'in_use'), \
     ok as materialized (select * from ( \
       select *, row_number() over (order by ord) as rn from lk where got and not existing) o \
       where $9::int is null or rn <= $9::int - (select n from live)), \
     pick as materialized (select id, row_number() over () as rn from ( \
       select id from extensions where ",
    free!(),
    " order by last_released_at asc nulls first, length(number), number \
       limit (select count(*) from ok) for update skip locked) p), \
     e as (update extensions x set status = 'in_use', current_lease_id = ok.lease_id, \
       current_collector_id = ok.collector, lease_expires_at = clock_timestamp() + make_interval(secs => ok.ttl), \
       fencing_token = x.fencing_token + 1, last_collector_id = ok.collector, last_used_at = clock_timestamp(), \
       use_count = x.use_count + 1, available_at = null, updated_at = clock_timestamp() \
       from pick join ok using (rn) where x.id = pick.id \
       returning x.id, x.number, x.fencing_token, x.last_used_at, x.lease_expires_at, ok.ord, ok.lease_id, \
         ok.collector, ok.request_id, ok.fp, ok.strategy, ok.cooldown), \
     ins as (insert into leases (lease_id, tenant_id, extension_id, extension_number, collector_id, request_id, \
       request_fingerprint, strategy, fencing_token, cooldown_seconds, acquired_at, expires_at) \
       select lease_id, $1, id, number, collector, request_id, fp, strategy, fencing_token, cooldown, \
         last_used_at, lease_expires_at from e returning lease_id) \
     select lk.ord, lk.got, lk.existing, (select count(*) from ins) as inserted, e.id, e.number, \
       e.fencing_token, e.last_used_at, e.lease_expires_at, (select n from live) as live, \
       lk.ord in (select ord from ok) as within_cap \
     from lk left join e on e.ord = lk.ord order by lk.ord"
);

/// Ends the live leases whose tokens match and frees their extensions, in one statement (lease
/// rows are locked before extension rows). Arrays $1 lease ids, $2 tokens, $3 reasons; one row
/// per lease ended. [`end_lease`] runs it for one lease, coalesced releases for many.
const END_LEASES_SQL: &str = concat!(
    "with r as (select * from unnest($1::uuid[], $2::bigint[], $3::text[]) as r(lease_id, token, reason)), \
     l as ( \
       update leases x set released_at = clock_timestamp(), release_reason = r.reason, updated_at = clock_timestamp() \
       from r where x.lease_id = r.lease_id and x.fencing_token = r.token and x.released_at is null \
       returning x.lease_id, x.tenant_id, x.extension_id, x.extension_number, x.collector_id, x.request_id, \
         x.request_fingerprint, x.strategy, x.fencing_token, x.acquired_at, x.expires_at, x.released_at, \
         x.release_reason, x.cooldown_seconds \
     ), e as ( \
       update extensions x set \
         status = case when x.status = 'in_use' then 'available' else x.status end, \
         current_lease_id = null, current_collector_id = null, lease_expires_at = null, \
         last_released_at = l.released_at, \
         available_at = case when l.cooldown_seconds > 0 \
           then l.released_at + make_interval(secs => l.cooldown_seconds) else null end, \
         updated_at = l.released_at \
       from l where x.id = l.extension_id and x.current_lease_id = l.lease_id \
       returning x.id \
     ) select ",
    lease_cols!(),
    " from l"
);

/// The lease a granted acquire row describes (columns id, number, fencing_token, last_used_at,
/// lease_expires_at).
fn granted(row: &PgRow, cmd: &AcquireCmd, lease_id: Uuid) -> Result<AcquireOutcome, AllocError> {
    Ok(AcquireOutcome::Granted {
        lease: Lease {
            lease_id,
            extension_id: row.try_get("id").map_err(db_err)?,
            extension_number: row.try_get("number").map_err(db_err)?,
            tenant_id: cmd.tenant_id.as_str().to_owned(),
            collector_id: cmd.collector_id.as_str().to_owned(),
            request_id: cmd.request_id.as_str().to_owned(),
            strategy: cmd.strategy,
            fencing_token: row.try_get("fencing_token").map_err(db_err)?,
            acquired_at: row.try_get("last_used_at").map_err(db_err)?,
            expires_at: row.try_get("lease_expires_at").map_err(db_err)?,
            released_at: None,
            release_reason: None,
        },
        replayed: false,
    })
}

impl PgStore {
    /// The lease an earlier request with this id got, replayed to `cmd`.
    async fn replay_request(&self, cmd: &AcquireCmd) -> Result<Fast, AllocError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        match find_by_request(&mut conn, cmd.tenant_id.as_str(), cmd.request_id.as_str()).await? {
            Some((l, fp)) => Ok(Fast::Done(replay(l, &fp, cmd))),
            None => Err(AllocError::Internal(anyhow::anyhow!(
                "request id {} vanished after it was seen",
                cmd.request_id
            ))),
        }
    }

    async fn pool_empty(&self, tenant: &str) -> Result<Fast, AllocError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        Ok(Fast::Done(AcquireOutcome::PoolEmpty(
            counts_on(&mut conn, tenant).await?,
        )))
    }

    /// An LRU acquire: alone, or coalesced with others of its tenant.
    async fn acquire_lru(&self, cmd: &AcquireCmd) -> Result<Fast, AllocError> {
        let lease_id = Uuid::now_v7();
        if self.limits.max_batch <= 1 {
            if cmd.cap.is_some() {
                return Ok(Fast::Serialised);
            }
            return self.acquire_fast(cmd, lease_id).await;
        }
        let store = self.clone();
        let job = AcquireJob {
            cmd: cmd.clone(),
            lease_id,
        };
        let run = move |tenant: String, jobs: Vec<AcquireJob>| {
            let store = store.clone();
            async move { store.acquire_batch(&tenant, jobs).await }
        };
        self.acquires
            .submit(cmd.tenant_id.as_str().to_owned(), job, run)
            .await
            .unwrap_or_else(|| Err(AllocError::Internal(anyhow::anyhow!("acquire batch lost"))))
    }

    async fn acquire_fast(&self, cmd: &AcquireCmd, lease_id: Uuid) -> Result<Fast, AllocError> {
        let tenant = cmd.tenant_id.as_str();
        let res = sqlx::query(FAST_LRU_SQL)
            .bind(tenant)
            .bind(lease_id)
            .bind(cmd.collector_id.as_str())
            .bind(f64::from(cmd.ttl_seconds))
            .bind(cmd.request_id.as_str())
            .bind(&cmd.fingerprint)
            .bind(cmd.strategy.as_str())
            .bind(i32::try_from(cmd.cooldown_seconds).unwrap_or(i32::MAX))
            .fetch_one(&self.pool)
            .await;
        let row = match res {
            Ok(r) => r,
            // A twin committed after our snapshot: its lease is the answer.
            Err(e) if is_unique_violation(&e) => return self.replay_request(cmd).await,
            Err(e) => return Err(db_err(e)),
        };
        let got: bool = row.try_get("got").map_err(db_err)?;
        let existing: i64 = row.try_get("existing").map_err(db_err)?;
        let inserted: i64 = row.try_get("inserted").map_err(db_err)?;
        if existing > 0 {
            return self.replay_request(cmd).await;
        }
        if !got {
            return Ok(Fast::Serialised);
        }
        let extension_id: Option<Uuid> = row.try_get("id").map_err(db_err)?;
        if extension_id.is_none() || inserted != 1 {
            return self.pool_empty(tenant).await;
        }
        Ok(Fast::Done(granted(&row, cmd, lease_id)?))
    }

    /// Runs one tenant's coalesced acquires; one result per job, in order. With a cap (the
    /// smallest of the jobs' caps, should the policy have changed between them), the tenant row
    /// is locked first and only the room under the cap is granted. A lone uncapped job, or a
    /// batch the database refuses as a whole (a twin committed after the snapshot, a lost
    /// connection), runs job by job: uncapped through [`Self::acquire_fast`], capped through
    /// the serialised path.
    async fn acquire_batch(
        &self,
        tenant: &str,
        jobs: Vec<AcquireJob>,
    ) -> Vec<Result<Fast, AllocError>> {
        let cap = jobs.iter().filter_map(|j| j.cmd.cap).min();
        if jobs.len() > 1 || cap.is_some() {
            match self.try_acquire_batch(tenant, &jobs, cap).await {
                Ok(out) => return out,
                Err(e) => {
                    tracing::debug!(error = %e, jobs = jobs.len(), "acquire batch refused, running its jobs one by one")
                }
            }
        }
        let mut out = Vec::with_capacity(jobs.len());
        for j in &jobs {
            out.push(if j.cmd.cap.is_some() {
                Ok(Fast::Serialised)
            } else {
                self.acquire_fast(&j.cmd, j.lease_id).await
            });
        }
        out
    }

    async fn try_acquire_batch(
        &self,
        tenant: &str,
        jobs: &[AcquireJob],
        cap: Option<u32>,
    ) -> Result<Vec<Result<Fast, AllocError>>, AllocError> {
        let lease_ids: Vec<Uuid> = jobs.iter().map(|j| j.lease_id).collect();
        let collectors: Vec<&str> = jobs.iter().map(|j| j.cmd.collector_id.as_str()).collect();
        let ttls: Vec<f64> = jobs.iter().map(|j| f64::from(j.cmd.ttl_seconds)).collect();
        let request_ids: Vec<&str> = jobs.iter().map(|j| j.cmd.request_id.as_str()).collect();
        let fps: Vec<&str> = jobs.iter().map(|j| j.cmd.fingerprint.as_str()).collect();
        let strategies: Vec<&str> = jobs.iter().map(|j| j.cmd.strategy.as_str()).collect();
        let cooldowns: Vec<i32> = jobs
            .iter()
            .map(|j| i32::try_from(j.cmd.cooldown_seconds).unwrap_or(i32::MAX))
            .collect();
        let cap_param = cap.map(|c| i32::try_from(c).unwrap_or(i32::MAX));
        let statement = || {
            sqlx::query(BATCH_LRU_SQL)
                .bind(tenant)
                .bind(&lease_ids)
                .bind(&collectors)
                .bind(&ttls)
                .bind(&request_ids)
                .bind(&fps)
                .bind(&strategies)
                .bind(&cooldowns)
                .bind(cap_param)
        };
        let rows = if cap.is_some() {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            // The tenant row lock serialises this tenant's capped acquires (and round-robin
            // ones) across instances until commit; the batch below counts after taking it.
            sqlx::query(
                "insert into tenant_state (tenant_id) values ($1) \
                 on conflict (tenant_id) do update set updated_at = now()",
            )
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            let rows = statement().fetch_all(&mut *tx).await.map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            rows
        } else {
            // Uncapped: one statement is its own transaction (no BEGIN and COMMIT round trips).
            statement().fetch_all(&self.pool).await.map_err(db_err)?
        };
        if rows.len() != jobs.len() {
            return Err(AllocError::Internal(anyhow::anyhow!(
                "acquire batch of {} answered {} rows",
                jobs.len(),
                rows.len()
            )));
        }
        let mut out = Vec::with_capacity(jobs.len());
        for (row, job) in rows.iter().zip(jobs) {
            let got: bool = row.try_get("got").map_err(db_err)?;
            let existing: bool = row.try_get("existing").map_err(db_err)?;
            let extension_id: Option<Uuid> = row.try_get("id").map_err(db_err)?;
            let within_cap: bool = row.try_get("within_cap").map_err(db_err)?;
            out.push(if existing {
                self.replay_request(&job.cmd).await
            } else if !got {
                Ok(Fast::Serialised)
            } else if extension_id.is_some() {
                granted(row, &job.cmd, job.lease_id).map(Fast::Done)
            } else if let Some((cap, live)) = cap
                .filter(|_| !within_cap)
                .map(|cap| -> Result<(u32, u32), AllocError> {
                    // Live leases as this batch leaves them: those before it and its grants.
                    let live: Option<i64> = row.try_get("live").map_err(db_err)?;
                    let inserted: i64 = row.try_get("inserted").map_err(db_err)?;
                    Ok((
                        cap,
                        u32::try_from(live.unwrap_or(0) + inserted).unwrap_or(u32::MAX),
                    ))
                })
                .transpose()?
                .filter(|(cap, live)| live >= cap)
            {
                Ok(Fast::Done(AcquireOutcome::CapReached { cap, live }))
            } else {
                self.pool_empty(tenant).await
            });
        }
        Ok(out)
    }

    /// Ends a lease, or says why it could not: alone, or coalesced with other releases.
    async fn release_one(
        &self,
        lease_id: Uuid,
        token: i64,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        if let Some(l) = end_lease(&mut conn, lease_id, token, reason).await? {
            return Ok(LeaseChange::Changed(l));
        }
        unchanged(&mut conn, lease_id, token).await
    }

    /// Runs coalesced releases; one result per job, in order. Leases the statement did not end
    /// are looked up to say why; a refused batch runs job by job.
    async fn release_batch(&self, jobs: Vec<ReleaseJob>) -> Vec<Result<LeaseChange, AllocError>> {
        if jobs.len() > 1 {
            match self.try_release_batch(&jobs).await {
                Ok(out) => return out,
                Err(e) => {
                    tracing::debug!(error = %e, jobs = jobs.len(), "release batch refused, running its jobs one by one")
                }
            }
        }
        let mut out = Vec::with_capacity(jobs.len());
        for j in &jobs {
            out.push(self.release_one(j.lease_id, j.token, j.reason).await);
        }
        out
    }

    async fn try_release_batch(
        &self,
        jobs: &[ReleaseJob],
    ) -> Result<Vec<Result<LeaseChange, AllocError>>, AllocError> {
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.lease_id).collect();
        let tokens: Vec<i64> = jobs.iter().map(|j| j.token).collect();
        let reasons: Vec<&str> = jobs.iter().map(|j| j.reason.as_str()).collect();
        // Several lease rows in one transaction: lock them in lease id order first, the order
        // every other path that ends several leases uses, so two of them cannot deadlock.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query(
            "select lease_id from leases where lease_id = any($1) and released_at is null \
             order by lease_id for update",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let rows = sqlx::query(END_LEASES_SQL)
            .bind(&ids)
            .bind(&tokens)
            .bind(&reasons)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        let mut ended: std::collections::HashMap<Uuid, Lease> = std::collections::HashMap::new();
        for r in &rows {
            let (l, _) = lease_from(r)?;
            ended.insert(l.lease_id, l);
        }
        let mut out = Vec::with_capacity(jobs.len());
        for j in jobs {
            out.push(match ended.remove(&j.lease_id) {
                Some(l) => Ok(LeaseChange::Changed(l)),
                None => unchanged(&mut conn, j.lease_id, j.token).await,
            });
        }
        Ok(out)
    }
}

/// Why a release or renew changed nothing: no such lease, or its state and token.
async fn unchanged(
    conn: &mut PgConnection,
    lease_id: Uuid,
    token: i64,
) -> Result<LeaseChange, AllocError> {
    Ok(match find_lease(conn, lease_id).await? {
        None => LeaseChange::NotFound,
        Some((lease, _)) => {
            let reason = unchanged_reason(&lease, token);
            LeaseChange::Unchanged { lease, reason }
        }
    })
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.acquires
            .register(registry, "allocator_coalesced_acquire", "acquire requests");
        self.releases
            .register(registry, "allocator_coalesced_release", "release requests");
    }

    fn coalescing(&self) -> Vec<(&'static str, u64, u64)> {
        vec![
            (
                "acquire",
                self.acquires.statements.get(),
                self.acquires.jobs.get(),
            ),
            (
                "release",
                self.releases.statements.get(),
                self.releases.jobs.get(),
            ),
        ]
    }

    async fn acquire(&self, cmd: &AcquireCmd) -> Result<AcquireOutcome, AllocError> {
        // LRU (the default) is coalesced: one statement for a tenant's concurrent requests
        // (after the tenant lock when capped). The rest, and twins, take the serialised path.
        if cmd.strategy == Strategy::Lru
            && let Fast::Done(outcome) = self.acquire_lru(cmd).await?
        {
            return Ok(outcome);
        }
        let tenant = cmd.tenant_id.as_str();
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        // Identical requests (same tenant and request id) run one at a time: the second waits
        // here until the first commits, then finds its lease below and replays it, instead of
        // leasing a second extension or seeing a pool its twin has drained.
        sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))")
            .bind(tenant)
            .bind(cmd.request_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if let Some((l, fp)) = find_by_request(&mut tx, tenant, cmd.request_id.as_str()).await? {
            return Ok(replay(l, &fp, cmd));
        }
        let mut cursor: Option<String> = None;
        let serialised = cmd.cap.is_some() || cmd.strategy == Strategy::RoundRobin;
        if serialised {
            // Locks the tenant row until commit: capped and round-robin acquires of one tenant
            // run one at a time, so the count below cannot be outrun.
            let row = sqlx::query(
                "insert into tenant_state (tenant_id) values ($1) \
                 on conflict (tenant_id) do update set updated_at = now() returning rr_cursor",
            )
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            cursor = row.try_get("rr_cursor").map_err(db_err)?;
            if let Some(cap) = cmd.cap {
                let live: i64 = sqlx::query_scalar(
                    "select count(*) from extensions where tenant_id = $1 and status = 'in_use'",
                )
                .bind(tenant)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
                let live = u32::try_from(live).unwrap_or(u32::MAX);
                if live >= cap {
                    return Ok(AcquireOutcome::CapReached { cap, live });
                }
            }
        }

        let lease_id = Uuid::now_v7();
        let ttl = f64::from(cmd.ttl_seconds);
        let collector = cmd.collector_id.as_str();
        let run = |sql: &'static str| {
            sqlx::query(sql)
                .bind(tenant)
                .bind(lease_id)
                .bind(collector)
                .bind(ttl)
        };
        let picked: Option<PgRow> = match cmd.strategy {
            Strategy::Lru => run(LRU_SQL)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?,
            Strategy::CollectorAffinity => {
                let last: Option<Uuid> = sqlx::query_scalar(
                    "select extension_id from leases where tenant_id = $1 and collector_id = $2 \
                     order by acquired_at desc limit 1",
                )
                .bind(tenant)
                .bind(collector)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                let mut got = None;
                if let Some(ext) = last {
                    got = run(AFFINITY_SQL)
                        .bind(ext)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                match got {
                    Some(r) => Some(r),
                    None => run(LRU_SQL)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?,
                }
            }
            Strategy::RoundRobin => {
                let mut got = None;
                if let Some(c) = &cursor {
                    got = run(RR_AFTER_SQL)
                        .bind(c.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                match got {
                    Some(r) => Some(r),
                    None => run(RR_FIRST_SQL)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?,
                }
            }
        };
        let Some(row) = picked else {
            let counts = counts_on(&mut tx, tenant).await?;
            return Ok(AcquireOutcome::PoolEmpty(counts));
        };
        let extension_id: Uuid = row.try_get("id").map_err(db_err)?;
        let number: String = row.try_get("number").map_err(db_err)?;
        let token: i64 = row.try_get("fencing_token").map_err(db_err)?;
        let acquired_at: DateTime<Utc> = row.try_get("last_used_at").map_err(db_err)?;
        let expires_at: DateTime<Utc> = row.try_get("lease_expires_at").map_err(db_err)?;
        let inserted = sqlx::query(
            "insert into leases (lease_id, tenant_id, extension_id, extension_number, collector_id, \
               request_id, request_fingerprint, strategy, fencing_token, cooldown_seconds, acquired_at, expires_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(lease_id)
        .bind(tenant)
        .bind(extension_id)
        .bind(&number)
        .bind(collector)
        .bind(cmd.request_id.as_str())
        .bind(&cmd.fingerprint)
        .bind(cmd.strategy.as_str())
        .bind(token)
        .bind(i32::try_from(cmd.cooldown_seconds).unwrap_or(i32::MAX))
        .bind(acquired_at)
        .bind(expires_at)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            if is_unique_violation(&e) {
                // A concurrent identical request won: undo ours and return theirs.
                tx.rollback().await.map_err(db_err)?;
                let mut conn = self.pool.acquire().await.map_err(db_err)?;
                return match find_by_request(&mut conn, tenant, cmd.request_id.as_str()).await? {
                    Some((l, fp)) => Ok(replay(l, &fp, cmd)),
                    None => Err(AllocError::Internal(anyhow::anyhow!(
                        "request id vanished after conflict"
                    ))),
                };
            }
            return Err(db_err(e));
        }
        if cmd.strategy == Strategy::RoundRobin {
            sqlx::query(
                "update tenant_state set rr_cursor = $2, updated_at = now() where tenant_id = $1",
            )
            .bind(tenant)
            .bind(&number)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(AcquireOutcome::Granted {
            lease: Lease {
                lease_id,
                extension_id,
                extension_number: number,
                tenant_id: tenant.to_owned(),
                collector_id: collector.to_owned(),
                request_id: cmd.request_id.as_str().to_owned(),
                strategy: cmd.strategy,
                fencing_token: token,
                acquired_at,
                expires_at,
                released_at: None,
                release_reason: None,
            },
            replayed: false,
        })
    }

    async fn release(
        &self,
        lease_id: Uuid,
        token: i64,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError> {
        if self.limits.max_batch <= 1 {
            return self.release_one(lease_id, token, reason).await;
        }
        let store = self.clone();
        let job = ReleaseJob {
            lease_id,
            lease_text: lease_id.to_string(),
            token,
            reason,
        };
        let run = move |(): (), jobs: Vec<ReleaseJob>| {
            let store = store.clone();
            async move { store.release_batch(jobs).await }
        };
        self.releases
            .submit((), job, run)
            .await
            .unwrap_or_else(|| Err(AllocError::Internal(anyhow::anyhow!("release batch lost"))))
    }

    async fn renew(
        &self,
        lease_id: Uuid,
        token: i64,
        ttl_seconds: u32,
    ) -> Result<LeaseChange, AllocError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        let sql = concat!(
            "with l as ( \
               update leases set expires_at = clock_timestamp() + make_interval(secs => $3), updated_at = clock_timestamp() \
               where lease_id = $1 and fencing_token = $2 and released_at is null and expires_at > clock_timestamp() \
               returning ",
            lease_cols!(),
            " \
             ), e as ( \
               update extensions x set lease_expires_at = l.expires_at, updated_at = clock_timestamp() \
               from l where x.id = l.extension_id and x.current_lease_id = l.lease_id returning x.id \
             ) select ",
            lease_cols!(),
            " from l"
        );
        let row = sqlx::query(sql)
            .bind(lease_id)
            .bind(token)
            .bind(f64::from(ttl_seconds))
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        if let Some(r) = row {
            return Ok(LeaseChange::Changed(lease_from(&r)?.0));
        }
        unchanged(&mut conn, lease_id, token).await
    }

    async fn get_lease(&self, lease_id: Uuid) -> Result<Option<Lease>, AllocError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        Ok(find_lease(&mut conn, lease_id).await?.map(|(l, _)| l))
    }

    async fn reap_expired(&self, limit: u32) -> Result<Vec<Lease>, AllocError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        // Due leases are found through the extensions holding them (partial index on in-use
        // expiry; no index of `leases` covers released_at, so releases stay HOT), then their
        // lease rows are locked first, as every path that ends a lease does. skip locked:
        // several instances reap side by side without waiting on each other; four times the
        // limit in candidates, so leases another reaper (or a release) holds leave room for
        // the rest.
        let due = sqlx::query(
            "select lease_id, fencing_token from leases \
             where lease_id = any(array( \
               select current_lease_id from extensions \
               where status = 'in_use' and lease_expires_at <= clock_timestamp() \
               order by lease_expires_at limit $1 * 4)) \
             and released_at is null and expires_at <= clock_timestamp() \
             limit $1 for update skip locked",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut reaped = Vec::with_capacity(due.len());
        for r in due {
            let id: Uuid = r.try_get("lease_id").map_err(db_err)?;
            let token: i64 = r.try_get("fencing_token").map_err(db_err)?;
            if let Some(l) = end_lease(&mut tx, id, token, ReleaseReason::Expired).await? {
                reaped.push(l);
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(reaped)
    }

    async fn counts(&self, tenant: &TenantId) -> Result<PoolCounts, AllocError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        counts_on(&mut conn, tenant.as_str()).await
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<ExtensionUsage>, AllocError> {
        let rows = sqlx::query(
            "select e.id, e.number, count(l.lease_id) as leases, \
               coalesce(sum(extract(epoch from \
                 least(coalesce(l.released_at, clock_timestamp()), $3) - greatest(l.acquired_at, $2))), 0)::float8 as busy \
             from extensions e \
             left join leases l on l.extension_id = e.id and l.acquired_at < $3 \
               and coalesce(l.released_at, clock_timestamp()) > $2 \
             where e.tenant_id = $1 \
             group by e.id, e.number \
             order by length(e.number), e.number",
        )
        .bind(tenant.as_str())
        .bind(since)
        .bind(until)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let leases: i64 = r.try_get("leases").map_err(db_err)?;
                Ok(ExtensionUsage {
                    extension_id: r.try_get("id").map_err(db_err)?,
                    extension_number: r.try_get("number").map_err(db_err)?,
                    lease_count: u32::try_from(leases).unwrap_or(u32::MAX),
                    busy_seconds: r.try_get::<f64, _>("busy").map_err(db_err)?.max(0.0),
                })
            })
            .collect()
    }

    async fn import(
        &self,
        tenant: &TenantId,
        config_id: &str,
        numbers: &[ExtensionNumber],
    ) -> Result<Vec<Option<Uuid>>, AllocError> {
        let ids: Vec<Uuid> = numbers.iter().map(|_| Uuid::now_v7()).collect();
        let nums: Vec<&str> = numbers.iter().map(ExtensionNumber::as_str).collect();
        // One statement, one transaction: rows whose number exists are skipped and reported.
        let rows = sqlx::query(
            "insert into extensions (id, tenant_id, config_id, number) \
             select id, $1, $2, number from unnest($3::uuid[], $4::text[]) as t(id, number) \
             on conflict (tenant_id, number) do nothing returning id",
        )
        .bind(tenant.as_str())
        .bind(config_id)
        .bind(&ids)
        .bind(&nums)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let inserted: std::collections::HashSet<Uuid> = rows
            .iter()
            .filter_map(|r| r.try_get::<Uuid, _>("id").ok())
            .collect();
        Ok(ids
            .into_iter()
            .map(|id| inserted.contains(&id).then_some(id))
            .collect())
    }

    async fn list(&self, f: &ListFilter) -> Result<Vec<Extension>, AllocError> {
        let rows = sqlx::query(concat!(
            "select ",
            ext_cols!(),
            " from extensions where tenant_id = $1 \
               and ($2::text is null or config_id = $2) \
               and ($3::text is null or status = $3) \
               and ($4::text is null or current_collector_id = $4) \
               and ($5::text is null or (length(number), number) > (length($5), $5)) \
             order by length(number), number limit $6"
        ))
        .bind(f.tenant_id.as_str())
        .bind(f.config_id.as_ref().map(|c| c.as_str()))
        .bind(f.status.map(ExtStatus::as_str))
        .bind(f.collector_id.as_ref().map(|c| c.as_str()))
        .bind(f.after_number.as_deref())
        .bind(i64::from(f.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(extension_from).collect()
    }

    async fn get_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Extension>, AllocError> {
        let row = sqlx::query(concat!(
            "select ",
            ext_cols!(),
            " from extensions where id = $1 and tenant_id = $2"
        ))
        .bind(id)
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(extension_from).transpose()
    }

    async fn update_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        u: &ExtUpdate,
    ) -> Result<UpdateOutcome, AllocError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let current = sqlx::query(concat!(
            "select ",
            ext_cols!(),
            " from extensions where id = $1 and tenant_id = $2"
        ))
        .bind(id)
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(current) = current.as_ref().map(extension_from).transpose()? else {
            return Ok(UpdateOutcome::NotFound);
        };
        if u.status == Some(ExtStatus::Offline) && current.status == ExtStatus::InUse {
            if !u.force {
                return Ok(UpdateOutcome::InUse);
            }
            if end_extension_lease(&mut tx, tenant, id, ReleaseReason::ExtensionOffline)
                .await?
                .is_none()
            {
                return Ok(UpdateOutcome::NotFound);
            }
        }
        let res = sqlx::query(concat!(
            "update extensions set \
               status = case when $3::text is null or status = 'in_use' then status else $3 end, \
               number = coalesce($4, number), updated_at = clock_timestamp() \
             where id = $1 and tenant_id = $2 \
               and ($4::text is null or number = $4 or status <> 'in_use') returning ",
            ext_cols!()
        ))
        .bind(id)
        .bind(tenant.as_str())
        .bind(u.status.map(ExtStatus::as_str))
        .bind(u.number.as_ref().map(ExtensionNumber::as_str))
        .fetch_optional(&mut *tx)
        .await;
        let row = match res {
            Ok(r) => r,
            Err(e) if is_unique_violation(&e) => return Ok(UpdateOutcome::NumberTaken),
            Err(e) => return Err(db_err(e)),
        };
        let Some(row) = row else {
            // The extension exists (read above): only a number change while in use is refused.
            return Ok(if u.number.is_some() {
                UpdateOutcome::NumberInUse
            } else {
                UpdateOutcome::NotFound
            });
        };
        let ext = extension_from(&row)?;
        tx.commit().await.map_err(db_err)?;
        Ok(UpdateOutcome::Updated(Box::new(ext)))
    }

    async fn release_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let Some((ext, ended)) = end_extension_lease(&mut tx, tenant, id, reason).await? else {
            return Ok(LeaseChange::NotFound);
        };
        tx.commit().await.map_err(db_err)?;
        Ok(match ended {
            Some(l) => LeaseChange::Changed(l),
            None => {
                let mut conn = self.pool.acquire().await.map_err(db_err)?;
                let last = sqlx::query_scalar::<_, Uuid>(
                    "select lease_id from leases where extension_id = $1 order by acquired_at desc limit 1",
                )
                .bind(ext.id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
                match last {
                    Some(l) => match find_lease(&mut conn, l).await? {
                        Some((lease, _)) => LeaseChange::Unchanged {
                            lease,
                            reason: "extension is not in use".into(),
                        },
                        None => LeaseChange::NotFound,
                    },
                    None => LeaseChange::NotFound,
                }
            }
        })
    }

    async fn delete_extensions(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
        force: bool,
    ) -> Result<Vec<DeleteOutcome>, AllocError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        // The delete trigger updates the tenant's pool_counts row: take that lock before any
        // extension row, so two overlapping batch deletes queue here instead of deadlocking
        // (each holding the counter and waiting for an extension the other has). Then the live
        // leases of those extensions, in lease id order, as every multi-lease path does.
        sqlx::query(
            "insert into pool_counts (tenant_id) values ($1) on conflict (tenant_id) do nothing",
        )
        .bind(tenant.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("select 1 from pool_counts where tenant_id = $1 for update")
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let locked: std::collections::HashSet<Uuid> = if force {
            sqlx::query_scalar(
                "select lease_id from leases where lease_id in ( \
                   select current_lease_id from extensions \
                   where tenant_id = $1 and id = any($2) and status = 'in_use') \
                 and released_at is null order by lease_id for update",
            )
            .bind(tenant.as_str())
            .bind(ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?
            .into_iter()
            .collect()
        } else {
            std::collections::HashSet::new()
        };
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let row = sqlx::query(
                "select status, current_lease_id from extensions where id = $1 and tenant_id = $2",
            )
            .bind(id)
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let Some(row) = row else {
                out.push(DeleteOutcome::NotFound);
                continue;
            };
            let status: String = row.try_get("status").map_err(db_err)?;
            let lease: Option<Uuid> = row.try_get("current_lease_id").map_err(db_err)?;
            let mut ended = None;
            if status == "in_use" {
                // Only leases locked above, in order, are ended here: one leased since then
                // would be waited for out of order (a deadlock with a batch of releases), so
                // that extension is reported in use, as a race with a new lease always was.
                if !force || !lease.is_some_and(|l| locked.contains(&l)) {
                    out.push(DeleteOutcome::InUse);
                    continue;
                }
                match end_extension_lease(&mut tx, tenant, id, ReleaseReason::ExtensionDeleted)
                    .await?
                {
                    Some((_, l)) => ended = l.map(|l| l.lease_id),
                    None => {
                        out.push(DeleteOutcome::NotFound);
                        continue;
                    }
                }
            }
            let n = sqlx::query(
                "delete from extensions where id = $1 and tenant_id = $2 and status <> 'in_use'",
            )
            .bind(id)
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            out.push(if n == 1 {
                DeleteOutcome::Deleted(ended)
            } else {
                DeleteOutcome::InUse
            });
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn force_release_collector(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<Vec<Uuid>, AllocError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let live = sqlx::query(
            "select lease_id, fencing_token from leases \
             where tenant_id = $1 and collector_id = $2 and released_at is null order by lease_id",
        )
        .bind(tenant.as_str())
        .bind(collector.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut ended = Vec::new();
        for r in live {
            let id: Uuid = r.try_get("lease_id").map_err(db_err)?;
            let token: i64 = r.try_get("fencing_token").map_err(db_err)?;
            if let Some(l) = end_lease(&mut tx, id, token, ReleaseReason::CollectorForced).await? {
                ended.push(l.lease_id);
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(ended)
    }

    async fn live_leases(&self) -> Result<i64, AllocError> {
        // An extension is in use exactly while its lease is live (one transaction changes
        // both); the partial index makes this a count of the live ones, not of the history.
        sqlx::query_scalar("select count(*) from extensions where status = 'in_use'")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)
    }
}
