//! `weft up mesh.yaml`: a whole mesh on one machine, no root, no Kubernetes.
//!
//! weft-control serves discovery from a services file that `weft up`
//! writes (`.weft/run/endpoints.yaml`): each ready replica of a workload is
//! an endpoint of `<workload>:<port>`, at its proxy's inbound port. Each
//! replica is its app beside a weft-proxy (explicit mode: the app calls
//! through `WEFT_OUTBOUND`; its port is fronted by the proxy's inbound). An
//! entry proxy takes calls from outside the mesh. The mesh file is watched:
//! replicas follow it live; a change that does not parse is refused and
//! the mesh runs on. `weft scale`, `weft down` and `weft logs` talk to the
//! running `weft up` through `.weft/run/weft.sock` and its files.

pub mod ctl;
mod identity;
mod replica;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::IsTerminal,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    process::Child,
    sync::{mpsc, oneshot},
};
use weft_mesh::{Endpoint, MeshFile, Service, ServiceName, WorkloadName};

use self::replica::{Launch, Phase, ProxySpec, Replica, signal, spawn_proxy};
use crate::procs::{free_addr, sibling};

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// The mesh file: workloads (command, replicas, port, env, identity)
    /// and optional static services. See examples/square.yaml.
    pub file: PathBuf,
    /// Where the running mesh keeps its state, socket and logs
    /// (`<dir>/run/`).
    #[arg(long, default_value = ".weft")]
    pub dir: PathBuf,
    /// Where the entry proxy listens for calls from outside the mesh
    /// (overrides the file's `entry`); `off` for none.
    #[arg(long, default_value = None)]
    pub entry: Option<String>,
    /// Print the status table only when it changes, never redrawing the
    /// screen (the default when the output is not a terminal).
    #[arg(long)]
    pub plain: bool,
    /// How long the proxies' certificates live (renewed at 70 %): 24h, or
    /// 10s to watch rotation happen.
    #[arg(long, default_value = "24h")]
    pub cert_lifetime: String,
}

/// The entry proxy's address when neither the file nor --entry says.
pub const DEFAULT_ENTRY: &str = "127.0.0.1:4140";
/// How long a scaled-down replica stays out of the endpoints before its
/// proxy is stopped, so that every proxy has heard (it takes milliseconds).
const UNLIST_GRACE: Duration = Duration::from_secs(1);
/// How long a replica may take to accept connections before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The paths under `<dir>/run`.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub run: PathBuf,
}

impl RunDir {
    pub fn new(dir: &Path) -> Self {
        RunDir { run: dir.join("run") }
    }
    pub fn logs(&self) -> PathBuf {
        self.run.join("logs")
    }
    pub fn socket(&self) -> PathBuf {
        self.run.join("weft.sock")
    }
    pub fn pid(&self) -> PathBuf {
        self.run.join("up.pid")
    }
    pub fn state(&self) -> PathBuf {
        self.run.join("state.json")
    }
    pub fn endpoints(&self) -> PathBuf {
        self.run.join("endpoints.yaml")
    }
}

/// A helper process (the control plane, the entry proxy).
struct Helper {
    child: Option<Child>,
    addr: SocketAddr,
    admin: SocketAddr,
    restarts: u32,
}

struct WorkloadRun {
    spec: weft_mesh::Workload,
    replicas: BTreeMap<u32, Replica>,
    /// Set by `weft scale`; cleared when the file's replicas change.
    scaled: Option<u32>,
    /// Removed from the file: drains away.
    removed: bool,
    /// After a replica failed to start: no new attempt before this.
    retry_at: Option<Instant>,
}

impl WorkloadRun {
    fn desired(&self) -> u32 {
        if self.removed {
            0
        } else {
            self.scaled.unwrap_or(self.spec.replicas)
        }
    }
}

/// What weft-control is given: the services, the mesh's policy and each
/// workload's.
type ControlFile = (
    BTreeMap<ServiceName, Service>,
    Option<weft_policy::MeshPolicy>,
    BTreeMap<WorkloadName, weft_policy::WorkloadPolicy>,
);

