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
