//! One shape for every retry loop: [`Backoff`] `{ min, max, jitter }`, after
//! linkerd's `exp-backoff`. The wait before retry `n` (counted from 0) is
//! `min` doubled `n` times, at most `max`, plus up to `jitter` of itself at
//! random. Each policy is a named constant next to the loop it paces.
//!
//! Written here rather than taken from a crate: the loops count their own
//! attempts (a keeper's unstable restarts outlive any one retry loop), so what
//! they need is a pure `delay(n)`, not an iterator or a retry driver (`backon`,
//! `backoff`) that owns the loop.

use std::time::Duration;

/// An exponential backoff policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first wait.
    pub min: Duration,
    /// The longest wait (jitter included).
    pub max: Duration,
    /// Up to this fraction of the wait is added at random (0: none), so that
    /// many peers that failed together do not retry together.
    pub jitter: f64,
}

impl Backoff {
    /// A policy from `min` doubling to `max`, without jitter.
    #[must_use]
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            jitter: 0.0,
        }
    }

    /// The same policy with `jitter` (a fraction, 0 to 1).
    #[must_use]
    pub const fn with_jitter(self, jitter: f64) -> Self {
        Self { jitter, ..self }
    }

    /// The wait before retry `n` (0: the first retry waits `min`).
    #[must_use]
    pub fn delay(&self, n: u32) -> Duration {
        let base = 2u32
            .checked_pow(n)
            .and_then(|factor| self.min.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max));
        // A NaN jitter is no jitter (mul_f64 would panic on it).
        if self.jitter.is_nan() || self.jitter <= 0.0 {
            return base;
        }
        let extra = base.mul_f64(self.jitter.min(1.0) * rand::random::<f64>());
        (base + extra).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delay_doubles_from_min_and_stops_at_max() {
        let policy = Backoff::new(MS * 50, MS * 1_000);
        let waits: Vec<u64> = (0..7).map(|n| policy.delay(n).as_millis() as u64).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(policy.delay(u32::MAX), MS * 1_000);
    }

    #[test]
    fn a_nan_jitter_is_no_jitter() {
        let b =
            Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).with_jitter(f64::NAN);
        assert_eq!(b.delay(2), Duration::from_millis(40));
    }

    #[test]
    fn a_min_over_max_waits_max() {
        assert_eq!(Backoff::new(MS * 20_000, MS * 15_000).delay(0), MS * 15_000);
    }

    #[test]
    fn jitter_adds_at_most_its_fraction_and_never_passes_max() {
        let policy = Backoff::new(MS * 100, MS * 1_000).with_jitter(0.5);
        for _ in 0..200 {
            let first = policy.delay(0);
            assert!(first >= MS * 100 && first <= MS * 150, "{first:?}");
            assert!(policy.delay(5) <= MS * 1_000);
        }
    }
}
