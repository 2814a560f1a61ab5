//! PostgreSQL store specifics, driven through the store itself: coalesced statements, and
//! the schema property that keeps lease updates HOT.
//!
//! A batch is formed on purpose: the test holds a row lock that the running statement waits on, queues requests
//! behind it (counting them in the queue, not sleeping), then lets go and checks every
//! request's own answer from the one statement that served them.

use std::future::Future;
use std::sync::Arc;

use allocator_svc::domain::{
    CollectorId, ExtStatus, ExtensionNumber, ReleaseReason, RequestId, Strategy, TenantId,
};
use allocator_svc::store::postgres::PgStore;
use allocator_svc::store::{AcquireCmd, AcquireOutcome, ExtUpdate, LeaseChange, Store};
use cco_platform::coalesce::Limits;
use cco_platform::db::{DatabaseSettings, DbPool};
use cco_platform::testing::{Backend, TestDb};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

async fn setup() -> (TestDb, PgPool, Arc<PgStore>) {
    let db = TestDb::new(Backend::Postgres).await;
    let mut s = DatabaseSettings::sqlite_default("x");
    s.url = db.url.clone();
    s.max_connections = 8;
    let pool = DbPool::connect(&s).await.unwrap();
    pool.migrate(allocator_svc::app::MIGRATIONS).await.unwrap();
    let DbPool::Postgres(pg) = pool else {
        panic!("not postgres")
    };
    // One running batch at a time, so everything queued behind it lands in the next one.
    let limits = Limits {
        max_batch: 32,
        in_flight: 1,
    };
    let store = Arc::new(PgStore::new(pg.clone(), limits));
    let numbers: Vec<ExtensionNumber> = (1..=5)
        .map(|i| ExtensionNumber::parse("n", &format!("800{i}")).unwrap())
        .collect();
    store
        .import(&TenantId::parse("t", "t1").unwrap(), "", &numbers)
        .await
        .unwrap();
    (db, pg, store)
}

fn cmd(request_id: &str) -> AcquireCmd {
    AcquireCmd {
        tenant_id: TenantId::parse("t", "t1").unwrap(),
        collector_id: CollectorId::parse("c", &format!("c-{request_id}")).unwrap(),
        request_id: RequestId::parse("r", request_id).unwrap(),
        strategy: Strategy::Lru,
        ttl_seconds: 600,
        cooldown_seconds: 0,
        cap: None,
        fingerprint: format!("c-{request_id}|default|0"),
    }
}

/// Waits (yielding, no timer) until `cond` holds; gives up after many rounds with a message.
async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..200_000 {
        if cond().await {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// Counts backends of this database waiting on a lock (the statement the test holds up).
async fn lock_waiters(pg: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity \
         where datname = current_database() and wait_event_type = 'Lock'",
    )
    .fetch_one(pg)
    .await
    .unwrap()
}

type Acquired = Result<AcquireOutcome, allocator_svc::domain::AllocError>;

/// With a row lock held by the test: starts `first`, waits until its statement waits on that
/// lock, then starts `rest` one after another, each only once the one before is queued
/// (`queued()` counts the queue), so the queue holds them in this order.
async fn queue_behind<T, Fut>(
    pg: &PgPool,
    first: Fut,
    rest: Vec<Fut>,
    queued: impl Fn() -> usize,
) -> (JoinHandle<T>, Vec<JoinHandle<T>>)
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let first = tokio::spawn(first);
    until("the first statement waits on the held row", async || {
        lock_waiters(pg).await == 1
    })
    .await;
    let mut tasks = Vec::new();
    for (i, f) in rest.into_iter().enumerate() {
        tasks.push(tokio::spawn(f));
        until("the request is queued", async || queued() == i + 1).await;
    }
    (first, tasks)
}

/// Acquires `cmds` on `store`, as futures for [`queue_behind`].
fn acquires(
    store: &Arc<PgStore>,
    cmds: Vec<AcquireCmd>,
) -> Vec<impl Future<Output = Acquired> + Send + 'static + use<>> {
    cmds.into_iter()
        .map(|c| {
            let s = store.clone();
            async move { s.acquire(&c).await }
        })
        .collect()
}

