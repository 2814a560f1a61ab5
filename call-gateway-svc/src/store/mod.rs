//! The gateway's storage, the only module that speaks SQL: [`ConfigStore`] (tenant configs and
//! collectors) and [`calls::CallStore`], each implemented for PostgreSQL and SQLite by one
//! macro over the same portable SQL (ids as text, times as `DateTime<Utc>`, which sqlx stores
//! natively in each). Domain types at the edge ([`rows`] converts); configs travel sealed
//! ([`ConfigRow`]): the store never sees a secret in clear.

pub mod calls;
mod rows;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cco_platform::db::DbError;
use chrono::{DateTime, Utc};
use sqlx::Row;
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
    /// Returns at once on SQLite, whose epoch is a counter in the database itself.
    async fn follow_changes(&self, stop: CancellationToken);
}

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

impl PgGatewayStore {
    async fn epoch(&self) -> Result<Option<u64>, GwError> {
        Ok(self.feed.current())
    }

    /// LISTENs on a connection of its own (not one of the pool's), reconnecting with a
    /// backoff; the cache is not trusted while the listener is down. The connection is
    /// pinged every [`LISTENER_PING`], so a half-open one (a failover, a partition) is noticed
    /// instead of silently missing notifications; a lost connection is re-established here,
    /// not inside sqlx, so nothing counts as live before its LISTEN has succeeded.
    async fn follow(&self, stop: CancellationToken) {
        let mut delay = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let listener = async {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .max_lifetime(None)
                    .idle_timeout(None)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with((*self.pool.connect_options()).clone())
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

impl SqliteGatewayStore {
    async fn epoch(&self) -> Result<Option<u64>, GwError> {
        let n: i64 = sqlx::query_scalar("select n from cache_epoch where id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(Some(n.unsigned_abs()))
    }

    #[allow(clippy::unused_async)]
    async fn follow(&self, _stop: CancellationToken) {}
}

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
            DbError::Contention(m) => GwError::Unavailable(format!("database contention: {m}")),
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

fn config_from<R: Row>(r: &R) -> Result<ConfigRow, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ConfigRow {
        config_id: r.try_get("config_id")?,
        tenant_id: r.try_get("tenant_id")?,
        supplier_id: r.try_get("supplier_id")?,
        api_url: r.try_get("api_url")?,
        credential_mode: r.try_get("credential_mode")?,
        app_id: r.try_get("app_id")?,
        access_token_sealed: r.try_get("access_token_sealed")?,
        access_key_sealed: r.try_get("access_key_sealed")?,
        caller_number_pool: r.try_get("caller_number_pool")?,
        default_caller_number: r.try_get("default_caller_number")?,
        caller_number_selection: r.try_get("caller_number_selection")?,
        call_mode: r.try_get("call_mode")?,
        destination_prefix: r.try_get("destination_prefix")?,
        max_concurrent_calls: r.try_get("max_concurrent_calls")?,
        call_timeout_seconds: r.try_get("call_timeout_seconds")?,
        api_timeout_ms: r.try_get("api_timeout_ms")?,
        allocation_strategy: r.try_get("allocation_strategy")?,
        lease_ttl_seconds: r.try_get("lease_ttl_seconds")?,
        cooldown_seconds: r.try_get("cooldown_seconds")?,
        callback_secret_sealed: r.try_get("callback_secret_sealed")?,
        callback_ip_allowlist: r.try_get("callback_ip_allowlist")?,
        callback_time_zone: r.try_get("callback_time_zone")?,
        is_active: r.try_get("is_active")?,
        phone_region: r.try_get("phone_region")?,
        api_encoding: r.try_get("api_encoding")?,
        allowed_number_types: r.try_get("allowed_number_types")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Implements [`ConfigStore`] for one backend; the SQL is shared and portable.
macro_rules! sql_store {
    ($(#[$doc:meta])* $name:ident, $pool:ty, $backend:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            feed: Arc<Feed>,
        }

        impl $name {
            /// Wraps a migrated pool.
            pub fn new(pool: $pool) -> Self {
                Self { pool, feed: Arc::default() }
            }
        }

        #[async_trait]
        impl ConfigStore for $name {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn cache_epoch(&self) -> Result<Option<u64>, GwError> {
                self.epoch().await
            }

            async fn follow_changes(&self, stop: CancellationToken) {
                self.follow(stop).await;
            }

            async fn insert_config(&self, c: &ConfigRow) -> Result<(), GwError> {
                let res = sqlx::query(concat!(
                    "insert into infinity_call_configs (", config_cols!(), ") values \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
                      $21, $22, $23, $24, $25, $26, $27, $28, $29)"
                ))
                .bind(&c.config_id).bind(&c.tenant_id).bind(&c.supplier_id).bind(&c.api_url)
                .bind(&c.credential_mode).bind(&c.app_id).bind(&c.access_token_sealed).bind(&c.access_key_sealed)
                .bind(&c.caller_number_pool).bind(&c.default_caller_number).bind(&c.caller_number_selection)
                .bind(&c.call_mode).bind(&c.destination_prefix).bind(c.max_concurrent_calls)
                .bind(c.call_timeout_seconds).bind(c.api_timeout_ms).bind(&c.allocation_strategy)
                .bind(c.lease_ttl_seconds).bind(c.cooldown_seconds).bind(&c.callback_secret_sealed)
                .bind(&c.callback_ip_allowlist).bind(&c.callback_time_zone).bind(c.is_active)
                .bind(&c.phone_region).bind(&c.api_encoding).bind(c.version).bind(c.created_at).bind(c.updated_at)
                .bind(&c.allowed_number_types)
                .execute(&self.pool)
                .await;
                match res {
                    Ok(_) => {
                        self.feed.bump();
                        Ok(())
                    }
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Err(GwError::AlreadyExists(format!(
                        "tenant_id: tenant {} already has an Infinity call config",
                        c.tenant_id
                    ))),
                    Err(e) => Err(db_err(e)),
                }
            }

            async fn config_by_tenant(&self, tenant_id: &str) -> Result<Option<ConfigRow>, GwError> {
                let row = sqlx::query(concat!("select ", config_cols!(), " from infinity_call_configs where tenant_id = $1"))
                    .bind(tenant_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(config_from).transpose().map_err(db_err)
            }

            async fn config_by_id(&self, config_id: &str) -> Result<Option<ConfigRow>, GwError> {
                let row = sqlx::query(concat!("select ", config_cols!(), " from infinity_call_configs where config_id = $1"))
                    .bind(config_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(config_from).transpose().map_err(db_err)
            }

            async fn update_config(&self, c: &ConfigRow, expected: i64) -> Result<Versioned, GwError> {
                // One statement: the version check and the write cannot be separated.
                let done = sqlx::query(
                    "update infinity_call_configs set supplier_id = $3, api_url = $4, credential_mode = $5, \
                       app_id = $6, access_token_sealed = $7, access_key_sealed = $8, caller_number_pool = $9, \
                       default_caller_number = $10, caller_number_selection = $11, call_mode = $12, \
                       destination_prefix = $13, max_concurrent_calls = $14, call_timeout_seconds = $15, \
                       api_timeout_ms = $16, allocation_strategy = $17, lease_ttl_seconds = $18, \
                       cooldown_seconds = $19, callback_secret_sealed = $20, callback_ip_allowlist = $21, \
                       callback_time_zone = $22, is_active = $23, phone_region = $24, api_encoding = $25, \
                       version = $26, updated_at = $27, allowed_number_types = $29 \
                     where tenant_id = $1 and config_id = $2 and version = $28",
                )
                .bind(&c.tenant_id).bind(&c.config_id).bind(&c.supplier_id).bind(&c.api_url)
                .bind(&c.credential_mode).bind(&c.app_id).bind(&c.access_token_sealed).bind(&c.access_key_sealed)
                .bind(&c.caller_number_pool).bind(&c.default_caller_number).bind(&c.caller_number_selection)
                .bind(&c.call_mode).bind(&c.destination_prefix).bind(c.max_concurrent_calls)
                .bind(c.call_timeout_seconds).bind(c.api_timeout_ms).bind(&c.allocation_strategy)
                .bind(c.lease_ttl_seconds).bind(c.cooldown_seconds).bind(&c.callback_secret_sealed)
                .bind(&c.callback_ip_allowlist).bind(&c.callback_time_zone).bind(c.is_active)
                .bind(&c.phone_region).bind(&c.api_encoding).bind(c.version).bind(c.updated_at).bind(expected)
                .bind(&c.allowed_number_types)
                .execute(&self.pool)
                .await
                .map_err(db_err)?
                .rows_affected();
                if done == 1 {
                    self.feed.bump();
                    return Ok(Versioned::Updated);
                }
                let current: Option<i64> = sqlx::query_scalar("select version from infinity_call_configs where tenant_id = $1")
                    .bind(&c.tenant_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(current.map_or(Versioned::NotFound, Versioned::Stale))
            }

            async fn upsert_collector(&self, collector: &Collector) -> Result<Collector, GwError> {
                let c = &collector_row_from(collector);
                let row = sqlx::query(concat!(
                    "insert into collectors (", collector_cols!(), ") values ($1, $2, $3, $4, $5, $6, $7, $8) \
                     on conflict (tenant_id, collector_id) do update set callback_number = excluded.callback_number, \
                       display_name = excluded.display_name, active = excluded.active, updated_at = excluded.updated_at \
                     returning ", collector_cols!()
                ))
                .bind(&c.tenant_id).bind(&c.collector_id).bind(&c.callback_number).bind(&c.display_name)
                .bind(c.active).bind(&c.last_extension_number).bind(c.created_at).bind(c.updated_at)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
                self.feed.bump();
                collector_from(collector_row(&row).map_err(db_err)?)
            }

            async fn collector(&self, tenant_id: &str, collector_id: &str) -> Result<Option<Collector>, GwError> {
                let row = sqlx::query(concat!("select ", collector_cols!(), " from collectors where tenant_id = $1 and collector_id = $2"))
                    .bind(tenant_id)
                    .bind(collector_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(collector_row).transpose().map_err(db_err)?.map(collector_from).transpose()
            }

            async fn list_collectors(
                &self,
                tenant_id: &str,
                after: Option<&str>,
                active: Option<bool>,
                limit: u32,
            ) -> Result<Vec<Collector>, GwError> {
                let rows = sqlx::query(concat!(
                    "select ", collector_cols!(), " from collectors where tenant_id = $1 \
                     and ($2 is null or collector_id > $2) and ($3 is null or active = $3) \
                     order by collector_id limit $4"
                ))
                .bind(tenant_id)
                .bind(after)
                .bind(active)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter()
                    .map(|r| collector_row(r).map_err(db_err).and_then(collector_from))
                    .collect()
            }

            async fn delete_collector(&self, tenant_id: &str, collector_id: &str) -> Result<bool, GwError> {
                let n = sqlx::query("delete from collectors where tenant_id = $1 and collector_id = $2")
                    .bind(tenant_id)
                    .bind(collector_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                self.feed.bump();
                Ok(n == 1)
            }
        }
    };
}

sql_store!(
    /// The PostgreSQL implementation of [`GatewayStore`].
    PgGatewayStore,
    sqlx::PgPool,
    "postgres"
);
sql_store!(
    /// The SQLite implementation of [`GatewayStore`].
    SqliteGatewayStore,
    sqlx::SqlitePool,
    "sqlite"
);
