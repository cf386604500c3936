//! The balancer on its own: endpoints that are ready without a connection
//! (HTTP/1.1 endpoints connect on demand, so none is opened here), picks
//! taken and released by hand.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{BalanceParams, Balancer, InFlight};
use crate::{
    config::{Algorithm, H2Engine},
    core::{Authority, Proto},
    discovery::{EndpointMeta, Resolution},
    endpoint::ClientParams,
    error::ProxyError,
    telemetry::metrics::Metrics,
};

fn params() -> BalanceParams {
    BalanceParams {
        algorithm: Algorithm::PeakEwma,
        decay: Duration::from_secs(10),
        accrual: weft_balance::Accrual::default(),
        retry_budget: (0.2, 10.0),
    }
}

fn client() -> Arc<ClientParams> {
    Arc::new(ClientParams {
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
    })
}

fn meta(port: u16) -> EndpointMeta {
    EndpointMeta {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        name: format!("ep-{port}").into(),
        identity: None,
    }
}

fn endpoints(ports: &[u16]) -> Resolution {
    Resolution::Endpoints(ports.iter().map(|p| meta(*p)).collect(), Default::default())
}

fn balancer(proto: Proto, ports: &[u16]) -> Arc<Balancer> {
    let metas: Vec<EndpointMeta> = ports.iter().map(|p| meta(*p)).collect();
    Balancer::fixed(
        Authority::parse("svc:80", None).unwrap(),
        proto,
        &metas,
        params(),
        client(),
    )
}

fn picked(b: &Balancer) -> InFlight {
    b.pick_now(None)
        .expect("an endpoint is ready")
        .expect("the pick succeeds")
}

fn name(p: &InFlight) -> String {
    p.endpoint().meta.name.to_string()
}

#[tokio::test]
async fn equal_endpoints_share_the_picks() {
    let b = balancer(Proto::Http1, &[1, 2, 3]);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..3_000 {
        *counts.entry(name(&picked(&b))).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (ep, n) in &counts {
        assert!((800..=1_200).contains(n), "{ep} got {n} of 3,000 picks: {counts:?}");
    }
}

#[tokio::test]
async fn a_busy_endpoint_is_rarely_picked_beside_idle_ones() {
    let b = balancer(Proto::Http1, &[1, 2, 3]);
    // A request in flight on one endpoint; the others idle.
    let held = loop {
        let p = picked(&b);
        if name(&p) == "ep-1" {
            break p;
        }
    };
    // Drawn with both idle ones (three choices of three), it weighs
    // (1 + 1)^6 = 64 times as much as each: picked about once in 129.
    let busy = (0..1_000).filter(|_| name(&picked(&b)) == "ep-1").count();
    assert!(busy <= 30, "the busy endpoint got {busy} of 1,000 picks");
    drop(held);
    assert_eq!(b.in_flight(), 0, "released picks lower the count");
}

#[tokio::test]
async fn a_new_endpoint_takes_requests_at_once_and_the_others_keep_their_state() {
    let b = balancer(Proto::Http1, &[1, 2]);
    let before: Vec<_> = (0..20).map(|_| picked(&b)).collect();
    let ep1 = before
        .iter()
        .find(|p| name(p) == "ep-1")
        .expect("ep-1 picked")
        .endpoint()
        .clone();
    drop(before);
    b.apply(endpoints(&[1, 2, 3]));
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        let p = picked(&b);
        if name(&p) == "ep-1" {
            assert!(
                Arc::ptr_eq(p.endpoint(), &ep1),
                "an unchanged endpoint is kept, not replaced"
            );
        }
        *counts.entry(name(&p)).or_default() += 1;
    }
    assert!(counts.get("ep-3").copied().unwrap_or(0) >= 50, "{counts:?}");
    let view = b.view();
    let ep1_view = view.endpoints.iter().find(|e| e.name == "ep-1").unwrap();
    assert!(ep1_view.served >= 1, "ep-1's pick count survived the update: {view:?}");
}

#[tokio::test]
async fn a_removed_endpoint_finishes_its_requests_and_takes_no_new_ones() {
    let b = balancer(Proto::Http1, &[1, 2, 3]);
    let on_3 = loop {
        let p = picked(&b);
        if name(&p) == "ep-3" {
            break p;
        }
    };
    b.apply(endpoints(&[1, 2]));
    assert!(on_3.endpoint().is_retired(), "the removed endpoint is retired");
    for _ in 0..300 {
        assert_ne!(name(&picked(&b)), "ep-3");
    }
    // The request in flight on it is still whole, and finishes.
    assert_eq!(on_3.endpoint().meta.addr.port(), 3);
    drop(on_3);
    assert_eq!(b.view().endpoints.len(), 2);
}

#[tokio::test]
async fn with_every_endpoint_unreachable_a_request_waits_then_fails_saying_why() {
    // HTTP/2 endpoints are ready only once connected; nothing listens here.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let b = balancer(Proto::Http2, &[closed]);
    assert!(
        b.pick_now(None).is_none(),
        "no endpoint is ready: the request must wait"
    );
    let start = Instant::now();
    let err = b.pick(start + Duration::from_millis(300), None).await.unwrap_err();
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "it waited until its deadline"
    );
    match &err {
        ProxyError::Unavailable { detail, .. } => {
            assert!(detail.contains("unreachable"), "{detail}");
            assert!(detail.contains(&format!("ep-{closed}")), "{detail}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_waiting_request_takes_an_endpoint_as_soon_as_one_appears() {
    let b = balancer(Proto::Http1, &[]);
    assert!(b.pick_now(None).is_none());
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.pick(Instant::now() + Duration::from_secs(30), None).await })
    };
    b.apply(endpoints(&[7]));
    let p = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiting pick was woken")
        .unwrap()
        .expect("it got the new endpoint");
    assert_eq!(name(&p), "ep-7");
}

#[tokio::test]
async fn unknown_services_fail_at_once_and_pending_discovery_says_why() {
    let b = balancer(Proto::Http1, &[1]);
    b.apply(Resolution::Unknown);
    assert!(matches!(b.pick_now(None), Some(Err(ProxyError::UnknownService(_)))));

    let pending = Balancer::discovered(
        Authority::parse("svc:80", None).unwrap(),
        Proto::Http1,
        tokio::sync::watch::channel(Resolution::Pending("the mesh file is missing".into())).1,
        params(),
        client(),
    );
    let err = pending
        .pick(Instant::now() + Duration::from_millis(50), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the mesh file is missing"), "{err}");
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint_when_one_is_ready() {
    let b = balancer(Proto::Http1, &[1, 2]);
    let failed = picked(&b);
    let avoid = failed.candidate().clone();
    for _ in 0..1_000 {
        let p = b.pick_now(Some(&avoid)).expect("ready").expect("picked");
        assert_ne!(
            name(&p),
            name(&failed),
            "a retry went back to the endpoint that failed it"
        );
    }
    // With only that endpoint, the retry goes there (better than failing).
    let one = balancer(Proto::Http1, &[1]);
    let failed = picked(&one);
    let again = one.pick_now(Some(&failed.candidate())).expect("ready").expect("picked");
    assert_eq!(name(&again), name(&failed));
}
