//! The simulator's state: companies, tokens, extensions, scripts, records and the request log.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::record::Script;

/// Start-up settings of a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Interface to bind.
    pub host: String,
    /// Port; 0 picks one.
    pub port: u16,
    /// App id accepted by Login.
    pub app_id: String,
    /// Access key accepted by Login.
    pub access_key: String,
    /// Company name returned by Login.
    pub company_name: String,
    /// Company code.
    pub company_code: String,
    /// Static tokens that are always valid (until expired by control).
    pub static_tokens: Vec<String>,
    /// Life of a Login token.
    pub token_ttl: Duration,
    /// Where call records are posted.
    pub callback_url: Option<String>,
    /// Extensions: (number, registered).
    pub extensions: Vec<(String, bool)>,
    /// The CA (PEM) to trust, instead of the system roots, when posting callbacks to https://.
    pub callback_ca_pem: Option<Vec<u8>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            app_id: "sim-app".into(),
            access_key: "sim-access-key".into(),
            company_name: "Simulated Call Centre".into(),
            company_code: "9513923".into(),
            static_tokens: vec!["0123456789abcdef0123456789abcdef".into()],
            token_ttl: Duration::from_secs(12 * 3600),
            callback_url: None,
            extensions: Vec::new(),
            callback_ca_pem: None,
        }
    }
}

/// One request the simulator received.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    /// The `service` field.
    pub service: String,
    /// Every form field (the token included: this is a test double).
    pub params: HashMap<String, String>,
    /// Milliseconds since the simulator started.
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ext {
    pub registered: bool,
    pub enabled: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub tokens: HashMap<String, Option<Instant>>,
    pub extensions: BTreeMap<String, Ext>,
    pub scripts: HashMap<String, Script>,
    pub default_script: Script,
    pub callback_url: Option<String>,
    pub requests: Vec<LoggedRequest>,
    pub bills: Vec<Map<String, Value>>,
    pub callbacks_sent: u64,
    pub callbacks_answered: u64,
    /// When true, HangupCall answers like a server without it (`ret 400`, unknown service).
    pub hangup_unsupported: bool,
    pub next_id: i64,
}

/// Shared state of a running simulator.
#[derive(Debug)]
pub struct SimState {
    pub(crate) inner: Mutex<Inner>,
    pub(crate) config: SimConfig,
    pub(crate) started: Instant,
    pub(crate) http: reqwest::Client,
    pub(crate) base_url: String,
}

impl SimState {
    pub(crate) fn new(config: SimConfig, addr: SocketAddr) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut inner = Inner {
            next_id: 263_056_200,
            callback_url: config.callback_url.clone(),
            ..Inner::default()
        };
        for t in &config.static_tokens {
            inner.tokens.insert(t.clone(), None);
        }
        for (n, reg) in &config.extensions {
            inner.extensions.insert(
                n.clone(),
                Ext {
                    registered: *reg,
                    enabled: true,
                },
            );
        }
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(pem) = &config.callback_ca_pem {
            http = http.tls_certs_only([reqwest::Certificate::from_pem(pem)?]);
        }
        Ok(Self {
            inner: Mutex::new(inner),
            config,
            started: Instant::now(),
            http: http.build()?,
            base_url: format!("http://{addr}"),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock only poisons test state; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the script for calls to `destination` (the dialled number, prefix included, or a
    /// suffix of it); `None` sets the default script.
    pub fn set_script(&self, destination: Option<&str>, script: Script) {
        let mut g = self.lock();
        match destination {
            Some(d) => {
                g.scripts.insert(d.to_owned(), script);
            }
            None => g.default_script = script,
        }
    }

    /// Adds or changes extensions.
    pub fn set_extensions(&self, numbers: &[&str], registered: bool) {
        let mut g = self.lock();
        for n in numbers {
            g.extensions.insert(
                (*n).to_owned(),
                Ext {
                    registered,
                    enabled: true,
                },
            );
        }
    }

    /// Makes HangupCall unknown to this "server" (as on Infinity versions without it).
    pub fn set_hangup_supported(&self, supported: bool) {
        self.lock().hangup_unsupported = !supported;
    }

    /// Invalidates every token (Login and static): the next request gets `ret 600`.
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Makes a static token valid again.
    pub fn add_static_token(&self, token: &str) {
        self.lock().tokens.insert(token.to_owned(), None);
    }

    /// Sets where call records are posted.
    pub fn set_callback_url(&self, url: Option<String>) {
        self.lock().callback_url = url;
    }

    /// Requests received, optionally only of one service (e.g. `App.Sip_Call.DoubleCall`).
    pub fn requests(&self, service: Option<&str>) -> Vec<LoggedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| service.is_none_or(|s| r.service == s))
            .cloned()
            .collect()
    }

    /// Calls actually placed (dials Infinity accepted) carrying this customuuid.
    pub fn dials_for(&self, customuuid: &str) -> usize {
        self.lock()
            .bills
            .iter()
            .filter(|b| b.get("customuuid").and_then(Value::as_str) == Some(customuuid))
            .count()
    }

    /// Dial requests received (accepted or not), MakeCall and DoubleCall.
    pub fn dial_requests(&self) -> Vec<LoggedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| {
                r.service == "App.Sip_Call.MakeCall" || r.service == "App.Sip_Call.DoubleCall"
            })
            .cloned()
            .collect()
    }

    /// Every call record produced so far.
    pub fn bills(&self) -> Vec<Map<String, Value>> {
        self.lock().bills.clone()
    }

    /// Callbacks posted so far (successfully or not).
    pub fn callbacks_sent(&self) -> u64 {
        self.lock().callbacks_sent
    }

    /// Callbacks the receiver has answered (whatever the answer): it is done with them.
    pub fn callbacks_answered(&self) -> u64 {
        self.lock().callbacks_answered
    }

    /// Clears the log, the records and the scripts.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.requests.clear();
        g.bills.clear();
        g.scripts.clear();
        g.default_script = Script::default();
    }

    pub(crate) fn script_for(&self, dialled: &str) -> Script {
        let g = self.lock();
        if let Some(s) = g.scripts.get(dialled) {
            return s.clone();
        }
        g.scripts
            .iter()
            .filter(|(k, _)| dialled.ends_with(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map_or_else(|| g.default_script.clone(), |(_, s)| s.clone())
    }
}
