//! One way of running SQL on every backend, so each service has one store instead of a copy
//! per database.
//!
//! Store code writes a statement once, with PostgreSQL's numbered placeholders (`$1`, `$2`,
//! a number may repeat), and passes its values as [`Arg`]s; [`Db`], [`Tx`] and [`Conn`] run it
//! on whichever backend the pool holds. MySQL's `?` placeholders are positional, so the text is
//! rewritten for it and the values bound in the order the placeholders appear. Rows come back
//! as [`Row`], read through typed getters that apply the storage conventions:
//!
//! | value  | PostgreSQL    | MySQL / MariaDB               | SQLite                                   |
//! |--------|---------------|-------------------------------|------------------------------------------|
//! | time   | `timestamptz` | `datetime(6)`, UTC            | text `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`  |
//! | uuid   | `uuid`        | `char(36)`, hyphenated        | text, hyphenated                         |
//! | bool   | `boolean`     | `boolean` (`tinyint(1)`)      | integer 0/1                              |
//!
//! SQLite times are fixed-width text, so comparing and sorting them as text is comparing and
//! sorting the instants. What genuinely differs between databases (the clock, locking clauses,
//! upserts, date arithmetic) comes from [`Dialect`], whose pieces a store splices into its text
//! once, when it is built.
//!
//! Transactions ([`Db::begin`]) run at READ COMMITTED on PostgreSQL and MySQL (set on every
//! MySQL connection, whose default is REPEATABLE READ: that level's gap and next-key locks would
//! make two inserts of different keys wait for each other and deadlock, and its snapshot would
//! hide rows committed by a transaction that a row lock made us wait for). SQLite writers start
//! with `begin immediate` and take this process's writer turn first (a fair queue instead of
//! SQLite's busy-handler sleeps), on this process's one writer connection: SQLite empties a
//! connection's page cache whenever another connection has written since it last looked, so
//! writers taking turns on the pool's connections would each start from an empty cache; the
//! one writer keeps it. [`retry`] reruns a whole transaction that the database
//! aborted as a deadlock or lock-wait timeout.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::mysql::{MySql, MySqlConnection, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{AssertSqlSafe, Column, Row as _, Transaction, TypeInfo, ValueRef};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

use crate::db::DbPool;

/// The three backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL 15+.
    Postgres,
    /// MySQL 8.0+ or MariaDB 10.6+.
    MySql,
    /// SQLite (bundled).
    Sqlite,
}

impl Backend {
    /// The name used in logs, metrics and `backend()`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::MySql => "mysql",
            Self::Sqlite => "sqlite",
        }
    }
}

/// A value bound to a statement.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// An integer.
    I64(i64),
    /// An integer or null.
    OptI64(Option<i64>),
    /// A 32-bit integer (an `integer` column on PostgreSQL).
    I32(i32),
    /// A 32-bit integer or null.
    OptI32(Option<i32>),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// Text.
    Text(&'a str),
    /// Text or null.
    OptText(Option<&'a str>),
    /// A uuid.
    Uuid(Uuid),
    /// A uuid or null.
    OptUuid(Option<Uuid>),
    /// A time.
    Time(DateTime<Utc>),
    /// A time or null.
    OptTime(Option<DateTime<Utc>>),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Self::I64(v)
    }
}
impl From<i32> for Arg<'_> {
    fn from(v: i32) -> Self {
        Self::I32(v)
    }
}
impl From<Option<i32>> for Arg<'_> {
    fn from(v: Option<i32>) -> Self {
        Self::OptI32(v)
    }
}
impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Self::OptText(v.as_deref())
    }
}
impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Self::I64(v.into())
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Self::OptI64(v)
    }
}
impl From<f64> for Arg<'_> {
    fn from(v: f64) -> Self {
        Self::F64(v)
    }
}
impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(v)
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(v)
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::OptText(v)
    }
}
impl From<Uuid> for Arg<'_> {
    fn from(v: Uuid) -> Self {
        Self::Uuid(v)
    }
}
impl From<Option<Uuid>> for Arg<'_> {
    fn from(v: Option<Uuid>) -> Self {
        Self::OptUuid(v)
    }
}
impl From<DateTime<Utc>> for Arg<'_> {
    fn from(v: DateTime<Utc>) -> Self {
        Self::Time(v)
    }
}
impl From<Option<DateTime<Utc>>> for Arg<'_> {
    fn from(v: Option<DateTime<Utc>>) -> Self {
        Self::OptTime(v)
    }
}

/// The argument list of a statement: `args![a, b]` is `&[Arg::from(a), Arg::from(b)]`.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        &[$($crate::sql::Arg::from($a)),*][..]
    };
}

/// The current time as SQLite stores it.
pub fn sqlite_now() -> String {
    sqlite_time(Utc::now())
}

