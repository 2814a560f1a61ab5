//! The tenant's Infinity settings (administrators): every field of the config with the
//! gateway's own validation message at the field, secrets write-only, enable/disable, the
//! callback URL to give Infinity, and the connection test's report.

use axum::Form;
use axum::extract::Query;
use axum::response::{IntoResponse, Redirect, Response};
use cco_contracts::gateway::v1 as gpb;
use http::StatusCode;
use http::header::HeaderMap;
use maud::{Markup, html};
use serde::Deserialize;
use tonic::Code;

use crate::i18n::{Lang, T};
use crate::session::Role;
use crate::views::{self, Field, select, textarea};
use crate::web::{Ctx, Page, Problem};

/// The form, as text (what the person typed is shown back when the gateway refuses it).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ConfigForm {
    csrf: String,
    version: String,
    supplier_id: String,
    api_url: String,
    cred_mode: String,
    app_id: String,
    access_key: String,
    access_token: String,
    caller_number_pool: String,
    default_caller_number: String,
    caller_number_selection: String,
    call_mode: String,
    destination_prefix: String,
    max_concurrent_calls: String,
    call_timeout_seconds: String,
    api_timeout_ms: String,
    allocation_strategy: String,
    lease_ttl_seconds: String,
    cooldown_seconds: String,
    callback_secret: String,
    regenerate: String,
    callback_ip_allowlist: String,
    callback_time_zone: String,
    phone_region: String,
    api_encoding: String,
    nt_premium: String,
    nt_satellite: String,
    nt_intl: String,
    nt_personal: String,
    is_active: String,
}

const NUMBER_TYPES: [(&str, gpb::NumberType, T); 4] = [
    ("nt_premium", gpb::NumberType::PremiumRate, T::NtPremium),
    ("nt_satellite", gpb::NumberType::Satellite, T::NtSatellite),
    ("nt_intl", gpb::NumberType::InternationalNetwork, T::NtIntl),
    (
        "nt_personal",
        gpb::NumberType::PersonalNumber,
        T::NtPersonal,
    ),
];

impl ConfigForm {
    fn from_config(c: &gpb::TenantConfig) -> Self {
        let creds = c.credentials.clone().unwrap_or_default();
        let has = |t: gpb::NumberType| {
            if c.allowed_number_types.contains(&(t as i32)) {
                "on".to_owned()
            } else {
                String::new()
            }
        };
        Self {
            version: c.version.to_string(),
            supplier_id: c.supplier_id.clone(),
            api_url: c.api_url.clone(),
            cred_mode: if creds.mode == "access_token" {
                "token"
            } else {
                "app"
            }
            .into(),
            app_id: creds.app_id,
            caller_number_pool: c.caller_number_pool.join("\n"),
            default_caller_number: c.default_caller_number.clone(),
            caller_number_selection: c.caller_number_selection.to_string(),
            call_mode: c.call_mode.to_string(),
            destination_prefix: c.destination_prefix.clone(),
            max_concurrent_calls: c.max_concurrent_calls.to_string(),
            call_timeout_seconds: c.call_timeout_seconds.to_string(),
            api_timeout_ms: c.api_timeout_ms.to_string(),
            allocation_strategy: c.allocation_strategy.to_string(),
            lease_ttl_seconds: c.lease_ttl_seconds.to_string(),
            cooldown_seconds: c.cooldown_seconds.to_string(),
            callback_ip_allowlist: c.callback_ip_allowlist.join("\n"),
            callback_time_zone: c.callback_time_zone.clone(),
            phone_region: c.phone_region.clone(),
            api_encoding: c.api_encoding.to_string(),
            nt_premium: has(gpb::NumberType::PremiumRate),
            nt_satellite: has(gpb::NumberType::Satellite),
            nt_intl: has(gpb::NumberType::InternationalNetwork),
            nt_personal: has(gpb::NumberType::PersonalNumber),
            is_active: if c.is_active {
                "on".into()
            } else {
                String::new()
            },
            ..Self::default()
        }
    }

    fn blank() -> Self {
        Self {
            cred_mode: "app".into(),
            is_active: "on".into(),
            ..Self::default()
        }
    }

