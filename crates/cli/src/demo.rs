//! `weft demo`: the square scene on one machine.
//!
//! `weft up` (this binary) runs the mesh: weft-control and three `square`
//! replicas, each beside its own weft-proxy, and an entry proxy. A client
//! sends unary calls over ONE HTTP/2 connection (a) through a
//! connection-level balancer that behaves like a Kubernetes Service, (b)
//! through the entry proxy, and (c) through it again after one replica
//! turned slow.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::Context;
use clap::Args;
use weft_api::square::{Behavior, square_control_client::SquareControlClient};

use crate::procs::{Proc, free_addr, sibling};

const SERVICE: &str = "square:50051";

#[derive(Args, Debug, Clone, Copy)]
pub struct DemoArgs {
    /// Calls per phase.
    #[arg(long, default_value_t = 300)]
    calls: u64,
    /// Calls in flight at once (all on one HTTP/2 connection); 1 sends
    /// them one after another, like a simple client.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Delay added to one replica in phase (c), in milliseconds.
    #[arg(long, default_value_t = 20)]
    slow_ms: u32,
    /// Print only the summaries, not one JSON line per call.
    #[arg(long, short)]
    quiet: bool,
    /// Keep the mesh running after the three phases (Ctrl-C to stop), to
    /// explore the proxies' admin endpoints.
    #[arg(long)]
    keep_running: bool,
}

