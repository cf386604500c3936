//! A second, independent HTTP/2 and gRPC implementation through weft: the
//! gRPC interop cases run by Python grpcio, as client (against tonic and
//! against Python) and as server (for Python and for tonic clients).

use std::{net::SocketAddr, process::Stdio, time::Duration};

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use weft_api::grpc_testing::{
    Payload, ResponseParameters, SimpleRequest, StreamingOutputCallRequest, test_service_client::TestServiceClient,
};
use weft_demo::interop;
use weft_test_support::{DiscoveryFile, TestProxy, eventually, python, require, workspace_root};

const SVC: &str = "interop.test:50051";

/// A proxy whose outbound routes SVC to its own inbound, which forwards to `server`.
async fn two_hops_to(server: SocketAddr) -> (TestProxy, DiscoveryFile) {
    let disc = DiscoveryFile::new();
    let fwd = server.to_string();
    let proxy = TestProxy::with_discovery(&disc, &["--inbound-forward", &fwd]).await;
    disc.set(SVC, &[("interop-0", proxy.inbound)]);
    let channel = proxy.channel(SVC).await;
    eventually("discovery to know the service", Duration::from_secs(5), || {
        let mut probe = TestServiceClient::new(channel.clone());
        async move { probe.empty_call(weft_api::grpc_testing::Empty {}).await.ok() }
    })
    .await;
    (proxy, disc)
}

async fn python_client(py: &std::path::Path, target: SocketAddr) -> String {
    let out = tokio::process::Command::new(py)
        .arg(workspace_root().join("tests/python/interop_client.py"))
        .args(["--target", &target.to_string(), "--authority", SVC])
        .output()
        .await
        .expect("run the Python interop client");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Python interop client failed:\n{stdout}\n{stderr}"
    );
    for case in [
        "empty_unary",
        "large_unary",
        "client_streaming",
        "server_streaming",
        "ping_pong",
        "status_code_and_message",
        "custom_metadata",
        "cancel_after_begin",
        "timeout_on_sleeping_server",
    ] {
        assert!(
            stdout.contains(&format!("PASS {case}\n")),
            "{case} did not pass:\n{stdout}"
        );
    }
    stdout
}

/// Starts the Python interop server; returns the child and its address.
async fn python_server(py: &std::path::Path) -> (tokio::process::Child, SocketAddr) {
    let mut child = tokio::process::Command::new(py)
        .arg(workspace_root().join("tests/python/interop_server.py"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Python interop server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the Python server starts")
        .expect("read")
        .expect("a line");
    let port: u16 = line.trim_start_matches("listening on ").parse().expect("port");
    (child, format!("127.0.0.1:{port}").parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_through_weft_to_tonic() {
    let Some(py) = python() else {
        require(
            false,
            "the Python venv with grpcio (.venv; the README's test set-up makes it)",
        );
        return;
    };
    let server = interop::spawn().await.unwrap();
    let (proxy, _d) = two_hops_to(server.addr).await;
    let out = python_client(&py, proxy.outbound).await;
    eprintln!("{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_through_weft_to_python() {
    let Some(py) = python() else {
        require(
            false,
            "the Python venv with grpcio (.venv; the README's test set-up makes it)",
        );
        return;
    };
    let (_child, server) = python_server(&py).await;
    let (proxy, _d) = two_hops_to(server).await;
    python_client(&py, proxy.outbound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_through_weft_to_python() {
    let Some(py) = python() else {
        require(
            false,
            "the Python venv with grpcio (.venv; the README's test set-up makes it)",
        );
        return;
    };
    let (_child, server) = python_server(&py).await;
    let (proxy, _d) = two_hops_to(server).await;
    let mut client = TestServiceClient::new(proxy.channel(SVC).await).max_decoding_message_size(32 << 20);
    let big = client
        .unary_call(SimpleRequest {
            response_size: 4 << 20,
            payload: Some(Payload {
                r#type: 0,
                body: vec![1; 4 << 20],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.payload.unwrap().body.len(), 4 << 20);
    assert_eq!(big.hostname, "python");
    let req = StreamingOutputCallRequest {
        response_parameters: (0..1000)
            .map(|i| ResponseParameters {
                size: i % 50,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let n = client
        .streaming_output_call(req)
        .await
        .unwrap()
        .into_inner()
        .count()
        .await;
    assert_eq!(n, 1000);
}
