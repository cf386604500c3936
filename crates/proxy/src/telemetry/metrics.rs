//! Prometheus metrics, served as text on the admin port.
//!
//! Every family is created once here; the data path holds cheap handles.
//! Label cardinality is bounded: gRPC routes past [`MAX_ROUTES`] per target
//! fold into an `overflow` label.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::core::lock;

/// Distinct gRPC routes (service/method) tracked per target; more fold into
/// `grpc_service="overflow"`.
pub const MAX_ROUTES: usize = 100;
/// Distinct targets (authorities) with metrics of their own; requests to
/// more (a scanner's random authorities) count under `target="overflow"`.
pub const MAX_TARGETS: usize = 256;
/// Distinct routes over all targets; past it, a target's new routes fold
/// into its `overflow` route (bounds the whole at a few MiB).
pub const MAX_ROUTE_SERIES: usize = 2_000;

/// Latency buckets in seconds: 50 µs to 30 s, about 1.5× apart, fine enough
/// to read p99.9 between neighbouring buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015,
    0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

pub use crate::core::Label;

impl std::ops::Deref for Label {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Label {
    fn from(s: &str) -> Self {
        Label(s.into())
    }
}

impl From<Arc<str>> for Label {
    fn from(s: Arc<str>) -> Self {
        Label(s)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectLabels {
    pub direction: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub direction: &'static str,
    pub target: Label,
    /// `sent`, or why not: `budget`, `attempts`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

/// A request's route: which target, and for gRPC which service and method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: &'static str,
    pub target: Label,
    pub grpc_service: Label,
    pub grpc_method: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: &'static str,
    pub target: Label,
    pub grpc_service: Label,
    pub grpc_method: Label,
    /// The endpoint's name (pod or replica), or `""` when no endpoint was reached.
    pub endpoint: Label,
    /// `success` or `failure`; gRPC is judged by `grpc-status`, HTTP by 5xx.
    pub classification: &'static str,
    /// The HTTP status, or `""` when the stream ended without one.
    pub status_code: &'static str,
    /// The gRPC status code (0-16), or `""` for plain HTTP.
    pub grpc_code: &'static str,
    /// Why the proxy failed the request itself, or `""`.
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: &'static str,
    pub target: Label,
}

/// Labels of `weft_tls_handshakes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    /// `outbound` (this proxy connected) or `inbound` (it accepted).
    pub direction: &'static str,
    /// `ok`, or why not: `wrong_identity`, `unknown_ca`, `expired`,
    /// `no_client_certificate`, `refused_by_peer`, `no_certificate`,
    /// `timeout`, `io`, `other`.
    pub result: &'static str,
}

/// All of the proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    pub detect: Family<DetectLabels, Counter>,
    pub connection_errors: Family<ErrorLabels, Counter>,
    pub tcp_open: Family<DirLabels, Counter>,
    pub tcp_close: Family<DirLabels, Counter>,
    pub tcp_active: Family<DirLabels, Gauge>,
    pub opaque_bytes_in: Family<TcpLabels, Counter>,
    pub opaque_bytes_out: Family<TcpLabels, Counter>,
    pub requests: Family<RouteLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub discovery_errors: Counter,
    /// Retries sent, and retryable answers not retried (and why).
    pub retries: Family<RetryLabels, Counter>,
    /// The app's health (`--app-health-check`): 1 serving, 0 not, -1 unknown.
    pub app_serving: Gauge,
    /// The workload identity's certificate (`--identity-token-file`).
    pub identity: crate::identity::IdentityMetrics,
    /// TLS handshakes between proxies, by side and result.
    pub tls_handshakes: Family<TlsLabels, Counter>,
    /// Inbound authorization decisions and policy updates.
    pub authz: crate::policy::AuthzMetrics,
    /// 1 while connected to the control plane (`--control-plane`), else 0.
    pub control_plane_connected: Gauge,
    /// Times the control-plane connection was lost or could not be made.
    pub control_plane_disconnects: Counter,
    pub endpoint_connects: Family<TcpLabels, Counter>,
    pub endpoint_connect_errors: Family<TcpLabels, Counter>,
    routes: Mutex<RouteTables>,
}

#[derive(Debug, Default)]
struct RouteTables {
    by_target: HashMap<(&'static str, Arc<str>), RouteTable>,
    /// Routes over all tables.
    series: usize,
}

#[derive(Debug, Default)]
struct RouteTable {
    routes: HashMap<Box<str>, Arc<RouteMetrics>>,
}

/// The handles one route's requests record into, resolved once per route.
#[derive(Debug)]
pub struct RouteMetrics {
    pub labels: RouteLabels,
    pub requests: Counter,
    pub latency: Histogram,
    /// The route's typical latency across the target's endpoints, which the
    /// balancer measures each endpoint against (kept here because this is
    /// the one per-route object every request already holds).
    pub baseline: weft_balance::Baseline,
    /// Response counters already looked up, so that recording a response
    /// does not hash a label set.
    responses: Mutex<Vec<(ResponseKey, Counter)>>,
}

/// What distinguishes one route's response counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseKey {
    pub endpoint: Label,
    pub classification: &'static str,
    pub status_code: &'static str,
    pub grpc_code: &'static str,
    pub error: &'static str,
}

/// Response counters cached per route; more distinct outcomes than this go
/// straight to the family.
const MAX_CACHED_RESPONSES: usize = 64;

impl RouteMetrics {
    /// Counts one response.
    pub fn response(&self, family: &Family<ResponseLabels, Counter>, key: ResponseKey) {
        let mut cache = lock(&self.responses);
        if let Some((_, c)) = cache.iter().find(|(k, _)| {
            Arc::ptr_eq(&k.endpoint.0, &key.endpoint.0)
                && k.classification == key.classification
                && k.status_code == key.status_code
                && k.grpc_code == key.grpc_code
                && k.error == key.error
        }) {
            c.inc();
            return;
        }
        let labels = ResponseLabels {
            direction: self.labels.direction,
            target: self.labels.target.clone(),
            grpc_service: self.labels.grpc_service.clone(),
            grpc_method: self.labels.grpc_method.clone(),
            endpoint: key.endpoint.clone(),
            classification: key.classification,
            status_code: key.status_code,
            grpc_code: key.grpc_code,
            error: key.error,
        };
        let counter = family.get_or_create(&labels).clone();
        counter.inc();
        if cache.len() < MAX_CACHED_RESPONSES {
            cache.push((key, counter));
        }
    }
}

impl Metrics {
    /// Creates the families and registers them (and `extra` collectors).
    pub fn new() -> (Arc<Self>, Registry) {
        let m = Metrics {
            detect: Family::default(),
            connection_errors: Family::default(),
            tcp_open: Family::default(),
            tcp_close: Family::default(),
            tcp_active: Family::default(),
            opaque_bytes_in: Family::default(),
            opaque_bytes_out: Family::default(),
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS.iter().copied())),
            discovery_errors: Counter::default(),
            retries: Family::default(),
            control_plane_connected: Gauge::default(),
            app_serving: Gauge::default(),
            identity: Default::default(),
            tls_handshakes: Family::default(),
            authz: Default::default(),
            control_plane_disconnects: Counter::default(),
            endpoint_connects: Family::default(),
            endpoint_connect_errors: Family::default(),
            routes: Mutex::new(RouteTables::default()),
        };
        let mut r = Registry::with_prefix("weft");
        r.register(
            "detect",
            "Protocol detection outcomes per accepted connection",
            m.detect.clone(),
        );
        r.register(
            "connection_errors",
            "Connections closed because of an error, by reason",
            m.connection_errors.clone(),
        );
        r.register("tcp_open", "Accepted TCP connections", m.tcp_open.clone());
        r.register("tcp_close", "Closed accepted TCP connections", m.tcp_close.clone());
        r.register("tcp_active", "Open accepted TCP connections", m.tcp_active.clone());
        r.register(
            "opaque_received_bytes",
            "Bytes received from clients on opaque TCP connections",
            m.opaque_bytes_in.clone(),
        );
        r.register(
            "opaque_sent_bytes",
            "Bytes sent to clients on opaque TCP connections",
            m.opaque_bytes_out.clone(),
        );
        r.register("requests", "HTTP and gRPC requests received", m.requests.clone());
        r.register(
            "responses",
            "HTTP and gRPC responses completed, by outcome",
            m.responses.clone(),
        );
        r.register(
            "response_latency_seconds",
            "Time from receiving a request to sending its response headers",
            m.latency.clone(),
        );
        r.register(
            "discovery_errors",
            "Rejected versions of the discovery file",
            m.discovery_errors.clone(),
        );
        r.register(
            "retries",
            "Retries of retryable answers (result=sent), and retryable answers passed on instead (result=budget: the retry budget was spent; attempts: the request's retries were)",
            m.retries.clone(),
        );
        r.register(
            "app_serving",
            "The app's grpc.health.v1 status (--app-health-check): 1 SERVING, 0 NOT_SERVING, -1 unknown or not checked",
            m.app_serving.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes between proxies: direction (outbound: this proxy connected; inbound: it accepted) and result (ok, or why it failed)",
            m.tls_handshakes.clone(),
        );
        r.register(
            "inbound_authz",
            "Inbound authorization decisions: server (the policy's, or default), route, decision (allow, deny, audit: allowed but the policy would deny), reason, client_id",
            m.authz.decisions.clone(),
        );
        r.register(
            "policy_updates",
            "Authorization policies received from the control plane and applied",
            m.authz.updates.clone(),
        );
        r.register(
            "policy_rejected",
            "Authorization policies received that did not compile (the last good one stays in force)",
            m.authz.rejected.clone(),
        );
        r.register(
            "identity_cert_expiry_unix_seconds",
            "When the workload certificate expires (Unix time; 0: none yet)",
            m.identity.expiry.clone(),
        );
        r.register(
            "identity_certified",
            "Certificates received from the control plane (the first and each renewal)",
            m.identity.renewed.clone(),
        );
        r.register(
            "identity_certify_failures",
            "Attempts to get or renew the certificate that failed (the current one is served meanwhile)",
            m.identity.failed.clone(),
        );
        r.register(
            "control_plane_connected",
            "1 while connected to the control plane, 0 while it is unreachable (the proxy serves what it last knew)",
            m.control_plane_connected.clone(),
        );
        r.register(
            "control_plane_disconnects",
            "Times the control-plane connection was lost or could not be made",
            m.control_plane_disconnects.clone(),
        );
        r.register(
            "endpoint_connects",
            "Connections established to endpoints",
            m.endpoint_connects.clone(),
        );
        r.register(
            "endpoint_connect_errors",
            "Failed connection attempts to endpoints",
            m.endpoint_connect_errors.clone(),
        );
        (Arc::new(m), r)
    }

    /// The metrics of one route. `path` is the request path; gRPC paths
    /// (`/pkg.Service/Method`) give the service and method labels.
    pub fn route(&self, direction: &'static str, target: &Arc<str>, path: &str, grpc: bool) -> Arc<RouteMetrics> {
        let mut guard = lock(&self.routes);
        let tables = &mut *guard;
        let mut target = target.clone();
        if !tables.by_target.contains_key(&(direction, target.clone())) && tables.by_target.len() >= MAX_TARGETS {
            target = Arc::from("overflow");
        }
        let table = tables.by_target.entry((direction, target.clone())).or_default();
        let key: &str = if grpc { path } else { "" };
        if let Some(r) = table.routes.get(key) {
            return r.clone();
        }
        let full = grpc && (table.routes.len() >= MAX_ROUTES || tables.series >= MAX_ROUTE_SERIES);
        // The overflow route is kept once per table, under a key no path has.
        const OVERFLOW: &str = "\u{0}overflow";
        if full && let Some(r) = table.routes.get(OVERFLOW) {
            return r.clone();
        }
        let (service, method) = if !grpc {
            ("", "")
        } else if full {
            ("overflow", "overflow")
        } else {
            split_grpc_path(path).unwrap_or(("unknown", "unknown"))
        };
        let labels = RouteLabels {
            direction,
            target: Label(target.clone()),
            grpc_service: service.into(),
            grpc_method: method.into(),
        };
        let metrics = Arc::new(RouteMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            baseline: weft_balance::Baseline::new(),
            labels,
            responses: Mutex::new(Vec::new()),
        });
        table
            .routes
            .insert(if full { OVERFLOW } else { key }.into(), metrics.clone());
        tables.series += 1;
        metrics
    }

    /// Counts an accepted connection as open until the guard is dropped.
    pub fn tcp_accepted(self: &Arc<Self>, direction: &'static str) -> OpenConn {
        let dir = DirLabels { direction };
        self.tcp_open.get_or_create(&dir).inc();
        self.tcp_active.get_or_create(&dir).inc();
        OpenConn {
            metrics: self.clone(),
            direction,
        }
    }

    pub fn connection_error(&self, direction: &'static str, reason: &'static str) {
        self.connection_errors
            .get_or_create(&ErrorLabels { direction, reason })
            .inc();
    }
}

