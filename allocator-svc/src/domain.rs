//! Validated domain types and the service error. Nothing here knows about tonic or sqlx.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The service's error: what went wrong, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// A request field is malformed or out of range.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field, as named in the contract.
        field: &'static str,
        /// The rule broken.
        message: String,
    },
    /// An id names nothing.
    #[error("{0}")]
    NotFound(String),
    /// The state forbids the change.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No free extension, or the tenant's cap is reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (the database, the gateway's policy service) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The database kept aborting the transaction for concurrent ones (deadlocks, lock-wait
    /// timeouts) after the store's retries; the client may try again.
    #[error("{0}")]
    Contention(String),
    /// The caller's key may not touch this tenant.
    #[error("{0}")]
    PermissionDenied(String),
    /// A bug or an unexpected database failure; details are logged, not sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AllocError {
    /// Builds an `InvalidArgument` for `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

cco_platform::id_type!(
    /// A tenant id: 1-64 characters of `[A-Za-z0-9_.:-]`.
    TenantId,
    64,
    AllocError
);
cco_platform::id_type!(
    /// A collector id: 1-64 characters of `[A-Za-z0-9_.:-]`.
    CollectorId,
    64,
    AllocError
);
cco_platform::id_type!(
    /// A caller's request id for an idempotent acquire: 1-128 characters of `[A-Za-z0-9_.:-]`.
    RequestId,
    128,
    AllocError
);
cco_platform::id_type!(
    /// A tenant's Infinity config id: up to 64 characters of `[A-Za-z0-9_.:-]`.
    ConfigId,
    64,
    AllocError
);

impl ConfigId {
    /// Parses an optional config id: empty stays empty.
    pub fn parse_optional(field: &'static str, value: &str) -> Result<Option<Self>, AllocError> {
        if value.is_empty() {
            Ok(None)
        } else {
            Self::parse(field, value).map(Some)
        }
    }
}

/// An extension number as Infinity knows it: 1-32 digits without leading zeros ("0" alone is
/// fine), surrounding whitespace trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtensionNumber(String);

impl ExtensionNumber {
    /// Validates a number; the error text says what is wrong (without the field name).
    pub fn parse_reason(value: &str) -> Result<Self, String> {
        let v = value.trim();
        if v.is_empty() {
            return Err("is empty".into());
        }
        if !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "must contain only digits, got {}",
                cco_platform::validate::quote(v)
            ));
        }
        if v.len() > 32 {
            return Err(format!("must be at most 32 digits, got {}", v.len()));
        }
        if v.len() > 1 && v.starts_with('0') {
            // Pools are ordered numerically (round robin), and 0009001 would sit beside 9001 as
            // another extension with the same value.
            let value = match v.trim_start_matches('0') {
                "" => "0",
                rest => rest,
            };
            return Err(format!(
                "must not start with 0 (extension numbers are ordered by value: write {value})"
            ));
        }
        Ok(Self(v.to_owned()))
    }

    /// Validates a number; errors name `field`.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, AllocError> {
        Self::parse_reason(value).map_err(|m| AllocError::invalid(field, m))
    }

    /// The number as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses a UUID field.
pub fn parse_uuid(field: &'static str, value: &str) -> Result<Uuid, AllocError> {
    if value.is_empty() {
        return Err(AllocError::invalid(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| {
        AllocError::invalid(
            field,
            format!(
                "must be a UUID, got {}",
                cco_platform::validate::quote(value)
            ),
        )
    })
}

/// How a free extension is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Least recently released first; never-used first of all.
    Lru,
    /// Number order from the tenant's cursor, wrapping.
    RoundRobin,
    /// The collector's last extension if free, else LRU.
    CollectorAffinity,
}

impl Strategy {
    /// The name stored in the lease history.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::RoundRobin => "round_robin",
            Self::CollectorAffinity => "collector_affinity",
        }
    }

    /// Parses a stored or configured name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "lru" => Some(Self::Lru),
            "round_robin" => Some(Self::RoundRobin),
            "collector_affinity" => Some(Self::CollectorAffinity),
            _ => None,
        }
    }
}

/// The state of an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtStatus {
    /// Free.
    Available,
    /// Held by a live lease.
    InUse,
    /// Out of rotation.
    Offline,
}

