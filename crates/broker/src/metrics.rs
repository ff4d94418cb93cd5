//! Every metric the broker records, by name and label set: its requests
//! (`sb_broker_requests_total`, `…_duration_seconds`, through handles
//! registered once), and at each scrape its state now (gauges) and the
//! counters it keeps as it goes ([`BrokerStats`]). The convention, and the one
//! HELP table, are in `switchboard_svc::metrics`.

use std::time::Duration;
use switchboard_proto::BrokerStats;
use switchboard_svc::metrics::{counter, gauge, histogram, render, Cache};

/// The broker's `sb_broker_requests_total` and
/// `sb_broker_request_duration_seconds` handles, by (service index, outcome).
#[derive(Default)]
pub(crate) struct Requests(Cache<(usize, &'static str)>);

impl Requests {
    /// A request for `service` (its index in the router's table, and its
    /// name) ended with `outcome` (`ok` or the broker's error code) after
    /// `elapsed`, received to answered.
    pub(crate) fn done(
        &self,
        index: usize,
        service: &str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let (requests, latency) = self.0.get((index, outcome), |_| {
            (
                counter!("sb_broker_requests_total", "service" => service.to_owned(), "outcome" => outcome),
                histogram!("sb_broker_request_duration_seconds", "service" => service.to_owned()),
            )
        });
        requests.increment(1);
        latency.record(elapsed.as_secs_f64());
    }
}

/// The broker's state at a scrape.
pub(crate) struct Now {
    /// Requests dispatched or held, not yet answered.
    pub(crate) inflight: usize,
    /// Requests held for a service with no ready instance.
    pub(crate) held: usize,
    /// Age of the oldest held request, ms (0: none).
    pub(crate) held_oldest_ms: u64,
    /// Peers connected.
    pub(crate) peers: usize,
}

/// The broker's exposition: its state `now` and its counters `s`, recorded
/// just before rendering.
pub(crate) fn text(now: &Now, s: &BrokerStats) -> String {
    gauge!("sb_broker_inflight").set(now.inflight as f64);
    gauge!("sb_broker_held").set(now.held as f64);
    gauge!("sb_broker_held_oldest_seconds").set(now.held_oldest_ms as f64 / 1000.0);
    gauge!("sb_broker_peers").set(now.peers as f64);
    for (name, value) in [
        ("sb_broker_late_replies_total", s.late_replies),
        ("sb_broker_malformed_total", s.malformed),
        ("sb_broker_unauthenticated_total", s.unauthenticated),
        ("sb_broker_auth_failures_total", s.auth_failures),
        ("sb_broker_retried_total", s.retried),
        ("sb_broker_events_total", s.events),
        ("sb_broker_events_dropped_total", s.events_dropped),
        ("sb_broker_send_dropped_total", s.send_dropped),
        ("sb_broker_peers_lost_total", s.peers_lost),
        ("sb_broker_rogue_replies_total", s.rogue_replies),
        ("sb_broker_subs_refused_total", s.subs_refused),
        ("sb_broker_names_refused_total", s.names_refused),
        ("sb_broker_too_large_total", s.too_large),
        ("sb_broker_events_refused_total", s.events_refused),
    ] {
        counter!(name).absolute(value);
    }
    render()
}
