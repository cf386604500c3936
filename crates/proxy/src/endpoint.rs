//! One endpoint of a service and the connections the proxy keeps to it.
//!
//! - HTTP/2: one connection, opened as soon as the endpoint is known and
//!   re-opened (with jittered exponential backoff) when it fails. Every
//!   request is a stream on it. The endpoint's `SETTINGS_MAX_CONCURRENT_STREAMS`
//!   is honoured exactly: the client starts with a limit of zero streams
//!   until the endpoint's first SETTINGS frame arrives, then uses the
//!   endpoint's own value; excess requests wait for a free stream.
//! - HTTP/1.1: a pool of keep-alive connections, opened on demand.
//! - Opaque TCP: one connection per client connection.
//!
//! The endpoint also carries what the balancer weighs: a peak-EWMA latency
//! estimate and the number of requests in flight.

use std::{
    fmt,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    net::TcpStream,
    sync::{Notify, watch},
    time::Instant,
};

use crate::{
    discovery::EndpointMeta,
    error::{ProxyError, chain},
    ewma::PeakEwma,
    metrics::{Metrics, TcpLabels, lock},
};

/// The protocol spoken to an endpoint (the same the client spoke to us).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Http2,
    Http1,
    Opaque,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Http2 => "h2",
            Proto::Http1 => "http1",
            Proto::Opaque => "opaque",
        }
    }
}

/// Settings shared by every endpoint client.
#[derive(Debug)]
pub struct ClientParams {
    pub connect_timeout: Duration,
    pub max_header_bytes: u32,
    pub metrics: Arc<Metrics>,
    pub engine: crate::config::H2Engine,
}

/// An endpoint's HTTP/2 connection, by engine.
enum H2Conn {
    Hyper(http2::SendRequest<Incoming>),
    Splice(crate::splice::UpHandle),
}

impl H2Conn {
    fn is_closed(&self) -> bool {
        match self {
            H2Conn::Hyper(s) => s.is_closed(),
            H2Conn::Splice(h) => !h.is_open(),
        }
    }
}

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_HTTP1: usize = 32;
/// First reconnect delay; doubles per failure up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection that lived shorter than this counts as a failed attempt for backoff.
const STABLE_AFTER: Duration = Duration::from_secs(1);
/// An endpoint avoided for its latency gets one probe request after this
/// long, then after twice as long each time it is still avoided (up to τ),
/// so that the balancer learns when it has recovered.
pub const PROBE_BASE: Duration = Duration::from_millis(10);

/// What the balancer weighs, under one lock.
struct BalanceState {
    ewma: PeakEwma,
    last_pick: Instant,
    probe_every: Duration,
}

enum ConnState {
    /// Opening a connection (HTTP/2), or nothing to open yet (HTTP/1.1, opaque).
    Idle,
    Ready(H2Conn),
    /// The last attempt failed; no requests are sent here until `until`.
    Failed {
        error: Arc<str>,
        until: Instant,
    },
    /// Removed from discovery: no new requests, no reconnects.
    Retired,
}

/// One endpoint: its connections and its balancing state.
pub struct Endpoint {
    pub meta: EndpointMeta,
    pub proto: Proto,
    target: Arc<str>,
    params: Arc<ClientParams>,
    /// Wakes the balancer's waiting requests when readiness changes.
    balancer_changed: Arc<Notify>,
    state: Mutex<ConnState>,
    balance: Mutex<BalanceState>,
    in_flight: AtomicUsize,
    served: AtomicU64,
    connects: AtomicU64,
    idle_http1: Mutex<Vec<http1::SendRequest<Incoming>>>,
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

/// A snapshot of an endpoint's state, for admin and metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EndpointView {
    pub name: String,
    pub addr: String,
    pub state: &'static str,
    pub last_error: Option<String>,
    pub ewma_ms: f64,
    pub measured: bool,
    pub in_flight: usize,
    pub served: u64,
    pub connects: u64,
}

/// A request in flight on an endpoint; finishing it (dropping this) lowers
/// the endpoint's in-flight count.
#[derive(Debug)]
pub struct InFlight {
    pub endpoint: Arc<Endpoint>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request that could not be sent, and the request itself when it never
/// left the proxy (so it may go to another endpoint).
pub struct SendFailure {
    pub error: ProxyError,
    pub request: Option<Request<Incoming>>,
}

/// An HTTP/1.1 connection lent to one request, returned to the pool when the
/// response body has been read to its end.
pub struct Http1Lease {
    endpoint: Arc<Endpoint>,
    sender: Option<http1::SendRequest<Incoming>>,
}

impl Http1Lease {
    /// Gives the connection back for reuse.
    pub fn release(mut self) {
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
    /// Creates the endpoint; for HTTP/2 this starts its connection task.
    pub fn new(
        meta: EndpointMeta,
        proto: Proto,
        target: Arc<str>,
        initial_rtt: Duration,
        decay: Duration,
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
            balance: Mutex::new(BalanceState {
                ewma: PeakEwma::new(initial_rtt, decay, Instant::now()),
                last_pick: Instant::now(),
                probe_every: PROBE_BASE,
            }),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            idle_http1: Mutex::new(Vec::new()),
            retired,
        });
        if proto == Proto::Http2 {
            tokio::spawn(drive_h2(Arc::downgrade(&ep), retired_rx));
        }
        ep
    }

