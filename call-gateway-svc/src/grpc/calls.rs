//! Calls over gRPC.

use cco_contracts::gateway::v1 as pb;
use cco_contracts::time::{to_timestamp as ts, to_valid_timestamp};
use cco_platform::auth::Principal;
use chrono::Utc;
use tonic::{Request, Response, Status};

use super::{
    done, from_ts, opt_text, own, strategy_from_pb, tenant_of, time_token, time_token_decode,
};
use crate::domain::TenantId;
use crate::domain::call::{Call, CallId, CallResult, CallStatus};
use crate::domain::compliance::parse_zone;
use crate::domain::event::{CallEvent, EventType};
use crate::domain::{CaseId, CollectorId, GwError, IdempotencyKey};
use crate::service::{Calls, Events, MakeCall, WatchRequest};
use crate::store::calls::{CallFilter, SummaryFilter, SummaryRow, SummaryWindow};

/// The most bytes of records in one ListCalls page.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;

/// Serves Calls.
#[derive(Clone, Debug)]
pub struct CallsGrpc {
    calls: Calls,
    events: Events,
}

impl CallsGrpc {
    /// Serves `calls` and their `events`.
    pub fn new(calls: Calls, events: Events) -> Self {
        Self { calls, events }
    }

    /// The call, if the principal may read it: a collector reads only their own calls.
    async fn readable(
        &self,
        p: &Principal,
        tenant: &TenantId,
        id: &CallId,
    ) -> Result<Call, GwError> {
        let call = self.calls.get(tenant, id).await?;
        own(p, "call_id", call.collector_id.as_str())?;
        Ok(call)
    }
}

/// The collector filter of a listing or watch: a collector's own id whatever they asked
/// (another collector's is refused), anyone else's request as given.
fn collector_filter(p: &Principal, asked: Option<String>) -> Result<Option<String>, GwError> {
    match (&p.collector_id, asked) {
        (Some(own_id), Some(a)) if a != **own_id => Err(GwError::PermissionDenied(
            "collector_id: a collector sees only their own calls".into(),
        )),
        (Some(own_id), _) => Ok(Some(own_id.to_string())),
        (None, a) => Ok(a),
    }
}

/// The protobuf form of an event (also the NATS payload).
pub fn event_to_pb(e: &CallEvent) -> pb::CallEvent {
    let kind = match e.kind {
        EventType::Created => pb::CallEventType::Created,
        EventType::Dialing => pb::CallEventType::Dialing,
        EventType::Ringing => pb::CallEventType::Ringing,
        EventType::Unknown => pb::CallEventType::Unknown,
        EventType::Completed => pb::CallEventType::Completed,
        EventType::Failed => pb::CallEventType::Failed,
        EventType::Expired => pb::CallEventType::Expired,
    };
    pb::CallEvent {
        event_id: e.event_id,
        tenant_id: e.tenant_id.clone(),
        call_id: e.call_id.clone(),
        r#type: kind.into(),
        status: status_to_pb(e.status).into(),
        collector_id: e.collector_id.clone(),
        case_id: e.case_id.clone(),
        extension_number: e.extension_number.clone().unwrap_or_default(),
        result: result_to_pb(e.result).into(),
        talk_seconds: e.talk_seconds.unwrap_or(0),
        error_code: e.error_code.clone().unwrap_or_default(),
        error_message: e.error_message.clone().unwrap_or_default(),
        occurred_at: to_valid_timestamp(e.occurred_at),
    }
}

fn status_to_pb(s: CallStatus) -> pb::CallStatus {
    match s {
        CallStatus::Dialing => pb::CallStatus::Dialing,
        CallStatus::Ringing => pb::CallStatus::Ringing,
        CallStatus::Unknown => pb::CallStatus::Unknown,
        CallStatus::Completed => pb::CallStatus::Completed,
        CallStatus::Failed => pb::CallStatus::Failed,
        CallStatus::Expired => pb::CallStatus::Expired,
    }
}

