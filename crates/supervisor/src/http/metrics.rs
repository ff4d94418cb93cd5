//! `/metrics` for the whole system: main's own (every instance's state,
//! restarts, memory and CPU, as main sees them), and each instance's and the
//! broker's, asked for over the bus (`$metrics`) and merged into one exposition
//! with an `sb_instance` label (not `instance`: that is the label Prometheus
//! gives every target, and a scraped `instance` would be renamed
//! `exported_instance`). One scrape target for everything main runs.
//!
//! Any peer on the bus can answer `$metrics`, so an answer is checked before it
//! is merged: at most [`MAX_ANSWER_BYTES`], valid exposition text line by line,
//! no `sb_instance` label of its own, no duplicate series, no family typed
//! otherwise than main or an earlier answer typed it. One that fails is left
//! out, logged and counted (`sb_metrics_answers_dropped_total{reason}`); the
//! scrape goes on with everyone else's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::proto;
use switchboard_bus::svc::metrics::render;
use switchboard_bus::{CallOptions, Handle};

use crate::apps::Supervisor;
use crate::metrics::INSTANCE_LABEL;

/// How long an instance may take to answer `$metrics` before the scrape goes on
/// without it.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);

/// Largest `$metrics` answer merged. A service's own exposition is a few KiB
/// to some tens (bounded labels); 256 KiB is ten times the largest seen here.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The merged exposition.
pub(crate) async fn scrape(sup: &Arc<Supervisor>, bus: &Handle) -> String {
    let list = sup.ls(bus).await;
    crate::metrics::instances(&list);
    let options = CallOptions {
        timeout: Some(ASK_TIMEOUT),
        ..CallOptions::default()
    };
    let mut answers: Vec<(String, String)> = Vec::new();
    let broker: Result<String, _> = bus.broker("metrics", Vec::new(), options.clone()).await;
    if let Ok(text) = broker {
        answers.push(("broker".into(), text));
    }
    let asks = list
        .iter()
        .filter(|i| i.pid > 0 && i.app != "broker" && i.instance != "main")
        .map(|i| {
            let options = CallOptions {
                instance: Some(i.instance.clone()),
                ..options.clone()
            };
            let service = if i.service.is_empty() {
                &i.app
            } else {
                &i.service
            };
            let (app, instance) = (service.clone(), i.instance.clone());
            async move {
                let reply = bus.call(&app, "$metrics", Vec::new(), options).await.ok()?;
                let text: String = proto::from_body(&reply.body).ok()?;
                Some((instance, text))
            }
        });
    answers.extend(futures::future::join_all(asks).await.into_iter().flatten());
    // main's own families type the rest; the drops are counted before main's
    // text is rendered again, so this scrape already shows them.
    let mut types = families_of(&render());
    let mut texts: Vec<(String, String)> = Vec::with_capacity(answers.len() + 1);
    for (instance, text) in answers {
        match check(&text, &mut types) {
            Ok(()) => texts.push((instance, text)),
            Err(reason) => {
                tracing::warn!(%instance, reason, bytes = text.len(), "$metrics answer left out of the scrape");
                crate::metrics::answer_dropped(reason);
            }
        }
    }
    texts.insert(0, ("main".into(), render()));
    merge(&texts)
}

/// The families `text` types (`# TYPE NAME KIND`), name → kind.
fn families_of(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|r| r.split_once(' '))
        .map(|(n, k)| (n.to_owned(), k.to_owned()))
        .collect()
}

