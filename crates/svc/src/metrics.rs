//! The process's metrics: one Prometheus recorder per process (the `metrics`
//! facade, rendered by `metrics-exporter-prometheus`), installed on first use.
//! Code anywhere records with the `metrics` macros; [`render`] gives the text
//! exposition format. Latency histograms have buckets in seconds from 100 µs to
//! 10 s.
//!
//! Names follow Prometheus conventions: `sb_` prefix, `_total` for counters,
//! `_seconds` and `_bytes` base units; label values are bounded (services, ops
//! and codes, never users, rooms or trace ids).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub use metrics::{counter, gauge, histogram};

/// Latency buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls do nothing). A process
/// that already has another global recorder keeps it, and [`render`] is then
/// empty. `SB_METRICS=off` installs none: every metric is then a no-op (for
/// measuring what they cost).
pub fn install() {
    HANDLE.get_or_init(|| {
        if std::env::var("SB_METRICS").is_ok_and(|v| v == "off") {
            return None;
        }
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(&BUCKETS) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        builder.install_recorder().ok()
    });
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    install();
    match HANDLE.get().and_then(Option::as_ref) {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}
