//! One endpoint's score: its latency relative to its routes' baselines
//! (1.0 = typical), as a peak-sensitive moving average, and its failures.
//!
//! - **Jumps** (a sample above [`JUMP`] × the score or below 1/[`JUMP`] of
//!   it, and at least [`JUMP_FLOOR_NS`] away in absolute time) count only
//!   when a second one in the same direction confirms it, from a request
//!   *sent after* the first one arrived; then the score moves at once (to
//!   the nearer of the two). An isolated scheduling hiccup, or one stall
//!   seen by several overlapping requests, is ignored; a pod that really
//!   turned slow is caught by its second slow answer, and one that
//!   recovered by its second fast one.
//! - **Other samples** move the score, in the log domain (a geometric
//!   mean: typical latency, not the mean of a skewed distribution), by
//!   weight `max(1 − e^(−Δt/τ), 1/(n+1), 1/MEMORY)`: the plain mean for the
//!   first samples (a cold first request does not stick), a memory of about
//!   [`MEMORY`] samples when traffic is dense, and the time constant τ when
//!   it is sparse. The
//!   score does **not** decay between samples: an endpoint that is avoided,
//!   and so sampled rarely, keeps its true score (the first weft decayed
//!   it towards zero, and then applied the decay a second time when the
//!   next sample came, so a rarely used pod looked up to twice as fast as
//!   it was); avoided endpoints are re-measured by probes instead.
//! - **Failures** (UNAVAILABLE and the like, resets, refused connections,
//!   deadlines) are not latency samples (a pod that fails in 0.1 ms is not
//!   fast): each one in a row multiplies the endpoint's cost by
//!   [`FAIL_FACTOR`] (up to [`FAIL_MAX`] in a row); the first success
//!   clears them.
//! - A new endpoint starts at 1.0, the service's typical latency, with the
//!   weight of [`PRIOR`] samples: it is neither flooded nor starved, and a
//!   cold first answer (or a jump that is not confirmed) does not rank it.
//! - **A young baseline moves**: the first answers of a service include
//!   its cold ones (connections being opened), so its baseline starts high
//!   and comes down as samples accrue. An endpoint's samples are relative
//!   to the baseline of their time, so the score of one that took many of
//!   the early calls would be stale (it read 0.66 where its twins read
//!   0.95, and took 60 % of the calls for the next hundred). An endpoint
//!   therefore remembers no more samples than 1/[`YOUNG`] of its routes'
//!   total: while the baseline is young every endpoint follows it quickly,
//!   and once it has a few hundred samples this no longer binds.

use crate::Nanos;

/// A sample this many times above (or below) the score is a jump.
pub const JUMP: f64 = 4.0;
/// Jumps smaller than this in absolute time are noise for balancing.
pub const JUMP_FLOOR_NS: f64 = 1e6;
/// The smallest weight of a sample: a memory of about this many samples.
pub const MEMORY: f64 = 100.0;
/// A new endpoint's typical score (1.0) weighs as much as this many samples:
/// one slow first answer (a cold connection behind the endpoint's own
/// proxy) must not rank it.
pub const PRIOR: f64 = 4.0;
/// An endpoint remembers at most 1/YOUNG of its routes' samples.
pub const YOUNG: u64 = 8;
/// Each failure in a row multiplies the cost by this.
pub const FAIL_FACTOR: f64 = 4.0;
/// Failures in a row that still raise the cost (4⁸ = 65,536×).
pub const FAIL_MAX: u32 = 8;

/// An endpoint's score.
#[derive(Clone, Debug)]
pub struct Score {
    /// Relative latency: 1.0 is the routes' typical latency.
    factor: f64,
    /// When the last sample was taken in.
    stamp: Nanos,
    samples: u64,
    pending: Option<Pending>,
    failures: u32,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    up: bool,
    /// The jump's relative latency, and when it arrived.
    value: f64,
    at: Nanos,
}

impl Default for Score {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Score {
    /// A new endpoint's score: typical (1.0), unmeasured.
    pub fn new(now: Nanos) -> Self {
        Score {
            factor: 1.0,
            stamp: now,
            samples: 0,
            pending: None,
            failures: 0,
        }
    }

