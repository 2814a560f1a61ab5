//! The page frame and the small pieces every page uses: fields with their messages, labels of
//! statuses and results, times, and charts drawn as SVG on the server. maud escapes everything
//! it interpolates, so no text from a service, a vendor or a person reaches the page as markup.

use axum::response::IntoResponse;
use cco_contracts::gateway::v1 as gpb;
use http::header;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::i18n::{Lang, T};
use crate::session::Role;
use crate::web::Ctx;

const SCRIPT: &str = include_str!("../assets/console.js");
const STYLE: &str = include_str!("../assets/console.css");

/// `GET /assets/console.js`: the console's only script.
pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

/// `GET /assets/console.css`.
pub async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}

fn head(lang: Lang, title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · " (lang.t(T::AppName)) }
            link rel="stylesheet" href="/assets/console.css";
            script src="/assets/console.js" defer {}
        }
    }
}

fn lang_switch(lang: Lang, path: &str) -> Markup {
    let other = lang.other();
    html! {
        a.lang href={ "/lang/" (other.tag()) "?next=" (path) } lang=(other.tag())
            aria-label=(lang.t(T::SwitchLanguageLabel)) { (lang.t(T::SwitchLanguage)) }
    }
}

/// A page without the signed-in frame (sign-in, messages).
pub fn bare(lang: Lang, text: &str) -> Markup {
    frame_bare(
        lang,
        lang.t(T::AppName),
        "/",
        html! { p.flash.err role="alert" { (text) } p { a href="/" { (lang.t(T::AppName)) } } },
    )
}

/// The document around every page: `header` after the brand, then `body` under the title.
fn document(lang: Lang, title: &str, header: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            (head(lang, title))
            body {
                a.skip href="#main" { (lang.t(T::SkipToContent)) }
                header.top {
                    span.brand { (lang.t(T::AppName)) }
                    (header)
                }
                main #main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page without navigation, with `body`.
pub fn frame_bare(lang: Lang, title: &str, path: &str, body: Markup) -> Markup {
    document(lang, title, lang_switch(lang, path), body)
}

/// Which pages a role sees, in menu order.
pub fn menu(role: Role) -> &'static [(&'static str, T)] {
    match role {
        Role::Admin => &[
            ("/overview", T::NavOverview),
            ("/calls", T::NavCalls),
            ("/workbench", T::NavWorkbench),
            ("/pool", T::NavPool),
            ("/collectors", T::NavCollectors),
            ("/config", T::NavConfig),
        ],
        Role::Supervisor => &[
            ("/overview", T::NavOverview),
            ("/calls", T::NavCalls),
            ("/workbench", T::NavWorkbench),
            ("/pool", T::NavPool),
        ],
        Role::Collector => &[("/workbench", T::NavWorkbench), ("/calls", T::NavCalls)],
    }
}

/// The first page of a role's menu (where signing in lands).
pub fn home(role: Role) -> &'static str {
    menu(role).first().map_or("/workbench", |(href, _)| href)
}

/// The role's name.
pub fn role_name(lang: Lang, role: Role) -> &'static str {
    lang.t(match role {
        Role::Admin => T::RoleAdmin,
        Role::Supervisor => T::RoleSupervisor,
        Role::Collector => T::RoleCollector,
    })
}

