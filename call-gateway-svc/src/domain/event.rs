//! Call events: what happened to a call, one per change, in the tenant's order.

use chrono::{DateTime, Utc};

use super::call::{Call, CallResult, CallStatus};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The record was written (dialing).
    Created,
    /// A further dial attempt on another extension.
    Dialing,
    /// Infinity accepted the dial.
    Ringing,
    /// The dial's outcome is unknown.
    Unknown,
    /// Infinity reported the end.
    Completed,
    /// Never placed (refused, unreachable, config deleted).
    Failed,
    /// Nothing heard within the maximum age.
    Expired,
}

names!(EventType {
    Created = "created",
    Dialing = "dialing",
    Ringing = "ringing",
    Unknown = "unknown",
    Completed = "completed",
    Failed = "failed",
    Expired = "expired",
});

/// One event of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent {
    /// The tenant's event id (dense: 1, 2, 3, ...); 0 until written.
    pub event_id: u64,
    pub tenant_id: String,
    pub call_id: String,
    pub kind: EventType,
    /// The call's status after the change.
    pub status: CallStatus,
    pub collector_id: String,
    pub case_id: String,
    pub extension_number: Option<String>,
    pub result: Option<CallResult>,
    pub talk_seconds: Option<u32>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

impl CallEvent {
    /// The event `kind` of `call` as it stands after the change (id assigned when written).
    pub fn of(call: &Call, kind: EventType, at: DateTime<Utc>) -> Self {
        Self {
            event_id: 0,
            tenant_id: call.tenant_id.as_str().to_owned(),
            call_id: call.id.as_str().to_owned(),
            kind,
            status: call.status,
            collector_id: call.collector_id.as_str().to_owned(),
            case_id: call.case_id.as_str().to_owned(),
            extension_number: call.lease.as_ref().map(|l| l.extension_number.clone()),
            result: call.result,
            talk_seconds: call.talk_seconds,
            error_code: call.error_code.clone(),
            error_message: call.error_message.clone(),
            occurred_at: at,
        }
    }
}
