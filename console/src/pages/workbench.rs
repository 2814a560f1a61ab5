//! The workbench: a collector's case and numbers, the call button, the live state of the call
//! (dialing, ringing on your phone, connected, ended) and, when it ends, the result, talk time
//! and recording; the recent calls. Every form carries its own idempotency key, so a double
//! click or a resubmitted form never dials the debtor twice.

use axum::extract::Query;
use axum::response::{IntoResponse, Redirect, Response};
use cco_contracts::gateway::v1 as gpb;
use http::StatusCode;
use http::header::HeaderMap;
use maud::{Markup, html};
use serde::Deserialize;

use crate::i18n::T;
use crate::pages::{calls, form_pairs, q as enc};
use crate::session::{Role, token};
use crate::views::{self, Field, textarea};
use crate::web::{Ctx, Page, Problem};

/// Most numbers of one case that get a call button.
const MAX_NUMBERS: usize = 20;

/// `?call=&collector=`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WorkQuery {
    call: String,
    collector: String,
}

#[derive(Debug, Default)]
struct CaseInput {
    case_id: String,
    number: String,
    others: String,
    collector: String,
}

impl CaseInput {
    /// The debtor's number and the case's other numbers (at most [`MAX_NUMBERS`]).
    fn numbers(&self) -> Vec<String> {
        std::iter::once(self.number.trim())
            .chain(self.others.lines().map(str::trim))
            .filter(|n| !n.is_empty())
            .take(MAX_NUMBERS)
            .map(str::to_owned)
            .collect()
    }
}

/// The collector a call is placed for: a collector themselves; an admin chooses.
fn acting_collector(ctx: &Ctx, chosen: &str) -> String {
    ctx.own_collector()
        .unwrap_or_else(|| chosen.trim().to_owned())
}

async fn render(
    ctx: &Ctx,
    input: &CaseInput,
    call: Option<gpb::CommunicationRecord>,
    refusal: Option<String>,
    field_error: Option<(String, String)>,
) -> Markup {
    let lang = ctx.lang;
    let role = ctx.session.role;
    let collector = acting_collector(ctx, &input.collector);
    let collectors = if role == Role::Admin {
        ctx.state
            .collectors(&ctx.session)
            .list_collectors(gpb::ListCollectorsRequest {
                tenant_id: ctx.tenant().to_owned(),
                page_size: 1000,
                page_token: String::new(),
                active: Some(true),
            })
            .await
            .map(|r| r.into_inner().collectors)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let recent = ctx
        .state
        .calls(&ctx.session)
        .list_calls(gpb::ListCallsRequest {
            tenant_id: ctx.tenant().to_owned(),
            collector_id: collector.clone(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(Problem::from);
    let err = |name: &str| {
        field_error
            .as_ref()
            .filter(|(n, _)| n == name)
            .map(|(_, m)| m.as_str())
    };
    let numbers = input.numbers();
    let body = html! {
        @if let Some(r) = &refusal { p.flash.err #refusal role="alert" { (r) } }
        @if role == Role::Supervisor {
            p.muted { (lang.t(T::SupervisorNoCalls)) }
        } @else {
            form method="post" action="/workbench" .card.stack #call-form novalidate {
                (views::csrf(ctx))
                input type="hidden" name="idem" value=(token());
                @if role == Role::Admin {
                    div.field {
                        label for="collector" { (lang.t(T::CallAs)) }
                        select #collector name="collector" {
                            option value="" selected[collector.is_empty()] { "—" }
                            @for c in &collectors {
                                option value=(c.collector_id) selected[c.collector_id == collector] {
                                    (c.collector_id) @if !c.display_name.is_empty() { " — " (c.display_name) }
                                }
                            }
                        }
                    }
                }
                (Field { name: "case_id", label: lang.t(T::CaseId), value: &input.case_id, kind: "text", help: None, error: err("case_id"), required: true }.render())
                (Field { name: "destination_number", label: lang.t(T::DebtorNumber), value: &input.number, kind: "tel", help: None, error: err("destination_number"), required: true }.render())
                (textarea("others", lang.t(T::OtherNumbers), &input.others, Some(lang.t(T::OtherNumbersHelp)), None))
                div.buttons {
                    @if numbers.len() > 1 {
                        @for n in &numbers {
                            button type="submit" name="dial" value=(n) .call { (lang.f(T::CallNumber, &[n])) }
                        }
                    } @else {
                        button type="submit" #call .call { (lang.t(T::CallButton)) }
                    }
                    button type="submit" formaction="/workbench/case" .secondary { (lang.t(T::ShowNumbers)) }
                }
            }
        }
        @if let Some(c) = &call {
            section.card aria-labelledby="current-h" {
                h2 #current-h { (lang.t(T::CurrentCall)) }
                div #call-panel data-live="call" data-call-id=(c.call_id) data-src={ "/live/call/" (c.call_id) } data-terminal=(views::is_terminal(c.status)) {
                    (calls::panel(lang, c))
                }
            }
        }
        section aria-labelledby="recent-h" {
            h2 #recent-h {
                @if ctx.is_collector() || collector.is_empty() { (lang.t(T::RecentCalls)) } @else { (lang.f(T::RecentCallsOf, &[&collector])) }
            }
            @match &recent {
                Err(p) => { (views::flash(false, &p.sentence(lang))) }
                Ok(l) => {
                    div.scroll { table #recent data-live="calls" data-src={ "/live/calls?collector=" (enc(&collector)) } data-prepend="true" {
                        (calls::head(lang))
                        tbody { @for c in &l.calls { (calls::row(lang, c)) } }
                    } }
                    @if l.calls.is_empty() { p { (lang.t(T::NoCalls)) } }
                }
            }
        }
    };
    views::page(ctx, lang.t(T::WorkbenchTitle), body)
}

