//! Failure accrual: an endpoint that keeps failing is taken out of service
//! (*ejected*) for a while, then given single requests (*probation*) until
//! one succeeds. Scoring alone already makes a failing endpoint cost
//! [`crate::score::FAIL_FACTOR`]× more per failure in a row, so it gets few
//! requests; ejection takes it to none but the probes, and its backoff
//! grows while it keeps failing.
//!
//! An endpoint trips on either
//! - [`Accrual::consecutive`] failures in a row, or
//! - a success rate under [`Accrual::min_success`] over the last
//!   [`Accrual::window`] (once it had at least [`Accrual::min_requests`]):
//!   a pod failing one call in two never fails many in a row.
//!
//! Never too many at once: the [`Gate`] shared by a service's endpoints
//! lets at most [`Accrual::max_ejected`] of them be out (at least one may
//! always be, when there are two or more). Beyond it an endpoint that trips
//! stays in service (the *panic threshold*): when most endpoints fail, the
//! failures are likely not theirs, and balancing over all of them beats
//! sending everything to the last one standing.
//!
//! Which answers are failures is the caller's: weft counts UNAVAILABLE,
//! INTERNAL, UNKNOWN, DATA_LOSS, HTTP 5xx, resets, refused connections and
//! expired deadlines, not application answers (NOT_FOUND, INVALID_ARGUMENT).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Nanos;

/// When endpoints are ejected, and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accrual {
    /// Failures in a row that eject an endpoint; 0 turns accrual off.
    pub consecutive: u32,
    /// A success rate below this over the window ejects.
    pub min_success: f64,
    /// The success-rate window.
    pub window: Nanos,
    /// Requests in a window before its success rate counts.
    pub min_requests: u32,
    /// The first ejection's length; each ejection in a row doubles it.
    pub backoff: Nanos,
    /// The longest ejection.
    pub backoff_max: Nanos,
    /// The largest share of a service's endpoints out at once.
    pub max_ejected: f64,
}

/// How long a probe of an ejected endpoint may go unanswered (a call the
/// client cancelled says nothing) before another is let through.
pub const PROBE_TIMEOUT: Nanos = 10_000_000_000;

impl Default for Accrual {
    fn default() -> Self {
        Accrual {
            consecutive: 5,
            min_success: 0.5,
            window: 10_000_000_000,
            min_requests: 20,
            backoff: 1_000_000_000,
            backoff_max: 30_000_000_000,
            max_ejected: 0.5,
        }
    }
}

impl Accrual {
    /// No ejection at all.
    pub fn off() -> Self {
        Accrual {
            consecutive: 0,
            ..Accrual::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.consecutive > 0
    }

    /// The length of the `n`th ejection in a row (n ≥ 1).
    pub fn backoff_for(&self, n: u32) -> Nanos {
        let doubled = self.backoff.saturating_mul(1u64 << n.saturating_sub(1).min(20));
        doubled.min(self.backoff_max.max(self.backoff))
    }
}

/// What a service's endpoints share: the policy, and how many are out.
#[derive(Debug)]
pub struct Gate {
    pub policy: Accrual,
    out: AtomicUsize,
    endpoints: AtomicUsize,
    /// Trips refused because too many were out (for metrics).
    refused: AtomicUsize,
}

impl Gate {
    pub fn new(policy: Accrual) -> Self {
        Gate {
            policy,
            out: AtomicUsize::new(0),
            endpoints: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        }
    }

    /// The number of endpoints in the service now.
    pub fn set_endpoints(&self, n: usize) {
        self.endpoints.store(n, Ordering::Relaxed);
    }

    /// Endpoints out of service (ejected or on probation).
    pub fn out(&self) -> usize {
        self.out.load(Ordering::Relaxed)
    }

    /// Trips that the panic threshold kept in service.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes a place out of service, if the share allows one more.
    pub(crate) fn take(&self) -> bool {
        let n = self.endpoints.load(Ordering::Relaxed);
        // At least one may go when there are two or more; never the last.
        let allowed = ((self.policy.max_ejected * n as f64).floor() as usize).max(usize::from(n >= 2));
        let taken = self
            .out
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| (o < allowed).then_some(o + 1))
            .is_ok();
        if !taken {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Gives a place back (the endpoint is in service again, or removed).
    pub(crate) fn give_back(&self) {
        let _ = self
            .out
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| o.checked_sub(1));
    }
}

/// One endpoint's accrual state (inside its [`crate::Load`]).
#[derive(Clone, Debug, Default)]
pub struct Ejection {
    /// While out: when the next probe may go (0: in service).
    pub until: Nanos,
    /// Ejections in a row (reset by a success).
    pub count: u32,
    /// Whether a probe was let through since the last ejection.
    probing: bool,
    window_start: Nanos,
    ok: u32,
    failed: u32,
}

impl Ejection {
    pub fn out(&self) -> bool {
        self.until != 0
    }

    /// Whether a request may go now (in service, or the probe is due).
    pub fn admits(&self, now: Nanos) -> bool {
        self.until == 0 || now >= self.until
    }

    /// A request was sent: if out, it is the probe; the next one waits.
    pub fn sent(&mut self, now: Nanos) {
        if self.until != 0 && now >= self.until {
            self.probing = true;
            self.until = now + PROBE_TIMEOUT;
        }
    }

