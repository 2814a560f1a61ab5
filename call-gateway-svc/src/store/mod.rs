//! The gateway's storage, the only module that speaks SQL: [`ConfigStore`] (tenant configs and
//! collectors) and [`calls::CallStore`], both implemented once by [`GatewayStore`] over the
//! platform's SQL layer ([`cco_platform::sql`]) for PostgreSQL, MySQL/MariaDB and SQLite (ids
//! as text, times in each database's convention). What differs per backend is chosen where it
//! is used: locking clauses, `returning` (MySQL has none: the row is read back in the same
//! transaction), how call events are numbered, how replicas hear of cache changes. Domain types
//! at the edge ([`rows`] converts); configs travel sealed ([`ConfigRow`]): the store never sees
//! a secret in clear.

pub mod calls;
pub mod compliance;
mod rows;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cco_platform::args;
use cco_platform::db::{DbError, DbPool};
use cco_platform::sql::{Backend, Db, Row};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use self::rows::{collector_from, collector_row, collector_row_from};
use crate::domain::GwError;
use crate::domain::collector::Collector;

/// A config as stored: secrets sealed, lists as JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigRow {
    pub config_id: String,
    pub tenant_id: String,
    pub supplier_id: String,
    pub api_url: String,
    pub credential_mode: String,
    pub app_id: Option<String>,
    pub access_token_sealed: Option<String>,
    pub access_key_sealed: Option<String>,
    pub caller_number_pool: String,
    pub default_caller_number: String,
    pub caller_number_selection: String,
    pub call_mode: String,
    pub destination_prefix: String,
    pub max_concurrent_calls: i32,
    pub call_timeout_seconds: i32,
    pub api_timeout_ms: i32,
    pub allocation_strategy: String,
    pub lease_ttl_seconds: i32,
    pub cooldown_seconds: i32,
    pub callback_secret_sealed: String,
    pub callback_ip_allowlist: String,
    pub callback_time_zone: String,
    pub is_active: bool,
    pub phone_region: String,
    pub api_encoding: String,
    /// JSON array of number kind names.
    pub allowed_number_types: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The result of a versioned update.
#[derive(Debug, Clone, PartialEq)]
pub enum Versioned {
    /// Written.
    Updated,
    /// Someone else changed it first: the stored version.
    Stale(i64),
    /// No such config.
    NotFound,
}

/// Storage of tenant configs and collectors.
#[async_trait]
pub trait ConfigStore: Send + Sync + 'static {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// Inserts a config; `AlreadyExists` when the tenant has one.
    async fn insert_config(&self, row: &ConfigRow) -> Result<(), GwError>;
    /// The config of a tenant.
    async fn config_by_tenant(&self, tenant_id: &str) -> Result<Option<ConfigRow>, GwError>;
    /// A config by id.
    async fn config_by_id(&self, config_id: &str) -> Result<Option<ConfigRow>, GwError>;
    /// Replaces a config if its stored version is `expected` (the row carries the new version).
    async fn update_config(&self, row: &ConfigRow, expected: i64) -> Result<Versioned, GwError>;
    /// Creates or replaces a collector (its last extension kept); returns it as stored.
    async fn upsert_collector(&self, c: &Collector) -> Result<Collector, GwError>;
    /// One collector.
    async fn collector(
        &self,
        tenant_id: &str,
        collector_id: &str,
    ) -> Result<Option<Collector>, GwError>;
    /// Collectors by id after `after`, at most `limit`.
    async fn list_collectors(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        active: Option<bool>,
        limit: u32,
    ) -> Result<Vec<Collector>, GwError>;
    /// Deletes a collector; false when there was none.
    async fn delete_collector(&self, tenant_id: &str, collector_id: &str) -> Result<bool, GwError>;
    /// A number that moves whenever a config or a collector changes, on any replica: a value
    /// cached under one epoch may be used while the epoch is unchanged. `None` while this
    /// replica cannot tell (its change feed is down): nothing cached may be used then.
    async fn cache_epoch(&self) -> Result<Option<u64>, GwError>;
    /// Follows the changes other replicas make until `stop`, keeping [`Self::cache_epoch`]
    /// true: PostgreSQL LISTENs on `gateway_cache` (migration 0005 notifies at commit).
    /// Returns at once on MySQL and SQLite, whose epoch is a counter in the database itself.
    async fn follow_changes(&self, stop: CancellationToken);
}

/// MySQL: the cache epoch's row, locked first by every transaction that writes configs or
/// collectors (see [`GatewayStore::lock_epoch`]).
pub(crate) const LOCK_EPOCH: &str = "select n from cache_epoch where id = 1 for update";

