//! `weft-chaos`: faults under a steady load, with figures. For each
//! scenario: a fresh `weft up` mesh (3 `square` replicas), calls at a fixed
//! rate through its entry proxy (each with a 1 s deadline), one fault on
//! `square-1` for a while, then a quiet time; then a row of `bench/CHAOS.md`:
//! calls, failed, failed that could not have been saved, p99 during the
//! fault, time to recover, and whether the scenario's goal held.
//!
//! `scripts/chaos` runs it (`--quick`: short faults, for CI).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use weft_api::square::{Input, square_client::SquareClient};

#[derive(Parser, Debug)]
#[command(name = "weft-chaos", version)]
struct Args {
    /// Short faults (a few seconds each), for CI.
    #[arg(long)]
    quick: bool,
    /// Calls per second through the mesh.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Where the report goes (Markdown).
    #[arg(long, default_value = "bench/CHAOS.md")]
    out: PathBuf,
    /// Only these scenarios (comma separated).
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL square-1's app (weft up starts it again).
    Kill,
    /// square-1 answers UNAVAILABLE.
    Unavailable,
    /// square-1 10× slower (3 ms added to ~0.3 ms).
    Slow,
    /// square-1 frozen (SIGSTOP): connections accepted, nothing answered.
    Blackhole,
    /// square-1's inbound port black-holed with iptables DROP (SYNs and
    /// segments of open connections dropped). Needs root, in a network
    /// namespace of its own (`scripts/chaos` makes one).
    Drop,
    /// square-1 reports NOT_SERVING (and still answers).
    NotServing,
    /// weft-control frozen (SIGSTOP): no discovery at all.
    ControlPlane,
    /// Certificates of 10 s: every proxy renews every ~7 s, under load.
    CertRotation,
    /// `weft identity rotate`: a new trust anchor in every bundle, every
    /// proxy re-certified by the new issuer, the old anchor dropped.
    AnchorRotation,
    /// Every replica in turn gets SIGTERM (app and proxy at once, as a
    /// kubelet does); weft up starts it again; the next goes when it is ready.
    Rollout,
    /// The authorization policy rewritten every 100 ms (the calls allowed
    /// by one authorization, then another; enforce and audit in turn):
    /// every change reaches every proxy, no call is denied or broken.
    PolicyChurn,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "sigkill",
            Fault::Unavailable => "unavailable",
            Fault::Slow => "slow10x",
            Fault::Blackhole => "blackhole",
            Fault::Drop => "drop",
            Fault::NotServing => "not_serving",
            Fault::ControlPlane => "control_plane",
            Fault::Rollout => "rollout",
            Fault::CertRotation => "cert_rotation",
            Fault::AnchorRotation => "anchor_rotation",
            Fault::PolicyChurn => "policy_churn",
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Fault::Kill => "a replica SIGKILLed (weft up restarts it)",
            Fault::Unavailable => "a replica answering UNAVAILABLE",
            Fault::Slow => "a replica 10× slower",
            Fault::Blackhole => "a replica frozen (SIGSTOP: accepts, never answers)",
            Fault::Drop => "a replica black-holed (iptables DROP on its inbound port)",
            Fault::NotServing => "a replica reporting NOT_SERVING",
            Fault::ControlPlane => "weft-control frozen (SIGSTOP)",
            Fault::Rollout => "all replicas rolled with SIGTERM, one after another",
            Fault::CertRotation => "certificates of 10 s, renewed by every proxy every ~7 s (mutual TLS)",
            Fault::AnchorRotation => "the trust anchor rotated (weft identity rotate: bundle, reissue, drop)",
            Fault::PolicyChurn => "the authorization policy rewritten every 100 ms (each version allows the calls)",
        }
    }
    /// How long the fault lasts.
    fn length(self, quick: bool) -> Duration {
        match (self, quick) {
            (Fault::Kill | Fault::Rollout | Fault::AnchorRotation, _) => Duration::ZERO,
            (Fault::ControlPlane | Fault::CertRotation, false) => Duration::from_secs(60),
            (Fault::CertRotation, true) => Duration::from_secs(15),
            (_, false) => Duration::from_secs(30),
            (_, true) => Duration::from_secs(4),
        }
    }
    /// The goal, as text.
    fn goal(self) -> &'static str {
        match self {
            Fault::Kill => "failures ≤ calls in flight on it; none after",
            Fault::Unavailable => "no failed call (retries)",
            Fault::Slow => "– (its share of calls is reported)",
            Fault::Blackhole | Fault::Drop => "after the first deadline (1 s), only its probes fail",
            Fault::NotServing => "no new calls to it after 1 s",
            Fault::ControlPlane | Fault::Rollout | Fault::CertRotation | Fault::AnchorRotation | Fault::PolicyChurn => {
                "no failed call"
            }
        }
    }
}

