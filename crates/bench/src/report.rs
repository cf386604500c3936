//! The report: the plan's tables and goals, filled with medians over passes
//! (and `added_*` differences to the direct call, per pass), as Markdown.

use crate::{
    plan::{Goal, Plan, Profile, Table},
    procs::{self, LOAD_CORE, SERVER_CORE},
    run::Record,
};

/// The records of a run, looked up by target, scenario and field.
pub struct Results<'a> {
    pub records: &'a [Record],
}

impl Results<'_> {
    fn of<'r>(&'r self, target: &'r str, scenario: &'r str) -> impl Iterator<Item = &'r Record> + 'r {
        self.records
            .iter()
            .filter(move |r| r.target == target && r.scenario == scenario)
    }

    /// The median over passes of `scenario.field` for `target`; for
    /// `added_<field>`, of the difference to `direct` in the same pass.
    pub fn median(&self, target: &str, value: &str) -> Option<f64> {
        let (scenario, field) = value.split_once('.')?;
        let xs: Vec<f64> = match field.strip_prefix("added_") {
            None => self
                .of(target, scenario)
                .filter_map(|r| r.values.get(field).copied())
                .collect(),
            Some(field) => self
                .of(target, scenario)
                .filter_map(|r| {
                    let direct = self.of("direct", scenario).find(|d| d.pass == r.pass)?;
                    Some(r.values.get(field)? - direct.values.get(field)?)
                })
                .collect(),
        };
        median(xs)
    }

    /// `target:scenario.field`.
    fn reference(&self, r: &str) -> Option<f64> {
        let (target, value) = r.split_once(':')?;
        self.median(target, value)
    }

    /// The share of successful calls per replica, from the first pass.
    fn hosts(&self, target: &str, scenario: &str) -> Option<String> {
        let hosts = &self.of(target, scenario).next()?.hosts;
        let total = hosts.values().sum::<u64>().max(1) as f64;
        let shares: Vec<String> = (0..crate::target::REPLICAS)
            .map(|i| {
                let n = hosts.get(&format!("square-{i}")).copied().unwrap_or(0);
                format!("{:.0}%", n as f64 * 100.0 / total)
            })
            .collect();
        Some(shares.join(" / "))
    }
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// A number with thousands separators and `digits` decimals; `–` for none.
pub fn fmt(x: Option<f64>, digits: usize, unit: &str) -> String {
    let Some(x) = x else { return "–".into() };
    let s = format!("{:.*}", digits, x.abs());
    let (int, frac) = s.split_once('.').map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    // No "-0" for a negative number that rounds to zero.
    let sign = if x < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}{unit}"),
        None => format!("{sign}{grouped}{unit}"),
    }
}

fn table(results: &Results<'_>, t: &Table, targets: &[String], profile: &Profile) -> Vec<String> {
    let heads: Vec<String> = t.columns.iter().map(|c| profile.fill(&c.head)).collect();
    let mut lines = vec![
        format!("## {}", profile.fill(&t.title)),
        String::new(),
        format!("| target | {} |", heads.join(" | ")),
        format!("|---|{}", "---|".repeat(heads.len())),
    ];
    for target in targets {
        let cells: Vec<Option<String>> = t
            .columns
            .iter()
            .map(|c| match c.value.split_once('.') {
                Some((scenario, "hosts")) => results.hosts(target, scenario),
                _ => results
                    .median(target, &c.value)
                    .map(|x| fmt(Some(x), c.digits, &c.unit)),
            })
            .collect();
        if cells.iter().all(Option::is_none) {
            continue; // the scenarios of this table did not run on this target
        }
        let cells: Vec<String> = cells.into_iter().map(|c| c.unwrap_or_else(|| "–".into())).collect();
        lines.push(format!("| {target} | {} |", cells.join(" | ")));
    }
    lines.push(String::new());
    lines
}

fn goal(results: &Results<'_>, g: &Goal, profile: &Profile) -> String {
    let value = match (&g.ratio, &g.value) {
        (Some([a, b]), _) => match (results.reference(a), results.reference(b)) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        },
        (None, Some(v)) => results.reference(v),
        (None, None) => None,
    };
    let met = value.and_then(|v| {
        let checks = [
            g.at_most.map(|b| v <= b),
            g.at_least.map(|b| v >= b),
            g.below.map(|b| v < b),
        ];
        let checks: Vec<bool> = checks.into_iter().flatten().collect();
        (!checks.is_empty()).then(|| checks.iter().all(|c| *c))
    });
    let met = match met {
        None => "–",
        Some(true) => "yes",
        Some(false) => "**no**",
    };
    format!(
        "| {} | {} | {} | {met} |",
        profile.fill(&g.what),
        g.goal,
        fmt(value, 2, "")
    )
}

