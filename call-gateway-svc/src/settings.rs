//! Typed settings of the gateway: defaults, then the TOML file named by
//! `GATEWAY_CONFIG_FILE`, then `GATEWAY__SECTION__KEY` environment variables.

use cco_platform::auth::KeyStore;
use cco_platform::db::DatabaseSettings;
use cco_platform::telemetry::LogSettings;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::crypto::{Cipher, DEV_KEYS};

/// All settings of the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The gRPC listener.
    pub grpc: GrpcSettings,
    /// The HTTP listener: `/metrics`, `/healthz` (and the Infinity callback, next).
    pub http: HttpSettings,
    /// The database.
    pub database: DatabaseSettings,
    /// API keys.
    pub auth: AuthSettings,
    /// Encryption of secrets at rest.
    pub crypto: CryptoSettings,
    /// The allocator.
    pub allocator: AllocatorSettings,
    /// The call flow's background work.
    pub calls: CallSettings,
    /// Logging.
    pub log: LogSettings,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings::default(),
            http: HttpSettings::default(),
            database: DatabaseSettings::sqlite_default("gateway.db"),
            auth: AuthSettings::default(),
            crypto: CryptoSettings::default(),
            allocator: AllocatorSettings::default(),
            calls: CallSettings::default(),
            log: LogSettings::default(),
            shutdown_grace_seconds: 30,
        }
    }
}

/// The gRPC listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSettings {
    /// Interface.
    pub host: String,
    /// Port; 0 picks one.
    pub port: u16,
    /// TLS (and mutual TLS) for the port; plaintext when not set.
    pub tls: cco_platform::tls::ServerTls,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 50052,
            tls: cco_platform::tls::ServerTls::default(),
        }
    }
}

/// The HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Interface.
    pub host: String,
    /// Port; 0 picks one.
    pub port: u16,
    /// TLS (https) for the callback port; plaintext when not set.
    pub tls: cco_platform::tls::ServerTls,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            tls: cco_platform::tls::ServerTls::default(),
        }
    }
}

/// API keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `role:key[:tenant,tenant]` entries separated by `;` (roles: admin, caller, peer); a key
    /// may be written `sha256:<hex digest>`.
    pub api_keys: SecretString,
    /// Requests per second one key may make on average; 0 turns the limit off.
    pub rate_limit_per_second: u32,
    /// Requests one key may make in a burst.
    pub rate_limit_burst: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            api_keys: SecretString::from(
                "admin:dev-admin-key;caller:dev-caller-key;peer:dev-peer-key",
            ),
            rate_limit_per_second: 2_000,
            rate_limit_burst: 4_000,
        }
    }
}

/// Encryption of secrets at rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CryptoSettings {
    /// `key_id:base64(32 bytes)` entries separated by `;`. Keep old keys listed while values
    /// sealed with them remain.
    pub keys: SecretString,
    /// The key id new values are sealed with; empty means the first listed.
    pub active_key_id: String,
}

impl Default for CryptoSettings {
    fn default() -> Self {
        Self {
            keys: SecretString::from(DEV_KEYS),
            active_key_id: String::new(),
        }
    }
}

/// How the gateway reaches the allocator.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllocatorSettings {
    /// The allocator's gRPC endpoint.
    pub url: String,
    /// The key presented to the allocator (role peer).
    pub api_key: SecretString,
    /// TLS to the allocator (set with an https:// url).
    pub tls: cco_platform::tls::ClientTls,
    /// Deadline of one allocator call.
    pub timeout_ms: u64,
}

impl Default for AllocatorSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:50051".into(),
            api_key: SecretString::from("dev-peer-key"),
            tls: cco_platform::tls::ClientTls::default(),
            timeout_ms: 3_000,
        }
    }
}

/// The call flow's background work: the release outbox and the reconciler.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallSettings {
    /// How often owed lease releases are retried.
    pub outbox_interval_ms: u64,
    /// How often the reconciler looks for open calls.
    pub reconcile_interval_ms: u64,
    /// An open call is first looked up with GetBill this long after it was placed (ring
    /// timeout plus grace is a good value).
    pub reconcile_after_seconds: u64,
    /// How often one open call is looked up again.
    pub reconcile_every_seconds: u64,
    /// An open call with no record from Infinity after this long is expired and its lease
    /// freed. Must exceed the longest call you expect (leases of open calls are renewed).
    pub max_call_age_seconds: u64,
    /// A signed callback (`x-cco-timestamp` / `x-cco-signature`) is accepted this many seconds
    /// either side of its timestamp.
    pub signature_tolerance_seconds: u64,
}

impl Default for CallSettings {
    fn default() -> Self {
        Self {
            outbox_interval_ms: 1_000,
            reconcile_interval_ms: 5_000,
            reconcile_after_seconds: 90,
            reconcile_every_seconds: 30,
            max_call_age_seconds: 7_200,
            signature_tolerance_seconds: 300,
        }
    }
}

impl CallSettings {
    /// The timings as the service uses them.
    pub fn tuning(&self) -> crate::service::CallTuning {
        let secs = |s: u64| chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000));
        crate::service::CallTuning {
            reconcile_after: secs(self.reconcile_after_seconds),
            max_call_age: secs(self.max_call_age_seconds),
            reconcile_every: secs(self.reconcile_every_seconds.max(1)),
        }
    }
}

impl Settings {
    /// Loads defaults, the optional file and the environment, then validates.
    ///
    /// # Errors
    /// Names the setting that is wrong.
    pub fn load() -> anyhow::Result<Self> {
        let s: Self = cco_platform::config::load("GATEWAY")?;
        s.validate()?;
        Ok(s)
    }

    /// Checks values that types cannot.
    ///
    /// # Errors
    /// Names the setting that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.keys()?;
        self.cipher()?;
        if !(self.allocator.url.starts_with("http://")
            || self.allocator.url.starts_with("https://"))
        {
            anyhow::bail!("allocator.url: must be an http:// or https:// URL");
        }
        Ok(())
    }

    /// The parsed API keys.
    ///
    /// # Errors
    /// Names the malformed entry.
    pub fn keys(&self) -> anyhow::Result<KeyStore> {
        KeyStore::parse(self.auth.api_keys.expose_secret()).map_err(|e| anyhow::anyhow!(e))
    }

    /// The key ring.
    ///
    /// # Errors
    /// Names the malformed entry.
    pub fn cipher(&self) -> anyhow::Result<Cipher> {
        Cipher::from_settings(self.crypto.keys.expose_secret(), &self.crypto.active_key_id)
            .map_err(|e| anyhow::anyhow!(e))
    }
}
