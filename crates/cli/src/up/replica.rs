//! One replica of a workload: its app and the weft-proxy beside it, as
//! processes in their own process groups (a terminal's Ctrl-C reaches
//! `weft up` alone, which then stops them in order).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::process::{Child, Command};
use weft_mesh::{Workload, WorkloadName};

use crate::procs::free_addr;

/// Where a replica's processes listen.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The app's own port (`WEFT_PORT`), fronted by the proxy's inbound.
    pub app: SocketAddr,
    /// The proxy's inbound: the endpoint other workloads reach.
    pub inbound: SocketAddr,
    /// The proxy's outbound: where the app sends its calls (`WEFT_OUTBOUND`).
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
}

impl Ports {
    pub fn pick() -> anyhow::Result<Self> {
        Ok(Ports {
            app: free_addr()?,
            inbound: free_addr()?,
            outbound: free_addr()?,
            admin: free_addr()?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started; not yet accepting connections.
    Starting { since: Instant },
    /// Serving: an endpoint of its service.
    Ready,
    /// Exited; started again at `until`.
    Backoff { until: Instant },
    /// Being stopped (scaled down): out of the endpoints first, then its
    /// proxy drains, then the app stops.
    Draining { since: Instant },
}

impl Phase {
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Starting { .. } => "starting",
            Phase::Ready => "ready",
            Phase::Backoff { .. } => "restarting",
            Phase::Draining { .. } => "draining",
        }
    }
}

#[derive(Debug)]
pub struct Replica {
    pub name: String,
    pub app: Option<Child>,
    pub proxy: Option<Child>,
    pub ports: Ports,
    pub phase: Phase,
    pub restarts: u32,
    /// What its proxy's health check of the app says (`/ready`): a replica
    /// that is not serving stays up but is no endpoint.
    pub serving: bool,
}

/// What a replica's processes need to start.
pub struct Launch<'a> {
    pub workload: &'a WorkloadName,
    pub spec: &'a Workload,
    pub index: u32,
    pub proxy_bin: &'a Path,
    pub control_plane: SocketAddr,
    /// The workload's identity token, when it has one.
    pub token_file: Option<&'a Path>,
    pub logs: &'a Path,
    /// Where the mesh file is: relative commands are found from there.
    pub base: &'a Path,
}

/// How long a stopping proxy may take to finish its in-flight requests.
pub const PROXY_GRACE: Duration = Duration::from_secs(5);

/// How long the surviving half of a replica whose other half exited may take
/// to stop (weft up's supervision waits meanwhile, so it is short).
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Replica {
    /// An endpoint now: ready, and its app says it is serving.
    pub fn in_service(&self) -> bool {
        self.phase == Phase::Ready && self.serving
    }

    /// Its state for the table and state.json.
    pub fn label(&self) -> &'static str {
        if self.phase == Phase::Ready && !self.serving {
            "not serving"
        } else {
            self.phase.label()
        }
    }

    /// Starts the proxy, then the app.
    pub fn start(l: &Launch<'_>) -> anyhow::Result<Replica> {
        let name = format!("{}-{}", l.workload, l.index);
        let ports = Ports::pick()?;
        let proxy = spawn_proxy(
            l.proxy_bin,
            &ProxySpec {
                name: &name,
                token_file: l.token_file,
                control_plane: l.control_plane,
                outbound: ports.outbound,
                inbound: Some((ports.inbound, ports.app)),
                admin: ports.admin,
                health_check: l.spec.ports.iter().any(|p| p.protocol == weft_mesh::Protocol::Grpc),
                mtls_required: l.spec.ports.iter().any(|p| p.mtls == weft_mesh::Mtls::Required),
                policy: Some((l.workload.as_str(), l.spec.ports.first().map(|p| p.port))),
            },
            l.logs,
        )?;
        let app = spawn_app(l, &name, &ports).inspect_err(|_| {
            signal(proxy.id(), "KILL");
        })?;
        Ok(Replica {
            name,
            app: Some(app),
            proxy: Some(proxy),
            ports,
            phase: Phase::Starting { since: Instant::now() },
            restarts: 0,
            // In service once its proxy's /ready says so (its app serving,
            // its certificate in hand): the first check follows at once.
            serving: l.spec.ports.is_empty(),
        })
    }

    /// Whether either process has exited (and the status, for the log).
    pub fn exited(&mut self) -> Option<String> {
        for (what, child) in [("app", &mut self.app), ("proxy", &mut self.proxy)] {
            if let Some(c) = child
                && let Ok(Some(status)) = c.try_wait()
            {
                *child = None;
                return Some(format!("its {what} exited ({status})"));
            }
        }
        None
    }

    /// Stops whatever still runs (after the other half exited): SIGTERM
    /// first, so that a proxy finishes what it has in flight (its callers
    /// are told to go elsewhere), then SIGKILL after [`STOP_GRACE`].
    pub async fn kill(&mut self) {
        for child in [&mut self.app, &mut self.proxy] {
            if let Some(mut c) = child.take() {
                signal(c.id(), "TERM");
                if tokio::time::timeout(STOP_GRACE, c.wait()).await.is_err() {
                    let _ = c.kill().await;
                }
            }
        }
    }

    /// Both processes' ids (for state.json and the shutdown check).
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.app.as_ref().and_then(Child::id),
            self.proxy.as_ref().and_then(Child::id),
        )
    }
}

