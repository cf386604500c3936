//! Discovery from the control plane (`--control-plane ADDR`): one HTTP/2
//! connection to weft-control, and on it one `weft.destination.v1.Destination/Get`
//! stream per service the proxy's clients name, opened on first use and
//! closed when the balancer that follows it is dropped (idle).
//!
//! Spoken with h2 and prost directly, not tonic: the proxy stays small.
//!
//! While the control plane is unreachable the proxy keeps serving what it
//! last knew, reconnects with jittered exponential backoff, and says so
//! (`/ready` details, `weft_control_plane_connected`). An update that
//! empties a service is applied; a stream that breaks is not an empty service.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use prost::Message;
use tokio::sync::watch;
use weft_api::destination as pb;

use super::{Discover, EndpointMeta, Resolution, RoutePolicy, Routes};
use crate::{
    core::{Authority, lock},
    grpc_client::{self, CallEnd},
};

/// How long connecting to the control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// First and longest wait between attempts to reach the control plane.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a service the control plane does not know is asked again.
const RECHECK_UNKNOWN: Duration = Duration::from_secs(5);

/// What the proxy counts about its control-plane connection.
#[derive(Clone, Debug, Default)]
pub struct ControlMetrics {
    /// 1 while connected, 0 while unreachable.
    pub connected: Gauge,
    /// Times the connection was lost or could not be made.
    pub disconnects: Counter,
}

/// Discovery from weft-control.
pub struct ControlDiscovery {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    context: String,
    conn: tokio::sync::Mutex<Option<Conn>>,
    watches: Mutex<HashMap<Authority, Arc<watch::Sender<Resolution>>>>,
    status: Mutex<Status>,
    connected: AtomicBool,
    metrics: ControlMetrics,
}

#[derive(Clone)]
struct Conn {
    send: h2::client::SendRequest<Bytes>,
    alive: Arc<AtomicBool>,
}

/// The connection's story, for `/ready`.
struct Status {
    since: Instant,
    last_error: Option<String>,
}

impl ControlDiscovery {
    /// Discovery from the control plane at `addr` (`host:port`); `context`
    /// tells it who asks. Connects on the first watch.
    pub fn new(addr: String, context: String, metrics: ControlMetrics) -> Self {
        ControlDiscovery {
            inner: Arc::new(Inner {
                addr,
                context,
                conn: tokio::sync::Mutex::new(None),
                watches: Mutex::new(HashMap::new()),
                status: Mutex::new(Status {
                    since: Instant::now(),
                    last_error: None,
                }),
                connected: AtomicBool::new(false),
                metrics,
            }),
        }
    }
}

impl Discover for ControlDiscovery {
    fn resolve(&self, target: &Authority) -> watch::Receiver<Resolution> {
        let mut watches = lock(&self.inner.watches);
        if let Some(tx) = watches.get(target)
            && tx.receiver_count() > 0
        {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Resolution::Pending(
            format!("asking the control plane at {}", self.inner.addr).into(),
        ));
        let tx = Arc::new(tx);
        watches.insert(target.clone(), tx.clone());
        tokio::spawn(follow(self.inner.clone(), target.clone(), tx));
        rx
    }

    fn service_at(&self, _: SocketAddr) -> Option<Authority> {
        // Virtual addresses come with the Kubernetes source; until then a
        // connection to an address goes to that address.
        None
    }

    fn knows(&self, target: &Authority) -> bool {
        lock(&self.inner.watches)
            .get(target)
            .is_some_and(|tx| matches!(&*tx.borrow(), Resolution::Endpoints(..)))
    }

    fn status(&self) -> Option<String> {
        let watching = lock(&self.inner.watches).len();
        let st = lock(&self.inner.status);
        let ago = st.since.elapsed().as_secs();
        Some(if self.inner.connected.load(Ordering::Relaxed) {
            format!(
                "control plane {}: connected for {ago}s, watching {watching} services\n",
                self.inner.addr
            )
        } else {
            format!(
                "control plane {}: not connected for {ago}s ({}); serving what it last knew of {watching} services\n",
                self.inner.addr,
                st.last_error.as_deref().unwrap_or("not asked yet")
            )
        })
    }
}

impl Inner {
    fn set_connected(&self, up: bool, error: Option<String>) {
        let was = self.connected.swap(up, Ordering::Relaxed);
        let mut st = lock(&self.status);
        if was != up {
            st.since = Instant::now();
            self.metrics.connected.set(i64::from(up));
            if !up {
                self.metrics.disconnects.inc();
            }
        }
        if let Some(e) = error {
            st.last_error = Some(e);
        }
    }

