//! The plan of a benchmark run, read from `bench/scenarios.yaml`: profiles,
//! targets, scenarios, report tables and goals. Everything the harness
//! does is driven from here; the file's own comments document its fields.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::target::Kind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub profiles: BTreeMap<String, Profile>,
    pub targets: Vec<String>,
    pub scenarios: Vec<Scenario>,
    pub tables: Vec<Table>,
    pub goals: Vec<Goal>,
}

/// How big a run is.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub passes: usize,
    /// Calls per second of open-loop scenarios.
    pub rate: f64,
    /// Seconds measured, after the warm-up.
    pub duration: f64,
    pub warmup: f64,
    /// Seconds of closed-loop scenarios.
    pub max_duration: f64,
    /// Calls in flight, closed loop.
    pub workers: usize,
    /// Streams held open, and for how many seconds.
    pub streams: usize,
    pub hold: f64,
    /// Whether closed-loop scenarios that ask for it also run h2load.
    pub h2load: bool,
}

/// One measurement, run against each target in turn.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub load: Load,
    /// A replica made slower for the scenario.
    #[serde(default)]
    pub delay: Option<Delay>,
    /// Replicas' behaviour for the scenario (`square-client
    /// --set-behavior`): `all` for every replica, `"0"`-`"2"` for one (on
    /// top of `all`). Reset to the default afterwards.
    #[serde(default)]
    pub behavior: BTreeMap<String, String>,
    /// The replica whose share of calls the scenario reports as `share_pct`.
    #[serde(default)]
    pub degraded: Option<usize>,
    /// Endpoints the targets balance over (default 3, one per replica;
    /// more are the same replicas at other loopback addresses, 127.0.0.x).
    #[serde(default)]
    pub endpoints: Option<usize>,
    /// A replica left out of the target's endpoints at first, which joins
    /// (a rollout) once long-lived streams are open on the others.
    #[serde(default)]
    pub join: Option<Join>,
    #[serde(default)]
    pub targets: Which,
    /// Only these targets (by name; `weft-1hop` covers `weft-1hop@build`),
    /// among those `targets` selects.
    #[serde(default)]
    pub only: Vec<String>,
    /// A hostile client (`weft-attack`) attacking the target while the
    /// load runs.
    #[serde(default)]
    pub attack: Option<Attack>,
    /// Start the target afresh first (memory figures).
    #[serde(default)]
    pub fresh: bool,
    /// Record the proxy's peak RSS after the scenario.
    #[serde(default)]
    pub rss: bool,
    /// Also measure with h2load (closed loop).
    #[serde(default)]
    pub h2load: bool,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Load {
    /// A constant rate (the profile's unless given), latency from each call's intended start.
    Open {
        connections: usize,
        #[serde(default)]
        rate: Option<f64>,
        /// Seconds measured: the profile's, or this if it is shorter.
        #[serde(default)]
        duration: Option<f64>,
        /// The share of calls to the service's slower method (`weft-load --mix`).
        #[serde(default)]
        mix: Option<f64>,
    },
    /// Calls back to back (the profile's `workers` in flight unless given).
    Closed {
        connections: usize,
        #[serde(default)]
        workers: Option<usize>,
    },
    /// Streams opened and held (the profile's count unless given).
    Streams {
        #[serde(default)]
        count: Option<usize>,
    },
    /// New mutual-TLS connections to the target's first inbound hop, as
    /// fast as it takes them, for the profile's `max_duration`
    /// (`weft-handshake`; the two-hop TLS targets only).
    Handshakes {
        #[serde(default = "eight")]
        concurrency: usize,
    },
}

fn eight() -> usize {
    8
}

/// An attack run beside a scenario's load (`weft-attack --help`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attack {
    /// `rapid-reset`, `ping-flood`, `hpack-bomb`, `continuation-flood`,
    /// `connections` or `garbage`.
    pub kind: String,
    /// Attacking connections at once (`weft-attack`'s default unless given).
    #[serde(default)]
    pub connections: Option<usize>,
}

/// A new pod beside long-lived streams: `streams` are opened (and held for
/// the whole scenario) while `replica` is out of the endpoints; then it
/// joins and the scenario's load runs.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    pub replica: usize,
    pub streams: usize,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    /// Which of the three replicas (0-based).
    pub replica: usize,
    pub ms: u64,
}

/// Which targets a scenario runs against.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Which {
    #[default]
    All,
    /// Those that balance over the replicas (not `direct`).
    Balanced,
    /// Those that are a proxy process (not `direct`).
    Proxies,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub title: String,
    pub columns: Vec<Column>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub head: String,
    /// `scenario.field`.
    pub value: String,
    #[serde(default)]
    pub digits: usize,
    #[serde(default)]
    pub unit: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    pub what: String,
    pub goal: String,
    /// `target:scenario.field` over `target:scenario.field`.
    #[serde(default)]
    pub ratio: Option<[String; 2]>,
    /// `target:scenario.field`.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub at_most: Option<f64>,
    #[serde(default)]
    pub at_least: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
}

