//! A 500-call run with mixed outcomes from the simulator (answered, no answer, busy, refused,
//! lost callbacks, duplicated and camelCase callbacks, HTTP 500) over 20 extensions and 25
//! concurrent clients. Afterwards every record is terminal, every lease released, the pool is
//! fully available, and the allocator's lease history shows no extension leased twice at once.

use std::time::Duration;

use crate::common::*;
use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use infinity_sim::{CallbackMode, Outcome, Script};
use tonic::Code;

const CALLS: usize = 500;
const CLIENTS: usize = 25;

fn script_for(i: usize) -> Script {
    let s = Script::default();
    match i % 10 {
        0..=2 => s,
        3 => Script {
            outcome: Outcome::NoAnswer,
            ..s
        },
        4 => Script {
            outcome: Outcome::Busy,
            ..s
        },
        5 => Script {
            outcome: Outcome::Refused,
            ..s
        },
        6 => Script {
            callback: CallbackMode::Lost,
            ..s
        },
        7 => Script {
            callback: CallbackMode::Duplicated,
            ..s
        },
        8 => Script {
            callback: CallbackMode::CamelCase,
            numbers_as_strings: true,
            ..s
        },
        _ => Script {
            outcome: Outcome::Http500,
            ..s
        },
    }
}

/// (extension, acquired ms, released ms, token) of every lease in the allocator's history.
async fn lease_history(url: &str) -> Vec<(String, i64, Option<i64>, i64)> {
    let mut s = cco_platform::db::DatabaseSettings::sqlite_default("x");
    s.url = url.to_owned();
    let pool = cco_platform::db::DbPool::connect(&s).await.unwrap();
    let rows = cco_platform::sql::Db::new(pool.clone())
        .fetch_all(
            "select extension_id, acquired_at, released_at, fencing_token from leases",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.uuid("extension_id").unwrap().to_string(),
                r.time("acquired_at").unwrap().timestamp_millis(),
                r.opt_time("released_at")
                    .unwrap()
                    .map(|t| t.timestamp_millis()),
                r.i64("fencing_token").unwrap(),
            )
        })
        .collect();
    pool.close().await;
    rows
}

async fn mixed_run(b: Backend) {
    let sim = sim().await;
    let extensions: Vec<String> = (1..=20).map(|i| format!("80{i:02}")).collect();
    let refs: Vec<&str> = extensions.iter().map(String::as_str).collect();
    sim.state().set_extensions(&refs, true);
    for i in 0..10 {
        sim.state()
            .set_script(Some(&format!("13900{i:06}")), script_for(i));
    }
    let stack = Stack::start(b, true, |s| {
        s.calls.outbox_interval_ms = 100;
        s.calls.reconcile_interval_ms = 200;
        s.calls.reconcile_after_seconds = 1;
        s.calls.reconcile_every_seconds = 1;
        s.calls.max_call_age_seconds = 3;
    })
    .await;
    let mut c = stack.configs(ADMIN).await;
    let mut input = valid_input("t1", &sim.api_url());
    input.callback_secret = "mixed-run-secret-00001".into();
    input.max_concurrent_calls = Some(100);
    create(&mut c, input).await;
    let mut coll = stack.collectors(ADMIN).await;
    for w in 0..CLIENTS {
        coll.upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: format!("c{w}"),
            callback_number: format!("138001380{w:02}"),
            display_name: String::new(),
            active: None,
        })
        .await
        .unwrap();
    }
    stack
        .pool(ADMIN)
        .await
        .batch_import(apb::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: String::new(),
            numbers: extensions.clone(),
        })
        .await
        .unwrap();
    sim.state().set_callback_url(Some(format!(
        "http://{}/api/v1/infinity/callback/t1/mixed-run-secret-00001",
        stack.gateway_http
    )));
    let channel = stack.gateway.channel().await;
    let mut workers = Vec::new();
    for w in 0..CLIENTS {
        let mut calls = pb::calls_client::CallsClient::with_interceptor(
            channel.clone(),
            cco_platform::auth::BearerInterceptor::new(CALLER),
        );
        workers.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            for n in (w..CALLS).step_by(CLIENTS) {
                let mut tries = 0;
                loop {
                    let r = pb::MakeCallRequest {
                        tenant_id: "t1".into(),
                        collector_id: format!("c{w}"),
                        case_id: format!("case-{n}"),
                        destination_number: format!("13900{:06}", n % 10),
                        idempotency_key: format!("run-{n}"),
                        ..Default::default()
                    };
                    match calls.make_call(r).await {
                        Ok(resp) => {
                            placed.push(resp.into_inner().call_id);
                            break;
                        }
                        // Pool drained for now: wait for hang-ups (bounded).
                        Err(s) if s.code() == Code::ResourceExhausted && tries < 600 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(s) => panic!("call {n}: {s:?}"),
                    }
                }
            }
            placed
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    assert_eq!(all.len(), CALLS);
    let mut calls = pb::calls_client::CallsClient::with_interceptor(
        channel,
        cco_platform::auth::BearerInterceptor::new(CALLER),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let records = loop {
        let mut records = Vec::new();
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
            records.extend(page.calls);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let open = records
            .iter()
            .filter(|r| {
                !(r.lease_released
                    && matches!(
                        pb::CallStatus::try_from(r.status),
                        Ok(pb::CallStatus::Completed
                            | pb::CallStatus::Failed
                            | pb::CallStatus::Expired)
                    ))
            })
            .count();
        if open == 0 {
            break records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} calls still open or holding a lease"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(records.len(), CALLS, "one record per call");
    let count = |s: pb::CallStatus| records.iter().filter(|r| r.status == s as i32).count();
    assert_eq!(
        count(pb::CallStatus::Failed),
        CALLS / 10,
        "the refused ones"
    );
    assert_eq!(
        count(pb::CallStatus::Expired),
        CALLS / 10,
        "the HTTP 500 ones Infinity never placed"
    );
    assert_eq!(count(pb::CallStatus::Completed), CALLS * 8 / 10);
    for id in &all {
        assert!(sim.state().dials_for(id) <= 1, "call {id} placed twice");
    }
    let stats = stack
        .alloc(CALLER)
        .await
        .stats(apb::StatsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stats.in_use, stats.available),
        (0, 20),
        "pool fully available"
    );
    let mut history = lease_history(&stack.allocator_db.as_ref().unwrap().url).await;
    history.sort_by(|a, b| (a.0.as_str(), a.3).cmp(&(b.0.as_str(), b.3)));
    for w in history.windows(2) {
        if w[0].0 == w[1].0 {
            let end = w[0].2.expect("every lease released");
            assert!(
                end <= w[1].1,
                "extension {} leased twice at once: {:?} {:?}",
                w[0].0,
                w[0],
                w[1]
            );
        }
    }
    stack.shutdown().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_run_postgres() {
    mixed_run(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_run_sqlite() {
    mixed_run(Backend::Sqlite).await;
}
