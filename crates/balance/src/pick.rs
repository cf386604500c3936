//! The choice of an endpoint: power of [`CHOICES`] choices, soft.
//!
//! Three distinct endpoints are drawn at random (all of them when there
//! are three); each wins with probability proportional to
//! `u^−K × (pending + 1)^−K_PENDING`, `u` its unit cost (relative latency ×
//! failure penalty, [`Load::unit_cost`]) over the cheapest drawn one's,
//! less a [`BAND`] of 10 %. Equal endpoints split evenly whatever the noise
//! in their estimates (a hard comparison ranks equal pods by noise: the
//! first weft needed a 2× tie band against that, and so could not tell a
//! pod 2× slower from its peers). Against two equal peers, an idle pod 1.5×
//! slower gets 16 % of the picks, 2× slower 8 %, 4× 1.0 %; one request
//! pending weighs 2⁶ = 64×: pending requests decide first, latency among
//! the idle.
//!
//! Each pick takes the picker's state and two endpoints' locks: O(1) in the
//! number of endpoints while they are ready (a scan happens only when a
//! drawn endpoint is not). Every [`PROBE_SCAN`] the picker looks at the
//! next [`PROBE_CHECKS`] endpoints in turn for one that is avoided (its
//! unit cost beyond [`PROBE_BAND`] × what picks typically cost) and due a
//! probe.

use crate::{Load, Nanos};

/// The exponent of the soft choice on relative latency.
pub const K: i32 = 3;
/// The exponent of the soft choice on pending requests.
pub const K_PENDING: i32 = 6;
/// Unit costs within this ratio of the cheapest drawn count as equal (and
/// beyond it, the ratio counts from here): replicas that are equal but
/// measure a little apart, as processes on a shared machine do, split
/// evenly instead of by the cube of their difference.
pub const BAND: f64 = 1.1;
/// Endpoints drawn per pick.
pub const CHOICES: usize = 3;
/// The most endpoints a pick may draw.
pub const MAX_CHOICES: usize = 4;
/// An endpoint whose cost is this many times the typical pick's is avoided
/// and gets probes.
pub const PROBE_BAND: f64 = 2.0;
/// How often the picker looks for an avoided endpoint due for a probe.
pub const PROBE_SCAN: Nanos = 5_000_000;
/// Endpoints looked at per scan.
pub const PROBE_CHECKS: usize = 2;

/// How to choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Soft power of three choices over relative latency, failures and pending requests.
    PeakEwma,
    /// The endpoint with the fewest pending requests (ties at random).
    LeastRequest,
    /// In turn.
    RoundRobin,
}

/// An endpoint as the picker sees it.
pub trait Peer {
    fn load(&self) -> &Load;
    /// Whether a request may be sent to it now.
    fn ready(&self) -> bool;
}

/// Ready, and not ejected (or its probe is due).
fn usable<P: Peer>(p: &P, now: Nanos) -> bool {
    p.ready() && p.load().available(now)
}

impl<T: Peer + ?Sized> Peer for std::sync::Arc<T> {
    fn load(&self) -> &Load {
        (**self).load()
    }
    fn ready(&self) -> bool {
        (**self).ready()
    }
}

/// What the picker remembers between picks.
#[derive(Debug)]
pub struct Picker {
    rng: fastrand::Rng,
    next_rr: usize,
    next_probe_scan: Nanos,
    probe_cursor: usize,
    /// A moving average of the unit cost of the endpoints picked.
    typical: f64,
    /// The longest interval between probes of one endpoint.
    probe_cap: Nanos,
    /// The exponents of the soft choice: on relative latency, on pending requests.
    pub exponents: (i32, i32),
    /// Endpoints drawn per pick (2: power of two choices).
    pub choices: usize,
}

impl Picker {
    /// A picker seeded for reproducible draws.
    pub fn with_seed(seed: u64, probe_cap: Nanos) -> Self {
        Picker {
            rng: fastrand::Rng::with_seed(seed),
            next_rr: 0,
            next_probe_scan: 0,
            probe_cursor: 0,
            typical: 1.0,
            probe_cap,
            exponents: (K, K_PENDING),
            choices: CHOICES,
        }
    }

    /// A picker with a random seed.
    pub fn new(probe_cap: Nanos) -> Self {
        Self::with_seed(fastrand::u64(..), probe_cap)
    }

    /// Chooses an endpoint among `peers`; `None` if none is ready. The
    /// caller then calls [`Load::start`] on it.
    pub fn pick<P: Peer>(&mut self, algorithm: Algorithm, peers: &[P], now: Nanos) -> Option<usize> {
        let chosen = self.pick_any(algorithm, peers, now)?;
        let load = peers[chosen].load();
        if load.ejected() {
            load.probe_sent(now);
        }
        Some(chosen)
    }

