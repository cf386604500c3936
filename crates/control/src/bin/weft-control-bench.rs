//! `weft-control-bench`: weft-control at scale. Starts the weft-control
//! binary on a generated mesh file (S services × E endpoints), opens W
//! watcher connections (each one "proxy": it watches the changed service
//! and `--per-watcher - 1` others), then changes one endpoint of the
//! watched service U times through the file and measures, for every
//! watcher, the time from the file's rename to the update's arrival.
//! Prints a Markdown report: latency percentiles, control-plane RSS and
//! CPU per update. `bench/control` runs it on a release build.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::sync::mpsc;
use weft_api::destination::{GetDestination, destination_client::DestinationClient, update::Kind};
use weft_mesh::{Endpoint, Service, ServiceName};

#[derive(Parser, Debug)]
#[command(name = "weft-control-bench", version)]
struct Args {
    /// The weft-control binary.
    #[arg(long, default_value = "target/release/weft-control")]
    control: PathBuf,
    /// Watchers (connections, one per proxy).
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Services in the mesh.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 100)]
    endpoints: usize,
    /// Services each watcher follows (the changed one among them).
    #[arg(long, default_value_t = 10)]
    per_watcher: usize,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 30)]
    updates: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn mesh(args: &Args, extra: bool) -> BTreeMap<ServiceName, Service> {
    let mut m = BTreeMap::new();
    for s in 0..args.services {
        let mut endpoints: Vec<Endpoint> = (0..args.endpoints)
            .map(|e| {
                let mut ep = Endpoint::at(
                    format!("10.{}.{}.{}:8080", s / 256, s % 256, e % 250 + 1)
                        .parse()
                        .unwrap(),
                );
                ep.address.set_port(8080 + (e / 250) as u16);
                ep.name = Some(format!("svc-{s}-{e}"));
                ep
            })
            .collect();
        if s == 0 && extra {
            endpoints.push(Endpoint::at("10.255.255.1:9999".parse().unwrap()));
        }
        m.insert(
            ServiceName::parse(&format!("svc-{s}.bench:8080")).unwrap(),
            Service {
                addresses: Vec::new(),
                endpoints,
                routes: Vec::new(),
            },
        );
    }
    m
}

/// CPU time (user + system) of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3 (state, not a number).
    f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("weft-control-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("mesh.yaml");
    weft_mesh::write_services(&file, &mesh(&args, false))?;
    let size = std::fs::metadata(&file)?.len();
    let parse_start = Instant::now();
    weft_mesh::MeshFile::read(&file)?;
    let parse = parse_start.elapsed();

    let (grpc, admin) = (free_port(), free_port());
    let mut cp = tokio::process::Command::new(&args.control)
        .arg("--mesh-file")
        .arg(&file)
        .args([
            "--listen",
            &format!("127.0.0.1:{grpc}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(["--log", "warn"])
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.control.display()))?;
    let pid = cp.id().context("weft-control pid")?;
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", grpc)).await.is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("weft-control did not listen");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_idle = rss_kib(pid);

    // The watchers: each one connection, `per_watcher` streams.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let connect_start = Instant::now();
    for w in 0..args.watchers {
        let (tx, ready_tx) = (tx.clone(), ready_tx.clone());
        let services = args.services;
        let per = args.per_watcher;
        tokio::spawn(async move {
            let channel = loop {
                match tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
                    .unwrap()
                    .connect()
                    .await
                {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            for k in 0..per {
                let svc = if k == 0 {
                    0
                } else {
                    (w * 7 + k * 13) % (services - 1) + 1
                };
                let mut client = DestinationClient::new(channel.clone());
                let (tx, ready_tx) = (tx.clone(), ready_tx.clone());
                tokio::spawn(async move {
                    let Ok(resp) = client
                        .get(GetDestination {
                            authority: format!("svc-{svc}.bench:8080"),
                            context: format!("watcher-{w}"),
                        })
                        .await
                    else {
                        return;
                    };
                    let mut stream = resp.into_inner();
                    let mut first = true;
                    while let Ok(Some(u)) = stream.message().await {
                        if first {
                            first = false;
                            let _ = ready_tx.send(());
                            continue;
                        }
                        if k == 0 && matches!(u.kind, Some(Kind::Add(_) | Kind::Remove(_) | Kind::Snapshot(_))) {
                            let _ = tx.send((w, Instant::now()));
                        }
                    }
                });
            }
        });
    }
    let streams = args.watchers * args.per_watcher;
    for n in 0..streams {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .with_context(|| format!("only {n} of {streams} watches got their snapshot within 60 s"))?;
    }
    let subscribed = connect_start.elapsed();
    let rss_watched = rss_kib(pid);

    // Changes: add, then remove, one endpoint of service 0.
    let mut latencies: Vec<Duration> = Vec::new();
    let cpu_before = cpu_ticks(pid);
    let changes_start = Instant::now();
    for u in 0..args.updates {
        weft_mesh::write_services(&file, &mesh(&args, u % 2 == 0))?;
        let t0 = Instant::now();
        let mut got = 0;
        while got < args.watchers {
            let (_, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .with_context(|| format!("update {u}: only {got} of {} watchers heard within 10 s", args.watchers))?
                .context("watchers gone")?;
            latencies.push(at.saturating_duration_since(t0));
            got += 1;
        }
    }
    let changes_wall = changes_start.elapsed();
    let cpu = cpu_ticks(pid) - cpu_before;
    let rss_end = rss_kib(pid);
    let _ = cp.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
    println!("## weft-control at scale\n");
    println!(
        "{} watchers (connections), {} services × {} endpoints = {} endpoints, {} streams ({} per watcher, all on the changed service); {} changes of one endpoint through the mesh file ({:.0} KiB; parsing it takes {} ms here).\n",
        args.watchers,
        args.services,
        args.endpoints,
        args.services * args.endpoints,
        streams,
        args.per_watcher,
        args.updates,
        size as f64 / 1024.0,
        ms(parse)
    );
    println!("| figure | value |\n|---|---|");
    println!("| change → watcher, p50 | {} ms |", ms(q(0.5)));
    println!("| change → watcher, p99 | {} ms |", ms(q(0.99)));
    println!("| change → watcher, max | {} ms |", ms(*latencies.last().unwrap()));
    println!("| samples | {} |", latencies.len());
    println!("| all {streams} watches subscribed in | {} ms |", ms(subscribed));
    println!(
        "| control-plane CPU per change | {:.1} ms |",
        cpu as f64 * 10.0 / args.updates as f64
    );
    println!(
        "| wall time per change (all watchers heard) | {} ms |",
        ms(changes_wall / args.updates as u32)
    );
    println!(
        "| control-plane RSS: idle / {streams} watches / after changes | {:.1} / {:.1} / {:.1} MiB |",
        rss_idle as f64 / 1024.0,
        rss_watched as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    Ok(())
}
