//! The supervisors' overview: live calls now, calls and the connected rate today, today's
//! outcomes by result and by hang-up cause, and the pool's utilisation per hour of the day, as
//! charts. "Today" is the tenant's day in its configured time zone. Figures come from the same
//! RPCs as the other pages, with the person's own credential: the calls of today are read page
//! by page up to [`MAX_CALLS`], and the pool's busy time per hour from the allocator's usage.

use std::collections::BTreeMap;

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as gpb;
use chrono::{DateTime, TimeZone, Utc};
use maud::{Markup, html};

use crate::i18n::{Lang, T};
use crate::session::Role;
use crate::views;
use crate::web::{Ctx, Page, Problem};

/// Most calls of today the overview reads (it says so when there are more).
pub const MAX_CALLS: usize = 5_000;
const PAGE: u32 = 500;

fn ts(t: DateTime<Utc>) -> cco_contracts::pbjson_types::Timestamp {
    cco_contracts::pbjson_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

/// Today's start in `zone` (UTC when the zone is unknown).
fn start_of_day(zone: &str, now: DateTime<Utc>) -> (DateTime<Utc>, String) {
    match zone.parse::<chrono_tz::Tz>() {
        Ok(tz) => {
            let local = now.with_timezone(&tz).date_naive();
            // The first moment of the day that exists there (a DST change may skip midnight).
            let start = (0..=3)
                .filter_map(|h| local.and_hms_opt(h, 0, 0))
                .find_map(|m| tz.from_local_datetime(&m).earliest())
                .map_or(now, |t| t.with_timezone(&Utc));
            (start, tz.name().to_owned())
        }
        Err(_) => (
            now.date_naive()
                .and_hms_opt(0, 0, 0)
                .map_or(now, |m| m.and_utc()),
            "UTC".into(),
        ),
    }
}

struct Figures {
    live: usize,
    today: Vec<gpb::CommunicationRecord>,
    capped: bool,
    zone: String,
    hours: Vec<(String, f64)>,
}

async fn figures(ctx: &Ctx) -> Result<Figures, Problem> {
    let tenant = ctx.tenant().to_owned();
    let zone = match ctx
        .state
        .configs(&ctx.session)
        .get_config(gpb::GetConfigRequest {
            tenant_id: tenant.clone(),
        })
        .await
    {
        Ok(c) => c.into_inner().callback_time_zone,
        Err(_) => String::new(),
    };
    let now = Utc::now();
    let (start, zone) = start_of_day(&zone, now);
    // Today's calls, newest first, page by page.
    let mut calls = ctx.state.calls(&ctx.session);
    let mut today = Vec::new();
    let mut token = String::new();
    let mut capped = false;
    loop {
        let page = calls
            .list_calls(gpb::ListCallsRequest {
                tenant_id: tenant.clone(),
                since: Some(ts(start)),
                page_size: PAGE,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        today.extend(page.calls);
        if page.next_page_token.is_empty() {
            break;
        }
        if today.len() >= MAX_CALLS {
            capped = true;
            break;
        }
        token = page.next_page_token;
    }
    // Live calls now: every open status (these are few; they end within the ring timeout).
    let mut live = 0;
    for status in [
        gpb::CallStatus::Dialing,
        gpb::CallStatus::Ringing,
        gpb::CallStatus::Unknown,
    ] {
        live += calls
            .list_calls(gpb::ListCallsRequest {
                tenant_id: tenant.clone(),
                status: status as i32,
                page_size: PAGE,
                ..Default::default()
            })
            .await?
            .into_inner()
            .calls
            .len();
    }
    // The pool's busy share per hour so far today (the hours asked for at once).
    let mut bounds = Vec::new();
    let mut from = start;
    while from < now {
        let to = (from + chrono::Duration::hours(1)).min(now);
        bounds.push((from, to));
        from = to;
    }
    let leases = ctx.state.leases(&ctx.session);
    let hourly = futures::future::join_all(bounds.iter().map(|&(from, to)| {
        let mut leases = leases.clone();
        let tenant = tenant.clone();
        async move {
            leases
                .stats(apb::StatsRequest {
                    tenant_id: tenant,
                    include_usage: true,
                    usage_since: Some(ts(from)),
                    usage_until: Some(ts(to)),
                })
                .await
                .map(tonic::Response::into_inner)
        }
    }))
    .await;
    let tz = zone.parse::<chrono_tz::Tz>().ok();
    let mut hours = Vec::new();
    for ((from, to), s) in bounds.into_iter().zip(hourly) {
        let s = s?;
        let busy: f64 = s.usage.iter().map(|u| u.busy_seconds).sum();
        let capacity = f64::from(s.total) * (to - from).num_seconds().max(1) as f64;
        let share = if capacity > 0.0 {
            (busy / capacity).min(1.0)
        } else {
            0.0
        };
        let label = match tz {
            Some(tz) => from.with_timezone(&tz).format("%H:00").to_string(),
            None => from.format("%H:00").to_string(),
        };
        hours.push((label, share));
    }
    Ok(Figures {
        live,
        today,
        capped,
        zone,
        hours,
    })
}

fn panel_view(lang: Lang, f: &Result<Figures, Problem>) -> Markup {
    let f = match f {
        Ok(f) => f,
        Err(p) => return views::flash(false, &p.sentence(lang)),
    };
    let total = f.today.len();
    let connected = f
        .today
        .iter()
        .filter(|c| c.result == gpb::CallResult::Connected as i32)
        .count();
    let rate = if total == 0 {
        "—".to_owned()
    } else {
        format!("{:.0}%", connected as f64 * 100.0 / total as f64)
    };
    let mut by_result: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_cause: BTreeMap<u32, usize> = BTreeMap::new();
    for c in &f.today {
        let r = views::result_text(lang, c.result);
        let r = if r.is_empty() {
            views::status_text(lang, c.status)
        } else {
            r
        };
        *by_result.entry(r).or_default() += 1;
        if c.status == gpb::CallStatus::Completed as i32 {
            *by_cause.entry(c.hangup_cause).or_default() += 1;
        }
    }
    let mut results: Vec<(String, f64, String)> = by_result
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v as f64, v.to_string()))
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut causes: Vec<(String, f64, String)> = by_cause
        .into_iter()
        .map(|(k, v)| (k.to_string(), v as f64, v.to_string()))
        .collect();
    causes.sort_by(|a, b| b.1.total_cmp(&a.1));
    causes.truncate(10);
    let hours: Vec<(String, f64, String)> = f
        .hours
        .iter()
        .map(|(h, s)| (h.clone(), *s, format!("{:.1}%", s * 100.0)))
        .collect();
    html! {
        dl.stats {
            div { dt { (lang.t(T::LiveNow)) } dd #live-now { (f.live) } }
            div { dt { (lang.t(T::CallsToday)) } dd #calls-today { (total) } }
            div { dt { (lang.t(T::ConnectedRate)) } dd #connected-rate { (rate) } }
        }
        p.muted { (lang.f(T::TodayIn, &[&f.zone])) @if f.capped { " " (lang.f(T::Sampled, &[&MAX_CALLS.to_string()])) } }
        div.charts {
            (views::bar_chart(lang, lang.t(T::ByResult), &results, None))
            (views::bar_chart(lang, lang.t(T::ByCause), &causes, None))
            (views::bar_chart(lang, lang.t(T::PoolToday), &hours, Some(1.0)))
        }
    }
}

/// `GET /overview`.
pub async fn page(ctx: Ctx) -> Result<Markup, Page> {
    ctx.require(&[Role::Admin, Role::Supervisor])?;
    let lang = ctx.lang;
    let f = figures(&ctx).await;
    let body = html! {
        p { span.live data-live-status data-lost=(lang.t(T::LiveLost)) { (lang.t(T::Live)) } }
        div #overview data-live="refresh" data-fragment="/overview/panel" data-src="/live/calls" data-every="10000" { (panel_view(lang, &f)) }
    };
    Ok(views::page(&ctx, lang.t(T::OverviewTitle), body))
}

/// `GET /overview/panel`: the figures, reloaded on call events.
pub async fn panel(ctx: Ctx) -> Result<Markup, Page> {
    ctx.require(&[Role::Admin, Role::Supervisor])?;
    Ok(panel_view(ctx.lang, &figures(&ctx).await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_starts_at_local_midnight() {
        let now = Utc
            .with_ymd_and_hms(2026, 12, 2, 3, 0, 0)
            .single()
            .expect("time");
        let (start, zone) = start_of_day("Asia/Shanghai", now);
        assert_eq!(zone, "Asia/Shanghai");
        assert_eq!(
            start,
            Utc.with_ymd_and_hms(2026, 12, 1, 16, 0, 0)
                .single()
                .expect("t")
        );
        // Santiago skipped 2022-09-11 00:00 (clocks went to 01:00): the day starts at 01:00.
        let dst = Utc
            .with_ymd_and_hms(2022, 9, 11, 12, 0, 0)
            .single()
            .expect("time");
        let (start, _) = start_of_day("America/Santiago", dst);
        assert_eq!(
            start,
            Utc.with_ymd_and_hms(2022, 9, 11, 4, 0, 0)
                .single()
                .expect("t")
        );
        let (start, zone) = start_of_day("nowhere", now);
        assert_eq!(zone, "UTC");
        assert_eq!(
            start,
            Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0)
                .single()
                .expect("t")
        );
    }
}
