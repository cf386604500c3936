//! A service's balancer: its endpoint set, kept current from discovery, and
//! the choice of an endpoint for each request.
//!
//! - this file: the endpoint set (matched by address across discovery
//!   updates, so an unchanged endpoint keeps its connection and its latency
//!   score; a removed one is retired, its in-flight requests finish; a
//!   new one starts connecting at once, at the typical score), and waiting
//!   for a ready endpoint;
//! - [`load`]: an endpoint beside what is weighed about it, and the guard a
//!   request holds;
//! - the choice itself, the score and the route baselines are pure code in
//!   `weft-balance` (crates/balance), where the simulator drives them.

pub(crate) mod load;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use load::nanos;
pub(crate) use load::{Candidate, InFlight};
use weft_balance::{Gate, Picker, RetryBudget};

use crate::{
    config::Algorithm,
    core::{Authority, Proto, lock},
    discovery::{EndpointMeta, Resolution, Routes},
    endpoint::{ClientParams, Endpoint},
    error::ProxyError,
    telemetry::{BalancerView, EndpointView},
};

/// Balancing settings.
#[derive(Clone, Debug)]
pub(crate) struct BalanceParams {
    pub algorithm: Algorithm,
    /// The time constant of sparse latency samples, and the longest
    /// interval between probes of an avoided endpoint.
    pub decay: Duration,
    /// Failure accrual: when an endpoint that keeps failing is ejected.
    pub accrual: weft_balance::Accrual,
    /// The retry budget: retries per request, and a floor per second.
    pub retry_budget: (f64, f64),
}

impl BalanceParams {
    fn algorithm(&self) -> weft_balance::Algorithm {
        match self.algorithm {
            Algorithm::PeakEwma => weft_balance::Algorithm::PeakEwma,
            Algorithm::LeastRequest => weft_balance::Algorithm::LeastRequest,
            Algorithm::RoundRobin => weft_balance::Algorithm::RoundRobin,
        }
    }
}

enum Known {
    /// No answer from discovery yet.
    Pending(Arc<str>),
    Unknown,
    Endpoints,
}

struct State {
    known: Known,
    candidates: Vec<Arc<Candidate>>,
    picker: Picker,
    /// The service's routes (retries and timeout per path).
    routes: Routes,
}

/// Balances one target's requests of one protocol over its endpoints.
pub(crate) struct Balancer {
    pub target: Authority,
    pub label: Arc<str>,
    pub proto: Proto,
    params: BalanceParams,
    client: Arc<ClientParams>,
    state: Mutex<State>,
    changed: Arc<Notify>,
    epoch: Instant,
    last_used_ms: AtomicU64,
    /// Dropped with the balancer, which ends its discovery task.
    alive: watch::Sender<()>,
    /// Set when the router evicted the balancer: cached references to it
    /// must be refreshed.
    closed: AtomicBool,
    /// What [`Balancer::route`] may answer without the lock: 0 discovery
    /// has not answered, 1 the service has no routes, 2 it has some.
    routes_known: std::sync::atomic::AtomicU8,
    /// Failure accrual's policy and how many endpoints are out.
    gate: Arc<Gate>,
    /// Retries to this target, within a share of its requests.
    budget: RetryBudget,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("target", &self.target)
            .field("proto", &self.proto)
            .finish()
    }
}

impl Balancer {
    fn new(target: Authority, proto: Proto, params: BalanceParams, client: Arc<ClientParams>) -> Arc<Self> {
        let gate = Arc::new(Gate::new(params.accrual));
        let budget = RetryBudget::new(params.retry_budget.0, params.retry_budget.1, 0);
        let epoch = Instant::now();
        let picker = Picker::new(params.decay.as_nanos() as u64);
        Arc::new(Balancer {
            label: target.as_str().into(),
            target,
            proto,
            params,
            client,
            state: Mutex::new(State {
                known: Known::Pending("waiting for discovery".into()),
                candidates: Vec::new(),
                picker,
                routes: Routes::default(),
            }),
            changed: Arc::new(Notify::new()),
            epoch,
            last_used_ms: AtomicU64::new(0),
            alive: watch::channel(()).0,
            closed: AtomicBool::new(false),
            routes_known: std::sync::atomic::AtomicU8::new(0),
            gate,
            budget,
        })
    }

    /// A balancer over a fixed set of endpoints (the inbound app, or an
    /// original destination that discovery does not know).
    pub(crate) fn fixed(
        target: Authority,
        proto: Proto,
        endpoints: &[EndpointMeta],
        params: BalanceParams,
        client: Arc<ClientParams>,
    ) -> Arc<Self> {
        let b = Self::new(target, proto, params, client);
        b.apply(Resolution::Endpoints(endpoints.into(), Routes::default()));
        b
    }

