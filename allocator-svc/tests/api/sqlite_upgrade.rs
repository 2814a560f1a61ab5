//! Upgrading a SQLite pool written before times became text (migration 0004): every stored
//! time survives to the millisecond, live leases stay live and releasable with their token,
//! and the earlier migrations run again over the data without harm (they are idempotent).

use allocator_svc::domain::{ReleaseReason, TenantId};
use allocator_svc::store::LeaseChange;
use allocator_svc::store::sql::SqlStore;
use cco_platform::db::DbPool;
use cco_platform::sql::Db;
use cco_platform::testing::Backend;
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

#[tokio::test]
async fn sqlite_times_survive_the_move_to_text() {
    let (_db, pool) = crate::common::connect(Backend::Sqlite, 8).await;
    let DbPool::Sqlite(lite) = &pool else {
        panic!("not sqlite")
    };
    // The schema as it stood before migration 0004, outside sqlx's bookkeeping.
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/allocator/sqlite"
    );
    for file in [
        "0001_pool.sql",
        "0002_pool_counts.sql",
        "0003_lru_order.sql",
    ] {
        let sql = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(lite)
            .await
            .unwrap();
    }
    let now = Utc::now();
    let (created, acquired) = (now - Duration::hours(2), now - Duration::minutes(5));
    let (expires, released) = (now + Duration::minutes(10), now - Duration::minutes(30));
    let cooling_until = now + Duration::hours(1);
    let (busy, idle, live_lease, old_lease) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    // One extension in use by a live lease, one cooling down after an ended lease.
    sqlx::query(
        "insert into extensions (id, tenant_id, number, status, current_lease_id, \
           current_collector_id, lease_expires_at, fencing_token, last_used_at, use_count, \
           created_at, updated_at) \
         values ($1, 't1', '8001', 'in_use', $2, 'c1', $3, 3, $4, 3, $5, $4)",
    )
    .bind(busy.to_string())
    .bind(live_lease.to_string())
    .bind(ms(expires))
    .bind(ms(acquired))
    .bind(ms(created))
    .execute(lite)
    .await
    .unwrap();
    sqlx::query(
        "insert into extensions (id, tenant_id, number, status, fencing_token, last_used_at, \
           last_released_at, available_at, use_count, created_at, updated_at) \
         values ($1, 't1', '8002', 'available', 1, $2, $3, $4, 1, $5, $3)",
    )
    .bind(idle.to_string())
    .bind(ms(released - Duration::minutes(1)))
    .bind(ms(released))
    .bind(ms(cooling_until))
    .bind(ms(created))
    .execute(lite)
    .await
    .unwrap();
    for (lease, ext, number, token, from, to, until, reason) in [
        (live_lease, busy, "8001", 3, acquired, None, expires, None),
        (
            old_lease,
            idle,
            "8002",
            1,
            released - Duration::minutes(1),
            Some(released),
            released + Duration::minutes(9),
            Some("call_ended"),
        ),
    ] {
        sqlx::query(
            "insert into leases (lease_id, tenant_id, extension_id, extension_number, collector_id, \
               request_id, request_fingerprint, strategy, fencing_token, cooldown_seconds, \
               acquired_at, expires_at, released_at, release_reason, created_at, updated_at) \
             values ($1, 't1', $2, $3, 'c1', $1, 'fp', 'lru', $4, 0, $5, $6, $7, $8, $5, $5)",
        )
        .bind(lease.to_string())
        .bind(ext.to_string())
        .bind(number)
        .bind(token)
        .bind(ms(from))
        .bind(ms(until))
        .bind(to.map(ms))
        .bind(reason)
        .execute(lite)
        .await
        .unwrap();
    }

    pool.migrate(allocator_svc::app::MIGRATIONS).await.unwrap();
    let store = SqlStore::new(Db::new(pool.clone()));
    let tenant = TenantId::parse("t", "t1").unwrap();

    let e = store.get_extension(&tenant, busy).await.unwrap().unwrap();
    assert_eq!(e.lease_expires_at.map(ms), Some(ms(expires)));
    assert_eq!(e.last_used_at.map(ms), Some(ms(acquired)));
    assert_eq!(ms(e.created_at), ms(created));
    let e = store.get_extension(&tenant, idle).await.unwrap().unwrap();
    assert_eq!(e.last_released_at.map(ms), Some(ms(released)));
    assert_eq!(e.available_at.map(ms), Some(ms(cooling_until)));
    let old = store.get_lease(old_lease).await.unwrap().unwrap();
    assert_eq!(old.released_at.map(ms), Some(ms(released)));
    assert_eq!(old.release_reason, Some(ReleaseReason::CallEnded));

    let counts = store.counts(&tenant).await.unwrap();
    assert_eq!(
        (counts.total, counts.in_use, counts.cooling_down),
        (2, 1, 1),
        "{counts:?}"
    );
    // Not due: the reaper compares text times now, and the expiry is ten minutes ahead.
    assert!(store.reap_expired(10).await.unwrap().is_empty());
    // Busy time of the ended lease: one minute, within the window.
    let usage = store
        .usage(&tenant, now - Duration::hours(1), now)
        .await
        .unwrap();
    let idle_use = usage.iter().find(|u| u.extension_id == idle).unwrap();
    assert!(
        (idle_use.busy_seconds - 60.0).abs() < 0.01,
        "{}",
        idle_use.busy_seconds
    );
    // The live lease ends with its token, and frees its extension.
    let LeaseChange::Changed(l) = store
        .release(live_lease, 3, ReleaseReason::CallEnded)
        .await
        .unwrap()
    else {
        panic!("the live lease did not end")
    };
    assert!(l.released_at.unwrap() >= now);
    let counts = store.counts(&tenant).await.unwrap();
    assert_eq!(counts.in_use, 0, "{counts:?}");
    pool.close().await;
}
