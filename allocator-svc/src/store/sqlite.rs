//! SQLite store, the embedded default. Every write runs in `begin immediate`, which takes the
//! database's single write lock up front: writers are serialised (so the cap check and the
//! round-robin cursor need no row locks) and no transaction ever upgrades a read lock and
//! deadlocks. Times are unix milliseconds taken after the lock is held, so they only move forward.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Row, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};
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

/// The SQLite implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// This process's writers take turns here before `begin immediate`: queued in order on a
    /// fair async lock instead of retrying SQLite's write lock in the busy handler's growing
    /// sleeps (which gave p99s in the hundreds of milliseconds at 8+ concurrent writers).
    /// Another process on the same file still meets the busy handler.
    writer: Arc<Mutex<()>>,
}

/// A `begin immediate` transaction holding this process's writer turn until it ends.
struct WriteTx {
    tx: Transaction<'static, sqlx::Sqlite>,
    _turn: OwnedMutexGuard<()>,
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl WriteTx {
    async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl SqliteStore {
    /// Wraps a migrated pool.
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            writer: Arc::new(Mutex::new(())),
        }
    }

    async fn write_tx(&self) -> Result<WriteTx, AllocError> {
        let turn = Arc::clone(&self.writer).lock_owned().await;
        let tx = self
            .pool
            .begin_with("begin immediate")
            .await
            .map_err(db_err)?;
        Ok(WriteTx { tx, _turn: turn })
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn from_ms(col: &str, ms: i64) -> Result<DateTime<Utc>, AllocError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| {
        AllocError::Internal(anyhow::anyhow!("column {col}: time out of range: {ms}"))
    })
}

fn parse_uuid_col(col: &str, s: &str) -> Result<Uuid, AllocError> {
    Uuid::parse_str(s)
        .map_err(|_| AllocError::Internal(anyhow::anyhow!("column {col}: not a uuid: {s:?}")))
}

