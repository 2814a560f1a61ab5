//! A tenant's Infinity call configuration and the rules every field obeys.

use cco_platform::validate::quote;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use phonenumber::country::Id as Region;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::phone::{NumberKind, Phone, parse_region};
use super::{GwError, TenantId};

/// How the caller number of a call is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerSelection {
    /// Always the default number.
    DefaultNumber,
    /// The pool in turn.
    RoundRobin,
    /// A random pool number.
    Random,
}

/// Which Infinity service places the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMode {
    /// `App.Sip_Call.DoubleCall`: collector's phone first.
    DoubleCall,
    /// `App.Sip_Call.MakeCall`: the SIP extension first.
    MakeCall,
}

/// How requests to Infinity are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiEncoding {
    /// `application/x-www-form-urlencoded`.
    FormUrlencoded,
    /// `multipart/form-data`.
    Multipart,
}

/// The tenant's default extension allocation strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Least recently used.
    Lru,
    /// Round robin.
    RoundRobin,
    /// Collector affinity.
    CollectorAffinity,
}

names!(CallerSelection { DefaultNumber = "default_number", RoundRobin = "round_robin", Random = "random" });
names!(CallMode { DoubleCall = "double_call", MakeCall = "make_call" });
names!(ApiEncoding { FormUrlencoded = "form_urlencoded", Multipart = "multipart" });
names!(Strategy { Lru = "lru", RoundRobin = "round_robin", CollectorAffinity = "collector_affinity" });

/// Credentials for the Infinity API.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A static token.
    AccessToken(SecretString),
    /// App id and access key for `App.Sip_Auth.Login`.
    App {
        /// The app id (not secret).
        app_id: String,
        /// The access key.
        access_key: SecretString,
    },
}

impl Credentials {
    /// Validates credentials given by a client.
    pub fn validate(self) -> Result<Self, GwError> {
        match &self {
            Self::AccessToken(t) => {
                let t = t.expose_secret();
                if t.len() < 8 || t.len() > 128 || !t.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(GwError::invalid(
                        "credentials.access_token",
                        "must be 8-128 printable characters (Infinity tokens are 32 hex characters)",
                    ));
                }
            }
            Self::App { app_id, access_key } => {
                cco_platform::validate::id(app_id, 64)
                    .map_err(|m| GwError::invalid("credentials.app.app_id", m))?;
                let k = access_key.expose_secret();
                if k.is_empty() || k.len() > 128 || !k.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(GwError::invalid(
                        "credentials.app.access_key",
                        "must be 1-128 printable characters",
                    ));
                }
            }
        }
        Ok(self)
    }
}

/// A stored tenant config.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// UUID v7.
    pub config_id: Uuid,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Supplier id.
    pub supplier_id: String,
    /// Infinity API URL.
    pub api_url: String,
    /// Credentials.
    pub credentials: Credentials,
    /// Caller numbers.
    pub caller_number_pool: Vec<Phone>,
    /// Default caller number (in the pool).
    pub default_caller_number: Phone,
    /// Selection rule.
    pub caller_selection: CallerSelection,
    /// Call mode.
    pub call_mode: CallMode,
    /// Destination prefix digits.
    pub destination_prefix: String,
    /// Cap.
    pub max_concurrent_calls: u32,
    /// Ring timeout.
    pub call_timeout_seconds: u32,
    /// API request timeout.
    pub api_timeout_ms: u32,
    /// Default strategy.
    pub allocation_strategy: Strategy,
    /// Lease TTL.
    pub lease_ttl_seconds: u32,
    /// Cooldown.
    pub cooldown_seconds: u32,
    /// Callback secret.
    pub callback_secret: SecretString,
    /// Callback allow-list.
    pub callback_ip_allowlist: Vec<IpNet>,
    /// Time zone of Infinity's timestamps.
    pub callback_time_zone: chrono_tz::Tz,
    /// Active.
    pub is_active: bool,
    /// Default phone region.
    pub phone_region: Region,
    /// Request encoding.
    pub api_encoding: ApiEncoding,
    /// Costly number kinds this tenant may dial (sorted, no duplicates).
    pub allowed_number_types: Vec<NumberKind>,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Changed.
    pub updated_at: DateTime<Utc>,
}

