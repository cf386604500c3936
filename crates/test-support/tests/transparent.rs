//! Transparent mode for real: an app in a network namespace dials a
//! service's virtual IP; an iptables REDIRECT rule (what the pod's init step
//! installs) sends the connection to weft's outbound port; weft reads the
//! original destination (SO_ORIGINAL_DST) and balances each request over
//! the service's endpoints. Needs root, ip and iptables: in CI it must run.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use weft_test_support::{bin_path, have, is_root, process, require, tally};

/// UID the proxy runs as; the redirect rules exempt its own connections.
const PROXY_UID: &str = "2102";

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to the host by a veth pair; removed on drop.
struct Netns {
    name: String,
    host_ip: String,
}

impl Netns {
    fn create(tag: &str) -> Netns {
        let id = std::process::id() % 200 + 20;
        let name = format!("weft-{tag}-{}", std::process::id());
        let (host_if, ns_if) = (format!("wh{tag}{id}"), format!("wn{tag}{id}"));
        let (host_ip, ns_ip) = (format!("10.231.{id}.1"), format!("10.231.{id}.2"));
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &host_if])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            host_ip: host_ip.clone(),
        };
        run(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        run(&["ip", "link", "set", &ns_if, "netns", &name]);
        run(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        run(&["ip", "link", "set", &host_if, "up"]);
        run(&[
            "ip",
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            &ns_if,
        ]);
        run(&["ip", "netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
        run(&["ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        run(&[
            "ip", "netns", "exec", &name, "ip", "route", "add", "default", "via", &host_ip,
        ]);
        ns
    }

    /// The outbound redirect a pod's init step installs: every TCP
    /// connection the app opens goes to the proxy's port 4140, except the
    /// proxy's own (by UID) and loopback traffic.
    fn install_outbound_redirect(&self) {
        for rule in [
            vec!["-N", "WEFT_OUTPUT"],
            vec![
                "-A",
                "WEFT_OUTPUT",
                "-m",
                "owner",
                "--uid-owner",
                PROXY_UID,
                "-j",
                "RETURN",
            ],
            vec!["-A", "WEFT_OUTPUT", "-o", "lo", "-j", "RETURN"],
            vec!["-A", "WEFT_OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "4140"],
            vec!["-A", "OUTPUT", "-p", "tcp", "-j", "WEFT_OUTPUT"],
        ] {
            let mut args = vec!["ip", "netns", "exec", &self.name, "iptables", "-t", "nat"];
            args.extend(rule);
            run(&args);
        }
    }

    fn exec(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn can_run() -> bool {
    require(is_root(), "root (network namespaces and iptables)")
        && require(
            have("ip") && have("iptables") && have("setpriv"),
            "ip, iptables and setpriv (apt: iproute2 iptables util-linux)",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_dialling_the_service_ip_is_balanced_by_weft() {
    if !can_run() {
        return;
    }
    let ns = Netns::create("t");
    ns.install_outbound_redirect();

    // Three replicas on the host side of the veth, and a server-speaks-first
    // service on an opaque port.
    let (_replicas, endpoints) = start_replicas(&ns).await;
    let vip = "10.96.77.10:80";
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!("services:\n  square.default:80:\n    addresses: [{vip}]\n    endpoints:\n{endpoints}"),
    )
    .unwrap();
    // The proxy runs unprivileged, as its own UID.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&mesh, std::fs::Permissions::from_mode(0o644)).unwrap();
    let banner_addr = start_banner(&ns).await;
    let proxy = start_proxy(&ns, &mesh, banner_addr.port());

    // The app: a plain gRPC client that knows nothing of weft, dialling the VIP.
    let out = app_calls(&ns, vip).await;
    let hosts: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["hostname"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let t = tally(hosts.iter().map(String::as_str));
    eprintln!("through the VIP, transparently: {t:?}");
    assert_eq!(t.len(), 3, "one connection to the VIP reaches every replica: {t:?}");
    // Every replica gets a real share (fairness between equal replicas is
    // checked in balancing.rs; here the replicas sit behind a veth pair and
    // the latency-aware balancer may favour the quicker ones).
    for (h, n) in &t {
        assert!(*n >= 90, "{h} served {n} of 600");
    }

    // Opaque, server-speaks-first: the banner arrives at once (the port skips
    // detection), and binary data round-trips byte for byte.
    let out = opaque_round_trip(&ns, banner_addr);
    assert!(
        out.status.success(),
        "opaque check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let waited: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(waited < 1.0, "the banner took {waited}s (detection would wait 3s)");

    // The proxy saw both: balanced h2 requests and an opaque connection.
    let m = proxy_metrics(&ns);
    assert!(
        weft_test_support::metric(&m, "weft_detect_total", &[("outcome", "opaque_port")]) >= 1.0,
        "{m}"
    );
    assert!(
        weft_test_support::metric(
            &m,
            "weft_requests_total",
            &[("target", "square.default:80"), ("grpc_method", "Square")]
        ) >= 600.0,
        "{m}"
    );
    drop(proxy);
}

/// Three square replicas on the host side of the veth; their lines for the
/// discovery file.
async fn start_replicas(ns: &Netns) -> (Vec<Killed>, String) {
    let mut replicas = Vec::new();
    let mut endpoints = String::new();
    for i in 0..3 {
        let port = process::free_port();
        let addr: SocketAddr = format!("{}:{port}", ns.host_ip).parse().unwrap();
        let child = Command::new(bin_path("square"))
            .args(["--listen", &addr.to_string(), "--name", &format!("square-{i}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        replicas.push(Killed(child));
        process::wait_listening(addr).await;
        endpoints.push_str(&format!("      - address: {addr}\n        name: square-{i}\n"));
    }
    (replicas, endpoints)
}

/// A server-speaks-first service: says HELLO, then echoes.
async fn start_banner(ns: &Netns) -> SocketAddr {
    let banner = tokio::net::TcpListener::bind(format!("{}:0", ns.host_ip))
        .await
        .unwrap();
    let banner_addr = banner.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = banner.accept().await {
            tokio::spawn(async move {
                s.write_all(b"HELLO\n").await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    banner_addr
}

/// weft-proxy in the namespace, as its own unprivileged UID (exempted from
/// the redirect), with the banner's port marked opaque.
fn start_proxy(ns: &Netns, mesh: &std::path::Path, opaque_port: u16) -> Killed {
    Killed(
        ns.exec(std::path::Path::new("setpriv"))
            .args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"])
            .arg(bin_path("weft-proxy"))
            .args([
                "--outbound-listen",
                "127.0.0.1:4140",
                "--inbound-listen",
                "off",
                "--admin-listen",
                "127.0.0.1:4191",
            ])
            .args(["--discovery-file", mesh.to_str().unwrap()])
            .args(["--opaque-ports", &opaque_port.to_string(), "--detect-timeout", "3s"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// 600 calls from a plain gRPC client in the namespace, dialling the VIP;
/// its JSON lines once all of them went through.
async fn app_calls(ns: &Netns, vip: &'static str) -> String {
    let client = bin_path("square-client");
    weft_test_support::eventually("the app's calls to go through", Duration::from_secs(10), || {
        let mut cmd = ns.exec(&client);
        cmd.args([
            "--target",
            vip,
            "--count",
            "600",
            "--concurrency",
            "4",
            "--timeout-ms",
            "5000",
        ]);
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .unwrap()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            (out.status.success() && !text.contains("\"error\"") && text.lines().count() == 600).then_some(text)
        }
    })
    .await
}

/// From the namespace: the banner's wait (printed, in seconds), then 1 MiB
/// of binary through the opaque connection and back.
fn opaque_round_trip(ns: &Netns, banner_addr: SocketAddr) -> std::process::Output {
    let script = format!(
        r#"
import socket, time, os, sys
t = time.time()
s = socket.create_connection(("{ip}", {port}), timeout=5)
assert s.recv(6) == b"HELLO\n"
waited = time.time() - t
data = bytes(range(256)) * 4096
s.sendall(data)
s.shutdown(socket.SHUT_WR)
back = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    back += chunk
assert back == data, (len(back), len(data))
print(f"{{waited:.3f}}")
"#,
        ip = banner_addr.ip(),
        port = banner_addr.port()
    );
    ns.exec(std::path::Path::new("python3"))
        .args(["-c", &script])
        .output()
        .unwrap()
}

/// The proxy's /metrics, read from inside the namespace.
fn proxy_metrics(ns: &Netns) -> String {
    let metrics = ns
        .exec(std::path::Path::new("python3"))
        .args([
            "-c",
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:4191/metrics').read().decode())",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&metrics.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_connection_tries_another_endpoint_when_one_is_down() {
    if !can_run() {
        return;
    }
    let ns = Netns::create("o");
    ns.install_outbound_redirect();
    let banner_addr = start_banner(&ns).await;
    // A second endpoint of the service that nothing listens on.
    let dead = format!("{}:{}", ns.host_ip, process::free_port());
    let vip = "10.96.77.20:7000";
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!("services:\n  banner.default:7000:\n    addresses: [{vip}]\n    endpoints: [{dead}, {banner_addr}]\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&mesh, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _proxy = start_proxy(&ns, &mesh, 7000);
    let script = r#"
import socket, time
deadline = time.time() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", 4191), timeout=1).close()
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.05)
ok = 0
for _ in range(20):
    s = socket.create_connection(("10.96.77.20", 7000), timeout=5)
    if s.recv(6) == b"HELLO\n":
        ok += 1
    s.close()
print(ok)
"#;
    let out = ns
        .exec(std::path::Path::new("python3"))
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ok: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(ok, 20, "{ok} of 20 opaque connections reached the live endpoint");
}
