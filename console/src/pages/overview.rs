//! The supervisors' overview: live calls now, calls and the connected rate today, today's
//! outcomes by result and by hang-up cause, and the pool's utilisation per hour of the day, as
//! charts. "Today" is the tenant's day in its configured time zone. Figures come from the
//! services with the person's own credential: the day's calls counted by the gateway's
//! `SummarizeCalls` (one grouped query), the pool's busy time per hour from the allocator's usage.

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as gpb;
use chrono::{DateTime, TimeZone, Utc};
use maud::{Markup, html};

use crate::i18n::{Lang, T};
use crate::session::Role;
use crate::views;
use crate::web::{Ctx, Page, Problem};

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
    live: u64,
    today: gpb::CallSummary,
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
    // Today's calls counted by the gateway (one grouped query), and the calls open now however
    // old (read through the gateway's index of open calls). No `until`: the gateway counts up
    // to its own now.
    let calls = ctx.state.calls(&ctx.session);
    let (mut a, mut b) = (calls.clone(), calls);
    let (today, open) = tokio::join!(
        a.summarize_calls(gpb::SummarizeCallsRequest {
            tenant_id: tenant.clone(),
            since: Some(views::timestamp(start)),
            ..Default::default()
        }),
        b.summarize_calls(gpb::SummarizeCallsRequest {
            tenant_id: tenant.clone(),
            open_only: true,
            ..Default::default()
        })
    );
    let today = today?.into_inner();
    let live = open?.into_inner().total;
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
                    usage_since: Some(views::timestamp(from)),
                    usage_until: Some(views::timestamp(to)),
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
        zone,
        hours,
    })
}

fn panel_view(lang: Lang, f: &Result<Figures, Problem>) -> Markup {
    let f = match f {
        Ok(f) => f,
        Err(p) => return views::flash(false, &p.sentence(lang)),
    };
    let total = f.today.total;
    let connected = f
        .today
        .by_result
        .iter()
        .filter(|r| r.result == gpb::CallResult::Connected as i32)
        .map(|r| r.count)
        .sum::<u64>();
    let rate = if total == 0 {
        "—".to_owned()
    } else {
        format!("{:.0}%", connected as f64 * 100.0 / total as f64)
    };
    // Outcomes: completed calls by result, the others by status.
    let mut results: Vec<(String, f64, String)> = f
        .today
        .by_result
        .iter()
        .map(|r| {
            (
                views::result_text(lang, r.result).to_owned(),
                r.count as f64,
                r.count.to_string(),
            )
        })
        .chain(
            f.today
                .by_status
                .iter()
                .filter(|s| s.status != gpb::CallStatus::Completed as i32)
                .map(|s| {
                    (
                        views::status_text(lang, s.status).to_owned(),
                        s.count as f64,
                        s.count.to_string(),
                    )
                }),
        )
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut causes: Vec<(String, f64, String)> = f
        .today
        .by_hangup_cause
        .iter()
        .map(|c| {
            (
                c.hangup_cause.to_string(),
                c.count as f64,
                c.count.to_string(),
            )
        })
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
        p.muted { (lang.f(T::TodayIn, &[&f.zone])) }
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
