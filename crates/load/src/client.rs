//! The HTTP/2 gRPC client: connections, one unary square call, streams.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http::{HeaderValue, Request, Uri, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prost::Message;
use tokio::sync::mpsc;

use crate::report::{CallError, CallResult, Recorder};

/// A request body: one whole message, or a channel of messages (streams).
pub enum ReqBody {
    Full(Full<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ReqBody::Full(f) => Pin::new(f).poll_frame(cx),
            ReqBody::Channel(rx) => rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b)))),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(f) => f.is_end_stream(),
            ReqBody::Channel(_) => false,
        }
    }
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ReqBody::Full(f) => f.size_hint(),
            ReqBody::Channel(_) => http_body::SizeHint::default(),
        }
    }
}

pub type Sender = http2::SendRequest<ReqBody>;

/// Opens `n` HTTP/2 connections to `target`.
pub async fn connect_all(target: SocketAddr, n: usize) -> anyhow::Result<Vec<Sender>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {target}: {e}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_concurrent_reset_streams(100_000)
            .handshake(TokioIo::new(tcp))
            .await?;
        tokio::spawn(conn);
        out.push(sender);
    }
    Ok(out)
}

/// Frames a protobuf message for gRPC (no compression).
pub fn grpc_frame(msg: &impl Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(0);
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(&body);
    v.into()
}

/// A pre-built `square.Square/Square` call (or `square.Square/Report`,
/// the service's slower method).
pub struct UnaryCall {
    uri: Uri,
    report_uri: Uri,
    body: Bytes,
    timeout: Duration,
    timeout_header: HeaderValue,
}

impl UnaryCall {
    pub fn new(authority: &str, timeout: Duration) -> Self {
        let uri = format!("http://{authority}/square.Square/Square")
            .parse()
            .expect("valid authority");
        let report_uri = format!("http://{authority}/square.Square/Report")
            .parse()
            .expect("valid authority");
        let body = grpc_frame(&weft_api::square::Input { value: 7 });
        let ms = timeout.as_millis().clamp(1, 99_999_999);
        UnaryCall {
            uri,
            report_uri,
            body,
            timeout,
            timeout_header: HeaderValue::from_str(&format!("{ms}m")).expect("header"),
        }
    }

    /// Sends the call (to `Report` if `report`); returns the replica's hostname.
    pub async fn send(&self, sender: &mut Sender, report: bool) -> CallResult {
        match tokio::time::timeout(self.timeout, self.send_inner(sender, report)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        }
    }

    async fn send_inner(&self, sender: &mut Sender, report: bool) -> CallResult {
        let uri = if report { &self.report_uri } else { &self.uri };
        let mut req = Request::post(uri.clone())
            .body(ReqBody::Full(Full::new(self.body.clone())))
            .expect("request");
        let h = req.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("grpc-timeout", self.timeout_header.clone());
        let resp = sender.send_request(req).await.map_err(|_| CallError::Transport)?;
        if let Some(code) = grpc_status(resp.headers())
            && code != 0
        {
            return Err(CallError::Grpc(code));
        }
        let collected = resp.into_body().collect().await.map_err(|_| CallError::Transport)?;
        let code = collected.trailers().and_then(grpc_status);
        match code {
            Some(0) => {}
            Some(c) => return Err(CallError::Grpc(c)),
            None => return Err(CallError::Transport),
        }
        let mut body = collected.to_bytes();
        if body.len() < 5 {
            return Err(CallError::Transport);
        }
        body.advance(5);
        let out = weft_api::square::Output::decode(body).map_err(|_| CallError::Transport)?;
        Ok(out.hostname)
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<u16> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Held-open streams: their request channels and response bodies.
pub type Held = Vec<(mpsc::Sender<Bytes>, hyper::body::Incoming)>;

/// Opens `n` `FullDuplexCall` streams, each echoing one small message, and
/// returns them open (dropping them resets them). Failures are recorded.
pub async fn open_streams(
    conns: &[Sender],
    authority: &str,
    n: usize,
    timeout: Duration,
    recorder: &Arc<Mutex<Recorder>>,
) -> Held {
    let uri: Uri = format!("http://{authority}/grpc.testing.TestService/FullDuplexCall")
        .parse()
        .expect("uri");
    let ping = grpc_frame(&weft_api::grpc_testing::StreamingOutputCallRequest {
        response_parameters: vec![weft_api::grpc_testing::ResponseParameters {
            size: 1,
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut sender = conns[i % conns.len()].clone();
        let (uri, ping) = (uri.clone(), ping.clone());
        tasks.spawn(async move {
            let started = tokio::time::Instant::now();
            let (tx, rx) = mpsc::channel(1);
            let mut req = Request::post(uri).body(ReqBody::Channel(rx)).expect("request");
            req.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            req.headers_mut()
                .insert(header::TE, HeaderValue::from_static("trailers"));
            let opened = async {
                tx.send(ping).await.ok()?;
                let resp = sender.send_request(req).await.ok()?;
                let mut body = resp.into_body();
                // The first message back proves the stream is open end to end.
                loop {
                    let frame = body.frame().await?.ok()?;
                    if frame.is_data() {
                        break;
                    }
                }
                Some((tx, body))
            };
            let r = tokio::time::timeout(timeout, opened).await.ok().flatten();
            (started.elapsed(), r)
        });
    }
    let mut held: Held = Vec::with_capacity(n);
    while let Some(Ok((took, r))) = tasks.join_next().await {
        let ok = r.is_some();
        crate::report::lock(recorder).record(
            took,
            if ok {
                Ok("stream".into())
            } else {
                Err(CallError::Transport)
            },
        );
        held.extend(r);
    }
    held
}
