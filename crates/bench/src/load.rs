//! The load: `weft-load` runs (pinned to the load core, JSON summaries),
//! and `h2load` for a second, cheaper max-throughput figure.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use weft_load::Summary;

use crate::{
    procs::{self, LOAD_CORE},
    target::{Bins, SERVICE, TlsClient},
};

/// The `weft-load` command line for `port` with extra arguments.
fn argv(bins: &Bins, port: u16, args: &[String]) -> Vec<String> {
    let mut argv = vec![
        bins.get("weft-load"),
        "--target".into(),
        format!("127.0.0.1:{port}"),
        "--authority".into(),
        SERVICE.into(),
        "--json".into(),
        "--progress".into(),
        "off".into(),
    ];
    argv.extend(args.iter().cloned());
    argv
}

/// Runs `weft-load` to completion and returns its summary.
pub fn run(bins: &Bins, port: u16, args: &[String]) -> anyhow::Result<Summary> {
    let out = Command::new("taskset")
        .arg("-c")
        .arg(LOAD_CORE)
        .args(argv(bins, port, args))
        .output()
        .context("cannot run weft-load")?;
    if !out.status.success() {
        bail!("weft-load failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("weft-load printed no summary")
}

/// Starts `weft-load` in the background (its summary read by [`finish`]).
pub fn spawn(bins: &Bins, port: u16, args: &[String]) -> anyhow::Result<Child> {
    Command::new("taskset")
        .arg("-c")
        .arg(LOAD_CORE)
        .args(argv(bins, port, args))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start weft-load")
}

/// Waits for a background `weft-load` and reads its summary.
pub fn finish(child: Child) -> anyhow::Result<Summary> {
    let out = child.wait_with_output()?;
    serde_json::from_slice(&out.stdout).context("weft-load printed no summary")
}

/// Starts `weft-attack` against `port` on the load core, at a lower
/// priority than the load generator (the attack must not slow the
/// measuring client down on its own core); stop it with `procs::stop`.
pub fn attack(bins: &Bins, port: u16, attack: &crate::plan::Attack) -> anyhow::Result<Child> {
    let mut argv = vec![
        "-n".to_string(),
        "10".into(),
        "taskset".into(),
        "-c".into(),
        LOAD_CORE.into(),
        bins.get("weft-attack"),
        "--target".into(),
        format!("127.0.0.1:{port}"),
        "--authority".into(),
        SERVICE.into(),
        "--kind".into(),
        attack.kind.clone(),
    ];
    if let Some(n) = attack.connections {
        argv.extend(["--connections".into(), n.to_string()]);
    }
    Command::new("nice")
        .args(&argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start weft-attack")
}

/// Max throughput with h2load (calls/s), or `None` without h2load.
pub fn h2load(port: u16, seconds: f64, conns: usize, streams: usize) -> Option<f64> {
    if !procs::have("h2load") {
        return None;
    }
    // A 5-byte gRPC prefix and the message Input{value: 7}.
    let body = std::env::temp_dir().join("weft-bench-body.grpc");
    std::fs::write(&body, [0, 0, 0, 0, 2, 0x08, 0x07]).ok()?;
    let out = Command::new("taskset")
        .args(["-c", LOAD_CORE, "h2load"])
        .args(["-c", &conns.to_string(), "-m", &streams.to_string()])
        .args(["-D", &seconds.to_string(), "--warm-up-time", "1"])
        .args(["-d", &body.display().to_string()])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", &format!(":authority: {SERVICE}")])
        .arg(format!("http://127.0.0.1:{port}/square.Square/Square"))
        .output()
        .ok()?;
    // "finished in 5.00s, 40077.20 req/s, ..."
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1)?.split_whitespace().next()?.parse().ok())
}

/// Opens `streams` long-lived streams through the target with `weft-load
/// --streams` and returns once they are open (its "N of N streams open"
/// line), holding them for `hold` seconds or until stopped.
pub fn hold_streams(bins: &Bins, port: u16, streams: usize, hold: f64) -> anyhow::Result<Child> {
    use std::io::{BufRead, BufReader};
    let args = [
        "--streams".to_string(),
        streams.to_string(),
        "--duration".into(),
        hold.to_string(),
    ];
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(LOAD_CORE)
        .args(argv(bins, port, &args))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start weft-load --streams")?;
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let want = format!("{streams} of {streams} streams open");
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(&want) => break,
            Some(Ok(line)) if line.contains("streams open") => {
                procs::stop(&mut child);
                bail!("weft-load could not open every stream: {line}");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => {
                procs::stop(&mut child);
                bail!("weft-load --streams exited before its streams were open");
            }
        }
    }
    // Keep draining its stderr, so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(child)
}

/// What `weft-handshake` counted.
#[derive(Debug, serde::Deserialize)]
pub struct Handshakes {
    pub handshakes: u64,
    pub per_sec: f64,
    pub errors: u64,
}

/// New mTLS connections to `tls`'s listener for `seconds`, `concurrency`
/// at once, from the load core.
pub fn handshakes(bins: &Bins, tls: &TlsClient, seconds: f64, concurrency: usize) -> anyhow::Result<Handshakes> {
    let f = &tls.files;
    let out = Command::new("taskset")
        .args(["-c", LOAD_CORE])
        .arg(bins.get("weft-handshake"))
        .args(["--target", &format!("127.0.0.1:{}", tls.port)])
        .args(["--ca", &f.anchors.display().to_string()])
        .args(["--cert", &f.chain.display().to_string()])
        .args(["--key", &f.key.display().to_string()])
        .args(["--server-name", &tls.server_name])
        .args(["--duration", &seconds.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .output()
        .context("cannot run weft-handshake")?;
    if !out.status.success() {
        bail!("weft-handshake failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let h: Handshakes = serde_json::from_slice(&out.stdout).context("weft-handshake printed no summary")?;
    if h.handshakes == 0 {
        bail!(
            "weft-handshake completed no handshake: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(h)
}
