//! The square demo app and other real gRPC peers for weft's demo, tests and
//! benchmarks:
//!
//! - [`square`]: the `Square` service (`value → value²` and the replica's
//!   hostname) with knobs for delay, jitter, errors and HTTP/2
//!   `max_concurrent_streams`, plus `grpc.health.v1`;
//! - [`interop`]: the gRPC interop `TestService`, for streaming, status and
//!   metadata checks;
//! - [`l4`]: a connection-level balancer that behaves like a Kubernetes
//!   Service (one replica per TCP connection).

pub mod interop;
pub mod l4;
pub mod square;

/// This machine's hostname, or `unknown`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Accepted connections with TCP_NODELAY set. (tonic sets it only on
/// listeners it binds itself; with Nagle on, a response written in two
/// pieces waits for the peer's delayed ACK: 40 ms.)
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures_util::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        // A socket that cannot take the option still works, only slower.
        let _ = conn.set_nodelay(true);
        Ok(conn)
    })
}