fn status_from_pb(v: i32) -> Result<Option<CallStatus>, GwError> {
    Ok(match pb::CallStatus::try_from(v) {
        Ok(pb::CallStatus::Unspecified) => None,
        Ok(pb::CallStatus::Dialing) => Some(CallStatus::Dialing),
        Ok(pb::CallStatus::Ringing) => Some(CallStatus::Ringing),
        Ok(pb::CallStatus::Unknown) => Some(CallStatus::Unknown),
        Ok(pb::CallStatus::Completed) => Some(CallStatus::Completed),
        Ok(pb::CallStatus::Failed) => Some(CallStatus::Failed),
        Ok(pb::CallStatus::Expired) => Some(CallStatus::Expired),
        Err(_) => {
            return Err(GwError::invalid(
                "status",
                format!("unknown call status {v}"),
            ));
        }
    })
}

fn result_from_pb(v: i32) -> Result<Option<CallResult>, GwError> {
    Ok(match pb::CallResult::try_from(v) {
        Ok(pb::CallResult::Unspecified) => None,
        Ok(pb::CallResult::Connected) => Some(CallResult::Connected),
        Ok(pb::CallResult::NoAnswer) => Some(CallResult::NoAnswer),
        Ok(pb::CallResult::Busy) => Some(CallResult::Busy),
        Ok(pb::CallResult::Rejected) => Some(CallResult::Rejected),
        Ok(pb::CallResult::Cancelled) => Some(CallResult::Cancelled),
        Ok(pb::CallResult::Failed) => Some(CallResult::Failed),
        Ok(pb::CallResult::NotConnected) => Some(CallResult::NotConnected),
        Err(_) => {
            return Err(GwError::invalid(
                "result",
                format!("unknown call result {v}"),
            ));
        }
    })
}

fn result_to_pb(r: Option<CallResult>) -> pb::CallResult {
    match r {
        Some(CallResult::Connected) => pb::CallResult::Connected,
        Some(CallResult::NoAnswer) => pb::CallResult::NoAnswer,
        Some(CallResult::Busy) => pb::CallResult::Busy,
        Some(CallResult::Rejected) => pb::CallResult::Rejected,
        Some(CallResult::Cancelled) => pb::CallResult::Cancelled,
        Some(CallResult::Failed) => pb::CallResult::Failed,
        Some(CallResult::NotConnected) => pb::CallResult::NotConnected,
        None => pb::CallResult::Unspecified,
    }
}

fn call_to_pb(c: &Call) -> pb::CommunicationRecord {
    pb::CommunicationRecord {
        call_id: c.id.as_str().to_owned(),
        tenant_id: c.tenant_id.as_str().to_owned(),
        supplier_id: c.supplier_id.clone(),
        case_id: c.case_id.as_str().to_owned(),
        collector_id: c.collector_id.as_str().to_owned(),
        destination_number: c.destination_number.clone(),
        dialled_number: c.dialled_number.clone(),
        caller_number: c.caller_number.clone(),
        extension_number: c
            .lease
            .as_ref()
            .map(|l| l.extension_number.clone())
            .unwrap_or_default(),
        lease_id: c
            .lease
            .as_ref()
            .map(|l| l.lease_id.clone())
            .unwrap_or_default(),
        fencing_token: c
            .lease
            .as_ref()
            .and_then(|l| u64::try_from(l.fencing_token).ok())
            .unwrap_or(0),
        call_mode: c.call_mode.as_str().to_owned(),
        status: status_to_pb(c.status).into(),
        result: result_to_pb(c.result).into(),
        start_time: c.start_time.and_then(to_valid_timestamp),
        answer_time: c.answer_time.and_then(to_valid_timestamp),
        end_time: c.end_time.and_then(to_valid_timestamp),
        talk_seconds: c.talk_seconds.unwrap_or(0),
        total_seconds: c.total_seconds.unwrap_or(0),
        hangup_cause: c.hangup_cause.unwrap_or(0),
        hangup_side: c
            .hangup_side
            .map(|h| h.as_str().to_owned())
            .unwrap_or_default(),
        record_url: c.record_url.clone().unwrap_or_default(),
        record_filename: c.record_filename.clone().unwrap_or_default(),
        custom_params: c.custom_params.clone().into_iter().collect(),
        infinity_uuid: c.infinity_uuid.clone().unwrap_or_default(),
        infinity_cdr_id: c.infinity_cdr_id.unwrap_or(0),
        error_code: c.error_code.clone().unwrap_or_default(),
        error_message: c.error_message.clone().unwrap_or_default(),
        idempotency_key: c
            .idempotency_key
            .as_ref()
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
        attempts: c.attempts,
        raw_callback: c.raw_callback.clone().unwrap_or_default(),
        created_at: Some(ts(c.created_at)),
        updated_at: Some(ts(c.updated_at)),
        lease_released: c.lease_released,
    }
}

