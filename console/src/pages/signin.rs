//! Signing in and out, the language switch, the tenant switch and the home redirect.
//!
//! A person signs in with the JWT the CCO platform issued them (pasted, or handed over once by
//! the platform opening `/sign-in/handoff#token=...`: a fragment never reaches a server or a
//! log), or with an administrator's API key and a tenant. The console reads the token's claims
//! only to know what to show, checks the credential with one call to the gateway, and keeps it
//! in the sealed session cookie; every later call to the services carries it, so the services
//! decide what the person may see and do.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use cco_contracts::gateway::v1 as gpb;
use http::StatusCode;
use http::header::{self, HeaderMap};
use maud::{Markup, html};
use serde::Deserialize;
use tonic::Code;

use crate::app;
use crate::i18n::{LANG_COOKIE, Lang, T};
use crate::session::{Kind, PRE_COOKIE, Role, SESSION_COOKIE, Session, read_claims, token};
use crate::views::{self, Field, frame_bare};
use crate::web::{Ctx, Page, Problem, check_form, now, pre_token, set_cookie};

/// `GET /`: the first page of the person's menu, or the sign-in page.
pub async fn home(State(state): State<Arc<app::State>>, headers: HeaderMap) -> Redirect {
    let session =
        crate::web::cookie(&headers, SESSION_COOKIE).and_then(|v| state.sealer.open(v, now()));
    match session {
        Some(s) => Redirect::to(views::home(s.role)),
        None => Redirect::to("/sign-in"),
    }
}

/// `GET /readyz`: 200 when both services answer their health check.
pub async fn ready(State(state): State<Arc<app::State>>) -> Response {
    if state.ready().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "a service is not serving").into_response()
    }
}

/// `?next=` of the language switch.
#[derive(Debug, Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// `GET /lang/{tag}?next=/path`: remembers the language and goes back.
pub async fn language(
    State(state): State<Arc<app::State>>,
    Path(tag): Path<String>,
    Query(q): Query<Next>,
) -> Response {
    // An unknown tag keeps the browser's choice.
    let lang = Lang::from_tag(&tag);
    // Only one of the console's own paths: never an open redirect (browsers drop tabs and
    // newlines from URLs, so `/\t/evil.example` would become `//evil.example`).
    let next = q
        .next
        .filter(|n| local_path(n))
        .unwrap_or_else(|| "/".into());
    let Some(lang) = lang else {
        return Redirect::to(&next).into_response();
    };
    let cookie = set_cookie(
        LANG_COOKIE,
        lang.tag(),
        365 * 86_400,
        state.settings.secure_cookies(),
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

/// A path of this console: `/` then letters, digits, `/`, `_`, `.`, `-`, never `//`.
fn local_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'-'))
}

struct Errors<'a> {
    form: Option<&'a str>,
    token: Option<String>,
    key: Option<String>,
    tenant: Option<String>,
}

fn sign_in_page(state: &app::State, lang: Lang, pre: &str, e: &Errors<'_>) -> Markup {
    let body = html! {
        p { (lang.t(T::SignInIntro)) }
        @if let Some(f) = e.form { (views::flash(false, f)) }
        section aria-labelledby="with-token" {
            h2 #with-token { (lang.t(T::SignInWithToken)) }
            form method="post" action="/sign-in" {
                input type="hidden" name="csrf" value=(pre);
                (Field { name: "token", label: lang.t(T::Token), value: "", kind: "password",
                    help: Some(lang.t(T::TokenHelp)), error: e.token.as_deref(), required: true }.render())
                button type="submit" #sign-in-token { (lang.t(T::SignIn)) }
            }
        }
        section aria-labelledby="with-key" {
            h2 #with-key { (lang.t(T::SignInWithKey)) }
            form method="post" action="/sign-in/key" {
                input type="hidden" name="csrf" value=(pre);
                (Field { name: "key", label: lang.t(T::ApiKey), value: "", kind: "password",
                    help: None, error: e.key.as_deref(), required: true }.render())
                (Field { name: "tenant", label: lang.t(T::Tenant), value: "", kind: "text",
                    help: Some(lang.t(T::TenantHelp)), error: e.tenant.as_deref(), required: true }.render())
                button type="submit" #sign-in-key { (lang.t(T::SignIn)) }
            }
        }
        @if !state.dev_people.is_empty() {
            section aria-labelledby="dev" .dev {
                h2 #dev { (lang.t(T::DevSignIn)) }
                p.muted { (lang.t(T::DevSignInHelp)) }
                form method="post" action="/sign-in/dev" {
                    input type="hidden" name="csrf" value=(pre);
                    ul.people {
                        @for (i, p) in state.dev_people.iter().enumerate() {
                            li { button type="submit" name="person" value=(i) data-person=(p.label) {
                                (lang.f(T::SignInAsPerson, &[&p.label]))
                            } }
                        }
                    }
                }
            }
        }
    };
    frame_bare(lang, lang.t(T::SignIn), "/sign-in", body)
}

