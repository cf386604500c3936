//! An endpoint's HTTP/1.1 connections: a pool of keep-alive connections,
//! opened on demand up to a cap per endpoint; a connection goes back to the
//! pool when its response body has been read to the end, and is dropped
//! once it has been idle longer than servers commonly keep one (so that a
//! request never races a server closing it). A connection upgraded (101,
//! e.g. WebSocket) leaves the pool for good.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::{Request, Response, body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::{sync::Notify, time::Instant};

use super::{Endpoint, SendFailure};
use crate::{
    core::lock,
    error::{ProxyError, chain},
};

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_HTTP1: usize = 32;
/// New connections one request may open when each closes before taking it
/// (an endpoint that accepts and closes at once).
const MAX_FRESH_PER_REQUEST: usize = 3;

type Sender = http1::SendRequest<Incoming>;

/// Why no connection could be had for a request.
enum Acquire {
    /// Every connection the cap allows is busy.
    Busy(String),
    /// The endpoint could not be reached (or closed new connections at once).
    Failed(String),
}

/// An endpoint's HTTP/1.1 connections.
#[derive(Debug, Default)]
pub(super) struct Pool {
    idle: Mutex<Vec<(Sender, Instant)>>,
    /// Connections open, idle or lent.
    open: Arc<AtomicUsize>,
    /// A connection went back to the pool or closed.
    freed: Arc<Notify>,
}

impl Pool {
    pub(super) fn clear(&self) {
        lock(&self.idle).clear();
    }

    /// A pooled connection idle for less than `max_idle`, if any.
    fn take(&self, max_idle: Duration) -> Option<Sender> {
        let mut idle = lock(&self.idle);
        while let Some((s, since)) = idle.pop() {
            if since.elapsed() < max_idle && !s.is_closed() {
                return Some(s);
            }
            // Too old: the server may be closing it right now.
        }
        None
    }
}

/// An HTTP/1.1 connection lent to one request, returned to the pool when the
/// response body has been read to its end.
pub(crate) struct Http1Lease {
    endpoint: Arc<Endpoint>,
    sender: Option<Sender>,
}

impl Http1Lease {
    /// Gives the connection back for reuse.
    pub(crate) fn release(mut self) {
        if let Some(s) = self.sender.take()
            && !s.is_closed()
            && !self.endpoint.is_retired()
        {
            let pool = &self.endpoint.http1;
            let mut idle = lock(&pool.idle);
            if idle.len() < MAX_IDLE_HTTP1 {
                idle.push((s, Instant::now()));
            }
            drop(idle);
            pool.freed.notify_one();
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
        let mut fresh = 0;
        let until = Instant::now() + self.params.fail_fast;
        loop {
            let mut sender = match self.acquire(until, fresh < MAX_FRESH_PER_REQUEST).await {
                Ok((s, is_fresh)) => {
                    fresh += usize::from(is_fresh);
                    s
                }
                Err(Acquire::Busy(detail)) => return Err(self.unsent(detail, req)),
                Err(Acquire::Failed(detail)) => {
                    self.connect_failed(&detail);
                    return Err(self.unsent(detail, req));
                }
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

    /// A connection for one request: a pooled one, else a new one if the
    /// endpoint's cap allows (and `may_open`), else the next one freed,
    /// waiting until `until`. `true` with a new connection.
    async fn acquire(&self, until: Instant, may_open: bool) -> Result<(Sender, bool), Acquire> {
        let cap = self.params.http1_max_connections;
        loop {
            let freed = self.http1.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(s) = self.http1.take(self.params.http1_idle_timeout) {
                return Ok((s, false));
            }
            if !may_open {
                return Err(Acquire::Failed(format!(
                    "the endpoint closed {MAX_FRESH_PER_REQUEST} new connections before taking the request"
                )));
            }
            let open = &self.http1.open;
            if open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1))
                .is_ok()
            {
                return self.connect_http1().await.map(|s| (s, true)).map_err(Acquire::Failed);
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                return Err(Acquire::Busy(format!(
                    "all {cap} HTTP/1.1 connections to the endpoint stayed busy"
                )));
            }
        }
    }

    fn unsent(&self, detail: String, req: Request<Incoming>) -> SendFailure {
        SendFailure {
            error: self.upstream_error(detail),
            request: Some(req),
        }
    }

    /// Opens a connection (its slot under the cap is already taken; it is
    /// given back when the connection ends).
    async fn connect_http1(&self) -> Result<Sender, String> {
        let open = self.http1.open.clone();
        let freed = self.http1.freed.clone();
        let release = move || {
            open.fetch_sub(1, Ordering::AcqRel);
            freed.notify_one();
        };
        let tcp = match self.connect(crate::identity::Carries::Http1).await {
            Ok(t) => t,
            Err(e) => {
                release();
                return Err(e);
            }
        };
        let handshake = http1::Builder::new()
            .max_buf_size((self.params.max_header_bytes as usize).max(8192) + 8192)
            .handshake(TokioIo::new(tcp))
            .await;
        let (sender, conn) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                release();
                return Err(chain(&e));
            }
        };
        let addr = self.meta.addr;
        tokio::spawn(async move {
            // Upgrades (101) hand the connection over to the tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %chain(&e), "HTTP/1.1 endpoint connection ended");
            }
            release();
        });
        self.connect_worked();
        Ok(sender)
    }
}
