//! The extension pool: live statistics, batch import with its per-line report, the list with
//! filters and paging, release / offline / online / delete, batch delete with confirmation,
//! force-releasing a collector, and usage per extension as a chart. Administrators do all of
//! it; supervisors read, release and force-release (the allocator enforces the same).

use axum::extract::Query;
use axum::response::{IntoResponse, Redirect, Response};
use cco_contracts::allocator::v1 as apb;
use http::StatusCode;
use http::header::HeaderMap;
use maud::{Markup, html};
use serde::Deserialize;

use crate::i18n::{Lang, T};
use crate::pages::{form_pairs, q as enc};
use crate::session::Role;
use crate::views::{self, Field, textarea};
use crate::web::{Ctx, Page, Problem};

const READERS: &[Role] = &[Role::Admin, Role::Supervisor];
const PAGE_SIZE: u32 = 50;

/// Filters and page of the list, and the notice of the last action.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    status: String,
    collector: String,
    page: String,
    done: String,
    n: String,
}

fn status_text(lang: Lang, s: i32) -> &'static str {
    match apb::ExtensionStatus::try_from(s) {
        Ok(apb::ExtensionStatus::InUse) => lang.t(T::ExtInUse),
        Ok(apb::ExtensionStatus::Offline) => lang.t(T::ExtOffline),
        _ => lang.t(T::ExtAvailable),
    }
}

