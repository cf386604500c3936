//! weft-splice: weft's own HTTP/2 engine for HTTP/2 (and so gRPC) traffic,
//! built for the fewest instructions and system calls per request.
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
//! The engine is protocol only. Where a request goes, which endpoint takes
//! it, and what is recorded about it are asked of the layer above through
//! the [`Dispatch`] trait (static dispatch: no cost on the hot path); this
//! crate knows nothing of routing, balancing, discovery or metrics.
//!
//! ```text
//!  client ──h2──▶ down (one task per client connection) ──ToUp──▶ up (one task per endpoint connection) ──h2──▶ endpoint
//!                   │   ▲                                ◀─ToDown──
//!                   ▼   │ Dispatch: open (route), pick, responded, finished
//!                 the layer above (weft-proxy)
//! ```

mod dispatch;
pub mod down;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
mod headers;
pub mod hpack;
mod huffman;
pub mod io;
mod liveness;
mod messages;
pub mod up;
mod wire;

pub use dispatch::{Answer, Dispatch, End, Failure, RequestHead};
pub use hpack::Field;
pub use io::Io;
pub use liveness::Timeouts;
pub use messages::{ConnError, DownTx, Open, StreamKey, ToDown, ToUp, UpHandle, UpPhase, UpTx};

/// Stream window this proxy grants each peer stream (SETTINGS_INITIAL_WINDOW_SIZE).
pub const STREAM_WINDOW: u32 = 1 << 20;
/// Connection window this proxy grants each peer.
pub const CONN_WINDOW: u32 = 4 << 20;
/// Credit is returned to a peer in batches of at least this many bytes
/// (well under the windows, so that a peer never stalls on it).
pub const CREDIT_BATCH: u32 = 32 << 10;
/// Output buffered beyond this stops reading from a socket until it drains.
pub const WRITE_HIGH_WATER: usize = 1 << 20;

/// Maps keyed by stream ids, which peers choose: hashed with a per-process
/// random seed (foldhash), so that a client cannot pick ids that collide
/// and turn each lookup into a walk through the map.
type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Headers that belong to one HTTP/1 connection and are forbidden in HTTP/2
/// (RFC 9113 §8.2.2).
pub fn is_connection_specific(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    )
}

/// The value of the first field named `name`.
pub fn field<'a>(fields: &'a [Field], name: &[u8]) -> Option<&'a bytes::Bytes> {
    fields.iter().find(|f| &f.name[..] == name).map(|f| &f.value)
}
