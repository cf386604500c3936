//! What the balancer weighs per endpoint ([`weft_balance::Load`]: latency
//! score, pending requests, failures, probes) beside the endpoint itself,
//! and the guard that a request holds while it is pending there.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::time::Instant;
use weft_balance::{Baseline, Gate, Load, Nanos, Peer};

use crate::endpoint::Endpoint;

/// An endpoint as its balancer sees it.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub endpoint: Arc<Endpoint>,
    pub load: Load,
    /// The balancer's time origin (the balancing code counts nanoseconds from it).
    epoch: Instant,
    /// The time constant of sparse samples, ns.
    tau_ns: f64,
    /// Failure accrual, shared with the service's other endpoints.
    gate: Arc<Gate>,
}

impl Candidate {
    pub(crate) fn new(endpoint: Arc<Endpoint>, epoch: Instant, tau_ns: f64, gate: Arc<Gate>) -> Self {
        Candidate {
            endpoint,
            load: Load::new(nanos(epoch, Instant::now())),
            epoch,
            tau_ns,
            gate,
        }
    }

    /// Charges a failure; logs an ejection.
    pub(crate) fn fail(&self) {
        if self.load.failed(nanos(self.epoch, Instant::now()), &self.gate) {
            tracing::info!(
                endpoint = %self.endpoint.meta.name,
                addr = %self.endpoint.meta.addr,
                "endpoint ejected after repeated failures; probing it with single requests"
            );
        }
    }
}

impl Peer for Candidate {
    fn load(&self) -> &Load {
        &self.load
    }
    fn ready(&self) -> bool {
        self.endpoint.is_ready()
    }
}

/// Nanoseconds from `epoch` to `t`.
pub(crate) fn nanos(epoch: Instant, t: Instant) -> Nanos {
    t.saturating_duration_since(epoch).as_nanos() as Nanos
}

/// A request sent to an endpoint: pending there until its response head
/// arrives ([`InFlight::answered`]) or it ends; held until the exchange
/// ends, for the endpoint's name in metrics.
#[derive(Debug)]
pub(crate) struct InFlight {
    candidate: Arc<Candidate>,
    settled: AtomicBool,
}

impl InFlight {
    /// Marks a request as pending on `candidate`.
    pub(crate) fn start(candidate: &Arc<Candidate>) -> InFlight {
        candidate.load.start();
        InFlight {
            candidate: candidate.clone(),
            settled: AtomicBool::new(false),
        }
    }

    /// The endpoint the request went to.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.candidate.endpoint
    }

    /// The endpoint's balancing state, to charge it a failure after this
    /// request is gone (its deadline passed while the endpoint had it).
    pub(crate) fn candidate(&self) -> Arc<Candidate> {
        self.candidate.clone()
    }

    /// The response head arrived for the request sent at `sent`: a latency
    /// sample (against the route's `baseline`), or a failure when the head
    /// already says the call failed. The request stops being pending.
    pub(crate) fn answered(&self, baseline: &Baseline, sent: Instant, failed: bool) {
        let c = &self.candidate;
        if failed {
            c.fail();
        } else {
            let now = Instant::now();
            let latency = now.saturating_duration_since(sent).as_nanos() as f64;
            c.load.answered(
                baseline,
                latency,
                nanos(c.epoch, sent),
                nanos(c.epoch, now),
                c.tau_ns,
                &c.gate,
            );
        }
        self.settle();
    }

    /// The request failed on the endpoint after (or without) a response
    /// head: a reset, a refused connection, a failing status in the
    /// trailers, its deadline.
    pub(crate) fn failed(&self) {
        self.candidate.fail();
        self.settle();
    }

    fn settle(&self) {
        if !self.settled.swap(true, Ordering::Relaxed) {
            self.candidate.load.settle();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.settle();
    }
}
