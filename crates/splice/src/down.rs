//! A client-side connection: HTTP/2 from an application (outbound) or from
//! another proxy (inbound). Each request is routed and balanced on its own
//! by the layer above ([`Dispatch`]) and handed to the chosen endpoint's
//! connection ([`crate::up`]); its response comes back as [`ToDown`]
//! messages and is written to the client.
//!
//! - this file: the connection's loop, and frames from the client;
//! - [`request`]: a new request, from its head to an endpoint connection;
//! - [`response`]: what endpoint connections send back, written to the client;
//! - [`allowance`]: how many control frames a client may send;
//! - [`ending`]: the proxy's own answers, deadlines, and the end of streams.

mod allowance;
use allowance::Allowance;
mod ending;
mod request;
mod response;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    future::{Future, poll_fn},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    ConnError, Dispatch, DownTx, End, Field, IdMap, Io, Open, StreamKey, Timeouts, ToDown, ToUp, UpTx,
    frame::{self, code, flag, kind},
    grpc, headers,
    liveness::{Liveness, Verdict},
    wire::{self, Wire},
};

/// The bounds a client connection works within.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Concurrent streams the client may open (our SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Largest request header list accepted, in bytes (HTTP 431 beyond).
    pub max_header_bytes: u32,
    /// Bytes the connection may hold for its client: request bytes no
    /// endpoint has taken yet (beyond, the client gets no more connection
    /// window) and response bytes the client has not read (beyond, the
    /// client is disconnected: it does not read what it asked for).
    pub max_buffered: usize,
    /// Control frames (RST_STREAM, PING, SETTINGS, PRIORITY, empty DATA,
    /// refused streams) the client may send in a burst. The allowance
    /// refills at a tenth of this per second and by one for every request
    /// answered; a client that exhausts it (rapid reset, PING floods) gets
    /// GOAWAY ENHANCE_YOUR_CALM.
    pub max_control_frames: u32,
    /// Keepalive, idle and header-block timeouts.
    pub timeouts: Timeouts,
    /// A request is kept for sending again (to another endpoint, or as a
    /// retry) while its body is at most this many bytes ...
    pub replay_per_request: usize,
    /// ... and while the connection's kept requests hold at most this many
    /// in all (beyond, a request is simply not kept: it is not retried).
    pub replay_per_connection: usize,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Bytes of a client's frames one connection handles per turn on its
/// thread before the other connections get theirs.
const TURN_BYTES: usize = 64 << 10;

/// A response part waiting for the client's flow-control window.
#[derive(Debug)]
enum Out {
    Data(Bytes, bool),
    Trailers(Vec<Field>),
}

/// Where a stream's request is.
enum Upstream {
    /// Waiting for an endpoint; what the client sent so far.
    Waiting(Box<Open>),
    Attached(UpTx),
    /// Answered by the proxy, or finished upstream.
    Detached,
}

/// What the client connection keeps of a request until its response
/// begins, to send it to another endpoint if the first never processes it.
struct Replay {
    head: Arc<[Field]>,
    body: Vec<Bytes>,
    size: usize,
    trailers: Option<Vec<Field>>,
    /// The connection's Σ `size` over its kept requests.
    pool: Arc<AtomicUsize>,
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.size, Ordering::Relaxed);
    }
}

impl Replay {
    /// The request again, for another endpoint: everything the client sent
    /// so far; the rest follows to wherever it goes now.
    fn reopen(&self, key: StreamKey, reply: DownTx, end: bool) -> Box<Open> {
        Box::new(Open {
            key,
            reply,
            head: self.head.clone(),
            body: self.body.clone(),
            trailers: self.trailers.clone(),
            end,
        })
    }
}

/// A request to the layer above and what it answered.
struct Exchange<D: Dispatch> {
    call: D::Call,
    pick: Option<D::Pick>,
    grpc: bool,
    /// When the request was sent to its endpoint (for the latency estimate).
    sent: Instant,
    deadline: Option<Instant>,
}