    /// The relative latency estimate.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// The cost multiplier of the failures in a row.
    pub fn penalty(&self) -> f64 {
        FAIL_FACTOR.powi(self.failures.min(FAIL_MAX) as i32)
    }

    /// What one more request costs on an idle endpoint: factor × penalty.
    pub fn unit_cost(&self) -> f64 {
        self.factor * self.penalty()
    }

    /// Latency samples taken in.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Takes in a successful answer: `relative` is its latency over the
    /// route's baseline `baseline_ns`; the request was sent at `sent`.
    /// `tau_ns` is the time constant for sparse samples.
    pub fn observe(&mut self, relative: f64, baseline_ns: f64, sent: Nanos, now: Nanos, tau_ns: f64) {
        self.observe_young(relative, baseline_ns, u64::MAX, sent, now, tau_ns);
    }

    /// [`Score::observe`] against a baseline of `route_samples` samples: a
    /// young one bounds the score's memory (see the module's notes).
    pub fn observe_young(
        &mut self,
        relative: f64,
        baseline_ns: f64,
        route_samples: u64,
        sent: Nanos,
        now: Nanos,
        tau_ns: f64,
    ) {
        self.failures = 0;
        let sample = relative.max(0.0);
        let current = self.factor;
        let apart = (sample - current).abs() * baseline_ns >= JUMP_FLOOR_NS;
        let up = sample > JUMP * current && apart;
        let down = sample * JUMP < current && apart;
        if up || down {
            // The nearer of two jump samples: the smaller going up, the larger going down.
            let nearer = |a: f64, b: f64| if up { a.min(b) } else { a.max(b) };
            match self.pending {
                // Confirmed by a request sent after the first jump arrived.
                Some(p) if p.up == up && sent >= p.at => {
                    self.pending = None;
                    self.take(nearer(sample, p.value), now);
                }
                // Overlapping requests seeing the same hiccup prove nothing more.
                Some(p) if p.up == up => {
                    self.pending = Some(Pending {
                        value: nearer(sample, p.value),
                        ..p
                    })
                }
                _ => {
                    self.pending = Some(Pending {
                        up,
                        value: sample,
                        at: now,
                    })
                }
            }
            return;
        }
        self.pending = None;
        let sparse = if self.samples == 0 {
            0.0
        } else {
            let dt = now.saturating_sub(self.stamp) as f64;
            1.0 - (-dt / tau_ns.max(1.0)).exp()
        };
        let remembered = self.samples.min(route_samples / YOUNG) as f64;
        let w = sparse.max(1.0 / (remembered + 1.0 + PRIOR)).max(1.0 / MEMORY);
        // In the log domain: the score follows typical latency (a geometric
        // mean), so the sub-jump noise of a busy machine (answers 2-3× the
        // usual now and then) moves it by their ratio's log, not their size.
        let log = current.max(1e-9).ln() + (sample.max(1e-9).ln() - current.max(1e-9).ln()) * w;
        self.take(log.exp(), now);
    }

