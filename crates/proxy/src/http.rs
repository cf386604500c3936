//! The HTTP proxy: each request (HTTP/2 stream or HTTP/1.1 request) is
//! routed to a balancer, sent to the endpoint it picks, and its response
//! streamed back untouched, with metrics recorded on the way.

pub mod body;
pub mod grpc;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::{
    Direction,
    balancer::Balancer,
    discovery::Authority,
    endpoint::{Http1Lease, InFlight, Proto},
    error::{ProxyError, code, encode_grpc_message},
    metrics::{Label, Metrics, ResponseKey, RouteMetrics, grpc_code_label, lock, status_label},
    router::{Dest, Router},
};
use body::{ObservedBody, Outcome, ProxyBody};

/// What the proxy knows about an accepted connection.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    pub direction: Direction,
    pub peer: SocketAddr,
    /// The original destination (transparent mode), if the connection was redirected.
    pub orig_dst: Option<SocketAddr>,
    /// Inbound: the local app's address.
    pub app: Option<SocketAddr>,
    pub proto: Proto,
}

thread_local! {
    /// The `endpoint` label of responses that reached no endpoint (one
    /// value per thread, so cached counters match it by pointer).
    static NO_ENDPOINT: Label = Label::from("");
}

/// Proxies HTTP requests for one direction.
pub struct HttpProxy {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    fail_fast: Duration,
}

