//! `/metrics` for the whole system: main's own (every instance's state,
//! restarts, memory and CPU, as main sees them), and each instance's and the
//! broker's, asked for over the bus (`$metrics`) and merged into one exposition
//! with an `instance` label. One scrape target for everything main runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::proto::{self, admin::InstanceStatus};
use switchboard_bus::svc::metrics::{counter, gauge, render};
use switchboard_bus::{CallOptions, Handle};

use crate::supervisor::Supervisor;

/// How long an instance may take to answer `$metrics` before the scrape goes on
/// without it.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);

/// main's own gauges, from what `ls` says.
fn record_instances(list: &[InstanceStatus]) {
    for i in list.iter().filter(|i| i.managed) {
        let labels = [("app", i.app.clone()), ("instance", i.instance.clone())];
        for state in [
            "online",
            "degraded",
            "starting",
            "stopping",
            "stopped",
            "waiting",
            "errored",
            "restarting",
        ] {
            let mut l = labels.to_vec();
            l.push(("state", state.to_owned()));
            gauge!("sb_instance_state", &l).set(if i.state.as_str() == state { 1.0 } else { 0.0 });
        }
        counter!("sb_instance_restarts_total", &labels).absolute(u64::from(i.restarts));
        gauge!("sb_instance_resident_memory_bytes", &labels).set(i.rss_bytes as f64);
        gauge!("sb_instance_cpu_ratio", &labels).set(i.cpu_percent / 100.0);
        gauge!("sb_instance_uptime_seconds", &labels).set(i.uptime_ms as f64 / 1000.0);
    }
}

/// The merged exposition.
pub(crate) async fn scrape(sup: &Arc<Supervisor>, bus: &Handle) -> String {
    let list = sup.ls(bus).await;
    record_instances(&list);
    let options = CallOptions {
        timeout: Some(ASK_TIMEOUT),
        ..CallOptions::default()
    };
    let mut texts: Vec<(String, String)> = vec![("main".into(), render())];
    let broker: Result<String, _> = bus.broker("metrics", Vec::new(), options.clone()).await;
    if let Ok(text) = broker {
        texts.push(("broker".into(), text));
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
    texts.extend(futures::future::join_all(asks).await.into_iter().flatten());
    merge(&texts)
}

/// One metric family: its HELP and TYPE lines and its samples, from every
/// process.
#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merges expositions into one: every sample gets `instance="NAME"` (unless it
/// has one), and each family's HELP and TYPE appear once, before its samples
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
        "instance=\"{}\"",
        instance.replace('\\', "\\\\").replace('"', "\\\"")
    );
    match rest.strip_prefix('{') {
        Some(labels) if labels.contains("instance=\"") => line.to_owned(),
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
            text.contains("sb_x_total{instance=\"chat\",code=\"ok\"} 3"),
            "{text}"
        );
        assert!(text.contains("sb_x_total{instance=\"db\"} 4"), "{text}");
        assert!(
            text.contains("sb_h_seconds_sum{instance=\"chat\"} 0.05"),
            "{text}"
        );
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("parses");
        assert_eq!(parsed.samples.len(), 5);
    }
}
