//! PostgreSQL's hot path on top of the one store ([`SqlStore`]): LRU acquires in one statement,
//! coalesced per tenant ([`BATCH_LRU_SQL`]), and releases coalesced into one statement
//! ([`END_LEASES_SQL`]). Everything else, and the acquires these paths hand back (round robin,
//! affinity, an identical request in flight), is the one store's. Times come from the database
//! clock (`clock_timestamp()`), as in the one store.

use std::sync::Arc;

use async_trait::async_trait;
use cco_platform::sql::{Db, Row};
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::postgres::{PgPool, PgRow};
use uuid::Uuid;

use super::sql::SqlStore;
use super::{
    AcquireCmd, AcquireOutcome, DeleteOutcome, ExtUpdate, LeaseChange, ListFilter, Store,
    UpdateOutcome, db_err, is_unique_violation, lease_cols, lease_from, unchanged_reason,
};
use crate::domain::{
    AllocError, CollectorId, Extension, ExtensionNumber, ExtensionUsage, Lease, PoolCounts,
    ReleaseReason, Strategy, TenantId,
};
use cco_platform::coalesce::{Batcher, Limits};

/// A free extension of tenant $1: available and past its cooldown.
macro_rules! free {
    () => {
        "tenant_id = $1 and status = 'available' \
         and (available_at is null or available_at <= clock_timestamp())"
    };
}

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

/// The PostgreSQL store: the one store plus the coalesced hot path.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    inner: SqlStore,
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
            inner: SqlStore::new(Db::new(cco_platform::db::DbPool::Postgres(pool.clone()))),
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

/// Ends leases: `$l` is a CTE `l` that ends the lease rows (returning the columns below); the
/// rest frees their extensions and answers one row per lease ended. Lease rows are locked before
/// extension rows, as on every path that ends leases.
macro_rules! end_leases {
    ($l:expr) => {
        concat!(
            "with ",
            $l,
            " returning x.lease_id, x.tenant_id, x.extension_id, x.extension_number, x.collector_id, \
               x.request_id, x.request_fingerprint, x.strategy, x.fencing_token, x.acquired_at, x.expires_at, \
               x.released_at, x.release_reason, x.cooldown_seconds), \
             e as ( \
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
        )
    };
}

/// Ends one live lease if its token matches and frees its extension, in one statement. $1 lease
/// id, $2 token, $3 reason; one row if the lease ended. Scalar parameters on purpose: with
/// one-element arrays, the form below was planned afresh on most executions (PostgreSQL keeps
/// choosing custom plans when they look cheaper than the generic one: 21% of executions at 1
/// client, 86% at 8, 0.25 ms each); this one settles on its generic plan after the first five.
const END_LEASE_SQL: &str = end_leases!(
    "l as (update leases x set released_at = clock_timestamp(), release_reason = $3, \
       updated_at = clock_timestamp() \
       where x.lease_id = $1 and x.fencing_token = $2 and x.released_at is null"
);