impl HttpProxy {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, fail_fast: Duration) -> Self {
        HttpProxy {
            router,
            metrics,
            fail_fast,
        }
    }

    /// Proxies one request. Never fails: errors become gRPC or HTTP error
    /// responses that say what went wrong.
    pub async fn handle(&self, mut req: Request<Incoming>, conn: &ConnMeta, cache: &ConnCache) -> Response<ProxyBody> {
        let start = Instant::now();
        let grpc = grpc::is_grpc(req.headers());
        let (balancer, route) = match self.route(&req, conn, cache, grpc) {
            Ok(found) => found,
            Err(e) => {
                let target: Arc<str> = Arc::from("unknown");
                let route = self
                    .metrics
                    .route(conn.direction.label(), &target, req.uri().path(), grpc);
                route.requests.inc();
                return self.fail(&route, e, grpc, start);
            }
        };
        route.requests.inc();

        let timeout = if grpc {
            req.headers().get("grpc-timeout").and_then(grpc::parse_timeout)
        } else {
            None
        };
        let deadline = timeout.map(|t| start + t);
        let fail_fast = start + self.fail_fast;
        let pick_deadline = deadline.map_or(fail_fast, |d| d.min(fail_fast));

        if conn.proto == Proto::Http1 {
            strip_hop_by_hop(req.headers_mut());
        }

        let forward = async {
            let mut req = req;
            // A request that never left the proxy (its connection closed
            // under it) is sent again to another endpoint, a few times.
            let mut attempts = 0;
            loop {
                attempts += 1;
                let in_flight = balancer.pick(pick_deadline).await?;
                let ep = in_flight.endpoint.clone();
                let sent = Instant::now();
                let result = match conn.proto {
                    Proto::Http1 => ep.send_http1(req).await.map(|(r, lease)| (r, Some(lease))),
                    _ => ep.send_h2(req).await.map(|r| (r, None)),
                };
                match result {
                    Ok((resp, lease)) => {
                        ep.observe(sent);
                        return Ok((resp, in_flight, lease));
                    }
                    Err(f) => match f.request {
                        Some(r) if attempts < 4 => req = r,
                        _ => return Err(f.error),
                    },
                }
            }
        };
        let result = match (deadline, timeout) {
            (Some(d), Some(t)) => tokio::time::timeout_at(d, forward)
                .await
                .unwrap_or(Err(ProxyError::DeadlineExceeded(t))),
            _ => forward.await,
        };
        let (resp, in_flight, lease) = match result {
            Ok(ok) => ok,
            Err(e) => return self.fail(&route, e, grpc, start),
        };

        route.latency.observe(start.elapsed().as_secs_f64());
        let (mut parts, incoming) = resp.into_parts();
        if conn.proto == Proto::Http1 {
            strip_hop_by_hop(&mut parts.headers);
        }
        let recorder = Recorder {
            metrics: self.metrics.clone(),
            route,
            endpoint: Some(in_flight),
            lease,
            grpc,
            status: parts.status,
            header_grpc_status: if grpc { grpc::status(&parts.headers) } else { None },
        };
        let body = ObservedBody::new(incoming, recorder, deadline.zip(timeout));
        Response::from_parts(parts, ProxyBody::Upstream(body))
    }

    /// The balancer and route metrics of a request, from the connection's
    /// memo when the target and path were seen before on it.
    fn route(
        &self,
        req: &Request<Incoming>,
        conn: &ConnMeta,
        cache: &ConnCache,
        grpc: bool,
    ) -> Result<(Arc<Balancer>, Arc<RouteMetrics>), ProxyError> {
        let raw = match req.uri().authority() {
            Some(a) => Some(a.as_str()),
            None => match req.headers().get(header::HOST) {
                Some(h) => Some(
                    h.to_str()
                        .map_err(|_| ProxyError::NoTarget("the Host header is not text".into()))?,
                ),
                None => None,
            },
        };
        self.route_parts(raw, req.uri().scheme_str(), req.uri().path(), grpc, conn, cache)
    }

    /// The balancer and route metrics for a request with this authority
    /// (`:authority` or `Host`), scheme and path, from the connection's memo
    /// when the target and path were seen before on it.
    pub fn route_parts(
        &self,
        authority: Option<&str>,
        scheme: Option<&str>,
        path: &str,
        grpc: bool,
        conn: &ConnMeta,
        cache: &ConnCache,
    ) -> Result<(Arc<Balancer>, Arc<RouteMetrics>), ProxyError> {
        // Inbound and transparent connections have one target; explicit
        // ones name it in each request.
        let key = if conn.app.is_some() || conn.orig_dst.is_some() {
            Some("")
        } else {
            authority
        };
        let mut memo = lock(&cache.0);
        if let (Some(key), Some(m)) = (key, memo.as_mut())
            && &*m.key == key
            && !m.balancer.is_closed()
        {
            m.balancer.touch();
            let balancer = m.balancer.clone();
            if let Some((_, r)) = m.routes.iter().find(|(p, _)| &**p == path) {
                return Ok((balancer, r.clone()));
            }
            let route = self.metrics.route(conn.direction.label(), &balancer.label, path, grpc);
            if m.routes.len() < MEMO_ROUTES {
                m.routes.push((path.into(), route.clone()));
            }
            return Ok((balancer, route));
        }
        let dest = self.dest(authority, scheme, conn)?;
        let balancer = self.router.balancer(&dest, conn.proto);
        let route = self.metrics.route(conn.direction.label(), &balancer.label, path, grpc);
        if let Some(key) = key {
            *memo = Some(Memo {
                key: key.into(),
                balancer: balancer.clone(),
                routes: vec![(path.into(), route.clone())],
            });
        }
        Ok((balancer, route))
    }

    /// Where a request goes.
    fn dest(&self, authority: Option<&str>, scheme: Option<&str>, conn: &ConnMeta) -> Result<Dest, ProxyError> {
        if let Some(app) = conn.app {
            return Ok(Dest::Addr(app));
        }
        if let Some(dst) = conn.orig_dst {
            return Ok(match self.router.discovery().service_at(dst) {
                Some(svc) => Dest::Service(svc),
                None => Dest::Addr(dst),
            });
        }
        let raw = authority.ok_or_else(|| ProxyError::NoTarget("no :authority or Host header".into()))?;
        let default_port = if scheme == Some("https") { 443 } else { 80 };
        let authority = Authority::parse(raw, Some(default_port)).map_err(|e| ProxyError::NoTarget(e.to_string()))?;
        Ok(match authority.socket_addr() {
            Some(addr) => match self.router.discovery().service_at(addr) {
                Some(svc) => Dest::Service(svc),
                None => Dest::Addr(addr),
            },
            None => Dest::Service(authority),
        })
    }

    /// The metrics the proxy records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// How long a request waits for an endpoint.
    pub fn fail_fast(&self) -> Duration {
        self.fail_fast
    }

    fn fail(&self, route: &Arc<RouteMetrics>, err: ProxyError, grpc: bool, start: Instant) -> Response<ProxyBody> {
        tracing::debug!(target = %route.labels.target, error = %err, fault = ?err.fault(), "request failed");
        route.latency.observe(start.elapsed().as_secs_f64());
        let (status, grpc_code) = if grpc {
            (StatusCode::OK, Some(err.grpc_code()))
        } else {
            (err.http_status(), None)
        };
        route.response(
            &self.metrics.responses,
            ResponseKey {
                endpoint: NO_ENDPOINT.with(Clone::clone),
                classification: "failure",
                status_code: status_label(status),
                grpc_code: grpc_code.map_or("", grpc_code_label),
                error: err.label(),
            },
        );
        error_response(&err, grpc)
    }
}

