//! One endpoint of a service and the connections the proxy keeps to it.
//!
//! - HTTP/2 ([`http2`]): one connection, opened as soon as the endpoint is
//!   known and re-opened (with jittered exponential backoff, [`connect`])
//!   when it fails. Every request is a stream on it. The endpoint's
//!   `SETTINGS_MAX_CONCURRENT_STREAMS` is honoured exactly: no stream opens
//!   before the endpoint's first SETTINGS frame, then its own value
//!   applies; excess requests wait for a free stream.
//! - HTTP/1.1 ([`http1`]): a pool of keep-alive connections, opened on demand.
//! - Opaque TCP: one connection per client connection.
//!
//! What the balancer weighs about the endpoint (latency, requests in
//! flight) lives with the balancer (`balance/load.rs`), not here.

mod connect;
mod http1;
mod http2;

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

pub(crate) use http1::Http1Lease;

use crate::{
    config::H2Engine,
    core::{Proto, lock},
    discovery::EndpointMeta,
    error::ProxyError,
    telemetry::metrics::{Metrics, TcpLabels},
    transport::SocketOptions,
};

/// Settings shared by every endpoint client.
#[derive(Debug)]
pub(crate) struct ClientParams {
    pub connect_timeout: Duration,
    pub max_header_bytes: u32,
    /// How long a request waits for an endpoint's stream (and for a ready endpoint).
    pub fail_fast: Duration,
    pub metrics: Arc<Metrics>,
    pub engine: H2Engine,
    /// Keepalive and header-block timeouts of HTTP/2 endpoint connections.
    pub timeouts: weft_splice::Timeouts,
    /// The kernel's timers on endpoint sockets.
    pub sockets: SocketOptions,
    /// HTTP/1.1: connections per endpoint (idle and busy), and how long one
    /// may stay idle in the pool.
    pub http1_max_connections: usize,
    pub http1_idle_timeout: Duration,
    /// This proxy's workload identity, for TLS to meshed endpoints.
    pub identity: Option<crate::identity::Identity>,
}

enum ConnState {
    /// Opening a connection (HTTP/2), or nothing to open yet (HTTP/1.1, opaque).
    Idle,
    Ready(http2::H2Conn),
    /// The last attempt failed; no requests are sent here until `until`.
    Failed {
        error: Arc<str>,
        until: Instant,
    },
    /// Removed from discovery: no new requests, no reconnects.
    Retired,
}

/// One endpoint: its connections.
pub(crate) struct Endpoint {
    pub meta: EndpointMeta,
    pub proto: Proto,
    target: Arc<str>,
    params: Arc<ClientParams>,
    /// Wakes the balancer's waiting requests when readiness changes.
    balancer_changed: Arc<Notify>,
    state: Mutex<ConnState>,
    connects: AtomicU64,
    /// Connect failures in a row (HTTP/1.1 and opaque endpoints): the
    /// backoff doubles with each.
    failures: AtomicU32,
    http1: http1::Pool,
    retired: watch::Sender<bool>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.meta.addr)
            .field("name", &self.meta.name)
            .finish()
    }
}

/// The connection side of an endpoint's state, for admin.
#[derive(Debug)]
pub(crate) struct ConnView {
    pub state: &'static str,
    pub last_error: Option<String>,
    pub connects: u64,
}

/// A request that could not be sent, and the request itself when it never
/// left the proxy (so it may go to another endpoint).
pub(crate) struct SendFailure {
    pub error: ProxyError,
    pub request: Option<http::Request<hyper::body::Incoming>>,
}

impl Endpoint {
    /// Creates the endpoint; for HTTP/2 this starts its connection task.
    pub(crate) fn new(
        meta: EndpointMeta,
        proto: Proto,
        target: Arc<str>,
        params: Arc<ClientParams>,
        balancer_changed: Arc<Notify>,
    ) -> Arc<Self> {
        let (retired, retired_rx) = watch::channel(false);
        let ep = Arc::new(Endpoint {
            meta,
            proto,
            target,
            params,
            balancer_changed,
            state: Mutex::new(ConnState::Idle),
            connects: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            http1: http1::Pool::default(),
            retired,
        });
        if proto == Proto::Http2 {
            tokio::spawn(connect::drive_h2(Arc::downgrade(&ep), retired_rx));
        }
        ep
    }

