//! The process's metrics: one Prometheus recorder per process (the `metrics`
//! facade, rendered by `metrics-exporter-prometheus`), installed on first use;
//! [`render`] gives the text exposition format. Latency histograms have buckets
//! in seconds from 100 µs to 10 s.
//!
//! Names follow Prometheus conventions: `sb_` prefix, `_total` for counters,
//! `_seconds` and `_bytes` base units; label values are bounded (services, ops
//! and codes, never users, rooms or trace ids).
//!
//! # One way to record
//!
//! Each crate that records metrics does it in one module, its `src/metrics.rs`
//! (`bus`: every service's `sb_service_*`; `broker`, `gateway`, `db`,
//! `supervisor`). That module owns every metric name and label set of its
//! crate and offers small named functions (`metrics::commit(rows, elapsed)`,
//! `metrics::rejected(code)`); the rest of the crate calls those, never the
//! [`counter!`], [`gauge!`] or [`histogram!`] macros (`tests/e2e/docs.rs`
//! fails on one anywhere else under `crates/*/src`). Recording on a
//! per-request path goes through handles registered once: a [`Cache`] keyed
//! by the bounded labels (a [`NameCache`] for a name and a code, looked up by
//! `&str`), or a `static` handle for a label set known at
//! compile time. What a crate keeps as plain counters (its `Stats`) or knows
//! only as state is copied into the recorder at scrape time, by a function of
//! the same module.
//!
//! A new metric: a function in its crate's `metrics.rs`, its `# HELP` line in
//! [`HELP`], and its row in `docs/observability.md`.

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

/// A [`Cache`] keyed by a name label (a service, an op) and a code, looked up
/// by `&str` without allocating a key: the name's entry, then its codes (a
/// handful: `ok` and the error codes) in turn. A `Cache<(String, _)>` would
/// make an owned `String` on every request just to look one up.
#[derive(Default)]
pub struct NameCache {
    map: Mutex<HashMap<Box<str>, ByCode>>,
}