/// A response generated by the proxy for a request it could not forward.
pub fn error_response(err: &ProxyError, grpc: bool) -> Response<ProxyBody> {
    let message = format!("weft: {err}");
    let mut resp = if grpc {
        let mut r = Response::new(ProxyBody::empty());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(err.grpc_code()));
        if let Ok(v) = HeaderValue::from_str(&encode_grpc_message(&message)) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(ProxyBody::text(format!("{message}\n")));
        *r.status_mut() = err.http_status();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    resp.headers_mut()
        .insert("weft-proxy-error", HeaderValue::from_static(err.label()));
    resp
}

/// Routes memoised per connection.
const MEMO_ROUTES: usize = 16;

/// What one client connection learnt about its requests' targets: most
/// connections send every request to one service, so the routing lookup
/// (authority parsing, the router's map, the route metrics) is done once.
#[derive(Default)]
pub struct ConnCache(std::sync::Mutex<Option<Memo>>);

struct Memo {
    /// The raw authority the balancer was found for.
    key: Box<str>,
    balancer: Arc<Balancer>,
    routes: Vec<(Box<str>, Arc<RouteMetrics>)>,
}

/// Removes HTTP/1.1 connection-level headers, which apply to one hop only.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.get(header::CONNECTION).cloned()
        && let Ok(list) = conn.to_str()
    {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !name.eq_ignore_ascii_case("te") {
                headers.remove(name);
            }
        }
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Records a response's outcome once, when its stream ends.
pub struct Recorder {
    metrics: Arc<Metrics>,
    route: Arc<RouteMetrics>,
    endpoint: Option<InFlight>,
    lease: Option<Http1Lease>,
    grpc: bool,
    status: StatusCode,
    header_grpc_status: Option<u16>,
}

impl Recorder {
    fn finish(mut self, outcome: Outcome) {
        let (grpc_code, error, ended_cleanly) = match outcome {
            Outcome::Ended { trailers_status } => (trailers_status.or(self.header_grpc_status), "", true),
            Outcome::Failed { grpc_code } => (Some(grpc_code), "stream_error", false),
            Outcome::Cancelled => (Some(code::CANCELLED), "cancelled", false),
            Outcome::DeadlineExceeded => (Some(code::DEADLINE_EXCEEDED), "deadline_exceeded", false),
        };
        let success = if self.grpc {
            grpc_code == Some(0)
        } else {
            ended_cleanly && !self.status.is_server_error()
        };
        let endpoint = match &self.endpoint {
            Some(e) => Label(e.endpoint.meta.name.clone()),
            None => NO_ENDPOINT.with(Clone::clone),
        };
        self.route.response(
            &self.metrics.responses,
            ResponseKey {
                endpoint,
                classification: if success { "success" } else { "failure" },
                status_code: status_label(self.status),
                grpc_code: if self.grpc {
                    grpc_code.map_or("none", grpc_code_label)
                } else {
                    ""
                },
                error,
            },
        );
        if let Some(lease) = self.lease.take()
            && ended_cleanly
        {
            lease.release();
        }
        drop(self.endpoint.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn grpc_errors_are_trailers_only_responses() {
        let err = ProxyError::NoEndpoints(Authority::parse("svc:80", None).unwrap());
        let resp = error_response(&err, true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert!(
            resp.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .contains("no endpoints for svc:80")
        );
        assert!(http_body::Body::is_end_stream(resp.body()));
        let resp = error_response(&err, false);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
