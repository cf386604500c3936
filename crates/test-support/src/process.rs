//! Real processes: square replicas and weft proxies started from the
//! workspace's binaries, killed when dropped.

use std::{
    net::{SocketAddr, TcpListener},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};

/// A child process, killed on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Sends a signal (e.g. `libc`-free: "KILL", "TERM") with the kill command.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A free local port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts the `square` binary on port 0 and returns it with the address it
/// bound (read from its start-up line, so no port can be raced for).
pub async fn square(name: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut child = Command::new(crate::bin_path("square"))
        .args(["--listen", "127.0.0.1:0", "--name", name])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn square");
    let stderr = child.stderr.take().expect("stderr");
    let line = first_line_with(stderr, " listening on ").await;
    let addr: SocketAddr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.trim().parse().ok())
        .expect("square's address");
    (
        Proc {
            child,
            name: name.into(),
        },
        addr,
    )
}

/// A weft-proxy's listening addresses, from its start-up log.
#[derive(Clone, Copy, Debug)]
pub struct Listening {
    pub outbound: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Starts the `weft-proxy` binary with its listeners on port 0; returns it
/// with its (outbound, admin) addresses, read from its start-up log.
pub async fn weft_proxy(extra: &[&str]) -> (Proc, Option<SocketAddr>, Option<SocketAddr>) {
    let (proc, at) = weft_proxy_listening(extra).await;
    (proc, at.outbound, at.admin)
}

/// As [`weft_proxy`] (inbound off unless `extra` sets `--inbound-listen`),
/// with every listening address.
pub async fn weft_proxy_listening(extra: &[&str]) -> (Proc, Listening) {
    let mut defaults = vec!["--outbound-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    if !extra.contains(&"--inbound-listen") {
        defaults.extend(["--inbound-listen", "off"]);
    }
    let mut child = Command::new(crate::bin_path("weft-proxy"))
        .args(defaults)
        // WEFT_TEST_PROXY_LOG=debug: the proxy's log, copied to the test's stderr.
        .args([
            "--log",
            &std::env::var("WEFT_TEST_PROXY_LOG").unwrap_or_else(|_| "info".into()),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn weft-proxy");
    let stderr = child.stderr.take().expect("stderr");
    let line = first_line_with(stderr, "listening").await;
    let find = |key: &str| {
        let start = line.find(&format!("{key}=Some("))? + key.len() + 6;
        line[start..].split(')').next()?.parse().ok()
    };
    (
        Proc {
            child,
            name: "weft-proxy".into(),
        },
        Listening {
            outbound: find("outbound"),
            inbound: find("inbound"),
            admin: find("admin"),
        },
    )
}

/// Reads lines until one contains `needle` (10 s at most); the rest of the
/// stream is drained in the background so the child never blocks on it.
async fn first_line_with(stderr: tokio::process::ChildStderr, needle: &str) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("no start-up line containing {needle:?}"));
    let echo = std::env::var_os("WEFT_TEST_PROXY_LOG").is_some();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                eprintln!("{line}");
            }
        }
    });
    found
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    crate::eventually(
        &format!("{addr} to accept connections"),
        Duration::from_secs(10),
        || async { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
    )
    .await;
}

/// The `weft-control` binary serving a mesh file, on ports it keeps across
/// [`ControlPlane::kill`] and [`ControlPlane::restart`].
#[derive(Debug)]
pub struct ControlPlane {
    proc: Option<Proc>,
    mesh_file: std::path::PathBuf,
    extra: Vec<String>,
    /// Where proxies connect (`--control-plane`).
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl ControlPlane {
    /// Starts weft-control on `mesh_file` and waits until it is ready.
    pub async fn start(mesh_file: &std::path::Path) -> ControlPlane {
        Self::start_with(mesh_file, &[]).await
    }

    /// The same with more flags (e.g. `--identity-dir`).
    pub async fn start_with(mesh_file: &std::path::Path, extra: &[&str]) -> ControlPlane {
        let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cp = ControlPlane {
            proc: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            mesh_file: mesh_file.to_path_buf(),
            addr: port(()),
            admin: port(()),
        };
        cp.restart().await;
        cp
    }

    /// Kills it (SIGKILL: no goodbye to the proxies).
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill().await;
        }
    }

    /// Starts it again on the same ports and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = Command::new(crate::bin_path("weft-control"))
            .arg("--mesh-file")
            .arg(&self.mesh_file)
            .args([
                "--listen",
                &self.addr.to_string(),
                "--admin-listen",
                &self.admin.to_string(),
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("WEFT_TEST_PROXY_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("spawn weft-control");
        self.proc = Some(Proc {
            child,
            name: "weft-control".into(),
        });
        let admin = self.admin;
        crate::eventually("weft-control to be ready", Duration::from_secs(10), || async move {
            matches!(crate::http_get(admin, "/ready").await, Ok((200, _))).then_some(())
        })
        .await;
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        crate::http_get(self.admin, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// Its `/ready` text (source, counts, the last refused change).
    pub async fn ready(&self) -> String {
        crate::http_get(self.admin, "/ready")
            .await
            .map(|r| r.1)
            .unwrap_or_default()
    }
}
