//! Hostile input, one defect class per test (docs/reliability.md, "Hostile input"). Every test
//! goes through the real gRPC and HTTP ports of a running gateway (and allocator), with the
//! simulator as Infinity.

use std::time::{Duration, Instant};

use crate::common::*;
use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use prost_reflect::DescriptorPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Places a call and posts `fields` (plus its customuuid) as its callback; returns the record.
async fn call_with_callback(ctx: &mut Ctx, fields: serde_json::Value) -> pb::CommunicationRecord {
    let id = ctx.place(&["alice"]).await.remove(0);
    call_with_existing(ctx, &id, fields).await
}

/// Shanghai wall-clock text of a moment `offset_secs` from now (the tenant's callback zone).
fn local(offset_secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_secs))
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

// --- 1. Arithmetic on untrusted numbers ------------------------------------------------------

/// A signing proxy's timestamp at either end of i64 is stale (401), never an overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_signature_timestamps_are_refused() {
    let ctx = setup_without_callbacks(Backend::Sqlite).await;
    let url = format!(
        "http://{}/api/v1/infinity/callback/call-record?tenant=t1",
        ctx.stack.gateway_http
    );
    let body = r#"{"customuuid":"00000000000000000000000000000000"}"#;
    for ts in ["-9223372036854775808", "9223372036854775807"] {
        let sig = call_gateway_svc::http::sign(SECRET, ts, body.as_bytes());
        let resp = http()
            .post(&url)
            .header("content-type", "application/json")
            .header("x-cco-timestamp", ts)
            .header("x-cco-signature", sig)
            .body(body)
            .send()
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(resp.status(), 401, "timestamp {ts}");
    }
    ctx.shutdown().await;
}

// --- 2. Out-of-range times -------------------------------------------------------------------

/// Year 1 and year 9999 times are not stored, and ListCalls renders as proto3 JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_times_far_from_the_call_are_absent() {
    let mut ctx = setup_without_callbacks(Backend::Postgres).await;
    let rec = call_with_callback(
        &mut ctx,
        serde_json::json!({"billsec": 0, "starttime": local(-5), "answertime": "9999-12-31 23:59:59",
                           "endtime": "0001-01-01 00:00:00"}),
    )
    .await;
    assert!(rec.start_time.is_some());
    assert!(
        rec.answer_time.is_none() && rec.end_time.is_none(),
        "{rec:?}"
    );
    let page = ctx
        .calls
        .list_calls(pb::ListCallsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    serde_json::to_string(&page).expect("every timestamp renders in proto3 JSON");
    ctx.shutdown().await;
}

// --- 3. Callback values --------------------------------------------------------------------

/// billsec of 1e30 is not a talk time: talk seconds stay 0 and the call is not connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_talk_seconds_are_absent() {
    let mut ctx = setup_without_callbacks(Backend::Sqlite).await;
    let rec = call_with_callback(
        &mut ctx,
        serde_json::json!({"billsec": 1e30, "duration": -3, "hangupcause": 10016}),
    )
    .await;
    assert_eq!((rec.talk_seconds, rec.total_seconds), (0, 0));
    assert_eq!(rec.result, pb::CallResult::NoAnswer as i32);
    ctx.shutdown().await;
}

/// An answer or end before the start is dropped, not stored as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_before_the_start_are_absent() {
    let mut ctx = setup_without_callbacks(Backend::Sqlite).await;
    let rec = call_with_callback(
        &mut ctx,
        serde_json::json!({"billsec": 0, "starttime": local(-5), "answertime": local(-60), "endtime": local(-120)}),
    )
    .await;
    assert!(rec.start_time.is_some());
    assert!(
        rec.answer_time.is_none() && rec.end_time.is_none(),
        "{rec:?}"
    );
    assert_eq!(rec.result, pb::CallResult::NotConnected as i32);
    ctx.shutdown().await;
}

/// An ISO-8601 answer time with billsec 0 is a connected call (it used to be dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iso_and_epoch_times_are_read() {
    let mut ctx = setup_without_callbacks(Backend::Sqlite).await;
    let now = chrono::Utc::now();
    let rec = call_with_callback(
        &mut ctx,
        serde_json::json!({"billsec": "0",
            "starttime": (now - chrono::Duration::seconds(40)).to_rfc3339(),
            "answertime": (now - chrono::Duration::seconds(30)).format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "endtime": (now.timestamp_millis()).to_string()}),
    )
    .await;
    assert_eq!(rec.result, pb::CallResult::Connected as i32);
    assert_eq!(
        rec.answer_time.unwrap().seconds,
        (now - chrono::Duration::seconds(30)).timestamp()
    );
    assert_eq!(rec.end_time.unwrap().seconds, now.timestamp());
    ctx.shutdown().await;
}

