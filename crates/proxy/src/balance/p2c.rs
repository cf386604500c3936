//! The choice of an endpoint among a balancer's ready candidates: power of
//! two choices over load (peak-EWMA latency × (in flight + 1)) with a tie
//! band and probes of avoided endpoints; least-request and round-robin for
//! comparison.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::load::Candidate;
use crate::config::Algorithm;

/// Loads within this factor of each other are equivalent: latency noise
/// must not rank equal replicas.
pub(crate) const TIE: f64 = 2.0;

/// How often the balancer looks for avoided endpoints due for a probe.
const PROBE_SCAN: Duration = Duration::from_millis(5);

/// What the picker remembers between picks.
#[derive(Debug)]
pub(super) struct PickState {
    /// The next turn (round-robin).
    next_rr: usize,
    /// When to look again for avoided endpoints due for a probe.
    next_probe_scan: Instant,
}

impl PickState {
    pub(super) fn new(now: Instant) -> Self {
        PickState {
            next_rr: 0,
            next_probe_scan: now,
        }
    }
}

/// Chooses one of the `ready` (≥ 1) ready candidates, or `None` if none
/// turned out ready. `decay` caps the interval between probes.
pub(super) fn pick(
    algorithm: Algorithm,
    candidates: &[Arc<Candidate>],
    ready: usize,
    st: &mut PickState,
    decay: Duration,
    now: Instant,
) -> Option<Arc<Candidate>> {
    if algorithm == Algorithm::PeakEwma && ready > 1 && now >= st.next_probe_scan {
        st.next_probe_scan = now + PROBE_SCAN;
        if let Some(c) = find_probe(candidates, now) {
            c.load.note_probe(now, decay);
            return Some(c.clone());
        }
    }
    let nth_ready = |n: usize| candidates.iter().filter(|c| c.endpoint.is_ready(now)).nth(n);
    let chosen = match algorithm {
        Algorithm::PeakEwma => {
            if ready == 1 {
                nth_ready(0)
            } else {
                let (a, b) = two_distinct(ready);
                match (nth_ready(a), nth_ready(b)) {
                    (Some(x), Some(y)) => Some(choose(x, y, now)),
                    (x, y) => x.or(y),
                }
            }
        }
        Algorithm::LeastRequest => {
            let offset = fastrand::usize(..ready);
            let mut best: Option<&Arc<Candidate>> = None;
            for i in 0..ready {
                let Some(c) = nth_ready((offset + i) % ready) else {
                    continue;
                };
                if best.is_none_or(|b| c.load.in_flight() < b.load.in_flight()) {
                    best = Some(c);
                }
            }
            best
        }
        Algorithm::RoundRobin => {
            let n = st.next_rr % ready;
            st.next_rr = st.next_rr.wrapping_add(1);
            nth_ready(n)
        }
    };
    let chosen = chosen.cloned();
    if let (Some(c), Algorithm::PeakEwma) = (&chosen, algorithm) {
        c.load.note_pick(now);
    }
    chosen
}

/// Two different indices below `n` (≥ 2), drawn at random.
pub(super) fn two_distinct(n: usize) -> (usize, usize) {
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// Power of two choices between `x` and `y` (drawn at random): the clearly
/// lower load wins; between equivalent loads (or an endpoint still warming
/// up, then by requests in flight), the first drawn, so that noise cannot
/// rank equal replicas.
fn choose<'a>(x: &'a Arc<Candidate>, y: &'a Arc<Candidate>, now: Instant) -> &'a Arc<Candidate> {
    match (x.load.load(now), y.load.load(now)) {
        (Some(lx), Some(ly)) => {
            if lx > TIE * ly {
                y
            } else {
                x
            }
        }
        _ => {
            // Warming up: no latency yet, so requests in flight decide.
            if y.load.in_flight() < x.load.in_flight() { y } else { x }
        }
    }
}

/// An endpoint that the balancer avoids for its latency (its load is beyond
/// the tie band of the best one), is idle, and is due for a probe.
fn find_probe(candidates: &[Arc<Candidate>], now: Instant) -> Option<&Arc<Candidate>> {
    let best = candidates
        .iter()
        .filter(|c| c.endpoint.is_ready(now))
        .filter_map(|c| c.load.load(now))
        .reduce(f64::min)?;
    let due = |c: &&Arc<Candidate>| {
        c.endpoint.is_ready(now) && c.load.load(now).is_some_and(|l| l > TIE * best) && c.load.probe_due(now)
    };
    let n = candidates.iter().filter(due).count();
    if n == 0 {
        return None;
    }
    candidates.iter().filter(due).nth(fastrand::usize(..n))
}
