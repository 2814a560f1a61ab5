//! Scripts and the call-record (CDR) JSON the simulator produces.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// What happens when a number is dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Accepted; answered after `ring_seconds`, talked `talk_seconds`.
    #[default]
    Answered,
    /// Accepted; nobody answered (hangupcause 10016).
    NoAnswer,
    /// Accepted; busy (10006).
    Busy,
    /// Accepted; rejected by the callee (10003).
    Rejected,
    /// Refused at once: `ret 200, status 1, errors {refuse_code, refuse_message}`.
    Refused,
    /// Refused: extension not registered (1014).
    ExtNotRegistered,
    /// `ret 600`: token invalid.
    TokenExpired,
    /// Answers only after `slow_ms` (the call is still placed and its callback sent).
    Slow,
    /// HTTP 500 with a text body.
    Http500,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
}

/// How the call-record callback is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CallbackMode {
    /// Once, after `callback_delay_ms`.
    #[default]
    Normal,
    /// Never (the record is still in GetBill).
    Lost,
    /// Twice, the same record.
    Duplicated,
    /// Once, after `callback_delay_ms + late_ms`.
    Delayed,
    /// Once, with camelCase keys (disNumber, hangupCause, ...).
    CamelCase,
}

/// How the recording is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Recording {
    /// `recordurl` set (2025 format).
    #[default]
    Url,
    /// Only `recordfilename` set (resolve with GetRecodeFile).
    Filename,
    /// No recording.
    None,
}

/// The behaviour for one destination number (or the default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Script {
    /// What happens.
    pub outcome: Outcome,
    /// Seconds of ringing before the answer (record times only; no real wait).
    pub ring_seconds: u32,
    /// Seconds of talk when answered (record times only).
    pub talk_seconds: u32,
    /// Recording reporting.
    pub recording: Recording,
    /// Callback delivery.
    pub callback: CallbackMode,
    /// Real delay before the callback is posted.
    pub callback_delay_ms: u64,
    /// Extra delay for `Delayed`.
    pub late_ms: u64,
    /// Real delay before answering for `Slow`.
    pub slow_ms: u64,
    /// Send numeric fields as strings, as some vendor versions do.
    pub numbers_as_strings: bool,
    /// Business code for `Refused`.
    pub refuse_code: String,
    /// Business text for `Refused`.
    pub refuse_message: String,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            outcome: Outcome::Answered,
            ring_seconds: 3,
            talk_seconds: 30,
            recording: Recording::Url,
            callback: CallbackMode::Normal,
            callback_delay_ms: 50,
            late_ms: 2_000,
            slow_ms: 15_000,
            numbers_as_strings: false,
            refuse_code: "1003".into(),
            refuse_message: "operation failed".into(),
        }
    }
}

/// Hang-up cause codes (A6 of the notes).
pub(crate) fn hangup_cause(outcome: Outcome) -> i64 {
    match outcome {
        Outcome::NoAnswer => 10016,
        Outcome::Busy => 10006,
        Outcome::Rejected => 10003,
        _ => 10001,
    }
}

const CAMEL: &[(&str, &str)] = &[
    ("disnumber", "disNumber"),
    ("destnumber", "destNumber"),
    ("extnumber", "extNumber"),
    ("starttime", "startTime"),
    ("answertime", "answerTime"),
    ("endtime", "endTime"),
    ("hangupcause", "hangupCause"),
    ("hangupdirection", "hangupDirection"),
    ("recordfilename", "recordFilename"),
    ("recordurl", "recordUrl"),
    ("downloadip", "downloadIp"),
    ("customuuid", "customUuid"),
    ("memberid", "memberId"),
    ("userid", "userId"),
    ("billsec", "billSec"),
    ("companycode", "companyCode"),
    ("callmethod", "callMethod"),
];

/// Renders a stored record for the callback body, per the script's quirks.
pub(crate) fn render(record: &Map<String, Value>, script: &Script) -> Value {
    let mut out = Map::new();
    for (k, v) in record {
        let v = if script.numbers_as_strings && v.is_number() {
            Value::String(v.to_string())
        } else {
            v.clone()
        };
        let key = if script.callback == CallbackMode::CamelCase {
            CAMEL
                .iter()
                .find(|(a, _)| a == k)
                .map_or_else(|| k.clone(), |(_, b)| (*b).to_owned())
        } else {
            k.clone()
        };
        out.insert(key, v);
    }
    Value::Object(out)
}

/// The fields of a new record.
pub(crate) struct NewRecord<'a> {
    pub id: i64,
    pub company_code: &'a str,
    pub double_call: bool,
    pub start: chrono::DateTime<chrono::FixedOffset>,
    pub params: &'a std::collections::HashMap<String, String>,
    pub dest: &'a str,
    pub script: &'a Script,
    pub base_url: &'a str,
}

/// Builds the record in the vendor's 2025 callback format.
pub(crate) fn build(r: &NewRecord<'_>) -> Map<String, Value> {
    let s = r.script;
    let answered = s.outcome == Outcome::Answered;
    let fmt = |t: chrono::DateTime<chrono::FixedOffset>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let ring = chrono::Duration::seconds(i64::from(s.ring_seconds));
    let talk = if answered {
        i64::from(s.talk_seconds)
    } else {
        0
    };
    let answer_at = r.start + ring;
    let end = answer_at + chrono::Duration::seconds(talk);
    let p = |k: &str| r.params.get(k).cloned().unwrap_or_default();
    let uuid = uuid::Uuid::new_v4().to_string();
    let filename = format!(
        "{}_{}_{}.mp3",
        r.start.format("%Y%m%d%H%M%S"),
        p("extnumber"),
        r.id
    );
    let (recordurl, recordfilename) = match (answered, s.recording) {
        (true, crate::Recording::Url) => {
            (format!("{}/recordings/{filename}", r.base_url), filename)
        }
        (true, crate::Recording::Filename) => (String::new(), filename),
        _ => (String::new(), String::new()),
    };
    let v = json!({
        "id": r.id,
        "companycode": r.company_code,
        "direction": "callout",
        "type": "callout",
        "callmethod": if r.double_call { 4 } else { 3 },
        "starttime": fmt(r.start),
        "answertime": if answered { fmt(answer_at) } else { String::new() },
        "endtime": fmt(end),
        "duration": (end - r.start).num_seconds(),
        "billsec": talk,
        "userid": p("userid"),
        "memberid": p("memberid"),
        "chengshudu": p("chengshudu"),
        "ext": p("chengshudu"),
        "disnumber": p("disnumber"),
        "destnumber": r.dest,
        "extnumber": p("extnumber"),
        "recordfilename": recordfilename,
        "downloadip": "",
        "hangupdirection": if answered { 10041 } else { 10040 },
        "hangupcause": hangup_cause(s.outcome),
        "uuid": uuid,
        "userkey": "",
        "customuuid": p("customuuid"),
        "taskid": "",
        "round": 0,
        "recordurl": recordurl,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