/// An accepted connection, counted open until dropped.
#[derive(Debug)]
pub struct OpenConn {
    metrics: Arc<Metrics>,
    direction: &'static str,
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        let dir = DirLabels {
            direction: self.direction,
        };
        self.metrics.tcp_close.get_or_create(&dir).inc();
        self.metrics.tcp_active.get_or_create(&dir).dec();
    }
}

/// Splits `/pkg.Service/Method` into (`pkg.Service`, `Method`). Only names
/// made of letters, digits, `.`, `_` and `-` are accepted, so a hostile path
/// cannot put arbitrary text into metric labels.
pub fn split_grpc_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (svc, method) = rest.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    (valid(svc) && valid(method)).then_some((svc, method))
}

/// The text of a gRPC status code, for labels.
pub fn grpc_code_label(code: u16) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    CODES.get(usize::from(code)).copied().unwrap_or("unknown")
}

/// The text of an HTTP status code, for labels, without allocating for the
/// common ones; `""` for none (0).
pub fn status_label(status: u16) -> &'static str {
    match status {
        0 => "",
        200 => "200",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        408 => "408",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths() {
        assert_eq!(
            split_grpc_path("/square.Square/Square"),
            Some(("square.Square", "Square"))
        );
        assert_eq!(split_grpc_path("/nope"), None);
        assert_eq!(split_grpc_path("/a/b/c"), None);
        assert_eq!(split_grpc_path("/a\"b/c"), None);
    }

    #[test]
    fn routes_are_bounded() {
        let (m, _) = Metrics::new();
        let target: Arc<str> = "svc:80".into();
        for i in 0..MAX_ROUTES + 20 {
            m.route("outbound", &target, &format!("/pkg.S/M{i}"), true);
        }
        let r = m.route("outbound", &target, "/pkg.S/another", true);
        assert_eq!(&*r.labels.grpc_service, "overflow");
        let r = m.route("outbound", &target, "/pkg.S/M3", true);
        assert_eq!(&*r.labels.grpc_method, "M3");
    }

    #[test]
    fn targets_and_all_routes_are_bounded() {
        let (m, _) = Metrics::new();
        for t in 0..MAX_TARGETS + 50 {
            let target: Arc<str> = format!("scan-{t}:80").into();
            for i in 0..20 {
                m.route("outbound", &target, &format!("/pkg.S/M{i}"), true);
            }
        }
        let r = m.route("outbound", &"late:80".into(), "/pkg.S/M1", true);
        assert_eq!(&*r.labels.target.0, "overflow");
        {
            let tables = lock(&m.routes);
            assert_eq!(tables.by_target.len(), MAX_TARGETS + 1);
            // Each table past the series bound holds one overflow route.
            assert!(tables.series <= MAX_ROUTE_SERIES + MAX_TARGETS + 1, "{}", tables.series);
        }
        let same = m.route("outbound", &"scan-200:80".into(), "/pkg.S/new", true);
        assert_eq!(&*same.labels.grpc_service, "overflow");
    }
}