/// Sends `sig` (TERM, KILL, INT) to `pid` with the `kill` command.
pub fn signal(pid: Option<u32>, sig: &str) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn log_file(logs: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    let path = logs.join(name);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

/// A weft-proxy for a replica (or the entry).
#[derive(Clone, Copy)]
pub struct ProxySpec<'a> {
    pub name: &'a str,
    /// Its identity token (`--identity-token-file`).
    pub token_file: Option<&'a Path>,
    pub control_plane: SocketAddr,
    /// Its outbound listener (the app's `WEFT_OUTBOUND`).
    pub outbound: SocketAddr,
    /// Its inbound listener and the app behind it; `None`: no inbound.
    pub inbound: Option<(SocketAddr, SocketAddr)>,
    pub admin: SocketAddr,
    /// Whether it checks the app's grpc.health.v1 status.
    pub health_check: bool,
    /// Whether its inbound refuses plaintext (the port is `mtls: required`).
    pub mtls_required: bool,
    /// The workload whose authorization policy its inbound enforces, and
    /// the port the policy names for the app.
    pub policy: Option<(&'a str, Option<u16>)>,
}

/// Starts a weft-proxy: outbound for its app, and inbound in front of
/// the app when the spec gives (inbound, app) addresses.
pub fn spawn_proxy(bin: &Path, spec: &ProxySpec<'_>, logs: &Path) -> anyhow::Result<Child> {
    let ProxySpec {
        name,
        token_file,
        control_plane,
        outbound,
        inbound,
        admin,
        health_check,
        mtls_required,
        policy,
    } = *spec;
    let (out, err) = log_file(logs, &format!("{name}.proxy.log"))?;
    let mut cmd = Command::new(bin);
    if health_check {
        cmd.arg("--app-health-check");
    }
    if let Some(t) = token_file {
        cmd.arg("--identity-token-file").arg(t);
        if mtls_required && inbound.is_some() {
            cmd.args(["--inbound-mtls-required", "all"]);
        }
    }
    if let (Some((workload, port)), Some(_)) = (policy, inbound) {
        cmd.args(["--policy-workload", workload]);
        if let Some(p) = port {
            cmd.args(["--inbound-policy-port", &p.to_string()]);
        }
    }
    match inbound {
        Some((listen, app)) => cmd
            .args(["--inbound-listen", &listen.to_string()])
            .args(["--inbound-forward", &app.to_string()]),
        None => cmd.args(["--inbound-listen", "off"]),
    };
    cmd.args(["--control-plane", &control_plane.to_string()])
        .args(["--workload", name])
        .args(["--outbound-listen", &outbound.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--shutdown-grace", &format!("{}s", PROXY_GRACE.as_secs())])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting weft-proxy ({})", bin.display()))
}

fn spawn_app(l: &Launch<'_>, name: &str, ports: &Ports) -> anyhow::Result<Child> {
    let (out, err) = log_file(l.logs, &format!("{name}.log"))?;
    let vars = [
        ("WEFT_PORT", ports.app.port().to_string()),
        ("WEFT_OUTBOUND", ports.outbound.to_string()),
        ("WEFT_WORKLOAD", l.workload.to_string()),
        ("WEFT_REPLICA", name.to_string()),
    ];
    let expand = |s: &str| {
        vars.iter()
            .fold(s.to_string(), |acc, (k, v)| acc.replace(&format!("${{{k}}}"), v))
    };
    let program = find_program(&l.spec.command, l.base);
    let mut cmd = Command::new(&program);
    cmd.args(l.spec.args.iter().map(|a| expand(a)));
    for (k, v) in &l.spec.env {
        cmd.env(k, expand(v));
    }
    for (k, v) in &vars {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}: command `{}`", program.display()))
}

/// A command as the mesh file names it: a path (relative to the mesh
/// file), a binary beside `weft`, or a name on `PATH`.
pub fn find_program(command: &str, base: &Path) -> PathBuf {
    if command.contains('/') {
        let p = Path::new(command);
        return if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(command)))
        .filter(|p| p.is_file())
    {
        return beside;
    }
    PathBuf::from(command)
}