/// Every field of a config as a client gives it, before validation. `None` = not given.
#[derive(Debug, Clone, Default)]
pub struct ConfigFields {
    pub supplier_id: Option<String>,
    pub api_url: Option<String>,
    pub credentials: Option<Credentials>,
    pub caller_number_pool: Option<Vec<String>>,
    pub default_caller_number: Option<String>,
    pub caller_selection: Option<CallerSelection>,
    pub call_mode: Option<CallMode>,
    pub destination_prefix: Option<String>,
    pub max_concurrent_calls: Option<u32>,
    pub call_timeout_seconds: Option<u32>,
    pub api_timeout_ms: Option<u32>,
    pub allocation_strategy: Option<Strategy>,
    pub lease_ttl_seconds: Option<u32>,
    pub cooldown_seconds: Option<u32>,
    pub callback_secret: Option<SecretString>,
    pub callback_ip_allowlist: Option<Vec<String>>,
    pub callback_time_zone: Option<String>,
    pub is_active: Option<bool>,
    pub phone_region: Option<String>,
    pub api_encoding: Option<ApiEncoding>,
    pub allowed_number_types: Option<Vec<NumberKind>>,
}

fn range(field: &'static str, v: u32, lo: u32, hi: u32) -> Result<u32, GwError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(GwError::invalid(
            field,
            format!("must be {lo}-{hi}, got {v}"),
        ))
    }
}

/// The longest API URL, in characters.
pub const MAX_API_URL: usize = 512;

/// Validates an API URL strictly: `http` or `https`, a host, a port of 1-65535 if one is
/// given, no `user:password@` (credentials go in `credentials`), no fragment, no whitespace or
/// control characters, at most [`MAX_API_URL`] characters. Surrounding spaces are trimmed.
pub fn validate_api_url(raw: &str) -> Result<String, GwError> {
    let bad = |m: String| GwError::invalid("api_url", m);
    let n = raw.chars().count();
    if n > MAX_API_URL {
        return Err(bad(format!(
            "must be at most {MAX_API_URL} characters, got {n}"
        )));
    }
    if raw.chars().any(cco_platform::validate::is_unsafe_char) {
        return Err(bad(
            "must not contain control characters (CR, LF, NUL, ...) or invisible formatting characters".into(),
        ));
    }
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(bad("is required".into()));
    }
    if trimmed.chars().any(char::is_whitespace) {
        return Err(bad("must not contain spaces".into()));
    }
    let url = url::Url::parse(trimmed)
        .map_err(|e| bad(format!("is not a valid URL ({e}): {}", quote(trimmed))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "must start with http:// or https://, got scheme {}",
            quote(url.scheme())
        )));
    }
    // The URL parser reads "http:///host" as "http://host/"; refuse what was not written so.
    let written_host = trimmed
        .split_once("://")
        .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'));
    if !written_host || url.host_str().is_none_or(str::is_empty) {
        return Err(bad(format!("has no host: {}", quote(trimmed))));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not contain user:password@; give the credentials in credentials".into(),
        ));
    }
    if url.port() == Some(0) {
        return Err(bad("port must be 1-65535, got 0".into()));
    }
    if url.fragment().is_some() {
        return Err(bad("must not have a #fragment".into()));
    }
    Ok(trimmed.to_owned())
}

