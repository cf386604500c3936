//! `weft up`: a mesh from a mesh file, as a user runs it (the `weft`
//! binary, real processes): calls spread over every replica, `weft scale`
//! and the file scale it live, a typo is refused, Ctrl-C leaves no process.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use weft_test_support::{
    OpenLoad, bin_path, eventually, mesh::channel_via, process::free_port, square_calls, tally, workspace_root,
};

fn weft(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_path("weft"))
        .args(args)
        .output()
        .expect("run weft")
}

/// The replicas `weft up` reports in state.json: (name, phase).
fn replicas(state: &serde_json::Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = state["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["phase"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn state(dir: &Path) -> serde_json::Value {
    std::fs::read_to_string(dir.join(".weft/run/state.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn ready(names: &[&str]) -> Vec<(String, String)> {
    names.iter().map(|n| (n.to_string(), "ready".to_string())).collect()
}

/// Every process id state.json names.
fn pids(state: &serde_json::Value) -> Vec<u64> {
    let mut out = Vec::new();
    for r in state["replicas"].as_array().into_iter().flatten() {
        out.extend(r["pid"].as_u64());
        out.extend(r["proxy_pid"].as_u64());
    }
    out.extend(state["control"]["pid"].as_u64());
    out.extend(state["entry"]["pid"].as_u64());
    out
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// If the test fails half-way: `weft down` stops what `weft up` left
/// (dropped after `weft up` itself is killed).
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.join("run/state.json").exists() {
            let _ = weft(&["down", "--dir", self.0.to_str().unwrap_or_default()]);
        }
    }
}

/// `weft up` on a copy of an example mesh file in a new directory, its
/// entry proxy on a free port; stopped (and `weft down`) when dropped.
struct UpRun {
    child: tokio::process::Child,
    _cleanup: Down,
    file: PathBuf,
    entry: std::net::SocketAddr,
    weft_dir: PathBuf,
    dir: tempfile::TempDir,
}

impl UpRun {
    /// `example` is a file under examples/; `stderr` where weft up writes.
    fn start(example: &str, stderr: impl FnOnce(&Path) -> Stdio) -> UpRun {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh.yaml");
        std::fs::write(
            &file,
            std::fs::read_to_string(workspace_root().join("examples").join(example)).unwrap(),
        )
        .unwrap();
        let entry: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let weft_dir: PathBuf = dir.path().join(".weft");
        let cleanup = Down(weft_dir.clone());
        let child = tokio::process::Command::new(bin_path("weft"))
            .arg("up")
            .arg(&file)
            .arg("--dir")
            .arg(&weft_dir)
            .args(["--entry", &entry.to_string()])
            .stdout(Stdio::null())
            .stderr(stderr(dir.path()))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        UpRun {
            child,
            _cleanup: cleanup,
            file,
            entry,
            weft_dir,
            dir,
        }
    }
}

#[test]
fn weft_up_refuses_a_mesh_file_with_a_typo_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(
        &file,
        "workloads:\n  square:\n    command: square\n    ports: [{port: 50051}]\n    replicsa: 3\n",
    )
    .unwrap();
    let weft_dir = dir.path().join(".weft");
    let out = weft(&[
        "up",
        file.to_str().unwrap(),
        "--dir",
        weft_dir.to_str().unwrap(),
        "--entry",
        "off",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("line 5") && stderr.contains("unknown field `replicsa`"),
        "{stderr}"
    );
    assert!(!weft_dir.join("run/up.pid").exists(), "nothing started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_up_spreads_calls_scales_live_refuses_a_typo_and_leaves_nothing_on_ctrl_c() {
    let mut run = UpRun::start("square.yaml", |d| {
        std::fs::File::create(d.join("up.err")).unwrap().into()
    });
    let example = std::fs::read_to_string(&run.file).unwrap();
    let (file, entry, weft_dir) = (run.file.clone(), run.entry, run.weft_dir.clone());
    let stderr_path = run.dir.path().join("up.err");
    let dir = &run.dir;
    let root = dir.path().to_path_buf();
    eventually("3 ready replicas", Duration::from_secs(30), || {
        let root = root.clone();
        async move { (replicas(&state(&root)) == ready(&["square-0", "square-1", "square-2"])).then_some(()) }
    })
    .await;

    // Through the entry proxy, by name: every replica answers.
    let channel = channel_via(entry, "square:50051").await;
    let hosts = square_calls(channel.clone(), 90, 3).await;
    let t = tally(hosts.iter().map(String::as_str));
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        ["square-0", "square-1", "square-2"],
        "{t:?}"
    );
    assert!(t.values().all(|&n| n >= 10), "{t:?}");

    // Each proxy has its workload's identity, from weft-control's CA (kept
    // in <dir>/identity, keys the owner's only).
    let s = state(&root);
    let admin: std::net::SocketAddr = s["replicas"][0]["admin"].as_str().unwrap().parse().unwrap();
    let page = eventually("square-0's identity", Duration::from_secs(10), || async move {
        let page = weft_test_support::http_get(admin, "/identity").await.ok()?.1;
        page.contains("identity: spiffe://cluster.local/ns/default/sa/square")
            .then_some(page)
    })
    .await;
    assert!(
        page.contains("dns:square.default.serviceaccount.identity.cluster.local"),
        "{page}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let key = weft_dir.join("identity/issuer.key");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let token = weft_dir.join("run/identity/square.token");
        assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let load_started = Instant::now();
    let load = OpenLoad::start(channel.clone(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // `weft scale square 5`: the two new replicas get calls within 2 s.
    let scaled = Instant::now();
    let out = weft(&["scale", "square", "5", "--dir", weft_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut seen = std::collections::BTreeSet::new();
    while !(seen.contains("square-3") && seen.contains("square-4")) {
        assert!(
            scaled.elapsed() < Duration::from_secs(2),
            "after 2 s the new replicas had no calls; seen {seen:?}"
        );
        seen.extend(square_calls(channel.clone(), 10, 5).await);
    }
    eprintln!("both new replicas answered {:?} after `weft scale`", scaled.elapsed());

    // Every replica's log in one place; `weft logs` shows them by name.
    let out = weft(&["logs", "square", "--no-follow", "--dir", weft_dir.to_str().unwrap()]);
    let logs = String::from_utf8_lossy(&out.stdout);
    for r in ["square-0", "square-4"] {
        assert!(logs.contains(&format!("[{r}] square {r} listening on")), "{logs}");
    }

    // A typo while running: refused, logged with its line; the mesh runs on.
    std::fs::write(&file, example.replace("replicas: 3", "replicsa: 3")).unwrap();
    let err = eventually("the typo to be refused", Duration::from_secs(5), || {
        let p = stderr_path.clone();
        async move {
            let s = std::fs::read_to_string(&p).unwrap_or_default();
            s.contains("change refused").then_some(s)
        }
    })
    .await;
    assert!(
        err.contains("unknown field `replicsa`") && err.contains("line "),
        "{err}"
    );
    assert_eq!(replicas(&state(dir.path())).len(), 5);

    // The file says 2 now: the mesh follows, losing no call.
    std::fs::write(&file, example.replace("replicas: 3", "replicas: 2")).unwrap();
    eventually("2 replicas", Duration::from_secs(20), || {
        let root = root.clone();
        async move { (replicas(&state(&root)) == ready(&["square-0", "square-1"])).then_some(()) }
    })
    .await;
    let ran = load_started.elapsed();
    let records = load.finish().await;
    let failed: Vec<String> = records
        .iter()
        .filter_map(|r| {
            r.result
                .as_ref()
                .err()
                .map(|e| format!("{:?} {}", e.code(), e.message()))
        })
        .collect();
    assert!(
        records.len() as f64 > 200.0 * ran.as_secs_f64() * 0.8,
        "only {} calls in {ran:?}",
        records.len()
    );
    assert_eq!(failed, Vec::<String>::new());

    // Ctrl-C: everything it started stops.
    let all = pids(&state(dir.path()));
    assert_eq!(all.len(), 2 * 2 + 2, "{all:?}");
    assert!(all.iter().all(|&p| alive(p)));
    let pid = run.child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), run.child.wait())
        .await
        .expect("weft up stops within 30 s")
        .unwrap();
    assert!(status.success(), "{status}");
    let left: Vec<u64> = all.into_iter().filter(|&p| alive(p)).collect();
    assert_eq!(left, Vec::<u64>::new(), "processes left behind");
    assert!(!weft_dir.join("run/up.pid").exists());
    assert!(!weft_dir.join("run/weft.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_up_stops_sending_to_a_replica_that_reports_not_serving() {
    let mut run = UpRun::start("square.yaml", |_| Stdio::null());
    let entry = run.entry;
    let dir = &run.dir;
    let root = dir.path().to_path_buf();
    eventually("3 ready replicas", Duration::from_secs(30), || {
        let root = root.clone();
        async move { (replicas(&state(&root)) == ready(&["square-0", "square-1", "square-2"])).then_some(()) }
    })
    .await;
    let app_of = |name: &str| -> String {
        state(dir.path())["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["app"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let set = |spec: &str| {
        let out = std::process::Command::new(bin_path("square-client"))
            .args(["--target", &app_of("square-1"), "--set-behavior", spec])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let channel = channel_via(entry, "square:50051").await;

    // square-1 says NOT_SERVING (its calls still work): within a second the
    // mesh sends it nothing new.
    set("not_serving=1");
    let t = Instant::now();
    eventually("square-1 out of the endpoints", Duration::from_secs(1), || {
        let root = root.clone();
        async move {
            let r = replicas(&state(&root));
            r.iter()
                .any(|(n, p)| n == "square-1" && p == "not serving")
                .then_some(())
        }
    })
    .await;
    eprintln!("square-1 out of the endpoints {:?} after NOT_SERVING", t.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await; // the entry proxy hears it (measured: milliseconds)
    let hosts = square_calls(channel.clone(), 90, 3).await;
    let t = tally(hosts.iter().map(String::as_str));
    assert_eq!(t.keys().collect::<Vec<_>>(), ["square-0", "square-2"], "{t:?}");

    // SERVING again: back.
    set("");
    eventually("square-1 back", Duration::from_secs(5), || {
        let channel = channel.clone();
        async move {
            square_calls(channel, 30, 3)
                .await
                .iter()
                .any(|h| h == "square-1")
                .then_some(())
        }
    })
    .await;

    let pid = run.child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), run.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

/// examples/square-policy.yaml, as a user runs it: `frontend` is allowed
/// to call Square, `intruder` is denied, both counted by square's proxies;
/// an edit of the policy applies live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_up_enforces_the_policy_scene_and_applies_an_edit_live() {
    let run = UpRun::start("square-policy.yaml", |_| Stdio::null());
    let (file, entry, dir) = (&run.file, run.entry, &run.dir);
    let example = std::fs::read_to_string(file).unwrap();
    let root = dir.path().to_path_buf();
    eventually("the square replicas ready", Duration::from_secs(30), || {
        let root = root.clone();
        async move {
            let r = replicas(&state(&root));
            (r.iter()
                .filter(|(n, p)| n.starts_with("square-") && p == "ready")
                .count()
                == 2)
                .then_some(())
        }
    })
    .await;
    let admins: Vec<std::net::SocketAddr> = state(dir.path())["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"].as_str().unwrap_or_default().starts_with("square-"))
        .map(|r| r["admin"].as_str().unwrap().parse().unwrap())
        .collect();
    let count = |decision: &'static str, who: &'static str| {
        let admins = admins.clone();
        async move {
            let mut n = 0.0;
            for a in admins {
                let m = weft_test_support::http_get(a, "/metrics")
                    .await
                    .map(|r| r.1)
                    .unwrap_or_default();
                n += weft_test_support::metric(
                    &m,
                    "weft_inbound_authz_total",
                    &[("decision", decision), ("client_id", who)],
                );
            }
            n
        }
    };
    const FRONTEND: &str = "frontend.default.serviceaccount.identity.cluster.local";
    const INTRUDER: &str = "intruder.default.serviceaccount.identity.cluster.local";
    eventually("frontend allowed, intruder denied", Duration::from_secs(30), || async {
        (count("allow", FRONTEND).await >= 3.0 && count("deny", INTRUDER).await >= 3.0).then_some(())
    })
    .await;
    assert_eq!(count("allow", INTRUDER).await, 0.0);
    // From outside, through the entry proxy (identity weft-entry): allowed.
    let hosts = square_calls(channel_via(entry, "square:50051").await, 10, 2).await;
    assert_eq!(hosts.len(), 10, "{hosts:?}");

    // The intruder is let in by an edit of the file: live, no restart.
    std::fs::write(
        file,
        example.replace(
            "identities: [frontend.default.serviceaccount.identity.cluster.local]",
            "identities: [frontend.default.serviceaccount.identity.cluster.local, intruder.default.serviceaccount.identity.cluster.local]",
        ),
    )
    .unwrap();
    eventually("the intruder allowed", Duration::from_secs(15), || async {
        (count("allow", INTRUDER).await >= 2.0).then_some(())
    })
    .await;
}
