//! The messages client-side ([`crate::down`]) and endpoint-side
//! ([`crate::up`]) connections pass each other: a request's head, data,
//! trailers and end one way; the response and flow-control credit back.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::Field;

/// Identifies a client-side stream: (client connection, stream id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub conn: u64,
    pub stream: u32,
}

/// Where requests for an endpoint connection are sent.
pub type UpTx = mpsc::UnboundedSender<ToUp>;
/// Where an endpoint connection sends a client connection its responses.
pub type DownTx = mpsc::UnboundedSender<ToDown>;

/// Where an endpoint connection is in its life, as its endpoint watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpPhase {
    /// Taking requests.
    Open,
    /// Finishing its streams, taking no new ones (the endpoint sent GOAWAY,
    /// or the stream ids ran out): a replacement may open at once.
    GoingAway,
    /// Over.
    Closed,
}

/// An endpoint connection as its endpoint holds it.
#[derive(Clone, Debug)]
pub struct UpHandle {
    pub tx: UpTx,
    /// Set when the endpoint sent GOAWAY: the connection finishes its
    /// streams but takes no new ones.
    pub going_away: Arc<AtomicBool>,
}

impl UpHandle {
    /// Whether new requests may be sent on the connection.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed() && !self.going_away.load(Ordering::Relaxed)
    }
}

/// A request travelling to an endpoint connection: everything of it the
/// client connection has so far.
#[derive(Debug)]
pub struct Open {
    pub key: StreamKey,
    pub reply: DownTx,
    /// Shared with the client-side connection, which keeps it (and the
    /// body) until the response begins, to send the request elsewhere if
    /// this endpoint never processes it.
    pub head: Arc<[Field]>,
    pub body: Vec<Bytes>,
    pub trailers: Option<Vec<Field>>,
    /// The client has sent all of the request.
    pub end: bool,
}

/// Client connection → endpoint connection.
#[derive(Debug)]
pub enum ToUp {
    Open(Box<Open>),
    Data {
        key: StreamKey,
        data: Bytes,
        end: bool,
    },
    Trailers {
        key: StreamKey,
        fields: Vec<Field>,
    },
    Reset {
        key: StreamKey,
        code: u32,
    },
    /// The client connection wrote this many response bytes: the endpoint
    /// may send that much more on the stream.
    Credit {
        key: StreamKey,
        n: u32,
    },
}

/// Endpoint connection → client connection. `credit` returns request bytes
/// written to the endpoint: the client may send that much more on the stream.
#[derive(Debug)]
pub enum ToDown {
    Head {
        stream: u32,
        fields: Vec<Field>,
        end: bool,
        credit: u32,
    },
    Data {
        stream: u32,
        data: Bytes,
        end: bool,
        credit: u32,
    },
    Trailers {
        stream: u32,
        fields: Vec<Field>,
        credit: u32,
    },
    Reset {
        stream: u32,
        code: u32,
        detail: String,
    },
    /// The endpoint never processed this request: it was still queued when
    /// the connection ended, or the endpoint refused the stream or went away
    /// before reaching it. The client connection may send it elsewhere.
    Bounce {
        stream: u32,
        detail: String,
    },
    /// The request was never sent and will not be: it waited longer than
    /// the endpoint connection's queue allows. The client connection fails it.
    Fail {
        stream: u32,
        detail: String,
    },
    Credit {
        stream: u32,
        credit: u32,
    },
}

/// Connection-level error: a GOAWAY code and a reason for the log.
#[derive(Debug)]
pub struct ConnError {
    pub code: u32,
    pub reason: String,
    /// The metric label of a connection the proxy ended on purpose (a bound
    /// or a timeout), counted even when the GOAWAY code is NO_ERROR.
    pub label: Option<&'static str>,
}

impl ConnError {
    pub fn new(code: u32, reason: impl Into<String>) -> Self {
        ConnError {
            code,
            reason: reason.into(),
            label: None,
        }
    }

    /// The same error, counted under `label`.
    pub fn labelled(mut self, label: &'static str) -> Self {
        self.label = Some(label);
        self
    }
}
