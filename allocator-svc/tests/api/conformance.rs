//! The allocator's conformance suite: every scenario runs against PostgreSQL, MariaDB and
//! SQLite through the real gRPC server (`on_every_backend!` instantiates each one per backend).

use std::collections::HashSet;
use std::sync::Arc;

use crate::common::*;
use cco_contracts::allocator::v1 as pb;
use tokio::sync::Barrier;
use tonic::Code;

/// Strategy::Lru names for readability.
const LRU: pb::Strategy = pb::Strategy::Lru;
const RR: pb::Strategy = pb::Strategy::RoundRobin;
const AFF: pb::Strategy = pb::Strategy::CollectorAffinity;

async fn start(
    backend: Backend,
    tweak: impl FnOnce(&mut allocator_svc::settings::Settings),
) -> (TestDb, TestApp) {
    let db = TestDb::new(backend).await;
    let mut s = settings(&db.url);
    tweak(&mut s);
    let app = TestApp::spawn(s).await;
    (db, app)
}

/// Two instances on one fresh database, `numbers` imported into tenant t1's pool, and a
/// caller's client of each (for [`burst`]).
async fn two_instances(b: Backend, numbers: &[&str]) -> (TestDb, [TestApp; 2], [AllocClient; 2]) {
    let db = TestDb::new(b).await;
    let apps = [
        TestApp::spawn(settings(&db.url)).await,
        TestApp::spawn(settings(&db.url)).await,
    ];
    import(&mut apps[0].pool(ADMIN).await, "t1", numbers).await;
    let clients = [apps[0].alloc(CALLER).await, apps[1].alloc(CALLER).await];
    (db, apps, clients)
}

/// Shuts both instances down.
async fn shutdown([a1, a2]: [TestApp; 2]) {
    a1.shutdown().await;
    a2.shutdown().await;
}

/// Sends `n` Acquires at once (held back by a barrier until all are ready), alternating between
/// the two instances' `clients`; `req(i)` builds the i-th. Results come back in request order.
async fn burst(
    clients: &[AllocClient; 2],
    n: usize,
    req: impl Fn(usize) -> pb::AcquireRequest,
) -> Vec<Result<pb::AcquireResponse, tonic::Status>> {
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (mut c, barrier, r) = (clients[i % 2].clone(), barrier.clone(), req(i));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            c.acquire(r).await.map(tonic::Response::into_inner)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// LRU leases never-used extensions first (in number order), then the least recently released.
async fn lru_prefers_never_used_then_least_recently_released(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    import(&mut pool, "t1", &["8003", "8001", "8002"]).await;
    let mut c = app.alloc(CALLER).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let l = lease(&mut c, "t1", "c1", LRU).await;
        seen.push(l.extension_number.clone());
        release(&mut c, &l).await;
    }
    assert_eq!(seen, ["8001", "8002", "8003", "8001"]);
    // Released in order 8001(2nd time), so the least recently released is now 8002.
    let l = lease(&mut c, "t1", "c1", LRU).await;
    assert_eq!(l.extension_number, "8002");
    app.shutdown().await;
}

/// Round robin walks extension numbers in numeric order from the tenant cursor, wraps, and
/// skips busy and offline extensions.
async fn round_robin_walks_number_order_wraps_and_skips(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    let ids = import(&mut pool, "t1", &["1000", "998", "999", "1001"]).await;
    let mut c = app.alloc(CALLER).await;
    let a = lease(&mut c, "t1", "c1", RR).await;
    let b2 = lease(&mut c, "t1", "c1", RR).await;
    let c3 = lease(&mut c, "t1", "c1", RR).await;
    assert_eq!(
        [
            &a.extension_number,
            &b2.extension_number,
            &c3.extension_number
        ],
        ["998", "999", "1000"]
    );
    release(&mut c, &b2).await; // 999 free again
    // 1001 is offline: the cursor (1000) must skip it and wrap to the first free number, 999.
    pool.update_extension(pb::UpdateExtensionRequest {
        tenant_id: "t1".into(),
        extension_id: ids[3].clone(),
        status: Some(pb::ExtensionStatus::Offline.into()),
        number: None,
        force: false,
    })
    .await
    .unwrap();
    let d = lease(&mut c, "t1", "c1", RR).await;
    assert_eq!(d.extension_number, "999");
    release(&mut c, &a).await;
    release(&mut c, &c3).await;
    let e = lease(&mut c, "t1", "c1", RR).await;
    assert_eq!(e.extension_number, "1000", "cursor at 999 moves on to 1000");
    app.shutdown().await;
}

/// Collector affinity returns the collector's last extension when free (even where LRU would
/// pick another), else falls back to LRU.
async fn collector_affinity_reuses_last_extension_else_lru(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    import(&mut pool, "t1", &["8001", "8002", "8003", "8004"]).await;
    let mut c = app.alloc(CALLER).await;
    let a1 = lease(&mut c, "t1", "alice", LRU).await;
    assert_eq!(a1.extension_number, "8001");
    release(&mut c, &a1).await;
    let b1 = lease(&mut c, "t1", "bob", LRU).await;
    assert_eq!(b1.extension_number, "8002");
    release(&mut c, &b1).await;
    // LRU would now pick never-used 8003; affinity gives alice her 8001 back.
    let a2 = lease(&mut c, "t1", "alice", AFF).await;
    assert_eq!(a2.extension_number, "8001");
    release(&mut c, &a2).await;
    let _carol = lease(&mut c, "t1", "carol", LRU).await; // 8003
    let _dave = lease(&mut c, "t1", "dave", LRU).await; // 8004
    let erin = lease(&mut c, "t1", "erin", LRU).await; // 8002, released before 8001
    assert_eq!(erin.extension_number, "8002");
    // bob's last extension (8002) is busy: he falls back to LRU, the only free one, 8001.
    let b2 = lease(&mut c, "t1", "bob", AFF).await;
    assert_eq!(b2.extension_number, "8001");
    assert_eq!(b2.strategy, AFF as i32);
    app.shutdown().await;
}

/// The policy's default strategy applies when a request names none; a request may override it.
async fn policy_default_strategy_and_request_override(b: Backend) {
    let (_db, app) = start(b, |s| s.policy.static_strategy = "round_robin".into()).await;
    let mut pool = app.pool(ADMIN).await;
    import(&mut pool, "t1", &["1", "2", "3"]).await;
    let mut c = app.alloc(CALLER).await;
    let a = c
        .acquire(acquire_req("t1", "c", "r1"))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    release(&mut c, &a).await;
    let b2 = c
        .acquire(acquire_req("t1", "c", "r2"))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!((a.strategy, b2.strategy), (RR as i32, RR as i32));
    assert_eq!(
        (a.extension_number.as_str(), b2.extension_number.as_str()),
        ("1", "2")
    );
    release(&mut c, &b2).await;
    // LRU override: never-used "3" first.
    let o = lease(&mut c, "t1", "c", LRU).await;
    assert_eq!((o.extension_number.as_str(), o.strategy), ("3", LRU as i32));
    app.shutdown().await;
}

