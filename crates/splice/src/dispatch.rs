//! What the engine asks of the layer above it, per request: where the
//! request goes, which endpoint takes it, and what to record about it.
//!
//! The engine calls these in order for each request: [`Dispatch::open`]
//! (route it; the layer above may refuse it), [`Dispatch::pick_now`] or
//! [`Dispatch::pick`] (an endpoint), [`Dispatch::connection`] (that
//! endpoint's connection), then [`Dispatch::responded`] when the response
//! head arrives and [`Dispatch::finished`] exactly once when the exchange
//! is over. The layer above chooses its own types for a request in flight
//! ([`Dispatch::Call`]) and a chosen endpoint ([`Dispatch::Pick`]); the
//! engine only stores and hands them back.

use std::{fmt::Display, future::Future, net::SocketAddr};

use tokio::time::Instant;

use crate::{Field, UpTx};

/// What routing needs from a request head, checked (RFC 9113 §8.3).
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// `:authority`, or the `host` header without one.
    pub authority: Option<&'a [u8]>,
    pub scheme: Option<&'a [u8]>,
    pub path: &'a [u8],
    /// Whether the request is gRPC (by its content type).
    pub grpc: bool,
    /// The raw `grpc-timeout` header, if any.
    pub grpc_timeout: Option<&'a [u8]>,
    pub method: &'a [u8],
    /// The `authorization` header, if any (for the layer above's policy).
    pub authorization: Option<&'a [u8]>,
}

/// An error the proxy answers a request with itself: a gRPC status
/// (trailers-only response) for gRPC requests, an HTTP status otherwise.
/// `Display` gives the message (sent as `weft: <message>`).
pub trait Answer: Display {
    fn grpc_code(&self) -> u16;
    fn http_status(&self) -> u16;
    /// A short label, sent in the `weft-proxy-error` header.
    fn label(&self) -> &'static str;
}

/// What went wrong in the engine itself, for the layer above to turn into
/// its own error ([`Dispatch::error`]).
#[derive(Debug)]
pub enum Failure {
    /// The picked endpoint has no open connection.
    NoConnection,
    /// The request never reached an endpoint that processed it.
    Unsent(String),
    /// The endpoint reset the stream before answering.
    Reset { code: u32, detail: String },
    /// The call's deadline passed.
    DeadlineExceeded,
}

/// How an exchange ended.
#[derive(Debug)]
pub enum End<'a, E> {
    /// The endpoint ended the response, with the trailers' `grpc-status`, if any.
    Ended(Option<u16>),
    /// The endpoint reset the stream or its connection failed: the gRPC code
    /// the client sees.
    Failed(u16),
    /// The client went away first.
    Cancelled,
    /// The proxy ended the stream at its deadline, after the response began.
    DeadlineExceeded,
    /// The proxy answered the request itself with this error.
    Answered(&'a E),
}

/// The layer above the engine.
pub trait Dispatch: Send + Sync + 'static {
    /// What the layer above keeps per client connection (e.g. a routing memo).
    type Conn: Send + 'static;
    /// One request on its way: its route, deadline, what it recorded.
    type Call: Send + 'static;
    /// An endpoint chosen for a request, held until the exchange ends.
    type Pick: Send + 'static;
    /// Why the proxy answers a request itself.
    type Error: Answer + Send + 'static;

    /// A request arrived: route it. On an error the engine answers with it;
    /// the layer above has recorded the request already.
    fn open(&self, conn: &mut Self::Conn, head: &RequestHead<'_>, now: Instant) -> Result<Self::Call, Self::Error>;

    /// The request's header fields as they will go on (checked, after
    /// routing): the layer above may add or remove some (the inbound
    /// proxy's client identity). The default: none changed.
    fn rewrite(&self, conn: &Self::Conn, fields: &mut Vec<Field>) {
        let _ = (conn, fields);
    }

    /// When the call must end (its gRPC deadline), if ever.
    fn deadline(&self, call: &Self::Call) -> Option<Instant>;

    /// A call that had to wait for an endpoint got one: the layer above may
    /// know more about it now (its service's routes came with discovery)
    /// and give it an earlier deadline. The default: no change.
    fn waited(&self, call: &mut Self::Call) -> Option<Instant> {
        let _ = call;
        None
    }

    /// An endpoint for the call if one is ready now; `None` when the call
    /// must wait ([`Dispatch::pick`]).
    fn pick_now(&self, call: &Self::Call) -> Option<Result<Self::Pick, Self::Error>>;

    /// Waits for an endpoint for the call (until a deadline the layer above
    /// knows). The engine polls it on a task of its own.
    fn pick(&self, call: &Self::Call) -> impl Future<Output = Result<Self::Pick, Self::Error>> + Send + 'static;

    /// The picked endpoint's connection, or `None` when it has none open.
    fn connection(&self, pick: &Self::Pick) -> Option<UpTx>;

    /// The request never reached an endpoint that processed it: may it go
    /// to another one? (Counts the attempt.)
    fn resend(&self, call: &mut Self::Call) -> bool;

    /// The engine's own failure, as the layer above's error.
    fn error(&self, call: &Self::Call, pick: Option<&Self::Pick>, failure: Failure) -> Self::Error;

    /// The response head arrived, for a request sent at `sent`.
    fn responded(&self, call: &mut Self::Call, pick: Option<&Self::Pick>, sent: Instant, head: &[Field]);

    /// A trailers-only answer (`head`, which ends the stream) arrived for a
    /// request sent at `sent` that the engine kept whole and has sent
    /// nothing of to the client: should it go to an endpoint again instead?
    /// The layer above decides (a retryable status, its budget, attempts
    /// left) and, when it says yes, charges the endpoint as `responded`
    /// would have; the answer is the number of attempts so far (for
    /// `grpc-previous-rpc-attempts`). The default never retries.
    fn retry(&self, call: &mut Self::Call, pick: Option<&Self::Pick>, sent: Instant, head: &[Field]) -> Option<u32> {
        let _ = (call, pick, sent, head);
        None
    }

    /// The exchange is over (called exactly once per opened call).
    fn finished(&self, call: Self::Call, pick: Option<Self::Pick>, end: End<'_, Self::Error>);

    /// A client connection broke a rule or failed (`reason` is a metric label).
    fn connection_error(&self, conn: &Self::Conn, peer: SocketAddr, reason: &'static str);
}