/// One statement serves many acquires, each getting its own outcome: new leases paired one to
/// one with free extensions in LRU order, pool empty once they run out, a replay for a request
/// id that already has a lease, and a twin kept out of the batch that then replays its twin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_statement_answers_each_acquire() {
    let (_db, pg, store) = setup().await;
    let old = match store.acquire(&cmd("old")).await.unwrap() {
        AcquireOutcome::Granted { lease, .. } => lease,
        other => panic!("{other:?}"),
    };
    // Hold up the next statement: an uncommitted lease row with request id "blocker" makes
    // its insert wait on the unique index.
    let mut hold = pg.begin().await.unwrap();
    sqlx::query(
        "insert into leases (lease_id, tenant_id, extension_id, extension_number, collector_id, \
         request_id, request_fingerprint, strategy, fencing_token, acquired_at, expires_at) \
         values ($1, 't1', $1, 'x', 'x', 'blocker', 'x', 'lru', 0, now(), now())",
    )
    .bind(Uuid::now_v7())
    .execute(&mut *hold)
    .await
    .unwrap();
    let ids = ["r1", "r2", "r3", "r4", "r5", "r6", "old", "r1"];
    let mut first = acquires(&store, vec![cmd("blocker")]);
    let (blocker, queued) = queue_behind(
        &pg,
        first.remove(0),
        acquires(&store, ids.iter().map(|id| cmd(id)).collect()),
        || store.queued_acquires("t1"),
    )
    .await;
    hold.rollback().await.unwrap();

    let AcquireOutcome::Granted { lease: b, replayed } = blocker.await.unwrap().unwrap() else {
        panic!("blocker not granted")
    };
    assert!(!replayed);
    let mut out = Vec::new();
    for t in queued {
        out.push(t.await.unwrap().unwrap());
    }
    let mut granted = Vec::new();
    for (i, o) in out[..3].iter().enumerate() {
        match o {
            AcquireOutcome::Granted {
                lease,
                replayed: false,
            } => {
                assert_eq!(lease.request_id, ids[i]);
                granted.push(lease.clone());
            }
            other => panic!("{}: {other:?}", ids[i]),
        }
    }
    for (i, o) in out[3..6].iter().enumerate() {
        match o {
            AcquireOutcome::PoolEmpty(c) => assert_eq!((c.total, c.in_use), (5, 5)),
            other => panic!("{}: {other:?}", ids[3 + i]),
        }
    }
    match &out[6] {
        AcquireOutcome::Granted {
            lease,
            replayed: true,
        } => assert_eq!(lease.lease_id, old.lease_id),
        other => panic!("old: {other:?}"),
    }
    match &out[7] {
        AcquireOutcome::Granted {
            lease,
            replayed: true,
        } => assert_eq!(lease.lease_id, granted[0].lease_id),
        other => panic!("r1 twin: {other:?}"),
    }
    // five leases on five different extensions, with fencing token 1 each.
    let mut exts: Vec<Uuid> = granted.iter().map(|l| l.extension_id).collect();
    exts.push(old.extension_id);
    exts.push(b.extension_id);
    exts.sort();
    exts.dedup();
    assert_eq!(exts.len(), 5);
    // r1..r3 were written by one transaction.
    let writers: i64 = sqlx::query_scalar(
        "select count(distinct xmin::text) from leases where request_id in ('r1', 'r2', 'r3')",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(writers, 1, "r1..r3 came from one statement");
    let live: i64 = sqlx::query_scalar(
        "select count(*) from extensions e join leases l on l.lease_id = e.current_lease_id \
         where e.status = 'in_use' and l.released_at is null",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(live, 5);
}

/// One statement serves many releases: each lease ended once with its own reason, a wrong
/// token and an unknown lease told apart, and a second release of the same lease (kept out of
/// the batch) answered "already ended".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_statement_answers_each_release() {
    let (_db, pg, store) = setup().await;
    let mut leases = Vec::new();
    for i in 0..4 {
        match store.acquire(&cmd(&format!("a{i}"))).await.unwrap() {
            AcquireOutcome::Granted { lease, .. } => leases.push(lease),
            other => panic!("{other:?}"),
        }
    }
    // Hold up the first release by locking its lease row.
    let mut hold = pg.begin().await.unwrap();
    sqlx::query("select 1 from leases where lease_id = $1 for update")
        .bind(leases[0].lease_id)
        .execute(&mut *hold)
        .await
        .unwrap();
    let jobs: Vec<(Uuid, i64, ReleaseReason)> = vec![
        (
            leases[1].lease_id,
            leases[1].fencing_token,
            ReleaseReason::CallEnded,
        ),
        (
            leases[2].lease_id,
            leases[2].fencing_token,
            ReleaseReason::DialFailed,
        ),
        (
            leases[3].lease_id,
            leases[3].fencing_token + 7,
            ReleaseReason::CallEnded,
        ),
        (Uuid::now_v7(), 1, ReleaseReason::CallEnded),
        (
            leases[1].lease_id,
            leases[1].fencing_token,
            ReleaseReason::CallEnded,
        ),
    ];
    // the second release of leases[1] comes last.
    let release = |(id, token, reason): (Uuid, i64, ReleaseReason)| {
        let s = store.clone();
        async move { s.release(id, token, reason).await }
    };
    let l0 = &leases[0];
    let (first, queued) = queue_behind(
        &pg,
        release((l0.lease_id, l0.fencing_token, ReleaseReason::CallEnded)),
        jobs.into_iter().map(release).collect(),
        || store.queued_releases(),
    )
    .await;
    hold.commit().await.unwrap();

    assert!(matches!(
        first.await.unwrap().unwrap(),
        LeaseChange::Changed(_)
    ));
    let mut out = Vec::new();
    for t in queued {
        out.push(t.await.unwrap().unwrap());
    }
    match &out[0] {
        LeaseChange::Changed(l) => assert_eq!(l.release_reason, Some(ReleaseReason::CallEnded)),
        other => panic!("{other:?}"),
    }
    match &out[1] {
        LeaseChange::Changed(l) => assert_eq!(l.release_reason, Some(ReleaseReason::DialFailed)),
        other => panic!("{other:?}"),
    }
    match &out[2] {
        LeaseChange::Unchanged { lease, .. } => assert!(lease.released_at.is_none()),
        other => panic!("wrong token: {other:?}"),
    }
    assert!(matches!(out[3], LeaseChange::NotFound), "{:?}", out[3]);
    match &out[4] {
        LeaseChange::Unchanged { lease, .. } => assert!(lease.released_at.is_some()),
        other => panic!("second release: {other:?}"),
    }
    // the two leases ended in the batch were written by one transaction.
    let writers: i64 = sqlx::query_scalar(
        "select count(distinct xmin::text) from leases where lease_id = any($1)",
    )
    .bind([leases[1].lease_id, leases[2].lease_id])
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(writers, 1, "the batch's releases came from one statement");
    let counts = store
        .counts(&TenantId::parse("t", "t1").unwrap())
        .await
        .unwrap();
    assert_eq!((counts.available, counts.in_use), (4, 1), "{counts:?}");
}