/// Whether an instance's `$metrics` answer may be merged; on success its
/// families' types join `types`. The reason is a metric label value (bounded).
///
/// Written here rather than taken from a crate: the parsers at hand
/// (prometheus-parse, the tests' one) skip lines they cannot read, and here a
/// line that cannot be read must refuse the whole answer.
fn check(text: &str, types: &mut BTreeMap<String, String>) -> Result<(), &'static str> {
    if text.len() > MAX_ANSWER_BYTES {
        return Err("too_large");
    }
    let mut own: BTreeMap<String, String> = BTreeMap::new();
    let mut series = std::collections::HashSet::new();
    let mut family = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or("invalid")?;
            let known = ["counter", "gauge", "histogram", "summary", "untyped"];
            if !metric_name(name) || !known.contains(&kind) {
                return Err("invalid");
            }
            if types.get(name).is_some_and(|k| k != kind) || own.contains_key(name) {
                return Err("type_conflict");
            }
            own.insert(name.to_owned(), kind.to_owned());
            family = name.to_owned();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if !metric_name(rest.split(' ').next().unwrap_or_default()) {
                return Err("invalid");
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, value) = sample(line).ok_or("invalid")?;
        if labels.contains(&INSTANCE_LABEL) {
            return Err("forged_label");
        }
        let suffixed = ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s) == Some(family.as_str()));
        let belongs = name == family
            || (suffixed
                && matches!(
                    own.get(&family).map(String::as_str),
                    Some("histogram" | "summary")
                ));
        if !belongs {
            // A sample outside the family its TYPE line opened: untyped, and
            // its name must not be a typed family's (nor look like the open
            // family's, where the merge would file it).
            if !family.is_empty() && name.starts_with(family.as_str()) {
                return Err("invalid");
            }
            let typed = |k: &String| k != "untyped";
            if own.get(name).is_some_and(typed) || types.get(name).is_some_and(typed) {
                return Err("type_conflict");
            }
            own.insert(name.to_owned(), "untyped".to_owned());
            family.clear();
        }
        if !series.insert(line[..line.len() - value.len()].trim_end().to_owned()) {
            return Err("invalid");
        }
    }
    types.extend(own);
    Ok(())
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// A sample line: its name, its label names and its value (with timestamp).
fn sample(line: &str) -> Option<(&str, Vec<&str>, &str)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !metric_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches(' ');
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inner.split_once("=\"")?;
            if !metric_name(label) || label.contains(':') || labels.contains(&label) {
                return None;
            }
            labels.push(label);
            // The value: up to the first unescaped quote; escapes \\ \" \n.
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        '\\' | '"' | 'n' => {}
                        _ => return None,
                    },
                    (i, '"') => break i,
                    (_, '\n') => return None,
                    _ => {}
                }
            };
            inner = &after[end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
            if !inner.starts_with('}') && !after[end + 1..].starts_with(',') {
                return None;
            }
        }
    }
    let value = rest.strip_prefix(' ')?;
    let mut parts = value.split(' ');
    let number = parts.next()?;
    let number_ok =
        number.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf", "Inf"].contains(&number);
    let stamp_ok = parts.next().is_none_or(|t| t.parse::<i64>().is_ok());
    (number_ok && stamp_ok && parts.next().is_none()).then_some((name, labels, value))
}

