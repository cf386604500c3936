//! Configuration: command-line flags and `WEFT_*` environment variables,
//! each parsed by one function into a validated value. This is the only
//! module that reads flags or the environment.

use std::{collections::BTreeSet, fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Parser, ValueEnum};

/// weft-proxy: a transparent sidecar that balances every HTTP/2, gRPC and
/// HTTP/1.1 request across a service's endpoints.
///
/// Outbound (port 4140) the app's connections arrive either redirected by
/// iptables (transparent mode: the target is the connection's original
/// destination) or dialled explicitly (the target is the request's
/// `:authority`/`Host`). The proxy detects the protocol; HTTP/2 and HTTP/1.1
/// requests are balanced one by one (power of two choices over peak-EWMA
/// latency by default), anything else is forwarded as opaque TCP.
///
/// Inbound (port 4143) connections are forwarded to the local app over pooled
/// connections. The admin port (4191) serves /metrics, /ready, /live,
/// /config, /balancers and /shutdown.
///
/// Every flag can also be set with the environment variable shown; given
/// twice, the last one counts. Durations take a unit: 500us, 250ms, 10s, 2m.
#[derive(Parser, Clone, Debug)]
#[command(name = "weft-proxy", version, verbatim_doc_comment, args_override_self = true)]
pub struct Config {
    /// Outbound listener address, or `off`.
    #[arg(long, env = "WEFT_OUTBOUND_LISTEN", default_value = "127.0.0.1:4140")]
    pub outbound_listen: Listen,

    /// Inbound listener address, or `off`.
    #[arg(long, env = "WEFT_INBOUND_LISTEN", default_value = "0.0.0.0:4143")]
    pub inbound_listen: Listen,

    /// Admin listener address (metrics, readiness, shutdown), or `off`.
    #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value = "0.0.0.0:4191")]
    pub admin_listen: Listen,

    /// Where inbound traffic goes: the local app's address. Without it the
    /// inbound listener is transparent and forwards each connection to its
    /// original destination, which must be an address of this host (never
    /// one of the proxy's own listeners); a connection without one is
    /// refused. The inbound port is never a relay.
    #[arg(long, env = "WEFT_INBOUND_FORWARD")]
    pub inbound_forward: Option<SocketAddr>,

    /// YAML file mapping each service authority to its endpoints; re-read
    /// when it changes (checked every 250 ms). For a proxy on its own; in a
    /// mesh, use --control-plane.
    #[arg(long, env = "WEFT_DISCOVERY_FILE", conflicts_with = "control_plane")]
    pub discovery_file: Option<PathBuf>,

    /// The control plane (weft-control) to ask for services' endpoints,
    /// `host:port`. Each service is watched from its first request until
    /// its balancer goes idle; while the control plane is unreachable the
    /// proxy serves what it last knew and reconnects with backoff.
    #[arg(long, env = "WEFT_CONTROL_PLANE", value_name = "ADDR")]
    pub control_plane: Option<String>,

    /// The file holding this workload's identity token (`weft up` writes
    /// one per workload, readable by it only): with it the proxy makes a
    /// key, sends weft-control a CSR and the token, and keeps a short-lived
    /// certificate for its identity, renewed at 70 % of its lifetime. Needs
    /// --control-plane. `/identity` on the admin port shows it.
    #[arg(long, env = "WEFT_IDENTITY_TOKEN_FILE", requires = "control_plane")]
    pub identity_token_file: Option<PathBuf>,