/// Capped LRU acquires are coalesced too: the batch locks the tenant row, counts live leases
/// after the lock, grants only the room under the cap in request order and answers the rest
/// "cap reached" with the count it saw; a replay does not count against the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_statement_respects_the_cap() {
    let (_db, pg, store) = setup().await;
    let capped = |id: &str| AcquireCmd {
        cap: Some(3),
        ..cmd(id)
    };
    let old = match store.acquire(&capped("old")).await.unwrap() {
        AcquireOutcome::Granted { lease, .. } => lease,
        other => panic!("{other:?}"),
    };
    // Hold the tenant row: the next capped statement waits for it.
    let mut hold = pg.begin().await.unwrap();
    sqlx::query("select 1 from tenant_state where tenant_id = 't1' for update")
        .execute(&mut *hold)
        .await
        .unwrap();
    let ids = ["r1", "r2", "r3", "r4", "old"];
    let mut first = acquires(&store, vec![capped("blocker")]);
    let (blocker, queued) = queue_behind(
        &pg,
        first.remove(0),
        acquires(&store, ids.iter().map(|id| capped(id)).collect()),
        || store.queued_acquires("t1"),
    )
    .await;
    hold.rollback().await.unwrap();
    assert!(matches!(
        blocker.await.unwrap().unwrap(),
        AcquireOutcome::Granted {
            replayed: false,
            ..
        }
    ));
    let mut out = Vec::new();
    for t in queued {
        out.push(t.await.unwrap().unwrap());
    }
    assert!(
        matches!(&out[0], AcquireOutcome::Granted { lease, replayed: false } if lease.request_id == "r1"),
        "{:?}",
        out[0]
    );
    for o in &out[1..4] {
        assert!(
            matches!(o, AcquireOutcome::CapReached { cap: 3, live: 3 }),
            "{o:?}"
        );
    }
    assert!(
        matches!(&out[4], AcquireOutcome::Granted { lease, replayed: true } if lease.lease_id == old.lease_id),
        "{:?}",
        out[4]
    );
    let live: i64 = sqlx::query_scalar("select count(*) from extensions where status = 'in_use'")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(live, 3, "the cap holds");
}