/// One metric family: its HELP and TYPE lines and its samples, from every
/// process.
#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merges expositions into one: every sample gets `sb_instance="NAME"` (unless
/// it has one: main's own per-instance families), and each family's HELP and TYPE appear once, before its samples
/// (the text format wants a family's lines together).
pub(crate) fn merge(texts: &[(String, String)]) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (instance, text) in texts {
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.splitn(2, ' ');
                current = parts.next().unwrap_or_default().to_owned();
                let kind = parts.next().unwrap_or("untyped").to_owned();
                families
                    .entry(current.clone())
                    .or_default()
                    .kind
                    .get_or_insert(kind);
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default().to_owned();
                families
                    .entry(name)
                    .or_default()
                    .help
                    .get_or_insert(line.to_owned());
            } else if line.starts_with('#') || line.trim().is_empty() {
                continue;
            } else {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let name = &line[..name_end];
                // A sample belongs to the family its TYPE line opened
                // (histograms: NAME_bucket, NAME_sum, NAME_count).
                let family = if !current.is_empty() && name.starts_with(current.as_str()) {
                    current.clone()
                } else {
                    name.to_owned()
                };
                families
                    .entry(family)
                    .or_default()
                    .samples
                    .push(with_instance(line, name_end, instance));
            }
        }
    }
    let mut out = String::new();
    for (name, f) in families {
        if f.samples.is_empty() {
            continue;
        }
        if let Some(help) = f.help {
            out.push_str(&help);
            out.push('\n');
        }
        out.push_str(&format!(
            "# TYPE {name} {}\n",
            f.kind.as_deref().unwrap_or("untyped")
        ));
        for s in f.samples {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

fn with_instance(line: &str, name_end: usize, instance: &str) -> String {
    let (name, rest) = line.split_at(name_end);
    let label = format!(
        "{INSTANCE_LABEL}=\"{}\"",
        instance.replace('\\', "\\\\").replace('"', "\\\"")
    );
    match rest.strip_prefix('{') {
        Some(labels)
            if labels.starts_with(&format!("{INSTANCE_LABEL}=\""))
                || labels.contains(&format!(",{INSTANCE_LABEL}=\"")) =>
        {
            line.to_owned()
        }
        Some(labels) if labels.starts_with('}') => format!("{name}{{{label}{labels}"),
        Some(labels) => format!("{name}{{{label},{labels}"),
        None => format!("{name}{{{label}}}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn families_are_merged_with_an_instance_label() {
        let a = "# TYPE sb_x_total counter\nsb_x_total{code=\"ok\"} 3\n\n# TYPE sb_h_seconds histogram\nsb_h_seconds_bucket{le=\"0.1\"} 1\nsb_h_seconds_sum 0.05\nsb_h_seconds_count 1\n";
        let b = "# TYPE sb_x_total counter\nsb_x_total 4\n";
        let text = merge(&[("chat".into(), a.into()), ("db".into(), b.into())]);
        assert_eq!(text.matches("# TYPE sb_x_total counter").count(), 1);
        assert!(
            text.contains("sb_x_total{sb_instance=\"chat\",code=\"ok\"} 3"),
            "{text}"
        );
        assert!(text.contains("sb_x_total{sb_instance=\"db\"} 4"), "{text}");
        assert!(
            text.contains("sb_h_seconds_sum{sb_instance=\"chat\"} 0.05"),
            "{text}"
        );
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("parses");
        assert_eq!(parsed.samples.len(), 5);
    }
}

#[cfg(test)]
mod check_tests {
    use super::{check, families_of, MAX_ANSWER_BYTES};
    use std::collections::BTreeMap;

    fn ok(text: &str) -> Result<(), &'static str> {
        check(text, &mut BTreeMap::new())
    }

    #[test]
    fn a_real_exposition_passes() {
        let text = switchboard_bus::svc::metrics::with_help(
            "# TYPE sb_x_total counter\nsb_x_total{code=\"ok\",op=\"a\\\"b\\\\c\\n\"} 3\n\n# TYPE sb_h_seconds histogram\nsb_h_seconds_bucket{le=\"+Inf\"} 1\nsb_h_seconds_sum 0.05\nsb_h_seconds_count 1 1700000000000\nsb_free NaN\n",
        );
        assert_eq!(ok(&text), Ok(()));
    }

    #[test]
    fn worst_answers_are_refused() {
        for (text, reason) in [
            ("sb_x{ 1\n", "invalid"),
            ("<html>\n", "invalid"),
            ("sb_x{a=\"1\"} one\n", "invalid"),
            ("sb_x{a=\"1\"}1\n", "invalid"),
            ("sb_x{a=\"1\" b=\"2\"} 1\n", "invalid"),
            ("sb_x{a=\"\\q\"} 1\n", "invalid"),
            ("sb_x{a=\"1\",a=\"2\"} 1\n", "invalid"),
            ("sb_x 1\nsb_x 2\n", "invalid"),
            ("sb_x 1 2 3\n", "invalid"),
            ("# TYPE sb_x countr\n", "invalid"),
            ("# TYPE 9x counter\n", "invalid"),
            ("sb_x{sb_instance=\"chat\"} 1\n", "forged_label"),
            ("# TYPE sb_x counter\n# TYPE sb_x gauge\n", "type_conflict"),
            ("# TYPE sb_x counter\nsb_x_bucket 1\n", "invalid"),
            ("sb_y 1\n# TYPE sb_y gauge\nsb_y 2\n", "type_conflict"),
        ] {
            assert_eq!(ok(text), Err(reason), "{text:?}");
        }
        let big = "sb_x 1\n".repeat(MAX_ANSWER_BYTES / 7 + 1);
        assert_eq!(ok(&big), Err("too_large"));
        // A family main types otherwise.
        let mut types = families_of("# TYPE sb_instance_state gauge\n");
        assert_eq!(
            check(
                "# TYPE sb_instance_state counter\nsb_instance_state 1\n",
                &mut types
            ),
            Err("type_conflict")
        );
        assert_eq!(
            check("sb_instance_state 1\n", &mut types),
            Err("type_conflict")
        );
    }
}