    /// Inbound ports that take mutual TLS from other proxies only: a
    /// plaintext connection to one is closed, logged and counted
    /// (`weft_tls_handshakes_total{direction="inbound",result="plaintext_refused"}`).
    /// The port is the app's (the original destination, or
    /// --inbound-forward's); comma separated, or `all`. Other ports take
    /// plaintext from outside the mesh too. Needs --identity-token-file.
    #[arg(
        long,
        env = "WEFT_INBOUND_MTLS_REQUIRED",
        value_name = "PORTS",
        default_value = "",
        requires = "identity_token_file"
    )]
    pub inbound_mtls_required: MtlsRequired,

    /// Watch this workload's authorization policy from the control plane
    /// (weft.policy.v1): every inbound request, and every opaque inbound
    /// connection, is checked against it before the app sees a byte; a
    /// denied gRPC call gets PERMISSION_DENIED, HTTP 403, TCP is closed.
    /// Each change applies at once. `/policy` on the admin port shows it.
    /// Needs --control-plane.
    #[arg(
        long,
        env = "WEFT_POLICY_WORKLOAD",
        value_name = "WORKLOAD",
        requires = "control_plane"
    )]
    pub policy_workload: Option<String>,

    /// What the inbound side allows before a policy arrives, or with no
    /// --policy-workload: all-unauthenticated, all-authenticated (a mesh
    /// identity), cluster-authenticated (that, or a private address),
    /// deny, audit (allow, counting what is not authenticated). Ports in
    /// --inbound-mtls-required deny until the first policy (fail closed).
    #[arg(
        long,
        env = "WEFT_INBOUND_DEFAULT_POLICY",
        value_name = "POLICY",
        default_value = "all-unauthenticated"
    )]
    pub inbound_default_policy: weft_policy::DefaultPolicy,

    /// The port the workload's policy names for the app (its server's
    /// port), when the app listens on another one (`weft up` runs each
    /// replica on its own port behind --inbound-forward). Default: the
    /// app's own port.
    #[arg(long, env = "WEFT_INBOUND_POLICY_PORT", value_name = "PORT")]
    pub inbound_policy_port: Option<u16>,

    /// This proxy's workload (e.g. `square-1`), told to the control plane
    /// for its logs.
    #[arg(long, env = "WEFT_WORKLOAD")]
    pub workload: Option<String>,

    /// How each request picks an endpoint.
    #[arg(long, env = "WEFT_BALANCER", value_enum, default_value_t = Algorithm::PeakEwma)]
    pub balancer: Algorithm,

    /// Peak-EWMA: the time constant of sparse latency samples (a sample
    /// after an interval Δt weighs at least 1 − e^(−Δt/τ)), and the longest
    /// interval between probe requests to an endpoint avoided for its
    /// latency or failures.
    #[arg(long, env = "WEFT_EWMA_DECAY", default_value = "10s", value_parser = parse_duration)]
    pub ewma_decay: Duration,

    /// Check the app's health with grpc.health.v1 (Watch, else Check each
    /// second) for SERVICE ("" or no value: the whole server); while the app
    /// says NOT_SERVING, /ready answers 503, so that the mesh (weft up, and
    /// the control plane) stops sending it calls. An app without a health
    /// service counts as serving. Off unless given.
    #[arg(long, env = "WEFT_APP_HEALTH_CHECK", value_name = "SERVICE", num_args = 0..=1, default_missing_value = "")]
    pub app_health_check: Option<String>,

    /// Overload protection: the most requests the inbound side passes to
    /// the app at once; beyond, requests are shed at once with gRPC
    /// RESOURCE_EXHAUSTED (HTTP 503), so that callers go elsewhere before
    /// the app falls over. 0: no limit (the default).
    #[arg(long, env = "WEFT_INBOUND_MAX_CONCURRENCY", default_value_t = 0)]
    pub inbound_max_concurrency: u32,

    /// Retries (outbound, HTTP/2 engine `splice`): gRPC status codes whose
    /// trailers-only answers are retried on another pick, comma separated,
    /// or `off` (a route in the mesh file may say otherwise for its
    /// requests). Only a request the proxy kept whole (`--retry-buffer-*`) and of
    /// which nothing reached the client yet; at most 2 retries per request,
    /// with `grpc-previous-rpc-attempts` set; within the retry budget.
    #[arg(long, env = "WEFT_RETRY_CODES", default_value = "14", value_parser = parse_codes)]
    pub retry_codes: Codes,

    /// The gRPC status codes that count as the endpoint's failure (for
    /// failure accrual and its latency score), comma separated, or `off`:
    /// by default UNKNOWN, INTERNAL, UNAVAILABLE and DATA_LOSS, never
    /// application answers such as NOT_FOUND. Resets, broken connections and
    /// deadlines always count.
    #[arg(long, env = "WEFT_FAILURE_CODES", default_value = "2,13,14,15", value_parser = parse_codes)]
    pub failure_codes: Codes,

    /// The retry budget: retries may add at most this share of a service's
    /// requests, in percent ...
    #[arg(long, env = "WEFT_RETRY_BUDGET_PERCENT", default_value_t = 20, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub retry_budget_percent: u16,

    /// ... plus this many retries a second, whatever the rate.
    #[arg(long, env = "WEFT_RETRY_MIN_PER_SECOND", default_value_t = 10)]
    pub retry_min_per_second: u32,

    /// Failure accrual: failures in a row that take an endpoint out of
    /// service (it is then probed with single requests after 1 s, 2 s, 4 s
    /// ... until one succeeds); a success rate under 50 % over 10 s (20
    /// requests or more) does the same. Failures: UNAVAILABLE, INTERNAL,
    /// UNKNOWN, DATA_LOSS, HTTP 5xx, resets, refused connections, expired
    /// deadlines. 0 turns it off.
    #[arg(long, env = "WEFT_ACCRUAL_FAILURES", default_value_t = 5)]
    pub accrual_failures: u32,

    /// Failure accrual: the longest an endpoint stays out between probes.
    #[arg(long, env = "WEFT_ACCRUAL_BACKOFF_MAX", default_value = "30s", value_parser = parse_duration)]
    pub accrual_backoff_max: Duration,

    /// Failure accrual's panic threshold: the largest share of a service's
    /// endpoints out at once, in percent (one of two or more may always
    /// go). Beyond it failing endpoints stay in: when most fail, balancing
    /// over all beats sending everything to the last one.
    #[arg(long, env = "WEFT_MAX_EJECTED_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_ejected_percent: u8,

    /// How long to wait for a client's first bytes before treating the
    /// connection as opaque TCP (server-speaks-first protocols).
    #[arg(long, env = "WEFT_DETECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// Destination ports forwarded as opaque TCP with no protocol detection,
    /// comma separated (empty for none).
    #[arg(
        long,
        env = "WEFT_OPAQUE_PORTS",
        default_value = "25,587,3306,4444,5432,6379,9300,11211"
    )]
    pub opaque_ports: PortSet,

    /// How long a request waits for a ready endpoint before it fails with
    /// gRPC UNAVAILABLE (HTTP 503).
    #[arg(long, env = "WEFT_FAIL_FAST_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub fail_fast_timeout: Duration,

    /// The same on the inbound side, where the one endpoint is the local
    /// app: when it refuses connections (it crashed, or is restarting),
    /// callers' proxies are better off trying another replica soon.
    #[arg(long, env = "WEFT_INBOUND_FAIL_FAST_TIMEOUT", default_value = "250ms", value_parser = parse_duration)]
    pub inbound_fail_fast_timeout: Duration,

    /// TCP connect timeout towards endpoints and the local app.
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Safety bound on concurrent HTTP/2 streams per client connection (the
    /// proxy's SETTINGS_MAX_CONCURRENT_STREAMS). Upstream, the endpoint's own
    /// limit is always honoured; the proxy adds none.
    #[arg(long, env = "WEFT_MAX_CONCURRENT_STREAMS", default_value_t = 10_000)]
    pub max_concurrent_streams: u32,

    /// Largest request header block accepted, in bytes (HTTP/2 header list;
    /// HTTP/1.1 request head).
    #[arg(long, env = "WEFT_MAX_HEADER_BYTES", default_value_t = 65_536)]
    pub max_header_bytes: u32,

    /// Bytes one client connection may hold in the proxy: request bytes no
    /// endpoint has taken yet (beyond, the client gets no more connection
    /// window) and response bytes it has not read (beyond, it is
    /// disconnected with GOAWAY ENHANCE_YOUR_CALM). HTTP/2. Units: B, KiB, MiB.
    #[arg(long, env = "WEFT_CONNECTION_BUFFER_LIMIT", default_value = "8MiB", value_parser = parse_bytes)]
    pub connection_buffer_limit: usize,

    /// A request is kept, to be sent again (as a retry, or elsewhere when an
    /// endpoint never processed it), while its body is at most this size;
    /// a bigger one is never retried. HTTP/2 (splice engine). Linkerd's is 64 KiB.
    #[arg(long, env = "WEFT_RETRY_BUFFER_PER_REQUEST", default_value = "256KiB", value_parser = parse_bytes)]
    pub retry_buffer_per_request: usize,

    /// What the kept requests of one client connection may hold in all;
    /// beyond, a new request is simply not kept (so not retried): a client
    /// cannot make the proxy hold more than this for retries.
    #[arg(long, env = "WEFT_RETRY_BUFFER_PER_CONNECTION", default_value = "4MiB", value_parser = parse_bytes)]
    pub retry_buffer_per_connection: usize,

    /// Control frames (RST_STREAM, PING, SETTINGS, PRIORITY, empty DATA,
    /// refused streams) an HTTP/2 client may send in a burst; the allowance
    /// refills at a tenth of this per second and by one per request
    /// answered. Beyond it (rapid reset, PING floods): GOAWAY ENHANCE_YOUR_CALM.
    #[arg(long, env = "WEFT_MAX_CONTROL_FRAMES", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(10..))]
    pub max_control_frames: u32,

    /// Send a PING on an HTTP/2 connection (to a client or an endpoint) after
    /// this long without a frame from the peer, or `off`.
    #[arg(long, env = "WEFT_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = parse_toggle)]
    pub keepalive_interval: Toggle,

    /// Close the connection when nothing arrives this long after a keepalive
    /// PING: the peer vanished (its requests in flight fail, an endpoint
    /// reconnects).
    #[arg(long, env = "WEFT_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Send an HTTP/2 client connection away (GOAWAY NO_ERROR) after this
    /// long without an open stream, or `off`.
    #[arg(long, env = "WEFT_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_toggle)]
    pub idle_timeout: Toggle,

    /// How long a request's header block may take to arrive whole (HTTP/2:
    /// HEADERS and its CONTINUATION frames; HTTP/1.1: the request head).
    #[arg(long, env = "WEFT_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// TCP_USER_TIMEOUT on every connection: how long sent data may go
    /// unacknowledged before the kernel drops the connection, or `off`.
    /// (TCP keepalive probes follow --keepalive-interval.)
    #[arg(long, env = "WEFT_TCP_USER_TIMEOUT", default_value = "30s", value_parser = parse_toggle)]
    pub tcp_user_timeout: Toggle,

    /// Connections each listener (inbound, outbound) holds at once; beyond,
    /// a new connection is closed as soon as it is accepted.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Inbound connections one client address holds at once; beyond, its
    /// new connections are closed as soon as they are accepted (other
    /// clients are not affected). Outbound the one client is the local app:
    /// only --max-connections applies.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_client: u32,

    /// HTTP/1.1 connections the proxy keeps to one endpoint, busy or idle;
    /// a request beyond waits for one (up to --fail-fast-timeout).
    #[arg(long, env = "WEFT_HTTP1_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub http1_max_connections: u32,

    /// How long an HTTP/1.1 connection to an endpoint may stay idle in the
    /// pool: shorter than servers keep one (Node's 5 s), so that a request
    /// never meets a connection the server is closing.
    #[arg(long, env = "WEFT_HTTP1_IDLE_TIMEOUT", default_value = "4s", value_parser = parse_duration)]
    pub http1_idle_timeout: Duration,

    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// A service's balancer (its endpoint connections and latency state) is
    /// dropped after this long without requests.
    #[arg(long, env = "WEFT_BALANCER_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub balancer_idle_timeout: Duration,

    /// Data-path worker threads. 1 keeps the proxy on one core (a sidecar's
    /// usual budget).
    #[arg(long, env = "WEFT_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// The HTTP/2 data path: `splice` (weft's own, the default) or `hyper`
    /// (the general-purpose library, kept for comparison).
    #[arg(long, env = "WEFT_H2_ENGINE", value_enum, default_value_t = H2Engine::Splice)]
    pub h2_engine: H2Engine,

    /// Log filter: a level (`info`), or `target=level` pairs, e.g.
    /// `warn,weft_proxy=debug`.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,

    /// Token that admin actions changing state (POST /shutdown) require, as
    /// `Authorization: Bearer <token>`, from loopback. Without it they are off.
    #[arg(long, env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl Config {
    /// The defaults, as if started with no flags and no environment.
    pub fn defaults() -> Self {
        // Parsing an empty command line can only fail if a default is
        // invalid, which the unit tests below rule out.
        #[allow(clippy::expect_used)]
        Self::try_parse_from(["weft-proxy"]).expect("the default configuration is valid")
    }

    /// Parses a command line (the first item is the program name), then
    /// [`Config::check`]s it.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)?.checked()
    }

    /// Parses the process's flags and environment, then [`Config::check`]s them.
    pub fn from_env() -> Result<Self, clap::Error> {
        Self::try_parse()?.checked()
    }

    fn checked(self) -> Result<Self, clap::Error> {
        self.check()
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{e}\n")))?;
        Ok(self)
    }

    /// Checks what no single flag can: the app (`--inbound-forward`) must not
    /// be one of the proxy's own listeners, or inbound requests would loop.
    pub fn check(&self) -> Result<(), String> {
        if self.app_health_check.is_some() && self.inbound_forward.is_none() {
            return Err("--app-health-check checks the app at --inbound-forward: give both".into());
        }
        if let Some(cp) = &self.control_plane {
            let port_ok = cp
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(format!(
                    "--control-plane {cp}: write it as host:port (e.g. 127.0.0.1:8086)"
                ));
            }
        }
        let Some(app) = self.inbound_forward else {
            return Ok(());
        };
        let listeners = [
            ("--outbound-listen", self.outbound_listen),
            ("--inbound-listen", self.inbound_listen),
            ("--admin-listen", self.admin_listen),
        ];
        for (flag, listen) in listeners {
            let Listen::On(l) = listen else { continue };
            let same_host = l.ip() == app.ip()
                || l.ip().is_unspecified()
                || app.ip().is_unspecified()
                || (l.ip().is_loopback() && app.ip().is_loopback() && l.ip() == app.ip());
            if l.port() == app.port() && same_host {
                return Err(format!(
                    "--inbound-forward {app} is this proxy's own {flag} {l}: inbound requests would loop; \
                     give the app's address"
                ));
            }
        }
        Ok(())
    }

    /// The effective configuration as JSON (printed at start, served on admin).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "outbound_listen": self.outbound_listen.to_string(),
            "inbound_listen": self.inbound_listen.to_string(),
            "admin_listen": self.admin_listen.to_string(),
            "inbound_forward": self.inbound_forward.map(|a| a.to_string()),
            "discovery_file": self.discovery_file.as_ref().map(|p| p.display().to_string()),
            "control_plane": self.control_plane,
            "identity_token_file": self.identity_token_file,
            "workload": self.workload,
            "policy_workload": self.policy_workload,
            "inbound_default_policy": self.inbound_default_policy.as_str(),
            "inbound_policy_port": self.inbound_policy_port,
            "balancer": self.balancer.to_string(),
            "ewma_decay_ms": self.ewma_decay.as_secs_f64() * 1e3,
            "accrual_failures": self.accrual_failures,
            "retry_codes": self.retry_codes.to_string(),
            "failure_codes": self.failure_codes.to_string(),
            "retry_budget_percent": self.retry_budget_percent,
            "retry_min_per_second": self.retry_min_per_second,
            "inbound_max_concurrency": self.inbound_max_concurrency,
            "app_health_check": self.app_health_check,
            "accrual_backoff_max_ms": self.accrual_backoff_max.as_secs_f64() * 1e3,
            "max_ejected_percent": self.max_ejected_percent,
        });
        // (Two maps: one json! of them all would pass its macro recursion limit.)
        let more = serde_json::json!({
            "detect_timeout_ms": self.detect_timeout.as_secs_f64() * 1e3,
            "opaque_ports": self.opaque_ports.0.iter().collect::<Vec<_>>(),
            "inbound_mtls_required": if self.inbound_mtls_required.all {
                serde_json::json!("all")
            } else {
                serde_json::json!(self.inbound_mtls_required.ports.0.iter().collect::<Vec<_>>())
            },
            "fail_fast_timeout_ms": self.fail_fast_timeout.as_secs_f64() * 1e3,
            "inbound_fail_fast_timeout_ms": self.inbound_fail_fast_timeout.as_secs_f64() * 1e3,
            "connect_timeout_ms": self.connect_timeout.as_secs_f64() * 1e3,
            "max_concurrent_streams": self.max_concurrent_streams,
            "max_header_bytes": self.max_header_bytes,
            "connection_buffer_limit": self.connection_buffer_limit,
            "retry_buffer_per_request": self.retry_buffer_per_request,
            "retry_buffer_per_connection": self.retry_buffer_per_connection,
            "max_control_frames": self.max_control_frames,
            "keepalive_interval": self.keepalive_interval.to_string(),
            "keepalive_timeout_ms": self.keepalive_timeout.as_secs_f64() * 1e3,
            "idle_timeout": self.idle_timeout.to_string(),
            "header_timeout_ms": self.header_timeout.as_secs_f64() * 1e3,
            "tcp_user_timeout": self.tcp_user_timeout.to_string(),
            "http1_max_connections": self.http1_max_connections,
            "http1_idle_timeout_ms": self.http1_idle_timeout.as_secs_f64() * 1e3,
            "shutdown_grace_ms": self.shutdown_grace.as_secs_f64() * 1e3,
            "balancer_idle_timeout_ms": self.balancer_idle_timeout.as_secs_f64() * 1e3,
            "threads": self.threads,
            "h2_engine": self.h2_engine.to_string(),
            "admin_token": if self.admin_token.is_some() { "set" } else { "off" },
        });
        if let (Some(all), serde_json::Value::Object(more)) = (v.as_object_mut(), more) {
            all.extend(more);
        }
        v
    }
}

