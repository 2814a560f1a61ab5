//! Live call events: each call's events in order with dense per-tenant ids, resuming without
//! gaps or repeats, OUT_OF_RANGE past the retention, a watcher on another replica, a slow
//! consumer cut off cleanly, and streams ending on shutdown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;
use call_gateway_svc::app::{Application, stores_for};
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use tokio_util::sync::CancellationToken;
use tonic::Code;

type Events = tonic::Streaming<pb::CallEvent>;

async fn watch(calls: &mut CallsClient, req: pb::WatchCallsRequest) -> Events {
    calls.watch_calls(req).await.unwrap().into_inner()
}

/// Reads events until `done` says so (30 s at most).
async fn read_until(
    s: &mut Events,
    mut done: impl FnMut(&[pb::CallEvent]) -> bool,
) -> Vec<pb::CallEvent> {
    let mut out = Vec::new();
    while !done(&out) {
        let e = tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("the next event within 30 s")
            .unwrap()
            .expect("the stream stays open");
        out.push(e);
    }
    out
}

fn completed(n: usize) -> impl FnMut(&[pb::CallEvent]) -> bool {
    move |evs| {
        evs.iter()
            .filter(|e| e.r#type == pb::CallEventType::Completed as i32)
            .count()
            >= n
    }
}

/// Places a call, waiting for a free extension when the small pool is busy.
async fn place(calls: &mut CallsClient, req: pb::MakeCallRequest) {
    loop {
        match calls.make_call(req.clone()).await {
            Ok(_) => return,
            Err(s) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}

fn make(i: usize) -> pb::MakeCallRequest {
    pb::MakeCallRequest {
        tenant_id: "t1".into(),
        collector_id: if i.is_multiple_of(2) { "alice" } else { "bob" }.into(),
        case_id: format!("case-{i}"),
        destination_number: "13900139000".into(),
        ..Default::default()
    }
}

/// Per call, the event types in order.
fn by_call(evs: &[pb::CallEvent]) -> HashMap<String, Vec<i32>> {
    let mut m: HashMap<String, Vec<i32>> = HashMap::new();
    for e in evs {
        m.entry(e.call_id.clone()).or_default().push(e.r#type);
    }
    m
}

cco_platform::on_backends!(
    [postgres = Postgres, sqlite = Sqlite][events_come_in_order_and_resume_exactly]
);

async fn events_come_in_order_and_resume_exactly(b: Backend) {
    let ctx = setup(
        b,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |_| {},
    )
    .await;
    let mut calls = ctx.calls.clone();
    // A watcher from the next event on, opened before any call.
    let mut live = watch(
        &mut calls,
        pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        },
    )
    .await;
    let n = 6;
    for i in 0..n {
        place(&mut calls, make(i)).await;
    }
    let evs = read_until(&mut live, completed(n)).await;
    let ids: Vec<u64> = evs.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "dense, increasing ids from 1"
    );
    let created = pb::CallEventType::Created as i32;
    let ringing = pb::CallEventType::Ringing as i32;
    let done = pb::CallEventType::Completed as i32;
    let calls_seen = by_call(&evs);
    assert_eq!(calls_seen.len(), n);
    for (id, types) in &calls_seen {
        assert_eq!(types, &[created, ringing, done], "call {id}");
    }
    let last_done = evs.iter().rfind(|e| e.r#type == done).unwrap();
    assert!(last_done.talk_seconds > 0 || last_done.result != pb::CallResult::Connected as i32);

    // Resuming after any id gives exactly the rest, in order.
    let k = 4;
    let mut resumed = watch(
        &mut calls,
        pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            after_event_id: k,
            ..Default::default()
        },
    )
    .await;
    let rest = read_until(&mut resumed, |got| got.len() == evs.len() - k as usize).await;
    assert_eq!(rest, evs[k as usize..].to_vec());
    // A collector filter and a call filter.
    let mut bobs = watch(
        &mut calls,
        pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            collector_id: "bob".into(),
            from_start: true,
            ..Default::default()
        },
    )
    .await;
    let bob_evs = read_until(&mut bobs, completed(n / 2)).await;
    assert!(bob_evs.iter().all(|e| e.collector_id == "bob"));
    let one = &evs[0].call_id;
    let mut single = watch(
        &mut calls,
        pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            call_id: one.clone(),
            from_start: true,
            ..Default::default()
        },
    )
    .await;
    let one_evs = read_until(&mut single, completed(1)).await;
    assert_eq!(
        one_evs.iter().map(|e| e.r#type).collect::<Vec<_>>(),
        [created, ringing, done]
    );
    // The live watcher keeps going: a new call's events arrive after the ones seen.
    place(&mut calls, make(100)).await;
    let more = read_until(&mut live, completed(1)).await;
    assert_eq!(more.first().unwrap().event_id, ids.len() as u64 + 1);

    // Retention: everything older than now goes; older ids are refused, the rest resumes.
    let stores = stores_for(
        &cco_platform::db::DbPool::connect(&{
            let mut s = cco_platform::db::DatabaseSettings::sqlite_default("x");
            s.url = ctx.stack.gateway_db.url.clone();
            s.migrate_on_start = false;
            s
        })
        .await
        .unwrap(),
    );
    let pruned = stores
        .1
        .prune_events(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert!(pruned as usize >= evs.len());
    let last = more.last().unwrap().event_id;
    let err = calls
        .watch_calls(pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            after_event_id: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    let err = calls
        .watch_calls(pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            after_event_id: last + 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    let mut at_end = watch(
        &mut calls,
        pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            after_event_id: last,
            ..Default::default()
        },
    )
    .await;
    place(&mut calls, make(101)).await;
    let after_prune = read_until(&mut at_end, completed(1)).await;
    assert_eq!(after_prune.first().unwrap().event_id, last + 1);
    ctx.stack.shutdown().await;
    ctx.sim.stop().await;
}

/// A second gateway on the stack's database and allocator, and a caller's client of it.
async fn second_replica(
    ctx: &Ctx,
) -> (
    CallsClient,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let allocator_url = format!("http://{}", ctx.stack.allocator.as_ref().unwrap().addr);
    let b = Application::build(gateway_settings(&ctx.stack.gateway_db.url, &allocator_url))
        .await
        .unwrap();
    let b_addr = b.grpc_addr();
    let stop = CancellationToken::new();
    let task = tokio::spawn(b.run_until_stopped(stop.clone()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{b_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client =
        pb::calls_client::CallsClient::with_interceptor(channel, BearerInterceptor::new(CALLER));
    (client, stop, task)
}

/// Two gateways on one PostgreSQL: the callback lands on replica A, the watcher sits on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_on_another_replica_sees_every_event() {
    let ctx = setup(
        Backend::Postgres,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |_| {},
    )
    .await;
    let (mut on_b, b_stop, b_task) = second_replica(&ctx).await;
    let mut watcher = watch(
        &mut on_b,
        pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        },
    )
    .await;
    let mut calls = ctx.calls.clone();
    let n = 10;
    let mut lag = Vec::new();
    let reader = tokio::spawn(async move {
        let mut got: Vec<(pb::CallEvent, chrono::DateTime<chrono::Utc>)> = Vec::new();
        while got
            .iter()
            .filter(|(e, _)| e.r#type == pb::CallEventType::Completed as i32)
            .count()
            < n
        {
            let e = tokio::time::timeout(Duration::from_secs(30), watcher.message())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .unwrap();
            got.push((e, chrono::Utc::now()));
        }
        got
    });
    for i in 0..n {
        place(&mut calls, make(i)).await;
    }
    let got = reader.await.unwrap();
    for (e, at) in &got {
        let written = cco_contracts::time::from_timestamp(e.occurred_at.as_ref().unwrap()).unwrap();
        lag.push((*at - written).num_milliseconds());
    }
    let evs: Vec<_> = got.into_iter().map(|(e, _)| e).collect();
    assert_eq!(
        evs.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        (1..=evs.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(by_call(&evs).len(), n);
    lag.sort_unstable();
    println!(
        "replica B saw {} events written on A: lag p50 {} ms, max {} ms",
        lag.len(),
        lag[lag.len() / 2],
        lag[lag.len() - 1]
    );
    b_stop.cancel();
    b_task.await.unwrap().unwrap();
    ctx.stack.shutdown().await;
    ctx.sim.stop().await;
}

/// A watcher that stops reading is cut off with RESOURCE_EXHAUSTED (its buffers stay bounded)
/// and resumes from its last id; other watchers are unaffected; streams end on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_cut_off_and_streams_end_on_shutdown() {
    let ctx = setup(
        Backend::Sqlite,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |s| {
            s.events.watch_buffer = 16;
        },
    )
    .await;
    // A tiny HTTP/2 window: the server cannot park hundreds of events in the socket.
    let slow_channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", ctx.stack.gateway.addr))
            .unwrap()
            .initial_stream_window_size(1_024)
            .connect()
            .await
            .unwrap();
    let mut slow_client = pb::calls_client::CallsClient::with_interceptor(
        slow_channel,
        BearerInterceptor::new(CALLER),
    );
    let mut slow = watch(
        &mut slow_client,
        pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        },
    )
    .await;
    let mut calls = ctx.calls.clone();
    let mut healthy = watch(
        &mut calls,
        pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        },
    )
    .await;
    let n = 40;
    let mut healthy_seen = Vec::new();
    for i in 0..n {
        place(&mut calls, make(i)).await;
        // The healthy watcher keeps up (created, ringing, completed).
        healthy_seen.extend(read_until(&mut healthy, completed(1)).await);
    }
    assert_eq!(healthy_seen.len(), 3 * n);
    // Now the slow one reads: what it had buffered, then the cut-off.
    let mut read = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.message())
            .await
            .expect("no hang")
        {
            Ok(Some(e)) => read.push(e),
            Ok(None) => panic!(
                "the slow stream ended without an error after {} events",
                read.len()
            ),
            Err(s) => break s,
        }
    };
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        read.len() < 3 * n,
        "it was cut off, not served everything ({})",
        read.len()
    );
    let last = read.last().map_or(0, |e| e.event_id);
    assert!(
        status.message().contains(&last.to_string()),
        "{}",
        status.message()
    );
    // It resumes exactly where it was cut off.
    let mut again = watch(
        &mut calls,
        pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            after_event_id: last,
            ..Default::default()
        },
    )
    .await;
    let rest = read_until(&mut again, |got| got.len() as u64 == 3 * n as u64 - last).await;
    assert_eq!(rest.first().unwrap().event_id, last + 1);

    // Shutdown ends every open watch (the drain does not wait on them).
    let started = Instant::now();
    ctx.stack.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), again.message())
        .await
        .expect("the stream ends");
    assert!(
        matches!(ended, Ok(None)),
        "the stream ends cleanly, not cut: {ended:?}"
    );
    println!("shutdown with open watches took {:?}", started.elapsed());
    ctx.sim.stop().await;
}