struct Up {
    file: PathBuf,
    base: PathBuf,
    mesh: MeshFile,
    /// Tokens of the workloads' identities (and the CA directory).
    identities: identity::Identities,
    ca_dir: PathBuf,
    cert_lifetime: String,
    dirs: RunDir,
    logs: PathBuf,
    proxy_bin: PathBuf,
    control_bin: PathBuf,
    control: Helper,
    entry: Option<Helper>,
    workloads: BTreeMap<WorkloadName, WorkloadRun>,
    written: Option<ControlFile>,
    shown: String,
    redraw: bool,
}

/// A command from `weft scale` / `weft down` through the socket.
struct Command {
    line: String,
    reply: oneshot::Sender<String>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mesh = MeshFile::read(&args.file)?;
    let file = std::path::absolute(&args.file)?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let dirs = RunDir::new(&args.dir);
    if let Some(pid) = ctl::running_pid(&dirs) {
        bail!(
            "a mesh is already running from {} (weft up, pid {pid}); stop it with `weft down{}` first",
            dirs.run.display(),
            dir_flag(&args.dir)
        );
    }
    std::fs::create_dir_all(dirs.logs()).with_context(|| format!("creating {}", dirs.logs().display()))?;
    let entry_addr = match args.entry.as_deref().map(str::trim) {
        Some("off") => None,
        Some(a) => Some(
            a.parse()
                .with_context(|| format!("--entry {a}: write ip:port or off"))?,
        ),
        None => Some(mesh.entry.unwrap_or(DEFAULT_ENTRY.parse()?)),
    };
    let proxy_bin = sibling("weft-proxy")?;
    let control_bin = sibling("weft-control")?;
    for (name, w) in &mesh.workloads {
        let program = replica::find_program(&w.command, &base);
        if program.components().count() > 1 && !program.is_file() {
            bail!(
                "{}: workloads.{name}.command: {} not found",
                file.display(),
                program.display()
            );
        }
    }

    std::fs::write(dirs.pid(), format!("{}\n", std::process::id()))?;
    let _ = std::fs::remove_file(dirs.socket());
    let listener = tokio::net::UnixListener::bind(dirs.socket())
        .with_context(|| format!("listening on {}", dirs.socket().display()))?;
    // Commands that change the mesh: this user only, never the network.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dirs.socket(), std::fs::Permissions::from_mode(0o600))?;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    tokio::spawn(serve_socket(listener, cmd_tx));

    let mut up = Up {
        file,
        base,
        workloads: BTreeMap::new(),
        logs: dirs.logs(),
        dirs: dirs.clone(),
        proxy_bin,
        control_bin,
        control: Helper {
            child: None,
            addr: free_addr()?,
            admin: free_addr()?,
            restarts: 0,
        },
        entry: None,
        written: None,
        shown: String::new(),
        redraw: !args.plain && std::io::stdout().is_terminal(),
        mesh: MeshFile::default(),
        identities: identity::Identities::new(&dirs.run)?,
        ca_dir: args.dir.join("identity"),
        cert_lifetime: args.cert_lifetime.clone(),
    };
    let result = up.main(mesh, entry_addr, cmd_rx).await;
    up.stop_all().await;
    let _ = std::fs::remove_file(dirs.socket());
    let _ = std::fs::remove_file(dirs.pid());
    up.write_state();
    if result.is_ok() {
        println!("weft up: stopped everything it started");
    }
    result
}

fn dir_flag(dir: &Path) -> String {
    if dir == Path::new(".weft") {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    }
}

