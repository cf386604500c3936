//! The proxy's own gRPC calls (to weft-control, to the local app's health
//! service), spoken with h2 and prost directly: no tonic in the proxy. A
//! server-streaming or unary call: send one message, read messages until
//! the status.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest message the proxy accepts from a peer it calls.
pub const MAX_MESSAGE: usize = 16 << 20;

/// How a call ended (or could not start).
#[derive(Debug)]
pub enum CallEnd {
    /// The server's `grpc-status` and `grpc-message`.
    Status(u32, String),
    /// The connection or stream broke, or the answer was not gRPC;
    /// `connection` when the connection itself is at fault.
    Broken { error: String, connection: bool },
}

impl CallEnd {
    fn connection(e: impl std::fmt::Display) -> Self {
        CallEnd::Broken {
            error: e.to_string(),
            connection: true,
        }
    }
    fn stream(e: impl std::fmt::Display) -> Self {
        CallEnd::Broken {
            error: e.to_string(),
            connection: false,
        }
    }
}

/// An HTTP/2 connection (plaintext) to `addr`, for calls to the control
/// plane; errors name `what` and the address.
pub async fn connect(addr: &str, what: &str) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{what} at {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (send, driver) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("{what} at {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Ok(send)
}

/// A call's answers, as they come.
pub struct Answers {
    body: h2::RecvStream,
    buf: BytesMut,
}

/// Sends `message` (encoded) to `path` on `send`'s connection and waits
/// for the answer's head.
pub async fn call(
    send: &h2::client::SendRequest<Bytes>,
    authority: &str,
    path: &str,
    message: &[u8],
) -> Result<Answers, CallEnd> {
    let mut send = send.clone().ready().await.map_err(CallEnd::connection)?;
    let req = http::Request::post(format!("http://{authority}{path}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(())
        .map_err(CallEnd::stream)?;
    let (response, mut body_tx) = send.send_request(req, false).map_err(CallEnd::connection)?;
    body_tx.send_data(frame(message), true).map_err(CallEnd::connection)?;
    let response = response.await.map_err(CallEnd::connection)?;
    let (head, body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(CallEnd::stream(format!("answered HTTP {}", head.status)));
    }
    // Trailers-only: the status at once.
    if let Some(end) = status(&head.headers) {
        return Err(end);
    }
    Ok(Answers {
        body,
        buf: BytesMut::new(),
    })
}

impl Answers {
    /// The next message, or how the call ended.
    pub async fn next(&mut self) -> Result<Bytes, CallEnd> {
        loop {
            if let Some(m) = unframe(&mut self.buf).map_err(CallEnd::stream)? {
                return Ok(m);
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => return Err(CallEnd::connection(e)),
                None => {
                    return Err(match self.body.trailers().await {
                        Ok(Some(t)) => {
                            status(&t).unwrap_or_else(|| CallEnd::stream("the stream ended without a status"))
                        }
                        Ok(None) => CallEnd::stream("the stream ended without a status"),
                        Err(e) => CallEnd::connection(e),
                    });
                }
            }
        }
    }
}

/// The `grpc-status` (and message) in `headers`, if there.
fn status(headers: &http::HeaderMap) -> Option<CallEnd> {
    let code = headers.get("grpc-status")?.to_str().ok()?.trim().parse::<u32>().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("")
        .to_string();
    Some(CallEnd::Status(code, message))
}

/// A gRPC message frame: uncompressed flag, length, message.
pub fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.extend_from_slice(message);
    b.freeze()
}

/// The next whole message in `buf`, if one has arrived.
pub fn unframe(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err("a compressed message (the proxy asks for none)".into());
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(format!("a {len}-byte message; the most is {MAX_MESSAGE}"));
    }
    if buf.len() < 5 + len {
        buf.reserve(5 + len - buf.len());
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bounds_hold() {
        let mut buf = BytesMut::from(&frame(b"hello")[..]);
        buf.extend_from_slice(&frame(b"again")[..3]);
        assert_eq!(&unframe(&mut buf).unwrap().unwrap()[..], b"hello");
        assert!(unframe(&mut buf).unwrap().is_none(), "half a frame waits");
        let mut huge = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(unframe(&mut huge).is_err());
        let mut compressed = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
        assert!(unframe(&mut compressed).is_err());
    }
}
