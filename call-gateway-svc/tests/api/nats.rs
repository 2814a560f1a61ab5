//! Call events to NATS JetStream through an outage: the test runs its own `nats-server -js` on
//! a private port (never the machine's shared one), stops it while 500 calls are placed and
//! completed, starts it again on the same store, and then finds every event in the stream
//! exactly once, in order per call, while the calls never waited on NATS.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use cco_contracts::gateway::v1 as pb;
use futures::StreamExt;
use prost::Message;

/// A private nats-server with JetStream, its store kept across restarts.
struct Nats {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = Self {
            child: None,
            port,
            store: tempfile::tempdir().unwrap(),
        };
        n.up();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (Debian package nats-server; .ci/run installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_reaches_jetstream_once_in_order_through_an_outage() {
    let mut nats = Nats::start();
    let url = nats.url();
    let ctx = setup(
        Backend::Postgres,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |s| {
            s.events.nats_url = url.clone();
            s.events.nats_stream = "CCO_CALLS_TEST".into();
        },
    )
    .await;
    // Collectors c0..c4 exist before the first call.
    let mut coll = ctx.stack.collectors(ADMIN).await;
    for w in 0..5 {
        coll.upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: format!("c{w}"),
            callback_number: format!("1380013800{w}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let total = 500;
    let placed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let workers = 5;
    for w in 0..workers {
        let mut calls = ctx.calls.clone();
        let placed = placed.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < total {
                let r = calls
                    .make_call(pb::MakeCallRequest {
                        tenant_id: "t1".into(),
                        collector_id: format!("c{w}"),
                        case_id: format!("case-{i}"),
                        destination_number: "13900139000".into(),
                        idempotency_key: format!("nats-{i}"),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => {
                        placed.fetch_add(1, Ordering::SeqCst);
                        i += workers;
                    }
                    // No free extension for a moment: the pool is small on purpose.
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(s) => panic!("call {i}: {s:?}"),
                }
            }
        }));
    }
    // The outage: from the 100th call placed to the 300th.
    while placed.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nats.down();
    let down_at = placed.load(Ordering::SeqCst);
    while placed.load(Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let placed_while_down = placed.load(Ordering::SeqCst) - down_at;
    nats.up();
    let back_up = std::time::Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        placed_while_down >= 150,
        "calls went on while NATS was down ({placed_while_down})"
    );

    // Every call completes; then the table holds the truth.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let expected = loop {
        let rows = raw_rows(&ctx.stack.gateway_db.url, "call_events").await;
        let completed = rows.iter().filter(|r| r.contains(",completed,")).count();
        if completed >= total {
            break rows.len();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {completed} calls completed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Read the stream back (a fresh ephemeral consumer from the start).
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("CCO_CALLS_TEST").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut got: BTreeMap<u64, pb::CallEvent> = BTreeMap::new();
    let mut per_call: HashMap<String, Vec<u64>> = HashMap::new();
    let mut duplicates = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut messages = consumer.messages().await.unwrap();
    while got.len() < expected {
        let m = tokio::time::timeout(
            deadline.saturating_duration_since(std::time::Instant::now()),
            messages.next(),
        )
        .await
        .unwrap_or_else(|_| panic!("only {} of {expected} events in JetStream", got.len()))
        .unwrap()
        .unwrap();
        let e = pb::CallEvent::decode(m.payload.clone()).unwrap();
        let kind = pb::CallEventType::try_from(e.r#type).unwrap().as_str_name();
        assert_eq!(
            m.subject.as_str(),
            format!(
                "cco.calls.t1.{}",
                kind.trim_start_matches("CALL_EVENT_TYPE_").to_lowercase()
            )
        );
        per_call
            .entry(e.call_id.clone())
            .or_default()
            .push(e.event_id);
        if got.insert(e.event_id, e).is_some() {
            duplicates += 1;
        }
        m.ack().await.unwrap();
    }
    assert_eq!(duplicates, 0, "an event was stored twice");
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=expected as u64).collect::<Vec<_>>()
    );
    for (call, ids) in &per_call {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "call {call}: out of order {ids:?}"
        );
    }
    let info = js
        .get_stream("CCO_CALLS_TEST")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(info, expected as u64, "the stream holds each event once");
    println!(
        "{total} calls, {expected} events, {placed_while_down} calls placed while NATS was down; \
         all events in JetStream once, in order, {:?} after NATS came back",
        back_up.elapsed()
    );
    ctx.stack.shutdown().await;
    ctx.sim.stop().await;
}

/// With `nats_payload = json`, the payload is the event's proto3 JSON form (on the machine's
/// shared NATS server, in a stream of this test's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_payloads_carry_the_proto3_json_form() {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let unique = format!("t{}", uuid::Uuid::new_v4().simple());
    let stream_name = format!("CCO_TEST_{unique}");
    let prefix = format!("cco.test.{unique}");
    let (stream_s, prefix_s) = (stream_name.clone(), prefix.clone());
    let ctx = setup(
        Backend::Sqlite,
        pb::CallMode::DoubleCall,
        &["8001"],
        move |s| {
            s.events.nats_url = url;
            s.events.nats_stream = stream_s;
            s.events.nats_subject_prefix = prefix_s;
            s.events.nats_payload = "json".into();
        },
    )
    .await;
    let r = ctx
        .calls
        .clone()
        .make_call(pb::MakeCallRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
            case_id: "case-json".into(),
            destination_number: "13900139000".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let client = async_nats::connect(
        std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
    )
    .await
    .expect("the shared NATS server answers (scripts/ensure-nats.sh)");
    let js = async_nats::jetstream::new(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stream = loop {
        if let Ok(s) = js.get_stream(&stream_name).await {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never created {stream_name}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut types = Vec::new();
    while types
        .last()
        .is_none_or(|t| t != "CALL_EVENT_TYPE_COMPLETED")
    {
        let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the call's events within 30 s")
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            v["callId"].as_str().or(v["call_id"].as_str()),
            Some(r.call_id.as_str()),
            "{v}"
        );
        let t = v["type"].as_str().unwrap().to_owned();
        assert_eq!(
            m.subject.as_str(),
            format!(
                "{prefix}.t1.{}",
                t.trim_start_matches("CALL_EVENT_TYPE_").to_lowercase()
            )
        );
        types.push(t);
        m.ack().await.unwrap();
    }
    assert_eq!(
        types,
        [
            "CALL_EVENT_TYPE_CREATED",
            "CALL_EVENT_TYPE_RINGING",
            "CALL_EVENT_TYPE_COMPLETED"
        ]
    );
    js.delete_stream(&stream_name).await.unwrap();
    ctx.stack.shutdown().await;
    ctx.sim.stop().await;
}