impl Up {
    async fn main(
        &mut self,
        mesh: MeshFile,
        entry: Option<SocketAddr>,
        mut commands: mpsc::Receiver<Command>,
    ) -> anyhow::Result<()> {
        self.apply_file(mesh);
        self.write_endpoints()?;
        self.start_control().await?;
        if let Some(addr) = entry {
            self.start_entry(addr).await?;
        }
        for name in self.workloads.keys().cloned().collect::<Vec<_>>() {
            self.reconcile(&name)?;
        }
        let (file_tx, mut file_rx) = mpsc::unbounded_channel();
        let _watcher = watch_file(&self.file, file_tx)?;

        // Made once, before the loop: a signal that arrives while the loop
        // is busy is kept for its next turn.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = file_rx.recv() => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    while file_rx.try_recv().is_ok() {}
                    self.reload();
                }
                Some(cmd) = commands.recv() => {
                    let (answer, stop) = self.command(&cmd.line);
                    let _ = cmd.reply.send(answer);
                    if stop { return Ok(()) }
                }
                _ = int.recv() => return Ok(()),
                _ = term.recv() => return Ok(()),
            }
            self.supervise().await;
            for name in self.workloads.keys().cloned().collect::<Vec<_>>() {
                if self.workloads[&name].retry_at.is_some_and(|t| Instant::now() < t) {
                    continue;
                }
                if let Err(e) = self.reconcile(&name) {
                    eprintln!("weft up: {name}: {e:#}; trying again in 5 s");
                    self.workloads.get_mut(&name).expect("workload").retry_at =
                        Some(Instant::now() + Duration::from_secs(5));
                }
            }
            self.workloads.retain(|_, w| !(w.removed && w.replicas.is_empty()));
            if let Err(e) = self.write_endpoints() {
                eprintln!("weft up: writing {}: {e:#}", self.dirs.endpoints().display());
            }
            self.show();
        }
    }

    /// Takes a (valid) mesh file: new workloads, removed ones, new replica counts.
    fn apply_file(&mut self, mesh: MeshFile) {
        for (name, spec) in &mesh.workloads {
            match self.workloads.get_mut(name) {
                Some(w) => {
                    if w.spec.replicas != spec.replicas {
                        w.scaled = None;
                    }
                    let mut same = w.spec.clone();
                    same.replicas = spec.replicas;
                    if same != *spec {
                        eprintln!(
                            "weft up: workload `{name}` changed: new replicas start with the new definition; restart `weft up` to apply it to all"
                        );
                    }
                    w.spec = spec.clone();
                    w.removed = false;
                }
                None => {
                    let account = spec.identity.clone().unwrap_or_else(|| name.to_string());
                    if let Err(e) = self.identities.token_file(name.as_str(), &account) {
                        eprintln!("weft up: workload `{name}` runs without an identity: {e:#}");
                    }
                    self.workloads.insert(
                        name.clone(),
                        WorkloadRun {
                            spec: spec.clone(),
                            replicas: BTreeMap::new(),
                            scaled: None,
                            removed: false,
                            retry_at: None,
                        },
                    );
                }
            }
        }
        for (name, w) in &mut self.workloads {
            if !mesh.workloads.contains_key(name) {
                w.removed = true;
            }
        }
        self.mesh = mesh;
    }

    fn reload(&mut self) {
        let text = match std::fs::read_to_string(&self.file) {
            Ok(t) if t.is_empty() => return, // being rewritten; its next event brings the text
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "weft up: cannot read {}: {e}; the mesh runs on as it was",
                    self.file.display()
                );
                return;
            }
        };
        match MeshFile::parse(&self.file, &text) {
            Ok(m) if m == self.mesh => {}
            Ok(m) => {
                eprintln!("weft up: {} changed; applying", self.file.display());
                self.apply_file(m);
            }
            Err(e) => eprintln!("weft up: change refused, the mesh runs on as it was: {e}"),
        }
    }

    fn launch<'a>(&'a self, name: &'a WorkloadName, index: u32) -> Launch<'a> {
        Launch {
            workload: name,
            spec: &self.workloads[name].spec,
            index,
            proxy_bin: &self.proxy_bin,
            control_plane: self.control.addr,
            token_file: self.identities.get(name.as_str()),
            logs: &self.logs,
            base: &self.base,
        }
    }

    /// Starts or drains replicas until the count is what is wanted.
    fn reconcile(&mut self, name: &WorkloadName) -> anyhow::Result<()> {
        let want = self.workloads[name].desired();
        let live: Vec<u32> = self.workloads[name]
            .replicas
            .iter()
            .filter(|(_, r)| !matches!(r.phase, Phase::Draining { .. }))
            .map(|(i, _)| *i)
            .collect();
        if (live.len() as u32) < want {
            let taken: BTreeSet<u32> = self.workloads[name].replicas.keys().copied().collect();
            let mut index = 0;
            for _ in live.len() as u32..want {
                while taken.contains(&index) {
                    index += 1;
                }
                let r = Replica::start(&self.launch(name, index))?;
                self.workloads
                    .get_mut(name)
                    .expect("workload")
                    .replicas
                    .insert(index, r);
                index += 1;
            }
        } else {
            let w = self.workloads.get_mut(name).expect("workload");
            for i in live.iter().rev().take(live.len().saturating_sub(want as usize)) {
                if let Some(r) = w.replicas.get_mut(i) {
                    r.phase = Phase::Draining { since: Instant::now() };
                }
            }
        }
        Ok(())
    }

    /// Follows every process: readiness, crashes and restarts, draining.
    async fn supervise(&mut self) {
        let names: Vec<WorkloadName> = self.workloads.keys().cloned().collect();
        for name in names {
            let has_port = !self.workloads[&name].spec.ports.is_empty();
            let indices: Vec<u32> = self.workloads[&name].replicas.keys().copied().collect();
            for i in indices {
                let mut relaunch = false;
                let mut drop_it = false;
                {
                    let r = self
                        .workloads
                        .get_mut(&name)
                        .expect("workload")
                        .replicas
                        .get_mut(&i)
                        .expect("replica");
                    match r.phase {
                        Phase::Draining { since } => {
                            drop_it = drain_step(r, since).await;
                        }
                        Phase::Backoff { until } => relaunch = Instant::now() >= until,
                        Phase::Starting { since } => {
                            if let Some(why) = r.exited() {
                                crashed(r, &why).await;
                            } else if !has_port || (accepts(r.ports.app).await && accepts(r.ports.inbound).await) {
                                r.phase = Phase::Ready;
                            } else if since.elapsed() > START_TIMEOUT {
                                crashed(r, &format!("it did not accept connections within {START_TIMEOUT:?}")).await;
                            }
                        }
                        Phase::Ready => {
                            if let Some(why) = r.exited() {
                                crashed(r, &why).await;
                            } else if has_port {
                                // The proxy's health check of its app.
                                match http_status(r.ports.admin, "/ready").await {
                                    Some(200) => r.serving = true,
                                    Some(503) => r.serving = false,
                                    _ => {}
                                }
                            }
                        }
                    }
                }
                if drop_it {
                    self.workloads.get_mut(&name).expect("workload").replicas.remove(&i);
                }
                if relaunch {
                    let launch = self.launch(&name, i);
                    let fresh = Replica::start(&launch);
                    let r = self
                        .workloads
                        .get_mut(&name)
                        .expect("workload")
                        .replicas
                        .get_mut(&i)
                        .expect("replica");
                    match fresh {
                        Ok(f) => {
                            r.app = f.app;
                            r.proxy = f.proxy;
                            r.ports = f.ports;
                            r.phase = f.phase;
                        }
                        Err(e) => {
                            eprintln!("weft up: {}: {e:#}", r.name);
                            r.restarts += 1;
                            r.phase = Phase::Backoff {
                                until: Instant::now() + backoff(r.restarts),
                            };
                        }
                    }
                }
            }
        }
        // The control plane and the entry proxy come back if they die.
        if let Some(c) = &mut self.control.child
            && let Ok(Some(status)) = c.try_wait()
        {
            eprintln!(
                "weft up: weft-control exited ({status}); starting it again (proxies serve what they knew meanwhile)"
            );
            self.control.child = None;
            self.control.restarts += 1;
            if let Err(e) = self.start_control().await {
                eprintln!("weft up: {e:#}");
            }
        }
        if let Some(entry) = &mut self.entry
            && let Some(c) = &mut entry.child
            && let Ok(Some(status)) = c.try_wait()
        {
            eprintln!("weft up: the entry proxy exited ({status}); starting it again");
            entry.child = None;
            entry.restarts += 1;
            let addr = entry.addr;
            if let Err(e) = self.start_entry(addr).await {
                eprintln!("weft up: {e:#}");
            }
        }
    }

    /// Every service's endpoints: the file's static services, and each
    /// workload's ready replicas.
    fn endpoints(&self) -> BTreeMap<ServiceName, Service> {
        self.mesh.services_with(|name, w, port| {
            let Some(run) = self.workloads.get(name) else {
                return Vec::new();
            };
            let identity = w.identity.clone().unwrap_or_else(|| name.to_string());
            run.replicas
                .values()
                .filter(|r| r.in_service())
                .map(|r| Endpoint {
                    address: r.ports.inbound,
                    name: Some(r.name.clone()),
                    identity: Some(format!("{identity}.default.serviceaccount.identity.cluster.local")),
                    protocol: port.protocol,
                    weight: 1,
                })
                .collect()
        })
    }

    fn write_endpoints(&mut self) -> anyhow::Result<()> {
        // JWKS files are named relative to the mesh file; weft-control
        // reads its own file elsewhere.
        let policy = self.mesh.policy.clone().map(|mut p| {
            for provider in p.jwt.values_mut() {
                for f in [&mut provider.jwks_file, &mut provider.jwks_ca_file]
                    .into_iter()
                    .flatten()
                {
                    *f = self.base.join(&*f);
                }
            }
            p
        });
        let now: ControlFile = (self.endpoints(), policy, self.mesh.workload_policies());
        if self.written.as_ref() != Some(&now) {
            weft_mesh::write_control_file(&self.dirs.endpoints(), &now.0, now.1.as_ref(), &now.2)?;
            self.written = Some(now);
        }
        Ok(())
    }

    async fn start_control(&mut self) -> anyhow::Result<()> {
        let (out, err) = helper_log(&self.dirs.logs(), "weft-control.log")?;
        let mut child = tokio::process::Command::new(&self.control_bin)
            .arg("--mesh-file")
            .arg(self.dirs.endpoints())
            .arg("--identity-dir")
            .arg(&self.ca_dir)
            .arg("--identity-tokens")
            .arg(self.identities.tokens_file())
            .args(["--cert-lifetime", &self.cert_lifetime])
            .args(["--listen", &self.control.addr.to_string()])
            .args(["--admin-listen", &self.control.admin.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting weft-control")?;
        wait_accepting(
            &mut child,
            self.control.admin,
            "weft-control",
            &self.dirs.logs().join("weft-control.log"),
        )
        .await?;
        self.control.child = Some(child);
        Ok(())
    }

    async fn start_entry(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let admin = free_addr()?;
        let token = self.identities.token_file("entry", identity::ENTRY_ACCOUNT)?;
        let spec = ProxySpec {
            name: "entry",
            token_file: Some(&token),
            control_plane: self.control.addr,
            outbound: addr,
            inbound: None,
            admin,
            health_check: false,
            mtls_required: false,
            policy: None,
        };
        let mut child = spawn_proxy(&self.proxy_bin, &spec, &self.logs)?;
        let log = self.dirs.logs().join("entry.proxy.log");
        wait_accepting(&mut child, addr, "the entry proxy", &log)
            .await
            .with_context(|| {
                format!("the entry proxy could not start on {addr} (choose another address with --entry ADDR)")
            })?;
        let restarts = self.entry.as_ref().map_or(0, |e| e.restarts);
        self.entry = Some(Helper {
            child: Some(child),
            addr,
            admin,
            restarts,
        });
        Ok(())
    }

    /// Answers one `weft scale` / `weft down` / `weft status` line; `true`: stop.
    fn command(&mut self, line: &str) -> (String, bool) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["down"] => ("ok: stopping the mesh\n".into(), true),
            ["status"] => (self.table(), false),
            ["scale", name, n] => {
                let Ok(n) = n.parse::<u32>() else {
                    return (format!("error: `{n}` is not a number of replicas\n"), false);
                };
                if n > weft_mesh::MAX_REPLICAS {
                    return (
                        format!("error: {n} is more than {} replicas\n", weft_mesh::MAX_REPLICAS),
                        false,
                    );
                }
                let known: Vec<String> = self.workloads.keys().map(|k| k.to_string()).collect();
                match WorkloadName::parse(name).ok().and_then(|k| self.workloads.get_mut(&k)) {
                    Some(w) if !w.removed => {
                        let was = w.desired();
                        w.scaled = Some(n);
                        (format!("ok: {name} {was} → {n} replicas\n"), false)
                    }
                    _ => (
                        format!("error: no workload `{name}` (workloads: {})\n", known.join(", ")),
                        false,
                    ),
                }
            }
            _ => (
                format!("error: unknown command `{line}` (scale WORKLOAD N, down, status)\n"),
                false,
            ),
        }
    }

    fn table(&self) -> String {
        let mut s = format!(
            "{:<20} {:>7} {:>9}  {:<26} {}\n",
            "WORKLOAD", "READY", "RESTARTS", "SERVICE", "REPLICAS"
        );
        for (name, w) in &self.workloads {
            let ready = w.replicas.values().filter(|r| r.in_service()).count();
            let restarts: u32 = w.replicas.values().map(|r| r.restarts).sum();
            let service = w
                .spec
                .ports
                .first()
                .map(|p| format!("{name}:{} ({})", p.port, p.protocol.as_str()))
                .unwrap_or_else(|| "-".into());
            let replicas: Vec<String> = w
                .replicas
                .values()
                .map(|r| format!("{} {}", r.name, r.label()))
                .collect();
            s.push_str(&format!(
                "{:<20} {:>7} {:>9}  {:<26} {}\n",
                name.as_str(),
                format!("{ready}/{}", w.desired()),
                restarts,
                service,
                replicas.join(", ")
            ));
        }
        for name in self.mesh.services.keys() {
            s.push_str(&format!(
                "{:<20} {:>7} {:>9}  {:<26} {}\n",
                "(static)",
                "-",
                "-",
                name.as_str(),
                ""
            ));
        }
        let entry = match &self.entry {
            Some(e) => format!("entry {} (call services by name, e.g. authority square:50051)", e.addr),
            None => "no entry proxy".into(),
        };
        s.push_str(&format!(
            "\n{entry} · control plane {} (admin http://{}/ready, /metrics) · proxies' admin ports in {} · logs in {} (weft logs WORKLOAD) · stop: Ctrl-C or weft down\n",
            self.control.addr,
            self.control.admin,
            self.dirs.state().display(),
            self.dirs.logs().display()
        ));
        s
    }

    /// Prints the table when it changed; writes state.json.
    fn show(&mut self) {
        let t = self.table();
        if t != self.shown {
            if self.redraw {
                print!("\x1b[H\x1b[2J{t}");
            } else {
                println!("{t}");
            }
            self.shown = t;
            self.write_state();
        }
    }

    fn write_state(&self) {
        let replicas: Vec<serde_json::Value> = self
            .workloads
            .iter()
            .flat_map(|(name, w)| {
                w.replicas.values().map(move |r| {
                    let (app, proxy) = r.pids();
                    serde_json::json!({
                        "workload": name.as_str(), "name": r.name, "phase": r.label(),
                        "restarts": r.restarts, "pid": app, "proxy_pid": proxy,
                        "app": r.ports.app.to_string(), "inbound": r.ports.inbound.to_string(),
                        "outbound": r.ports.outbound.to_string(), "admin": r.ports.admin.to_string(),
                    })
                })
            })
            .collect();
        let helper = |h: &Helper| {
            serde_json::json!({
                "pid": h.child.as_ref().and_then(Child::id),
                "addr": h.addr.to_string(), "admin": h.admin.to_string(), "restarts": h.restarts,
            })
        };
        // Every process with its start time, for `weft down` after a
        // `weft up` that was killed (the ids may have been reused since).
        let mut processes: Vec<u32> = Vec::new();
        for w in self.workloads.values() {
            for r in w.replicas.values() {
                let (a, p) = r.pids();
                processes.extend(a);
                processes.extend(p);
            }
        }
        processes.extend(self.control.child.as_ref().and_then(Child::id));
        processes.extend(self.entry.as_ref().and_then(|e| e.child.as_ref()).and_then(Child::id));
        let processes: Vec<serde_json::Value> = processes
            .into_iter()
            .filter_map(|pid| Some(serde_json::json!({"pid": pid, "start": ctl::start_time(pid)?})))
            .collect();
        let state = serde_json::json!({
            "pid": std::process::id(),
            "processes": processes,
            "file": self.file.display().to_string(),
            "control": helper(&self.control),
            "entry": self.entry.as_ref().map(helper),
            "replicas": replicas,
        });
        let path = self.dirs.state();
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, serde_json::to_string_pretty(&state).unwrap_or_default() + "\n").is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }

    /// Stops everything it started: the proxies drain first (callers'
    /// in-flight requests finish), then the apps and the control plane.
    async fn stop_all(&mut self) {
        let mut proxies: Vec<Child> = Vec::new();
        let mut apps: Vec<Child> = Vec::new();
        for w in self.workloads.values_mut() {
            for r in w.replicas.values_mut() {
                proxies.extend(r.proxy.take());
                apps.extend(r.app.take());
            }
        }
        if let Some(e) = &mut self.entry {
            proxies.extend(e.child.take());
        }
        stop_group(proxies, replica::PROXY_GRACE + Duration::from_secs(1)).await;
        apps.extend(self.control.child.take());
        stop_group(apps, Duration::from_secs(5)).await;
        self.workloads.clear();
    }
}

