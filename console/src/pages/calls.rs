//! Calls: a tenant's calls with filters and paging (new rows appear live), and one call's
//! detail (every field of the record, the timeline of its events, the recording player, hang
//! up while live). Collectors see only their own calls: the console asks for their calls only,
//! and the gateway refuses anything else.

use std::time::Duration;

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use cco_contracts::gateway::v1 as gpb;
use futures::StreamExt;
use http::StatusCode;
use http::header::HeaderMap;
use maud::{Markup, html};
use serde::Deserialize;

use crate::i18n::{Lang, T};
use crate::pages::q as enc;
use crate::pages::signin::Plain;
use crate::session::Role;
use crate::views::{self, Field};
use crate::web::{Ctx, Page, Problem};

/// Filters and page.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    collector: String,
    case: String,
    status: String,
    result: String,
    since: String,
    until: String,
    page: String,
}

impl ListQuery {
    fn query_string(&self, page: &str) -> String {
        format!(
            "collector={}&case={}&status={}&result={}&since={}&until={}&page={}",
            enc(&self.collector),
            enc(&self.case),
            enc(&self.status),
            enc(&self.result),
            enc(&self.since),
            enc(&self.until),
            enc(page)
        )
    }
}

/// A `datetime-local` value (UTC) as a timestamp.
fn parse_local(v: &str) -> Option<cco_contracts::pbjson_types::Timestamp> {
    let v = v.trim();
    let dt = chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S"))
        .ok()?;
    Some(cco_contracts::pbjson_types::Timestamp {
        seconds: dt.and_utc().timestamp(),
        nanos: 0,
    })
}

const STATUSES: [(gpb::CallStatus, T); 6] = [
    (gpb::CallStatus::Dialing, T::StDialing),
    (gpb::CallStatus::Ringing, T::StRinging),
    (gpb::CallStatus::Unknown, T::StUnknown),
    (gpb::CallStatus::Completed, T::StCompleted),
    (gpb::CallStatus::Failed, T::StFailed),
    (gpb::CallStatus::Expired, T::StExpired),
];

const RESULTS: [(gpb::CallResult, T); 7] = [
    (gpb::CallResult::Connected, T::ReConnected),
    (gpb::CallResult::NoAnswer, T::ReNoAnswer),
    (gpb::CallResult::Busy, T::ReBusy),
    (gpb::CallResult::Rejected, T::ReRejected),
    (gpb::CallResult::Cancelled, T::ReCancelled),
    (gpb::CallResult::Failed, T::ReFailed),
    (gpb::CallResult::NotConnected, T::ReNotConnected),
];

/// One row of a call list.
pub fn row(lang: Lang, c: &gpb::CommunicationRecord) -> Markup {
    html! {
        tr data-call-id=(c.call_id) {
            td { (views::time(c.created_at.as_ref())) }
            th scope="row" { a href={ "/calls/" (c.call_id) } { (c.case_id) } }
            td { (c.collector_id) }
            td { (c.destination_number) }
            td.st { (views::status_text(lang, c.status)) }
            td.re { (views::result_text(lang, c.result)) }
            td.talk { @if c.talk_seconds > 0 { (views::duration(lang, f64::from(c.talk_seconds))) } }
        }
    }
}

/// The head of a call list.
pub fn head(lang: Lang) -> Markup {
    html! {
        thead { tr {
            th scope="col" { (lang.t(T::Created)) }
            th scope="col" { (lang.t(T::Case)) }
            th scope="col" { (lang.t(T::Collector)) }
            th scope="col" { (lang.t(T::Number)) }
            th scope="col" { (lang.t(T::Status)) }
            th scope="col" { (lang.t(T::Result)) }
            th scope="col" { (lang.t(T::TalkTime)) }
        } }
    }
}