/// A `javascript:` recording URL is never stored or handed out by GetRecording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_http_recording_urls_are_kept() {
    let mut ctx = setup_without_callbacks(Backend::Sqlite).await;
    let rec = call_with_callback(
        &mut ctx,
        serde_json::json!({"billsec": 12, "recordurl": "javascript:alert(document.cookie)"}),
    )
    .await;
    assert_eq!(rec.record_url, "");
    let e = ctx
        .calls
        .get_recording(pb::GetRecordingRequest {
            tenant_id: "t1".into(),
            call_id: rec.call_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        rec.raw_callback.contains("javascript:"),
        "the raw payload keeps it for audit"
    );
    ctx.shutdown().await;
}

/// NUL and right-to-left-override characters never reach vendor ids or file names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_never_reach_vendor_fields() {
    let mut ctx = setup_without_callbacks(Backend::Postgres).await;
    let rec = call_with_callback(
        &mut ctx,
        serde_json::json!({"billsec": 3, "uuid": "db4a\u{0}\u{202e}9f", "recordfilename": "rec\u{202e}3pm.exe\u{0}"}),
    )
    .await;
    assert_eq!(
        rec.infinity_uuid, "",
        "an id with control characters is not kept"
    );
    assert_eq!(rec.record_filename, "rec3pm.exe");
    ctx.shutdown().await;
}

// --- 4. Errors echo bad input ----------------------------------------------------------------

/// A 12,000- or 20,000-character bad value gets INVALID_ARGUMENT with a short message quoting a
/// prefix (past 16 KiB it used to become RESOURCE_EXHAUSTED about header size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quote_only_a_prefix_of_bad_values() {
    let mut ctx = setup_without_callbacks(Backend::Sqlite).await;
    for n in [12_000, 20_000] {
        let e = ctx
            .calls
            .get_call(pb::GetCallRequest {
                tenant_id: "t1".into(),
                call_id: "z".repeat(n),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{n}: {e:?}");
        assert!(
            e.message().len() < 200 && e.message().starts_with("call_id:"),
            "{n}: {}",
            e.message()
        );
        assert!(e.message().contains(&format!("({n} characters)")));
    }
    let e = ctx
        .stack
        .alloc(CALLER)
        .await
        .acquire(apb::AcquireRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
            request_id: "r".into(),
            ttl_seconds: 0,
            strategy: 0,
        })
        .await
        .map(|_| ())
        .and(
            ctx.stack
                .pool(ADMIN)
                .await
                .get_extension(apb::GetExtensionRequest {
                    tenant_id: "t1".into(),
                    extension_id: "9".repeat(20_000),
                })
                .await
                .map(|_| ()),
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() < 200, "{}", e.message());
    ctx.shutdown().await;
}

// --- 5. Malformed protobuf -------------------------------------------------------------------

/// Posts `frame` as the gRPC body of `path` over HTTP/2 (h2c) with the admin key; returns the
/// grpc-status of the answer (errors come as headers only).
async fn raw_grpc(addr: std::net::SocketAddr, path: &str, frame: Vec<u8>) -> (i32, String) {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(frame)
        .send()
        .await
        .unwrap();
    let h = resp.headers();
    let code = h
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    let msg = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (code, msg)
}

