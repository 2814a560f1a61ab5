//! The client for the real Infinity API (`shared/infinity-api-notes.md`, sections A and C1).
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

use crate::domain::config::{AllowedHosts, ApiEncoding, Credentials};

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

/// Why an Infinity request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfinityError {
    /// Infinity answered and said no (`ret 200, status != 0`, or `ret 400`): nothing happened.
    #[error("Infinity refused: {code} {message}")]
    Refused {
        /// `errors.code` (business) or the `ret` (interface level).
        code: String,
        /// `errors.codemsg`, `data.desc` or `msg`.
        message: String,
    },
    /// Token, app id, licence or IP authorisation failed (`ret` 600-604).
    #[error("Infinity authorisation failed ({ret}): {message}")]
    Auth {
        /// The `ret`.
        ret: i64,
        /// The `msg`.
        message: String,
    },
    /// Infinity failed (HTTP 5xx, `ret 500`, a body that is not the envelope).
    #[error("Infinity upstream error: {0}")]
    Upstream(String),
    /// The request never left (connection refused, DNS, bad URL): nothing happened.
    #[error("request to Infinity not sent: {0}")]
    NotSent(String),
    /// The request may have arrived but no answer came (timeout, connection lost).
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
}

impl InfinityError {
    /// The business code when Infinity refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for the extension errors 1010-1014 (mark the extension offline, try another).
    pub fn is_extension_error(&self) -> bool {
        self.code()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| (1010..=1014).contains(&c))
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

/// `GetRecodeFile`'s link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingLink {
    /// The download URL.
    pub url: String,
    /// The expiry text as Infinity sent it.
    pub expires: String,
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

fn classify(e: &reqwest::Error) -> InfinityError {
    if e.is_connect() || e.is_builder() {
        InfinityError::NotSent(e.to_string())
    } else if e.is_timeout() {
        InfinityError::Ambiguous("no answer within the timeout".into())
    } else {
        InfinityError::Ambiguous(e.to_string())
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
    ) -> Result<Data, InfinityError> {
        if !self.allowed.allows(&ep.api_url) {
            return Err(InfinityError::NotSent(
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
    pub async fn login(&self, ep: &Endpoint) -> Result<LoginInfo, InfinityError> {
        let Credentials::App { app_id, access_key } = &ep.credentials else {
            return Err(InfinityError::Auth {
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
            return Err(InfinityError::Upstream(
                "Login succeeded without a token".into(),
            ));
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

    async fn token(&self, ep: &Endpoint) -> Result<SecretString, InfinityError> {
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
    ) -> Result<Data, InfinityError> {
        let token = self.token(ep).await?;
        let mut with_token: Vec<(&str, String)> = vec![("token", token.expose_secret().to_owned())];
        with_token.extend_from_slice(params);
        let first = self.send(ep, service, &with_token).await;
        let expired = match &first {
            Err(InfinityError::Auth { ret: 600, .. }) => true,
            Err(e @ InfinityError::Refused { .. }) => e.code() == Some("1010"),
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
    pub async fn logout(&self, ep: &Endpoint) -> Result<(), InfinityError> {
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
    /// Typed as described on [`InfinityError`].
    pub async fn make_call(&self, ep: &Endpoint, p: &DialParams) -> Result<String, InfinityError> {
        let mut f = Self::dial_fields(p);
        f.push(("destnumber", p.destnumber.clone()));
        Ok(self.call(ep, "App.Sip_Call.MakeCall", &f).await?.desc)
    }

    /// `App.Sip_Call.DoubleCall`: rings `anumber` (the collector), then `bnumber`.
    ///
    /// # Errors
    /// Typed as described on [`InfinityError`].
    pub async fn double_call(
        &self,
        ep: &Endpoint,
        p: &DialParams,
    ) -> Result<String, InfinityError> {
        let mut f = Self::dial_fields(p);
        f.push(("anumber", p.anumber.clone()));
        f.push(("bnumber", p.bnumber.clone()));
        Ok(self.call(ep, "App.Sip_Call.DoubleCall", &f).await?.desc)
    }

    /// `App.Sip_Sipnum.GetSipnumberInfo` with status 3 (all): every extension Infinity knows.
    ///
    /// # Errors
    /// As Infinity answered.
    pub async fn sip_numbers(&self, ep: &Endpoint) -> Result<Vec<SipNumber>, InfinityError> {
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
    ) -> Result<Vec<ExtCallStatus>, InfinityError> {
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
    pub async fn get_bill(&self, ep: &Endpoint, q: &BillQuery) -> Result<BillPage, InfinityError> {
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
    ) -> Result<RecordingLink, InfinityError> {
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
            return Err(InfinityError::Upstream(
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
    pub async fn hangup(&self, ep: &Endpoint, extnumber: &str) -> Result<String, InfinityError> {
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
