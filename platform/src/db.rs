//! Connects to the database named by a URL (`postgres://`, `mysql://` or `sqlite://`) and runs
//! migrations.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use sqlx::Executor;
use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// A database failure, classified once for both services: connection trouble is
/// [`DbError::Unavailable`] (the service answers `UNAVAILABLE` and the client may retry),
/// anything else is [`DbError::Other`] (the service logs it and answers `INTERNAL`).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The pool timed out or closed, the connection broke, or the server is shutting down or
    /// starting up (SQLSTATE class 08, 57P01, 57P03; MySQL's 1053 shutdown, MariaDB's 1927
    /// connection killed, 2006/2013 server gone).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database aborted the transaction for another one's sake (a deadlock, a lock-wait
    /// timeout, a serialization failure) and the store's retries ran out: the client may retry.
    #[error("database contention: {0}")]
    Contention(String),
    /// Any other failure.
    #[error(transparent)]
    Other(sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => Self::Unavailable(e.to_string()),
            sqlx::Error::Database(d)
                if d.code()
                    .is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "57P03") =>
            {
                Self::Unavailable(e.to_string())
            }
            sqlx::Error::Database(d)
                if d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|m| matches!(m.number(), 1053 | 1927 | 2006 | 2013)) =>
            {
                Self::Unavailable(e.to_string())
            }
            sqlx::Error::Database(_) if crate::sql::is_contention(&e) => {
                Self::Contention(e.to_string())
            }
            _ => Self::Other(e),
        }
    }
}

/// True for a unique-constraint violation (portable across backends).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Database settings shared by both services.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user@host:port/db`, `mysql://user:password@host:port/db` (MySQL 8.0+ or
    /// MariaDB 10.6+) or `sqlite://path/to/file.db`.
    pub url: String,
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long to wait for a free connection before failing with `UNAVAILABLE`.
    pub acquire_timeout_ms: u64,
    /// Run migrations when the service starts.
    pub migrate_on_start: bool,
}

impl DatabaseSettings {
    /// Default settings for a service whose embedded database file is `file` under `./data`.
    pub fn sqlite_default(file: &str) -> Self {
        Self {
            url: format!("sqlite://data/{file}"),
            max_connections: 8,
            acquire_timeout_ms: 5_000,
            migrate_on_start: true,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self::sqlite_default("service.db")
    }
}

/// A connection pool to one of the supported backends.
#[derive(Debug, Clone)]
pub enum DbPool {
    /// PostgreSQL.
    Postgres(PgPool),
    /// MySQL or MariaDB.
    MySql(MySqlPool),
    /// SQLite (WAL mode, one writer at a time).
    Sqlite(SqlitePool),
}

/// The migrations of one service, per backend.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Migrations for PostgreSQL.
    pub postgres: &'static Migrator,
    /// Migrations for MySQL and MariaDB; `None` for a service that does not run on it.
    pub mysql: Option<&'static Migrator>,
    /// Migrations for SQLite.
    pub sqlite: &'static Migrator,
}

impl DbPool {
    /// Connects to `settings.url`; a SQLite file and its folder are created if missing.
    ///
    /// # Errors
    /// Names the URL scheme when it is not supported, or the connection failure.
    pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(settings.acquire_timeout_ms.max(1));
        let url = settings.url.as_str();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)
                .map_err(|e| anyhow::anyhow!("database.url: not a valid PostgreSQL URL: {e}"))?;
            let pool = PgPoolOptions::new()
                .max_connections(settings.max_connections.max(1))
                .acquire_timeout(timeout)
                .connect_with(opts)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {e}"))?;
            Ok(Self::Postgres(pool))
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let opts = MySqlConnectOptions::from_str(&url)
                .map_err(|e| anyhow::anyhow!("database.url: not a valid MySQL URL: {e}"))?
                .charset("utf8mb4")
                .timezone(Some("+00:00".to_owned()));
            let pool = MySqlPoolOptions::new()
                .max_connections(settings.max_connections.max(1))
                .acquire_timeout(timeout)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // See `sql`: READ COMMITTED, no gap locks; strict mode, so a value that
                        // does not fit is an error instead of being cut.
                        conn.execute("set session transaction isolation level read committed")
                            .await?;
                        conn.execute(
                            "set session sql_mode = concat(@@sql_mode, ',STRICT_ALL_TABLES')",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to MySQL: {e}"))?;
            Ok(Self::MySql(pool))
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| anyhow::anyhow!("database.url: not a valid SQLite URL: {e}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                // Checkpoints run beside the writers (`sql::Checkpoints`), not in a commit.
                .pragma(
                    "wal_autocheckpoint",
                    crate::sql::LITE_FALLBACK_CHECKPOINT_PAGES.to_string(),
                )
                // A WAL that a long read or a big write pushed past this is cut back to it
                // when it next starts over, instead of staying at its largest for good.
                .pragma(
                    "journal_size_limit",
                    crate::sql::LITE_WAL_KEEP_BYTES.to_string(),
                );
            if let Some(parent) = opts.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    anyhow::anyhow!("cannot create folder {} for SQLite: {e}", parent.display())
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(settings.max_connections.max(1))
                .acquire_timeout(timeout)
                .connect_with(opts)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open SQLite database: {e}"))?;
            Ok(Self::Sqlite(pool))
        } else {
            anyhow::bail!(
                "database.url: must start with postgres://, mysql:// or sqlite://, got {url:?}"
            )
        }
    }

    /// Runs the pending migrations of this backend (idempotent; safe with several instances).
    ///
    /// # Errors
    /// Returns the migration failure.
    pub async fn migrate(&self, migrations: Migrations) -> anyhow::Result<()> {
        match self {
            Self::Postgres(p) => migrations.postgres.run(p).await?,
            Self::MySql(p) => match migrations.mysql {
                Some(m) => m.run(p).await?,
                None => anyhow::bail!("database.url: this service does not run on MySQL"),
            },
            Self::Sqlite(p) => migrations.sqlite.run(p).await?,
        }
        Ok(())
    }

    /// The backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::MySql(_) => "mysql",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Self::Postgres(p) => p.close().await,
            Self::MySql(p) => p.close().await,
            Self::Sqlite(p) => p.close().await,
        }
    }
}
