//! Processes of a run: started pinned to a core, stopped with SIGTERM, and
//! measured from /proc (CPU seconds, memory, the machine's busy time).

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// The load generator's core, and the core the replicas and the proxy
/// under test share (see shared/BENCHMARKING.md).
pub const LOAD_CORE: &str = "0";
pub const SERVER_CORE: &str = "1";

/// Starts `argv` pinned to `core` (taskset execs it, so the pid is argv's),
/// with its output discarded.
pub fn pinned(core: &str, argv: &[String]) -> anyhow::Result<Child> {
    Command::new("taskset")
        .arg("-c")
        .arg(core)
        .args(argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", argv.join(" ")))
}

/// Stops a process: SIGTERM, then SIGKILL after 5 s.
pub fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A port nothing listens on now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts connections on `port` (10 s at most),
/// failing early if `child` exits.
pub fn wait_port(port: u16, child: Option<&mut Child>) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut child = child;
    while Instant::now() < deadline {
        if let Some(c) = child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            bail!("process {} exited with {status} before listening on {port}", c.id());
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port}")
}

/// `pid` and all its descendants.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(children) = std::fs::read_to_string(path) {
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.extend(descendants(c));
            }
        }
    }
    out
}

/// Clock ticks per second of /proc's CPU counters (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The fields of /proc/PID/stat after the command name.
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

/// CPU seconds (user + system) the processes have used.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| stat_fields(&p.to_string()))
        .map(|f| f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0))
        .sum();
    ticks as f64 / clock_ticks()
}

/// CPU seconds of this process's finished children (the load generators).
pub fn children_cpu() -> f64 {
    let f = stat_fields("self").unwrap_or_default();
    (f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0)) as f64 / clock_ticks()
}

/// A `/proc/PID/status` value in KiB (`VmRSS`, `VmHWM`), 0 if gone.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The machine's busy and total time, in seconds: busy is user + nice +
/// system, what processes' own counters add up to (interrupt and softirq
/// time, the loopback network's work, is charged to no process).
pub fn machine_busy() -> (f64, f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = clock_ticks();
    let busy = v.iter().take(3).sum::<u64>() as f64 / ticks;
    // The 8th field: time the hypervisor gave to someone else.
    let steal = v.get(7).copied().unwrap_or(0) as f64 / ticks;
    (busy, v.iter().sum::<u64>() as f64 / ticks, steal)
}

/// Runs a command and returns its first line of output (stdout or stderr).
pub fn first_line(argv: &[&str]) -> Option<String> {
    let out = Command::new(argv[0]).args(&argv[1..]).output().ok()?;
    let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
    String::from_utf8(text).ok()?.lines().next().map(str::to_string)
}

/// Whether a program is on the PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// The body of `GET path` on 127.0.0.1:`port` (HTTP/1.1, one request).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!(
            "GET {path} on port {port}: {}",
            text.lines().next().unwrap_or("no answer")
        ),
    }
}