/// The channel the triggers of migration 0005 notify on.
const CHANGES_CHANNEL: &str = "gateway_cache";

/// What this replica knows of changes to configs and collectors (PostgreSQL): an epoch bumped
/// by every notification, by every reconnection of the listener (notifications may have been
/// missed meanwhile) and by this replica's own writes (so it never waits for its own
/// notification); and whether the listener is connected.
#[derive(Debug)]
pub(crate) struct Feed {
    epoch: AtomicU64,
    live: AtomicBool,
    /// Tenants with new call events written by this process (see `CallStore::event_wakes`).
    pub(crate) events: tokio::sync::broadcast::Sender<String>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            events: tokio::sync::broadcast::channel(4_096).0,
        }
    }
}

impl Feed {
    /// Wakes this process's watchers of `tenant` (empty: of every tenant).
    pub(crate) fn events_written(&self, tenant: &str) {
        // No receiver (nobody watching) is not an error.
        let _ = self.events.send(tenant.to_owned());
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn current(&self) -> Option<u64> {
        self.live
            .load(Ordering::SeqCst)
            .then(|| self.epoch.load(Ordering::SeqCst))
    }

    fn set_live(&self, live: bool) {
        // Bumped on both edges: whatever was cached before a gap is not trusted after it.
        self.bump();
        self.live.store(live, Ordering::SeqCst);
    }
}

impl GatewayStore {
    async fn epoch(&self) -> Result<Option<u64>, GwError> {
        if self.db.backend() == Backend::Postgres {
            return Ok(self.feed.current());
        }
        let n = self
            .db
            .fetch_one("select n from cache_epoch where id = 1", args![])
            .await
            .map_err(db_err)?;
        Ok(Some(n.i64("n").map_err(db_err)?.unsigned_abs()))
    }

    /// LISTENs on a connection of its own (not one of the pool's), reconnecting with a
    /// backoff; the cache is not trusted while the listener is down. The connection is
    /// pinged every [`LISTENER_PING`], so a half-open one (a failover, a partition) is noticed
    /// instead of silently missing notifications; a lost connection is re-established here,
    /// not inside sqlx, so nothing counts as live before its LISTEN has succeeded.
    async fn follow(&self, stop: CancellationToken) {
        let DbPool::Postgres(pool) = self.db.pool() else {
            return;
        };
        let mut delay = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let listener = async {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .max_lifetime(None)
                    .idle_timeout(None)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with((*pool.connect_options()).clone())
                    .await?;
                let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                l.ignore_pool_close_event(true);
                l.eager_reconnect(false);
                l.listen(CHANGES_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                () = stop.cancelled() => break,
                l = listener => match l {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for config changes; caches off until it can");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            delay = Duration::from_millis(100);
            self.feed.set_live(true);
            let mut ping = tokio::time::interval(LISTENER_PING);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ping.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ping.tick() => {
                        let alive = tokio::time::timeout(
                            Duration::from_secs(5),
                            sqlx::query("select 1").execute(&mut listener),
                        )
                        .await;
                        if !matches!(alive, Ok(Ok(_))) {
                            tracing::warn!("config change listener does not answer; caches off until it is back");
                            self.feed.set_live(false);
                            break;
                        }
                    }
                    n = listener.try_recv() => match n {
                        Ok(Some(_)) => self.feed.bump(),
                        // Ok(None): the connection was lost (not re-established: see above).
                        Ok(None) | Err(_) => {
                            tracing::warn!("config change listener lost; caches off until it is back");
                            self.feed.set_live(false);
                            break;
                        }
                    },
                }
            }
        }
        self.feed.set_live(false);
    }
}

/// How often the change listener's connection is checked.
const LISTENER_PING: Duration = Duration::from_secs(15);

/// A stored value that does not parse: a bug or a hand-edited row, reported as internal.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> GwError {
    GwError::Internal(anyhow::anyhow!("stored data is corrupt: {what}"))
}

/// Maps a database error to the gateway's (the classification lives in the platform).
pub(crate) fn db_err(e: sqlx::Error) -> GwError {
    DbError::from(e).into()
}

impl From<DbError> for GwError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => GwError::Unavailable(format!("database unavailable: {m}")),
            DbError::Contention(m) => GwError::Contention(format!("database contention: {m}")),
            DbError::Other(e) => GwError::Internal(e.into()),
        }
    }
}

