//! weft-bench: weft side by side with HAProxy, nginx and a direct call, in
//! one run, as `bench/scenarios.yaml` plans it. `bench/run` builds the
//! binaries and calls this.
//!
//! Placement (see shared/BENCHMARKING.md): the load generator alone on
//! core 0; the replicas and the proxy under test together on core 1, each
//! proxy with one worker/thread. Passes alternate the target order (A B …
//! then … B A) and the report quotes medians over passes.

mod load;
mod plan;
mod procs;
mod report;
mod run;
mod target;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

use plan::Plan;
use target::{Bins, Replicas, Target};

/// Runs the benchmark scenarios and writes the report.
#[derive(Parser, Debug)]
#[command(name = "weft-bench", version)]
struct Args {
    /// One short pass with the `quick` profile (< 1 min), for CI; the
    /// report goes to bench/out/quick.md unless --out says otherwise.
    #[arg(long)]
    quick: bool,
    /// Passes over all targets (default: the profile's).
    #[arg(long)]
    passes: Option<usize>,
    /// Report path (default bench/RESULTS.md; bench/out/quick.md with --quick).
    /// The records go beside it as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Targets to run, comma separated (default: the plan's).
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Scenarios to run, comma separated (default: all the plan's); the
    /// report's columns of the others stay empty.
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
    /// The plan.
    #[arg(long, default_value = "bench/scenarios.yaml")]
    plan: PathBuf,
    /// Where `square`, `square-client` and `weft-load` are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The weft-proxy under test.
    #[arg(long, default_value = "target/release/weft-proxy")]
    proxy: PathBuf,
    /// Another build of weft-proxy, as NAME=PATH, for targets named
    /// `weft-1hop@NAME` (a before/after comparison in one run, passes
    /// interleaved).
    #[arg(long, value_name = "NAME=PATH")]
    proxy_as: Vec<String>,
}

fn log(msg: &str) {
    let now = procs::first_line(&["date", "-u", "+%H:%M:%S"]).unwrap_or_default();
    eprintln!("[bench {now}] {msg}");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let setup = Setup::new(&args)?;
    let started = procs::first_line(&["date", "-u", "+%Y-%m-%d %H:%M"]).unwrap_or_default();
    let tmp = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let records = run_passes(&setup, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    let records = records?;
    write_report(&args, &setup, &records, &started)?;
    log(&format!("wrote {}", setup.out.display()));
    Ok(())
}

/// A checked run: its plan, profile, targets and binaries.
struct Setup {
    plan: Plan,
    profile: plan::Profile,
    targets: Vec<String>,
    bins: Bins,
    out: PathBuf,
}

impl Setup {
    fn new(args: &Args) -> anyhow::Result<Setup> {
        let mut plan = Plan::load(&args.plan)?;
        if let Some(names) = &args.scenarios {
            for n in names {
                if !plan.scenarios.iter().any(|s| &s.name == n) {
                    bail!("--scenarios: {} has no scenario `{n}`", args.plan.display());
                }
            }
            plan.scenarios.retain(|s| names.contains(&s.name));
        }
        let profile_name = if args.quick { "quick" } else { "full" };
        let mut profile = plan
            .profiles
            .get(profile_name)
            .with_context(|| format!("{}: no profile `{profile_name}`", args.plan.display()))?
            .clone();
        if let Some(p) = args.passes {
            profile.passes = p;
        }
        let targets = args.targets.clone().unwrap_or_else(|| plan.targets.clone());
        for t in &targets {
            target::Kind::parse(t)?;
        }
        let mut needed = vec!["taskset"];
        if targets.iter().any(|t| t.starts_with("haproxy")) {
            needed.push("haproxy");
        }
        if targets.iter().any(|t| t == "nginx") {
            needed.push("nginx");
        }
        let missing: Vec<&str> = needed.into_iter().filter(|p| !procs::have(p)).collect();
        if !missing.is_empty() {
            bail!(
                "weft-bench needs {} (Debian: util-linux haproxy nginx-light)",
                missing.join(", ")
            );
        }
        if !targets.iter().any(|t| t == "direct") {
            log("no `direct` target: the added-latency columns stay empty");
        }
        let mut other_proxies = std::collections::BTreeMap::new();
        for p in &args.proxy_as {
            let Some((name, path)) = p.split_once('=') else {
                bail!("--proxy-as {p}: write NAME=PATH");
            };
            other_proxies.insert(name.to_string(), PathBuf::from(path));
        }
        let bins = Bins {
            dir: args.bin_dir.clone(),
            proxy: args.proxy.clone(),
            other_proxies,
        };
        for t in &targets {
            if matches!(target::Kind::parse(t)?, target::Kind::Weft { .. }) {
                bins.proxy_for(t)?;
            }
        }
        let proxies = std::iter::once(bins.proxy.clone()).chain(bins.other_proxies.values().cloned());
        for b in [
            bins.dir.join("square"),
            bins.dir.join("weft-load"),
            bins.dir.join("weft-attack"),
            bins.dir.join("weft-handshake"),
            bins.dir.join("weft-control"),
        ]
        .into_iter()
        .chain(proxies)
        {
            if !b.is_file() {
                bail!("{} is missing: build it first (bench/run does)", b.display());
            }
        }
        let out = args.out.clone().unwrap_or_else(|| {
            PathBuf::from(if args.quick {
                "bench/out/quick.md"
            } else {
                "bench/RESULTS.md"
            })
        });
        Ok(Setup {
            plan,
            profile,
            targets,
            bins,
            out,
        })
    }
}

/// Writes the report (keeping a hand-written "## Reading" section of the
/// previous one) and the records beside it as JSON.
fn write_report(args: &Args, setup: &Setup, records: &[run::Record], started: &str) -> anyhow::Result<()> {
    let mut command = String::from("bench/run");
    if args.quick {
        command.push_str(" --quick");
    }
    if args.passes.is_some() {
        command.push_str(&format!(" --passes {}", setup.profile.passes));
    }
    for name in setup.bins.other_proxies.keys() {
        command.push_str(&format!(" --proxy-as {name}=…"));
    }
    if args.targets.is_some() {
        command.push_str(&format!(" --targets {}", setup.targets.join(",")));
    }
    if let Some(names) = &args.scenarios {
        command.push_str(&format!(" --scenarios {}", names.join(",")));
    }
    if args.plan != std::path::Path::new("bench/scenarios.yaml") {
        command.push_str(&format!(" --plan {}", args.plan.display()));
    }
    if let Some(out) = &args.out {
        command.push_str(&format!(" --out {}", out.display()));
    }
    let mut proxy = args.proxy.display().to_string();
    for (name, path) in &setup.bins.other_proxies {
        proxy.push_str(&format!("`; `@{name}`: `{}", path.display()));
    }
    let cx = report::Context {
        command: &command,
        plan: &args.plan.display().to_string(),
        started,
        passes: setup.profile.passes,
        proxy: &proxy,
    };
    let results = report::Results { records };
    let mut text = report::render(&setup.plan, &setup.targets, &setup.profile, &results, &cx);
    if let Ok(prev) = std::fs::read_to_string(&setup.out)
        && let Some(i) = prev.find("\n## Reading")
    {
        text.push_str(&prev[i..]);
    }
    if let Some(dir) = setup.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&setup.out, text)?;
    std::fs::write(setup.out.with_extension("json"), report::json(records))?;
    Ok(())
}

fn run_passes(setup: &Setup, tmp: &std::path::Path) -> anyhow::Result<Vec<run::Record>> {
    let (profile, bins) = (&setup.profile, &setup.bins);
    let replicas = Replicas::start(bins)?;
    let mut records = Vec::new();
    for pass in 0..profile.passes {
        let mut order: Vec<&String> = setup.targets.iter().collect();
        if pass % 2 == 1 {
            order.reverse();
        }
        for name in order {
            log(&format!("pass {}/{}: {name}", pass + 1, profile.passes));
            let mut target = Target::start(name, &replicas, bins, tmp)?;
            let bench = run::Bench {
                profile,
                bins,
                replicas: &replicas,
                pass,
            };
            records.extend(bench.run(&mut target, &setup.plan.scenarios)?);
        }
    }
    Ok(records)
}