    /// The connection to the control plane, made if there is none.
    async fn connection(self: &Arc<Self>) -> Result<Conn, String> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = &*conn
            && c.alive.load(Ordering::Relaxed)
        {
            return Ok(c.clone());
        }
        *conn = None;
        let made = self.dial().await;
        match &made {
            Ok(c) => {
                *conn = Some(c.clone());
                self.set_connected(true, None);
                tracing::info!(addr = %self.addr, "connected to the control plane");
            }
            Err(e) => self.set_connected(false, Some(e.clone())),
        }
        made
    }

    async fn dial(self: &Arc<Self>) -> Result<Conn, String> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.addr))
            .await
            .map_err(|_| format!("connecting took over {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let sock = socket2::SockRef::from(&tcp);
        let _ = sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(10))
                .with_interval(Duration::from_secs(5))
                .with_retries(3),
        );
        let (send, driver) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_header_list_size(64 << 10)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            let error = match driver.await {
                Ok(()) => "the control plane closed the connection".to_string(),
                Err(e) => e.to_string(),
            };
            flag.store(false, Ordering::Relaxed);
            if let Some(inner) = inner.upgrade() {
                tracing::warn!(addr = %inner.addr, error = %error, "lost the control plane; serving what it last knew");
                inner.set_connected(false, Some(error));
            }
        });
        Ok(Conn { send, alive })
    }
}

/// Why one Get stream ended.
enum Ended {
    /// The control plane does not know the service (or it is gone).
    NotFound,
    /// The stream or connection broke; `connection` when the connection is at fault.
    Broken { error: String, connection: bool },
}

/// Follows one service until nobody watches it.
async fn follow(inner: Arc<Inner>, target: Authority, tx: Arc<watch::Sender<Resolution>>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let ended = tokio::select! {
            e = stream_once(&inner, &target, &tx) => e,
            () = tx.closed() => break,
        };
        let wait = match ended {
            Ended::NotFound => {
                backoff = BACKOFF_MIN;
                tx.send_if_modified(|r| {
                    let changed = *r != Resolution::Unknown;
                    *r = Resolution::Unknown;
                    changed
                });
                RECHECK_UNKNOWN
            }
            Ended::Broken { error, connection } => {
                tracing::debug!(target = %target, error = %error, "watch broken; keeping what was known");
                if connection {
                    inner.set_connected(false, Some(error.clone()));
                }
                tx.send_if_modified(|r| match r {
                    Resolution::Pending(_) => {
                        *r = Resolution::Pending(format!("control plane {}: {error}", inner.addr).into());
                        true
                    }
                    _ => false,
                });
                let wait = jitter(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = tx.closed() => break,
        }
    }
    let mut watches = lock(&inner.watches);
    if watches.get(&target).is_some_and(|t| Arc::ptr_eq(t, &tx)) && tx.receiver_count() == 0 {
        watches.remove(&target);
    }
}

/// A wait of between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

fn broken(error: impl std::fmt::Display) -> Ended {
    Ended::Broken {
        error: error.to_string(),
        connection: true,
    }
}

/// One Get stream, from request to its end, applying each update to `tx`.
async fn stream_once(inner: &Arc<Inner>, target: &Authority, tx: &watch::Sender<Resolution>) -> Ended {
    let conn = match inner.connection().await {
        Ok(c) => c,
        Err(e) => return broken(e),
    };
    let msg = pb::GetDestination {
        authority: target.to_string(),
        context: inner.context.clone(),
    };
    let mut answers = match grpc_client::call(&conn.send, &inner.addr, pb::GET_PATH, &msg.encode_to_vec()).await {
        Ok(a) => a,
        Err(end) => {
            if matches!(end, CallEnd::Broken { connection: true, .. }) {
                conn.alive.store(false, Ordering::Relaxed);
            }
            return ended(end);
        }
    };
    let mut endpoints: BTreeMap<SocketAddr, EndpointMeta> = BTreeMap::new();
    let mut routes = Routes::default();
    let mut first = true;
    loop {
        let msg = match answers.next().await {
            Ok(m) => m,
            Err(end) => return ended(end),
        };
        let update = match pb::Update::decode(msg) {
            Ok(u) => u,
            Err(e) => {
                return Ended::Broken {
                    error: format!("undecodable update: {e}"),
                    connection: false,
                };
            }
        };
        if first && !matches!(update.kind, Some(pb::update::Kind::Snapshot(_))) {
            return Ended::Broken {
                error: "the stream did not start with a snapshot".into(),
                connection: false,
            };
        }
        first = false;
        if let Some(pb::update::Kind::Snapshot(s)) = &update.kind {
            routes = routes_from(&s.routes);
        }
        apply(&mut endpoints, update, target);
        let list: Arc<[EndpointMeta]> = endpoints.values().cloned().collect();
        tx.send_if_modified(|r| {
            let next = Resolution::Endpoints(list, routes.clone());
            if *r == next {
                false
            } else {
                *r = next;
                true
            }
        });
    }
}

/// A snapshot's routes (codes above 31 cannot be a gRPC status: dropped).
fn routes_from(routes: &[pb::Route]) -> Routes {
    Routes(
        routes
            .iter()
            .map(|r| RoutePolicy {
                path: r.path.as_str().into(),
                retry_codes: r.retry_codes_set.then(|| {
                    r.retry_codes
                        .iter()
                        .filter(|c| **c < 32)
                        .fold(0u32, |m, c| m | (1 << c))
                }),
                timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms.min(86_400_000))),
            })
            .collect(),
    )
}

