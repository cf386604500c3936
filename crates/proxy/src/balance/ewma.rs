//! Peak-EWMA: a latency estimate that rises at once when an endpoint turns
//! slow and comes down gradually, so a slow endpoint is avoided quickly and
//! trusted again slowly.
//!
//! Canonical peak-EWMA (Finagle, tower, Linkerd) lets *any* slower sample
//! replace the estimate. With sub-millisecond latencies that makes the
//! estimate the worst sample of the last ~τ·ln(ratio) seconds: one
//! scheduling hiccup (a 5 ms response among 0.5 ms ones) starves an
//! endpoint for tens of seconds, and deterministic power-of-two-choices
//! ranks equal replicas by noise (we measured single replicas at 0.1 % and
//! 54 % of traffic where a third was due; see ARCHITECTURE.md). So here:
//!
//! - a **jump** (a sample above [`JUMP`] × the estimate, or below 1/[`JUMP`]
//!   of it, and at least a millisecond away) counts only when a second one in the same direction confirms
//!   it, from a request *sent after* the first one arrived; then the
//!   estimate moves at once (to the nearer of the two). An isolated hiccup
//!   (or one stall seen by several overlapping requests) is ignored; a
//!   replica that really turned slow is caught by its second slow response,
//!   and one that recovered by its second fast one;
//! - other samples move the estimate by weight `max(1 − e^(−Δt/τ), 1/(n+1),
//!   1/100)`: the time constant τ for sparse samples, the plain mean for the
//!   first ones (so a cold first request does not stick), and at least a
//!   100-sample memory when traffic is dense;
//! - an endpoint is ranked by its estimate only after [`WARMUP`] samples;
//!   before that it competes on requests in flight alone;
//! - with no samples the estimate decays towards zero with τ, so an avoided
//!   endpoint is eventually tried again.

use std::time::Duration;

use tokio::time::Instant;

/// A sample this many times above (or below) the estimate, and at least
/// [`JUMP_FLOOR_NS`] away from it, is a jump, which must be confirmed.
pub const JUMP: f64 = 4.0;
/// Differences under a millisecond are noise for balancing purposes.
pub const JUMP_FLOOR_NS: f64 = 1e6;
/// The smallest weight a normal sample gets (a memory of ~100 samples).
const MIN_WEIGHT: f64 = 0.01;
/// Samples before an estimate is trusted to rank an endpoint; until then the
/// endpoint competes on requests in flight alone, so one cold first request
/// cannot starve it.
pub const WARMUP: u64 = 5;

/// A peak-sensitive, jump-confirmed moving average of response latency.
#[derive(Clone, Debug)]
pub struct PeakEwma {
    /// The estimate at `stamp`, in nanoseconds.
    estimate_ns: f64,
    /// When the last sample was taken in.
    stamp: Instant,
    /// Time constant τ, in nanoseconds.
    decay_ns: f64,
    /// Samples taken in so far.
    samples: u64,
    /// An unconfirmed jump.
    pending: Option<Pending>,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    up: bool,
    /// The jump's latency (ns), and when it arrived.
    value: f64,
    at: Instant,
}

