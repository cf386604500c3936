//! Endpoints come and go under load: nothing that could be saved is lost.

use std::time::{Duration, Instant};

use weft_demo::square::{self, SquareOptions};
use weft_test_support::{DiscoveryFile, OpenLoad, TestProxy, eventually, process};

const SVC: &str = "square.test:50051";

/// A numeric field of one endpoint in admin's /balancers.
fn endpoint_field(balancers: &serde_json::Value, name: &str, field: &str) -> Option<u64> {
    balancers.as_array()?.iter().find_map(|b| {
        b["balancer"]["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)?[field]
            .as_u64()
    })
}

fn connects(balancers: &serde_json::Value, name: &str) -> Option<u64> {
    endpoint_field(balancers, name, "connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_removed_and_added_under_load() {
    let mut reps = Vec::new();
    for i in 0..4 {
        reps.push(
            square::spawn(SquareOptions::named(format!("square-{i}")))
                .await
                .unwrap(),
        );
    }
    let disc = DiscoveryFile::new();
    disc.set(
        SVC,
        &[
            ("square-0", reps[0].addr),
            ("square-1", reps[1].addr),
            ("square-2", reps[2].addr),
        ],
    );
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let load = OpenLoad::start(proxy.channel(SVC).await, 200);

    tokio::time::sleep(Duration::from_millis(700)).await; // let the load run a while
    // Remove square-2 while calls are in flight.
    disc.set(SVC, &[("square-0", reps[0].addr), ("square-1", reps[1].addr)]);
    eventually("square-2 to stop getting calls", Duration::from_secs(2), || async {
        let before = reps[2].stats().calls;
        tokio::time::sleep(Duration::from_millis(100)).await;
        (reps[2].stats().calls == before && reps[2].stats().in_flight == 0).then_some(())
    })
    .await;

    // Add square-3: it must get calls within a second.
    let added = Instant::now();
    disc.set(
        SVC,
        &[
            ("square-0", reps[0].addr),
            ("square-1", reps[1].addr),
            ("square-3", reps[3].addr),
        ],
    );
    eventually("square-3 to receive calls", Duration::from_secs(1), || async {
        (reps[3].stats().calls > 0).then_some(())
    })
    .await;
    eprintln!("square-3 got its first call {:?} after it was added", added.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let calls = load.finish().await;
    let failed: Vec<_> = calls.iter().filter(|c| c.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed, e.g. {:?}",
        failed.len(),
        calls.len(),
        failed[0].result
    );
    assert!(calls.len() > 300, "{} calls", calls.len());

    // The endpoints that never changed kept their one connection.
    let b = proxy.balancers().await;
    assert_eq!(connects(&b, "square-0"), Some(1), "{b:#}");
    assert_eq!(connects(&b, "square-1"), Some(1), "{b:#}");
    assert_eq!(connects(&b, "square-2"), None, "square-2 is gone: {b:#}");
    // ... and their balancing state: the endpoint that counted square-0's
    // first call is the one that counted its last.
    assert_eq!(
        endpoint_field(&b, "square-0", "served"),
        Some(reps[0].stats().calls),
        "{b:#}"
    );
    assert_eq!(
        endpoint_field(&b, "square-1", "served"),
        Some(reps[1].stats().calls),
        "{b:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_only_its_calls_in_flight() {
    let mut procs = Vec::new();
    let mut eps = Vec::new();
    for i in 0..3 {
        let (p, addr) = process::square(&format!("square-{i}"), &["--delay-ms", "5"]).await;
        procs.push(p);
        eps.push((format!("square-{i}"), addr));
    }
    let disc = DiscoveryFile::new();
    let refs: Vec<(&str, std::net::SocketAddr)> = eps.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    disc.set(SVC, &refs);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let load = OpenLoad::start(proxy.channel(SVC).await, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;

    let killed_at = Instant::now();
    procs[2].signal("KILL");
    procs[2].child.wait().await.unwrap();
    let dead_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = load.finish().await;

    let failed: Vec<_> = calls.iter().filter(|c| c.result.is_err()).collect();
    for f in &failed {
        assert!(
            f.started <= dead_at,
            "a call started {:?} after square-2 died failed: {:?}",
            f.started - dead_at,
            f.result
        );
        assert!(f.finished >= killed_at, "a call failed before the kill: {:?}", f.result);
    }
    // At 200 calls/s with a 5 ms delay, about one call is in flight on each replica.
    assert!(failed.len() <= 5, "{} calls failed", failed.len());
    let after: Vec<_> = calls.iter().filter(|c| c.started > dead_at).collect();
    assert!(after.len() > 200, "{} calls after the kill", after.len());
    assert!(after.iter().all(|c| matches!(&c.result, Ok(h) if h != "square-2")));
    eprintln!(
        "{} calls, {} failed (in flight on the killed replica)",
        calls.len(),
        failed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_drains_under_load_loses_no_call() {
    // Two replicas, each behind its own inbound proxy; the client's proxy
    // balances over the two inbound proxies. One of them drains (GOAWAY):
    // the calls it had accepted finish there, the ones it had not are sent
    // to the other, and none fails.
    let mut opts = SquareOptions::named("square-a");
    opts.behavior.delay_ms = 10;
    let a = square::spawn(opts).await.unwrap();
    let mut opts = SquareOptions::named("square-b");
    opts.behavior.delay_ms = 10;
    let b = square::spawn(opts).await.unwrap();
    let inbound_a = TestProxy::start(&["--inbound-forward", &a.addr.to_string(), "--shutdown-grace", "5s"]).await;
    let inbound_b = TestProxy::start(&["--inbound-forward", &b.addr.to_string()]).await;
    let disc = DiscoveryFile::new();
    disc.set(SVC, &[("pod-a", inbound_a.inbound), ("pod-b", inbound_b.inbound)]);
    let client = TestProxy::with_discovery(&disc, &[]).await;
    let load = OpenLoad::start(client.channel(SVC).await, 400);
    eventually("both pods to serve", Duration::from_secs(3), || async {
        (a.stats().calls > 50 && b.stats().calls > 50).then_some(())
    })
    .await;
    inbound_a.proxy.shutdown();
    assert!(inbound_a.proxy.wait().await, "pod-a drained in time");
    let drained_at = a.stats().calls;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = load.finish().await;
    let failed: Vec<_> = calls.iter().filter(|c| c.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed, e.g. {:?}",
        failed.len(),
        calls.len(),
        failed[0].result
    );
    assert_eq!(a.stats().calls, drained_at, "nothing reached pod-a after its drain");
    assert!(calls.len() > 300, "{} calls", calls.len());
}
