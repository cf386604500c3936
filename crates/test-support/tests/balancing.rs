//! Per-request balancing: spread, latency awareness, the endpoint's stream
//! limit, and HTTP/1.1.

use weft_api::square::Behavior;
use weft_demo::square::{self, SquareHandle, SquareOptions};
use weft_test_support::{DiscoveryFile, TestProxy, mesh::channel_via, square_calls, tally};

const SVC: &str = "square.test:50051";

async fn replicas(n: usize) -> Vec<SquareHandle> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            square::spawn(SquareOptions::named(format!("square-{i}")))
                .await
                .unwrap(),
        );
    }
    v
}

fn endpoints(replicas: &[SquareHandle]) -> Vec<(String, std::net::SocketAddr)> {
    replicas
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("square-{i}"), r.addr))
        .collect()
}

fn set(disc: &DiscoveryFile, eps: &[(String, std::net::SocketAddr)]) {
    let refs: Vec<(&str, std::net::SocketAddr)> = eps.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    disc.set(SVC, &refs);
}

fn shares(hosts: &[String]) -> std::collections::BTreeMap<String, f64> {
    let total = hosts.len() as f64;
    tally(hosts.iter().map(String::as_str))
        .into_iter()
        .map(|(h, n)| (h, n as f64 / total))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_spreads_over_every_replica_through_weft_but_not_through_l4() {
    let reps = replicas(3).await;
    let disc = DiscoveryFile::new();
    set(&disc, &endpoints(&reps));
    let proxy = TestProxy::with_discovery(&disc, &[]).await;

    let hosts = square_calls(proxy.channel(SVC).await, 3000, 8).await;
    let s = shares(&hosts);
    eprintln!("through weft: {s:?}");
    assert_eq!(s.len(), 3, "every replica answers: {s:?}");
    for (host, share) in &s {
        assert!(
            (0.25..=0.42).contains(share),
            "{host} served {:.1}% through weft",
            share * 100.0
        );
    }

    let (l4, _task) = weft_demo::l4::spawn(reps.iter().map(|r| r.addr).collect())
        .await
        .unwrap();
    let hosts = square_calls(channel_via(l4, SVC).await, 3000, 8).await;
    let s = shares(&hosts);
    eprintln!("through the connection balancer: {s:?}");
    assert_eq!(s.len(), 1, "one connection, one replica: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_calls_spread_too() {
    let reps = replicas(3).await;
    let disc = DiscoveryFile::new();
    set(&disc, &endpoints(&reps));
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let hosts = square_calls(proxy.channel(SVC).await, 1500, 1).await;
    let s = shares(&hosts);
    eprintln!("sequential through weft: {s:?}");
    assert_eq!(s.len(), 3, "every replica answers: {s:?}");
    for (host, share) in &s {
        assert!((0.25..=0.42).contains(share), "{host} served {:.1}%", share * 100.0);
    }
}

async fn slow_replica_share(algorithm: &str) -> f64 {
    let reps = replicas(3).await;
    reps[2].service.set_behavior(Behavior {
        delay_ms: 20,
        ..Default::default()
    });
    let disc = DiscoveryFile::new();
    set(&disc, &endpoints(&reps));
    let proxy = TestProxy::with_discovery(&disc, &["--balancer", algorithm]).await;
    let hosts = square_calls(proxy.channel(SVC).await, 3000, 8).await;
    let s = shares(&hosts);
    eprintln!("{algorithm} with square-2 slow: {s:?}");
    assert!(hosts.iter().all(|h| h.starts_with("square-")), "a call failed");
    s.get("square-2").copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_gets_little_traffic_with_peak_ewma_and_a_third_with_round_robin() {
    let ewma = slow_replica_share("peak-ewma").await;
    assert!(ewma < 0.10, "peak-EWMA sent {:.1}% to the slow replica", ewma * 100.0);
    let rr = slow_replica_share("round-robin").await;
    assert!(
        (0.30..=0.37).contains(&rr),
        "round-robin sent {:.1}% to the slow replica",
        rr * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_balances_too() {
    let reps = replicas(3).await;
    let disc = DiscoveryFile::new();
    set(&disc, &endpoints(&reps));
    let proxy = TestProxy::with_discovery(&disc, &["--balancer", "least-request"]).await;
    let s = shares(&square_calls(proxy.channel(SVC).await, 1500, 8).await);
    assert_eq!(s.len(), 3, "{s:?}");
    for (host, share) in &s {
        assert!((0.25..=0.42).contains(share), "{host} served {:.1}%", share * 100.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_stream_limit_is_honoured_exactly() {
    let mut opts = SquareOptions::named("square-0");
    opts.max_concurrent_streams = Some(1);
    opts.behavior.delay_ms = 2;
    let rep = square::spawn(opts).await.unwrap();
    let disc = DiscoveryFile::new();
    disc.set(SVC, &[("square-0", rep.addr)]);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    // 50 calls at once on one client connection, before the proxy has ever
    // connected to the server: none may be refused.
    let hosts = square_calls(proxy.channel(SVC).await, 50, 50).await;
    let failed: Vec<&String> = hosts.iter().filter(|h| h.starts_with("error")).collect();
    assert!(
        failed.is_empty(),
        "{} calls failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let stats = rep.stats();
    assert_eq!(stats.calls, 50);
    assert_eq!(
        stats.max_in_flight, 1,
        "the server saw {} streams at once",
        stats.max_in_flight
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_requests_are_balanced_one_by_one() {
    use http_body_util::{BodyExt, Empty};
    let mut eps = Vec::new();
    for i in 0..3 {
        eps.push((
            format!("web-{i}"),
            weft_test_support::http1::spawn_named(&format!("web-{i}")).await,
        ));
    }
    let disc = DiscoveryFile::new();
    let refs: Vec<(&str, std::net::SocketAddr)> = eps.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    disc.set("web.test:80", &refs);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;

    // One keep-alive connection, 300 requests, one after another.
    let stream = tokio::net::TcpStream::connect(proxy.outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    let mut names = Vec::new();
    for _ in 0..300 {
        sender.ready().await.expect("the kept-alive connection is reusable");
        let req = http::Request::get("/")
            .header("host", "web.test")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .expect("request over the kept-alive connection");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        names.push(String::from_utf8(body.to_vec()).unwrap());
    }
    assert!(!conn_task.is_finished(), "the client connection stayed open");
    // The proxy reuses its own keep-alive connections to the servers.
    let connects = weft_test_support::metric(
        &proxy.metrics().await,
        "weft_endpoint_connects_total",
        &[("target", "web.test:80")],
    );
    assert!(
        (3.0..=6.0).contains(&connects),
        "{connects} connections for 300 requests"
    );
    let s = shares(&names);
    eprintln!("HTTP/1.1 through weft: {s:?}");
    assert_eq!(s.len(), 3, "{s:?}");
    for (host, share) in &s {
        assert!((0.2..=0.47).contains(share), "{host} served {:.1}%", share * 100.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_fast_gets_almost_nothing() {
    // UNAVAILABLE in a fraction of a millisecond: the fastest answers of
    // all, which the first weft counted as good latency (a third of the
    // calls in bench/results/2026-12-02-lab-first.md). A failure is charged
    // instead.
    let reps = replicas(3).await;
    reps[2].service.set_behavior(Behavior {
        error_rate: 1.0,
        error_code: 14,
        ..Default::default()
    });
    let disc = DiscoveryFile::new();
    set(&disc, &endpoints(&reps));
    // The balancer alone: failure accrual (ejection) and retries off
    // (resilience.rs has them on).
    let proxy = TestProxy::with_discovery(&disc, &["--accrual-failures", "0", "--retry-codes", "off"]).await;
    let hosts = square_calls(proxy.channel(SVC).await, 3000, 8).await;
    let failed = hosts.iter().filter(|h| h.starts_with("error:Unavailable")).count();
    assert_eq!(
        failed as u64,
        reps[2].stats().calls,
        "every failure came from square-2, and only failures"
    );
    assert!(failed < 150, "square-2 got {failed} of 3,000 calls (5 % is 150)");
    let m = proxy.metrics().await;
    assert!(
        weft_test_support::metric(&m, "weft_endpoint_consecutive_failures", &[("endpoint", "square-2")]) >= 1.0,
        "the failures show on the endpoint:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_beside_long_lived_streams_gets_its_share_not_every_call() {
    use futures_util::StreamExt;
    use tokio_stream::wrappers::ReceiverStream;
    use weft_api::grpc_testing::{
        ResponseParameters, StreamingOutputCallRequest, test_service_client::TestServiceClient,
    };

    let reps = replicas(4).await;
    let disc = DiscoveryFile::new();
    set(&disc, &endpoints(&reps[..3]));
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let channel = proxy.channel(SVC).await;
    // 100 streams, each answered once and then held open.
    let mut held = Vec::new();
    for _ in 0..100 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let ping = StreamingOutputCallRequest {
            response_parameters: vec![ResponseParameters {
                size: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        tx.send(ping).await.unwrap();
        let mut stream = TestServiceClient::new(channel.clone())
            .full_duplex_call(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        stream.next().await.expect("an answer").expect("a message");
        held.push((tx, stream));
    }
    // A fourth replica joins (a rollout): it has no streams.
    set(&disc, &endpoints(&reps));
    weft_test_support::eventually("square-3 to take calls", std::time::Duration::from_secs(10), || {
        let channel = channel.clone();
        async move {
            let hosts = square_calls(channel, 20, 1).await;
            hosts.iter().any(|h| h == "square-3").then_some(())
        }
    })
    .await;
    let s = shares(&square_calls(channel.clone(), 2000, 4).await);
    eprintln!("beside 100 streams: {s:?}");
    // Counted as in flight for their whole life, the streams made the old
    // replicas look 34 times as loaded: the new one took nearly every call.
    let new = s.get("square-3").copied().unwrap_or(0.0);
    assert!(
        (0.15..=0.40).contains(&new),
        "square-3 served {:.1}%: {s:?}",
        new * 100.0
    );
    assert_eq!(s.len(), 4, "{s:?}");
    // The streams were open all along.
    for (tx, _) in &held {
        assert!(!tx.is_closed(), "a held stream closed");
    }
}