impl PeakEwma {
    /// A fresh estimate starting at `initial`, a prior that the first
    /// sample replaces.
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: nanos(initial),
            stamp: now,
            decay_ns: nanos(decay).max(1.0),
            samples: 0,
            pending: None,
        }
    }

    /// The estimate at `now`, decayed towards zero since the last sample.
    pub fn estimate_ns(&self, now: Instant) -> f64 {
        let elapsed = nanos(now.saturating_duration_since(self.stamp));
        self.estimate_ns * (-elapsed / self.decay_ns).exp()
    }

    /// Records a response that took `rtt` to a request sent at `sent`.
    pub fn observe(&mut self, rtt: Duration, sent: Instant, now: Instant) {
        let sample = nanos(rtt);
        let current = self.estimate_ns(now);
        if self.samples == 0 {
            self.take(sample, now);
            return;
        }
        let up = sample > JUMP * current && sample - current >= JUMP_FLOOR_NS;
        let down = sample * JUMP < current && current - sample >= JUMP_FLOOR_NS;
        if up || down {
            // The nearer of two jump samples: the smaller going up, the larger going down.
            let nearer = |a: f64, b: f64| if up { a.min(b) } else { a.max(b) };
            match self.pending {
                // Confirmed by a request that started after the first jump
                // was seen: the endpoint really changed.
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
        let elapsed = nanos(now.saturating_duration_since(self.stamp));
        let w = (1.0 - (-elapsed / self.decay_ns).exp())
            .max(1.0 / (self.samples + 1) as f64)
            .max(MIN_WEIGHT);
        self.take(current + (sample - current) * w, now);
    }

    fn take(&mut self, estimate: f64, now: Instant) {
        self.estimate_ns = estimate;
        self.stamp = now;
        self.samples += 1;
    }

    /// Whether any response has been taken in.
    pub fn is_measured(&self) -> bool {
        self.samples > 0
    }

    /// Whether enough responses were taken in to rank the endpoint by latency.
    pub fn is_warm(&self) -> bool {
        self.samples >= WARMUP
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1e3)
    }

    fn warmed(now: Instant, latency_ms: f64) -> PeakEwma {
        let mut e = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10), now);
        for _ in 0..200 {
            e.observe(ms(latency_ms), now, now);
        }
        e
    }

    #[test]
    fn the_first_sample_replaces_the_prior_and_early_samples_average() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10), t0);
        e.observe(ms(2.0), t0, t0);
        assert!((e.estimate_ns(t0) - 2.0 * MS).abs() < 1.0);
        // A cold first request does not stick: the next ones average it away.
        e.observe(ms(1.0), t0, t0);
        e.observe(ms(1.0), t0, t0);
        e.observe(ms(1.0), t0, t0);
        assert!(
            (e.estimate_ns(t0) / MS - 1.25).abs() < 0.01,
            "{}",
            e.estimate_ns(t0) / MS
        );
    }

    #[test]
    fn a_confirmed_drop_is_followed_at_once() {
        let t0 = Instant::now();
        let mut e = warmed(t0, 20.0);
        let t1 = t0 + Duration::from_millis(1);
        e.observe(ms(1.0), t0, t1);
        assert!(e.estimate_ns(t1) / MS > 19.0, "one fast sample is not enough");
        let t2 = t1 + Duration::from_millis(1);
        e.observe(ms(2.0), t1, t2);
        assert!(
            (e.estimate_ns(t2) / MS - 2.0).abs() < 0.01,
            "{}",
            e.estimate_ns(t2) / MS
        );
    }

    #[test]
    fn an_isolated_spike_is_ignored() {
        let t0 = Instant::now();
        let mut e = warmed(t0, 0.5);
        let t1 = t0 + Duration::from_millis(10);
        e.observe(ms(20.0), t0, t1);
        // Overlapping requests that saw the same stall don't confirm it.
        e.observe(ms(19.0), t0, t1);
        assert!(e.estimate_ns(t1) / MS < 0.6);
        e.observe(ms(0.5), t1, t1 + Duration::from_millis(1));
        let t2 = t1 + Duration::from_millis(5);
        e.observe(ms(20.0), t2, t2);
        assert!(
            e.estimate_ns(t2) / MS < 0.6,
            "a spike after a normal sample starts over"
        );
    }

    #[test]
    fn a_confirmed_spike_replaces_the_estimate_at_once() {
        let t0 = Instant::now();
        let mut e = warmed(t0, 0.5);
        let t1 = t0 + Duration::from_millis(21);
        e.observe(ms(21.0), t0, t1);
        let t2 = t1 + Duration::from_millis(21);
        e.observe(ms(22.0), t1, t2);
        assert!((e.estimate_ns(t2) / MS - 21.0).abs() < 0.01);
    }

    #[test]
    fn moderate_changes_are_followed_within_a_few_hundred_samples() {
        let t0 = Instant::now();
        let mut e = warmed(t0, 1.0);
        for _ in 0..300 {
            e.observe(ms(2.0), t0, t0);
        }
        assert!(e.estimate_ns(t0) / MS > 1.9);
    }

    #[test]
    fn sparse_samples_use_time_constant_tau() {
        let t0 = Instant::now();
        let mut e = warmed(t0, 10.0);
        // Ten seconds later (one τ), a 2 ms sample: the estimate has decayed to
        // 10/e and the sample gets weight 1 − 1/e.
        let t1 = t0 + Duration::from_secs(10);
        e.observe(ms(2.0), t1, t1);
        let expect = 10.0 / std::f64::consts::E * (1.0 / std::f64::consts::E) + 2.0 * (1.0 - 1.0 / std::f64::consts::E);
        assert!(
            (e.estimate_ns(t1) / MS - expect).abs() < 0.01,
            "{}",
            e.estimate_ns(t1) / MS
        );
    }

    #[test]
    fn idle_estimates_decay_towards_zero() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10), t0);
        let later = e.estimate_ns(t0 + Duration::from_secs(10)) / MS;
        assert!((later - 30.0 / std::f64::consts::E).abs() < 0.01, "{later}");
        assert!(!e.is_measured());
    }
}
