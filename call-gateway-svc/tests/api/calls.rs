//! The call flow end to end: real allocator, real gateway, the simulator; PostgreSQL and SQLite.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use infinity_sim::{CallbackMode, Outcome, Recording, Script};
use tokio::sync::Barrier;
use tonic::Code;

/// The happy path: DoubleCall with the documented fields, the callback completes every record
/// field, and the extension is released.
async fn happy_path_double_call(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let mut r = req("alice", "139 0013 9000");
    r.custom_params.insert("campaign".into(), "spring".into());
    let resp = ctx.calls.make_call(r).await.unwrap().into_inner();
    assert_eq!(resp.call_id.len(), 32);
    assert!(
        resp.call_id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(resp.extension_number, "8001");
    assert_eq!(resp.caller_number, "+862566823420");
    assert!(
        resp.status == pb::CallStatus::Ringing as i32
            || resp.status == pb::CallStatus::Completed as i32,
        "{resp:?}"
    );
    let dial = &ctx.sim.state().requests(Some("App.Sip_Call.DoubleCall"))[0];
    let p = &dial.params;
    for (k, v) in [
        ("extnumber", "8001"),
        ("anumber", "13800138001"),
        ("bnumber", "913900139000"),
        ("disnumber", "02566823420"),
        ("userid", "alice"),
        ("memberid", "case-42"),
        ("customuuid", resp.call_id.as_str()),
    ] {
        assert_eq!(p.get(k).map(String::as_str), Some(v), "{k}");
    }
    let rec = ctx.settled(&resp.call_id, pb::CallStatus::Completed).await;
    let bill = ctx
        .sim
        .state()
        .bills()
        .into_iter()
        .find(|b| b["customuuid"] == resp.call_id.as_str())
        .unwrap();
    assert_eq!(rec.result, pb::CallResult::Connected as i32);
    assert_eq!((rec.talk_seconds, rec.total_seconds), (30, 33));
    assert_eq!(rec.hangup_cause, 10001);
    assert_eq!(rec.hangup_side, "callee");
    assert_eq!(rec.record_url, bill["recordurl"].as_str().unwrap());
    assert_eq!(rec.infinity_uuid, bill["uuid"].as_str().unwrap());
    assert_eq!(rec.infinity_cdr_id, bill["id"].as_u64().unwrap());
    assert_eq!(
        (rec.destination_number.as_str(), rec.dialled_number.as_str()),
        ("+8613900139000", "913900139000")
    );
    assert_eq!(
        (
            rec.collector_id.as_str(),
            rec.case_id.as_str(),
            rec.supplier_id.as_str()
        ),
        ("alice", "case-42", "sup-1")
    );
    assert_eq!(rec.call_mode, "double_call");
    assert_eq!(
        rec.custom_params.get("campaign").map(String::as_str),
        Some("spring")
    );
    let start = rec.start_time.unwrap();
    let answer = rec.answer_time.unwrap();
    let end = rec.end_time.unwrap();
    assert_eq!(
        (answer.seconds - start.seconds, end.seconds - answer.seconds),
        (3, 30)
    );
    let bill_start = chrono::NaiveDateTime::parse_from_str(
        bill["starttime"].as_str().unwrap(),
        "%Y-%m-%d %H:%M:%S",
    )
    .unwrap();
    assert_eq!(
        start.seconds,
        bill_start.and_utc().timestamp() - 8 * 3600,
        "read in Asia/Shanghai"
    );
    assert!(rec.raw_callback.contains(&resp.call_id));
    assert_eq!(ctx.stats().await.in_use, 0, "extension released");
    let collector = ctx
        .stack
        .collectors(ADMIN)
        .await
        .get_collector(pb::GetCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(collector.last_extension_number, "8001");
    let link = ctx
        .calls
        .get_recording(pb::GetRecordingRequest {
            tenant_id: "t1".into(),
            call_id: resp.call_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (link.url.as_str(), link.source.as_str()),
        (rec.record_url.as_str(), "recordurl")
    );
    ctx.shutdown().await;
}

/// make_call mode sends MakeCall with destnumber; a filename-only recording is resolved with
/// GetRecodeFile; the collector without a phone is refused for double_call only.
async fn make_call_mode_and_recording_file(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::MakeCall, &["8001"], |_| {}).await;
    ctx.sim.state().set_script(
        Some("13900139000"),
        Script {
            recording: Recording::Filename,
            ..Script::default()
        },
    );
    let resp = ctx
        .calls
        .make_call(req("nophone", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    let dial = &ctx.sim.state().requests(Some("App.Sip_Call.MakeCall"))[0];
    assert_eq!(
        dial.params.get("destnumber").map(String::as_str),
        Some("913900139000")
    );
    assert!(!dial.params.contains_key("anumber"));
    let rec = ctx.settled(&resp.call_id, pb::CallStatus::Completed).await;
    assert!(rec.record_url.is_empty() && !rec.record_filename.is_empty());
    let link = ctx
        .calls
        .get_recording(pb::GetRecordingRequest {
            tenant_id: "t1".into(),
            call_id: resp.call_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(link.source, "get_recode_file");
    assert!(
        link.url.contains(&rec.record_filename) && link.expires.starts_with("Expiration time:")
    );
    ctx.shutdown().await;
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let e = ctx
        .calls
        .make_call(req("nophone", "13900139000"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("no callback number"),
        "{}",
        e.message()
    );
    assert_eq!(ctx.stats().await.in_use, 0, "nothing leased");
    ctx.shutdown().await;
}

/// Bad input names the field; unknown collector, inactive config and an empty pool map to
/// their codes; nothing is dialled.
async fn validation_and_preconditions(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let cases: Vec<(pb::MakeCallRequest, &str)> = vec![
        (
            pb::MakeCallRequest {
                tenant_id: "".into(),
                ..req("alice", "13900139000")
            },
            "tenant_id:",
        ),
        (
            pb::MakeCallRequest {
                case_id: "".into(),
                ..req("alice", "13900139000")
            },
            "case_id:",
        ),
        (req("al ice", "13900139000"), "collector_id:"),
        (req("alice", ""), "destination_number:"),
        (req("alice", "12ab"), "destination_number:"),
        (
            pb::MakeCallRequest {
                caller_number: "13700000000".into(),
                ..req("alice", "13900139000")
            },
            "caller_number:",
        ),
        (
            pb::MakeCallRequest {
                idempotency_key: "bad key".into(),
                ..req("alice", "13900139000")
            },
            "idempotency_key:",
        ),
        (
            pb::MakeCallRequest {
                strategy: 42,
                ..req("alice", "13900139000")
            },
            "strategy:",
        ),
        (
            pb::MakeCallRequest {
                custom_params: (0..21).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..req("alice", "13900139000")
            },
            "custom_params:",
        ),
    ];
    for (r, field) in cases {
        let e = ctx.calls.make_call(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(field),
            "want {field}, got {}",
            e.message()
        );
    }
    let e = ctx
        .calls
        .make_call(req("nobody", "13900139000"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // The one extension stays held (no callback) until the test posts Infinity's record.
    let held = call_without_callback(&mut ctx, "alice", "13900139000").await;
    let e = ctx
        .calls
        .make_call(req("bob", "13900139001"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("pool empty"), "{}", e.message());
    let (status, _) = ctx
        .post_callback(
            &ctx.callback_url,
            "application/json",
            bill_body(&ctx, &held),
        )
        .await;
    assert_eq!(status, 200);
    ctx.settled(&held, pb::CallStatus::Completed).await;
    ctx.stack
        .configs(ADMIN)
        .await
        .toggle_config(pb::ToggleConfigRequest {
            tenant_id: "t1".into(),
            version: 0,
        })
        .await
        .unwrap();
    let e = ctx
        .calls
        .make_call(req("alice", "13900139002"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        ctx.sim.state().dial_requests().len(),
        1,
        "only the valid call dialled"
    );
    let listed = ctx
        .calls
        .list_calls(pb::ListCallsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.calls.len(), 1, "refused requests left no record");
    ctx.shutdown().await;
}

/// A definite refusal: status failed with Infinity's code and text, lease released at once.
/// Not sent: failed, lease released, UNAVAILABLE carrying the call id.
async fn refused_and_not_sent(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    ctx.sim.state().set_script(
        Some("13900139000"),
        Script {
            outcome: Outcome::Refused,
            refuse_code: "1003".into(),
            refuse_message: "line busy".into(),
            ..Script::default()
        },
    );
    let resp = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, pb::CallStatus::Failed as i32);
    assert_eq!(
        (resp.infinity_code.as_str(), resp.infinity_message.as_str()),
        ("1003", "line busy")
    );
    let rec = ctx.settled(&resp.call_id, pb::CallStatus::Failed).await;
    assert_eq!(
        (rec.error_code.as_str(), rec.error_message.as_str()),
        ("1003", "line busy")
    );
    assert_eq!(ctx.stats().await.in_use, 0);
    // Infinity unreachable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut c = ctx.stack.configs(ADMIN).await;
    let v = c
        .get_config(pb::GetConfigRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    c.update_config(pb::UpdateConfigRequest {
        tenant_id: "t1".into(),
        version: v,
        api_url: Some(format!("http://{closed}/")),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = ctx
        .calls
        .make_call(req("alice", "13900139001"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let call_id = e
        .metadata()
        .get("x-call-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(e.message().contains(&call_id));
    let rec = ctx.settled(&call_id, pb::CallStatus::Failed).await;
    assert_eq!(rec.error_code, "not_sent");
    assert_eq!(ctx.stats().await.in_use, 0);
    ctx.shutdown().await;
}

/// Extension not registered (1014): the extension goes offline and the call is tried once more
/// on another extension.
async fn retry_on_another_extension(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001", "8002"], |_| {}).await;
    ctx.sim.state().set_extensions(&["8001"], false);
    let resp = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.extension_number, "8002");
    let rec = ctx.settled(&resp.call_id, pb::CallStatus::Completed).await;
    assert_eq!((rec.attempts, rec.extension_number.as_str()), (2, "8002"));
    let exts = ctx
        .stack
        .pool(ADMIN)
        .await
        .list_extensions(apb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e8001 = exts.extensions.iter().find(|e| e.number == "8001").unwrap();
    assert_eq!(e8001.status, apb::ExtensionStatus::Offline as i32);
    assert_eq!(ctx.sim.state().dial_requests().len(), 2);
    assert_eq!(ctx.sim.state().dials_for(&resp.call_id), 1, "placed once");
    // Both extensions broken: failed after the second try, nothing leaked.
    ctx.sim.state().set_extensions(&["8002"], false);
    let mut pool = ctx.stack.pool(ADMIN).await;
    pool.update_extension(apb::UpdateExtensionRequest {
        tenant_id: "t1".into(),
        extension_id: e8001.extension_id.clone(),
        status: Some(apb::ExtensionStatus::Available.into()),
        number: None,
        force: false,
    })
    .await
    .unwrap();
    let resp = ctx
        .calls
        .make_call(req("alice", "13900139001"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (resp.status, resp.infinity_code.as_str()),
        (pb::CallStatus::Failed as i32, "1014")
    );
    let s = ctx.stats().await;
    assert_eq!((s.in_use, s.offline), (0, 2));
    ctx.shutdown().await;
}

/// A slow Infinity: the outcome is unknown and the lease is kept; the callback then completes
/// the call and frees the extension.
async fn unknown_then_callback(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |s| {
        s.calls.reconcile_after_seconds = 600
    })
    .await;
    let mut c = ctx.stack.configs(ADMIN).await;
    c.update_config(pb::UpdateConfigRequest {
        tenant_id: "t1".into(),
        version: 1,
        api_timeout_ms: Some(500),
        ..Default::default()
    })
    .await
    .unwrap();
    ctx.sim.state().set_script(
        Some("13900139000"),
        Script {
            outcome: Outcome::Slow,
            slow_ms: 1_500,
            callback: CallbackMode::Lost,
            ..Script::default()
        },
    );
    let resp = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, pb::CallStatus::Unknown as i32);
    assert_eq!(
        ctx.stats().await.in_use,
        1,
        "lease kept while the outcome is unknown"
    );
    let e = ctx
        .calls
        .make_call(req("bob", "13900139001"))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::ResourceExhausted,
        "the extension is not handed out again"
    );
    let bill = ctx
        .sim
        .state()
        .bills()
        .into_iter()
        .find(|b| b["customuuid"] == resp.call_id.as_str())
        .unwrap();
    let (status, body) = ctx
        .post_callback(
            &ctx.callback_url,
            "application/json",
            serde_json::Value::Object(bill).to_string(),
        )
        .await;
    assert_eq!((status, body.as_str()), (200, "1"));
    ctx.settled(&resp.call_id, pb::CallStatus::Completed).await;
    assert_eq!(ctx.stats().await.in_use, 0);
    ctx.shutdown().await;
}

/// 20 concurrent identical MakeCalls (one idempotency key) dial once and make one record.
async fn idempotent_make_call(b: Backend) {
    let ctx = setup(
        b,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |_| {},
    )
    .await;
    let barrier = Arc::new(Barrier::new(20));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut c = ctx.calls.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut r = req("alice", "13900139000");
            r.idempotency_key = "click-1".into();
            c.make_call(r).await.map(|r| r.into_inner())
        }));
    }
    let mut ids = HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        let r = t.await.unwrap().expect("every identical request succeeds");
        ids.insert(r.call_id.clone());
        fresh += usize::from(!r.replayed);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(fresh, 1);
    let call_id = ids.into_iter().next().unwrap();
    assert_eq!(ctx.sim.state().dial_requests().len(), 1, "exactly one dial");
    let mut ctx = ctx;
    let listed = ctx
        .calls
        .list_calls(pb::ListCallsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.calls.len(), 1);
    ctx.settled(&call_id, pb::CallStatus::Completed).await;
    let mut again = req("alice", "13900139000");
    again.idempotency_key = "click-1".into();
    let r = ctx.calls.make_call(again).await.unwrap().into_inner();
    assert!(r.replayed && r.call_id == call_id && r.status == pb::CallStatus::Completed as i32);
    let mut other = req("bob", "13900139000");
    other.idempotency_key = "click-1".into();
    let e = ctx.calls.make_call(other).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().starts_with("idempotency_key:"),
        "{}",
        e.message()
    );
    assert_eq!(
        ctx.sim.state().dial_requests().len(),
        1,
        "never dialled again"
    );
    ctx.shutdown().await;
}

/// Waits (bounded) until the simulator's callbacks have all been answered by the gateway.
async fn callbacks_answered(ctx: &Ctx, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ctx.sim.state().callbacks_answered() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} callbacks answered",
            ctx.sim.state().callbacks_answered()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Places a call whose own callback is lost; returns its id.
async fn call_without_callback(ctx: &mut Ctx, collector: &str, dest: &str) -> String {
    ctx.sim.state().set_script(
        Some(dest),
        Script {
            callback: CallbackMode::Lost,
            ..Script::default()
        },
    );
    ctx.calls
        .make_call(req(collector, dest))
        .await
        .unwrap()
        .into_inner()
        .call_id
}

/// Infinity's record for `call_id` as the simulator keeps it, as a JSON body.
fn bill_body(ctx: &Ctx, call_id: &str) -> String {
    let bill = ctx
        .sim
        .state()
        .bills()
        .into_iter()
        .find(|b| b["customuuid"] == call_id)
        .unwrap();
    serde_json::Value::Object(bill).to_string()
}

/// The same record pushed twice completes the call once; the second changes nothing.
async fn duplicate_callbacks_change_nothing(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    ctx.sim.state().set_script(
        Some("13900139000"),
        Script {
            callback: CallbackMode::Duplicated,
            ..Script::default()
        },
    );
    let dup = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    let first = ctx.settled(&dup.call_id, pb::CallStatus::Completed).await;
    callbacks_answered(&ctx, 2).await;
    let after = ctx.get(&dup.call_id).await;
    assert_eq!(
        after.updated_at, first.updated_at,
        "the duplicate changed nothing"
    );
    ctx.shutdown().await;
}

/// The camelCase variant with numbers as strings is read like the documented one.
async fn camel_case_callbacks_with_numbers_as_strings(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    ctx.sim.state().set_script(
        Some("13900139001"),
        Script {
            callback: CallbackMode::CamelCase,
            numbers_as_strings: true,
            outcome: Outcome::Busy,
            ..Script::default()
        },
    );
    let camel = ctx
        .calls
        .make_call(req("bob", "13900139001"))
        .await
        .unwrap()
        .into_inner();
    let rec = ctx.settled(&camel.call_id, pb::CallStatus::Completed).await;
    assert_eq!(
        (rec.result, rec.hangup_cause, rec.talk_seconds),
        (pb::CallResult::Busy as i32, 10006, 0)
    );
    ctx.shutdown().await;
}

/// A wrong secret in the path or the query, no secret, or an unknown tenant: 401, nothing
/// written; the generic URL with the right secret is accepted.
async fn forged_callbacks_are_refused(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let id = call_without_callback(&mut ctx, "alice", "13900139002").await;
    let body = bill_body(&ctx, &id);
    let base = format!("http://{}/api/v1/infinity/callback", ctx.stack.gateway_http);
    for url in [
        format!("{base}/t1/wrong-secret-000000"),
        format!("{base}/call-record?k=wrong"),
        format!("{base}/call-record"),
        format!("{base}/t9/{SECRET}"),
    ] {
        let (status, _) = ctx
            .post_callback(&url, "application/json", body.clone())
            .await;
        assert_eq!(status, 401, "{url}");
    }
    assert_eq!(
        ctx.get(&id).await.status,
        pb::CallStatus::Ringing as i32,
        "nothing written"
    );
    let (status, text) = ctx
        .post_callback(
            &format!("{base}/call-record?k={SECRET}"),
            "application/json",
            body,
        )
        .await;
    assert_eq!((status, text.as_str()), (200, "1"));
    ctx.settled(&id, pb::CallStatus::Completed).await;
    let rows = raw_rows(&ctx.stack.gateway_db.url, "unmatched_callbacks").await;
    assert!(rows.is_empty(), "forged callbacks are not stored: {rows:?}");
    ctx.shutdown().await;
}

/// An unreadable body gets 400 and one over 64 KiB 413.
async fn unreadable_and_oversized_callbacks(b: Backend) {
    let ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let (status, _) = ctx
        .post_callback(&ctx.callback_url, "application/json", "{not json".into())
        .await;
    assert_eq!(status, 400);
    let (status, _) = ctx
        .post_callback(
            &ctx.callback_url,
            "application/json",
            format!("{{\"x\":\"{}\"}}", "a".repeat(70_000)),
        )
        .await;
    assert_eq!(status, 413);
    ctx.shutdown().await;
}

/// A callback that matches no call is stored for audit and acknowledged.
async fn unmatched_callbacks_are_kept(b: Backend) {
    let ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let (status, text) = ctx
        .post_callback(
            &ctx.callback_url,
            "application/json",
            r#"{"customuuid":"0123456789abcdef0123456789abcdef","uuid":"zzz","billsec":5}"#.into(),
        )
        .await;
    assert_eq!((status, text.as_str()), (200, "1"));
    let rows = raw_rows(&ctx.stack.gateway_db.url, "unmatched_callbacks").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].contains("0123456789abcdef0123456789abcdef"),
        "{rows:?}"
    );
    ctx.shutdown().await;
}

/// The legacy CCO shape `{call_uuid, call_duration, is_connected, call_record_url}` completes
/// a call.
async fn legacy_cco_callbacks(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let id = call_without_callback(&mut ctx, "alice", "13900139002").await;
    let (status, _) = ctx.post_callback(&ctx.callback_url, "application/json", format!(r#"{{"call_uuid":"{id}","call_duration":"12","is_connected":true,"call_record_url":"http://rec/x.mp3"}}"#)).await;
    assert_eq!(status, 200);
    let rec = ctx.settled(&id, pb::CallStatus::Completed).await;
    assert_eq!(
        (rec.result, rec.talk_seconds, rec.record_url.as_str()),
        (pb::CallResult::Connected as i32, 12, "http://rec/x.mp3")
    );
    ctx.shutdown().await;
}

/// A form-encoded callback completes a call; its local times are read in the tenant's zone.
async fn form_callbacks_in_the_tenant_zone(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let id = call_without_callback(&mut ctx, "bob", "13900139003").await;
    // Start times are taken only near the call: use this minute, written in Shanghai time.
    let started = chrono::Utc::now().timestamp() / 60 * 60;
    let local = chrono::DateTime::from_timestamp(started, 0)
        .unwrap()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m-%d+%H%%3A%M%%3A%S");
    let (status, _) = ctx
        .post_callback(
            &ctx.callback_url,
            "application/x-www-form-urlencoded",
            format!("customuuid={id}&billsec=0&hangupcause=10016&uuid=form-1&starttime={local}"),
        )
        .await;
    assert_eq!(status, 200);
    let rec = ctx.settled(&id, pb::CallStatus::Completed).await;
    assert_eq!(rec.result, pb::CallResult::NoAnswer as i32);
    assert_eq!(
        rec.start_time.unwrap().seconds,
        started,
        "the local time read in Shanghai's zone"
    );
    ctx.shutdown().await;
}

/// With an IP allow-list, a callback from another address gets 403 and changes nothing.
async fn callbacks_from_outside_the_allow_list(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let id = call_without_callback(&mut ctx, "alice", "13900139002").await;
    let mut c = ctx.stack.configs(ADMIN).await;
    let v = c
        .get_config(pb::GetConfigRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    c.update_config(pb::UpdateConfigRequest {
        tenant_id: "t1".into(),
        version: v,
        callback_ip_allowlist: Some(pb::IpAllowList {
            cidrs: vec!["203.0.113.0/24".into()],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let (status, _) = ctx
        .post_callback(&ctx.callback_url, "application/json", bill_body(&ctx, &id))
        .await;
    assert_eq!(status, 403);
    assert_eq!(ctx.get(&id).await.status, pb::CallStatus::Ringing as i32);
    ctx.shutdown().await;
}

/// A late callback for a call whose extension was re-leased changes nothing for the new lease.
async fn late_callback_after_release(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |s| {
        s.calls.reconcile_after_seconds = 600
    })
    .await;
    ctx.sim.state().set_script(
        Some("13900139000"),
        Script {
            callback: CallbackMode::Lost,
            ..Script::default()
        },
    );
    let old = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    // An operator frees alice's extension by hand; bob's call takes it.
    ctx.stack
        .pool(ADMIN)
        .await
        .force_release_collector(apb::ForceReleaseCollectorRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
        })
        .await
        .unwrap();
    ctx.sim.state().set_script(
        Some("13900139001"),
        Script {
            callback: CallbackMode::Lost,
            ..Script::default()
        },
    );
    let new = ctx
        .calls
        .make_call(req("bob", "13900139001"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(new.extension_number, "8001");
    let bill = ctx
        .sim
        .state()
        .bills()
        .into_iter()
        .find(|b| b["customuuid"] == old.call_id.as_str())
        .unwrap();
    let (status, _) = ctx
        .post_callback(
            &ctx.callback_url,
            "application/json",
            serde_json::Value::Object(bill).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    ctx.settled(&old.call_id, pb::CallStatus::Completed).await;
    let s = ctx.stats().await;
    assert_eq!(s.in_use, 1, "bob's lease survived the late release");
    let rec = ctx.get(&new.call_id).await;
    let ext = ctx
        .stack
        .pool(ADMIN)
        .await
        .list_extensions(apb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ext.extensions[0].current_lease_id, rec.lease_id);
    ctx.shutdown().await;
}

/// The callback arriving before MakeCall has returned.
async fn callback_before_make_call_returns(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    ctx.sim.state().set_script(
        Some("13900139000"),
        Script {
            outcome: Outcome::Slow,
            slow_ms: 700,
            callback_delay_ms: 0,
            ..Script::default()
        },
    );
    let resp = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        pb::CallStatus::Completed as i32,
        "the callback won the race: {resp:?}"
    );
    ctx.settled(&resp.call_id, pb::CallStatus::Completed).await;
    assert_eq!(ctx.stats().await.in_use, 0);
    ctx.shutdown().await;
}

/// The allocator is down when the callback arrives: the record is saved, the release waits in
/// the outbox across a gateway restart, and goes through when the allocator is back.
async fn allocator_down_during_callback(b: Backend) {
    let ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let Ctx {
        stack,
        sim,
        mut calls,
        callback_url,
    } = ctx;
    sim.state().set_script(
        Some("13900139000"),
        Script {
            callback: CallbackMode::Lost,
            ..Script::default()
        },
    );
    let resp = calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    let Stack {
        gateway,
        gateway_http,
        allocator,
        gateway_db,
        allocator_db,
    } = stack;
    let allocator = allocator.unwrap();
    let alloc_addr = allocator.addr;
    allocator.shutdown().await;
    let bill = sim
        .state()
        .bills()
        .into_iter()
        .find(|b| b["customuuid"] == resp.call_id.as_str())
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new()
        .post(&callback_url)
        .json(&serde_json::Value::Object(bill))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let rec = calls
        .get_call(pb::GetCallRequest {
            tenant_id: "t1".into(),
            call_id: resp.call_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.status, pb::CallStatus::Completed as i32);
    assert!(!rec.lease_released, "release still owed");
    // Restart the gateway on the same database while the allocator is still down.
    let gw_port = gateway.addr;
    gateway.shutdown().await;
    let mut s = gateway_settings(&gateway_db.url, &format!("http://{alloc_addr}"));
    s.calls.outbox_interval_ms = 100;
    let gw_listener = tokio::net::TcpListener::bind(gw_port).await.unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = call_gateway_svc::app::Application::build_with(s, Some((gw_listener, http_listener)))
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    // The allocator comes back on its old address and database.
    let mut als = allocator_svc::settings::Settings::default();
    als.database.url = allocator_db.as_ref().unwrap().url.clone();
    als.auth.api_keys = secrecy::SecretString::from(KEYS);
    als.policy.gateway_url = format!("http://{gw_port}");
    als.policy.cache_ttl_ms = 0;
    let listener = tokio::net::TcpListener::bind(alloc_addr).await.unwrap();
    let alloc_app = allocator_svc::app::Application::build_with(als, Some((listener, None)))
        .await
        .unwrap();
    let alloc_stop = tokio_util::sync::CancellationToken::new();
    let alloc_handle = tokio::spawn(alloc_app.run_until_stopped(alloc_stop.clone()));
    let restarted = Stack {
        gateway: Running {
            addr: gw_port,
            stop,
            handle,
        },
        gateway_http,
        allocator: Some(Running {
            addr: alloc_addr,
            stop: alloc_stop,
            handle: alloc_handle,
        }),
        gateway_db,
        allocator_db,
    };
    let mut calls = pb::calls_client::CallsClient::with_interceptor(
        restarted.gateway.channel().await,
        cco_platform::auth::BearerInterceptor::new(CALLER),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rec = calls
            .get_call(pb::GetCallRequest {
                tenant_id: "t1".into(),
                call_id: resp.call_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if rec.lease_released {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "release never went through"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = restarted
        .alloc(CALLER)
        .await
        .stats(apb::StatsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.in_use, 0);
    restarted.shutdown().await;
    sim.stop().await;
}

/// Lost callbacks: the reconciler finds the call with GetBill and closes it; a call Infinity
/// never heard of expires at the maximum age; both free their extensions.
async fn reconciler_closes_lost_calls(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001", "8002"], |s| {
        s.calls.max_call_age_seconds = 3
    })
    .await;
    ctx.sim.state().set_script(
        Some("13900139000"),
        Script {
            callback: CallbackMode::Lost,
            ..Script::default()
        },
    );
    ctx.sim.state().set_script(
        Some("13900139001"),
        Script {
            outcome: Outcome::Http500,
            ..Script::default()
        },
    );
    let lost = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    let never = ctx
        .calls
        .make_call(req("bob", "13900139001"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        never.status,
        pb::CallStatus::Unknown as i32,
        "HTTP 500 after sending: outcome unknown"
    );
    let rec = ctx.settled(&lost.call_id, pb::CallStatus::Completed).await;
    assert_eq!(rec.result, pb::CallResult::Connected as i32);
    let rec = ctx.settled(&never.call_id, pb::CallStatus::Expired).await;
    assert_eq!(rec.error_code, "expired");
    assert_eq!(ctx.stats().await.in_use, 0);
    ctx.shutdown().await;
}

/// Five completed calls of two collectors and two cases.
async fn five_completed_calls(b: Backend) -> (Ctx, Vec<String>) {
    let mut ctx = setup(
        b,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |_| {},
    )
    .await;
    let mut ids = Vec::new();
    for (i, who) in ["alice", "bob", "alice", "alice", "bob"].iter().enumerate() {
        let mut r = req(who, &format!("1390013900{i}"));
        r.case_id = format!("case-{}", i % 2);
        let resp = ctx.calls.make_call(r).await.unwrap().into_inner();
        ctx.settled(&resp.call_id, pb::CallStatus::Completed).await;
        ids.push(resp.call_id);
    }
    (ctx, ids)
}

async fn list(ctx: &mut Ctx, r: pb::ListCallsRequest) -> pb::ListCallsResponse {
    ctx.calls.list_calls(r).await.unwrap().into_inner()
}

/// ListCalls pages newest first without missing or repeating a call.
async fn list_calls_pages_newest_first(b: Backend) {
    let (mut ctx, mut ids) = five_completed_calls(b).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(
            &mut ctx,
            pb::ListCallsRequest {
                tenant_id: "t1".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await;
        seen.extend(page.calls.into_iter().map(|c| c.call_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, nothing missed");
    ctx.shutdown().await;
}

/// ListCalls filters by collector, case and status.
async fn list_calls_filters(b: Backend) {
    let (mut ctx, _) = five_completed_calls(b).await;
    let by = |collector: &str, case: &str, status: pb::CallStatus| pb::ListCallsRequest {
        tenant_id: "t1".into(),
        collector_id: collector.into(),
        case_id: case.into(),
        status: status.into(),
        ..Default::default()
    };
    let alice = list(&mut ctx, by("alice", "", pb::CallStatus::Unspecified)).await;
    assert_eq!(alice.calls.len(), 3);
    let case1 = list(&mut ctx, by("", "case-1", pb::CallStatus::Unspecified)).await;
    assert_eq!(case1.calls.len(), 2);
    let failed = list(&mut ctx, by("", "", pb::CallStatus::Failed)).await;
    assert!(failed.calls.is_empty());
    ctx.shutdown().await;
}

/// Three completed calls (alice's to ...000 and ...002 answered, bob's to ...001 not), and
/// bob's call to ...009, still ringing (Infinity answers it only much later, and the
/// reconciler does not look it up within the test: on a loaded machine a second may pass).
async fn three_calls_one_unanswered(b: Backend) -> Ctx {
    let mut ctx = setup(
        b,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003"],
        |s| s.calls.reconcile_after_seconds = 600,
    )
    .await;
    ctx.sim.state().set_script(
        Some("13900139001"),
        Script {
            outcome: Outcome::NoAnswer,
            ..Script::default()
        },
    );
    ctx.sim.state().set_script(
        Some("13900139009"),
        Script {
            callback_delay_ms: 600_000,
            ..Script::default()
        },
    );
    let ringing = ctx
        .calls
        .make_call(req("bob", "13900139009"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ringing.status, pb::CallStatus::Ringing as i32);
    for (who, to) in [
        ("alice", "13900139000"),
        ("bob", "13900139001"),
        ("alice", "13900139002"),
    ] {
        let id = ctx
            .calls
            .make_call(req(who, to))
            .await
            .unwrap()
            .into_inner()
            .call_id;
        ctx.settled(&id, pb::CallStatus::Completed).await;
    }
    ctx
}

/// ListCalls filters by result (completed calls only), page by page; an unknown result names
/// the field.
async fn list_calls_filter_by_result(b: Backend) {
    let mut ctx = three_calls_one_unanswered(b).await;
    let by = |result: pb::CallResult, page_size: u32, page_token: String| pb::ListCallsRequest {
        tenant_id: "t1".into(),
        result: result.into(),
        page_size,
        page_token,
        ..Default::default()
    };
    let missed = list(&mut ctx, by(pb::CallResult::NoAnswer, 0, String::new())).await;
    assert_eq!(missed.calls.len(), 1);
    assert_eq!(missed.calls[0].destination_number, "+8613900139001");
    // Two connected calls, one per page.
    let first = list(&mut ctx, by(pb::CallResult::Connected, 1, String::new())).await;
    assert_eq!(first.calls.len(), 1);
    assert!(!first.next_page_token.is_empty());
    let second = list(
        &mut ctx,
        by(pb::CallResult::Connected, 1, first.next_page_token),
    )
    .await;
    assert_eq!(second.calls.len(), 1);
    assert!(second.next_page_token.is_empty());
    assert_ne!(first.calls[0].call_id, second.calls[0].call_id);
    for c in first.calls.iter().chain(&second.calls) {
        assert_eq!(c.result, pb::CallResult::Connected as i32);
    }
    let busy = list(&mut ctx, by(pb::CallResult::Busy, 0, String::new())).await;
    assert!(busy.calls.is_empty());
    let mut bad = by(pb::CallResult::Busy, 0, String::new());
    bad.result = 99;
    let err = ctx.calls.list_calls(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("result:"), "{}", err.message());
    ctx.shutdown().await;
}

/// SummarizeCalls counts a window's calls by status, result and hang-up cause, for one
/// collector or all; the window is required and bounded.
async fn summarize_calls_counts_a_window(b: Backend) {
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    let mut ctx = three_calls_one_unanswered(b).await;
    let ts = |t: chrono::DateTime<chrono::Utc>| cco_contracts::pbjson_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    };
    let ask = |collector: &str| pb::SummarizeCallsRequest {
        tenant_id: "t1".into(),
        collector_id: collector.into(),
        since: Some(ts(since)),
        ..Default::default()
    };
    let all = ctx
        .calls
        .summarize_calls(ask(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.total, 4);
    assert_eq!(
        all.by_status,
        [
            pb::StatusCount {
                status: pb::CallStatus::Ringing as i32,
                count: 1
            },
            pb::StatusCount {
                status: pb::CallStatus::Completed as i32,
                count: 3
            },
        ]
    );
    // Results and hang-up causes are those of completed calls only.
    assert_eq!(
        all.by_result,
        [
            pb::ResultCount {
                result: pb::CallResult::Connected as i32,
                count: 2
            },
            pb::ResultCount {
                result: pb::CallResult::NoAnswer as i32,
                count: 1
            },
        ]
    );
    let causes: u64 = all.by_hangup_cause.iter().map(|c| c.count).sum();
    assert_eq!(causes, 3);
    assert!(
        all.by_hangup_cause
            .iter()
            .any(|c| c.hangup_cause == 10016 && c.count == 1)
    );
    let alice = ctx
        .calls
        .summarize_calls(ask("alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alice.total, 2);
    assert_eq!(
        alice.by_result,
        [pb::ResultCount {
            result: pb::CallResult::Connected as i32,
            count: 2
        }]
    );
    // The open calls, whatever the window.
    let open = ctx
        .calls
        .summarize_calls(pb::SummarizeCallsRequest {
            tenant_id: "t1".into(),
            open_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.total, 1);
    assert!(open.by_result.is_empty());
    // A collector's token counts only their own calls, with or without a filter.
    let mut as_alice = pb::calls_client::CallsClient::with_interceptor(
        ctx.stack.gateway.channel().await,
        cco_platform::auth::BearerInterceptor::new(&person("collector", "t1", Some("alice"))),
    );
    let own = as_alice
        .summarize_calls(ask(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.total, 2);
    let err = as_alice.summarize_calls(ask("bob")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // A window that ended before the calls counts none; one that starts later, none yet.
    let mut before = ask("");
    before.since = Some(ts(since - chrono::Duration::hours(2)));
    before.until = Some(ts(since));
    assert_eq!(
        ctx.calls
            .summarize_calls(before)
            .await
            .unwrap()
            .into_inner()
            .total,
        0
    );
    let mut later = ask("");
    later.since = Some(ts(chrono::Utc::now() + chrono::Duration::minutes(5)));
    assert_eq!(
        ctx.calls
            .summarize_calls(later)
            .await
            .unwrap()
            .into_inner()
            .total,
        0
    );
    // The window is required, ordered, and at most 31 days; the field named is the one sent.
    let mut reversed = ask("");
    reversed.until = Some(ts(since - chrono::Duration::hours(1)));
    let err = ctx.calls.summarize_calls(reversed).await.unwrap_err();
    assert!(err.message().starts_with("until:"), "{}", err.message());
    let mut no_since = ask("");
    no_since.since = None;
    let err = ctx.calls.summarize_calls(no_since).await.unwrap_err();
    assert!(err.message().starts_with("since:"), "{}", err.message());
    let mut long = ask("");
    long.since = Some(ts(since - chrono::Duration::days(40)));
    let err = ctx.calls.summarize_calls(long.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("since:"), "{}", err.message());
    long.until = Some(ts(since));
    let err = ctx.calls.summarize_calls(long).await.unwrap_err();
    assert!(err.message().starts_with("until:"), "{}", err.message());
    ctx.shutdown().await;
}

/// GetCall names the field of a malformed id, and a key of another tenant gets
/// PERMISSION_DENIED.
async fn get_call_checks_the_id_and_the_tenant(b: Backend) {
    let (mut ctx, ids) = five_completed_calls(b).await;
    let e = ctx
        .calls
        .get_call(pb::GetCallRequest {
            tenant_id: "t1".into(),
            call_id: "xyz".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("call_id:"), "{}", e.message());
    let mut scoped = pb::calls_client::CallsClient::with_interceptor(
        ctx.stack.gateway.channel().await,
        cco_platform::auth::BearerInterceptor::new(SCOPED_CALLER),
    );
    let e = scoped
        .get_call(pb::GetCallRequest {
            tenant_id: "t1".into(),
            call_id: ids[0].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    ctx.shutdown().await;
}

async fn hang_up(ctx: &mut Ctx, call_id: &str) -> tonic::Status {
    ctx.calls
        .hang_up(pb::HangUpRequest {
            tenant_id: "t1".into(),
            call_id: call_id.into(),
        })
        .await
        .unwrap_err()
}

/// A completed call cannot be hung up.
async fn hang_up_refuses_completed_calls(b: Backend) {
    let (mut ctx, ids) = five_completed_calls(b).await;
    let e = hang_up(&mut ctx, &ids[0]).await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    ctx.shutdown().await;
}

/// HangUp passes on Infinity's "extension not in a call" (1015), and says plainly when the
/// tenant's Infinity has no HangupCall (UNIMPLEMENTED).
async fn hang_up_maps_infinitys_answers(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let open = call_without_callback(&mut ctx, "alice", "13900139009").await;
    let e = hang_up(&mut ctx, &open).await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not in a call"), "{}", e.message());
    ctx.sim.state().set_hangup_supported(false);
    let e = hang_up(&mut ctx, &open).await;
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert!(
        e.message()
            .contains("does not support App.Sip_Call.HangupCall"),
        "{}",
        e.message()
    );
    ctx.shutdown().await;
}

/// Two gateway replicas on one database: every lost call is reconciled exactly once (one
/// GetBill per call) and completed once.
async fn two_replicas_reconcile_once(b: Backend) {
    let mut ctx = setup(
        b,
        pb::CallMode::DoubleCall,
        &["8001", "8002", "8003", "8004", "8005"],
        |s| s.calls.reconcile_every_seconds = 600,
    )
    .await;
    let mut s2 = gateway_settings(
        &ctx.stack.gateway_db.url,
        &format!("http://{}", ctx.stack.allocator.as_ref().unwrap().addr),
    );
    s2.calls.outbox_interval_ms = 100;
    s2.calls.reconcile_interval_ms = 100;
    s2.calls.reconcile_after_seconds = 1;
    s2.calls.reconcile_every_seconds = 600;
    let second = call_gateway_svc::app::Application::build_with(
        s2,
        Some((
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )),
    )
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(second.run_until_stopped(stop.clone()));
    ctx.sim.state().set_extensions(&["8004", "8005"], true);
    ctx.sim.state().set_script(
        None,
        Script {
            callback: CallbackMode::Lost,
            ..Script::default()
        },
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            ctx.calls
                .make_call(req("alice", &format!("1390013900{i}")))
                .await
                .unwrap()
                .into_inner()
                .call_id,
        );
    }
    for id in &ids {
        ctx.settled(id, pb::CallStatus::Completed).await;
    }
    let bills = ctx.sim.state().requests(Some("App.Sip_Cdr.GetBill"));
    for id in &ids {
        let n = bills
            .iter()
            .filter(|r| r.params.get("customuuid") == Some(id))
            .count();
        assert_eq!(n, 1, "call {id} looked up {n} times");
    }
    assert_eq!(ctx.stats().await.in_use, 0);
    stop.cancel();
    handle.await.unwrap().unwrap();
    ctx.shutdown().await;
}

/// A signing proxy's callbacks: a valid HMAC is accepted; a tampered body, a wrong key or a
/// stale timestamp gets 401 and writes nothing; a replay within the window changes nothing.
async fn signed_callbacks(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    ctx.sim.state().set_script(
        None,
        Script {
            callback: CallbackMode::Lost,
            ..Script::default()
        },
    );
    let call = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap()
        .into_inner();
    let bill = ctx
        .sim
        .state()
        .bills()
        .into_iter()
        .find(|b| b["customuuid"] == call.call_id.as_str())
        .unwrap();
    let body = serde_json::Value::Object(bill).to_string();
    let url = format!(
        "http://{}/api/v1/infinity/callback/call-record",
        ctx.stack.gateway_http
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let post = |ts: String, sig: String, body: String| {
        http.post(&url)
            .header("content-type", "application/json")
            .header("x-cco-timestamp", ts)
            .header("x-cco-signature", sig)
            .body(body)
            .send()
    };
    let now = chrono::Utc::now().timestamp().to_string();
    let stale = (chrono::Utc::now().timestamp() - 3_600).to_string();
    let tampered = body.replace("\"billsec\":30", "\"billsec\":31");
    for (ts, sig, b) in [
        (
            now.clone(),
            call_gateway_svc::http::sign(SECRET, &now, body.as_bytes()),
            tampered.clone(),
        ),
        (
            now.clone(),
            call_gateway_svc::http::sign("another-secret-0000000", &now, body.as_bytes()),
            body.clone(),
        ),
        (
            stale.clone(),
            call_gateway_svc::http::sign(SECRET, &stale, body.as_bytes()),
            body.clone(),
        ),
    ] {
        assert_eq!(post(ts, sig, b).await.unwrap().status().as_u16(), 401);
    }
    assert_eq!(
        ctx.get(&call.call_id).await.status,
        pb::CallStatus::Ringing as i32,
        "nothing written"
    );
    let sig = call_gateway_svc::http::sign(SECRET, &now, body.as_bytes());
    let r = post(now.clone(), sig.clone(), body.clone()).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap().as_str()),
        (200, "1")
    );
    let done = ctx.settled(&call.call_id, pb::CallStatus::Completed).await;
    assert_eq!(done.talk_seconds, 30);
    let replay = post(now, sig, body).await.unwrap();
    assert_eq!(replay.status().as_u16(), 200);
    assert_eq!(
        ctx.get(&call.call_id).await.updated_at,
        done.updated_at,
        "the replay changed nothing"
    );
    ctx.shutdown().await;
}

/// An earlier attempt of the same idempotency key leased an extension and gave it back (its
/// record could not be written): the retry gets a live lease, never the freed one.
async fn retry_after_released_lease(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001", "8002"], |_| {}).await;
    ctx.sim.state().set_script(
        None,
        Script {
            callback: CallbackMode::Lost,
            ..Script::default()
        },
    );
    let tenant = call_gateway_svc::domain::TenantId::parse("t", "t1").unwrap();
    let key = call_gateway_svc::domain::IdempotencyKey::parse("k", "click-9").unwrap();
    let call_id = call_gateway_svc::domain::call::CallId::for_key(&tenant, &key)
        .as_str()
        .to_owned();
    let mut alloc = ctx.stack.alloc(PEER).await;
    let earlier = alloc
        .acquire(apb::AcquireRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
            strategy: 0,
            request_id: call_id.clone(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    alloc
        .release(apb::ReleaseRequest {
            lease_id: earlier.lease_id.clone(),
            fencing_token: earlier.fencing_token,
            reason: apb::ReleaseReason::Cancelled.into(),
            tenant_id: String::new(),
        })
        .await
        .unwrap();
    let mut r = req("alice", "13900139000");
    r.idempotency_key = "click-9".into();
    let resp = ctx.calls.make_call(r).await.unwrap().into_inner();
    assert_eq!(resp.call_id, call_id);
    let rec = ctx.get(&call_id).await;
    assert_ne!(
        rec.lease_id, earlier.lease_id,
        "the freed lease is not reused"
    );
    let s = ctx.stats().await;
    assert_eq!(s.in_use, 1, "the call holds a live lease");
    let ext = ctx
        .stack
        .pool(ADMIN)
        .await
        .list_extensions(apb::ListExtensionsRequest {
            tenant_id: "t1".into(),
            status: apb::ExtensionStatus::InUse.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ext.extensions[0].current_lease_id, rec.lease_id);
    ctx.shutdown().await;
}

cco_platform::on_every_backend!(
    happy_path_double_call,
    make_call_mode_and_recording_file,
    validation_and_preconditions,
    refused_and_not_sent,
    retry_on_another_extension,
    unknown_then_callback,
    idempotent_make_call,
    duplicate_callbacks_change_nothing,
    camel_case_callbacks_with_numbers_as_strings,
    forged_callbacks_are_refused,
    unreadable_and_oversized_callbacks,
    unmatched_callbacks_are_kept,
    legacy_cco_callbacks,
    form_callbacks_in_the_tenant_zone,
    callbacks_from_outside_the_allow_list,
    late_callback_after_release,
    callback_before_make_call_returns,
    allocator_down_during_callback,
    reconciler_closes_lost_calls,
    list_calls_pages_newest_first,
    list_calls_filters,
    list_calls_filter_by_result,
    summarize_calls_counts_a_window,
    get_call_checks_the_id_and_the_tenant,
    hang_up_refuses_completed_calls,
    hang_up_maps_infinitys_answers,
    two_replicas_reconcile_once,
    signed_callbacks,
    retry_after_released_lease
);