impl Plan {
    /// Reads and checks a plan: every target is known, every reference
    /// names a scenario of the plan.
    pub fn load(path: &Path) -> anyhow::Result<Plan> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let plan: Plan = serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        plan.check().with_context(|| format!("{}", path.display()))?;
        Ok(plan)
    }

    fn check(&self) -> anyhow::Result<()> {
        for t in &self.targets {
            Kind::parse(t)?;
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.scenarios {
            if !names.insert(s.name.as_str()) {
                bail!("scenario `{}` is listed twice", s.name);
            }
            for t in &s.only {
                Kind::parse(t).with_context(|| format!("scenario `{}`: only", s.name))?;
            }
            let replica = |i: usize| -> anyhow::Result<()> {
                if i >= crate::target::REPLICAS {
                    bail!("scenario `{}`: there are {} replicas", s.name, crate::target::REPLICAS);
                }
                Ok(())
            };
            if let Some(d) = s.delay {
                replica(d.replica)?;
            }
            if let Some(d) = s.degraded {
                replica(d)?;
            }
            if let Some(j) = s.join {
                replica(j.replica)?;
                if !matches!(s.load, Load::Open { .. }) {
                    bail!("scenario `{}`: join needs an open-loop load", s.name);
                }
            }
            for k in s.behavior.keys() {
                if k != "all" {
                    let i: usize = k.parse().map_err(|_| {
                        anyhow::anyhow!("scenario `{}`: behavior `{k}`: write all or a replica number", s.name)
                    })?;
                    replica(i)?;
                }
            }
            if s.endpoints
                .is_some_and(|n| !(crate::target::REPLICAS..=750).contains(&n))
            {
                bail!(
                    "scenario `{}`: endpoints must be from {} to 750",
                    s.name,
                    crate::target::REPLICAS
                );
            }
        }
        let known = |r: &str, place: &str| -> anyhow::Result<()> {
            let scenario = r.split_once('.').map(|(s, _)| s).unwrap_or("");
            if !names.contains(scenario) {
                bail!("{place}: `{r}` names no scenario (write scenario.field)");
            }
            Ok(())
        };
        for t in &self.tables {
            for c in &t.columns {
                known(&c.value, &format!("table `{}`", t.title))?;
            }
        }
        for g in &self.goals {
            let refs: Vec<&String> = g.ratio.iter().flatten().chain(g.value.iter()).collect();
            if refs.is_empty() {
                bail!("goal `{}` has neither `ratio` nor `value`", g.what);
            }
            for r in refs {
                let Some((target, rest)) = r.split_once(':') else {
                    bail!("goal `{}`: `{r}` is not target:scenario.field", g.what);
                };
                Kind::parse(target)?;
                known(rest, &format!("goal `{}`", g.what))?;
            }
        }
        Ok(())
    }
}

impl Profile {
    /// `text` with `{rate}`, `{workers}` and `{streams}` filled in.
    pub fn fill(&self, text: &str) -> String {
        text.replace("{rate}", &self.rate.to_string())
            .replace("{workers}", &self.workers.to_string())
            .replace("{streams}", &self.streams.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_plan_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/scenarios.yaml");
        let plan = Plan::load(&path).unwrap();
        assert!(plan.profiles.contains_key("full") && plan.profiles.contains_key("quick"));
        assert!(plan.scenarios.iter().any(|s| s.name == "rate_c1"));
        let lab = Plan::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/lab.yaml")).unwrap();
        assert!(lab.scenarios.iter().any(|s| s.endpoints == Some(300)));
        assert!(lab.scenarios.iter().any(|s| s.join.is_some()));
        let mtls = Plan::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/mtls.yaml")).unwrap();
        assert!(mtls.scenarios.iter().any(|s| matches!(s.load, Load::Handshakes { .. })));
    }

    #[test]
    fn mistakes_are_named() {
        let base =
            "profiles: {}\ntargets: [direct]\nscenarios:\n  - name: a\n    load: { kind: open, connections: 1 }\n";
        let bad_ref = format!("{base}tables:\n  - title: t\n    columns: [{{ head: h, value: b.p50 }}]\ngoals: []\n");
        let err = serde_yaml::from_str::<Plan>(&bad_ref).unwrap().check().unwrap_err();
        assert!(err.to_string().contains("`b.p50` names no scenario"), "{err}");
        let bad_target = base.replace("[direct]", "[envoy]") + "tables: []\ngoals: []\n";
        let err = serde_yaml::from_str::<Plan>(&bad_target).unwrap().check().unwrap_err();
        assert!(err.to_string().contains("envoy"), "{err}");
        let typo = base.replace("connections", "conections") + "tables: []\ngoals: []\n";
        assert!(serde_yaml::from_str::<Plan>(&typo).is_err());
    }
}