    fn lines(v: &str) -> Vec<String> {
        v.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn types(&self) -> Vec<i32> {
        NUMBER_TYPES
            .iter()
            .filter(|(name, _, _)| !self.get(name).is_empty())
            .map(|(_, t, _)| *t as i32)
            .collect()
    }

    fn get(&self, name: &str) -> &str {
        match name {
            "nt_premium" => &self.nt_premium,
            "nt_satellite" => &self.nt_satellite,
            "nt_intl" => &self.nt_intl,
            "nt_personal" => &self.nt_personal,
            _ => "",
        }
    }
}

/// A number field: empty is "not given"; anything else must be a whole number.
fn number(name: &'static str, v: &str, lang: Lang) -> Result<Option<u32>, (String, String)> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u32>()
        .map(Some)
        .map_err(|_| (name.to_owned(), lang.t(T::MustBeNumber).to_owned()))
}

fn enum_value(v: &str) -> i32 {
    v.trim().parse().unwrap_or(0)
}

/// The form field that shows an error the gateway reported for `field`.
fn input_of(field: &str) -> &str {
    match field {
        "credentials.app.app_id" => "app_id",
        "credentials.app.access_key" => "access_key",
        "credentials.access_token" => "access_token",
        "credentials" | "credentials.app" => "cred_mode",
        "config" => "",
        f => f.strip_prefix("config.").unwrap_or(f),
    }
}

struct View<'a> {
    existing: Option<&'a gpb::TenantConfig>,
    form: ConfigForm,
    /// (input name, message); an empty name is a message for the whole form.
    error: Option<(String, String)>,
    notice: Option<String>,
    new_secret: Option<String>,
    test: Option<Result<gpb::TestConnectionResponse, Problem>>,
}

fn callback_url(ctx: &Ctx, secret: Option<&str>) -> (bool, String) {
    let base = ctx.state.settings.callback_base_url.trim_end_matches('/');
    let path = format!(
        "/api/v1/infinity/callback/{}/{}",
        ctx.tenant(),
        secret.unwrap_or("{secret}")
    );
    (!base.is_empty(), format!("{base}{path}"))
}

