//! Descriptor-driven fuzzing of both services over their real ports: every field of every RPC
//! (enumerated from the contracts' descriptor set, so a new RPC is fuzzed the day it is added)
//! gets random, hostile and boundary values, and the Infinity callback gets hostile bodies,
//! headers and query strings. Asserted: only documented status codes (never INTERNAL or
//! UNKNOWN), every message under 1 KiB, no panic anywhere in the services (a panic hook on
//! their worker threads), and the pool and call invariants afterwards.
//!
//! Seeded and bounded: `FUZZ_SEED` replays a run, `FUZZ_ROUNDS` (default 40) sets the requests
//! per RPC; the seed is printed, and shown when a test fails.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

/// Panics seen on the services' threads (the runtime's workers are named `fuzz-*`).
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn watch_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("fuzz-"))
                && let Ok(mut p) = PANICS.lock()
            {
                p.push(info.to_string());
            }
            default(info);
        }));
    });
}

/// Runs `f` on a runtime of its own whose worker threads are named `fuzz-<n>`, so that a
/// panic in a service task is seen by the hook.
fn on_fuzz_runtime<F: std::future::Future<Output = ()>>(f: F) {
    watch_panics();
    static N: AtomicUsize = AtomicUsize::new(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name_fn(|| format!("fuzz-{}", N.fetch_add(1, Ordering::Relaxed)))
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f);
}

fn seed() -> u64 {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("FUZZ_SEED={seed}");
    seed
}