/// The longest window SummarizeCalls counts over (the query reads every call of it).
const MAX_SUMMARY_DAYS: i64 = 31;

/// The counts of a summary, ordered by status, result and cause.
fn summary_to_pb(rows: &[SummaryRow]) -> pb::CallSummary {
    use std::collections::BTreeMap;
    let (mut statuses, mut results, mut causes) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut total = 0_u64;
    for r in rows {
        total = total.saturating_add(r.count);
        let s = statuses
            .entry(status_to_pb(r.status) as i32)
            .or_insert(0_u64);
        *s = s.saturating_add(r.count);
        if r.status == CallStatus::Completed {
            if let Some(result) = r.result {
                let n = results
                    .entry(result_to_pb(Some(result)) as i32)
                    .or_insert(0_u64);
                *n = n.saturating_add(r.count);
            }
            let n = causes.entry(r.hangup_cause.unwrap_or(0)).or_insert(0_u64);
            *n = n.saturating_add(r.count);
        }
    }
    pb::CallSummary {
        total,
        by_status: statuses
            .into_iter()
            .map(|(status, count)| pb::StatusCount { status, count })
            .collect(),
        by_result: results
            .into_iter()
            .map(|(result, count)| pb::ResultCount { result, count })
            .collect(),
        by_hangup_cause: causes
            .into_iter()
            .map(|(hangup_cause, count)| pb::HangupCauseCount {
                hangup_cause,
                count,
            })
            .collect(),
    }
}

fn page_encode(c: &Call) -> String {
    time_token(c.created_at, c.id.as_str())
}

/// MakeCall's `debtor_time_zone`: from the case, so set by the platform's caller key (or an
/// admin), never by a collector's own token (it decides when a debtor may be called).
fn debtor_zone(p: &Principal, raw: &str) -> Result<Option<chrono_tz::Tz>, GwError> {
    if !raw.is_empty() && p.collector_id.is_some() {
        return Err(GwError::PermissionDenied(
            "debtor_time_zone: comes with the case from the CCO platform (its caller key), not from a collector's token".into(),
        ));
    }
    parse_zone("debtor_time_zone", raw)
}