/// Two instances on one database, 200 concurrent Acquires on a 20-extension pool with a cap of
/// 15: exactly 15 granted on distinct extensions; the rest RESOURCE_EXHAUSTED naming the cap.
async fn cap_holds_across_two_instances(b: Backend) {
    let db = TestDb::new(b).await;
    let mk = || {
        let mut s = settings(&db.url);
        s.policy.static_max_concurrent_calls = 15;
        s
    };
    let a1 = TestApp::spawn(mk()).await;
    let a2 = TestApp::spawn(mk()).await;
    let mut pool = a1.pool(ADMIN).await;
    let numbers: Vec<String> = (0..20).map(|i| format!("80{i:02}")).collect();
    import(
        &mut pool,
        "t1",
        &numbers.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let clients = [a1.alloc(CALLER).await, a2.alloc(CALLER).await];
    let results = burst(&clients, 200, |i| {
        acquire_req("t1", &format!("c{i}"), &format!("req-{i}"))
    })
    .await;
    let mut granted = Vec::new();
    let mut refused = 0;
    for r in results {
        match r {
            Ok(r) => granted.push(r.lease.unwrap()),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(
                    s.message().contains("concurrency cap reached"),
                    "{}",
                    s.message()
                );
                assert!(
                    s.message().contains("max_concurrent_calls is 15"),
                    "{}",
                    s.message()
                );
                refused += 1;
            }
        }
    }
    assert_eq!(granted.len(), 15);
    assert_eq!(refused, 185);
    let distinct: HashSet<_> = granted.iter().map(|l| l.extension_id.clone()).collect();
    assert_eq!(distinct.len(), 15, "two leases on one extension");
    let inspect = Inspect::new(&db.url).await;
    assert_eq!(inspect.live("t1").await, (15, 15));
    // Free them all from both instances, lease again, and check the whole history.
    for (i, l) in granted.iter().enumerate() {
        let mut c = clients[i % 2].clone();
        release(&mut c, l).await;
    }
    for i in 0..15 {
        let mut c = clients[i % 2].clone();
        c.acquire(acquire_req("t1", "again", &format!("again-{i}")))
            .await
            .unwrap();
    }
    assert_no_overlaps(&inspect.intervals().await);
    inspect.close().await;
    a1.shutdown().await;
    a2.shutdown().await;
}

/// Without a cap, 200 concurrent Acquires over two instances drain a 20-extension pool exactly:
/// 20 distinct leases, the rest RESOURCE_EXHAUSTED saying the pool is empty.
async fn pool_empty_across_two_instances(b: Backend) {
    let numbers: Vec<String> = (0..20).map(|i| format!("70{i:02}")).collect();
    let numbers: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let (db, apps, clients) = two_instances(b, &numbers).await;
    let results = burst(&clients, 200, |i| {
        let mut req = acquire_req("t1", &format!("c{}", i % 7), &format!("req-{i}"));
        req.strategy = [LRU, RR, AFF][i % 3].into();
        req
    })
    .await;
    let mut granted = Vec::new();
    for r in results {
        match r {
            Ok(r) => granted.push(r.lease.unwrap()),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("pool empty"), "{}", s.message());
            }
        }
    }
    assert_eq!(granted.len(), 20);
    let distinct: HashSet<_> = granted.iter().map(|l| l.extension_id.clone()).collect();
    assert_eq!(distinct.len(), 20);
    let inspect = Inspect::new(&db.url).await;
    assert_no_overlaps(&inspect.intervals().await);
    inspect.close().await;
    shutdown(apps).await;
}

