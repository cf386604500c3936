//! Client connections served by hyper: HTTP/1.1, and HTTP/2 with
//! `--h2-engine hyper`. Each request goes through the request path like
//! any other; its response body is watched to the end ([`body`]) to record
//! the outcome, return an HTTP/1.1 connection to its pool, and enforce the
//! gRPC deadline.

mod body;

use std::{convert::Infallible, future::Future, sync::Arc, sync::Mutex, time::Duration};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use weft_splice::grpc;

pub(crate) use body::ProxyBody;
use body::{Finisher, ObservedBody};

use super::{Call, Head, Memo, RequestPath};
use crate::{
    balance::{InFlight, load::Candidate},
    core::{CLIENT_ID_HEADER, ConnMeta, Direction, Proto, lock},
    endpoint::Http1Lease,
    error::{ProxyError, chain, find_h2_reason},
    transport::PrefixedIo,
};

/// hyper's server settings, built once per listener.
pub(crate) struct HyperServer {
    h2: http2::Builder<TokioExecutor>,
    h1: http1::Builder,
}

impl HyperServer {
    pub(crate) fn new(max_concurrent_streams: u32, max_header_bytes: u32, header_timeout: Duration) -> Self {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(max_concurrent_streams)
            .max_header_list_size(max_header_bytes)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_pending_accept_reset_streams(Some(200))
            .max_local_error_reset_streams(Some(1024))
            // A proxy passes the upstream's Date (if any); it adds none.
            .auto_date_header(false);
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size((max_header_bytes as usize).max(8192))
            .keep_alive(true)
            .auto_date_header(false);
        HyperServer { h2, h1 }
    }
}

/// Serves an HTTP/1.1 or HTTP/2 client connection until it closes, or
/// `drain` completes and its requests are done.
pub(crate) async fn serve(
    io: PrefixedIo<weft_splice::Io>,
    meta: ConnMeta,
    path: &Arc<RequestPath>,
    server: &HyperServer,
    drain: impl Future<Output = ()>,
) {
    let svc_path = path.clone();
    let svc_meta = Arc::new((meta.clone(), Mutex::new(Memo::default())));
    let service = service_fn(move |req| {
        let path = svc_path.clone();
        let conn = svc_meta.clone();
        // Boxed: hyper moves each stream's future into a task of its own;
        // a pointer moves cheaply where the whole state machine would not.
        Box::pin(async move { Ok::<_, Infallible>(handle(&path, req, &conn.0, &conn.1).await) })
    });
    let io = TokioIo::new(io);
    let result = if meta.proto == Proto::Http2 {
        let conn = server.h2.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = drain => {
                // GOAWAY: no new streams; the ones in flight finish.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        // Upgrades (101, e.g. WebSocket) turn the connection into a tunnel.
        let conn = server.h1.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = drain => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        let reason = classify_conn_error(&e);
        tracing::debug!(peer = %meta.peer, error = %chain(&e), reason, "HTTP connection ended with an error");
        path.metrics().connection_error(meta.direction.label(), reason);
    }
}

/// Proxies one request. Never fails: errors become gRPC or HTTP error
/// responses that say what went wrong.
async fn handle(
    path: &Arc<RequestPath>,
    mut req: Request<Incoming>,
    conn: &ConnMeta,
    memo: &Mutex<Memo>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    if conn.direction == Direction::Inbound {
        let h = req.headers_mut();
        h.remove(CLIENT_ID_HEADER);
        if let Some(id) = conn
            .client_id
            .as_deref()
            .and_then(|id| http::HeaderValue::from_str(id).ok())
        {
            h.insert(CLIENT_ID_HEADER, id);
        }
    }
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| grpc::is_grpc(v.as_bytes()));
    let opened = match request_authority(&req) {
        Err(e) => Err(path.refuse(conn, req.uri().path(), grpc, e, start)),
        Ok(authority) => {
            let timeout = if grpc {
                req.headers()
                    .get("grpc-timeout")
                    .and_then(|v| grpc::parse_timeout(v.as_bytes()))
            } else {
                None
            };
            let head = Head {
                authority,
                scheme: req.uri().scheme_str(),
                path: req.uri().path(),
                grpc,
                timeout,
                method: req.method().as_str(),
                authorization: req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
            };
            path.open(conn, &mut lock(memo), &head, start)
        }
    };
    let mut call = match opened {
        Ok(call) => call,
        Err(e) => return error_response(&e, grpc),
    };
    let upgrade = (conn.proto == Proto::Http1).then(|| {
        let upgrade = upgrade_of(req.headers());
        strip_hop_by_hop(req.headers_mut());
        let upgrade = upgrade?;
        keep_upgrade(req.headers_mut(), upgrade);
        Some(hyper::upgrade::on(&mut req))
    });
    let deadline = call.deadline();
    // The endpoint the request is on, if any: charged a failure when the
    // call's deadline passes before it answers (a deadline that passes
    // while no endpoint is ready charges nobody).
    let mut on = None;
    let forward = send(conn, req, &mut call, path, &mut on);
    let result = match deadline {
        Some((at, budget)) => match tokio::time::timeout_at(at, forward).await {
            Ok(result) => result,
            Err(_) => {
                if let Some(candidate) = on.take() {
                    candidate.fail();
                }
                Err(ProxyError::DeadlineExceeded(budget))
            }
        },
        None => forward.await,
    };
    let (resp, pick, lease, sent) = match result {
        Ok(ok) => ok,
        Err(e) => {
            let resp = error_response(&e, grpc);
            path.answered(call, &e);
            return resp;
        }
    };
    let mut resp = resp;
    let mut lease = lease;
    if let (Some(Some(client)), StatusCode::SWITCHING_PROTOCOLS) = (upgrade, resp.status()) {
        // The endpoint took the upgrade: its connection leaves the pool
        // and becomes a tunnel to the client's, once both are handed over.
        let upstream = hyper::upgrade::on(&mut resp);
        drop(lease.take());
        tokio::spawn(tunnel(client, upstream));
    }
    let (mut parts, incoming) = resp.into_parts();
    let grpc_status = if grpc { grpc_status(&parts.headers) } else { None };
    let shed = parts
        .headers
        .get("weft-proxy-error")
        .is_some_and(|v| v.as_bytes() == b"overloaded");
    path.responded(&mut call, Some(&pick), sent, parts.status.as_u16(), grpc_status, shed);
    if conn.proto == Proto::Http1 {
        let upgrade = (parts.status == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| upgrade_of(&parts.headers))
            .flatten();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(u) = upgrade {
            keep_upgrade(&mut parts.headers, u);
        }
    }
    let finisher = Finisher {
        path: path.clone(),
        call,
        pick: Some(pick),
        lease,
    };
    let body = ObservedBody::new(incoming, finisher, deadline);
    Response::from_parts(parts, ProxyBody::Upstream(Box::new(body)))
}

