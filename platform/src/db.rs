//! Connects to the database named by a URL (`postgres://` or `sqlite://`) and runs migrations.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use sqlx::migrate::Migrator;
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
    /// starting up (SQLSTATE class 08, 57P01, 57P03).
    #[error("database unavailable: {0}")]
    Unavailable(String),
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
    /// `postgres://user@host:port/db` or `sqlite://path/to/file.db`.
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
    /// SQLite (WAL mode, one writer at a time).
    Sqlite(SqlitePool),
}

/// The migrations of one service, per backend.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Migrations for PostgreSQL.
    pub postgres: &'static Migrator,
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
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| anyhow::anyhow!("database.url: not a valid SQLite URL: {e}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
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
            anyhow::bail!("database.url: must start with postgres:// or sqlite://, got {url:?}")
        }
    }

    /// Runs the pending migrations of this backend (idempotent; safe with several instances).
    ///
    /// # Errors
    /// Returns the migration failure.
    pub async fn migrate(&self, migrations: Migrations) -> anyhow::Result<()> {
        match self {
            Self::Postgres(p) => migrations.postgres.run(p).await?,
            Self::Sqlite(p) => migrations.sqlite.run(p).await?,
        }
        Ok(())
    }

    /// The backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Self::Postgres(p) => p.close().await,
            Self::Sqlite(p) => p.close().await,
        }
    }
}
