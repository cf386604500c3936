//! `weft down`, `weft scale`, `weft logs`: the running `weft up`'s
//! neighbours. They find it through `<dir>/run/` (its pid, its socket,
//! its logs).

use std::{
    collections::BTreeMap,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::RunDir;

#[derive(Args, Debug, Clone)]
pub struct DirArgs {
    /// The running mesh's directory (as given to `weft up --dir`).
    #[arg(long, default_value = ".weft")]
    pub dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// The workload, as named in the mesh file.
    pub workload: String,
    /// How many replicas it should run (until the file's `replicas` changes).
    pub replicas: u32,
    #[command(flatten)]
    pub dir: DirArgs,
}

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// The workload (all its replicas), or one replica (`square-1`).
    pub workload: String,
    /// The proxies' logs instead of the apps'.
    #[arg(long)]
    pub proxy: bool,
    /// Lines to show from the end of each log before following.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub lines: usize,
    /// Print and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
    #[command(flatten)]
    pub dir: DirArgs,
}

/// The pid of the `weft up` running from `dirs`, if it is alive.
pub fn running_pid(dirs: &RunDir) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dirs.pid()).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

/// Whether a process runs (and is no zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

async fn ask(dirs: &RunDir, line: &str) -> anyhow::Result<String> {
    let path = dirs.socket();
    let mut s = tokio::net::UnixStream::connect(&path).await.with_context(|| {
        format!(
            "no mesh is running from {} (cannot reach {}): start one with `weft up mesh.yaml`",
            dirs.run.display(),
            path.display()
        )
    })?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .context("weft up did not answer within 10 s")??;
    if let Some(e) = answer.strip_prefix("error: ") {
        bail!("{}", e.trim());
    }
    Ok(answer)
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let dirs = RunDir::new(&args.dir.dir);
    let answer = ask(&dirs, &format!("scale {} {}", args.workload, args.replicas)).await?;
    print!("{}", answer.trim_start_matches("ok: "));
    Ok(())
}

pub async fn status(args: DirArgs) -> anyhow::Result<()> {
    print!("{}", ask(&RunDir::new(&args.dir), "status").await?);
    Ok(())
}

/// When a process started (clock ticks since boot), to tell it from a
/// later process that reuses its id.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // Field 22 of stat; `rest` starts at field 3.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The processes a `weft up` that is gone (killed) left behind, from its
/// state.json: each pid with the start time it had then.
fn left_behind(dirs: &RunDir) -> Vec<(u32, u64)> {
    let Ok(text) = std::fs::read_to_string(dirs.state()) else {
        return Vec::new();
    };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    state["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((u32::try_from(p["pid"].as_u64()?).ok()?, p["start"].as_u64()?)))
        .filter(|&(pid, start)| alive(pid) && start_time(pid) == Some(start))
        .collect()
}

/// Asks `weft up` to stop everything and waits until it has.
pub async fn down(args: DirArgs) -> anyhow::Result<()> {
    let dirs = RunDir::new(&args.dir);
    let Some(pid) = running_pid(&dirs) else {
        let left = left_behind(&dirs);
        if left.is_empty() {
            bail!("no mesh is running from {}", dirs.run.display());
        }
        println!(
            "weft up is gone (killed?); stopping the {} processes it left behind",
            left.len()
        );
        for (pid, _) in &left {
            super::replica::signal(Some(*pid), "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while left.iter().any(|(p, _)| alive(*p)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (pid, _) in left.iter().filter(|(p, _)| alive(*p)) {
            super::replica::signal(Some(*pid), "KILL");
        }
        return Ok(());
    };
    if ask(&dirs, "down").await.is_err() {
        // The socket is gone but the process is there: ask by signal.
        super::replica::signal(Some(pid), "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        if Instant::now() > deadline {
            bail!("weft up (pid {pid}) is still stopping after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("the mesh from {} is down", dirs.run.display());
    Ok(())
}

/// Prints the last lines of each log of a workload, then follows them.
pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let dir = RunDir::new(&args.dir.dir).logs();
    let suffix = if args.proxy { ".proxy.log" } else { ".log" };
    let mut files: BTreeMap<String, (PathBuf, u64)> = BTreeMap::new();
    let find = |files: &mut BTreeMap<String, (PathBuf, u64)>| -> anyhow::Result<()> {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("no logs in {}", dir.display()))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(replica) = name.strip_suffix(suffix) else {
                continue;
            };
            if !args.proxy && replica.ends_with(".proxy") {
                continue;
            }
            let matches = replica == args.workload
                || replica
                    .rsplit_once('-')
                    .is_some_and(|(w, i)| w == args.workload && i.chars().all(|c| c.is_ascii_digit()));
            if matches && !files.contains_key(replica) {
                files.insert(replica.to_string(), (e.path(), 0));
            }
        }
        Ok(())
    };
    find(&mut files)?;
    if files.is_empty() {
        bail!("no logs for `{}` in {}", args.workload, dir.display());
    }
    for (replica, (path, offset)) in &mut files {
        let text = std::fs::read_to_string(&*path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(args.lines)..] {
            println!("[{replica}] {l}");
        }
        *offset = text.len() as u64;
    }
    if args.no_follow {
        return Ok(());
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        find(&mut files)?;
        for (replica, (path, offset)) in &mut files {
            follow(replica, path, offset);
        }
    }
}

fn follow(replica: &str, path: &Path, offset: &mut u64) {
    let Ok(mut f) = std::fs::File::open(path) else { return };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *offset {
        *offset = 0; // truncated or replaced
    }
    if len == *offset || f.seek(SeekFrom::Start(*offset)).is_err() {
        return;
    }
    let mut buf = String::new();
    if f.read_to_string(&mut buf).is_ok() {
        // Only whole lines; a partial last line waits for its end.
        let whole = buf.rfind('\n').map_or(0, |i| i + 1);
        for l in buf[..whole].lines() {
            println!("[{replica}] {l}");
        }
        *offset += whole as u64;
    }
}
