//! Child processes for local meshes: the workspace's binaries, started on
//! free local ports, stopped (SIGTERM, then SIGKILL) when dropped.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A binary shipped beside this one (`square`, `weft-proxy`, ...).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the weft binary")?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .context("the weft binary has no directory")?;
    if !path.is_file() {
        bail!(
            "{} not found next to weft; build every binary first: cargo build --release (or cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// A free port on 127.0.0.1.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A running child process; terminated when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: &std::path::Path,
        args: &[String],
        log: Option<&std::path::Path>,
    ) -> anyhow::Result<Proc> {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::null(),
        };
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Proc { child })
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}