fn rounds() -> usize {
    std::env::var("FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

/// Strings an attacker would try, plus ids that exist so some requests get deep.
const STRINGS: &[&str] = &[
    "",
    "t1",
    "alice",
    "case-1",
    "8001",
    "13900139000",
    "+1 900 555 0199",
    "110",
    "０１２３",
    "a\u{0}b",
    "line\r\nbreak",
    "rtl\u{202e}gnp.exe",
    "\u{feff}",
    "' or 1=1 --",
    "'; drop table extensions; --",
    "../../etc/passwd",
    "%00%0d%0a",
    "<script>alert(1)</script>",
    "javascript:alert(1)",
    "http://127.0.0.1:1/",
    "http://user:pw@127.0.0.1:99999/",
    "00000000-0000-0000-0000-000000000000",
    "0123456789abcdef0123456789abcdef",
    "-1",
    "18446744073709551616",
    "NaN",
    "😀😀😀",
    "租户",
];

fn hostile_string(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0 => "x".repeat(rng.random_range(60..20_000)),
        1 => (0..rng.random_range(0..40))
            .map(|_| char::from_u32(rng.random_range(0..0x11_0000)).unwrap_or('?'))
            .collect(),
        2 => uuid::Uuid::now_v7().to_string(),
        _ => STRINGS[rng.random_range(0..STRINGS.len())].to_owned(),
    }
}

fn scalar(kind: &Kind, rng: &mut StdRng) -> Value {
    let edge_i64 = [
        0,
        1,
        -1,
        i64::MAX,
        i64::MIN,
        86_400,
        86_401,
        10_000,
        1_000_000,
    ];
    let edge_u64 = [0, 1, u64::MAX, 86_400, 86_401, 10_001, 1_000_000];
    match kind {
        Kind::String => Value::String(hostile_string(rng)),
        Kind::Bytes => Value::Bytes(
            (0..rng.random_range(0..64))
                .map(|_| rng.random::<u8>())
                .collect::<Vec<_>>()
                .into(),
        ),
        Kind::Bool => Value::Bool(rng.random()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(if rng.random_bool(0.5) {
            [0, 1, -1, i32::MAX, i32::MIN][rng.random_range(0..5)]
        } else {
            rng.random()
        }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(if rng.random_bool(0.5) {
            edge_i64[rng.random_range(0..edge_i64.len())]
        } else {
            rng.random()
        }),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(if rng.random_bool(0.5) {
            [0, 1, u32::MAX, 300, 86_400, 10_001][rng.random_range(0..6)]
        } else {
            rng.random()
        }),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(if rng.random_bool(0.5) {
            edge_u64[rng.random_range(0..edge_u64.len())]
        } else {
            rng.random()
        }),
        Kind::Float => Value::F32(rng.random()),
        Kind::Double => Value::F64(rng.random()),
        // Known values and some that are not.
        Kind::Enum(e) => {
            let known: Vec<i32> = e.values().map(|v| v.number()).collect();
            Value::EnumNumber(if rng.random_bool(0.8) {
                known[rng.random_range(0..known.len())]
            } else {
                rng.random_range(-5..1_000)
            })
        }
        Kind::Message(m) => Value::Message(message(m, rng, 1)),
    }
}

fn field_value(f: &FieldDescriptor, rng: &mut StdRng, depth: u32) -> Option<Value> {
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else {
            return None;
        };
        let (k, v) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let n = if rng.random_bool(0.1) {
            40
        } else {
            rng.random_range(0..4)
        };
        let map = (0..n)
            .filter_map(|_| {
                let key = match scalar(&k.kind(), rng) {
                    Value::String(s) => prost_reflect::MapKey::String(s),
                    _ => return None,
                };
                Some((key, scalar(&v.kind(), rng)))
            })
            .collect();
        return Some(Value::Map(map));
    }
    let one = |rng: &mut StdRng| match f.kind() {
        Kind::Message(m) if depth < 3 => Some(Value::Message(message(&m, rng, depth + 1))),
        Kind::Message(_) => None,
        k => Some(scalar(&k, rng)),
    };
    if f.is_list() {
        let n = match rng.random_range(0..10) {
            0 => rng.random_range(500..2_500),
            1 => 0,
            _ => rng.random_range(1..5),
        };
        Some(Value::List((0..n).filter_map(|_| one(rng)).collect()))
    } else {
        one(rng)
    }
}

/// A message with each field set (or left out) at random.
fn message(desc: &MessageDescriptor, rng: &mut StdRng, depth: u32) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    for f in desc.fields() {
        if rng.random_bool(0.25) {
            continue;
        }
        if let Some(v) = field_value(&f, rng, depth) {
            m.set_field(&f, v);
        }
    }
    m
}

/// The codes an RPC may answer with; INTERNAL and UNKNOWN would be a bug.
const DOCUMENTED: &[Code] = &[
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::FailedPrecondition,
    Code::ResourceExhausted,
    Code::Aborted,
    Code::Unavailable,
    Code::Unimplemented,
    // WatchCalls: an event id past the retention or newer than any event.
    Code::OutOfRange,
];

/// Checks the invariants that must survive any input: the pool's counters match its rows,
/// no extension is in use without a lease, every call renders as proto3 JSON with its times
/// in range and its seconds plausible, and both services still answer health checks.
async fn invariants_hold(ctx: &Ctx) {
    let mut pool = ctx.stack.pool(ADMIN).await;
    for tenant in ["t1", "alice", "case-1"] {
        let stats = ctx
            .stack
            .alloc(ADMIN)
            .await
            .stats(apb::StatsRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut rows = Vec::new();
        let mut token = String::new();
        loop {
            let page = pool
                .list_extensions(apb::ListExtensionsRequest {
                    tenant_id: tenant.into(),
                    page_size: 1_000,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            rows.extend(page.extensions);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let in_use = rows
            .iter()
            .filter(|e| e.status == apb::ExtensionStatus::InUse as i32)
            .collect::<Vec<_>>();
        assert_eq!(stats.total as usize, rows.len(), "{tenant}: total");
        assert_eq!(stats.in_use as usize, in_use.len(), "{tenant}: in use");
        assert!(
            in_use.iter().all(|e| !e.current_lease_id.is_empty()),
            "{tenant}: in use without a lease"
        );
    }
    let mut calls = ctx.calls.clone();
    let mut token = String::new();
    loop {
        let page = calls
            .list_calls(pb::ListCallsRequest {
                tenant_id: "t1".into(),
                page_size: 500,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        serde_json::to_string(&page).expect("every call renders as proto3 JSON");
        for c in &page.calls {
            assert!(
                c.talk_seconds <= 86_400 && c.total_seconds <= 86_400,
                "{c:?}"
            );
            assert!(
                c.record_url.is_empty() || c.record_url.starts_with("http"),
                "{c:?}"
            );
            assert!(
                !c.infinity_uuid
                    .chars()
                    .any(cco_platform::validate::is_unsafe_char),
                "{c:?}"
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for svc in [&ctx.stack.gateway, ctx.stack.allocator.as_ref().unwrap()] {
        let mut h = tonic_health::pb::health_client::HealthClient::new(svc.channel().await);
        let s = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            s.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
}

fn no_panics() {
    let panics = PANICS.lock().unwrap();
    assert!(panics.is_empty(), "the services panicked: {panics:#?}");
}

async fn fuzz_rpcs(b: Backend) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let ctx = setup_without_callbacks(b).await;
    let descriptors = DescriptorPool::decode(cco_contracts::FILE_DESCRIPTOR_SET).unwrap();
    let (gw, al) = (
        ctx.stack.gateway.channel().await,
        ctx.stack.allocator.as_ref().unwrap().channel().await,
    );
    let mut sent = 0;
    for service in descriptors.services() {
        let channel = if service.package_name() == "cco.infinity.allocator.v1" {
            al.clone()
        } else {
            gw.clone()
        };
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            for _ in 0..rounds() {
                let body = if rng.random_bool(0.1) {
                    (0..rng.random_range(0..200))
                        .map(|_| rng.random::<u8>())
                        .collect()
                } else {
                    message(&method.input(), &mut rng, 0).encode_to_vec()
                };
                let key = if rng.random_bool(0.8) { ADMIN } else { CALLER };
                // A watch that was accepted streams until the client goes away: it counts as
                // answered once the server accepted it.
                let answer = tokio::time::timeout(Duration::from_secs(30), async {
                    if method.is_server_streaming() {
                        open_raw_stream(channel.clone(), &path, body, Some(key))
                            .await
                            .map(|()| Vec::new())
                    } else {
                        send_raw(channel.clone(), &path, body, Some(key)).await
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("seed {seed}: {path} did not answer within 30 s"));
                if let Err(s) = answer {
                    assert!(
                        DOCUMENTED.contains(&s.code()),
                        "seed {seed}: {path}: {:?} {}",
                        s.code(),
                        s.message()
                    );
                    assert!(
                        s.message().len() < 1_024,
                        "seed {seed}: {path}: message of {} bytes",
                        s.message().len()
                    );
                }
                sent += 1;
            }
        }
    }
    assert!(sent >= 30 * rounds(), "{sent}");
    invariants_hold(&ctx).await;
    no_panics();
    ctx.shutdown().await;
}

/// Hostile callbacks: random bytes, vendor-shaped JSON with hostile values, form bodies; the
/// right and wrong secrets in the path, the query and the header; signatures with extreme
/// timestamps. Answers are 200, 400, 401, 403, 408 or 413 with a short body, and whatever was
/// accepted left every record in range.
async fn fuzz_callbacks(b: Backend) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ctx = setup_without_callbacks(b).await;
    let ids = ctx.place(&["alice", "bob"]).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let base = format!("http://{}/api/v1/infinity/callback", ctx.stack.gateway_http);
    let keys = [
        "billsec",
        "duration",
        "starttime",
        "answertime",
        "endtime",
        "hangupcause",
        "hangupdirection",
        "uuid",
        "id",
        "recordurl",
        "recordfilename",
        "memberid",
        "customuuid",
        "callUuid",
        "BillSec",
    ];
    for _ in 0..rounds() * 25 {
        let mut obj = serde_json::Map::new();
        for _ in 0..rng.random_range(0..10) {
            let k = keys[rng.random_range(0..keys.len())].to_owned();
            let v = match rng.random_range(0..6) {
                0 => serde_json::json!(rng.random::<i64>()),
                1 => serde_json::json!(rng.random::<f64>() * 1e30),
                2 => serde_json::json!(
                    [
                        "0001-01-01 00:00:00",
                        "9999-12-31 23:59:59",
                        "2025-10-16T17:31:13Z",
                        "1760607073000",
                        "",
                        "0"
                    ][rng.random_range(0..6)]
                ),
                _ => serde_json::json!(hostile_string(&mut rng)),
            };
            obj.insert(k, v);
        }
        if rng.random_bool(0.7) {
            obj.insert(
                "customuuid".into(),
                ids[rng.random_range(0..ids.len())].clone().into(),
            );
        }
        let json = serde_json::Value::Object(obj).to_string();
        let (body, ct) = match rng.random_range(0..4) {
            0 => (
                (0..rng.random_range(0..300))
                    .map(|_| rng.random::<u8>())
                    .collect::<Vec<_>>(),
                "application/octet-stream",
            ),
            1 => (
                format!(
                    "customuuid={}&billsec={}&uuid=%00%E2%80%AE",
                    ids[0],
                    rng.random::<i64>()
                )
                .into_bytes(),
                "application/x-www-form-urlencoded",
            ),
            _ => (json.into_bytes(), "application/json"),
        };
        let secret = if rng.random_bool(0.6) {
            SECRET.to_owned()
        } else {
            hostile_string(&mut rng)
        };
        let url = match rng.random_range(0..3) {
            0 => format!("{base}/t1/{}", urlencode(&secret)),
            1 => format!(
                "{base}/call-record?tenant={}&k={}",
                urlencode(&hostile_string(&mut rng)),
                urlencode(&secret)
            ),
            _ => format!("{base}/call-record?tenant=t1"),
        };
        let mut r = client.post(&url).header("content-type", ct);
        if rng.random_bool(0.3) {
            let ts = [i64::MIN, i64::MAX, 0, chrono::Utc::now().timestamp()]
                [rng.random_range(0..4)]
            .to_string();
            r = r.header("x-cco-timestamp", ts.clone()).header(
                "x-cco-signature",
                call_gateway_svc::http::sign(&secret, &ts, &body),
            );
        } else if rng.random_bool(0.3)
            && let Ok(v) = reqwest::header::HeaderValue::from_str(&secret)
        {
            r = r.header("x-callback-secret", v);
        }
        let resp = r
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert!(
            [200, 400, 401, 403, 404, 405, 408, 413, 415].contains(&status),
            "seed {seed}: {status} {text}"
        );
        assert!(text.len() < 256, "seed {seed}: {}", text.len());
    }
    for id in &ids {
        let r = ctx.get(id).await;
        assert!(
            r.talk_seconds <= 86_400 && r.total_seconds <= 86_400,
            "seed {seed}: {r:?}"
        );
    }
    invariants_hold(&ctx).await;
    no_panics();
    ctx.shutdown().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every RPC of both services fuzzed on PostgreSQL.
#[test]
fn fuzz_every_rpc_on_postgres() {
    on_fuzz_runtime(fuzz_rpcs(Backend::Postgres));
}

/// Every RPC of both services fuzzed on SQLite.
#[test]
fn fuzz_every_rpc_on_sqlite() {
    on_fuzz_runtime(fuzz_rpcs(Backend::Sqlite));
}

/// The callback endpoint fuzzed on PostgreSQL.
#[test]
fn fuzz_callbacks_on_postgres() {
    on_fuzz_runtime(fuzz_callbacks(Backend::Postgres));
}

/// The callback endpoint fuzzed on SQLite.
#[test]
fn fuzz_callbacks_on_sqlite() {
    on_fuzz_runtime(fuzz_callbacks(Backend::Sqlite));
}
