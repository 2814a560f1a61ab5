//! The vendor API: one POST endpoint dispatching on the `service` form field.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Offset;
use serde_json::{Value, json};

use crate::record::{self, CallbackMode, Outcome};
use crate::state::{LoggedRequest, SimState};

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn ok(desc: &str, result: Option<Value>) -> Value {
    let t = now_secs();
    let mut data = json!({"status": 0, "desc": desc, "reqtime": t, "rsptime": t});
    if let (Some(r), Some(obj)) = (result, data.as_object_mut()) {
        obj.insert("result".into(), r);
    }
    json!({"ret": 200, "data": data, "msg": ""})
}

fn business_error(code: &str, codemsg: &str) -> Value {
    let t = now_secs();
    json!({"ret": 200, "data": {"status": 1, "desc": "操作失败", "errors": {"code": code, "codemsg": codemsg},
        "reqtime": t, "rsptime": t}, "msg": ""})
}

fn interface_error(ret: i64, msg: &str) -> Value {
    json!({"ret": ret, "data": [], "msg": msg})
}

fn json_response(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

async fn read_form(req: Request) -> Result<HashMap<String, String>, String> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut out = HashMap::new();
    if is_multipart {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| e.to_string())?;
        while let Some(field) = mp.next_field().await.map_err(|e| e.to_string())? {
            let name = field.name().unwrap_or_default().to_owned();
            let value = field.text().await.map_err(|e| e.to_string())?;
            out.insert(name, value);
        }
    } else {
        let body = Bytes::from_request(req, &())
            .await
            .map_err(|e| e.to_string())?;
        for (k, v) in form_pairs(&body) {
            out.insert(k, v);
        }
    }
    Ok(out)
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one form component (`+` is a space); malformed escapes are kept as text.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex_val),
                bytes.get(i + 2).copied().and_then(hex_val),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves every POST that is not a control endpoint as the vendor API.
pub(crate) async fn handle(State(state): State<Arc<SimState>>, req: Request) -> Response {
    if req.method() == axum::http::Method::GET
        && let Some(file) = req.uri().path().strip_prefix("/recordings/")
    {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "audio/mpeg")],
            format!("fake audio {file}"),
        )
            .into_response();
    }
    let params = match read_form(req).await {
        Ok(p) => p,
        Err(e) => return json_response(&interface_error(400, &format!("Illegal request: {e}"))),
    };
    let service = params.get("service").cloned().unwrap_or_default();
    {
        let mut g = state.lock();
        let at_ms = u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        g.requests.push(LoggedRequest {
            service: service.clone(),
            params: params.clone(),
            at_ms,
        });
    }
    const KNOWN: &[&str] = &[
        "App.Sip_Auth.Login",
        "App.Sip_Auth.Logout",
        "App.Sip_Call.MakeCall",
        "App.Sip_Call.DoubleCall",
        "App.Sip_Sipnum.GetSipnumberInfo",
        "App.Sip_Status.GetSipCallStatus",
        "App.Sip_Cdr.GetBill",
        "App.Sip_Cdr.GetRecodeFile",
        "App.Sip_Call.HangupCall",
    ];
    if !KNOWN.contains(&service.as_str()) {
        return json_response(&interface_error(
            400,
            &format!("Illegal request: unknown service {service:?}"),
        ));
    }
    if service == "App.Sip_Auth.Login" {
        return json_response(&login(&state, &params));
    }
    let token = params.get("token").cloned().unwrap_or_default();
    if !token_valid(&state, &token) {
        return json_response(&interface_error(600, "token invalid, please log in again"));
    }
    match service.as_str() {
        "App.Sip_Auth.Logout" => {
            state.lock().tokens.remove(&token);
            json_response(&ok("logout successful", None))
        }
        "App.Sip_Call.MakeCall" => dial(&state, &params, false).await,
        "App.Sip_Call.DoubleCall" => dial(&state, &params, true).await,
        "App.Sip_Sipnum.GetSipnumberInfo" => json_response(&sipnumber_info(&state, &params)),
        "App.Sip_Status.GetSipCallStatus" => json_response(&call_status(&state, &params)),
        "App.Sip_Cdr.GetBill" => json_response(&get_bill(&state, &params)),
        "App.Sip_Cdr.GetRecodeFile" => json_response(&recode_file(&state, &params)),
        "App.Sip_Call.HangupCall" => {
            let ext = params.get("extnumber").cloned().unwrap_or_default();
            if state.lock().hangup_unsupported {
                json_response(&interface_error(
                    400,
                    "Illegal request: unknown service \"App.Sip_Call.HangupCall\"",
                ))
            } else if ext.is_empty() {
                json_response(&interface_error(
                    400,
                    "Illegal request: extnumber is required",
                ))
            } else {
                json_response(&business_error("1015", "extension not in a call"))
            }
        }
        _ => json_response(&interface_error(
            400,
            &format!("Illegal request: unknown service {service:?}"),
        )),
    }
}