    /// Whether a request may be sent here now.
    pub(crate) fn is_ready(&self) -> bool {
        match &*lock(&self.state) {
            ConnState::Ready(c) => !c.is_closed(),
            ConnState::Idle => self.proto != Proto::Http2,
            ConnState::Failed { until, .. } => self.proto != Proto::Http2 && Instant::now() >= *until,
            ConnState::Retired => false,
        }
    }

    /// Why the endpoint is not ready, for error messages.
    pub(crate) fn unready_reason(&self) -> String {
        match &*lock(&self.state) {
            ConnState::Ready(_) => format!("{} is ready", self.meta.name),
            ConnState::Idle => format!("{} ({}) is connecting", self.meta.name, self.meta.addr),
            ConnState::Failed { error, .. } => {
                format!("{} ({}): {error}", self.meta.name, self.meta.addr)
            }
            ConnState::Retired => format!("{} was removed", self.meta.name),
        }
    }

    /// Stops using the endpoint: no new requests, no reconnects. Requests in
    /// flight finish on the existing connection, which then closes.
    pub(crate) fn retire(&self) {
        *lock(&self.state) = ConnState::Retired;
        self.http1.clear();
        // Recorded even when nothing watches (HTTP/1.1 and opaque endpoints
        // have no connection task), so that `is_retired` tells the truth.
        self.retired.send_replace(true);
    }

    pub(crate) fn is_retired(&self) -> bool {
        *self.retired.borrow()
    }

    /// The connection's state, for admin.
    pub(crate) fn view(&self, now: Instant) -> ConnView {
        let (state, last_error) = match &*lock(&self.state) {
            ConnState::Ready(_) => ("ready", None),
            ConnState::Idle if self.proto == Proto::Http2 => ("connecting", None),
            ConnState::Idle => ("ready", None),
            ConnState::Failed { error, until } if *until > now || self.proto == Proto::Http2 => {
                ("backoff", Some(error.to_string()))
            }
            ConnState::Failed { error, .. } => ("ready", Some(error.to_string())),
            ConnState::Retired => ("removed", None),
        };
        ConnView {
            state,
            last_error,
            connects: self.connects.load(Ordering::Relaxed),
        }
    }

    fn set_state(&self, next: ConnState) {
        {
            let mut st = lock(&self.state);
            if matches!(*st, ConnState::Retired) {
                return;
            }
            *st = next;
        }
        self.balancer_changed.notify_waiters();
    }

    fn mark_failed(&self, error: &str, delay: Duration) {
        self.params
            .metrics
            .endpoint_connect_errors
            .get_or_create(&self.tcp_labels())
            .inc();
        self.set_state(ConnState::Failed {
            error: error.into(),
            until: Instant::now() + delay,
        });
    }

    /// A connection to an HTTP/1.1 or opaque endpoint failed: it takes no
    /// request for a jittered, doubling backoff, and requests waiting for
    /// a ready endpoint are woken when it ends.
    fn connect_failed(&self, error: &str) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let delay = connect::backoff(n);
        self.mark_failed(error, delay);
        let changed = self.balancer_changed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            changed.notify_waiters();
        });
    }

    /// A connection to an HTTP/1.1 or opaque endpoint worked: no backoff.
    fn connect_worked(&self) {
        if self.failures.swap(0, Ordering::Relaxed) > 0 && matches!(*lock(&self.state), ConnState::Failed { .. }) {
            self.set_state(ConnState::Idle);
        }
    }

    /// Counts an established connection.
    fn connected(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.params
            .metrics
            .endpoint_connects
            .get_or_create(&self.tcp_labels())
            .inc();
    }

    fn tcp_labels(&self) -> TcpLabels {
        TcpLabels {
            direction: "endpoint",
            target: self.target.clone().into(),
        }
    }

    /// Opens an opaque TCP connection, marking the endpoint failed if it cannot.
    pub(crate) async fn connect_opaque(&self) -> Result<weft_splice::Io, ProxyError> {
        match self.connect(crate::identity::Carries::Opaque).await {
            Ok(s) => {
                self.connect_worked();
                Ok(s)
            }
            Err(e) => {
                self.connect_failed(&e);
                Err(self.upstream_error(e))
            }
        }
    }

    fn upstream_error(&self, detail: String) -> ProxyError {
        ProxyError::Upstream {
            name: self.meta.name.clone(),
            addr: self.meta.addr,
            detail,
        }
    }
}