/// In a capped batch, a request beyond the cap's room is answered "cap reached" only when the
/// batch's grants did reach the cap; when free extensions ran out first it is "pool empty", as
/// the serialised path would say.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capped_batch_says_pool_empty_when_the_pool_ran_out_first() {
    let (_db, pg, store) = setup().await;
    let t1 = TenantId::parse("t", "t1").unwrap();
    let capped = |id: &str| AcquireCmd {
        cap: Some(5),
        ..cmd(id)
    };
    // 5 extensions: 2 offline, 2 leased, 1 free.
    let ids: Vec<Uuid> = sqlx::query_scalar("select id from extensions order by number")
        .fetch_all(&pg)
        .await
        .unwrap();
    for id in &ids[..2] {
        store
            .update_extension(
                &t1,
                *id,
                &ExtUpdate {
                    status: Some(ExtStatus::Offline),
                    number: None,
                    force: false,
                },
            )
            .await
            .unwrap();
    }
    for id in ["a", "b"] {
        assert!(matches!(
            store.acquire(&capped(id)).await.unwrap(),
            AcquireOutcome::Granted { .. }
        ));
    }
    let mut hold = pg.begin().await.unwrap();
    sqlx::query("select 1 from tenant_state where tenant_id = 't1' for update")
        .execute(&mut *hold)
        .await
        .unwrap();
    let names = ["r1", "r2", "r3"];
    let mut first = acquires(&store, vec![capped("blocker")]);
    let (blocker, queued) = queue_behind(
        &pg,
        first.remove(0),
        acquires(&store, names.iter().map(|id| capped(id)).collect()),
        || store.queued_acquires("t1"),
    )
    .await;
    hold.rollback().await.unwrap();
    // the blocker takes the last free extension: 3 live, room for 2 more under the cap.
    assert!(matches!(
        blocker.await.unwrap().unwrap(),
        AcquireOutcome::Granted { .. }
    ));
    let mut out = Vec::new();
    for t in queued {
        out.push(t.await.unwrap().unwrap());
    }
    // r1, r2 fit under the cap but find no extension; r3 is beyond the room, but the cap was
    // never reached (3 live of 5): pool empty for all three.
    for (o, name) in out.iter().zip(names) {
        assert!(
            matches!(o, AcquireOutcome::PoolEmpty(c) if c.in_use == 3 && c.offline == 2),
            "{name}: {o:?}"
        );
    }
}