/// How the run was made, for the report's head.
pub struct Context<'a> {
    pub command: &'a str,
    /// The plan's path, as given.
    pub plan: &'a str,
    pub started: &'a str,
    pub passes: usize,
    pub proxy: &'a str,
}

/// The whole report.
pub fn render(plan: &Plan, targets: &[String], profile: &Profile, results: &Results<'_>, cx: &Context<'_>) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_string()))
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let peers: Vec<String> = [
        procs::first_line(&["haproxy", "-v"]),
        procs::first_line(&["nginx", "-v"]),
    ]
    .into_iter()
    .flatten()
    .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut lines = vec![
        "# weft benchmarks".to_string(),
        String::new(),
        format!(
            "Produced by `{}` on {} UTC, {} pass(es), targets alternating (A B … then … B A); every figure is \
             the **median over passes**. Scenarios, tables and goals: `{}`.",
            cx.command, cx.started, cx.passes, cx.plan
        ),
        String::new(),
        format!(
            "Machine: {cores} vCPU ({cpu}), kernel {}, {}.",
            kernel.trim(),
            peers.join("; ")
        ),
        format!(
            "Placement: load generator (`weft-load`, open loop, latency from each call's intended start) on core \
             {LOAD_CORE}; the three `square` replicas and the proxy under test on core {SERVER_CORE}; one \
             worker/thread per proxy. Fixed rate: {} calls/s for {} s after {} s warm-up. weft-proxy: `{}`.",
            profile.rate, profile.duration, profile.warmup, cx.proxy
        ),
        String::new(),
    ];
    for t in &plan.tables {
        lines.extend(table(results, t, targets, profile));
    }
    lines.extend([
        "## Against the goals".to_string(),
        String::new(),
        "| target | goal | measured | met |".into(),
        "|---|---|---|---|".into(),
    ]);
    lines.extend(plan.goals.iter().map(|g| goal(results, g, profile)));
    // A machine-wide value over every record that has it, and its maximum.
    let across = |field: &str| {
        let v: Vec<f64> = results
            .records
            .iter()
            .filter_map(|r| r.values.get(field).copied())
            .collect();
        let max = v.iter().copied().fold(0.0, f64::max);
        (v, max)
    };
    let (background, max) = across("background");
    let (steal, max_steal) = across("steal");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    lines.extend([
        String::new(),
        format!(
            "Background load during the fixed-rate runs (CPU time outside the proxy, replicas and load generator, \
             as a share of both cores): median {}, max {max:.3}; time the hypervisor took (steal): median {}, \
             max {max_steal:.3}. Load average at the end: {}.",
            fmt(median(background), 3, ""),
            fmt(median(steal), 3, ""),
            load.split_whitespace().next().unwrap_or("?")
        ),
        String::new(),
    ]);
    lines.join("\n")
}

/// A summary of the records as JSON (kept beside the report).
pub fn json(records: &[Record]) -> String {
    serde_json::to_string_pretty(records).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn rec(pass: usize, target: &str, p99: f64) -> Record {
        Record {
            pass,
            target: target.into(),
            scenario: "s".into(),
            values: BTreeMap::from([("p99".to_string(), p99)]),
            hosts: BTreeMap::new(),
        }
    }

    #[test]
    fn medians_and_added_are_per_pass() {
        let records = vec![
            rec(0, "direct", 100.0),
            rec(0, "weft", 150.0),
            rec(1, "direct", 300.0),
            rec(1, "weft", 310.0),
            rec(2, "direct", 100.0),
            rec(2, "weft", 120.0),
        ];
        let r = Results { records: &records };
        assert_eq!(r.median("weft", "s.p99"), Some(150.0));
        // Per pass: 50, 10, 20 → median 20 (not 150 − 100).
        assert_eq!(r.median("weft", "s.added_p99"), Some(20.0));
        assert_eq!(r.median("weft", "s.p50"), None);
        assert_eq!(r.median("nginx", "s.p99"), None);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(fmt(Some(1234567.0), 0, ""), "1,234,567");
        assert_eq!(fmt(Some(0.0444), 3, ""), "0.044");
        assert_eq!(fmt(Some(-603.0), 0, ""), "-603");
        assert_eq!(fmt(Some(5.04), 1, " MiB"), "5.0 MiB");
        assert_eq!(fmt(None, 1, ""), "–");
    }
}