fn render(ctx: &Ctx, v: View<'_>) -> Markup {
    let lang = ctx.lang;
    let f = &v.form;
    let err = |name: &str| -> Option<&str> {
        v.error
            .as_ref()
            .filter(|(n, _)| n == name)
            .map(|(_, m)| m.as_str())
    };
    let form_error = v
        .error
        .as_ref()
        .filter(|(n, _)| {
            n.is_empty()
                || ![
                    "supplier_id",
                    "api_url",
                    "cred_mode",
                    "app_id",
                    "access_key",
                    "access_token",
                    "caller_number_pool",
                    "default_caller_number",
                    "caller_number_selection",
                    "call_mode",
                    "destination_prefix",
                    "max_concurrent_calls",
                    "call_timeout_seconds",
                    "api_timeout_ms",
                    "allocation_strategy",
                    "lease_ttl_seconds",
                    "cooldown_seconds",
                    "callback_secret",
                    "callback_ip_allowlist",
                    "callback_time_zone",
                    "phone_region",
                    "api_encoding",
                    "allowed_number_types",
                    "is_active",
                ]
                .contains(&n.as_str())
        })
        .map(|(_, m)| m.as_str());
    let opts = |pairs: &[(i32, T)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(v, t)| (v.to_string(), lang.t(*t).to_owned()))
            .collect()
    };
    let creds = v
        .existing
        .and_then(|c| c.credentials.clone())
        .unwrap_or_default();
    let secret_help = |s: &Option<gpb::SecretView>| -> String {
        match s {
            Some(s) if s.set => lang.f(T::SecretKeep, &[&s.mask]),
            _ => lang.t(T::SecretNone).to_owned(),
        }
    };
    let key_help = secret_help(&creds.access_key);
    let token_help = secret_help(&creds.access_token);
    let cb_help = v
        .existing
        .map(|c| secret_help(&c.callback_secret))
        .unwrap_or_default();
    let cb_help = format!("{} {}", lang.t(T::FieldCallbackSecretHelp), cb_help);
    let body = html! {
        @if let Some(n) = &v.notice { (views::flash(true, n)) }
        @if let Some(m) = form_error { (views::flash(false, m)) }
        @if let Some(c) = v.existing {
            section.card aria-labelledby="state" {
                h2 #state { (if c.is_active { lang.t(T::ConfigEnabled) } else { lang.t(T::ConfigDisabled) }) }
                p.muted { (lang.f(T::ConfigVersion, &[&c.version.to_string()])) " · " (c.config_id) }
                form method="post" action="/config/toggle" .inline {
                    (views::csrf(ctx))
                    input type="hidden" name="version" value=(c.version);
                    button type="submit" #toggle { (if c.is_active { lang.t(T::ConfigDisable) } else { lang.t(T::ConfigEnable) }) }
                }
                form method="post" action="/config/test" .inline {
                    (views::csrf(ctx))
                    button type="submit" #test-connection { (lang.t(T::TestConnection)) }
                }
            }
            @if let Some(t) = &v.test { (test_report(lang, t)) }
            section.card aria-labelledby="cb" {
                h2 #cb { (lang.t(T::CallbackUrlTitle)) }
                @let (known, url) = callback_url(ctx, v.new_secret.as_deref());
                @if v.new_secret.is_some() { (views::flash(true, lang.t(T::CallbackUrlNew))) }
                @else { p { (lang.t(T::CallbackUrlHelp)) } }
                @if !known { p.muted { (lang.t(T::CallbackUrlUnknown)) } }
                div.copy {
                    code #callback-url { (url) }
                    button type="button" data-copy="callback-url" data-copied=(lang.t(T::Copied)) { (lang.t(T::Copy)) }
                }
            }
        } @else {
            p { (lang.t(T::ConfigNone)) }
        }
        form method="post" action="/config" .stack #config-form novalidate {
            (views::csrf(ctx))
            input type="hidden" name="version" value=(f.version);
            (Field { name: "api_url", label: lang.t(T::FieldApiUrl), value: &f.api_url, kind: "url", help: Some(lang.t(T::FieldApiUrlHelp)), error: err("api_url"), required: true }.render())
            (Field { name: "supplier_id", label: lang.t(T::FieldSupplier), value: &f.supplier_id, kind: "text", help: None, error: err("supplier_id"), required: false }.render())
            fieldset {
                legend { (lang.t(T::FieldCredMode)) }
                (select("cred_mode", lang.t(T::FieldCredMode), &[("app".into(), lang.t(T::CredApp).into()), ("token".into(), lang.t(T::CredToken).into())], &f.cred_mode, err("cred_mode")))
                (Field { name: "app_id", label: lang.t(T::FieldAppId), value: &f.app_id, kind: "text", help: None, error: err("app_id"), required: false }.render())
                (Field { name: "access_key", label: lang.t(T::FieldAccessKey), value: "", kind: "password", help: Some(&key_help), error: err("access_key"), required: false }.render())
                (Field { name: "access_token", label: lang.t(T::FieldAccessToken), value: "", kind: "password", help: Some(&token_help), error: err("access_token"), required: false }.render())
            }
            (textarea("caller_number_pool", lang.t(T::FieldCallerPool), &f.caller_number_pool, Some(lang.t(T::FieldCallerPoolHelp)), err("caller_number_pool")))
            (Field { name: "default_caller_number", label: lang.t(T::FieldDefaultCaller), value: &f.default_caller_number, kind: "tel", help: None, error: err("default_caller_number"), required: false }.render())
            (select("caller_number_selection", lang.t(T::FieldSelection), &opts(&[(1, T::SelDefault), (2, T::SelRoundRobin), (3, T::SelRandom)]), &f.caller_number_selection, err("caller_number_selection")))
            (select("call_mode", lang.t(T::FieldCallMode), &opts(&[(1, T::ModeDouble), (2, T::ModeMake)]), &f.call_mode, err("call_mode")))
            (Field { name: "destination_prefix", label: lang.t(T::FieldPrefix), value: &f.destination_prefix, kind: "text", help: None, error: err("destination_prefix"), required: false }.render())
            (Field { name: "max_concurrent_calls", label: lang.t(T::FieldMaxCalls), value: &f.max_concurrent_calls, kind: "number", help: None, error: err("max_concurrent_calls"), required: false }.render())
            (Field { name: "call_timeout_seconds", label: lang.t(T::FieldCallTimeout), value: &f.call_timeout_seconds, kind: "number", help: None, error: err("call_timeout_seconds"), required: false }.render())
            (Field { name: "api_timeout_ms", label: lang.t(T::FieldApiTimeout), value: &f.api_timeout_ms, kind: "number", help: None, error: err("api_timeout_ms"), required: false }.render())
            (select("allocation_strategy", lang.t(T::FieldStrategy), &opts(&[(1, T::StratLru), (2, T::StratRoundRobin), (3, T::StratAffinity)]), &f.allocation_strategy, err("allocation_strategy")))
            (Field { name: "lease_ttl_seconds", label: lang.t(T::FieldLeaseTtl), value: &f.lease_ttl_seconds, kind: "number", help: None, error: err("lease_ttl_seconds"), required: false }.render())
            (Field { name: "cooldown_seconds", label: lang.t(T::FieldCooldown), value: &f.cooldown_seconds, kind: "number", help: None, error: err("cooldown_seconds"), required: false }.render())
            (Field { name: "callback_secret", label: lang.t(T::FieldCallbackSecret), value: "", kind: "password", help: Some(&cb_help), error: err("callback_secret"), required: false }.render())
            @if v.existing.is_some() {
                div.check { input type="checkbox" id="regenerate" name="regenerate"; label for="regenerate" { (lang.t(T::FieldRegenerate)) } }
            }
            (textarea("callback_ip_allowlist", lang.t(T::FieldAllowlist), &f.callback_ip_allowlist, Some(lang.t(T::FieldAllowlistHelp)), err("callback_ip_allowlist")))
            (Field { name: "callback_time_zone", label: lang.t(T::FieldTimeZone), value: &f.callback_time_zone, kind: "text", help: None, error: err("callback_time_zone"), required: false }.render())
            (Field { name: "phone_region", label: lang.t(T::FieldRegion), value: &f.phone_region, kind: "text", help: Some(lang.t(T::FieldRegionHelp)), error: err("phone_region"), required: false }.render())
            (select("api_encoding", lang.t(T::FieldEncoding), &opts(&[(1, T::EncForm), (2, T::EncMultipart)]), &f.api_encoding, err("api_encoding")))
            fieldset.invalid[err("allowed_number_types").is_some()] {
                legend { (lang.t(T::FieldNumberTypes)) }
                @for (name, _, text) in NUMBER_TYPES {
                    div.check { input type="checkbox" id=(name) name=(name) checked[!f.get(name).is_empty()]; label for=(name) { (lang.t(text)) } }
                }
                @if let Some(e) = err("allowed_number_types") { p.error { (e) } }
            }
            @if v.existing.is_none() {
                div.check { input type="checkbox" id="is_active" name="is_active" checked[!f.is_active.is_empty()]; label for="is_active" { (lang.t(T::FieldActive)) } }
            }
            button type="submit" #save-config { (if v.existing.is_some() { lang.t(T::Save) } else { lang.t(T::ConfigCreate) }) }
        }
    };
    views::page(ctx, lang.t(T::ConfigTitle), body)
}