/// What came back from the endpoint a request was sent to.
type Sent = (Response<Incoming>, InFlight, Option<Http1Lease>, Instant);

/// Picks an endpoint and sends the request there. A request that never
/// left the proxy (its connection closed under it) is sent again to
/// another endpoint, a few times.
async fn send(
    conn: &ConnMeta,
    mut req: Request<Incoming>,
    call: &mut Call,
    path: &RequestPath,
    on: &mut Option<Arc<Candidate>>,
) -> Result<Sent, ProxyError> {
    loop {
        let pick = path.pick(call).await?;
        *on = Some(pick.candidate());
        let ep = pick.endpoint().clone();
        let result = match conn.proto {
            Proto::Http1 => ep.send_http1(req).await.map(|(r, lease, sent)| (r, Some(lease), sent)),
            _ => {
                let sent = Instant::now();
                ep.send_h2(req).await.map(|r| (r, None, sent))
            }
        };
        match result {
            Ok((resp, lease, sent)) => return Ok((resp, pick, lease, sent)),
            Err(f) => {
                if f.error.fault() == crate::error::Fault::Upstream {
                    pick.failed();
                }
                match f.request {
                    Some(r) if call.resend() => req = r,
                    _ => return Err(f.error),
                }
            }
        }
    }
}

/// The request's `:authority` (HTTP/2) or `Host` (HTTP/1.1), if any.
fn request_authority(req: &Request<Incoming>) -> Result<Option<&str>, ProxyError> {
    match req.uri().authority() {
        Some(a) => Ok(Some(a.as_str())),
        None => match req.headers().get(header::HOST) {
            Some(h) => h
                .to_str()
                .map(Some)
                .map_err(|_| ProxyError::NoTarget("the Host header is not text".into())),
            None => Ok(None),
        },
    }
}

/// The `grpc-status` in a header map, if present and valid.
fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| grpc::parse_status(v.as_bytes()))
}

/// A response generated by the proxy for a request it could not forward.
pub(crate) fn error_response(err: &ProxyError, grpc: bool) -> Response<ProxyBody> {
    let message = format!("weft: {err}");
    let mut resp = if grpc {
        let mut r = Response::new(ProxyBody::empty());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(err.grpc_code()));
        if let Ok(v) = HeaderValue::from_str(&grpc::encode_message(&message)) {
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

/// The protocol a request (or a 101 response) upgrades to: an `Upgrade`
/// header named by `Connection: upgrade`.
fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    named.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// Puts back what an upgrade needs on the next hop.
fn keep_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// Carries bytes both ways between an upgraded client connection and an
/// upgraded endpoint connection, until both sides are done.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %chain(&e), "an upgrade did not complete");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "an upgraded connection ended with an error");
    }
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

fn classify_conn_error(e: &hyper::Error) -> &'static str {
    if e.is_parse_too_large() {
        "http_headers_too_large"
    } else if e.is_parse() {
        "http_parse"
    } else if e.is_timeout() {
        "http_timeout"
    } else if e.is_incomplete_message() {
        "http_incomplete"
    } else if find_h2_reason(e).is_some() {
        "http2_protocol"
    } else {
        "http_io"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Authority;

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
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert!(
            resp.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .contains("no endpoints for svc:80")
        );
        assert!(http_body::Body::is_end_stream(resp.body()));
        let resp = error_response(&err, false);
        assert_eq!(resp.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }
}