macro_rules! config_cols {
    () => {
        "config_id, tenant_id, supplier_id, api_url, credential_mode, app_id, access_token_sealed, \
         access_key_sealed, caller_number_pool, default_caller_number, caller_number_selection, call_mode, \
         destination_prefix, max_concurrent_calls, call_timeout_seconds, api_timeout_ms, allocation_strategy, \
         lease_ttl_seconds, cooldown_seconds, callback_secret_sealed, callback_ip_allowlist, callback_time_zone, \
         is_active, phone_region, api_encoding, version, created_at, updated_at, allowed_number_types"
    };
}

macro_rules! collector_cols {
    () => {
        "tenant_id, collector_id, callback_number, display_name, active, last_extension_number, created_at, updated_at"
    };
}

fn config_from(r: &Row) -> Result<ConfigRow, sqlx::Error> {
    Ok(ConfigRow {
        config_id: r.text("config_id")?,
        tenant_id: r.text("tenant_id")?,
        supplier_id: r.text("supplier_id")?,
        api_url: r.text("api_url")?,
        credential_mode: r.text("credential_mode")?,
        app_id: r.opt_text("app_id")?,
        access_token_sealed: r.opt_text("access_token_sealed")?,
        access_key_sealed: r.opt_text("access_key_sealed")?,
        caller_number_pool: r.text("caller_number_pool")?,
        default_caller_number: r.text("default_caller_number")?,
        caller_number_selection: r.text("caller_number_selection")?,
        call_mode: r.text("call_mode")?,
        destination_prefix: r.text("destination_prefix")?,
        max_concurrent_calls: r.i32("max_concurrent_calls")?,
        call_timeout_seconds: r.i32("call_timeout_seconds")?,
        api_timeout_ms: r.i32("api_timeout_ms")?,
        allocation_strategy: r.text("allocation_strategy")?,
        lease_ttl_seconds: r.i32("lease_ttl_seconds")?,
        cooldown_seconds: r.i32("cooldown_seconds")?,
        callback_secret_sealed: r.text("callback_secret_sealed")?,
        callback_ip_allowlist: r.text("callback_ip_allowlist")?,
        callback_time_zone: r.text("callback_time_zone")?,
        is_active: r.bool("is_active")?,
        phone_region: r.text("phone_region")?,
        api_encoding: r.text("api_encoding")?,
        allowed_number_types: r.text("allowed_number_types")?,
        version: r.i64("version")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// The gateway's store on any backend: configs and collectors here, calls in [`calls`].
#[derive(Debug, Clone)]
pub struct GatewayStore {
    pub(crate) db: Db,
    pub(crate) feed: Arc<Feed>,
}

impl GatewayStore {
    /// Wraps a migrated pool.
    pub fn new(pool: DbPool) -> Self {
        Self {
            db: Db::new(pool),
            feed: Arc::default(),
        }
    }

    /// A single-row write with `returning` where the backend has it; on MySQL the write, then
    /// the row read back by `select` (with `select_args`) in the same transaction.
    pub(crate) async fn write_returning(
        &self,
        tx: &mut cco_platform::sql::Tx,
        write: &str,
        returning: &str,
        args: &[cco_platform::sql::Arg<'_>],
        select: &str,
        select_args: &[cco_platform::sql::Arg<'_>],
    ) -> Result<Option<Row>, sqlx::Error> {
        if self.db.dialect().has_returning() {
            return tx
                .exec()
                .fetch_optional(&format!("{write} returning {returning}"), args)
                .await;
        }
        if tx.exec().execute(write, args).await? == 0 {
            return Ok(None);
        }
        tx.exec().fetch_optional(select, select_args).await
    }

    /// [`Self::write_returning`] as a transaction of its own: one statement where the backend
    /// has `returning`, else the write and the read in one transaction (which first takes the
    /// cache epoch's lock when the write bumps it: see [`Self::lock_epoch`]).
    pub(crate) async fn write_returning_once(
        &self,
        bumps_epoch: bool,
        write: &str,
        returning: &str,
        args: &[cco_platform::sql::Arg<'_>],
        select: &str,
        select_args: &[cco_platform::sql::Arg<'_>],
    ) -> Result<Option<Row>, GwError> {
        if self.db.dialect().has_returning() {
            return self
                .db
                .fetch_optional(&format!("{write} returning {returning}"), args)
                .await
                .map_err(db_err);
        }
        let mut tx = self
            .db
            .begin(cco_platform::sql::Mode::Write)
            .await
            .map_err(db_err)?;
        if bumps_epoch {
            self.lock_epoch(&mut tx).await?;
        }
        let row = self
            .write_returning(&mut tx, write, returning, args, select, select_args)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(row)
    }

    /// One write of configs or collectors (which bumps the cache epoch): on its own, or on
    /// MySQL in a transaction that takes the epoch's lock first.
    async fn write_bumping(
        &self,
        sql: &str,
        args: &[cco_platform::sql::Arg<'_>],
    ) -> Result<u64, sqlx::Error> {
        if self.db.backend() != Backend::MySql {
            return self.db.execute(sql, args).await;
        }
        let mut tx = self.db.begin(cco_platform::sql::Mode::Write).await?;
        tx.exec().execute(LOCK_EPOCH, &[]).await?;
        let n = tx.exec().execute(sql, args).await?;
        tx.commit().await?;
        Ok(n)
    }
}

#[async_trait]
impl ConfigStore for GatewayStore {
    fn backend(&self) -> &'static str {
        self.db.backend().name()
    }

    async fn cache_epoch(&self) -> Result<Option<u64>, GwError> {
        self.epoch().await
    }

    async fn follow_changes(&self, stop: CancellationToken) {
        self.follow(stop).await;
    }

    async fn insert_config(&self, c: &ConfigRow) -> Result<(), GwError> {
        let res = self
            .write_bumping(
                concat!(
                    "insert into infinity_call_configs (",
                    config_cols!(),
                    ") values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                     $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)"
                ),
                args![
                    &c.config_id,
                    &c.tenant_id,
                    &c.supplier_id,
                    &c.api_url,
                    &c.credential_mode,
                    &c.app_id,
                    &c.access_token_sealed,
                    &c.access_key_sealed,
                    &c.caller_number_pool,
                    &c.default_caller_number,
                    &c.caller_number_selection,
                    &c.call_mode,
                    &c.destination_prefix,
                    c.max_concurrent_calls,
                    c.call_timeout_seconds,
                    c.api_timeout_ms,
                    &c.allocation_strategy,
                    c.lease_ttl_seconds,
                    c.cooldown_seconds,
                    &c.callback_secret_sealed,
                    &c.callback_ip_allowlist,
                    &c.callback_time_zone,
                    c.is_active,
                    &c.phone_region,
                    &c.api_encoding,
                    c.version,
                    c.created_at,
                    c.updated_at,
                    &c.allowed_number_types
                ],
            )
            .await;
        match res {
            Ok(_) => {
                self.feed.bump();
                Ok(())
            }
            Err(e) if cco_platform::db::is_unique_violation(&e) => {
                Err(GwError::AlreadyExists(format!(
                    "tenant_id: tenant {} already has an Infinity call config",
                    c.tenant_id
                )))
            }
            Err(e) => Err(db_err(e)),
        }
    }

    async fn config_by_tenant(&self, tenant_id: &str) -> Result<Option<ConfigRow>, GwError> {
        let row = self
            .db
            .fetch_optional(
                concat!(
                    "select ",
                    config_cols!(),
                    " from infinity_call_configs where tenant_id = $1"
                ),
                args![tenant_id],
            )
            .await
            .map_err(db_err)?;
        row.as_ref().map(config_from).transpose().map_err(db_err)
    }

    async fn config_by_id(&self, config_id: &str) -> Result<Option<ConfigRow>, GwError> {
        let row = self
            .db
            .fetch_optional(
                concat!(
                    "select ",
                    config_cols!(),
                    " from infinity_call_configs where config_id = $1"
                ),
                args![config_id],
            )
            .await
            .map_err(db_err)?;
        row.as_ref().map(config_from).transpose().map_err(db_err)
    }

    async fn update_config(&self, c: &ConfigRow, expected: i64) -> Result<Versioned, GwError> {
        // One statement: the version check and the write cannot be separated.
        let done = self
            .write_bumping(
                "update infinity_call_configs set supplier_id = $3, api_url = $4, credential_mode = $5, \
                   app_id = $6, access_token_sealed = $7, access_key_sealed = $8, caller_number_pool = $9, \
                   default_caller_number = $10, caller_number_selection = $11, call_mode = $12, \
                   destination_prefix = $13, max_concurrent_calls = $14, call_timeout_seconds = $15, \
                   api_timeout_ms = $16, allocation_strategy = $17, lease_ttl_seconds = $18, \
                   cooldown_seconds = $19, callback_secret_sealed = $20, callback_ip_allowlist = $21, \
                   callback_time_zone = $22, is_active = $23, phone_region = $24, api_encoding = $25, \
                   version = $26, updated_at = $27, allowed_number_types = $29 \
                 where tenant_id = $1 and config_id = $2 and version = $28",
                args![
                    &c.tenant_id,
                    &c.config_id,
                    &c.supplier_id,
                    &c.api_url,
                    &c.credential_mode,
                    &c.app_id,
                    &c.access_token_sealed,
                    &c.access_key_sealed,
                    &c.caller_number_pool,
                    &c.default_caller_number,
                    &c.caller_number_selection,
                    &c.call_mode,
                    &c.destination_prefix,
                    c.max_concurrent_calls,
                    c.call_timeout_seconds,
                    c.api_timeout_ms,
                    &c.allocation_strategy,
                    c.lease_ttl_seconds,
                    c.cooldown_seconds,
                    &c.callback_secret_sealed,
                    &c.callback_ip_allowlist,
                    &c.callback_time_zone,
                    c.is_active,
                    &c.phone_region,
                    &c.api_encoding,
                    c.version,
                    c.updated_at,
                    expected,
                    &c.allowed_number_types
                ],
            )
            .await
            .map_err(db_err)?;
        if done == 1 {
            self.feed.bump();
            return Ok(Versioned::Updated);
        }
        let current = self
            .db
            .fetch_optional(
                "select version from infinity_call_configs where tenant_id = $1",
                args![&c.tenant_id],
            )
            .await
            .map_err(db_err)?
            .map(|r| r.i64("version"))
            .transpose()
            .map_err(db_err)?;
        Ok(current.map_or(Versioned::NotFound, Versioned::Stale))
    }

    async fn upsert_collector(&self, collector: &Collector) -> Result<Collector, GwError> {
        let c = &collector_row_from(collector);
        let upsert = self.db.dialect().upsert(
            "collectors",
            collector_cols!(),
            "($1, $2, $3, $4, $5, $6, $7, $8)",
            "tenant_id, collector_id",
            "callback_number = new(callback_number), display_name = new(display_name), \
             active = new(active), updated_at = new(updated_at)",
        );
        let row = self
            .write_returning_once(
                true,
                &upsert,
                collector_cols!(),
                args![
                    &c.tenant_id,
                    &c.collector_id,
                    &c.callback_number,
                    &c.display_name,
                    c.active,
                    &c.last_extension_number,
                    c.created_at,
                    c.updated_at
                ],
                concat!(
                    "select ",
                    collector_cols!(),
                    " from collectors where tenant_id = $1 and collector_id = $2"
                ),
                args![&c.tenant_id, &c.collector_id],
            )
            .await?;
        self.feed.bump();
        let row = row.ok_or_else(|| corrupt("collector upsert returned no row"))?;
        collector_from(collector_row(&row).map_err(db_err)?)
    }

    async fn collector(
        &self,
        tenant_id: &str,
        collector_id: &str,
    ) -> Result<Option<Collector>, GwError> {
        let row = self
            .db
            .fetch_optional(
                concat!(
                    "select ",
                    collector_cols!(),
                    " from collectors where tenant_id = $1 and collector_id = $2"
                ),
                args![tenant_id, collector_id],
            )
            .await
            .map_err(db_err)?;
        row.as_ref()
            .map(collector_row)
            .transpose()
            .map_err(db_err)?
            .map(collector_from)
            .transpose()
    }

    async fn list_collectors(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        active: Option<bool>,
        limit: u32,
    ) -> Result<Vec<Collector>, GwError> {
        let mut sql = format!(
            "select {} from collectors where tenant_id = $1",
            collector_cols!()
        );
        let mut a = vec![cco_platform::sql::Arg::Text(tenant_id)];
        if let Some(after) = after {
            a.push(after.into());
            sql.push_str(&format!(" and collector_id > ${}", a.len()));
        }
        if let Some(active) = active {
            a.push(active.into());
            sql.push_str(&format!(" and active = ${}", a.len()));
        }
        a.push(limit.into());
        sql.push_str(&format!(" order by collector_id limit ${}", a.len()));
        let rows = self.db.fetch_all(&sql, &a).await.map_err(db_err)?;
        rows.iter()
            .map(|r| collector_row(r).map_err(db_err).and_then(collector_from))
            .collect()
    }

    async fn delete_collector(&self, tenant_id: &str, collector_id: &str) -> Result<bool, GwError> {
        let n = self
            .write_bumping(
                "delete from collectors where tenant_id = $1 and collector_id = $2",
                args![tenant_id, collector_id],
            )
            .await
            .map_err(db_err)?;
        self.feed.bump();
        Ok(n == 1)
    }
}