/// A signed-in page.
pub fn page(ctx: &Ctx, title: &str, body: Markup) -> Markup {
    let lang = ctx.lang;
    let s = &ctx.session;
    let header = html! {
        nav aria-label=(lang.t(T::AppName)) {
            ul {
                @for (href, text) in menu(s.role) {
                    li { a href=(href) aria-current=[(ctx.path.starts_with(href)).then_some("page")] { (lang.t(*text)) } }
                }
            }
        }
        div.who {
            @if s.tenants.len() > 1 {
                form method="post" action="/tenant" .inline {
                    (csrf(ctx))
                    label for="tenant-switch" { (lang.t(T::SwitchTenant)) }
                    select #tenant-switch name="tenant" {
                        @for t in &s.tenants {
                            option value=(t) selected[t == &s.tenant] { (t) }
                        }
                    }
                    button type="submit" { (lang.t(T::Go)) }
                }
            } @else {
                span { (lang.t(T::Tenant)) ": " strong #tenant { (s.tenant) } }
            }
            span.me { (lang.f(T::SignedInAs, &[&s.name, role_name(lang, s.role)])) }
            (lang_switch(lang, &ctx.path))
            form method="post" action="/sign-out" .inline {
                (csrf(ctx))
                button type="submit" #sign-out { (lang.t(T::SignOut)) }
            }
        }
    };
    document(lang, title, header, body)
}

/// The hidden form token.
pub fn csrf(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.session.csrf); }
}

/// A notice: `ok` (role=status) or an error (role=alert).
pub fn flash(ok: bool, text: &str) -> Markup {
    html! {
        @if ok { p.flash.ok role="status" { (text) } }
        @else { p.flash.err role="alert" { (text) } }
    }
}

/// A labelled input with its help and its error (the service's message for that field).
pub struct Field<'a> {
    /// `name` and `id`.
    pub name: &'a str,
    /// The label.
    pub label: &'a str,
    /// The value shown.
    pub value: &'a str,
    /// `text`, `number`, `url`, `password`, `tel`...
    pub kind: &'a str,
    /// A hint under the input.
    pub help: Option<&'a str>,
    /// The error at this field.
    pub error: Option<&'a str>,
    /// Required.
    pub required: bool,
}

/// The ids that describe input `name`: its help and its error.
fn described(name: &str, help: bool, error: bool) -> Option<String> {
    match (help, error) {
        (true, true) => Some(format!("{name}-help {name}-error")),
        (true, false) => Some(format!("{name}-help")),
        (false, true) => Some(format!("{name}-error")),
        (false, false) => None,
    }
}

impl Field<'_> {
    /// The markup.
    pub fn render(&self) -> Markup {
        let described = described(self.name, self.help.is_some(), self.error.is_some());
        html! {
            div.field.invalid[self.error.is_some()] {
                label for=(self.name) { (self.label) }
                input id=(self.name) name=(self.name) type=(self.kind) value=(self.value)
                    required[self.required] aria-invalid=[self.error.map(|_| "true")]
                    aria-describedby=[described]
                    autocomplete=(if self.kind == "password" { "new-password" } else { "off" });
                @if let Some(h) = self.help { small id={ (self.name) "-help" } { (h) } }
                @if let Some(e) = self.error { p.error id={ (self.name) "-error" } { (e) } }
            }
        }
    }
}

/// A labelled textarea.
pub fn textarea(
    name: &str,
    label: &str,
    value: &str,
    help: Option<&str>,
    error: Option<&str>,
) -> Markup {
    html! {
        div.field.invalid[error.is_some()] {
            label for=(name) { (label) }
            textarea id=(name) name=(name) rows="4" aria-invalid=[error.map(|_| "true")]
                aria-describedby=[described(name, help.is_some(), error.is_some())] { (value) }
            @if let Some(h) = help { small id={ (name) "-help" } { (h) } }
            @if let Some(e) = error { p.error id={ (name) "-error" } { (e) } }
        }
    }
}

/// A labelled select of `(value, text)` options.
pub fn select(
    name: &str,
    label: &str,
    options: &[(String, String)],
    chosen: &str,
    error: Option<&str>,
) -> Markup {
    html! {
        div.field.invalid[error.is_some()] {
            label for=(name) { (label) }
            select id=(name) name=(name) aria-invalid=[error.map(|_| "true")]
                aria-describedby=[described(name, false, error.is_some())] {
                @for (v, t) in options { option value=(v) selected[v == chosen] { (t) } }
            }
            @if let Some(e) = error { p.error id={ (name) "-error" } { (e) } }
        }
    }
}

