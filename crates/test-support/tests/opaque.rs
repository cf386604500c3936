//! Opaque TCP: protocols the proxy cannot parse pass through untouched.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use weft_test_support::{TestProxy, metric};

/// A server that speaks first: it sends a banner on accept, then echoes.
async fn banner_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(b"220 banner.test ESMTP ready\r\n").await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Echoes everything it reads, then closes its side when the client does.
async fn echo_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    addr
}

async fn time_to_banner(addr: std::net::SocketAddr) -> Duration {
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut line = [0u8; 29];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&line, b"220 banner.test ESMTP ready\r\n");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_speaks_first_protocol_on_an_opaque_port_has_no_added_delay() {
    let server = banner_server().await;
    let port = server.port().to_string();
    let fwd = server.to_string();
    let proxy = TestProxy::start(&[
        "--inbound-forward",
        &fwd,
        "--opaque-ports",
        &port,
        "--detect-timeout",
        "2s",
    ])
    .await;
    let waited = time_to_banner(proxy.inbound).await;
    assert!(waited < Duration::from_millis(500), "banner after {waited:?}");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weft_detect_total",
            &[("direction", "inbound"), ("outcome", "opaque_port")]
        ),
        1.0,
        "{m}"
    );

    // The same port not marked opaque: the proxy waits for the client's
    // first bytes until the detection timeout, then forwards as opaque.
    let proxy = TestProxy::start(&[
        "--inbound-forward",
        &fwd,
        "--opaque-ports",
        "",
        "--detect-timeout",
        "300ms",
    ])
    .await;
    let waited = time_to_banner(proxy.inbound).await;
    assert!(waited >= Duration::from_millis(290), "banner after {waited:?}");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weft_detect_total",
            &[("direction", "inbound"), ("outcome", "timeout")]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_data_round_trips_byte_for_byte_with_half_close() {
    let server = echo_server().await;
    let fwd = server.to_string();
    let proxy = TestProxy::start(&["--inbound-forward", &fwd]).await;
    // 4 MiB of pseudo-random bytes, starting with a zero byte (not HTTP).
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| {
            if i == 0 {
                0
            } else {
                (i.wrapping_mul(2654435761) >> 11) as u8
            }
        })
        .collect();
    let s = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap(); // half-close: we are done sending
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the bytes came back unchanged");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "weft_opaque_received_bytes_total", &[("direction", "inbound")]),
        data.len() as f64
    );
    assert_eq!(
        metric(&m, "weft_opaque_sent_bytes_total", &[("direction", "inbound")]),
        data.len() as f64
    );
}
