//! A connection-level (layer 4) balancer that behaves like a Kubernetes
//! Service's virtual IP: each new TCP connection goes to a random replica,
//! and every byte on it stays with that replica.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};

/// Forwards each accepted connection to one randomly chosen backend, until
/// the listener task is dropped.
pub async fn serve(listener: TcpListener, backends: Arc<Vec<SocketAddr>>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let backends = backends.clone();
        tokio::spawn(async move {
            if backends.is_empty() {
                return;
            }
            let backend = backends[fastrand::usize(..backends.len())];
            let Ok(mut upstream) = TcpStream::connect(backend).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

/// Starts the balancer on `127.0.0.1:0`; returns its address and task.
pub async fn spawn(backends: Vec<SocketAddr>) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((addr, tokio::spawn(serve(listener, Arc::new(backends)))))
}