fn test_report(lang: Lang, t: &Result<gpb::TestConnectionResponse, Problem>) -> Markup {
    html! {
        section.card #test-report aria-labelledby="test-h" role="status" {
            h2 #test-h { (lang.t(T::TestConnection)) }
            @match t {
                Err(p) => { (views::flash(false, &p.sentence(lang))) }
                Ok(r) => {
                    @if r.ok { (views::flash(true, lang.t(T::TestOk))) }
                    @else { (views::flash(false, &format!("{} {} {}", lang.t(T::TestFailed), r.code, r.message))) }
                    dl {
                        dt { (lang.t(T::TestMethod)) } dd { (r.method) }
                        dt { (lang.t(T::TestLatency)) } dd { (lang.f(T::Milliseconds, &[&r.latency_ms.to_string()])) }
                        @if !r.company_name.is_empty() { dt { (lang.t(T::TestCompany)) } dd #test-company { (r.company_name) } }
                        @if r.extension_count > 0 || r.method == "list_extensions" {
                            dt { (lang.t(T::TestExtensions)) } dd { (r.extension_count) }
                            dt { (lang.t(T::TestRegistered)) } dd { (r.registered_count) }
                        }
                        @if r.pool_checked {
                            dt { (lang.t(T::TestUnknown)) } dd #test-unknown { @if r.unknown_to_infinity.is_empty() { (lang.t(T::None_)) } @else { (r.unknown_to_infinity.join(", ")) } }
                            dt { (lang.t(T::TestUnregistered)) } dd #test-unregistered { @if r.unregistered.is_empty() { (lang.t(T::None_)) } @else { (r.unregistered.join(", ")) } }
                        } @else if !r.pool_check_error.is_empty() {
                            dt { (lang.t(T::TestUnknown)) } dd { (lang.f(T::TestPoolNotChecked, &[&r.pool_check_error])) }
                        }
                    }
                }
            }
        }
    }
}

