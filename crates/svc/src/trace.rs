//! The timeline of one request: each process keeps the spans it recorded (the
//! hops of requests: receive, dispatch, handler, onward call, SQL statement) in a
//! bounded ring, found by trace id. `$trace` answers with them and `sbctl trace`
//! puts every process's together.
//!
//! Bounded twice: at most [`RING`] spans (the oldest go first), and spans are
//! recorded only for requests that carry a trace id.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use switchboard_proto::admin::Span;

/// Spans one process keeps.
pub const RING: usize = 8192;

/// A span as the ring keeps it: no allocation for the usual trace id and name
/// (both inline), since recording sits on every request's path; turned into a
/// [`Span`] only when asked for.
struct Stored {
    /// Trace ids are 16 hex digits (`new_trace_id`): kept inline.
    trace: Inline<16>,
    instance: Arc<str>,
    /// Span names are a verb and `service.op` (`ws chat.say`, `dispatch chat.say
    /// → chat01`): most fit inline.
    name: Inline<NAME_INLINE>,
    start_us: u64,
    duration_us: u64,
    outcome: &'static str,
}

/// Bytes of a span name kept without an allocation.
const NAME_INLINE: usize = 46;

/// A short string kept inline, a longer one on the heap.
enum Inline<const N: usize> {
    Short([u8; N], u8),
    Long(Box<str>),
}

impl<const N: usize> Inline<N> {
    fn new(t: &str) -> Self {
        let mut buf = [0u8; N];
        match buf.get_mut(..t.len()) {
            Some(slot) => {
                slot.copy_from_slice(t.as_bytes());
                Inline::Short(buf, t.len() as u8)
            }
            None => Inline::Long(t.into()),
        }
    }