    /// Whether a request may be sent here now.
    pub fn is_ready(&self, now: Instant) -> bool {
        match &*lock(&self.state) {
            ConnState::Ready(c) => !c.is_closed(),
            ConnState::Idle => self.proto != Proto::Http2,
            ConnState::Failed { until, .. } => self.proto != Proto::Http2 && now >= *until,
            ConnState::Retired => false,
        }
    }

    /// Why the endpoint is not ready, for error messages.
    pub fn unready_reason(&self) -> String {
        match &*lock(&self.state) {
            ConnState::Ready(_) => format!("{} is ready", self.meta.name),
            ConnState::Idle => format!("{} ({}) is connecting", self.meta.name, self.meta.addr),
            ConnState::Failed { error, .. } => {
                format!("{} ({}): {error}", self.meta.name, self.meta.addr)
            }
            ConnState::Retired => format!("{} was removed", self.meta.name),
        }
    }

    /// The balancing load, latency estimate × (requests in flight + 1), or
    /// `None` while the estimate is still warming up.
    pub fn load(&self, now: Instant) -> Option<f64> {
        let b = lock(&self.balance);
        b.ewma
            .is_warm()
            .then(|| b.ewma.estimate_ns(now) * (self.in_flight.load(Ordering::Relaxed) + 1) as f64)
    }

    /// Notes that the balancer chose this endpoint on its merits.
    pub fn note_pick(&self, now: Instant) {
        let mut b = lock(&self.balance);
        b.last_pick = now;
        b.probe_every = PROBE_BASE;
    }

    /// Whether an avoided endpoint is due for a probe request.
    pub fn probe_due(&self, now: Instant) -> bool {
        let b = lock(&self.balance);
        self.in_flight() == 0 && now.saturating_duration_since(b.last_pick) >= b.probe_every
    }

    /// Notes a probe; the next one waits twice as long (at most `cap`).
    pub fn note_probe(&self, now: Instant, cap: Duration) {
        let mut b = lock(&self.balance);
        b.last_pick = now;
        b.probe_every = (b.probe_every * 2).min(cap.max(PROBE_BASE));
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The current latency estimate, if measured.
    pub fn measured_estimate(&self, now: Instant) -> Option<f64> {
        let b = lock(&self.balance);
        b.ewma.is_measured().then(|| b.ewma.estimate_ns(now))
    }

    /// Marks a request as in flight here.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        InFlight { endpoint: self.clone() }
    }

