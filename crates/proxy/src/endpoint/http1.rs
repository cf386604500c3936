//! An endpoint's HTTP/1.1 connections: a pool of keep-alive connections,
//! opened on demand; a connection goes back to the pool when its response
//! body has been read to the end.

use std::sync::Arc;

use hyper::{Request, Response, body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::{ConnState, Endpoint, SendFailure, connect::BACKOFF_BASE};
use crate::{
    core::lock,
    error::{ProxyError, chain},
};

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_HTTP1: usize = 32;

/// An HTTP/1.1 connection lent to one request, returned to the pool when the
/// response body has been read to its end.
pub(crate) struct Http1Lease {
    endpoint: Arc<Endpoint>,
    sender: Option<http1::SendRequest<Incoming>>,
}

impl Http1Lease {
    /// Gives the connection back for reuse.
    pub(crate) fn release(mut self) {
        if let Some(s) = self.sender.take()
            && !s.is_closed()
            && !self.endpoint.is_retired()
        {
            let mut idle = lock(&self.endpoint.idle_http1);
            if idle.len() < MAX_IDLE_HTTP1 {
                idle.push(s);
            }
        }
    }
}

impl Endpoint {
    /// Sends a request over a pooled HTTP/1.1 connection. Also returns when
    /// the request went out on its connection: a latency sample must not
    /// include the time to open one.
    pub(crate) async fn send_http1(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Http1Lease, Instant), SendFailure> {
        loop {
            let pooled = lock(&self.idle_http1).pop();
            let mut sender = match pooled {
                Some(s) => s,
                None => match self.connect_http1().await {
                    Ok(s) => s,
                    Err(detail) => {
                        self.mark_failed(&detail, BACKOFF_BASE);
                        return Err(SendFailure {
                            error: self.upstream_error(detail),
                            request: Some(req),
                        });
                    }
                },
            };
            if sender.ready().await.is_err() {
                continue; // closed while idle; try another
            }
            let sent = Instant::now();
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Http1Lease {
                        endpoint: self.clone(),
                        sender: Some(sender),
                    };
                    return Ok((resp, lease, sent));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => {
                        let error = ProxyError::from_upstream(&self.meta.name, self.meta.addr, e.error());
                        return Err(SendFailure { error, request: None });
                    }
                },
            }
        }
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<Incoming>, String> {
        let tcp = self.connect_tcp().await?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size((self.params.max_header_bytes as usize).max(8192) + 8192)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| chain(&e))?;
        let addr = self.meta.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %chain(&e), "HTTP/1.1 endpoint connection ended");
            }
        });
        if matches!(*lock(&self.state), ConnState::Failed { .. }) {
            self.set_state(ConnState::Idle);
        }
        Ok(sender)
    }
}
