//! The shipped binaries as a user runs them: `weft demo`, and weft-proxy's
//! start-up errors and shutdown.

use std::time::Duration;

use weft_test_support::{bin_path, process};

/// Parses the demo's summary rows for one phase: name → share in percent.
fn phase_shares(stderr: &str, phase: &str) -> Vec<(String, f64)> {
    let start = stderr
        .find(phase)
        .unwrap_or_else(|| panic!("phase {phase} in:\n{stderr}"));
    stderr[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  square-"))
        .map(|l| {
            let name = l.split_whitespace().next().unwrap().to_string();
            let pct = l.split_whitespace().find(|w| w.ends_with('%')).unwrap();
            (name, pct.trim_end_matches('%').parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_demo_shows_the_problem_and_the_fix() {
    let out = tokio::process::Command::new(bin_path("weft"))
        // 600 calls a phase: over 300 the binomial spread alone (±2.7
        // points) leaves little room between a third and the bounds below.
        .args(["demo", "--calls", "600"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft demo failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One JSON line per call, tagged with its phase.
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1800);
    for l in &lines {
        assert_eq!(l["result"].as_i64().unwrap(), l["input"].as_i64().unwrap().pow(2));
    }

    let a = phase_shares(&stderr, "(a)");
    assert_eq!(a.len(), 3, "{stderr}");
    assert_eq!(
        a.iter().filter(|(_, p)| *p == 100.0).count(),
        1,
        "(a) one replica serves every call:\n{stderr}"
    );
    let b = phase_shares(&stderr, "(b)");
    assert!(
        b.iter().all(|(_, p)| (25.0..=42.0).contains(p)),
        "(b) spread:\n{stderr}"
    );
    let c = phase_shares(&stderr, "(c)");
    let slow = c.iter().find(|(n, _)| n == "square-2").unwrap().1;
    assert!(slow < 10.0, "(c) the slow replica served {slow}%:\n{stderr}");
}

#[tokio::test]
async fn weft_proxy_rejects_a_bad_flag_with_exit_64_naming_it() {
    let out = tokio::process::Command::new(bin_path("weft-proxy"))
        .args(["--detect-timeout", "10", "--admin-listen", "off"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--detect-timeout") && err.contains("needs a unit"),
        "{err}"
    );

    let out = tokio::process::Command::new(bin_path("weft-proxy"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--discovery-file"));
}

#[tokio::test]
async fn absurd_durations_and_a_looping_app_address_are_refused_at_start() {
    let run = |args: &'static [&'static str]| async move {
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::process::Command::new(bin_path("weft-proxy"))
                .args(args)
                .args(["--admin-listen", "off", "--outbound-listen", "127.0.0.1:0"])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("refused at start, not left running")
        .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run(&["--detect-timeout", "99999999999h", "--inbound-listen", "off"]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("--detect-timeout") && err.contains("out of range"),
        "{err}"
    );
    // The app's address is the inbound listener itself (checked before binding).
    let (code, err) = run(&[
        "--inbound-listen",
        "127.0.0.1:4999",
        "--inbound-forward",
        "127.0.0.1:4999",
    ])
    .await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("would loop"), "{err}");
}

#[tokio::test]
async fn weft_proxy_fails_loudly_on_a_port_conflict() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tokio::process::Command::new(bin_path("weft-proxy"))
        .args([
            "--outbound-listen",
            &addr,
            "--inbound-listen",
            "off",
            "--admin-listen",
            "off",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("outbound"), "{err}");
}

#[tokio::test]
async fn weft_proxy_exits_cleanly_on_sigterm() {
    let (mut proxy, _outbound, admin) = process::weft_proxy(&[]).await;
    process::wait_listening(admin.expect("admin address")).await;
    proxy.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(5), proxy.child.wait())
        .await
        .expect("exits promptly")
        .unwrap();
    assert!(status.success(), "{status}");
}