    /// A balancer that follows discovery's answers for its target.
    pub(crate) fn discovered(
        target: Authority,
        proto: Proto,
        mut resolution: watch::Receiver<Resolution>,
        params: BalanceParams,
        client: Arc<ClientParams>,
    ) -> Arc<Self> {
        let b = Self::new(target, proto, params, client);
        b.apply(resolution.borrow_and_update().clone());
        let weak = Arc::downgrade(&b);
        tokio::spawn(follow(weak, b.alive.subscribe(), resolution));
        b
    }

    /// Applies a discovery answer.
    pub(crate) fn apply(&self, res: Resolution) {
        let mut st = lock(&self.state);
        match res {
            Resolution::Pending(reason) => {
                // Keep serving what we knew; only a balancer that never had
                // an answer reports discovery as pending.
                if !matches!(st.known, Known::Endpoints) {
                    st.known = Known::Pending(reason);
                }
            }
            Resolution::Unknown => {
                for c in st.candidates.drain(..) {
                    self.retire(&c);
                }
                st.known = Known::Unknown;
            }
            Resolution::Endpoints(metas, routes) => {
                self.routes_known.store(
                    if routes.0.is_empty() { 1 } else { 2 },
                    std::sync::atomic::Ordering::Release,
                );
                st.routes = routes;
                // Matched by address in one pass: O(N) for N endpoints. A
                // new endpoint starts at the typical score (1.0), neither
                // flooded nor starved; its first answers replace it.
                let mut old: HashMap<SocketAddr, Arc<Candidate>> = std::mem::take(&mut st.candidates)
                    .into_iter()
                    .map(|c| (c.endpoint.meta.addr, c))
                    .collect();
                let mut next: Vec<Arc<Candidate>> = Vec::with_capacity(metas.len());
                let mut listed = std::collections::HashSet::with_capacity(metas.len());
                let tau_ns = self.params.decay.as_nanos() as f64;
                for meta in metas.iter() {
                    if !listed.insert(meta.addr) {
                        continue; // listed twice
                    }
                    match old.remove(&meta.addr) {
                        Some(c) if c.endpoint.meta == *meta => next.push(c),
                        kept => {
                            if let Some(c) = kept {
                                self.retire(&c); // same address, new name
                            }
                            next.push(Arc::new(Candidate::new(
                                Endpoint::new(
                                    meta.clone(),
                                    self.proto,
                                    self.label.clone(),
                                    self.client.clone(),
                                    self.changed.clone(),
                                ),
                                self.epoch,
                                tau_ns,
                                self.gate.clone(),
                            )))
                        }
                    }
                }
                for c in old.into_values() {
                    self.retire(&c);
                }
                self.gate.set_endpoints(next.len());
                st.candidates = next;
                st.known = Known::Endpoints;
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Whether the router has evicted this balancer.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Retires every endpoint (the balancer is being dropped).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for c in lock(&self.state).candidates.drain(..) {
            self.retire(&c);
        }
    }

    /// An endpoint leaves the set: its connections close once idle, and if
    /// it was ejected its place goes back.
    fn retire(&self, c: &Candidate) {
        c.endpoint.retire();
        c.load.retire(&self.gate);
    }

    /// A request to this target (it adds to the retry budget).
    pub(crate) fn count_request(&self) {
        self.budget.deposit(nanos(self.epoch, Instant::now()));
    }

    /// Whether one more retry fits the budget (and if so, spends it).
    pub(crate) fn may_retry(&self) -> bool {
        self.budget.withdraw(nanos(self.epoch, Instant::now()))
    }

    /// Notes a use, for idle eviction.
    pub(crate) fn touch(&self) {
        self.last_used_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the last request.
    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Requests in flight on all endpoints.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.state).candidates.iter().map(|c| c.load.pending()).sum()
    }

    /// Picks an endpoint now if one is ready: `Some(Ok)`, or `Some(Err)` when
    /// the request must fail at once; `None` when it should wait (see [`Balancer::pick`]).
    pub(crate) fn pick_now(&self, avoid: Option<&Arc<Candidate>>) -> Option<Result<InFlight, ProxyError>> {
        match self.try_pick(avoid) {
            Ok(ep) => Some(Ok(ep)),
            Err(Wait::Fail(e)) => Some(Err(e)),
            Err(Wait::Retry(_)) => None,
        }
    }

    /// What the service's routes say about a request for `path`: its retried
    /// codes and its timeout, where a route says; `None` while discovery has
    /// not answered (the routes are not known yet).
    pub(crate) fn route(&self, path: &str) -> Option<(Option<u32>, Option<Duration>)> {
        match self.routes_known.load(std::sync::atomic::Ordering::Acquire) {
            0 => return None,
            1 => return Some((None, None)),
            _ => {}
        }
        let st = lock(&self.state);
        if !matches!(st.known, Known::Endpoints) {
            return None;
        }
        Some(
            st.routes
                .find(path)
                .map_or((None, None), |r| (r.retry_codes, r.timeout)),
        )
    }

    /// Picks an endpoint for a request, waiting until `deadline` for one to
    /// become ready; not `avoid` (a retry's failed endpoint) while another
    /// is ready.
    pub(crate) async fn pick(&self, deadline: Instant, avoid: Option<&Arc<Candidate>>) -> Result<InFlight, ProxyError> {
        let start = Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_pick(avoid) {
                Ok(ep) => return Ok(ep),
                Err(Wait::Fail(e)) => return Err(e),
                Err(Wait::Retry(_)) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return match self.try_pick(avoid) {
                            Ok(ep) => Ok(ep),
                            Err(Wait::Fail(e)) => Err(e),
                            Err(Wait::Retry(why)) => Err(self.unavailable(why, start.elapsed())),
                        };
                    }
                }
            }
        }
    }

    fn unavailable(&self, why: Unready, waited: Duration) -> ProxyError {
        match why {
            Unready::Pending(reason) => ProxyError::DiscoveryPending {
                target: self.target.clone(),
                reason,
            },
            Unready::NoEndpoints => ProxyError::NoEndpoints(self.target.clone()),
            Unready::NotReady(detail) => ProxyError::Unavailable {
                target: self.target.clone(),
                waited,
                detail,
            },
        }
    }

    fn try_pick(&self, avoid: Option<&Arc<Candidate>>) -> Result<InFlight, Wait> {
        let mut st = lock(&self.state);
        match &st.known {
            Known::Pending(reason) => return Err(Wait::Retry(Unready::Pending(reason.clone()))),
            Known::Unknown => {
                return Err(Wait::Fail(ProxyError::UnknownService(self.target.clone())));
            }
            Known::Endpoints => {}
        }
        if st.candidates.is_empty() {
            return Err(Wait::Retry(Unready::NoEndpoints));
        }
        let now = nanos(self.epoch, Instant::now());
        let State { candidates, picker, .. } = &mut *st;
        let mut chosen = picker.pick(self.params.algorithm(), candidates, now);
        // A retry goes elsewhere when it can: a few more draws (the picker's
        // own choice among the others), else a scan for any other ready one.
        if let (Some(a), Some(i)) = (avoid, chosen)
            && candidates.len() > 1
            && Arc::ptr_eq(&candidates[i], a)
        {
            let other = (0..2)
                .filter_map(|_| picker.pick(self.params.algorithm(), candidates, now))
                .find(|j| !Arc::ptr_eq(&candidates[*j], a))
                .or_else(|| {
                    let ready =
                        |c: &Arc<Candidate>| !Arc::ptr_eq(c, a) && c.endpoint.is_ready() && c.load.available(now);
                    candidates.iter().position(ready)
                });
            chosen = other.or(chosen);
        }
        match chosen {
            Some(i) => Ok(InFlight::start(&candidates[i])),
            None => Err(Wait::Retry(Unready::NotReady(describe_unready(candidates)))),
        }
    }

    /// The endpoints, for admin and metrics.
    pub(crate) fn view(&self) -> BalancerView {
        let now = Instant::now();
        let st = lock(&self.state);
        BalancerView {
            target: self.target.to_string(),
            protocol: self.proto.label(),
            algorithm: self.params.algorithm.to_string(),
            discovery: match &st.known {
                Known::Pending(r) => format!("pending: {r}"),
                Known::Unknown => "unknown service".into(),
                Known::Endpoints => "resolved".into(),
            },
            endpoints: st.candidates.iter().map(|c| view(c, now)).collect(),
        }
    }
}