/// A listener address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

impl Listen {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::On(a) => Some(a),
        }
    }
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::On)
            .map_err(|_| format!("`{s}` is neither `off` nor an address like 127.0.0.1:4140"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::On(a) => a.fmt(f),
        }
    }
}

/// The balancing algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Algorithm {
    /// Soft power of three choices over peak-EWMA latency (relative to each
    /// route's typical latency) × failure penalty × pending requests.
    PeakEwma,
    /// The endpoint with the fewest requests in flight (random among ties).
    LeastRequest,
    /// Each ready endpoint in turn.
    RoundRobin,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::PeakEwma => "peak-ewma",
            Algorithm::LeastRequest => "least-request",
            Algorithm::RoundRobin => "round-robin",
        })
    }
}

/// Which HTTP/2 implementation carries HTTP/2 and gRPC traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum H2Engine {
    /// weft's own frame-forwarding engine (`splice`).
    Splice,
    /// hyper's HTTP/2 server and client.
    Hyper,
}

impl fmt::Display for H2Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            H2Engine::Splice => "splice",
            H2Engine::Hyper => "hyper",
        })
    }
}

/// A duration, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Toggle(pub Option<Duration>);

impl fmt::Display for Toggle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(d) => write!(f, "{d:?}"),
        }
    }
}

