//! The targets a run compares: a direct call to one replica, weft with one
//! and two hops, HAProxy (round-robin and least-connection) and nginx,
//! each configured fairly (see shared/BENCHMARKING.md), sharing one core
//! with the three `square` replicas.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command},
};

use anyhow::{Context, bail};

use crate::procs::{self, SERVER_CORE};

/// How many `square` replicas serve every target.
pub const REPLICAS: usize = 3;
/// The authority clients name.
pub const SERVICE: &str = "square.demo:50051";

/// What a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    /// weft; with `mtls`, the two hops talk mutual TLS with certificates
    /// from a weft-control the target starts.
    Weft {
        hops: u8,
        mtls: bool,
        /// With mTLS: the inbound proxies enforce an authorization policy
        /// (the caller's identity and gRPC method, among 1,000 authorizations).
        authz: bool,
    },
    HAProxy {
        balance: &'static str,
    },
    /// HAProxy as two hops (one outbound, one inbound per replica, as weft
    /// runs), the hops talking TLS 1.3 with client certificates.
    HAProxyTls,
    Nginx,
}

impl Kind {
    /// A target's kind from its name; a weft target may name another build
    /// of the proxy after `@` (`weft-1hop@before`, see `--proxy-as`).
    pub fn parse(name: &str) -> anyhow::Result<Kind> {
        let (base, build) = match name.split_once('@') {
            Some((base, build)) => (base, Some(build)),
            None => (name, None),
        };
        let kind = Kind::parse_base(base)?;
        if build.is_some() && !matches!(kind, Kind::Weft { .. }) {
            bail!("`{name}`: only weft targets take another build after @");
        }
        Ok(kind)
    }

    fn parse_base(name: &str) -> anyhow::Result<Kind> {
        Ok(match name {
            "direct" => Kind::Direct,
            "weft-1hop" => Kind::Weft {
                hops: 1,
                mtls: false,
                authz: false,
            },
            "weft-2hop" => Kind::Weft {
                hops: 2,
                mtls: false,
                authz: false,
            },
            "weft-2hop-mtls" => Kind::Weft {
                hops: 2,
                mtls: true,
                authz: false,
            },
            "weft-2hop-mtls-authz" => Kind::Weft {
                hops: 2,
                mtls: true,
                authz: true,
            },
            "haproxy-rr" => Kind::HAProxy { balance: "roundrobin" },
            "haproxy-lc" => Kind::HAProxy { balance: "leastconn" },
            "haproxy-2hop-tls" => Kind::HAProxyTls,
            "nginx" => Kind::Nginx,
            other => bail!(
                "unknown target `{other}` (direct, weft-1hop, weft-2hop, weft-2hop-mtls, weft-2hop-mtls-authz, haproxy-rr, haproxy-lc, haproxy-2hop-tls, nginx)"
            ),
        })
    }
}

/// The binaries a run uses.
#[derive(Clone, Debug)]
pub struct Bins {
    /// Where `square`, `square-client` and `weft-load` are.
    pub dir: PathBuf,
    /// The weft-proxy under test.
    pub proxy: PathBuf,
    /// Other builds of weft-proxy, by the name targets give them after `@`.
    pub other_proxies: BTreeMap<String, PathBuf>,
}

impl Bins {
    pub fn get(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The weft-proxy build a target runs.
    pub fn proxy_for(&self, target: &str) -> anyhow::Result<&Path> {
        match target.split_once('@') {
            None => Ok(&self.proxy),
            Some((_, build)) => self
                .other_proxies
                .get(build)
                .map(PathBuf::as_path)
                .with_context(|| format!("target `{target}`: no --proxy-as {build}=PATH")),
        }
    }
}

/// The three `square` replicas every target balances over.
pub struct Replicas {
    pub ports: Vec<u16>,
    procs: Vec<Child>,
    bins: Bins,
}

impl Replicas {
    pub fn start(bins: &Bins) -> anyhow::Result<Replicas> {
        let mut r = Replicas {
            ports: Vec::new(),
            procs: Vec::new(),
            bins: bins.clone(),
        };
        for i in 0..REPLICAS {
            let port = procs::free_port()?;
            // On every loopback address, so that scenarios with more
            // endpoints than replicas can reach each one at 127.0.0.x.
            let argv = vec![
                bins.get("square"),
                "--listen".into(),
                format!("0.0.0.0:{port}"),
                "--name".into(),
                format!("square-{i}"),
            ];
            let mut child = procs::pinned(SERVER_CORE, &argv)?;
            procs::wait_port(port, Some(&mut child))?;
            r.ports.push(port);
            r.procs.push(child);
        }
        Ok(r)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().flat_map(|p| procs::descendants(p.id())).collect()
    }

