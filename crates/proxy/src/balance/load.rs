//! What a balancer weighs for each endpoint: a peak-EWMA latency estimate,
//! the requests in flight, and when the endpoint was last picked (for
//! probes of endpoints it avoids). Later: failure accrual.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::ewma::{JUMP, JUMP_FLOOR_NS, PeakEwma};
use crate::{core::lock, endpoint::Endpoint};

/// An endpoint avoided for its latency gets one probe request after this
/// long, then after twice as long each time it is still avoided (up to τ),
/// so that the balancer learns when it has recovered.
pub(crate) const PROBE_BASE: Duration = Duration::from_millis(10);

/// An endpoint as its balancer sees it: the endpoint (its connections) and
/// its load.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub endpoint: Arc<Endpoint>,
    pub load: Load,
}

/// The balancing state of one endpoint.
#[derive(Debug)]
pub(crate) struct Load {
    estimate: Mutex<Estimate>,
    in_flight: AtomicUsize,
    picked: AtomicU64,
}

/// What the balancer weighs, under one lock.
#[derive(Debug)]
struct Estimate {
    ewma: PeakEwma,
    last_pick: Instant,
    probe_every: Duration,
}

impl Load {
    /// A fresh load whose latency estimate starts at `initial_rtt`.
    pub(crate) fn new(initial_rtt: Duration, decay: Duration) -> Self {
        let now = Instant::now();
        Load {
            estimate: Mutex::new(Estimate {
                ewma: PeakEwma::new(initial_rtt, decay, now),
                last_pick: now,
                probe_every: PROBE_BASE,
            }),
            in_flight: AtomicUsize::new(0),
            picked: AtomicU64::new(0),
        }
    }

    /// The balancing load, latency estimate × (requests in flight + 1), or
    /// `None` while the estimate is still warming up.
    pub(crate) fn load(&self, now: Instant) -> Option<f64> {
        let e = lock(&self.estimate);
        e.ewma
            .is_warm()
            .then(|| e.ewma.estimate_ns(now) * (self.in_flight() + 1) as f64)
    }

    /// Notes that the balancer chose this endpoint on its merits.
    pub(crate) fn note_pick(&self, now: Instant) {
        let mut e = lock(&self.estimate);
        e.last_pick = now;
        e.probe_every = PROBE_BASE;
    }

    /// Whether an avoided endpoint is due for a probe request.
    pub(crate) fn probe_due(&self, now: Instant) -> bool {
        let e = lock(&self.estimate);
        self.in_flight() == 0 && now.saturating_duration_since(e.last_pick) >= e.probe_every
    }

    /// Notes a probe; the next one waits twice as long (at most `cap`).
    pub(crate) fn note_probe(&self, now: Instant, cap: Duration) {
        let mut e = lock(&self.estimate);
        e.last_pick = now;
        e.probe_every = (e.probe_every * 2).min(cap.max(PROBE_BASE));
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to the endpoint so far.
    pub(crate) fn picked(&self) -> u64 {
        self.picked.load(Ordering::Relaxed)
    }

    /// The current latency estimate, if measured.
    pub(crate) fn measured_estimate(&self, now: Instant) -> Option<f64> {
        let e = lock(&self.estimate);
        e.ewma.is_measured().then(|| e.ewma.estimate_ns(now))
    }

    /// The estimate now (in ms), and whether any response was measured.
    pub(crate) fn estimate_ms(&self, now: Instant) -> (f64, bool) {
        let e = lock(&self.estimate);
        (e.ewma.estimate_ns(now) / 1e6, e.ewma.is_measured())
    }

    /// Records the latency of a request sent at `sent` whose response
    /// (headers) arrived now.
    pub(crate) fn observe(&self, sent: Instant) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(sent);
        let mut e = lock(&self.estimate);
        // A response much faster than the estimate is a sign of recovery:
        // the next probe comes soon, to confirm it.
        let (sample, estimate) = (rtt.as_secs_f64() * 1e9, e.ewma.estimate_ns(now));
        if sample * JUMP < estimate && estimate - sample >= JUMP_FLOOR_NS {
            e.probe_every = PROBE_BASE;
        }
        e.ewma.observe(rtt, sent, now);
    }
}

/// A request in flight on an endpoint; finishing it (dropping this) lowers
/// the endpoint's in-flight count.
#[derive(Debug)]
pub(crate) struct InFlight {
    candidate: Arc<Candidate>,
}

impl InFlight {
    /// Marks a request as in flight on `candidate`.
    pub(crate) fn start(candidate: &Arc<Candidate>) -> InFlight {
        candidate.load.in_flight.fetch_add(1, Ordering::Relaxed);
        candidate.load.picked.fetch_add(1, Ordering::Relaxed);
        InFlight {
            candidate: candidate.clone(),
        }
    }

    /// The endpoint the request went to.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.candidate.endpoint
    }

    /// Records the latency of the request, sent at `sent`, whose response
    /// (headers) arrived now.
    pub(crate) fn observe(&self, sent: Instant) {
        self.candidate.load.observe(sent);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.candidate.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