const ALL: [Fault; 11] = [
    Fault::Kill,
    Fault::Rollout,
    Fault::Unavailable,
    Fault::Slow,
    Fault::Blackhole,
    Fault::Drop,
    Fault::NotServing,
    Fault::ControlPlane,
    Fault::CertRotation,
    Fault::AnchorRotation,
    Fault::PolicyChurn,
];

/// The policies `policy_churn` cycles through: each lets the entry proxy
/// (identity weft-entry) call square, by another authorization.
const CHURN: [&str; 3] = [
    "    policy:\n      default: deny\n      servers:\n        grpc:\n          port: 50051\n          authorizations:\n            entry: {identities: [weft-entry.default.serviceaccount.identity.cluster.local], routes: [{grpc: square.Square/Square}]}\n",
    "    policy:\n      default: deny\n      servers:\n        grpc:\n          port: 50051\n          authorizations:\n            namespace: {identities: [\"*.default.serviceaccount.identity.cluster.local\"]}\n            nobody: {identities: [nobody.default.serviceaccount.identity.cluster.local]}\n",
    "    policy:\n      default: deny\n      servers:\n        grpc:\n          port: 50051\n          mode: audit\n          authorizations:\n            spiffe: {identities: [spiffe://cluster.local/ns/default/sa/weft-entry], routes: [{grpc: square.Square}]}\n",
];

/// The chaos mesh file (with `policy`, a workload policy for square).
fn mesh_file(policy: &str) -> String {
    format!(
        "workloads:\n  square:\n    command: square\n    args: [--listen, \"127.0.0.1:${{WEFT_PORT}}\", --name, \"${{WEFT_REPLICA}}\"]\n    replicas: 3\n    ports: [{{port: 50051, protocol: grpc}}]\n{policy}"
    )
}

/// One call's record.
struct Call {
    start: Instant,
    end: Instant,
    host: Result<String, tonic::Code>,
}

struct Row {
    fault: Fault,
    calls: usize,
    failed: usize,
    unsavable: usize,
    p99_before_ms: f64,
    p99_fault_ms: f64,
    recover_s: f64,
    met: bool,
    detail: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-chaos: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("weft-chaos: a goal was missed (see the report)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("weft-chaos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let started = chrono_now();
    let mut rows = Vec::new();
    for fault in ALL {
        if let Some(only) = &args.scenarios
            && !only.iter().any(|s| s == fault.name())
        {
            continue;
        }
        if fault == Fault::Drop
            && let Err(why) = may_drop()
        {
            if std::env::var("CI").as_deref() == Ok("true") {
                bail!("the drop scenario cannot run: {why}");
            }
            eprintln!("[chaos] SKIPPED drop: {why}");
            continue;
        }
        eprintln!("[chaos] {}: {}", fault.name(), fault.describe());
        let row = scenario(fault, &args).await.with_context(|| fault.name())?;
        eprintln!(
            "[chaos]   {} calls, {} failed ({} unsavable), p99 {:.1} → {:.1} ms, recovered in {:.1} s: {} ({})",
            row.calls,
            row.failed,
            row.unsavable,
            row.p99_before_ms,
            row.p99_fault_ms,
            row.recover_s,
            if row.met { "goal met" } else { "GOAL MISSED" },
            row.detail
        );
        rows.push(row);
    }
    let all_met = rows.iter().all(|r| r.met);
    write_report(&args, &rows, &started)?;
    Ok(all_met)
}

fn chrono_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?.parent().context("no directory")?.join(name);
    if !p.is_file() {
        bail!("{} is missing: build every binary first", p.display());
    }
    Ok(p)
}

