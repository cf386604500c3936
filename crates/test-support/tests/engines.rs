//! The hyper engine (`--h2-engine hyper`), kept for comparison with weft's
//! own (the default): it must keep carrying gRPC correctly.

use futures_util::StreamExt;
use weft_api::grpc_testing::{ResponseParameters, StreamingOutputCallRequest, test_service_client::TestServiceClient};
use weft_demo::{interop, square};
use weft_test_support::{DiscoveryFile, TestProxy, square_calls, tally};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hyper_engine_balances_and_streams() {
    let mut reps = Vec::new();
    for i in 0..3 {
        reps.push(
            square::spawn(square::SquareOptions::named(format!("square-{i}")))
                .await
                .unwrap(),
        );
    }
    let disc = DiscoveryFile::new();
    disc.set(
        "square.test:50051",
        &[
            ("square-0", reps[0].addr),
            ("square-1", reps[1].addr),
            ("square-2", reps[2].addr),
        ],
    );
    let proxy = TestProxy::with_discovery(&disc, &["--h2-engine", "hyper"]).await;
    let hosts = square_calls(proxy.channel("square.test:50051").await, 600, 8).await;
    let t = tally(hosts.iter().map(String::as_str));
    assert_eq!(t.len(), 3, "{t:?}");

    let server = interop::spawn().await.unwrap();
    disc.set("interop.test:50051", &[("interop-0", server.addr)]);
    let channel = weft_test_support::eventually("discovery", std::time::Duration::from_secs(5), || {
        let proxy = &proxy;
        async move {
            let c = proxy.channel("interop.test:50051").await;
            TestServiceClient::new(c.clone())
                .empty_call(weft_api::grpc_testing::Empty {})
                .await
                .ok()
                .map(|_| c)
        }
    })
    .await;
    let req = StreamingOutputCallRequest {
        response_parameters: (0..1000)
            .map(|_| ResponseParameters {
                size: 10,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let n = TestServiceClient::new(channel)
        .streaming_output_call(req)
        .await
        .unwrap()
        .into_inner()
        .count()
        .await;
    assert_eq!(n, 1000);
}