impl RowRead for SqliteRow {
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
        parse_uuid_col(col, &self.text(col)?)
    }
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, AllocError> {
        self.opt_text(col)?
            .map(|s| parse_uuid_col(col, &s))
            .transpose()
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>, AllocError> {
        from_ms(col, self.int(col)?)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, AllocError> {
        let v: Option<i64> = self.try_get(col).map_err(db_err)?;
        v.map(|ms| from_ms(col, ms)).transpose()
    }
}

/// Marks the picked extension in use. $1 tenant, $2 lease id, $3 collector, $4 lease expiry,
/// $5 now, $6 strategy-specific.
macro_rules! lease_extension {
    ($pick:expr) => {
        concat!(
            "update extensions set status = 'in_use', current_lease_id = $2, current_collector_id = $3, \
             lease_expires_at = $4, fencing_token = fencing_token + 1, last_collector_id = $3, \
             last_used_at = $5, use_count = use_count + 1, available_at = null, updated_at = $5 \
             where id = (",
            $pick,
            ") returning id, number, fencing_token"
        )
    };
}

macro_rules! free {
    () => {
        "tenant_id = $1 and status = 'available' and (available_at is null or available_at <= $5)"
    };
}

const LRU_SQL: &str = lease_extension!(concat!(
    "select id from extensions where ",
    free!(),
    " order by last_released_at, length(number), number limit 1"
));
const AFFINITY_SQL: &str = lease_extension!(concat!(
    "select id from extensions where id = $6 and ",
    free!()
));
const RR_AFTER_SQL: &str = lease_extension!(concat!(
    "select id from extensions where ",
    free!(),
    " and (length(number), number) > (length($6), $6) order by length(number), number limit 1"
));
const RR_FIRST_SQL: &str = lease_extension!(concat!(
    "select id from extensions where ",
    free!(),
    " order by length(number), number limit 1"
));

/// Ends a live lease whose token matches and frees its extension (lease row first).
async fn end_lease(
    conn: &mut SqliteConnection,
    lease_id: Uuid,
    token: i64,
    reason: ReleaseReason,
    now: i64,
) -> Result<Option<Lease>, AllocError> {
    let row = sqlx::query(concat!(
        "update leases set released_at = $4, release_reason = $3, updated_at = $4 \
         where lease_id = $1 and fencing_token = $2 and released_at is null returning ",
        lease_cols!(),
        ", cooldown_seconds"
    ))
    .bind(lease_id.to_string())
    .bind(token)
    .bind(reason.as_str())
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let (lease, _) = lease_from(&row)?;
    let cooldown: i64 = row.try_get("cooldown_seconds").map_err(db_err)?;
    sqlx::query(
        "update extensions set status = case when status = 'in_use' then 'available' else status end, \
           current_lease_id = null, current_collector_id = null, lease_expires_at = null, \
           last_released_at = $3, available_at = case when $4 > 0 then $3 + $4 * 1000 else null end, \
           updated_at = $3 \
         where id = $1 and current_lease_id = $2",
    )
    .bind(lease.extension_id.to_string())
    .bind(lease_id.to_string())
    .bind(now)
    .bind(cooldown)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(Some(lease))
}

async fn find_lease(
    conn: &mut SqliteConnection,
    lease_id: Uuid,
) -> Result<Option<(Lease, String)>, AllocError> {
    let row = sqlx::query(concat!(
        "select ",
        lease_cols!(),
        " from leases where lease_id = $1"
    ))
    .bind(lease_id.to_string())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    row.map(|r| lease_from(&r)).transpose()
}

async fn find_by_request(
    conn: &mut SqliteConnection,
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

/// Counts a tenant's pool in one statement, as the PostgreSQL store does (`pool_counts` kept by
/// triggers, the other figures through partial indexes).
async fn counts_on(conn: &mut SqliteConnection, tenant: &str) -> Result<PoolCounts, AllocError> {
    let r = sqlx::query(
        "select coalesce((select total from pool_counts where tenant_id = $1), 0) as total, \
           (select count(*) from extensions where tenant_id = $1 and status = 'in_use') as in_use, \
           (select count(*) from extensions where tenant_id = $1 and status = 'offline') as offline, \
           (select count(*) from extensions where tenant_id = $1 and status = 'available' \
              and available_at is not null and available_at > $2) as cooling",
    )
    .bind(tenant)
    .bind(now_ms())
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    counts_from(&r)
}

async fn get_ext(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    id: Uuid,
) -> Result<Option<Extension>, AllocError> {
    let row = sqlx::query(concat!(
        "select ",
        ext_cols!(),
        " from extensions where id = $1 and tenant_id = $2"
    ))
    .bind(id.to_string())
    .bind(tenant.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    row.as_ref().map(extension_from).transpose()
}

/// Ends the live lease of an extension inside a write transaction.
async fn end_extension_lease(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    id: Uuid,
    reason: ReleaseReason,
    now: i64,
) -> Result<Option<(Extension, Option<Lease>)>, AllocError> {
    let Some(ext) = get_ext(conn, tenant, id).await? else {
        return Ok(None);
    };
    let ended = match ext.current_lease_id {
        Some(l) => end_lease(conn, l, ext.fencing_token, reason, now).await?,
        None => None,
    };
    Ok(get_ext(conn, tenant, id).await?.map(|e| (e, ended)))
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn acquire(&self, cmd: &AcquireCmd) -> Result<AcquireOutcome, AllocError> {
        let tenant = cmd.tenant_id.as_str();
        // A replay needs no write lock: answer it from a read. The check is repeated under the
        // lock below for a twin that commits in between.
        {
            let mut conn = self.pool.acquire().await.map_err(db_err)?;
            if let Some((l, fp)) =
                find_by_request(&mut conn, tenant, cmd.request_id.as_str()).await?
            {
                return Ok(replay(l, &fp, cmd));
            }
        }
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        if let Some((l, fp)) = find_by_request(&mut tx, tenant, cmd.request_id.as_str()).await? {
            return Ok(replay(l, &fp, cmd));
        }
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
        let lease_id = Uuid::now_v7();
        let expires = now + i64::from(cmd.ttl_seconds) * 1000;
        let collector = cmd.collector_id.as_str();
        let lease_s = lease_id.to_string();
        let run = |sql: &'static str| {
            sqlx::query(sql)
                .bind(tenant)
                .bind(lease_s.clone())
                .bind(collector)
                .bind(expires)
                .bind(now)
        };
        let picked: Option<SqliteRow> = match cmd.strategy {
            Strategy::Lru => run(LRU_SQL)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?,
            Strategy::CollectorAffinity => {
                let last: Option<String> = sqlx::query_scalar(
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
                let cursor: Option<String> =
                    sqlx::query_scalar("select rr_cursor from tenant_state where tenant_id = $1")
                        .bind(tenant)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .flatten();
                let mut got = None;
                if let Some(c) = cursor {
                    got = run(RR_AFTER_SQL)
                        .bind(c)
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
        let extension_id = row.uuid("id")?;
        let number: String = row.try_get("number").map_err(db_err)?;
        let token: i64 = row.try_get("fencing_token").map_err(db_err)?;
        let inserted = sqlx::query(
            "insert into leases (lease_id, tenant_id, extension_id, extension_number, collector_id, \
               request_id, request_fingerprint, strategy, fencing_token, cooldown_seconds, acquired_at, \
               expires_at, created_at, updated_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $11, $11)",
        )
        .bind(&lease_s)
        .bind(tenant)
        .bind(extension_id.to_string())
        .bind(&number)
        .bind(collector)
        .bind(cmd.request_id.as_str())
        .bind(&cmd.fingerprint)
        .bind(cmd.strategy.as_str())
        .bind(token)
        .bind(i64::from(cmd.cooldown_seconds))
        .bind(now)
        .bind(expires)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            // Cannot race under the write lock, but stay correct if it ever does.
            if is_unique_violation(&e) {
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
                "insert into tenant_state (tenant_id, rr_cursor, created_at, updated_at) values ($1, $2, $3, $3) \
                 on conflict (tenant_id) do update set rr_cursor = excluded.rr_cursor, updated_at = excluded.updated_at",
            )
            .bind(tenant)
            .bind(&number)
            .bind(now)
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
                acquired_at: from_ms("acquired_at", now)?,
                expires_at: from_ms("expires_at", expires)?,
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
        let mut tx = self.write_tx().await?;
        let ended = end_lease(&mut tx, lease_id, token, reason, now_ms()).await?;
        let out = match ended {
            Some(l) => LeaseChange::Changed(l),
            None => match find_lease(&mut tx, lease_id).await? {
                None => LeaseChange::NotFound,
                Some((lease, _)) => {
                    let reason = unchanged_reason(&lease, token);
                    LeaseChange::Unchanged { lease, reason }
                }
            },
        };
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn renew(
        &self,
        lease_id: Uuid,
        token: i64,
        ttl_seconds: u32,
    ) -> Result<LeaseChange, AllocError> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let expires = now + i64::from(ttl_seconds) * 1000;
        let row = sqlx::query(concat!(
            "update leases set expires_at = $3, updated_at = $4 \
             where lease_id = $1 and fencing_token = $2 and released_at is null and expires_at > $4 returning ",
            lease_cols!()
        ))
        .bind(lease_id.to_string())
        .bind(token)
        .bind(expires)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let out = match row {
            Some(r) => {
                let (lease, _) = lease_from(&r)?;
                sqlx::query(
                    "update extensions set lease_expires_at = $3, updated_at = $4 \
                     where id = $1 and current_lease_id = $2",
                )
                .bind(lease.extension_id.to_string())
                .bind(lease_id.to_string())
                .bind(expires)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                LeaseChange::Changed(lease)
            }
            None => match find_lease(&mut tx, lease_id).await? {
                None => LeaseChange::NotFound,
                Some((lease, _)) => {
                    let reason = unchanged_reason(&lease, token);
                    LeaseChange::Unchanged { lease, reason }
                }
            },
        };
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn get_lease(&self, lease_id: Uuid) -> Result<Option<Lease>, AllocError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        Ok(find_lease(&mut conn, lease_id).await?.map(|(l, _)| l))
    }

    async fn reap_expired(&self, limit: u32) -> Result<Vec<Lease>, AllocError> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let due = sqlx::query(
            "select lease_id, fencing_token from leases \
             where released_at is null and expires_at <= $1 order by expires_at limit $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut reaped = Vec::with_capacity(due.len());
        for r in due {
            let id = r.uuid("lease_id")?;
            let token: i64 = r.try_get("fencing_token").map_err(db_err)?;
            if let Some(l) = end_lease(&mut tx, id, token, ReleaseReason::Expired, now).await? {
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
               coalesce(sum(min(coalesce(l.released_at, $4), $3) - max(l.acquired_at, $2)), 0) as busy_ms \
             from extensions e \
             left join leases l on l.extension_id = e.id and l.acquired_at < $3 \
               and coalesce(l.released_at, $4) > $2 \
             where e.tenant_id = $1 \
             group by e.id, e.number \
             order by length(e.number), e.number",
        )
        .bind(tenant.as_str())
        .bind(since.timestamp_millis())
        // Round the end up: a lease stamped in the same millisecond as `until` began before it.
        .bind(until.timestamp_micros().div_euclid(1000) + i64::from(until.timestamp_micros().rem_euclid(1000) > 0))
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let leases: i64 = r.try_get("leases").map_err(db_err)?;
                let busy_ms: i64 = r.try_get("busy_ms").map_err(db_err)?;
                #[allow(clippy::cast_precision_loss)]
                let busy_seconds = busy_ms.max(0) as f64 / 1000.0;
                Ok(ExtensionUsage {
                    extension_id: r.uuid("id")?,
                    extension_number: r.try_get("number").map_err(db_err)?,
                    lease_count: u32::try_from(leases).unwrap_or(u32::MAX),
                    busy_seconds,
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
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(numbers.len());
        for n in numbers {
            let id = Uuid::now_v7();
            let done = sqlx::query(
                "insert into extensions (id, tenant_id, config_id, number, created_at, updated_at) \
                 values ($1, $2, $3, $4, $5, $5) on conflict (tenant_id, number) do nothing",
            )
            .bind(id.to_string())
            .bind(tenant.as_str())
            .bind(config_id)
            .bind(n.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            out.push((done == 1).then_some(id));
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn list(&self, f: &ListFilter) -> Result<Vec<Extension>, AllocError> {
        let rows = sqlx::query(concat!(
            "select ",
            ext_cols!(),
            " from extensions where tenant_id = $1 \
               and ($2 is null or config_id = $2) \
               and ($3 is null or status = $3) \
               and ($4 is null or current_collector_id = $4) \
               and ($5 is null or (length(number), number) > (length($5), $5)) \
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
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        get_ext(&mut conn, tenant, id).await
    }

    async fn update_extension(
        &self,
        tenant: &TenantId,
        id: Uuid,
        u: &ExtUpdate,
    ) -> Result<UpdateOutcome, AllocError> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let Some(current) = get_ext(&mut tx, tenant, id).await? else {
            return Ok(UpdateOutcome::NotFound);
        };
        if u.status == Some(ExtStatus::Offline) && current.status == ExtStatus::InUse {
            if !u.force {
                return Ok(UpdateOutcome::InUse);
            }
            end_extension_lease(&mut tx, tenant, id, ReleaseReason::ExtensionOffline, now).await?;
        }
        let res = sqlx::query(concat!(
            "update extensions set \
               status = case when $3 is null or status = 'in_use' then status else $3 end, \
               number = coalesce($4, number), updated_at = $5 \
             where id = $1 and tenant_id = $2 \
               and ($4 is null or number = $4 or status <> 'in_use') returning ",
            ext_cols!()
        ))
        .bind(id.to_string())
        .bind(tenant.as_str())
        .bind(u.status.map(ExtStatus::as_str))
        .bind(u.number.as_ref().map(ExtensionNumber::as_str))
        .bind(now)
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
        let mut tx = self.write_tx().await?;
        let Some((ext, ended)) = end_extension_lease(&mut tx, tenant, id, reason, now_ms()).await?
        else {
            return Ok(LeaseChange::NotFound);
        };
        let out = match ended {
            Some(l) => LeaseChange::Changed(l),
            None => {
                let last: Option<String> = sqlx::query_scalar(
                    "select lease_id from leases where extension_id = $1 order by acquired_at desc limit 1",
                )
                .bind(ext.id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                match last {
                    Some(l) => match find_lease(&mut tx, parse_uuid_col("lease_id", &l)?).await? {
                        Some((lease, _)) => LeaseChange::Unchanged {
                            lease,
                            reason: "extension is not in use".into(),
                        },
                        None => LeaseChange::NotFound,
                    },
                    None => LeaseChange::NotFound,
                }
            }
        };
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn delete_extensions(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
        force: bool,
    ) -> Result<Vec<DeleteOutcome>, AllocError> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(ext) = get_ext(&mut tx, tenant, id).await? else {
                out.push(DeleteOutcome::NotFound);
                continue;
            };
            let mut ended = None;
            if ext.status == ExtStatus::InUse {
                if !force {
                    out.push(DeleteOutcome::InUse);
                    continue;
                }
                ended =
                    end_extension_lease(&mut tx, tenant, id, ReleaseReason::ExtensionDeleted, now)
                        .await?
                        .and_then(|(_, l)| l.map(|l| l.lease_id));
            }
            sqlx::query("delete from extensions where id = $1 and tenant_id = $2")
                .bind(id.to_string())
                .bind(tenant.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            out.push(DeleteOutcome::Deleted(ended));
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn force_release_collector(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
    ) -> Result<Vec<Uuid>, AllocError> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
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
            let id = r.uuid("lease_id")?;
            let token: i64 = r.try_get("fencing_token").map_err(db_err)?;
            if let Some(l) =
                end_lease(&mut tx, id, token, ReleaseReason::CollectorForced, now).await?
            {
                ended.push(l.lease_id);
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(ended)
    }

    async fn live_leases(&self) -> Result<i64, AllocError> {
        sqlx::query_scalar("select count(*) from leases where released_at is null")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)
    }
}
