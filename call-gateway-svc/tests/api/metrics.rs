//! The gateway's own figures on `/metrics`, there from the first call on (not only once a
//! callback has arrived): MakeCall's latency split, Infinity requests, RPC outcomes, the gauges.

use crate::common::*;

async fn metrics(ctx: &Ctx) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(format!("http://{}/metrics", ctx.stack.gateway_http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample whose line starts with `prefix` (name and labels).
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One MakeCall whose callback never comes: its latency parts, the dial to Infinity, the RPC
/// outcome and the gauges are all on `/metrics`, and no callback has been counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn figures_are_there_before_any_callback() {
    let mut ctx = setup_without_callbacks(Backend::Postgres).await;
    ctx.calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap();
    let body = metrics(&ctx).await;
    for part in ["total", "acquire", "infinity", "own"] {
        let n = sample(
            &body,
            &format!("gateway_make_call_duration_seconds_count{{part=\"{part}\"}}"),
        );
        assert_eq!(n, Some(1.0), "MakeCall part {part}: {body}");
    }
    assert_eq!(
        sample(
            &body,
            "gateway_infinity_requests_total{op=\"dial\",outcome=\"ok\",code=\"ok\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "gateway_rpc_outcomes_total{op=\"make_call\",code=\"ok\"}"
        ),
        Some(1.0),
        "{body}"
    );
    // Gauges refreshed by the background pass from the start.
    for gauge in [
        "gateway_outbox_depth ",
        "gateway_pool_purges_pending ",
        "gateway_reconciler_lag_seconds ",
        "gateway_open_calls{status=\"ringing\"}",
    ] {
        assert!(sample(&body, gauge).is_some(), "{gauge} missing: {body}");
    }
    assert!(
        !body.contains("gateway_callbacks_total{"),
        "no callback yet, none counted: {body}"
    );
    ctx.shutdown().await;
}
