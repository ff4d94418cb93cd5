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
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, OnceLock};

pub use metrics::{counter, gauge, histogram, Counter, Histogram};

/// Metric handles registered once per label set. Recording through the macros
/// builds and hashes the labels on every call (measured: 10–20% of a request's
/// cost through the gateway); through a cached handle it is an atomic add.
/// The key space is as bounded as the labels it stands for.
pub struct Cache<K> {
    map: Mutex<HashMap<K, (Counter, Histogram)>>,
}

impl<K: Hash + Eq> Default for Cache<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> Cache<K> {
    /// The handles for `key`, registered with `make` the first time.
    pub fn get(
        &self,
        key: K,
        make: impl FnOnce(&K) -> (Counter, Histogram),
    ) -> (Counter, Histogram) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get(&key) {
            return h.clone();
        }
        let h = make(&key);
        map.insert(key, h.clone());
        h
    }
}

/// Latency buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// Seconds after which a gauge that is not set again leaves the exposition
/// (`SB_METRICS_GAUGE_IDLE_SECS`).
pub const GAUGE_IDLE_SECS: u64 = 120;

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
        // A gauge nobody sets any more (an instance scaled away, an app
        // removed) leaves the exposition after this long, rather than showing
        // its last value ("online") forever. Gauges that describe the present
        // are set at every scrape. Counters and histograms stay.
        let idle = std::env::var("SB_METRICS_GAUGE_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(GAUGE_IDLE_SECS);
        let builder = PrometheusBuilder::new().idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(std::time::Duration::from_secs(idle)),
        );
        let builder = match builder.set_buckets(&BUCKETS) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let handle = builder.install_recorder().ok()?;
        // Histograms buffer every value until upkeep folds them into their
        // buckets: without it a process nobody scrapes would grow by every
        // request. Every 5 s, on a thread of its own.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            eprintln!("metrics: no upkeep thread ({e}); histograms are folded only when scraped");
        }
        Some(handle)
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
