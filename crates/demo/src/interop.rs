//! The gRPC interop `TestService` (the subset weft's checks use), served by
//! tonic. Requests may ask for any status code and message, payloads of any
//! size, and streams of any length and pace; `x-grpc-test-echo-initial` and
//! `x-grpc-test-echo-trailing-bin` are echoed in the response headers and
//! trailers, as the interop spec asks. Calls cancelled before they finish
//! are counted, so tests can see that a cancellation reached the server.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_api::grpc_testing::{
    Empty, Payload, ResponseParameters, SimpleRequest, SimpleResponse, StreamingInputCallRequest,
    StreamingInputCallResponse, StreamingOutputCallRequest, StreamingOutputCallResponse,
    test_service_server::{TestService, TestServiceServer},
};

/// Largest message the test server accepts or sends (the interop default is 4 MiB).
pub const MAX_MESSAGE: usize = 32 << 20;

/// The TestService implementation.
#[derive(Clone, Debug, Default)]
pub struct TestServiceImpl {
    /// Calls whose client went away (reset or deadline) before they finished.
    pub cancelled: Arc<AtomicU64>,
    /// Calls started.
    pub calls: Arc<AtomicU64>,
}

type ResponseStream = ReceiverStream<Result<StreamingOutputCallResponse, Status>>;

fn payload(size: i32) -> Option<Payload> {
    Some(Payload {
        r#type: 0,
        body: vec![0u8; usize::try_from(size).unwrap_or(0)],
    })
}

fn echo_status(code: i32, message: &str) -> Option<Status> {
    (code != 0).then(|| Status::new(tonic::Code::from_i32(code), message.to_string()))
}

/// Counts a call as cancelled unless it is marked done.
struct CancelGuard {
    counter: Arc<AtomicU64>,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            self.counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl TestServiceImpl {
    fn guard(&self) -> CancelGuard {
        self.calls.fetch_add(1, Ordering::SeqCst);
        CancelGuard {
            counter: self.cancelled.clone(),
            done: false,
        }
    }

    /// Sends the responses `params` asks for; returns false if the client went away.
    async fn respond(
        tx: &mpsc::Sender<Result<StreamingOutputCallResponse, Status>>,
        params: &[ResponseParameters],
    ) -> bool {
        for p in params {
            if p.interval_us > 0 {
                let pause = Duration::from_micros(u64::try_from(p.interval_us).unwrap_or(0));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = tx.closed() => return false,
                }
            }
            if tx
                .send(Ok(StreamingOutputCallResponse {
                    payload: payload(p.size),
                }))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }
}

#[tonic::async_trait]
impl TestService for TestServiceImpl {
    async fn empty_call(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        let mut g = self.guard();
        g.done = true;
        Ok(Response::new(Empty {}))
    }

    async fn unary_call(&self, request: Request<SimpleRequest>) -> Result<Response<SimpleResponse>, Status> {
        let mut g = self.guard();
        g.done = true;
        let req = request.into_inner();
        if let Some(st) = &req.response_status
            && let Some(status) = echo_status(st.code, &st.message)
        {
            return Err(status);
        }
        Ok(Response::new(SimpleResponse {
            payload: payload(req.response_size),
            hostname: crate::hostname(),
            ..Default::default()
        }))
    }

    type StreamingOutputCallStream = ResponseStream;