/// Sends `message` (raw bytes) as the only message of a client stream; returns the code the
/// response stream ends with.
async fn stream_raw(addr: std::net::SocketAddr, path: &str, message: Vec<u8>) -> Code {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(futures::stream::iter([message]));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    let mut replies = match grpc.streaming(req, path.parse().unwrap(), Raw).await {
        Ok(r) => r.into_inner(),
        Err(s) => return s.code(),
    };
    loop {
        match replies.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Code::Ok,
            Err(s) => return s.code(),
        }
    }
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// Bytes that are not a request are the client's error on every RPC of both services: a string
/// that is not UTF-8, a truncated message, a truncated frame, no message at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_argument_on_every_rpc() {
    let stack = Stack::pair(Backend::Sqlite).await;
    let descriptors = DescriptorPool::decode(cco_contracts::FILE_DESCRIPTOR_SET).unwrap();
    let mut checked = 0;
    for service in descriptors.services() {
        let addr = if service.package_name() == "cco.infinity.allocator.v1" {
            stack.allocator.as_ref().unwrap().addr
        } else {
            stack.gateway.addr
        };
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let string_field = method
                .input()
                .fields()
                .find(|f| matches!(f.kind(), prost_reflect::Kind::String))
                .map_or(1, |f| f.number());
            let tag = u8::try_from(string_field << 3 | 2).unwrap();
            if method.is_client_streaming() && method.is_server_streaming() {
                // Messages both ways (the allocator's lease channel): a bad one ends the stream
                // with INVALID_ARGUMENT in its trailers; no message at all is an empty stream, and
                // a frame cut short cannot be sent through a client that frames for itself.
                for (what, message) in [
                    ("non-UTF-8 string", vec![tag, 2, 0xff, 0xfe]),
                    ("truncated message", vec![tag, 5, b'a']),
                ] {
                    let code = stream_raw(addr, &path, message).await;
                    assert_eq!(code, Code::InvalidArgument, "{path}: {what}");
                }
                checked += 1;
                continue;
            }
            let bodies = [
                ("non-UTF-8 string", framed(&[tag, 2, 0xff, 0xfe])),
                ("truncated message", framed(&[tag, 5, b'a'])),
                ("truncated frame", {
                    let mut f = framed(&[tag, 1, b'a']);
                    f[4] = 50;
                    f
                }),
                ("no message", Vec::new()),
            ];
            for (what, body) in bodies {
                let (code, msg) = raw_grpc(addr, &path, body).await;
                assert_eq!(code, Code::InvalidArgument as i32, "{path}: {what}: {msg}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} RPCs");
    stack.shutdown().await;
}

// --- 6. Read and idle timeouts, connection caps ----------------------------------------------

/// Reads until the server closes the connection; returns what it sent and how long that took.
async fn until_closed(mut s: TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), s.read(&mut buf)).await {
            Err(_) => panic!(
                "still open after {within:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0) | Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Clients that never finish their headers are cut off after the header timeout, while
/// another client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_while_others_are_served() {
    let stack = Stack::start(Backend::Sqlite, false, |s| {
        s.http.header_read_timeout_seconds = 3;
    })
    .await;
    let client = http();
    let mut slow = Vec::new();
    let started = Instant::now();
    for _ in 0..30 {
        let mut s = TcpStream::connect(stack.gateway_http).await.unwrap();
        s.write_all(b"POST /api/v1/infinity/callback/call-record HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let ok = client
        .get(format!("http://{}/healthz", stack.gateway_http))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "served while 30 clients dawdle"
    );
    for s in slow {
        let (got, _) = until_closed(s, Duration::from_secs(15)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(2_800),
            "closed by the timeout, after {took:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    stack.shutdown().await;
}

/// A body sent at a trickle gets 408 once the body deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_bodies_get_408() {
    let stack = Stack::start(Backend::Sqlite, false, |s| {
        s.http.body_read_timeout_seconds = 1;
    })
    .await;
    let mut s = TcpStream::connect(stack.gateway_http).await.unwrap();
    s.write_all(b"POST /api/v1/infinity/callback/t1/secret HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(b" ").await.is_err() {
                break;
            }
        }
        s
    });
    let mut s = writer.await.unwrap();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    stack.shutdown().await;
}

/// A connection with nothing in progress is closed after the idle timeout on every port of
/// both services: a silent TCP connection, and an HTTP/2 connection that finished its
/// handshake but sends no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_on_every_port() {
    let gw = Stack::start(Backend::Sqlite, false, |s| {
        s.grpc.idle_timeout_seconds = 1;
        s.grpc.keepalive_interval_seconds = 0;
        s.http.idle_timeout_seconds = 1;
    })
    .await;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut als = allocator_svc::settings::Settings::default();
    als.database.url = db.url.clone();
    als.auth.api_keys = secrecy::SecretString::from(KEYS);
    als.policy.source = allocator_svc::settings::PolicySourceKind::Static;
    als.grpc.host = "127.0.0.1".into();
    als.grpc.port = 0;
    als.grpc.idle_timeout_seconds = 1;
    als.metrics.host = "127.0.0.1".into();
    als.metrics.port = 0;
    als.metrics.idle_timeout_seconds = 1;
    let app = allocator_svc::app::Application::build(als).await.unwrap();
    let (al_grpc, al_metrics) = (app.grpc_addr(), app.metrics_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let al = tokio::spawn(app.run_until_stopped(stop.clone()));
    let h2_preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    for (port, hello) in [
        (gw.gateway.addr, &b""[..]),
        (gw.gateway.addr, h2_preface),
        (gw.gateway_http, b""),
        (gw.gateway_http, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        (al_grpc, b""),
        (al_grpc, h2_preface),
        (al_metrics, b""),
    ] {
        let mut s = TcpStream::connect(port).await.unwrap();
        s.write_all(hello).await.unwrap();
        let (_, took) = until_closed(s, Duration::from_secs(15)).await;
        assert!(
            took >= Duration::from_millis(800),
            "{port}: closed after {took:?}"
        );
    }
    stop.cancel();
    al.await.unwrap().unwrap();
    gw.shutdown().await;
}

/// An RPC that takes longer than the idle timeout is not cut: idle means nothing in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_call_outlives_the_idle_timeout() {
    let mut ctx = setup(Backend::Sqlite, pb::CallMode::DoubleCall, &["8001"], |s| {
        s.grpc.idle_timeout_seconds = 1;
    })
    .await;
    ctx.slow_infinity(1_800);
    let started = Instant::now();
    let call = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    assert!(started.elapsed() >= Duration::from_millis(1_800));
    assert_ne!(call.status, pb::CallStatus::Failed as i32, "{call:?}");
    ctx.shutdown().await;
}

/// Over the connection cap a connection is closed at once; a freed slot serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once() {
    let stack = Stack::start(Backend::Sqlite, false, |s| {
        s.http.max_connections = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(stack.gateway_http).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "served within the cap"
        );
        held.push(s);
    }
    let extra = TcpStream::connect(stack.gateway_http).await.unwrap();
    let (got, took) = until_closed(extra, Duration::from_secs(5)).await;
    assert!(got.is_empty() && took < Duration::from_secs(2), "{took:?}");
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = http()
            .get(format!("http://{}/healthz", stack.gateway_http))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.shutdown().await;
}

