//! Infinity's record of a finished call (the call-record callback's body, or one entry of
//! `App.Sip_Cdr.GetBill`) read into a [`Completion`]. Used by the callback and the reconciler.
//!
//! The record comes from outside and is read defensively. Every field has an accepted range;
//! a value outside it is treated as absent (the raw payload, kept with the record, still shows
//! what was sent):
//!
//! | field | accepted |
//! |---|---|
//! | `billsec` (talk seconds), `duration` (total seconds) | whole seconds 0-86,400, as a number or a numeric string; fractions are cut |
//! | `starttime`, `answertime`, `endtime` | `YYYY-MM-DD HH:MM:SS` (the documented form), `YYYY/MM/DD HH:MM:SS`, ISO-8601 (`T`, fraction, `Z` or an offset), epoch seconds (9-10 digits) or milliseconds (12-13 digits); without an offset in the tenant's `callback_time_zone`. `""`, `0`, `0000-00-00 ...` and `1970-01-01 08:00:00` mean absent. Only times from one day before the call was created to one day after now are taken; an answer or end before the start (or an end before the answer) is dropped |
//! | `hangupcause`, `hangupdirection` | 1-99,999 |
//! | `id` (CDR id) | 1 to 2^63-1 |
//! | `uuid` | 1-64 characters of `[A-Za-z0-9_.:-]` |
//! | `recordurl` | an absolute `http` or `https` URL without credentials, at most 2,048 characters |
//! | `recordfilename` | text without control or invisible formatting characters, at most 255 characters |
//!
//! Talk seconds missing or out of range are derived from valid answer and end times; total
//! seconds from valid start and end times; a total below the talk time is not taken (the total
//! is then at least the talk time). A call is connected when it has talk seconds or a
//! valid answer time.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::domain::call::{CallResult, Completion, HangupSide};

/// The longest call we believe: one day.
pub const MAX_SECONDS: i64 = 86_400;

/// The most characters of a recording URL.
pub const MAX_RECORD_URL: usize = 2_048;

/// The most characters of a recording file name.
pub const MAX_RECORD_FILENAME: usize = 255;

/// Flattens a JSON object into lower-cased keys and text values (numbers rendered).
pub fn flatten(obj: &serde_json::Map<String, Value>) -> HashMap<String, String> {
    obj.iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => return None,
                other => other.to_string(),
            };
            Some((k.to_ascii_lowercase(), text))
        })
        .collect()
}

/// A field's trimmed text; empty counts as absent.
pub fn field<'a>(m: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    m.get(key).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// An integer field, as a number or numeric string (a fraction is cut), within `range`.
fn number(
    m: &HashMap<String, String>,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Option<i64> {
    let s = field(m, key)?;
    let n = s.parse::<i64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && f.abs() < 9.0e15)
            // In range for i64 (checked just above); `as` cannot wrap here.
            .map(|f| f.trunc() as i64)
    })?;
    range.contains(&n).then_some(n)
}

/// Our call id as echoed by Infinity (`customuuid`, or the legacy `call_uuid`).
pub fn customuuid(m: &HashMap<String, String>) -> Option<&str> {
    field(m, "customuuid").or_else(|| field(m, "call_uuid"))
}

/// Parses one of Infinity's times (see the module docs for the forms); `None` when it is
/// absent or unreadable.
pub fn parse_time(s: &str, tz: Tz) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if s.is_empty()
        || s == "0"
        || s.starts_with("0000-00-00")
        || s.starts_with("0000/00/00")
        || s == "1970-01-01 08:00:00"
    {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = s.parse().ok()?;
        return match s.len() {
            9 | 10 => DateTime::from_timestamp(n, 0),
            12 | 13 => DateTime::from_timestamp_millis(n),
            _ => None,
        };
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    const NAIVE: [&str; 6] = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y/%m/%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
        "%Y/%m/%d %H:%M",
    ];
    let naive = NAIVE
        .iter()
        .find_map(|fmt| NaiveDateTime::parse_from_str(s, fmt).ok())?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// The times a record may carry: from a day before the call was created to a day after now.
