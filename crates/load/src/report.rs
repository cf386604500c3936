//! Recording results and summarising them.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How one call ended.
pub type CallResult = Result<String, CallError>;

/// A failed call: its gRPC code, or `transport` when no status arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    Grpc(u16),
    Transport,
    Timeout,
}

impl CallError {
    pub fn label(&self) -> String {
        match self {
            CallError::Grpc(c) => c.to_string(),
            CallError::Transport => "transport".into(),
            CallError::Timeout => "timeout".into(),
        }
    }
}

/// Results as they come in.
pub struct Recorder {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    hosts: BTreeMap<String, u64>,
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// The machine-readable result of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub target: String,
    pub authority: String,
    pub load: String,
    pub connections: usize,
    pub duration_s: f64,
    pub calls: u64,
    pub ok: u64,
    /// Failed calls by gRPC code (`transport`, `timeout` when none arrived).
    pub errors: BTreeMap<String, u64>,
    /// Successful calls per second over the measured window.
    pub throughput: f64,
    pub latency_us: Percentiles,
    /// Successful calls per replica hostname.
    pub hosts: BTreeMap<String, u64>,
}

pub fn lock(r: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            // 1 µs to 1 hour, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
            ok: 0,
            errors: BTreeMap::new(),
            hosts: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, latency: Duration, result: CallResult) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us);
        match result {
            Ok(host) => {
                self.ok += 1;
                match self.hosts.get_mut(&host) {
                    Some(n) => *n += 1,
                    None => {
                        self.hosts.insert(host, 1);
                    }
                }
            }
            Err(e) => *self.errors.entry(e.label()).or_insert(0) += 1,
        }
    }

    pub fn calls(&self) -> u64 {
        self.hist.len()
    }

    pub fn percentiles(&self) -> Percentiles {
        let h = &self.hist;
        let q = |p: f64| if h.is_empty() { 0 } else { h.value_at_quantile(p) };
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: if h.is_empty() { 0 } else { h.max() },
            mean: if h.is_empty() { 0.0 } else { h.mean() },
        }
    }

    pub fn summary(
        &self,
        target: SocketAddr,
        connections: usize,
        authority: &str,
        load: String,
        measured_s: f64,
    ) -> Summary {
        Summary {
            target: target.to_string(),
            authority: authority.to_string(),
            load,
            connections,
            duration_s: measured_s,
            calls: self.calls(),
            ok: self.ok,
            errors: self.errors.clone(),
            throughput: if measured_s > 0.0 {
                self.ok as f64 / measured_s
            } else {
                0.0
            },
            latency_us: self.percentiles(),
            hosts: self.hosts.clone(),
        }
    }
}

/// Whether stderr is a terminal (the progress line's default).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Prints a progress line on stderr until aborted.
pub async fn progress(recorder: Arc<Mutex<Recorder>>, measure_from: Instant, end: Instant) {
    let total = end.saturating_duration_since(measure_from).as_secs_f64().max(0.001);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let (calls, p) = {
            let r = lock(&recorder);
            (r.calls(), r.percentiles())
        };
        let (label, frac) = if now < measure_from {
            ("warm-up", 0.0)
        } else {
            ("measuring", (now - measure_from).as_secs_f64() / total)
        };
        let width = 30;
        let done = ((frac.min(1.0)) * width as f64) as usize;
        eprint!(
            "\r\x1b[2K[{}{}] {label} {:>3.0}%  {calls} calls  p50 {:.2} ms  p99 {:.2} ms",
            "=".repeat(done),
            " ".repeat(width - done),
            frac.min(1.0) * 100.0,
            p.p50 as f64 / 1e3,
            p.p99 as f64 / 1e3
        );
    }
}

impl Summary {
    /// A few lines a person can read.
    pub fn human(&self) -> String {
        let p = &self.latency_us;
        let ms = |us: u64| us as f64 / 1e3;
        let mut s = format!(
            "{} → {} ({}, {} connection(s))\n  calls {}  ok {}  throughput {:.0}/s\n  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.load,
            self.target,
            self.authority,
            self.connections,
            self.calls,
            self.ok,
            self.throughput,
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.p999),
            ms(p.max)
        );
        if !self.errors.is_empty() {
            s.push_str(&format!("  errors: {:?}\n", self.errors));
        }
        for (h, n) in &self.hosts {
            s.push_str(&format!(
                "  {h:<16} {n:>8} {:>5.1}%\n",
                *n as f64 * 100.0 / self.ok.max(1) as f64
            ));
        }
        s
    }
}