    /// Sets replica `i`'s behaviour (`square-client --set-behavior`).
    pub fn set_behavior(&self, i: usize, spec: &str) -> anyhow::Result<()> {
        let out = Command::new(self.bins.get("square-client"))
            .args(["--target", &format!("127.0.0.1:{}", self.ports[i])])
            .args(["--set-behavior", spec])
            .output()?;
        if !out.status.success() {
            bail!(
                "square-client --set-behavior {spec}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `n` endpoints over the replicas: replica `k % 3` at 127.0.0.x, a new
    /// loopback address every three endpoints. Each is (address, name).
    pub fn endpoints(&self, n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|k| {
                let (r, host) = (k % self.ports.len(), k / self.ports.len());
                let addr = format!("127.0.{}.{}:{}", host / 250, host % 250 + 1, self.ports[r]);
                let name = if host == 0 {
                    format!("square-{r}")
                } else {
                    format!("square-{r}-{host}")
                };
                (addr, name)
            })
            .collect()
    }

    /// Makes replica `i` answer `ms` milliseconds later.
    pub fn set_delay(&self, i: usize, ms: u64) -> anyhow::Result<()> {
        let out = Command::new(self.bins.get("square-client"))
            .args(["--target", &format!("127.0.0.1:{}", self.ports[i])])
            .args(["--set-delay-ms", &ms.to_string()])
            .output()?;
        if !out.status.success() {
            bail!("square-client --set-delay-ms: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.procs.iter_mut().for_each(procs::stop);
    }
}

/// One target, running.
pub struct Target {
    pub name: String,
    pub kind: Kind,
    /// Where the load generator sends its calls.
    pub port: u16,
    procs: Vec<Child>,
    /// Processes the target needs but whose cost is not its own (weft-control).
    helpers: Vec<Child>,
    tmp: PathBuf,
    /// Where a TLS client of the target's inbound hop connects, with the
    /// certificates it needs (the two-hop TLS targets).
    pub tls: Option<TlsClient>,
    /// Endpoints it balances over.
    pub endpoints: usize,
    /// A replica left out of them until [`Target::join`].
    pub absent: Option<usize>,
    all_endpoints: Vec<(String, String)>,
    /// How to bring the absent replica in: weft's mesh file (rewritten
    /// with every endpoint) and admin port, or HAProxy's admin socket.
    joiner: Option<Joiner>,
}

enum Joiner {
    Weft { mesh: PathBuf, yaml: String, admin: u16 },
    HAProxy { socket: PathBuf },
}

impl Target {
    pub fn start(name: &str, replicas: &Replicas, bins: &Bins, tmp: &Path) -> anyhow::Result<Target> {
        let mut t = Target {
            name: name.into(),
            kind: Kind::parse(name)?,
            port: 0,
            procs: Vec::new(),
            helpers: Vec::new(),
            tmp: tmp.into(),
            tls: None,
            endpoints: REPLICAS,
            absent: None,
            all_endpoints: Vec::new(),
            joiner: None,
        };
        t.launch(replicas, bins)
            .with_context(|| format!("starting target {name}"))?;
        Ok(t)
    }

    /// Whether the target is a proxy process (not `direct`).
    pub fn is_proxy(&self) -> bool {
        self.kind != Kind::Direct
    }

    /// The target's processes (proxies, workers), not the replicas.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().flat_map(|p| procs::descendants(p.id())).collect()
    }

    /// Stops the target and starts it afresh.
    pub fn restart(&mut self, replicas: &Replicas, bins: &Bins) -> anyhow::Result<()> {
        self.stop();
        self.launch(replicas, bins)
    }

    pub fn stop(&mut self) {
        self.procs.iter_mut().for_each(procs::stop);
        self.procs.clear();
        self.helpers.iter_mut().for_each(procs::stop);
        self.helpers.clear();
    }

    /// The absent replica joins: weft rereads its mesh file (this returns
    /// once the proxy's balancer shows the new endpoint), HAProxy enables
    /// the server through its admin socket.
    pub fn join(&mut self) -> anyhow::Result<()> {
        let Some(r) = self.absent.take() else {
            return Ok(());
        };
        match self.joiner.take() {
            Some(Joiner::Weft { mesh, yaml, admin }) => {
                std::fs::write(&mesh, yaml)?;
                let name = format!("endpoint=\"square-{r}\"");
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while !procs::http_get(admin, "/metrics").is_ok_and(|m| m.contains(&name)) {
                    if std::time::Instant::now() > deadline {
                        bail!("{}: square-{r} did not join within 10 s", self.name);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Ok(())
            }
            Some(Joiner::HAProxy { socket }) => {
                use std::io::{Read, Write};
                let mut answer = String::new();
                for (k, (_, name)) in self.all_endpoints.iter().enumerate() {
                    if is_replica(name, r) {
                        let mut sock = std::os::unix::net::UnixStream::connect(&socket)
                            .with_context(|| format!("HAProxy admin socket {}", socket.display()))?;
                        sock.write_all(format!("enable server pods/s{k}\n").as_bytes())?;
                        sock.read_to_string(&mut answer)?;
                    }
                }
                if !answer.trim().is_empty() {
                    bail!("HAProxy refused to enable square-{r}: {}", answer.trim());
                }
                Ok(())
            }
            None => bail!("{}: a replica cannot join this target", self.name),
        }
    }

    fn launch(&mut self, replicas: &Replicas, bins: &Bins) -> anyhow::Result<()> {
        self.joiner = None;
        self.all_endpoints = replicas.endpoints(self.endpoints);
        if self.absent.is_some()
            && matches!(
                self.kind,
                Kind::Direct | Kind::Nginx | Kind::HAProxyTls | Kind::Weft { mtls: true, .. }
            )
        {
            bail!("{}: replicas joining are measured for weft and HAProxy only", self.name);
        }
        match self.kind {
            Kind::Direct => {
                self.port = replicas.ports[0];
                Ok(())
            }
            Kind::Weft {
                hops: 2,
                mtls: true,
                authz,
            } => self.launch_weft_mtls(replicas, bins, authz),
            Kind::Weft { hops, .. } => self.launch_weft(hops, replicas, bins),
            Kind::HAProxyTls => self.launch_haproxy_tls(replicas),
            Kind::HAProxy { balance } => {
                self.port = procs::free_port()?;
                let cfg = self.tmp.join(format!("{}.cfg", self.name));
                let socket = self.tmp.join(format!("{}.sock", self.name));
                let _ = std::fs::remove_file(&socket);
                std::fs::write(
                    &cfg,
                    haproxy_config(self.port, balance, &self.all_endpoints, self.absent, &socket),
                )?;
                self.joiner = Some(Joiner::HAProxy { socket });
                self.spawn(&["haproxy".into(), "-db".into(), "-f".into(), cfg.display().to_string()])
            }
            Kind::Nginx => {
                self.port = procs::free_port()?;
                let dir = self.tmp.join("nginx");
                std::fs::create_dir_all(&dir)?;
                let cfg = dir.join("nginx.conf");
                std::fs::write(&cfg, nginx_config(self.port, &dir, &self.all_endpoints))?;
                let (cfg, dir) = (cfg.display().to_string(), dir.display().to_string());
                self.spawn(&["nginx".into(), "-c".into(), cfg, "-p".into(), dir])
            }
        }
    }

    fn launch_weft(&mut self, hops: u8, replicas: &Replicas, bins: &Bins) -> anyhow::Result<()> {
        let mut endpoints = self.all_endpoints.clone();
        if hops == 2 {
            endpoints.clear();
            for (i, p) in replicas.ports.iter().enumerate() {
                let inbound = procs::free_port()?;
                self.spawn_inbound(bins, inbound, *p, &[])?;
                endpoints.push((format!("127.0.0.1:{inbound}"), format!("square-{i}")));
            }
        }
        let mesh = self.tmp.join(format!("mesh-{}.yaml", self.name));
        let yaml = |absent: Option<usize>| {
            let mut yaml = format!("services:\n  {SERVICE}:\n    endpoints:\n");
            for (addr, name) in &endpoints {
                if !absent.is_some_and(|r| is_replica(name, r)) {
                    yaml.push_str(&format!("      - address: {addr}\n        name: {name}\n"));
                }
            }
            yaml
        };
        std::fs::write(&mesh, yaml(self.absent))?;
        let admin = procs::free_port()?;
        self.joiner = Some(Joiner::Weft {
            mesh: mesh.clone(),
            yaml: yaml(None),
            admin,
        });
        self.port = procs::free_port()?;
        let listen = format!("127.0.0.1:{}", self.port);
        let mesh = mesh.display().to_string();
        let args = [
            "--outbound-listen",
            &listen,
            "--inbound-listen",
            "off",
            "--discovery-file",
            &mesh,
        ];
        self.spawn_proxy(bins, &args, self.port, admin)
    }

    /// Two weft hops talking mutual TLS: a weft-control (identity service
    /// and discovery, the endpoints named with the inbound proxies'
    /// identity), an inbound proxy per replica certified as `square`, the
    /// outbound certified as `client`. Returns once every proxy is ready
    /// (certified).
    fn launch_weft_mtls(&mut self, replicas: &Replicas, bins: &Bins, authz: bool) -> anyhow::Result<()> {
        let dir = self.tmp.join(format!("{}-identity", self.name));
        std::fs::create_dir_all(&dir)?;
        let mut tokens = weft_identity::Tokens::default();
        for sa in ["square", "client"] {
            let token = weft_identity::new_token();
            tokens.0.insert(
                token.clone(),
                weft_identity::TokenIdentity {
                    namespace: "default".into(),
                    service_account: sa.into(),
                },
            );
            weft_identity::write_secret(&dir.join(format!("{sa}.token")), &token)?;
        }
        tokens.write(&dir.join("tokens.yaml"))?;
        let square = weft_identity::Name::new(weft_identity::DEFAULT_TRUST_DOMAIN, "default", "square")
            .map_err(anyhow::Error::msg)?;
        let mut inbound = Vec::new();
        for _ in &replicas.ports {
            inbound.push(procs::free_port()?);
        }
        let mut yaml = format!("services:\n  {SERVICE}:\n    endpoints:\n");
        for (i, port) in inbound.iter().enumerate() {
            yaml.push_str(&format!(
                "      - address: 127.0.0.1:{port}\n        name: square-{i}\n        identity: {}\n",
                square.dns()
            ));
        }
        if authz {
            yaml.push_str(&bench_policy());
        }
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, yaml)?;
        let (cp, cp_admin) = (procs::free_port()?, procs::free_port()?);
        let argv = vec![
            bins.get("weft-control"),
            "--mesh-file".into(),
            mesh.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{cp}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{cp_admin}"),
            "--identity-dir".into(),
            dir.join("ca").display().to_string(),
            "--identity-tokens".into(),
            dir.join("tokens.yaml").display().to_string(),
            "--log".into(),
            "warn".into(),
        ];
        let mut child = procs::pinned(SERVER_CORE, &argv)?;
        procs::wait_port(cp, Some(&mut child))?;
        self.helpers.push(child);
        let cp = format!("127.0.0.1:{cp}");
        let token = |sa: &str| dir.join(format!("{sa}.token")).display().to_string();
        let mut admins = Vec::new();
        let square_token = token("square");
        let mut identity = vec![
            "--control-plane",
            cp.as_str(),
            "--identity-token-file",
            square_token.as_str(),
        ];
        if authz {
            identity.extend(["--policy-workload", "square", "--inbound-policy-port", "50051"]);
        }
        for (p, inbound) in replicas.ports.iter().zip(&inbound) {
            admins.push(self.spawn_inbound(bins, *inbound, *p, &identity)?);
        }
        self.port = procs::free_port()?;
        let admin = procs::free_port()?;
        let listen = format!("127.0.0.1:{}", self.port);
        let args = [
            "--control-plane",
            &cp,
            "--identity-token-file",
            &token("client"),
            "--outbound-listen",
            &listen,
            "--inbound-listen",
            "off",
        ];
        self.spawn_proxy(bins, &args, self.port, admin)?;
        admins.push(admin);
        for admin in admins {
            wait_ready(admin)?;
        }
        // A client of an inbound proxy, as the outbound is: certified by
        // the same CA, expecting the `square` identity.
        let ca = weft_identity::Ca::load(&dir.join("ca"), weft_identity::DEFAULT_TRUST_DOMAIN)?;
        let client = weft_identity::Name::new(weft_identity::DEFAULT_TRUST_DOMAIN, "default", "client")
            .map_err(anyhow::Error::msg)?;
        self.tls = Some(TlsClient {
            port: inbound[0],
            files: CertFiles::issue(&ca, &client, &dir)?,
            server_name: square.dns(),
        });
        Ok(())
    }

    /// HAProxy as two hops with TLS between them: an inbound HAProxy per
    /// replica (terminates TLS 1.3, requires a client certificate from the
    /// CA) and an outbound one (round-robin over the inbound ones,
    /// originates TLS with its certificate, checks the inbound's name).
    /// Certificates from a weft CA, like weft's.
    fn launch_haproxy_tls(&mut self, replicas: &Replicas) -> anyhow::Result<()> {
        let dir = self.tmp.join(format!("{}-certs", self.name));
        std::fs::create_dir_all(&dir)?;
        let ca = weft_identity::Ca::create(&dir.join("ca"), weft_identity::DEFAULT_TRUST_DOMAIN)?;
        let name = |sa: &str| {
            weft_identity::Name::new(weft_identity::DEFAULT_TRUST_DOMAIN, "default", sa).map_err(anyhow::Error::msg)
        };
        let square = CertFiles::issue(&ca, &name("square")?, &dir)?;
        let client = CertFiles::issue(&ca, &name("client")?, &dir)?;
        let mut inbound = Vec::new();
        for (i, p) in replicas.ports.iter().enumerate() {
            let port = procs::free_port()?;
            let cfg = dir.join(format!("inbound-{i}.cfg"));
            std::fs::write(&cfg, haproxy_inbound_tls_config(port, *p, &square))?;
            self.port = port;
            self.spawn(&["haproxy".into(), "-db".into(), "-f".into(), cfg.display().to_string()])?;
            inbound.push(port);
        }
        self.port = procs::free_port()?;
        let cfg = dir.join("outbound.cfg");
        let sq = name("square")?.dns();
        std::fs::write(&cfg, haproxy_outbound_tls_config(self.port, &inbound, &client, &sq))?;
        self.spawn(&["haproxy".into(), "-db".into(), "-f".into(), cfg.display().to_string()])?;
        self.tls = Some(TlsClient {
            port: inbound[0],
            files: client,
            server_name: sq,
        });
        Ok(())
    }

    /// An inbound-only proxy on `port` in front of the replica on `replica`,
    /// with `extra` arguments; returns its admin port.
    fn spawn_inbound(&mut self, bins: &Bins, port: u16, replica: u16, extra: &[&str]) -> anyhow::Result<u16> {
        let (listen, forward) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{replica}"));
        let mut args = vec![
            "--outbound-listen",
            "off",
            "--inbound-listen",
            &listen,
            "--inbound-forward",
            &forward,
        ];
        args.extend_from_slice(extra);
        let admin = procs::free_port()?;
        self.spawn_proxy(bins, &args, port, admin)?;
        Ok(admin)
    }

    fn spawn_proxy(&mut self, bins: &Bins, args: &[&str], port: u16, admin: u16) -> anyhow::Result<()> {
        let mut argv = vec![
            bins.proxy_for(&self.name)?.display().to_string(),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin}"),
            "--log".into(),
            "warn".into(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut child = procs::pinned(SERVER_CORE, &argv)?;
        procs::wait_port(port, Some(&mut child))?;
        self.procs.push(child);
        Ok(())
    }

    fn spawn(&mut self, argv: &[String]) -> anyhow::Result<()> {
        let mut child = procs::pinned(SERVER_CORE, argv)?;
        procs::wait_port(self.port, Some(&mut child))?;
        self.procs.push(child);
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (10 s at most) for a weft proxy's `/ready` (200 once certified).
fn wait_ready(admin: u16) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while procs::http_get(admin, "/ready").is_err() {
        if std::time::Instant::now() > deadline {
            bail!("the proxy with admin port {admin} was not ready (certified) within 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// A certificate, its key and the trust anchors, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// Leaf then intermediates.
    pub chain: PathBuf,
    /// PKCS#8.
    pub key: PathBuf,
    /// Chain and key in one file (HAProxy's `crt`).
    pub combined: PathBuf,
    pub anchors: PathBuf,
}

impl CertFiles {
    /// A fresh key and a certificate for `name` from `ca` (24 h), written to `dir`.
    fn issue(ca: &weft_identity::Ca, name: &weft_identity::Name, dir: &Path) -> anyhow::Result<CertFiles> {
        let (key, csr) = weft_identity::request()?;
        let issued = ca.issue(&csr, name, std::time::Duration::from_secs(24 * 3600))?;
        let pem = |der: &[u8]| weft_identity::pem("CERTIFICATE", der);
        let mut chain = pem(&issued.leaf);
        issued.intermediates.iter().for_each(|d| chain.push_str(&pem(d)));
        let anchors: String = ca.anchors().iter().map(|d| pem(d)).collect();
        let sa = &name.service_account;
        let files = CertFiles {
            chain: dir.join(format!("{sa}.crt")),
            key: dir.join(format!("{sa}.key")),
            combined: dir.join(format!("{sa}.pem")),
            anchors: dir.join("anchors.pem"),
        };
        std::fs::write(&files.chain, &chain)?;
        weft_identity::write_secret(&files.key, &key.serialize_pem())?;
        weft_identity::write_secret(&files.combined, &format!("{chain}{}", key.serialize_pem()))?;
        std::fs::write(&files.anchors, anchors)?;
        Ok(files)
    }
}

/// How a TLS client reaches a target's first inbound hop.
#[derive(Clone, Debug)]
pub struct TlsClient {
    pub port: u16,
    pub files: CertFiles,
    pub server_name: String,
}

/// An inbound HAProxy: TLS 1.3 with a required client certificate, ALPN
/// h2, to one replica over h2 in clear.
fn haproxy_inbound_tls_config(port: u16, replica: u16, certs: &CertFiles) -> String {
    format!(
        "global\n    nbthread 1\n    maxconn 4000\n    tune.h2.max-concurrent-streams 2000\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n\
         frontend fe\n    bind 127.0.0.1:{port} ssl crt {} ca-file {} verify required alpn h2 ssl-min-ver TLSv1.3\n    default_backend pod\n\
         backend pod\n    server s0 127.0.0.1:{replica} proto h2\n",
        certs.combined.display(),
        certs.anchors.display(),
    )
}

/// The outbound HAProxy: h2 in clear from the client, round-robin over the
/// inbound HAProxies with TLS 1.3, its client certificate, and the
/// inbound's name checked.
fn haproxy_outbound_tls_config(port: u16, inbound: &[u16], certs: &CertFiles, server_name: &str) -> String {
    let servers: Vec<String> = inbound
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "    server s{i} 127.0.0.1:{p} ssl crt {} ca-file {} verify required verifyhost {server_name} sni str({server_name}) alpn h2 ssl-min-ver TLSv1.3",
                certs.combined.display(),
                certs.anchors.display(),
            )
        })
        .collect();
    format!(
        "global\n    nbthread 1\n    maxconn 4000\n    tune.h2.max-concurrent-streams 2000\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n\
         frontend fe\n    bind 127.0.0.1:{port} proto h2\n    default_backend pods\n\
         backend pods\n    balance roundrobin\n{}\n",
        servers.join("\n")
    )
}

/// Whether endpoint `name` is replica `r` (`square-r`, or `square-r-host`
/// at another loopback address).
fn is_replica(name: &str, r: usize) -> bool {
    let own = format!("square-{r}");
    name == own || name.starts_with(&format!("{own}-"))
}

/// HAProxy 2.6: h2 on both sides, one thread, no logging; the `absent`
/// replica's servers start disabled, to be enabled on `socket`.
fn haproxy_config(
    port: u16,
    balance: &str,
    endpoints: &[(String, String)],
    absent: Option<usize>,
    socket: &Path,
) -> String {
    let servers: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (addr, name))| {
            let off = if absent.is_some_and(|r| is_replica(name, r)) {
                " disabled"
            } else {
                ""
            };
            format!("    server s{i} {addr} proto h2{off}")
        })
        .collect();
    format!(
        "global\n    nbthread 1\n    maxconn 4000\n    tune.h2.max-concurrent-streams 2000\n    stats socket {} level admin\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n\
         frontend fe\n    bind 127.0.0.1:{port} proto h2\n    default_backend pods\n\
         backend pods\n    balance {balance}\n{}\n",
        socket.display(),
        servers.join("\n")
    )
}

/// nginx 1.22: grpc_pass to the replicas, one worker, keep-alive raised on
/// both sides (the default 1,000 requests would close a connection every
/// half second at 2,000 calls/s).
fn nginx_config(port: u16, dir: &Path, endpoints: &[(String, String)]) -> String {
    let d = dir.display();
    let servers: Vec<String> = endpoints
        .iter()
        .map(|(addr, _)| format!("        server {addr};"))
        .collect();
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n\
         \x20   upstream pods {{\n{}\n        keepalive 128;\n        keepalive_requests 10000000;\n    }}\n\
         \x20   server {{\n        listen 127.0.0.1:{port} http2;\n        http2_max_concurrent_streams 2000;\n\
         \x20       keepalive_requests 10000000;\n        location / {{ grpc_pass grpc://pods; }}\n    }}\n}}\n",
        servers.join("\n")
    )
}

/// The policy of `weft-2hop-mtls-authz`: the server's port names 1,000
/// authorizations (an identity and a method each; the client's is one of
/// them), and the default denies the rest.
fn bench_policy() -> String {
    let mut y = String::from(
        "policies:\n  square:\n    default: deny\n    servers:\n      grpc:\n        port: 50051\n        authorizations:\n",
    );
    for i in 0..999 {
        y.push_str(&format!(
            "          team-{i}: {{identities: [\"svc-{i}.default.serviceaccount.identity.cluster.local\"], routes: [{{grpc: \"pkg.Service{}/Method\"}}]}}\n",
            i % 50
        ));
    }
    y.push_str("          client: {identities: [client.default.serviceaccount.identity.cluster.local], routes: [{grpc: square.Square/Square}]}\n");
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_configs_name_every_replica() {
        let eps = |ports: &[u16]| -> Vec<(String, String)> {
            ports
                .iter()
                .map(|p| (format!("127.0.0.1:{p}"), format!("s{p}")))
                .collect()
        };
        let sock = Path::new("/tmp/x/admin.sock");
        let h = haproxy_config(9000, "leastconn", &eps(&[1, 2, 3]), None, sock);
        assert!(h.contains("bind 127.0.0.1:9000 proto h2"), "{h}");
        assert!(h.contains("balance leastconn"));
        assert!(h.contains("server s2 127.0.0.1:3 proto h2\n"));
        assert!(h.contains("stats socket /tmp/x/admin.sock level admin"), "{h}");
        let named = vec![
            ("127.0.0.1:1".to_string(), "square-0".to_string()),
            ("127.0.0.1:2".to_string(), "square-1".to_string()),
            ("127.0.0.2:1".to_string(), "square-0-1".to_string()),
            ("127.0.0.2:2".to_string(), "square-10".to_string()),
        ];
        let h = haproxy_config(9000, "leastconn", &named, Some(0), sock);
        assert!(h.contains("server s0 127.0.0.1:1 proto h2 disabled"), "{h}");
        assert!(h.contains("server s2 127.0.0.2:1 proto h2 disabled"), "{h}");
        assert!(h.contains("server s1 127.0.0.1:2 proto h2\n"), "{h}");
        assert!(h.contains("server s3 127.0.0.2:2 proto h2\n"), "{h}");
        let n = nginx_config(9001, Path::new("/tmp/x"), &eps(&[1, 2, 3]));
        assert!(n.contains("listen 127.0.0.1:9001 http2;"), "{n}");
        assert!(n.contains("        server 127.0.0.1:3;"), "{n}");
        assert!(n.contains("\n    upstream pods {\n"), "{n}");
        assert!(Kind::parse("envoy").is_err());
        assert_eq!(
            Kind::parse("weft-2hop@before").unwrap(),
            Kind::Weft {
                hops: 2,
                mtls: false,
                authz: false
            }
        );
        assert_eq!(
            Kind::parse("weft-2hop-mtls-authz").unwrap(),
            Kind::Weft {
                hops: 2,
                mtls: true,
                authz: true
            }
        );
        let policy: weft_mesh::MeshFile = serde_yaml::from_str(&bench_policy()).unwrap();
        assert_eq!(
            policy
                .policies
                .values()
                .next()
                .unwrap()
                .servers
                .values()
                .next()
                .unwrap()
                .authorizations
                .len(),
            1000
        );
        assert!(Kind::parse("nginx@before").is_err());
    }
}