/// The other kinds: refused (FAILED), a broken extension tried again (DIALING), an answer that
/// never came (UNKNOWN) and a call Infinity never heard of (EXPIRED), each call's events in
/// the order the record went through them, each with the status it left the call in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_unknown_retried_and_expired_calls_have_their_events() {
    use infinity_sim::{Outcome, Script};
    let ctx = setup(
        Backend::Sqlite,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |s| {
            s.calls.max_call_age_seconds = 3;
        },
    )
    .await;
    let script = |outcome| Script {
        outcome,
        ..Script::default()
    };
    ctx.sim
        .state()
        .set_script(Some("13900139001"), script(Outcome::Refused));
    ctx.sim
        .state()
        .set_script(Some("13900139002"), script(Outcome::ExtNotRegistered));
    ctx.sim
        .state()
        .set_script(Some("13900139003"), script(Outcome::Http500));
    let mut calls = ctx.calls.clone();
    let mut s = watch(
        &mut calls,
        pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        },
    )
    .await;
    let mut ids = HashMap::new();
    for (n, dest) in ["13900139001", "13900139002", "13900139003"]
        .into_iter()
        .enumerate()
    {
        let r = calls
            .make_call(pb::MakeCallRequest {
                destination_number: dest.into(),
                ..make(n)
            })
            .await
            .unwrap()
            .into_inner();
        ids.insert(dest, r.call_id);
    }
    let terminal = [
        pb::CallEventType::Failed as i32,
        pb::CallEventType::Expired as i32,
    ];
    let evs = read_until(&mut s, |got| {
        got.iter().filter(|e| terminal.contains(&e.r#type)).count() == 3
    })
    .await;
    let seen = by_call(&evs);
    use pb::CallEventType as T;
    let kinds = |dest: &str| seen[&ids[dest]].clone();
    assert_eq!(kinds("13900139001"), [T::Created as i32, T::Failed as i32]);
    assert_eq!(
        kinds("13900139002"),
        [T::Created as i32, T::Dialing as i32, T::Failed as i32]
    );
    assert_eq!(
        kinds("13900139003"),
        [T::Created as i32, T::Unknown as i32, T::Expired as i32]
    );
    for e in &evs {
        let expected = match T::try_from(e.r#type).unwrap() {
            T::Created | T::Dialing => pb::CallStatus::Dialing,
            T::Failed => pb::CallStatus::Failed,
            T::Unknown => pb::CallStatus::Unknown,
            T::Expired => pb::CallStatus::Expired,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(e.status, expected as i32, "{e:?}");
    }
    let refused = evs
        .iter()
        .find(|e| e.r#type == T::Failed as i32 && e.call_id == ids["13900139001"])
        .unwrap();
    assert!(
        !refused.error_code.is_empty(),
        "the refusal's code travels with the event"
    );
    ctx.stack.shutdown().await;
    ctx.sim.stop().await;
}

/// Each open watch holds a request slot of the port for its life: one key or person may hold
/// only so many, and a closed watch gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_capped_per_principal() {
    let stack = Stack::start(Backend::Sqlite, false, |s| {
        s.events.max_watches_per_principal = 2;
    })
    .await;
    let calls = |key: &'static str| {
        let stack = &stack;
        async move {
            pb::calls_client::CallsClient::with_interceptor(
                stack.gateway.channel().await,
                BearerInterceptor::new(key),
            )
        }
    };
    let mut caller = calls(CALLER).await;
    let req = || pb::WatchCallsRequest {
        tenant_id: "t-a".into(),
        ..Default::default()
    };
    let first = watch(&mut caller, req()).await;
    let _second = watch(&mut caller, req()).await;
    let err = caller.watch_calls(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("max_watches_per_principal"),
        "{}",
        err.message()
    );
    // Another key is not held back by this one's watches.
    let mut admin = calls(ADMIN).await;
    let _other = watch(&mut admin, req()).await;
    // Closing one gives its slot back (the server notices the client went away).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match caller.watch_calls(req()).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the closed watch's slot never came back: {e:?}"),
        }
    }
    stack.shutdown().await;
}

