//! The PhalApi envelope `{ret, data, msg}`, parsed tolerantly: `data` may be `[]`, codes may be
//! strings or numbers, and a body that is not JSON is an upstream error, never a panic.

use serde_json::Value;

use crate::ports::PbxError;

/// The `data` of a successful answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Data {
    /// `data.desc`.
    pub desc: String,
    /// `data.result`, when present.
    pub result: Option<Value>,
}

/// Reads an integer that may be sent as a number or a numeric string.
pub fn int(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a value as text (numbers are rendered; null and absent are empty).
pub fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// Reads an array (anything else is empty).
pub fn list(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    }
}

/// The most characters of Infinity's own texts (`msg`, `desc`, `codemsg`) passed on.
pub const MAX_TEXT: usize = 200;

/// One of Infinity's texts as passed on to clients and records: control and invisible
/// characters removed, at most [`MAX_TEXT`] characters. Whatever else a body holds is never
/// passed on (a misconfigured URL must not turn TestConnection into a way to read other
/// servers' pages).
fn vendor_text(v: &Value, key: &str) -> String {
    cco_platform::validate::strip_unsafe(&text(v, key), MAX_TEXT)
}

/// Parses one answer. Success is `ret == 200 && data.status == 0`.
pub fn parse_envelope(http_status: u16, body: &[u8]) -> Result<Data, PbxError> {
    if !(200..300).contains(&http_status) {
        return Err(PbxError::Upstream(format!(
            "HTTP {http_status} with a body of {} bytes (not shown)",
            body.len()
        )));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        PbxError::Upstream(format!(
            "the answer is not JSON ({} bytes, not shown)",
            body.len()
        ))
    })?;
    let Some(ret) = int(&v, "ret") else {
        return Err(PbxError::Upstream(
            "the answer is not Infinity's envelope (no ret)".into(),
        ));
    };
    let msg = vendor_text(&v, "msg");
    match ret {
        200 => {}
        600..=604 => return Err(PbxError::Auth { ret, message: msg }),
        400 => {
            return Err(PbxError::Refused {
                code: "400".into(),
                message: msg,
            });
        }
        _ => return Err(PbxError::Upstream(format!("ret {ret}: {msg}"))),
    }
    let data = v.get("data").cloned().unwrap_or(Value::Null);
    if !data.is_object() {
        return Err(PbxError::Upstream(format!(
            "ret 200 without a data object: {msg}"
        )));
    }
    let status = int(&data, "status").unwrap_or(-1);
    let desc = vendor_text(&data, "desc");
    if status == 0 {
        return Ok(Data {
            desc,
            result: data.get("result").cloned(),
        });
    }
    let errors = data.get("errors").cloned().unwrap_or(Value::Null);
    let code = cco_platform::validate::strip_unsafe(&text(&errors, "code"), 16);
    let codemsg = vendor_text(&errors, "codemsg");
    Err(PbxError::Refused {
        code: if code.is_empty() {
            format!("status {status}")
        } else {
            code
        },
        message: if codemsg.is_empty() { desc } else { codemsg },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_needs_ret_200_and_status_0() {
        let ok = br#"{"ret":200,"data":{"status":0,"desc":"Call command sent successfully","reqtime":1,"rsptime":1},"msg":""}"#;
        assert_eq!(
            parse_envelope(200, ok).expect("ok").desc,
            "Call command sent successfully"
        );
        let status_str = br#"{"ret":"200","data":{"status":"0","desc":"x"},"msg":""}"#;
        assert!(
            parse_envelope(200, status_str).is_ok(),
            "numbers as strings"
        );
    }

    #[test]
    fn business_errors_with_string_or_int_codes() {
        let s = br#"{"ret":200,"data":{"status":1,"desc":"xxxfail","errors":{"code":"1014","codemsg":"extension not registered"}},"msg":""}"#;
        let e = parse_envelope(200, s).expect_err("refused");
        assert!(e.is_extension_error());
        assert_eq!(e.code(), Some("1014"));
        let i = br#"{"ret":200,"data":{"status":1,"desc":"fail","errors":{"code":1003,"codemsg":""}},"msg":""}"#;
        assert_eq!(
            parse_envelope(200, i).expect_err("refused"),
            PbxError::Refused {
                code: "1003".into(),
                message: "fail".into()
            }
        );
    }

    #[test]
    fn interface_errors_with_empty_data_array() {
        let e = parse_envelope(200, br#"{"ret":600,"data":[],"msg":"token invalid"}"#)
            .expect_err("auth");
        assert_eq!(
            e,
            PbxError::Auth {
                ret: 600,
                message: "token invalid".into()
            }
        );
        let e = parse_envelope(200, br#"{"ret":400,"data":[],"msg":"Illegal request"}"#)
            .expect_err("400");
        assert_eq!(e.code(), Some("400"));
        let e = parse_envelope(200, br#"{"ret":500,"data":[],"msg":"boom"}"#).expect_err("500");
        assert!(matches!(e, PbxError::Upstream(_)));
        let e = parse_envelope(200, br#"{"ret":200,"data":[],"msg":""}"#).expect_err("no data");
        assert!(matches!(e, PbxError::Upstream(_)));
    }

    #[test]
    fn garbage_and_http_errors_are_upstream() {
        for (status, body) in [
            (200, &b"<html>oops</html>"[..]),
            (502, b"bad gateway"),
            (200, b""),
            (200, b"[1,2]"),
            (404, b"{}"),
        ] {
            assert!(
                matches!(parse_envelope(status, body), Err(PbxError::Upstream(_))),
                "{status} {body:?}"
            );
        }
    }
}
