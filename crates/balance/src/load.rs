//! What the picker weighs about one endpoint: its [`Score`], the requests
//! awaiting its answer, and when it was last chosen (for probes), behind one
//! small lock that a pick takes twice and an answer once.
//!
//! A request counts as *pending* from the pick until its response head
//! arrives (or it ends without one), not for its whole life: a long-lived
//! stream that was answered long ago does not load the endpoint, so after a
//! rollout the new pod beside 100 old streams gets its share of unary calls,
//! not all of them.

use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use crate::{Baseline, Nanos, Score, accrual::Ejection, accrual::Gate};

/// An avoided endpoint gets one probe request after this long, then after
/// twice as long each time it is still avoided (up to the cap the picker
/// gives), so that the balancer learns when it has recovered.
pub const PROBE_BASE: Nanos = 10_000_000;

/// One endpoint's balancing state.
#[derive(Debug)]
pub struct Load {
    state: Mutex<State>,
    pending: AtomicUsize,
    picked: AtomicU64,
    /// While ejected, when its probe is due (0: in service); a copy of the
    /// state's, read without the lock by every draw.
    out_until: AtomicU64,
}

#[derive(Debug)]
struct State {
    score: Score,
    /// When the endpoint was last chosen (on its merits or as a probe).
    last_pick: Nanos,
    probe_every: Nanos,
    ejection: Ejection,
}

impl Load {
    pub fn new(now: Nanos) -> Self {
        Load {
            state: Mutex::new(State {
                score: Score::new(now),
                last_pick: now,
                probe_every: PROBE_BASE,
                ejection: Ejection::default(),
            }),
            pending: AtomicUsize::new(0),
            picked: AtomicU64::new(0),
            out_until: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain numbers: a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cost of sending one more request here: relative latency ×
    /// failure penalty × (pending requests + 1).
    pub fn cost(&self) -> f64 {
        self.unit_cost() * (self.pending() + 1) as f64
    }

    /// The cost of a request on the endpoint if it were idle.
    pub fn unit_cost(&self) -> f64 {
        self.lock().score.unit_cost()
    }

    /// A copy of the score (for admin).
    pub fn score(&self) -> Score {
        self.lock().score.clone()
    }

    /// Requests awaiting a response head.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Requests sent here so far.
    pub fn picked(&self) -> u64 {
        self.picked.load(Ordering::Relaxed)
    }

    /// A request was sent here: pending until [`Load::settle`].
    pub fn start(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.picked.fetch_add(1, Ordering::Relaxed);
    }

    /// The request's response head arrived (or it ended without one).
    /// Call exactly once per [`Load::start`].
    pub fn settle(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// A successful answer to a request sent at `sent` arrived at `now`
    /// (`latency_ns` apart; the caller's clock may be finer than `Nanos`
    /// differences); its route's baseline takes it in too.
    pub fn answered(&self, baseline: &Baseline, latency_ns: f64, sent: Nanos, now: Nanos, tau_ns: f64, gate: &Gate) {
        let (relative, base) = baseline.relative(latency_ns);
        let route_samples = baseline.samples();
        let mut st = self.lock();
        if st.ejection.succeeded(now, &gate.policy) {
            // Back in service: its place goes back.
            gate.give_back();
            self.out_until.store(0, Ordering::Relaxed);
        }
        // A response much faster than the score is a sign of recovery: the
        // next probe comes soon, to confirm it.
        if relative * crate::score::JUMP < st.score.factor() || st.score.failures() > 0 {
            st.probe_every = PROBE_BASE;
        }
        st.score.observe_young(relative, base, route_samples, sent, now, tau_ns);
    }

    /// The request failed (an error answer, a reset, a refused connection,
    /// a deadline) at `now`. Returns whether the endpoint was ejected
    /// ([`crate::accrual`]).
    pub fn failed(&self, now: Nanos, gate: &Gate) -> bool {
        let mut st = self.lock();
        st.score.fail();
        let in_a_row = st.score.failures();
        let ejected = st.ejection.failed(now, in_a_row, gate);
        self.out_until.store(st.ejection.until, Ordering::Relaxed);
        ejected
    }

    /// Whether it may be sent a request now: in service, or ejected with
    /// its probe due.
    pub fn available(&self, now: Nanos) -> bool {
        let u = self.out_until.load(Ordering::Relaxed);
        u == 0 || now >= u
    }

    /// Whether it is out of service (ejected, or on probation).
    pub fn ejected(&self) -> bool {
        self.out_until.load(Ordering::Relaxed) != 0
    }

    /// The picker chose it while out of service: this request is its probe.
    pub(crate) fn probe_sent(&self, now: Nanos) {
        let mut st = self.lock();
        st.ejection.sent(now);
        self.out_until.store(st.ejection.until, Ordering::Relaxed);
    }

    /// The endpoint leaves the service: if it was out, its place goes back.
    pub fn retire(&self, gate: &Gate) {
        let mut st = self.lock();
        if st.ejection.out() {
            st.ejection = Ejection::default();
            self.out_until.store(0, Ordering::Relaxed);
            gate.give_back();
        }
    }

    /// Notes that the picker chose this endpoint on its merits.
    pub fn note_pick(&self, now: Nanos) {
        let mut st = self.lock();
        st.last_pick = now;
        st.probe_every = PROBE_BASE;
    }

    /// Whether the endpoint is avoided (idle, its unit cost above
    /// `threshold`) and was not chosen for long enough: then it gets one
    /// request as a probe, and the next probe waits twice as long (at most `cap`).
    pub fn take_probe(&self, threshold: f64, now: Nanos, cap: Nanos) -> bool {
        if self.pending() > 0 {
            return false;
        }
        let mut st = self.lock();
        if st.score.unit_cost() <= threshold || now.saturating_sub(st.last_pick) < st.probe_every {
            return false;
        }
        st.last_pick = now;
        st.probe_every = (st.probe_every * 2).min(cap.max(PROBE_BASE));
        true
    }
}