/// A call status in words.
pub fn status_text(lang: Lang, status: i32) -> &'static str {
    use gpb::CallStatus as S;
    lang.t(match S::try_from(status).unwrap_or(S::Unspecified) {
        S::Dialing => T::StDialing,
        S::Ringing => T::StRinging,
        S::Unknown | S::Unspecified => T::StUnknown,
        S::Completed => T::StCompleted,
        S::Failed => T::StFailed,
        S::Expired => T::StExpired,
    })
}

/// A call result in words ("" when not completed).
pub fn result_text(lang: Lang, result: i32) -> &'static str {
    use gpb::CallResult as R;
    match R::try_from(result).unwrap_or(R::Unspecified) {
        R::Unspecified => "",
        R::Connected => lang.t(T::ReConnected),
        R::NoAnswer => lang.t(T::ReNoAnswer),
        R::Busy => lang.t(T::ReBusy),
        R::Rejected => lang.t(T::ReRejected),
        R::Cancelled => lang.t(T::ReCancelled),
        R::Failed => lang.t(T::ReFailed),
        R::NotConnected => lang.t(T::ReNotConnected),
    }
}

/// What an event means, in words.
pub fn event_text(lang: Lang, ty: i32) -> &'static str {
    use gpb::CallEventType as E;
    lang.t(match E::try_from(ty).unwrap_or(E::Unspecified) {
        E::Created | E::Unspecified => T::EvCreated,
        E::Dialing => T::EvDialing,
        E::Ringing => T::EvRinging,
        E::Unknown => T::EvUnknown,
        E::Completed => T::EvCompleted,
        E::Failed => T::EvFailed,
        E::Expired => T::EvExpired,
    })
}

/// The workbench's words for where a call is. Infinity reports a call once, when it ends (the
/// call record), so "connected" is known only then: it is the result shown beside "Ended".
pub fn state_text(lang: Lang, status: i32, _result: i32) -> &'static str {
    use gpb::CallStatus as S;
    lang.t(match S::try_from(status).unwrap_or(S::Unspecified) {
        S::Dialing => T::StateDialing,
        S::Ringing => T::StateRinging,
        S::Unknown | S::Unspecified => T::StateUnknown,
        S::Completed => T::StateEnded,
        S::Failed => T::StateFailed,
        S::Expired => T::StateExpired,
    })
}

/// Whether a status is final.
pub fn is_terminal(status: i32) -> bool {
    use gpb::CallStatus as S;
    matches!(
        S::try_from(status),
        Ok(S::Completed | S::Failed | S::Expired)
    )
}

