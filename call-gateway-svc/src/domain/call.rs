//! A call and its communication record (通信记录), as types: the id and its format rule, the
//! states and results, the lease the call holds, and what Infinity reported when it ended.
//! Strings only at the edges (the store and the transports convert).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::config::CallMode;
use super::{CaseId, CollectorId, GwError, IdempotencyKey, TenantId};

/// Our id of a call: 32 lowercase hex characters, sent to Infinity as `customuuid`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(String);

impl CallId {
    /// Whether `value` has the form of a call id (the one place the rule is written).
    pub fn is_valid(value: &str) -> bool {
        value.len() == 32
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// Parses a call id a client gave; errors name `field`.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, GwError> {
        if Self::is_valid(value) {
            Ok(Self(value.to_owned()))
        } else {
            Err(GwError::invalid(
                field,
                format!(
                    "must be 32 lowercase hex characters, got {}",
                    cco_platform::validate::quote(value)
                ),
            ))
        }
    }

    /// A fresh id for a call without an idempotency key.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The id of the call an idempotency key names: the same key always names the same call.
    pub fn for_key(tenant: &TenantId, key: &IdempotencyKey) -> Self {
        let d = Sha256::digest(format!("{}\u{1f}{}", tenant.as_str(), key.as_str()).as_bytes());
        Self(hex::encode(&d[..16]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a call is in its life (SPEC section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallStatus {
    /// Recorded; the dial is being sent.
    Dialing,
    /// Infinity accepted the dial.
    Ringing,
    /// The dial's outcome is unknown (timeout, lost answer): the lease is kept.
    Unknown,
    /// Infinity reported the call's end.
    Completed,
    /// Never placed (refused, not sent, or the tenant's config was deleted).
    Failed,
    /// Nothing from Infinity by the maximum age.
    Expired,
}

names!(CallStatus {
    Dialing = "dialing",
    Ringing = "ringing",
    Unknown = "unknown",
    Completed = "completed",
    Failed = "failed",
    Expired = "expired",
});

impl CallStatus {
    /// Dialing, ringing or unknown: the call may still be live.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Dialing | Self::Ringing | Self::Unknown)
    }
}

/// How a completed call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallResult {
    /// Someone talked.
    Connected,
    /// Nobody answered.
    NoAnswer,
    /// Busy.
    Busy,
    /// The callee rejected it.
    Rejected,
    /// Cancelled before an answer.
    Cancelled,
    /// The network failed it.
    Failed,
    /// Not connected, for another reason.
    NotConnected,
}

names!(CallResult {
    Connected = "connected",
    NoAnswer = "no_answer",
    Busy = "busy",
    Rejected = "rejected",
    Cancelled = "cancelled",
    Failed = "failed",
    NotConnected = "not_connected",
});

/// Who hung up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HangupSide {
    /// The calling side (the collector or the extension).
    Caller,
    /// The called side (the debtor).
    Callee,
}

names!(HangupSide {
    Caller = "caller",
    Callee = "callee",
});

/// Why the gateway gives a lease back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    /// Infinity reported the call's end.
    CallEnded,
    /// The dial was refused or never sent.
    DialFailed,
    /// The reconciler settled the call (no callback came).
    Reconciled,
    /// The call was given up before it was dialled (or its config was deleted).
    Cancelled,
}

names!(ReleaseReason {
    CallEnded = "call_ended",
    DialFailed = "dial_failed",
    Reconciled = "reconciled",
    Cancelled = "cancelled",
});

/// A lease of an extension, as the allocator granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease (UUID v7, as text).
    pub lease_id: String,
    /// The extension (UUID, as text).
    pub extension_id: String,
    /// The extension's number, e.g. `8001`.
    pub extension_number: String,
    /// The fencing token: a release with an older token changes nothing.
    pub fencing_token: i64,
    /// When the lease runs out unless renewed.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A release owed to the allocator (the outbox row, written with the change that owes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The lease.
    pub lease_id: String,
    /// The call that held it.
    pub call_id: CallId,
    /// Its fencing token.
    pub fencing_token: i64,
    /// Why.
    pub reason: ReleaseReason,
    /// Attempts so far.
    pub attempts: i32,
}

/// What Infinity reported about a finished call (from the callback or GetBill).
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The result.
    pub result: CallResult,
    /// Start, answer and end times (absent when not reported or implausible).
    pub start_time: Option<DateTime<Utc>>,
    /// See `start_time`.
    pub answer_time: Option<DateTime<Utc>>,
    /// See `start_time`.
    pub end_time: Option<DateTime<Utc>>,
    /// Seconds talked (0-86,400).
    pub talk_seconds: u32,
    /// Seconds in all (0-86,400).
    pub total_seconds: u32,
    /// Infinity's hang-up cause code.
    pub hangup_cause: Option<u32>,
    /// Who hung up.
    pub hangup_side: Option<HangupSide>,
    /// An http(s) recording URL.
    pub record_url: Option<String>,
    /// A recording file name (resolved with GetRecodeFile).
    pub record_filename: Option<String>,
    /// Infinity's call uuid (duplicates of one CDR share it).
    pub infinity_uuid: Option<String>,
    /// Infinity's CDR id.
    pub infinity_cdr_id: Option<u64>,
    /// The payload as received, for audit.
    pub raw: String,
}

