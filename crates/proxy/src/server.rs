//! Listeners: accept connections, learn where each goes (its side:
//! [`crate::inbound`] or [`crate::outbound`]) and what it speaks
//! ([`crate::transport`]), and hand it to its engine: splice for HTTP/2,
//! hyper for HTTP/1.1 (and HTTP/2 with `--h2-engine hyper`), or opaque TCP
//! forwarding. Every connection runs under the drain watch.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use weft_splice::{Io, down::Limits};

use crate::{
    config::{Config, H2Engine},
    core::{ConnMeta, Dest, Direction, Proto, Target},
    drain,
    http::{
        RequestPath,
        serve_hyper::{self, HyperServer},
        serve_splice,
    },
    inbound::Inbound,
    outbound::Outbound,
    route::Router,
    tcp,
    telemetry::metrics::{DetectLabels, Metrics},
    transport::{self, Admission, Admitted, DetectParams, PrefixedIo, SocketOptions},
};

/// The HTTP/2 timeouts of connections (`idle` for client connections only).
pub(crate) fn timeouts(config: &Config, idle: Option<std::time::Duration>) -> weft_splice::Timeouts {
    weft_splice::Timeouts {
        keepalive_interval: config.keepalive_interval.0,
        keepalive_timeout: config.keepalive_timeout,
        idle,
        header: config.header_timeout,
    }
}

/// The side a listener serves, and how it finds where connections go.
pub(crate) enum Side {
    Inbound(Inbound),
    Outbound(Outbound),
}

impl Side {
    fn direction(&self) -> Direction {
        match self {
            Side::Inbound(_) => Direction::Inbound,
            Side::Outbound(_) => Direction::Outbound,
        }
    }

    /// Where a connection goes, or why nowhere (a metric label).
    fn target(&self, orig_dst: Option<SocketAddr>) -> Result<Target, &'static str> {
        match self {
            Side::Inbound(i) => i.target(orig_dst),
            Side::Outbound(o) => o.target(orig_dst),
        }
    }
}

/// What one listener needs to serve its connections.
pub(crate) struct ServerCtx {
    side: Side,
    router: Arc<Router>,
    path: Arc<RequestPath>,
    metrics: Arc<Metrics>,
    detect: DetectParams,
    fail_fast: Duration,
    hyper: HyperServer,
    /// HTTP/2 through the splice engine, within these limits (`None`: through hyper).
    splice: Option<Limits>,
    sockets: SocketOptions,
    admission: Arc<Admission>,
    /// Inbound with a workload identity: TLS from other proxies is
    /// terminated here (their certificates verified against its anchors).
    identity: Option<crate::identity::Identity>,
    /// Inbound ports that refuse plaintext (`--inbound-mtls-required`).
    mtls_required: crate::config::MtlsRequired,
    /// Inbound: the authorization policy (opaque connections are checked here).
    policy: Option<Arc<crate::policy::Policy>>,
}

impl ServerCtx {
    pub(crate) fn new(
        side: Side,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        config: &Config,
        identity: Option<crate::identity::Identity>,
        policy: Option<Arc<crate::policy::Policy>>,
    ) -> Self {
        let side_is_inbound = matches!(side, Side::Inbound(_));
        let per_client = side_is_inbound.then_some(config.max_connections_per_client as usize);
        // Retries go elsewhere: the inbound side has one app.
        let retry_codes = if matches!(side, Side::Inbound(_)) {
            None
        } else {
            Some(config.retry_codes.0)
        };
        let fail_fast = if matches!(side, Side::Inbound(_)) {
            config.inbound_fail_fast_timeout
        } else {
            config.fail_fast_timeout
        };
        let limit = match (&side, config.inbound_max_concurrency) {
            (Side::Inbound(_), n) if n > 0 => Some(crate::http::Limit::new(n as usize)),
            _ => None,
        };
        ServerCtx {
            side,
            path: Arc::new(RequestPath::new(
                router.clone(),
                metrics.clone(),
                fail_fast,
                limit,
                retry_codes,
                config.failure_codes.0,
                policy.clone(),
            )),
            router,
            metrics,
            detect: DetectParams {
                timeout: config.detect_timeout,
                opaque_ports: config.opaque_ports.clone(),
            },
            fail_fast,
            hyper: HyperServer::new(
                config.max_concurrent_streams,
                config.max_header_bytes,
                config.header_timeout,
            ),
            splice: (config.h2_engine == H2Engine::Splice).then_some(Limits {
                max_concurrent_streams: config.max_concurrent_streams,
                max_header_bytes: config.max_header_bytes,
                max_buffered: config.connection_buffer_limit,
                max_control_frames: config.max_control_frames,
                timeouts: timeouts(config, config.idle_timeout.0),
                replay_per_request: config.retry_buffer_per_request,
                replay_per_connection: config.retry_buffer_per_connection,
            }),
            sockets: SocketOptions::from_config(config),
            admission: Admission::new(config.max_connections as usize, per_client),
            identity,
            mtls_required: if side_is_inbound {
                config.inbound_mtls_required.clone()
            } else {
                crate::config::MtlsRequired::default()
            },
            policy,
        }
    }
}

