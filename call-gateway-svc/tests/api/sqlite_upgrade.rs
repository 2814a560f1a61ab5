//! Upgrading a SQLite gateway database written before times had one width (migration 0007):
//! times written with 0 or 9 fractional digits keep their instant (to the microsecond), and
//! the outbox claims, which compare a time they read back, still claim the old rows.

use call_gateway_svc::app::{MIGRATIONS, stores_for};
use cco_platform::db::{DatabaseSettings, DbPool};
use cco_platform::testing::{Backend, TestDb};
use chrono::{DateTime, Duration, Utc};

#[tokio::test]
async fn sqlite_times_of_every_width_still_claim() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut s = DatabaseSettings::sqlite_default("x");
    s.url = db.url.clone();
    let pool = DbPool::connect(&s).await.unwrap();
    let DbPool::Sqlite(lite) = &pool else {
        panic!("not sqlite")
    };
    // The schema as it stood before migration 0007: the first six files, run by sqlx from a
    // folder of their own, so the full set finds them applied and runs 0007 alone.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/gateway/sqlite");
    let old = tempfile::tempdir().unwrap();
    let mut copied = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0007" {
            std::fs::copy(&p, old.path().join(&name)).unwrap();
            copied += 1;
        }
    }
    assert_eq!(copied, 6);
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(lite)
        .await
        .unwrap();
    // As sqlx used to write them: as many fractional digits as needed.
    let due = Utc::now() - Duration::minutes(1);
    let nine = due.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
    let whole = DateTime::from_timestamp(due.timestamp(), 0).unwrap();
    let none = whole.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
    assert!(!none.contains('.'), "{none}");
    sqlx::query(
        "insert into lease_release_outbox (lease_id, call_id, fencing_token, reason, attempts, \
           next_attempt_at, created_at, updated_at) values ('l1', $3, 7, 'call_ended', 0, $1, $2, $2)",
    )
    .bind(&nine)
    .bind(&none)
    .bind(uuid::Uuid::now_v7().simple().to_string())
    .execute(lite)
    .await
    .unwrap();
    sqlx::query(
        "insert into pool_purge_outbox (config_id, tenant_id, attempts, next_attempt_at, \
           created_at, updated_at) values ('cfg1', 't1', 0, $1, $1, $1)",
    )
    .bind(&none)
    .execute(lite)
    .await
    .unwrap();

    pool.migrate(MIGRATIONS).await.unwrap();
    let stored: String = sqlx::query_scalar(
        "select next_attempt_at from lease_release_outbox where lease_id = 'l1'",
    )
    .fetch_one(lite)
    .await
    .unwrap();
    assert_eq!(stored, cco_platform::sql::sqlite_time(due_to_micros(due)));
    let (_, calls) = stores_for(&pool);
    let now = Utc::now();
    let claimed = calls
        .claim_outbox(now, now + Duration::seconds(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(
        (claimed[0].lease_id.as_str(), claimed[0].fencing_token),
        ("l1", 7)
    );
    let purges = calls
        .claim_pool_purges(now, now + Duration::seconds(30), 10)
        .await
        .unwrap();
    assert_eq!(purges.len(), 1, "{purges:?}");
    let snapshot = calls.snapshot(now).await.unwrap();
    assert_eq!(snapshot.outbox_oldest, Some(whole));
    pool.close().await;
}

fn due_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap()
}