    async fn streaming_output_call(
        &self,
        request: Request<StreamingOutputCallRequest>,
    ) -> Result<Response<Self::StreamingOutputCallStream>, Status> {
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let g = self.guard();
        tokio::spawn(async move {
            let mut g = g; // move the whole guard into the task
            if Self::respond(&tx, &req.response_parameters).await {
                g.done = true;
                if let Some(st) = &req.response_status
                    && let Some(status) = echo_status(st.code, &st.message)
                {
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn streaming_input_call(
        &self,
        request: Request<Streaming<StreamingInputCallRequest>>,
    ) -> Result<Response<StreamingInputCallResponse>, Status> {
        let mut g = self.guard();
        let mut stream = request.into_inner();
        let mut total: usize = 0;
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            total += msg.payload.map_or(0, |p| p.body.len());
        }
        g.done = true;
        Ok(Response::new(StreamingInputCallResponse {
            aggregated_payload_size: i32::try_from(total).unwrap_or(i32::MAX),
        }))
    }

    type FullDuplexCallStream = ResponseStream;

    async fn full_duplex_call(
        &self,
        request: Request<Streaming<StreamingOutputCallRequest>>,
    ) -> Result<Response<Self::FullDuplexCallStream>, Status> {
        let mut stream = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let g = self.guard();
        tokio::spawn(async move {
            let mut g = g; // move the whole guard into the task
            loop {
                let next = tokio::select! {
                    n = stream.next() => n,
                    _ = tx.closed() => return,
                };
                match next {
                    None => break,
                    Some(Err(_)) => return,
                    Some(Ok(req)) => {
                        if let Some(st) = &req.response_status
                            && let Some(status) = echo_status(st.code, &st.message)
                        {
                            g.done = true;
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        if !Self::respond(&tx, &req.response_parameters).await {
                            return;
                        }
                    }
                }
            }
            g.done = true;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type HalfDuplexCallStream = ResponseStream;

    async fn half_duplex_call(
        &self,
        request: Request<Streaming<StreamingOutputCallRequest>>,
    ) -> Result<Response<Self::HalfDuplexCallStream>, Status> {
        let mut g = self.guard();
        let mut stream = request.into_inner();
        let mut all = Vec::new();
        while let Some(req) = stream.next().await {
            all.extend(req?.response_parameters);
        }
        let (tx, rx) = mpsc::channel(64);
        g.done = true;
        tokio::spawn(async move {
            Self::respond(&tx, &all).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn unimplemented_call(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented(
            "UnimplementedCall is not implemented, on purpose",
        ))
    }
}

// ===== echo of test metadata =====

const ECHO_INITIAL: &str = "x-grpc-test-echo-initial";
const ECHO_TRAILING: &str = "x-grpc-test-echo-trailing-bin";

/// A tower layer that echoes the interop test metadata.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoMetadataLayer;

impl<S> tower::Layer<S> for EchoMetadataLayer {
    type Service = EchoMetadata<S>;
    fn layer(&self, inner: S) -> Self::Service {
        EchoMetadata { inner }
    }
}

#[derive(Clone, Debug)]
pub struct EchoMetadata<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for EchoMetadata<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<EchoBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let initial = req.headers().get(ECHO_INITIAL).cloned();
        let trailing = req.headers().get(ECHO_TRAILING).cloned();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Some(v) = initial {
                resp.headers_mut().insert(ECHO_INITIAL, v);
            }
            let trailing = match trailing {
                // A trailers-only response carries its trailers in the headers.
                Some(v) if resp.headers().contains_key("grpc-status") => {
                    resp.headers_mut().insert(ECHO_TRAILING, v);
                    None
                }
                other => other,
            };
            Ok(resp.map(|inner| EchoBody { inner, trailing }))
        })
    }
}

/// A response body that adds the echoed trailing metadata to its trailers.
pub struct EchoBody {
    inner: tonic::body::Body,
    trailing: Option<HeaderValue>,
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(v) = this.trailing.take() {
                        trailers.insert(ECHO_TRAILING, v);
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(None) => match this.trailing.take() {
                Some(v) => {
                    let mut trailers = HeaderMap::new();
                    trailers.insert(ECHO_TRAILING, v);
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                None => Poll::Ready(None),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailing.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A running TestService server.
#[derive(Debug)]
pub struct TestServerHandle {
    pub addr: SocketAddr,
    pub service: TestServiceImpl,
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Serves TestService on a bound listener until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: TestServiceImpl,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(EchoMetadataLayer)
        .add_service(
            TestServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(crate::incoming(listener), shutdown)
        .await
}

/// Starts a TestService server on `127.0.0.1:0` in this process.
pub async fn spawn() -> std::io::Result<TestServerHandle> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = TestServiceImpl::default();
    let task = tokio::spawn(serve(listener, service.clone(), std::future::pending()));
    Ok(TestServerHandle { addr, service, task })
}
