//! The gateway's metrics (recorded through `switchboard_svc::metrics`, served on
//! `GET /metrics` beside `/health`, and by `$metrics` on the bus like every
//! service's). The hot-path counters are handles registered once.

use metrics::Counter;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Duration;
use switchboard_bus::proto::ErrorCode;
use switchboard_bus::svc::metrics::{counter, gauge, histogram, render, NameCache};

use crate::Gateway;

macro_rules! handle {
    ($name:ident, $metric:literal $(, $k:literal => $v:literal)*) => {
        pub(crate) static $name: LazyLock<Counter> =
            LazyLock::new(|| counter!($metric $(, $k => $v)*));
    };
}

handle!(MESSAGES_IN, "sb_gateway_messages_total", "direction" => "in");
handle!(MESSAGES_OUT, "sb_gateway_messages_total", "direction" => "out");
handle!(BYTES_IN, "sb_gateway_bytes_total", "direction" => "in");
handle!(BYTES_OUT, "sb_gateway_bytes_total", "direction" => "out");
handle!(EVENTS_COALESCED, "sb_gateway_events_coalesced_total");
handle!(EVENTS_DROPPED, "sb_gateway_events_dropped_total");
handle!(AUTH_FAILURES, "sb_gateway_auth_failures_total");
handle!(TLS_FAILURES, "sb_gateway_tls_failures_total");

/// A connection closed with `code` (WebSocket close codes: a bounded set).
pub(crate) fn closed(code: u16) {
    counter!("sb_gateway_closes_total", "code" => code.to_string()).increment(1);
}

/// A frame refused before it reached a service (`code` is the error code).
pub(crate) fn rejected(code: ErrorCode) {
    counter!("sb_gateway_rejected_total", "code" => code.as_str()).increment(1);
}

/// A request to `service` answered with `code` after `elapsed`, frame to reply.
/// `service` is a name the policy gives (`Policy::metric_label`), a bounded set.
pub(crate) fn request_done(service: &str, code: &'static str, elapsed: Duration) {
    static CACHE: LazyLock<NameCache> = LazyLock::new(NameCache::default);
    let (requests, latency) = CACHE.get(service, code, |service, code| {
        (
            counter!("sb_gateway_requests_total", "service" => service.to_owned(), "code" => code),
            histogram!("sb_gateway_request_duration_seconds", "service" => service.to_owned()),
        )
    });
    requests.increment(1);
    latency.record(elapsed.as_secs_f64());
}

/// The text for `GET /metrics`: what is counted as it happens, and the
/// gateway's state now.
pub(crate) fn text(gw: &Gateway) -> String {
    let s = &gw.stats;
    gauge!("sb_gateway_connections").set(s.open.load(Ordering::Relaxed) as f64);
    gauge!("sb_gateway_tcp_connections").set(s.tcp.load(Ordering::Relaxed) as f64);
    gauge!("sb_gateway_topics").set(gw.hub.topics() as f64);
    gauge!("sb_gateway_bus_connected").set(if gw.bus.is_connected() { 1.0 } else { 0.0 });
    for (name, value) in [
        (
            "sb_gateway_accepted_total",
            s.accepted.load(Ordering::Relaxed),
        ),
        (
            "sb_gateway_refused_total",
            s.refused.load(Ordering::Relaxed),
        ),
        (
            "sb_gateway_handshake_timeouts_total",
            s.handshake_timeouts.load(Ordering::Relaxed),
        ),
        (
            "sb_gateway_closed_slow_total",
            s.closed_slow.load(Ordering::Relaxed),
        ),
    ] {
        counter!(name).absolute(value);
    }
    render()
}
