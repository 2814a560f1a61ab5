//! Fault injection, scenario 1: two allocator and two gateway processes on one PostgreSQL (and
//! once more on one MariaDB), 1,000 calls with mixed outcomes from the simulator (10% Infinity
//! timeouts, 5% lost callbacks, 10% duplicated, 5% late), while one allocator is killed with
//! SIGKILL and restarted and every connection to the test's own databases is terminated twice. Clients retry failed MakeCalls
//! with the same idempotency key, as the CCO workbench does.
//!
//! Afterwards: every MakeCall that returned a call id has a terminal record with its lease
//! released; no idempotency key was dialled twice; the allocator's lease history shows no
//! extension leased twice at once; the pool is fully available; nothing was lost. The figures
//! are printed (`figures:` line) and recorded in docs/reliability.md.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use cco_platform::testing::{Backend, TestDb, mysql_admin_url, pg_admin_url};
use chrono::{DateTime, Utc};
use infinity_sim::{CallbackMode, Outcome, Script, SimConfig, Simulator};
use sqlx::{Connection, Row};
use tonic::Code;

use crate::common::{Svc, allocator_env, free_port, gateway_env, wait_ready};

const CALLS: usize = 1_000;
const WORKERS: usize = 20;
const EXTENSIONS: usize = 30;
const SECRET: &str = "fault-run-callback-secret";

fn script(i: usize) -> Script {
    let s = Script::default();
    match i % 20 {
        0..=13 => s,
        14 | 15 => Script {
            outcome: Outcome::Slow,
            slow_ms: 2_500,
            ..s
        },
        16 => Script {
            callback: CallbackMode::Lost,
            ..s
        },
        17 | 18 => Script {
            callback: CallbackMode::Duplicated,
            ..s
        },
        _ => Script {
            callback: CallbackMode::Delayed,
            late_ms: 4_000,
            ..s
        },
    }
}

/// Ends every connection to the test's databases (the server side of a network failure).
async fn terminate_backends(b: Backend, dbs: &[String]) -> u64 {
    match b {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
            let n: i64 = sqlx::query(
                "select count(pg_terminate_backend(pid)) as n from pg_stat_activity where datname = any($1) and pid <> pg_backend_pid()",
            )
            .bind(dbs)
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get("n");
            u64::try_from(n).unwrap_or(0)
        }
        Backend::MariaDb => {
            let mut conn = sqlx::MySqlConnection::connect(&mysql_admin_url())
                .await
                .unwrap();
            let mut n = 0;
            for db in dbs {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "select id from information_schema.processlist where db = ? and id <> connection_id()",
                )
                .bind(db)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                for id in ids {
                    // Gone already (it may have closed meanwhile) is fine.
                    if sqlx::query(sqlx::AssertSqlSafe(format!("kill connection {id}")))
                        .execute(&mut conn)
                        .await
                        .is_ok()
                    {
                        n += 1;
                    }
                }
            }
            n
        }
        Backend::Sqlite => unreachable!("the fault run needs a database server"),
    }
}

/// A lease of the allocator's history: extension, token, acquired, released.
type Leased = (String, i64, DateTime<Utc>, Option<DateTime<Utc>>);

fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_calls_through_kills_and_disconnects() {
    thousand_calls(Backend::Postgres).await;
}

/// The same run with both services on MariaDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_calls_through_kills_and_disconnects_on_mariadb() {
    thousand_calls(Backend::MariaDb).await;
}

