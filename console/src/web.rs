//! HTTP plumbing shared by the pages: cookies, the signed-in context, form tokens, the security
//! headers, and turning a service's refusal into a sentence.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};
use tonic::Code;

use crate::app::State;
use crate::i18n::{Lang, T};
use crate::session::{PRE_COOKIE, Role, SESSION_COOKIE, Session, same_token};
use crate::views;

/// Sent by the console's script when it fetches a piece of a page: an ended session answers
/// 401 instead of redirecting it to the sign-in page.
pub const FRAGMENT_HEADER: &str = "x-console-fragment";

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path /, Secure under https.
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("cco_invalid=; Max-Age=0"))
}

/// The current time in Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Everything a signed-in page needs.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Shared state.
    pub state: Arc<State>,
    /// The person.
    pub session: Session,
    /// The language.
    pub lang: Lang,
    /// The request path (for the language switch's return).
    pub path: String,
}

impl Ctx {
    /// Fails with a page saying so unless the person has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Page> {
        if roles.contains(&self.session.role) {
            Ok(())
        } else {
            Err(self.message(StatusCode::FORBIDDEN, self.lang.t(T::NotAllowedPage)))
        }
    }

    /// Checks a submitted form's token (see [`check_form`]).
    pub fn check_form(&self, headers: &HeaderMap, given: &str) -> Result<(), Page> {
        check_form(
            headers,
            &self.session.csrf,
            given,
            &self.state.settings.origin(),
            self.lang,
        )
    }

    /// A page with one sentence, in the signed-in frame (menu, sign-out).
    pub fn message(&self, status: StatusCode, text: impl Into<String>) -> Page {
        let text = text.into();
        Page::Rendered {
            status,
            body: views::page(
                self,
                self.lang.t(T::AppName),
                maud::html! { p.flash.err role="alert" { (text) } },
            ),
        }
    }

    /// The tenant shown.
    pub fn tenant(&self) -> &str {
        &self.session.tenant
    }

    /// Whether the person is a collector (held to their own calls).
    pub fn is_collector(&self) -> bool {
        self.session.role == Role::Collector
    }

    /// A collector's own id (None for administrators and supervisors).
    pub fn own_collector(&self) -> Option<String> {
        self.session
            .collector
            .clone()
            .filter(|_| self.is_collector())
    }
}

impl FromRequestParts<Arc<State>> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<State>) -> Result<Self, Response> {
        let Ok(lang) = Lang::from_request_parts(parts, state).await;
        let session = cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|v| state.sealer.open(v, now()))
            .ok_or_else(|| {
                let fragment = parts.headers.contains_key(FRAGMENT_HEADER);
                if fragment || parts.uri.path().starts_with("/live/") || parts.method != Method::GET
                {
                    (StatusCode::UNAUTHORIZED, lang.t(T::SessionEnded)).into_response()
                } else {
                    Redirect::to("/sign-in").into_response()
                }
            })?;
        Ok(Ctx {
            state: state.clone(),
            session,
            lang,
            path: parts.uri.path().to_owned(),
        })
    }
}

/// Checks a submitted form token against the session's (or, before sign-in, the pre-session
/// cookie's), and that the request came from the console's own origin when the browser says.
pub fn check_form(
    headers: &HeaderMap,
    expected: &str,
    given: &str,
    origin: &str,
    lang: Lang,
) -> Result<(), Page> {
    // A browser names the page's origin on every form post; a missing header (old browsers,
    // non-browser clients) is left to the token, a different one (including `null`) is refused.
    let foreign = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o != origin);
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let token = same_token(expected, given);
    if foreign || !form || !token {
        tracing::warn!(
            foreign_origin = foreign,
            form_encoded = form,
            token_matches = token,
            "form refused"
        );
        return Err(Page::Message {
            status: StatusCode::FORBIDDEN,
            text: lang.t(T::FormExpired).to_owned(),
            lang,
        });
    }
    Ok(())
}

/// The pre-session form token of the sign-in page.
pub fn pre_token(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, PRE_COOKIE).filter(|v| v.len() == 32)
}

/// A page that could not be shown as asked: a message instead.
#[derive(Debug)]
pub enum Page {
    /// A full page with one sentence.
    Message {
        /// The HTTP status.
        status: StatusCode,
        /// The sentence.
        text: String,
        /// Its language.
        lang: Lang,
    },
    /// A page rendered already.
    Rendered {
        /// The HTTP status.
        status: StatusCode,
        /// The page.
        body: maud::Markup,
    },
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        match self {
            Page::Message { status, text, lang } => {
                (status, views::bare(lang, &text)).into_response()
            }
            Page::Rendered { status, body } => (status, body).into_response(),
        }
    }
}

/// A service's refusal, ready to show.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The gRPC code.
    pub code: Code,
    /// The service's own message (English, no secrets; the services never put any there).
    pub detail: String,
    /// A compliance refusal: its reason, the debtor's zone, and the wait until a call passes.
    pub compliance: Option<Compliance>,
}

