//! The timeline of one request: each process keeps the spans it recorded (the
//! hops of requests: receive, dispatch, handler, onward call, SQL statement) in a
//! bounded ring, found by trace id. `$trace` answers with them and `sbctl trace`
//! puts every process's together.
//!
//! Bounded twice: at most [`RING`] spans (the oldest go first), and spans are
//! recorded only for requests that carry a trace id.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use switchboard_proto::admin::Span;

/// Spans one process keeps.
pub const RING: usize = 8192;

/// A span as the ring keeps it: one allocation (the name) instead of a
/// [`Span`]'s four, since recording sits on every request's path; turned into
/// a [`Span`] only when asked for.
struct Stored {
    /// Trace ids are 16 hex digits (`new_trace_id`): kept inline.
    trace: Trace,
    instance: Arc<str>,
    name: Box<str>,
    start_us: u64,
    duration_us: u64,
    outcome: &'static str,
}

enum Trace {
    Short([u8; 16], u8),
    Long(Box<str>),
}

impl Trace {
    fn new(t: &str) -> Self {
        let mut buf = [0u8; 16];
        match buf.get_mut(..t.len()) {
            Some(slot) => {
                slot.copy_from_slice(t.as_bytes());
                Trace::Short(buf, t.len() as u8)
            }
            None => Trace::Long(t.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Trace::Short(buf, len) => std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or(""),
            Trace::Long(s) => s,
        }
    }
}

impl Stored {
    fn to_span(&self) -> Span {
        Span {
            trace: self.trace.as_str().to_owned(),
            instance: self.instance.to_string(),
            name: self.name.to_string(),
            start_us: self.start_us,
            duration_us: self.duration_us,
            outcome: self.outcome.to_owned(),
        }
    }
}

struct Ring {
    spans: VecDeque<Stored>,
    /// The instance names seen (a process has one or a few): shared, not copied.
    instances: Vec<Arc<str>>,
}

static SPANS: Mutex<Ring> = Mutex::new(Ring {
    spans: VecDeque::new(),
    instances: Vec::new(),
});

/// µs since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A span being timed: [`Timer::finish`] records it.
#[derive(Debug, Clone, Copy)]
pub struct Timer {
    start_us: u64,
    started: Instant,
}

impl Timer {
    /// Starts timing now.
    pub fn start() -> Self {
        Self {
            start_us: now_us(),
            started: Instant::now(),
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Records the span `name` of `trace` by `instance` with `outcome`.
    pub fn finish(&self, trace: &str, instance: &str, name: String, outcome: &'static str) {
        if trace.is_empty() || !enabled() {
            return;
        }
        let duration_us = self.started.elapsed().as_micros() as u64;
        let mut ring = SPANS.lock().unwrap_or_else(|p| p.into_inner());
        let instance = match ring.instances.iter().find(|i| &***i == instance) {
            Some(i) => i.clone(),
            None => {
                let i: Arc<str> = instance.into();
                if ring.instances.len() < 64 {
                    ring.instances.push(i.clone());
                }
                i
            }
        };
        if ring.spans.len() >= RING {
            ring.spans.pop_front();
        }
        ring.spans.push_back(Stored {
            trace: Trace::new(trace),
            instance,
            name: name.into_boxed_str(),
            start_us: self.start_us,
            duration_us,
            outcome,
        });
    }
}

/// Whether spans are kept: `SB_TRACE=off` turns them off (for measuring what
/// they cost).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !std::env::var("SB_TRACE").is_ok_and(|v| v == "off"))
}

/// The spans of `trace` this process holds, oldest first.
pub fn spans_of(trace: &str) -> Vec<Span> {
    let ring = SPANS.lock().unwrap_or_else(|p| p.into_inner());
    ring.spans
        .iter()
        .filter(|s| s.trace.as_str() == trace)
        .map(Stored::to_span)
        .collect()
}

/// The `n` longest spans named `prefix…` this process holds, longest first.
pub fn slowest(prefix: &str, n: usize) -> Vec<Span> {
    let ring = SPANS.lock().unwrap_or_else(|p| p.into_inner());
    let mut spans: Vec<Span> = ring
        .spans
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .map(Stored::to_span)
        .collect();
    spans.sort_by_key(|s| std::cmp::Reverse(s.duration_us));
    spans.truncate(n);
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_found_by_trace() {
        let long = "a-trace-id-longer-than-sixteen-bytes";
        for i in 0..RING + 10 {
            let timer = Timer {
                start_us: i as u64,
                started: Instant::now(),
            };
            let trace = if i == RING + 9 {
                long.to_owned()
            } else {
                format!("t{}", i % 3)
            };
            timer.finish(&trace, "inst", format!("ws {i}"), "ok");
        }
        Timer::start().finish("", "inst", "no trace id: not kept".into(), "ok");
        let all: usize = (0..3).map(|i| spans_of(&format!("t{i}")).len()).sum();
        assert_eq!(all + spans_of(long).len(), RING);
        let last = &spans_of(long)[0];
        assert_eq!(
            (last.instance.as_str(), last.outcome.as_str()),
            ("inst", "ok")
        );
        assert_eq!(slowest("ws ", 1).len(), 1);
    }
}
