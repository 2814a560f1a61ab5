//! The Infinity call-record callback (HTTP on the gateway), per `infinity-api-notes.md` C2.
//!
//! Two URLs: `POST /api/v1/infinity/callback/{tenant_id}/{secret}` (recommended: the tenant's
//! secret in the path, for Infinity accounts that cannot sign) and
//! `POST /api/v1/infinity/callback/call-record` with the secret as `?k=` or the
//! `x-callback-secret` header, or signed by a proxy (`x-cco-timestamp` and
//! `x-cco-signature: sha256=HMAC(secret, "<timestamp>.<body>")`, within a tolerance window).
//! Secrets and signatures compare in constant time; the tenant's IP allow-list applies to all.
//! A request that fails gets 401/403 and writes nothing; a replayed signed callback is a
//! duplicate and changes nothing.
//!
//! Bodies up to 64 KiB, JSON or form data; keys lower-cased; numbers as numbers or strings;
//! `""` and `1970-01-01 08:00:00` read as absent; times in the tenant's zone. The legacy CCO
//! shape `{call_uuid, call_duration, is_connected, call_record_url}` is accepted too.
//! Matched by customuuid, then memberid (the case). The answer is `200 text/plain 1`, also for
//! duplicates and unmatched callbacks (stored for audit); only an internal failure (database
//! down) answers 500 so that Infinity pushes again.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use secrecy::ExposeSecret;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::domain::config::TenantConfig;
use crate::domain::{GwError, TenantId};
use crate::service::Gateway;
use crate::store::calls::{Completed, Completion, RecordRow, UnmatchedRow};

/// The most a callback body may weigh.
pub const MAX_BODY: usize = 64 * 1024;

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

/// Parses a callback body: JSON (an object) or form data. Returns the fields and the payload
/// kept for audit (JSON text).
pub fn parse_body(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(HashMap<String, String>, String), String> {
    let ct = content_type.unwrap_or_default().to_ascii_lowercase();
    let looks_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if ct.starts_with("application/json") || looks_json {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
        let Value::Object(obj) = v else {
            return Err("body must be a JSON object".into());
        };
        let raw = Value::Object(obj.clone()).to_string();
        return Ok((flatten(&obj), raw));
    }
    if ct.starts_with("application/x-www-form-urlencoded") || ct.is_empty() {
        let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_owned())?;
        let mut map = serde_json::Map::new();
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = urldecode(k).ok_or("malformed form encoding")?;
            let v = urldecode(v).ok_or("malformed form encoding")?;
            map.insert(k, Value::String(v));
        }
        if map.is_empty() {
            return Err("empty body".into());
        }
        let raw = Value::Object(map.clone()).to_string();
        return Ok((flatten(&map), raw));
    }
    Err(format!(
        "unsupported content type {ct:?}: send JSON or form data"
    ))
}

fn urldecode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                let (h, l) = (hex(bytes.get(i + 1))?, hex(bytes.get(i + 2))?);
                out.push(u8::try_from(h * 16 + l).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn field<'a>(m: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    m.get(key).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn number(m: &HashMap<String, String>, key: &str) -> Option<i64> {
    field(m, key).and_then(|s| {
        s.parse::<i64>()
            .ok()
            .or_else(|| s.parse::<f64>().ok().map(|f| f as i64))
    })
}