/// 50 identical concurrent Acquires (same tenant and request id) get one lease; reusing the
/// request id with other parameters is refused, naming request_id.
async fn idempotent_acquire_under_race(b: Backend) {
    let (db, apps, clients) = two_instances(b, &["1", "2", "3", "4"]).await;
    let mut ids = HashSet::new();
    let mut fresh = 0;
    for r in burst(&clients, 50, |_| acquire_req("t1", "c1", "same-call")).await {
        let r = r.expect("every identical request succeeds");
        ids.insert(r.lease.unwrap().lease_id);
        fresh += usize::from(!r.replayed);
    }
    assert_eq!(ids.len(), 1, "one lease for one request id");
    assert_eq!(fresh, 1, "exactly one request leased; 49 replayed");
    let inspect = Inspect::new(&db.url).await;
    assert_eq!(inspect.leases_for_request("t1", "same-call").await, 1);
    assert_eq!(inspect.live("t1").await, (1, 1));
    inspect.close().await;
    let mut c = clients[0].clone();
    let err = c
        .acquire(acquire_req("t1", "someone-else", "same-call"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().starts_with("request_id:"),
        "{}",
        err.message()
    );
    shutdown(apps).await;
}

/// Identical Acquires racing for a pool's last free extension: in each of six rounds, 40
/// twins over two instances all get the one lease (none is told the pool is empty while its
/// twin is being granted), and it is released before the next round. Rounds alternate LRU and
/// collector affinity (whose pick locks the collector's last extension by id).
async fn twins_racing_for_the_last_extension_all_get_it(b: Backend) {
    let (db, apps, clients) = two_instances(b, &["1"]).await;
    for round in 0..6 {
        let request = format!("last-{round}");
        let twin = |_| {
            let mut r = acquire_req("t1", "c1", &request);
            r.strategy = if round % 2 == 0 { LRU } else { AFF }.into();
            r
        };
        let mut leases = Vec::new();
        for r in burst(&clients, 40, twin).await {
            let r = r.unwrap_or_else(|s| panic!("round {round}: every twin succeeds: {s:?}"));
            leases.push((r.lease.unwrap(), r.replayed));
        }
        let first = leases[0].0.clone();
        assert!(
            leases.iter().all(|(l, _)| *l == first),
            "round {round}: one lease"
        );
        let fresh = leases.iter().filter(|(_, replayed)| !replayed).count();
        assert_eq!(fresh, 1, "round {round}: one granted, the rest replayed");
        let mut c = clients[0].clone();
        release(&mut c, &first).await;
    }
    let inspect = Inspect::new(&db.url).await;
    assert_eq!(inspect.live("t1").await, (0, 0));
    assert_no_overlaps(&inspect.intervals().await);
    inspect.close().await;
    shutdown(apps).await;
}

/// Distinct Acquires of every strategy racing over two instances for a pool too small for
/// them: in each of three rounds exactly the pool is granted, on distinct extensions, and
/// every other Acquire is told the pool is empty; none is aborted.
async fn mixed_strategies_on_an_exhausted_pool(b: Backend) {
    let (db, apps, clients) = two_instances(b, &["1", "2", "3", "4"]).await;
    for round in 0..3 {
        let req = |i: usize| {
            let mut r = acquire_req("t1", &format!("c{}", i % 5), &format!("m{round}-{i}"));
            r.strategy = [LRU, AFF, RR][i % 3].into();
            r
        };
        let mut granted = Vec::new();
        for r in burst(&clients, 30, req).await {
            match r {
                Ok(r) => granted.push(r.lease.unwrap()),
                Err(s) => {
                    assert_eq!(s.code(), Code::ResourceExhausted, "round {round}: {s:?}");
                    assert!(s.message().contains("pool empty"), "{}", s.message());
                }
            }
        }
        let distinct: HashSet<_> = granted.iter().map(|l| l.extension_id.clone()).collect();
        assert_eq!(granted.len(), 4, "round {round}: the whole pool, no more");
        assert_eq!(distinct.len(), 4, "round {round}: distinct extensions");
        let mut c = clients[0].clone();
        for l in &granted {
            release(&mut c, l).await;
        }
    }
    let inspect = Inspect::new(&db.url).await;
    assert_eq!(inspect.live("t1").await, (0, 0));
    assert_no_overlaps(&inspect.intervals().await);
    inspect.close().await;
    shutdown(apps).await;
}

/// A request id used before replays its lease whatever the pool holds: with extensions free
/// (the attempt that tried one leaves it untouched: its token is not spent), with none free,
/// and from another collector it is refused naming request_id, with none free too.
async fn a_used_request_id_replays_whatever_the_pool_holds(b: Backend) {
    let (db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    let ids = import(&mut pool, "t1", &["1", "2"]).await;
    let mut c = app.alloc(CALLER).await;
    let first = c
        .acquire(acquire_req("t1", "c1", "r1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let l1 = first.lease.unwrap();
    let again = c
        .acquire(acquire_req("t1", "c1", "r1"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.lease.unwrap(), l1, "the same lease, with one free");
    let inspect = Inspect::new(&db.url).await;
    assert_eq!(inspect.live("t1").await, (1, 1));
    let other = c
        .acquire(acquire_req("t1", "c1", "r2"))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_ne!(other.extension_id, l1.extension_id);
    assert!(ids.contains(&other.extension_id));
    assert_eq!(
        other.fencing_token, 1,
        "the replay spent no token of the free one"
    );
    let empty = c
        .acquire(acquire_req("t1", "c1", "r1"))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.replayed);
    assert_eq!(empty.lease.unwrap(), l1, "the same lease, with none free");
    let err = c
        .acquire(acquire_req("t1", "someone-else", "r1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().starts_with("request_id:"),
        "{}",
        err.message()
    );
    assert_eq!(inspect.live("t1").await, (2, 2));
    assert_eq!(inspect.leases_for_request("t1", "r1").await, 1);
    inspect.close().await;
    app.shutdown().await;
}

/// Release checks the fencing token: stale tokens and repeated releases change nothing; a late
/// release of an old lease can never free the extension's new lease.
async fn fencing_and_idempotent_release(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    let ids = import(&mut pool, "t1", &["8001"]).await;
    let mut c = app.alloc(CALLER).await;
    let l1 = lease(&mut c, "t1", "c1", LRU).await;
    let stale = c
        .release(pb::ReleaseRequest {
            lease_id: l1.lease_id.clone(),
            fencing_token: l1.fencing_token + 7,
            reason: 0,
            tenant_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !stale.released && stale.reason.contains("stale fencing token"),
        "{stale:?}"
    );
    release(&mut c, &l1).await;
    let again = c
        .release(pb::ReleaseRequest {
            lease_id: l1.lease_id.clone(),
            fencing_token: l1.fencing_token,
            reason: 0,
            tenant_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !again.released && again.reason.contains("already released (call_ended)"),
        "{again:?}"
    );
    // The extension is leased again; the old lease's late release must not free it.
    let l2 = lease(&mut c, "t1", "c2", LRU).await;
    assert_eq!(l2.extension_id, l1.extension_id);
    assert!(l2.fencing_token > l1.fencing_token);
    let late = c
        .release(pb::ReleaseRequest {
            lease_id: l1.lease_id.clone(),
            fencing_token: l1.fencing_token,
            reason: 0,
            tenant_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!late.released);
    let ext = pool
        .get_extension(pb::GetExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ext.status, pb::ExtensionStatus::InUse as i32);
    assert_eq!(ext.current_lease_id, l2.lease_id);
    let missing = c
        .release(pb::ReleaseRequest {
            lease_id: uuid::Uuid::now_v7().to_string(),
            fencing_token: 1,
            reason: 0,
            tenant_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    app.shutdown().await;
}

/// Renew extends a live lease; a wrong token or a released lease is refused.
async fn renew_extends_live_leases_only(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    import(&mut pool, "t1", &["8001"]).await;
    let mut c = app.alloc(CALLER).await;
    let mut req = acquire_req("t1", "c1", "r1");
    req.ttl_seconds = 60;
    let l = c.acquire(req).await.unwrap().into_inner().lease.unwrap();
    let r = c
        .renew(pb::RenewRequest {
            lease_id: l.lease_id.clone(),
            fencing_token: l.fencing_token,
            ttl_seconds: 3600,
            tenant_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    let before = l.expires_at.unwrap().seconds;
    let after = r.expires_at.unwrap().seconds;
    assert!(
        after >= before + 3000,
        "expiry moved from {before} to {after}"
    );
    let wrong = c
        .renew(pb::RenewRequest {
            lease_id: l.lease_id.clone(),
            fencing_token: l.fencing_token + 1,
            ttl_seconds: 60,
            tenant_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    assert!(
        wrong.message().contains("stale fencing token"),
        "{}",
        wrong.message()
    );
    release(&mut c, &l).await;
    let gone = c
        .renew(pb::RenewRequest {
            lease_id: l.lease_id.clone(),
            fencing_token: l.fencing_token,
            ttl_seconds: 60,
            tenant_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition);
    assert!(
        gone.message().contains("already released"),
        "{}",
        gone.message()
    );
    app.shutdown().await;
}

/// With two instances reaping, an expired lease is freed once, with reason expired, no earlier
/// than its expiry and no later than expiry plus the sweep interval (plus scheduling slack).
async fn reaper_frees_expired_leases_once_on_time(b: Backend) {
    let db = TestDb::new(b).await;
    let a1 = TestApp::spawn(settings(&db.url)).await;
    let a2 = TestApp::spawn(settings(&db.url)).await;
    let mut pool = a1.pool(ADMIN).await;
    let ids = import(&mut pool, "t1", &["8001", "8002"]).await;
    let mut c = a1.alloc(CALLER).await;
    let mut req = acquire_req("t1", "c1", "short");
    req.ttl_seconds = 1;
    let short = c.acquire(req).await.unwrap().into_inner().lease.unwrap();
    let long = lease(&mut c, "t1", "c2", LRU).await; // policy TTL: 30 minutes
    let inspect = Inspect::new(&db.url).await;
    // Wait for the outcome (bounded), not for a fixed time.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let released = loop {
        let iv = inspect.intervals().await;
        if let Some(i) = iv
            .iter()
            .find(|i| i.extension_id == ids[0] && i.released_ms.is_some())
        {
            break i.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "lease never reaped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let expires_ms = short.expires_at.unwrap().seconds * 1000
        + i64::from(short.expires_at.unwrap().nanos) / 1_000_000;
    let released_ms = released.released_ms.unwrap();
    assert_eq!(released.reason.as_deref(), Some("expired"));
    assert!(
        released_ms >= expires_ms,
        "reaped {}ms before expiry",
        expires_ms - released_ms
    );
    // Interval 200 ms; allow generous slack for a loaded 2-core machine (3 s).
    assert!(
        released_ms - expires_ms <= 200 + 3000,
        "reaped {}ms after expiry",
        released_ms - expires_ms
    );
    // The long lease is untouched, and the short one was freed exactly once.
    let ext = pool
        .get_extension(pb::GetExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: long.extension_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ext.current_lease_id, long.lease_id);
    let late = c
        .release(pb::ReleaseRequest {
            lease_id: short.lease_id.clone(),
            fencing_token: short.fencing_token,
            reason: 0,
            tenant_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !late.released && late.reason.contains("already released (expired)"),
        "{late:?}"
    );
    assert_eq!(inspect.live("t1").await, (1, 1));
    inspect.close().await;
    a1.shutdown().await;
    a2.shutdown().await;
}

/// With a cooldown, a released extension cannot be leased until the cooldown passes.
async fn cooldown_delays_reuse(b: Backend) {
    let (_db, app) = start(b, |s| s.policy.static_cooldown_seconds = 30).await;
    let mut pool = app.pool(ADMIN).await;
    import(&mut pool, "t1", &["8001"]).await;
    let mut c = app.alloc(CALLER).await;
    let l = lease(&mut c, "t1", "c1", LRU).await;
    release(&mut c, &l).await;
    let err = c
        .acquire(acquire_req("t1", "c1", "next"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("1 cooling down"),
        "{}",
        err.message()
    );
    let stats = c
        .stats(pb::StatsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stats.available, stats.cooling_down, stats.in_use),
        (1, 1, 0)
    );
    app.shutdown().await;
}

/// BatchImport reports every non-blank line: imported, duplicate (in batch or in pool), invalid.
async fn batch_import_reports_each_line(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    import(&mut pool, "t1", &["8001"]).await;
    let long = "1".repeat(33);
    let lines = ["  8002 ", "", "8001", "80a3", "8002", "   ", &long, "8004"];
    let resp = pool
        .batch_import(pb::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: String::new(),
            numbers: lines.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (resp.imported, resp.duplicates, resp.invalid),
        (2, 2, 2),
        "{resp:?}"
    );
    let got: Vec<(u32, String, i32, String)> = resp
        .results
        .iter()
        .map(|r| (r.line, r.input.clone(), r.outcome, r.reason.clone()))
        .collect();
    use pb::ImportOutcome as O;
    assert_eq!(
        got[0],
        (1, "8002".into(), O::Imported as i32, String::new())
    );
    assert_eq!(
        got[1],
        (
            3,
            "8001".into(),
            O::Duplicate as i32,
            "already in the pool".into()
        )
    );
    assert_eq!((got[2].0, got[2].2), (4, O::Invalid as i32));
    assert!(got[2].3.contains("only digits"), "{}", got[2].3);
    assert_eq!(
        got[3],
        (
            5,
            "8002".into(),
            O::Duplicate as i32,
            "repeats line 1".into()
        )
    );
    assert_eq!((got[4].0, got[4].2), (7, O::Invalid as i32));
    assert!(got[4].3.contains("at most 32 digits"), "{}", got[4].3);
    assert_eq!(got[5].2, O::Imported as i32);
    let too_many = pool
        .batch_import(pb::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: String::new(),
            numbers: (0..10_001).map(|i| i.to_string()).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many.message().starts_with("numbers:"),
        "{}",
        too_many.message()
    );
    let stats = app
        .alloc(CALLER)
        .await
        .stats(pb::StatsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.total, 3, "nothing from the refused batch was written");
    app.shutdown().await;
}

/// A config id that differs from the policy's is refused; the policy's is used when none is given.
async fn import_checks_config_id(b: Backend) {
    let (_db, app) = start(b, |s| s.policy.static_config_id = "cfg-1".into()).await;
    let mut pool = app.pool(ADMIN).await;
    let err = pool
        .batch_import(pb::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: "cfg-2".into(),
            numbers: vec!["8001".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("config_id:"), "{}", err.message());
    let ids = import(&mut pool, "t1", &["8001"]).await;
    let ext = pool
        .get_extension(pb::GetExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ext.config_id, "cfg-1");
    app.shutdown().await;
}

/// ListExtensions pages in number order with stable tokens and filters by status and collector.
async fn list_pages_and_filters(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    let numbers: Vec<String> = (1..=25).map(|i| (i * 7).to_string()).collect();
    import(
        &mut pool,
        "t1",
        &numbers.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    import(&mut pool, "t2", &["1"]).await;
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = pool
            .list_extensions(pb::ListExtensionsRequest {
                tenant_id: "t1".into(),
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        listed.extend(page.extensions.into_iter().map(|e| e.number));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, numbers, "numeric order, nothing missed or repeated");
    let mut c = app.alloc(CALLER).await;
    let l = lease(&mut c, "t1", "alice", LRU).await;
    let by_collector = pool
        .list_extensions(pb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_collector.extensions.len(), 1);
    assert_eq!(by_collector.extensions[0].current_lease_id, l.lease_id);
    let in_use = pool
        .list_extensions(pb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            status: pb::ExtensionStatus::InUse.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(in_use.extensions.len(), 1);
    let bad = pool
        .list_extensions(pb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().starts_with("page_token:"),
        "{}",
        bad.message()
    );
    let big = pool
        .list_extensions(pb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(big.message().starts_with("page_size:"), "{}", big.message());
    app.shutdown().await;
}

/// UpdateExtension: numbers stay unique; taking an in-use extension offline needs force and
/// ends its lease; offline extensions are never leased.
async fn update_extension_rules(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    let ids = import(&mut pool, "t1", &["8001", "8002"]).await;
    let upd = |id: &str, status: Option<pb::ExtensionStatus>, number: Option<&str>, force: bool| {
        pb::UpdateExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: id.into(),
            status: status.map(Into::into),
            number: number.map(Into::into),
            force,
        }
    };
    let taken = pool
        .update_extension(upd(&ids[0], None, Some("8002"), false))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::FailedPrecondition);
    assert!(
        taken.message().starts_with("number:"),
        "{}",
        taken.message()
    );
    let renamed = pool
        .update_extension(upd(&ids[0], None, Some("9001"), false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.number, "9001");
    let bad = pool
        .update_extension(upd(&ids[0], None, Some("90x"), false))
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("number:"), "{}", bad.message());
    let mut c = app.alloc(CALLER).await;
    let l = lease(&mut c, "t1", "c1", LRU).await; // never-used 8002? both never used: 8002 < 9001
    assert_eq!(l.extension_id, ids[1]);
    let refused = pool
        .update_extension(upd(
            &ids[1],
            Some(pb::ExtensionStatus::Offline),
            None,
            false,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("force"), "{}", refused.message());
    let off = pool
        .update_extension(upd(&ids[1], Some(pb::ExtensionStatus::Offline), None, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.status, pb::ExtensionStatus::Offline as i32);
    assert!(off.current_lease_id.is_empty());
    let late = c
        .release(pb::ReleaseRequest {
            lease_id: l.lease_id.clone(),
            fencing_token: l.fencing_token,
            reason: 0,
            tenant_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(late.reason.contains("extension_offline"), "{late:?}");
    pool.update_extension(upd(
        &ids[0],
        Some(pb::ExtensionStatus::Offline),
        None,
        false,
    ))
    .await
    .unwrap();
    let none = c.acquire(acquire_req("t1", "c1", "x")).await.unwrap_err();
    assert_eq!(none.code(), Code::ResourceExhausted);
    assert!(none.message().contains("2 offline"), "{}", none.message());
    pool.update_extension(upd(
        &ids[0],
        Some(pb::ExtensionStatus::Available),
        None,
        false,
    ))
    .await
    .unwrap();
    let back = lease(&mut c, "t1", "c1", LRU).await;
    assert_eq!(back.extension_id, ids[0]);
    let in_use = pool
        .update_extension(upd(&ids[0], Some(pb::ExtensionStatus::InUse), None, false))
        .await
        .unwrap_err();
    assert!(
        in_use.message().starts_with("status:"),
        "{}",
        in_use.message()
    );
    app.shutdown().await;
}

/// ReleaseExtension, DeleteExtension (refused in use unless forced), BatchDeleteExtensions and
/// ForceReleaseCollector.
async fn admin_release_delete_and_force(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    let ids = import(&mut pool, "t1", &["1", "2", "3", "4", "5"]).await;
    let mut c = app.alloc(CALLER).await;
    let l1 = lease(&mut c, "t1", "alice", LRU).await;
    let manual = pool
        .release_extension(pb::ReleaseExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: l1.extension_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(manual.released);
    assert_eq!(
        manual.lease.unwrap().release_reason,
        pb::ReleaseReason::Manual as i32
    );
    let idle = pool
        .release_extension(pb::ReleaseExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: l1.extension_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !idle.released && idle.reason.contains("not in use"),
        "{idle:?}"
    );
    let held = lease(&mut c, "t1", "bob", LRU).await;
    let del = pool
        .delete_extension(pb::DeleteExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: held.extension_id.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(del.code(), Code::FailedPrecondition);
    let forced = pool
        .delete_extension(pb::DeleteExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: held.extension_id.clone(),
            force: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(forced.deleted);
    assert_eq!(forced.ended_lease_id, held.lease_id);
    let gone = pool
        .get_extension(pb::GetExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: held.extension_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // Two leases for carol, then force-release them both.
    let c1 = lease(&mut c, "t1", "carol", LRU).await;
    let c2 = lease(&mut c, "t1", "carol", LRU).await;
    let fr = pool
        .force_release_collector(pb::ForceReleaseCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: "carol".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fr.released_count, 2);
    let mut got: Vec<_> = fr.lease_ids.clone();
    got.sort();
    let mut want = vec![c1.lease_id.clone(), c2.lease_id.clone()];
    want.sort();
    assert_eq!(got, want);
    let busy = lease(&mut c, "t1", "dave", LRU).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let batch = pool
        .batch_delete_extensions(pb::BatchDeleteExtensionsRequest {
            tenant_id: "t1".into(),
            extension_ids: vec![ids[0].clone(), busy.extension_id.clone(), unknown.clone()],
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<(bool, &str)> = batch
        .results
        .iter()
        .map(|r| (r.deleted, r.reason.as_str()))
        .collect();
    let busy_first = ids[0] == busy.extension_id;
    if busy_first {
        assert_eq!(
            outcomes,
            [(false, "in use"), (false, "in use"), (false, "not found")]
        );
    } else {
        assert_eq!(
            outcomes,
            [(true, ""), (false, "in use"), (false, "not found")]
        );
    }
    app.shutdown().await;
}

/// Stats counts by status in the database and reports per-extension usage over a window.
async fn stats_counts_and_usage(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    let ids = import(&mut pool, "t1", &["1", "2", "3", "4"]).await;
    pool.update_extension(pb::UpdateExtensionRequest {
        tenant_id: "t1".into(),
        extension_id: ids[3].clone(),
        status: Some(pb::ExtensionStatus::Offline.into()),
        number: None,
        force: false,
    })
    .await
    .unwrap();
    let mut c = app.alloc(CALLER).await;
    let l = lease(&mut c, "t1", "a", LRU).await;
    release(&mut c, &l).await;
    let _held = lease(&mut c, "t1", "b", LRU).await;
    let s = c
        .stats(pb::StatsRequest {
            tenant_id: "t1".into(),
            include_usage: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.total, s.available, s.in_use, s.offline), (4, 2, 1, 1));
    assert!(
        (s.utilization - 1.0 / 3.0).abs() < 1e-9,
        "{}",
        s.utilization
    );
    assert_eq!(s.usage.len(), 4);
    let first = s
        .usage
        .iter()
        .find(|u| u.extension_id == l.extension_id)
        .unwrap();
    assert_eq!(first.lease_count, 1);
    assert!(
        first.busy_seconds >= 0.0 && first.busy_seconds < 60.0,
        "{first:?}"
    );
    let total: u32 = s.usage.iter().map(|u| u.lease_count).sum();
    assert_eq!(total, 2);
    let empty = c
        .stats(pb::StatsRequest {
            tenant_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((empty.total, empty.utilization), (0, 0.0));
    app.shutdown().await;
}

/// Stats reads the total from a trigger-kept counter and the rest through partial indexes;
/// after imports, deletes, status changes, acquires and releases racing over two instances,
/// every figure still equals a row-by-row count of the pool.
async fn stats_match_the_rows_after_concurrent_changes(b: Backend) {
    let db = TestDb::new(b).await;
    let mk = || {
        let mut s = settings(&db.url);
        // long enough that every released extension is still cooling when counted.
        s.policy.static_cooldown_seconds = 600;
        s
    };
    let apps = [TestApp::spawn(mk()).await, TestApp::spawn(mk()).await];
    let mut pool0 = apps[0].pool(ADMIN).await;
    let first: Vec<String> = (0..40).map(|i| format!("80{i:02}")).collect();
    let ids = import(
        &mut pool0,
        "t1",
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let pools = [pool0, apps[1].pool(ADMIN).await];
    let allocs = [apps[0].alloc(CALLER).await, apps[1].alloc(CALLER).await];

    // 8 importers (overlapping ranges, two tenants), 20 deletes of 10 extensions (each asked
    // twice, forced, some of them leased), 10 status changes, 20 acquires (half released).
    let n = 8 + 20 + 10 + 20;
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks: Vec<tokio::task::JoinHandle<(&str, Result<bool, tonic::Status>)>> = Vec::new();
    for i in 0..8 {
        let (mut p, bar) = (pools[i % 2].clone(), barrier.clone());
        let tenant = if i % 4 == 3 { "t2" } else { "t1" };
        let numbers: Vec<String> = (i * 25..i * 25 + 50).map(|k| format!("9{k:03}")).collect();
        tasks.push(tokio::spawn(async move {
            bar.wait().await;
            let r = p
                .batch_import(pb::BatchImportRequest {
                    tenant_id: tenant.into(),
                    config_id: String::new(),
                    numbers,
                })
                .await;
            ("import", r.map(|_| true))
        }));
    }
    for i in 0..20 {
        let (mut p, bar, id) = (pools[i % 2].clone(), barrier.clone(), ids[i / 2].clone());
        tasks.push(tokio::spawn(async move {
            bar.wait().await;
            let r = p
                .delete_extension(pb::DeleteExtensionRequest {
                    tenant_id: "t1".into(),
                    extension_id: id,
                    force: true,
                })
                .await;
            ("delete", r.map(|r| r.into_inner().deleted))
        }));
    }
    for i in 0..10 {
        let (mut p, bar, id) = (pools[i % 2].clone(), barrier.clone(), ids[10 + i].clone());
        tasks.push(tokio::spawn(async move {
            bar.wait().await;
            let r = p
                .update_extension(pb::UpdateExtensionRequest {
                    tenant_id: "t1".into(),
                    extension_id: id,
                    status: Some(pb::ExtensionStatus::Offline.into()),
                    number: None,
                    force: true,
                })
                .await;
            ("offline", r.map(|_| true))
        }));
    }
    for i in 0..20 {
        let (mut c, bar) = (allocs[i % 2].clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            bar.wait().await;
            let r = c
                .acquire(acquire_req("t1", &format!("c{i}"), &format!("r{i}")))
                .await;
            let lease = match r {
                Ok(r) => r.into_inner().lease.unwrap(),
                Err(e) => return ("acquire", Err(e)),
            };
            if i % 2 == 1 {
                let r = c
                    .release(pb::ReleaseRequest {
                        lease_id: lease.lease_id.clone(),
                        fencing_token: lease.fencing_token,
                        ..Default::default()
                    })
                    .await;
                return ("release", r.map(|_| true));
            }
            ("acquire", Ok(true))
        }));
    }
    let mut deleted = 0;
    for t in tasks {
        match t.await.unwrap() {
            ("delete", Ok(d)) => deleted += usize::from(d),
            (_, Ok(_)) => {}
            // an extension deleted under a racing update or a release of a lease ended by a
            // forced delete or a forced offline; anything else is a failure.
            (op, Err(e)) => assert!(
                matches!(
                    e.code(),
                    Code::NotFound | Code::FailedPrecondition | Code::ResourceExhausted
                ),
                "{op}: {e:?}"
            ),
        }
    }
    assert_eq!(
        deleted, 10,
        "each of the 10 extensions deleted exactly once"
    );

    let inspect = Inspect::new(&db.url).await;
    let mut c = allocs[0].clone();
    for tenant in ["t1", "t2"] {
        let s = c
            .stats(pb::StatsRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let rows = inspect.status_counts(tenant).await;
        let got = [s.total, s.available, s.in_use, s.offline, s.cooling_down].map(i64::from);
        assert_eq!(
            got, rows,
            "{tenant}: stats vs rows [total, available, in use, offline, cooling]"
        );
    }
    // the overlapping import ranges cover 9000..=9199 in t1 (besides its 40 first numbers, 10
    // of them deleted) and 9075..=9124 plus 9175..=9224 in t2.
    let t1 = inspect.status_counts("t1").await;
    let t2 = inspect.status_counts("t2").await;
    assert_eq!((t1[0], t2[0]), (30 + 200, 100));
    inspect.close().await;
    for a in apps {
        a.shutdown().await;
    }
}

/// Two forced batch deletes over the same extensions, in opposite orders, from two instances
/// at once, while those extensions hold leases and Releases of them race in: nothing
/// deadlocks or fails, each extension is deleted exactly once, and the pool ends empty.
async fn opposite_batch_deletes_and_releases_do_not_deadlock(b: Backend) {
    let db = TestDb::new(b).await;
    let apps = [
        TestApp::spawn(settings(&db.url)).await,
        TestApp::spawn(settings(&db.url)).await,
    ];
    let mut pool0 = apps[0].pool(ADMIN).await;
    let numbers: Vec<String> = (0..40).map(|i| format!("80{i:02}")).collect();
    let ids = import(
        &mut pool0,
        "t1",
        &numbers.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let mut c = apps[0].alloc(CALLER).await;
    let mut leases = Vec::new();
    for i in 0..20 {
        leases.push(lease(&mut c, "t1", &format!("c{i}"), LRU).await);
    }
    let barrier = Arc::new(Barrier::new(2 + leases.len()));
    let mut deletes = Vec::new();
    for (k, app) in apps.iter().enumerate() {
        let mut p = app.pool(ADMIN).await;
        let mut order = ids.clone();
        if k == 1 {
            order.reverse();
        }
        let bar = barrier.clone();
        deletes.push(tokio::spawn(async move {
            bar.wait().await;
            p.batch_delete_extensions(pb::BatchDeleteExtensionsRequest {
                tenant_id: "t1".into(),
                extension_ids: order,
                force: true,
            })
            .await
            .map(tonic::Response::into_inner)
        }));
    }
    let mut releases = Vec::new();
    for (i, l) in leases.into_iter().enumerate() {
        let mut c = apps[i % 2].alloc(CALLER).await;
        let bar = barrier.clone();
        releases.push(tokio::spawn(async move {
            bar.wait().await;
            c.release(pb::ReleaseRequest {
                lease_id: l.lease_id,
                fencing_token: l.fencing_token,
                ..Default::default()
            })
            .await
        }));
    }
    let mut deleted = 0;
    for d in deletes {
        let r = d.await.unwrap().expect("batch delete failed");
        deleted += r.deleted;
    }
    assert_eq!(deleted, 40, "each extension deleted exactly once");
    for r in releases {
        // released first, or its extension was deleted (the lease ended with it): both fine.
        r.await.unwrap().expect("release failed");
    }
    let s = c
        .stats(pb::StatsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.total, s.in_use), (0, 0));
    let inspect = Inspect::new(&db.url).await;
    assert_eq!(inspect.live("t1").await, (0, 0));
    inspect.close().await;
    for a in apps {
        a.shutdown().await;
    }
}

/// Malformed input is refused with INVALID_ARGUMENT naming the field, and writes nothing.
async fn invalid_input_names_the_field(b: Backend) {
    let (db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    import(&mut pool, "t1", &["8001"]).await;
    let mut c = app.alloc(CALLER).await;
    let cases: Vec<(pb::AcquireRequest, &str)> = vec![
        (acquire_req("", "c", "r"), "tenant_id:"),
        (acquire_req("t 1", "c", "r"), "tenant_id:"),
        (acquire_req(&"t".repeat(65), "c", "r"), "tenant_id:"),
        (acquire_req("t1", "", "r"), "collector_id:"),
        (acquire_req("t1", "c/1", "r"), "collector_id:"),
        (acquire_req("t1", "c", ""), "request_id:"),
        (
            pb::AcquireRequest {
                ttl_seconds: 90_000,
                ..acquire_req("t1", "c", "r")
            },
            "ttl_seconds:",
        ),
        (
            pb::AcquireRequest {
                strategy: 42,
                ..acquire_req("t1", "c", "r")
            },
            "strategy:",
        ),
    ];
    for (req, field) in cases {
        let e = c.acquire(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().starts_with(field),
            "want {field}, got {}",
            e.message()
        );
    }
    let e = c
        .release(pb::ReleaseRequest {
            lease_id: "not-a-uuid".into(),
            fencing_token: 1,
            reason: 0,
            tenant_id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("lease_id:"), "{}", e.message());
    let e = c
        .release(pb::ReleaseRequest {
            lease_id: uuid::Uuid::now_v7().to_string(),
            fencing_token: 0,
            reason: 0,
            tenant_id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("fencing_token:"), "{}", e.message());
    let e = c
        .release(pb::ReleaseRequest {
            lease_id: uuid::Uuid::now_v7().to_string(),
            fencing_token: 1,
            reason: pb::ReleaseReason::Expired.into(),
            tenant_id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("reason:"), "{}", e.message());
    let e = pool
        .get_extension(pb::GetExtensionRequest {
            tenant_id: "t1".into(),
            extension_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("extension_id:"), "{}", e.message());
    let e = pool
        .batch_delete_extensions(pb::BatchDeleteExtensionsRequest {
            tenant_id: "t1".into(),
            extension_ids: vec![],
            force: false,
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("extension_ids:"), "{}", e.message());
    let inspect = Inspect::new(&db.url).await;
    assert!(inspect.intervals().await.is_empty(), "no lease was written");
    inspect.close().await;
    app.shutdown().await;
}

/// Every RPC needs a key: none or a wrong one is UNAUTHENTICATED.
async fn every_rpc_needs_a_key(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut admin = app.pool(ADMIN).await;
    import(&mut admin, "t-a", &["1"]).await;
    // No key / wrong key.
    for key in ["", "wrong-key-123"] {
        let mut c = app.alloc(key).await;
        let e = c.acquire(acquire_req("t-a", "c", "r")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "key {key:?}");
        let mut p = app.pool(key).await;
        let e = p
            .list_extensions(pb::ListExtensionsRequest {
                tenant_id: "t-a".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    app.shutdown().await;
}

/// Pool administration needs the admin role; a peer key may lease.
async fn only_admin_keys_administer_the_pool(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut admin = app.pool(ADMIN).await;
    import(&mut admin, "t-a", &["1"]).await;
    // Wrong role: caller and peer keys cannot administer the pool.
    for key in [CALLER, PEER] {
        let mut p = app.pool(key).await;
        let e = p
            .batch_import(pb::BatchImportRequest {
                tenant_id: "t-a".into(),
                config_id: String::new(),
                numbers: vec!["9".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "key {key}");
    }
    // Peer may lease.
    let mut peer = app.alloc(PEER).await;
    let pl = lease(&mut peer, "t-a", "c", LRU).await;
    release(&mut peer, &pl).await;
    app.shutdown().await;
}

/// A key scoped to a tenant leases there, and never reaches another tenant's data: acquire,
/// stats, release and renew of its leases, its extensions; the other tenant's lease stays live.
async fn scoped_keys_never_reach_another_tenant(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut admin = app.pool(ADMIN).await;
    import(&mut admin, "t-a", &["1"]).await;
    let ids_b = import(&mut admin, "t-b", &["2"]).await;
    // Scoped keys: their tenant works, the other is refused and untouched.
    let mut scoped = app.alloc(SCOPED).await;
    let mine = lease(&mut scoped, "t-a", "c", LRU).await;
    let e = scoped
        .acquire(acquire_req("t-b", "c", "r2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = scoped
        .stats(pb::StatsRequest {
            tenant_id: "t-b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut unscoped = app.alloc(CALLER).await;
    let theirs = lease(&mut unscoped, "t-b", "c", LRU).await;
    for e in [
        scoped
            .release(pb::ReleaseRequest {
                lease_id: theirs.lease_id.clone(),
                fencing_token: theirs.fencing_token,
                reason: 0,
                tenant_id: String::new(),
            })
            .await
            .unwrap_err(),
        scoped
            .renew(pb::RenewRequest {
                lease_id: theirs.lease_id.clone(),
                fencing_token: theirs.fencing_token,
                ttl_seconds: 60,
                tenant_id: String::new(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let mut scoped_admin = app.pool(SCOPED_ADMIN).await;
    let e = scoped_admin
        .get_extension(pb::GetExtensionRequest {
            tenant_id: "t-b".into(),
            extension_id: ids_b[0].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = scoped_admin
        .delete_extension(pb::DeleteExtensionRequest {
            tenant_id: "t-b".into(),
            extension_id: ids_b[0].clone(),
            force: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = scoped_admin
        .force_release_collector(pb::ForceReleaseCollectorRequest {
            tenant_id: "t-b".into(),
            collector_id: "c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The other tenant's lease is still live.
    let ext = admin
        .get_extension(pb::GetExtensionRequest {
            tenant_id: "t-b".into(),
            extension_id: ids_b[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ext.current_lease_id, theirs.lease_id);
    release(&mut scoped, &mine).await;
    app.shutdown().await;
}

/// Health and reflection stay open without a key.
async fn health_and_reflection_need_no_key(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    // Health and reflection need no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel().await);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cco.infinity.allocator.v1.ExtensionAllocator".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut refl = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
        app.channel().await,
    );
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let names = format!("{:?}", resp.message_response);
    assert!(
        names.contains("cco.infinity.allocator.v1.ExtensionPool"),
        "{names}"
    );
    app.shutdown().await;
}

/// `/metrics` exposes acquire latency and outcomes by code.
async fn metrics_endpoint_reports_outcomes(b: Backend) {
    let (_db, app) = start(b, |_| {}).await;
    let mut pool = app.pool(ADMIN).await;
    import(&mut pool, "t1", &["1"]).await;
    let mut c = app.alloc(CALLER).await;
    let _l = lease(&mut c, "t1", "c", LRU).await;
    let _ = c.acquire(acquire_req("t1", "c", "r2")).await.unwrap_err();
    let addr = app.metrics_addr.unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(
        body.contains(r#"allocator_rpc_outcomes_total{op="acquire",code="ok"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"allocator_rpc_outcomes_total{op="acquire",code="resource_exhausted"} 1"#),
        "{body}"
    );
    assert!(
        body.contains("allocator_acquire_duration_seconds_count 2"),
        "{body}"
    );
    app.shutdown().await;
}

cco_platform::on_every_backend!(
    lru_prefers_never_used_then_least_recently_released,
    round_robin_walks_number_order_wraps_and_skips,
    collector_affinity_reuses_last_extension_else_lru,
    policy_default_strategy_and_request_override,
    cap_holds_across_two_instances,
    pool_empty_across_two_instances,
    concurrent_picks_never_see_a_free_pool_empty,
    idempotent_acquire_under_race,
    a_used_request_id_replays_whatever_the_pool_holds,
    twins_racing_for_the_last_extension_all_get_it,
    mixed_strategies_on_an_exhausted_pool,
    identical_acquires_that_start_without_a_grant,
    fencing_and_idempotent_release,
    renew_extends_live_leases_only,
    reaper_frees_expired_leases_once_on_time,
    cooldown_delays_reuse,
    batch_import_reports_each_line,
    import_checks_config_id,
    list_pages_and_filters,
    update_extension_rules,
    admin_release_delete_and_force,
    stats_counts_and_usage,
    stats_match_the_rows_after_concurrent_changes,
    opposite_batch_deletes_and_releases_do_not_deadlock,
    invalid_input_names_the_field,
    every_rpc_needs_a_key,
    only_admin_keys_administer_the_pool,
    scoped_keys_never_reach_another_tenant,
    health_and_reflection_need_no_key,
    metrics_endpoint_reports_outcomes,
);

/// A pool whose extensions have all been released once (distinct release times, so the LRU
/// order is decided by them) serves 30 concurrent Acquires over two instances from 40 free
/// extensions without one saying the pool is empty: a pick locks only the row it takes.
async fn concurrent_picks_never_see_a_free_pool_empty(b: Backend) {
    let db = TestDb::new(b).await;
    let a1 = TestApp::spawn(settings(&db.url)).await;
    let a2 = TestApp::spawn(settings(&db.url)).await;
    let mut pool = a1.pool(ADMIN).await;
    let numbers: Vec<String> = (0..40).map(|i| format!("{}", 9000 + i)).collect();
    import(
        &mut pool,
        "t1",
        &numbers.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let mut c = a1.alloc(CALLER).await;
    for _ in 0..40 {
        let l = lease(&mut c, "t1", "warm", LRU).await;
        release(&mut c, &l).await;
    }
    let clients = [a1.alloc(CALLER).await, a2.alloc(CALLER).await];
    for round in 0..3 {
        let results = burst(&clients, 30, |i| {
            acquire_req("t1", &format!("c{i}"), &format!("r{round}-{i}"))
        })
        .await;
        let mut granted = Vec::new();
        for r in results {
            granted.push(
                r.expect("a free extension for every request")
                    .lease
                    .unwrap(),
            );
        }
        assert_eq!(
            granted
                .iter()
                .map(|l| l.extension_id.clone())
                .collect::<HashSet<_>>()
                .len(),
            30
        );
        for l in &granted {
            release(&mut c, l).await;
        }
    }
    let inspect = Inspect::new(&db.url).await;
    assert_no_overlaps(&inspect.intervals().await);
    inspect.close().await;
    a1.shutdown().await;
    a2.shutdown().await;
}

/// Identical Acquires whose first is not granted (a new tenant's first round-robin Acquire,
/// which creates the tenant's row and runs again; a reached cap) still take turns cleanly:
/// 50 twins over two instances get one lease, then 50 more under the cap are all refused with
/// the cap, never an aborted transaction.
async fn identical_acquires_that_start_without_a_grant(b: Backend) {
    let db = TestDb::new(b).await;
    let cap = |s: &mut allocator_svc::settings::Settings| s.policy.static_max_concurrent_calls = 1;
    let mut s1 = settings(&db.url);
    cap(&mut s1);
    let mut s2 = settings(&db.url);
    cap(&mut s2);
    let a1 = TestApp::spawn(s1).await;
    let a2 = TestApp::spawn(s2).await;
    let mut pool = a1.pool(ADMIN).await;
    import(&mut pool, "fresh", &["8001", "8002"]).await;
    let clients = [a1.alloc(CALLER).await, a2.alloc(CALLER).await];
    let twin = || {
        let mut r = acquire_req("fresh", "c1", "first-call");
        r.strategy = RR.into();
        r
    };
    let mut ids = HashSet::new();
    for r in burst(&clients, 50, |_| twin()).await {
        ids.insert(
            r.expect("every identical request succeeds")
                .lease
                .unwrap()
                .lease_id,
        );
    }
    assert_eq!(ids.len(), 1, "one lease for one request id");
    let capped = || {
        let mut r = acquire_req("fresh", "c2", "second-call");
        r.strategy = RR.into();
        r
    };
    for r in burst(&clients, 50, |_| capped()).await {
        let s = r.expect_err("the cap of 1 is reached");
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("cap"), "{}", s.message());
    }
    let inspect = Inspect::new(&db.url).await;
    assert_eq!(inspect.leases_for_request("fresh", "first-call").await, 1);
    assert_eq!(inspect.leases_for_request("fresh", "second-call").await, 0);
    assert_eq!(inspect.live("fresh").await, (1, 1));
    inspect.close().await;
    a1.shutdown().await;
    a2.shutdown().await;
}
