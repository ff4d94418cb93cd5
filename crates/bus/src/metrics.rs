//! Every metric the bus records, by name and label set: a service's requests
//! (`sb_service_*`, recorded for each request through handles registered once)
//! and messages refused for their size (`sb_bus_too_large_total`). The
//! convention, and the one HELP table, are in `switchboard_svc::metrics`.

use std::time::Duration;

use crate::svc::metrics::{counter, histogram, NameCache};

/// A service's `sb_service_requests_total` and
/// `sb_service_request_duration_seconds` handles, by (op, code).
#[derive(Default)]
pub(crate) struct ServiceRequests(NameCache);

impl ServiceRequests {
    /// `service` answered a request for `op` with `code` (`ok` or the error
    /// code) after `elapsed`. `op` is a bounded label: one of the service's
    /// ops, a built-in one, or `other`.
    pub(crate) fn done(&self, service: &str, op: &str, code: &'static str, elapsed: Duration) {
        let (requests, latency) = self.0.get(op, code, |op, code| {
            let (service, op) = (service.to_owned(), op.to_owned());
            (
                counter!("sb_service_requests_total", "service" => service.clone(), "op" => op.clone(), "code" => code),
                histogram!("sb_service_request_duration_seconds", "service" => service, "op" => op),
            )
        });
        requests.increment(1);
        latency.record(elapsed.as_secs_f64());
    }
}

/// A message of `kind` (`request`, `reply`, `event` or `message`) refused
/// for its size before it was sent.
pub(crate) fn too_large(kind: &'static str) {
    counter!("sb_bus_too_large_total", "kind" => kind).increment(1);
}
