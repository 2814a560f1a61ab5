//! The call centre (Infinity), as the gateway uses it: place a call, look up a finished call's
//! record, a recording's link, hang up, and what TestConnection needs. Every operation takes
//! the tenant's config; the adapter derives the endpoint and credentials from it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::GwError;
use crate::domain::call::{Call, Completion};
use crate::domain::config::{CallMode, TenantConfig};

/// Why a request to the call centre did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PbxError {
    /// It answered and said no: nothing happened.
    #[error("Infinity refused: {code} {message}")]
    Refused {
        /// Its code (a business code, or the interface-level `ret`).
        code: String,
        /// Its text.
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
    /// It failed (HTTP 5xx, an answer that is not its envelope).
    #[error("Infinity upstream error: {0}")]
    Upstream(String),
    /// The request never left (connection refused, DNS, a host not allowed): nothing happened.
    #[error("request to Infinity not sent: {0}")]
    NotSent(String),
    /// The request may have arrived but no answer came (timeout, connection lost).
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
}

impl PbxError {
    /// The business code when it refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for the extension errors 1010-1014 (take the extension offline, try another).
    pub fn is_extension_error(&self) -> bool {
        self.code()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| (1010..=1014).contains(&c))
    }

    /// The code and text recorded with a call that failed for this reason.
    pub fn code_and_message(&self) -> (String, String) {
        match self {
            Self::Refused { code, message } => (code.clone(), message.clone()),
            Self::Auth { ret, message } => (ret.to_string(), message.clone()),
            Self::NotSent(m) => ("not_sent".into(), m.clone()),
            Self::Upstream(m) => ("upstream_error".into(), m.clone()),
            Self::Ambiguous(m) => ("ambiguous".into(), m.clone()),
        }
    }
}

/// One dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// DoubleCall (ring `first_leg`, then `destination`) or MakeCall (ring the extension).
    pub mode: CallMode,
    /// The leased extension's number.
    pub extension: String,
    /// The debtor's digits as dialled (prefix included).
    pub destination: String,
    /// DoubleCall: the collector's callback number as dialled.
    pub first_leg: String,
    /// The caller number shown, as dialled.
    pub caller_id: String,
    /// Echoed back: the collector, the case, our call id and the tenant.
    pub collector: String,
    /// See `collector`.
    pub case: String,
    /// See `collector`.
    pub call_id: String,
    /// See `collector`.
    pub tenant: String,
}

/// One extension as the call centre knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbxExtension {
    /// Its number.
    pub number: String,
    /// Registered (a SIP phone is online on it).
    pub registered: bool,
}

/// A time-limited download link of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingLink {
    /// The URL.
    pub url: String,
    /// The expiry as the call centre wrote it.
    pub expires: String,
}

/// The call centre.
#[async_trait]
pub trait Pbx: Send + Sync + 'static {
    /// Refuses a config whose API URL this gateway may not reach (the allowed hosts).
    fn check_api_url(&self, api_url: &str) -> Result<(), GwError>;

    /// Places a call; returns the call centre's text.
    async fn dial(&self, cfg: &TenantConfig, dial: &Dial) -> Result<String, PbxError>;

    /// The record of `call` if the call centre has one (the reconciler's lookup), read as a
    /// completion with times bounded by the call's creation and `now`.
    async fn find_record(
        &self,
        cfg: &TenantConfig,
        call: &Call,
        now: DateTime<Utc>,
    ) -> Result<Option<Completion>, PbxError>;

    /// A download link for a recording file name.
    async fn recording_link(
        &self,
        cfg: &TenantConfig,
        filename: &str,
    ) -> Result<RecordingLink, PbxError>;

    /// Hangs up the call on an extension (best effort; may be unsupported).
    async fn hang_up(&self, cfg: &TenantConfig, extension: &str) -> Result<String, PbxError>;

    /// Logs in with app credentials; returns the company name.
    async fn login(&self, cfg: &TenantConfig) -> Result<String, PbxError>;

    /// Every extension the call centre knows.
    async fn extensions(&self, cfg: &TenantConfig) -> Result<Vec<PbxExtension>, PbxError>;
}
