//! A raw gRPC-over-HTTP/2 client, for checks that a full gRPC client would
//! hide (it enforces deadlines itself, it retries, it hides trailers).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A finished response: status, headers, body bytes and trailers.
#[derive(Debug)]
pub struct RawResponse {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl RawResponse {
    /// `grpc-status`, from the trailers or (trailers-only) the headers.
    pub fn grpc_status(&self) -> Option<u16> {
        let from = |h: &HeaderMap| h.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
        self.trailers.as_ref().and_then(from).or_else(|| from(&self.headers))
    }

    /// `grpc-message`, from the trailers or the headers.
    pub fn grpc_message(&self) -> String {
        let from = |h: &HeaderMap| h.get("grpc-message").and_then(|v| v.to_str().ok()).map(str::to_string);
        self.trailers
            .as_ref()
            .and_then(from)
            .or_else(|| from(&self.headers))
            .unwrap_or_default()
    }
}

/// Frames a protobuf message as a gRPC message (uncompressed).
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(msg.len() + 5);
    v.push(0);
    v.extend_from_slice(&u32::try_from(msg.len()).expect("message size").to_be_bytes());
    v.extend_from_slice(msg);
    v.into()
}

/// Sends one gRPC request over a new HTTP/2 connection to `addr`.
pub async fn grpc_call(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    message: &[u8],
    extra_headers: &[(&str, &str)],
) -> anyhow::Result<RawResponse> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = Request::post(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra_headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(grpc_frame(message)))?;
    let resp: Response<hyper::body::Incoming> = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(RawResponse {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}