    fn count(&mut self, now: Nanos, policy: &Accrual, ok: bool) {
        if now.saturating_sub(self.window_start) >= policy.window {
            self.window_start = now;
            self.ok = 0;
            self.failed = 0;
        }
        if ok {
            self.ok = self.ok.saturating_add(1);
        } else {
            self.failed = self.failed.saturating_add(1);
        }
    }

    /// A success: an endpoint out of service comes back. Returns whether
    /// it did (its place goes back to the gate).
    pub fn succeeded(&mut self, now: Nanos, policy: &Accrual) -> bool {
        self.count(now, policy, true);
        self.count = 0;
        self.probing = false;
        let was_out = self.until != 0;
        self.until = 0;
        was_out
    }

    /// A failure, `in_a_row` the score's failures in a row. Ejects (or,
    /// after a failed probe, ejects again for longer) when the policy says
    /// so and the gate has a place; returns whether it did.
    pub fn failed(&mut self, now: Nanos, in_a_row: u32, gate: &Gate) -> bool {
        let policy = &gate.policy;
        if !policy.enabled() {
            return false;
        }
        self.count(now, policy, false);
        if self.until != 0 {
            // Out already: a failed probe ejects it again, for longer.
            if self.probing {
                self.probing = false;
                self.count = self.count.saturating_add(1);
                self.until = now + policy.backoff_for(self.count);
                return true;
            }
            return false;
        }
        let seen = self.ok + self.failed;
        let rate_trips = seen >= policy.min_requests && f64::from(self.ok) < policy.min_success * f64::from(seen);
        if in_a_row < policy.consecutive && !rate_trips {
            return false;
        }
        if !gate.take() {
            return false;
        }
        self.count = self.count.saturating_add(1);
        self.until = now + policy.backoff_for(self.count);
        self.probing = false;
        // A fresh window after the ejection: old failures are judged once.
        self.window_start = now;
        self.ok = 0;
        self.failed = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    #[test]
    fn consecutive_failures_eject_and_a_probe_brings_it_back() {
        let gate = Gate::new(Accrual::default());
        gate.set_endpoints(3);
        let mut e = Ejection::default();
        for n in 1..5 {
            assert!(!e.failed(n, n as u32, &gate));
        }
        assert!(e.failed(5, 5, &gate), "the fifth in a row ejects");
        assert!(e.out() && !e.admits(6) && gate.out() == 1);
        assert!(e.admits(5 + S), "a probe is due after the backoff");
        e.sent(5 + S);
        assert!(!e.admits(5 + S + 1), "one probe at a time");
        assert!(e.succeeded(5 + S + 2, &gate.policy));
        gate.give_back();
        assert!(!e.out() && gate.out() == 0);
    }

    #[test]
    fn a_failed_probe_doubles_the_backoff_up_to_the_cap() {
        let policy = Accrual::default();
        let gate = Gate::new(policy);
        gate.set_endpoints(2);
        let mut e = Ejection::default();
        assert!(e.failed(0, 5, &gate));
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..8 {
            let due = e.until;
            lengths.push(due - now);
            now = due;
            e.sent(now);
            e.failed(now + 1, 6, &gate);
            now += 1;
        }
        assert_eq!(lengths[0], S);
        assert_eq!(lengths[1], 2 * S);
        assert!(lengths.iter().all(|&l| l <= policy.backoff_max));
        assert_eq!(*lengths.last().unwrap(), policy.backoff_max);
        assert_eq!(gate.out(), 1, "still one place, however often it is ejected again");
    }

    #[test]
    fn a_low_success_rate_ejects_without_failures_in_a_row() {
        let gate = Gate::new(Accrual::default());
        gate.set_endpoints(3);
        let mut e = Ejection::default();
        let mut ejected = false;
        for i in 0..40u64 {
            if i % 2 == 0 {
                e.succeeded(i, &gate.policy);
            } else {
                ejected |= e.failed(i, 1, &gate);
            }
        }
        assert!(!ejected, "half failing is the threshold, not under it");
        let mut e = Ejection::default();
        for i in 0..40u64 {
            if i % 3 == 0 {
                e.succeeded(i, &gate.policy);
            } else if e.failed(i, 2, &gate) {
                ejected = true;
                break;
            }
        }
        assert!(ejected, "two in three failing ejects");
    }

    #[test]
    fn the_panic_threshold_keeps_most_endpoints_in() {
        let gate = Gate::new(Accrual::default());
        gate.set_endpoints(4);
        let mut es = vec![Ejection::default(); 4];
        let ejected: Vec<bool> = es.iter_mut().map(|e| e.failed(0, 5, &gate)).collect();
        assert_eq!(ejected, [true, true, false, false], "at most half of 4");
        assert_eq!(gate.refused(), 2);
        let gate = Gate::new(Accrual::default());
        gate.set_endpoints(1);
        assert!(!Ejection::default().failed(0, 5, &gate), "never the only endpoint");
        let gate = Gate::new(Accrual::default());
        gate.set_endpoints(2);
        assert!(Ejection::default().failed(0, 5, &gate), "one of two");
        let gate = Gate::new(Accrual::off());
        gate.set_endpoints(3);
        assert!(!Ejection::default().failed(0, 50, &gate), "off");
    }
}
