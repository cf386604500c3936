//! Bad input gets a clear error and loses nothing: garbage, truncated and
//! malformed HTTP/2, oversized headers, stalled clients, missing endpoints,
//! a broken discovery file. After each, a normal call still succeeds.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use weft_demo::square::{self, SquareOptions};
use weft_test_support::{DiscoveryFile, TestProxy, eventually, metric, square_calls};

const SVC: &str = "square.test:50051";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn mesh(extra: &[&str]) -> (square::SquareHandle, TestProxy, DiscoveryFile) {
    let rep = square::spawn(SquareOptions::named("square-0")).await.unwrap();
    let disc = DiscoveryFile::new();
    disc.set(SVC, &[("square-0", rep.addr)]);
    let proxy = TestProxy::with_discovery(&disc, extra).await;
    (rep, proxy, disc)
}

async fn a_normal_call_succeeds(proxy: &TestProxy) {
    let hosts = square_calls(proxy.channel(SVC).await, 1, 1).await;
    assert_eq!(hosts, ["square-0"], "a normal call right after");
}

/// Writes `bytes`, then reads until the proxy closes; returns what it sent.
async fn send_and_read_until_closed(addr: std::net::SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy closed the connection");
    out
}

async fn counted(proxy: &TestProxy, name: &str, labels: &[(&str, &str)]) {
    eventually(
        &format!("{name} {labels:?} to be counted"),
        Duration::from_secs(3),
        || async { (metric(&proxy.metrics().await, name, labels) >= 1.0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_closed_and_counted() {
    let (_r, proxy, _d) = mesh(&[]).await;
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let reply = send_and_read_until_closed(proxy.outbound, &garbage, false).await;
    assert!(reply.is_empty());
    counted(
        &proxy,
        "weft_detect_total",
        &[("direction", "outbound"), ("outcome", "opaque")],
    )
    .await;
    counted(&proxy, "weft_connection_errors_total", &[("reason", "no_destination")]).await;
    a_normal_call_succeeds(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_preface_is_closed_and_counted() {
    let (_r, proxy, _d) = mesh(&[]).await;
    let reply = send_and_read_until_closed(proxy.outbound, &PREFACE[..14], true).await;
    assert!(reply.is_empty());
    counted(&proxy, "weft_detect_total", &[("outcome", "truncated_preface")]).await;
    a_normal_call_succeeds(&proxy).await;
}

/// Parses HTTP/2 frames: (type, flags, stream, payload).
fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 9 {
        let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        if b.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([b[5] & 0x7f, b[6], b[7], b[8]]);
        out.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
        b = &b[9 + len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_hpack_gets_goaway_and_is_counted() {
    let (_r, proxy, _d) = mesh(&[]).await;
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    // HEADERS on stream 1 (END_STREAM | END_HEADERS) whose block indexes
    // past the end of every table.
    bytes.extend_from_slice(&[0, 0, 4, 1, 5, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0x7f]);
    let reply = send_and_read_until_closed(proxy.outbound, &bytes, false).await;
    let goaway = frames(&reply).into_iter().find(|f| f.0 == 7).expect("a GOAWAY frame");
    let code = u32::from_be_bytes([goaway.3[4], goaway.3[5], goaway.3[6], goaway.3[7]]);
    // h2 reports an undecodable header block as COMPRESSION_ERROR (9) or
    // PROTOCOL_ERROR (1), depending on where decoding fails.
    assert!(code == 9 || code == 1, "GOAWAY error code {code}");
    counted(&proxy, "weft_connection_errors_total", &[("reason", "http2_protocol")]).await;
    a_normal_call_succeeds(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let (rep, proxy, _d) = mesh(&[]).await;
    // HTTP/2: a 100 KiB header; the proxy allows 64 KiB.
    let big = "x".repeat(100 * 1024);
    let tcp = tokio::net::TcpStream::connect(proxy.outbound).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{SVC}/square.Square/Square"))
        .header("content-type", "application/grpc")
        .header("x-big", big.as_str())
        .body(())
        .unwrap();
    let outcome = match client.send_request(req, true) {
        Ok((resp, _)) => match resp.await {
            Ok(r) => format!("status {}", r.status()),
            Err(e) => format!("reset {e}"),
        },
        Err(e) => format!("refused {e}"),
    };
    eprintln!("oversized HTTP/2 headers: {outcome}");
    assert!(
        outcome.contains("431") || outcome.contains("reset") || outcome.contains("refused"),
        "an oversized request is refused, not forwarded: {outcome}"
    );
    assert_eq!(rep.stats().calls, 0, "nothing reached the server");

    // HTTP/1.1: a 100 KiB header line gets 431 and a close.
    let mut req = format!("GET / HTTP/1.1\r\nHost: {SVC}\r\nX-Big: {big}\r\n\r\n").into_bytes();
    req.truncate(req.len());
    let reply = send_and_read_until_closed(proxy.outbound, &req, false).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "{}",
        text.lines().next().unwrap_or("")
    );
    counted(
        &proxy,
        "weft_connection_errors_total",
        &[("reason", "http_headers_too_large")],
    )
    .await;
    a_normal_call_succeeds(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_opens_and_stalls_is_closed_and_counted() {
    let (_r, proxy, _d) = mesh(&["--detect-timeout", "200ms"]).await;
    let started = Instant::now();
    let reply = send_and_read_until_closed(proxy.outbound, b"", false).await;
    assert!(reply.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "closed after the detection timeout"
    );
    counted(&proxy, "weft_detect_total", &[("outcome", "timeout")]).await;
    counted(&proxy, "weft_connection_errors_total", &[("reason", "no_destination")]).await;

    // One that starts an HTTP/1.1 request and stalls mid-headers is closed by
    // the header read timeout (10 s); one that stalls after the HTTP/2
    // preface is held only by keep-alive. Neither blocks other clients.
    let mut stalled = tokio::net::TcpStream::connect(proxy.outbound).await.unwrap();
    stalled.write_all(b"GET / HTTP/1.1\r\nHost: square").await.unwrap();
    a_normal_call_succeeds(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_fail_fast_with_a_message_that_says_why() {
    let disc = DiscoveryFile::new();
    disc.set(SVC, &[]);
    let proxy = TestProxy::with_discovery(&disc, &["--fail-fast-timeout", "300ms"]).await;
    let mut client = weft_api::square::square_client::SquareClient::new(proxy.channel(SVC).await);
    let started = Instant::now();
    let err = client.square(weft_api::square::Input { value: 2 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("no endpoints for square.test:50051"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "waited for the fail-fast timeout"
    );

    // Endpoints that refuse connections: the message names the cause.
    let dead = weft_test_support::process::free_port();
    disc.set(SVC, &[("square-dead", format!("127.0.0.1:{dead}").parse().unwrap())]);
    let err = eventually("the dead endpoint to be reported", Duration::from_secs(3), || {
        let mut client = client.clone();
        async move {
            let e = client.square(weft_api::square::Input { value: 2 }).await.unwrap_err();
            e.message().contains("unreachable").then_some(e)
        }
    })
    .await;
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("square-dead"), "{}", err.message());
    assert!(err.message().to_lowercase().contains("refused"), "{}", err.message());

    // A service discovery does not know fails at once.
    let mut other = weft_api::square::square_client::SquareClient::new(proxy.channel("nosuch.test:80").await);
    let started = Instant::now();
    let err = other.square(weft_api::square::Input { value: 2 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("no service named nosuch.test:80"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() < Duration::from_millis(250));
    let m = proxy.metrics().await;
    assert!(
        metric(
            &m,
            "weft_responses_total",
            &[("error", "no_endpoints"), ("grpc_code", "14")]
        ) >= 1.0,
        "{m}"
    );

    // Plain HTTP gets 503 with the same message.
    let (status, body) = http_get_host(proxy.outbound, "nosuch.test").await;
    assert_eq!(status, 503);
    assert!(body.contains("no service named nosuch.test:80"), "{body}");
}

async fn http_get_host(addr: std::net::SocketAddr, host: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_discovery_file_keeps_the_last_good_endpoints() {
    let (_r, proxy, disc) = mesh(&[]).await;
    a_normal_call_succeeds(&proxy).await;
    disc.write("services:\n  square.test:50051:\n    endpionts: []\n");
    counted(&proxy, "weft_discovery_errors_total", &[]).await;
    a_normal_call_succeeds(&proxy).await;
    std::fs::remove_file(&disc.path).unwrap();
    a_normal_call_succeeds(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    let mut opts = SquareOptions::named("square-0");
    opts.behavior.delay_ms = 400;
    let rep = square::spawn(opts).await.unwrap();
    let disc = DiscoveryFile::new();
    disc.set(SVC, &[("square-0", rep.addr)]);
    let proxy = TestProxy::with_discovery(&disc, &["--shutdown-grace", "5s", "--admin-token", "t0k3n"]).await;
    let channel = proxy.channel(SVC).await;
    let in_flight = tokio::spawn(square_calls(channel.clone(), 10, 10));
    eventually("calls to be in flight", Duration::from_secs(3), || async {
        (rep.stats().in_flight == 10).then_some(())
    })
    .await;
    let (outbound, admin) = (proxy.outbound, proxy.admin);
    let (status, _) = weft_test_support::http_get(admin, "/ready").await.unwrap();
    assert_eq!(status, 200);
    let (status, _) =
        weft_test_support::http_request_with(admin, "POST", "/shutdown", &[("Authorization", "Bearer t0k3n")])
            .await
            .unwrap();
    assert_eq!(status, 200);
    let started = Instant::now();
    let clean = proxy.proxy.wait().await;
    assert!(clean, "drained within the grace period");
    let hosts = in_flight.await.unwrap();
    assert_eq!(hosts, vec!["square-0"; 10], "every in-flight call finished");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drained in {:?}",
        started.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(outbound).await.is_err(),
        "no new connections after the drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let (_r, proxy, _d) = mesh(&[]).await;
    a_normal_call_succeeds(&proxy).await;
    let get = |p: &'static str| weft_test_support::http_get(proxy.admin, p);
    assert_eq!(get("/live").await.unwrap().0, 200);
    assert_eq!(get("/ready").await.unwrap().0, 200);
    let (status, config) = get("/config").await.unwrap();
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["balancer"], "peak-ewma");
    assert_eq!(get("/nope").await.unwrap().0, 404);
    let m = proxy.metrics().await;
    for (name, labels) in [
        (
            "weft_requests_total",
            vec![("grpc_service", "square.Square"), ("grpc_method", "Square")],
        ),
        (
            "weft_responses_total",
            vec![
                ("grpc_code", "0"),
                ("classification", "success"),
                ("endpoint", "square-0"),
            ],
        ),
        ("weft_response_latency_seconds_count", vec![("grpc_method", "Square")]),
        ("weft_detect_total", vec![("outcome", "h2")]),
        ("weft_endpoint_ready", vec![("endpoint", "square-0")]),
        ("weft_endpoint_picked_total", vec![("endpoint", "square-0")]),
    ] {
        assert!(metric(&m, name, &labels) >= 1.0, "{name} {labels:?} in\n{m}");
    }
    assert!(m.contains("weft_endpoint_latency_score{"), "{m}");
    assert!(m.contains("weft_endpoint_pending{"), "{m}");
    assert!(m.contains("weft_endpoint_consecutive_failures{"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_advertised_limit_are_refused() {
    use weft_splice::hpack::{Encoder, Field};
    let (_r, proxy, _d) = mesh(&["--max-concurrent-streams", "2"]).await;
    let mut enc = Encoder::default();
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for stream in [1u32, 3, 5] {
        let mut block = Vec::new();
        enc.encode(
            &[
                Field::new(":method", "POST"),
                Field::new(":scheme", "http"),
                Field::new(":path", "/square.Square/Square"),
                Field::new(":authority", SVC),
                Field::new("content-type", "application/grpc"),
            ],
            &mut block,
        );
        // HEADERS without END_STREAM: the requests stay open.
        bytes.extend_from_slice(&[0, (block.len() >> 8) as u8, block.len() as u8, 1, 4]);
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(&block);
    }
    let mut s = tokio::net::TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before refusing");
            got.extend_from_slice(&buf[..n]);
            if let Some(f) = frames(&got).into_iter().find(|f| f.0 == 3 && f.2 == 5) {
                return u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]);
            }
        }
    })
    .await
    .expect("RST_STREAM for the third stream");
    assert_eq!(refused, 7, "REFUSED_STREAM");
    assert!(
        !frames(&got).iter().any(|f| f.0 == 3 && (f.2 == 1 || f.2 == 3)),
        "the first two are served"
    );
}

/// A scanner: 30,000 gRPC requests with random paths to a known service,
/// and 3,000 to random authorities, over one connection. The metrics stay
/// bounded: at most 100 distinct routes per target, then one `overflow`
/// route; at most 256 targets, then `target="overflow"`; at most 2,000
/// routes in all; and the proxy still answers a normal call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_of_random_paths_and_authorities_leaves_the_metrics_bounded() {
    let (_rep, proxy, _d) = mesh(&[]).await;
    let tcp = tokio::net::TcpStream::connect(proxy.outbound).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut requests = Vec::new();
    for i in 0..33_000u32 {
        let authority = if i < 30_000 {
            SVC.to_string()
        } else {
            format!("scan-{}.test:50051", rng.u32(..))
        };
        let path = format!("/scan.S{}/M{}", rng.u32(..), rng.u32(..));
        requests.push((authority, path));
    }
    let mut answered = 0usize;
    for chunk in requests.chunks(200) {
        let mut calls = tokio::task::JoinSet::new();
        for (authority, path) in chunk {
            let req = http::Request::post(format!("http://{authority}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let mut client = client.clone().ready().await.unwrap();
            let sent = client.send_request(req, true);
            calls.spawn(async move {
                let (resp, _) = sent.ok()?;
                resp.await.ok().map(|_| ())
            });
        }
        while let Some(r) = calls.join_next().await {
            answered += usize::from(matches!(r, Ok(Some(()))));
        }
    }
    assert!(
        answered >= 32_000,
        "only {answered} of 33,000 scanner requests were answered"
    );
    let m = proxy.metrics().await;
    let series = m.lines().filter(|l| l.starts_with("weft_requests_total{")).count();
    assert!(series <= 2_000 + 257, "{series} request series in the metrics");
    let known_overflow = m.lines().any(|l| {
        l.starts_with("weft_requests_total{")
            && l.contains(&format!("target=\"{SVC}\""))
            && l.contains("grpc_service=\"overflow\"")
    });
    assert!(known_overflow, "the known service's random paths fold into `overflow`");
    let targets: std::collections::BTreeSet<&str> = m
        .lines()
        .filter_map(|l| l.split("target=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        targets.len() <= 257 && targets.contains("overflow"),
        "{} distinct targets in the metrics",
        targets.len()
    );
    assert!(m.len() < 4 << 20, "the metrics page is {} bytes", m.len());
    a_normal_call_succeeds(&proxy).await;
}
