//! Typed settings of the gateway: defaults, then the TOML file named by
//! `GATEWAY_CONFIG_FILE`, then `GATEWAY__SECTION__KEY` environment variables.

use cco_platform::auth::AuthSettings;
pub use cco_platform::coalesce::CoalesceSettings;
use cco_platform::db::DatabaseSettings;
use cco_platform::listen::{GrpcListener, HttpListener};
use cco_platform::telemetry::LogSettings;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::crypto::{Cipher, DEV_KEYS};
use crate::domain::config::AllowedHosts;

/// All settings of the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The gRPC listener.
    pub grpc: GrpcListener,
    /// The HTTP listener: the Infinity callback, `/metrics`, `/healthz`.
    pub http: HttpListener,
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
    /// Which Infinity servers tenant configs may point at.
    pub infinity: InfinitySettings,
    /// Coalescing of concurrent call-path writes: dials accepted (marked ringing) and releases
    /// confirmed (cleared from the outbox), each group in one transaction.
    pub coalesce: CoalesceSettings,
    /// Live call events (WatchCalls) and their relay to NATS JetStream.
    pub events: EventsSettings,
    /// The compliance gate: how long its audit is kept, how long overrides may last.
    pub compliance: ComplianceSettings,
    /// Logging.
    pub log: LogSettings,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcListener::on_port(50052),
            http: HttpListener::on_port(8080),
            database: DatabaseSettings::sqlite_default("gateway.db"),
            auth: AuthSettings::default(),
            crypto: CryptoSettings::default(),
            allocator: AllocatorSettings::default(),
            calls: CallSettings::default(),
            infinity: InfinitySettings::default(),
            coalesce: CoalesceSettings::default(),
            events: EventsSettings::default(),
            compliance: ComplianceSettings::default(),
            log: LogSettings::default(),
            shutdown_grace_seconds: 30,
        }
    }
}

/// The compliance gate (README "Compliance").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComplianceSettings {
    /// Days the audit of the gate's decisions is kept (1-3650).
    pub decision_retention_days: u64,
    /// Longest validity of a supervisor's override, in seconds (60-604800).
    pub max_override_seconds: u32,
    /// How often expired decisions, attempts, overrides and do-not-call entries are deleted.
    pub prune_interval_seconds: u64,
}

impl Default for ComplianceSettings {
    fn default() -> Self {
        Self {
            decision_retention_days: 1_095,
            max_override_seconds: 86_400,
            prune_interval_seconds: 3_600,
        }
    }
}

impl ComplianceSettings {
    fn validate(&self) -> anyhow::Result<()> {
        cco_platform::config::check_range(
            "compliance.decision_retention_days",
            self.decision_retention_days,
            1,
            3_650,
        )?;
        cco_platform::config::check_range(
            "compliance.max_override_seconds",
            u64::from(self.max_override_seconds),
            60,
            604_800,
        )?;
        cco_platform::config::check_range(
            "compliance.prune_interval_seconds",
            self.prune_interval_seconds,
            1,
            86_400,
        )
    }

    /// The gate's settings.
    pub fn gate(&self) -> crate::service::ComplianceSettings {
        crate::service::ComplianceSettings {
            decision_retention: chrono::Duration::days(
                i64::try_from(self.decision_retention_days).unwrap_or(3_650),
            ),
            max_override_seconds: self.max_override_seconds,
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

/// Live call events and their relay to NATS JetStream (`GATEWAY__EVENTS__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSettings {
    /// Events are kept this many hours for resuming watchers and the relay (24-8,760).
    pub retention_hours: u64,
    /// Events a watcher may fall behind before its stream ends with RESOURCE_EXHAUSTED
    /// (16-65,536).
    pub watch_buffer: u32,
    /// How often a replica with watchers looks for events other replicas wrote (50-5,000 ms).
    pub poll_interval_ms: u64,
    /// How often events nobody on this replica watches get their ids (PostgreSQL; 50-3,600,000
    /// ms): the delay before the NATS relay can publish them.
    pub sequence_interval_ms: u64,
    /// Watches (WatchCalls streams) one replica serves at once (1-100,000); keep it under
    /// `grpc.max_in_flight`, since each open stream holds one of those slots.
    pub max_watches: u32,
    /// Watches one API key or person may have open on one replica (1-10,000).
    pub max_watches_per_principal: u32,
    /// The NATS server to publish events to (`nats://host:4222`); empty turns the relay off.
    pub nats_url: String,
    /// The JetStream stream, created when missing with the subjects `<prefix>.>`.
    pub nats_stream: String,
    /// Events go to `<prefix>.<tenant>.<event type>` (dots in a tenant id become `_`).
    pub nats_subject_prefix: String,
    /// `protobuf` (the `CallEvent` message) or `json` (its proto3 JSON form).
    pub nats_payload: String,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            retention_hours: 72,
            watch_buffer: 1_024,
            poll_interval_ms: 200,
            sequence_interval_ms: 1_000,
            max_watches: 1_024,
            max_watches_per_principal: 8,
            nats_url: String::new(),
            nats_stream: "CCO_CALLS".into(),
            nats_subject_prefix: "cco.calls".into(),
            nats_payload: "protobuf".into(),
        }
    }
}