    /// Takes in a failure.
    pub fn fail(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    fn take(&mut self, factor: f64, now: Nanos) {
        self.factor = factor;
        self.stamp = now;
        self.samples += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const TAU: f64 = 10e9;
    /// Baseline of 1 ms: relative samples read as milliseconds.
    const BASE: f64 = 1e6;

    fn warmed(now: Nanos, factor: f64) -> Score {
        let mut s = Score::new(now);
        for _ in 0..200 {
            s.observe(factor, BASE, now, now, TAU);
        }
        s
    }

    #[test]
    fn a_new_endpoint_is_typical_and_its_first_samples_move_it_as_four_would() {
        let mut s = Score::new(0);
        assert_eq!(s.factor(), 1.0);
        // One answer twice as slow: the geometric mean of four typical
        // samples and it.
        s.observe(2.0, BASE, 0, 0, TAU);
        assert!((s.factor() - 2f64.powf(0.2)).abs() < 1e-9, "{}", s.factor());
        // A cold first answer, 6× typical, waits for a witness; a normal one follows.
        let mut s = Score::new(0);
        s.observe(6.0, BASE, 0, 0, TAU);
        s.observe(1.0, BASE, 0, MS, TAU);
        assert!((s.factor() - 1.0).abs() < 1e-9, "{}", s.factor());
        // Long idle before the first answer: it still weighs as one sample.
        let mut s = Score::new(0);
        s.observe(2.0, BASE, 600_000 * MS, 600_000 * MS, TAU);
        assert!(s.factor() < 1.2, "{}", s.factor());
    }

    #[test]
    fn the_steady_state_is_unbiased_at_any_rate() {
        // The first weft settled at 0.5 of the truth at 10 samples/s.
        for gap in [MS, 100 * MS, 1_000 * MS] {
            let mut s = Score::new(0);
            for i in 1..2_000 {
                s.observe(3.0, BASE, (i - 1) * gap, i * gap, TAU);
            }
            assert!((s.factor() - 3.0).abs() < 1e-6, "gap {gap}: {}", s.factor());
        }
    }

    #[test]
    fn an_idle_score_stays_put() {
        let mut s = warmed(0, 5.0);
        // Ten minutes later the pod is still five times slower until measured.
        let later = 600_000 * MS;
        s.observe(5.0, BASE, later, later, TAU);
        assert!((s.factor() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn a_confirmed_drop_is_followed_at_once() {
        let mut s = warmed(0, 20.0);
        s.observe(1.0, BASE, 0, MS, TAU);
        assert!(s.factor() > 19.0, "one fast sample is not enough");
        s.observe(2.0, BASE, MS, 2 * MS, TAU);
        assert!((s.factor() - 2.0).abs() < 1e-9, "{}", s.factor());
    }

    #[test]
    fn an_isolated_spike_is_ignored() {
        let mut s = warmed(0, 0.5);
        s.observe(20.0, BASE, 0, 10 * MS, TAU);
        // Overlapping requests that saw the same stall don't confirm it.
        s.observe(19.0, BASE, 0, 10 * MS, TAU);
        assert!(s.factor() < 0.6);
        s.observe(0.5, BASE, 10 * MS, 11 * MS, TAU);
        s.observe(20.0, BASE, 15 * MS, 15 * MS, TAU);
        assert!(s.factor() < 0.6, "a spike after a normal sample starts over");
    }

    #[test]
    fn a_confirmed_spike_replaces_the_score_at_once() {
        let mut s = warmed(0, 0.5);
        s.observe(21.0, BASE, 0, 21 * MS, TAU);
        s.observe(22.0, BASE, 21 * MS, 42 * MS, TAU);
        assert!((s.factor() - 21.0).abs() < 1e-9);
    }

    #[test]
    fn sub_millisecond_differences_are_averaged_not_jumped() {
        // 0.3 ms typical: a sample 3× slower is only 0.6 ms away, averaged.
        let mut s = warmed(0, 1.0);
        s.observe(3.0, 0.3e6, 0, MS, TAU);
        assert!(s.factor() > 1.0 && s.factor() < 1.05, "{}", s.factor());
    }

    #[test]
    fn failures_in_a_row_multiply_the_cost_and_a_success_clears_them() {
        let mut s = warmed(0, 1.0);
        s.fail();
        assert_eq!(s.penalty(), FAIL_FACTOR);
        for _ in 0..20 {
            s.fail();
        }
        assert_eq!(s.penalty(), FAIL_FACTOR.powi(FAIL_MAX as i32));
        assert!((s.factor() - 1.0).abs() < 1e-9, "failures are not latency samples");
        s.observe(1.0, BASE, 0, MS, TAU);
        assert_eq!(s.penalty(), 1.0);
    }

    #[test]
    fn a_young_baseline_shortens_the_memory() {
        // 60 samples read 0.66 against a baseline still inflated by cold
        // answers; then the baseline settles and the samples read 1.0.
        let run = |route_samples: u64| {
            let mut s = Score::new(0);
            for i in 0..60 {
                s.observe_young(0.66, BASE, route_samples + i, i * MS, i * MS, TAU);
            }
            for i in 60..80 {
                s.observe_young(1.0, BASE, route_samples + i, i * MS, i * MS, TAU);
            }
            s.factor()
        };
        let (young, mature) = (run(100), run(1_000_000));
        assert!(young > 0.8, "young baseline: {young}");
        assert!(mature < 0.76, "mature baseline: {mature}");
    }
}
