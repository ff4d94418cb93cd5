//! Broker and bus integration tests: a real broker on real sockets (port 0), real
//! DEALER peers, and real child processes where a process must die.

// Test code is exempt from the workspace's 120-line function limit.
#![allow(clippy::too_many_lines)]

mod call_then;
mod handover;
mod hostile;
mod liveness;
mod pair;
mod pubsub;
mod routing;
mod trust;

use std::time::Duration;
use switchboard_bus::CallOptions;

/// How long a test waits for a service to be ready.
const READY: Duration = Duration::from_secs(10);

/// Options that pin a call to `instance`.
fn pinned(instance: &str) -> CallOptions {
    CallOptions {
        instance: Some(instance.into()),
        ..CallOptions::default()
    }
}

/// Options that route a call by `key`.
fn keyed(key: &str) -> CallOptions {
    CallOptions {
        key: Some(key.into()),
        ..CallOptions::default()
    }
}

/// Options with a timeout of `ms`.
fn timeout(ms: u64) -> CallOptions {
    CallOptions {
        timeout: Some(Duration::from_millis(ms)),
        ..CallOptions::default()
    }
}
