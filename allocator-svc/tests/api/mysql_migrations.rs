//! MySQL cannot roll DDL back: a migration that failed half-way runs again from its first
//! statement. Every MySQL migration of both services therefore runs twice over a database
//! with data in it, then once more under sqlx's bookkeeping, and the data is still there.

use allocator_svc::domain::{ExtensionNumber, TenantId};
use allocator_svc::store::sql::SqlStore;
use cco_platform::db::DbPool;
use cco_platform::sql::Db;
use cco_platform::testing::Backend;

async fn run_files(pool: &sqlx::MySqlPool, service: &str) {
    let dir = format!(
        "{}/../migrations/{service}/mysql",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no migrations in {dir}");
    for f in files {
        let sql = std::fs::read_to_string(&f).unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[tokio::test]
async fn mysql_migrations_run_again_without_harm() {
    let (_db, pool) = crate::common::connect(Backend::MariaDb, 8).await;
    let DbPool::MySql(my) = &pool else {
        panic!("not mysql")
    };
    for service in ["allocator", "gateway"] {
        run_files(my, service).await;
    }
    let store = SqlStore::new(Db::new(pool.clone()));
    let tenant = TenantId::parse("t", "t1").unwrap();
    let numbers: Vec<ExtensionNumber> = ["8001", "8002"]
        .iter()
        .map(|n| ExtensionNumber::parse("n", n).unwrap())
        .collect();
    store.import(&tenant, "", &numbers).await.unwrap();
    for service in ["allocator", "gateway"] {
        run_files(my, service).await;
    }
    pool.migrate(allocator_svc::app::MIGRATIONS).await.unwrap();
    let counts = store.counts(&tenant).await.unwrap();
    assert_eq!((counts.total, counts.available), (2, 2), "{counts:?}");
    // The triggers made again still count.
    store
        .import(&tenant, "", &[ExtensionNumber::parse("n", "8003").unwrap()])
        .await
        .unwrap();
    assert_eq!(store.counts(&tenant).await.unwrap().total, 3);
    pool.close().await;
}