/// The live state, result, talk time and recording of one call (the workbench's panel).
pub fn panel(lang: Lang, c: &gpb::CommunicationRecord) -> Markup {
    let terminal = views::is_terminal(c.status);
    html! {
        p #call-state .state role="status" aria-live="polite" data-terminal=(terminal) {
            (views::state_text(lang, c.status, c.result))
        }
        dl.facts {
            dt { (lang.t(T::Case)) } dd { (c.case_id) }
            dt { (lang.t(T::Number)) } dd { (c.destination_number) }
            dt { (lang.t(T::FExtension)) } dd { (c.extension_number) }
            @if terminal {
                @if c.result != 0 { dt { (lang.t(T::Result)) } dd #call-result { (views::result_text(lang, c.result)) } }
                dt { (lang.t(T::TalkTime)) } dd #call-talk { (views::duration(lang, f64::from(c.talk_seconds))) }
                @if !c.error_message.is_empty() { dt { (lang.t(T::FErrorMessage)) } dd #call-error { (c.error_code) " " (c.error_message) } }
            }
        }
        @if terminal { (player(lang, c)) }
        p { a href={ "/calls/" (c.call_id) } { (lang.f(T::CallDetail, &[&c.call_id])) } }
    }
}

fn has_recording(c: &gpb::CommunicationRecord) -> bool {
    c.status == gpb::CallStatus::Completed as i32
        && (!c.record_url.is_empty() || !c.record_filename.is_empty())
}

/// The recording player (through the console, which asks the gateway for a fresh link).
pub fn player(lang: Lang, c: &gpb::CommunicationRecord) -> Markup {
    html! {
        div.recording {
            h3 { (lang.t(T::Recording)) }
            @if has_recording(c) {
                audio #recording controls preload="none" src={ "/calls/" (c.call_id) "/recording" }
                    aria-label=(lang.f(T::RecordingPlayer, &[&c.call_id])) {
                    a href={ "/calls/" (c.call_id) "/recording" } { (lang.t(T::RecordingDownload)) }
                }
                p { a href={ "/calls/" (c.call_id) "/recording" } { (lang.t(T::RecordingDownload)) } }
            } @else {
                p.muted { (lang.t(T::NoRecording)) }
            }
        }
    }
}

/// Reads one call as the person (the gateway refuses another collector's call).
pub async fn get(ctx: &Ctx, id: &str) -> Result<gpb::CommunicationRecord, Page> {
    ctx.state
        .calls(&ctx.session)
        .get_call(gpb::GetCallRequest {
            tenant_id: ctx.tenant().to_owned(),
            call_id: id.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| {
            let status = match s.code() {
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::NotFound | tonic::Code::InvalidArgument => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            ctx.message(status, Problem::from(s).sentence(ctx.lang))
        })
}

/// `GET /calls`.
pub async fn page(ctx: Ctx, Query(q): Query<ListQuery>) -> Result<Markup, Page> {
    let lang = ctx.lang;
    let own = ctx.own_collector();
    let collector = own.clone().unwrap_or_else(|| q.collector.trim().to_owned());
    let status = STATUSES
        .iter()
        .find(|(s, _)| s.as_str_name() == q.status)
        .map_or(0, |(s, _)| *s as i32);
    let result = RESULTS
        .iter()
        .find(|(r, _)| r.as_str_name() == q.result)
        .map_or(0, |(r, _)| *r as i32);
    let list = ctx
        .state
        .calls(&ctx.session)
        .list_calls(gpb::ListCallsRequest {
            tenant_id: ctx.tenant().to_owned(),
            collector_id: collector.clone(),
            case_id: q.case.trim().to_owned(),
            status,
            since: parse_local(&q.since),
            until: parse_local(&q.until),
            page_size: 50,
            page_token: q.page.clone(),
            result,
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(Problem::from);
    let live_src = format!("/live/calls?collector={}", enc(&collector));
    let first_page = q.page.is_empty();
    let body = html! {
        form method="get" action="/calls" .filters {
            @if own.is_none() {
                (Field { name: "collector", label: lang.t(T::Collector), value: &q.collector, kind: "text", help: None, error: None, required: false }.render())
            }
            (Field { name: "case", label: lang.t(T::Case), value: &q.case, kind: "text", help: None, error: None, required: false }.render())
            div.field {
                label for="status" { (lang.t(T::Status)) }
                select #status name="status" {
                    option value="" { (lang.t(T::Any)) }
                    @for (s, t) in STATUSES { option value=(s.as_str_name()) selected[s.as_str_name() == q.status] { (lang.t(t)) } }
                }
            }
            div.field {
                label for="result" { (lang.t(T::Result)) }
                select #result name="result" {
                    option value="" { (lang.t(T::Any)) }
                    @for (r, t) in RESULTS { option value=(r.as_str_name()) selected[r.as_str_name() == q.result] { (lang.t(t)) } }
                }
            }
            div.field { label for="since" { (lang.t(T::Since)) " (UTC)" } input #since name="since" type="datetime-local" value=(q.since); }
            div.field { label for="until" { (lang.t(T::Until)) " (UTC)" } input #until name="until" type="datetime-local" value=(q.until); }
            button type="submit" { (lang.t(T::Filter)) }
            a href="/calls" { (lang.t(T::Clear)) }
        }
        @match &list {
            Err(p) => { (views::flash(false, &p.sentence(lang))) }
            Ok(l) => {
                @if first_page { p.muted { (lang.t(T::NewRowsLive)) " " span.live data-live-status data-lost=(lang.t(T::LiveLost)) { (lang.t(T::Live)) } } }
                div.scroll {
                    table #calls data-live="calls" data-src=(live_src) data-prepend=(first_page && status == 0 && result == 0 && q.case.is_empty() && q.until.is_empty()) {
                        (head(lang))
                        tbody {
                            @for c in &l.calls { (row(lang, c)) }
                        }
                    }
                }
                @if l.calls.is_empty() { p { (lang.t(T::NoCalls)) } }
                nav.pager aria-label=(lang.t(T::Pages)) {
                    @if !first_page { a href={ "/calls?" (q.query_string("")) } { (lang.t(T::First)) } }
                    @if !l.next_page_token.is_empty() { a href={ "/calls?" (q.query_string(&l.next_page_token)) } rel="next" { (lang.t(T::Next)) } }
                }
            }
        }
    };
    Ok(views::page(&ctx, lang.t(T::CallsTitle), body))
}

/// The events of one call retained so far: read from the start of the tenant's retained events
/// until the one that brought the call to the status its record shows (at most `wait`).
async fn timeline(ctx: &Ctx, c: &gpb::CommunicationRecord, wait: Duration) -> Vec<gpb::CallEvent> {
    let mut out = Vec::new();
    let req = gpb::WatchCallsRequest {
        tenant_id: ctx.tenant().to_owned(),
        call_id: c.call_id.clone(),
        from_start: true,
        collector_id: ctx.own_collector().unwrap_or_default(),
        after_event_id: 0,
    };
    let read = async {
        let Ok(stream) = ctx.state.watch(&ctx.session).watch_calls(req).await else {
            return;
        };
        let mut stream = stream.into_inner();
        while let Some(Ok(e)) = stream.next().await {
            let reached = e.status == c.status;
            out.push(e);
            if reached {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    out
}

/// One timeline entry.
pub fn event_item(lang: Lang, e: &gpb::CallEvent) -> Markup {
    html! {
        li data-event=(e.event_id) {
            (views::time(e.occurred_at.as_ref())) " — " (views::event_text(lang, e.r#type))
            @if !e.extension_number.is_empty() { " · " (lang.t(T::FExtension)) " " (e.extension_number) }
            @if e.r#type == gpb::CallEventType::Completed as i32 { " · " (views::result_text(lang, e.result)) }
            @if !e.error_message.is_empty() { " · " (e.error_message) }
        }
    }
}

/// `?hung=1` after a hang-up.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DetailQuery {
    hung: String,
}

/// `GET /calls/{id}`.
pub async fn detail(
    ctx: Ctx,
    Path(id): Path<String>,
    Query(dq): Query<DetailQuery>,
) -> Result<Markup, Page> {
    let lang = ctx.lang;
    let c = get(&ctx, &id).await?;
    let events = timeline(&ctx, &c, Duration::from_millis(1_500)).await;
    let last = events.last().map_or(0, |e| e.event_id);
    let may_hang_up =
        matches!(ctx.session.role, Role::Admin | Role::Supervisor) && !views::is_terminal(c.status);
    let pairs: Vec<(&str, String)> = vec![
        (lang.t(T::CallId), c.call_id.clone()),
        (
            lang.t(T::Status),
            views::status_text(lang, c.status).to_owned(),
        ),
        (
            lang.t(T::Result),
            views::result_text(lang, c.result).to_owned(),
        ),
        (lang.t(T::Case), c.case_id.clone()),
        (lang.t(T::Collector), c.collector_id.clone()),
        (lang.t(T::FDestination), c.destination_number.clone()),
        (lang.t(T::FDialled), c.dialled_number.clone()),
        (lang.t(T::FCaller), c.caller_number.clone()),
        (lang.t(T::FExtension), c.extension_number.clone()),
        (lang.t(T::FLease), c.lease_id.clone()),
        (lang.t(T::FFencing), c.fencing_token.to_string()),
        (lang.t(T::FMode), c.call_mode.clone()),
        (
            lang.t(T::TalkTime),
            views::duration(lang, f64::from(c.talk_seconds)),
        ),
        (
            lang.t(T::FTotal),
            views::duration(lang, f64::from(c.total_seconds)),
        ),
        (
            lang.t(T::FHangupCause),
            if c.hangup_cause == 0 {
                String::new()
            } else {
                c.hangup_cause.to_string()
            },
        ),
        (lang.t(T::FHangupSide), c.hangup_side.clone()),
        (lang.t(T::FRecordFile), c.record_filename.clone()),
        (lang.t(T::FInfinityUuid), c.infinity_uuid.clone()),
        (
            lang.t(T::FCdrId),
            if c.infinity_cdr_id == 0 {
                String::new()
            } else {
                c.infinity_cdr_id.to_string()
            },
        ),
        (lang.t(T::FErrorCode), c.error_code.clone()),
        (lang.t(T::FErrorMessage), c.error_message.clone()),
        (lang.t(T::FIdempotency), c.idempotency_key.clone()),
        (lang.t(T::FAttempts), c.attempts.to_string()),
        (lang.t(T::FSupplier), c.supplier_id.clone()),
        (
            lang.t(T::FLeaseReleased),
            if c.lease_released {
                lang.t(T::Yes)
            } else {
                lang.t(T::No)
            }
            .to_owned(),
        ),
    ];
    let times = [
        (T::Created, c.created_at.as_ref()),
        (T::FStart, c.start_time.as_ref()),
        (T::FAnswer, c.answer_time.as_ref()),
        (T::FEnd, c.end_time.as_ref()),
        (T::FUpdated, c.updated_at.as_ref()),
    ];
    let mut custom: Vec<(&String, &String)> = c.custom_params.iter().collect();
    custom.sort();
    let terminal = views::is_terminal(c.status);
    let body = html! {
        @if dq.hung == "1" { (views::flash(true, lang.t(T::HungUp))) }
        p { a href="/calls" { (lang.t(T::BackToCalls)) } }
        @if may_hang_up {
            form method="post" action={ "/calls/" (c.call_id) "/hangup" } .inline {
                (views::csrf(&ctx))
                button type="submit" #hang-up .danger { (lang.t(T::HangUp)) }
            }
        }
        div.cols {
            section aria-labelledby="rec-h" {
                h2 #rec-h { (lang.t(T::RecordTitle)) }
                dl.record #record {
                    @for (k, v) in &pairs { dt { (k) } dd { @if v.is_empty() { "—" } @else { (v) } } }
                    @for (k, t) in times { dt { (lang.t(k)) } dd { (views::time(t)) } }
                    @if !custom.is_empty() {
                        dt { (lang.t(T::FCustom)) }
                        dd { ul { @for (k, v) in &custom { li { (k) " = " (v) } } } }
                    }
                }
                // Infinity's raw record (vendor ids, the direct recording link) is for staff.
                @if !c.raw_callback.is_empty() && !ctx.is_collector() {
                    details { summary { (lang.t(T::FRawCallback)) } pre { (c.raw_callback) } }
                }
            }
            section aria-labelledby="tl-h" {
                h2 #tl-h { (lang.t(T::Timeline)) " " span.live data-live-status data-lost=(lang.t(T::LiveLost)) { (lang.t(T::Live)) } }
                ol #timeline data-live="timeline" data-terminal=(terminal) data-src={ "/live/call/" (c.call_id) "?after=" (last) } {
                    @for e in &events { (event_item(lang, e)) }
                }
                @if events.is_empty() { p.muted { (lang.t(T::NoEvents)) } }
                (player(lang, &c))
            }
        }
    };
    Ok(views::page(
        &ctx,
        &lang.f(T::CallDetail, &[&c.call_id]),
        body,
    ))
}

/// `GET /calls/{id}/panel`: the workbench's panel, reloaded when the call ends.
pub async fn panel_fragment(ctx: Ctx, Path(id): Path<String>) -> Result<Markup, Page> {
    let c = get(&ctx, &id).await?;
    Ok(panel(ctx.lang, &c))
}

/// `GET /calls/{id}/row`: one row, for the live list.
pub async fn row_fragment(ctx: Ctx, Path(id): Path<String>) -> Result<Markup, Page> {
    let c = get(&ctx, &id).await?;
    Ok(row(ctx.lang, &c))
}

/// `GET /calls/{id}/recording`: a fresh link from the gateway, followed by the player.
pub async fn recording(ctx: Ctx, Path(id): Path<String>) -> Result<Response, Page> {
    let r = ctx
        .state
        .calls(&ctx.session)
        .get_recording(gpb::GetRecordingRequest {
            tenant_id: ctx.tenant().to_owned(),
            call_id: id,
        })
        .await
        .map_err(|s| ctx.message(StatusCode::NOT_FOUND, Problem::from(s).sentence(ctx.lang)))?
        .into_inner();
    match views::safe_url(&r.url) {
        Some(url) => Ok(Redirect::to(url).into_response()),
        None => Err(ctx.message(StatusCode::NOT_FOUND, ctx.lang.t(T::NoRecording))),
    }
}

/// `POST /calls/{id}/hangup`.
pub async fn hang_up(
    ctx: Ctx,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<Plain>,
) -> Result<Response, Page> {
    ctx.require(&[Role::Admin, Role::Supervisor])?;
    ctx.check_form(&headers, &f.csrf)?;
    let r = ctx
        .state
        .calls(&ctx.session)
        .hang_up(gpb::HangUpRequest {
            tenant_id: ctx.tenant().to_owned(),
            call_id: id.clone(),
        })
        .await
        .map_err(|s| ctx.message(StatusCode::CONFLICT, Problem::from(s).sentence(ctx.lang)))?
        .into_inner();
    tracing::info!(call_id = %id, answer = %r.message, "hang-up requested from the console");
    Ok(Redirect::to(&format!("/calls/{}?hung=1", enc(&id))).into_response())
}