/// One step of stopping a scaled-down replica; `true` when it is gone.
async fn drain_step(r: &mut Replica, since: Instant) -> bool {
    let t = since.elapsed();
    if t < UNLIST_GRACE {
        return false;
    }
    if let Some(p) = &mut r.proxy {
        if let Ok(Some(_)) = p.try_wait() {
            r.proxy = None;
        } else if t < UNLIST_GRACE + replica::PROXY_GRACE + Duration::from_secs(1) {
            signal(p.id(), "TERM");
            return false;
        } else {
            let _ = p.kill().await;
            r.proxy = None;
        }
    }
    if let Some(a) = &mut r.app {
        if let Ok(Some(_)) = a.try_wait() {
            r.app = None;
        } else {
            signal(a.id(), "TERM");
            if tokio::time::timeout(Duration::from_secs(5), a.wait()).await.is_err() {
                let _ = a.kill().await;
            }
            r.app = None;
        }
    }
    true
}

async fn crashed(r: &mut Replica, why: &str) {
    r.kill().await;
    r.restarts += 1;
    let wait = backoff(r.restarts);
    eprintln!(
        "weft up: {} stopped: {why}; starting it again in {wait:?} (logs: weft logs {})",
        r.name,
        r.name.rsplit_once('-').map_or(r.name.as_str(), |(w, _)| w)
    );
    r.phase = Phase::Backoff {
        until: Instant::now() + wait,
    };
}

