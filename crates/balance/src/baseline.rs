//! The typical latency of one route (a gRPC method, an HTTP path) of a
//! service, across all its endpoints: the yardstick that endpoint scores
//! are measured against.
//!
//! A service whose methods take 1 ms and 50 ms would otherwise rank equal
//! pods by which method each happened to serve last (a pod "latched" on
//! the slow method looks 50× slower than its twin). Measured against its
//! route's baseline, a 50 ms answer to the 50 ms method is as good as a
//! 1 ms answer to the 1 ms method: both are 1.0.
//!
//! The baseline is a moving average of log-latency (a geometric mean, so
//! one stall does not drag it), with the plain mean for the first samples
//! and a memory of about [`MEMORY`] samples after that. It is shared by the
//! requests of all threads without a lock: an update that races another is
//! lost, which only makes the average a little noisier.

use std::sync::atomic::{AtomicU64, Ordering};

/// Samples the baseline remembers (in the sense of an EWMA's weight).
pub const MEMORY: f64 = 256.0;

/// One route's typical latency.
#[derive(Debug, Default)]
pub struct Baseline {
    /// ln(latency in ns), as f64 bits; 0 before the first sample.
    log_ns: AtomicU64,
    samples: AtomicU64,
}

impl Baseline {
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples taken in so far.
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// The typical latency in ns, or `None` before the first sample.
    pub fn get(&self) -> Option<f64> {
        (self.samples.load(Ordering::Relaxed) > 0).then(|| f64::from_bits(self.log_ns.load(Ordering::Relaxed)).exp())
    }

    /// Takes in a latency (ns) and returns the sample relative to the
    /// baseline before it (1.0 for the very first sample) along with that
    /// baseline in ns.
    pub fn relative(&self, latency_ns: f64) -> (f64, f64) {
        let latency_ns = latency_ns.max(1.0);
        let x = latency_ns.ln();
        let n = self.samples.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            self.log_ns.store(x.to_bits(), Ordering::Relaxed);
            return (1.0, latency_ns);
        }
        let old = f64::from_bits(self.log_ns.load(Ordering::Relaxed));
        let w = (1.0 / (n + 1) as f64).max(1.0 / MEMORY);
        self.log_ns.store((old + (x - old) * w).to_bits(), Ordering::Relaxed);
        let base = old.exp();
        (latency_ns / base, base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_samples_average_and_later_ones_move_it_slowly() {
        let b = Baseline::new();
        assert_eq!(b.get(), None);
        assert_eq!(b.relative(2e6), (1.0, 2e6));
        let (r, base) = b.relative(8e6);
        assert!((r - 4.0).abs() < 1e-9 && (base - 2e6).abs() < 1.0, "{r} {base}");
        // Geometric mean of 2 and 8 ms.
        assert!((b.get().unwrap() - 4e6).abs() < 1.0);
        for _ in 0..10_000 {
            b.relative(1e6);
        }
        assert!((b.get().unwrap() / 1e6 - 1.0).abs() < 0.01);
        // One stall barely moves it.
        b.relative(1e9);
        assert!(b.get().unwrap() / 1e6 < 1.03, "{}", b.get().unwrap());
    }
}