/// The pre-session token of this browser, and a cookie to set when it is new.
fn pre(state: &app::State, headers: &HeaderMap) -> (String, Option<http::HeaderValue>) {
    match pre_token(headers) {
        Some(t) => (t.to_owned(), None),
        None => {
            let t = token();
            let c = set_cookie(PRE_COOKIE, &t, 3_600, state.settings.secure_cookies());
            (t, Some(c))
        }
    }
}

fn respond(status: StatusCode, cookie: Option<http::HeaderValue>, page: Markup) -> Response {
    let mut res = (status, page).into_response();
    if let Some(c) = cookie {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

/// `GET /sign-in`.
pub async fn page(
    State(state): State<Arc<app::State>>,
    lang: Lang,
    headers: HeaderMap,
) -> Response {
    let (pre, cookie) = pre(&state, &headers);
    let none = Errors {
        form: None,
        token: None,
        key: None,
        tenant: None,
    };
    respond(
        StatusCode::OK,
        cookie,
        sign_in_page(&state, lang, &pre, &none),
    )
}

/// `GET /sign-in/handoff#token=...`: the platform's redirect; the script takes the fragment's
/// token, removes it from the address bar, and asks the person to continue as the token's
/// holder (so a link from someone else cannot sign them in as another person unasked).
pub async fn handoff(
    State(state): State<Arc<app::State>>,
    lang: Lang,
    headers: HeaderMap,
) -> Response {
    let (pre, cookie) = pre(&state, &headers);
    // The person confirms who they sign in as: a link cannot sign someone in unasked.
    let body = html! {
        form #handoff method="post" action="/sign-in" hidden {
            input type="hidden" name="csrf" value=(pre);
            input type="hidden" name="token" value="";
            p { (lang.t(T::HandoffWorking)) }
            button type="submit" #handoff-go data-template=(lang.t(T::HandoffContinue)) { (lang.t(T::SignIn)) }
        }
        p #handoff-missing hidden { (lang.t(T::HandoffNoToken)) " " a href="/sign-in" { (lang.t(T::SignIn)) } }
    };
    respond(
        StatusCode::OK,
        cookie,
        frame_bare(lang, lang.t(T::SignIn), "/sign-in", body),
    )
}

/// The token sign-in form.
#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

/// The API key sign-in form.
#[derive(Deserialize)]
pub struct KeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    tenant: String,
}

/// The development sign-in form.
#[derive(Deserialize)]
pub struct DevForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    person: String,
}

fn refuse(state: &app::State, lang: Lang, headers: &HeaderMap, e: Errors<'_>) -> Response {
    let (pre, cookie) = pre(state, headers);
    respond(
        StatusCode::UNPROCESSABLE_ENTITY,
        cookie,
        sign_in_page(state, lang, &pre, &e),
    )
}

fn checked_pre(
    state: &app::State,
    headers: &HeaderMap,
    given: &str,
    lang: Lang,
) -> Result<(), Page> {
    check_form(
        headers,
        pre_token(headers).unwrap_or(""),
        given,
        &state.settings.origin(),
        lang,
    )
}

/// `POST /sign-in`: a pasted (or handed-over) JWT.
pub async fn with_token(
    State(state): State<Arc<app::State>>,
    lang: Lang,
    headers: HeaderMap,
    Form(f): Form<TokenForm>,
) -> Response {
    if let Err(p) = checked_pre(&state, &headers, &f.csrf, lang) {
        return p.into_response();
    }
    sign_in_with_jwt(&state, lang, &headers, f.token.trim()).await
}

