//! An endpoint-side connection: HTTP/2 to one endpoint, carrying the
//! requests client-side connections hand it ([`ToUp`]) and sending each
//! response back where its request came from ([`ToDown`]).
//!
//! The endpoint's SETTINGS_MAX_CONCURRENT_STREAMS is honoured exactly: no
//! stream opens before the endpoint's first SETTINGS frame, and requests
//! beyond its limit wait here in arrival order until a stream closes.
//! A request the endpoint never processed (queued when the connection
//! ends, refused, or above a GOAWAY's last stream) goes back to its client
//! connection, which may send it to another endpoint.
//!
//! - this file: the handshake, the connection's loop, messages from
//!   client-side connections, and the end of the connection;
//! - [`streams`]: queued requests become streams within the endpoint's
//!   limit, and their bodies are written as its windows allow;
//! - [`frames`]: frames from the endpoint, sent back to client connections.

mod frames;
mod streams;
mod waiting;

use std::{
    collections::VecDeque,
    future::poll_fn,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use crate::{
    ConnError, DownTx, Field, IdMap, Io, Open, StreamKey, ToDown, ToUp, UpHandle, UpPhase,
    frame::{self, code, flag, kind},
    wire::Wire,
};

/// A request's part waiting for flow-control window.
#[derive(Debug)]
enum Out {
    Data(Bytes, bool),
    Trailers(Vec<Field>),
}

struct Stream {
    key: StreamKey,
    reply: DownTx,
    /// How much more this side may send on the stream.
    send_window: i64,
    out: VecDeque<Out>,
    request_done: bool,
    /// What the endpoint may still send on the stream (we grant more as the
    /// client side reports writing it).
    recv_window: i64,
    head_seen: bool,
    response_done: bool,
    /// Request bytes written to the endpoint, not yet reported back.
    credit: u32,
    /// Whether the stream waits in the connection's `blocked` queue.
    queued: bool,
    /// The request was HEAD (its response's content-length says nothing
    /// of the body).
    head_request: bool,
    /// The response body against its `content-length`.
    body: crate::headers::BodyLength,
}

/// A queued request (no stream yet).
struct Queued {
    open: Box<Open>,
    /// When it was queued: it fails after `Options::queue_timeout`.
    since: Instant,
}

/// How an endpoint connection is run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How long the handshake (the endpoint's first SETTINGS) may take.
    pub handshake_timeout: Duration,
    /// Largest response header list accepted, in bytes.
    pub max_header_bytes: u32,
    /// How long a request may wait for one of the endpoint's streams
    /// (SETTINGS_MAX_CONCURRENT_STREAMS) before it fails with UNAVAILABLE.
    pub queue_timeout: Duration,
    /// How many requests may wait; one more is sent back to its client
    /// connection, which tries another endpoint.
    pub max_queued: usize,
    /// Keepalive and header-block timeouts (`idle` is not used: an idle
    /// endpoint connection is kept).
    pub timeouts: crate::Timeouts,
}

/// Stream ids past this mark make the connection go away (and a
/// replacement open) before the ids run out at 2³¹.
const LAST_STREAM_ID: u32 = (1 << 31) - (1 << 16);

struct Up {
    wire: Wire,
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<ToUp>,
    rx_closed: bool,
    streams: IdMap<u32, Stream>,
    by_key: IdMap<StreamKey, u32>,
    queue: waiting::Waiting,
    next_id: u32,
    /// The endpoint said it goes away; streams above this id were not processed.
    goaway: Option<u32>,
    options: Options,
    max_header_bytes: u32,
    going_away: Arc<AtomicBool>,
    phase: watch::Sender<UpPhase>,
    /// When the oldest queued request must fail.
    queue_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    liveness: crate::liveness::Liveness,
    /// Streams with request data that the connection window or a full
    /// output buffer holds back (not those waiting for their own window).
    blocked: VecDeque<u32>,
    scratch: Vec<Field>,
}

