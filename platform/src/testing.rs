//! Test support shared by both services' suites: a fresh database per test.
//!
//! PostgreSQL: a new database on the server named by `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped when the guard drops, even after a
//! panic. MariaDB: the same on the server named by `TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/mysql`). An unreachable server fails the test loudly; it is
//! never skipped. SQLite: a file in a new temporary folder.

use std::str::FromStr;

use sqlx::Connection;
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// Instantiates async scenarios `async fn name(b: Backend)` as tests once per backend: a
/// module `postgres`, `sqlite` and `mariadb`, each with a `#[tokio::test]` per name
/// (multi-thread, 4 workers).
///
/// ```ignore
/// cco_platform::on_every_backend!(lru_prefers_never_used, cap_holds_across_two_instances);
/// ```
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $crate::on_backends!([postgres = Postgres, sqlite = Sqlite, mariadb = MariaDb] [$($name),*]);
    };
}

/// [`on_every_backend!`] for a chosen list of backends (`module = Backend variant`).
#[macro_export]
macro_rules! on_backends {
    ([$($module:ident = $variant:ident),* $(,)?] $names:tt) => {
        $( $crate::backend_module!($module, $variant, $names); )*
    };
}

/// One module of [`on_backends!`].
#[doc(hidden)]
#[macro_export]
macro_rules! backend_module {
    ($module:ident, $variant:ident, [$($name:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::testing::Backend::$variant).await;
                }
            )*
        }
    };
}

/// The backends every conformance suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
    /// MariaDB (the MySQL backend; MySQL 8 itself is not on the test machines).
    MariaDb,
}

/// The admin URL of the test MariaDB server.
pub fn mysql_admin_url() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".into())
}

/// The admin URL of the test PostgreSQL server.
pub fn pg_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database that is removed when dropped.
#[derive(Debug)]
pub struct TestDb {
    /// The URL to give the service.
    pub url: String,
    backend: Backend,
    pg_name: Option<String>,
    mysql_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Creates a fresh, empty database on `backend`.
    ///
    /// # Panics
    /// When PostgreSQL cannot be reached or the temporary folder cannot be made: tests must
    /// fail loudly rather than skip.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("cco_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL is unreachable at {admin} (set TEST_DATABASE_URL): {e}")
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
                let _ = conn.close().await;
                let opts = PgConnectOptions::from_str(&admin)
                    .unwrap_or_else(|e| panic!("bad TEST_DATABASE_URL: {e}"))
                    .database(&name);
                let url = pg_url(&opts, &name);
                Self {
                    url,
                    backend,
                    pg_name: Some(name),
                    mysql_name: None,
                    _dir: None,
                }
            }
            Backend::MariaDb => {
                let admin = mysql_admin_url();
                let name = format!("cco_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = MySqlConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("MariaDB is unreachable at {admin} (set TEST_MYSQL_URL): {e}")
                });
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "create database {name} character set utf8mb4 collate utf8mb4_bin"
                )))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
                let _ = conn.close().await;
                let url = match admin.rsplit_once('/') {
                    Some((base, _)) if base.contains("://") && !base.ends_with('/') => {
                        format!("{base}/{name}")
                    }
                    _ => panic!("TEST_MYSQL_URL must name a database: {admin}"),
                };
                Self {
                    url,
                    backend,
                    pg_name: None,
                    mysql_name: Some(name),
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let dir =
                    tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"));
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self {
                    url,
                    backend,
                    pg_name: None,
                    mysql_name: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

fn pg_url(opts: &PgConnectOptions, name: &str) -> String {
    let user = opts.get_username();
    let host = opts.get_host();
    let port = opts.get_port();
    let admin = pg_admin_url();
    // Keep a password from the admin URL, if any, by swapping only the database name.
    match admin.rsplit_once('/') {
        Some((base, db)) if !db.contains('@') && !base.ends_with('/') => format!("{base}/{name}"),
        _ => format!("postgres://{user}@{host}:{port}/{name}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.mysql_name.take() {
            drop_on_private_runtime(async move {
                if let Ok(mut conn) = MySqlConnection::connect(&mysql_admin_url()).await {
                    // As PostgreSQL's `with (force)`: a connection left open on the database
                    // (a pool the test did not close, a test that panicked mid-transaction)
                    // would hold a metadata lock that `drop database` waits for.
                    let ids: Vec<u64> = sqlx::query_scalar(
                        "select cast(id as unsigned) from information_schema.processlist \
                         where db = ? and id <> connection_id()",
                    )
                    .bind(&name)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_default();
                    for id in ids {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("kill {id}")))
                            .execute(&mut conn)
                            .await;
                    }
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "drop database if exists {name}"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        }
        if let Some(name) = self.pg_name.take() {
            drop_on_private_runtime(async move {
                if let Ok(mut conn) = PgConnection::connect(&pg_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "drop database if exists {name} with (force)"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        }
    }
}

/// Runs `f` to completion on a runtime of its own in another thread: `Drop` runs outside async
/// context (maybe during a panic).
fn drop_on_private_runtime(f: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(f);
    })
    .join();
}

/// A gRPC codec that sends and receives raw bytes: requests no typed client could send
/// (malformed messages), for the services' hostile-input tests.
#[derive(Clone, Default)]
pub struct Raw;

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; bytes::Buf::remaining(src)];
        bytes::Buf::copy_to_slice(src, &mut out);
        Ok(Some(out))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}
