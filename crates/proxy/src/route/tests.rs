//! The router on its own: destinations, balancers made once, idle eviction.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::Router;
use crate::{
    balance::BalanceParams,
    config::{Algorithm, H2Engine},
    core::{Authority, Dest, Proto},
    discovery::{Discover, NoDiscovery, Resolution},
    endpoint::ClientParams,
    error::ProxyError,
    telemetry::metrics::Metrics,
    transport::{LocalAddrs, OwnAddrs},
};

/// Discovery that knows one virtual IP.
struct OneVip(SocketAddr, Authority);

impl Discover for OneVip {
    fn resolve(&self, _: &Authority) -> watch::Receiver<Resolution> {
        watch::channel(Resolution::Unknown).1
    }
    fn service_at(&self, addr: SocketAddr) -> Option<Authority> {
        (addr == self.0).then(|| self.1.clone())
    }
    fn knows(&self, target: &Authority) -> bool {
        *target == self.1
    }
}

fn router(discovery: Arc<dyn Discover>, idle: Duration) -> Arc<Router> {
    let params = BalanceParams {
        algorithm: Algorithm::PeakEwma,
        decay: Duration::from_secs(10),
        accrual: weft_balance::Accrual::default(),
        retry_budget: (0.2, 10.0),
    };
    let client = Arc::new(ClientParams {
        connect_timeout: Duration::from_millis(200),
        max_header_bytes: 65_536,
        fail_fast: Duration::from_secs(3),
        metrics: Metrics::new().0,
        engine: H2Engine::Splice,
        timeouts: weft_splice::Timeouts {
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(20),
            idle: None,
            header: Duration::from_secs(10),
        },
        sockets: crate::transport::SocketOptions {
            user_timeout: None,
            keepalive: None,
        },
        http1_max_connections: 1024,
        http1_idle_timeout: Duration::from_secs(4),
        identity: None,
    });
    let own = OwnAddrs::new(
        vec![("outbound", "127.0.0.1:4140".parse().unwrap())],
        LocalAddrs::read(),
    );
    Router::new(discovery, own, params, client, idle)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn requests_name_services_addresses_or_virtual_ips() {
    let vip = addr("10.96.0.10:50051");
    let square = Authority::parse("square.demo:50051", None).unwrap();
    let r = router(Arc::new(OneVip(vip, square.clone())), Duration::from_secs(300));
    assert_eq!(
        r.dest_for_authority(Some("Square.Demo:50051"), None).unwrap(),
        Dest::Service(square.clone())
    );
    assert_eq!(
        r.dest_for_authority(Some("web.demo"), None).unwrap(),
        Dest::Service(Authority::parse("web.demo:80", None).unwrap()),
        "HTTP's default port"
    );
    assert_eq!(
        r.dest_for_authority(Some("web.demo"), Some("https")).unwrap(),
        Dest::Service(Authority::parse("web.demo:443", None).unwrap())
    );
    assert_eq!(
        r.dest_for_authority(Some("10.0.0.7:8080"), None).unwrap(),
        Dest::Addr(addr("10.0.0.7:8080")),
        "an IP literal that is no service's is that address"
    );
    assert_eq!(
        r.dest_for_authority(Some("10.96.0.10:50051"), None).unwrap(),
        Dest::Service(square.clone()),
        "a service's virtual IP is the service"
    );
    assert_eq!(r.dest_at(vip), Dest::Service(square));
    assert!(matches!(r.dest_for_authority(None, None), Err(ProxyError::NoTarget(_))));
    assert!(
        matches!(
            r.dest_for_authority(Some("127.0.0.1:4140"), None),
            Err(ProxyError::Loop {
                listener: "outbound",
                ..
            })
        ),
        "the proxy's own listener is a loop"
    );
    assert!(matches!(
        r.dest_for_authority(Some("a b"), None),
        Err(ProxyError::NoTarget(_))
    ));
}

#[tokio::test]
async fn one_balancer_per_destination_and_protocol() {
    let r = router(Arc::new(NoDiscovery), Duration::from_secs(300));
    let app = Dest::Addr(addr("127.0.0.1:1"));
    let a = r.balancer(&app, Proto::Http1);
    let b = r.balancer(&app, Proto::Http1);
    assert!(
        Arc::ptr_eq(&a, &b),
        "the same destination and protocol share a balancer"
    );
    let c = r.balancer(&app, Proto::Opaque);
    assert!(!Arc::ptr_eq(&a, &c), "another protocol gets its own");
    let d = r.balancer(&Dest::Addr(addr("127.0.0.1:2")), Proto::Http1);
    assert!(!Arc::ptr_eq(&a, &d));
    let views = r.views();
    assert_eq!(views.len(), 3, "{views:?}");
}

#[tokio::test(start_paused = true)]
async fn idle_balancers_are_evicted_unless_requests_are_in_flight() {
    let r = router(Arc::new(NoDiscovery), Duration::from_millis(400));
    let busy_dest = Dest::Addr(addr("127.0.0.1:1"));
    let idle_dest = Dest::Addr(addr("127.0.0.1:2"));
    let busy = r.balancer(&busy_dest, Proto::Http1);
    let idle = r.balancer(&idle_dest, Proto::Http1);
    let held = busy.pick_now(None).expect("ready").expect("picked");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(idle.is_closed(), "an idle balancer is dropped");
    assert!(!busy.is_closed(), "a balancer with a request in flight is kept");
    assert!(Arc::ptr_eq(&busy, &r.balancer(&busy_dest, Proto::Http1)));
    let again = r.balancer(&idle_dest, Proto::Http1);
    assert!(!Arc::ptr_eq(&idle, &again), "the next request makes a new one");
    assert!(!again.is_closed());
    drop(held);
}