    fn pick_any<P: Peer>(&mut self, algorithm: Algorithm, peers: &[P], now: Nanos) -> Option<usize> {
        let n = peers.len();
        match n {
            0 => return None,
            1 => return usable(&peers[0], now).then_some(0),
            _ => {}
        }
        match algorithm {
            Algorithm::PeakEwma => {
                if now >= self.next_probe_scan {
                    self.next_probe_scan = now + PROBE_SCAN;
                    if let Some(i) = self.find_probe(peers, now) {
                        return Some(i);
                    }
                }
                let mut drawn = [0usize; MAX_CHOICES];
                let d = self.draw_ready(peers, &mut drawn, now);
                let chosen = match d {
                    0 => return None,
                    1 => drawn[0],
                    _ => self.choose(peers, &drawn[..d]),
                };
                let load = peers[chosen].load();
                load.note_pick(now);
                self.typical += (load.unit_cost() - self.typical) / 64.0;
                Some(chosen)
            }
            Algorithm::LeastRequest => {
                let offset = self.rng.usize(..n);
                let mut best: Option<(usize, usize)> = None;
                for i in (offset..n).chain(0..offset) {
                    if !usable(&peers[i], now) {
                        continue;
                    }
                    let p = peers[i].load().pending();
                    if best.is_none_or(|(_, b)| p < b) {
                        best = Some((i, p));
                    }
                }
                best.map(|(i, _)| i)
            }
            Algorithm::RoundRobin => {
                for _ in 0..n {
                    let i = self.next_rr % n;
                    self.next_rr = self.next_rr.wrapping_add(1);
                    if usable(&peers[i], now) {
                        return Some(i);
                    }
                }
                None
            }
        }
    }

    /// Draws up to `choices` distinct ready endpoints at random into
    /// `out`; returns how many.
    fn draw_ready<P: Peer>(&mut self, peers: &[P], out: &mut [usize; MAX_CHOICES], now: Nanos) -> usize {
        let d = self.choices.clamp(1, MAX_CHOICES).min(peers.len());
        distinct(&mut self.rng, peers.len(), &mut out[..d]);
        if out[..d].iter().all(|&i| usable(&peers[i], now)) {
            return d;
        }
        // Some endpoint is not usable: draw among those that are (a scan).
        let ready = peers.iter().filter(|p| usable(*p, now)).count();
        let d = d.min(ready);
        distinct(&mut self.rng, ready, &mut out[..d]);
        for slot in out[..d].iter_mut() {
            *slot = peers
                .iter()
                .enumerate()
                .filter(|(_, p)| usable(*p, now))
                .nth(*slot)
                .map_or(0, |(i, _)| i);
        }
        d
    }

    /// The soft choice among the drawn: each wins with probability
    /// proportional to `u^−K × (pending + 1)^−K_PENDING`, where `u` is its
    /// unit cost (relative latency × failure penalty) over the cheapest
    /// drawn one's.
    fn choose<P: Peer>(&mut self, peers: &[P], drawn: &[usize]) -> usize {
        let (k, kp) = self.exponents;
        let mut unit = [0f64; MAX_CHOICES];
        for (u, &i) in unit.iter_mut().zip(drawn) {
            *u = peers[i].load().unit_cost();
        }
        let best = unit[..drawn.len()].iter().copied().fold(f64::INFINITY, f64::min);
        let mut weights = [0f64; MAX_CHOICES];
        let mut total = 0.0;
        for ((w, u), &i) in weights.iter_mut().zip(unit).zip(drawn) {
            let r = if best > 0.0 { (u / best / BAND).max(1.0) } else { 1.0 };
            let pending = (peers[i].load().pending() + 1) as f64;
            *w = 1.0 / (r.powi(k) * pending.powi(kp));
            total += *w;
        }
        if !(total > 0.0 && total.is_finite()) {
            // Degenerate costs (overflowing): the cheapest.
            let best = (0..drawn.len())
                .max_by(|a, b| weights[*a].total_cmp(&weights[*b]))
                .unwrap_or(0);
            return drawn[best];
        }
        let mut x = self.rng.f64() * total;
        for (w, &i) in weights.iter().zip(drawn) {
            if x < *w {
                return i;
            }
            x -= w;
        }
        drawn[drawn.len() - 1]
    }

    fn find_probe<P: Peer>(&mut self, peers: &[P], now: Nanos) -> Option<usize> {
        let threshold = PROBE_BAND * self.typical;
        for _ in 0..PROBE_CHECKS.min(peers.len()) {
            let i = self.probe_cursor % peers.len();
            self.probe_cursor = self.probe_cursor.wrapping_add(1);
            if usable(&peers[i], now) && peers[i].load().take_probe(threshold, now, self.probe_cap) {
                return Some(i);
            }
        }
        None
    }
}

/// Fills `out` with distinct indices below `n` (≥ `out.len()`), drawn at random.
pub fn distinct(rng: &mut fastrand::Rng, n: usize, out: &mut [usize]) {
    for k in 0..out.len() {
        // Draw among the n - k indices not taken yet, then step over the taken ones.
        let mut x = rng.usize(..n - k);
        let mut taken: [usize; MAX_CHOICES] = [usize::MAX; MAX_CHOICES];
        taken[..k].copy_from_slice(&out[..k]);
        taken[..k].sort_unstable();
        for &t in &taken[..k] {
            if x >= t {
                x += 1;
            }
        }
        out[k] = x;
    }
}