#[derive(Debug, Clone, Copy)]
pub struct TimeWindow {
    earliest: DateTime<Utc>,
    latest: DateTime<Utc>,
}

impl TimeWindow {
    /// The window of a call created at `created_at`, read at `now`.
    pub fn around(created_at: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        let day = chrono::Duration::days(1);
        Self {
            earliest: created_at.checked_sub_signed(day).unwrap_or(created_at),
            latest: now.checked_add_signed(day).unwrap_or(now),
        }
    }

    fn take(&self, t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        t.filter(|t| (self.earliest..=self.latest).contains(t))
    }
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> Option<i64> {
    Some(to.signed_duration_since(from).num_seconds()).filter(|s| (0..=MAX_SECONDS).contains(s))
}

/// An absolute http(s) URL without credentials or unsafe characters, else `None`.
fn recording_url(raw: &str) -> Option<String> {
    if raw.chars().count() > MAX_RECORD_URL
        || raw
            .chars()
            .any(|c| c.is_whitespace() || cco_platform::validate::is_unsafe_char(c))
    {
        return None;
    }
    let url = url::Url::parse(raw).ok()?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none();
    ok.then(|| raw.to_owned())
}

/// A vendor id: kept only when it is 1-64 characters of `[A-Za-z0-9_.:-]`.
fn vendor_id(m: &HashMap<String, String>, key: &str) -> Option<String> {
    field(m, key)
        .filter(|v| cco_platform::validate::id(v, 64).is_ok())
        .map(str::to_owned)
}

/// Vendor text kept for audit (unmatched callbacks): unsafe characters removed, at most
/// `max` characters; `None` when nothing is left.
pub fn vendor_text(m: &HashMap<String, String>, key: &str, max: usize) -> Option<String> {
    field(m, key)
        .map(|v| cco_platform::validate::strip_unsafe(v, max))
        .filter(|v| !v.is_empty())
}

/// Derives the record's completion from Infinity's fields (see the module docs); `window`
/// bounds the times, `tz` is the zone of times written without an offset.
pub fn completion(
    m: &HashMap<String, String>,
    tz: Tz,
    window: TimeWindow,
    raw: String,
) -> Completion {
    let legacy =
        m.contains_key("call_uuid") && !m.contains_key("uuid") && !m.contains_key("customuuid");
    let time = |key: &str| window.take(field(m, key).and_then(|s| parse_time(s, tz)));
    let start_time = time("starttime");
    let answer_time = time("answertime").filter(|a| start_time.is_none_or(|s| *a >= s));
    let end_time = time("endtime")
        .filter(|e| start_time.is_none_or(|s| *e >= s) && answer_time.is_none_or(|a| *e >= a));
    let billsec = number(m, "billsec", 0..=MAX_SECONDS)
        .or_else(|| {
            legacy
                .then(|| number(m, "call_duration", 0..=MAX_SECONDS))
                .flatten()
        })
        .or_else(|| {
            answer_time
                .zip(end_time)
                .and_then(|(a, e)| seconds_between(a, e))
        })
        .unwrap_or(0);
    let legacy_connected = legacy
        && field(m, "is_connected")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    let connected = billsec > 0 || answer_time.is_some() || legacy_connected;
    let cause = number(m, "hangupcause", 1..=99_999);
    let result = if connected {
        CallResult::Connected
    } else {
        match cause {
            Some(10006) => CallResult::Busy,
            Some(10016 | 10005 | 10015) => CallResult::NoAnswer,
            Some(10003) => CallResult::Rejected,
            Some(10002) => CallResult::Cancelled,
            Some(10004 | 10009 | 10014 | 10019 | 10025 | 10028) => CallResult::Failed,
            _ => CallResult::NotConnected,
        }
    };
    let side = match number(m, "hangupdirection", 1..=99_999) {
        Some(10040) => Some(HangupSide::Caller),
        Some(10041) => Some(HangupSide::Callee),
        _ => None,
    };
    // A call lasts at least as long as its talk: a total below the talk time is not taken.
    let duration = number(m, "duration", 0..=MAX_SECONDS)
        .filter(|d| *d >= billsec)
        .or_else(|| {
            start_time
                .zip(end_time)
                .and_then(|(s, e)| seconds_between(s, e))
                .filter(|d| *d >= billsec)
        })
        .unwrap_or(billsec);
    // Both are within 0..=MAX_SECONDS.
    let seconds = |v: i64| u32::try_from(v).unwrap_or(0);
    Completion {
        result,
        start_time,
        answer_time,
        end_time,
        talk_seconds: seconds(billsec),
        total_seconds: seconds(duration),
        hangup_cause: cause.and_then(|c| u32::try_from(c).ok()),
        hangup_side: side,
        record_url: field(m, "recordurl")
            .or_else(|| legacy.then(|| field(m, "call_record_url")).flatten())
            .and_then(recording_url),
        record_filename: vendor_text(m, "recordfilename", MAX_RECORD_FILENAME),
        infinity_uuid: vendor_id(m, "uuid"),
        infinity_cdr_id: number(m, "id", 1..=i64::MAX).and_then(|n| u64::try_from(n).ok()),
        raw,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::Strategy;

    use super::*;

    fn map(json: &str) -> HashMap<String, String> {
        match serde_json::from_str::<Value>(json).expect("json") {
            Value::Object(o) => flatten(&o),
            _ => panic!("not an object"),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    /// A window around calls placed in October 2025, read shortly after.
    fn window() -> TimeWindow {
        TimeWindow::around(at("2025-10-16T09:00:00Z"), at("2025-10-16T12:00:00Z"))
    }

    fn complete(json: &str) -> Completion {
        completion(
            &map(json),
            chrono_tz::Asia::Shanghai,
            window(),
            String::new(),
        )
    }

    #[test]
    fn vendor_2025_record() {
        let c = complete(
            r#"{"id":263056202,"billsec":0,"answertime":"","starttime":"2025-10-16 17:31:13","endtime":"2025-10-16 17:31:21",
               "duration":8,"hangupcause":10020,"hangupdirection":10040,"uuid":"db4a","customuuid":"76c33d997640d36b033d43b1d2d3964e","recordurl":""}"#,
        );
        assert_eq!(c.result, CallResult::NotConnected);
        assert_eq!((c.talk_seconds, c.total_seconds), (0, 8));
        assert_eq!(
            c.start_time.expect("start").to_rfc3339(),
            "2025-10-16T09:31:13+00:00"
        );
        assert!(c.answer_time.is_none() && c.record_url.is_none());
        assert_eq!(c.hangup_side, Some(HangupSide::Caller));
        assert_eq!(c.infinity_cdr_id, Some(263_056_202));
    }

    #[test]
    fn camel_case_strings_and_epoch_zero() {
        let m = map(
            r#"{"billSec":"25","answerTime":"1970-01-01 08:00:00","hangupCause":"10001","customUuid":"x"}"#,
        );
        let c = completion(&m, chrono_tz::Asia::Shanghai, window(), String::new());
        assert_eq!((c.result, c.talk_seconds), (CallResult::Connected, 25));
        assert!(c.answer_time.is_none());
        assert_eq!(customuuid(&m), Some("x"));
    }

    #[test]
    fn results_by_hangup_cause() {
        for (cause, want) in [
            (10006, CallResult::Busy),
            (10016, CallResult::NoAnswer),
            (10003, CallResult::Rejected),
            (10002, CallResult::Cancelled),
            (10004, CallResult::Failed),
            (10020, CallResult::NotConnected),
        ] {
            let c = complete(&format!(r#"{{"billsec":0,"hangupcause":{cause}}}"#));
            assert_eq!(c.result, want, "{cause}");
        }
    }

    #[test]
    fn legacy_cco_shape() {
        let m = map(
            r#"{"call_uuid":"abc","call_duration":42,"is_connected":true,"call_record_url":"http://r/x.mp3"}"#,
        );
        let c = completion(&m, chrono_tz::UTC, window(), String::new());
        assert_eq!((c.result, c.talk_seconds), (CallResult::Connected, 42));
        assert_eq!(c.record_url.as_deref(), Some("http://r/x.mp3"));
        assert_eq!(customuuid(&m), Some("abc"));
    }

    /// The date forms Infinity may send all read as the same instant.
    #[test]
    fn date_forms() {
        let want = at("2025-10-16T09:31:13Z");
        let tz = chrono_tz::Asia::Shanghai;
        for s in [
            "2025-10-16 17:31:13",
            "2025/10/16 17:31:13",
            "2025-10-16T17:31:13",
            "2025-10-16T17:31:13.000",
            "2025-10-16T09:31:13Z",
            "2025-10-16T17:31:13+08:00",
            "2025-10-16T17:31:13+0800",
            "1760607073",
            "1760607073000",
        ] {
            assert_eq!(parse_time(s, tz), Some(want), "{s}");
        }
        for s in [
            "",
            "0",
            "0000-00-00 00:00:00",
            "1970-01-01 08:00:00",
            "yesterday",
            "2025-13-40 99:99:99",
            "12345",
        ] {
            assert_eq!(parse_time(s, tz), None, "{s}");
        }
    }

    /// An ISO answer time with billsec 0 is a connected call, its talk time taken from the times.
    #[test]
    fn iso_answer_time_connects() {
        let c = complete(
            r#"{"billsec":0,"starttime":"2025-10-16T17:31:00+08:00","answertime":"2025-10-16T17:31:10+08:00","endtime":"2025-10-16T17:32:10+08:00"}"#,
        );
        assert_eq!(c.result, CallResult::Connected);
        assert_eq!(c.talk_seconds, 0, "billsec 0 is a valid value and is kept");
        let c = complete(
            r#"{"starttime":"1760607060","answertime":"1760607070","endtime":"1760607130"}"#,
        );
        assert_eq!(
            (c.result, c.talk_seconds, c.total_seconds),
            (CallResult::Connected, 60, 70)
        );
    }

    /// Times outside the window around the call, and out-of-order times, are dropped.
    #[test]
    fn implausible_times_are_absent() {
        let c = complete(
            r#"{"starttime":"0001-01-01 00:00:00","answertime":"9999-12-31 23:59:59","endtime":"2025-10-16 17:31:21"}"#,
        );
        assert!(c.start_time.is_none() && c.answer_time.is_none());
        assert!(c.end_time.is_some());
        let c = complete(
            r#"{"starttime":"2025-10-16 17:31:13","answertime":"2025-10-16 17:30:00","endtime":"2025-10-16 17:00:00"}"#,
        );
        assert!(c.start_time.is_some());
        assert!(c.answer_time.is_none(), "answer before start");
        assert!(c.end_time.is_none(), "end before start");
        assert_eq!(c.result, CallResult::NotConnected);
    }

    /// Numbers out of range are absent: no i32::MAX talk seconds from 1e30.
    #[test]
    fn out_of_range_numbers_are_absent() {
        let c = complete(
            r#"{"billsec":1e30,"duration":-5,"hangupcause":99999999999,"id":-1,"starttime":"2025-10-16 17:31:00","endtime":"2025-10-16 17:31:30"}"#,
        );
        assert_eq!((c.talk_seconds, c.total_seconds), (0, 30));
        assert_eq!(c.result, CallResult::NotConnected);
        assert!(c.hangup_cause.is_none() && c.infinity_cdr_id.is_none());
        let c = complete(r#"{"billsec":"86401"}"#);
        assert_eq!(c.talk_seconds, 0);
        let c = complete(r#"{"billsec":"42.9"}"#);
        assert_eq!(c.talk_seconds, 42);
        let c = complete(r#"{"billsec":500,"duration":3}"#);
        assert_eq!(
            (c.talk_seconds, c.total_seconds),
            (500, 500),
            "total never below talk"
        );
    }

    /// Only http(s) recording URLs are kept; control and bidi characters never reach storage.
    #[test]
    fn hostile_text_fields() {
        for bad in [
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "http://user:pw@evil.example/x.mp3",
            "http://evil.example/a b.mp3",
            "//evil.example/x.mp3",
            "http://x/\u{202e}3pm.exe",
        ] {
            let c = complete(&serde_json::json!({ "recordurl": bad }).to_string());
            assert!(c.record_url.is_none(), "{bad}");
        }
        let c = complete(r#"{"recordurl":"https://rec.example.com/2025/x.mp3?sig=1"}"#);
        assert_eq!(
            c.record_url.as_deref(),
            Some("https://rec.example.com/2025/x.mp3?sig=1")
        );
        let c = complete(
            &serde_json::json!({"uuid": "db4a\u{0}\u{202e}", "recordfilename": "a\u{202e}b\u{0}.mp3"}).to_string(),
        );
        assert!(
            c.infinity_uuid.is_none(),
            "an id with control characters is not kept"
        );
        assert_eq!(c.record_filename.as_deref(), Some("ab.mp3"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Arbitrary JSON objects with the vendor's keys and hostile values (huge numbers,
        /// negative durations, malformed and extreme times, non-ASCII, control characters): no
        /// panic, seconds within 0..=86,400, times inside the window and in order, recording
        /// URLs http(s) only, no control characters in any kept text.
        #[test]
        fn arbitrary_vendor_objects_stay_in_range(entries in proptest::collection::vec((
            proptest::sample::select(vec!["billsec", "duration", "answertime", "starttime", "endtime", "hangupcause",
                "hangupdirection", "customuuid", "memberid", "uuid", "id", "recordurl", "recordfilename", "call_uuid",
                "call_duration", "is_connected", "BillSec", "AnswerTime"]),
            proptest::prop_oneof![
                proptest::prelude::any::<i64>().prop_map(|n| serde_json::json!(n)),
                proptest::prelude::any::<f64>().prop_map(|f| serde_json::json!(f)),
                ".{0,40}".prop_map(|s| serde_json::json!(s)),
                "[0-9]{1,14}".prop_map(|s| serde_json::json!(s)),
                "(0001|1970|2025|9999)-(01|12|13)-(01|16|31) (00|17|23):(00|31|59):(00|13|59)".prop_map(|s| serde_json::json!(s)),
                proptest::prelude::Just(serde_json::json!("javascript:alert(1)")),
                proptest::prelude::Just(serde_json::json!("a\u{0}\u{202e}b")),
                proptest::prelude::Just(serde_json::json!(null)),
                proptest::prelude::Just(serde_json::json!([1, {"a": 2}])),
            ]), 0..12)) {
            let obj: serde_json::Map<String, Value> = entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let c = completion(&flatten(&obj), chrono_tz::America::Mexico_City, window(), String::new());
            proptest::prop_assert!(c.talk_seconds <= 86_400 && c.total_seconds <= 86_400);
            proptest::prop_assert!(c.talk_seconds <= c.total_seconds);
            for t in [c.start_time, c.answer_time, c.end_time].into_iter().flatten() {
                proptest::prop_assert!(t >= window().earliest && t <= window().latest);
            }
            if let (Some(s), Some(e)) = (c.start_time, c.end_time) { proptest::prop_assert!(s <= e); }
            if let Some(u) = &c.record_url { proptest::prop_assert!(u.starts_with("http://") || u.starts_with("https://")); }
            for t in [&c.record_url, &c.record_filename, &c.infinity_uuid].into_iter().flatten() {
                proptest::prop_assert!(!t.chars().any(cco_platform::validate::is_unsafe_char));
            }
        }
    }
}
