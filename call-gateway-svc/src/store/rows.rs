//! Rows as the tables hold them, and their conversion to and from domain types: the only place
//! where a call's states, results and ids become strings and back. A stored value that does not
//! parse is reported as corrupt (`INTERNAL`), never guessed.

use cco_platform::sql::Row;
use chrono::{DateTime, Utc};

use super::corrupt;
use crate::domain::call::{Call, CallId, CallResult, CallStatus, HangupSide, Lease};
use crate::domain::collector::Collector;
use crate::domain::config::CallMode;
use crate::domain::phone::Phone;
use crate::domain::{CaseId, CollectorId, GwError, IdempotencyKey, TenantId};

/// A communication record as stored.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct RecordRow {
    pub call_id: String,
    pub tenant_id: String,
    pub config_id: String,
    pub supplier_id: String,
    pub case_id: String,
    pub collector_id: String,
    pub destination_number: String,
    pub dialled_number: String,
    pub caller_number: String,
    pub extension_number: Option<String>,
    pub extension_id: Option<String>,
    pub lease_id: Option<String>,
    pub fencing_token: Option<i64>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub lease_released: bool,
    pub call_mode: String,
    pub call_timeout_seconds: i32,
    pub status: String,
    pub result: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub answer_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub talk_seconds: Option<i32>,
    pub total_seconds: Option<i32>,
    pub hangup_cause: Option<i32>,
    pub hangup_side: Option<String>,
    pub record_url: Option<String>,
    pub record_filename: Option<String>,
    pub custom_params: String,
    pub infinity_uuid: Option<String>,
    pub infinity_cdr_id: Option<i64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub idempotency_key: Option<String>,
    pub attempts: i32,
    pub raw_callback: Option<String>,
    pub reconcile_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Reads a record row from any backend.