/// A call's communication record.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Our id.
    pub id: CallId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// The config the call was placed under.
    pub config_id: String,
    /// The supplier id of that config.
    pub supplier_id: String,
    /// The case (debt) the call is about.
    pub case_id: CaseId,
    /// The collector.
    pub collector_id: CollectorId,
    /// The debtor's number in E.164.
    pub destination_number: String,
    /// The digits sent to Infinity (prefix included).
    pub dialled_number: String,
    /// The caller number shown, in E.164.
    pub caller_number: String,
    /// The extension leased for the call (the last one, after a retry on another).
    pub lease: Option<Lease>,
    /// The lease has been given back (or the allocator confirmed it ended).
    pub lease_released: bool,
    /// DoubleCall or MakeCall.
    pub call_mode: CallMode,
    /// The ring timeout of the config.
    pub call_timeout_seconds: u32,
    /// Where the call is.
    pub status: CallStatus,
    /// How it went (completed calls).
    pub result: Option<CallResult>,
    /// What Infinity reported (completed calls).
    pub start_time: Option<DateTime<Utc>>,
    /// See `start_time`.
    pub answer_time: Option<DateTime<Utc>>,
    /// See `start_time`.
    pub end_time: Option<DateTime<Utc>>,
    /// Seconds talked.
    pub talk_seconds: Option<u32>,
    /// Seconds in all.
    pub total_seconds: Option<u32>,
    /// Infinity's hang-up cause.
    pub hangup_cause: Option<u32>,
    /// Who hung up.
    pub hangup_side: Option<HangupSide>,
    /// The recording URL.
    pub record_url: Option<String>,
    /// The recording file name.
    pub record_filename: Option<String>,
    /// The caller's custom parameters.
    pub custom_params: BTreeMap<String, String>,
    /// Infinity's call uuid.
    pub infinity_uuid: Option<String>,
    /// Infinity's CDR id.
    pub infinity_cdr_id: Option<u64>,
    /// Why the call failed or is unknown: a code (Infinity's, or ours) and a text.
    pub error_code: Option<String>,
    /// See `error_code`.
    pub error_message: Option<String>,
    /// The client's idempotency key.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Dial attempts (2 after a retry on another extension).
    pub attempts: u32,
    /// Infinity's record as received.
    pub raw_callback: Option<String>,
    /// The reconciler looks at the open call from this time on.
    pub reconcile_after: DateTime<Utc>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Changed.
    pub updated_at: DateTime<Utc>,
}

impl Call {
    /// The release the call still owes for its lease (none when it has none or it is released).
    pub fn owed_release(&self, reason: ReleaseReason) -> Option<Release> {
        match (&self.lease, self.lease_released) {
            (Some(l), false) => Some(Release {
                lease_id: l.lease_id.clone(),
                call_id: self.id.clone(),
                fencing_token: l.fencing_token,
                reason,
                attempts: 0,
            }),
            _ => None,
        }
    }

    /// The call as it stands after `c` was applied.
    pub fn completed(mut self, c: &Completion, now: DateTime<Utc>) -> Self {
        self.status = CallStatus::Completed;
        self.result = Some(c.result);
        self.start_time = c.start_time;
        self.answer_time = c.answer_time;
        self.end_time = c.end_time;
        self.talk_seconds = Some(c.talk_seconds);
        self.total_seconds = Some(c.total_seconds);
        self.hangup_cause = c.hangup_cause;
        self.hangup_side = c.hangup_side;
        self.record_url.clone_from(&c.record_url);
        self.record_filename.clone_from(&c.record_filename);
        self.infinity_uuid.clone_from(&c.infinity_uuid);
        self.infinity_cdr_id = c.infinity_cdr_id;
        self.raw_callback = Some(c.raw.clone());
        self.error_code = None;
        self.error_message = None;
        self.updated_at = now;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids() {
        let t = TenantId::parse("t", "t1").expect("tenant");
        let k = IdempotencyKey::parse("k", "click-9").expect("key");
        assert_eq!(CallId::for_key(&t, &k), CallId::for_key(&t, &k));
        assert!(CallId::is_valid(CallId::random().as_str()));
        assert!(CallId::parse("call_id", "ABCDEF0123456789abcdef0123456789").is_err());
        let e = CallId::parse("call_id", &"z".repeat(12_000)).expect_err("long");
        assert!(e.to_string().len() < 120, "{e}");
    }

    #[test]
    fn names_round_trip() {
        for s in [
            CallStatus::Dialing,
            CallStatus::Ringing,
            CallStatus::Unknown,
            CallStatus::Completed,
            CallStatus::Failed,
            CallStatus::Expired,
        ] {
            assert_eq!(CallStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(CallResult::parse("no_answer"), Some(CallResult::NoAnswer));
        assert_eq!(
            ReleaseReason::parse("call_ended"),
            Some(ReleaseReason::CallEnded)
        );
        assert!(CallStatus::parse("DIALING").is_none());
    }
}
