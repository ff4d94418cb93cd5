//! What the dashboard shows, as JSON: every instance (as `ls` says), and per
//! service its requests, errors and latency quantiles, read from the merged
//! metrics (parsed with `prometheus-parse`, not by hand); the gateway's
//! connections; the broker's counters.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::proto::admin::{InstanceStatus, Span, TraceQuery};
use switchboard_bus::proto::{self, BrokerStats};
use switchboard_bus::{CallOptions, Handle};

use super::metrics::scrape;
use crate::apps::Supervisor;

/// One service, from its instances' metrics (since they started).
#[derive(Debug, Default, Serialize)]
pub(crate) struct ServiceStats {
    service: String,
    /// Requests handled (built-in `$` ops left out).
    requests: f64,
    /// Of those, ended in an error.
    errors: f64,
    /// Latency quantiles from the handlers' histogram, ms.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// The dashboard's picture, once a second.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Snapshot {
    at_ms: u64,
    instances: Vec<InstanceStatus>,
    services: Vec<ServiceStats>,
    /// Open WebSocket connections, every gateway together.
    connections: f64,
    /// Client requests through the gateways since they started.
    client_requests: f64,
    /// Requests in the broker now, and of those held for a worker (with the
    /// oldest one's age).
    broker_inflight: f64,
    held: f64,
    held_oldest_seconds: f64,
    broker: Option<BrokerStats>,
    /// Recent exits, failed starts and hung kills, newest first.
    events: Vec<switchboard_bus::proto::admin::SupervisorEvent>,
}

pub(crate) async fn snapshot(sup: &Arc<Supervisor>, bus: &Handle) -> Snapshot {
    let text = scrape(sup, bus).await;
    let options = CallOptions {
        timeout: Some(Duration::from_millis(800)),
        ..CallOptions::default()
    };
    let broker = bus.broker("stats", Vec::new(), options).await.ok();
    let mut snap = Snapshot {
        at_ms: proto::now_ms(),
        instances: sup.ls(bus).await,
        broker,
        events: sup.events(),
        ..Snapshot::default()
    };
    let Ok(scraped) = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
    else {
        return snap;
    };
    let mut services: BTreeMap<String, ServiceStats> = BTreeMap::new();
    // Per service: (upper bound, cumulative count) summed over instances and ops.
    let mut buckets: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    for s in &scraped.samples {
        let label = |k: &str| s.labels.get(k).unwrap_or("").to_owned();
        let user_op = !label("op").starts_with('$');
        match (s.metric.as_str(), &s.value) {
            ("sb_service_requests_total", prometheus_parse::Value::Counter(v)) if user_op => {
                let e = services.entry(label("service")).or_default();
                e.requests += v;
                if label("code") != "ok" {
                    e.errors += v;
                }
            }
            ("sb_service_request_duration_seconds", prometheus_parse::Value::Histogram(hs))
                if user_op =>
            {
                let b = buckets.entry(label("service")).or_default();
                for h in hs {
                    // Keyed by the bound in ns, to order and sum them.
                    let bound = if h.less_than.is_finite() {
                        (h.less_than * 1e9) as u64
                    } else {
                        u64::MAX
                    };
                    *b.entry(bound).or_default() += h.count;
                }
            }
            ("sb_gateway_connections", prometheus_parse::Value::Gauge(v)) => {
                snap.connections += v;
            }
            ("sb_gateway_requests_total", prometheus_parse::Value::Counter(v)) => {
                snap.client_requests += v;
            }
            ("sb_broker_inflight", prometheus_parse::Value::Gauge(v)) => snap.broker_inflight = *v,
            ("sb_broker_held", prometheus_parse::Value::Gauge(v)) => snap.held = *v,
            ("sb_broker_held_oldest_seconds", prometheus_parse::Value::Gauge(v)) => {
                snap.held_oldest_seconds = *v;
            }
            _ => {}
        }
    }
    for (service, b) in &buckets {
        let e = services.entry(service.clone()).or_default();
        e.p50_ms = quantile(b, 0.5);
        e.p99_ms = quantile(b, 0.99);
    }
    snap.services = services
        .into_iter()
        .map(|(service, mut s)| {
            s.service = service;
            s
        })
        .collect();
    snap
}

/// The `q` quantile, ms, from cumulative buckets (bound in ns → count), by
/// linear interpolation inside the bucket it falls in (as Prometheus's
/// `histogram_quantile` does).
fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = *buckets.get(&u64::MAX).or_else(|| buckets.values().last())?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0u64, 0.0);
    for (&bound, &count) in buckets {
        if count >= rank {
            if bound == u64::MAX {
                return Some(lower as f64 / 1e6);
            }
            let inside = (rank - below) / (count - below).max(f64::MIN_POSITIVE);
            return Some((lower as f64 + (bound - lower) as f64 * inside) / 1e6);
        }
        lower = bound;
        below = count;
    }
    None
}

/// Which instance of `service` owns `key` now (keyed routing: rendezvous
/// hashing over the ready instances), as the broker answers it.
pub(crate) async fn owner(bus: &Handle, service: &str, key: &str) -> serde_json::Value {
    let query = proto::admin::OwnerQuery {
        service: service.to_owned(),
        key: key.to_owned(),
    };
    let options = CallOptions {
        timeout: Some(Duration::from_secs(1)),
        ..CallOptions::default()
    };
    let Ok(body) = proto::to_body(&query) else {
        return serde_json::json!({"error": "bad query"});
    };
    match bus
        .broker::<proto::admin::OwnerReply>("owner", body, options)
        .await
    {
        Ok(reply) => {
            serde_json::json!({"service": service, "key": key, "instance": reply.instance})
        }
        Err(e) => serde_json::json!({"error": e.to_string()}),
    }
}

/// The spans of trace `id`, from every process.
pub(crate) async fn trace(bus: &Handle, id: &str) -> Vec<Span> {
    let query = TraceQuery {
        trace: id.to_owned(),
        slowest: 0,
    };
    bus.collect_spans(&query, Duration::from_secs(1))
        .await
        .unwrap_or_default()
}

/// The slowest recent client requests, every gateway's.
pub(crate) async fn slowest(bus: &Handle) -> Vec<Span> {
    let query = TraceQuery {
        trace: String::new(),
        slowest: 20,
    };
    let mut spans = bus
        .collect_spans(&query, Duration::from_secs(1))
        .await
        .unwrap_or_default();
    spans.sort_by_key(|s| std::cmp::Reverse(s.duration_us));
    spans.truncate(20);
    spans
}

#[cfg(test)]
mod tests {
    use super::quantile;
    use std::collections::BTreeMap;

    #[test]
    fn quantiles_interpolate_inside_a_bucket() {
        // 100 requests: 50 under 1 ms, 100 under 2 ms.
        let b: BTreeMap<u64, f64> = [(1_000_000, 50.0), (2_000_000, 100.0), (u64::MAX, 100.0)]
            .into_iter()
            .collect();
        assert_eq!(quantile(&b, 0.5), Some(1.0));
        assert!((quantile(&b, 0.99).unwrap() - 1.98).abs() < 1e-9);
        assert_eq!(quantile(&BTreeMap::new(), 0.5), None);
    }
}
