//! The Infinity API: the client ([`InfinityClient`]) and its [`Pbx`] implementation, the
//! `{ret, data, msg}` envelope, and [`record`], Infinity's call record read into a completion
//! (for the callback and the reconciler). The vendor facts are in `docs/infinity-api.md`.
//!
//! One POST per operation to the configured URL with `service=App.X.Y` and form fields; the
//! `{ret, data, msg}` envelope is parsed tolerantly (`data: []`, codes as strings or numbers,
//! non-JSON bodies) and success is `ret == 200 && data.status == 0`. Failures come back typed
//! so the call flow can act: a definite refusal, an auth or licence error (600-604), an
//! upstream error, a request that was never sent, or one whose outcome is unknown.
//!
//! Tokens: a static token is used as is; with app id + access key the client logs in, caches
//! the token below its 12 h life, and on `ret == 600` (or business code 1010) logs in again and
//! retries once.

mod envelope;
pub mod record;

pub use envelope::{Data, parse_envelope};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::GwError;
use crate::domain::call::{Call, Completion};
use crate::domain::config::{AllowedHosts, ApiEncoding, CallMode, Credentials, TenantConfig};
pub use crate::ports::pbx::{PbxError, RecordingLink};
use crate::ports::{Dial, Pbx, PbxExtension};

/// How long a Login token is reused (the vendor says 12 h).
pub const TOKEN_LIFE: Duration = Duration::from_secs(11 * 3600);

/// Where and how to reach one tenant's Infinity.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The whole API URL.
    pub api_url: String,
    /// Credentials.
    pub credentials: Credentials,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Form encoding.
    pub encoding: ApiEncoding,
}

impl Endpoint {
    /// How to reach the Infinity of the tenant whose config this is.
    pub fn of(cfg: &TenantConfig) -> Self {
        Self {
            api_url: cfg.api_url.clone(),
            credentials: cfg.credentials.clone(),
            timeout: Duration::from_millis(u64::from(cfg.api_timeout_ms)),
            encoding: cfg.api_encoding,
        }
    }
}

/// `App.Sip_Auth.Login`'s result.
#[derive(Debug, Clone)]
pub struct LoginInfo {
    /// The token (32 hex).
    pub token: SecretString,
    /// The company name.
    pub company_name: String,
    /// The company code.
    pub company_code: String,
}

/// One extension from `App.Sip_Sipnum.GetSipnumberInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipNumber {
    /// The extension number.
    pub extnumber: String,
    /// Its status code (1016 enabled, 1013 disabled, ...).
    pub status: i64,
    /// `register == "reg"`.
    pub registered: bool,
}

/// One extension from `App.Sip_Status.GetSipCallStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtCallStatus {
    /// The extension number.
    pub extnumber: String,
    /// 1201 idle, 1202 ringing, 1204 in call, 1014 not registered, ...
    pub status: i64,
}

/// Fields of a dial (MakeCall or DoubleCall).
#[derive(Debug, Clone, Default)]
pub struct DialParams {
    /// The SIP extension.
    pub extnumber: String,
    /// MakeCall: the destination (prefix included).
    pub destnumber: String,
    /// DoubleCall: the number rung first (the collector).
    pub anumber: String,
    /// DoubleCall: the number rung second (the debtor, prefix included).
    pub bnumber: String,
    /// Caller id shown; omitted when empty.
    pub disnumber: String,
    /// Echoed: the collector.
    pub userid: String,
    /// Echoed: the case.
    pub memberid: String,
    /// Echoed: our call id.
    pub customuuid: String,
    /// Echoed: free text (we send the tenant id).
    pub chengshudu: String,
}

/// Filters of `App.Sip_Cdr.GetBill`.
#[derive(Debug, Clone, Default)]
pub struct BillQuery {
    /// `yyyy-mm-dd hh:mm:ss` in the tenant's zone.
    pub starttime: String,
    /// `yyyy-mm-dd hh:mm:ss`.
    pub endtime: String,
    /// Our call id.
    pub customuuid: Option<String>,
    /// 1-based page.
    pub currentpage: u32,
    /// 1-1000.
    pub itemsperpage: u32,
}