impl EventsSettings {
    fn validate(&self) -> anyhow::Result<()> {
        cco_platform::config::check_range(
            "events.retention_hours",
            self.retention_hours,
            24,
            8_760,
        )?;
        cco_platform::config::check_range(
            "events.watch_buffer",
            u64::from(self.watch_buffer),
            16,
            65_536,
        )?;
        cco_platform::config::check_range(
            "events.poll_interval_ms",
            self.poll_interval_ms,
            50,
            5_000,
        )?;
        cco_platform::config::check_range(
            "events.sequence_interval_ms",
            self.sequence_interval_ms,
            50,
            3_600_000,
        )?;
        cco_platform::config::check_range(
            "events.max_watches",
            u64::from(self.max_watches),
            1,
            100_000,
        )?;
        cco_platform::config::check_range(
            "events.max_watches_per_principal",
            u64::from(self.max_watches_per_principal),
            1,
            10_000,
        )?;
        if !self.nats_url.is_empty() && !self.nats_url.starts_with("nats://") {
            anyhow::bail!(
                "events.nats_url: must be nats://host:port (or empty to turn the relay off)"
            );
        }
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !token_ok(&self.nats_stream) {
            anyhow::bail!("events.nats_stream: letters, digits, _ and - only");
        }
        if !self.nats_subject_prefix.split('.').all(token_ok) {
            anyhow::bail!(
                "events.nats_subject_prefix: dot-separated tokens of letters, digits, _ and -"
            );
        }
        if !matches!(self.nats_payload.as_str(), "protobuf" | "json") {
            anyhow::bail!("events.nats_payload: must be protobuf or json");
        }
        Ok(())
    }
}

/// Which Infinity servers tenant configs may point at.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfinitySettings {
    /// Comma-separated host names (`api.example.com`), wildcard suffixes (`*.example.com`), IP
    /// addresses and CIDR networks an `api_url` may point at; empty allows any host. Checked
    /// when a config is saved and again before every request to Infinity.
    pub allowed_hosts: String,
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
    /// Tenant configs and collectors read by calls and callbacks are cached this long at most
    /// (every replica drops its cache when either changes anywhere); 0 turns the cache off.
    pub cache_ttl_seconds: u64,
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
            cache_ttl_seconds: 60,
        }
    }
}

