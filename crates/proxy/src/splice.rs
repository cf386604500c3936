//! The splice engine: weft's own HTTP/2 data path for HTTP/2 (and so gRPC)
//! traffic, built for the fewest instructions and system calls per request.
//!
//! A general-purpose HTTP/2 library gives each request its own tasks,
//! channels and locks on both sides, and re-encodes every header through
//! `http::HeaderMap`. A proxy needs much less: it forwards each stream's
//! frames from one connection to another. Here every connection is one
//! task that owns its socket, its HPACK tables and its streams outright (no
//! locks); client-side ([`down`]) and endpoint-side ([`up`]) connections
//! pass a request's head, data and end to each other as messages
//! ([`ToUp`], [`ToDown`]), and each connection writes whatever it has for
//! its socket in one system call per wake-up.
//!
//! Flow control is end to end per stream: a peer is granted more stream
//! window only when the bytes it sent have been written to the other side,
//! so a slow reader holds back its writer (at most one stream window, 1 MiB,
//! is buffered per stream). Grants are batched (see [`CREDIT_BATCH`]) and
//! ride on messages that flow anyway. Connection windows are granted back
//! locally as data arrives: holding them end to end would let many
//! half-used streams, each under the batch size, stall a connection.
//!
//! HTTP/1.1 stays on hyper (see [`crate::http`]).

pub mod down;
pub mod frame;
pub mod hpack;
mod huffman;
pub mod up;
mod wire;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{endpoint::InFlight, error::ProxyError};
pub use hpack::Field;

/// Stream window this proxy grants each peer stream (SETTINGS_INITIAL_WINDOW_SIZE).
pub const STREAM_WINDOW: u32 = 1 << 20;
/// Connection window this proxy grants each peer.
pub const CONN_WINDOW: u32 = 4 << 20;
/// Credit is returned to a peer in batches of at least this many bytes
/// (well under the windows, so that a peer never stalls on it).
pub const CREDIT_BATCH: u32 = 32 << 10;
/// Output buffered beyond this stops reading from a socket until it drains.
pub const WRITE_HIGH_WATER: usize = 1 << 20;

/// Identifies a client-side stream: (client connection, stream id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub conn: u64,
    pub stream: u32,
}

pub type UpTx = mpsc::UnboundedSender<ToUp>;

/// An endpoint connection as its endpoint holds it.
#[derive(Clone, Debug)]
pub struct UpHandle {
    pub tx: UpTx,
    /// Set when the endpoint sent GOAWAY: the connection finishes its
    /// streams but takes no new ones.
    pub going_away: Arc<std::sync::atomic::AtomicBool>,
}

impl UpHandle {
    /// Whether new requests may be sent on the connection.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed() && !self.going_away.load(std::sync::atomic::Ordering::Relaxed)
    }
}
pub type DownTx = mpsc::UnboundedSender<ToDown>;

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
    Credit {
        stream: u32,
        credit: u32,
    },
    /// A balancer answered a request that had to wait for an endpoint.
    Picked {
        stream: u32,
        result: Result<InFlight, ProxyError>,
    },
}

/// Connection-level error: a GOAWAY code and a reason for the log.
#[derive(Debug)]
pub struct ConnError {
    pub code: u32,
    pub reason: String,
}

impl ConnError {
    pub fn new(code: u32, reason: impl Into<String>) -> Self {
        ConnError {
            code,
            reason: reason.into(),
        }
    }
}

/// A hasher for maps keyed by stream ids and connection ids, which are
/// already unique numbers.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = self.0.rotate_left(32) ^ u64::from(n);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(29) ^ n;
    }
}

pub type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Headers that belong to one HTTP/1 connection and are forbidden in HTTP/2
/// (RFC 9113 §8.2.2).
pub fn is_connection_specific(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    )
}

/// The value of the first field named `name`.
pub fn field<'a>(fields: &'a [Field], name: &[u8]) -> Option<&'a Bytes> {
    fields.iter().find(|f| &f.name[..] == name).map(|f| &f.value)
}