/// Ends the live leases whose tokens match and frees their extensions, in one statement (its own
/// transaction). Arrays $1 lease ids, $2 tokens, $3 reasons; one row per lease ended. The lease
/// rows are locked first, in lease id order (an init plan, run to completion before the update
/// starts), the order every other path that ends several leases uses, so two of them cannot
/// deadlock.
const END_LEASES_SQL: &str = end_leases!(
    "r as (select * from unnest($1::uuid[], $2::bigint[], $3::text[]) as r(lease_id, token, reason)), \
     l as (update leases x set released_at = clock_timestamp(), release_reason = r.reason, \
       updated_at = clock_timestamp() \
       from r where x.lease_id = r.lease_id and x.fencing_token = r.token and x.released_at is null \
         and x.lease_id = any(array(select lease_id from leases where lease_id = any($1) \
           and released_at is null order by lease_id for update))"
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
    async fn replay_request(&self, cmd: &AcquireCmd) -> Result<Fast, AllocError> {
        self.inner.replay_or_vanished(cmd).await.map(Fast::Done)
    }

    /// An acquire whose statement granted nothing: `refusal` (cap reached), else pool empty.
    /// Its request id is looked up again first: a twin that committed after the statement
    /// took its snapshot, but before it took the request-id lock, is invisible to it and held
    /// the extension it would have picked (or the cap's last place), and that twin's lease is
    /// the answer, not the refusal.
    async fn refuse(
        &self,
        cmd: &AcquireCmd,
        refusal: Option<AcquireOutcome>,
    ) -> Result<Fast, AllocError> {
        if let Some(replayed) = self.inner.replay_if_used(cmd).await? {
            return Ok(Fast::Done(replayed));
        }
        match refusal {
            Some(r) => Ok(Fast::Done(r)),
            None => self
                .inner
                .pool_empty(cmd.tenant_id.as_str())
                .await
                .map(Fast::Done),
        }
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
            return self.refuse(cmd, None).await;
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
                self.refuse(&job.cmd, Some(AcquireOutcome::CapReached { cap, live }))
                    .await
            } else {
                self.refuse(&job.cmd, None).await
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
        let row = sqlx::query(END_LEASE_SQL)
            .bind(lease_id)
            .bind(token)
            .bind(reason.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        if let Some(r) = row {
            return Ok(LeaseChange::Changed(lease_from(&Row::Pg(r))?.0));
        }
        self.unchanged(lease_id, token).await
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
        // One statement, its own transaction; it locks the lease rows in id order first.
        let rows = sqlx::query(END_LEASES_SQL)
            .bind(&ids)
            .bind(&tokens)
            .bind(&reasons)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let mut ended: std::collections::HashMap<Uuid, Lease> = std::collections::HashMap::new();
        for r in rows {
            let (l, _) = lease_from(&Row::Pg(r))?;
            ended.insert(l.lease_id, l);
        }
        let mut out = Vec::with_capacity(jobs.len());
        for j in jobs {
            out.push(match ended.remove(&j.lease_id) {
                Some(l) => Ok(LeaseChange::Changed(l)),
                None => self.unchanged(j.lease_id, j.token).await,
            });
        }
        Ok(out)
    }

    /// Why a release changed nothing: no such lease, or its state and token.
    async fn unchanged(&self, lease_id: Uuid, token: i64) -> Result<LeaseChange, AllocError> {
        Ok(match self.inner.get_lease(lease_id).await? {
            None => LeaseChange::NotFound,
            Some(lease) => {
                let reason = unchanged_reason(&lease, token);
                LeaseChange::Unchanged { lease, reason }
            }
        })
    }
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
        self.inner.acquire(cmd).await
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
        self.inner.renew(lease_id, token, ttl_seconds).await
    }
    async fn get_lease(&self, lease_id: Uuid) -> Result<Option<Lease>, AllocError> {
        self.inner.get_lease(lease_id).await
    }
    async fn reap_expired(&self, limit: u32) -> Result<Vec<Lease>, AllocError> {
        self.inner.reap_expired(limit).await
    }
    async fn counts(&self, tenant: &TenantId) -> Result<PoolCounts, AllocError> {
        self.inner.counts(tenant).await
    }
    async fn usage(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<ExtensionUsage>, AllocError> {
        self.inner.usage(tenant, since, until).await
    }
    async fn import(
        &self,
        tenant: &TenantId,
        config_id: &str,
        numbers: &[ExtensionNumber],
    ) -> Result<Vec<Option<Uuid>>, AllocError> {
        self.inner.import(tenant, config_id, numbers).await
    }
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Extension>, AllocError> {
        self.inner.list(filter).await
    }
    async fn get_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Extension>, AllocError> {
        self.inner.get_extension(tenant, id).await
    }
    async fn update_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        update: &ExtUpdate,
    ) -> Result<UpdateOutcome, AllocError> {
        self.inner.update_extension(tenant, id, update).await
    }
    async fn release_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        reason: ReleaseReason,
    ) -> Result<LeaseChange, AllocError> {
        self.inner.release_extension(tenant, id, reason).await
    }
    async fn delete_extensions(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
        force: bool,
    ) -> Result<Vec<DeleteOutcome>, AllocError> {
        self.inner.delete_extensions(tenant, ids, force).await
    }
    async fn force_release_collector(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<Vec<Uuid>, AllocError> {
        self.inner.force_release_collector(tenant, collector).await
    }
    async fn live_leases(&self) -> Result<i64, AllocError> {
        self.inner.live_leases().await
    }
}