fn time(m: &HashMap<String, String>, key: &str, tz: Tz) -> Option<DateTime<Utc>> {
    let s = field(m, key)?;
    if s == "1970-01-01 08:00:00" || s.starts_with("0000-00-00") {
        return None;
    }
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok()?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// Our call id as echoed by Infinity (`customuuid`, or the legacy `call_uuid`).
pub fn customuuid(m: &HashMap<String, String>) -> Option<String> {
    field(m, "customuuid")
        .or_else(|| field(m, "call_uuid"))
        .map(str::to_owned)
}

fn is_call_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Derives the record's completion from Infinity's fields (notes C2).
pub fn completion(m: &HashMap<String, String>, tz: Tz, raw: String) -> Completion {
    let legacy =
        m.contains_key("call_uuid") && !m.contains_key("uuid") && !m.contains_key("customuuid");
    let billsec = number(m, "billsec")
        .or_else(|| legacy.then(|| number(m, "call_duration")).flatten())
        .unwrap_or(0);
    let answer_time = time(m, "answertime", tz);
    let legacy_connected = legacy
        && field(m, "is_connected")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    let connected = billsec > 0 || answer_time.is_some() || legacy_connected;
    let cause = number(m, "hangupcause");
    let result = if connected {
        "connected"
    } else {
        match cause {
            Some(10006) => "busy",
            Some(10016 | 10005 | 10015) => "no_answer",
            Some(10003) => "rejected",
            Some(10002) => "cancelled",
            Some(10004 | 10009 | 10014 | 10019 | 10025 | 10028) => "failed",
            _ => "not_connected",
        }
    };
    let side = match number(m, "hangupdirection") {
        Some(10040) => Some("caller".to_owned()),
        Some(10041) => Some("callee".to_owned()),
        _ => None,
    };
    let duration = number(m, "duration").unwrap_or(billsec);
    let clamp = |v: i64| i32::try_from(v.max(0)).unwrap_or(i32::MAX);
    Completion {
        result: result.to_owned(),
        start_time: time(m, "starttime", tz),
        answer_time,
        end_time: time(m, "endtime", tz),
        talk_seconds: clamp(billsec),
        total_seconds: clamp(duration),
        hangup_cause: cause.and_then(|c| i32::try_from(c).ok()),
        hangup_side: side,
        record_url: field(m, "recordurl")
            .or_else(|| legacy.then(|| field(m, "call_record_url")).flatten())
            .map(str::to_owned),
        record_filename: field(m, "recordfilename").map(str::to_owned),
        infinity_uuid: field(m, "uuid").map(str::to_owned),
        infinity_cdr_id: number(m, "id"),
        raw,
    }
}

/// Counts callback outcomes (bounded labels).
#[derive(Clone, Debug, Default)]
pub struct CallbackMetrics {
    /// By outcome: completed, duplicate, unmatched, unauthorized, forbidden, bad_request, error.
    pub outcomes: Family<Vec<(&'static str, &'static str)>, Counter>,
}

#[derive(Clone)]
struct Shim {
    gw: Gateway,
    metrics: CallbackMetrics,
    signature_tolerance_secs: i64,
}

fn reply(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// The callback routes; signed callbacks are accepted within `signature_tolerance_secs` of
/// their timestamp.
pub fn routes(gw: Gateway, metrics: CallbackMetrics, signature_tolerance_secs: u64) -> Router {
    Router::new()
        .route("/api/v1/infinity/callback/call-record", post(generic))
        .route(
            "/api/v1/infinity/callback/{tenant_id}/{secret}",
            post(per_tenant),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Shim {
            gw,
            metrics,
            signature_tolerance_secs: i64::try_from(signature_tolerance_secs).unwrap_or(i64::MAX),
        })
}

enum Refusal {
    Unauthorized,
    Forbidden,
}

/// How a callback proves it comes from the tenant's Infinity.
enum Proof<'a> {
    /// The callback secret itself (path, `?k=` or `x-callback-secret`).
    Secret(Option<&'a str>),
    /// A signing proxy's HMAC: `x-cco-timestamp` (unix seconds) and `x-cco-signature:
    /// sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
    Signed {
        timestamp: &'a str,
        signature: &'a str,
        body: &'a [u8],
        tolerance_secs: i64,
    },
}

/// The signature a signing proxy sends for `body` at `timestamp` (also used by tests).
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac;
    // HMAC accepts keys of any length; the error arm cannot happen but must not panic.
    let Ok(mut mac) = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn check(cfg: &TenantConfig, proof: &Proof<'_>, peer: SocketAddr) -> Result<(), Refusal> {
    let secret = cfg.callback_secret.expose_secret();
    let ok = match proof {
        Proof::Secret(given) => bool::from(
            secret
                .as_bytes()
                .ct_eq(given.unwrap_or_default().as_bytes()),
        ),
        Proof::Signed {
            timestamp,
            signature,
            body,
            tolerance_secs,
        } => {
            let fresh = timestamp
                .parse::<i64>()
                .is_ok_and(|t| (Utc::now().timestamp() - t).abs() <= *tolerance_secs);
            let expected = sign(secret, timestamp, body);
            fresh && bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
        }
    };
    if !ok {
        return Err(Refusal::Unauthorized);
    }
    if !cfg.callback_ip_allowed(peer.ip()) {
        return Err(Refusal::Forbidden);
    }
    Ok(())
}

impl Shim {
    fn count(&self, outcome: &'static str) {
        self.metrics
            .outcomes
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    fn refuse(&self, r: Refusal) -> Response {
        match r {
            Refusal::Unauthorized => {
                self.count("unauthorized");
                reply(StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Refusal::Forbidden => {
                self.count("forbidden");
                reply(StatusCode::FORBIDDEN, "forbidden")
            }
        }
    }

    fn internal(&self, e: &GwError) -> Response {
        tracing::error!(error = %e, "callback not processed; Infinity should push again");
        self.count("error");
        reply(StatusCode::INTERNAL_SERVER_ERROR, "0")
    }

    async fn settle(
        &self,
        record: &RecordRow,
        cfg: &TenantConfig,
        fields: &HashMap<String, String>,
        raw: String,
    ) -> Response {
        let c = completion(fields, cfg.callback_time_zone, raw);
        match self.gw.settle(record, &c).await {
            Ok(Completed::Applied) => {
                self.count("completed");
                reply(StatusCode::OK, "1")
            }
            Ok(Completed::AlreadyCompleted) => {
                tracing::info!(call_id = %record.call_id, "duplicate callback ignored");
                self.count("duplicate");
                reply(StatusCode::OK, "1")
            }
            Err(e) => self.internal(&e),
        }
    }

    async fn unmatched(
        &self,
        tenant: &str,
        fields: &HashMap<String, String>,
        raw: String,
        peer: SocketAddr,
        reason: String,
    ) -> Response {
        let row = UnmatchedRow {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: Some(tenant.to_owned()),
            customuuid: customuuid(fields),
            memberid: field(fields, "memberid").map(str::to_owned),
            infinity_uuid: field(fields, "uuid").map(str::to_owned),
            source_ip: Some(peer.ip().to_string()),
            payload: raw,
            reason,
            received_at: Utc::now(),
        };
        match self.gw.calls.insert_unmatched(&row).await {
            Ok(()) => {
                tracing::warn!(tenant_id = %tenant, reason = %row.reason, "callback matched no call; stored as unmatched");
                self.count("unmatched");
                reply(StatusCode::OK, "1")
            }
            Err(e) => self.internal(&e),
        }
    }

    async fn config(&self, tenant: &str) -> Result<Option<TenantConfig>, GwError> {
        let Ok(t) = TenantId::parse("tenant_id", tenant) else {
            return Ok(None);
        };
        match self.gw.config(&t).await {
            Ok(c) => Ok(Some(c)),
            Err(GwError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn content_type(h: &HeaderMap) -> Option<&str> {
    h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

async fn per_tenant(
    State(shim): State<Shim>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((tenant, secret)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let cfg = match shim.config(&tenant).await {
        Ok(Some(c)) => c,
        Ok(None) => return shim.refuse(Refusal::Unauthorized),
        Err(e) => return shim.internal(&e),
    };
    if let Err(r) = check(&cfg, &Proof::Secret(Some(&secret)), peer) {
        return shim.refuse(r);
    }
    let (fields, raw) = match parse_body(content_type(&headers), &body) {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!(tenant_id = %tenant, reason = %why, "unreadable callback refused");
            shim.count("bad_request");
            return reply(StatusCode::BAD_REQUEST, "0");
        }
    };
    let found = match customuuid(&fields).filter(|c| is_call_id(c)) {
        Some(cu) => shim.gw.calls.record(&tenant, &cu).await,
        None => match field(&fields, "memberid") {
            Some(m) => shim.gw.calls.open_record_for_case(&tenant, m).await,
            None => Ok(None),
        },
    };
    match found {
        Ok(Some(record)) => shim.settle(&record, &cfg, &fields, raw).await,
        Ok(None) => {
            let why = format!(
                "no call matches customuuid {:?} or memberid {:?}",
                customuuid(&fields).unwrap_or_default(),
                field(&fields, "memberid").unwrap_or_default()
            );
            shim.unmatched(&tenant, &fields, raw, peer, why).await
        }
        Err(e) => shim.internal(&e),
    }
}

async fn generic(
    State(shim): State<Shim>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let proof = match (header("x-cco-timestamp"), header("x-cco-signature")) {
        (Some(timestamp), Some(signature)) => Proof::Signed {
            timestamp,
            signature,
            body: &body,
            tolerance_secs: shim.signature_tolerance_secs,
        },
        _ => Proof::Secret(
            q.get("k")
                .map(String::as_str)
                .or_else(|| header("x-callback-secret")),
        ),
    };
    let (fields, raw) = match parse_body(content_type(&headers), &body) {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!(reason = %why, "unreadable callback refused");
            shim.count("bad_request");
            return reply(StatusCode::BAD_REQUEST, "0");
        }
    };
    let record = match customuuid(&fields).filter(|c| is_call_id(c)) {
        Some(cu) => match shim.gw.calls.record_by_id(&cu).await {
            Ok(r) => r,
            Err(e) => return shim.internal(&e),
        },
        None => None,
    };
    let tenant = match (&record, q.get("tenant")) {
        (Some(r), _) => r.tenant_id.clone(),
        (None, Some(t)) => t.clone(),
        // Nothing names a tenant whose secret could vouch for this request.
        (None, None) => return shim.refuse(Refusal::Unauthorized),
    };
    let cfg = match shim.config(&tenant).await {
        Ok(Some(c)) => c,
        Ok(None) => return shim.refuse(Refusal::Unauthorized),
        Err(e) => return shim.internal(&e),
    };
    if let Err(r) = check(&cfg, &proof, peer) {
        return shim.refuse(r);
    }
    match record {
        Some(r) => shim.settle(&r, &cfg, &fields, raw).await,
        None => {
            let why = format!(
                "no call matches customuuid {:?}",
                customuuid(&fields).unwrap_or_default()
            );
            shim.unmatched(&tenant, &fields, raw, peer, why).await
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::Strategy;

    use super::*;

    fn map(json: &str) -> HashMap<String, String> {
        parse_body(Some("application/json"), json.as_bytes())
            .expect("json")
            .0
    }

    #[test]
    fn vendor_2025_record() {
        let m = map(
            r#"{"id":263056202,"billsec":0,"answertime":"","starttime":"2025-10-16 17:31:13","endtime":"2025-10-16 17:31:21",
               "duration":8,"hangupcause":10020,"hangupdirection":10040,"uuid":"db4a","customuuid":"76c33d997640d36b033d43b1d2d3964e","recordurl":""}"#,
        );
        let c = completion(&m, chrono_tz::Asia::Shanghai, String::new());
        assert_eq!(c.result, "not_connected");
        assert_eq!((c.talk_seconds, c.total_seconds), (0, 8));
        assert_eq!(
            c.start_time.expect("start").to_rfc3339(),
            "2025-10-16T09:31:13+00:00"
        );
        assert!(c.answer_time.is_none() && c.record_url.is_none());
        assert_eq!(c.hangup_side.as_deref(), Some("caller"));
        assert_eq!(c.infinity_cdr_id, Some(263_056_202));
    }

    #[test]
    fn camel_case_strings_and_epoch_zero() {
        let m = map(
            r#"{"billSec":"25","answerTime":"1970-01-01 08:00:00","hangupCause":"10001","customUuid":"x"}"#,
        );
        let c = completion(&m, chrono_tz::Asia::Shanghai, String::new());
        assert_eq!((c.result.as_str(), c.talk_seconds), ("connected", 25));
        assert!(c.answer_time.is_none());
        assert_eq!(customuuid(&m).as_deref(), Some("x"));
    }

    #[test]
    fn results_by_hangup_cause() {
        for (cause, want) in [
            (10006, "busy"),
            (10016, "no_answer"),
            (10003, "rejected"),
            (10002, "cancelled"),
            (10004, "failed"),
            (10020, "not_connected"),
        ] {
            let m = map(&format!(r#"{{"billsec":0,"hangupcause":{cause}}}"#));
            assert_eq!(
                completion(&m, chrono_tz::UTC, String::new()).result,
                want,
                "{cause}"
            );
        }
    }

    #[test]
    fn legacy_cco_shape() {
        let m = map(
            r#"{"call_uuid":"abc","call_duration":42,"is_connected":true,"call_record_url":"http://r/x.mp3"}"#,
        );
        let c = completion(&m, chrono_tz::UTC, String::new());
        assert_eq!((c.result.as_str(), c.talk_seconds), ("connected", 42));
        assert_eq!(c.record_url.as_deref(), Some("http://r/x.mp3"));
        assert_eq!(customuuid(&m).as_deref(), Some("abc"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Arbitrary bytes under any content type: parsing never panics, and whatever parses
        /// derives a completion without panicking, with a result from the known set.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
                                       ct in proptest::sample::select(vec!["application/json", "application/x-www-form-urlencoded", "", "text/plain", "multipart/form-data"])) {
            if let Ok((m, raw)) = parse_body(Some(ct), &body) {
                let c = completion(&m, chrono_tz::Asia::Shanghai, raw);
                proptest::prop_assert!(["connected", "no_answer", "busy", "rejected", "cancelled", "failed", "not_connected"].contains(&c.result.as_str()));
                proptest::prop_assert!(c.talk_seconds >= 0 && c.total_seconds >= 0);
            }
        }

        /// Arbitrary JSON objects with the vendor's keys and hostile values (huge numbers,
        /// negative durations, malformed times, non-ASCII): no panic, no negative seconds.
        #[test]
        fn arbitrary_vendor_objects_never_panic(entries in proptest::collection::vec((
            proptest::sample::select(vec!["billsec", "duration", "answertime", "starttime", "endtime", "hangupcause",
                "hangupdirection", "customuuid", "memberid", "uuid", "id", "recordurl", "call_uuid", "call_duration",
                "is_connected", "BillSec", "AnswerTime"]),
            proptest::prop_oneof![
                proptest::prelude::any::<i64>().prop_map(|n| serde_json::json!(n)),
                proptest::prelude::any::<f64>().prop_map(|f| serde_json::json!(f)),
                ".{0,40}".prop_map(|s| serde_json::json!(s)),
                proptest::prelude::Just(serde_json::json!("2025-02-30 25:61:61")),
                proptest::prelude::Just(serde_json::json!("1970-01-01 08:00:00")),
                proptest::prelude::Just(serde_json::json!(null)),
                proptest::prelude::Just(serde_json::json!([1, {"a": 2}])),
            ]), 0..12)) {
            let obj: serde_json::Map<String, Value> = entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let body = Value::Object(obj).to_string();
            let (m, raw) = parse_body(Some("application/json"), body.as_bytes()).expect("an object always parses");
            let c = completion(&m, chrono_tz::America::Mexico_City, raw);
            proptest::prop_assert!(c.talk_seconds >= 0 && c.total_seconds >= 0);
        }
    }

    #[test]
    fn form_bodies_and_garbage() {
        let (m, raw) = parse_body(
            Some("application/x-www-form-urlencoded"),
            b"customuuid=a%20b&billsec=3",
        )
        .expect("form");
        assert_eq!(m.get("customuuid").map(String::as_str), Some("a b"));
        assert!(raw.contains("\"billsec\":\"3\""));
        for bad in [&b"[1,2]"[..], b"{not json", b"\xff\xfe", b""] {
            assert!(
                parse_body(Some("application/json"), bad).is_err(),
                "{bad:?}"
            );
        }
        assert!(parse_body(Some("application/x-www-form-urlencoded"), b"a=%zz").is_err());
        assert!(parse_body(Some("text/xml"), b"<x/>").is_err());
    }
}
