//! What a connection reads and writes: a TCP socket, read and written
//! directly (readiness, `try_read`/`try_write`: the fast path), or any other
//! byte stream (TLS between proxies) through `AsyncRead`/`AsyncWrite`. The
//! engine knows nothing of TLS: the caller wraps the stream.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A byte stream the engine can run a connection over.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A connection's transport.
pub enum Io {
    Tcp(TcpStream),
    /// Another stream (TLS) over a TCP connection to `peer`.
    Wrapped {
        stream: Box<dyn Stream>,
        peer: SocketAddr,
    },
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Io::Tcp(t) => f.debug_tuple("Tcp").field(t).finish(),
            Io::Wrapped { peer, .. } => f.debug_struct("Wrapped").field("peer", peer).finish_non_exhaustive(),
        }
    }
}

impl From<TcpStream> for Io {
    fn from(t: TcpStream) -> Self {
        Io::Tcp(t)
    }
}

impl Io {
    /// The address at the other end.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Io::Tcp(t) => t.peer_addr(),
            Io::Wrapped { peer, .. } => Ok(*peer),
        }
    }
}

// `Io` is a stream itself, for the parts that take one (hyper, copying).
impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Io::Wrapped { stream, .. } => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Io::Wrapped { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_flush(cx),
            Io::Wrapped { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Io::Wrapped { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Wrapped { stream, .. } => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(t) => t.is_write_vectored(),
            Io::Wrapped { stream, .. } => stream.is_write_vectored(),
        }
    }
}