/// Exchanges SETTINGS with an endpoint over a connected socket, and starts
/// the connection task. Returns the handle requests are sent on and a watch
/// of the connection's phase (open, going away, closed).
pub async fn handshake(io: Io, options: Options) -> Result<(UpHandle, watch::Receiver<UpPhase>), String> {
    let max_header_bytes = options.max_header_bytes;
    let addr = io
        .peer_addr()
        .map_err(|e| format!("connection lost before the handshake: {e}"))?;
    let settings = Wire::settings(None, max_header_bytes, true);
    let (tx, rx) = mpsc::unbounded_channel();
    let (phase, phase_rx) = watch::channel(UpPhase::Open);
    let mut up = Up {
        wire: Wire::new(io, BytesMut::new(), true, &settings, max_header_bytes),
        addr,
        rx,
        rx_closed: false,
        streams: IdMap::default(),
        by_key: Default::default(),
        queue: waiting::Waiting::default(),
        next_id: 1,
        goaway: None,
        options,
        max_header_bytes,
        going_away: Arc::new(AtomicBool::new(false)),
        phase,
        queue_timer: None,
        liveness: crate::liveness::Liveness::new(crate::Timeouts {
            idle: None,
            ..options.timeouts
        }),
        blocked: VecDeque::new(),
        scratch: Vec::new(),
    };
    // The endpoint's first frame must be its SETTINGS; no request is sent
    // before it, so its stream limit is known from the first request on.
    let handshake = poll_fn(|cx| up.poll_handshake(cx));
    match tokio::time::timeout(options.handshake_timeout, handshake).await {
        Err(_) => return Err("HTTP/2 handshake timed out (no SETTINGS from the endpoint)".into()),
        Ok(Err(e)) => return Err(format!("HTTP/2 handshake failed: {}", e.reason)),
        Ok(Ok(())) => {}
    }
    let handle = UpHandle {
        tx,
        going_away: up.going_away.clone(),
    };
    tokio::spawn(async move {
        let result = poll_fn(|cx| up.poll_run(cx)).await;
        if let Err(e) = &result {
            tracing::debug!(addr = %up.addr, code = e.code, reason = %e.reason, "endpoint connection ended");
        }
        up.close(
            result
                .err()
                .map(|e| e.reason)
                .unwrap_or_else(|| "the endpoint closed the connection".into()),
        );
        up.phase.send_replace(UpPhase::Closed);
    });
    Ok((handle, phase_rx))
}