// --- 7. Forced DeleteConfig --------------------------------------------------------------------

/// A forced delete ends the tenant's open calls, frees their extensions and deletes the pool;
/// a recreated tenant starts with an empty pool of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_delete_ends_open_calls_and_their_pool() {
    let mut ctx = setup_without_callbacks(Backend::Postgres).await;
    let open = ctx.place(&["alice", "bob"]).await;
    assert_eq!(ctx.stats().await.in_use, 2);
    let mut configs = ctx.stack.configs(ADMIN).await;
    let e = configs
        .delete_config(pb::DeleteConfigRequest {
            tenant_id: "t1".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let done = configs
        .delete_config(pb::DeleteConfigRequest {
            tenant_id: "t1".into(),
            force: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.deleted, done.calls_ended), (true, 2));
    for id in &open {
        let r = ctx.settled(id, pb::CallStatus::Failed).await;
        assert_eq!(r.error_code, "config_deleted");
    }
    let mut pool = ctx.stack.pool(ADMIN).await;
    let left = pool
        .list_extensions(apb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(left.extensions.is_empty(), "{:?}", left.extensions);
    // Recreated: a new config id, and imports land under it.
    let cfg = create(&mut configs, valid_input("t1", &ctx.sim.api_url())).await;
    pool.batch_import(apb::BatchImportRequest {
        tenant_id: "t1".into(),
        config_id: String::new(),
        numbers: (1..=10).map(|i| format!("{}", 8100 + i)).collect(),
    })
    .await
    .unwrap();
    let listed = pool
        .list_extensions(apb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            config_id: cfg.config_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.extensions.len(), 10);
    ctx.shutdown().await;
}

// --- 8. api_url ------------------------------------------------------------------------------

/// Malformed URLs are refused naming api_url: control characters, spaces, bad ports,
/// credentials, other schemes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_urls_are_validated_strictly() {
    let stack = Stack::gateway_only(Backend::Sqlite).await;
    let mut configs = stack.configs(ADMIN).await;
    for bad in [
        "http://pbx.example.com/api\r\nX-Injected: 1",
        "http://pbx.example.com/a b",
        "http://pbx.example.com:0/",
        "http://pbx.example.com:99999/",
        "http://admin:hunter2@pbx.example.com/",
        "ftp://pbx.example.com/",
        "javascript:alert(1)",
        "http:///nohost",
        "http://pbx.example.com/#frag",
    ] {
        let e = configs
            .create_config(pb::CreateConfigRequest {
                config: Some(valid_input("t1", bad)),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            e.message().starts_with("api_url:"),
            "{bad:?}: {}",
            e.message()
        );
        assert!(!e.message().contains("hunter2"), "{}", e.message());
    }
    stack.shutdown().await;
}

/// TestConnection against something that is not Infinity reports the failure without the
/// other server's body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_never_echoes_a_foreign_body() {
    let page = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::OK,
            "{\"internal\":\"SECRET-PAGE-CONTENT\"}",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, page).await });
    let stack = Stack::gateway_only(Backend::Sqlite).await;
    let mut configs = stack.configs(ADMIN).await;
    create(&mut configs, valid_input("t1", &format!("http://{addr}/"))).await;
    let report = configs
        .test_connection(pb::TestConnectionRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!report.ok);
    assert!(
        !format!("{report:?}").contains("SECRET-PAGE-CONTENT"),
        "{report:?}"
    );
    server.abort();
    stack.shutdown().await;
}