/// `GET /workbench?call=`.
pub async fn page(ctx: Ctx, Query(q): Query<WorkQuery>) -> Result<Markup, Page> {
    let call = if q.call.is_empty() {
        None
    } else {
        Some(calls::get(&ctx, &q.call).await?)
    };
    let input = CaseInput {
        case_id: call.as_ref().map(|c| c.case_id.clone()).unwrap_or_default(),
        number: call
            .as_ref()
            .map(|c| c.destination_number.clone())
            .unwrap_or_default(),
        collector: call
            .as_ref()
            .map_or_else(|| q.collector.clone(), |c| c.collector_id.clone()),
        ..CaseInput::default()
    };
    Ok(render(&ctx, &input, call, None, None).await)
}

fn input_of(body: &crate::pages::Pairs) -> CaseInput {
    CaseInput {
        case_id: body.one("case_id").trim().to_owned(),
        number: body.one("destination_number").trim().to_owned(),
        others: body.one("others").to_owned(),
        collector: body.one("collector").to_owned(),
    }
}

/// `POST /workbench/case`: shows a call button for each of the case's numbers.
pub async fn case(ctx: Ctx, headers: HeaderMap, body: String) -> Result<Markup, Page> {
    ctx.require(&[Role::Admin, Role::Collector])?;
    let f = form_pairs(&body);
    ctx.check_form(&headers, f.one("csrf"))?;
    Ok(render(&ctx, &input_of(&f), None, None, None).await)
}

/// `POST /workbench`: places the call.
pub async fn call(ctx: Ctx, headers: HeaderMap, body: String) -> Result<Response, Page> {
    ctx.require(&[Role::Admin, Role::Collector])?;
    let f = form_pairs(&body);
    ctx.check_form(&headers, f.one("csrf"))?;
    let input = input_of(&f);
    let dial = match f.one("dial").trim() {
        "" => input.number.clone(),
        n => n.to_owned(),
    };
    let collector = acting_collector(&ctx, &input.collector);
    let idem = f.one("idem");
    let r = ctx
        .state
        .calls(&ctx.session)
        .make_call(gpb::MakeCallRequest {
            tenant_id: ctx.tenant().to_owned(),
            collector_id: collector.clone(),
            case_id: input.case_id.clone(),
            destination_number: dial,
            idempotency_key: if idem.len() == 32 {
                idem.to_owned()
            } else {
                token()
            },
            ..Default::default()
        })
        .await;
    match r {
        Ok(r) => {
            let r = r.into_inner();
            tracing::info!(call_id = %r.call_id, status = r.status, "call placed from the console");
            Ok(Redirect::to(&format!("/workbench?call={}", enc(&r.call_id))).into_response())
        }
        Err(s) => {
            // Infinity did not answer: the call exists and its outcome is unknown; show it.
            if let Some(id) = s.metadata().get("x-call-id").and_then(|v| v.to_str().ok()) {
                return Ok(Redirect::to(&format!("/workbench?call={}", enc(id))).into_response());
            }
            let p = Problem::from(s);
            let field = p
                .field()
                .filter(|f| *f == "case_id")
                .map(|f| (f.to_owned(), p.field_message().to_owned()));
            let refusal = if field.is_some() {
                None
            } else {
                Some(p.refusal(ctx.lang))
            };
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                render(&ctx, &input, None, refusal, field).await,
            )
                .into_response())
        }
    }
}