impl Settings {
    /// The call flow's tuning as the services use it.
    pub fn tuning(&self) -> crate::service::CallTuning {
        let c = &self.calls;
        // Validated to at most 30 days (see `Settings::validate`), far inside TimeDelta's range.
        let secs = |s: u64| {
            chrono::Duration::try_seconds(i64::try_from(s).unwrap_or(0)).unwrap_or_default()
        };
        crate::service::CallTuning {
            reconcile_after: secs(c.reconcile_after_seconds),
            max_call_age: secs(c.max_call_age_seconds),
            reconcile_every: secs(c.reconcile_every_seconds.max(1)),
            cache_ttl: std::time::Duration::from_secs(c.cache_ttl_seconds),
            coalesce: self.coalesce.limits(),
            events: crate::service::EventSettings {
                retention: chrono::Duration::try_hours(
                    i64::try_from(self.events.retention_hours).unwrap_or(72),
                )
                .unwrap_or_default(),
                buffer: usize::try_from(self.events.watch_buffer).unwrap_or(1_024),
                poll: std::time::Duration::from_millis(self.events.poll_interval_ms),
                sequence_every: std::time::Duration::from_millis(self.events.sequence_interval_ms),
                max_watches: usize::try_from(self.events.max_watches).unwrap_or(1_024),
                max_watches_per_principal: usize::try_from(self.events.max_watches_per_principal)
                    .unwrap_or(8),
            },
        }
    }

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
        self.auth.keys()?;
        self.auth.jwt.verifier()?;
        self.cipher()?;
        self.grpc.validate("grpc")?;
        self.http.validate("http")?;
        self.log.validate("log")?;
        self.allowed_hosts()?;
        self.events.validate()?;
        self.compliance.validate()?;
        let c = &self.calls;
        const DAY: u64 = 86_400;
        for (name, v, lo, hi) in [
            (
                "calls.outbox_interval_ms",
                c.outbox_interval_ms,
                1,
                3_600_000,
            ),
            (
                "calls.reconcile_interval_ms",
                c.reconcile_interval_ms,
                1,
                3_600_000,
            ),
            (
                "calls.reconcile_after_seconds",
                c.reconcile_after_seconds,
                0,
                7 * DAY,
            ),
            (
                "calls.reconcile_every_seconds",
                c.reconcile_every_seconds,
                1,
                DAY,
            ),
            (
                "calls.max_call_age_seconds",
                c.max_call_age_seconds,
                1,
                30 * DAY,
            ),
            (
                "calls.signature_tolerance_seconds",
                c.signature_tolerance_seconds,
                1,
                DAY,
            ),
            ("calls.cache_ttl_seconds", c.cache_ttl_seconds, 0, DAY),
            (
                "allocator.timeout_ms",
                self.allocator.timeout_ms,
                1,
                600_000,
            ),
            (
                "shutdown_grace_seconds",
                self.shutdown_grace_seconds,
                0,
                3_600,
            ),
        ] {
            cco_platform::config::check_range(name, v, lo, hi)?;
        }
        self.coalesce.check()?;
        if !self.http.enabled {
            anyhow::bail!("http.enabled: the callback port cannot be turned off");
        }
        if !(self.allocator.url.starts_with("http://")
            || self.allocator.url.starts_with("https://"))
        {
            anyhow::bail!("allocator.url: must be an http:// or https:// URL");
        }
        Ok(())
    }

    /// The parsed allow-list of Infinity hosts.
    ///
    /// # Errors
    /// Names the bad entry.
    pub fn allowed_hosts(&self) -> anyhow::Result<AllowedHosts> {
        AllowedHosts::parse(&self.infinity.allowed_hosts)
            .map_err(|e| anyhow::anyhow!("infinity.allowed_hosts: {e}"))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type Spoil = fn(&mut Settings);

    /// Out-of-range values of the call path's settings are refused with the key named.
    #[test]
    fn bad_values_name_their_key() {
        let cases: [(&str, Spoil); 16] = [
            ("calls.cache_ttl_seconds", |s| {
                s.calls.cache_ttl_seconds = 86_401;
            }),
            ("events.retention_hours", |s| s.events.retention_hours = 23),
            ("events.watch_buffer", |s| s.events.watch_buffer = 8),
            ("events.poll_interval_ms", |s| {
                s.events.poll_interval_ms = 10
            }),
            ("events.sequence_interval_ms", |s| {
                s.events.sequence_interval_ms = 0;
            }),
            ("events.max_watches", |s| s.events.max_watches = 0),
            ("events.max_watches_per_principal", |s| {
                s.events.max_watches_per_principal = 0;
            }),
            ("events.nats_url", |s| {
                s.events.nats_url = "http://127.0.0.1:4222".into();
            }),
            ("events.nats_subject_prefix", |s| {
                s.events.nats_subject_prefix = "cco.*".into();
            }),
            ("auth.jwt.secret", |s| s.auth.jwt.secret = "short".into()),
            ("auth.jwt.jwks_path", |s| {
                s.auth.jwt.jwks_path = "/nonexistent/jwks.json".into();
            }),
            ("coalesce.max_batch", |s| s.coalesce.max_batch = 0),
            ("coalesce.in_flight", |s| s.coalesce.in_flight = 65),
            ("log.otlp_endpoint", |s| {
                s.log.otlp_endpoint = "collector:4317".into();
            }),
            ("log.otlp_endpoint", |s| {
                s.log.otlp_endpoint = "http://".into();
            }),
            ("log.otlp_endpoint", |s| {
                s.log.otlp_endpoint = "https://collector.example:4317".into();
            }),
        ];
        for (key, spoil) in cases {
            let mut s = Settings::default();
            s.validate().unwrap();
            spoil(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "want {key} named, got {err}");
        }
        let mut s = Settings::default();
        s.calls.cache_ttl_seconds = 0;
        s.log.otlp_endpoint = "http://collector.example:4317".into();
        s.validate().unwrap();
    }
}