fn token_valid(state: &SimState, token: &str) -> bool {
    let g = state.lock();
    match g.tokens.get(token) {
        Some(None) => true,
        Some(Some(exp)) => *exp > Instant::now(),
        None => false,
    }
}

fn login(state: &SimState, p: &HashMap<String, String>) -> Value {
    let appid = p.get("appid").map(String::as_str).unwrap_or_default();
    let key = p.get("accesskey").map(String::as_str).unwrap_or_default();
    if appid.is_empty() || key.is_empty() {
        return interface_error(400, "Illegal request: appid and accesskey are required");
    }
    if appid != state.config.app_id {
        return interface_error(601, "appid not authorized");
    }
    if key != state.config.access_key {
        return business_error("1003", "Authorization failed");
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    state
        .lock()
        .tokens
        .insert(token.clone(), Some(Instant::now() + state.config.token_ttl));
    ok(
        "Authorization successful",
        Some(
            json!({"companycode": state.config.company_code, "companyname": state.config.company_name,
            "token": token, "authtime": chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(), "authmodel": ""}),
        ),
    )
}

async fn dial(state: &Arc<SimState>, p: &HashMap<String, String>, double: bool) -> Response {
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
    let ext = get("extnumber");
    let dest = if double {
        get("bnumber")
    } else {
        get("destnumber")
    };
    if ext.is_empty() {
        return json_response(&interface_error(
            400,
            "Illegal request: extnumber is required",
        ));
    }
    if dest.is_empty() || (double && get("anumber").is_empty()) {
        let field = if double {
            "anumber and bnumber are"
        } else {
            "destnumber is"
        };
        return json_response(&interface_error(
            400,
            &format!("Illegal request: {field} required"),
        ));
    }
    let ext_state = state.lock().extensions.get(ext).cloned();
    match ext_state {
        None => return json_response(&business_error("1012", "extension does not exist")),
        Some(e) if !e.enabled => {
            return json_response(&business_error("1013", "extension disabled"));
        }
        Some(e) if !e.registered => {
            return json_response(&business_error("1014", "extension not registered"));
        }
        Some(_) => {}
    }
    let script = state.script_for(dest);
    match script.outcome {
        Outcome::Http500 => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
        }
        Outcome::Garbage => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html>502 Bad Gateway</html>",
            )
                .into_response();
        }
        Outcome::TokenExpired => {
            return json_response(&interface_error(600, "token invalid, please log in again"));
        }
        Outcome::ExtNotRegistered => {
            return json_response(&business_error("1014", "extension not registered"));
        }
        Outcome::Refused => {
            return json_response(&business_error(&script.refuse_code, &script.refuse_message));
        }
        _ => {}
    }
    // Accepted: the call happens whatever becomes of this response.
    let record = {
        let mut g = state.lock();
        g.next_id += 1;
        // Infinity stamps records in Beijing time.
        let tz = chrono::FixedOffset::east_opt(8 * 3600).unwrap_or(chrono::Utc.fix());
        let start = chrono::Utc::now().with_timezone(&tz);
        let r = record::build(&record::NewRecord {
            id: g.next_id,
            company_code: &state.config.company_code,
            double_call: double,
            start,
            params: p,
            dest,
            script: &script,
            base_url: &state.base_url,
        });
        g.bills.push(r.clone());
        r
    };
    schedule_callback(state.clone(), record, script.clone());
    if script.outcome == Outcome::Slow {
        tokio::time::sleep(Duration::from_millis(script.slow_ms)).await;
    }
    let desc = if double {
        "The double call command is sent successfully"
    } else {
        "Call command sent successfully"
    };
    json_response(&ok(desc, None))
}