/// The page for the config as it is now (a blank form when there is none).
fn current_page(
    ctx: &Ctx,
    existing: Option<&gpb::TenantConfig>,
    notice: Option<String>,
    test: Option<Result<gpb::TestConnectionResponse, Problem>>,
) -> Markup {
    let form = existing.map_or_else(ConfigForm::blank, ConfigForm::from_config);
    render(
        ctx,
        View {
            existing,
            form,
            error: None,
            notice,
            new_secret: None,
            test,
        },
    )
}

/// `?done=`.
#[derive(Debug, Deserialize)]
pub struct Done {
    done: Option<String>,
}

async fn current(ctx: &Ctx) -> Result<Option<gpb::TenantConfig>, Problem> {
    match ctx
        .state
        .configs(&ctx.session)
        .get_config(gpb::GetConfigRequest {
            tenant_id: ctx.tenant().to_owned(),
        })
        .await
    {
        Ok(c) => Ok(Some(c.into_inner())),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

fn notice_of(lang: Lang, done: Option<&str>) -> Option<String> {
    match done? {
        "created" => Some(lang.t(T::ConfigCreated).into()),
        "saved" => Some(lang.t(T::ConfigUpdated).into()),
        "toggled" => Some(lang.t(T::Done).into()),
        _ => None,
    }
}

/// `GET /config`.
pub async fn page(ctx: Ctx, Query(q): Query<Done>) -> Result<Markup, Page> {
    ctx.require(&[Role::Admin])?;
    let existing = current(&ctx)
        .await
        .map_err(|p| ctx.message(StatusCode::BAD_GATEWAY, p.sentence(ctx.lang)))?;
    let notice = notice_of(ctx.lang, q.done.as_deref());
    Ok(current_page(&ctx, existing.as_ref(), notice, None))
}

fn credentials(
    f: &ConfigForm,
    existing: Option<&gpb::TenantConfig>,
    lang: Lang,
) -> Result<Option<gpb::Credentials>, (String, String)> {
    use gpb::credentials::Kind;
    if f.cred_mode == "token" {
        if f.access_token.trim().is_empty() {
            let had = existing
                .and_then(|c| c.credentials.as_ref())
                .is_some_and(|c| c.mode == "access_token");
            return if had {
                Ok(None)
            } else {
                Err(("access_token".into(), lang.t(T::GiveCredential).into()))
            };
        }
        return Ok(Some(gpb::Credentials {
            kind: Some(Kind::AccessToken(f.access_token.trim().to_owned())),
        }));
    }
    let current = existing
        .and_then(|c| c.credentials.as_ref())
        .filter(|c| c.mode == "app");
    if f.access_key.trim().is_empty() {
        return match current {
            Some(c) if c.app_id == f.app_id.trim() => Ok(None),
            Some(_) => Err(("access_key".into(), lang.t(T::AccessKeyNeeded).into())),
            None if existing.is_none() && f.app_id.trim().is_empty() => Ok(None),
            None => Err(("access_key".into(), lang.t(T::GiveCredential).into())),
        };
    }
    Ok(Some(gpb::Credentials {
        kind: Some(Kind::App(gpb::AppCredentials {
            app_id: f.app_id.trim().to_owned(),
            access_key: f.access_key.trim().to_owned(),
        })),
    }))
}

/// `POST /config`: creates the config, or changes it.
pub async fn save(
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<ConfigForm>,
) -> Result<Response, Page> {
    ctx.require(&[Role::Admin])?;
    ctx.check_form(&headers, &f.csrf)?;
    let lang = ctx.lang;
    let existing = current(&ctx)
        .await
        .map_err(|p| ctx.message(StatusCode::BAD_GATEWAY, p.sentence(lang)))?;
    let result = match build(&f, existing.as_ref(), &ctx) {
        Err(e) => Err(e),
        Ok(Change::Create(input)) => ctx
            .state
            .configs(&ctx.session)
            .create_config(gpb::CreateConfigRequest {
                config: Some(*input),
            })
            .await
            .map(|r| (r.into_inner(), "created"))
            .map_err(|s| field_error(Problem::from(s), lang)),
        Ok(Change::Update(req)) => ctx
            .state
            .configs(&ctx.session)
            .update_config(*req)
            .await
            .map(|r| (r.into_inner(), "saved"))
            .map_err(|s| field_error(Problem::from(s), lang)),
    };
    match result {
        // A generated secret is shown once, on this very response (never in a URL).
        Ok((cfg, _)) if !cfg.new_callback_secret.is_empty() => {
            let secret = cfg.new_callback_secret.clone();
            Ok(render(
                &ctx,
                View {
                    existing: Some(&cfg),
                    form: ConfigForm::from_config(&cfg),
                    error: None,
                    notice: Some(lang.t(T::ConfigUpdated).into()),
                    new_secret: Some(secret),
                    test: None,
                },
            )
            .into_response())
        }
        Ok((_, done)) => Ok(Redirect::to(&format!("/config?done={done}")).into_response()),
        Err(error) => {
            let mut shown = f.clone();
            shown.access_key.clear();
            shown.access_token.clear();
            shown.callback_secret.clear();
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                render(
                    &ctx,
                    View {
                        existing: existing.as_ref(),
                        form: shown,
                        error: Some(error),
                        notice: None,
                        new_secret: None,
                        test: None,
                    },
                ),
            )
                .into_response())
        }
    }
}