    /// Formats `args` inline when it fits, else on the heap.
    fn format(args: std::fmt::Arguments<'_>) -> Self {
        if let Some(s) = args.as_str() {
            return Self::new(s);
        }
        let mut w = InlineWriter::<N> {
            buf: [0; N],
            len: 0,
        };
        match w.write_fmt(args) {
            Ok(()) => Inline::Short(w.buf, w.len as u8),
            Err(_) => Inline::Long(args.to_string().into_boxed_str()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Only ever filled from a `&str` up to a char boundary (below).
            Inline::Short(buf, len) => std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or(""),
            Inline::Long(s) => s,
        }
    }
}

/// Writes whole `&str` pieces into a fixed buffer; fails (and the caller
/// formats on the heap) when one does not fit, so the buffer always ends on a
/// char boundary.
struct InlineWriter<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> std::fmt::Write for InlineWriter<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl Stored {
    fn to_span(&self) -> Span {
        Span {
            trace: self.trace.as_str().to_owned(),
            instance: self.instance.to_string(),
            name: self.name.as_str().to_owned(),
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

/// The wall clock of a span's start, from the monotonic clock its timer
/// already read: one clock read per span instead of two. The offset between
/// the two clocks is taken again once a second (from a span's own finish), so
/// a stepped or slewed wall clock is followed within a second.
mod wall {
    use super::*;

    /// Re-anchor the offset after this long (µs of the monotonic clock).
    const REFRESH_US: u64 = 1_000_000;

    pub(super) struct Clock {
        base: Instant,
        /// Wall µs minus monotonic µs since `base`.
        offset_us: AtomicI64,
        /// Monotonic µs since `base` when `offset_us` was taken.
        taken_at_us: AtomicU64,
    }

    pub(super) fn clock() -> &'static Clock {
        static CLOCK: OnceLock<Clock> = OnceLock::new();
        CLOCK.get_or_init(|| {
            let base = Instant::now();
            Clock {
                base,
                offset_us: AtomicI64::new(offset_from(base)),
                taken_at_us: AtomicU64::new(0),
            }
        })
    }

    /// Wall µs minus monotonic µs since `base`: the wall clock read between
    /// two monotonic reads and set against their midpoint. A thread preempted
    /// between the reads shows as a wide bracket; the narrowest of three tries
    /// is kept.
    fn offset_from(base: Instant) -> i64 {
        let mut best = (Duration::MAX, 0);
        for _ in 0..3 {
            let before = Instant::now();
            let wall = now_us();
            let after = Instant::now();
            let width = after.saturating_duration_since(before);
            let mid = before.saturating_duration_since(base) + width / 2;
            if width < best.0 {
                best = (width, wall as i64 - mid.as_micros() as i64);
            }
            if width < Duration::from_micros(20) {
                break;
            }
        }
        best.1
    }

    /// µs of `at` since the process's base instant (0 for an instant before it).
    pub(super) fn mono_us(at: Instant) -> u64 {
        at.saturating_duration_since(clock().base).as_micros() as u64
    }

    /// The wall-clock µs of the monotonic instant `mono_us`, given `now_mono_us`
    /// (a reading the caller has already made).
    pub(super) fn at(mono_us: u64, now_mono_us: u64) -> u64 {
        let c = clock();
        if now_mono_us.saturating_sub(c.taken_at_us.load(Ordering::Relaxed)) > REFRESH_US {
            c.offset_us.store(offset_from(c.base), Ordering::Relaxed);
            c.taken_at_us.store(now_mono_us, Ordering::Relaxed);
        }
        (mono_us as i64)
            .saturating_add(c.offset_us.load(Ordering::Relaxed))
            .max(0) as u64
    }
}

/// A span being timed: [`Timer::finish`] records it.
#[derive(Debug, Clone, Copy)]
pub struct Timer {
    started: Instant,
}

impl Timer {
    /// Starts timing now (one read of the monotonic clock).
    pub fn start() -> Self {
        // The base instant must come first: a start before it would read as
        // the base.
        wall::clock();
        Self {
            started: Instant::now(),
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records the span `name` of `trace` by `instance` with `outcome`, ending now.
    pub fn finish(
        &self,
        trace: &str,
        instance: &str,
        name: std::fmt::Arguments<'_>,
        outcome: &'static str,
    ) {
        if trace.is_empty() || !enabled() {
            return;
        }
        self.finish_after(self.elapsed(), trace, instance, name, outcome);
    }

    /// As [`Timer::finish`], for a span that lasted `elapsed` (a reading the
    /// caller made for its latency histogram: no second clock read).
    pub fn finish_after(
        &self,
        elapsed: Duration,
        trace: &str,
        instance: &str,
        name: std::fmt::Arguments<'_>,
        outcome: &'static str,
    ) {
        if trace.is_empty() || !enabled() {
            return;
        }
        let start_mono = wall::mono_us(self.started);
        let duration_us = elapsed.as_micros() as u64;
        // Built before the lock is taken, dropped after it is let go.
        let (trace, name) = (Inline::new(trace), Inline::format(name));
        let start_us = wall::at(start_mono, start_mono + duration_us);
        let evicted = {
            let mut ring = SPANS.lock().unwrap_or_else(|p| p.into_inner());
            let instance = ring.instance(instance);
            let evicted = if ring.spans.len() >= RING {
                ring.spans.pop_front()
            } else {
                None
            };
            ring.spans.push_back(Stored {
                trace,
                instance,
                name,
                start_us,
                duration_us,
                outcome,
            });
            evicted
        };
        drop(evicted);
    }
}

impl Ring {
    /// The shared name of `instance` (a process has one or a few; at most 64
    /// are kept, later ones are copied each time).
    fn instance(&mut self, instance: &str) -> Arc<str> {
        if let Some(i) = self.instances.iter().find(|i| &***i == instance) {
            return i.clone();
        }
        let i: Arc<str> = instance.into();
        if self.instances.len() < 64 {
            self.instances.push(i.clone());
        }
        i
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
        .filter(|s| s.name.as_str().starts_with(prefix))
        .map(Stored::to_span)
        .collect();
    spans.sort_by_key(|s| std::cmp::Reverse(s.duration_us));
    spans.truncate(n);
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring is the process's: tests that fill it or read it back take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    fn the_ring_is_bounded_and_found_by_trace() {
        let _turn = serial();
        let long = "a-trace-id-longer-than-sixteen-bytes";
        for i in 0..RING + 10 {
            let timer = Timer::start();
            let trace = if i == RING + 9 {
                long.to_owned()
            } else {
                format!("t{}", i % 3)
            };
            timer.finish(&trace, "inst", format_args!("ws {i}"), "ok");
        }
        Timer::start().finish("", "inst", format_args!("no trace id: not kept"), "ok");
        let all: usize = (0..3).map(|i| spans_of(&format!("t{i}")).len()).sum();
        assert_eq!(all + spans_of(long).len(), RING);
        let last = &spans_of(long)[0];
        assert_eq!(
            (last.instance.as_str(), last.outcome.as_str()),
            ("inst", "ok")
        );
        assert_eq!(slowest("ws ", 1).len(), 1);
    }

    #[test]
    fn names_long_or_multibyte_are_kept_whole() {
        let _turn = serial();
        let trace = "names-whole-test";
        let long = "x".repeat(NAME_INLINE + 10);
        let at_edge = format!("{}é", "y".repeat(NAME_INLINE - 1));
        let timer = Timer::start();
        timer.finish(trace, "inst", format_args!("dispatch {long}"), "ok");
        timer.finish(trace, "inst", format_args!("{at_edge}"), "ok");
        timer.finish(trace, "inst", format_args!("ws chat.say → chat01"), "ok");
        timer.finish(trace, "inst", format_args!("plain"), "ok");
        let names: Vec<String> = spans_of(trace).into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                format!("dispatch {long}"),
                at_edge,
                "ws chat.say → chat01".to_owned(),
                "plain".to_owned()
            ]
        );
    }

    #[test]
    fn a_span_starts_at_the_wall_clock_of_its_timer() {
        let _turn = serial();
        let trace = "wall-clock-test";
        let before = now_us();
        let timer = Timer::start();
        let started = now_us();
        std::thread::sleep(std::time::Duration::from_millis(20));
        timer.finish(trace, "inst", format_args!("x"), "ok");
        let after = now_us();
        let span = &spans_of(trace)[0];
        // Between the wall-clock reads on either side of the start, give or
        // take what the two clocks can drift apart in the anchor's second.
        assert!(
            span.start_us + 1_000 >= before && span.start_us <= started + 1_000,
            "start {} outside {before}..={started}",
            span.start_us
        );
        assert!(span.duration_us >= 20_000 && span.start_us + span.duration_us <= after + 5_000);
    }
}
