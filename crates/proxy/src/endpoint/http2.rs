//! An endpoint's HTTP/2 connection, by engine: a splice endpoint connection
//! (weft's own), or hyper's client (`--h2-engine hyper`).

use std::time::Duration;

use hyper::{Request, Response, body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;
use weft_splice::{UpHandle, UpPhase, UpTx, up};

use super::{ConnState, Endpoint, SendFailure};
use crate::{config::H2Engine, core::lock, error::ProxyError};

/// An endpoint's HTTP/2 connection, by engine.
pub(super) enum H2Conn {
    Hyper(http2::SendRequest<Incoming>),
    Splice(UpHandle),
}

impl H2Conn {
    pub(super) fn is_closed(&self) -> bool {
        match self {
            H2Conn::Hyper(s) => s.is_closed(),
            H2Conn::Splice(h) => !h.is_open(),
        }
    }
}

/// Requests that wait for one of an endpoint connection's streams: at most
/// this many per connection; more go to another endpoint.
const MAX_QUEUED: usize = 1024;

/// Where an endpoint connection is in its life (open, going away, closed).
pub(super) type Phase = watch::Receiver<UpPhase>;

impl Endpoint {
    /// Connects and completes the HTTP/2 handshake (the endpoint's first
    /// SETTINGS included) with the configured engine.
    pub(super) async fn connect_h2(&self) -> Result<(H2Conn, Phase), String> {
        let tcp = self.connect(crate::identity::Carries::Http2).await?;
        let timeout = self.params.connect_timeout;
        if self.params.engine == H2Engine::Splice {
            let options = up::Options {
                handshake_timeout: timeout,
                max_header_bytes: self.params.max_header_bytes,
                queue_timeout: self.params.fail_fast,
                max_queued: MAX_QUEUED,
                timeouts: self.params.timeouts,
            };
            let (handle, phase) = up::handshake(tcp, options).await?;
            return Ok((H2Conn::Splice(handle), phase));
        }
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // No stream is opened before the endpoint's SETTINGS say how many
            // it allows; from then on its own limit applies (h2 replaces this
            // initial value with the peer's, or with "unlimited" if it sets none).
            .initial_max_send_streams(0)
            .max_header_list_size(self.params.max_header_bytes)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_concurrent_reset_streams(1024);
        let handshake = builder.handshake(TokioIo::new(tcp));
        let (sender, conn) = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => return Err("HTTP/2 handshake timed out".into()),
            Ok(Err(e)) => return Err(format!("HTTP/2 handshake failed: {}", crate::error::chain(&e))),
            Ok(Ok(pair)) => pair,
        };
        let (phase, phase_rx) = watch::channel(UpPhase::Open);
        let addr = self.meta.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %crate::error::chain(&e), "HTTP/2 endpoint connection ended");
            }
            phase.send_replace(UpPhase::Closed);
        });
        Ok((H2Conn::Hyper(sender), phase_rx))
    }

    /// The splice engine's handle to the endpoint's connection, when ready.
    pub(crate) fn splice_tx(&self) -> Option<UpTx> {
        match &*lock(&self.state) {
            ConnState::Ready(H2Conn::Splice(h)) if h.is_open() => Some(h.tx.clone()),
            _ => None,
        }
    }

    /// Sends a request on the endpoint's HTTP/2 connection (hyper engine).
    pub(crate) async fn send_h2(&self, req: Request<Incoming>) -> Result<Response<Incoming>, SendFailure> {
        let sender = match &*lock(&self.state) {
            ConnState::Ready(H2Conn::Hyper(s)) => s.clone(),
            _ => {
                return Err(SendFailure {
                    error: self.upstream_error(self.unready_reason()),
                    request: Some(req),
                });
            }
        };
        let mut sender = sender;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => {
                let request = e.take_message();
                let error = ProxyError::from_upstream(&self.meta.name, self.meta.addr, e.error());
                Err(SendFailure { error, request })
            }
        }
    }
}