/// Release and renew rewrite `released_at`, `release_reason`, `expires_at` and `updated_at` of a
/// lease; for those updates to be HOT, no index of `leases` may cover them (as a key, an
/// expression or a partial-index predicate). And the updates are in fact HOT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_updates_touch_no_indexed_column() {
    let (_db, pg, store) = setup().await;
    let defs: Vec<String> = sqlx::query_scalar(
        "select pg_get_indexdef(indexrelid) from pg_index where indrelid = 'leases'::regclass",
    )
    .fetch_all(&pg)
    .await
    .unwrap();
    assert!(defs.len() >= 4, "{defs:?}");
    for d in &defs {
        for col in ["released_at", "release_reason", "expires_at", "updated_at"] {
            assert!(!d.contains(col), "{d} covers {col}");
        }
    }
    for i in 0..5 {
        let lease = match store.acquire(&cmd(&format!("h{i}"))).await.unwrap() {
            AcquireOutcome::Granted { lease, .. } => lease,
            other => panic!("{other:?}"),
        };
        let r = store
            .release(
                lease.lease_id,
                lease.fencing_token,
                ReleaseReason::CallEnded,
            )
            .await
            .unwrap();
        assert!(matches!(r, LeaseChange::Changed(_)));
    }
    // this backend's own counters for the update below, before they reach the shared statistics.
    let mut conn = pg.acquire().await.unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar("select lease_id from leases")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    sqlx::query(
        "update leases set release_reason = 'manual', updated_at = now() where lease_id = any($1)",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await
    .unwrap();
    let (upd, hot): (i64, i64) = sqlx::query_as(
        "select n_tup_upd, n_tup_hot_upd from pg_stat_get_xact_tuples_updated('leases'::regclass) n_tup_upd, \
         pg_stat_get_xact_tuples_hot_updated('leases'::regclass) n_tup_hot_upd",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    // (the counters also hold this backend's earlier transactions not yet flushed to the
    // shared statistics: releases run on the same connection, which must be HOT as well)
    assert!(upd >= 5, "{upd}");
    assert_eq!(hot, upd, "lease updates were not HOT");
    tx.rollback().await.unwrap();
}

/// A truncate of the pool (a restore, a test) empties the trigger-kept totals with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_empties_the_counters() {
    let (_db, pg, store) = setup().await;
    let t1 = TenantId::parse("t", "t1").unwrap();
    assert_eq!(store.counts(&t1).await.unwrap().total, 5);
    sqlx::query("truncate extensions")
        .execute(&pg)
        .await
        .unwrap();
    let c = store.counts(&t1).await.unwrap();
    assert_eq!((c.total, c.available), (0, 0));
}

/// 32 tasks over two stores (two instances' worth of connections) leasing and freeing one
/// tenant's 33 extensions through the service, one statement per request (no coalescing, the
/// busiest the database gets): never "pool empty", since at most 32 leases are live. A pick
/// reads the free rows of its statement's snapshot; when it falls behind, the others take
/// every row ahead of it and the rows they free are newer than the snapshot. Without the
/// retry on a fresh snapshot (`RACED_PICK_RETRIES`) about half of the runs of a shorter
/// version of this test (4,800 pairs) saw "pool empty" (2 of 4,800 refused); the release
/// build of `loadgen` saw it 4-14 times in 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pick_that_falls_behind_is_not_pool_empty() {
    use allocator_svc::policy::StaticPolicy;
    use allocator_svc::service::{AcquireInput, Allocator};
    use allocator_svc::settings::PolicySettings;
    const TASKS: usize = 32;
    const ROUNDS: usize = 300;
    let db = TestDb::new(Backend::Postgres).await;
    let mut s = DatabaseSettings::sqlite_default("x");
    s.url = db.url.clone();
    s.max_connections = 16;
    let no_batches = Limits {
        max_batch: 1,
        in_flight: 1,
    };
    let mut services = Vec::new();
    for _ in 0..2 {
        let pool = DbPool::connect(&s).await.unwrap();
        pool.migrate(allocator_svc::app::MIGRATIONS).await.unwrap();
        let DbPool::Postgres(pg) = pool else {
            panic!("not postgres")
        };
        let store: Arc<dyn Store> = Arc::new(PgStore::new(pg, no_batches));
        let policy = Arc::new(StaticPolicy::new(&PolicySettings::default()));
        services.push(Allocator::new(store, policy));
    }
    let tenant = TenantId::parse("t", "t1").unwrap();
    let numbers: Vec<ExtensionNumber> = (0..=TASKS)
        .map(|i| ExtensionNumber::parse("n", &format!("{}", 7000 + i)).unwrap())
        .collect();
    services[0]
        .store()
        .import(&tenant, "", &numbers)
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (svc, barrier, tenant) = (services[i % 2].clone(), barrier.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut refused = Vec::new();
            for round in 0..ROUNDS {
                let input = AcquireInput {
                    tenant_id: tenant.clone(),
                    collector_id: CollectorId::parse("c", &format!("c{i}")).unwrap(),
                    request_id: RequestId::parse("r", &format!("r{round}-{i}")).unwrap(),
                    strategy: None,
                    ttl_seconds: None,
                };
                match svc.acquire(input).await {
                    Ok((l, _)) => {
                        let r = svc
                            .release(l.lease_id, l.fencing_token, ReleaseReason::CallEnded)
                            .await
                            .unwrap();
                        assert!(matches!(r, LeaseChange::Changed(_)), "{r:?}");
                    }
                    Err(e) => refused.push(e.to_string()),
                }
            }
            refused
        }));
    }
    let mut refused = Vec::new();
    for t in tasks {
        refused.extend(t.await.unwrap());
    }
    assert!(
        refused.is_empty(),
        "{} of {} refused, first: {:?}",
        refused.len(),
        TASKS * ROUNDS,
        refused.first()
    );
    assert_eq!(services[0].store().live_leases().await.unwrap(), 0);
}

