//! weft-control serving proxies: changes reach every proxy within a second
//! under load, a control plane that is down costs no call, a typo in the
//! mesh file changes nothing, an unknown service is answered at once.

use std::time::{Duration, Instant};

use weft_api::destination::{GetDestination, destination_client::DestinationClient};
use weft_demo::square::{self, SquareOptions};
use weft_test_support::{DiscoveryFile, OpenLoad, TestProxy, eventually, metric, process::ControlPlane};

const SVC: &str = "square.test:50051";

/// The endpoint names a proxy's balancer for SVC lists (admin /balancers).
/// A `Get(authority)` watch and its first message (within 2 s).
async fn first_update(
    client: &mut DestinationClient<tonic::transport::Channel>,
    authority: &str,
) -> (
    weft_api::destination::Update,
    tonic::Streaming<weft_api::destination::Update>,
) {
    let mut stream = client
        .get(GetDestination {
            authority: authority.into(),
            context: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (first, stream)
}

async fn listed(proxy: &TestProxy) -> Vec<String> {
    let b = proxy.balancers().await;
    let mut names: Vec<String> = b
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["balancer"]["target"] == SVC)
        .flat_map(|b| b["balancer"]["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Waits until every proxy lists exactly `want`; returns how long it took.
async fn all_list(proxies: &[TestProxy], want: &[&str], deadline: Duration) -> Duration {
    let start = Instant::now();
    for p in proxies {
        eventually(
            &format!("proxy to list {want:?}"),
            deadline.saturating_sub(start.elapsed()),
            || async { (listed(p).await == want).then_some(()) },
        )
        .await;
    }
    start.elapsed()
}

async fn proxies(cp: &ControlPlane, n: usize) -> Vec<TestProxy> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TestProxy::start(&["--control-plane", &cp.addr.to_string()]).await);
    }
    out
}

fn failures(records: &[weft_test_support::CallRecord]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| {
            r.result
                .as_ref()
                .err()
                .map(|s| format!("{:?}: {}", s.code(), s.message()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_file_changes_reach_every_proxy_within_a_second_under_load() {
    let mut reps = Vec::new();
    for i in 0..4 {
        reps.push(
            square::spawn(SquareOptions::named(format!("square-{i}")))
                .await
                .unwrap(),
        );
    }
    let eps = |ids: &[usize]| -> Vec<(String, std::net::SocketAddr)> {
        ids.iter().map(|&i| (format!("square-{i}"), reps[i].addr)).collect()
    };
    let set = |disc: &DiscoveryFile, ids: &[usize]| {
        let list = eps(ids);
        let refs: Vec<(&str, std::net::SocketAddr)> = list.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        disc.set(SVC, &refs);
    };
    let disc = DiscoveryFile::new();
    set(&disc, &[0, 1, 2]);
    let cp = ControlPlane::start(&disc.path).await;
    let proxies = proxies(&cp, 3).await;
    // 3 × 167 calls/s: 500 calls/s through the mesh.
    let mut loads = Vec::new();
    for p in &proxies {
        loads.push(OpenLoad::start(p.channel(SVC).await, 167));
    }
    let started = Instant::now();
    all_list(&proxies, &["square-0", "square-1", "square-2"], Duration::from_secs(5)).await;
    let steady = Duration::from_millis(700); // the load runs a while between changes
    tokio::time::sleep(steady).await;

    set(&disc, &[0, 1]);
    let removed = all_list(&proxies, &["square-0", "square-1"], Duration::from_secs(1)).await;
    eprintln!("removal reached 3 proxies in {removed:?}");
    eventually("square-2 to stop getting calls", Duration::from_secs(2), || async {
        let before = reps[2].stats().calls;
        tokio::time::sleep(Duration::from_millis(100)).await;
        (reps[2].stats().calls == before && reps[2].stats().in_flight == 0).then_some(())
    })
    .await;

    tokio::time::sleep(steady).await;
    set(&disc, &[0, 1, 3]);
    let added = all_list(&proxies, &["square-0", "square-1", "square-3"], Duration::from_secs(1)).await;
    eprintln!("addition reached 3 proxies in {added:?}");

    // A typo: refused by the control plane, named by line; nothing changes.
    disc.write(&format!("services:\n  {SVC}:\n    endpionts: []\n"));
    let refused = eventually("the typo to be refused", Duration::from_secs(2), || async {
        let r = cp.ready().await;
        r.contains("refused").then_some(r)
    })
    .await;
    assert!(refused.contains("line 3") && refused.contains("endpionts"), "{refused}");
    tokio::time::sleep(steady).await; // traffic flows on with the typo in place
    for p in &proxies {
        assert_eq!(listed(p).await, ["square-0", "square-1", "square-3"]);
    }
    let refusals = metric(
        &weft_test_support::http_get(cp.admin, "/metrics").await.unwrap().1,
        "weft_control_source_refusals_total",
        &[],
    );
    assert_eq!(refusals, 1.0);

    let mut records = Vec::new();
    let ran = started.elapsed();
    for l in loads {
        records.extend(l.finish().await);
    }
    assert!(
        records.len() as f64 > 500.0 * ran.as_secs_f64() * 0.8,
        "only {} calls in {ran:?}",
        records.len()
    );
    assert_eq!(failures(&records), Vec::<String>::new());
    assert!(reps[3].stats().calls > 0, "the added replica got no call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_down_for_a_minute_costs_no_call_and_a_change_made_meanwhile_applies() {
    let outage = Duration::from_secs(
        std::env::var("WEFT_TEST_CONTROL_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let mut reps = Vec::new();
    for i in 0..3 {
        reps.push(
            square::spawn(SquareOptions::named(format!("square-{i}")))
                .await
                .unwrap(),
        );
    }
    let disc = DiscoveryFile::new();
    disc.set(SVC, &[("square-0", reps[0].addr), ("square-1", reps[1].addr)]);
    let mut cp = ControlPlane::start(&disc.path).await;
    let proxies = proxies(&cp, 2).await;
    let mut loads = Vec::new();
    for p in &proxies {
        loads.push(OpenLoad::start(p.channel(SVC).await, 250));
    }
    all_list(&proxies, &["square-0", "square-1"], Duration::from_secs(5)).await;

    let down = Instant::now();
    cp.kill().await;
    for p in &proxies {
        eventually("the proxy to notice", Duration::from_secs(5), || async {
            let m = p.metrics().await;
            (metric(&m, "weft_control_plane_connected", &[]) == 0.0).then_some(())
        })
        .await;
        let (status, ready) = weft_test_support::http_get(p.admin, "/ready").await.unwrap();
        assert_eq!(status, 200, "{ready}");
        assert!(
            ready.contains("not connected") && ready.contains("serving what it last knew"),
            "{ready}"
        );
    }
    // A change made while the control plane is down.
    disc.set(
        SVC,
        &[
            ("square-0", reps[0].addr),
            ("square-1", reps[1].addr),
            ("square-2", reps[2].addr),
        ],
    );
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    for p in &proxies {
        assert_eq!(listed(p).await, ["square-0", "square-1"], "kept what it knew");
    }
    let before = reps[2].stats().calls;
    assert_eq!(before, 0);

    cp.restart().await;
    all_list(&proxies, &["square-0", "square-1", "square-2"], Duration::from_secs(10)).await;
    for p in &proxies {
        let m = p.metrics().await;
        assert_eq!(metric(&m, "weft_control_plane_connected", &[]), 1.0);
        assert!(metric(&m, "weft_control_plane_disconnects_total", &[]) >= 1.0);
    }
    eventually("square-2 to get calls", Duration::from_secs(2), || async {
        (reps[2].stats().calls > 0).then_some(())
    })
    .await;

    let mut records = Vec::new();
    for l in loads {
        records.extend(l.finish().await);
    }
    let expected = 500.0 * outage.as_secs_f64();
    assert!(records.len() as f64 > expected * 0.9, "only {} calls", records.len());
    assert_eq!(failures(&records), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_is_answered_at_once() {
    let disc = DiscoveryFile::new();
    disc.set(SVC, &[]);
    let cp = ControlPlane::start(&disc.path).await;

    // The API: NOT_FOUND, not a stream left hanging.
    let mut client = DestinationClient::connect(format!("http://{}", cp.addr)).await.unwrap();
    let mut req = tonic::Request::new(GetDestination {
        authority: "nope.test:80".into(),
        context: "test".into(),
    });
    req.set_timeout(Duration::from_secs(2));
    let Err(err) = client.get(req).await else {
        panic!("an unknown service got a stream")
    };
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // A known service with no endpoints: an empty snapshot.
    let (first, stream) = first_update(&mut client, SVC).await;
    assert!(
        matches!(first.kind, Some(weft_api::destination::update::Kind::Snapshot(ref s)) if s.endpoints.is_empty()),
        "{first:?}"
    );

    // Through a proxy: the call fails fast, naming the service.
    let proxy = TestProxy::start(&["--control-plane", &cp.addr.to_string(), "--balancer-idle-timeout", "1s"]).await;
    let mut sq = weft_api::square::square_client::SquareClient::new(proxy.channel("nope.test:80").await);
    let mut call = tonic::Request::new(weft_api::square::Input { value: 2 });
    call.set_timeout(Duration::from_secs(2));
    let Err(err) = sq.square(call).await else {
        panic!("a call to an unknown service succeeded")
    };
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("nope.test:80"), "{err:?}");

    // A service whose every endpoint is gone is empty (not pending, not
    // the last endpoints): its calls fail (after the fail-fast timeout, in
    // case endpoints come), saying so.
    let mut sq = weft_api::square::square_client::SquareClient::new(proxy.channel(SVC).await);
    let mut call = tonic::Request::new(weft_api::square::Input { value: 2 });
    call.set_timeout(Duration::from_secs(10));
    let asked = Instant::now();
    let Err(err) = sq.square(call).await else {
        panic!("a call to a service with no endpoints succeeded")
    };
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("no endpoints") || err.message().contains("no ready"),
        "{err:?}"
    );
    eprintln!(
        "a call to an empty service failed in {:?}: {}",
        asked.elapsed(),
        err.message()
    );

    // Watches are opened on first use and closed when their balancer goes idle.
    let watches = || async {
        metric(
            &weft_test_support::http_get(cp.admin, "/metrics").await.unwrap().1,
            "weft_control_watches",
            &[],
        )
    };
    assert_eq!(watches().await, 2.0, "the stream above and the proxy's watch of {SVC}");
    drop(stream);
    drop(sq); // the client's connection (its route memo holds the balancer)
    eventually("the idle watch to close", Duration::from_secs(10), || async {
        (watches().await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reach_the_proxies_through_the_control_plane_and_change_live() {
    let slow = square::spawn(SquareOptions::named("square-0")).await.unwrap();
    slow.service.set_behavior(weft_api::square::Behavior {
        delay_ms: 300,
        ..Default::default()
    });
    let mesh = |timeout: &str| {
        format!(
            "services:\n  {SVC}:\n    endpoints: [{}]\n    routes:\n      - path: /square.Square/\n        timeout: {timeout}\n",
            slow.addr
        )
    };
    let disc = DiscoveryFile::new();
    disc.write(&mesh("50ms"));
    let cp = ControlPlane::start(&disc.path).await;

    // What weft-control sends: the route in the snapshot.
    let mut client = DestinationClient::connect(format!("http://{}", cp.addr)).await.unwrap();
    let (first, _stream) = first_update(&mut client, SVC).await;
    let Some(weft_api::destination::update::Kind::Snapshot(s)) = first.kind else {
        panic!("{first:?}")
    };
    assert_eq!(s.routes.len(), 1, "{s:?}");
    assert_eq!(
        (s.routes[0].path.as_str(), s.routes[0].timeout_ms),
        ("/square.Square/", 50)
    );

    // Through a proxy: the 50 ms timeout fails a 300 ms call ...
    let proxy = TestProxy::start(&["--control-plane", &cp.addr.to_string()]).await;
    let mut sq = weft_api::square::square_client::SquareClient::new(proxy.channel(SVC).await);
    let err = sq.square(weft_api::square::Input { value: 2 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");

    // ... and a longer one written to the file lets the next calls through.
    disc.write(&mesh("5s"));
    eventually("the new timeout to apply", Duration::from_secs(5), || {
        let mut sq = sq.clone();
        async move { sq.square(weft_api::square::Input { value: 2 }).await.ok() }
    })
    .await;
}
