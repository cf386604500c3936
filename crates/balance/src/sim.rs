//! A deterministic discrete-event simulator of one client's balancer in
//! front of N endpoints, running the proxy's own [`Load`] and [`Picker`].
//!
//! Calls arrive open loop (Poisson, at `rate`), each on a route drawn by
//! weight. An endpoint serves a call on one of its workers in arrival
//! order (CPU time: `service_ms`, ±20 %), then sleeps `delay_ms + route
//! extra + uniform jitter` without holding a worker; all of it is scaled by
//! `slowdown`. It may fail the call fast instead, stall periodically (a
//! noisy neighbour: nothing it does completes during a stall), change its
//! delay at given times, or join late. The machine adds rare scheduling
//! hiccups to any answer. Long-lived streams, opened first, are answered
//! and then held for ever. The same seed gives the same run, to the call.

use std::{cmp::Reverse, collections::BinaryHeap};

use crate::{Algorithm, Baseline, Load, Nanos, Peer, Picker};

const MS: f64 = 1e6;

/// One simulated endpoint.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    /// CPU time per call, ms (±20 % uniform), on `workers` in FIFO order.
    pub service_ms: f64,
    pub workers: usize,
    /// Time added to each call without holding a worker, ms.
    pub delay_ms: f64,
    /// Uniform extra delay in [0, jitter_ms].
    pub jitter_ms: f64,
    /// Multiplies service, delay and the routes' extra time.
    pub slowdown: f64,
    /// Fraction of calls answered with a failure after `fail_ms`.
    pub fail_rate: f64,
    /// It fails (at `fail_rate`) only until then, s; then it is healthy.
    pub fail_until_s: f64,
    pub fail_ms: f64,
    /// Every `period` ms, nothing completes for `length` ms.
    pub stall: Option<(f64, f64)>,
    /// From `at` s on, `delay_ms` becomes the given value.
    pub changes: Vec<(f64, f64)>,
    /// When it joins the service, s.
    pub join_s: f64,
}

impl Default for EndpointSpec {
    fn default() -> Self {
        EndpointSpec {
            service_ms: 0.3,
            workers: 1,
            delay_ms: 0.0,
            jitter_ms: 0.0,
            slowdown: 1.0,
            fail_rate: 0.0,
            fail_until_s: f64::INFINITY,
            fail_ms: 0.1,
            stall: None,
            changes: Vec::new(),
            join_s: 0.0,
        }
    }
}

impl EndpointSpec {
    /// An endpoint `ms` slower than the default.
    pub fn delayed(ms: f64) -> Self {
        EndpointSpec {
            delay_ms: ms,
            ..Default::default()
        }
    }

    fn delay_at(&self, t_s: f64) -> f64 {
        self.changes
            .iter()
            .rfind(|(at, _)| *at <= t_s)
            .map_or(self.delay_ms, |(_, d)| *d)
    }

    /// Moves `t` (ns) out of a stall window.
    fn unstall(&self, t: f64) -> f64 {
        match self.stall {
            Some((period, length)) if period > 0.0 => {
                let (p, l) = (period * MS, length * MS);
                let phase = t % p;
                if phase < l { t - phase + l } else { t }
            }
            _ => t,
        }
    }
}

/// A route (method) of the service: its share of calls and its own time.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub weight: f64,
    pub extra_ms: f64,
}

/// A simulated run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub endpoints: Vec<EndpointSpec>,
    /// Calls per second.
    pub rate: f64,
    pub duration_s: f64,
    /// Calls before this are not counted.
    pub warmup_s: f64,
    pub routes: Vec<Route>,
    /// Long-lived streams opened first (answered, then held).
    pub long_streams: usize,
    pub algorithm: Algorithm,
    pub seed: u64,
    /// The machine's scheduling hiccups: probability per answer, and ms.
    pub hiccup: (f64, f64),
    /// The machine's noise: every answer's time is multiplied by e^(σ·N(0,1)).
    pub noise_sigma: f64,
    /// The score's time constant for sparse samples, s.
    pub tau_s: f64,
    /// The longest interval between probes of an avoided endpoint, s.
    pub probe_cap_s: f64,
    /// The picker's exponents (latency, pending), to explore others.
    pub exponents: (i32, i32),
    pub choices: usize,
    /// Failure accrual (ejection); off by default, so that the scenarios
    /// show the balancer alone.
    pub accrual: crate::Accrual,
}