/// A time as SQLite stores it: fixed-width RFC 3339 in UTC with microseconds.
pub fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Rewrites `$N` placeholders to MySQL's `?`, returning the text and, per `?`, the index of the
/// argument it takes. Text inside single quotes, double quotes and backticks (with backslash
/// escapes, as MySQL reads them) and comments (`-- ...`, `/* ... */`) is left alone.
///
/// # Errors
/// A `$N` with no argument `N` among `args` arguments.
pub fn positional(sql: &str, args: usize) -> Result<(String, Vec<usize>), sqlx::Error> {
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        match c {
            '\'' | '"' | '`' => {
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' && c != '`' {
                        if let Some(e) = chars.next() {
                            out.push(e);
                        }
                    } else if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut last = ' ';
                for d in chars.by_ref() {
                    out.push(d);
                    if last == '*' && d == '/' {
                        break;
                    }
                    last = d;
                }
            }
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.pop();
                let mut n = 0usize;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    chars.next();
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(d as usize))
                        .ok_or_else(|| protocol(format!("placeholder too large in: {sql}")))?;
                }
                if n == 0 || n > args {
                    return Err(protocol(format!(
                        "placeholder ${n} has no argument ({args} given) in: {sql}"
                    )));
                }
                order.push(n - 1);
                out.push('?');
            }
            _ => {}
        }
    }
    Ok((out, order))
}

fn protocol(m: String) -> sqlx::Error {
    sqlx::Error::Protocol(m)
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;
type MyQuery<'q> = sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>;
type LiteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

fn pg_query<'q>(sql: &str, args: &[Arg<'q>]) -> PgQuery<'q> {
    let mut q = sqlx::query(AssertSqlSafe(sql.to_owned()));
    for a in args {
        q = match *a {
            Arg::I64(v) => q.bind(v),
            Arg::OptI64(v) => q.bind(v),
            Arg::I32(v) => q.bind(v),
            Arg::OptI32(v) => q.bind(v),
            Arg::F64(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::OptText(v) => q.bind(v),
            Arg::Uuid(v) => q.bind(v),
            Arg::OptUuid(v) => q.bind(v),
            Arg::Time(v) => q.bind(v),
            Arg::OptTime(v) => q.bind(v),
        };
    }
    q
}

fn my_query<'q>(sql: &str, args: &[Arg<'q>]) -> Result<MyQuery<'q>, sqlx::Error> {
    let (text, order) = positional(sql, args.len())?;
    let mut q = sqlx::query(AssertSqlSafe(text));
    for &i in &order {
        q = match args[i] {
            Arg::I64(v) => q.bind(v),
            Arg::OptI64(v) => q.bind(v),
            Arg::I32(v) => q.bind(v),
            Arg::OptI32(v) => q.bind(v),
            Arg::F64(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::OptText(v) => q.bind(v),
            Arg::Uuid(v) => q.bind(v.hyphenated().to_string()),
            Arg::OptUuid(v) => q.bind(v.map(|v| v.hyphenated().to_string())),
            Arg::Time(v) => q.bind(v),
            Arg::OptTime(v) => q.bind(v),
        };
    }
    Ok(q)
}

fn lite_query<'q>(sql: &str, args: &[Arg<'q>]) -> LiteQuery<'q> {
    let mut q = sqlx::query(AssertSqlSafe(sql.to_owned()));
    for a in args {
        q = match *a {
            Arg::I64(v) => q.bind(v),
            Arg::OptI64(v) => q.bind(v),
            Arg::I32(v) => q.bind(v),
            Arg::OptI32(v) => q.bind(v),
            Arg::F64(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::OptText(v) => q.bind(v),
            Arg::Uuid(v) => q.bind(v.hyphenated().to_string()),
            Arg::OptUuid(v) => q.bind(v.map(|v| v.hyphenated().to_string())),
            Arg::Time(v) => q.bind(sqlite_time(v)),
            Arg::OptTime(v) => q.bind(v.map(sqlite_time)),
        };
    }
    q
}

/// A row of any backend.
#[derive(Debug)]
pub enum Row {
    /// PostgreSQL.
    Pg(PgRow),
    /// MySQL.
    My(MySqlRow),
    /// SQLite.
    Lite(SqliteRow),
}

fn decode_err(col: &str, what: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: what.into(),
    }
}

fn parse_uuid(col: &str, s: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(s).map_err(|_| decode_err(col, format!("not a uuid: {s:?}")))
}

impl Row {
    /// Text.
    ///
    /// # Errors
    /// A missing column or another type.
    pub fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        self.opt_text(col)?
            .ok_or_else(|| decode_err(col, "unexpected null".into()))
    }

    /// Text or null (on MySQL also a `JSON` column, which MariaDB reports as text anyway).
    ///
    /// # Errors
    /// A missing column or another type.
    pub fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        match self {
            Self::Pg(r) => r.try_get(col),
            Self::My(r) => {
                if r.try_get_raw(col)?.type_info().name() == "JSON" {
                    return r.try_get_unchecked(col);
                }
                r.try_get(col)
            }
            Self::Lite(r) => r.try_get(col),
        }
    }

    /// A 32-bit integer (an `integer` column).
    ///
    /// # Errors
    /// A missing column, null, or a value out of range.
    pub fn i32(&self, col: &str) -> Result<i32, sqlx::Error> {
        self.opt_i32(col)?
            .ok_or_else(|| decode_err(col, "unexpected null".into()))
    }

    /// A 32-bit integer or null.
    ///
    /// # Errors
    /// A missing column or a value out of range.
    pub fn opt_i32(&self, col: &str) -> Result<Option<i32>, sqlx::Error> {
        self.opt_i64(col)?
            .map(|v| i32::try_from(v).map_err(|_| decode_err(col, format!("out of range: {v}"))))
            .transpose()
    }

    /// An integer (on MySQL also a `DECIMAL`, which its `sum()` returns, when it is whole).
    ///
    /// # Errors
    /// A missing column, null, or a value that is not a whole number.
    pub fn i64(&self, col: &str) -> Result<i64, sqlx::Error> {
        self.opt_i64(col)?
            .ok_or_else(|| decode_err(col, "unexpected null".into()))
    }

    /// An integer or null.
    ///
    /// # Errors
    /// A missing column or a value that is not a whole number.
    pub fn opt_i64(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        match self {
            Self::Pg(r) => match r.try_get_raw(col)?.type_info().name() {
                "INT4" => Ok(r.try_get::<Option<i32>, _>(col)?.map(i64::from)),
                "INT2" => Ok(r.try_get::<Option<i16>, _>(col)?.map(i64::from)),
                _ => r.try_get(col),
            },
            Self::Lite(r) => r.try_get(col),
            Self::My(r) => {
                let raw = r.try_get_raw(col)?;
                if raw.is_null() {
                    return Ok(None);
                }
                let ty = raw.type_info().name().to_owned();
                if ty == "DECIMAL" {
                    let s: String = r.try_get_unchecked(col)?;
                    let whole = s.strip_suffix(".0").unwrap_or(&s);
                    return whole
                        .parse()
                        .map(Some)
                        .map_err(|_| decode_err(col, format!("not a whole number: {s:?}")));
                }
                if ty.contains("UNSIGNED") {
                    let v: u64 = r.try_get(col)?;
                    return i64::try_from(v)
                        .map(Some)
                        .map_err(|_| decode_err(col, format!("out of range: {v}")));
                }
                if ty == "BOOLEAN" {
                    let v: bool = r.try_get(col)?;
                    return Ok(Some(i64::from(v)));
                }
                r.try_get(col)
            }
        }
    }

    /// A float (on MySQL also a `DECIMAL`).
    ///
    /// # Errors
    /// A missing column or another type.
    pub fn f64(&self, col: &str) -> Result<f64, sqlx::Error> {
        match self {
            Self::Pg(r) => r.try_get(col),
            Self::Lite(r) => r.try_get(col),
            Self::My(r) => {
                let raw = r.try_get_raw(col)?;
                if raw.type_info().name() == "DECIMAL" {
                    let s: String = r.try_get_unchecked(col)?;
                    return s
                        .parse()
                        .map_err(|_| decode_err(col, format!("not a number: {s:?}")));
                }
                r.try_get(col)
            }
        }
    }

    /// A boolean (on MySQL and SQLite also an integer: 0 is false).
    ///
    /// # Errors
    /// A missing column, null or another type.
    pub fn bool(&self, col: &str) -> Result<bool, sqlx::Error> {
        match self {
            Self::Pg(r) => r.try_get(col),
            Self::Lite(r) => r.try_get(col),
            Self::My(_) => Ok(self.i64(col)? != 0),
        }
    }

    /// A uuid.
    ///
    /// # Errors
    /// A missing column or a value that is not a uuid.
    pub fn uuid(&self, col: &str) -> Result<Uuid, sqlx::Error> {
        self.opt_uuid(col)?
            .ok_or_else(|| decode_err(col, "unexpected null".into()))
    }

    /// A uuid or null.
    ///
    /// # Errors
    /// A missing column or a value that is not a uuid.
    pub fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, sqlx::Error> {
        match self {
            Self::Pg(r) => r.try_get(col),
            _ => self.opt_text(col)?.map(|s| parse_uuid(col, &s)).transpose(),
        }
    }

    /// A time.
    ///
    /// # Errors
    /// A missing column, null or a value that is not a time.
    pub fn time(&self, col: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        self.opt_time(col)?
            .ok_or_else(|| decode_err(col, "unexpected null".into()))
    }

    /// A time or null.
    ///
    /// # Errors
    /// A missing column or a value that is not a time.
    pub fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        match self {
            Self::Pg(r) => r.try_get(col),
            Self::My(r) => r.try_get(col),
            Self::Lite(r) => {
                let s: Option<String> = r.try_get(col)?;
                s.map(|s| {
                    DateTime::parse_from_rfc3339(&s)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|_| decode_err(col, format!("not an RFC 3339 time: {s:?}")))
                })
                .transpose()
            }
        }
    }

    /// The names of the columns, in order.
    pub fn columns(&self) -> Vec<String> {
        match self {
            Self::Pg(r) => r.columns().iter().map(|c| c.name().to_owned()).collect(),
            Self::My(r) => r.columns().iter().map(|c| c.name().to_owned()).collect(),
            Self::Lite(r) => r.columns().iter().map(|c| c.name().to_owned()).collect(),
        }
    }
}

/// A connection of any backend, borrowed for one statement.
pub enum Exec<'c> {
    /// PostgreSQL.
    Pg(&'c mut PgConnection),
    /// MySQL.
    My(&'c mut MySqlConnection),
    /// SQLite.
    Lite(&'c mut SqliteConnection),
}

impl Exec<'_> {
    /// Runs a statement; the rows it changed.
    ///
    /// # Errors
    /// The database's.
    pub async fn execute(self, sql: &str, args: &[Arg<'_>]) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Self::Pg(c) => pg_query(sql, args).execute(c).await?.rows_affected(),
            Self::My(c) => my_query(sql, args)?.execute(c).await?.rows_affected(),
            Self::Lite(c) => lite_query(sql, args).execute(c).await?.rows_affected(),
        })
    }

    /// Runs a query; every row.
    ///
    /// # Errors
    /// The database's.
    pub async fn fetch_all(self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Self::Pg(c) => pg_query(sql, args)
                .fetch_all(c)
                .await?
                .into_iter()
                .map(Row::Pg)
                .collect(),
            Self::My(c) => my_query(sql, args)?
                .fetch_all(c)
                .await?
                .into_iter()
                .map(Row::My)
                .collect(),
            Self::Lite(c) => lite_query(sql, args)
                .fetch_all(c)
                .await?
                .into_iter()
                .map(Row::Lite)
                .collect(),
        })
    }

    /// Runs a query; its first row, if any.
    ///
    /// # Errors
    /// The database's.
    pub async fn fetch_optional(
        self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Self::Pg(c) => pg_query(sql, args).fetch_optional(c).await?.map(Row::Pg),
            Self::My(c) => my_query(sql, args)?.fetch_optional(c).await?.map(Row::My),
            Self::Lite(c) => lite_query(sql, args)
                .fetch_optional(c)
                .await?
                .map(Row::Lite),
        })
    }

    /// Runs a query that returns exactly one row.
    ///
    /// # Errors
    /// The database's, or `RowNotFound`.
    pub async fn fetch_one(self, sql: &str, args: &[Arg<'_>]) -> Result<Row, sqlx::Error> {
        self.fetch_optional(sql, args)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }
}

/// A pooled connection of any backend (reads outside a transaction).
pub enum Conn {
    /// PostgreSQL.
    Pg(PoolConnection<Postgres>),
    /// MySQL.
    My(PoolConnection<MySql>),
    /// SQLite.
    Lite(PoolConnection<Sqlite>),
}

impl Conn {
    /// The connection, for one statement.
    pub fn exec(&mut self) -> Exec<'_> {
        match self {
            Self::Pg(c) => Exec::Pg(c),
            Self::My(c) => Exec::My(c),
            Self::Lite(c) => Exec::Lite(c),
        }
    }
}

/// A transaction of any backend; rolled back when dropped uncommitted.
pub enum Tx {
    /// PostgreSQL.
    Pg(Transaction<'static, Postgres>),
    /// MySQL.
    My(Transaction<'static, MySql>),
    /// SQLite, holding this process's writer turn when it writes.
    Lite(
        Transaction<'static, Sqlite>,
        Option<OwnedMutexGuard<WriterSlot>>,
    ),
}

impl Tx {
    /// The transaction's connection, for one statement.
    pub fn exec(&mut self) -> Exec<'_> {
        match self {
            Self::Pg(t) => Exec::Pg(t),
            Self::My(t) => Exec::My(t),
            Self::Lite(t, _) => Exec::Lite(t),
        }
    }

    /// Commits.
    ///
    /// # Errors
    /// The database's.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Pg(t) => t.commit().await,
            Self::My(t) => t.commit().await,
            Self::Lite(t, _turn) => t.commit().await,
        }
    }

    /// Rolls back.
    ///
    /// # Errors
    /// The database's.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Pg(t) => t.rollback().await,
            Self::My(t) => t.rollback().await,
            Self::Lite(t, _turn) => t.rollback().await,
        }
    }
}

/// What a transaction will do, which decides how SQLite begins it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// It writes: on SQLite, `begin immediate` after this process's writer turn.
    Write,
    /// It only reads: a plain `begin`.
    Read,
}

/// SQLite: the writer connection between two [`Db::write`]s, kept out of its pool (sqlx pings a
/// connection returned to a pool, one more trip to its thread, before the next writer may take
/// it). Empty before the first write, while a write or a write transaction has the connection,
/// and after a transaction or a failed or dropped write, until the next write takes the
/// connection from the writer pool again.
#[derive(Debug, Default)]
pub struct WriterSlot(Option<PoolConnection<Sqlite>>);

impl Drop for WriterSlot {
    fn drop(&mut self) {
        // A connection dropped back to its pool is returned by a spawned task; with no runtime
        // left (the last `Db` dropped outside one) it is closed here instead.
        if tokio::runtime::Handle::try_current().is_err()
            && let Some(conn) = self.0.take()
        {
            drop(conn.detach());
        }
    }
}

/// A pool of any backend, with what the store layer needs of it.
#[derive(Debug, Clone)]
pub struct Db {
    pool: DbPool,
    /// SQLite writers of this process queue here, in order, before `begin immediate`.
    writer: Arc<Mutex<WriterSlot>>,
    /// SQLite: the one connection writers use (see the module's notes), opened on first use
    /// with the pool's connection options.
    lite_writer: Option<SqlitePool>,
    /// SQLite: WAL checkpoints run beside the writer, not in its commits.
    checkpoints: Arc<Checkpoints>,
}

/// SQLite checkpoints the WAL into the database file when a commit takes the WAL past
/// `wal_autocheckpoint` pages (1,000 by default), in that commit: about one write in a
/// hundred waited several milliseconds for it (the allocator's Acquire + Release p99 at 1
/// client: 4.4 ms against a p50 of 0.23). Every connection's mark is raised to
/// [`LITE_FALLBACK_CHECKPOINT_PAGES`] instead, and every [`LITE_CHECKPOINT_EVERY`] writes
/// (through [`Db::write`], [`Db::begin`] for writing, or [`Db::execute`]) a passive checkpoint
/// runs on a pooled connection in a task of its own (one at a time), while writers go on. A
/// passive checkpoint never blocks a writer; when it has copied the whole WAL and no reader
/// holds an older snapshot, the next write starts the WAL over. If writes never pause, that
/// happens only after a commit's own checkpoint at the raised mark (4 KiB pages: about 40 MiB,
/// and the file stays that size); a long read can hold it back, as before, and a file that
/// grew past [`LITE_WAL_KEEP_BYTES`] meanwhile is cut back to that when the WAL starts over.
#[derive(Debug, Default)]
pub struct Checkpoints {
    writes: AtomicU64,
    running: AtomicBool,
    done: AtomicU64,
}

/// Clears [`Checkpoints`]' running flag when the checkpoint task ends, however it ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Writes (SQLite: on the writer connection, or single statements through the pool) between
/// two background checkpoints.
pub const LITE_CHECKPOINT_EVERY: u64 = 100;
/// Every SQLite connection's own `wal_autocheckpoint` (set by [`crate::db::DbPool::connect`]):
/// a commit checkpoints in line only past this many pages, if background checkpoints fall
/// behind.
pub const LITE_FALLBACK_CHECKPOINT_PAGES: u32 = 10_000;
/// Every SQLite connection's `journal_size_limit`: the largest `-wal` file kept after the WAL
/// starts over. Above the 10,000-page mark (about 40 MiB with 4 KiB pages), so the usual cycle
/// never truncates; a WAL that grew past it (a long read held checkpoints back, or one big
/// transaction) is cut back to it, not kept at its largest.
pub const LITE_WAL_KEEP_BYTES: u64 = 64 * 1024 * 1024;

impl Db {
    /// Wraps a connected pool.
    pub fn new(pool: DbPool) -> Self {
        let lite_writer = match &pool {
            DbPool::Sqlite(p) => Some(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .acquire_timeout(p.options().get_acquire_timeout())
                    // A file the process holds open does not go away between two writes: no
                    // ping before each; kept open, it keeps its page cache.
                    .test_before_acquire(false)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_lazy_with((*p.connect_options()).clone()),
            ),
            _ => None,
        };
        Self {
            pool,
            writer: Arc::new(Mutex::new(WriterSlot::default())),
            lite_writer,
            checkpoints: Arc::default(),
        }
    }

    /// SQLite: background checkpoints finished so far (see [`Checkpoints`]).
    pub fn checkpoints_done(&self) -> u64 {
        self.checkpoints.done.load(Ordering::Acquire)
    }

    /// SQLite: counts a write (on the writer connection, or one statement through the pool);
    /// every [`LITE_CHECKPOINT_EVERY`]th starts a passive checkpoint in a task of its own
    /// unless one is running.
    fn wrote(&self) {
        let DbPool::Sqlite(pool) = &self.pool else {
            return;
        };
        let n = self.checkpoints.writes.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_multiple_of(LITE_CHECKPOINT_EVERY)
            || tokio::runtime::Handle::try_current().is_err()
            || self.checkpoints.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (pool, state) = (pool.clone(), Arc::clone(&self.checkpoints));
        tokio::spawn(async move {
            // Cleared however the task ends (a panic, the runtime dropping it).
            let _running = Running(&state.running);
            let ran = match pool.acquire().await {
                Ok(mut c) => {
                    sqlx::query("pragma wal_checkpoint(PASSIVE)")
                        .fetch_one(&mut *c)
                        .await
                }
                Err(e) => Err(e),
            };
            match ran.and_then(|r| {
                Ok((
                    sqlx::Row::try_get::<i64, _>(&r, "busy")?,
                    sqlx::Row::try_get::<i64, _>(&r, "log")?,
                    sqlx::Row::try_get::<i64, _>(&r, "checkpointed")?,
                ))
            }) {
                // Every frame copied: the next write starts the WAL over.
                Ok((0, log, done)) if done >= log => {
                    state.done.fetch_add(1, Ordering::AcqRel);
                }
                // Frames a reader still needs, or written meanwhile: the next round copies them.
                Ok((busy, log, done)) => {
                    tracing::debug!(busy, log, done, "background WAL checkpoint partial");
                }
                Err(sqlx::Error::PoolClosed) => {}
                Err(e) => tracing::warn!(error = %e, "background WAL checkpoint failed"),
            }
        });
    }

    /// The pool.
    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// SQLite: whether a write holds the writer turn at this moment (a write started now would
    /// wait for it). Always false on the other backends. A hint for coalescing, not a lock: it
    /// can change as soon as it is read.
    pub fn writer_busy(&self) -> bool {
        self.lite_writer.is_some() && self.writer.try_lock().is_err()
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self.pool {
            DbPool::Postgres(_) => Backend::Postgres,
            DbPool::MySql(_) => Backend::MySql,
            DbPool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The backend's SQL pieces.
    pub fn dialect(&self) -> Dialect {
        Dialect(self.backend())
    }

    /// Starts a transaction (READ COMMITTED on PostgreSQL and MySQL).
    ///
    /// # Errors
    /// The database's.
    pub async fn begin(&self, mode: Mode) -> Result<Tx, sqlx::Error> {
        Ok(match &self.pool {
            DbPool::Postgres(p) => Tx::Pg(p.begin().await?),
            DbPool::MySql(p) => Tx::My(p.begin().await?),
            DbPool::Sqlite(p) => match mode {
                Mode::Write => {
                    let mut turn = Arc::clone(&self.writer).lock_owned().await;
                    if p.is_closed() {
                        return Err(sqlx::Error::PoolClosed);
                    }
                    // The connection a `write` kept goes back to the writer pool, to be taken
                    // again as the transaction's own.
                    drop(turn.0.take());
                    let writer = self.lite_writer.as_ref().unwrap_or(p);
                    let tx = writer.begin_with("begin immediate").await?;
                    self.wrote();
                    Tx::Lite(tx, Some(turn))
                }
                Mode::Read => Tx::Lite(p.begin().await?, None),
            },
        })
    }

    /// Runs one writing statement as its own transaction and answers every row it returns: on
    /// SQLite on the writer connection, in this process's writer turn (no `begin immediate`
    /// and commit round trips: SQLite takes the write lock when the statement starts).
    ///
    /// # Errors
    /// The database's.
    pub async fn write(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, sqlx::Error> {
        match (&self.pool, &self.lite_writer) {
            (DbPool::Sqlite(p), Some(writer)) => {
                let mut turn = self.writer.lock().await;
                if p.is_closed() {
                    return Err(sqlx::Error::PoolClosed);
                }
                // Out of the slot while it runs: if this future is dropped half-way, the
                // connection goes back to the pool (which checks it) instead of the slot.
                let mut conn = match turn.0.take() {
                    Some(c) => c,
                    None => writer.acquire().await?,
                };
                let rows = Exec::Lite(&mut conn).fetch_all(sql, args).await?;
                turn.0 = Some(conn);
                self.wrote();
                Ok(rows)
            }
            _ => self.fetch_all(sql, args).await,
        }
    }

    /// A connection for reads outside a transaction.
    ///
    /// # Errors
    /// The pool's.
    pub async fn conn(&self) -> Result<Conn, sqlx::Error> {
        Ok(match &self.pool {
            DbPool::Postgres(p) => Conn::Pg(p.acquire().await?),
            DbPool::MySql(p) => Conn::My(p.acquire().await?),
            DbPool::Sqlite(p) => Conn::Lite(p.acquire().await?),
        })
    }

    /// Runs one statement on its own (one implicit transaction).
    ///
    /// # Errors
    /// The database's.
    pub async fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, sqlx::Error> {
        let n = self.conn().await?.exec().execute(sql, args).await?;
        self.wrote();
        Ok(n)
    }

    /// Runs one query on its own; every row.
    ///
    /// # Errors
    /// The database's.
    pub async fn fetch_all(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, sqlx::Error> {
        self.conn().await?.exec().fetch_all(sql, args).await
    }

    /// Runs one query on its own; its first row.
    ///
    /// # Errors
    /// The database's.
    pub async fn fetch_optional(
        &self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, sqlx::Error> {
        self.conn().await?.exec().fetch_optional(sql, args).await
    }

    /// Runs one query on its own that returns exactly one row.
    ///
    /// # Errors
    /// The database's, or `RowNotFound`.
    pub async fn fetch_one(&self, sql: &str, args: &[Arg<'_>]) -> Result<Row, sqlx::Error> {
        self.conn().await?.exec().fetch_one(sql, args).await
    }
}

/// The SQL pieces that differ between backends, for a store to splice into its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect(pub Backend);

impl Dialect {
    /// The database clock, read when the statement runs (so every instance shares one clock).
    pub fn now(self) -> &'static str {
        match self.0 {
            Backend::Postgres => "clock_timestamp()",
            Backend::MySql => "utc_timestamp(6)",
            Backend::Sqlite => "strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')",
        }
    }

    /// The time `secs` (an integer SQL expression) after the time `t` (an SQL expression).
    pub fn plus_secs(self, t: &str, secs: &str) -> String {
        match self.0 {
            Backend::Postgres => format!("({t} + make_interval(secs => {secs}))"),
            Backend::MySql => format!("({t} + interval {secs} second)"),
            Backend::Sqlite => {
                format!("strftime('%Y-%m-%dT%H:%M:%f000+00:00', {t}, ({secs}) || ' seconds')")
            }
        }
    }

    /// Seconds from time `a` to time `b`, as a float.
    pub fn secs_between(self, a: &str, b: &str) -> String {
        match self.0 {
            Backend::Postgres => format!("extract(epoch from ({b}) - ({a}))::float8"),
            Backend::MySql => format!("(timestampdiff(microsecond, {a}, {b}) / 1000000.0)"),
            Backend::Sqlite => format!("((julianday({b}) - julianday({a})) * 86400.0)"),
        }
    }

    /// The smaller of two values (`least` is an aggregate-free `min` on SQLite).
    pub fn least(self, a: &str, b: &str) -> String {
        match self.0 {
            Backend::Sqlite => format!("min({a}, {b})"),
            _ => format!("least({a}, {b})"),
        }
    }

    /// The larger of two values.
    pub fn greatest(self, a: &str, b: &str) -> String {
        match self.0 {
            Backend::Sqlite => format!("max({a}, {b})"),
            _ => format!("greatest({a}, {b})"),
        }
    }

    /// Locks the selected rows until commit (nothing on SQLite, whose writers hold the
    /// database's one write lock).
    pub fn for_update(self) -> &'static str {
        match self.0 {
            Backend::Sqlite => "",
            _ => " for update",
        }
    }

    /// Locks the selected rows, skipping rows another transaction holds.
    pub fn skip_locked(self) -> &'static str {
        match self.0 {
            Backend::Sqlite => "",
            _ => " for update skip locked",
        }
    }

    /// `insert into {table} ({cols}) values {rows}` (`rows` as `($1, $2), ($3, $4)`) that
    /// skips a row whose `key` exists (MySQL: a no-op update of the key's first column, so no
    /// other error is swallowed as `insert ignore` would).
    pub fn insert_or_ignore(self, table: &str, cols: &str, rows: &str, key: &str) -> String {
        match self.0 {
            Backend::MySql => {
                let first = key.split(',').next().unwrap_or(key).trim();
                format!(
                    "insert into {table} ({cols}) values {rows} \
                     on duplicate key update {first} = {first}"
                )
            }
            _ => {
                format!("insert into {table} ({cols}) values {rows} on conflict ({key}) do nothing")
            }
        }
    }

    /// `insert into {table} ({cols}) values {rows}` that updates `set` (`col = value` pairs,
    /// where a value may name the inserted row's column as `new(col)`) where the `key` exists.
    /// MySQL gets `values(col)`, which MariaDB and MySQL 8 both accept (MySQL's newer row
    /// alias is not MariaDB syntax).
    pub fn upsert(self, table: &str, cols: &str, rows: &str, key: &str, set: &str) -> String {
        match self.0 {
            Backend::MySql => format!(
                "insert into {table} ({cols}) values {rows} on duplicate key update {}",
                replace_call(set, "new(", "values(")
            ),
            _ => format!(
                "insert into {table} ({cols}) values {rows} on conflict ({key}) do update set {}",
                replace_call(set, "new(", "(excluded.")
            ),
        }
    }

    /// Whether `update`, `insert` and `delete` may end in `returning` (MySQL 8 has no such
    /// clause; MariaDB lacks it on `update`).
    pub fn has_returning(self) -> bool {
        self.0 != Backend::MySql
    }
}

/// Replaces `call` where it starts a word (so `new(` but not `renew(`).
fn replace_call(text: &str, call: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(call) {
        let word_start = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        out.push_str(&rest[..i]);
        out.push_str(if word_start { with } else { call });
        rest = &rest[i + call.len()..];
    }
    out.push_str(rest);
    out
}

/// True for an error that aborted the transaction because of another one and goes away when
/// the transaction is run again: a deadlock (PostgreSQL 40P01, MySQL 1213), a serialization
/// failure (40001) or a lock-wait timeout (MySQL 1205).
pub fn is_contention(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(my.number(), 1205 | 1213);
    }
    d.code().is_some_and(|c| c == "40P01" || c == "40001")
}

/// How many times [`retry`] runs a transaction at most.
pub const CONTENTION_ATTEMPTS: u32 = 5;

/// Runs `op` (a whole transaction) again while it fails with contention (`is_contention` says
/// which errors), up to [`CONTENTION_ATTEMPTS`] times in all, after a short random pause that
/// grows with each attempt. The last error is returned as it is.
///
/// # Errors
/// `op`'s last error.
pub async fn retry<T, E, F, Fut>(is_contention: impl Fn(&E) -> bool, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if attempt < CONTENTION_ATTEMPTS && is_contention(&e) => {
                tracing::debug!(
                    attempt,
                    "transaction aborted by the database for another; running it again"
                );
                let base = 2u64.saturating_pow(attempt);
                let jitter = u64::from(Uuid::new_v4().as_bytes()[0]) % (base * 2 + 1);
                tokio::time::sleep(std::time::Duration::from_millis(base + jitter)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// SQLite's writer connection is handed between single-statement writes, write
    /// transactions, and a write dropped while its statement runs, without any of them waiting
    /// for a connection that was never handed back (the pool's acquire timeout is a minute; the
    /// test gives the whole run 30 s).
    #[tokio::test]
    async fn sqlite_writes_hand_the_writer_connection_on() {
        let (dir, pool, db) = sqlite_db().await;
        db.execute("create table t (n integer not null)", args![])
            .await
            .unwrap();
        let run = async {
            for i in 0..20_i64 {
                let rows = db
                    .write("insert into t (n) values ($1) returning n", args![i])
                    .await
                    .unwrap();
                assert_eq!(rows.len(), 1);
                let mut tx = db.begin(Mode::Write).await.unwrap();
                tx.exec()
                    .execute("insert into t (n) values ($1)", args![-i])
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
            // A slow write, polled once and dropped: it took the connection a write left in the
            // slot and sent its statement, which SQLite runs to its end.
            db.write("insert into t (n) values (999)", args![])
                .await
                .unwrap();
            let slow = db.write(
                "insert into t (n) select count(*) from (with recursive c(x) as \
                 (select 1 union all select x + 1 from c where x < 300000) select x from c)",
                args![],
            );
            let mut slow = Box::pin(slow);
            assert!(futures::poll!(&mut slow).is_pending());
            drop(slow);
            db.write("insert into t (n) values (1000)", args![])
                .await
                .unwrap();
            let mut tx = db.begin(Mode::Write).await.unwrap();
            tx.exec()
                .execute("insert into t (n) values (1001)", args![])
                .await
                .unwrap();
            tx.commit().await.unwrap();
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .expect("a writer waited for the writer connection");
        let n = db
            .fetch_one(
                "select count(*) as n from t \
                 where n between -19 and 19 or n in (999, 1000, 1001, 300000)",
                args![],
            )
            .await
            .unwrap()
            .i64("n")
            .unwrap();
        assert_eq!(n, 44);
        pool.close().await;
        let closed = db.write("insert into t (n) values (1)", args![]).await;
        assert!(matches!(closed, Err(sqlx::Error::PoolClosed)), "{closed:?}");
        let closed = db.begin(Mode::Write).await.err();
        assert!(
            matches!(closed, Some(sqlx::Error::PoolClosed)),
            "{closed:?}"
        );
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A `Db` whose writer slot holds a connection, dropped after its runtime is gone: the
    /// connection is closed in place (returning it to its pool would need the runtime).
    #[test]
    fn a_db_dropped_outside_a_runtime_closes_its_writer_connection() {
        let (dir, settings) = sqlite_file();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let db = rt.block_on(async {
            let db = Db::new(DbPool::connect(&settings).await.unwrap());
            db.execute("create table t (n integer)", args![])
                .await
                .unwrap();
            db.write("insert into t (n) values (1)", args![])
                .await
                .unwrap();
            db
        });
        drop(rt);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// SQLite's WAL is checkpointed beside the writer: the connections' own mark is
    /// raised, and every [`LITE_CHECKPOINT_EVERY`] writes a passive checkpoint runs on a
    /// pooled connection. Ten rounds of exactly that many writes, each round waiting until its
    /// checkpoint is counted as complete, keep the WAL file under 500 pages: each checkpoint
    /// copied the whole WAL, so the next write started it over. Without them the 1,000 writes
    /// (two pages each at least: the row's page and the table's) would all still be in it.
    #[tokio::test]
    async fn sqlite_checkpoints_run_beside_the_writer() {
        let (dir, pool, db) = sqlite_db().await;
        db.execute(
            "create table t (n integer not null, pad text not null)",
            args![],
        )
        .await
        .unwrap();
        let pad = "x".repeat(600);
        for round in 1..=10_u64 {
            // The create table was the first counted write: each round ends on a checkpoint's
            // write, so no write runs beside it and it copies the whole WAL.
            let writes = if round == 1 {
                LITE_CHECKPOINT_EVERY - 1
            } else {
                LITE_CHECKPOINT_EVERY
            };
            for i in 0..writes {
                let n = i64::try_from(i).unwrap();
                db.write(
                    "insert into t (n, pad) values ($1, $2)",
                    args![n, pad.as_str()],
                )
                .await
                .unwrap();
            }
            let counted = async {
                while db.checkpoints_done() < round {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(30), counted)
                .await
                .unwrap_or_else(|_| panic!("round {round}: no complete checkpoint counted"));
        }
        let page: i64 = {
            let r = db.fetch_one("pragma page_size", args![]).await.unwrap();
            r.i64("page_size").unwrap()
        };
        let wal = std::fs::metadata(dir.join("w.db-wal")).unwrap().len();
        assert!(
            wal < 500 * u64::try_from(page).unwrap(),
            "the WAL holds {wal} bytes after 1,000 writes"
        );
        // Read on the writer connection (a write transaction), after the rounds.
        let mut tx = db.begin(Mode::Write).await.unwrap();
        let mark = tx
            .exec()
            .fetch_one("pragma wal_autocheckpoint", args![])
            .await
            .unwrap();
        assert_eq!(
            mark.i64("wal_autocheckpoint").unwrap(),
            i64::from(LITE_FALLBACK_CHECKPOINT_PAGES)
        );
        tx.commit().await.unwrap();
        pool.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A WAL that grew past [`LITE_WAL_KEEP_BYTES`] (here one 80 MB transaction; in service, a
    /// long read that held every checkpoint back) is cut back to it when it starts over, where
    /// SQLite would keep the file at its largest for good.
    #[tokio::test]
    async fn sqlite_wal_is_cut_back_after_it_grew() {
        let (dir, pool, db) = sqlite_db().await;
        db.execute("create table b (v blob not null)", args![])
            .await
            .unwrap();
        let wal_bytes = || std::fs::metadata(dir.join("w.db-wal")).unwrap().len();
        db.write(
            "with recursive n(i) as (select 1 union all select i + 1 from n where i < 80) \
             insert into b (v) select randomblob(1000000) from n",
            args![],
        )
        .await
        .unwrap();
        let grown = wal_bytes();
        assert!(
            grown > LITE_WAL_KEEP_BYTES,
            "the 80 MB write left a WAL of only {grown} bytes"
        );
        // Copy all of it into the database file; then the next write starts the WAL over.
        let done = db
            .fetch_one("pragma wal_checkpoint(PASSIVE)", args![])
            .await
            .unwrap();
        assert_eq!(done.i64("busy").unwrap(), 0);
        assert_eq!(
            done.i64("log").unwrap(),
            done.i64("checkpointed").unwrap(),
            "the checkpoint did not copy the whole WAL"
        );
        db.write("delete from b where rowid = 1", args![])
            .await
            .unwrap();
        let kept = wal_bytes();
        assert!(
            kept <= LITE_WAL_KEEP_BYTES,
            "the WAL was not cut back: {kept} bytes after starting over (it had grown to {grown})"
        );
        pool.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A [`Db`] over a fresh SQLite file ([`sqlite_file`]): the folder, the pool (to close) and
    /// the `Db`.
    async fn sqlite_db() -> (std::path::PathBuf, DbPool, Db) {
        let (dir, settings) = sqlite_file();
        let pool = DbPool::connect(&settings).await.unwrap();
        let db = Db::new(pool.clone());
        (dir, pool, db)
    }

    /// A fresh SQLite file in a folder of its own, and settings for it.
    fn sqlite_file() -> (std::path::PathBuf, crate::db::DatabaseSettings) {
        let dir = std::env::temp_dir().join(format!("cco-writer-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut settings = crate::db::DatabaseSettings::sqlite_default("x");
        settings.url = format!("sqlite://{}", dir.join("w.db").display());
        settings.acquire_timeout_ms = 60_000;
        (dir, settings)
    }

    #[test]
    fn positional_rewrites_in_order_and_repeats() {
        let (sql, order) =
            positional("select $2, '$1', $1 where a = $2 and b = \"$3\"", 2).unwrap();
        assert_eq!(sql, "select ?, '$1', ? where a = ? and b = \"$3\"");
        assert_eq!(order, [1, 0, 1]);
    }

    #[test]
    fn positional_leaves_comments_and_escaped_quotes_alone() {
        let (sql, order) = positional(
            "select 'it\\'s $1', $2 -- don't $1\n/* $2 ' */ from t where a = $1",
            2,
        )
        .unwrap();
        assert_eq!(
            sql,
            "select 'it\\'s $1', ? -- don't $1\n/* $2 ' */ from t where a = ?"
        );
        assert_eq!(order, [1, 0]);
    }

    #[test]
    fn upserts_name_the_new_row_only_where_asked() {
        let my = Dialect(Backend::MySql).upsert("t", "k, v", "($1, $2)", "k", "v = renew(new(v))");
        assert!(my.ends_with("v = renew(values(v))"), "{my}");
    }

    #[test]
    fn positional_refuses_a_missing_argument() {
        let e = positional("select $3", 2).unwrap_err();
        assert!(e.to_string().contains("$3"), "{e}");
        assert!(positional("select $0", 2).is_err());
        assert!(positional("select $99999999999999999999999", 2).is_err());
    }

    #[test]
    fn sqlite_times_sort_as_text() {
        let a = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let b = DateTime::from_timestamp(1_700_000_000, 1_000).unwrap();
        let c = DateTime::from_timestamp(1_700_000_001, 0).unwrap();
        let (ta, tb, tc) = (sqlite_time(a), sqlite_time(b), sqlite_time(c));
        assert_eq!(ta, "2023-11-14T22:13:20.000000+00:00");
        assert!(ta < tb && tb < tc);
        assert_eq!(ta.len(), tc.len());
    }

    #[test]
    fn upserts_per_backend() {
        let pg = Dialect(Backend::Postgres).upsert("t", "k, v", "($1, $2)", "k", "v = new(v)");
        assert_eq!(
            pg,
            "insert into t (k, v) values ($1, $2) on conflict (k) do update set v = (excluded.v)"
        );
        let my = Dialect(Backend::MySql).upsert("t", "k, v", "($1, $2)", "k", "v = new(v)");
        assert_eq!(
            my,
            "insert into t (k, v) values ($1, $2) on duplicate key update v = values(v)"
        );
    }
}