impl ExtStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::InUse => "in_use",
            Self::Offline => "offline",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "available" => Some(Self::Available),
            "in_use" => Some(Self::InUse),
            "offline" => Some(Self::Offline),
            _ => None,
        }
    }
}

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    /// The call ended (Infinity's callback).
    CallEnded,
    /// The dial was refused or never sent.
    DialFailed,
    /// Freed by an operator.
    Manual,
    /// Freed by ForceReleaseCollector.
    CollectorForced,
    /// Freed by the reaper after expiry.
    Expired,
    /// The extension was forced offline.
    ExtensionOffline,
    /// The extension was deleted with force.
    ExtensionDeleted,
    /// The caller gave up before using it.
    Cancelled,
    /// Settled by reconciliation.
    Reconciled,
}

impl ReleaseReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallEnded => "call_ended",
            Self::DialFailed => "dial_failed",
            Self::Manual => "manual",
            Self::CollectorForced => "collector_forced",
            Self::Expired => "expired",
            Self::ExtensionOffline => "extension_offline",
            Self::ExtensionDeleted => "extension_deleted",
            Self::Cancelled => "cancelled",
            Self::Reconciled => "reconciled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::CallEnded,
            Self::DialFailed,
            Self::Manual,
            Self::CollectorForced,
            Self::Expired,
            Self::ExtensionOffline,
            Self::ExtensionDeleted,
            Self::Cancelled,
            Self::Reconciled,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A tenant's allocation policy, from the gateway or static configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicy {
    /// False: no new leases.
    pub active: bool,
    /// The tenant's config id; empty when unknown.
    pub config_id: String,
    /// The default strategy.
    pub default_strategy: Strategy,
    /// Most live leases at once; `None` means no cap.
    pub max_concurrent_calls: Option<u32>,
    /// Lease time when a request gives none.
    pub lease_ttl_seconds: u32,
    /// Rest after a release.
    pub cooldown_seconds: u32,
}

/// One lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// UUID v7.
    pub lease_id: Uuid,
    /// The extension leased.
    pub extension_id: Uuid,
    /// Its number.
    pub extension_number: String,
    /// The owner.
    pub tenant_id: String,
    /// The collector.
    pub collector_id: String,
    /// The caller's request id.
    pub request_id: String,
    /// The strategy that picked it.
    pub strategy: Strategy,
    /// The extension's fencing counter at this lease.
    pub fencing_token: i64,
    /// Granted at.
    pub acquired_at: DateTime<Utc>,
    /// Expires at.
    pub expires_at: DateTime<Utc>,
    /// Ended at.
    pub released_at: Option<DateTime<Utc>>,
    /// Why it ended.
    pub release_reason: Option<ReleaseReason>,
}

/// One extension.
#[derive(Debug, Clone, PartialEq)]
pub struct Extension {
    /// UUID v7.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: String,
    /// Config id.
    pub config_id: String,
    /// Number.
    pub number: String,
    /// Status.
    pub status: ExtStatus,
    /// Live lease.
    pub current_lease_id: Option<Uuid>,
    /// Holder.
    pub current_collector_id: Option<String>,
    /// Live lease expiry.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Fencing counter.
    pub fencing_token: i64,
    /// Last holder.
    pub last_collector_id: Option<String>,
    /// Last leased.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Last freed.
    pub last_released_at: Option<DateTime<Utc>>,
    /// Cooldown end.
    pub available_at: Option<DateTime<Utc>>,
    /// Times leased.
    pub use_count: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Changed.
    pub updated_at: DateTime<Utc>,
}

/// A tenant's pool by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// All extensions.
    pub total: u32,
    /// Status available.
    pub available: u32,
    /// Status in_use.
    pub in_use: u32,
    /// Status offline.
    pub offline: u32,
    /// Available but still cooling down.
    pub cooling_down: u32,
}

impl PoolCounts {
    /// Available and past their cool-down: what a pick could lease right now.
    pub fn free_now(&self) -> u32 {
        self.available.saturating_sub(self.cooling_down)
    }

    /// in_use / (available + in_use); 0 when nothing is usable.
    pub fn utilization(&self) -> f64 {
        let usable = self.available + self.in_use;
        if usable == 0 {
            0.0
        } else {
            f64::from(self.in_use) / f64::from(usable)
        }
    }
}

/// One extension's use over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtensionUsage {
    /// The extension.
    pub extension_id: Uuid,
    /// Its number.
    pub extension_number: String,
    /// Leases overlapping the window.
    pub lease_count: u32,
    /// Leased seconds inside the window.
    pub busy_seconds: f64,
}