/// A name's handles, by code.
type ByCode = Vec<(&'static str, (Counter, Histogram))>;

impl NameCache {
    /// The handles for (`name`, `code`), registered with `make` the first time.
    pub fn get(
        &self,
        name: &str,
        code: &'static str,
        make: impl FnOnce(&str, &'static str) -> (Counter, Histogram),
    ) -> (Counter, Histogram) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(codes) = map.get_mut(name) {
            if let Some((_, h)) = codes.iter().find(|(c, _)| *c == code) {
                return h.clone();
            }
            let h = make(name, code);
            codes.push((code, h.clone()));
            return h;
        }
        let h = make(name, code);
        map.insert(name.into(), vec![(code, h.clone())]);
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

/// The metrics in the Prometheus text format, every family with its `# HELP`.
pub fn render() -> String {
    install();
    match HANDLE.get().and_then(Option::as_ref) {
        Some(handle) => {
            handle.run_upkeep();
            with_help(&handle.render())
        }
        None => String::new(),
    }
}

/// What each family of the workspace measures: its `# HELP` text. One table
/// for every process (the exporter prints HELP only for families described
/// through `describe_*!` at each recording site; here the gateway, the broker,
/// the services and main share one list, and a family missing from it still
/// gets a HELP line made from its name).
pub const HELP: &[(&str, &str)] = &[
    (
        "sb_service_requests_total",
        "Requests a service handled, by op and outcome (ok or the error code).",
    ),
    (
        "sb_service_request_duration_seconds",
        "Handler latency of a service's requests, by op.",
    ),
    (
        "sb_broker_requests_total",
        "Requests the broker finished, by service and outcome.",
    ),
    (
        "sb_broker_request_duration_seconds",
        "Time from the broker receiving a request to its answer, by service.",
    ),
    (
        "sb_broker_inflight",
        "Requests dispatched by the broker and not yet answered.",
    ),
    (
        "sb_broker_held",
        "Requests the broker holds for a service with no ready instance.",
    ),
    (
        "sb_broker_held_oldest_seconds",
        "Age of the oldest held request.",
    ),
    ("sb_broker_peers", "Peers connected to the broker."),
    (
        "sb_broker_late_replies_total",
        "Replies that arrived after their request was answered or expired.",
    ),
    (
        "sb_broker_malformed_total",
        "Malformed frames the broker dropped.",
    ),
    (
        "sb_broker_unauthenticated_total",
        "Messages from peers that had not proved the secret.",
    ),
    (
        "sb_broker_auth_failures_total",
        "Hellos whose proof of the secret failed.",
    ),
    (
        "sb_broker_retried_total",
        "Idempotent requests retried on another instance.",
    ),
    ("sb_broker_events_total", "Events the broker fanned out."),
    (
        "sb_broker_events_dropped_total",
        "Events dropped for a subscriber that could not take them.",
    ),
    (
        "sb_broker_send_dropped_total",
        "Messages the broker could not send to a peer.",
    ),
    (
        "sb_broker_peers_lost_total",
        "Peers dropped for missed heartbeats.",
    ),
    (
        "sb_broker_rogue_replies_total",
        "Replies from an instance the request was not dispatched to.",
    ),
    (
        "sb_broker_subs_refused_total",
        "Subscriptions the broker refused past its per-peer cap.",
    ),
    (
        "sb_broker_names_refused_total",
        "Registrations refused: the instance name is held by a live process.",
    ),
    (
        "sb_broker_too_large_total",
        "Messages over a peer's size cap the broker answered too_large instead of sending.",
    ),
    (
        "sb_broker_events_refused_total",
        "Events a peer sent as another's (bus.*, or another gateway's session events), dropped.",
    ),
    (
        "sb_bus_too_large_total",
        "Messages over the bus limit refused before they were sent, by kind.",
    ),
    (
        "sb_gateway_requests_total",
        "Client requests through the gateway, by service and outcome.",
    ),
    (
        "sb_gateway_request_duration_seconds",
        "Time from a client frame to its reply, by service.",
    ),
    (
        "sb_gateway_rejected_total",
        "Client frames refused before any service, by error code.",
    ),
    ("sb_gateway_connections", "Open WebSocket connections."),
    (
        "sb_gateway_tcp_connections",
        "Open TCP connections, handshaking ones included.",
    ),
    (
        "sb_gateway_topics",
        "Topics with at least one subscribed client.",
    ),
    (
        "sb_gateway_bus_connected",
        "1 while the gateway is connected to the broker.",
    ),
    (
        "sb_gateway_closes_total",
        "Connections closed, by WebSocket close code.",
    ),
    (
        "sb_gateway_messages_total",
        "WebSocket frames, by direction.",
    ),
    (
        "sb_gateway_bytes_total",
        "WebSocket payload bytes, by direction.",
    ),
    (
        "sb_gateway_events_coalesced_total",
        "Events replaced by a newer one before reaching a slow client.",
    ),
    (
        "sb_gateway_events_dropped_total",
        "Events dropped for a client that could not take them.",
    ),
    ("sb_gateway_auth_failures_total", "Client tokens refused."),
    (
        "sb_gateway_tls_failures_total",
        "TLS handshakes that failed.",
    ),
    ("sb_gateway_accepted_total", "TCP connections accepted."),
    (
        "sb_gateway_refused_total",
        "TCP connections refused at a cap.",
    ),
    (
        "sb_gateway_handshake_timeouts_total",
        "Connections closed for not finishing the WebSocket handshake in time.",
    ),
    (
        "sb_gateway_closed_slow_total",
        "Connections closed for reading too slowly.",
    ),
    ("sb_db_commit_duration_seconds", "Time of one group commit."),
    ("sb_db_commit_rows", "Rows written by one group commit."),
    (
        "sb_instance_state",
        "1 for the state an instance is in now, as main sees it.",
    ),
    (
        "sb_instance_restarts_total",
        "Restarts of an instance by main.",
    ),
    (
        "sb_instance_resident_memory_bytes",
        "Resident memory of an instance's process.",
    ),
    (
        "sb_instance_cpu_ratio",
        "CPU an instance's process used lately, in cores.",
    ),
    (
        "sb_instance_uptime_seconds",
        "Time since an instance's process started.",
    ),
    (
        "sb_metrics_answers_dropped_total",
        "Instances' $metrics answers main left out of its scrape, by reason.",
    ),
];

/// `text` with a `# HELP` line before each `# TYPE` line that lacks one
/// (promtool, and Prometheus's metadata API, want every family described).
pub fn with_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut described = String::new();
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("# HELP ")
            .and_then(|r| r.split(' ').next())
        {
            described = name.to_owned();
        } else if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|r| r.split(' ').next())
        {
            if described != name {
                let help = HELP
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or_else(|| name.replace('_', " "), |(_, h)| (*h).to_owned());
                out.push_str(&format!("# HELP {name} {help}\n"));
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each (name, code) is registered once, and found again by `&str`.
    #[test]
    fn a_name_cache_registers_each_pair_once() {
        let cache = NameCache::default();
        let made = std::cell::Cell::new(0);
        let make = |_: &str, _: &'static str| {
            made.set(made.get() + 1);
            (Counter::noop(), Histogram::noop())
        };
        for _ in 0..3 {
            for (name, code) in [("chat", "ok"), ("chat", "timeout"), ("loc", "ok")] {
                let owned = name.to_owned();
                let _handles = cache.get(&owned, code, make);
            }
        }
        assert_eq!(made.get(), 3);
    }
}