/// A page of `GetBill`.
#[derive(Debug, Clone, Default)]
pub struct BillPage {
    /// Matching records in all pages.
    pub total: u64,
    /// The records, as Infinity sent them.
    pub bills: Vec<serde_json::Map<String, Value>>,
}

/// The HTTP client with its token cache; one per process.
pub struct InfinityClient {
    http: reqwest::Client,
    allowed: AllowedHosts,
    tokens: Mutex<HashMap<String, (SecretString, Instant)>>,
    token_life: Duration,
}

impl std::fmt::Debug for InfinityClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InfinityClient")
    }
}

fn classify(e: &reqwest::Error) -> PbxError {
    if e.is_connect() || e.is_builder() {
        PbxError::NotSent(e.to_string())
    } else if e.is_timeout() {
        PbxError::Ambiguous("no answer within the timeout".into())
    } else {
        PbxError::Ambiguous(e.to_string())
    }
}

impl InfinityClient {
    /// Builds the client (rustls with the ring provider).
    ///
    /// # Errors
    /// Only if TLS cannot be initialised.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_token_life(TOKEN_LIFE)
    }

    /// Builds the client with another token life (tests).
    ///
    /// # Errors
    /// Only if TLS cannot be initialised.
    pub fn with_token_life(token_life: Duration) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            // Infinity answers at its one URL; following a redirect would let a configured URL
            // lead anywhere, past the allowed hosts.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            allowed: AllowedHosts::default(),
            tokens: Mutex::new(HashMap::new()),
            token_life,
        })
    }

    /// Limits every request to these hosts (checked again at each request, so a config stored
    /// before the list was set cannot reach elsewhere).
    #[must_use]
    pub fn with_allowed_hosts(mut self, allowed: AllowedHosts) -> Self {
        self.allowed = allowed;
        self
    }

    /// The hosts requests may go to.
    pub fn allowed_hosts(&self) -> &AllowedHosts {
        &self.allowed
    }

    /// Sends one request (no token handling) and parses the envelope.
    async fn send(
        &self,
        ep: &Endpoint,
        service: &str,
        params: &[(&str, String)],
    ) -> Result<Data, PbxError> {
        if !self.allowed.allows(&ep.api_url) {
            return Err(PbxError::NotSent(
                "the api_url host is not in this gateway's allowed Infinity hosts".into(),
            ));
        }
        let mut fields: Vec<(&str, String)> = Vec::with_capacity(params.len() + 1);
        fields.push(("service", service.to_owned()));
        fields.extend(params.iter().filter(|(_, v)| !v.is_empty()).cloned());
        let req = self.http.post(&ep.api_url).timeout(ep.timeout);
        let req = match ep.encoding {
            ApiEncoding::FormUrlencoded => req.form(&fields),
            ApiEncoding::Multipart => {
                let mut form = reqwest::multipart::Form::new();
                for (k, v) in fields {
                    form = form.text(k.to_owned(), v);
                }
                req.multipart(form)
            }
        };
        let started = Instant::now();
        let resp = req.send().await.map_err(|e| classify(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| classify(&e))?;
        let result = parse_envelope(status.as_u16(), &body);
        tracing::debug!(
            service,
            http = status.as_u16(),
            ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "infinity request"
        );
        result
    }

    fn token_key(ep: &Endpoint) -> Option<String> {
        match &ep.credentials {
            Credentials::App { app_id, .. } => Some(format!("{}|{app_id}", ep.api_url)),
            Credentials::AccessToken(_) => None,
        }
    }

    fn cached_token(&self, key: &str) -> Option<SecretString> {
        let g = self.tokens.lock().ok()?;
        g.get(key)
            .filter(|(_, at)| at.elapsed() < self.token_life)
            .map(|(t, _)| t.clone())
    }

    fn forget_token(&self, key: &str) {
        if let Ok(mut g) = self.tokens.lock() {
            g.remove(key);
        }
    }

    /// Logs in with the endpoint's app credentials (always a fresh Login) and caches the token.
    ///
    /// # Errors
    /// As Infinity answered; `Auth` when the endpoint has a static token.
    pub async fn login(&self, ep: &Endpoint) -> Result<LoginInfo, PbxError> {
        let Credentials::App { app_id, access_key } = &ep.credentials else {
            return Err(PbxError::Auth {
                ret: 0,
                message: "a static token is configured: there is nothing to log in with".into(),
            });
        };
        let data = self
            .send(
                ep,
                "App.Sip_Auth.Login",
                &[
                    ("appid", app_id.clone()),
                    ("accesskey", access_key.expose_secret().to_owned()),
                ],
            )
            .await?;
        let result = data.result.unwrap_or_default();
        let token = envelope::text(&result, "token");
        if token.is_empty() {
            return Err(PbxError::Upstream("Login succeeded without a token".into()));
        }
        let info = LoginInfo {
            token: SecretString::from(token),
            company_name: envelope::text(&result, "companyname"),
            company_code: envelope::text(&result, "companycode"),
        };
        if let (Some(key), Ok(mut g)) = (Self::token_key(ep), self.tokens.lock()) {
            g.insert(key, (info.token.clone(), Instant::now()));
        }
        Ok(info)
    }

    async fn token(&self, ep: &Endpoint) -> Result<SecretString, PbxError> {
        match &ep.credentials {
            Credentials::AccessToken(t) => Ok(t.clone()),
            Credentials::App { .. } => {
                let key = Self::token_key(ep).unwrap_or_default();
                match self.cached_token(&key) {
                    Some(t) => Ok(t),
                    None => Ok(self.login(ep).await?.token),
                }
            }
        }
    }

    /// Sends an authenticated request; with app credentials, a `ret 600` (or business code 1010)
    /// triggers one new Login and one retry.
    async fn call(
        &self,
        ep: &Endpoint,
        service: &str,
        params: &[(&str, String)],
    ) -> Result<Data, PbxError> {
        let token = self.token(ep).await?;
        let mut with_token: Vec<(&str, String)> = vec![("token", token.expose_secret().to_owned())];
        with_token.extend_from_slice(params);
        let first = self.send(ep, service, &with_token).await;
        let expired = match &first {
            Err(PbxError::Auth { ret: 600, .. }) => true,
            Err(e @ PbxError::Refused { .. }) => e.code() == Some("1010"),
            _ => false,
        };
        let Some(key) = Self::token_key(ep).filter(|_| expired) else {
            return first;
        };
        tracing::info!(
            service,
            "Infinity token rejected; logging in again and retrying once"
        );
        self.forget_token(&key);
        let fresh = self.login(ep).await?;
        with_token[0].1 = fresh.token.expose_secret().to_owned();
        self.send(ep, service, &with_token).await
    }

    /// `App.Sip_Auth.Logout`: drops the token server-side and here.
    ///
    /// # Errors
    /// As Infinity answered.
    pub async fn logout(&self, ep: &Endpoint) -> Result<(), PbxError> {
        let token = self.token(ep).await?;
        if let Some(key) = Self::token_key(ep) {
            self.forget_token(&key);
        }
        self.send(
            ep,
            "App.Sip_Auth.Logout",
            &[("token", token.expose_secret().to_owned())],
        )
        .await
        .map(|_| ())
    }

    fn dial_fields(p: &DialParams) -> Vec<(&'static str, String)> {
        vec![
            ("extnumber", p.extnumber.clone()),
            ("disnumber", p.disnumber.clone()),
            ("userid", p.userid.clone()),
            ("memberid", p.memberid.clone()),
            ("customuuid", p.customuuid.clone()),
            ("chengshudu", p.chengshudu.clone()),
        ]
    }

    /// `App.Sip_Call.MakeCall`: rings the extension, then `destnumber`. Returns Infinity's text.
    ///
    /// # Errors
    /// Typed as described on [`PbxError`].
    pub async fn make_call(&self, ep: &Endpoint, p: &DialParams) -> Result<String, PbxError> {
        let mut f = Self::dial_fields(p);
        f.push(("destnumber", p.destnumber.clone()));
        Ok(self.call(ep, "App.Sip_Call.MakeCall", &f).await?.desc)
    }

    /// `App.Sip_Call.DoubleCall`: rings `anumber` (the collector), then `bnumber`.
    ///
    /// # Errors
    /// Typed as described on [`PbxError`].
    pub async fn double_call(&self, ep: &Endpoint, p: &DialParams) -> Result<String, PbxError> {
        let mut f = Self::dial_fields(p);
        f.push(("anumber", p.anumber.clone()));
        f.push(("bnumber", p.bnumber.clone()));
        Ok(self.call(ep, "App.Sip_Call.DoubleCall", &f).await?.desc)
    }

    /// `App.Sip_Sipnum.GetSipnumberInfo` with status 3 (all): every extension Infinity knows.
    ///
    /// # Errors
    /// As Infinity answered.
    pub async fn sip_numbers(&self, ep: &Endpoint) -> Result<Vec<SipNumber>, PbxError> {
        let data = self
            .call(
                ep,
                "App.Sip_Sipnum.GetSipnumberInfo",
                &[("status", "3".into())],
            )
            .await?;
        Ok(envelope::list(data.result.as_ref())
            .iter()
            .map(|v| SipNumber {
                extnumber: envelope::text(v, "extnumber"),
                status: envelope::int(v, "status").unwrap_or(0),
                registered: envelope::text(v, "register") == "reg",
            })
            .collect())
    }

    /// `App.Sip_Status.GetSipCallStatus` for the given extensions.
    ///
    /// # Errors
    /// As Infinity answered.
    pub async fn call_status(
        &self,
        ep: &Endpoint,
        extensions: &[String],
    ) -> Result<Vec<ExtCallStatus>, PbxError> {
        let data = self
            .call(
                ep,
                "App.Sip_Status.GetSipCallStatus",
                &[("extnumber", extensions.join(","))],
            )
            .await?;
        Ok(envelope::list(data.result.as_ref())
            .iter()
            .map(|v| ExtCallStatus {
                extnumber: envelope::text(v, "extnumber"),
                status: envelope::int(v, "status").unwrap_or(0),
            })
            .collect())
    }

    /// `App.Sip_Cdr.GetBill`: call records (all, queried or not).
    ///
    /// # Errors
    /// As Infinity answered.
    pub async fn get_bill(&self, ep: &Endpoint, q: &BillQuery) -> Result<BillPage, PbxError> {
        let data = self
            .call(
                ep,
                "App.Sip_Cdr.GetBill",
                &[
                    ("starttime", q.starttime.clone()),
                    ("endtime", q.endtime.clone()),
                    ("syncflag", "3".into()),
                    ("direction", "3".into()),
                    ("customuuid", q.customuuid.clone().unwrap_or_default()),
                    ("currentpage", q.currentpage.max(1).to_string()),
                    ("itemsperpage", q.itemsperpage.clamp(1, 1000).to_string()),
                ],
            )
            .await?;
        let result = data.result.unwrap_or_default();
        Ok(BillPage {
            total: envelope::int(&result, "totalitems")
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(0),
            bills: envelope::list(result.get("bills"))
                .into_iter()
                .filter_map(|b| match b {
                    Value::Object(m) => Some(m),
                    _ => None,
                })
                .collect(),
        })
    }

    /// `App.Sip_Cdr.GetRecodeFile`: a time-limited download link for a recording file name.
    ///
    /// # Errors
    /// As Infinity answered (1029: no such file).
    pub async fn recording_link(
        &self,
        ep: &Endpoint,
        filename: &str,
    ) -> Result<RecordingLink, PbxError> {
        let data = self
            .call(
                ep,
                "App.Sip_Cdr.GetRecodeFile",
                &[("filename", filename.to_owned())],
            )
            .await?;
        let r = data.result.unwrap_or_default();
        let url = envelope::text(&r, "downurl");
        if url.is_empty() {
            return Err(PbxError::Upstream(
                "GetRecodeFile succeeded without downurl".into(),
            ));
        }
        Ok(RecordingLink {
            url,
            expires: envelope::text(&r, "expiredtime"),
        })
    }

    /// `App.Sip_Call.HangupCall` (undocumented; best effort).
    ///
    /// # Errors
    /// As Infinity answered.
    pub async fn hangup(&self, ep: &Endpoint, extnumber: &str) -> Result<String, PbxError> {
        Ok(self
            .call(
                ep,
                "App.Sip_Call.HangupCall",
                &[("extnumber", extnumber.to_owned())],
            )
            .await?
            .desc)
    }
}