/// Parses a duration (see [`parse_duration`]) or `off`.
pub fn parse_toggle(s: &str) -> Result<Toggle, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Toggle(None));
    }
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("`{s}` is zero: write `off` to turn it off")),
        d => Ok(Toggle(Some(d))),
    }
}

/// A set of TCP ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(pub BTreeSet<u16>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(&port)
    }
}

impl FromStr for PortSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let port: u16 = part
                .parse()
                .map_err(|_| format!("`{part}` is not a port number (1-65535)"))?;
            if port == 0 {
                return Err("port 0 is not a destination port".into());
            }
            set.insert(port);
        }
        Ok(PortSet(set))
    }
}

/// The inbound ports that refuse plaintext: some, or all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MtlsRequired {
    pub all: bool,
    pub ports: PortSet,
}

impl MtlsRequired {
    /// Whether a connection to `port` (unknown: `None`) must be mTLS.
    pub fn covers(&self, port: Option<u16>) -> bool {
        self.all || port.is_some_and(|p| self.ports.contains(p))
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.ports.0.is_empty()
    }
}

impl FromStr for MtlsRequired {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "all" {
            return Ok(MtlsRequired {
                all: true,
                ports: PortSet::default(),
            });
        }
        Ok(MtlsRequired {
            all: false,
            ports: s.parse().map_err(|e| format!("{e} (or write `all`)"))?,
        })
    }
}

