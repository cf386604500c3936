//! In-process meshes: weft proxies, square replicas and discovery files.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tonic::transport::{Channel, Endpoint};
use weft_proxy::{Config, Listeners, Proxy, config::Listen};

/// A discovery file in a temporary directory, rewritten atomically.
#[derive(Debug)]
pub struct DiscoveryFile {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl DiscoveryFile {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, "services: {}\n").expect("write discovery file");
        DiscoveryFile { path, _dir: dir }
    }

    /// Writes one service's endpoints (name, address) replacing the file.
    pub fn set(&self, authority: &str, endpoints: &[(&str, SocketAddr)]) {
        let mut y = format!("services:\n  {authority}:\n    endpoints:\n");
        if endpoints.is_empty() {
            y = format!("services:\n  {authority}:\n    endpoints: []\n");
        }
        for (name, addr) in endpoints {
            y.push_str(&format!("      - address: {addr}\n        name: {name}\n"));
        }
        self.write(&y);
    }

    /// Replaces the file's text atomically (write + rename).
    pub fn write(&self, yaml: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, yaml).expect("write discovery file");
        std::fs::rename(&tmp, &self.path).expect("rename discovery file");
    }
}

impl Default for DiscoveryFile {
    fn default() -> Self {
        Self::new()
    }
}

/// A weft proxy running in this process on ephemeral ports.
#[derive(Debug)]
pub struct TestProxy {
    pub proxy: Proxy,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl TestProxy {
    /// Starts a proxy with the given extra flags; listeners bind `127.0.0.1:0`.
    pub async fn start(args: &[&str]) -> TestProxy {
        let mut argv = vec![
            "weft-proxy",
            "--outbound-listen",
            "127.0.0.1:0",
            "--inbound-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ];
        argv.extend_from_slice(args);
        let config = Config::from_args(argv).expect("valid test config");
        assert!(matches!(config.outbound_listen, Listen::On(_)));
        let listeners = Listeners::bind(&config).await.expect("bind");
        let proxy = Proxy::spawn(config, listeners, None);
        TestProxy {
            outbound: proxy.outbound_addr.expect("outbound"),
            inbound: proxy.inbound_addr.expect("inbound"),
            admin: proxy.admin_addr.expect("admin"),
            proxy,
        }
    }

    /// A proxy that balances `authority` over the endpoints in `file`.
    pub async fn with_discovery(file: &DiscoveryFile, extra: &[&str]) -> TestProxy {
        let path = file.path.to_str().expect("utf-8 path").to_string();
        let mut args = vec!["--discovery-file", path.as_str()];
        args.extend_from_slice(extra);
        Self::start(&args).await
    }

    /// The proxy's Prometheus metrics.
    pub async fn metrics(&self) -> String {
        crate::http_get(self.admin, "/metrics").await.expect("GET /metrics").1
    }

    /// The proxy's balancer state (admin /balancers).
    pub async fn balancers(&self) -> serde_json::Value {
        let body = crate::http_get(self.admin, "/balancers")
            .await
            .expect("GET /balancers")
            .1;
        serde_json::from_str(&body).expect("balancers JSON")
    }

    /// One gRPC channel (one HTTP/2 connection) to the outbound listener,
    /// naming `authority` as the target.
    pub async fn channel(&self, authority: &str) -> Channel {
        channel_via(self.outbound, authority).await
    }
}

/// One HTTP/2 connection to `addr` that sends `:authority: authority`.
pub async fn channel_via(addr: SocketAddr, authority: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .origin(format!("http://{authority}").parse().expect("authority"))
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect")
}