/// What a call's end means for the watch.
fn ended(end: CallEnd) -> Ended {
    match end {
        CallEnd::Status(5, _) => Ended::NotFound,
        CallEnd::Status(code, message) => Ended::Broken {
            error: format!("grpc-status {code} {message}"),
            connection: false,
        },
        CallEnd::Broken { error, connection } => Ended::Broken { error, connection },
    }
}

fn apply(endpoints: &mut BTreeMap<SocketAddr, EndpointMeta>, update: pb::Update, target: &Authority) {
    let add = |endpoints: &mut BTreeMap<SocketAddr, EndpointMeta>, list: Vec<pb::Endpoint>| {
        for e in list {
            match e.address.parse::<SocketAddr>() {
                Ok(addr) => {
                    let name = if e.workload.is_empty() { e.address } else { e.workload };
                    endpoints.insert(
                        addr,
                        EndpointMeta {
                            addr,
                            name: name.into(),
                            identity: (!e.identity.is_empty()).then(|| e.identity.as_str().into()),
                        },
                    );
                }
                Err(_) => {
                    tracing::warn!(target = %target, address = %e.address, "control plane sent a bad address; skipped")
                }
            }
        }
    };
    match update.kind {
        Some(pb::update::Kind::Snapshot(s)) => {
            endpoints.clear();
            add(endpoints, s.endpoints);
        }
        Some(pb::update::Kind::Add(a)) => add(endpoints, a.endpoints),
        Some(pb::update::Kind::Remove(r)) => {
            for a in r.addresses {
                if let Ok(addr) = a.parse::<SocketAddr>() {
                    endpoints.remove(&addr);
                }
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_apply_in_order() {
        let t = Authority::parse("s:1", None).unwrap();
        let ep = |a: &str| pb::Endpoint {
            address: a.into(),
            workload: String::new(),
            ..Default::default()
        };
        let mut eps = BTreeMap::new();
        let up = |k| pb::Update { kind: Some(k) };
        apply(
            &mut eps,
            up(pb::update::Kind::Snapshot(pb::Snapshot {
                endpoints: vec![ep("127.0.0.1:1"), ep("bad")],
                routes: Vec::new(),
            })),
            &t,
        );
        apply(
            &mut eps,
            up(pb::update::Kind::Add(pb::Added {
                endpoints: vec![ep("127.0.0.1:2")],
            })),
            &t,
        );
        apply(
            &mut eps,
            up(pb::update::Kind::Remove(pb::Removed {
                addresses: vec!["127.0.0.1:1".into()],
            })),
            &t,
        );
        let addrs: Vec<String> = eps.keys().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:2"]);
        assert_eq!(&*eps.values().next().unwrap().name, "127.0.0.1:2");
        apply(&mut eps, up(pb::update::Kind::Snapshot(pb::Snapshot::default())), &t);
        assert!(eps.is_empty(), "an empty snapshot empties the service");
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn routes_from_the_wire_keep_order_and_drop_impossible_codes() {
        let routes = routes_from(&[
            pb::Route {
                path: "/a.B/C".into(),
                retry_codes_set: true,
                retry_codes: vec![13, 40],
                timeout_ms: 250,
            },
            pb::Route {
                path: String::new(),
                retry_codes_set: false,
                retry_codes: vec![],
                timeout_ms: 0,
            },
        ]);
        let exact = routes.find("/a.B/C").unwrap();
        assert_eq!(
            (exact.retry_codes, exact.timeout),
            (Some(1 << 13), Some(Duration::from_millis(250)))
        );
        let other = routes.find("/a.B/D").unwrap();
        assert_eq!((other.retry_codes, other.timeout), (None, None));
    }
}
