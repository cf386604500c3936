//! A service's balancer: its endpoint set, kept current from discovery, and
//! the choice of an endpoint for each request.
//!
//! Endpoints are matched by address across discovery updates, so an
//! unchanged endpoint keeps its connection and its latency estimate; a
//! removed one is retired (its in-flight requests finish); a new one starts
//! connecting at once.

use std::{
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use crate::{
    config::Algorithm,
    discovery::{Authority, EndpointMeta, Resolution},
    endpoint::{ClientParams, Endpoint, EndpointView, InFlight, Proto},
    error::ProxyError,
    metrics::lock,
};

/// Balancing settings.
#[derive(Clone, Debug)]
pub struct BalanceParams {
    pub algorithm: Algorithm,
    pub default_rtt: Duration,
    pub decay: Duration,
}

enum Known {
    /// No answer from discovery yet.
    Pending(Arc<str>),
    Unknown,
    Endpoints,
}

struct State {
    known: Known,
    endpoints: Vec<Arc<Endpoint>>,
    next_rr: usize,
    /// When to look again for avoided endpoints due for a probe.
    next_probe_scan: Instant,
}

/// How often the balancer looks for avoided endpoints due for a probe.
const PROBE_SCAN: Duration = Duration::from_millis(5);

/// Balances one target's requests of one protocol over its endpoints.
pub struct Balancer {
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
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("target", &self.target)
            .field("proto", &self.proto)
            .finish()
    }
}

/// A snapshot of a balancer, for admin.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BalancerView {
    pub target: String,
    pub protocol: &'static str,
    pub algorithm: String,
    pub discovery: String,
    pub endpoints: Vec<EndpointView>,
}

