//! Protocol detection: read a client's first bytes (bounded in size and time)
//! and decide whether the connection speaks HTTP/2 (prior knowledge),
//! HTTP/1.1, or something else, which is forwarded as opaque TCP.

use std::{io, time::Duration};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// At most this many bytes are read before deciding. An HTTP/1 request line
/// longer than this is treated as opaque.
pub const DETECT_CAPACITY: usize = 8 * 1024;

/// What detection decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http2,
    Http1,
    /// Not HTTP (or nothing was said in time): forward byte for byte.
    Opaque(OpaqueReason),
    /// The client closed before a decision could be made; nothing to forward.
    Closed(ClosedReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpaqueReason {
    /// The first bytes are not HTTP.
    NotHttp,
    /// The client sent nothing (or too little) within the detection timeout.
    Timeout,
    /// The client sent data and closed its side before it could be classified.
    HalfClosed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedReason {
    /// Closed without sending a byte.
    Empty,
    /// Closed part way through the HTTP/2 preface.
    TruncatedPreface,
}

impl Detected {
    /// The label used in the `weft_detect_total` metric.
    pub fn label(self) -> &'static str {
        match self {
            Detected::Http2 => "h2",
            Detected::Http1 => "http1",
            Detected::Opaque(OpaqueReason::NotHttp) => "opaque",
            Detected::Opaque(OpaqueReason::Timeout) => "timeout",
            Detected::Opaque(OpaqueReason::HalfClosed) => "opaque_half_closed",
            Detected::Closed(ClosedReason::Empty) => "closed",
            Detected::Closed(ClosedReason::TruncatedPreface) => "truncated_preface",
        }
    }
}

/// Reads from `io` into `buf` until the protocol is known, `timeout` passes,
/// or [`DETECT_CAPACITY`] bytes have arrived. The bytes read stay in `buf`
/// and must be replayed (see [`super::PrefixedIo`]).
pub async fn detect<T: AsyncRead + Unpin>(io: &mut T, buf: &mut BytesMut, timeout: Duration) -> io::Result<Detected> {
    let deadline = tokio::time::Instant::now() + timeout;
    buf.reserve(1024);
    loop {
        if let Some(found) = classify(buf) {
            return Ok(found);
        }
        if buf.len() >= DETECT_CAPACITY {
            return Ok(Detected::Opaque(OpaqueReason::NotHttp));
        }
        if buf.capacity() == buf.len() {
            buf.reserve((buf.len()).min(DETECT_CAPACITY - buf.len()));
        }
        let read = {
            let limit = DETECT_CAPACITY - buf.len();
            let mut limited = (&mut *io).take(limit as u64);
            tokio::time::timeout_at(deadline, limited.read_buf(buf)).await
        };
        match read {
            Err(_elapsed) => return Ok(Detected::Opaque(OpaqueReason::Timeout)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                return Ok(if buf.is_empty() {
                    Detected::Closed(ClosedReason::Empty)
                } else if H2_PREFACE.starts_with(buf) {
                    Detected::Closed(ClosedReason::TruncatedPreface)
                } else {
                    Detected::Opaque(OpaqueReason::HalfClosed)
                });
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Classifies the bytes read so far, or `None` when more are needed.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if buf.len() >= H2_PREFACE.len() {
        if buf.starts_with(H2_PREFACE) {
            return Some(Detected::Http2);
        }
    } else if H2_PREFACE.starts_with(buf) {
        return None;
    }
    http1_request_line(buf)
}

/// Checks for `METHOD SP request-target SP HTTP/1.x CRLF`.
fn http1_request_line(buf: &[u8]) -> Option<Detected> {
    const NOT_HTTP: Option<Detected> = Some(Detected::Opaque(OpaqueReason::NotHttp));
    const MAX_METHOD: usize = 24;
    // The method: one or more token characters, then a space.
    let method_len = buf.iter().take_while(|b| is_tchar(**b)).count();
    if method_len == buf.len() {
        // Still inside the method.
        return if method_len > MAX_METHOD { NOT_HTTP } else { None };
    }
    if method_len == 0 || method_len > MAX_METHOD || buf[method_len] != b' ' {
        return NOT_HTTP;
    }
    let rest = &buf[method_len + 1..];
    let Some(eol) = rest.iter().position(|b| *b == b'\n') else {
        // The request target must be visible ASCII; a control byte means binary.
        return if rest
            .iter()
            .any(|b| !(b.is_ascii_graphic() || *b == b' ' || *b == b'\r'))
        {
            NOT_HTTP
        } else {
            None
        };
    };
    let line = rest[..eol].strip_suffix(b"\r").unwrap_or(&rest[..eol]);
    let Some(sp) = line.iter().rposition(|b| *b == b' ') else {
        return NOT_HTTP;
    };
    let (target, version) = (&line[..sp], &line[sp + 1..]);
    if target.is_empty() || !target.iter().all(u8::is_ascii_graphic) {
        return NOT_HTTP;
    }
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => Some(Detected::Http1),
        _ => NOT_HTTP,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::io::{Builder, Mock};

    async fn run(mock: Mock) -> (Detected, Vec<u8>) {
        let mut mock = mock;
        let mut buf = BytesMut::new();
        let d = detect(&mut mock, &mut buf, Duration::from_secs(1)).await.unwrap();
        (d, buf.to_vec())
    }

    #[tokio::test(start_paused = true)]
    async fn h2_preface_in_pieces() {
        let (d, buf) = run(Builder::new().read(&H2_PREFACE[..5]).read(&H2_PREFACE[5..]).build()).await;
        assert_eq!(d, Detected::Http2);
        assert_eq!(buf, H2_PREFACE);
    }

    #[tokio::test(start_paused = true)]
    async fn http1_request_line() {
        let (d, _) = run(Builder::new()
            .read(b"GET /x HT")
            .read(b"TP/1.1\r\nHost: a\r\n\r\n")
            .build())
        .await;
        assert_eq!(d, Detected::Http1);
        assert_eq!(classify(b"OPTIONS * HTTP/1.0\r\n"), Some(Detected::Http1));
    }

    #[tokio::test(start_paused = true)]
    async fn server_speaks_first_times_out_as_opaque() {
        let start = tokio::time::Instant::now();
        let (d, buf) = run(Builder::new().wait(Duration::from_secs(5)).build()).await;
        assert_eq!(d, Detected::Opaque(OpaqueReason::Timeout));
        assert!(buf.is_empty());
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn closes() {
        assert_eq!(
            run(Builder::new().build()).await.0,
            Detected::Closed(ClosedReason::Empty)
        );
        assert_eq!(
            run(Builder::new().read(&H2_PREFACE[..10]).build()).await.0,
            Detected::Closed(ClosedReason::TruncatedPreface)
        );
        assert_eq!(
            run(Builder::new().read(b"GET / HT").build()).await.0,
            Detected::Opaque(OpaqueReason::HalfClosed)
        );
    }

    #[test]
    fn binary_is_opaque_at_once() {
        let not_http = Some(Detected::Opaque(OpaqueReason::NotHttp));
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x00]), not_http); // a TLS ClientHello
        assert_eq!(classify(b"\x00\x01garbage"), not_http);
        assert_eq!(classify(b"GET /\x00"), not_http);
        assert_eq!(classify(b"GET / SPDY/3\r\n"), not_http);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), not_http);
        assert_eq!(classify(b"GET"), None);
        assert_eq!(classify(b"PRI * HTTP/2"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_line_stops_at_the_cap() {
        let mut long = b"GET /".to_vec();
        long.resize(DETECT_CAPACITY, b'a');
        let (d, buf) = run(Builder::new().read(&long).build()).await;
        assert_eq!(d, Detected::Opaque(OpaqueReason::NotHttp));
        assert_eq!(buf.len(), DETECT_CAPACITY);
    }
}