pub(crate) fn record_from(r: &Row) -> Result<RecordRow, sqlx::Error> {
    Ok(RecordRow {
        call_id: r.text("call_id")?,
        tenant_id: r.text("tenant_id")?,
        config_id: r.text("config_id")?,
        supplier_id: r.text("supplier_id")?,
        case_id: r.text("case_id")?,
        collector_id: r.text("collector_id")?,
        destination_number: r.text("destination_number")?,
        dialled_number: r.text("dialled_number")?,
        caller_number: r.text("caller_number")?,
        extension_number: r.opt_text("extension_number")?,
        extension_id: r.opt_text("extension_id")?,
        lease_id: r.opt_text("lease_id")?,
        fencing_token: r.opt_i64("fencing_token")?,
        lease_expires_at: r.opt_time("lease_expires_at")?,
        lease_released: r.bool("lease_released")?,
        call_mode: r.text("call_mode")?,
        call_timeout_seconds: r.i32("call_timeout_seconds")?,
        status: r.text("status")?,
        result: r.opt_text("result")?,
        start_time: r.opt_time("start_time")?,
        answer_time: r.opt_time("answer_time")?,
        end_time: r.opt_time("end_time")?,
        talk_seconds: r.opt_i32("talk_seconds")?,
        total_seconds: r.opt_i32("total_seconds")?,
        hangup_cause: r.opt_i32("hangup_cause")?,
        hangup_side: r.opt_text("hangup_side")?,
        record_url: r.opt_text("record_url")?,
        record_filename: r.opt_text("record_filename")?,
        custom_params: r.text("custom_params")?,
        infinity_uuid: r.opt_text("infinity_uuid")?,
        infinity_cdr_id: r.opt_i64("infinity_cdr_id")?,
        error_code: r.opt_text("error_code")?,
        error_message: r.opt_text("error_message")?,
        idempotency_key: r.opt_text("idempotency_key")?,
        attempts: r.i32("attempts")?,
        raw_callback: r.opt_text("raw_callback")?,
        reconcile_after: r.time("reconcile_after")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn uint(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// The row of a call.
pub(crate) fn row_from(c: &Call) -> Result<RecordRow, GwError> {
    Ok(RecordRow {
        call_id: c.id.as_str().to_owned(),
        tenant_id: c.tenant_id.as_str().to_owned(),
        config_id: c.config_id.clone(),
        supplier_id: c.supplier_id.clone(),
        case_id: c.case_id.as_str().to_owned(),
        collector_id: c.collector_id.as_str().to_owned(),
        destination_number: c.destination_number.clone(),
        dialled_number: c.dialled_number.clone(),
        caller_number: c.caller_number.clone(),
        extension_number: c.lease.as_ref().map(|l| l.extension_number.clone()),
        extension_id: c.lease.as_ref().map(|l| l.extension_id.clone()),
        lease_id: c.lease.as_ref().map(|l| l.lease_id.clone()),
        fencing_token: c.lease.as_ref().map(|l| l.fencing_token),
        lease_expires_at: c.lease.as_ref().and_then(|l| l.expires_at),
        lease_released: c.lease_released,
        call_mode: c.call_mode.as_str().to_owned(),
        call_timeout_seconds: int(c.call_timeout_seconds),
        status: c.status.as_str().to_owned(),
        result: c.result.map(|r| r.as_str().to_owned()),
        start_time: c.start_time,
        answer_time: c.answer_time,
        end_time: c.end_time,
        talk_seconds: c.talk_seconds.map(int),
        total_seconds: c.total_seconds.map(int),
        hangup_cause: c.hangup_cause.map(int),
        hangup_side: c.hangup_side.map(|h| h.as_str().to_owned()),
        record_url: c.record_url.clone(),
        record_filename: c.record_filename.clone(),
        custom_params: serde_json::to_string(&c.custom_params)
            .map_err(|e| GwError::Internal(e.into()))?,
        infinity_uuid: c.infinity_uuid.clone(),
        infinity_cdr_id: c.infinity_cdr_id.and_then(|v| i64::try_from(v).ok()),
        error_code: c.error_code.clone(),
        error_message: c.error_message.clone(),
        idempotency_key: c.idempotency_key.as_ref().map(|k| k.as_str().to_owned()),
        attempts: int(c.attempts),
        raw_callback: c.raw_callback.clone(),
        reconcile_after: c.reconcile_after,
        created_at: c.created_at,
        updated_at: c.updated_at,
    })
}

/// The call a row holds.
pub(crate) fn call_from(r: RecordRow) -> Result<Call, GwError> {
    let lease = match (r.lease_id, r.extension_id, r.extension_number) {
        (Some(lease_id), Some(extension_id), Some(extension_number)) => Some(Lease {
            lease_id,
            extension_id,
            extension_number,
            fencing_token: r.fencing_token.unwrap_or(0),
            expires_at: r.lease_expires_at,
        }),
        _ => None,
    };
    Ok(Call {
        id: CallId::parse("call_id", &r.call_id).map_err(corrupt)?,
        tenant_id: TenantId::parse("tenant_id", &r.tenant_id).map_err(corrupt)?,
        config_id: r.config_id,
        supplier_id: r.supplier_id,
        case_id: CaseId::parse("case_id", &r.case_id).map_err(corrupt)?,
        collector_id: CollectorId::parse("collector_id", &r.collector_id).map_err(corrupt)?,
        destination_number: r.destination_number,
        dialled_number: r.dialled_number,
        caller_number: r.caller_number,
        lease,
        lease_released: r.lease_released,
        call_mode: CallMode::parse(&r.call_mode).ok_or_else(|| corrupt("call_mode"))?,
        call_timeout_seconds: uint(r.call_timeout_seconds),
        status: CallStatus::parse(&r.status).ok_or_else(|| corrupt("status"))?,
        result: r
            .result
            .map(|v| CallResult::parse(&v).ok_or_else(|| corrupt("result")))
            .transpose()?,
        start_time: r.start_time,
        answer_time: r.answer_time,
        end_time: r.end_time,
        talk_seconds: r.talk_seconds.map(uint),
        total_seconds: r.total_seconds.map(uint),
        hangup_cause: r.hangup_cause.map(uint),
        hangup_side: r
            .hangup_side
            .map(|v| HangupSide::parse(&v).ok_or_else(|| corrupt("hangup_side")))
            .transpose()?,
        record_url: r.record_url,
        record_filename: r.record_filename,
        custom_params: serde_json::from_str(&r.custom_params).map_err(corrupt)?,
        infinity_uuid: r.infinity_uuid,
        infinity_cdr_id: r.infinity_cdr_id.and_then(|v| u64::try_from(v).ok()),
        error_code: r.error_code,
        error_message: r.error_message,
        idempotency_key: r
            .idempotency_key
            .map(|k| IdempotencyKey::parse("idempotency_key", &k).map_err(corrupt))
            .transpose()?,
        attempts: uint(r.attempts),
        raw_callback: r.raw_callback,
        reconcile_after: r.reconcile_after,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

/// A collector as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CollectorRow {
    pub tenant_id: String,
    pub collector_id: String,
    pub callback_number: Option<String>,
    pub display_name: String,
    pub active: bool,
    pub last_extension_number: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Reads a collector row from any backend.
pub(crate) fn collector_row(r: &Row) -> Result<CollectorRow, sqlx::Error> {
    Ok(CollectorRow {
        tenant_id: r.text("tenant_id")?,
        collector_id: r.text("collector_id")?,
        callback_number: r.opt_text("callback_number")?,
        display_name: r.text("display_name")?,
        active: r.bool("active")?,
        last_extension_number: r.opt_text("last_extension_number")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// The collector a row holds.
pub(crate) fn collector_from(row: CollectorRow) -> Result<Collector, GwError> {
    Ok(Collector {
        tenant_id: TenantId::parse("tenant_id", &row.tenant_id).map_err(corrupt)?,
        collector_id: CollectorId::parse("collector_id", &row.collector_id).map_err(corrupt)?,
        callback_number: row
            .callback_number
            .as_deref()
            .map(Phone::from_e164)
            .transpose()
            .map_err(corrupt)?,
        display_name: row.display_name,
        active: row.active,
        last_extension_number: row.last_extension_number,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// The row of a collector.
pub(crate) fn collector_row_from(c: &Collector) -> CollectorRow {
    CollectorRow {
        tenant_id: c.tenant_id.as_str().to_owned(),
        collector_id: c.collector_id.as_str().to_owned(),
        callback_number: c.callback_number.as_ref().map(|p| p.e164().to_owned()),
        display_name: c.display_name.clone(),
        active: c.active,
        last_extension_number: c.last_extension_number.clone(),
        created_at: c.created_at,
        updated_at: c.updated_at,
    }
}