async fn stats(ctx: &Ctx) -> Result<apb::PoolStats, Problem> {
    Ok(ctx
        .state
        .leases(&ctx.session)
        .stats(apb::StatsRequest {
            tenant_id: ctx.tenant().to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

fn stats_view(lang: Lang, s: &Result<apb::PoolStats, Problem>) -> Markup {
    html! {
        @match s {
            Err(p) => { (views::flash(false, &p.sentence(lang))) }
            Ok(s) => {
                dl.stats {
                    div { dt { (lang.t(T::StatTotal)) } dd #stat-total { (s.total) } }
                    div { dt { (lang.t(T::StatFree)) } dd #stat-free { (s.available) } }
                    div { dt { (lang.t(T::StatInUse)) } dd #stat-in-use { (s.in_use) } }
                    div { dt { (lang.t(T::StatOffline)) } dd #stat-offline { (s.offline) } }
                    div { dt { (lang.t(T::StatCooling)) } dd #stat-cooling { (s.cooling_down) } }
                    div { dt { (lang.t(T::StatUtilisation)) } dd #stat-utilisation { (format!("{:.0}%", s.utilization * 100.0)) } }
                }
            }
        }
    }
}

/// `GET /pool/stats`: the statistics block (the page's script reloads it on every call event).
pub async fn stats_fragment(ctx: Ctx) -> Result<Markup, Page> {
    ctx.require(READERS)?;
    Ok(stats_view(ctx.lang, &stats(&ctx).await))
}

fn notice(lang: Lang, q: &ListQuery) -> Option<String> {
    // Only a count is echoed (a link cannot make the page say something else).
    let n = q.n.parse::<u32>().ok()?.to_string();
    let n = n.as_str();
    Some(match q.done.as_str() {
        "released" => lang.t(T::Released).to_owned(),
        "forced" => lang.f(T::ForceReleased, &[n]),
        "deleted" => lang.f(T::DeleteReport, &[n]),
        "updated" | "online" | "offline" => lang.t(T::Done).to_owned(),
        _ => return None,
    })
}

struct Extra {
    flash: Option<(bool, String)>,
    import: Option<apb::BatchImportResponse>,
    import_text: String,
    force_error: Option<String>,
}

async fn render(ctx: &Ctx, q: &ListQuery, extra: Extra) -> Markup {
    let lang = ctx.lang;
    let admin = ctx.session.role == Role::Admin;
    let status = match q.status.as_str() {
        "available" => apb::ExtensionStatus::Available as i32,
        "in_use" => apb::ExtensionStatus::InUse as i32,
        "offline" => apb::ExtensionStatus::Offline as i32,
        _ => 0,
    };
    let mut pool = ctx.state.pool(&ctx.session);
    let (stats, list) = tokio::join!(
        stats(ctx),
        pool.list_extensions(apb::ListExtensionsRequest {
            tenant_id: ctx.tenant().to_owned(),
            status,
            collector_id: q.collector.trim().to_owned(),
            page_size: PAGE_SIZE,
            page_token: q.page.clone(),
            ..Default::default()
        })
    );
    let list = list.map(tonic::Response::into_inner).map_err(Problem::from);
    let next = list
        .as_ref()
        .ok()
        .map(|l| l.next_page_token.clone())
        .filter(|t| !t.is_empty());
    let status_opts = [
        ("", T::Any),
        ("available", T::ExtAvailable),
        ("in_use", T::ExtInUse),
        ("offline", T::ExtOffline),
    ];
    let body = html! {
        @if let Some(n) = notice(lang, q) { (views::flash(true, &n)) }
        @if let Some((ok, text)) = &extra.flash { (views::flash(*ok, text)) }
        section.card aria-labelledby="stats-h" {
            h2 #stats-h { (lang.t(T::PoolTitle)) " " span.live data-live-status data-lost=(lang.t(T::LiveLost)) { (lang.t(T::Live)) } }
            div #stats data-live="refresh" data-fragment="/pool/stats" { (stats_view(lang, &stats)) }
            p { a href="/pool/usage" { (lang.t(T::UsageTitle)) } }
        }
        @if admin {
            section.card aria-labelledby="import-h" {
                h2 #import-h { (lang.t(T::ImportTitle)) }
                form method="post" action="/pool/import" {
                    (views::csrf(ctx))
                    (textarea("numbers", lang.t(T::ImportLines), &extra.import_text, None, None))
                    button type="submit" #import { (lang.t(T::ImportButton)) }
                }
                @if let Some(r) = &extra.import { (import_report(lang, r)) }
            }
        }
        section.card aria-labelledby="force-h" {
            h2 #force-h { (lang.t(T::ForceReleaseTitle)) }
            form method="post" action="/pool/force-release" .inline {
                (views::csrf(ctx))
                (Field { name: "collector_id", label: lang.t(T::CollectorId), value: "", kind: "text", help: None, error: extra.force_error.as_deref(), required: true }.render())
                button type="submit" #force-release { (lang.t(T::ForceRelease)) }
            }
        }
        section aria-labelledby="list-h" {
            h2 #list-h { (lang.t(T::Extension)) }
            form method="get" action="/pool" .filters {
                div.field {
                    label for="status" { (lang.t(T::Status)) }
                    select #status name="status" {
                        @for (v, t) in status_opts { option value=(v) selected[v == q.status] { (lang.t(t)) } }
                    }
                }
                (Field { name: "collector", label: lang.t(T::Collector), value: &q.collector, kind: "text", help: None, error: None, required: false }.render())
                button type="submit" { (lang.t(T::Filter)) }
                a href="/pool" { (lang.t(T::Clear)) }
            }
            @match &list {
                Err(p) => { (views::flash(false, &p.sentence(lang))) }
                Ok(l) if l.extensions.is_empty() => { p { (lang.t(T::NoExtensions)) } }
                Ok(l) => {
                    form method="post" action="/pool/delete" #pool-form {
                        (views::csrf(ctx))
                        div.scroll {
                            table #extensions {
                                thead { tr {
                                    @if admin { th scope="col" { span.sr { (lang.t(T::Select)) } } }
                                    th scope="col" { (lang.t(T::Extension)) }
                                    th scope="col" { (lang.t(T::Status)) }
                                    th scope="col" { (lang.t(T::Collector)) }
                                    th scope="col" { (lang.t(T::LastUsed)) }
                                    th scope="col" { (lang.t(T::Uses)) }
                                    th scope="col" { (lang.t(T::Actions)) }
                                } }
                                tbody {
                                    @for e in &l.extensions {
                                        tr data-extension=(e.number) {
                                            @if admin { td { input type="checkbox" name="ext" value=(e.extension_id) id={ "sel-" (e.extension_id) } aria-label=(lang.f(T::SelectExtension, &[&e.number])); } }
                                            th scope="row" { (e.number) }
                                            td.st { (status_text(lang, e.status)) }
                                            td { (e.current_collector_id) }
                                            td { (views::time(e.last_used_at.as_ref())) }
                                            td { (e.use_count) }
                                            td.actions {
                                                @if e.status == apb::ExtensionStatus::InUse as i32 {
                                                    button type="submit" formaction="/pool/action" name="act" value={ "release:" (e.extension_id) } aria-label=(lang.f(T::ActionOn, &[lang.t(T::Release), &e.number])) { (lang.t(T::Release)) }
                                                }
                                                @if admin {
                                                    @if e.status == apb::ExtensionStatus::Offline as i32 {
                                                        button type="submit" formaction="/pool/action" name="act" value={ "online:" (e.extension_id) } aria-label=(lang.f(T::ActionOn, &[lang.t(T::BringOnline), &e.number])) { (lang.t(T::BringOnline)) }
                                                    } @else {
                                                        button type="submit" formaction="/pool/action" name="act" value={ "offline:" (e.extension_id) } aria-label=(lang.f(T::ActionOn, &[lang.t(T::TakeOffline), &e.number])) { (lang.t(T::TakeOffline)) }
                                                    }
                                                    button type="submit" formaction="/pool/action" name="act" value={ "delete:" (e.extension_id) } aria-label=(lang.f(T::ActionOn, &[lang.t(T::Delete), &e.number])) { (lang.t(T::Delete)) }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        @if admin { button type="submit" #delete-selected { (lang.t(T::DeleteSelected)) } }
                    }
                    nav.pager aria-label=(lang.t(T::Pages)) {
                        @if !q.page.is_empty() { a href={ "/pool?status=" (enc(&q.status)) "&collector=" (enc(&q.collector)) } { (lang.t(T::First)) } }
                        @if let Some(t) = &next { a href={ "/pool?status=" (enc(&q.status)) "&collector=" (enc(&q.collector)) "&page=" (enc(t)) } rel="next" { (lang.t(T::Next)) } }
                    }
                }
            }
        }
    };
    views::page(ctx, lang.t(T::PoolTitle), body)
}

fn import_report(lang: Lang, r: &apb::BatchImportResponse) -> Markup {
    let outcome = |o: i32| match apb::ImportOutcome::try_from(o) {
        Ok(apb::ImportOutcome::Imported) => lang.t(T::OutImported),
        Ok(apb::ImportOutcome::Duplicate) => lang.t(T::OutDuplicate),
        _ => lang.t(T::OutInvalid),
    };
    html! {
        div #import-report role="status" {
            p { (lang.f(T::ImportSummary, &[&r.imported.to_string(), &r.duplicates.to_string(), &r.invalid.to_string()])) }
            div.scroll { table {
                thead { tr { th scope="col" { (lang.t(T::ImportLine)) } th scope="col" { (lang.t(T::ImportInput)) } th scope="col" { (lang.t(T::ImportOutcome)) } } }
                tbody {
                    @for l in &r.results {
                        tr.bad[l.outcome == apb::ImportOutcome::Invalid as i32] {
                            td { (l.line) } td { (l.input) }
                            td { (outcome(l.outcome)) @if !l.reason.is_empty() { ": " (l.reason) } }
                        }
                    }
                }
            } }
        }
    }
}

fn none() -> Extra {
    Extra {
        flash: None,
        import: None,
        import_text: String::new(),
        force_error: None,
    }
}

/// `GET /pool`.
pub async fn page(ctx: Ctx, Query(q): Query<ListQuery>) -> Result<Markup, Page> {
    ctx.require(READERS)?;
    Ok(render(&ctx, &q, none()).await)
}

/// `POST /pool/import`: imports pasted lines and shows the per-line report.
pub async fn import(ctx: Ctx, headers: HeaderMap, body: String) -> Result<Response, Page> {
    ctx.require(&[Role::Admin])?;
    let f = form_pairs(&body);
    ctx.check_form(&headers, f.one("csrf"))?;
    let text = f.one("numbers").to_owned();
    let numbers: Vec<String> = text.lines().map(str::to_owned).collect();
    let r = ctx
        .state
        .pool(&ctx.session)
        .batch_import(apb::BatchImportRequest {
            tenant_id: ctx.tenant().to_owned(),
            config_id: String::new(),
            numbers,
        })
        .await;
    let extra = match r {
        Ok(r) => Extra {
            import: Some(r.into_inner()),
            ..none()
        },
        Err(s) => Extra {
            flash: Some((false, Problem::from(s).sentence(ctx.lang))),
            import_text: text,
            ..none()
        },
    };
    Ok(render(&ctx, &ListQuery::default(), extra)
        .await
        .into_response())
}

/// `POST /pool/action` (`act=release:<id>` and the like): one extension's button.
pub async fn action(ctx: Ctx, headers: HeaderMap, body: String) -> Result<Response, Page> {
    ctx.require(READERS)?;
    let f = form_pairs(&body);
    ctx.check_form(&headers, f.one("csrf"))?;
    let Some((act, id)) = f.one("act").split_once(':') else {
        return Err(ctx.message(StatusCode::BAD_REQUEST, ctx.lang.t(T::ErrInvalid)));
    };
    if act != "release" {
        ctx.require(&[Role::Admin])?;
    }
    let tenant = ctx.tenant().to_owned();
    let id = id.to_owned();
    let mut pool = ctx.state.pool(&ctx.session);
    let update = |status: apb::ExtensionStatus| apb::UpdateExtensionRequest {
        tenant_id: tenant.clone(),
        extension_id: id.clone(),
        status: Some(status as i32),
        number: None,
        force: false,
    };
    let r: Result<(String, u32), tonic::Status> = match act {
        "release" => pool
            .release_extension(apb::ReleaseExtensionRequest {
                tenant_id: tenant.clone(),
                extension_id: id.clone(),
            })
            .await
            .map(|r| r.into_inner())
            .and_then(|r| {
                if r.released {
                    Ok(("released".into(), 1))
                } else {
                    Err(tonic::Status::failed_precondition(r.reason))
                }
            }),
        "offline" => pool
            .update_extension(update(apb::ExtensionStatus::Offline))
            .await
            .map(|_| ("offline".into(), 1)),
        "online" => pool
            .update_extension(update(apb::ExtensionStatus::Available))
            .await
            .map(|_| ("online".into(), 1)),
        "delete" => pool
            .delete_extension(apb::DeleteExtensionRequest {
                tenant_id: tenant.clone(),
                extension_id: id.clone(),
                force: false,
            })
            .await
            .map(|_| ("deleted".into(), 1)),
        _ => return Err(ctx.message(StatusCode::BAD_REQUEST, ctx.lang.t(T::ErrInvalid))),
    };
    match r {
        Ok((done, n)) => Ok(Redirect::to(&format!("/pool?done={done}&n={n}")).into_response()),
        Err(s) => {
            let p = Problem::from(s);
            let text = if act == "release" && p.code == tonic::Code::FailedPrecondition {
                ctx.lang.f(T::NotReleased, &[&p.detail])
            } else {
                p.sentence(ctx.lang)
            };
            let extra = Extra {
                flash: Some((false, text)),
                ..none()
            };
            Ok((
                StatusCode::CONFLICT,
                render(&ctx, &ListQuery::default(), extra).await,
            )
                .into_response())
        }
    }
}

/// `POST /pool/delete`: asks to confirm deleting the selected extensions.
pub async fn delete_confirm(ctx: Ctx, headers: HeaderMap, body: String) -> Result<Response, Page> {
    ctx.require(&[Role::Admin])?;
    let f = form_pairs(&body);
    ctx.check_form(&headers, f.one("csrf"))?;
    let ids = f.all("ext");
    let lang = ctx.lang;
    if ids.is_empty() {
        let extra = Extra {
            flash: Some((false, lang.t(T::NothingSelected).to_owned())),
            ..none()
        };
        return Ok(render(&ctx, &ListQuery::default(), extra)
            .await
            .into_response());
    }
    let body = html! {
        form method="post" action="/pool/delete/confirm" .card {
            (views::csrf(&ctx))
            h2 { (lang.t(T::ConfirmDeleteTitle)) }
            p { (lang.f(T::ConfirmDeleteText, &[&ids.len().to_string()])) }
            @for id in &ids { input type="hidden" name="ext" value=(id); }
            div.check { input type="checkbox" id="force" name="force"; label for="force" { (lang.t(T::ConfirmDeleteForce)) } }
            button type="submit" #confirm-delete .danger { (lang.t(T::ConfirmDelete)) }
            " " a href="/pool" { (lang.t(T::Cancel)) }
        }
    };
    Ok(views::page(&ctx, lang.t(T::ConfirmDeleteTitle), body).into_response())
}

/// `POST /pool/delete/confirm`: deletes them and reports how many went.
pub async fn delete(ctx: Ctx, headers: HeaderMap, body: String) -> Result<Response, Page> {
    ctx.require(&[Role::Admin])?;
    let f = form_pairs(&body);
    ctx.check_form(&headers, f.one("csrf"))?;
    let ids: Vec<String> = f.all("ext").into_iter().map(str::to_owned).collect();
    let r = ctx
        .state
        .pool(&ctx.session)
        .batch_delete_extensions(apb::BatchDeleteExtensionsRequest {
            tenant_id: ctx.tenant().to_owned(),
            extension_ids: ids,
            force: !f.one("force").is_empty(),
        })
        .await;
    match r {
        Ok(r) => {
            let r = r.into_inner();
            let skipped: Vec<String> = r
                .results
                .iter()
                .filter(|x| !x.deleted)
                .map(|x| format!("{} ({})", x.extension_id, x.reason))
                .collect();
            if skipped.is_empty() {
                Ok(Redirect::to(&format!("/pool?done=deleted&n={}", r.deleted)).into_response())
            } else {
                let text = format!(
                    "{} {}",
                    ctx.lang.f(T::DeleteReport, &[&r.deleted.to_string()]),
                    skipped.join("; ")
                );
                let extra = Extra {
                    flash: Some((false, text)),
                    ..none()
                };
                Ok(render(&ctx, &ListQuery::default(), extra)
                    .await
                    .into_response())
            }
        }
        Err(s) => {
            let extra = Extra {
                flash: Some((false, Problem::from(s).sentence(ctx.lang))),
                ..none()
            };
            Ok(render(&ctx, &ListQuery::default(), extra)
                .await
                .into_response())
        }
    }
}

/// `POST /pool/force-release`: frees every extension a collector holds.
pub async fn force_release(ctx: Ctx, headers: HeaderMap, body: String) -> Result<Response, Page> {
    ctx.require(READERS)?;
    let f = form_pairs(&body);
    ctx.check_form(&headers, f.one("csrf"))?;
    let r = ctx
        .state
        .pool(&ctx.session)
        .force_release_collector(apb::ForceReleaseCollectorRequest {
            tenant_id: ctx.tenant().to_owned(),
            collector_id: f.one("collector_id").trim().to_owned(),
        })
        .await;
    match r {
        Ok(r) => Ok(Redirect::to(&format!(
            "/pool?done=forced&n={}",
            r.into_inner().released_count
        ))
        .into_response()),
        Err(s) => {
            let p = Problem::from(s);
            let extra = Extra {
                force_error: Some(if p.field().is_some() {
                    p.field_message().to_owned()
                } else {
                    p.sentence(ctx.lang)
                }),
                ..none()
            };
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                render(&ctx, &ListQuery::default(), extra).await,
            )
                .into_response())
        }
    }
}

/// The extensions used in the window, busiest first.
fn busiest(s: &apb::PoolStats) -> Vec<&apb::ExtensionUsage> {
    let mut used: Vec<&apb::ExtensionUsage> = s
        .usage
        .iter()
        .filter(|u| u.lease_count > 0 || u.busy_seconds > 0.0)
        .collect();
    used.sort_by(|a, b| b.busy_seconds.total_cmp(&a.busy_seconds));
    used
}

/// `?window=`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UsageQuery {
    window: String,
}

/// `GET /pool/usage?window=1h|24h|7d`: leases and busy time per extension, as a chart.
pub async fn usage(ctx: Ctx, Query(q): Query<UsageQuery>) -> Result<Markup, Page> {
    ctx.require(READERS)?;
    let lang = ctx.lang;
    let (window, hours) = match q.window.as_str() {
        "1h" => ("1h", 1),
        "7d" => ("7d", 24 * 7),
        _ => ("24h", 24),
    };
    let until = chrono::Utc::now();
    let since = until - chrono::Duration::hours(hours);
    let r = ctx
        .state
        .leases(&ctx.session)
        .stats(apb::StatsRequest {
            tenant_id: ctx.tenant().to_owned(),
            include_usage: true,
            usage_since: Some(views::timestamp(since)),
            usage_until: Some(views::timestamp(until)),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(Problem::from);
    let windows = [
        ("1h", T::Window1h),
        ("24h", T::Window24h),
        ("7d", T::Window7d),
    ];
    let body = html! {
        form method="get" action="/pool/usage" .filters {
            div.field {
                label for="window" { (lang.t(T::UsageWindow)) }
                select #window name="window" {
                    @for (v, t) in windows { option value=(v) selected[v == window] { (lang.t(t)) } }
                }
            }
            button type="submit" { (lang.t(T::Show)) }
        }
        @match &r {
            Err(p) => { (views::flash(false, &p.sentence(lang))) }
            Ok(s) => {
                @let used = busiest(s);
                @if used.is_empty() { p #no-usage { (lang.t(T::NoUsage)) } }
                @else {
                    (views::bar_chart(lang, lang.t(T::UsageBusy), &used.iter().map(|u| (u.extension_number.clone(), u.busy_seconds, views::duration(lang, u.busy_seconds))).collect::<Vec<_>>(), None))
                    (views::bar_chart(lang, lang.t(T::UsageLeases), &used.iter().map(|u| (u.extension_number.clone(), f64::from(u.lease_count), u.lease_count.to_string())).collect::<Vec<_>>(), None))
                }
            }
        }
        p { a href="/pool" { (lang.t(T::PoolTitle)) } }
    };
    Ok(views::page(&ctx, lang.t(T::UsageTitle), body))
}