impl Up {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        loop {
            if let Poll::Ready(Err(e)) = self.wire.poll_flush(cx) {
                return Poll::Ready(Err(ConnError::new(code::INTERNAL_ERROR, e.to_string())));
            }
            if self.wire.peer_settings_seen {
                return Poll::Ready(Ok(()));
            }
            if let Some((head, payload)) = self.wire.next_frame()? {
                if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                    return Poll::Ready(Err(ConnError::new(
                        code::PROTOCOL_ERROR,
                        "the endpoint's first frame is not SETTINGS",
                    )));
                }
                let mut delta = 0;
                self.wire.connection_frame(&head, &payload, &mut delta)?;
                continue;
            }
            match self.wire.poll_read(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(ConnError::new(code::NO_ERROR, "closed during the handshake")));
                }
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ConnError::new(code::INTERNAL_ERROR, e.to_string()))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Runs until the connection ends: `Ok` on a clean end.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        // The clocks are checked once per wake-up (see `Down::poll_run`).
        if let Some(verdict) = self.liveness.poll(cx, &mut self.wire, (true, 0)) {
            verdict?;
        }
        for _ in 0..64 {
            let mut busy = false;
            busy |= self.take_messages(cx)?;
            // The requests among them that were not reset meanwhile.
            if !self.queue.is_empty() && !self.wire.output_full() {
                self.open_queued();
            }
            // Frames from the endpoint (unless our output is backed up);
            // those already read (with the handshake) come first.
            if !self.wire.read_closed && !self.wire.output_full() {
                while let Some((head, payload)) = self.wire.next_frame()? {
                    busy = true;
                    self.on_frame(head, payload)?;
                }
                match self.wire.poll_read(cx) {
                    Poll::Ready(Ok(0)) => {
                        busy = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        busy = true;
                        while let Some((head, payload)) = self.wire.next_frame()? {
                            self.on_frame(head, payload)?;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(ConnError::new(code::INTERNAL_ERROR, e.to_string())));
                    }
                    Poll::Pending => {}
                }
            }
            match self.wire.poll_flush(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ConnError::new(code::INTERNAL_ERROR, e.to_string()))),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
            if !self.wire.output_full() && (!self.blocked.is_empty() || !self.queue.is_empty()) {
                let before = self.wire.output_len();
                self.unblock();
                self.open_queued();
                busy |= self.wire.output_len() != before;
            }
            // Requests still waiting: the oldest fails at its deadline. A
            // timer armed for a request that left since fires early and is
            // armed again for the oldest (never late, and no timer work per
            // request while the endpoint keeps up).
            if self.queue_timer.is_none() && !self.queue.is_empty() {
                self.arm_queue_timer();
            }
            if let Some(t) = self.queue_timer.as_mut()
                && t.as_mut().poll(cx).is_ready()
            {
                self.queue_timer = None;
                self.expire_queued();
                busy = true;
            }
            if self.wire.read_closed {
                return Poll::Ready(Err(ConnError::new(
                    code::NO_ERROR,
                    "the endpoint closed the connection",
                )));
            }
            let idle = self.streams.is_empty() && self.queue.is_empty();
            if idle && (self.rx_closed || self.goaway.is_some()) && !self.wire.has_output() {
                return Poll::Ready(Ok(()));
            }
            if !busy {
                return Poll::Pending;
            }
        }
        // Still busy: let the other tasks on this thread have a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Handles the messages from client-side connections, all that are
    /// there: `try_recv` is outside tokio's per-task budget, which would let
    /// this one task take 128 messages per turn while each client connection
    /// sends thousands per turn (a backlog without bound). The waker is
    /// registered once the channel is empty. Whether there were any.
    fn take_messages(&mut self, cx: &mut Context<'_>) -> Result<bool, ConnError> {
        let mut any = false;
        for _ in 0..4096 {
            let msg = match self.rx.try_recv() {
                Ok(msg) => msg,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.rx_closed = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(msg)) => msg,
                    Poll::Ready(None) => {
                        self.rx_closed = true;
                        break;
                    }
                    Poll::Pending => break,
                },
            };
            any = true;
            self.on_message(msg)?;
        }
        Ok(any)
    }

    fn on_message(&mut self, msg: ToUp) -> Result<(), ConnError> {
        match msg {
            ToUp::Open(open) => {
                if self.goaway.is_some() || self.next_id > LAST_STREAM_ID {
                    self.go_away();
                    self.bounce(&open.reply, open.key.stream, "the endpoint connection is going away");
                } else if self.queue.len() >= self.options.max_queued {
                    let detail = format!(
                        "{} requests already wait for one of the endpoint's {} streams",
                        self.queue.len(),
                        self.limit()
                    );
                    self.bounce(&open.reply, open.key.stream, &detail);
                } else {
                    // Started after the messages at hand are read (`poll_run`):
                    // a request its client reset meanwhile never reaches the
                    // endpoint (rapid reset costs the endpoint nothing).
                    self.queue.push(Queued {
                        open,
                        since: Instant::now(),
                    });
                }
            }
            ToUp::Data { key, data, end } => {
                if let Some(&id) = self.by_key.get(&key) {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.out.push_back(Out::Data(data, end));
                        self.write_stream(id);
                    }
                } else if let Some(q) = self.queue.get_mut(&key) {
                    q.open.body.push(data);
                    q.open.end |= end;
                }
            }
            ToUp::Trailers { key, fields } => {
                if let Some(&id) = self.by_key.get(&key) {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.out.push_back(Out::Trailers(fields));
                        self.write_stream(id);
                    }
                } else if let Some(q) = self.queue.get_mut(&key) {
                    q.open.trailers = Some(fields);
                    q.open.end = true;
                }
            }
            ToUp::Reset { key, code } => {
                if let Some(id) = self.by_key.remove(&key) {
                    if let Some(s) = self.streams.remove(&id) {
                        if !(s.request_done && s.response_done) {
                            frame::put_rst(&mut self.wire.wbuf, id, code);
                        }
                        self.open_queued();
                    }
                } else {
                    self.queue.remove(&key);
                }
            }
            ToUp::Credit { key, n } => {
                if let Some(&id) = self.by_key.get(&key)
                    && let Some(s) = self.streams.get_mut(&id)
                    && !s.response_done
                {
                    s.recv_window += i64::from(n);
                    frame::put_window_update(&mut self.wire.wbuf, id, n);
                }
            }
        }
        Ok(())
    }

    /// The connection takes no new requests: its endpoint may open a
    /// replacement at once, while this one finishes its streams.
    pub(super) fn go_away(&mut self) {
        if !self.going_away.swap(true, Ordering::Relaxed) {
            self.phase.send_replace(UpPhase::GoingAway);
        }
    }

    /// Arms the timer for the oldest queued request.
    fn arm_queue_timer(&mut self) {
        let Some(oldest) = self.queue.front() else {
            self.queue_timer = None;
            return;
        };
        let at = oldest.since + self.options.queue_timeout;
        match self.queue_timer.as_mut() {
            Some(t) if t.deadline() == at => {}
            Some(t) => t.as_mut().reset(at),
            None => self.queue_timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Fails the requests that waited longer than the queue timeout (the
    /// queue is in arrival order: the oldest come first).
    fn expire_queued(&mut self) {
        let now = Instant::now();
        while let Some(q) = self.queue.front() {
            if now < q.since + self.options.queue_timeout {
                break;
            }
            let Some(q) = self.queue.pop_front() else { break };
            let detail = format!(
                "endpoint {} took no new stream for {:?} (it allows {} at once, all busy)",
                self.addr,
                self.options.queue_timeout,
                self.limit()
            );
            let _ = q.open.reply.send(ToDown::Fail {
                stream: q.open.key.stream,
                detail,
            });
        }
        self.arm_queue_timer();
    }

    /// The connection ended. Queued requests were never sent: they go back.
    /// Streams already sent may have been processed: they fail.
    fn close(&mut self, why: String) {
        for (_, s) in self.streams.drain() {
            let detail = format!("endpoint {}: {why}", self.addr);
            // Not the endpoint cancelling: its connection is gone (gRPC:
            // UNAVAILABLE before the answer began).
            let _ = s.reply.send(ToDown::Reset {
                stream: s.key.stream,
                code: code::CONNECT_ERROR,
                detail,
            });
        }
        while let Some(q) = self.queue.pop_front() {
            let _ = q.open.reply.send(ToDown::Bounce {
                stream: q.open.key.stream,
                detail: why.clone(),
            });
        }
    }
}

/// A readable name for an HTTP/2 error code.
pub fn reason(code: u32) -> &'static str {
    match code {
        code::NO_ERROR => "NO_ERROR",
        code::PROTOCOL_ERROR => "PROTOCOL_ERROR",
        code::INTERNAL_ERROR => "INTERNAL_ERROR",
        code::FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR",
        code::STREAM_CLOSED => "STREAM_CLOSED",
        code::FRAME_SIZE_ERROR => "FRAME_SIZE_ERROR",
        code::REFUSED_STREAM => "REFUSED_STREAM",
        code::CANCEL => "CANCEL",
        code::CONNECT_ERROR => "connection lost",
        code::COMPRESSION_ERROR => "COMPRESSION_ERROR",
        code::ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM",
        _ => "error",
    }
}
