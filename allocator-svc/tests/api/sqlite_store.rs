//! SQLite store specifics: the lease row drives its extension (migration 0005's triggers), so
//! an acquire and a release are one statement each. The guard holds for any writer, not only
//! the store: a lease for a busy extension is refused whole, and a lease ended by hand frees
//! its extension. Two stores on one file (two writer connections, as two instances) never
//! lease one extension twice. Releases that queue behind a write are ended together, in one
//! statement.

use std::collections::HashSet;
use std::sync::Arc;

use allocator_svc::domain::{
    CollectorId, ExtStatus, ExtensionNumber, ReleaseReason, RequestId, Strategy, TenantId,
};
use allocator_svc::store::Store as _;
use allocator_svc::store::sql::SqlStore;
use allocator_svc::store::{AcquireCmd, AcquireOutcome, LeaseChange};
use cco_platform::coalesce::Limits;
use cco_platform::db::{DatabaseSettings, DbPool};
use cco_platform::sql::{Db, Mode};
use cco_platform::testing::{Backend, TestDb};
use sqlx::SqlitePool;
use tokio::sync::Barrier;

async fn setup(extensions: usize) -> (TestDb, DbPool, SqlitePool, SqlStore) {
    let (db, pool) = crate::common::connect(Backend::Sqlite, 8).await;
    pool.migrate(allocator_svc::app::MIGRATIONS).await.unwrap();
    let DbPool::Sqlite(lite) = pool.clone() else {
        panic!("not sqlite")
    };
    let store = SqlStore::new(Db::new(pool.clone()));
    let numbers: Vec<ExtensionNumber> = (0..extensions)
        .map(|i| ExtensionNumber::parse("n", &format!("{}", 8000 + i)).unwrap())
        .collect();
    store.import(&tenant(), "", &numbers).await.unwrap();
    (db, pool, lite, store)
}

fn tenant() -> TenantId {
    TenantId::parse("t", "t1").unwrap()
}

fn cmd(request_id: &str, strategy: Strategy, cooldown_seconds: u32) -> AcquireCmd {
    AcquireCmd {
        tenant_id: tenant(),
        collector_id: CollectorId::parse("c", "c1").unwrap(),
        request_id: RequestId::parse("r", request_id).unwrap(),
        strategy,
        ttl_seconds: 600,
        cooldown_seconds,
        cap: None,
        fingerprint: format!("c1|{}|{cooldown_seconds}", strategy.as_str()),
    }
}

fn granted(out: AcquireOutcome) -> allocator_svc::domain::Lease {
    match out {
        AcquireOutcome::Granted { lease, .. } => lease,
        other => panic!("not granted: {other:?}"),
    }
}

/// Releases `lease` with its own token (the call ended).
async fn end(store: &SqlStore, lease: &allocator_svc::domain::Lease) -> LeaseChange {
    store
        .release(
            lease.lease_id,
            lease.fencing_token,
            ReleaseReason::CallEnded,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lease_for_a_busy_extension_is_refused_whole() {
    let (_db, pool, lite, store) = setup(1).await;
    let lease = granted(store.acquire(&cmd("r1", Strategy::Lru, 0)).await.unwrap());
    // A second lease row for the same extension, written by hand as a buggy writer would.
    let err = sqlx::query(
        "insert into leases (lease_id, tenant_id, extension_id, extension_number, collector_id, \
           request_id, request_fingerprint, strategy, fencing_token, cooldown_seconds, \
           acquired_at, expires_at, created_at, updated_at) \
         select 'intruder', tenant_id, id, number, 'c2', 'r2', 'fp', 'lru', fencing_token + 1, 0, \
           '2026-01-01T00:00:00.000000+00:00', '2026-01-01T00:10:00.000000+00:00', \
           '2026-01-01T00:00:00.000000+00:00', '2026-01-01T00:00:00.000000+00:00' \
         from extensions where id = $1",
    )
    .bind(lease.extension_id.to_string())
    .execute(&lite)
    .await
    .expect_err("a second live lease of one extension");
    assert!(err.to_string().contains("not available"), "{err}");
    let leases: i64 = sqlx::query_scalar("select count(*) from leases")
        .fetch_one(&lite)
        .await
        .unwrap();
    assert_eq!(leases, 1, "the refused lease row is not kept");
    let ext = store
        .get_extension(&tenant(), lease.extension_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ext.current_lease_id, Some(lease.lease_id));
    assert_eq!(ext.fencing_token, lease.fencing_token);
    assert_eq!(ext.status, ExtStatus::InUse);
    pool.close().await;
}

#[tokio::test]
async fn a_lease_ended_by_hand_frees_its_extension_after_its_cooldown() {
    let (_db, pool, lite, store) = setup(1).await;
    let lease = granted(store.acquire(&cmd("r1", Strategy::Lru, 90)).await.unwrap());
    let ext = store
        .get_extension(&tenant(), lease.extension_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ext.use_count, 1);
    assert_eq!(ext.last_used_at, Some(lease.acquired_at));
    assert_eq!(ext.lease_expires_at, Some(lease.expires_at));
    sqlx::query(
        "update leases set released_at = '2026-01-01T00:05:00.000000+00:00', \
           release_reason = 'manual' where lease_id = $1",
    )
    .bind(lease.lease_id.to_string())
    .execute(&lite)
    .await
    .unwrap();
    let ext = store
        .get_extension(&tenant(), lease.extension_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ext.status, ExtStatus::Available);
    assert_eq!(ext.current_lease_id, None);
    assert_eq!(ext.lease_expires_at, None);
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert_eq!(ext.last_released_at, Some(at("2026-01-01T00:05:00Z")));
    assert_eq!(ext.available_at, Some(at("2026-01-01T00:06:30Z")));
    // The store sees it ended: its token no longer releases anything.
    let again = end(&store, &lease).await;
    assert!(matches!(again, LeaseChange::Unchanged { .. }), "{again:?}");
    pool.close().await;
}

/// Two stores on one file, each with its own writer connection, and many tasks acquiring and
/// releasing through both at once, LRU and affinity: no extension is ever leased twice, every
/// lease gets a token one above the last, and the pool is whole afterwards.
#[tokio::test]
async fn two_stores_on_one_file_never_lease_an_extension_twice() {
    const TASKS: usize = 16;
    const ROUNDS: usize = 40;
    let (db, pool, lite, store) = setup(TASKS + 2).await;
    let mut s = DatabaseSettings::sqlite_default("x");
    s.url = db.url.clone();
    let other_pool = DbPool::connect(&s).await.unwrap();
    let stores = [
        Arc::new(store),
        Arc::new(SqlStore::new(Db::new(other_pool.clone()))),
    ];
    let start = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let store = Arc::clone(&stores[i % 2]);
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut tokens = Vec::new();
            for round in 0..ROUNDS {
                let strategy = if round % 2 == 0 {
                    Strategy::Lru
                } else {
                    Strategy::CollectorAffinity
                };
                let mut c = cmd(&format!("r{i}-{round}"), strategy, 0);
                c.collector_id = CollectorId::parse("c", &format!("c{i}")).unwrap();
                let lease = granted(store.acquire(&c).await.unwrap());
                tokens.push((lease.extension_id, lease.fencing_token));
                let out = end(&store, &lease).await;
                assert!(matches!(out, LeaseChange::Changed(_)), "{out:?}");
            }
            tokens
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for token in t.await.unwrap() {
            assert!(
                seen.insert(token),
                "extension and token granted twice: {token:?}"
            );
        }
    }
    assert_eq!(seen.len(), TASKS * ROUNDS);
    // Every extension's tokens run 1..=n with no gap: each grant took the next one.
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "select e.id, e.fencing_token, e.use_count, count(l.lease_id) \
         from extensions e left join leases l on l.extension_id = e.id group by e.id",
    )
    .fetch_all(&lite)
    .await
    .unwrap();
    let mut total = 0;
    for (id, token, uses, leases) in rows {
        assert_eq!((token, uses), (leases, leases), "extension {id}");
        total += leases;
    }
    assert_eq!(usize::try_from(total).unwrap(), TASKS * ROUNDS);
    let live: i64 = sqlx::query_scalar(
        "select count(*) from extensions where status <> 'available' or current_lease_id is not null",
    )
    .fetch_one(&lite)
    .await
    .unwrap();
    assert_eq!(live, 0);
    other_pool.close().await;
    pool.close().await;
}

