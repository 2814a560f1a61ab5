//! A collector (催员) of one tenant.

use chrono::{DateTime, Utc};

use super::phone::Phone;
use super::{CollectorId, TenantId};

/// A stored collector.
#[derive(Debug, Clone)]
pub struct Collector {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Collector id.
    pub collector_id: CollectorId,
    /// The phone DoubleCall rings first.
    pub callback_number: Option<Phone>,
    /// Display name (at most 128 characters).
    pub display_name: String,
    /// May place calls.
    pub active: bool,
    /// The extension of the collector's last call.
    pub last_extension_number: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Changed.
    pub updated_at: DateTime<Utc>,
}