/// What a compliance refusal (`google.rpc.ErrorInfo` of domain `cco.infinity`) says.
#[derive(Debug, Clone)]
pub struct Compliance {
    /// OUTSIDE_CALLING_HOURS, HOLIDAY, ...
    pub reason: String,
    /// The debtor's zone, when the rule used one.
    pub time_zone: String,
    /// How long until the same call passes (`RetryInfo`).
    pub retry_in: Option<std::time::Duration>,
}

impl From<tonic::Status> for Problem {
    fn from(s: tonic::Status) -> Self {
        use tonic_types::StatusExt;
        let compliance = s
            .get_details_error_info()
            .filter(|i| i.domain == "cco.infinity")
            .map(|i| Compliance {
                time_zone: i.metadata.get("time_zone").cloned().unwrap_or_default(),
                reason: i.reason,
                retry_in: s.get_details_retry_info().and_then(|r| r.retry_delay),
            });
        Self {
            code: s.code(),
            detail: s.message().to_owned(),
            compliance,
        }
    }
}

/// A wait in words: `2d 3h`, `3h 4m`, `4m` (at least a minute).
fn wait_words(d: std::time::Duration) -> String {
    let secs = d.as_secs().max(60);
    let (days, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    if days > 0 {
        format!("{days}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m")
    }
}

impl Problem {
    /// A local problem (no service involved).
    pub fn local(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            compliance: None,
        }
    }

    /// The field a validation message is about (`api_url: must be...` -> `api_url`).
    pub fn field(&self) -> Option<&str> {
        if self.code != Code::InvalidArgument {
            return None;
        }
        let (field, _) = self.detail.split_once(": ")?;
        field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
            .then_some(field)
    }

    /// The message without its field prefix.
    pub fn field_message(&self) -> &str {
        match self.detail.split_once(": ") {
            Some((_, m)) if self.field().is_some() => m,
            _ => &self.detail,
        }
    }

    /// The headline for the code.
    pub fn headline(&self, lang: Lang) -> &'static str {
        lang.t(match self.code {
            Code::Unauthenticated => T::ErrUnauthenticated,
            Code::PermissionDenied => T::ErrPermission,
            Code::NotFound => T::ErrNotFound,
            Code::InvalidArgument | Code::OutOfRange => T::ErrInvalid,
            Code::Aborted => T::ErrConflict,
            Code::AlreadyExists => T::ErrExists,
            Code::FailedPrecondition => T::ErrPrecondition,
            Code::ResourceExhausted => T::ErrBusy,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => T::ErrUnavailable,
            Code::Unimplemented => T::ErrUnsupported,
            _ => T::ErrInternal,
        })
    }

    /// One sentence for the person: the headline, and the service's detail when it helps.
    pub fn sentence(&self, lang: Lang) -> String {
        let head = self.headline(lang);
        let useful = !matches!(
            self.code,
            Code::Internal | Code::Unknown | Code::DataLoss | Code::Unauthenticated
        ) && !self.detail.is_empty();
        if useful {
            format!("{head} {}", lang.f(T::ErrDetail, &[&self.detail]))
        } else {
            head.to_owned()
        }
    }

    /// The sentence a collector sees when MakeCall is refused.
    pub fn refusal(&self, lang: Lang) -> String {
        if let Some(c) = &self.compliance {
            let mut text = match c.reason.as_str() {
                "OUTSIDE_CALLING_HOURS" => lang.f(T::RefuseHours, &[&c.time_zone]),
                "HOLIDAY" => lang.t(T::RefuseHoliday).to_owned(),
                "FREQUENCY_CAP" => lang.t(T::RefuseFrequencyCap).to_owned(),
                "CASE_COOLDOWN" => lang.t(T::RefuseCooldown).to_owned(),
                "DO_NOT_CALL" => lang.t(T::RefuseDoNotCall).to_owned(),
                "NUMBER_TYPE_BLOCKED" => lang.t(T::RefuseNumberType).to_owned(),
                _ => return self.sentence(lang),
            };
            if let Some(wait) = c.retry_in {
                text.push(' ');
                text.push_str(&lang.f(T::RefuseRetryIn, &[&wait_words(wait)]));
            }
            return text;
        }
        let d = self.detail.as_str();
        let text = match self.code {
            Code::InvalidArgument if self.field() == Some("destination_number") => {
                return lang.f(T::RefuseNumberInvalid, &[self.field_message()]);
            }
            Code::FailedPrecondition if d.contains("no callback number") => T::RefuseNoCallback,
            Code::FailedPrecondition if d.contains("its Infinity call config is switched off") => {
                T::RefuseTenantDisabled
            }
            Code::FailedPrecondition if d.starts_with("collector") && d.contains("inactive") => {
                T::RefuseCollectorInactive
            }
            Code::FailedPrecondition if d.contains("idempotency_key") => T::RefuseKeyReused,
            Code::FailedPrecondition if d.contains("collector_id") => T::RefuseCollectorUnknown,
            Code::FailedPrecondition if d.contains("no config") || d.contains("no Infinity") => {
                T::RefuseNoConfig
            }
            Code::ResourceExhausted if d.contains("concurrency cap") => T::RefuseConcurrency,
            Code::ResourceExhausted if d.contains("pool empty") || d.contains("no free") => {
                T::RefuseNoExtension
            }
            _ => return self.sentence(lang),
        };
        lang.t(text).to_owned()
    }
}

