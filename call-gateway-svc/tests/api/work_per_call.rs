//! The database work a call costs, counted by PostgreSQL itself, and the caches that save it:
//! configs and collectors are read from memory, and every replica sees a change made anywhere.

use std::time::Duration;

use cco_contracts::gateway::v1 as pb;
use infinity_sim::Simulator;
use tonic::Code;

use crate::common::*;

/// Transactions committed in a database since it was created, once every session on it has
/// ended (a session reports its counts when it ends at the latest), less the sessions' starts.
async fn commits_when_idle(db_url: &str) -> i64 {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(db_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let others: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where datname = current_database() and pid <> pg_backend_pid()",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        if others == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions still open on the database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&mut c)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    // Every session's start is a transaction of its own: counted apart, as pool warm-up.
    let sessions: i64 = sqlx::query_scalar(
        "select sessions from pg_stat_database where datname = current_database()",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    n - sessions
}

/// Places `n` calls one after the other on a fresh PostgreSQL stack, each settled by its
/// callback before the next; stops the services and returns the commits of the gateway's and
/// the allocator's databases, and how long the services ran.
async fn run_calls(n: u64) -> (i64, i64, Duration, i64) {
    let started = tokio::time::Instant::now();
    // Background passes run once at start only: they are not per-call work. Two connections
    // each, so both runs open the same number (a new connection also commits once per
    // statement it prepares).
    // Twelve extensions: on a loaded machine a release can miss the completing transaction's
    // deadline and wait in the outbox, whose worker is off here; the pool must not run dry.
    let extensions: Vec<String> = (8001..=8012).map(|n| n.to_string()).collect();
    let extensions: Vec<&str> = extensions.iter().map(String::as_str).collect();
    let mut ctx = setup_tuned(
        Backend::Postgres,
        pb::CallMode::DoubleCall,
        &extensions,
        |s| {
            s.calls.outbox_interval_ms = 3_600_000;
            s.calls.reconcile_interval_ms = 3_600_000;
            // Nobody watches: events wait for the sequencer's sweep, a clock-driven pass.
            s.events.sequence_interval_ms = 3_600_000;
            s.database.max_connections = 2;
        },
        |a| {
            a.reaper.interval_ms = 3_600_000;
            a.database.max_connections = 2;
        },
    )
    .await;
    ctx.sim.state().set_extensions(&extensions, true);
    for i in 0..n {
        let before = ctx.sim.state().callbacks_answered();
        ctx.calls
            .make_call(req("alice", &format!("1390013{i:04}")))
            .await
            .unwrap();
        wait_for_callbacks(&ctx.sim, before + 1).await;
    }
    // Releases the allocator was too slow for inside the callback's transaction (a loaded
    // machine) are confirmed afterwards, one more commit per batch: counted, not guessed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let page = reqwest::get(format!("http://{}/metrics", ctx.stack.gateway_http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let confirmations = page
        .lines()
        .find(|l| l.starts_with("gateway_coalesced_release_confirmations_statements_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as i64;
    let Ctx { stack, sim, .. } = ctx;
    let gateway_db = stack.gateway_db.url.clone();
    let allocator_db = stack.allocator_db.as_ref().unwrap().url.clone();
    stack.gateway.shutdown().await;
    stack.allocator.unwrap().shutdown().await;
    let ran = started.elapsed();
    sim.stop().await;
    let counts = (
        commits_when_idle(&gateway_db).await,
        commits_when_idle(&allocator_db).await,
        ran,
        confirmations,
    );
    drop((stack.gateway_db, stack.allocator_db));
    counts
}

async fn wait_for_callbacks(sim: &Simulator, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sim.state().callbacks_answered() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "callback {n} never answered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A completed call costs 3 write commits in the gateway's database (the record before the
/// dial, with the compliance gate's attempt and decision when the policy counts nothing;
/// ringing with the collector's last extension; the completion with its release) plus one
/// read-only transaction (the do-not-call lookup before the lease), and 2 in the allocator's
/// (acquire, release), with no batching to help: calls one at a time. Two runs of
/// different length on fresh stacks; the difference is the work of the extra calls alone
/// (start-up, the caches' first fill and the first background passes cancel out).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_costs_three_gateway_writes_one_lookup_and_two_allocator_commits() {
    const SHORT: u64 = 10;
    const LONG: u64 = 50;
    let (gw0, al0, _, conf0) = run_calls(SHORT).await;
    let (gw1, al1, ran, conf1) = run_calls(LONG).await;
    let extra = i64::try_from(LONG - SHORT).unwrap();
    // Work driven by the clock, not by calls, is allowed for as long as the longer run took: a
    // gauge pass every 5 s and a ping of the change listener every 15 s (one commit each),
    // plus two for passes that land in one run and not the other, plus the confirmations of
    // releases sent after a commit (none when the allocator answers in time). On a quiet
    // machine the difference is exactly 4 per call; a loaded one stretches the runs.
    let secs = i64::try_from(ran.as_secs()).unwrap() + 1;
    let clock = secs / 5 + 1 + secs / 15 + 1 + 2 + (conf1 - conf0).max(0);
    assert!(
        gw1 - gw0 <= 4 * extra + clock,
        "gateway: {} commits for {extra} calls ({gw0} for {SHORT}, {gw1} for {LONG} in {ran:?})",
        gw1 - gw0
    );
    assert!(
        al1 - al0 <= 2 * extra + 2,
        "allocator: {} commits for {extra} calls ({al0} for {SHORT}, {al1} for {LONG})",
        al1 - al0
    );
}

/// Retries `place` until it is refused with `code` (a replica sees another's change once its
/// notification arrives: milliseconds on PostgreSQL, at once on SQLite).
async fn refused_soon(calls: &mut CallsClient, collector: &str, code: Code, says: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut i = 0u32;
    loop {
        i += 1;
        match calls
            .make_call(req(collector, &format!("1390014{i:04}")))
            .await
        {
            Err(e) if e.code() == code && e.message().contains(says) => return,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the replica never saw the change: {other:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Replica B has the collector and the config in its caches; changes made through replica A
/// and by hand in the database reach B: a collector switched off, a config switched off.
async fn caches_follow_changes_made_elsewhere(b: Backend) {
    let mut ctx = setup(
        b,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003", "8004"],
        |_| {},
    )
    .await;
    let (replica, mut calls_b, _) = second_replica(&ctx.stack, |_| {}).await;
    // Both replicas read (and cache) the config and alice.
    calls_b
        .make_call(req("alice", "13900139001"))
        .await
        .unwrap();
    ctx.calls
        .make_call(req("alice", "13900139003"))
        .await
        .unwrap();
    // Through A: A itself refuses at once (its own write moves its cache epoch), B soon.
    ctx.stack
        .collectors(ADMIN)
        .await
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
            callback_number: "13800138001".into(),
            display_name: "alice".into(),
            active: Some(false),
        })
        .await
        .unwrap();
    let e = ctx
        .calls
        .make_call(req("alice", "13900139004"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("inactive"), "{e:?}");
    refused_soon(&mut calls_b, "alice", Code::FailedPrecondition, "inactive").await;
    // By hand, behind both services.
    calls_b.make_call(req("bob", "13900139002")).await.unwrap();
    let n = exec_sql(
        &ctx.stack.gateway_db.url,
        "update infinity_call_configs set is_active = false where tenant_id = 't1'",
    )
    .await;
    assert_eq!(n, 1);
    refused_soon(&mut calls_b, "bob", Code::FailedPrecondition, "inactive").await;
    refused_soon(&mut ctx.calls, "bob", Code::FailedPrecondition, "inactive").await;
    replica.shutdown().await;
    ctx.shutdown().await;
}

/// With the cache turned off (`calls.cache_ttl_seconds = 0`) every call reads the store: a
/// change by hand is seen by the very next call.
async fn no_cache_reads_every_time(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001", "8002"], |s| {
        s.calls.cache_ttl_seconds = 0;
    })
    .await;
    ctx.calls
        .make_call(req("alice", "13900139001"))
        .await
        .unwrap();
    exec_sql(
        &ctx.stack.gateway_db.url,
        "update collectors set active = false where collector_id = 'alice'",
    )
    .await;
    let e = ctx
        .calls
        .make_call(req("alice", "13900139002"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("inactive"), "{e:?}");
    ctx.shutdown().await;
}

cco_platform::on_every_backend!(
    caches_follow_changes_made_elsewhere,
    no_cache_reads_every_time
);

/// The sessions of the gateway's change listener on its database.
async fn listener_sessions(db_url: &str) -> Vec<i32> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(db_url).await.unwrap();
    let pids: Vec<i32> = sqlx::query_scalar(
        "select pid from pg_stat_activity where datname = current_database() \
         and (query like 'LISTEN%' or query = 'select 1')",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    pids
}

/// The change listener's connection is killed: the replica listens again on a new one, and a
/// change made by hand afterwards still reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caches_follow_changes_after_the_listener_reconnects() {
    let mut ctx = setup(
        Backend::Postgres,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003", "8004"],
        |_| {},
    )
    .await;
    let url = ctx.stack.gateway_db.url.clone();
    ctx.calls
        .make_call(req("alice", "13900139001"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let first = loop {
        let pids = listener_sessions(&url).await;
        if let [pid] = pids[..] {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no listener: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    exec_sql(&url, &format!("select pg_terminate_backend({first})")).await;
    loop {
        let pids = listener_sessions(&url).await;
        if let [pid] = pids[..]
            && pid != first
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener never came back: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.calls
        .make_call(req("alice", "13900139002"))
        .await
        .unwrap();
    exec_sql(
        &url,
        "update collectors set active = false where collector_id = 'alice'",
    )
    .await;
    refused_soon(
        &mut ctx.calls,
        "alice",
        Code::FailedPrecondition,
        "inactive",
    )
    .await;
    ctx.shutdown().await;
}