/// 1 s, 2 s, 4 s ... up to 30 s.
fn backoff(restarts: u32) -> Duration {
    Duration::from_secs((1u64 << restarts.saturating_sub(1).min(5)).min(30))
}

/// The status of `GET path` on `addr` (a proxy's admin), within 200 ms.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_millis(200), ask)
        .await
        .ok()
        .flatten()
}

async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Waits until `addr` accepts, failing (with the log's tail) if `child` exits.
async fn wait_accepting(child: &mut Child, addr: SocketAddr, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            bail!(
                "{what} exited ({status}) before listening on {addr}: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            );
        }
        if accepts(addr).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            bail!("{what} did not listen on {addr} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn helper_log(logs: &Path, name: &str) -> anyhow::Result<(std::process::Stdio, std::process::Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(name))?;
    Ok((f.try_clone()?.into(), f.into()))
}

/// SIGTERM to each, then SIGKILL to whatever is left after `grace`.
async fn stop_group(mut children: Vec<Child>, grace: Duration) {
    for c in &children {
        signal(c.id(), "TERM");
    }
    let deadline = tokio::time::Instant::now() + grace;
    for c in &mut children {
        if tokio::time::timeout_at(deadline, c.wait()).await.is_err() {
            let _ = c.kill().await;
        }
    }
}

/// Watches the mesh file (inotify on its directory, so a file replaced by
/// an editor's rename is seen too).
fn watch_file(file: &Path, tx: mpsc::UnboundedSender<()>) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let target = file.to_path_buf();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && ev.paths.iter().any(|p| p == &target)
        {
            let _ = tx.send(());
        }
    })?;
    let dir = file.parent().unwrap_or(Path::new("."));
    w.watch(dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok(w)
}

/// The socket `weft scale` and `weft down` talk to: one line in, one answer out.
async fn serve_socket(listener: tokio::net::UnixListener, commands: mpsc::Sender<Command>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let commands = commands.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take(4096));
            if tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
                .await
                .is_err()
            {
                return;
            }
            let (reply, answer) = oneshot::channel();
            if commands
                .send(Command {
                    line: line.trim().to_string(),
                    reply,
                })
                .await
                .is_err()
            {
                return;
            }
            if let Ok(a) = answer.await {
                let _ = write.write_all(a.as_bytes()).await;
            }
        });
    }
}

use tokio::io::AsyncReadExt as _;