/// Security headers on every response: a Content-Security-Policy that runs only the console's
/// own script file (no inline script or style), no framing, no sniffing, no referrer to other
/// sites, and no caching of pages (they hold personal data).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/assets/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             media-src 'self' https: http:; connect-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`: nothing leaks to other sites, and the browser names our origin on our own
    // form posts (under `no-referrer` it sends `Origin: null`, which the form check refuses).
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_find_their_field() {
        let p = Problem::local(Code::InvalidArgument, "api_url: must be http or https");
        assert_eq!(p.field(), Some("api_url"));
        assert_eq!(p.field_message(), "must be http or https");
        let p = Problem::local(Code::InvalidArgument, "credentials.app.app_id: too long");
        assert_eq!(p.field(), Some("credentials.app.app_id"));
        let p = Problem::local(Code::InvalidArgument, "a sentence: with a colon");
        assert_eq!(p.field(), None);
        assert_eq!(p.field_message(), "a sentence: with a colon");
        let p = Problem::local(Code::NotFound, "api_url: x");
        assert_eq!(p.field(), None);
    }

    #[test]
    fn internal_details_never_reach_the_page() {
        let p = Problem::local(Code::Internal, "internal error");
        assert_eq!(p.sentence(Lang::En), Lang::En.t(T::ErrInternal));
        let p = Problem::local(Code::Unavailable, "allocator unreachable");
        assert!(
            p.sentence(Lang::Zh)
                .starts_with(Lang::Zh.t(T::ErrUnavailable))
        );
    }

    #[test]
    fn forms_need_their_token_their_origin_and_form_encoding() {
        let origin = "http://127.0.0.1:8081";
        let headers = |o: Option<&'static str>, ct: &'static str| {
            let mut h = HeaderMap::new();
            if let Some(o) = o {
                h.insert(header::ORIGIN, HeaderValue::from_static(o));
            }
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            h
        };
        let form = "application/x-www-form-urlencoded";
        let t = "0123456789abcdef0123456789abcdef";
        let ok = |h: &HeaderMap, given: &str| check_form(h, t, given, origin, Lang::En).is_ok();
        assert!(ok(&headers(Some(origin), form), t));
        assert!(ok(&headers(None, form), t), "no Origin: the token decides");
        assert!(!ok(&headers(Some(origin), form), "x"), "wrong token");
        assert!(!ok(&headers(Some(origin), form), ""), "no token");
        assert!(!ok(&headers(Some("null"), form), t), "opaque origin");
        assert!(
            !ok(&headers(Some("https://evil.example"), form), t),
            "another origin"
        );
        assert!(!ok(&headers(Some(origin), "text/plain"), t), "not a form");
    }

    #[test]
    fn refusals_speak_a_collectors_words() {
        let cases = [
            (
                Code::ResourceExhausted,
                "pool empty: no free extension for tenant demo (5 total)",
                T::RefuseNoExtension,
            ),
            (
                Code::ResourceExhausted,
                "concurrency cap reached: tenant demo holds 5 live leases",
                T::RefuseConcurrency,
            ),
            (
                Code::FailedPrecondition,
                "collector alice has no callback number; double_call rings it first",
                T::RefuseNoCallback,
            ),
            (
                Code::FailedPrecondition,
                "tenant demo is inactive: its Infinity call config is switched off",
                T::RefuseTenantDisabled,
            ),
            (
                Code::FailedPrecondition,
                "collector alice is inactive",
                T::RefuseCollectorInactive,
            ),
        ];
        for (code, detail, text) in cases {
            assert_eq!(
                Problem::local(code, detail).refusal(Lang::Zh),
                Lang::Zh.t(text),
                "{detail}"
            );
        }
        let p = Problem::local(
            Code::InvalidArgument,
            "destination_number: not a phone number",
        );
        assert_eq!(
            p.refusal(Lang::En),
            "This number is not valid: not a phone number"
        );
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; cco_lang=zh-CN; b=2"),
        );
        assert_eq!(cookie(&h, "cco_lang"), Some("zh-CN"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie("x", "y", 60, true);
        assert_eq!(
            c.to_str().expect("ascii"),
            "x=y; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
    }
}
