//! gRPC carried right through two hops (outbound → inbound → server):
//! streaming every way, big messages, every status code with its message
//! and metadata, deadlines and cancellation in both directions.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};
use weft_api::grpc_testing::{
    EchoStatus, Payload, ResponseParameters, SimpleRequest, StreamingInputCallRequest, StreamingOutputCallRequest,
    test_service_client::TestServiceClient,
};
use weft_demo::{interop, square};
use weft_test_support::{DiscoveryFile, TestProxy, eventually, raw};

const SVC: &str = "interop.test:50051";
const MIB: usize = 1 << 20;

/// A TestService server behind a proxy's inbound, reached through the same
/// proxy's outbound: every call crosses two proxy hops.
async fn two_hops() -> (
    TestServiceClient<Channel>,
    interop::TestServerHandle,
    TestProxy,
    DiscoveryFile,
) {
    let server = interop::spawn().await.unwrap();
    let disc = DiscoveryFile::new();
    let forward = server.addr.to_string();
    let proxy = TestProxy::with_discovery(&disc, &["--inbound-forward", &forward]).await;
    disc.set(SVC, &[("interop-0", proxy.inbound)]);
    let channel = proxy.channel(SVC).await;
    eventually("discovery to know the service", Duration::from_secs(5), || {
        let mut probe = TestServiceClient::new(channel.clone());
        async move { probe.empty_call(weft_api::grpc_testing::Empty {}).await.ok() }
    })
    .await;
    let client = TestServiceClient::new(channel)
        .max_decoding_message_size(interop::MAX_MESSAGE)
        .max_encoding_message_size(interop::MAX_MESSAGE);
    (client, server, proxy, disc)
}