fn schedule_callback(
    state: Arc<SimState>,
    record: serde_json::Map<String, Value>,
    script: record::Script,
) {
    if script.callback == CallbackMode::Lost {
        return;
    }
    tokio::spawn(async move {
        let mut delay = script.callback_delay_ms;
        if script.callback == CallbackMode::Delayed {
            delay += script.late_ms;
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let times = if script.callback == CallbackMode::Duplicated {
            2
        } else {
            1
        };
        let body = record::render(&record, &script);
        for _ in 0..times {
            let url = state.lock().callback_url.clone();
            let Some(url) = url else { return };
            state.lock().callbacks_sent += 1;
            let sent = state.http.post(&url).json(&body).send().await;
            match sent {
                // Read to the end: the receiver has finished with it.
                Ok(r) => {
                    let _ = r.bytes().await;
                    state.lock().callbacks_answered += 1;
                }
                Err(e) => tracing::warn!(error = %e, "callback delivery failed"),
            }
        }
    });
}

fn sipnumber_info(state: &SimState, p: &HashMap<String, String>) -> Value {
    let status = p.get("status").map_or("1", String::as_str);
    let only = p.get("extnumber").filter(|s| !s.is_empty());
    let g = state.lock();
    let list: Vec<Value> = g
        .extensions
        .iter()
        .filter(|(n, _)| only.is_none_or(|o| o.split(',').any(|x| x == n.as_str())))
        .filter(|(_, e)| match status {
            "2" => !e.enabled,
            "3" => true,
            _ => e.enabled,
        })
        .map(|(n, e)| {
            json!({"extnumber": n, "password": "******", "status": if e.enabled { 1016 } else { 1013 },
                "register": if e.registered { "reg" } else { "nreg" }})
        })
        .collect();
    ok("query successful", Some(Value::Array(list)))
}

fn call_status(state: &SimState, p: &HashMap<String, String>) -> Value {
    let wanted = p.get("extnumber").cloned().unwrap_or_default();
    let g = state.lock();
    let list: Vec<Value> = wanted
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|n| {
            let status = match g.extensions.get(n) {
                Some(e) if e.registered => 1201,
                Some(_) => 1014,
                None => 1012,
            };
            json!({"extnumber": n, "status": status, "caller": "", "callee": "", "disnumber": "",
                "direction": "", "channel": "", "idleduration": 0, "callduration": 0})
        })
        .collect();
    ok("query successful", Some(Value::Array(list)))
}

fn get_bill(state: &SimState, p: &HashMap<String, String>) -> Value {
    let filter = |k: &str| p.get(k).filter(|s| !s.is_empty()).cloned();
    let (uuid, member, start, end) = (
        filter("customuuid"),
        filter("memberid"),
        filter("starttime"),
        filter("endtime"),
    );
    let page: usize = p
        .get("currentpage")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per: usize = p
        .get("itemsperpage")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
        .clamp(1, 1000);
    let g = state.lock();
    let matching: Vec<&serde_json::Map<String, Value>> = g
        .bills
        .iter()
        .filter(|b| {
            uuid.as_ref()
                .is_none_or(|u| b.get("customuuid").and_then(Value::as_str) == Some(u))
        })
        .filter(|b| {
            member
                .as_ref()
                .is_none_or(|m| b.get("memberid").and_then(Value::as_str) == Some(m))
        })
        .filter(|b| {
            let st = b
                .get("starttime")
                .and_then(Value::as_str)
                .unwrap_or_default();
            start.as_ref().is_none_or(|s| st >= s.as_str())
                && end.as_ref().is_none_or(|e| st <= e.as_str())
        })
        .collect();
    let total = matching.len();
    let bills: Vec<Value> = matching
        .into_iter()
        .skip((page - 1) * per)
        .take(per)
        .map(|b| Value::Object(b.clone()))
        .collect();
    ok(
        "query successful",
        Some(
            json!({"totalitems": total, "currentpage": page, "itemsperpage": per, "bills": bills}),
        ),
    )
}

fn recode_file(state: &SimState, p: &HashMap<String, String>) -> Value {
    let name = p.get("filename").cloned().unwrap_or_default();
    if name.is_empty() {
        return interface_error(400, "Illegal request: filename is required");
    }
    let known = state
        .lock()
        .bills
        .iter()
        .any(|b| b.get("recordfilename").and_then(Value::as_str) == Some(name.as_str()));
    if !known {
        return business_error("1029", "file does not exist");
    }
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%d %H:%M:%S");
    ok(
        "query successful",
        Some(
            json!({"downurl": format!("{}/recordings/{name}?sig=sim", state.base_url),
            "expiredtime": format!("Expiration time:{expires}")}),
        ),
    )
}
