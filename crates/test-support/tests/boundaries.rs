//! What the proxy refuses to reach: an inbound listener is no relay, a
//! request to the proxy's own address is a loop (refused at once, with a
//! message that says what to do), and admin actions that change state are
//! out of reach without a token.

use std::{net::SocketAddr, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_demo::square;
use weft_test_support::{DiscoveryFile, TestProxy, raw};

/// One HTTP/1.1 request with its own `Host`; the response, or `None` when
/// the proxy closed the connection without one.
async fn http1(addr: SocketAddr, method: &str, host: &str, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "no answer within 5 s (a loop?)");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_listener_is_no_relay() {
    // A local web server that only the pod itself should reach.
    let private = weft_test_support::http1::spawn_named("private").await;
    let proxy = TestProxy::start(&[]).await;
    // No original destination (dialled directly) and no --inbound-forward:
    // nothing names a local app, so there is nowhere to go.
    let got = http1(proxy.inbound, "GET", &private.to_string(), "/", "").await;
    assert!(
        got.as_ref().is_none_or(|(_, body)| body != "private"),
        "the inbound listener relayed to {private}: {got:?}"
    );
    let m = proxy.metrics().await;
    assert!(
        weft_test_support::metric(
            &m,
            "weft_connection_errors_total",
            &[("direction", "inbound"), ("reason", "no_destination")]
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_through_the_data_path_is_refused() {
    let proxy = TestProxy::start(&["--admin-token", "secret"]).await;
    let admin = proxy.admin.to_string();
    let auth = "Authorization: Bearer secret\r\n";
    // Through the outbound listener, the admin port is "a local address".
    let got = http1(proxy.outbound, "POST", &admin, "/shutdown", auth).await;
    assert_eq!(got.as_ref().map(|g| g.0), Some(508), "{got:?}");
    assert!(got.unwrap().1.contains("loop"));
    let (status, _) = weft_test_support::http_get(proxy.admin, "/ready").await.unwrap();
    assert_eq!(status, 200, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_that_change_state_need_the_token() {
    let proxy = TestProxy::start(&[]).await;
    let (status, body) = weft_test_support::http_request(proxy.admin, "POST", "/shutdown")
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("--admin-token"),
        "the refusal says how to enable it: {body}"
    );

    let proxy = TestProxy::start(&["--admin-token", "secret"]).await;
    let admin = proxy.admin.to_string();
    let wrong = http1(
        proxy.admin,
        "POST",
        &admin,
        "/shutdown",
        "Authorization: Bearer guess\r\n",
    )
    .await;
    assert_eq!(wrong.map(|g| g.0), Some(403));
    let right = http1(
        proxy.admin,
        "POST",
        &admin,
        "/shutdown",
        "Authorization: Bearer secret\r\n",
    )
    .await;
    assert_eq!(right.map(|g| g.0), Some(200));
    assert!(proxy.proxy.wait().await, "shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_dialling_the_proxy_itself_is_told_at_once() {
    let proxy = TestProxy::start(&[]).await;
    // gRPC clients put the dial target in :authority by default.
    let own = proxy.outbound.to_string();
    let started = std::time::Instant::now();
    let call = raw::grpc_call(
        proxy.outbound,
        &own,
        "/square.Square/Square",
        &[0x08, 0x07],
        &[("grpc-timeout", "3S")],
    );
    let resp = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("an answer, not a loop")
        .unwrap();
    assert_eq!(resp.grpc_status(), Some(3), "INVALID_ARGUMENT: {resp:?}");
    let msg = resp.grpc_message();
    assert!(msg.contains("loop") && msg.contains(&own), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_request_to_the_proxy_itself_is_refused() {
    let proxy = TestProxy::start(&[]).await;
    let got = http1(proxy.outbound, "GET", &proxy.outbound.to_string(), "/", "").await;
    assert_eq!(got.as_ref().map(|g| g.0), Some(508), "{got:?}");
    assert!(got.unwrap().1.contains("loop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_key_that_is_an_ip_and_port_wins_over_forwarding() {
    let replica = square::spawn(square::SquareOptions::named("square-0")).await.unwrap();
    let disc = DiscoveryFile::new();
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    // The user names the proxy's own address as the service.
    let own = proxy.outbound.to_string();
    disc.set(&own, &[("square-0", replica.addr)]);
    let resp = weft_test_support::eventually("the service to be known", Duration::from_secs(5), || {
        let own = own.clone();
        async move {
            let call = raw::grpc_call(
                proxy.outbound,
                &own,
                "/square.Square/Square",
                &[0x08, 0x07],
                &[("grpc-timeout", "3S")],
            );
            let resp = tokio::time::timeout(Duration::from_secs(5), call).await.ok()?.ok()?;
            (resp.grpc_status() == Some(0)).then_some(resp)
        }
    })
    .await;
    assert!(!resp.body.is_empty(), "square answered: {resp:?}");
}
