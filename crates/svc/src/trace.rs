//! The timeline of one request: each process keeps the spans it recorded (the
//! hops of requests: receive, dispatch, handler, onward call, SQL statement) in a
//! bounded ring, found by trace id. `$trace` answers with them and `sbctl trace`
//! puts every process's together.
//!
//! Bounded twice: at most [`RING`] spans (the oldest go first), and spans are
//! recorded only for requests that carry a trace id.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;
use switchboard_proto::admin::Span;

/// Spans one process keeps.
pub const RING: usize = 8192;

static SPANS: Mutex<VecDeque<Span>> = Mutex::new(VecDeque::new());

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
    pub fn finish(&self, trace: &str, instance: &str, name: String, outcome: &str) {
        record(Span {
            trace: trace.to_owned(),
            instance: instance.to_owned(),
            name,
            start_us: self.start_us,
            duration_us: self.started.elapsed().as_micros() as u64,
            outcome: outcome.to_owned(),
        });
    }
}

/// Whether spans are kept: `SB_TRACE=off` turns them off (for measuring what
/// they cost).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !std::env::var("SB_TRACE").is_ok_and(|v| v == "off"))
}

/// Keeps `span` (nothing without a trace id).
pub fn record(span: Span) {
    if span.trace.is_empty() || !enabled() {
        return;
    }
    let mut ring = SPANS.lock().unwrap_or_else(|p| p.into_inner());
    if ring.len() >= RING {
        ring.pop_front();
    }
    ring.push_back(span);
}

/// The spans of `trace` this process holds, oldest first.
pub fn spans_of(trace: &str) -> Vec<Span> {
    let ring = SPANS.lock().unwrap_or_else(|p| p.into_inner());
    ring.iter().filter(|s| s.trace == trace).cloned().collect()
}

/// The `n` longest spans named `prefix…` this process holds, longest first.
pub fn slowest(prefix: &str, n: usize) -> Vec<Span> {
    let ring = SPANS.lock().unwrap_or_else(|p| p.into_inner());
    let mut spans: Vec<Span> = ring
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .cloned()
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
        for i in 0..RING + 10 {
            record(Span {
                trace: format!("t{}", i % 3),
                name: format!("ws {i}"),
                duration_us: i as u64,
                ..Span::default()
            });
        }
        record(Span::default()); // no trace id: not kept
        let all: usize = (0..3).map(|i| spans_of(&format!("t{i}")).len()).sum();
        assert_eq!(all, RING);
        assert_eq!(slowest("ws ", 1)[0].duration_us, (RING + 9) as u64);
    }
}