#[tonic::async_trait]
impl pb::calls_server::Calls for CallsGrpc {
    async fn make_call(
        &self,
        req: Request<pb::MakeCallRequest>,
    ) -> Result<Response<pb::MakeCallResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let collector = CollectorId::parse("collector_id", &r.collector_id)?;
                own(&p, "collector_id", collector.as_str())?;
                let input = MakeCall {
                    tenant: tenant_of(&p, &r.tenant_id)?,
                    collector,
                    case_id: CaseId::parse("case_id", &r.case_id)?,
                    destination: if r.destination_number.trim().is_empty() {
                        return Err(GwError::invalid("destination_number", "is required"));
                    } else {
                        r.destination_number
                    },
                    caller_number: opt_text(r.caller_number),
                    idempotency_key: if r.idempotency_key.is_empty() {
                        None
                    } else {
                        Some(IdempotencyKey::parse(
                            "idempotency_key",
                            &r.idempotency_key,
                        )?)
                    },
                    custom_params: r.custom_params.into_iter().collect(),
                    strategy: strategy_from_pb("strategy", r.strategy)?,
                    debtor_time_zone: debtor_zone(&p, &r.debtor_time_zone)?,
                    override_id: if r.compliance_override_id.is_empty() {
                        None
                    } else {
                        Some(
                            crate::domain::parse_uuid(
                                "compliance_override_id",
                                &r.compliance_override_id,
                            )?
                            .to_string(),
                        )
                    },
                };
                let (call, replayed) = self.calls.make_call(input).await?;
                let failed = call.status == CallStatus::Failed;
                Ok(pb::MakeCallResponse {
                    call_id: call.id.as_str().to_owned(),
                    extension_number: call
                        .lease
                        .as_ref()
                        .map(|l| l.extension_number.clone())
                        .unwrap_or_default(),
                    caller_number: call.caller_number.clone(),
                    status: status_to_pb(call.status).into(),
                    infinity_code: if failed {
                        call.error_code.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    infinity_message: if failed {
                        call.error_message.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    replayed,
                })
            }
            .await,
        )
    }

    async fn check_call(
        &self,
        req: Request<pb::CheckCallRequest>,
    ) -> Result<Response<pb::CheckCallResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let collector = CollectorId::parse("collector_id", &r.collector_id)?;
                own(&p, "collector_id", collector.as_str())?;
                if r.destination_number.trim().is_empty() {
                    return Err(GwError::invalid("destination_number", "is required"));
                }
                let input = MakeCall {
                    tenant: tenant_of(&p, &r.tenant_id)?,
                    collector,
                    case_id: CaseId::parse("case_id", &r.case_id)?,
                    destination: r.destination_number,
                    caller_number: None,
                    idempotency_key: None,
                    custom_params: std::collections::BTreeMap::new(),
                    strategy: None,
                    debtor_time_zone: debtor_zone(&p, &r.debtor_time_zone)?,
                    override_id: None,
                };
                let v = self.calls.check_call(&input).await?;
                let mut metadata = v.details;
                Ok(match v.refusal {
                    None => pb::CheckCallResponse {
                        allowed: true,
                        metadata: metadata.into_iter().collect(),
                        ..Default::default()
                    },
                    Some(refusal) => {
                        metadata.extend(refusal.metadata);
                        pb::CheckCallResponse {
                            allowed: false,
                            reason: refusal.reason.as_str().to_owned(),
                            message: refusal.message,
                            metadata: metadata.into_iter().collect(),
                            next_allowed_at: refusal.retry_at.and_then(to_valid_timestamp),
                        }
                    }
                })
            }
            .await,
        )
    }

    async fn get_call(
        &self,
        req: Request<pb::GetCallRequest>,
    ) -> Result<Response<pb::CommunicationRecord>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let id = CallId::parse("call_id", &r.call_id)?;
                Ok(call_to_pb(&self.readable(&p, &tenant, &id).await?))
            }
            .await,
        )
    }

    async fn summarize_calls(
        &self,
        req: Request<pb::SummarizeCallsRequest>,
    ) -> Result<Response<pb::CallSummary>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let collector_id = collector_filter(
                    &p,
                    opt_text(r.collector_id)
                        .map(|c| {
                            CollectorId::parse("collector_id", &c).map(|c| c.as_str().to_owned())
                        })
                        .transpose()?,
                )?;
                let window = if r.open_only {
                    SummaryWindow::Open
                } else {
                    let since = from_ts("since", r.since)?
                        .ok_or_else(|| GwError::invalid("since", "is required"))?;
                    let now = Utc::now();
                    let (until, field) = match from_ts("until", r.until)? {
                        Some(u) => (u, "until"),
                        None => (now, "since"),
                    };
                    if until <= since {
                        if field == "since" {
                            // A window that starts now or later (a client's clock ahead of
                            // ours) holds no call yet.
                            return Ok(summary_to_pb(&[]));
                        }
                        return Err(GwError::invalid("until", "must be after since"));
                    }
                    if until - since > chrono::Duration::days(MAX_SUMMARY_DAYS) {
                        return Err(GwError::invalid(
                            field,
                            format!(
                                "the window is at most {MAX_SUMMARY_DAYS} days (until defaults to now)"
                            ),
                        ));
                    }
                    SummaryWindow::Created(since, until)
                };
                let rows = self
                    .calls
                    .summarize(&SummaryFilter {
                        tenant_id: tenant,
                        collector_id,
                        window,
                    })
                    .await?;
                Ok(summary_to_pb(&rows))
            }
            .await,
        )
    }

    async fn list_calls(
        &self,
        req: Request<pb::ListCallsRequest>,
    ) -> Result<Response<pb::ListCallsResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let limit = match r.page_size {
                    0 => 50,
                    n if n > 500 => {
                        return Err(GwError::invalid(
                            "page_size",
                            format!("must be at most 500, got {n}"),
                        ));
                    }
                    n => n,
                };
                let filter = CallFilter {
                    tenant_id: tenant,
                    collector_id: collector_filter(
                        &p,
                        opt_text(r.collector_id)
                            .map(|c| {
                                CollectorId::parse("collector_id", &c)
                                    .map(|c| c.as_str().to_owned())
                            })
                            .transpose()?,
                    )?,
                    case_id: opt_text(r.case_id)
                        .map(|c| CaseId::parse("case_id", &c).map(|c| c.as_str().to_owned()))
                        .transpose()?,
                    status: status_from_pb(r.status)?,
                    result: result_from_pb(r.result)?,
                    since: from_ts("since", r.since)?,
                    until: from_ts("until", r.until)?,
                    before: time_token_decode(&r.page_token, "ListCalls")?,
                    limit: limit + 1,
                };
                let calls = self.calls.list(&filter).await?;
                // A page ends at page_size records or MAX_PAGE_BYTES, whichever comes first
                // (raw callbacks may be large): a client's 4 MiB limit is never exceeded.
                let mut page = pb::ListCallsResponse::default();
                let mut bytes = 0;
                for (i, c) in calls.iter().enumerate() {
                    let record = call_to_pb(c);
                    let size = prost::Message::encoded_len(&record);
                    let full = i >= limit as usize
                        || (!page.calls.is_empty() && bytes + size > MAX_PAGE_BYTES);
                    if full {
                        page.next_page_token = calls
                            .get(i.saturating_sub(1))
                            .map(page_encode)
                            .unwrap_or_default();
                        break;
                    }
                    bytes += size;
                    page.calls.push(record);
                }
                Ok(page)
            }
            .await,
        )
    }

    async fn get_recording(
        &self,
        req: Request<pb::GetRecordingRequest>,
    ) -> Result<Response<pb::GetRecordingResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let id = CallId::parse("call_id", &r.call_id)?;
                if p.collector_id.is_some() {
                    self.readable(&p, &tenant, &id).await?;
                }
                let rec = self.calls.recording(&tenant, &id).await?;
                Ok(pb::GetRecordingResponse {
                    url: rec.url,
                    expires: rec.expires,
                    source: rec.source.into(),
                })
            }
            .await,
        )
    }

    async fn hang_up(
        &self,
        req: Request<pb::HangUpRequest>,
    ) -> Result<Response<pb::HangUpResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let id = CallId::parse("call_id", &r.call_id)?;
                Ok(pb::HangUpResponse {
                    message: self.calls.hang_up(&tenant, &id).await?,
                })
            }
            .await,
        )
    }

    type WatchCallsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::CallEvent, Status>> + Send + 'static>,
    >;

    async fn watch_calls(
        &self,
        req: Request<pb::WatchCallsRequest>,
    ) -> Result<Response<Self::WatchCallsStream>, Status> {
        use futures::StreamExt;
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let request = (|| {
            Ok::<_, GwError>(WatchRequest {
                principal: p.key_id.clone(),
                tenant: tenant_of(&p, &r.tenant_id)?,
                collector_id: collector_filter(
                    &p,
                    opt_text(r.collector_id.clone())
                        .map(|c| {
                            CollectorId::parse("collector_id", &c).map(|c| c.as_str().to_owned())
                        })
                        .transpose()?,
                )?,
                call_id: opt_text(r.call_id.clone())
                    .map(|c| CallId::parse("call_id", &c).map(|c| c.as_str().to_owned()))
                    .transpose()?,
                after: if r.from_start {
                    None
                } else {
                    Some(r.after_event_id)
                },
            })
        })()
        .map_err(Status::from)?;
        let rx = self.events.watch(request).await.map_err(Status::from)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|item| item.map(|e| event_to_pb(&e)).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}