/// One endpoint's state, for admin and metrics.
fn view(c: &Candidate, now: Instant) -> EndpointView {
    let conn = c.endpoint.view(now);
    let score = c.load.score();
    EndpointView {
        name: c.endpoint.meta.name.to_string(),
        addr: c.endpoint.meta.addr.to_string(),
        state: conn.state,
        last_error: conn.last_error,
        latency_score: score.factor(),
        samples: score.samples(),
        failures: score.failures(),
        ejected: c.load.ejected(),
        pending: c.load.pending(),
        served: c.load.picked(),
        connects: conn.connects,
    }
}

enum Wait {
    /// Fail now.
    Fail(ProxyError),
    /// Wait for a change, then try again.
    Retry(Unready),
}

enum Unready {
    Pending(Arc<str>),
    NoEndpoints,
    NotReady(String),
}

fn describe_unready(candidates: &[Arc<Candidate>]) -> String {
    let n = candidates.len();
    let mut reasons: Vec<String> = candidates.iter().take(3).map(|c| c.endpoint.unready_reason()).collect();
    if n > 3 {
        reasons.push(format!("and {} more", n - 3));
    }
    format!("all {n} endpoint(s) unreachable: {}", reasons.join("; "))
}

/// Applies discovery updates to a balancer while it exists.
async fn follow(balancer: Weak<Balancer>, mut alive: watch::Receiver<()>, mut resolution: watch::Receiver<Resolution>) {
    loop {
        tokio::select! {
            changed = resolution.changed() => if changed.is_err() { return },
            _ = alive.changed() => return,
        }
        let Some(b) = balancer.upgrade() else { return };
        let res = resolution.borrow_and_update().clone();
        b.apply(res);
    }
}

#[cfg(test)]
mod tests;