impl ServerCtx {
    /// Counts an inbound TLS handshake (or a refusal) by result.
    fn count_tls(&self, result: &'static str) {
        self.metrics
            .tls_handshakes
            .get_or_create(&crate::telemetry::metrics::TlsLabels {
                direction: "inbound",
                result,
            })
            .inc();
    }
}

/// Accepts connections until the drain starts.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<ServerCtx>, drain: drain::Watch) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        match accepted {
            Ok((stream, peer)) => match ctx.admission.admit(peer.ip()) {
                Ok(admitted) => {
                    tokio::spawn(serve_conn(stream, peer, admitted, ctx.clone(), drain.clone()));
                }
                Err(bound) => {
                    tracing::debug!(%peer, bound, "connection closed at once: the listener holds as many as it may");
                    ctx.metrics.connection_error(ctx.side.direction().label(), bound);
                }
            },
            Err(e) => {
                // Out of file descriptors, or a connection reset before accept:
                // keep the listener, pause briefly so we don't spin.
                tracing::warn!(error = %e, direction = ctx.side.direction().label(), "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one connection; its place in the listener's admission is given
/// back when this returns.
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    _admitted: Admitted,
    ctx: Arc<ServerCtx>,
    drain: drain::Watch,
) {
    let direction = ctx.side.direction();
    let _open = ctx.metrics.tcp_accepted(direction.label());
    ctx.sockets.apply(&stream);

    let orig_dst = transport::original_dst(&stream);
    let target = match ctx.side.target(orig_dst) {
        Ok(t) => t,
        Err(reason) => {
            tracing::debug!(%peer, ?orig_dst, reason, "connection refused: it has nowhere to go");
            ctx.metrics.connection_error(direction.label(), reason);
            return;
        }
    };
    // Ports marked opaque are judged by where the connection goes.
    let port = match &target {
        Target::Fixed(Dest::Addr(addr)) => Some(addr.port()),
        _ => orig_dst.map(|a| a.port()),
    };
    // A TLS ClientHello from another proxy: terminated here, then the
    // plaintext goes the usual way (an `weft.opaque` ALPN says it is opaque).
    let mut detect = std::borrow::Cow::Borrowed(&ctx.detect);
    let mut opaque_by_alpn = false;
    let mut client_id = None;
    let mut io = match &ctx.identity {
        None => Io::Tcp(stream),
        Some(identity) => {
            let started = tokio::time::Instant::now();
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(ctx.detect.timeout, stream.peek(&mut first)).await;
            if matches!(peeked, Ok(Ok(1))) && first[0] == 0x16 {
                let Some((tls, opaque, client)) = accept_tls(stream, peer, identity, &ctx).await else {
                    return;
                };
                opaque_by_alpn = opaque;
                client_id = client;
                tls
            } else if ctx.mtls_required.covers(port) {
                ctx.count_tls("plaintext_refused");
                ctx.metrics.connection_error(direction.label(), "mtls_required");
                tracing::info!(
                    %peer,
                    port,
                    "a plaintext connection to a port that takes mutual TLS only (--inbound-mtls-required); closed"
                );
                return;
            } else {
                // Detection gets what is left of its time.
                detect = std::borrow::Cow::Owned(DetectParams {
                    timeout: ctx.detect.timeout.saturating_sub(started.elapsed()),
                    opaque_ports: ctx.detect.opaque_ports.clone(),
                });
                Io::Tcp(stream)
            }
        }
    };
    let detection = if opaque_by_alpn {
        transport::Detection {
            proto: Some(Proto::Opaque),
            outcome: "tls_opaque",
            prefix: bytes::BytesMut::new(),
        }
    } else {
        transport::detect_protocol(&mut io, port, &detect).await
    };
    ctx.metrics
        .detect
        .get_or_create(&DetectLabels {
            direction: direction.label(),
            outcome: detection.outcome,
        })
        .inc();
    let Some(proto) = detection.proto else {
        tracing::debug!(%peer, outcome = detection.outcome, "connection closed during protocol detection");
        ctx.metrics.connection_error(direction.label(), detection.outcome);
        return;
    };
    let meta = ConnMeta {
        direction,
        peer,
        target,
        proto,
        client_id,
    };
    match (proto, ctx.splice) {
        (Proto::Http2, Some(limits)) => {
            serve_splice::serve(io, detection.prefix, meta, ctx.path.clone(), limits, drain.signaled()).await;
        }
        (Proto::Http2 | Proto::Http1, _) => {
            let io = PrefixedIo::new(detection.prefix, io);
            serve_hyper::serve(io, meta, &ctx.path, &ctx.hyper, drain.signaled()).await;
        }
        // Opaque connections cannot be drained politely: they get the
        // shutdown grace period, then close with the process.
        (Proto::Opaque, _) => {
            if let Some(policy) = &ctx.policy {
                let ask = crate::policy::Ask {
                    port: policy.server_port.or(port).unwrap_or(0),
                    client: meta.peer.ip(),
                    identity: meta.client_id.as_deref(),
                    route: None,
                    authorization: None,
                };
                if let Err(denied) = policy.check(&ask) {
                    tracing::debug!(%peer, server = %denied.server, reason = denied.reason, "opaque connection denied; closed");
                    ctx.metrics.connection_error(direction.label(), "forbidden");
                    return;
                }
            }
            let io = PrefixedIo::new(detection.prefix, io);
            tcp::forward(io, &meta, &ctx.router, &ctx.metrics, ctx.fail_fast).await;
        }
    }
}

/// Terminates TLS from another proxy: its certificate must chain to this
/// proxy's anchors. The stream, whether it carries opaque TCP (ALPN), and
/// the client's identity (DNS form); `None` when the handshake failed
/// (counted, logged).
async fn accept_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    identity: &crate::identity::Identity,
    ctx: &ServerCtx,
) -> Option<(Io, bool, Option<Arc<str>>)> {
    let count = |result: &'static str| ctx.count_tls(result);
    // Wait for the certificate as long as detection would wait for bytes.
    let until = tokio::time::Instant::now() + ctx.detect.timeout;
    let Some(tls) = crate::identity::wait_tls(identity, until).await else {
        count("no_certificate");
        tracing::info!(%peer, "a TLS connection arrived and this proxy has no certificate yet; closed");
        return None;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    match tokio::time::timeout(ctx.detect.timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            count("timeout");
            None
        }
        Ok(Err(e)) => {
            let why = crate::identity::handshake_failure(&e);
            count(why);
            tracing::info!(%peer, reason = why, error = %e, "TLS handshake refused");
            None
        }
        Ok(Ok(s)) => {
            count("ok");
            let (_, conn) = s.get_ref();
            let client = crate::identity::peer_identity(conn.peer_certificates());
            let opaque = conn.alpn_protocol() == Some(crate::identity::ALPN_OPAQUE);
            tracing::debug!(%peer, client = client.as_deref().unwrap_or("?"), opaque, "mutual TLS from a proxy");
            let client_dns = client
                .as_deref()
                .and_then(weft_identity::Name::from_spiffe)
                .map(|n| Arc::<str>::from(n.dns()));
            Some((
                Io::Wrapped {
                    stream: Box::new(s),
                    peer,
                },
                opaque,
                client_dns,
            ))
        }
    }
}