fn field_error(p: Problem, lang: Lang) -> (String, String) {
    match p.field() {
        Some(field) => (input_of(field).to_owned(), p.field_message().to_owned()),
        None => (String::new(), p.sentence(lang)),
    }
}

enum Change {
    Create(Box<gpb::ConfigInput>),
    Update(Box<gpb::UpdateConfigRequest>),
}

fn build(
    f: &ConfigForm,
    existing: Option<&gpb::TenantConfig>,
    ctx: &Ctx,
) -> Result<Change, (String, String)> {
    let lang = ctx.lang;
    let credentials = credentials(f, existing, lang)?;
    let max_calls = number("max_concurrent_calls", &f.max_concurrent_calls, lang)?;
    let ring = number("call_timeout_seconds", &f.call_timeout_seconds, lang)?;
    let api_timeout = number("api_timeout_ms", &f.api_timeout_ms, lang)?;
    let ttl = number("lease_ttl_seconds", &f.lease_ttl_seconds, lang)?;
    let cooldown = number("cooldown_seconds", &f.cooldown_seconds, lang)?;
    let secret = f.callback_secret.trim();
    let Some(c) = existing else {
        return Ok(Change::Create(Box::new(gpb::ConfigInput {
            tenant_id: ctx.tenant().to_owned(),
            supplier_id: f.supplier_id.trim().to_owned(),
            api_url: f.api_url.trim().to_owned(),
            credentials,
            caller_number_pool: ConfigForm::lines(&f.caller_number_pool),
            default_caller_number: f.default_caller_number.trim().to_owned(),
            caller_number_selection: enum_value(&f.caller_number_selection),
            call_mode: enum_value(&f.call_mode),
            destination_prefix: f.destination_prefix.trim().to_owned(),
            max_concurrent_calls: max_calls,
            call_timeout_seconds: ring,
            api_timeout_ms: api_timeout,
            allocation_strategy: enum_value(&f.allocation_strategy),
            lease_ttl_seconds: ttl,
            cooldown_seconds: cooldown,
            callback_secret: secret.to_owned(),
            callback_ip_allowlist: ConfigForm::lines(&f.callback_ip_allowlist),
            callback_time_zone: f.callback_time_zone.trim().to_owned(),
            is_active: Some(!f.is_active.is_empty()),
            phone_region: f.phone_region.trim().to_owned(),
            api_encoding: enum_value(&f.api_encoding),
            allowed_number_types: f.types(),
        })));
    };
    let version = f.version.trim().parse::<u64>().unwrap_or(c.version);
    let text = |v: &str| Some(v.trim().to_owned());
    Ok(Change::Update(Box::new(gpb::UpdateConfigRequest {
        tenant_id: ctx.tenant().to_owned(),
        version,
        supplier_id: text(&f.supplier_id),
        api_url: text(&f.api_url),
        credentials,
        caller_number_pool: Some(gpb::CallerNumbers {
            numbers: ConfigForm::lines(&f.caller_number_pool),
        }),
        default_caller_number: text(&f.default_caller_number).filter(|d| !d.is_empty()),
        caller_number_selection: Some(enum_value(&f.caller_number_selection)),
        call_mode: Some(enum_value(&f.call_mode)),
        destination_prefix: text(&f.destination_prefix),
        max_concurrent_calls: max_calls,
        call_timeout_seconds: ring,
        api_timeout_ms: api_timeout,
        allocation_strategy: Some(enum_value(&f.allocation_strategy)),
        lease_ttl_seconds: ttl,
        cooldown_seconds: cooldown,
        callback_secret: (!secret.is_empty()).then(|| secret.to_owned()),
        callback_ip_allowlist: Some(gpb::IpAllowList {
            cidrs: ConfigForm::lines(&f.callback_ip_allowlist),
        }),
        callback_time_zone: text(&f.callback_time_zone).filter(|z| !z.is_empty()),
        is_active: None,
        phone_region: text(&f.phone_region).filter(|r| !r.is_empty()),
        api_encoding: Some(enum_value(&f.api_encoding)),
        regenerate_callback_secret: !f.regenerate.is_empty(),
        allowed_number_types: Some(gpb::NumberTypes { types: f.types() }),
    })))
}

