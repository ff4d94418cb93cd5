//! PM2's values as main reads them: lists of strings, env tables, sizes and
//! durations.

use serde_json::Value;
use std::collections::BTreeMap;

/// A list of strings: an array, or a string split as a shell would (PM2
/// takes both; `shlex` rather than a hand-written splitter, for quotes).
pub(super) fn string_list(
    v: Option<&Value>,
    key: &str,
    note: &mut impl FnMut(String),
) -> Vec<String> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => shlex::split(s).unwrap_or_else(|| {
            note(format!("{key} {s:?}: unbalanced quotes; split on spaces"));
            s.split_whitespace().map(str::to_owned).collect()
        }),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(other) => vec![other.to_string()],
    }
}

/// An env table: strings, numbers and booleans become strings (as Node's
/// `process.env` makes them); anything else, and a name no process
/// environment can hold, is reported.
pub(super) fn env_table(
    v: Option<&Value>,
    key: &str,
    note: &mut impl FnMut(String),
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return out };
    let Value::Object(map) = v else {
        note(format!("{key} is not an object: not carried over"));
        return out;
    };
    for (name, value) in map {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            note(format!(
                "{key}.{name:?} not carried over: not an environment variable name"
            ));
            continue;
        }
        let value = match value {
            Value::String(s) if s.contains('\0') => {
                note(format!("{key}.{name} not carried over: holds a NUL byte"));
                continue;
            }
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            other => {
                note(format!(
                    "{key}.{name} ({other}) not carried over: not a string, number or boolean"
                ));
                continue;
            }
        };
        out.insert(name.clone(), value);
    }
    out
}

/// PM2's `max_memory_restart` ("200M", "1G", "150K", "300MB", bytes) as main
/// reads it ("200M", "1G", "512K", bytes).
pub(super) fn size(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        Value::String(s) => {
            let s = s.trim().to_ascii_uppercase();
            let s = s
                .strip_suffix('B')
                .filter(|r| r.ends_with(['K', 'M', 'G']))
                .unwrap_or(&s);
            let digits = s.trim_end_matches(['K', 'M', 'G']);
            let unit = &s[digits.len()..];
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && unit.len() <= 1)
                .then(|| s.to_owned())
        }
        _ => None,
    }
}

/// A PM2 duration: ms as a number or digits, or a string with a unit ("60s",
/// "1m"; read by `humantime`).
pub(super) fn millis(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                humantime::parse_duration(s)
                    .ok()
                    .map(|d| d.as_millis() as u64)
            })
        }
        _ => None,
    }
}