async fn thousand_calls(b: Backend) {
    let started = Instant::now();
    let alloc_db = TestDb::new(b).await;
    let gw_db = TestDb::new(b).await;
    let (a1, a2, g1, g2, h1, h2) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    // Start the gateways first: the allocators ask them for policies.
    let gw1 = Svc::spawn("gateway", g1, gateway_env(&gw_db.url, g1, h1, a1));
    wait_ready(g1).await; // first start migrates
    let gw2 = Svc::spawn("gateway", g2, gateway_env(&gw_db.url, g2, h2, a2));
    let al1 = Arc::new(Mutex::new(Svc::spawn(
        "allocator",
        a1,
        allocator_env(&alloc_db.url, a1, g1),
    )));
    wait_ready(a1).await;
    let al2 = Svc::spawn("allocator", a2, allocator_env(&alloc_db.url, a2, g2));
    for p in [g2, a2] {
        wait_ready(p).await;
    }

    let numbers: Vec<String> = (1..=EXTENSIONS).map(|i| format!("80{i:02}")).collect();
    let sim = Simulator::start(SimConfig {
        extensions: numbers.iter().map(|n| (n.clone(), true)).collect(),
        callback_url: Some(format!(
            "http://127.0.0.1:{h1}/api/v1/infinity/callback/t1/{SECRET}"
        )),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    for i in 0..20 {
        sim.state()
            .set_script(Some(&format!("139001390{i:02}")), script(i));
    }
    let ch = |port: u16| {
        crate::common::endpoint(port)
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    };
    let admin = BearerInterceptor::new("dev-admin-key");
    crate::common::tenant(
        ch(g1),
        ch(a1),
        pb::ConfigInput {
            max_concurrent_calls: Some(100),
            api_timeout_ms: Some(1_000),
            ..crate::common::config(&sim, SECRET)
        },
        WORKERS,
        &numbers,
    )
    .await;

    let done = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let errors: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let gateways = [ch(g1), ch(g2)];
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let gateways = gateways.clone();
        let (done, retries, errors) = (done.clone(), retries.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            for n in (w..CALLS).step_by(WORKERS) {
                let mut attempt = 0;
                loop {
                    let mut c = pb::calls_client::CallsClient::with_interceptor(
                        gateways[(n + attempt) % 2].clone(),
                        BearerInterceptor::new("dev-caller-key"),
                    );
                    let r = c
                        .make_call(pb::MakeCallRequest {
                            tenant_id: "t1".into(),
                            collector_id: format!("c{w}"),
                            case_id: format!("case-{n}"),
                            destination_number: format!("139001390{:02}", n % 20),
                            idempotency_key: format!("key-{n}"),
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Ok(resp) => {
                            placed.push((n, resp.into_inner().call_id));
                            break;
                        }
                        Err(s) => {
                            assert!(
                                matches!(
                                    s.code(),
                                    Code::Unavailable
                                        | Code::ResourceExhausted
                                        | Code::Internal
                                        | Code::Unknown
                                        | Code::Cancelled
                                        | Code::DeadlineExceeded
                                ),
                                "call {n}: unexpected {s:?}"
                            );
                            *errors
                                .lock()
                                .unwrap()
                                .entry(format!("{:?}", s.code()))
                                .or_default() += 1;
                            attempt += 1;
                            retries.fetch_add(1, Ordering::Relaxed);
                            assert!(attempt < 600, "call {n} never placed: {s:?}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            placed
        }));
    }

    // The faults, injected as the run passes 25%, 50% and 75%.
    let dbs = vec![db_name(&alloc_db.url), db_name(&gw_db.url)];
    let mut terminated = Vec::new();
    let mut kills = 0;
    for (step, at) in [CALLS / 4, CALLS / 2, CALLS * 3 / 4]
        .into_iter()
        .enumerate()
    {
        while done.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if step == 0 {
            let mut a = al1.lock().unwrap();
            a.child.kill().unwrap(); // SIGKILL
            a.child.wait().unwrap();
            kills += 1;
            a.restart();
        } else {
            terminated.push(terminate_backends(b, &dbs).await);
        }
    }
    let port = al1.lock().unwrap().port;
    wait_ready(port).await;
    let mut placed = Vec::new();
    for w in workers {
        placed.extend(w.await.unwrap());
    }
    assert_eq!(placed.len(), CALLS);

    // Settle: every record terminal with its lease released (bounded wait).
    let mut calls = pb::calls_client::CallsClient::with_interceptor(
        ch(g2),
        BearerInterceptor::new("dev-caller-key"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let records = loop {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = calls
                .list_calls(pb::ListCallsRequest {
                    tenant_id: "t1".into(),
                    page_size: 500,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            all.extend(page.calls);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let open = all
            .iter()
            .filter(|r| {
                !(r.lease_released
                    && [
                        pb::CallStatus::Completed as i32,
                        pb::CallStatus::Failed as i32,
                        pb::CallStatus::Expired as i32,
                    ]
                    .contains(&r.status))
            })
            .count();
        if open == 0 {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "{open} calls still open or holding a lease"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Every call id a client got back has exactly one record; nothing lost.
    let by_id: HashMap<&str, &pb::CommunicationRecord> =
        records.iter().map(|r| (r.call_id.as_str(), r)).collect();
    let returned: HashSet<&str> = placed.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(returned.len(), CALLS, "one call id per idempotency key");
    for id in &returned {
        assert!(
            by_id.contains_key(id),
            "call {id} returned to a client has no record"
        );
    }
    assert_eq!(records.len(), CALLS, "no record without a returned call id");
    let mut double_dials = 0;
    for id in &returned {
        if sim.state().dials_for(id) > 1 {
            double_dials += 1;
        }
    }
    let never_dialled = returned
        .iter()
        .filter(|id| sim.state().dials_for(id) == 0)
        .count();

    // The allocator's history: no extension leased twice at once.
    let history = cco_platform::db::DbPool::connect(&{
        let mut s = cco_platform::db::DatabaseSettings::sqlite_default("x");
        s.url = alloc_db.url.clone();
        s.migrate_on_start = false;
        s
    })
    .await
    .unwrap();
    let mut rows: Vec<Leased> = cco_platform::sql::Db::new(history.clone())
        .fetch_all(
            "select extension_id, fencing_token, acquired_at, released_at from leases",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.uuid("extension_id").unwrap().to_string(),
                r.i64("fencing_token").unwrap(),
                r.time("acquired_at").unwrap(),
                r.opt_time("released_at").unwrap(),
            )
        })
        .collect();
    history.close().await;
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut overlaps = 0;
    let mut leaks = 0;
    for w in rows.windows(2) {
        if w[0].0 == w[1].0 && w[0].3.is_none_or(|end| end > w[1].2) {
            overlaps += 1;
        }
    }
    for r in &rows {
        leaks += usize::from(r.3.is_none());
    }
    let mut stats_client =
        apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
            ch(a2),
            admin.clone(),
        );
    let stats = stats_client
        .stats(apb::StatsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let count = |s: pb::CallStatus| records.iter().filter(|r| r.status == s as i32).count();
    println!(
        "figures: backend={b:?} calls={CALLS} completed={} failed={} expired={} retried_makecalls={} errors={:?} allocator_kill9={kills} \
         backends_terminated={terminated:?} records_lost={} double_leases={overlaps} leaked_leases={leaks} double_dials={double_dials} \
         never_dialled={never_dialled} pool_in_use={} pool_available={} leases_granted={} seconds={:.1}",
        count(pb::CallStatus::Completed),
        count(pb::CallStatus::Failed),
        count(pb::CallStatus::Expired),
        retries.load(Ordering::Relaxed),
        errors.lock().unwrap(),
        CALLS - returned.iter().filter(|id| by_id.contains_key(*id)).count(),
        stats.in_use,
        stats.available,
        rows.len(),
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(double_dials, 0, "an idempotency key was dialled twice");
    assert_eq!(overlaps, 0, "an extension was leased twice at once");
    assert_eq!(leaks, 0, "a lease was never released");
    assert_eq!(
        (stats.in_use, stats.available),
        (0, EXTENSIONS as u32),
        "pool fully available"
    );
    assert_eq!(kills, 1);
    assert!(
        terminated.iter().all(|n| *n > 0),
        "each termination round hit live connections: {terminated:?}"
    );

    sim.stop().await;
    for s in [gw1, gw2, al2] {
        s.stop();
    }
    Arc::try_unwrap(al1)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap()
        .stop();
}

/// Places one call through `gateway`, returning its call id.
async fn place(gateway: u16, collector: &str, dest: &str) -> String {
    let ch = lazy(gateway);
    let mut c = pb::calls_client::CallsClient::with_interceptor(
        ch,
        BearerInterceptor::new("dev-caller-key"),
    );
    c.make_call(pb::MakeCallRequest {
        tenant_id: "t1".into(),
        collector_id: collector.into(),
        case_id: "case".into(),
        destination_number: dest.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .call_id
}

/// A lazily connected channel to 127.0.0.1:`port`, without a request timeout.
fn lazy(port: u16) -> tonic::transport::Channel {
    crate::common::endpoint(port).connect_lazy()
}

/// The paused-gateway and SIGTERM scenarios' config: leases of `lease_ttl` seconds.
fn tenant_config(sim: &Simulator, lease_ttl: u32) -> pb::ConfigInput {
    pb::ConfigInput {
        max_concurrent_calls: Some(200),
        api_timeout_ms: Some(5_000),
        lease_ttl_seconds: Some(lease_ttl),
        ..crate::common::config(sim, SECRET)
    }
}

/// Waits (bounded by `deadline`) until `call_id` is completed with its lease released.
async fn await_completed(gateway: u16, call_id: &str, deadline: Instant) {
    let ch = lazy(gateway);
    let mut calls = pb::calls_client::CallsClient::with_interceptor(
        ch,
        BearerInterceptor::new("dev-caller-key"),
    );
    loop {
        let r = calls
            .get_call(pb::GetCallRequest {
                tenant_id: "t1".into(),
                call_id: call_id.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        if r.status == pb::CallStatus::Completed as i32 && r.lease_released {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "call {call_id} never completed with its lease released: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Scenario 2, fencing under a pause: a gateway is frozen (SIGSTOP) past its call's lease TTL;
/// the reaper frees the extension and another gateway leases it again; when the frozen gateway
/// resumes (SIGCONT), its late callback handling and late release change nothing for the new
/// lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_gateway_cannot_free_a_re_leased_extension() {
    let alloc_db = TestDb::new(Backend::Postgres).await;
    let gw_db = TestDb::new(Backend::Postgres).await;
    let (a, g1, g2, h1, h2) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    // No reconciliation during this test: only the reaper and the late callback act.
    let slow = |mut env: Vec<(String, String)>| {
        env.push((
            "GATEWAY__CALLS__RECONCILE_AFTER_SECONDS".into(),
            "600".into(),
        ));
        env.push(("GATEWAY__CALLS__MAX_CALL_AGE_SECONDS".into(), "600".into()));
        env
    };
    let gw1 = Svc::spawn("gateway", g1, slow(gateway_env(&gw_db.url, g1, h1, a)));
    wait_ready(g1).await;
    let gw2 = Svc::spawn("gateway", g2, slow(gateway_env(&gw_db.url, g2, h2, a)));
    let mut aenv = allocator_env(&alloc_db.url, a, g2);
    aenv.push(("ALLOCATOR__REAPER__INTERVAL_MS".into(), "200".into()));
    let al = Svc::spawn("allocator", a, aenv);
    for p in [g2, a] {
        wait_ready(p).await;
    }
    let sim = Simulator::start(SimConfig {
        extensions: vec![("8001".into(), true)],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.state().set_script(
        None,
        Script {
            callback: CallbackMode::Lost,
            ..Script::default()
        },
    );
    crate::common::tenant(
        lazy(g2),
        lazy(a),
        tenant_config(&sim, 10),
        2,
        &["8001".into()],
    )
    .await;

    let first = place(g1, "c0", "13900139000").await;
    let paused_at = Instant::now();
    signal(&gw1.child, "-STOP");
    // The lease expires (10 s) and the reaper frees it: wait for the outcome, bounded.
    let ch = lazy(a);
    let mut alloc = apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
        ch.clone(),
        BearerInterceptor::new("dev-admin-key"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while alloc
        .stats(apb::StatsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .in_use
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "the paused call's lease was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        paused_at.elapsed() >= Duration::from_secs(9),
        "freed after {:?}, before the 10 s TTL",
        paused_at.elapsed()
    );
    let second = place(g2, "c1", "13900139001").await;
    let mut calls = pb::calls_client::CallsClient::with_interceptor(
        lazy(g2),
        BearerInterceptor::new("dev-caller-key"),
    );
    let rec2 = calls
        .get_call(pb::GetCallRequest {
            tenant_id: "t1".into(),
            call_id: second.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // Infinity's record of the first call reaches the frozen gateway, which handles it on resume.
    let bill = sim
        .state()
        .bills()
        .into_iter()
        .find(|b| b["customuuid"] == first.as_str())
        .unwrap();
    let url = format!("http://127.0.0.1:{h1}/api/v1/infinity/callback/t1/{SECRET}");
    let late = tokio::spawn(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
            .post(url)
            .json(&serde_json::Value::Object(bill))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&gw1.child, "-CONT");
    assert_eq!(late.await.unwrap().unwrap(), 200);
    await_completed(g2, &first, Instant::now() + Duration::from_secs(30)).await;
    let mut pool = apb::extension_pool_client::ExtensionPoolClient::with_interceptor(
        ch,
        BearerInterceptor::new("dev-admin-key"),
    );
    let ext = pool
        .list_extensions(apb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ext.extensions[0].current_lease_id, rec2.lease_id,
        "the new lease survived the late release"
    );
    assert_eq!(ext.extensions[0].status, apb::ExtensionStatus::InUse as i32);
    sim.stop().await;
    for s in [gw1, gw2, al] {
        s.stop();
    }
}

/// Scenario 3, graceful shutdown: SIGTERM reaches a gateway while 50 MakeCalls are in flight
/// (all 50 waiting on Infinity); each one finishes with a record, the process exits cleanly,
/// and no lease leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_fifty_in_flight_calls() {
    let alloc_db = TestDb::new(Backend::Postgres).await;
    let gw_db = TestDb::new(Backend::Postgres).await;
    let (a, g1, g2, h1, h2) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let mut gw1 = Svc::spawn("gateway", g1, gateway_env(&gw_db.url, g1, h1, a));
    wait_ready(g1).await;
    let al = Svc::spawn("allocator", a, allocator_env(&alloc_db.url, a, g1));
    wait_ready(a).await;
    let numbers: Vec<String> = (1..=50).map(|i| format!("80{i:02}")).collect();
    let sim = Simulator::start(SimConfig {
        extensions: numbers.iter().map(|n| (n.clone(), true)).collect(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // Every dial is answered after 1.5 s; the call record goes to the second gateway.
    sim.state().set_script(
        None,
        Script {
            outcome: Outcome::Slow,
            slow_ms: 1_500,
            callback_delay_ms: 2_000,
            ..Script::default()
        },
    );
    sim.state().set_callback_url(Some(format!(
        "http://127.0.0.1:{h2}/api/v1/infinity/callback/t1/{SECRET}"
    )));
    crate::common::tenant(lazy(g1), lazy(a), tenant_config(&sim, 600), 50, &numbers).await;
    let mut in_flight = Vec::new();
    for w in 0..50 {
        in_flight.push(tokio::spawn(async move {
            let ch = lazy(g1);
            let mut c = pb::calls_client::CallsClient::with_interceptor(
                ch,
                BearerInterceptor::new("dev-caller-key"),
            );
            c.make_call(pb::MakeCallRequest {
                tenant_id: "t1".into(),
                collector_id: format!("c{w}"),
                case_id: format!("case-{w}"),
                destination_number: format!("1390013{w:04}"),
                ..Default::default()
            })
            .await
        }));
    }
    // All 50 are waiting on Infinity: the simulator has received 50 dials.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.state().dial_requests().len() < 50 {
        assert!(
            Instant::now() < deadline,
            "only {} dials arrived",
            sim.state().dial_requests().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&gw1.child, "-TERM");
    let mut ids = Vec::new();
    for t in in_flight {
        let r = t
            .await
            .unwrap()
            .expect("an in-flight call finishes despite SIGTERM");
        ids.push(r.into_inner().call_id);
    }
    let status = gw1.child.wait().unwrap();
    assert!(status.success(), "the gateway exited cleanly: {status:?}");
    // A second gateway takes the callbacks; every call completes and frees its extension.
    let gw2 = Svc::spawn("gateway", g2, gateway_env(&gw_db.url, g2, h2, a));
    wait_ready(g2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        await_completed(g2, id, deadline).await;
    }
    let ch = lazy(a);
    let stats = apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
        ch,
        BearerInterceptor::new("dev-admin-key"),
    )
    .stats(apb::StatsRequest {
        tenant_id: "t1".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!((stats.in_use, stats.available), (0, 50), "no lease leaked");
    sim.stop().await;
    gw1.restart();
    wait_ready(g1).await;
    for s in [gw1, gw2, al] {
        s.stop();
    }
}