/// A form with the version read.
#[derive(Debug, Deserialize)]
pub struct VersionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    version: u64,
}

/// `POST /config/toggle`: enables or disables calling.
pub async fn toggle(
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<VersionForm>,
) -> Result<Response, Page> {
    ctx.require(&[Role::Admin])?;
    ctx.check_form(&headers, &f.csrf)?;
    ctx.state
        .configs(&ctx.session)
        .toggle_config(gpb::ToggleConfigRequest {
            tenant_id: ctx.tenant().to_owned(),
            version: f.version,
        })
        .await
        .map_err(|s| ctx.message(StatusCode::CONFLICT, Problem::from(s).sentence(ctx.lang)))?;
    Ok(Redirect::to("/config?done=toggled").into_response())
}

/// `POST /config/test`: runs TestConnection and shows its report.
pub async fn test(
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<VersionForm>,
) -> Result<Markup, Page> {
    ctx.require(&[Role::Admin])?;
    ctx.check_form(&headers, &f.csrf)?;
    let existing = current(&ctx)
        .await
        .map_err(|p| ctx.message(StatusCode::BAD_GATEWAY, p.sentence(ctx.lang)))?;
    let report = ctx
        .state
        .configs(&ctx.session)
        .test_connection(gpb::TestConnectionRequest {
            tenant_id: ctx.tenant().to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(Problem::from);
    Ok(current_page(&ctx, existing.as_ref(), None, Some(report)))
}