    /// Records the latency of a request sent at `sent` whose response
    /// (headers) arrived now.
    pub fn observe(&self, sent: Instant) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(sent);
        let mut b = lock(&self.balance);
        // A response much faster than the estimate is a sign of recovery:
        // the next probe comes soon, to confirm it.
        let (sample, estimate) = (rtt.as_secs_f64() * 1e9, b.ewma.estimate_ns(now));
        if sample * crate::ewma::JUMP < estimate && estimate - sample >= crate::ewma::JUMP_FLOOR_NS {
            b.probe_every = PROBE_BASE;
        }
        b.ewma.observe(rtt, sent, now);
    }

    /// Stops using the endpoint: no new requests, no reconnects. Requests in
    /// flight finish on the existing connection, which then closes.
    pub fn retire(&self) {
        *lock(&self.state) = ConnState::Retired;
        lock(&self.idle_http1).clear();
        let _ = self.retired.send(true);
    }

    pub fn is_retired(&self) -> bool {
        *self.retired.borrow()
    }

    pub fn view(&self, now: Instant) -> EndpointView {
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
        let b = lock(&self.balance);
        let ewma = &b.ewma;
        EndpointView {
            name: self.meta.name.to_string(),
            addr: self.meta.addr.to_string(),
            state,
            last_error,
            ewma_ms: ewma.estimate_ns(now) / 1e6,
            measured: ewma.is_measured(),
            in_flight: self.in_flight(),
            served: self.served.load(Ordering::Relaxed),
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

    fn tcp_labels(&self) -> TcpLabels {
        TcpLabels {
            direction: "endpoint",
            target: self.target.clone().into(),
        }
    }

    /// Opens a TCP connection to the endpoint.
    pub async fn connect_tcp(&self) -> Result<TcpStream, String> {
        let addr = self.meta.addr;
        let stream = match tokio::time::timeout(self.params.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(format!("connect timed out after {:?}", self.params.connect_timeout));
            }
            Ok(Err(e)) => return Err(format!("connect failed: {e}")),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.params
            .metrics
            .endpoint_connects
            .get_or_create(&self.tcp_labels())
            .inc();
        Ok(stream)
    }

    /// Opens an opaque TCP connection, marking the endpoint failed if it cannot.
    pub async fn connect_opaque(&self) -> Result<TcpStream, ProxyError> {
        match self.connect_tcp().await {
            Ok(s) => Ok(s),
            Err(e) => {
                self.mark_failed(&e, BACKOFF_BASE);
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

    /// The splice engine's handle to the endpoint's connection, when ready.
    pub fn splice_tx(&self) -> Option<crate::splice::UpTx> {
        match &*lock(&self.state) {
            ConnState::Ready(H2Conn::Splice(h)) if h.is_open() => Some(h.tx.clone()),
            _ => None,
        }
    }

    /// Sends a request on the endpoint's HTTP/2 connection.
    pub async fn send_h2(&self, req: Request<Incoming>) -> Result<Response<Incoming>, SendFailure> {
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

    /// Sends a request over a pooled HTTP/1.1 connection.
    pub async fn send_http1(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Http1Lease), SendFailure> {
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
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok((
                        resp,
                        Http1Lease {
                            endpoint: self.clone(),
                            sender: Some(sender),
                        },
                    ));
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

    async fn connect_h2(&self) -> Result<(H2Conn, tokio::sync::oneshot::Receiver<()>), String> {
        if self.params.engine == crate::config::H2Engine::Splice {
            let (tx, closed) = crate::splice::up::connect(
                self.meta.addr,
                self.params.connect_timeout,
                self.params.max_header_bytes,
            )
            .await?;
            self.connects.fetch_add(1, Ordering::Relaxed);
            self.params
                .metrics
                .endpoint_connects
                .get_or_create(&self.tcp_labels())
                .inc();
            return Ok((H2Conn::Splice(tx), closed));
        }
        let tcp = self.connect_tcp().await?;
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
        let (sender, conn) = match tokio::time::timeout(self.params.connect_timeout, handshake).await {
            Err(_) => return Err("HTTP/2 handshake timed out".into()),
            Ok(Err(e)) => return Err(format!("HTTP/2 handshake failed: {}", chain(&e))),
            Ok(Ok(pair)) => pair,
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let addr = self.meta.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %chain(&e), "HTTP/2 endpoint connection ended");
            }
            let _ = done_tx.send(());
        });
        Ok((H2Conn::Hyper(sender), done_rx))
    }
}

/// Keeps an HTTP/2 connection to the endpoint open until it is retired.
async fn drive_h2(endpoint: Weak<Endpoint>, mut retired: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    loop {
        let Some(ep) = endpoint.upgrade() else { return };
        if ep.is_retired() {
            return;
        }
        let attempt = tokio::select! {
            a = ep.connect_h2() => a,
            _ = retired.wait_for(|r| *r) => return,
        };
        let delay = match attempt {
            Ok((sender, closed)) => {
                let opened = Instant::now();
                ep.set_state(ConnState::Ready(sender));
                drop(ep);
                // The connection task tells us when the connection ends; when
                // the endpoint is retired, its sender is dropped and the
                // connection closes once in-flight requests are done.
                let _ = closed.await;
                let Some(ep) = endpoint.upgrade() else { return };
                if ep.is_retired() {
                    return;
                }
                if opened.elapsed() >= STABLE_AFTER {
                    failures = 0;
                }
                failures += 1;
                // Reconnect at once after a healthy connection ends; back off
                // if connections keep dying young.
                if failures == 1 {
                    ep.set_state(ConnState::Idle);
                    continue;
                }
                let delay = backoff(failures - 1);
                ep.mark_failed("connection closed soon after opening", delay);
                delay
            }
            Err(e) => {
                failures += 1;
                let delay = backoff(failures);
                tracing::debug!(endpoint = %ep.meta.addr, error = %e, ?delay, "endpoint connect failed");
                ep.mark_failed(&e, delay);
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = retired.wait_for(|r| *r) => return,
        }
    }
}

/// Jittered exponential backoff: for the n-th consecutive failure, a delay in
/// [d/2, d] with d = base × 2^(n-1), capped.
fn backoff(n: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let d = exp.min(BACKOFF_MAX);
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= BACKOFF_BASE && backoff(1) >= BACKOFF_BASE / 2);
        assert!(backoff(3) >= BACKOFF_BASE * 2);
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
