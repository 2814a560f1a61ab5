//! Printing: readable key/value blocks and tables by default, canonical proto3 JSON with --json.

use std::io::Write;

use serde::Serialize;
use serde_json::Value;

/// Where results go.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// Print JSON instead of text.
    pub json: bool,
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        Value::Object(_) => v.to_string(),
        other => other.to_string(),
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_owned(), text(other))),
    }
}

/// Writes one line to stdout; a closed pipe (`cco ... | head`) is an error the caller can
/// recognise, never a panic.
pub fn line(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")?;
    Ok(())
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, k| v.get(k).unwrap_or(&Value::Null))
}

impl Out {
    /// Prints one message.
    pub fn one<T: Serialize>(&self, msg: &T) -> anyhow::Result<()> {
        let v = serde_json::to_value(msg)?;
        if self.json {
            return line(&serde_json::to_string_pretty(&v)?);
        }
        let mut pairs = Vec::new();
        flatten("", &v, &mut pairs);
        let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in pairs {
            line(&format!("{k:<width$}  {v}"))?;
        }
        Ok(())
    }

    /// Prints a list as a table of the given (header, JSON path) columns.
    pub fn table<T: Serialize>(&self, rows: &[T], cols: &[(&str, &str)]) -> anyhow::Result<()> {
        let values: Vec<Value> = rows
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        if self.json {
            return line(&serde_json::to_string_pretty(&values)?);
        }
        let cells: Vec<Vec<String>> = values
            .iter()
            .map(|v| cols.iter().map(|(_, path)| text(get(v, path))).collect())
            .collect();
        let widths: Vec<usize> = cols
            .iter()
            .enumerate()
            .map(|(i, (h, _))| {
                cells
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([h.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let row = |items: Vec<String>| {
            items
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        line(&row(cols.iter().map(|(h, _)| (*h).to_owned()).collect()))?;
        for r in cells {
            line(&row(r))?;
        }
        Ok(())
    }

    /// Prints a line of text (not in JSON mode).
    pub fn note(&self, s: &str) -> anyhow::Result<()> {
        if self.json { Ok(()) } else { line(s) }
    }
}

/// A compliance refusal (`google.rpc.ErrorInfo` of domain `cco.infinity`) in words: what rule
/// refused, its inputs, and when the call becomes possible (from `RetryInfo`), one line each.
/// `None` for any other error.
pub fn refusal(s: &tonic::Status, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
    use tonic_types::StatusExt;
    let info = s.get_details_error_info()?;
    if info.domain != "cco.infinity" {
        return None;
    }
    let mut out = format!("refused: {}\n", reason_words(&info.reason));
    let mut keys: Vec<_> = info.metadata.iter().collect();
    keys.sort();
    for (k, v) in keys {
        out.push_str(&format!("  {k}: {v}\n"));
    }
    if let Some(delay) = s.get_details_retry_info().and_then(|r| r.retry_delay) {
        let at = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "calling becomes possible in {} (at {at})\n",
            span_words(delay.as_secs())
        ));
    }
    Some(out)
}

/// A refusal reason (`OUTSIDE_CALLING_HOURS`, ...) in words.
pub fn reason_words(reason: &str) -> String {
    match reason {
        "OUTSIDE_CALLING_HOURS" => "outside the calling hours in the debtor's time zone".into(),
        "HOLIDAY" => "a holiday in the debtor's time zone: no calls".into(),
        "FREQUENCY_CAP" => "the frequency cap is reached".into(),
        "CASE_COOLDOWN" => "the case is cooling down after a conversation".into(),
        "DO_NOT_CALL" => "the number is on a do-not-call list".into(),
        "NUMBER_TYPE_BLOCKED" => "this kind of number is not dialled".into(),
        other => other.to_owned(),
    }
}

/// Seconds as `2d 3h 4m`, `3h 4m`, `4m 5s` or `5s`.
pub fn span_words(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3_600,
        secs % 3_600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_words_with_its_next_moment() {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut d = ErrorDetails::with_error_info(
            "OUTSIDE_CALLING_HOURS",
            "cco.infinity",
            [("time_zone".to_owned(), "America/Chicago".to_owned())],
        );
        d.set_retry_info(Some(std::time::Duration::from_secs(3 * 3_600 + 120)));
        let s = tonic::Status::with_error_details(tonic::Code::FailedPrecondition, "x", d);
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        let words = refusal(&s, now).unwrap_or_default();
        assert_eq!(
            words,
            "refused: outside the calling hours in the debtor's time zone\n  time_zone: America/Chicago\ncalling becomes possible in 3h 2m (at 2026-12-02 13:02:00 UTC)\n"
        );
        assert!(refusal(&tonic::Status::not_found("x"), now).is_none());
    }
}