/// The hosts and networks Infinity API URLs may point at (`GATEWAY__INFINITY__ALLOWED_HOSTS`):
/// host names (`api.infin8linx.com`), wildcard suffixes (`*.infin8linx.com`), IP addresses and
/// CIDR networks (`10.20.0.0/16`). A host name matches only name entries and an IP literal only
/// address entries (names are not resolved here). Empty allows any host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    names: Vec<String>,
    suffixes: Vec<String>,
    nets: Vec<IpNet>,
}

impl AllowedHosts {
    /// Parses comma-separated entries; the error names the bad entry.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for (i, entry) in list.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            if let Ok(net) = entry.parse::<IpNet>() {
                out.nets.push(net);
            } else if let Ok(ip) = entry.parse::<std::net::IpAddr>() {
                out.nets.push(IpNet::from(ip));
            } else if let Some(suffix) = entry.strip_prefix("*.") {
                check_host_name(suffix).map_err(|m| format!("entry {}: {m}", i + 1))?;
                out.suffixes
                    .push(format!(".{}", suffix.to_ascii_lowercase()));
            } else {
                check_host_name(entry).map_err(|m| format!("entry {}: {m}", i + 1))?;
                out.names.push(entry.to_ascii_lowercase());
            }
        }
        Ok(out)
    }

    /// True when nothing is listed (any host allowed).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.suffixes.is_empty() && self.nets.is_empty()
    }

    /// Whether the host of `api_url` (already validated) is allowed.
    pub fn allows(&self, api_url: &str) -> bool {
        if self.is_empty() {
            return true;
        }
        let Ok(url) = url::Url::parse(api_url) else {
            return false;
        };
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self
                .nets
                .iter()
                .any(|n| n.contains(&std::net::IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => self
                .nets
                .iter()
                .any(|n| n.contains(&std::net::IpAddr::V6(ip))),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                self.names.contains(&d) || self.suffixes.iter().any(|s| d.ends_with(s.as_str()))
            }
            None => false,
        }
    }

    /// Refuses an `api_url` whose host is not allowed, naming the field.
    pub fn check(&self, api_url: &str) -> Result<(), GwError> {
        if self.allows(api_url) {
            Ok(())
        } else {
            Err(GwError::invalid(
                "api_url",
                "its host is not in this gateway's allowed Infinity hosts (GATEWAY__INFINITY__ALLOWED_HOSTS)",
            ))
        }
    }
}

fn check_host_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a host name, IP address or CIDR",
            quote(name)
        ))
    }
}