/// Releases that queue while the writer is busy are ended together, a few statements for all
/// of them, and each gets its own answer: 40 releases and 5 with stale tokens (for leases also
/// being released; never in one batch with them) wait behind a held write transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_queued_behind_a_write_end_together() {
    let (_db, pool, lite, _) = setup(40).await;
    let limits = Limits {
        max_batch: 32,
        in_flight: 2,
    };
    let store = SqlStore::coalesced(Db::new(pool.clone()), limits);
    let mut leases = Vec::new();
    for i in 0..40 {
        let out = store
            .acquire(&cmd(&format!("r{i}"), Strategy::Lru, 0))
            .await;
        leases.push(granted(out.unwrap()));
    }
    let held = store.db().begin(Mode::Write).await.unwrap();
    let mut tasks = Vec::new();
    for (i, l) in leases.iter().enumerate() {
        let mut jobs = vec![(l.lease_id, l.fencing_token, true)];
        if i % 8 == 0 {
            jobs.push((l.lease_id, l.fencing_token - 1, false));
        }
        for (id, token, real) in jobs {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let out = store.release(id, token, ReleaseReason::CallEnded).await;
                (id, token, real, out.unwrap())
            }));
        }
    }
    // Until every job is queued or taken into one of the (at most two) batches waiting for
    // the writer. Taken is read first: a job moving between the two readings is then missed,
    // never counted twice. A minute at most, then the test fails.
    let started = std::time::Instant::now();
    loop {
        let taken = store.coalescing()[0].2;
        if taken + store.queued_releases() as u64 == 45 {
            break;
        }
        assert!(started.elapsed().as_secs() < 60, "releases never queued");
        tokio::task::yield_now().await;
    }
    held.commit().await.unwrap();
    for t in tasks {
        // Each answer is about the lease its job named.
        match t.await.unwrap() {
            (id, token, true, LeaseChange::Changed(l)) => {
                assert_eq!((l.lease_id, l.fencing_token), (id, token));
                assert!(l.released_at.is_some());
                assert_eq!(l.release_reason, Some(ReleaseReason::CallEnded));
            }
            (id, token, false, LeaseChange::Unchanged { lease, reason }) => {
                assert_eq!(lease.lease_id, id);
                assert_eq!(lease.fencing_token, token + 1);
                assert!(reason.contains("token"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    let coalescing = store.coalescing();
    let (_, statements, jobs) = coalescing[0];
    assert_eq!(jobs, 45);
    // Two batches taken before the writer was free, then at most 32 a statement, and the
    // stale releases deferred from their leases' batches.
    assert!(statements <= 6, "{statements} statements for 45 releases");
    let (in_use, live, released): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from extensions where status = 'in_use'), \
           (select count(*) from leases where released_at is null), \
           (select count(*) from leases where release_reason = 'call_ended')",
    )
    .fetch_one(&lite)
    .await
    .unwrap();
    assert_eq!((in_use, live, released), (0, 0, 40));
}