/// With an allow-list, a config may not point elsewhere, and a config stored before the list
/// was set is not contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_bound_configs_and_requests() {
    let sim = sim().await;
    let db = TestDb::new(Backend::Postgres).await;
    let start = |allowed: &'static str| {
        let url = db.url.clone();
        async move {
            let mut s = gateway_settings(&url, "http://127.0.0.1:9");
            s.grpc.host = "127.0.0.1".into();
            s.grpc.port = 0;
            s.http.port = 0;
            s.infinity.allowed_hosts = allowed.into();
            let app = call_gateway_svc::app::Application::build(s).await.unwrap();
            let addr = app.grpc_addr();
            let stop = tokio_util::sync::CancellationToken::new();
            let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
            Running { addr, stop, handle }
        }
    };
    let open = start("").await;
    let mut configs = pb::tenant_configs_client::TenantConfigsClient::with_interceptor(
        open.channel().await,
        cco_platform::auth::BearerInterceptor::new(ADMIN),
    );
    create(&mut configs, valid_input("t1", &sim.api_url())).await;
    open.shutdown().await;
    let strict = start("pbx.example.com, 10.20.0.0/16").await;
    let mut configs = pb::tenant_configs_client::TenantConfigsClient::with_interceptor(
        strict.channel().await,
        cco_platform::auth::BearerInterceptor::new(ADMIN),
    );
    let e = configs
        .create_config(pb::CreateConfigRequest {
            config: Some(valid_input("t2", &sim.api_url())),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("allowed"), "{}", e.message());
    create(&mut configs, valid_input("t3", "http://10.20.1.5:8080/")).await;
    let before = sim.state().requests(None).len();
    let report = configs
        .test_connection(pb::TestConnectionRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((report.ok, report.code.as_str()), (false, "not_sent"));
    assert_eq!(sim.state().requests(None).len(), before, "nothing sent");
    strict.shutdown().await;
    sim.stop().await;
}

// --- 9. Costly and emergency numbers ---------------------------------------------------------

/// Premium-rate and satellite numbers are refused by type unless the tenant allows the type;
/// emergency numbers always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_and_emergency_numbers_are_refused_by_type() {
    let mut ctx = setup(Backend::Sqlite, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    for (number, says) in [
        ("+1 900 555 0199", "premium-rate"),
        ("+44 909 8790879", "premium-rate"),
        ("+881 6 1234 5678", "satellite"),
        ("110", "emergency"),
        ("120", "emergency"),
        ("911", "emergency"),
        ("112", "emergency"),
    ] {
        let e = ctx.calls.make_call(req("alice", number)).await.unwrap_err();
        // The compliance gate's refusal: FAILED_PRECONDITION with the reason for programs.
        assert_eq!(e.code(), Code::FailedPrecondition, "{number}");
        assert!(e.message().contains(says), "{number}: {}", e.message());
        use tonic_types::StatusExt;
        assert_eq!(
            e.get_details_error_info().map(|i| i.reason),
            Some("NUMBER_TYPE_BLOCKED".to_owned()),
            "{number}"
        );
    }
    assert!(
        ctx.sim.state().dial_requests().is_empty(),
        "nothing dialled"
    );
    let mut configs = ctx.stack.configs(ADMIN).await;
    let v = configs
        .get_config(pb::GetConfigRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    let cfg = configs
        .update_config(pb::UpdateConfigRequest {
            tenant_id: "t1".into(),
            version: v,
            allowed_number_types: Some(pb::NumberTypes {
                types: vec![pb::NumberType::PremiumRate.into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cfg.allowed_number_types,
        vec![pb::NumberType::PremiumRate as i32]
    );
    ctx.calls
        .make_call(req("alice", "+1 900 555 0199"))
        .await
        .unwrap();
    assert_eq!(ctx.sim.state().dial_requests().len(), 1);
    let e = ctx
        .calls
        .make_call(req("bob", "+881 6 1234 5678"))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("satellite"),
        "still refused: {}",
        e.message()
    );
    ctx.shutdown().await;
}

// --- 10. Smaller ones --------------------------------------------------------------------------

/// Lengths are counted in characters: 11 full-width digits are a valid number, 128 CJK
/// characters a valid display name, 129 not (and the message says characters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lengths_count_characters() {
    let ctx = setup(Backend::Sqlite, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let mut coll = ctx.stack.collectors(ADMIN).await;
    let c = coll
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: "wide".into(),
            callback_number: "１３８００１３８００９".into(),
            display_name: "催".repeat(128),
            active: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.callback_number, "+8613800138009");
    let e = coll
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: "wide".into(),
            display_name: "催".repeat(129),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "display_name: must be at most 128 characters, got 129"
    );
    ctx.shutdown().await;
}

/// NUL, newlines and bidi overrides are refused in display names and custom parameters, and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_free_text_are_refused() {
    let mut ctx = setup(Backend::Sqlite, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let mut coll = ctx.stack.collectors(ADMIN).await;
    for bad in ["a\0b", "line\nbreak", "evil\u{202e}gnp"] {
        let e = coll
            .upsert_collector(pb::UpsertCollectorRequest {
                tenant_id: "t1".into(),
                collector_id: "ctl".into(),
                display_name: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.message().starts_with("display_name:"), "{}", e.message());
        let mut r = req("alice", "13900139000");
        r.custom_params.insert("note".into(), bad.into());
        let e = ctx.calls.make_call(r).await.unwrap_err();
        assert!(e.message().starts_with("custom_params:"), "{}", e.message());
    }
    let e = coll
        .get_collector(pb::GetCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: "ctl".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(ctx.sim.state().dial_requests().is_empty());
    ctx.shutdown().await;
}

/// An extension in a live call keeps its number; once freed it may change. Numbers with
/// leading zeros are refused (0009001 would sit beside 9001).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_numbers_stay_unambiguous() {
    let ctx = setup(
        Backend::Postgres,
        pb::CallMode::DoubleCall,
        &["8001"],
        |_| {},
    )
    .await;
    let mut pool = ctx.stack.pool(ADMIN).await;
    let report = pool
        .batch_import(apb::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: String::new(),
            numbers: vec!["9001".into(), "0009001".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        report.results[0].outcome,
        apb::ImportOutcome::Imported as i32
    );
    assert_eq!(
        report.results[1].outcome,
        apb::ImportOutcome::Invalid as i32
    );
    assert!(
        report.results[1].reason.contains("must not start with 0"),
        "{:?}",
        report.results[1]
    );
    let mut alloc = ctx.stack.alloc(CALLER).await;
    let lease = alloc
        .acquire(apb::AcquireRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
            request_id: "num-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    let change = |number: &str| apb::UpdateExtensionRequest {
        tenant_id: "t1".into(),
        extension_id: lease.extension_id.clone(),
        status: None,
        number: Some(number.into()),
        force: true,
    };
    let e = pool.update_extension(change("8101")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().starts_with("number:"), "{}", e.message());
    alloc
        .release(apb::ReleaseRequest {
            lease_id: lease.lease_id.clone(),
            fencing_token: lease.fencing_token,
            ..Default::default()
        })
        .await
        .unwrap();
    let ext = pool
        .update_extension(change("8101"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ext.number, "8101");
    ctx.shutdown().await;
}

// --- 11. Health flips for every service ---------------------------------------------------------

/// Health watches of every service of both binaries see SERVING, then NOT_SERVING when the
/// service shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_flips_to_not_serving_on_shutdown() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let stack = Stack::pair(Backend::Sqlite).await;
    let expectations = [
        (
            &stack.gateway,
            vec![
                "",
                "cco.infinity.gateway.v1.TenantConfigs",
                "cco.infinity.gateway.v1.TenantPolicies",
                "cco.infinity.gateway.v1.Collectors",
                "cco.infinity.gateway.v1.Calls",
            ],
        ),
        (
            stack.allocator.as_ref().unwrap(),
            vec![
                "",
                "cco.infinity.allocator.v1.ExtensionAllocator",
                "cco.infinity.allocator.v1.ExtensionPool",
            ],
        ),
    ];
    for (service, names) in expectations {
        let mut watches = Vec::new();
        for name in &names {
            let mut h = tonic_health::pb::health_client::HealthClient::new(service.channel().await);
            let mut w = h
                .watch(tonic_health::pb::HealthCheckRequest {
                    service: (*name).into(),
                })
                .await
                .unwrap()
                .into_inner();
            let first = w.message().await.unwrap().unwrap();
            assert_eq!(first.status, ServingStatus::Serving as i32, "{name:?}");
            watches.push((name, w));
        }
        service.stop.cancel();
        for (name, mut w) in watches {
            let next = tokio::time::timeout(Duration::from_secs(10), w.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(next.status, ServingStatus::NotServing as i32, "{name:?}");
        }
    }
    let Stack {
        gateway, allocator, ..
    } = stack;
    gateway.handle.await.unwrap().unwrap();
    allocator.unwrap().handle.await.unwrap().unwrap();
}

// --- 12. Reflection ----------------------------------------------------------------------------

/// Each port lists only its own services over reflection v1 and v1alpha, and resolves a
/// method's file through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_each_ports_own_services_in_both_versions() {
    let stack = Stack::pair(Backend::Sqlite).await;
    let open = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let ports = [
        (
            stack.gateway.channel().await,
            vec![
                "cco.infinity.gateway.v1.Calls",
                "cco.infinity.gateway.v1.Collectors",
                "cco.infinity.gateway.v1.CompliancePolicies",
                "cco.infinity.gateway.v1.TenantConfigs",
                "cco.infinity.gateway.v1.TenantPolicies",
            ],
            "cco.infinity.gateway.v1.Calls.MakeCall",
        ),
        (
            stack.allocator.as_ref().unwrap().channel().await,
            vec![
                "cco.infinity.allocator.v1.ExtensionAllocator",
                "cco.infinity.allocator.v1.ExtensionPool",
            ],
            "cco.infinity.allocator.v1.ExtensionAllocator.Acquire",
        ),
    ];
    for (channel, own, method) in ports {
        let mut want: Vec<&str> = own.iter().copied().chain(open).collect();
        want.sort_unstable();
        let v1 = reflect_v1(channel.clone(), method).await;
        let v1alpha = reflect_v1alpha(channel, method).await;
        for (version, (names, file)) in [("v1", v1), ("v1alpha", v1alpha)] {
            assert_eq!(names, want, "{version}");
            let fd = <prost_reflect::prost_types::FileDescriptorProto as prost::Message>::decode(
                file.as_slice(),
            )
            .unwrap();
            let service = method
                .rsplit_once('.')
                .unwrap()
                .0
                .rsplit_once('.')
                .unwrap()
                .1;
            assert!(
                fd.service.iter().any(|s| s.name() == service),
                "{version}: {method}"
            );
        }
    }
    stack.shutdown().await;
}

/// Lists the services and fetches the file of `symbol` over one reflection version.
macro_rules! reflect {
    ($name:ident, $v:ident) => {
        async fn $name(channel: tonic::transport::Channel, symbol: &str) -> (Vec<String>, Vec<u8>) {
            use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$v::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            };
            let reqs = [
                MessageRequest::ListServices(String::new()),
                MessageRequest::FileContainingSymbol(symbol.into()),
            ]
            .map(|m| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(m),
            });
            let mut stream = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter(reqs))
                .await
                .unwrap()
                .into_inner();
            let mut names = match stream.message().await.unwrap().unwrap().message_response {
                Some(MessageResponse::ListServicesResponse(l)) => {
                    l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
                }
                other => panic!("{other:?}"),
            };
            names.sort_unstable();
            let file = match stream.message().await.unwrap().unwrap().message_response {
                Some(MessageResponse::FileDescriptorResponse(f)) => {
                    f.file_descriptor_proto.into_iter().next().unwrap()
                }
                other => panic!("{other:?}"),
            };
            (names, file)
        }
    };
}

reflect!(reflect_v1, v1);
reflect!(reflect_v1alpha, v1alpha);

// --- Found by the outside attack on this branch -------------------------------------------------

/// One connection cannot hold more RPCs than `max_concurrent_streams` (HTTP/2 SETTINGS), and
/// the port answers RESOURCE_EXHAUSTED beyond `max_in_flight` RPCs in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_in_progress_are_bounded_per_connection_and_per_port() {
    let mut ctx = setup(
        Backend::Sqlite,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |s| {
            s.grpc.max_concurrent_streams = 7;
            s.grpc.max_in_flight = 2;
        },
    )
    .await;
    let tcp = TcpStream::connect(ctx.stack.gateway.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        ctx.stack.gateway.addr
    ))
    .header("content-type", "application/grpc")
    .body(())
    .unwrap();
    h2 = h2.ready().await.unwrap();
    let (resp, mut body) = h2.send_request(req, false).unwrap();
    body.send_data(framed(&[]).into(), true).unwrap();
    resp.await.unwrap();
    assert_eq!(h2.current_max_send_streams(), 7, "the server's SETTINGS");
    // Two slow MakeCalls fill the port; a third RPC is refused at once.
    ctx.slow_infinity(1_500);
    let (mut a, mut b) = (ctx.calls.clone(), ctx.calls.clone());
    let first = tokio::spawn(async move { a.make_call(req_to("alice")).await });
    let second = tokio::spawn(async move { b.make_call(req_to("bob")).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctx.sim.state().dial_requests().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the two calls never reached Infinity"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = ctx
        .calls
        .get_call(pb::GetCallRequest {
            tenant_id: "t1".into(),
            call_id: "0".repeat(32),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("busy"), "{}", e.message());
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    ctx.shutdown().await;
}

fn req_to(collector: &str) -> pb::MakeCallRequest {
    req(collector, "13900139000")
}

/// HangUp names only an extension: once the call's lease is gone (freed by an operator, and
/// the extension ringing for someone else), HangUp refuses instead of ending another call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_up_never_ends_another_call_on_the_same_extension() {
    let mut ctx = setup_without_callbacks(Backend::Sqlite).await;
    let first = ctx.place(&["alice"]).await.remove(0);
    let call = ctx.get(&first).await;
    let mut pool = ctx.stack.pool(ADMIN).await;
    let listed = pool
        .list_extensions(apb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ext = listed
        .extensions
        .iter()
        .find(|e| e.number == call.extension_number)
        .unwrap();
    pool.release_extension(apb::ReleaseExtensionRequest {
        tenant_id: "t1".into(),
        extension_id: ext.extension_id.clone(),
    })
    .await
    .unwrap();
    let before = ctx
        .sim
        .state()
        .requests(Some("App.Sip_Call.HangupCall"))
        .len();
    let e = ctx
        .calls
        .hang_up(pb::HangUpRequest {
            tenant_id: "t1".into(),
            call_id: first,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no longer holds"), "{}", e.message());
    assert_eq!(
        ctx.sim
            .state()
            .requests(Some("App.Sip_Call.HangupCall"))
            .len(),
        before,
        "nothing sent to Infinity"
    );
    ctx.shutdown().await;
}

/// A costly number type withdrawn from the tenant also stops collectors saved while it was
/// allowed: DoubleCall checks the callback number at every dial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_number_type_stops_saved_callback_numbers() {
    let mut ctx = setup(Backend::Sqlite, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let mut configs = ctx.stack.configs(ADMIN).await;
    let allow = |types: Vec<i32>, version| pb::UpdateConfigRequest {
        tenant_id: "t1".into(),
        version,
        allowed_number_types: Some(pb::NumberTypes { types }),
        ..Default::default()
    };
    let v = configs
        .update_config(allow(vec![pb::NumberType::PremiumRate.into()], 1))
        .await
        .unwrap()
        .into_inner()
        .version;
    ctx.stack
        .collectors(ADMIN)
        .await
        .upsert_collector(pb::UpsertCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: "dave".into(),
            callback_number: "+1 900 555 0199".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    configs.update_config(allow(vec![], v)).await.unwrap();
    let e = ctx
        .calls
        .make_call(req("dave", "13900139000"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("premium-rate"), "{}", e.message());
    assert!(ctx.sim.state().dial_requests().is_empty());
    ctx.shutdown().await;
}

/// Answers stay within a client's 4 MiB limit: ListCalls pages end early when records are
/// large, and BatchImport echoes at most 40 characters of a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stay_under_four_mebibytes() {
    let mut ctx = setup_without_callbacks(Backend::Sqlite).await;
    let pad = "x".repeat(60_000);
    let mut ids = Vec::new();
    for _ in 0..70 {
        let id = ctx.place(&["alice"]).await.remove(0);
        let body = serde_json::json!({"customuuid": id, "billsec": 1, "pad": pad}).to_string();
        let (status, _) = ctx
            .post_callback(&ctx.callback_url, "application/json", body)
            .await;
        assert_eq!(status, 200);
        ids.push(id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = ctx
            .calls
            .list_calls(pb::ListCallsRequest {
                tenant_id: "t1".into(),
                page_size: 500,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("every page fits the client's default 4 MiB limit")
            .into_inner();
        assert!(prost::Message::encoded_len(&page) < 4 * 1024 * 1024);
        seen.extend(page.calls.iter().map(|c| c.call_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "paging still returns every call once");
    let lines: Vec<String> = (0..9_997)
        .map(|i| format!("{i}{}", "y".repeat(395)))
        .collect();
    let report = ctx
        .stack
        .pool(ADMIN)
        .await
        .batch_import(apb::BatchImportRequest {
            tenant_id: "t1".into(),
            config_id: String::new(),
            numbers: lines,
        })
        .await
        .expect("the report fits")
        .into_inner();
    assert_eq!(report.invalid, 9_997);
    assert!(report.results.iter().all(|r| r.input.chars().count() <= 41));
    ctx.shutdown().await;
}

/// One tenant cannot make another tenant's genuine callback look like a duplicate by posting
/// the same Infinity uuid first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinity_uuids_are_unique_per_tenant_only() {
    let mut ctx = setup_without_callbacks(Backend::Postgres).await;
    let mut configs = ctx.stack.configs(ADMIN).await;
    let mut other = valid_input("t2", &ctx.sim.api_url());
    other.callback_secret = "t2-callback-secret-0002".into();
    create(&mut configs, other).await;
    let mut coll = ctx.stack.collectors(ADMIN).await;
    coll.upsert_collector(pb::UpsertCollectorRequest {
        tenant_id: "t2".into(),
        collector_id: "eve".into(),
        callback_number: "13800138005".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    ctx.stack
        .pool(ADMIN)
        .await
        .batch_import(apb::BatchImportRequest {
            tenant_id: "t2".into(),
            config_id: String::new(),
            numbers: vec!["9001".into()],
        })
        .await
        .unwrap();
    let mut r = req("eve", "13900139000");
    r.tenant_id = "t2".into();
    let theirs = ctx.calls.make_call(r).await.unwrap().into_inner().call_id;
    let url = format!(
        "http://{}/api/v1/infinity/callback/t2/t2-callback-secret-0002",
        ctx.stack.gateway_http
    );
    let body = serde_json::json!({"customuuid": theirs, "billsec": 5, "uuid": "victim-uuid-0002"});
    assert_eq!(
        ctx.post_callback(&url, "application/json", body.to_string())
            .await
            .0,
        200
    );
    let ours = ctx.place(&["alice"]).await.remove(0);
    let rec = call_with_existing(
        &mut ctx,
        &ours,
        serde_json::json!({"billsec": 42, "uuid": "victim-uuid-0002"}),
    )
    .await;
    assert_eq!(
        (rec.talk_seconds, rec.infinity_uuid.as_str()),
        (42, "victim-uuid-0002")
    );
    ctx.shutdown().await;
}

async fn call_with_existing(
    ctx: &mut Ctx,
    id: &str,
    mut body: serde_json::Value,
) -> pb::CommunicationRecord {
    body["customuuid"] = id.into();
    let (status, text) = ctx
        .post_callback(&ctx.callback_url, "application/json", body.to_string())
        .await;
    assert_eq!((status, text.as_str()), (200, "1"));
    ctx.settled(id, pb::CallStatus::Completed).await
}

/// The server's own request timeout answers DEADLINE_EXCEEDED, and a message over the 4 MiB
/// limit RESOURCE_EXHAUSTED (not CANCELLED or OUT_OF_RANGE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_oversized_requests_get_their_documented_codes() {
    let mut ctx = setup(Backend::Sqlite, pb::CallMode::DoubleCall, &["8001"], |s| {
        s.grpc.request_timeout_seconds = 1;
    })
    .await;
    ctx.slow_infinity(1_900);
    let e = ctx.calls.make_call(req_to("alice")).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    let big = framed(
        &[
            &[0x0a, 0x80, 0x80, 0x80, 0x03][..],
            &vec![b'a'; 6 * 1024 * 1024],
        ]
        .concat(),
    );
    let (code, msg) = raw_grpc(
        ctx.stack.gateway.addr,
        "/cco.infinity.gateway.v1.Calls/GetCall",
        big,
    )
    .await;
    assert_eq!(code, Code::ResourceExhausted as i32, "{msg}");
    ctx.shutdown().await;
}
