//! The original destination of a connection redirected by iptables
//! (`SO_ORIGINAL_DST`), read through socket2 so that no `unsafe` is needed here.

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The address the client dialled before an iptables `REDIRECT` sent the
/// connection to us, or `None` when the connection was not redirected (it
/// was dialled to the proxy directly: explicit mode).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = SockRef::from(stream);
    let dst = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    // Without a NAT entry the call fails (ENOENT) or reports our own address.
    let dst = dst.ok()?.as_socket()?;
    let dst = match dst {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => SocketAddr::V6(v6),
        },
        v4 => v4,
    };
    (dst != local).then_some(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
    }
}