impl Balancer {
    fn new(target: Authority, proto: Proto, params: BalanceParams, client: Arc<ClientParams>) -> Arc<Self> {
        let epoch = Instant::now();
        Arc::new(Balancer {
            label: target.as_str().into(),
            target,
            proto,
            params,
            client,
            state: Mutex::new(State {
                known: Known::Pending("waiting for discovery".into()),
                endpoints: Vec::new(),
                next_rr: 0,
                next_probe_scan: epoch,
            }),
            changed: Arc::new(Notify::new()),
            epoch,
            last_used_ms: AtomicU64::new(0),
            alive: watch::channel(()).0,
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A balancer over a fixed set of endpoints (the inbound app, or an
    /// original destination that discovery does not know).
    pub fn fixed(
        target: Authority,
        proto: Proto,
        endpoints: &[EndpointMeta],
        params: BalanceParams,
        client: Arc<ClientParams>,
    ) -> Arc<Self> {
        let b = Self::new(target, proto, params, client);
        b.apply(Resolution::Endpoints(endpoints.into()));
        b
    }

    /// A balancer that follows discovery's answers for its target.
    pub fn discovered(
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
    pub fn apply(&self, res: Resolution) {
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
                for ep in st.endpoints.drain(..) {
                    ep.retire();
                }
                st.known = Known::Unknown;
            }
            Resolution::Endpoints(metas) => {
                let now = Instant::now();
                // A new endpoint starts at the default RTT, or at the mean of
                // the measured endpoints when that is lower: it is tried at
                // once, and the in-flight factor keeps it from being flooded.
                let measured: Vec<f64> = st.endpoints.iter().filter_map(|e| e.measured_estimate(now)).collect();
                let initial = if measured.is_empty() {
                    self.params.default_rtt
                } else {
                    let mean = measured.iter().sum::<f64>() / measured.len() as f64;
                    Duration::from_nanos(mean as u64).min(self.params.default_rtt)
                };
                let mut old = std::mem::take(&mut st.endpoints);
                let mut next = Vec::with_capacity(metas.len());
                for meta in metas.iter() {
                    if next.iter().any(|e: &Arc<Endpoint>| e.meta.addr == meta.addr) {
                        continue; // listed twice
                    }
                    match old.iter().position(|e| e.meta == *meta) {
                        Some(i) => next.push(old.swap_remove(i)),
                        None => next.push(Endpoint::new(
                            meta.clone(),
                            self.proto,
                            self.label.clone(),
                            initial,
                            self.params.decay,
                            self.client.clone(),
                            self.changed.clone(),
                        )),
                    }
                }
                for ep in old {
                    ep.retire();
                }
                st.endpoints = next;
                st.known = Known::Endpoints;
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Whether the router has evicted this balancer.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Retires every endpoint (the balancer is being dropped).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for ep in lock(&self.state).endpoints.drain(..) {
            ep.retire();
        }
    }

    /// Notes a use, for idle eviction.
    pub fn touch(&self) {
        self.last_used_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the last request, and whether requests are in flight.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.state).endpoints.iter().map(|e| e.in_flight()).sum()
    }

    /// Picks an endpoint now if one is ready: `Some(Ok)`, or `Some(Err)` when
    /// the request must fail at once; `None` when it should wait (see [`Balancer::pick`]).
    pub fn pick_now(&self) -> Option<Result<InFlight, ProxyError>> {
        match self.try_pick() {
            Ok(ep) => Some(Ok(ep)),
            Err(Wait::Fail(e)) => Some(Err(e)),
            Err(Wait::Retry(_)) => None,
        }
    }

    /// Picks an endpoint for a request, waiting until `deadline` for one to
    /// become ready.
    pub async fn pick(&self, deadline: Instant) -> Result<InFlight, ProxyError> {
        let start = Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_pick() {
                Ok(ep) => return Ok(ep),
                Err(Wait::Fail(e)) => return Err(e),
                Err(Wait::Retry(why)) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return match self.try_pick() {
                            Ok(ep) => Ok(ep),
                            Err(Wait::Fail(e)) => Err(e),
                            Err(Wait::Retry(why)) => Err(self.unavailable(why, start.elapsed())),
                        };
                    }
                    let _ = why;
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

    fn try_pick(&self) -> Result<InFlight, Wait> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        match &st.known {
            Known::Pending(reason) => return Err(Wait::Retry(Unready::Pending(reason.clone()))),
            Known::Unknown => {
                return Err(Wait::Fail(ProxyError::UnknownService(self.target.clone())));
            }
            Known::Endpoints => {}
        }
        if st.endpoints.is_empty() {
            return Err(Wait::Retry(Unready::NoEndpoints));
        }
        let ready = st.endpoints.iter().filter(|e| e.is_ready(now)).count();
        if ready == 0 {
            let detail = describe_unready(&st.endpoints);
            return Err(Wait::Retry(Unready::NotReady(detail)));
        }
        if self.params.algorithm == Algorithm::PeakEwma && ready > 1 && now >= st.next_probe_scan {
            st.next_probe_scan = now + PROBE_SCAN;
            if let Some(ep) = find_probe(&st.endpoints, now) {
                ep.note_probe(now, self.params.decay);
                let ep = ep.clone();
                drop(st);
                return Ok(ep.start());
            }
        }
        let nth_ready = |n: usize| st.endpoints.iter().filter(|e| e.is_ready(now)).nth(n);
        let chosen = match self.params.algorithm {
            Algorithm::PeakEwma => {
                if ready == 1 {
                    nth_ready(0)
                } else {
                    let a = fastrand::usize(..ready);
                    let mut b = fastrand::usize(..ready - 1);
                    if b >= a {
                        b += 1;
                    }
                    match (nth_ready(a), nth_ready(b)) {
                        (Some(x), Some(y)) => Some(choose(x, y, now)),
                        (x, y) => x.or(y),
                    }
                }
            }
            Algorithm::LeastRequest => {
                let offset = fastrand::usize(..ready);
                let mut best: Option<&Arc<Endpoint>> = None;
                for i in 0..ready {
                    let Some(e) = nth_ready((offset + i) % ready) else {
                        continue;
                    };
                    if best.is_none_or(|b| e.in_flight() < b.in_flight()) {
                        best = Some(e);
                    }
                }
                best
            }
            Algorithm::RoundRobin => {
                let n = st.next_rr % ready;
                nth_ready(n)
            }
        };
        let chosen = chosen.cloned();
        if let (Some(ep), Algorithm::PeakEwma) = (&chosen, self.params.algorithm) {
            ep.note_pick(now);
        }
        if self.params.algorithm == Algorithm::RoundRobin {
            st.next_rr = st.next_rr.wrapping_add(1);
        }
        drop(st);
        match chosen {
            Some(ep) => Ok(ep.start()),
            None => Err(Wait::Retry(Unready::NotReady("no endpoint is ready".into()))),
        }
    }

    /// The endpoints, for admin and metrics.
    pub fn view(&self) -> BalancerView {
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
            endpoints: st.endpoints.iter().map(|e| e.view(now)).collect(),
        }
    }
}

/// Loads within this factor of each other are equivalent: latency noise
/// must not rank equal replicas.
pub const TIE: f64 = 2.0;

/// Power of two choices between `x` and `y` (drawn at random): the clearly
/// lower load wins; between equivalent loads (or an endpoint still warming
/// up, then by requests in flight), the first drawn, so that noise cannot
/// rank equal replicas.
fn choose<'a>(x: &'a Arc<Endpoint>, y: &'a Arc<Endpoint>, now: Instant) -> &'a Arc<Endpoint> {
    match (x.load(now), y.load(now)) {
        (Some(lx), Some(ly)) => {
            if lx > TIE * ly {
                y
            } else {
                x
            }
        }
        _ => {
            // Warming up: no latency yet, so requests in flight decide.
            if y.in_flight() < x.in_flight() { y } else { x }
        }
    }
}

/// An endpoint that the balancer avoids for its latency (its load is beyond
/// the tie band of the best one), is idle, and is due for a probe.
fn find_probe(endpoints: &[Arc<Endpoint>], now: Instant) -> Option<&Arc<Endpoint>> {
    let best = endpoints
        .iter()
        .filter(|e| e.is_ready(now))
        .filter_map(|e| e.load(now))
        .reduce(f64::min)?;
    let due = |e: &&Arc<Endpoint>| e.is_ready(now) && e.load(now).is_some_and(|l| l > TIE * best) && e.probe_due(now);
    let n = endpoints.iter().filter(due).count();
    if n == 0 {
        return None;
    }
    endpoints.iter().filter(due).nth(fastrand::usize(..n))
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

fn describe_unready(endpoints: &[Arc<Endpoint>]) -> String {
    let n = endpoints.len();
    let mut reasons: Vec<String> = endpoints.iter().take(3).map(|e| e.unready_reason()).collect();
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