/// Two replicas on one PostgreSQL, each watching the tenant and each placing calls at once
/// (their sequencers race for the tenant's counter): both watchers see the same events under
/// the same dense ids, each call's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_number_concurrent_calls_once() {
    let ctx = setup(
        Backend::Postgres,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |_| {},
    )
    .await;
    let (on_b, b_stop, b_task) = second_replica(&ctx).await;
    let on_a = ctx.calls.clone();
    let all = || pb::WatchCallsRequest {
        tenant_id: "t1".into(),
        ..Default::default()
    };
    let n = 24;
    let mut readers = Vec::new();
    for mut client in [on_a.clone(), on_b.clone()] {
        let mut s = watch(&mut client, all()).await;
        readers.push(tokio::spawn(async move {
            read_until(&mut s, completed(n)).await
        }));
    }
    let mut placers = Vec::new();
    for (k, client) in [on_a, on_b.clone(), ctx.calls.clone(), on_b]
        .into_iter()
        .enumerate()
    {
        placers.push(tokio::spawn(async move {
            let mut client = client;
            for i in (k..n).step_by(4) {
                place(&mut client, make(i)).await;
            }
        }));
    }
    for p in placers {
        p.await.unwrap();
    }
    let seen_a = readers.remove(0).await.unwrap();
    let seen_b = readers.remove(0).await.unwrap();
    let ids: Vec<u64> = seen_a.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "dense ids");
    let upto = seen_a.len().min(seen_b.len());
    assert_eq!(
        seen_a[..upto],
        seen_b[..upto],
        "both replicas see the same numbering"
    );
    let calls_seen = by_call(&seen_a);
    assert_eq!(calls_seen.len(), n);
    // A callback that overtakes the ringing mark leaves RINGING out; the order never changes.
    let (created, ringing, done) = (
        pb::CallEventType::Created as i32,
        pb::CallEventType::Ringing as i32,
        pb::CallEventType::Completed as i32,
    );
    for (id, types) in calls_seen {
        assert!(
            types == [created, ringing, done] || types == [created, done],
            "call {id}: {types:?}"
        );
    }
    b_stop.cancel();
    b_task.await.unwrap().unwrap();
    ctx.stack.shutdown().await;
    ctx.sim.stop().await;
}
