//! The admin server: `/metrics`, `/ready` (with details), `/live`, and with
//! an identity service `/identity` (the CA and the proxies' progress, JSON)
//! and `POST /identity/rotate?step=bundle|reissue|drop` (one trust-anchor
//! rotation step, `weft identity rotate` drives them). The one that
//! changes state answers callers on loopback only, wherever the admin
//! port listens.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What the admin server reports.
pub struct AdminState {
    pub registry: Registry,
    /// `/ready`'s details, computed at each request.
    pub details: Box<dyn Fn() -> String + Send + Sync>,
    pub identity: Option<Arc<crate::identity::IdentityService>>,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req, peer)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(state: &AdminState, req: &Request<Incoming>, peer: std::net::SocketAddr) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/identity") => match &state.identity {
            Some(id) => reply(StatusCode::OK, "application/json", format!("{:#}\n", id.status())),
            None => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "no identity service (start weft-control with --identity-dir)\n".into(),
            ),
        },
        (&Method::POST, "/identity/rotate") => {
            let Some(id) = &state.identity else {
                return reply(StatusCode::NOT_FOUND, "text/plain", "no identity service\n".into());
            };
            if !peer.ip().is_loopback() {
                return reply(
                    StatusCode::FORBIDDEN,
                    "text/plain",
                    "a rotation step is taken from this host only (loopback)\n".into(),
                );
            }
            let step = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("step="))
                .and_then(weft_identity::Step::parse);
            let Some(step) = step else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "name the step: ?step=bundle, reissue or drop\n".into(),
                );
            };
            match id.rotate(step) {
                Ok(()) => reply(StatusCode::OK, "application/json", format!("{:#}\n", id.status())),
                Err(e) => reply(StatusCode::CONFLICT, "text/plain", format!("{e}\n")),
            }
        }
        (_, "/identity/rotate") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n".into()),
        (&Method::GET, "/metrics") => {
            let mut text = String::with_capacity(4096);
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        (&Method::GET, "/ready") => reply(StatusCode::OK, "text/plain", format!("ready\n{}", (state.details)())),
        (&Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "live\n".into()),
        (_, "/metrics" | "/ready" | "/live") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics /ready /live /identity\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}
