//! Every metric main records, by name and label set: each instance as main
//! sees it (`sb_instance_*`, set from `ls` at each scrape) and the `$metrics`
//! answers its scrape leaves out. Serving and merging `/metrics` is
//! `http/metrics.rs`. The convention, and the one HELP table, are in
//! `switchboard_svc::metrics`.

use switchboard_bus::proto::admin::{InstanceState, InstanceStatus};
use switchboard_bus::svc::metrics::{counter, gauge};

/// The label main adds to every merged sample, and to its own per-instance
/// families: the process it came from.
pub(crate) const INSTANCE_LABEL: &str = "sb_instance";

/// main's own per-instance families, from what `ls` says (managed instances).
pub(crate) fn instances(list: &[InstanceStatus]) {
    for i in list.iter().filter(|i| i.managed) {
        let labels = [("app", i.app.clone()), (INSTANCE_LABEL, i.instance.clone())];
        for state in [
            InstanceState::Online,
            InstanceState::Degraded,
            InstanceState::Starting,
            InstanceState::Stopping,
            InstanceState::Stopped,
            InstanceState::Waiting,
            InstanceState::Errored,
            InstanceState::Restarting,
        ] {
            let mut l = labels.to_vec();
            l.push(("state", state.as_str().to_owned()));
            gauge!("sb_instance_state", &l).set(if i.state == state { 1.0 } else { 0.0 });
        }
        counter!("sb_instance_restarts_total", &labels).absolute(u64::from(i.restarts));
        gauge!("sb_instance_resident_memory_bytes", &labels).set(i.rss_bytes as f64);
        gauge!("sb_instance_cpu_ratio", &labels).set(i.cpu_percent / 100.0);
        gauge!("sb_instance_uptime_seconds", &labels).set(i.uptime_ms as f64 / 1000.0);
    }
}

/// An instance's `$metrics` answer was left out of the scrape, for `reason`
/// (a bounded set: `too_large`, `invalid`, `forged_label`, `type_conflict`).
pub(crate) fn answer_dropped(reason: &'static str) {
    counter!("sb_metrics_answers_dropped_total", "reason" => reason).increment(1);
}