/// Parses a byte size: `512`, `64KiB`, `8MiB`, `1GiB` (also KB, MB, GB as
/// powers of ten); at most 1 GiB.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 64KiB or 8MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("`{other}` is not a size unit (B, KiB, MiB, GiB)")),
    };
    match n.checked_mul(scale) {
        Some(b) if b <= 1 << 30 => Ok(b as usize),
        _ => Err(format!("`{s}` is out of range (at most 1GiB)")),
    }
}

/// The longest duration a flag takes: longer ones are typos, and would
/// overflow the clock arithmetic they feed.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a duration with a unit: `500us`, `250ms`, `10s`, `2m`, `1h`; at
/// most [`MAX_DURATION`].
/// A set of gRPC status codes (0–16).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Codes(pub u32);

impl Codes {
    pub fn contains(self, code: u16) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }
}

impl std::fmt::Display for Codes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = (0..17u16)
            .filter(|c| self.contains(*c))
            .map(|c| c.to_string())
            .collect();
        if list.is_empty() {
            f.write_str("off")
        } else {
            f.write_str(&list.join(","))
        }
    }
}

/// Parses `14,13` (gRPC codes) or `off`.
pub fn parse_codes(s: &str) -> Result<Codes, String> {
    let s = s.trim();
    if s.is_empty() || s == "off" {
        return Ok(Codes(0));
    }
    let mut mask = 0u32;
    for part in s.split(',') {
        let c: u16 = part
            .trim()
            .parse()
            .map_err(|_| format!("`{part}` is not a gRPC status code (0-16; UNAVAILABLE is 14)"))?;
        if c > 16 {
            return Err(format!("{c} is not a gRPC status code (0-16)"));
        }
        mask |= 1 << c;
    }
    Ok(Codes(mask))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 250ms, 10s or 2m"))?;
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("`{s}` needs a unit: us, ms, s, m or h")),
        other => {
            return Err(format!("`{other}` is not a duration unit (us, ms, s, m, h)"));
        }
    };
    match Duration::try_from_secs_f64(value * scale) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("`{s}` is out of range (at most 365 days)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_codes_parse_and_say_what_is_wrong() {
        assert_eq!(parse_codes("14").unwrap(), Codes(1 << 14));
        assert_eq!(parse_codes(" 14, 13 ").unwrap(), Codes((1 << 14) | (1 << 13)));
        assert_eq!(parse_codes("off").unwrap(), Codes(0));
        assert_eq!(parse_codes("14,13").unwrap().to_string(), "13,14");
        assert!(parse_codes("17").unwrap_err().contains("0-16"));
        assert!(parse_codes("UNAVAILABLE").unwrap_err().contains("UNAVAILABLE is 14"));
    }

    #[test]
    fn defaults_parse() {
        let c = Config::defaults();
        assert_eq!(c.outbound_listen, Listen::On("127.0.0.1:4140".parse().unwrap()));
        assert_eq!(c.ewma_decay, Duration::from_secs(10));
        assert!(c.opaque_ports.contains(3306));
        assert_eq!(c.balancer, Algorithm::PeakEwma);
        assert_eq!(c.to_json()["balancer"], "peak-ewma");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("10parsecs").unwrap_err().contains("not a duration unit"));
        assert!(parse_duration("fast").is_err());
        // Absurd values are refused at parse time, not left to overflow a clock.
        assert!(parse_duration("9999999999h").unwrap_err().contains("out of range"));
        assert!(parse_duration("366d").is_err());
        assert_eq!(parse_duration("8760h").unwrap(), MAX_DURATION);
    }

    #[test]
    fn toggles() {
        assert_eq!(parse_toggle("off").unwrap(), Toggle(None));
        assert_eq!(parse_toggle("20s").unwrap(), Toggle(Some(Duration::from_secs(20))));
        assert!(parse_toggle("0s").unwrap_err().contains("write `off`"));
        let c = Config::defaults();
        assert_eq!(c.idle_timeout, Toggle(Some(Duration::from_secs(300))));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_bytes("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("2GiB").unwrap_err().contains("out of range"));
        assert!(parse_bytes("8 megs").is_err());
    }

    #[test]
    fn bad_values_name_the_flag_and_value() {
        let err = Config::try_parse_from(["weft-proxy", "--detect-timeout", "10"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--detect-timeout"), "{msg}");
        assert!(msg.contains("needs a unit"), "{msg}");
        let err = Config::try_parse_from(["weft-proxy", "--opaque-ports", "25,smtp"]).unwrap_err();
        assert!(err.to_string().contains("`smtp` is not a port"), "{err}");
        let err = Config::try_parse_from(["weft-proxy", "--balancer", "random"]).unwrap_err();
        assert!(err.to_string().contains("random"), "{err}");
    }

    #[test]
    fn an_app_address_that_is_one_of_our_listeners_is_refused() {
        let err = Config::from_args(["weft-proxy", "--inbound-forward", "127.0.0.1:4143"]).unwrap_err();
        assert!(err.to_string().contains("would loop"), "{err}");
        let err = Config::from_args(["weft-proxy", "--inbound-forward", "127.0.0.1:4140"]).unwrap_err();
        assert!(err.to_string().contains("--outbound-listen"), "{err}");
        assert!(Config::from_args(["weft-proxy", "--inbound-forward", "127.0.0.1:8080"]).is_ok());
    }

    #[test]
    fn listeners_can_be_off() {
        let c = Config::try_parse_from(["weft-proxy", "--inbound-listen", "off"]).unwrap();
        assert_eq!(c.inbound_listen, Listen::Off);
        assert!("nonsense".parse::<Listen>().is_err());
    }
}
