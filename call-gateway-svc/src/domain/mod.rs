//! Validated domain types and the gateway's error. Nothing here knows about tonic or sqlx.
//!
//! - [`config`]: a tenant's Infinity configuration and the rules of every field.
//! - [`collector`]: a collector and their callback number.
//! - [`call`]: a call (its id, states, results, lease, completion).
//! - [`phone`]: phone numbers (libphonenumber), their kinds, emergency numbers.
//! - [`compliance`]: calling windows, holidays, caps, presets, the debtor's zone, refusals.

/// Names an enum's variants as stored (`as_str`, `parse`): the only place they are spelled.
macro_rules! names {
    ($ty:ident { $($v:ident = $s:literal),* $(,)? }) => {
        impl $ty {
            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            /// Parses a stored name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }
    };
}

pub mod call;
pub mod collector;
pub mod compliance;
pub mod config;
pub mod event;
pub mod phone;

/// The gateway's error: what went wrong, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum GwError {
    /// A request field is malformed or out of range.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// The rule broken.
        message: String,
    },
    /// An id names nothing.
    #[error("{0}")]
    NotFound(String),
    /// The thing exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A concurrent change won (stale version).
    #[error("{0}")]
    Aborted(String),
    /// The state forbids the change.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No free extension, or the tenant's cap is reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's key may not touch this tenant.
    #[error("{0}")]
    PermissionDenied(String),
    /// A position outside what is kept (an event id past the retention).
    #[error("{0}")]
    OutOfRange(String),
    /// A dependency (database, allocator, Infinity) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The database kept aborting the transaction for concurrent ones (deadlocks, lock-wait
    /// timeouts) after the store's retries; the client may try again.
    #[error("{0}")]
    Contention(String),
    /// Not supported by the tenant's Infinity.
    #[error("{0}")]
    Unimplemented(String),
    /// A bug or an unexpected failure; details are logged, not sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// The compliance gate refused the dial (`FAILED_PRECONDITION` with the reason, the rule's
    /// inputs and, where waiting helps, when to try again).
    #[error("{}", .0.message)]
    Refused(Box<compliance::Refusal>),
    /// An error about a call whose record exists: the call id travels with it.
    #[error("{inner} (call_id {call_id})")]
    WithCall {
        /// The call.
        call_id: String,
        /// What went wrong.
        inner: Box<GwError>,
    },
}

impl GwError {
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
    GwError
);
cco_platform::id_type!(
    /// A collector id: 1-64 characters of `[A-Za-z0-9_.:-]`.
    CollectorId,
    64,
    GwError
);
cco_platform::id_type!(
    /// A case id: 1-64 characters of `[A-Za-z0-9_.:-]`.
    CaseId,
    64,
    GwError
);
cco_platform::id_type!(
    /// An idempotency key: 1-128 characters of `[A-Za-z0-9_.:-]`.
    IdempotencyKey,
    128,
    GwError
);

/// Parses a UUID field.
pub fn parse_uuid(field: &'static str, value: &str) -> Result<uuid::Uuid, GwError> {
    if value.is_empty() {
        return Err(GwError::invalid(field, "is required"));
    }
    uuid::Uuid::parse_str(value).map_err(|_| {
        GwError::invalid(
            field,
            format!(
                "must be a UUID, got {}",
                cco_platform::validate::quote(value)
            ),
        )
    })
}