struct Stream<D: Dispatch> {
    key: StreamKey,
    up: Upstream,
    replay: Option<Replay>,
    /// The client finished its request.
    client_done: bool,
    /// What the client may still send on the stream.
    recv_window: i64,
    /// Request bytes the endpoint side took, not yet granted back.
    client_credit: u32,
    /// How much more may be sent to the client on the stream.
    send_window: i64,
    out: VecDeque<Out>,
    /// Response data bytes in `out`.
    out_bytes: usize,
    /// Whether the stream waits in the connection's `blocked` queue.
    queued: bool,
    /// Request bytes received from the client and not yet taken by the
    /// endpoint connection.
    held: usize,
    /// The request body against its `content-length`.
    body: headers::BodyLength,
    head_sent: bool,
    /// Response bytes written to the client, not yet reported upstream.
    up_credit: u32,
    x: Exchange<D>,
}

impl<D: Dispatch> Stream<D> {
    /// Request bytes the endpoint connection took (see `Down::credited`).
    fn credited(&mut self, credit: u32, req_buffered: &mut usize) {
        self.client_credit += credit;
        let taken = (credit as usize).min(self.held);
        self.held -= taken;
        *req_buffered = req_buffered.saturating_sub(taken);
    }

    /// A new stream whose request (so far: its head, and all of it when
    /// `end`) waits for an endpoint; `send_window` is the client's initial
    /// stream window.
    fn new(
        key: StreamKey,
        reply: DownTx,
        head: Arc<[Field]>,
        end: bool,
        send_window: u32,
        x: Exchange<D>,
        pool: Arc<AtomicUsize>,
    ) -> Self {
        let open = Box::new(Open {
            key,
            reply,
            head: head.clone(),
            body: Vec::new(),
            trailers: None,
            end,
        });
        Stream {
            key,
            up: Upstream::Waiting(open),
            replay: Some(Replay {
                head,
                body: Vec::new(),
                size: 0,
                trailers: None,
                pool,
            }),
            client_done: end,
            recv_window: i64::from(crate::STREAM_WINDOW),
            client_credit: 0,
            send_window: i64::from(send_window),
            out: VecDeque::new(),
            out_bytes: 0,
            queued: false,
            held: 0,
            body: headers::BodyLength::default(),
            head_sent: false,
            up_credit: 0,
            x,
        }
    }
}

/// A waiting request's endpoint, from the task that waited for it.
type Picked<D> = (u32, Result<<D as Dispatch>::Pick, <D as Dispatch>::Error>);
/// The channel those answers come back on.
type PickChannel<D> = (mpsc::UnboundedSender<Picked<D>>, mpsc::UnboundedReceiver<Picked<D>>);

struct Down<D: Dispatch> {
    wire: Wire,
    id: u64,
    peer: SocketAddr,
    dispatch: Arc<D>,
    conn: D::Conn,
    limits: Limits,
    tx: DownTx,
    rx: mpsc::UnboundedReceiver<ToDown>,
    /// Endpoints picked for requests that had to wait (made on first use).
    picks: Option<PickChannel<D>>,
    streams: IdMap<u32, Stream<D>>,
    /// The highest stream id the client opened.
    last_stream: u32,
    goaway_sent: bool,
    client_goaway: bool,
    deadlines: BinaryHeap<Reverse<(Instant, u32)>>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Streams with response data that the connection window or a full
    /// output buffer holds back (not those waiting for their own window).
    blocked: VecDeque<u32>,
    /// Σ `out_bytes` and Σ `held` over the streams.
    resp_buffered: usize,
    req_buffered: usize,
    /// Σ body bytes of the requests kept for sending again.
    replay_held: Arc<AtomicUsize>,
    allowance: Allowance,
    liveness: Liveness,
    scratch: Vec<Field>,
}