impl Scenario {
    /// `endpoints` at `rate` calls/s for a minute (10 s of warm-up), one route.
    pub fn new(endpoints: Vec<EndpointSpec>, rate: f64) -> Self {
        Scenario {
            endpoints,
            rate,
            duration_s: 60.0,
            warmup_s: 10.0,
            routes: vec![Route {
                weight: 1.0,
                extra_ms: 0.0,
            }],
            long_streams: 0,
            algorithm: Algorithm::PeakEwma,
            seed: 1,
            hiccup: (0.002, 3.0),
            noise_sigma: 0.3,
            tau_s: 10.0,
            probe_cap_s: 10.0,
            exponents: (crate::pick::K, crate::pick::K_PENDING),
            choices: crate::pick::CHOICES,
            accrual: crate::Accrual::off(),
        }
    }
}

/// What a run measured (calls after the warm-up).
#[derive(Clone, Debug)]
pub struct Report {
    /// Calls per endpoint.
    pub calls: Vec<u64>,
    pub failures: u64,
    /// Calls no endpoint was ready for.
    pub unpicked: u64,
    /// The longest time (s) each endpoint went without a call.
    pub longest_gap_s: Vec<f64>,
    /// Each endpoint's relative latency score at the end.
    pub factors: Vec<f64>,
    /// Ejections (failure accrual) during the run.
    pub ejections: u64,
    /// Client latencies, ns, sorted.
    latencies: Vec<u64>,
}

impl Report {
    /// An endpoint's share of calls, in [0, 1].
    pub fn share(&self, i: usize) -> f64 {
        let total: u64 = self.calls.iter().sum();
        self.calls[i] as f64 / total.max(1) as f64
    }

