//! MySQL's store paths that the conformance suite reaches only by chance: an Acquire that
//! waits for an extension held by another transaction.

use std::sync::Arc;

use allocator_svc::domain::{CollectorId, ExtensionNumber, RequestId, Strategy, TenantId};
use allocator_svc::store::sql::SqlStore;
use allocator_svc::store::{AcquireCmd, AcquireOutcome};
use cco_platform::db::DbPool;
use cco_platform::sql::Db;
use cco_platform::testing::Backend;
use chrono::{DateTime, Utc};
use sqlx::MySqlPool;

fn cmd(request_id: &str) -> AcquireCmd {
    AcquireCmd {
        tenant_id: TenantId::parse("t", "t1").unwrap(),
        collector_id: CollectorId::parse("c", "c1").unwrap(),
        request_id: RequestId::parse("r", request_id).unwrap(),
        strategy: Strategy::Lru,
        ttl_seconds: 600,
        cooldown_seconds: 0,
        cap: None,
        fingerprint: "c1|default|0".to_owned(),
    }
}

/// Transactions of this database waiting for a row lock.
async fn lock_waiters(my: &MySqlPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from information_schema.innodb_trx t \
         join information_schema.processlist p on p.id = t.trx_mysql_thread_id \
         where t.trx_state = 'LOCK WAIT' and p.db = database()",
    )
    .fetch_one(my)
    .await
    .unwrap()
}

/// An uncapped Acquire whose pick skipped the one free extension (another transaction held
/// it) waits for that row; when the holder commits without taking it, the Acquire leases it,
/// and the lease starts after the wait, not when the waiting statement began. The lease it
/// answers is the one stored (a replay reads it back).
#[tokio::test]
async fn an_acquire_that_waited_for_a_row_starts_its_lease_after_the_wait() {
    let (_db, pool) = crate::common::connect(Backend::MariaDb, 8).await;
    pool.migrate(allocator_svc::app::MIGRATIONS).await.unwrap();
    let DbPool::MySql(my) = pool.clone() else {
        panic!("not mysql")
    };
    let store = Arc::new(SqlStore::new(Db::new(pool)));
    let tenant = TenantId::parse("t", "t1").unwrap();
    store
        .import(&tenant, "", &[ExtensionNumber::parse("n", "8001").unwrap()])
        .await
        .unwrap();
    let mut hold = my.begin().await.unwrap();
    sqlx::query("select id from extensions where tenant_id = 't1' for update")
        .execute(&mut *hold)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { store.acquire(&cmd("r1")).await }
    });
    // InnoDB refreshes `innodb_trx` only when it was last read over 0.1 s ago, so the
    // waiter count is polled at that pace (the condition decides, not the pause).
    let mut rounds = 0;
    while lock_waiters(&my).await == 0 {
        rounds += 1;
        assert!(rounds < 300, "the Acquire never waited for the held row");
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    }
    let released: DateTime<Utc> = sqlx::query_scalar("select utc_timestamp(6)")
        .fetch_one(&mut *hold)
        .await
        .unwrap();
    hold.commit().await.unwrap();
    let lease = match waiting.await.unwrap().unwrap() {
        AcquireOutcome::Granted { lease, replayed } => {
            assert!(!replayed);
            lease
        }
        other => panic!("{other:?}"),
    };
    assert!(
        lease.acquired_at >= released,
        "the lease starts after the wait: {} < {released}",
        lease.acquired_at
    );
    assert_eq!(
        lease.expires_at - lease.acquired_at,
        chrono::TimeDelta::seconds(600)
    );
    assert_eq!(lease.fencing_token, 1);
    let stored = match store.acquire(&cmd("r1")).await.unwrap() {
        AcquireOutcome::Granted { lease, replayed } => {
            assert!(replayed);
            lease
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(stored, lease, "the answered lease is the stored one");
    my.close().await;
}
