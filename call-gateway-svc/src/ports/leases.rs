//! The extension pool, as the gateway uses it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::call::{Lease, Release};
use crate::domain::config::Strategy;
use crate::domain::{CollectorId, GwError, TenantId};

/// Why a request to the pool did not succeed.
#[derive(Debug)]
pub enum LeaseError {
    /// The pool answered and refused; the error says why in the gateway's terms (no free
    /// extension, cap reached, tenant inactive, no such lease, ...).
    Refused(GwError),
    /// The pool could not be reached or gave no answer: the request may be retried.
    Unreachable(String),
}

impl From<LeaseError> for GwError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Refused(e) => e,
            LeaseError::Unreachable(m) => {
                GwError::Unavailable(format!("allocator unavailable: {m}"))
            }
        }
    }
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(e) => write!(f, "refused: {e}"),
            Self::Unreachable(m) => write!(f, "unreachable: {m}"),
        }
    }
}

/// A lease as Acquire answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// The lease.
    pub lease: Lease,
    /// The lease had already ended: Acquire replayed an earlier request's lease that was given
    /// back since (the caller asks again under another request id).
    pub ended: bool,
}

/// The extension pool.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Leases a free extension for `request_id`. Idempotent per request id: asking again (after
    /// a lost answer, say) returns the lease already granted.
    async fn acquire(
        &self,
        tenant: &TenantId,
        collector: &CollectorId,
        strategy: Option<Strategy>,
        request_id: &str,
    ) -> Result<Acquired, LeaseError>;

    /// Gives a lease back with its fencing token; `Ok(false)` when that changed nothing (a
    /// stale token, or released already).
    async fn release(&self, release: &Release) -> Result<bool, LeaseError>;

    /// Extends a live lease; returns its new expiry.
    async fn renew(
        &self,
        lease_id: &str,
        fencing_token: i64,
        ttl_seconds: u32,
    ) -> Result<Option<DateTime<Utc>>, LeaseError>;

    /// Takes an extension out of rotation, ending its lease (Infinity said it is broken).
    async fn take_offline(&self, tenant: &TenantId, extension_id: &str) -> Result<(), LeaseError>;

    /// The tenant's extensions in use (live leases).
    async fn in_use(&self, tenant: &TenantId) -> Result<u32, LeaseError>;

    /// Every extension number of the tenant's pool.
    async fn pool_numbers(&self, tenant: &TenantId) -> Result<Vec<String>, LeaseError>;

    /// Deletes the extensions imported under a deleted config; returns (deleted, leases ended).
    async fn delete_config_pool(
        &self,
        tenant_id: &str,
        config_id: &str,
    ) -> Result<(u32, u32), LeaseError>;
}
