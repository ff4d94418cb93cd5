'use strict';
// The spans this process recorded, for `$trace` (docs/protocol.md, "The control
// replies"): a bounded ring, as crates/svc/src/trace.rs keeps.

/** Spans kept; the oldest go first. */
const RING = 8192;

class Spans {
  constructor() {
    this.ring = [];
  }

  /** Records a span of `trace` (nothing for a request without a trace id). */
  record(trace, instance, name, startUs, durationUs, outcome) {
    if (!trace || process.env.SB_TRACE === 'off') return;
    if (this.ring.length >= RING) this.ring.shift();
    this.ring.push({ trace, instance, name, start_us: startUs, duration_us: durationUs, outcome });
  }

  /** The spans of one trace, in start order. */
  of(trace) {
    return this.ring.filter((s) => s.trace === trace).sort((a, b) => a.start_us - b.start_us);
  }

  /** The `n` slowest handled requests' spans. */
  slowest(n) {
    return this.ring
      .filter((s) => s.name.startsWith('handle '))
      .sort((a, b) => b.duration_us - a.duration_us)
      .slice(0, n);
  }
}

module.exports = { Spans, RING };
