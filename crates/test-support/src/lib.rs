//! Test support for weft: start proxies, replicas and whole meshes, in this
//! process or as real processes; read metrics; wait on conditions with
//! deadlines (never sleep-and-hope).

pub mod h2raw;
pub mod http1;
pub mod ids;
pub mod mesh;
pub mod process;
pub mod raw;
pub mod relay;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub use ids::MeshIds;
pub use mesh::{DiscoveryFile, TestProxy};
pub use relay::{Relay, contains};

/// Waits until `check` returns `Some`, polling every 20 ms, or panics with
/// `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path).await
}

/// A plain HTTP/1.1 request without a body; returns (status, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request_with(addr, method, path, &[]).await
}

/// A plain HTTP/1.1 request with extra headers; returns (status, body).
pub async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sums the samples of metric `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The path of one of the workspace's binaries, built by `cargo build`
/// (the test command builds them all before testing).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>; WEFT_TEST_BIN_DIR
    // runs the tests against another build (e.g. to see a new test fail on
    // an older one).
    let dir = match std::env::var_os("WEFT_TEST_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => exe.parent().and_then(Path::parent).expect("target dir").to_path_buf(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (the README's test command does)",
        path.display()
    );
    path
}

/// Whether the tests run in CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (returns false, printing why) when a requirement is missing outside
/// CI; panics in CI, where every test must run.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("CI=true and this test needs {what}");
    }
    eprintln!("SKIPPED: this test needs {what}");
    false
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(cmd).is_file()
        || Path::new("/sbin").join(cmd).is_file()
}

/// Counts replies per hostname.
pub fn tally<'a>(hosts: impl IntoIterator<Item = &'a str>) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for h in hosts {
        *m.entry(h.to_string()).or_insert(0) += 1;
    }
    m
}

/// Makes `count` square calls over `channel` with `concurrency` in flight;
/// returns the hostname of each reply (or `error:<code>` for failures).
pub async fn square_calls(channel: tonic::transport::Channel, count: u64, concurrency: usize) -> Vec<String> {
    use futures_util::StreamExt;
    let client = weft_api::square::square_client::SquareClient::new(channel);
    futures_util::stream::iter(1..=count)
        .map(|n| {
            let mut client = client.clone();
            async move {
                match client.square(weft_api::square::Input { value: n as i64 }).await {
                    Ok(r) => {
                        let out = r.into_inner();
                        assert_eq!(out.result, (n * n) as i64, "wrong square for {n}");
                        out.hostname
                    }
                    Err(s) => format!("error:{:?}:{}", s.code(), s.message()),
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// One call's outcome from [`OpenLoad`].
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub started: std::time::Instant,
    pub finished: std::time::Instant,
    /// The replica's hostname, or the error.
    pub result: Result<String, tonic::Status>,
}

/// Square calls at a fixed rate (open loop) until stopped.
pub struct OpenLoad {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<CallRecord>>,
}

impl OpenLoad {
    /// Starts `per_second` calls per second over `channel`.
    pub fn start(channel: tonic::transport::Channel, per_second: u32) -> OpenLoad {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let client = weft_api::square::square_client::SquareClient::new(channel);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut calls = tokio::task::JoinSet::new();
            let mut n = 0i64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                n += 1;
                let mut client = client.clone();
                calls.spawn(async move {
                    let started = std::time::Instant::now();
                    let mut req = tonic::Request::new(weft_api::square::Input { value: n });
                    req.set_timeout(Duration::from_secs(10));
                    let result = client.square(req).await.map(|r| r.into_inner().hostname);
                    CallRecord {
                        started,
                        finished: std::time::Instant::now(),
                        result,
                    }
                });
            }
            let mut out = Vec::new();
            while let Some(r) = calls.join_next().await {
                out.extend(r.ok());
            }
            out.sort_by_key(|r| r.started);
            out
        });
        OpenLoad { stop, task }
    }

    /// Stops sending and waits for every call to finish.
    pub async fn finish(self) -> Vec<CallRecord> {
        let _ = self.stop.send(true);
        self.task.await.expect("load task")
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The Python interpreter of the test venv (`.venv`, made by the README's
/// test set-up), if it exists and has grpcio.
pub fn python() -> Option<PathBuf> {
    let py = workspace_root().join(".venv/bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}
