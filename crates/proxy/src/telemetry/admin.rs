//! The admin server: `/metrics` (Prometheus text), `/ready`, `/live`,
//! `/config` (the effective configuration), `/balancers` (every balancer's
//! endpoints with their state, latency estimate and load) and `/shutdown`
//! (POST, from loopback only). It runs off the data path: `main` gives it
//! a thread and runtime of its own.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::mpsc};

use super::Balancers;

/// What the admin server reports on and controls.
pub(crate) struct AdminState {
    pub registry: Registry,
    pub config_json: String,
    pub balancers: Balancers,
    pub ready: Arc<AtomicBool>,
    pub shutdown: mpsc::UnboundedSender<()>,
    /// The app's health (`--app-health-check`): 2 is NOT_SERVING.
    pub app_health: Option<Arc<std::sync::atomic::AtomicU8>>,
    /// More to say on `/ready` (the control-plane connection).
    pub details: Arc<dyn Fn() -> String + Send + Sync>,
    /// The workload identity (`--identity-token-file`).
    pub identity: Option<crate::identity::Identity>,
    /// The inbound authorization policy, when watched (`--policy-workload`).
    pub policy: Option<Arc<crate::policy::Policy>>,
    /// What admin actions that change state require (`--admin-token`); `None`: they are off.
    pub token: Option<String>,
}

/// Serves admin requests until `stop` completes.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req, peer)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(state: &AdminState, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut text = String::with_capacity(16 * 1024);
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "metrics encoding failed\n".into(),
                ),
            }
        }
        (&Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "live\n".into()),
        (&Method::GET, "/ready") => {
            if state
                .app_health
                .as_ref()
                .is_some_and(|h| h.load(Ordering::Relaxed) == 2)
            {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "not ready: the app reports NOT_SERVING (grpc.health.v1)\n{}",
                        (state.details)()
                    ),
                )
            } else if state
                .identity
                .as_ref()
                .is_some_and(|id| crate::identity::current_tls(id).is_none())
            {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "not ready: waiting for the workload certificate (see /identity)\n{}",
                        (state.details)()
                    ),
                )
            } else if state.policy.as_ref().is_some_and(|p| !p.received()) {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "not ready: waiting for the workload's authorization policy (see /policy)\n{}",
                        (state.details)()
                    ),
                )
            } else if state.ready.load(Ordering::Relaxed) {
                reply(StatusCode::OK, "text/plain", format!("ready\n{}", (state.details)()))
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready\n{}", (state.details)()),
                )
            }
        }
        (&Method::GET, "/policy") => match &state.policy {
            Some(p) => reply(StatusCode::OK, "text/plain", p.describe()),
            None => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "no policy: start the proxy with --policy-workload and --control-plane\n".into(),
            ),
        },
        (&Method::GET, "/identity") => match &state.identity {
            Some(id) => reply(StatusCode::OK, "text/plain", crate::identity::describe(id)),
            None => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "no identity: start the proxy with --identity-token-file and --control-plane\n".into(),
            ),
        },
        (&Method::GET, "/config") => reply(StatusCode::OK, "application/json", state.config_json.clone()),
        (&Method::GET, "/balancers") => {
            let all: Vec<serde_json::Value> = (state.balancers)()
                .into_iter()
                .map(|(dir, v)| serde_json::json!({"direction": dir.label(), "balancer": v}))
                .collect();
            let body = serde_json::to_string_pretty(&all).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body + "\n")
        }
        (&Method::POST, "/shutdown") => {
            if let Err(why) = may_change_state(state, &req, peer) {
                return reply(StatusCode::FORBIDDEN, "text/plain", format!("{why}\n"));
            }
            let _ = state.shutdown.send(());
            reply(StatusCode::OK, "text/plain", "shutting down\n".into())
        }
        (_, "/metrics" | "/live" | "/ready" | "/config" | "/balancers" | "/identity" | "/policy" | "/shutdown") => {
            reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n".into(),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics /ready /live /config /balancers, or POST /shutdown\n".into(),
        ),
    }
}

/// Admin actions that change state are off unless a token is configured,
/// and then need it, from loopback: the data path cannot reach admin (it
/// refuses the proxy's own addresses), and a stranger cannot guess the token.
fn may_change_state(state: &AdminState, req: &Request<Incoming>, peer: SocketAddr) -> Result<(), &'static str> {
    let Some(token) = &state.token else {
        return Err(
            "admin actions are off: start weft-proxy with --admin-token TOKEN (or WEFT_ADMIN_TOKEN) \
                    and send Authorization: Bearer TOKEN",
        );
    };
    if !peer.ip().is_loopback() {
        return Err("admin actions are only accepted from localhost");
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared in time independent of where the first difference lies.
    let same = given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
    if same {
        Ok(())
    } else {
        Err("a valid admin token is required (Authorization: Bearer TOKEN)")
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

/// Exposes every balancer's per-endpoint state as metrics at scrape time.
pub(crate) struct BalancerCollector {
    pub balancers: Balancers,
}

impl std::fmt::Debug for BalancerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BalancerCollector")
    }
}

impl Collector for BalancerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut rows = Vec::new();
        for (dir, b) in (self.balancers)() {
            for e in b.endpoints {
                let labels = vec![
                    ("direction", dir.label().to_string()),
                    ("target", b.target.clone()),
                    ("protocol", b.protocol.to_string()),
                    ("endpoint", e.name.clone()),
                    ("addr", e.addr.clone()),
                ];
                rows.push((labels, e));
            }
        }
        let mut m = encoder.encode_descriptor(
            "endpoint_latency_score",
            "Peak-EWMA latency per endpoint relative to its routes' typical latency (1 = typical)",
            None,
            MetricType::Gauge,
        )?;
        for (l, e) in &rows {
            ConstGauge::new(e.latency_score).encode(m.encode_family(l)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "endpoint_consecutive_failures",
            "Failed requests in a row per endpoint (each multiplies its balancing cost by 4)",
            None,
            MetricType::Gauge,
        )?;
        for (l, e) in &rows {
            ConstGauge::new(e.failures as i64).encode(m.encode_family(l)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "endpoint_ejected",
            "1 while failure accrual keeps the endpoint out of service (it gets single probe requests)",
            None,
            MetricType::Gauge,
        )?;
        for (l, e) in &rows {
            ConstGauge::new(i64::from(e.ejected)).encode(m.encode_family(l)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "endpoint_pending",
            "Requests awaiting their response head per endpoint",
            None,
            MetricType::Gauge,
        )?;
        for (l, e) in &rows {
            ConstGauge::new(e.pending as i64).encode(m.encode_family(l)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "endpoint_ready",
            "1 when the endpoint can take requests, 0 while connecting or backing off",
            None,
            MetricType::Gauge,
        )?;
        for (l, e) in &rows {
            ConstGauge::new(i64::from(e.state == "ready")).encode(m.encode_family(l)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "endpoint_picked",
            "Requests the balancer sent to each endpoint",
            None,
            MetricType::Counter,
        )?;
        for (l, e) in &rows {
            ConstCounter::new(e.served).encode(m.encode_family(l)?)?;
        }
        Ok(())
    }
}
