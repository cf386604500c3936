//! Listeners: accept connections, detect their protocol, and serve them as
//! HTTP/2, HTTP/1.1 or opaque TCP, each under the drain watch.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use hyper::{
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    Direction,
    config::{Config, PortSet},
    detect::{self, Detected},
    drain,
    endpoint::Proto,
    error::chain,
    http::{ConnCache, ConnMeta, HttpProxy},
    io::PrefixedIo,
    metrics::{DetectLabels, DirLabels, Metrics},
    orig_dst::original_dst,
    router::Router,
};

/// What one listener needs to serve its connections.
pub struct ServerCtx {
    pub direction: Direction,
    pub router: Arc<Router>,
    pub http: HttpProxy,
    pub metrics: Arc<Metrics>,
    pub detect_timeout: Duration,
    pub opaque_ports: PortSet,
    pub fail_fast: Duration,
    /// Inbound in explicit mode: the app's address.
    pub app: Option<SocketAddr>,
    h2: http2::Builder<TokioExecutor>,
    h1: http1::Builder,
    /// HTTP/2 through the splice engine (`None`: through hyper).
    splice: Option<Arc<crate::splice::down::DownCtx>>,
}

impl ServerCtx {
    pub fn new(direction: Direction, router: Arc<Router>, metrics: Arc<Metrics>, config: &Config) -> Self {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(config.max_header_bytes)
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
            .header_read_timeout(Duration::from_secs(10))
            .max_buf_size((config.max_header_bytes as usize).max(8192))
            .keep_alive(true)
            .auto_date_header(false);
        let splice = (config.h2_engine == crate::config::H2Engine::Splice).then(|| {
            Arc::new(crate::splice::down::DownCtx {
                http: HttpProxy::new(router.clone(), metrics.clone(), config.fail_fast_timeout),
                max_concurrent_streams: config.max_concurrent_streams,
                max_header_bytes: config.max_header_bytes,
            })
        });
        ServerCtx {
            direction,
            http: HttpProxy::new(router.clone(), metrics.clone(), config.fail_fast_timeout),
            router,
            metrics,
            detect_timeout: config.detect_timeout,
            opaque_ports: config.opaque_ports.clone(),
            fail_fast: config.fail_fast_timeout,
            app: if direction == Direction::Inbound {
                config.inbound_forward
            } else {
                None
            },
            h2,
            h1,
            splice,
        }
    }
}

/// Accepts connections until the drain starts.
pub async fn serve(listener: TcpListener, ctx: Arc<ServerCtx>, drain: drain::Watch) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(serve_conn(stream, peer, ctx.clone(), drain.clone()));
            }
            Err(e) => {
                // Out of file descriptors, or a connection reset before accept:
                // keep the listener, pause briefly so we don't spin.
                tracing::warn!(error = %e, direction = ctx.direction.label(), "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_conn(mut stream: TcpStream, peer: SocketAddr, ctx: Arc<ServerCtx>, drain: drain::Watch) {
    let direction = ctx.direction.label();
    let dir = DirLabels { direction };
    ctx.metrics.tcp_open.get_or_create(&dir).inc();
    ctx.metrics.tcp_active.get_or_create(&dir).inc();
    let _ = stream.set_nodelay(true);

    let orig_dst = original_dst(&stream);
    let app = match (ctx.app, orig_dst) {
        (Some(app), _) => Some(app),
        // Transparent inbound: the app listens on localhost at the port the
        // client dialled.
        (None, Some(dst)) if ctx.direction == Direction::Inbound => {
            Some(SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), dst.port()))
        }
        _ => None,
    };
    let port = app.or(orig_dst).map(|a| a.port());
    let mut buf = BytesMut::new();
    let detected = if port.is_some_and(|p| ctx.opaque_ports.contains(p)) {
        Ok(None)
    } else {
        detect::detect(&mut stream, &mut buf, ctx.detect_timeout)
            .await
            .map(Some)
    };
    let outcome = match &detected {
        Ok(None) => "opaque_port",
        Ok(Some(d)) => d.label(),
        Err(_) => "error",
    };
    ctx.metrics
        .detect
        .get_or_create(&DetectLabels { direction, outcome })
        .inc();
    let proto = match detected {
        Ok(Some(Detected::Http2)) => Proto::Http2,
        Ok(Some(Detected::Http1)) => Proto::Http1,
        Ok(None | Some(Detected::Opaque(_))) => Proto::Opaque,
        Ok(Some(Detected::Closed(_))) | Err(_) => {
            if let Err(e) = detected {
                tracing::debug!(%peer, error = %e, "read failed during protocol detection");
            }
            ctx.metrics.connection_error(direction, outcome);
            ctx.metrics.tcp_close.get_or_create(&dir).inc();
            ctx.metrics.tcp_active.get_or_create(&dir).dec();
            return;
        }
    };
    let meta = ConnMeta {
        direction: ctx.direction,
        peer,
        orig_dst,
        app,
        proto,
    };
    if let (Proto::Http2, Some(splice)) = (proto, &ctx.splice) {
        crate::splice::down::serve(stream, buf, meta, splice.clone(), drain).await;
        ctx.metrics.tcp_close.get_or_create(&dir).inc();
        ctx.metrics.tcp_active.get_or_create(&dir).dec();
        return;
    }
    let io = PrefixedIo::new(buf, stream);
    match proto {
        Proto::Http2 | Proto::Http1 => serve_http(io, meta, &ctx, &drain).await,
        // Opaque connections cannot be drained politely: they get the
        // shutdown grace period, then close with the process.
        Proto::Opaque => crate::tcp::forward(io, &meta, &ctx.router, &ctx.metrics, ctx.fail_fast).await,
    }
    ctx.metrics.tcp_close.get_or_create(&dir).inc();
    ctx.metrics.tcp_active.get_or_create(&dir).dec();
}

async fn serve_http(io: PrefixedIo<TcpStream>, meta: ConnMeta, ctx: &Arc<ServerCtx>, drain: &drain::Watch) {
    let direction = ctx.direction.label();
    let svc_ctx = ctx.clone();
    let svc_meta = Arc::new((meta.clone(), ConnCache::default()));
    let service = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        let meta = svc_meta.clone();
        // Boxed: hyper moves each stream's future into a task of its own;
        // a pointer moves cheaply where the whole state machine would not.
        Box::pin(async move { Ok::<_, Infallible>(ctx.http.handle(req, &meta.0, &meta.1).await) })
    });
    let io = TokioIo::new(io);
    let result = if meta.proto == Proto::Http2 {
        let conn = ctx.h2.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = drain.signaled() => {
                // GOAWAY: no new streams; the ones in flight finish.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let conn = ctx.h1.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        let reason = classify_conn_error(&e);
        tracing::debug!(peer = %meta.peer, error = %chain(&e), reason, "HTTP connection ended with an error");
        ctx.metrics.connection_error(direction, reason);
    }
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
    } else if crate::error::find_h2_reason(e).is_some() {
        "http2_protocol"
    } else {
        "http_io"
    }
}