fn state(dir: &Path) -> serde_json::Value {
    std::fs::read_to_string(dir.join(".weft/run/state.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn replica<'a>(state: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    state["replicas"].as_array()?.iter().find(|r| r["name"] == name)
}

fn signal(pid: u64, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// Whether a process runs (a zombie does not).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// Adds (`-I`) or removes (`-D`) a rule dropping TCP to `port`.
fn iptables(op: &str, port: u16) -> anyhow::Result<()> {
    let out = std::process::Command::new("iptables")
        .args([op, "INPUT", "-p", "tcp", "--dport", &port.to_string(), "-j", "DROP"])
        .output()
        .context("iptables")?;
    if !out.status.success() {
        bail!("iptables {op}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether this process may change iptables rules in a network namespace
/// of its own (never the host's).
fn may_drop() -> Result<(), String> {
    // scripts/chaos says so when it made one (`unshare --net`).
    if std::env::var("WEFT_CHAOS_NETNS").as_deref() != Ok("own") {
        return Err("not in a network namespace of its own (scripts/chaos makes one when run as root)".into());
    }
    match std::process::Command::new("iptables").args(["-S", "INPUT"]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("iptables: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("iptables: {e}")),
    }
}

fn set_behavior(app: &str, spec: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new(sibling("square-client")?)
        .args(["--target", app, "--set-behavior", spec])
        .output()?;
    if !out.status.success() {
        bail!(
            "square-client --set-behavior {spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn scenario(fault: Fault, args: &Args) -> anyhow::Result<Row> {
    let dir = std::env::temp_dir().join(format!("weft-chaos-{}-{}", std::process::id(), fault.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let policy = if fault == Fault::PolicyChurn { CHURN[0] } else { "" };
    std::fs::write(dir.join("mesh.yaml"), mesh_file(policy))?;
    let entry: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut up = tokio::process::Command::new(sibling("weft")?)
        .arg("up")
        .arg(dir.join("mesh.yaml"))
        .arg("--dir")
        .arg(dir.join(".weft"))
        .args(["--entry", &entry.to_string(), "--plain"])
        .args(if fault == Fault::CertRotation {
            &["--cert-lifetime", "10s"][..]
        } else {
            &[][..]
        })
        .stdout(std::fs::File::create(dir.join("up.log"))?)
        .stderr(std::fs::File::create(dir.join("up.err"))?)
        .kill_on_drop(true)
        .spawn()?;
    let result = drive(fault, args, &dir, entry).await;
    if let Some(pid) = up.id() {
        signal(u64::from(pid), "INT");
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), up.wait()).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn drive(fault: Fault, args: &Args, dir: &Path, entry: SocketAddr) -> anyhow::Result<Row> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = state(dir);
        let ready = s["replicas"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|r| r["phase"] == "ready").count());
        if ready == 3 && s["entry"]["pid"].is_u64() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "weft up did not have 3 ready replicas within 30 s (logs in {})",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = state(dir);
    let target = replica(&s, "square-1").context("square-1")?;
    let app = target["app"].as_str().context("app")?.to_string();
    let inbound = target["inbound"]
        .as_str()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .context("inbound address")?
        .port();
    let app_pid = target["pid"].as_u64().context("pid")?;
    let control_pid = s["control"]["pid"].as_u64().context("control pid")?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{entry}"))?
        .origin("http://square:50051".parse()?)
        .tcp_nodelay(true)
        .connect()
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(load(channel, args.rate, stop_rx));

    let warm = if args.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    let quiet = if args.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    tokio::time::sleep(warm).await;
    let length = fault.length(args.quick);
    let begin = Instant::now();
    match fault {
        Fault::Kill => {
            signal(app_pid, "KILL");
            // Gone when the kernel has torn it down (its sockets closed),
            // not when `kill` returns.
            let until = Instant::now() + Duration::from_secs(1);
            while alive(app_pid) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Fault::Unavailable => set_behavior(&app, "error_rate=1,error_code=14")?,
        Fault::Slow => set_behavior(&app, "delay_ms=3")?,
        Fault::Blackhole => signal(app_pid, "STOP"),
        Fault::Drop => iptables("-I", inbound)?,
        Fault::NotServing => set_behavior(&app, "not_serving=1")?,
        Fault::ControlPlane => signal(control_pid, "STOP"),
        Fault::Rollout => roll(dir).await?,
        Fault::CertRotation => {}
        Fault::AnchorRotation => rotate_anchor(dir).await?,
        Fault::PolicyChurn => {
            let file = dir.join("mesh.yaml");
            tokio::spawn(async move {
                let until = Instant::now() + length;
                let mut i = 0;
                while Instant::now() < until {
                    i += 1;
                    let text = mesh_file(CHURN[i % CHURN.len()]);
                    // Atomically, as an editor saving the file would.
                    let tmp = file.with_extension("tmp");
                    if std::fs::write(&tmp, text).is_ok() {
                        let _ = std::fs::rename(&tmp, &file);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    }
    // From when the fault is in place (applying it takes a few ms).
    // (A rollout's fault is the whole roll.)
    let t0 = if matches!(fault, Fault::Rollout | Fault::AnchorRotation) {
        begin
    } else {
        Instant::now()
    };
    tokio::time::sleep(length).await;
    let t1 = Instant::now();
    match fault {
        Fault::Kill | Fault::Rollout | Fault::CertRotation | Fault::AnchorRotation | Fault::PolicyChurn => {}
        Fault::Unavailable | Fault::Slow | Fault::NotServing => set_behavior(&app, "")?,
        Fault::Blackhole => signal(app_pid, "CONT"),
        Fault::Drop => iptables("-D", inbound)?,
        Fault::ControlPlane => signal(control_pid, "CONT"),
    }
    tokio::time::sleep(quiet).await;
    let _ = stop_tx.send(true);
    let calls = load.await?;
    let mut row = judge(fault, &calls, t0, t1, warm, length);
    if fault == Fault::PolicyChurn {
        let mut applied = Vec::new();
        let mut denied = 0.0;
        for name in ["square-0", "square-1", "square-2"] {
            let admin = replica(&state(dir), name)
                .and_then(|r| r["admin"].as_str())
                .and_then(|a| a.parse::<SocketAddr>().ok());
            if let Some(a) = admin {
                applied.push(metric_value(a, "weft_policy_updates_total").await.unwrap_or(0.0));
                denied += metric_sum(a, "weft_inbound_authz_total", "decision=\"deny\"")
                    .await
                    .unwrap_or(0.0);
            }
        }
        row.met &= denied == 0.0;
        row.detail = format!(
            "policies applied per proxy: {}; denied: {denied}",
            applied.iter().map(|v| format!("{v}")).collect::<Vec<_>>().join(", ")
        );
    }
    if fault == Fault::CertRotation {
        let entry_admin = state(dir)["entry"]["admin"]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let renewals = match entry_admin {
            Some(a) => metric_value(a, "weft_identity_certified_total").await,
            None => None,
        };
        let handshakes = match entry_admin {
            Some(a) => metric_value(a, "weft_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}").await,
            None => None,
        };
        row.detail = format!(
            "the entry proxy got {} certificates and made {} mutual TLS connections",
            renewals.map_or("?".into(), |v| format!("{v}")),
            handshakes.map_or("?".into(), |v| format!("{v}"))
        );
    }
    Ok(row)
}

/// `weft identity rotate` on the mesh in `dir`, to its end.
async fn rotate_anchor(dir: &Path) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(sibling("weft")?)
        .args(["identity", "rotate", "--dir"])
        .arg(dir.join(".weft"))
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "weft identity rotate failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// SIGTERM to each replica's app and proxy in turn; waits for weft up to
/// have it ready again (new processes) before the next.
async fn roll(dir: &Path) -> anyhow::Result<()> {
    for name in ["square-0", "square-1", "square-2"] {
        let s = state(dir);
        let r = replica(&s, name).with_context(|| name.to_string())?;
        let (app, proxy) = (r["pid"].as_u64(), r["proxy_pid"].as_u64());
        for pid in [app, proxy].into_iter().flatten() {
            signal(pid, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = state(dir);
            if let Some(r) = replica(&s, name)
                && r["phase"] == "ready"
                && r["pid"].as_u64().is_some_and(|p| Some(p) != app)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} was not ready again within 30 s of its SIGTERM (logs in {})",
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// A sample's value from a proxy's `/metrics` (the line starting with `name`).
async fn metric_value(admin: SocketAddr, name: &str) -> Option<f64> {
    metrics_text(admin)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sum of the series of `name` whose labels contain `label` (`k="v"`).
async fn metric_sum(admin: SocketAddr, name: &str, label: &str) -> Option<f64> {
    let text = metrics_text(admin).await?;
    let prefix = format!("{name}{{");
    Some(
        text.lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(label))
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum(),
    )
}

/// An admin port's /metrics text.
async fn metrics_text(admin: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(body)
}

/// Calls at `rate` a second (open loop), each with a 1 s deadline, until stopped.
async fn load(
    channel: tonic::transport::Channel,
    rate: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Call> {
    let client = SquareClient::new(channel);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = tokio::task::JoinSet::new();
    let mut n = 0i64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        n += 1;
        let mut c = client.clone();
        set.spawn(async move {
            let start = Instant::now();
            let mut req = tonic::Request::new(Input { value: n });
            req.set_timeout(Duration::from_secs(1));
            let host = match c.square(req).await {
                Ok(r) => Ok(r.into_inner().hostname),
                Err(s) => Err(s.code()),
            };
            Call {
                start,
                end: Instant::now(),
                host,
            }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.extend(r.ok());
    }
    out.sort_by_key(|c| c.start);
    out
}

fn p99_ms(calls: &[&Call]) -> f64 {
    let mut l: Vec<Duration> = calls.iter().map(|c| c.end - c.start).collect();
    if l.is_empty() {
        return 0.0;
    }
    l.sort();
    l[((l.len() as f64 * 0.99) as usize).min(l.len() - 1)].as_secs_f64() * 1e3
}

fn judge(fault: Fault, calls: &[Call], t0: Instant, t1: Instant, warm: Duration, length: Duration) -> Row {
    // The second half of the warm-up: connections made, estimates settled.
    let before: Vec<&Call> = calls
        .iter()
        .filter(|c| c.start < t0 && c.start + warm / 2 >= t0)
        .collect();
    let during: Vec<&Call> = calls
        .iter()
        .filter(|c| c.start >= t0 && c.start <= t1.max(t0 + Duration::from_secs(1)))
        .collect();
    let failed: Vec<&Call> = calls.iter().filter(|c| c.host.is_err()).collect();
    // A call in flight when the fault began may have been with the broken
    // replica already: nothing can save it. Calls started after could be.
    let unsavable = failed.iter().filter(|c| c.start < t0).count();
    if std::env::var_os("WEFT_CHAOS_VERBOSE").is_some() {
        for c in &failed {
            let at = |t: Instant| {
                t.checked_duration_since(t0)
                    .map_or_else(|| -(t0 - t).as_secs_f64(), |d| d.as_secs_f64())
            };
            eprintln!(
                "[chaos]     failed: sent {:+.3} s, ended {:+.3} s: {:?}",
                at(c.start),
                at(c.end),
                c.host
            );
        }
    }
    let savable = failed.len() - unsavable;
    let recover_s = failed
        .iter()
        .map(|c| c.end.saturating_duration_since(t0).as_secs_f64())
        .fold(0.0, f64::max);
    let (p99_before_ms, p99_fault_ms) = (p99_ms(&before), p99_ms(&during));
    let (met, detail) = match fault {
        Fault::Kill => {
            let in_flight_at_kill = calls.iter().filter(|c| c.start < t0 && c.end >= t0).count();
            (
                savable == 0 && unsavable <= in_flight_at_kill,
                format!("{in_flight_at_kill} calls in flight at the kill"),
            )
        }
        Fault::Unavailable | Fault::ControlPlane => (failed.is_empty(), String::new()),
        Fault::Rollout => (failed.is_empty(), format!("rolled in {:.1} s", (t1 - t0).as_secs_f64())),
        Fault::CertRotation | Fault::PolicyChurn => (failed.is_empty(), String::new()),
        Fault::AnchorRotation => (
            failed.is_empty(),
            format!("rotated in {:.1} s", (t1 - t0).as_secs_f64()),
        ),
        Fault::Slow => {
            let to_it = during.iter().filter(|c| c.host.as_deref() == Ok("square-1")).count();
            (
                true,
                format!(
                    "its share during the fault {:.1} %",
                    100.0 * to_it as f64 / during.len().max(1) as f64
                ),
            )
        }
        Fault::Blackhole | Fault::Drop => {
            // Calls to the frozen replica wait for their deadline (1 s): none
            // fails before then, so what was sent to it in that first second
            // is the price of finding out (P2C keeps it small: its calls in
            // flight pile up). After that, only its probes may fail (after
            // 1 s, 2 s, 4 s ... out, each a call that waits for its deadline),
            // until the end of the run: the connection that was black-holed
            // stays stuck after the fault (TCP retransmits, then keepalive)
            // and takes the probes sent meanwhile. Allowed: ⌈log₂ of the
            // time from the fault to the end⌉ + 2 (a run where every call
            // after the first second failed would have hundreds).
            let until_end = calls.last().map_or(length, |c| c.start.saturating_duration_since(t0));
            let probes = (until_end.as_secs_f64().max(1.0).log2().ceil() as usize) + 2;
            let first = t0 + Duration::from_millis(1_200);
            let late = failed.iter().filter(|c| c.start > first).count();
            (
                late <= probes,
                format!(
                    "{} sent in the first deadline, {late} later (probes; {probes} allowed)",
                    failed.len() - late
                ),
            )
        }
        Fault::NotServing => {
            let late = calls
                .iter()
                .filter(|c| c.start > t0 + Duration::from_secs(1) && c.start < t1)
                .filter(|c| c.host.as_deref() == Ok("square-1"))
                .count();
            (
                late == 0 && failed.is_empty(),
                format!("{late} calls to it later than 1 s"),
            )
        }
    };
    let mut codes: Vec<String> = failed
        .iter()
        .filter_map(|c| c.host.as_ref().err())
        .map(|c| format!("{c:?}"))
        .collect();
    codes.sort();
    codes.dedup();
    let detail = if codes.is_empty() {
        detail
    } else {
        format!("{detail}; failed with {}", codes.join(", "))
    };
    Row {
        fault,
        calls: calls.len(),
        failed: failed.len(),
        unsavable,
        p99_before_ms,
        p99_fault_ms,
        recover_s: if failed.is_empty() { 0.0 } else { recover_s },
        met,
        detail,
    }
}

fn write_report(args: &Args, rows: &[Row], started: &str) -> anyhow::Result<()> {
    let mut s = String::from("# Chaos: faults under a steady load\n\n");
    s.push_str(&format!(
        "Written by `scripts/chaos{}` ({started}; {} calls/s through `weft up`'s entry proxy, 3 `square` replicas, each call with a 1 s deadline; the fault hits `square-1`{}). Defaults on: failure accrual, retries of UNAVAILABLE within a 20 % budget, health checks.\n\n",
        if args.quick { " --quick" } else { "" },
        args.rate,
        if args.quick {
            "; short form: 4 s faults"
        } else {
            "; faults of 30 s, the control plane and certificate rotation 60 s"
        },
    ));
    s.push_str("| scenario | calls | failed | failed, unsavable (in flight at the fault) | p99 before (ms) | p99 during the fault (ms) | recovered after (s) | goal | met | |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |\n",
            r.fault.describe(),
            r.calls,
            r.failed,
            r.unsavable,
            r.p99_before_ms,
            r.p99_fault_ms,
            r.recover_s,
            r.fault.goal(),
            if r.met { "yes" } else { "**no**" },
            r.detail
        ));
    }
    s.push_str("\n\"Recovered after\": from the fault's start to the end of the last failed call (0: none failed). A black-holed replica's failures are the calls it held before it was ejected and its probes (after 1 s, 2 s, 4 s, ... 30 s; each waits for its 1 s deadline). Certificate rotation: `weft up --cert-lifetime 10s`; existing connections outlive the certificate they were made with (as TLS does), new ones use the current one.\n");
    if let Some(dir) = args.out.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, s)?;
    eprintln!("[chaos] wrote {}", args.out.display());
    Ok(())
}
