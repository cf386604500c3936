//! A TCP relay that keeps every byte it passes, both ways: what a test
//! reads "on the wire" between two proxies.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Relays connections to `to`, recording the bytes.
pub struct Relay {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    /// A relay on 127.0.0.1.
    pub async fn start(to: SocketAddr) -> Relay {
        Relay::start_on([127, 0, 0, 1].into(), to).await
    }

    /// A relay listening on `ip` (any free port).
    pub async fn start_on(ip: IpAddr, to: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, s.clone()));
                tokio::spawn(pipe(sr, cw, s.clone()));
            }
        });
        Relay { addr, seen }
    }

    /// The bytes seen since the last call.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Copies one direction, keeping what passes.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut into: tokio::net::tcp::OwnedWriteHalf,
    seen: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || into.write_all(&buf[..n]).await.is_err() {
            break;
        }
        seen.lock().unwrap().extend_from_slice(&buf[..n]);
    }
    let _ = into.shutdown().await;
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