/// Serves one client connection that sent the HTTP/2 preface (`prefix`
/// holds the bytes detection read) until it closes or `drain` completes
/// and its streams are done.
pub async fn serve<D: Dispatch>(
    io: Io,
    prefix: BytesMut,
    peer: SocketAddr,
    dispatch: Arc<D>,
    conn: D::Conn,
    limits: Limits,
    drain: impl Future<Output = ()>,
) {
    let settings = Wire::settings(Some(limits.max_concurrent_streams), limits.max_header_bytes, false);
    let mut wire = Wire::new(io, prefix, false, &settings, limits.max_header_bytes);
    // The client's preface was checked by detection; consume it.
    if wire.rbuf.len() >= frame::PREFACE.len() && &wire.rbuf[..frame::PREFACE.len()] == frame::PREFACE {
        let _ = wire.rbuf.split_to(frame::PREFACE.len());
    } else {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut down = Down {
        wire,
        id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        peer,
        dispatch,
        conn,
        limits,
        tx,
        rx,
        picks: None,
        streams: IdMap::default(),
        last_stream: 0,
        goaway_sent: false,
        client_goaway: false,
        deadlines: BinaryHeap::new(),
        timer: None,
        blocked: VecDeque::new(),
        resp_buffered: 0,
        req_buffered: 0,
        replay_held: Arc::new(AtomicUsize::new(0)),
        allowance: Allowance::new(limits.max_control_frames),
        liveness: Liveness::new(limits.timeouts),
        scratch: Vec::new(),
    };
    let mut drained = std::pin::pin!(drain);
    let result = poll_fn(|cx| {
        if !down.goaway_sent && drained.as_mut().poll(cx).is_ready() {
            // GOAWAY: no new streams; the ones in flight finish.
            down.wire.goaway(down.last_stream, code::NO_ERROR, "draining");
            down.goaway_sent = true;
        }
        down.poll_run(cx)
    })
    .await;
    if let Err(e) = result
        && (e.code != code::NO_ERROR || e.label.is_some())
    {
        let reason = e.label.unwrap_or(match e.code {
            code::COMPRESSION_ERROR | code::PROTOCOL_ERROR | code::FRAME_SIZE_ERROR | code::FLOW_CONTROL_ERROR => {
                "http2_protocol"
            }
            _ => "http_io",
        });
        tracing::debug!(peer = %down.peer, code = e.code, reason = %e.reason, "HTTP/2 connection error");
        down.dispatch.connection_error(&down.conn, down.peer, reason);
        if e.code != code::NO_ERROR {
            down.wire.goaway(down.last_stream, e.code, &e.reason);
            let _ = poll_fn(|cx| down.wire.poll_flush(cx)).await;
        }
    }
    down.close();
}

impl<D: Dispatch> Down<D> {
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        // The clocks are checked once per wake-up (their timer wakes the
        // task when it fires), not on every turn of the loop below.
        if let Some(verdict) = self
            .liveness
            .poll(cx, &mut self.wire, (!self.streams.is_empty(), self.last_stream))
            && verdict? == Verdict::Idle
            && !self.goaway_sent
        {
            // Sent away politely; it reconnects when it needs to.
            self.wire.goaway(self.last_stream, code::NO_ERROR, "idle");
            self.goaway_sent = true;
        }
        // Bytes of the client's frames handled in this turn: past
        // `TURN_BYTES` the task lets the thread's other connections have
        // theirs (a client that sends as fast as it can delays the others by
        // one turn, not by all it sent).
        let mut turn = 0usize;
        loop {
            let mut busy = false;
            for _ in 0..512 {
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(msg)) => {
                        busy = true;
                        self.on_message(msg);
                    }
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            while let Some((_, rx)) = self.picks.as_mut()
                && let Poll::Ready(Some((stream, result))) = rx.poll_recv(cx)
            {
                busy = true;
                self.on_picked(stream, result);
            }
            if !self.wire.read_closed && self.wire.output_len() < crate::WRITE_HIGH_WATER && turn < TURN_BYTES {
                busy |= self.take_input(cx, &mut turn)?;
            }
            if let Some(t) = self.timer.as_mut()
                && t.as_mut().poll(cx).is_ready()
            {
                self.timer = None;
                self.expire();
                busy = true;
            }
            if self.resp_buffered > self.limits.max_buffered {
                return Poll::Ready(Err(ConnError::new(
                    code::ENHANCE_YOUR_CALM,
                    format!(
                        "the client does not read its responses ({} bytes waiting, limit {})",
                        self.resp_buffered, self.limits.max_buffered
                    ),
                )
                .labelled("http2_buffer_limit")));
            }
            self.wire.hold_credit(self.req_buffered > self.limits.max_buffered);
            if let Poll::Ready(Err(e)) = self.wire.poll_flush(cx) {
                return Poll::Ready(Err(ConnError::new(code::NO_ERROR, e.to_string())));
            }
            if !self.blocked.is_empty() && !self.wire.output_full() {
                let before = self.wire.output_len();
                self.unblock();
                busy |= self.wire.output_len() != before;
            }
            if self.wire.read_closed && !self.wire.has_output() {
                return Poll::Ready(Ok(()));
            }
            if (self.goaway_sent || self.client_goaway) && self.streams.is_empty() && !self.wire.has_output() {
                return Poll::Ready(Ok(()));
            }
            if !busy {
                if turn >= TURN_BYTES {
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
        }
    }

    /// Reads and handles the client's frames until this turn's bytes are
    /// spent; whether anything happened. Frames already buffered (detection
    /// read the first bytes, or the last turn ended) come first.
    fn take_input(&mut self, cx: &mut Context<'_>, turn: &mut usize) -> Result<bool, ConnError> {
        let mut any = self.take_frames(turn)?;
        if *turn < TURN_BYTES {
            match self.wire.poll_read(cx) {
                Poll::Ready(Ok(0)) => any = true,
                Poll::Ready(Ok(_)) => {
                    any = true;
                    self.take_frames(turn)?;
                }
                Poll::Ready(Err(e)) => return Err(ConnError::new(code::NO_ERROR, e.to_string())),
                Poll::Pending => {}
            }
        }
        Ok(any)
    }

    /// Handles the frames read, until this turn's bytes are spent; whether
    /// there were any.
    fn take_frames(&mut self, turn: &mut usize) -> Result<bool, ConnError> {
        let mut any = false;
        while *turn < TURN_BYTES
            && let Some((head, payload)) = self.wire.next_frame()?
        {
            any = true;
            *turn += frame::HEAD_LEN + head.len as usize;
            self.on_frame(head, payload)?;
        }
        Ok(any)
    }

    // ===== frames from the client =====

    fn on_frame(&mut self, head: frame::Head, payload: Bytes) -> Result<(), ConnError> {
        if self.wire.partial.is_some() && head.kind != kind::CONTINUATION {
            return Err(ConnError::new(code::PROTOCOL_ERROR, "header block interrupted"));
        }
        let control = match head.kind {
            kind::PING | kind::SETTINGS => !head.has(flag::ACK),
            kind::PRIORITY | kind::RST_STREAM => true,
            kind::DATA => head.len == 0 && !head.has(flag::END_STREAM),
            _ => false,
        };
        if control {
            self.spend_control()?;
        }
        let mut delta = 0i64;
        let conn_window = self.wire.conn_send;
        if self.wire.connection_frame(&head, &payload, &mut delta)? {
            if delta != 0 {
                for s in self.streams.values_mut() {
                    s.send_window += delta;
                }
            }
            // Only a larger window can let held-back data go: a PING or a
            // PRIORITY costs O(1), whatever the number of streams.
            if delta > 0 {
                let ids: Vec<u32> = self.streams.keys().copied().collect();
                for id in ids {
                    self.write_out(id);
                }
            } else if self.wire.conn_send > conn_window {
                self.unblock();
            }
            return Ok(());
        }
        match head.kind {
            kind::HEADERS | kind::CONTINUATION => {
                if head.stream == 0 {
                    return Err(ConnError::new(code::PROTOCOL_ERROR, "HEADERS on stream 0"));
                }
                let Some(block) = self.wire.header_block(&head, payload)? else {
                    return Ok(());
                };
                self.on_headers(block)
            }
            kind::DATA => self.on_data(&head, payload),
            kind::RST_STREAM => {
                wire::rst_code(&payload)?;
                if head.stream == 0 || head.stream > self.last_stream {
                    return Err(ConnError::new(code::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                if let Some(mut s) = self.take_stream(head.stream) {
                    cancel_upstream(&s);
                    s.up = Upstream::Detached;
                    self.record(s, End::Cancelled);
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let inc = match wire::window_increment(&payload) {
                    Ok(i) => i,
                    Err(_) if payload.len() == 4 => {
                        self.spend_control()?;
                        self.reset_stream(head.stream, code::PROTOCOL_ERROR);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                if let Some(s) = self.streams.get_mut(&head.stream) {
                    s.send_window += i64::from(inc);
                    if s.send_window > frame::MAX_WINDOW {
                        self.reset_stream(head.stream, code::FLOW_CONTROL_ERROR);
                        return Ok(());
                    }
                    self.write_out(head.stream);
                }
                Ok(())
            }
            kind::GOAWAY => {
                self.client_goaway = true;
                Ok(())
            }
            kind::PUSH_PROMISE => Err(ConnError::new(code::PROTOCOL_ERROR, "PUSH_PROMISE from a client")),
            _ => Ok(()),
        }
    }

    fn on_data(&mut self, head: &frame::Head, payload: Bytes) -> Result<(), ConnError> {
        let len = head.len;
        self.wire.received(len)?;
        if head.stream == 0 {
            return Err(ConnError::new(code::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let range = frame::unpad(head, &payload).ok_or_else(|| ConnError::new(code::PROTOCOL_ERROR, "bad padding"))?;
        let end = head.has(flag::END_STREAM);
        let Some(s) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(ConnError::new(code::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            return Ok(()); // a stream already answered; its bytes are dropped
        };
        if s.client_done {
            self.reset_stream(head.stream, code::STREAM_CLOSED);
            return Ok(());
        }
        s.recv_window -= i64::from(len);
        if s.recv_window < 0 {
            self.reset_stream(head.stream, code::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        let data = payload.slice(range.clone());
        if let Err(why) = s.body.add(data.len(), end) {
            tracing::debug!(peer = %self.peer, why, "malformed request body");
            self.reset_stream(head.stream, code::PROTOCOL_ERROR);
            return Ok(());
        }
        let padding = len - data.len() as u32;
        s.client_done = end;
        s.client_credit += padding;
        if !matches!(s.up, Upstream::Detached) {
            s.held += data.len();
            self.req_buffered += data.len();
        }
        if let Some(r) = s.replay.as_mut() {
            let n = data.len();
            if r.size + n > self.limits.replay_per_request
                || self.replay_held.load(Ordering::Relaxed) + n > self.limits.replay_per_connection
            {
                s.replay = None;
            } else if n > 0 {
                r.size += n;
                r.pool.fetch_add(n, Ordering::Relaxed);
                r.body.push(data.clone());
            }
        }
        match &mut s.up {
            Upstream::Attached(up) => {
                let _ = up.send(ToUp::Data { key: s.key, data, end });
            }
            Upstream::Waiting(open) => {
                if !data.is_empty() {
                    open.body.push(data);
                }
                open.end |= end;
            }
            Upstream::Detached => s.client_credit += (range.end - range.start) as u32,
        }
        self.grant(head.stream);
        Ok(())
    }

    /// Removes a stream, with what it held of the connection's budget.
    fn take_stream(&mut self, id: u32) -> Option<Stream<D>> {
        let s = self.streams.remove(&id)?;
        self.resp_buffered = self.resp_buffered.saturating_sub(s.out_bytes);
        self.req_buffered = self.req_buffered.saturating_sub(s.held);
        Some(s)
    }

    /// Request bytes the endpoint connection took: the client may send
    /// that much more (granted in batches).
    fn credited(&mut self, id: u32, credit: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.credited(credit, &mut self.req_buffered);
        }
    }

    fn reset_stream(&mut self, id: u32, code: u32) {
        frame::put_rst(&mut self.wire.wbuf, id, code);
        if let Some(mut s) = self.take_stream(id) {
            cancel_upstream(&s);
            s.up = Upstream::Detached;
            self.record(s, End::Failed(grpc::code::INTERNAL));
        }
    }

    /// The connection is over: every stream still open is cancelled.
    fn close(&mut self) {
        let streams: Vec<Stream<D>> = self.streams.drain().map(|(_, s)| s).collect();
        for s in streams {
            cancel_upstream(&s);
            self.record(s, End::Cancelled);
        }
    }
}

/// Tells the endpoint connection a stream is over (it resets it there).
fn cancel_upstream<D: Dispatch>(s: &Stream<D>) {
    if let Upstream::Attached(up) = &s.up {
        let _ = up.send(ToUp::Reset {
            key: s.key,
            code: code::CANCEL,
        });
    }
}
