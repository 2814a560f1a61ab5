//! Collectors (administrators): list, add, edit (callback number validated by the gateway as a
//! phone number of the tenant's region), delete.

use axum::Form;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use cco_contracts::gateway::v1 as gpb;
use http::StatusCode;
use http::header::HeaderMap;
use maud::{Markup, html};
use serde::Deserialize;
use tonic::Code;

use crate::i18n::T;
use crate::pages::q as enc;
use crate::session::Role;
use crate::views::{self, Field};
use crate::web::{Ctx, Page, Problem};

/// The add/edit form.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct CollectorForm {
    csrf: String,
    /// "1" when editing an existing collector (add refuses an id that exists).
    editing: String,
    collector_id: String,
    display_name: String,
    callback_number: String,
    active: String,
}

/// `?page=&done=&id=`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    page: String,
    done: String,
    id: String,
}

fn form_view(ctx: &Ctx, f: &CollectorForm, error: Option<&(String, String)>) -> Markup {
    let lang = ctx.lang;
    let err = |name: &str| error.filter(|(n, _)| n == name).map(|(_, m)| m.as_str());
    let general = error
        .filter(|(n, _)| !["collector_id", "display_name", "callback_number"].contains(&n.as_str()))
        .map(|(_, m)| m.as_str());
    let editing = f.editing == "1";
    html! {
        form method="post" action="/collectors" .card.stack #collector-form novalidate {
            h2 { @if editing { (lang.f(T::EditCollector, &[&f.collector_id])) } @else { (lang.t(T::AddCollector)) } }
            @if let Some(m) = general { (views::flash(false, m)) }
            (views::csrf(ctx))
            input type="hidden" name="editing" value=(f.editing);
            @if editing {
                input type="hidden" name="collector_id" value=(f.collector_id);
            } @else {
                (Field { name: "collector_id", label: lang.t(T::CollectorId), value: &f.collector_id, kind: "text", help: None, error: err("collector_id"), required: true }.render())
            }
            (Field { name: "display_name", label: lang.t(T::DisplayName), value: &f.display_name, kind: "text", help: None, error: err("display_name"), required: false }.render())
            (Field { name: "callback_number", label: lang.t(T::CallbackNumber), value: &f.callback_number, kind: "tel", help: Some(lang.t(T::CallbackNumberHelp)), error: err("callback_number"), required: false }.render())
            div.check { input type="checkbox" id="active" name="active" checked[!f.active.is_empty()]; label for="active" { (lang.t(T::Active)) } }
            button type="submit" #save-collector { (lang.t(T::Save)) }
            @if editing { " " a href="/collectors" { (lang.t(T::Cancel)) } }
        }
    }
}

