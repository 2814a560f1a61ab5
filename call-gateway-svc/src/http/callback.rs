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
use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::domain::call::{Call, CallId, Completion};
use crate::domain::config::TenantConfig;
use crate::domain::{GwError, TenantId};
use crate::infinity::record::{TimeWindow, completion, customuuid, field, flatten, vendor_text};
use crate::metrics::GatewayMetrics;
use crate::service::{CallbackOutcome, Settling};
use crate::store::calls::{Completed, Unmatched};

/// The most a callback body may weigh.
pub const MAX_BODY: usize = 64 * 1024;

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
        "unsupported content type {}: send JSON or form data",
        cco_platform::validate::quote(&ct)
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

#[derive(Clone)]
struct Shim {
    settling: Settling,
    metrics: GatewayMetrics,
    signature_tolerance_secs: u64,
}

fn reply(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// The callback routes; signed callbacks are accepted within `signature_tolerance_secs` of
/// their timestamp.
pub fn routes(
    settling: Settling,
    metrics: GatewayMetrics,
    signature_tolerance_secs: u64,
) -> Router {
    Router::new()
        .route("/api/v1/infinity/callback/call-record", post(generic))
        .route(
            "/api/v1/infinity/callback/{tenant_id}/{secret}",
            post(per_tenant),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Shim {
            settling,
            metrics,
            signature_tolerance_secs,
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
        tolerance_secs: u64,
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

/// Whether a signing proxy's `x-cco-timestamp` (unix seconds) is within `tolerance_secs` of
/// now. The distance is taken with `abs_diff`, which cannot overflow whatever the header says.
fn is_fresh(timestamp: &str, tolerance_secs: u64) -> bool {
    timestamp
        .parse::<i64>()
        .is_ok_and(|t| Utc::now().timestamp().abs_diff(t) <= tolerance_secs)
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
            let fresh = is_fresh(timestamp, *tolerance_secs);
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
        self.metrics.callback(outcome);
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

    /// Settles the call the callback names (in one transaction with the completion) and
    /// answers; a callback that names no call of the tenant is kept as unmatched.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        tenant: &TenantId,
        cfg: &TenantConfig,
        customuuid: Option<&str>,
        memberid: Option<&str>,
        fields: &HashMap<String, String>,
        raw: String,
        peer: SocketAddr,
    ) -> Response {
        // The record is read from the call as locked in the completing transaction: its
        // creation time bounds the plausible times.
        let record = |call: &Call| -> Completion {
            let window = TimeWindow::around(call.created_at, Utc::now());
            completion(fields, cfg.callback_time_zone, window, raw.clone())
        };
        match self
            .settling
            .settle_callback(tenant, customuuid, memberid, &record)
            .await
        {
            Ok(CallbackOutcome::Settled(_, Completed::Applied)) => {
                self.count("completed");
                reply(StatusCode::OK, "1")
            }
            Ok(CallbackOutcome::Settled(id, Completed::AlreadyCompleted)) => {
                tracing::info!(call_id = %id, "duplicate callback ignored");
                self.count("duplicate");
                reply(StatusCode::OK, "1")
            }
            Ok(CallbackOutcome::Unmatched(why)) => {
                self.unmatched(tenant.as_str(), fields, raw, peer, why)
                    .await
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
        let row = Unmatched {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: Some(tenant.to_owned()),
            customuuid: vendor_text(fields, "customuuid", 128)
                .or_else(|| vendor_text(fields, "call_uuid", 128)),
            memberid: vendor_text(fields, "memberid", 128),
            infinity_uuid: vendor_text(fields, "uuid", 128),
            source_ip: Some(peer.ip().to_string()),
            payload: raw,
            reason,
            received_at: Utc::now(),
        };
        match self.settling.record_unmatched(&row).await {
            Ok(()) => {
                tracing::warn!(tenant_id = %tenant, reason = %row.reason, "callback matched no call; stored as unmatched");
                self.count("unmatched");
                reply(StatusCode::OK, "1")
            }
            Err(e) => self.internal(&e),
        }
    }

    async fn config(&self, tenant: &str) -> Result<Option<TenantConfig>, GwError> {
        self.settling.callback_config(tenant).await
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
    shim.settle(
        &cfg.tenant_id,
        &cfg,
        customuuid(&fields),
        field(&fields, "memberid"),
        &fields,
        raw,
        peer,
    )
    .await
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
    let record = match customuuid(&fields).and_then(|c| CallId::parse("customuuid", c).ok()) {
        Some(id) => match shim.settling.call(&id).await {
            Ok(r) => r,
            Err(e) => return shim.internal(&e),
        },
        None => None,
    };
    let tenant = match (&record, q.get("tenant")) {
        (Some(r), _) => r.tenant_id.as_str().to_owned(),
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
        // The generic URL matches by customuuid only.
        Some(r) => {
            shim.settle(
                &r.tenant_id,
                &cfg,
                Some(r.id.as_str()),
                None,
                &fields,
                raw,
                peer,
            )
            .await
        }
        None => {
            let why = format!(
                "no call matches customuuid {}",
                cco_platform::validate::quote(customuuid(&fields).unwrap_or_default())
            );
            shim.unmatched(&tenant, &fields, raw, peer, why).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Arbitrary bytes under any content type: parsing never panics, and whatever parses
        /// derives a completion without panicking, with seconds in range.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
                                       ct in proptest::sample::select(vec!["application/json", "application/x-www-form-urlencoded", "", "text/plain", "multipart/form-data"])) {
            if let Ok((m, raw)) = parse_body(Some(ct), &body) {
                let now = Utc::now();
                let c = completion(&m, chrono_tz::Asia::Shanghai, TimeWindow::around(now, now), raw);
                proptest::prop_assert!((0..=86_400).contains(&c.talk_seconds) && (0..=86_400).contains(&c.total_seconds));
            }
        }

        /// Any signature timestamp, including the extremes of i64, is checked without
        /// overflow: only one within the tolerance of now can be fresh.
        #[test]
        fn signature_freshness_never_overflows(t in proptest::prelude::any::<i64>(), tolerance in proptest::prelude::any::<u64>()) {
            let now = Utc::now().timestamp();
            let fresh = is_fresh(&t.to_string(), tolerance);
            proptest::prop_assert_eq!(fresh, now.abs_diff(t) <= tolerance);
        }
    }

    #[test]
    fn extreme_signature_timestamps_are_stale() {
        for t in [
            i64::MIN.to_string(),
            i64::MAX.to_string(),
            "-0".into(),
            "1e30".into(),
            " 1".into(),
        ] {
            assert!(!is_fresh(&t, 300), "{t}");
        }
        assert!(is_fresh(&Utc::now().timestamp().to_string(), 300));
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