fn payload(n: usize) -> Option<Payload> {
    Some(Payload {
        r#type: 0,
        body: vec![7u8; n],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_of_ten_thousand_messages() {
    let (mut client, _s, _p, _d) = two_hops().await;
    let req = StreamingOutputCallRequest {
        response_parameters: (0..10_000)
            .map(|i| ResponseParameters {
                size: i % 100,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut stream = client.streaming_output_call(req).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(msg) = stream.next().await {
        let msg = msg.expect("stream message");
        assert_eq!(msg.payload.unwrap().body.len(), n % 100);
        n += 1;
    }
    assert_eq!(n, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_streaming() {
    let (mut client, _s, _p, _d) = two_hops().await;
    let sizes = [27182usize, 8, 1828, 45904];
    let reqs: Vec<_> = (0..250)
        .flat_map(|_| {
            sizes.iter().map(|s| StreamingInputCallRequest {
                payload: payload(*s),
                ..Default::default()
            })
        })
        .collect();
    let resp = client
        .streaming_input_call(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.aggregated_payload_size, 250 * 74922);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_ping_pong() {
    let (mut client, _s, _p, _d) = two_hops().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut responses = client
        .full_duplex_call(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..200 {
        let size = 1 + (i * 37) % 5000;
        tx.send(StreamingOutputCallRequest {
            response_parameters: vec![ResponseParameters {
                size,
                ..Default::default()
            }],
            payload: payload(i as usize),
            ..Default::default()
        })
        .await
        .unwrap();
        // Each pong arrives before the next ping is sent.
        let pong = responses.next().await.expect("pong").expect("pong ok");
        assert_eq!(pong.payload.unwrap().body.len(), size as usize);
    }
    drop(tx);
    assert!(
        responses.next().await.is_none(),
        "the stream ends when the client half-closes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mebibyte_messages_each_way() {
    let (mut client, _s, _p, _d) = two_hops().await;
    let req = SimpleRequest {
        response_size: (8 * MIB) as i32,
        payload: payload(8 * MIB),
        ..Default::default()
    };
    let resp = client.unary_call(req).await.expect("8 MiB each way").into_inner();
    assert_eq!(resp.payload.unwrap().body.len(), 8 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_with_its_message_and_metadata() {
    let (mut client, _s, _p, _d) = two_hops().await;
    for code in 0..=16 {
        let message = format!("status {code}: ünïcödé, 100% and\nnew lines");
        let mut req = Request::new(SimpleRequest {
            response_status: Some(EchoStatus {
                code,
                message: message.clone(),
            }),
            response_size: 10,
            ..Default::default()
        });
        req.metadata_mut()
            .insert("x-grpc-test-echo-initial", "initial-value".parse().unwrap());
        req.metadata_mut().insert_bin(
            "x-grpc-test-echo-trailing-bin",
            MetadataValue::from_bytes(&[0xab, 0xab, 0xab]),
        );
        match client.unary_call(req).await {
            Ok(resp) => {
                assert_eq!(code, 0);
                assert_eq!(
                    resp.metadata().get("x-grpc-test-echo-initial").unwrap(),
                    "initial-value"
                );
                // Trailers of a successful unary call are not exposed by tonic's
                // unary API; the streaming check below reads them.
            }
            Err(status) => {
                assert_eq!(status.code(), Code::from_i32(code), "code {code}");
                assert_eq!(status.message(), message, "message of code {code}");
                let md = status.metadata();
                assert_eq!(md.get("x-grpc-test-echo-initial").unwrap(), "initial-value");
                assert_eq!(
                    md.get_bin("x-grpc-test-echo-trailing-bin")
                        .unwrap()
                        .to_bytes()
                        .unwrap()
                        .as_ref(),
                    &[0xab; 3]
                );
            }
        }
    }
    // A successful stream: custom trailing metadata arrives in the trailers.
    let mut req = Request::new(tokio_stream::iter(vec![StreamingOutputCallRequest {
        response_parameters: vec![ResponseParameters {
            size: 5,
            ..Default::default()
        }],
        ..Default::default()
    }]));
    req.metadata_mut().insert_bin(
        "x-grpc-test-echo-trailing-bin",
        MetadataValue::from_bytes(&[0xab, 0xab, 0xab]),
    );
    let mut stream = client.full_duplex_call(req).await.unwrap().into_inner();
    while let Some(m) = stream.next().await {
        m.unwrap();
    }
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(
        trailers
            .get_bin("x-grpc-test-echo-trailing-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        &[0xab; 3]
    );
}

/// A slow square replica behind the proxy's outbound.
async fn slow_square(delay_ms: u32, proxy_args: &[&str]) -> (square::SquareHandle, TestProxy, DiscoveryFile) {
    let mut opts = square::SquareOptions::named("slow");
    opts.behavior.delay_ms = delay_ms;
    let rep = square::spawn(opts).await.unwrap();
    let disc = DiscoveryFile::new();
    disc.set("square.test:50051", &[("slow", rep.addr)]);
    let proxy = TestProxy::with_discovery(&disc, proxy_args).await;
    (rep, proxy, disc)
}

/// The balancer's count of failures in a row on the `slow` endpoint.
async fn failures_in_a_row(proxy: &TestProxy) -> f64 {
    weft_test_support::metric(
        &proxy.metrics().await,
        "weft_endpoint_consecutive_failures",
        &[("endpoint", "slow")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_against_a_slow_server_is_exceeded_and_the_server_sees_the_cancellation() {
    for engine in ["splice", "hyper"] {
        deadline_exceeded_with(engine).await;
    }
}

async fn deadline_exceeded_with(engine: &str) {
    use prost::Message;
    let (rep, proxy, _d) = slow_square(5_000, &["--h2-engine", engine]).await;
    // A client that sends grpc-timeout and waits for the answer (it does not
    // enforce the deadline itself): the proxy answers DEADLINE_EXCEEDED.
    let msg = weft_api::square::Input { value: 3 }.encode_to_vec();
    let started = std::time::Instant::now();
    let resp = raw::grpc_call(
        proxy.outbound,
        "square.test:50051",
        "/square.Square/Square",
        &msg,
        &[("grpc-timeout", "50m")],
    )
    .await
    .unwrap();
    assert_eq!(resp.grpc_status(), Some(4), "DEADLINE_EXCEEDED: {resp:?}");
    assert!(
        resp.grpc_message().contains("deadline exceeded"),
        "{}",
        resp.grpc_message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
    // An endpoint that held a call past its deadline is charged a failure.
    eventually(
        &format!("{engine}: a failure charged"),
        Duration::from_secs(3),
        || async { (failures_in_a_row(&proxy).await == 1.0).then_some(()) },
    )
    .await;
    eventually("the server to see the cancellation", Duration::from_secs(3), || async {
        (rep.stats().cancelled == 1 && rep.stats().in_flight == 0).then_some(())
    })
    .await;

    // tonic enforces the deadline itself too (and reports its own timer as
    // CANCELLED "Timeout expired"); either way the server sees the cancellation.
    let mut client = weft_api::square::square_client::SquareClient::new(proxy.channel("square.test:50051").await);
    let mut req = Request::new(weft_api::square::Input { value: 3 });
    req.set_timeout(Duration::from_millis(50));
    let err = client.square(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    eventually(
        "the server to see the second cancellation",
        Duration::from_secs(3),
        || async { (rep.stats().cancelled == 2 && rep.stats().in_flight == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancellation_reaches_the_server() {
    let (rep, proxy, _d) = slow_square(5_000, &[]).await;
    let mut client = weft_api::square::square_client::SquareClient::new(proxy.channel("square.test:50051").await);
    let call = tokio::spawn(async move { client.square(weft_api::square::Input { value: 3 }).await });
    eventually("the call to reach the server", Duration::from_secs(3), || async {
        (rep.stats().in_flight == 1).then_some(())
    })
    .await;
    call.abort(); // the client gives up: RST_STREAM(CANCEL)
    eventually("the server to see the cancellation", Duration::from_secs(3), || async {
        (rep.stats().cancelled == 1 && rep.stats().in_flight == 0).then_some(())
    })
    .await;
    // The client gave up, not the endpoint: nothing is charged.
    assert_eq!(failures_in_a_row(&proxy).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reset_reaches_the_client() {
    // A raw HTTP/2 server that answers with headers and a message, then
    // resets the stream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(tcp).await.unwrap();
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            let resp = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let mut send = respond.send_response(resp, false).unwrap();
            send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 8, 9]), false)
                .unwrap();
            send.send_reset(h2::Reason::CANCEL);
        }
    });
    let disc = DiscoveryFile::new();
    disc.set("reset.test:80", &[("resetter", addr)]);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let mut client = weft_api::square::square_client::SquareClient::new(proxy.channel("reset.test:80").await);
    let err = client.square(weft_api::square::Input { value: 3 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Cancelled, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_and_application_errors_pass_through_and_are_classified() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let mut opts = square::SquareOptions::named("flaky");
    opts.behavior.error_rate = 1.0;
    opts.behavior.error_code = 8;
    let rep = square::spawn(opts).await.unwrap();
    let disc = DiscoveryFile::new();
    disc.set("square.test:50051", &[("flaky", rep.addr)]);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    let channel = proxy.channel("square.test:50051").await;

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "square.Square".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let mut client = weft_api::square::square_client::SquareClient::new(channel);
    let err = client.square(weft_api::square::Input { value: 2 }).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("flaky failed this call on purpose"),
        "{}",
        err.message()
    );
    // HTTP 200 with grpc-status 8: a failure, by gRPC code.
    let m = proxy.metrics().await;
    let failures = weft_test_support::metric(
        &m,
        "weft_responses_total",
        &[
            ("grpc_method", "Square"),
            ("classification", "failure"),
            ("grpc_code", "8"),
            ("status_code", "200"),
        ],
    );
    assert_eq!(failures, 1.0, "{m}");
    let ok = weft_test_support::metric(
        &m,
        "weft_responses_total",
        &[("grpc_service", "grpc.health.v1.Health"), ("classification", "success")],
    );
    assert_eq!(ok, 1.0, "{m}");
}
