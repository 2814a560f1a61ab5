//! Typed settings of the allocator: defaults, then the TOML file named by
//! `ALLOCATOR_CONFIG_FILE`, then `ALLOCATOR__SECTION__KEY` environment variables.

use cco_platform::auth::AuthSettings;
pub use cco_platform::coalesce::CoalesceSettings;
use cco_platform::db::DatabaseSettings;
use cco_platform::listen::{GrpcListener, HttpListener};
use cco_platform::telemetry::LogSettings;
use secrecy::SecretString;
use serde::Deserialize;

use crate::domain::Strategy;

/// All settings of the allocator.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The gRPC listener.
    pub grpc: GrpcListener,
    /// The Prometheus `/metrics` listener.
    pub metrics: HttpListener,
    /// The database.
    pub database: DatabaseSettings,
    /// API keys.
    pub auth: AuthSettings,
    /// Where tenant policies come from.
    pub policy: PolicySettings,
    /// The expired-lease reaper.
    pub reaper: ReaperSettings,
    /// Coalescing of concurrent acquires and releases (PostgreSQL).
    pub coalesce: CoalesceSettings,
    /// Logging.
    pub log: LogSettings,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcListener::on_port(50051),
            metrics: HttpListener::on_port(9464),
            database: DatabaseSettings::sqlite_default("allocator.db"),
            auth: AuthSettings::default(),
            policy: PolicySettings::default(),
            reaper: ReaperSettings::default(),
            coalesce: CoalesceSettings::default(),
            log: LogSettings::default(),
            shutdown_grace_seconds: 30,
        }
    }
}

/// Where tenant policies come from.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicySourceKind {
    /// Ask the gateway's `TenantPolicies` service (the default).
    Grpc,
    /// Use the `static_*` settings for every tenant (standalone use without the gateway).
    Static,
}

/// Tenant policy settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// `grpc` or `static`.
    pub source: PolicySourceKind,
    /// The gateway's gRPC endpoint (grpc source).
    pub gateway_url: String,
    /// The key the allocator presents to the gateway (role peer).
    pub gateway_api_key: SecretString,
    /// TLS to the gateway (set with an https:// gateway_url).
    pub gateway_tls: cco_platform::tls::ClientTls,
    /// How long a fetched policy is used before it is fetched again.
    pub cache_ttl_ms: u64,
    /// How long a cached policy may still be used while the gateway is unreachable.
    pub stale_ttl_ms: u64,
    /// Deadline of one policy fetch.
    pub timeout_ms: u64,
    /// Static source: tenants are active.
    pub static_active: bool,
    /// Static source: the config id every tenant has (empty: any config id is accepted).
    pub static_config_id: String,
    /// Static source: `lru`, `round_robin` or `collector_affinity`.
    pub static_strategy: String,
    /// Static source: most live leases per tenant; 0 for no cap.
    pub static_max_concurrent_calls: u32,
    /// Lease time when neither the request nor the policy gives one.
    pub default_lease_ttl_seconds: u32,
    /// Static source: rest after a release, in seconds.
    pub static_cooldown_seconds: u32,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            source: PolicySourceKind::Grpc,
            gateway_url: "http://127.0.0.1:50052".into(),
            gateway_api_key: SecretString::from("dev-peer-key"),
            gateway_tls: cco_platform::tls::ClientTls::default(),
            cache_ttl_ms: 2_000,
            stale_ttl_ms: 60_000,
            timeout_ms: 2_000,
            static_active: true,
            static_config_id: String::new(),
            static_strategy: "lru".into(),
            static_max_concurrent_calls: 0,
            default_lease_ttl_seconds: 1_800,
            static_cooldown_seconds: 0,
        }
    }
}

/// The reaper that frees expired leases.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReaperSettings {
    /// Sweep interval; a lease is freed at most this long after it expires.
    pub interval_ms: u64,
    /// Leases freed per transaction.
    pub batch_size: u32,
}

impl Default for ReaperSettings {
    fn default() -> Self {
        Self {
            interval_ms: 1_000,
            batch_size: 500,
        }
    }
}

impl Settings {
    /// Loads defaults, the optional file and the environment, then validates.
    ///
    /// # Errors
    /// Names the setting that is wrong.
    pub fn load() -> anyhow::Result<Self> {
        let s: Self = cco_platform::config::load("ALLOCATOR")?;
        s.validate()?;
        Ok(s)
    }

    /// Checks values that types cannot.
    ///
    /// # Errors
    /// Names the setting that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.auth.keys()?;
        self.auth.jwt.verifier()?;
        self.log.validate("log")?;
        if Strategy::parse(&self.policy.static_strategy).is_none() {
            anyhow::bail!(
                "policy.static_strategy: must be lru, round_robin or collector_affinity, got {:?}",
                self.policy.static_strategy
            );
        }
        if !(10..=86_400).contains(&self.policy.default_lease_ttl_seconds) {
            anyhow::bail!("policy.default_lease_ttl_seconds: must be 10-86400");
        }
        if self.policy.static_max_concurrent_calls > 10_000 {
            anyhow::bail!("policy.static_max_concurrent_calls: must be 0-10000");
        }
        if self.policy.source == PolicySourceKind::Grpc
            && !(self.policy.gateway_url.starts_with("http://")
                || self.policy.gateway_url.starts_with("https://"))
        {
            anyhow::bail!("policy.gateway_url: must be an http:// or https:// URL");
        }
        self.grpc.validate("grpc")?;
        self.metrics.validate("metrics")?;
        if self.policy.source == PolicySourceKind::Grpc {
            self.policy
                .gateway_tls
                .validate("policy.gateway_tls", &self.policy.gateway_url)?;
        }
        self.coalesce.check()?;
        if self.reaper.batch_size == 0 {
            anyhow::bail!("reaper.batch_size: must be positive");
        }
        for (name, v, lo, hi) in [
            ("reaper.interval_ms", self.reaper.interval_ms, 1, 3_600_000),
            (
                "policy.cache_ttl_ms",
                self.policy.cache_ttl_ms,
                0,
                86_400_000,
            ),
            (
                "policy.stale_ttl_ms",
                self.policy.stale_ttl_ms,
                0,
                86_400_000,
            ),
            ("policy.timeout_ms", self.policy.timeout_ms, 1, 600_000),
            (
                "shutdown_grace_seconds",
                self.shutdown_grace_seconds,
                0,
                3_600,
            ),
        ] {
            cco_platform::config::check_range(name, v, lo, hi)?;
        }
        Ok(())
    }
}