async fn sign_in_with_jwt(
    state: &app::State,
    lang: Lang,
    headers: &HeaderMap,
    jwt: &str,
) -> Response {
    let token_error = |t: T| Errors {
        form: None,
        token: Some(lang.t(t).to_owned()),
        key: None,
        tenant: None,
    };
    if jwt.is_empty() {
        return refuse(state, lang, headers, token_error(T::TokenRequired));
    }
    let Some(claims) = read_claims(jwt, &state.settings.claims) else {
        return refuse(state, lang, headers, token_error(T::TokenMalformed));
    };
    let role = match claims.role.as_str() {
        "admin" => Role::Admin,
        "supervisor" => Role::Supervisor,
        "collector" => Role::Collector,
        _ => return refuse(state, lang, headers, token_error(T::TokenRoleUnknown)),
    };
    let Some(first) = claims.tenants.first().cloned() else {
        return refuse(state, lang, headers, token_error(T::TokenNoTenant));
    };
    let ttl =
        i64::try_from(state.settings.session.ttl_minutes.saturating_mul(60)).unwrap_or(i64::MAX);
    let mut expires = now().saturating_add(ttl);
    if let Some(exp) = claims.expires {
        if exp <= now() {
            return refuse(state, lang, headers, token_error(T::TokenExpired));
        }
        expires = expires.min(exp);
    }
    let session = Session {
        credential: jwt.to_owned(),
        kind: Kind::Jwt,
        role,
        tenant: first,
        tenants: claims.tenants,
        name: claims
            .collector
            .clone()
            .filter(|_| claims.name.is_empty())
            .unwrap_or(claims.name),
        collector: claims.collector,
        expires,
        csrf: token(),
    };
    // One call proves the services accept the token for this tenant.
    let mut calls = state.calls(&session);
    let probe = calls
        .list_calls(gpb::ListCallsRequest {
            tenant_id: session.tenant.clone(),
            collector_id: session.collector.clone().unwrap_or_default(),
            page_size: 1,
            ..Default::default()
        })
        .await;
    if let Err(s) = probe {
        let p = Problem::from(s);
        let text = match p.code {
            Code::Unauthenticated | Code::PermissionDenied => {
                lang.f(T::CredentialRefused, &[&p.detail])
            }
            _ => p.sentence(lang),
        };
        return refuse(
            state,
            lang,
            headers,
            Errors {
                form: None,
                token: Some(text),
                key: None,
                tenant: None,
            },
        );
    }
    start(state, session)
}

/// `POST /sign-in/key`: an administrator's API key for one tenant.
pub async fn with_key(
    State(state): State<Arc<app::State>>,
    lang: Lang,
    headers: HeaderMap,
    Form(f): Form<KeyForm>,
) -> Response {
    if let Err(p) = checked_pre(&state, &headers, &f.csrf, lang) {
        return p.into_response();
    }
    let (key, tenant) = (f.key.trim(), f.tenant.trim());
    if key.is_empty() || tenant.is_empty() {
        return refuse(
            &state,
            lang,
            &headers,
            Errors {
                form: None,
                token: None,
                key: key.is_empty().then(|| lang.t(T::KeyRequired).to_owned()),
                tenant: tenant
                    .is_empty()
                    .then(|| lang.t(T::TenantRequired).to_owned()),
            },
        );
    }
    let ttl =
        i64::try_from(state.settings.session.ttl_minutes.saturating_mul(60)).unwrap_or(i64::MAX);
    let session = Session {
        credential: key.to_owned(),
        kind: Kind::Key,
        role: Role::Admin,
        tenants: vec![tenant.to_owned()],
        tenant: tenant.to_owned(),
        collector: None,
        name: lang.t(T::ApiKey).into(),
        expires: now().saturating_add(ttl),
        csrf: token(),
    };
    // Reading the tenant's config needs an admin key of that tenant (NOT_FOUND: no config yet).
    let probe = state
        .configs(&session)
        .get_config(gpb::GetConfigRequest {
            tenant_id: tenant.to_owned(),
        })
        .await;
    match probe {
        Ok(_) => start(&state, session),
        Err(s) if s.code() == Code::NotFound => start(&state, session),
        Err(s) => {
            let p = Problem::from(s);
            let (key_error, tenant_error) = match p.code {
                Code::Unauthenticated => (Some(lang.f(T::CredentialRefused, &[&p.detail])), None),
                Code::PermissionDenied => (None, Some(lang.f(T::KeyNotAdmin, &[tenant]))),
                Code::InvalidArgument => (None, Some(p.field_message().to_owned())),
                _ => (Some(p.sentence(lang)), None),
            };
            refuse(
                &state,
                lang,
                &headers,
                Errors {
                    form: None,
                    token: None,
                    key: key_error,
                    tenant: tenant_error,
                },
            )
        }
    }
}

