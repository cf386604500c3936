//! HTTP/1.1 towards endpoints: a recovered endpoint is used at once, pooled
//! connections expire before servers close them, connections per endpoint
//! are capped, an endpoint that closes every connection is not retried
//! forever, and upgrades (WebSocket) pass through as a tunnel.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use weft_test_support::{DiscoveryFile, process};

const SVC: &str = "web.test:80";

#[derive(Clone, Copy)]
enum Behavior {
    /// Answer each request with `ok` after a delay.
    Answer(Duration),
    /// Close every connection at once.
    Close,
    /// Take a WebSocket upgrade, then echo.
    Upgrade,
}

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
}

/// A raw HTTP/1.1 server on `listener`.
fn serve(listener: TcpListener, behavior: Behavior) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let c = c.clone();
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let open = c.open.fetch_add(1, Ordering::SeqCst) + 1;
            c.max_open.fetch_max(open, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = conn(sock, behavior).await;
                c.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    counts
}

async fn conn(mut sock: TcpStream, behavior: Behavior) -> std::io::Result<()> {
    if let Behavior::Close = behavior {
        return Ok(());
    }
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            buf.drain(..end + 4);
            match behavior {
                Behavior::Answer(delay) => {
                    tokio::time::sleep(delay).await;
                    sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await?;
                }
                Behavior::Upgrade if head.contains("upgrade: websocket") && head.contains("connection: upgrade") => {
                    sock.write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
                    )
                    .await?;
                    sock.write_all(&buf).await?;
                    let (mut r, mut w) = sock.split();
                    tokio::io::copy(&mut r, &mut w).await?;
                    return Ok(());
                }
                _ => {
                    sock.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 10\r\n\r\nno upgrade")
                        .await?;
                }
            }
        }
    }
}

/// A weft-proxy process for `SVC` at `addr`.
async fn proxy(addr: SocketAddr, extra: &[&str]) -> (process::Proc, SocketAddr, DiscoveryFile) {
    let disc = DiscoveryFile::new();
    disc.set(SVC, &[("web-0", addr)]);
    let path = disc.path.to_str().unwrap().to_string();
    let mut args = vec!["--discovery-file", path.as_str()];
    args.extend_from_slice(extra);
    let (p, outbound, _) = process::weft_proxy(&args).await;
    (p, outbound.unwrap(), disc)
}

/// One request on its own connection: (status, body), or `None` when the
/// connection closed without an answer.
async fn get(proxy: SocketAddr) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(proxy).await.ok()?;
    s.write_all(format!("GET / HTTP/1.1\r\nhost: {SVC}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_comes_back_is_used_at_once() {
    let addr: SocketAddr = format!("127.0.0.1:{}", process::free_port()).parse().unwrap();
    let (_p, outbound, _d) = proxy(addr, &["--fail-fast-timeout", "5s"]).await;
    // The request finds the endpoint down; the endpoint starts 50 ms later.
    let started = Instant::now();
    let request = tokio::spawn(get(outbound));
    tokio::time::sleep(Duration::from_millis(50)).await;
    serve(TcpListener::bind(addr).await.unwrap(), Behavior::Answer(Duration::ZERO));
    let got = request.await.unwrap();
    assert_eq!(got.map(|g| g.0), Some(200));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served {:?} after the endpoint came back (the fail-fast timeout is 5 s)",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_expire_before_servers_close_them() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = serve(listener, Behavior::Answer(Duration::ZERO));
    let (_p, outbound, _d) = proxy(addr, &["--http1-idle-timeout", "300ms"]).await;
    assert_eq!(get(outbound).await.map(|g| g.0), Some(200));
    assert_eq!(get(outbound).await.map(|g| g.0), Some(200));
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1, "reused while fresh");
    // Idle past the pool's timeout: not reused.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(outbound).await.map(|g| g.0), Some(200));
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        2,
        "a stale connection was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_endpoint_are_capped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = serve(listener, Behavior::Answer(Duration::from_millis(200)));
    let (_p, outbound, _d) = proxy(addr, &["--http1-max-connections", "4"]).await;
    let calls: Vec<_> = (0..16).map(|_| tokio::spawn(get(outbound))).collect();
    for c in calls {
        assert_eq!(c.await.unwrap().map(|g| g.0), Some(200), "every request is served");
    }
    let max = counts.max_open.load(Ordering::SeqCst);
    assert!(max <= 4, "{max} connections to one endpoint at once (cap 4)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_closes_every_connection_is_not_retried_forever() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = serve(listener, Behavior::Close);
    let (_p, outbound, _d) = proxy(addr, &["--fail-fast-timeout", "1s"]).await;
    let got = tokio::time::timeout(Duration::from_secs(5), get(outbound))
        .await
        .expect("an answer, not endless reconnects");
    assert!(matches!(got, Some((500..=599, _))), "{got:?}");
    let n = counts.accepted.load(Ordering::SeqCst);
    assert!(n <= 50, "{n} connections for one request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes_through() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, Behavior::Upgrade);
    let (_p, outbound, _d) = proxy(addr, &[]).await;
    let mut s = TcpStream::connect(outbound).await.unwrap();
    s.write_all(
        format!(
            "GET /chat HTTP/1.1\r\nhost: {SVC}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // The tunnel carries bytes both ways.
    s.write_all(b"\x81\x05hello").await.unwrap();
    let mut echo = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"\x81\x05hello");
}
