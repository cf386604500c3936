//! Running a plan's scenarios against one target, in one pass: each
//! scenario's load, the proxy's CPU time and memory, and the machine's
//! background load while it ran.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    load,
    plan::{Load, Profile, Scenario, Which},
    procs,
    target::{Bins, Kind, Replicas, Target},
};

/// What one scenario measured on one target in one pass.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub pass: usize,
    pub target: String,
    pub scenario: String,
    pub values: BTreeMap<String, f64>,
    /// Successful calls per replica.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, u64>,
}

/// Everything a pass over one target needs.
pub struct Bench<'a> {
    pub profile: &'a Profile,
    pub bins: &'a Bins,
    pub replicas: &'a Replicas,
    pub pass: usize,
}

impl Bench<'_> {
    /// Runs the scenarios that apply to `target`, in order.
    pub fn run(&self, target: &mut Target, scenarios: &[Scenario]) -> anyhow::Result<Vec<Record>> {
        let mut out = Vec::new();
        for s in scenarios {
            let base = target.name.split('@').next().unwrap_or_default();
            let applies = match s.targets {
                Which::All => true,
                Which::Balanced => target.kind != Kind::Direct,
                Which::Proxies => target.is_proxy(),
            } && (s.only.is_empty() || s.only.iter().any(|t| t == base));
            if !applies {
                continue;
            }
            let endpoints = s.endpoints.unwrap_or(crate::target::REPLICAS);
            let absent = s.join.map(|j| j.replica);
            if s.fresh || endpoints != target.endpoints || absent.is_some() || absent != target.absent {
                target.endpoints = endpoints;
                target.absent = absent;
                target.restart(self.replicas, self.bins)?;
            }
            if let Some(d) = s.delay {
                self.replicas.set_delay(d.replica, d.ms)?;
            }
            self.set_behavior(s)?;
            let result = self.scenario(target, s);
            if let Some(d) = s.delay {
                self.replicas.set_delay(d.replica, 0)?;
            }
            if !s.behavior.is_empty() {
                for i in 0..self.replicas.ports.len() {
                    self.replicas.set_behavior(i, "")?;
                }
            }
            let mut record = result?;
            if s.rss && target.is_proxy() {
                let kib: u64 = target.pids().iter().map(|p| procs::status_kib(*p, "VmHWM")).sum();
                record.values.insert("rss_hwm_mib".into(), kib as f64 / 1024.0);
                record.values.insert("rss_hwm_mb".into(), kib as f64 * 1.024 / 1000.0);
                let max: u64 = target
                    .pids()
                    .iter()
                    .map(|p| procs::status_kib(*p, "VmHWM"))
                    .max()
                    .unwrap_or(0);
                record.values.insert("rss_hwm_max_mib".into(), max as f64 / 1024.0);
            }
            out.push(record);
        }
        Ok(out)
    }

    /// Applies a scenario's replica behaviour: `all`, then each replica's own.
    fn set_behavior(&self, s: &Scenario) -> anyhow::Result<()> {
        if s.behavior.is_empty() {
            return Ok(());
        }
        let all = s.behavior.get("all").map(String::as_str).unwrap_or("");
        for i in 0..self.replicas.ports.len() {
            let own = s.behavior.get(&i.to_string()).map(String::as_str).unwrap_or("");
            let spec = match (all, own) {
                (a, "") => a.to_string(),
                ("", o) => o.to_string(),
                (a, o) => format!("{a},{o}"),
            };
            self.replicas.set_behavior(i, &spec)?;
        }
        Ok(())
    }

    fn scenario(&self, target: &mut Target, s: &Scenario) -> anyhow::Result<Record> {
        let p = self.profile;
        let mut record = Record {
            pass: self.pass,
            target: target.name.clone(),
            scenario: s.name.clone(),
            values: BTreeMap::new(),
            hosts: BTreeMap::new(),
        };
        let v = &mut record.values;
        match s.load {
            Load::Open {
                connections,
                rate,
                duration,
                mix,
            } => {
                let (rate, duration) = (
                    rate.unwrap_or(p.rate),
                    duration.map_or(p.duration, |d| d.min(p.duration)),
                );
                let args = args(&[
                    ("--rate", rate),
                    ("--connections", connections as f64),
                    ("--duration", duration),
                    ("--warmup", p.warmup),
                    ("--mix", mix.unwrap_or(0.0)),
                ]);
                // A rollout: long-lived streams on the replicas there, then a new one.
                let holder = match s.join {
                    Some(j) => {
                        let hold = p.warmup + duration + 30.0;
                        let mut child = load::hold_streams(self.bins, target.port, j.streams, hold)?;
                        if let Err(e) = target.join() {
                            procs::stop(&mut child);
                            return Err(e);
                        }
                        Some(child)
                    }
                    None => None,
                };
                let attacker = match &s.attack {
                    Some(a) => Some(load::attack(self.bins, target.port, a)?),
                    None => None,
                };
                let also: Vec<u32> = attacker.iter().map(|a| a.id()).collect();
                let (summary, m) = self.measured(target, &also, || {
                    let summary = load::run(self.bins, target.port, &args);
                    if let Some(mut a) = attacker {
                        procs::stop(&mut a);
                    }
                    summary
                });
                if let Some(mut h) = holder {
                    procs::stop(&mut h);
                }
                let summary = summary?;
                latency(v, &summary);
                // The proxy also served the warm-up.
                let calls = summary.calls as f64 * (duration + p.warmup) / duration;
                if calls > 0.0 {
                    v.insert("cpu_per_1k".into(), m.proxy_cpu / calls * 1000.0);
                }
                v.insert("background".into(), m.background);
                v.insert("steal".into(), m.steal);
                if let Some(replica) = s.degraded.or(s.delay.map(|d| d.replica)) {
                    let slow = summary.hosts.get(&format!("square-{replica}")).copied().unwrap_or(0);
                    // Of all calls sent (a failing replica's calls are not `ok`).
                    let failed_there = if s.degraded.is_some() {
                        summary.errors.values().sum::<u64>()
                    } else {
                        0
                    };
                    v.insert(
                        "share_pct".into(),
                        (slow + failed_there) as f64 * 100.0 / (summary.ok + failed_there).max(1) as f64,
                    );
                }
                record.hosts = summary.hosts;
            }
            Load::Closed { connections, workers } => {
                let workers = workers.unwrap_or(p.workers);
                let args = args(&[
                    ("--workers", workers as f64),
                    ("--connections", connections as f64),
                    ("--duration", p.max_duration),
                    ("--warmup", 1.0),
                ]);
                let (summary, m) = self.measured(target, &[], || load::run(self.bins, target.port, &args));
                let summary = summary?;
                v.insert("throughput".into(), summary.throughput);
                v.insert("p50".into(), summary.latency_us.p50 as f64);
                v.insert("errors".into(), summary.errors.values().sum::<u64>() as f64);
                v.insert("cpu_per_1k".into(), m.proxy_cpu / summary.calls.max(1) as f64 * 1000.0);
                if s.h2load
                    && p.h2load
                    && let Some(rate) = load::h2load(target.port, p.max_duration, connections, workers)
                {
                    v.insert("h2load".into(), rate);
                }
            }
            Load::Streams { count } => self.streams(target, count.unwrap_or(p.streams), v)?,
            Load::Handshakes { concurrency } => {
                let Some(tls) = &target.tls else {
                    anyhow::bail!(
                        "{}: handshakes are measured for the two-hop TLS targets only",
                        target.name
                    );
                };
                let (out, m) = self.measured(target, &[], || {
                    load::handshakes(self.bins, tls, p.max_duration, concurrency)
                });
                let out = out?;
                v.insert("per_sec".into(), out.per_sec);
                v.insert("errors".into(), out.errors as f64);
                v.insert("cpu_per_1k".into(), m.proxy_cpu / out.handshakes.max(1) as f64 * 1000.0);
            }
        }
        Ok(record)
    }

    /// Opens and holds streams, sampling the target's memory meanwhile.
    fn streams(&self, target: &Target, count: usize, v: &mut BTreeMap<String, f64>) -> anyhow::Result<()> {
        // A few calls first, so that the baseline holds the endpoint connections.
        let warm = args(&[("--rate", 100.0), ("--duration", 0.5), ("--warmup", 0.0)]);
        load::run(self.bins, target.port, &warm)?;
        let rss = || -> u64 { target.pids().iter().map(|p| procs::status_kib(*p, "VmRSS")).sum() };
        let base = rss();
        let mut peak = base;
        let hold = args(&[("--streams", count as f64), ("--duration", self.profile.hold)]);
        let (summary, _) = self.measured(target, &[], || -> anyhow::Result<_> {
            let mut child = load::spawn(self.bins, target.port, &hold)?;
            while child.try_wait()?.is_none() {
                peak = peak.max(rss());
                std::thread::sleep(Duration::from_millis(50));
            }
            load::finish(child)
        });
        let open = summary?.ok;
        v.insert("open".into(), open as f64);
        v.insert("rss_base_mib".into(), base as f64 / 1024.0);
        v.insert("rss_peak_mib".into(), peak as f64 / 1024.0);
        v.insert("rss_peak_mb".into(), peak as f64 * 1.024 / 1000.0);
        v.insert(
            "per_stream_kib".into(),
            (peak - base.min(peak)) as f64 / open.max(1) as f64,
        );
        Ok(())
    }

    /// Runs `f`, measuring the target's CPU time and the machine's
    /// background load: busy time not spent by the harness's own processes
    /// (target, replicas, load generator, `also`: an attacker), as a share
    /// of both cores. It should be near zero.
    fn measured<T>(&self, target: &Target, also: &[u32], f: impl FnOnce() -> T) -> (T, Measured) {
        let pids = target.pids();
        let own: Vec<u32> = pids
            .iter()
            .copied()
            .chain(self.replicas.pids())
            .chain(also.iter().copied())
            .collect();
        let (cpu0, own0, kids0) = (
            procs::cpu_seconds(&pids),
            procs::cpu_seconds(&own),
            procs::children_cpu(),
        );
        let (busy0, total0, steal0) = procs::machine_busy();
        let result = f();
        let (busy1, total1, steal1) = procs::machine_busy();
        let (cpu1, own1, kids1) = (
            procs::cpu_seconds(&pids),
            procs::cpu_seconds(&own),
            procs::children_cpu(),
        );
        let background = ((busy1 - busy0) - (own1 - own0) - (kids1 - kids0)).max(0.0) / (total1 - total0).max(1e-9);
        let m = Measured {
            proxy_cpu: cpu1 - cpu0,
            background,
            steal: (steal1 - steal0).max(0.0) / (total1 - total0).max(1e-9),
        };
        (result, m)
    }
}

struct Measured {
    /// CPU seconds the target's processes used.
    proxy_cpu: f64,
    background: f64,
    /// The share of both cores' time the hypervisor took (steal).
    steal: f64,
}

fn args(pairs: &[(&str, f64)]) -> Vec<String> {
    pairs.iter().flat_map(|(k, v)| [k.to_string(), v.to_string()]).collect()
}

fn latency(v: &mut BTreeMap<String, f64>, s: &weft_load::Summary) {
    let l = &s.latency_us;
    for (k, x) in [("p50", l.p50), ("p90", l.p90), ("p99", l.p99), ("p999", l.p999)] {
        v.insert(k.into(), x as f64);
    }
    v.insert("errors".into(), s.errors.values().sum::<u64>() as f64);
}