/// Parses and deduplicates a caller number pool (1-1000 numbers) in `region`.
fn parse_pool(pool: &[String], region: Region) -> Result<Vec<Phone>, GwError> {
    if pool.is_empty() {
        return Err(GwError::invalid(
            "caller_number_pool",
            "give at least one caller number",
        ));
    }
    if pool.len() > 1_000 {
        return Err(GwError::invalid(
            "caller_number_pool",
            "at most 1000 numbers",
        ));
    }
    let mut out: Vec<Phone> = Vec::with_capacity(pool.len());
    for (i, raw) in pool.iter().enumerate() {
        let p = Phone::parse(raw, region)
            .map_err(|m| GwError::invalid("caller_number_pool", format!("entry {}: {m}", i + 1)))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Generates a callback secret: 32 random bytes, hex.
pub fn generate_secret() -> SecretString {
    let bytes: [u8; 32] = rand::random();
    SecretString::from(hex::encode(bytes))
}

fn validate_secret(s: &SecretString) -> Result<(), GwError> {
    let v = s.expose_secret();
    if v.len() < 16
        || v.len() > 128
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
    {
        return Err(GwError::invalid(
            "callback_secret",
            "must be 16-128 URL-safe characters (letters, digits, - _ . ~)",
        ));
    }
    Ok(())
}

impl TenantConfig {
    /// Builds a new config from client fields, applying defaults; errors name the field.
    /// Returns the config and, when the callback secret was generated, that secret.
    pub fn create(
        tenant_id: TenantId,
        mut f: ConfigFields,
        now: DateTime<Utc>,
    ) -> Result<(Self, Option<SecretString>), GwError> {
        let api_url = validate_api_url(f.api_url.as_deref().unwrap_or_default())?;
        let region = match f.phone_region.take() {
            Some(r) => parse_region(&r).map_err(|m| GwError::invalid("phone_region", m))?,
            None => Region::CN,
        };
        let pool = parse_pool(&f.caller_number_pool.take().unwrap_or_default(), region)?;
        let first = pool.first().cloned().ok_or_else(|| {
            GwError::invalid("caller_number_pool", "give at least one caller number")
        })?;
        let credentials = f.credentials.clone().ok_or_else(|| {
            GwError::invalid("credentials", "give an access_token or app credentials")
        })?;
        let generated = f.callback_secret.is_none().then(generate_secret);
        let mut cfg = Self {
            config_id: Uuid::now_v7(),
            tenant_id,
            supplier_id: String::new(),
            api_url,
            credentials,
            caller_number_pool: pool,
            default_caller_number: first,
            caller_selection: CallerSelection::DefaultNumber,
            call_mode: CallMode::DoubleCall,
            destination_prefix: String::new(),
            max_concurrent_calls: 10,
            call_timeout_seconds: 60,
            api_timeout_ms: 10_000,
            allocation_strategy: Strategy::Lru,
            lease_ttl_seconds: 1_800,
            cooldown_seconds: 0,
            callback_secret: generated.clone().unwrap_or_else(|| SecretString::from("")),
            callback_ip_allowlist: Vec::new(),
            callback_time_zone: chrono_tz::Asia::Shanghai,
            is_active: true,
            phone_region: region,
            api_encoding: ApiEncoding::FormUrlencoded,
            allowed_number_types: Vec::new(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        cfg.apply(f)?;
        Ok((cfg, generated))
    }

    /// Applies the given fields to this config (partial update), validating each; the result
    /// is checked as a whole (the default number must be in the pool).
    pub fn apply(&mut self, f: ConfigFields) -> Result<(), GwError> {
        if let Some(v) = f.supplier_id {
            if v.len() > 64 {
                return Err(GwError::invalid(
                    "supplier_id",
                    "must be at most 64 characters",
                ));
            }
            if !v.is_empty() {
                cco_platform::validate::id(&v, 64)
                    .map_err(|m| GwError::invalid("supplier_id", m))?;
            }
            self.supplier_id = v;
        }
        if let Some(v) = f.api_url {
            self.api_url = validate_api_url(&v)?;
        }
        if let Some(c) = f.credentials {
            self.credentials = c.validate()?;
        } else {
            self.credentials = self.credentials.clone().validate()?;
        }
        if let Some(r) = f.phone_region {
            self.phone_region =
                parse_region(&r).map_err(|m| GwError::invalid("phone_region", m))?;
        }
        if let Some(pool) = f.caller_number_pool {
            let out = parse_pool(&pool, self.phone_region)?;
            if !out.contains(&self.default_caller_number)
                && f.default_caller_number.is_none()
                && let Some(first) = out.first()
            {
                self.default_caller_number = first.clone();
            }
            self.caller_number_pool = out;
        }
        if let Some(d) = f.default_caller_number {
            let p = Phone::parse(&d, self.phone_region)
                .map_err(|m| GwError::invalid("default_caller_number", m))?;
            if !self.caller_number_pool.contains(&p) {
                return Err(GwError::invalid(
                    "default_caller_number",
                    format!("{} is not in caller_number_pool", p.masked()),
                ));
            }
            self.default_caller_number = p;
        }
        if let Some(v) = f.caller_selection {
            self.caller_selection = v;
        }
        if let Some(v) = f.call_mode {
            self.call_mode = v;
        }
        if let Some(v) = f.destination_prefix {
            if v.len() > 8 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(GwError::invalid(
                    "destination_prefix",
                    format!("must be 0-8 digits, got {}", quote(&v)),
                ));
            }
            self.destination_prefix = v;
        }
        if let Some(v) = f.max_concurrent_calls {
            self.max_concurrent_calls = range("max_concurrent_calls", v, 1, 10_000)?;
        }
        if let Some(v) = f.call_timeout_seconds {
            self.call_timeout_seconds = range("call_timeout_seconds", v, 10, 300)?;
        }
        if let Some(v) = f.api_timeout_ms {
            self.api_timeout_ms = range("api_timeout_ms", v, 500, 60_000)?;
        }
        if let Some(v) = f.allocation_strategy {
            self.allocation_strategy = v;
        }
        if let Some(v) = f.lease_ttl_seconds {
            self.lease_ttl_seconds = range("lease_ttl_seconds", v, 10, 86_400)?;
        }
        if let Some(v) = f.cooldown_seconds {
            self.cooldown_seconds = range("cooldown_seconds", v, 0, 3_600)?;
        }
        if let Some(s) = f.callback_secret {
            validate_secret(&s)?;
            self.callback_secret = s;
        }
        if let Some(list) = f.callback_ip_allowlist {
            if list.len() > 100 {
                return Err(GwError::invalid(
                    "callback_ip_allowlist",
                    "at most 100 entries",
                ));
            }
            let mut nets = Vec::with_capacity(list.len());
            for (i, raw) in list.iter().enumerate() {
                let raw = raw.trim();
                let net = raw
                    .parse::<IpNet>()
                    .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        GwError::invalid(
                            "callback_ip_allowlist",
                            format!(
                                "entry {}: {} is not an IP address or CIDR",
                                i + 1,
                                quote(raw)
                            ),
                        )
                    })?;
                if !nets.contains(&net) {
                    nets.push(net);
                }
            }
            self.callback_ip_allowlist = nets;
        }
        if let Some(tz) = f.callback_time_zone {
            self.callback_time_zone = tz.parse().map_err(|_| {
                GwError::invalid(
                    "callback_time_zone",
                    format!(
                        "must be an IANA time zone such as Asia/Shanghai, got {}",
                        quote(&tz)
                    ),
                )
            })?;
        }
        if let Some(v) = f.is_active {
            self.is_active = v;
        }
        if let Some(v) = f.api_encoding {
            self.api_encoding = v;
        }
        if let Some(mut kinds) = f.allowed_number_types {
            if kinds.contains(&NumberKind::Regular) {
                return Err(GwError::invalid(
                    "allowed_number_types",
                    "list only costly types (premium_rate, satellite, international_network, personal_number)",
                ));
            }
            kinds.sort();
            kinds.dedup();
            self.allowed_number_types = kinds;
        }
        validate_secret(&self.callback_secret)?;
        Ok(())
    }

    /// Whether `ip` may post callbacks (an empty allow-list allows any address).
    pub fn callback_ip_allowed(&self, ip: std::net::IpAddr) -> bool {
        self.callback_ip_allowlist.is_empty()
            || self.callback_ip_allowlist.iter().any(|n| n.contains(&ip))
    }
}

/// What the allocator needs to know about a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Active.
    pub active: bool,
    /// Config id.
    pub config_id: Uuid,
    /// Default strategy.
    pub strategy: Strategy,
    /// Cap.
    pub max_concurrent_calls: u32,
    /// Lease TTL.
    pub lease_ttl_seconds: u32,
    /// Cooldown.
    pub cooldown_seconds: u32,
}

impl From<&TenantConfig> for Policy {
    fn from(c: &TenantConfig) -> Self {
        Self {
            active: c.is_active,
            config_id: c.config_id,
            strategy: c.allocation_strategy,
            max_concurrent_calls: c.max_concurrent_calls,
            lease_ttl_seconds: c.lease_ttl_seconds,
            cooldown_seconds: c.cooldown_seconds,
        }
    }
}
