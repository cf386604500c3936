//! Response bodies: the upstream body passed through untouched while the
//! proxy watches for its end (to record the gRPC status, release the
//! endpoint, return an HTTP/1.1 connection to its pool, enforce a deadline),
//! or a body the proxy made itself.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use weft_splice::grpc;

use crate::{
    balance::InFlight,
    endpoint::Http1Lease,
    error::{ProxyError, code, find_h2_reason},
    http::{Call, Outcome, RequestPath},
};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the proxy sends.
pub(crate) enum ProxyBody {
    Upstream(Box<ObservedBody>),
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn empty() -> Self {
        ProxyBody::Local(None)
    }

    pub(crate) fn text(s: String) -> Self {
        ProxyBody::Local(Some(Bytes::from(s)))
    }
}

/// What is left to do when a response ends: tell the request path how it
/// ended (which releases the endpoint), and give a cleanly ended HTTP/1.1
/// connection back to its pool.
pub(crate) struct Finisher {
    pub path: Arc<RequestPath>,
    pub call: Call,
    pub pick: Option<InFlight>,
    pub lease: Option<Http1Lease>,
}

impl Finisher {
    fn finish(self, outcome: Outcome) {
        let clean = matches!(outcome, Outcome::Ended(_));
        self.path.finish(self.call, self.pick, outcome);
        if let (Some(lease), true) = (self.lease, clean) {
            lease.release();
        }
    }
}

/// An upstream response body, observed.
pub(crate) struct ObservedBody {
    inner: Option<Incoming>,
    finisher: Option<Finisher>,
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
}

impl ObservedBody {
    pub(crate) fn new(inner: Incoming, finisher: Finisher, deadline: Option<(tokio::time::Instant, Duration)>) -> Self {
        if inner.is_end_stream() {
            // A headers-only (for gRPC, trailers-only) response: nothing
            // more can happen, so no deadline applies.
            let mut body = ObservedBody {
                inner: Some(inner),
                finisher: Some(finisher),
                deadline: None,
            };
            body.finish(Outcome::Ended(None));
            return body;
        }
        let deadline = deadline.map(|(at, budget)| (Box::pin(tokio::time::sleep_until(at)), budget));
        ObservedBody {
            inner: Some(inner),
            finisher: Some(finisher),
            deadline,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(f) = self.finisher.take() {
            f.finish(outcome);
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some((sleep, budget)) = this.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            let budget = *budget;
            this.deadline = None;
            // Dropping the upstream body resets its stream (CANCEL), so
            // the server learns that the call is over.
            this.inner = None;
            this.finish(Outcome::DeadlineExceeded);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from(code::DEADLINE_EXCEEDED));
            let msg = grpc::encode_message(&format!("weft: {}", ProxyError::DeadlineExceeded(budget)));
            if let Ok(v) = HeaderValue::from_str(&msg) {
                trailers.insert("grpc-message", v);
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(Outcome::Ended(super::grpc_status(trailers)));
                } else if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                    this.finish(Outcome::Ended(None));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let grpc_code = match find_h2_reason(&e) {
                    Some(h2::Reason::CANCEL) => code::CANCELLED,
                    _ => code::UNAVAILABLE,
                };
                this.finish(Outcome::Failed(grpc_code));
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                this.finish(Outcome::Ended(None));
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream() && self.deadline.is_none(),
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