/// The form of a time in GetBill queries: `yyyy-mm-dd hh:mm:ss` in the tenant's zone.
fn bill_time(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string()
}

#[async_trait]
impl Pbx for InfinityClient {
    fn check_api_url(&self, api_url: &str) -> Result<(), GwError> {
        self.allowed.check(api_url)
    }

    async fn dial(&self, cfg: &TenantConfig, d: &Dial) -> Result<String, PbxError> {
        let p = DialParams {
            extnumber: d.extension.clone(),
            destnumber: d.destination.clone(),
            anumber: d.first_leg.clone(),
            bnumber: d.destination.clone(),
            disnumber: d.caller_id.clone(),
            userid: d.collector.clone(),
            memberid: d.case.clone(),
            customuuid: d.call_id.clone(),
            chengshudu: d.tenant.clone(),
        };
        let ep = Endpoint::of(cfg);
        match d.mode {
            CallMode::DoubleCall => self.double_call(&ep, &p).await,
            CallMode::MakeCall => self.make_call(&ep, &p).await,
        }
    }

    async fn find_record(
        &self,
        cfg: &TenantConfig,
        call: &Call,
        now: DateTime<Utc>,
    ) -> Result<Option<Completion>, PbxError> {
        let tz = cfg.callback_time_zone;
        let from = call
            .created_at
            .checked_sub_signed(chrono::Duration::minutes(10))
            .unwrap_or(call.created_at);
        let to = now
            .checked_add_signed(chrono::Duration::minutes(1))
            .unwrap_or(now);
        let q = BillQuery {
            starttime: bill_time(from, tz),
            endtime: bill_time(to, tz),
            customuuid: Some(call.id.as_str().to_owned()),
            currentpage: 1,
            itemsperpage: 10,
        };
        let page = self.get_bill(&Endpoint::of(cfg), &q).await?;
        let found = page.bills.iter().find(|b| {
            b.get("customuuid").and_then(serde_json::Value::as_str) == Some(call.id.as_str())
        });
        Ok(found.map(|bill| {
            let raw = serde_json::Value::Object(bill.clone()).to_string();
            let window = record::TimeWindow::around(call.created_at, now);
            record::completion(&record::flatten(bill), tz, window, raw)
        }))
    }

    async fn recording_link(
        &self,
        cfg: &TenantConfig,
        filename: &str,
    ) -> Result<RecordingLink, PbxError> {
        InfinityClient::recording_link(self, &Endpoint::of(cfg), filename).await
    }

    async fn hang_up(&self, cfg: &TenantConfig, extension: &str) -> Result<String, PbxError> {
        self.hangup(&Endpoint::of(cfg), extension).await
    }

    async fn login(&self, cfg: &TenantConfig) -> Result<String, PbxError> {
        Ok(InfinityClient::login(self, &Endpoint::of(cfg))
            .await?
            .company_name)
    }

    async fn extensions(&self, cfg: &TenantConfig) -> Result<Vec<PbxExtension>, PbxError> {
        Ok(self
            .sip_numbers(&Endpoint::of(cfg))
            .await?
            .into_iter()
            .map(|s| PbxExtension {
                number: s.extnumber,
                registered: s.registered,
            })
            .collect())
    }
}
