//! Failure accrual with a real proxy and real replicas: a replica that
//! keeps answering UNAVAILABLE is ejected (probed with single requests) and
//! comes back when it recovers; the panic threshold keeps the rest serving.

use std::time::{Duration, Instant};

use weft_api::square::Behavior;
use weft_demo::square::{self, SquareHandle, SquareOptions};
use weft_test_support::{DiscoveryFile, OpenLoad, TestProxy, eventually, metric};

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

fn discovery(reps: &[SquareHandle]) -> DiscoveryFile {
    let disc = DiscoveryFile::new();
    let names: Vec<String> = (0..reps.len()).map(|i| format!("square-{i}")).collect();
    let eps: Vec<(&str, std::net::SocketAddr)> = names
        .iter()
        .map(String::as_str)
        .zip(reps.iter().map(|r| r.addr))
        .collect();
    disc.set(SVC, &eps);
    disc
}

fn unavailable() -> Behavior {
    Behavior {
        error_rate: 1.0,
        error_code: 14,
        ..Default::default()
    }
}

async fn ejected(proxy: &TestProxy, name: &str) -> f64 {
    metric(&proxy.metrics().await, "weft_endpoint_ejected", &[("endpoint", name)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_replica_is_ejected_probed_and_back_when_it_recovers() {
    let reps = replicas(3).await;
    let disc = discovery(&reps);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let load = OpenLoad::start(proxy.channel(SVC).await, 200);
    eventually("every replica to serve", Duration::from_secs(5), || async {
        reps.iter().all(|r| r.stats().calls > 0).then_some(())
    })
    .await;

    reps[2].service.set_behavior(unavailable());
    eventually("square-2 to be ejected", Duration::from_secs(5), || async {
        (ejected(&proxy, "square-2").await == 1.0).then_some(())
    })
    .await;
    // Out of service: over 3 s at 200 calls/s it gets its probes only
    // (after 1 s, then 2 s; one at a time), not its share (200).
    let before = reps[2].stats().calls;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probes = reps[2].stats().calls - before;
    assert!(probes <= 3, "an ejected replica got {probes} calls in 3 s");
    assert_eq!(ejected(&proxy, "square-2").await, 1.0, "still out: its probes failed");

    // It recovers: the next probe succeeds and it is back with its share.
    reps[2].service.set_behavior(Behavior::default());
    let healed = Instant::now();
    eventually("square-2 back in service", Duration::from_secs(20), || async {
        (ejected(&proxy, "square-2").await == 0.0).then_some(())
    })
    .await;
    eprintln!("back in service {:?} after it recovered", healed.elapsed());
    let before = reps[2].stats().calls;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = reps[2].stats().calls - before;
    assert!(after >= 20, "back, but only {after} calls in 1 s at 200 calls/s");

    let records = load.finish().await;
    let failed = records.iter().filter(|r| r.result.is_err()).count();
    // Failures: square-2's answers before it was ejected and its probes.
    assert!(failed <= 20, "{failed} failed calls of {}", records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_answers_is_ejected_when_clients_give_up_at_their_deadline() {
    // Clients whose timers fire just before the proxy's own deadline (as
    // every gRPC client's does: it started before the request left) cancel
    // their calls: that times the endpoint out, it is not a free cancellation.
    let reps = replicas(3).await;
    reps[2].service.set_behavior(Behavior {
        delay_ms: 60_000,
        ..Default::default()
    });
    let disc = discovery(&reps);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let client = weft_api::square::square_client::SquareClient::new(proxy.channel(SVC).await);
    let t = Instant::now();
    let proxy = &proxy;
    eventually("square-2 to be ejected", Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let calls = (0..10).map(|i| {
                let mut c = client.clone();
                async move {
                    let mut req = tonic::Request::new(weft_api::square::Input { value: i });
                    req.set_timeout(Duration::from_millis(200));
                    let _ = tokio::time::timeout(Duration::from_millis(195), c.square(req)).await;
                }
            });
            futures_util::future::join_all(calls).await;
            (ejected(proxy, "square-2").await == 1.0).then_some(())
        }
    })
    .await;
    eprintln!("ejected after {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panic_threshold_keeps_failing_replicas_in_when_most_fail() {
    let reps = replicas(3).await;
    for r in &reps {
        r.service.set_behavior(unavailable());
    }
    let disc = discovery(&reps);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let calls = weft_test_support::square_calls(proxy.channel(SVC).await, 300, 4).await;
    assert!(calls.iter().all(|c| c.starts_with("error:Unavailable")), "{calls:?}");
    // Half of 3 rounds down to 1: one is out, two keep serving (failing,
    // but answering: no call waits for an endpoint).
    let mut out = 0.0;
    for name in ["square-0", "square-1", "square-2"] {
        out += ejected(&proxy, name).await;
    }
    assert_eq!(out, 1.0);
    assert!(reps.iter().filter(|r| r.stats().calls >= 20).count() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_at_its_concurrency_limit_is_shielded_with_resource_exhausted() {
    let slow = square::spawn(SquareOptions {
        behavior: Behavior {
            delay_ms: 300,
            ..Default::default()
        },
        ..SquareOptions::named("slow")
    })
    .await
    .unwrap();
    let app = slow.addr.to_string();
    let inbound = TestProxy::start(&["--inbound-forward", &app, "--inbound-max-concurrency", "4"]).await;
    let channel = weft_test_support::mesh::channel_via(inbound.inbound, "slow.test:50051").await;
    let started = Instant::now();
    let calls = weft_test_support::square_calls(channel.clone(), 12, 12).await;
    let shed: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("error:ResourceExhausted"))
        .collect();
    assert_eq!(shed.len(), 8, "{calls:?}");
    assert!(shed[0].contains("--inbound-max-concurrency"), "{calls:?}");
    assert_eq!(calls.iter().filter(|c| *c == "slow").count(), 4, "{calls:?}");
    assert_eq!(slow.stats().calls, 4, "the app saw only what it could take");
    eprintln!("12 concurrent calls: 4 answered, 8 shed, in {:?}", started.elapsed());
    // Once the four are done, the limit admits again.
    let calls = weft_test_support::square_calls(channel, 4, 4).await;
    assert!(calls.iter().all(|c| c == "slow"), "{calls:?}");
    let m = inbound.metrics().await;
    assert!(
        metric(
            &m,
            "weft_responses_total",
            &[("direction", "inbound"), ("error", "overloaded")]
        ) >= 8.0,
        "{m}"
    );
}

fn retries(m: &str, result: &str) -> f64 {
    metric(m, "weft_retries_total", &[("result", result)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_replica_costs_the_client_nothing_with_retries() {
    let reps = replicas(3).await;
    reps[2].service.set_behavior(unavailable());
    let disc = discovery(&reps);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let calls = weft_test_support::square_calls(proxy.channel(SVC).await, 2000, 8).await;
    let failed: Vec<&String> = calls.iter().filter(|c| c.starts_with("error:")).collect();
    assert!(failed.is_empty(), "{} failed, e.g. {:?}", failed.len(), failed.first());
    let m = proxy.metrics().await;
    assert!(reps[2].stats().calls >= 1, "square-2 was tried");
    assert_eq!(
        retries(&m, "sent"),
        reps[2].stats().calls as f64,
        "each of its failures was retried once\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_budget_when_every_replica_fails() {
    let reps = replicas(3).await;
    for r in &reps {
        r.service.set_behavior(unavailable());
    }
    let disc = discovery(&reps);
    // 20 % of requests, plus 1 a second (a bucket of 10 to start).
    let proxy =
        TestProxy::with_discovery(&disc, &["--retry-budget-percent", "20", "--retry-min-per-second", "1"]).await;
    let calls = weft_test_support::square_calls(proxy.channel(SVC).await, 1000, 8).await;
    assert!(calls.iter().all(|c| c.starts_with("error:Unavailable")));
    let attempts: u64 = reps.iter().map(|r| r.stats().calls).sum();
    let m = proxy.metrics().await;
    let sent = retries(&m, "sent");
    eprintln!(
        "1,000 calls, {attempts} attempts, {sent} retries; budget refused {}",
        retries(&m, "budget")
    );
    assert_eq!(attempts as f64, 1000.0 + sent);
    assert!(
        sent <= 1000.0 * 0.2 + 10.0 + 5.0,
        "a retry storm: {sent} retries for 1,000 calls"
    );
    assert!(sent >= 150.0, "the budget was not used: {sent}");
    assert!(retries(&m, "budget") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_too_big_to_keep_is_not_retried_and_attempts_are_capped() {
    use weft_api::grpc_testing::{EchoStatus, Payload, SimpleRequest, test_service_client::TestServiceClient};
    let server = weft_demo::interop::spawn().await.unwrap();
    let disc = DiscoveryFile::new();
    disc.set(SVC, &[("interop-0", server.addr)]);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let mut client = TestServiceClient::new(proxy.channel(SVC).await).max_decoding_message_size(1 << 22);
    let failing = |body: usize| SimpleRequest {
        payload: Some(Payload {
            body: vec![0; body],
            ..Default::default()
        }),
        response_status: Some(EchoStatus {
            code: 14,
            message: "down for maintenance".into(),
        }),
        ..Default::default()
    };
    // 1 KiB: kept whole, so retried, twice at most (the one endpoint fails each time).
    let err = client.unary_call(failing(1024)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let m = proxy.metrics().await;
    assert_eq!((retries(&m, "sent"), retries(&m, "attempts")), (2.0, 1.0), "{m}");
    // 100 KiB: more than Linkerd keeps (64 KiB), within weft's 256 KiB: retried.
    let err = client.unary_call(failing(100 << 10)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let m = proxy.metrics().await;
    assert_eq!((retries(&m, "sent"), retries(&m, "attempts")), (4.0, 2.0), "{m}");
    // 300 KiB: more than the proxy keeps, so never retried.
    let err = client.unary_call(failing(300 << 10)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let m = proxy.metrics().await;
    assert_eq!((retries(&m, "sent"), retries(&m, "attempts")), (4.0, 2.0), "{m}");

    // The connection's bound: with 64 KiB for all its kept requests, 100 KiB
    let tight = TestProxy::with_discovery(&disc, &["--retry-buffer-per-connection", "64KiB"]).await;
    let mut client = TestServiceClient::new(tight.channel(SVC).await).max_decoding_message_size(1 << 22);
    // is not kept either; 40 KiB is, again and again (what a finished
    // request kept is given back).
    for body in [40 << 10, 40 << 10, 100 << 10] {
        let err = client.unary_call(failing(body)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
    let m = tight.metrics().await;
    assert_eq!((retries(&m, "sent"), retries(&m, "attempts")), (4.0, 2.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_proxy_follows_its_apps_health() {
    let app = square::spawn(SquareOptions::named("square-0")).await.unwrap();
    let forward = app.addr.to_string();
    let proxy = TestProxy::start(&["--inbound-forward", &forward, "--app-health-check"]).await;
    let ready = || async { weft_test_support::http_get(proxy.admin, "/ready").await.unwrap() };
    eventually("SERVING to be seen", Duration::from_secs(5), || async {
        (metric(&proxy.metrics().await, "weft_app_serving", &[]) == 1.0).then_some(())
    })
    .await;
    assert_eq!(ready().await.0, 200);

    app.service.set_behavior(Behavior {
        not_serving: true,
        ..Default::default()
    });
    let t = Instant::now();
    let (status, body) = eventually("NOT_SERVING to turn /ready 503", Duration::from_secs(1), || async {
        let r = ready().await;
        (r.0 == 503).then_some(r)
    })
    .await;
    eprintln!("NOT_SERVING seen on /ready after {:?}", t.elapsed());
    assert_eq!(status, 503);
    assert!(body.contains("NOT_SERVING"), "{body}");
    assert_eq!(metric(&proxy.metrics().await, "weft_app_serving", &[]), 0.0);

    app.service.set_behavior(Behavior::default());
    eventually("SERVING again", Duration::from_secs(1), || async {
        (ready().await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_in_the_mesh_file_set_timeouts_and_retry_codes_per_method() {
    use weft_api::grpc_testing::{EchoStatus, SimpleRequest, test_service_client::TestServiceClient};
    let slow = square::spawn(SquareOptions::named("square-0")).await.unwrap();
    slow.service.set_behavior(Behavior {
        delay_ms: 30_000,
        ..Default::default()
    });
    let interop = weft_demo::interop::spawn().await.unwrap();
    let disc = DiscoveryFile::new();
    disc.write(&format!(
        "services:
  {SVC}:
    endpoints: [{slow}]
    routes:
      - path: /square.Square/Square
        timeout: 200ms
  interop.test:50051:
    endpoints: [{interop}]
    routes:
      - path: /grpc.testing.TestService/UnaryCall
        retry_codes: [13]
      - retry_codes: []
",
        slow = slow.addr,
        interop = interop.addr
    ));
    let proxy = TestProxy::with_discovery(&disc, &[]).await;

    // The route's timeout: the client set none; the proxy answers
    // DEADLINE_EXCEEDED and cancels the call on the app.
    let mut square = weft_api::square::square_client::SquareClient::new(proxy.channel(SVC).await);
    let t = Instant::now();
    let err = square.square(weft_api::square::Input { value: 3 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the route's 200 ms timeout did not apply"
    );
    eventually("the app to see the call cancelled", Duration::from_secs(5), || async {
        (slow.stats().cancelled == 1).then_some(())
    })
    .await;

    // The method's retry codes: INTERNAL is retried there (twice, the one
    // endpoint failing each time), UNAVAILABLE is not (the default would).
    let mut client = TestServiceClient::new(proxy.channel("interop.test:50051").await);
    let failing = |code: i32| SimpleRequest {
        response_status: Some(EchoStatus {
            code,
            message: "failing".into(),
        }),
        ..Default::default()
    };
    let err = client.unary_call(failing(13)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    let m = proxy.metrics().await;
    assert_eq!((retries(&m, "sent"), retries(&m, "attempts")), (2.0, 1.0), "{m}");
    let err = client.unary_call(failing(14)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let m = proxy.metrics().await;
    assert_eq!(
        (retries(&m, "sent"), retries(&m, "attempts")),
        (2.0, 1.0),
        "UNAVAILABLE retried: {m}"
    );

    // A change of routes applies to the next call, without a restart.
    disc.write(&format!(
        "services:\n  {SVC}:\n    endpoints: [{slow}]\n    routes:\n      - timeout: 1m\n  interop.test:50051:\n    endpoints: [{interop}]\n",
        slow = slow.addr,
        interop = interop.addr
    ));
    eventually("the default retry codes back", Duration::from_secs(5), || {
        let mut client = client.clone();
        let proxy = &proxy;
        async move {
            let _ = client.unary_call(failing(14)).await;
            (retries(&proxy.metrics().await, "sent") > 2.0).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn which_codes_count_as_failures_is_configurable() {
    // A replica answering NOT_FOUND to everything: an application answer,
    // not the endpoint's failure, by default; with --failure-codes 5 it is.
    let reps = replicas(3).await;
    reps[2].service.set_behavior(Behavior {
        error_rate: 1.0,
        error_code: 5,
        ..Default::default()
    });
    let disc = discovery(&reps);
    let by_default = TestProxy::with_discovery(&disc, &[]).await;
    let strict = TestProxy::with_discovery(&disc, &["--failure-codes", "5,14"]).await;
    let loads = [
        OpenLoad::start(by_default.channel(SVC).await, 200),
        OpenLoad::start(strict.channel(SVC).await, 200),
    ];
    eventually(
        "square-2 ejected with --failure-codes 5",
        Duration::from_secs(10),
        || async { (ejected(&strict, "square-2").await == 1.0).then_some(()) },
    )
    .await;
    assert_eq!(
        ejected(&by_default, "square-2").await,
        0.0,
        "NOT_FOUND ejected it by default"
    );
    for load in loads {
        let records = load.finish().await;
        assert!(
            records
                .iter()
                .any(|r| r.result.as_ref().is_err_and(|e| e.code() == tonic::Code::NotFound)),
            "square-2 answered no call"
        );
    }
}