/// A coalesced release that waits for a lease row another transaction holds, and finds that
/// lease ended once it gets the lock, leaves it (and its extension) alone and ends the rest of
/// its batch: the statement locks its lease rows in id order before it changes anything, and
/// rechecks each row it waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_batch_rechecks_a_lease_ended_while_it_waited() {
    let (_db, pg, store) = setup().await;
    let mut leases = Vec::new();
    for i in 0..3 {
        match store.acquire(&cmd(&format!("w{i}"))).await.unwrap() {
            AcquireOutcome::Granted { lease, .. } => leases.push(lease),
            other => panic!("{other:?}"),
        }
    }
    let (lone, ended_meanwhile, other) = (&leases[0], &leases[1], &leases[2]);
    let lock = async |id: Uuid| {
        let mut tx = pg.begin().await.unwrap();
        sqlx::query("select 1 from leases where lease_id = $1 for update")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    };
    // The lone release waits on its row while the other two queue into one batch behind it.
    let hold_lone = lock(lone.lease_id).await;
    let mut hold_ended = lock(ended_meanwhile.lease_id).await;
    let release = |l: &allocator_svc::domain::Lease| {
        let (s, id, token) = (store.clone(), l.lease_id, l.fencing_token);
        async move { s.release(id, token, ReleaseReason::CallEnded).await }
    };
    let (first, queued) = queue_behind(
        &pg,
        release(lone),
        vec![release(ended_meanwhile), release(other)],
        || store.queued_releases(),
    )
    .await;
    hold_lone.commit().await.unwrap();
    assert!(matches!(
        first.await.unwrap().unwrap(),
        LeaseChange::Changed(_)
    ));
    until("the batch waits on the held lease", async || {
        lock_waiters(&pg).await == 1
    })
    .await;
    // Another path ends that lease (without freeing its extension, to see who touches it).
    sqlx::query(
        "update leases set released_at = clock_timestamp(), release_reason = 'manual' \
         where lease_id = $1",
    )
    .bind(ended_meanwhile.lease_id)
    .execute(&mut *hold_ended)
    .await
    .unwrap();
    hold_ended.commit().await.unwrap();
    let mut out = Vec::new();
    for t in queued {
        out.push(t.await.unwrap().unwrap());
    }
    assert!(
        matches!(&out[0], LeaseChange::Unchanged { lease, .. } if lease.release_reason == Some(ReleaseReason::Manual)),
        "{:?}",
        out[0]
    );
    assert!(matches!(&out[1], LeaseChange::Changed(_)), "{:?}", out[1]);
    let status = async |id: Uuid| -> String {
        sqlx::query_scalar("select status from extensions where id = $1")
            .bind(id)
            .fetch_one(&pg)
            .await
            .unwrap()
    };
    assert_eq!(status(ended_meanwhile.extension_id).await, "in_use");
    assert_eq!(status(other.extension_id).await, "available");
}