async fn render(
    ctx: &Ctx,
    q: &ListQuery,
    form: &CollectorForm,
    error: Option<&(String, String)>,
) -> Markup {
    let lang = ctx.lang;
    let list = ctx
        .state
        .collectors(&ctx.session)
        .list_collectors(gpb::ListCollectorsRequest {
            tenant_id: ctx.tenant().to_owned(),
            page_size: 100,
            page_token: q.page.clone(),
            active: None,
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(Problem::from);
    // Only an id is echoed (a link cannot make the page say something else).
    let id_ok = !q.id.is_empty()
        && q.id.len() <= 64
        && q.id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    let notice = match q.done.as_str() {
        _ if !id_ok => None,
        "saved" => Some(lang.f(T::CollectorSaved, &[&q.id])),
        "deleted" => Some(lang.f(T::CollectorDeleted, &[&q.id])),
        _ => None,
    };
    let body = html! {
        @if let Some(n) = &notice { (views::flash(true, n)) }
        (form_view(ctx, form, error))
        section aria-labelledby="list-h" {
            h2 #list-h { (lang.t(T::CollectorsTitle)) }
            @match &list {
                Err(p) => { (views::flash(false, &p.sentence(lang))) }
                Ok(l) if l.collectors.is_empty() => { p { (lang.t(T::NoCollectors)) } }
                Ok(l) => {
                    div.scroll { table #collectors {
                        thead { tr {
                            th scope="col" { (lang.t(T::CollectorId)) }
                            th scope="col" { (lang.t(T::DisplayName)) }
                            th scope="col" { (lang.t(T::CallbackNumber)) }
                            th scope="col" { (lang.t(T::Active)) }
                            th scope="col" { (lang.t(T::Actions)) }
                        } }
                        tbody {
                            @for c in &l.collectors {
                                tr data-collector=(c.collector_id) {
                                    th scope="row" { (c.collector_id) }
                                    td { (c.display_name) }
                                    td { @if c.callback_number.is_empty() { span.muted { (lang.t(T::NotSet)) } } @else { (c.callback_number) } }
                                    td { (if c.active { lang.t(T::Yes) } else { lang.t(T::No) }) }
                                    td.actions {
                                        a href={ "/collectors/edit/" (enc(&c.collector_id)) } aria-label=(lang.f(T::ActionOn, &[lang.t(T::Edit), &c.collector_id])) { (lang.t(T::Edit)) }
                                        form method="post" action="/collectors/delete" .inline data-confirm=(lang.f(T::ConfirmDeleteCollector, &[&c.collector_id])) {
                                            (views::csrf(ctx))
                                            input type="hidden" name="collector_id" value=(c.collector_id);
                                            button type="submit" .danger aria-label=(lang.f(T::ActionOn, &[lang.t(T::Delete), &c.collector_id])) { (lang.t(T::Delete)) }
                                        }
                                    }
                                }
                            }
                        }
                    } }
                    @if !l.next_page_token.is_empty() {
                        nav.pager { a href={ "/collectors?page=" (enc(&l.next_page_token)) } rel="next" { (lang.t(T::Next)) } }
                    }
                }
            }
        }
    };
    views::page(ctx, lang.t(T::CollectorsTitle), body)
}

fn blank() -> CollectorForm {
    CollectorForm {
        active: "on".into(),
        ..CollectorForm::default()
    }
}

/// `GET /collectors`.
pub async fn page(ctx: Ctx, Query(q): Query<ListQuery>) -> Result<Markup, Page> {
    ctx.require(&[Role::Admin])?;
    Ok(render(&ctx, &q, &blank(), None).await)
}

/// `GET /collectors/edit/{id}`.
pub async fn edit(ctx: Ctx, Path(id): Path<String>) -> Result<Markup, Page> {
    ctx.require(&[Role::Admin])?;
    let c = ctx
        .state
        .collectors(&ctx.session)
        .get_collector(gpb::GetCollectorRequest {
            tenant_id: ctx.tenant().to_owned(),
            collector_id: id,
        })
        .await
        .map_err(|s| ctx.message(StatusCode::NOT_FOUND, Problem::from(s).sentence(ctx.lang)))?
        .into_inner();
    let form = CollectorForm {
        editing: "1".into(),
        collector_id: c.collector_id,
        display_name: c.display_name,
        callback_number: c.callback_number,
        active: if c.active { "on".into() } else { String::new() },
        ..CollectorForm::default()
    };
    Ok(render(&ctx, &ListQuery::default(), &form, None).await)
}

/// `POST /collectors`: adds or changes a collector.
pub async fn save(
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<CollectorForm>,
) -> Result<Response, Page> {
    ctx.require(&[Role::Admin])?;
    ctx.check_form(&headers, &f.csrf)?;
    let id = f.collector_id.trim().to_owned();
    let mut client = ctx.state.collectors(&ctx.session);
    let lang = ctx.lang;
    let mut error = None;
    if f.editing != "1" && !id.is_empty() {
        match client
            .get_collector(gpb::GetCollectorRequest {
                tenant_id: ctx.tenant().to_owned(),
                collector_id: id.clone(),
            })
            .await
        {
            Ok(_) => error = Some(("collector_id".to_owned(), lang.t(T::ErrExists).to_owned())),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) if s.code() == Code::InvalidArgument => {}
            Err(s) => error = Some((String::new(), Problem::from(s).sentence(lang))),
        }
    }
    if error.is_none() {
        let r = client
            .upsert_collector(gpb::UpsertCollectorRequest {
                tenant_id: ctx.tenant().to_owned(),
                collector_id: id.clone(),
                callback_number: f.callback_number.trim().to_owned(),
                display_name: f.display_name.trim().to_owned(),
                active: Some(!f.active.is_empty()),
            })
            .await;
        match r {
            Ok(_) => {
                return Ok(
                    Redirect::to(&format!("/collectors?done=saved&id={}", enc(&id)))
                        .into_response(),
                );
            }
            Err(s) => {
                let p = Problem::from(s);
                error = Some(match p.field() {
                    Some(field) => (field.to_owned(), p.field_message().to_owned()),
                    None => (String::new(), p.sentence(lang)),
                });
            }
        }
    }
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        render(&ctx, &ListQuery::default(), &f, error.as_ref()).await,
    )
        .into_response())
}

/// The delete form.
#[derive(Debug, Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    collector_id: String,
}

/// `POST /collectors/delete`.
pub async fn delete(
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<DeleteForm>,
) -> Result<Response, Page> {
    ctx.require(&[Role::Admin])?;
    ctx.check_form(&headers, &f.csrf)?;
    ctx.state
        .collectors(&ctx.session)
        .delete_collector(gpb::DeleteCollectorRequest {
            tenant_id: ctx.tenant().to_owned(),
            collector_id: f.collector_id.clone(),
        })
        .await
        .map_err(|s| ctx.message(StatusCode::CONFLICT, Problem::from(s).sentence(ctx.lang)))?;
    Ok(Redirect::to(&format!(
        "/collectors?done=deleted&id={}",
        enc(&f.collector_id)
    ))
    .into_response())
}