/// `POST /sign-in/dev`: one of `cco stack`'s demo people.
pub async fn dev(
    State(state): State<Arc<app::State>>,
    lang: Lang,
    headers: HeaderMap,
    Form(f): Form<DevForm>,
) -> Response {
    if let Err(p) = checked_pre(&state, &headers, &f.csrf, lang) {
        return p.into_response();
    }
    let Some(person) = f
        .person
        .parse::<usize>()
        .ok()
        .and_then(|i| state.dev_people.get(i))
    else {
        return refuse(
            &state,
            lang,
            &headers,
            Errors {
                form: Some(lang.t(T::ErrNotFound)),
                token: None,
                key: None,
                tenant: None,
            },
        );
    };
    let token = person.token.clone();
    sign_in_with_jwt(&state, lang, &headers, &token).await
}

fn start(state: &app::State, session: Session) -> Response {
    let max_age = session.expires.saturating_sub(now()).max(0);
    let secure = state.settings.secure_cookies();
    let cookie = set_cookie(
        SESSION_COOKIE,
        &state.sealer.seal(&session),
        max_age,
        secure,
    );
    let clear = set_cookie(PRE_COOKIE, "", 0, secure);
    tracing::info!(role = ?session.role, tenant = %session.tenant, kind = ?session.kind, "signed in");
    let mut res = Redirect::to(views::home(session.role)).into_response();
    res.headers_mut().append(header::SET_COOKIE, cookie);
    res.headers_mut().append(header::SET_COOKIE, clear);
    res
}

/// A form with only its token.
#[derive(Deserialize)]
pub struct Plain {
    /// The form token.
    #[serde(default)]
    pub csrf: String,
}

/// `POST /sign-out`.
pub async fn sign_out(ctx: Ctx, headers: HeaderMap, Form(f): Form<Plain>) -> Response {
    if let Err(p) = ctx.check_form(&headers, &f.csrf) {
        return p.into_response();
    }
    let clear = set_cookie(SESSION_COOKIE, "", 0, ctx.state.settings.secure_cookies());
    ([(header::SET_COOKIE, clear)], Redirect::to("/sign-in")).into_response()
}

/// The tenant switch.
#[derive(Deserialize)]
pub struct TenantForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    tenant: String,
}

/// `POST /tenant`: shows another of the person's tenants.
pub async fn switch_tenant(ctx: Ctx, headers: HeaderMap, Form(f): Form<TenantForm>) -> Response {
    if let Err(p) = ctx.check_form(&headers, &f.csrf) {
        return p.into_response();
    }
    let mut s = ctx.session.clone();
    if !s.tenants.contains(&f.tenant) {
        return ctx
            .message(StatusCode::FORBIDDEN, ctx.lang.t(T::ErrPermission))
            .into_response();
    }
    s.tenant = f.tenant;
    let max_age = s.expires.saturating_sub(now()).max(0);
    let cookie = set_cookie(
        SESSION_COOKIE,
        &ctx.state.sealer.seal(&s),
        max_age,
        ctx.state.settings.secure_cookies(),
    );
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to(views::home(s.role)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn the_language_switch_returns_only_to_local_paths() {
        for ok in ["/", "/calls", "/calls/0123abcd", "/pool/usage"] {
            assert!(local_path(ok), "{ok}");
        }
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "/\\evil",
            "https://evil.example",
            "/a?b",
            "/a\r\nb",
            "",
        ] {
            assert!(!local_path(bad), "{bad:?}");
        }
    }
}
