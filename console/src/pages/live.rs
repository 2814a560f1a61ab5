//! Server-sent events fed by the gateway's `WatchCalls`, opened with the person's own
//! credential (a collector's stream is their own calls only). The SSE `id` is the tenant's event
//! id, so a browser that reconnects sends `Last-Event-ID` and resumes without a gap; a stream
//! the gateway ends (slow reader, shutdown) is simply reopened by the browser.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cco_contracts::gateway::v1 as gpb;
use futures::StreamExt;
use http::StatusCode;
use http::header::HeaderMap;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::i18n::Lang;
use crate::views;
use crate::web::{Ctx, Problem};

/// `?collector=&after=`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LiveQuery {
    collector: String,
    after: u64,
}

/// The JSON of one event, with its words in the person's language.
pub fn event_json(lang: Lang, e: &gpb::CallEvent) -> serde_json::Value {
    let ty = gpb::CallEventType::try_from(e.r#type)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("CALL_EVENT_TYPE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let at = e
        .occurred_at
        .as_ref()
        .and_then(|t| {
            chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        })
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    serde_json::json!({
        "id": e.event_id,
        "call_id": e.call_id,
        "type": ty,
        "status": e.status,
        "terminal": views::is_terminal(e.status),
        "status_text": views::status_text(lang, e.status),
        "state_text": views::state_text(lang, e.status, e.result),
        "event_text": views::event_text(lang, e.r#type),
        "result_text": views::result_text(lang, e.result),
        "talk_seconds": e.talk_seconds,
        "collector_id": e.collector_id,
        "case_id": e.case_id,
        "extension": e.extension_number,
        "error": e.error_message,
        "at": at,
    })
}

fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

async fn open(
    ctx: &Ctx,
    mut req: gpb::WatchCallsRequest,
) -> Result<tonic::Streaming<gpb::CallEvent>, Problem> {
    let mut client = ctx.state.watch(&ctx.session);
    match client.watch_calls(req.clone()).await {
        Ok(s) => Ok(s.into_inner()),
        // Resuming from an id past the retention: one call's stream starts over from its first
        // retained event (the page skips those it shows); a list goes on with new events.
        Err(s) if s.code() == tonic::Code::OutOfRange && req.after_event_id > 0 => {
            req.after_event_id = 0;
            req.from_start = !req.call_id.is_empty();
            Ok(client.watch_calls(req).await?.into_inner())
        }
        Err(s) => Err(s.into()),
    }
}

/// The stream as SSE, ending with the console's shutdown or the session's expiry (the browser
/// reconnects, and an ended session is then refused).
fn sse(ctx: &Ctx, stream: tonic::Streaming<gpb::CallEvent>, stop: CancellationToken) -> Response {
    let lang = ctx.lang;
    let left = u64::try_from(ctx.session.expires.saturating_sub(crate::web::now())).unwrap_or(0);
    let expiry = tokio::time::sleep(Duration::from_secs(left));
    let events = stream
        .take_while(|r| futures::future::ready(r.is_ok()))
        .filter_map(move |r| {
            futures::future::ready(r.ok().map(|e| {
                Ok::<_, Infallible>(
                    Event::default()
                        .id(e.event_id.to_string())
                        .event("call")
                        .json_data(event_json(lang, &e))
                        .unwrap_or_else(|_| Event::default().comment("unencodable event")),
                )
            }))
        })
        .take_until(stop.cancelled_owned())
        .take_until(expiry);
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies (nginx ingress) must pass events on at once.
    res.headers_mut()
        .insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    res
}

fn refused(p: &Problem, lang: Lang) -> Response {
    let status = match p.code {
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::InvalidArgument | tonic::Code::NotFound => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    (status, p.sentence(lang)).into_response()
}

/// `GET /live/calls?collector=`: the tenant's call events (a collector: their own).
pub async fn calls(
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
    Extension(stop): Extension<CancellationToken>,
) -> Response {
    let collector = ctx
        .own_collector()
        .unwrap_or_else(|| q.collector.trim().to_owned());
    let req = gpb::WatchCallsRequest {
        tenant_id: ctx.tenant().to_owned(),
        collector_id: collector,
        after_event_id: last_event_id(&headers).unwrap_or(q.after),
        ..Default::default()
    };
    match open(&ctx, req).await {
        Ok(s) => sse(&ctx, s, stop),
        Err(p) => refused(&p, ctx.lang),
    }
}

/// `GET /live/call/{id}?after=`: one call's events; without a position, every retained event of
/// the call first (so a page opened after the call changed still sees where it is).
pub async fn call(
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LiveQuery>,
    Extension(stop): Extension<CancellationToken>,
) -> Response {
    let req = gpb::WatchCallsRequest {
        tenant_id: ctx.tenant().to_owned(),
        call_id: id,
        collector_id: ctx.own_collector().unwrap_or_default(),
        after_event_id: last_event_id(&headers).unwrap_or(q.after),
        from_start: last_event_id(&headers).is_none() && q.after == 0,
    };
    match open(&ctx, req).await {
        Ok(s) => sse(&ctx, s, stop),
        Err(p) => refused(&p, ctx.lang),
    }
}