struct Replica {
    name: String,
    app: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // weft up needs these beside weft; say so before starting anything.
    for bin in ["square", "weft-proxy", "weft-control"] {
        sibling(bin)?;
    }
    let client = sibling("square-client")?;
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut procs: Vec<Proc> = Vec::new();
    let result = scene(&args, &client, &dir, &mut procs).await;
    if result.is_ok() && args.keep_running {
        eprintln!("\nthe mesh keeps running; logs in {}; Ctrl-C to stop", dir.display());
        let _ = tokio::signal::ctrl_c().await;
    }
    for p in procs {
        p.stop(Duration::from_secs(15)).await;
    }
    if result.is_ok() && !args.keep_running {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn scene(
    args: &DemoArgs,
    client: &std::path::Path,
    dir: &std::path::Path,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<()> {
    let (replicas, outbound) = start_mesh(dir, procs).await?;
    let (l4, _l4_task) = weft_demo::l4::spawn(replicas.iter().map(|r| r.inbound).collect()).await?;

    eprintln!("weft demo: `weft up` runs 3 square replicas, each beside its own weft-proxy, served by weft-control");
    for r in &replicas {
        eprintln!(
            "  {}  app {}  inbound {}  admin http://{}",
            r.name, r.app, r.inbound, r.admin
        );
    }
    eprintln!(
        "  the entry proxy: {outbound} (service {SERVICE}); mesh state {}",
        dir.join(".weft/run/state.json").display()
    );
    eprintln!(
        "every phase: {} calls over ONE HTTP/2 connection, {} in flight\n",
        args.calls, args.concurrency
    );

    let names: Vec<String> = replicas.iter().map(|r| r.name.clone()).collect();
    // A few calls first, as a running mesh would have had: every proxy's
    // connections are open and the balancer has its first latency samples.
    let warm = DemoArgs {
        calls: 30,
        quiet: true,
        ..*args
    };
    phase(&warm, client, "warm-up", outbound, Some(SERVICE)).await?;
    let a = phase(args, client, "a", l4, None).await?;
    summary(
        "(a) through a Kubernetes-style Service: it balances connections, so one replica gets every call",
        &names,
        &a,
    );

    let b = phase(args, client, "b", outbound, Some(SERVICE)).await?;
    summary("(b) through weft: every call is balanced on its own", &names, &b);

    let slow = &replicas[2];
    make_slow(slow.app, args.slow_ms).await?;
    let c = phase(args, client, "c", outbound, Some(SERVICE)).await?;
    summary(
        &format!(
            "(c) through weft, {} now {} ms slower: peak-EWMA moves traffic away from it",
            slow.name, args.slow_ms
        ),
        &names,
        &c,
    );
    Ok(())
}

/// The square mesh, run by `weft up` (this binary) from a mesh file in
/// `dir`: three replicas, each beside its own weft-proxy, and an entry
/// proxy. Returns the replicas (from `weft up`'s state.json) and the entry.
async fn start_mesh(dir: &std::path::Path, procs: &mut Vec<Proc>) -> anyhow::Result<(Vec<Replica>, SocketAddr)> {
    let mesh = dir.join("mesh.yaml");
    std::fs::write(
        &mesh,
        "workloads:\n  square:\n    command: square\n    args: [--listen, \"127.0.0.1:${WEFT_PORT}\", --name, \"${WEFT_REPLICA}\"]\n    replicas: 3\n    ports: [{port: 50051, protocol: grpc}]\n",
    )?;
    let entry = free_addr()?;
    let weft_dir = dir.join(".weft");
    let exe = std::env::current_exe().context("locating the weft binary")?;
    let up = Proc::spawn(
        "weft up",
        &exe,
        &strings(&[
            "up",
            mesh.to_str().context("temp dir path is not UTF-8")?,
            "--dir",
            weft_dir.to_str().context("temp dir path is not UTF-8")?,
            "--entry",
            &entry.to_string(),
            "--plain",
        ]),
        Some(&dir.join("weft-up.log")),
    )?;
    procs.push(up);
    let state_path = weft_dir.join("run/state.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state: serde_json::Value = std::fs::read_to_string(&state_path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let replicas: Vec<Replica> = state["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["phase"] == "ready")
            .filter_map(|r| {
                Some(Replica {
                    name: r["name"].as_str()?.to_string(),
                    app: r["app"].as_str()?.parse().ok()?,
                    inbound: r["inbound"].as_str()?.parse().ok()?,
                    admin: r["admin"].as_str()?.parse().ok()?,
                })
            })
            .collect();
        if replicas.len() == 3 && state["entry"]["pid"].is_u64() {
            return Ok((replicas, entry));
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("weft-up.log")).unwrap_or_default();
            anyhow::bail!("weft up did not have 3 ready replicas within 30 s:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes the replica at `app` answer `ms` milliseconds later.
async fn make_slow(app: SocketAddr, ms: u32) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{app}"))?
        .connect()
        .await?;
    SquareControlClient::new(channel)
        .set_behavior(Behavior {
            delay_ms: ms,
            ..Default::default()
        })
        .await
        .context("making square-2 slow")?;
    Ok(())
}

/// Runs square-client for one phase; prints its JSON lines (tagged with the
/// phase); returns replies per hostname.
async fn phase(
    args: &DemoArgs,
    client: &std::path::Path,
    tag: &str,
    target: SocketAddr,
    authority: Option<&str>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut cmd = tokio::process::Command::new(client);
    cmd.args(["--target", &target.to_string(), "--count", &args.calls.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()]);
    if let Some(a) = authority {
        cmd.args(["--authority", a]);
    }
    let out = cmd.output().await.context("running square-client")?;
    if !out.status.success() {
        anyhow::bail!("square-client failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).context("square-client printed a non-JSON line")?;
        let key = match v.get("hostname").and_then(|h| h.as_str()) {
            Some(h) => h.to_string(),
            None => "(failed)".into(),
        };
        *counts.entry(key).or_insert(0) += 1;
        if !args.quiet {
            if let Some(obj) = v.as_object_mut() {
                obj.insert("phase".into(), tag.into());
            }
            println!("{v}");
        }
    }
    Ok(counts)
}

fn summary(title: &str, names: &[String], counts: &BTreeMap<String, u64>) {
    let total: u64 = counts.values().sum::<u64>().max(1);
    eprintln!("\n{title}");
    let mut rows: Vec<&String> = names.iter().collect();
    rows.extend(counts.keys().filter(|k| !names.contains(k)));
    for name in rows {
        let n = counts.get(name).copied().unwrap_or(0);
        let share = n as f64 / total as f64;
        let bar = "█".repeat((share * 40.0).round() as usize);
        eprintln!("  {name:<10} {bar:<40} {:>5.1}%  ({n} calls)", share * 100.0);
    }
    eprintln!();
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