/// A time for a request, to the nanosecond (a whole-second time would leave out what happened
/// in its last second).
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> cco_contracts::pbjson_types::Timestamp {
    cco_contracts::pbjson_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A timestamp as `<time>` (UTC text; the script shows it in the browser's zone).
pub fn time(ts: Option<&cco_contracts::pbjson_types::Timestamp>) -> Markup {
    let Some(dt) = ts.and_then(|t| {
        chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
    }) else {
        return html! { "—" };
    };
    html! {
        time datetime=(dt.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) {
            (dt.format("%Y-%m-%d %H:%M:%S UTC"))
        }
    }
}

/// A link target only when it is http(s) (a vendor's `javascript:` URL never becomes a link).
pub fn safe_url(url: &str) -> Option<&str> {
    let lower = url.trim_start().to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")).then_some(url)
}

/// A horizontal bar chart drawn in SVG (no script, no inline style), with the numbers as a
/// table for screen readers and for reading exact values. Bars are scaled to `full` when given
/// (1.0 for shares), else to the largest value.
pub fn bar_chart(
    lang: Lang,
    title: &str,
    rows: &[(String, f64, String)],
    full: Option<f64>,
) -> Markup {
    let largest = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max);
    let max = full.unwrap_or(largest);
    let row_h = 24;
    let height = (rows.len().max(1) * row_h + 8).to_string();
    html! {
        figure.chart {
            figcaption { (title) }
            @if rows.is_empty() || max <= 0.0 {
                p.muted { (lang.t(T::NoData)) }
            } @else {
                svg viewBox={ "0 0 400 " (height) } role="img" aria-label=(lang.f(T::ChartOf, &[title])) preserveAspectRatio="xMinYMin meet" {
                    @for (i, (label, value, shown)) in rows.iter().enumerate() {
                        @let y = i * row_h + 4;
                        @let w = ((value / max).clamp(0.0, 1.0) * 220.0).max(1.0);
                        text x="0" y=(y + 15) class="lbl" { (label) }
                        rect x="110" y=(y + 2) width=(format!("{w:.1}")) height="16" class="bar" {}
                        text x=(format!("{:.1}", 116.0 + w)) y=(y + 15) class="val" { (shown) }
                    }
                }
                details {
                    summary { (lang.t(T::DataTable)) }
                    table {
                        tbody { @for (label, _, shown) in rows { tr { th scope="row" { (label) } td { (shown) } } } }
                    }
                }
            }
        }
    }
}

/// Seconds as `1h 02m 03s` (`1小时02分03秒`).
pub fn duration(lang: Lang, seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    let two = |n: u64| format!("{n:02}");
    if s >= 3_600 {
        lang.f(
            T::DurationHms,
            &[
                &(s / 3_600).to_string(),
                &two((s % 3_600) / 60),
                &two(s % 60),
            ],
        )
    } else if s >= 60 {
        lang.f(T::DurationMs, &[&(s / 60).to_string(), &two(s % 60)])
    } else {
        lang.f(T::DurationS, &[&s.to_string()])
    }
}

/// Raw markup (only for strings this module built).
pub fn raw(s: &'static str) -> PreEscaped<&'static str> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_urls_become_links_only_when_http() {
        assert_eq!(safe_url("https://x/r.mp3"), Some("https://x/r.mp3"));
        assert_eq!(safe_url(" JavaScript:alert(1)"), None);
        assert_eq!(safe_url("data:audio/wav;base64,AAAA"), None);
    }

    #[test]
    fn fields_escape_and_describe() {
        let f = Field {
            name: "api_url",
            label: "URL",
            value: "\"><script>alert(1)</script>",
            kind: "url",
            help: Some("h"),
            error: Some("<b>bad</b>"),
            required: true,
        }
        .render()
        .into_string();
        assert!(!f.contains("<script>") && !f.contains("<b>"), "{f}");
        assert!(
            f.contains("aria-describedby=\"api_url-help api_url-error\""),
            "{f}"
        );
        assert!(f.contains("aria-invalid=\"true\""), "{f}");
    }

    #[test]
    fn charts_escape_labels_and_scale() {
        let rows = [
            ("<x>".into(), 2.0, "2".into()),
            ("y".into(), 1.0, "1".into()),
        ];
        let c = bar_chart(Lang::En, "t", &rows, None).into_string();
        assert!(c.contains("&lt;x&gt;") && !c.contains("<x>"));
        assert!(
            c.contains("width=\"220.0\"") && c.contains("width=\"110.0\""),
            "{c}"
        );
        // Shares are drawn against the whole, not against the largest.
        let c = bar_chart(
            Lang::En,
            "t",
            &[("h".into(), 0.25, "25%".into())],
            Some(1.0),
        );
        assert!(c.into_string().contains("width=\"55.0\""));
        assert_eq!(duration(Lang::En, 3_723.0), "1h 02m 03s");
        assert_eq!(duration(Lang::Zh, 3_723.0), "1小时02分03秒");
        assert_eq!(duration(Lang::En, 59.4), "59s");
    }
}