    /// The q-quantile (0..=1) of client latency, ms.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i] as f64 / MS
    }

    pub fn total(&self) -> u64 {
        self.calls.iter().sum()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shares: Vec<String> = (0..self.calls.len())
            .map(|i| format!("{:.1}", self.share(i) * 100.0))
            .collect();
        write!(
            f,
            "shares % [{}], scores [{}], p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, failures {}",
            shares.join(", "),
            self.factors
                .iter()
                .map(|f| format!("{f:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.failures
        )
    }
}

struct SimPeer {
    load: Load,
}

impl Peer for SimPeer {
    fn load(&self) -> &Load {
        &self.load
    }
    fn ready(&self) -> bool {
        true
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Done {
    at: Nanos,
    seq: u64,
    endpoint: usize,
    sent: Nanos,
    route: usize,
    failed: bool,
}

/// Runs a scenario.
pub fn run(s: &Scenario) -> Report {
    let mut rng = fastrand::Rng::with_seed(s.seed);
    let mut picker = Picker::with_seed(s.seed ^ 0x9e37_79b9_7f4a_7c15, (s.probe_cap_s * 1e9) as Nanos);
    picker.exponents = s.exponents;
    picker.choices = s.choices;
    let tau = s.tau_s * 1e9;
    let baselines: Vec<Baseline> = s.routes.iter().map(|_| Baseline::new()).collect();
    let route_total: f64 = s.routes.iter().map(|r| r.weight).sum();
    let mut order: Vec<usize> = (0..s.endpoints.len()).collect();
    order.sort_by(|a, b| s.endpoints[*a].join_s.total_cmp(&s.endpoints[*b].join_s));
    // Peers are in joining order; `specs[i]` is peer i's spec, `ids[i]` its index in the scenario.
    let mut peers: Vec<SimPeer> = Vec::new();
    let mut ids: Vec<usize> = Vec::new();
    let mut workers: Vec<Vec<f64>> = Vec::new();
    let mut pending: BinaryHeap<Reverse<Done>> = BinaryHeap::new();
    let mut seq = 0u64;
    let n = s.endpoints.len();
    let gate = crate::Gate::new(s.accrual);
    let mut report = Report {
        ejections: 0,
        calls: vec![0; n],
        failures: 0,
        unpicked: 0,
        longest_gap_s: vec![0.0; n],
        factors: vec![0.0; n],
        latencies: Vec::with_capacity((s.rate * s.duration_s) as usize),
    };
    let warmup = (s.warmup_s * 1e9) as Nanos;
    let mut last_call: Vec<Nanos> = vec![warmup; n];
    let end = (s.duration_s * 1e9) as Nanos;

    let mut t: f64 = 0.0;
    let mut streams_left = s.long_streams;
    loop {
        let now = t as Nanos;
        if now >= end {
            break;
        }
        // Answers that arrived by now, in order.
        while pending.peek().is_some_and(|d| d.0.at <= now) {
            let Reverse(d) = pending.pop().expect("peeked");
            let load = &peers[d.endpoint].load;
            load.settle();
            if d.failed {
                report.ejections += u64::from(load.failed(d.at, &gate));
            } else {
                load.answered(&baselines[d.route], (d.at - d.sent) as f64, d.sent, d.at, tau, &gate);
            }
        }
        // Endpoints that joined by now.
        while peers.len() < n && s.endpoints[order[peers.len()]].join_s * 1e9 <= t {
            let id = order[peers.len()];
            peers.push(SimPeer { load: Load::new(now) });
            gate.set_endpoints(peers.len());
            ids.push(id);
            workers.push(vec![0.0; s.endpoints[id].workers.max(1)]);
            last_call[id] = last_call[id].max(now);
        }
        let long = streams_left > 0;
        let Some(i) = picker.pick(s.algorithm, &peers, now) else {
            report.unpicked += 1;
            t += next_gap(&mut rng, s.rate);
            continue;
        };
        peers[i].load.start();
        let id = ids[i];
        let spec = &s.endpoints[id];
        let route = pick_route(&mut rng, &s.routes, route_total);
        let failed = t / 1e9 < spec.fail_until_s && rng.f64() < spec.fail_rate;
        let mut done = if failed {
            t + spec.fail_ms * MS
        } else {
            let w = &mut workers[i];
            let k = (0..w.len()).min_by(|a, b| w[*a].total_cmp(&w[*b])).expect("a worker");
            let start = spec.unstall(t.max(w[k]));
            let cpu_end = spec.unstall(start + spec.service_ms * spec.slowdown * MS * (0.8 + 0.4 * rng.f64()));
            w[k] = cpu_end;
            let sleep = spec.delay_at(t / 1e9) + s.routes[route].extra_ms + spec.jitter_ms * rng.f64();
            cpu_end + sleep * spec.slowdown * MS
        };
        if s.noise_sigma > 0.0 {
            done = t + (done - t) * (s.noise_sigma * normal(&mut rng)).exp();
        }
        if rng.f64() < s.hiccup.0 {
            done += s.hiccup.1 * MS;
        }
        let done = spec.unstall(done).max(t + 1.0);
        seq += 1;
        pending.push(Reverse(Done {
            at: done as Nanos,
            seq,
            endpoint: i,
            sent: now,
            route,
            failed,
        }));
        if long {
            // A long stream: answered, then held; it is not a measured call.
            streams_left -= 1;
            continue;
        }
        if now >= warmup {
            report.calls[id] += 1;
            report.failures += u64::from(failed);
            report.latencies.push(done as Nanos - now);
            let gap = (now - last_call[id]) as f64 / 1e9;
            report.longest_gap_s[id] = report.longest_gap_s[id].max(gap);
            last_call[id] = now;
        }
        t += next_gap(&mut rng, s.rate);
    }
    for (gap, last) in report.longest_gap_s.iter_mut().zip(&last_call) {
        *gap = gap.max(end.saturating_sub(*last) as f64 / 1e9);
    }
    for (i, p) in peers.iter().enumerate() {
        report.factors[ids[i]] = p.load.score().factor();
    }
    report.latencies.sort_unstable();
    report
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let (u, v) = (1.0 - rng.f64(), rng.f64());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn next_gap(rng: &mut fastrand::Rng, rate: f64) -> f64 {
    -(1.0 - rng.f64()).ln() / rate * 1e9
}

fn pick_route(rng: &mut fastrand::Rng, routes: &[Route], total: f64) -> usize {
    let mut x = rng.f64() * total;
    for (i, r) in routes.iter().enumerate() {
        if x < r.weight {
            return i;
        }
        x -= r.weight;
    }
    routes.len() - 1
}
