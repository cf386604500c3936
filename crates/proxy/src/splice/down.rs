//! A client-side connection: HTTP/2 from an application (outbound) or from
//! another proxy (inbound). Each request is routed and balanced on its own
//! and handed to the chosen endpoint's connection ([`super::up`]); its
//! response comes back as [`ToDown`] messages and is written to the client.
//!
//! The proxy's own answers (no endpoint, unknown service, deadline passed)
//! are proper gRPC responses for gRPC requests (trailers-only, with
//! `grpc-status` and a message that says why) and HTTP errors otherwise.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    future::poll_fn,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{net::TcpStream, sync::mpsc, time::Instant};

use super::{
    CREDIT_BATCH, ConnError, DownTx, Field, IdMap, Open, STREAM_WINDOW, StreamKey, ToDown, ToUp, UpTx,
    frame::{self, code, flag, kind},
    is_connection_specific,
    wire::{self, Wire},
};
use crate::{
    balancer::Balancer,
    drain,
    endpoint::InFlight,
    error::{self, ProxyError, encode_grpc_message},
    http::{ConnCache, ConnMeta, HttpProxy, grpc},
    metrics::{Label, ResponseKey, RouteMetrics, grpc_code_label, status_label},
};

/// A request is sent to at most this many endpoints that never took it.
const MAX_ATTEMPTS: u8 = 4;
/// A request is kept for sending elsewhere only up to this size.
const REPLAY_LIMIT: usize = 64 << 10;

/// What the client connection keeps of a request until its response
/// begins, to send it to another endpoint if the first never processes it.
struct Replay {
    head: Arc<[Field]>,
    body: Vec<Bytes>,
    size: usize,
    trailers: Option<Vec<Field>>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

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

struct Exchange {
    route: Arc<RouteMetrics>,
    balancer: Arc<Balancer>,
    start: Instant,
    grpc: bool,
    /// When the request was sent to its endpoint (for the latency estimate).
    sent: Instant,
    in_flight: Option<InFlight>,
    deadline: Option<(Instant, Duration)>,
    attempts: u8,
    status: u16,
    head_grpc_status: Option<u16>,
}

struct Stream {
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
    head_sent: bool,
    /// Response bytes written to the client, not yet reported upstream.
    up_credit: u32,
    x: Exchange,
}

/// What the engine needs from its listener.
pub struct DownCtx {
    pub http: HttpProxy,
    pub max_concurrent_streams: u32,
    pub max_header_bytes: u32,
}

struct Down {
    wire: Wire,
    id: u64,
    meta: ConnMeta,
    ctx: Arc<DownCtx>,
    cache: ConnCache,
    tx: DownTx,
    rx: mpsc::UnboundedReceiver<ToDown>,
    streams: IdMap<u32, Stream>,
    /// The highest stream id the client opened.
    last_stream: u32,
    goaway_sent: bool,
    client_goaway: bool,
    deadlines: BinaryHeap<Reverse<(Instant, u32)>>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    blocked: Vec<u32>,
    scratch: Vec<Field>,
}

/// Serves one client connection that sent the HTTP/2 preface (`prefix`
/// holds the bytes detection read) until it closes or the drain ends it.
pub async fn serve(io: TcpStream, prefix: BytesMut, meta: ConnMeta, ctx: Arc<DownCtx>, drain: drain::Watch) {
    let settings = Wire::settings(Some(ctx.max_concurrent_streams), ctx.max_header_bytes, false);
    let mut wire = Wire::new(io, prefix, false, &settings);
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
        meta,
        ctx,
        cache: ConnCache::default(),
        tx,
        rx,
        streams: IdMap::default(),
        last_stream: 0,
        goaway_sent: false,
        client_goaway: false,
        deadlines: BinaryHeap::new(),
        timer: None,
        blocked: Vec::new(),
        scratch: Vec::new(),
    };
    let mut drained = std::pin::pin!(drain.signaled());
    let result = poll_fn(|cx| {
        if !down.goaway_sent && drained.as_mut().poll(cx).is_ready() {
            // GOAWAY: no new streams; the ones in flight finish.
            down.wire.goaway(down.last_stream, code::NO_ERROR, "draining");
            down.goaway_sent = true;
        }
        down.poll_run(cx)
    })
    .await;
    match result {
        Ok(()) => {}
        Err(e) => {
            let reason: &'static str = if e.code == code::COMPRESSION_ERROR
                || e.code == code::PROTOCOL_ERROR
                || e.code == code::FRAME_SIZE_ERROR
                || e.code == code::FLOW_CONTROL_ERROR
            {
                "http2_protocol"
            } else {
                "http_io"
            };
            if e.code != code::NO_ERROR {
                tracing::debug!(peer = %down.meta.peer, code = e.code, reason = %e.reason, "HTTP/2 connection error");
                down.ctx
                    .http
                    .metrics()
                    .connection_error(down.meta.direction.label(), reason);
                down.wire.goaway(down.last_stream, e.code, &e.reason);
                let _ = poll_fn(|cx| down.wire.poll_flush(cx)).await;
            }
        }
    }
    down.close();
}

impl Down {
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
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
            if !self.wire.read_closed && self.wire.output_len() < super::WRITE_HIGH_WATER {
                // Frames already buffered (detection read the first bytes) come first.
                while let Some((head, payload)) = self.wire.next_frame()? {
                    busy = true;
                    self.on_frame(head, payload)?;
                }
                match self.wire.poll_read(cx) {
                    Poll::Ready(Ok(0)) => busy = true,
                    Poll::Ready(Ok(_)) => {
                        busy = true;
                        while let Some((head, payload)) = self.wire.next_frame()? {
                            self.on_frame(head, payload)?;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(ConnError::new(code::NO_ERROR, e.to_string()))),
                    Poll::Pending => {}
                }
            }
            if let Some(t) = self.timer.as_mut()
                && t.as_mut().poll(cx).is_ready()
            {
                self.timer = None;
                self.expire();
                busy = true;
            }
            if let Poll::Ready(Err(e)) = self.wire.poll_flush(cx) {
                return Poll::Ready(Err(ConnError::new(code::NO_ERROR, e.to_string())));
            }
            if self.wire.read_closed && !self.wire.has_output() {
                return Poll::Ready(Ok(()));
            }
            if (self.goaway_sent || self.client_goaway) && self.streams.is_empty() && !self.wire.has_output() {
                return Poll::Ready(Ok(()));
            }
            if !busy {
                return Poll::Pending;
            }
        }
    }

    // ===== frames from the client =====

    fn on_frame(&mut self, head: frame::Head, payload: Bytes) -> Result<(), ConnError> {
        if self.wire.partial.is_some() && head.kind != kind::CONTINUATION {
            return Err(ConnError::new(code::PROTOCOL_ERROR, "header block interrupted"));
        }
        let mut delta = 0i64;
        if self.wire.connection_frame(&head, &payload, &mut delta)? {
            if delta != 0 {
                for s in self.streams.values_mut() {
                    s.send_window += delta;
                }
            }
            self.unblock();
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
                let code = wire::rst_code(&payload)?;
                if head.stream == 0 || head.stream > self.last_stream {
                    return Err(ConnError::new(code::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                if let Some(mut s) = self.streams.remove(&head.stream) {
                    if let Upstream::Attached(up) = &s.up {
                        let _ = up.send(ToUp::Reset {
                            key: s.key,
                            code: code::CANCEL,
                        });
                    }
                    s.up = Upstream::Detached;
                    let _ = code;
                    self.record(s, Ending::Cancelled);
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let inc = match wire::window_increment(&payload) {
                    Ok(i) => i,
                    Err(_) if payload.len() == 4 => {
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

    fn on_headers(&mut self, block: wire::Partial) -> Result<(), ConnError> {
        let id = block.stream;
        let mut fields = std::mem::take(&mut self.scratch);
        fields.clear();
        let size = self
            .wire
            .dec
            .decode(&block.block, &mut fields)
            .map_err(|e| ConnError::new(code::COMPRESSION_ERROR, e.to_string()))?;

        // Trailers of a request already open.
        if id <= self.last_stream {
            let Some(s) = self.streams.get_mut(&id) else {
                self.scratch = fields;
                return if id % 2 == 1 {
                    Ok(())
                } else {
                    Err(ConnError::new(code::PROTOCOL_ERROR, "even stream id"))
                };
            };
            if s.client_done || !block.end_stream {
                self.scratch = fields;
                self.reset_stream(id, code::PROTOCOL_ERROR);
                return Ok(());
            }
            s.client_done = true;
            let trailers = std::mem::take(&mut fields);
            if let Some(r) = s.replay.as_mut() {
                r.trailers = Some(trailers.clone());
            }
            match &mut s.up {
                Upstream::Attached(up) => {
                    let _ = up.send(ToUp::Trailers {
                        key: s.key,
                        fields: trailers,
                    });
                }
                Upstream::Waiting(open) => {
                    open.trailers = Some(trailers);
                    open.end = true;
                }
                Upstream::Detached => {}
            }
            self.scratch = fields;
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(ConnError::new(
                code::PROTOCOL_ERROR,
                "a client opened an even stream id",
            ));
        }
        self.last_stream = id;
        if self.goaway_sent || self.streams.len() >= self.ctx.max_concurrent_streams as usize {
            self.scratch = fields;
            frame::put_rst(&mut self.wire.wbuf, id, code::REFUSED_STREAM);
            return Ok(());
        }
        let start = Instant::now();
        if size > self.ctx.max_header_bytes as usize {
            self.scratch = fields;
            let mut f = vec![Field::new(":status", "431")];
            f.push(Field::new("weft-proxy-error", "headers_too_large"));
            self.encode_head(id, &f, true);
            if !block.end_stream {
                frame::put_rst(&mut self.wire.wbuf, id, code::NO_ERROR);
            }
            self.ctx
                .http
                .metrics()
                .connection_error(self.meta.direction.label(), "http_headers_too_large");
            return Ok(());
        }
        let req = match validate_request(&fields) {
            Ok(r) => r,
            Err(why) => {
                tracing::debug!(peer = %self.meta.peer, why, "malformed request");
                self.scratch = fields;
                frame::put_rst(&mut self.wire.wbuf, id, code::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        let grpc = req.content_type.is_some_and(|c| c.starts_with(b"application/grpc"));
        let authority = req.authority.and_then(|a| std::str::from_utf8(a).ok());
        let path = std::str::from_utf8(req.path).unwrap_or("/");
        let scheme = req.scheme.and_then(|s| std::str::from_utf8(s).ok());
        let timeout = if grpc {
            req.grpc_timeout
                .and_then(|v| http::HeaderValue::from_bytes(v).ok())
                .and_then(|v| grpc::parse_timeout(&v))
        } else {
            None
        };
        let key = StreamKey {
            conn: self.id,
            stream: id,
        };
        let routed = self
            .ctx
            .http
            .route_parts(authority, scheme, path, grpc, &self.meta, &self.cache);
        let (balancer, route) = match routed {
            Ok(r) => r,
            Err(e) => {
                let target: Arc<str> = Arc::from("unknown");
                let route = self
                    .ctx
                    .http
                    .metrics()
                    .route(self.meta.direction.label(), &target, path, grpc);
                route.requests.inc();
                self.answer_error(id, grpc, &e, Some(&route), start);
                if !block.end_stream {
                    frame::put_rst(&mut self.wire.wbuf, id, code::NO_ERROR);
                }
                self.scratch = fields;
                return Ok(());
            }
        };
        let head: Arc<[Field]> = fields.drain(..).collect();
        self.scratch = fields;
        route.requests.inc();
        let deadline = timeout.map(|t| (start + t, t));
        if let Some((at, _)) = deadline {
            self.arm(at, id);
        }
        let open = Box::new(Open {
            key,
            reply: self.tx.clone(),
            head: head.clone(),
            body: Vec::new(),
            trailers: None,
            end: block.end_stream,
        });
        let stream = Stream {
            key,
            up: Upstream::Waiting(open),
            replay: Some(Replay {
                head,
                body: Vec::new(),
                size: 0,
                trailers: None,
            }),
            client_done: block.end_stream,
            recv_window: i64::from(STREAM_WINDOW),
            client_credit: 0,
            send_window: i64::from(self.wire.peer.initial_window_size),
            out: VecDeque::new(),
            head_sent: false,
            up_credit: 0,
            x: Exchange {
                route,
                balancer,
                start,
                grpc,
                sent: start,
                in_flight: None,
                deadline,
                attempts: 0,
                status: 0,
                head_grpc_status: None,
            },
        };
        self.streams.insert(id, stream);
        self.dispatch(id, None);
        Ok(())
    }

    fn on_data(&mut self, head: &frame::Head, payload: Bytes) -> Result<(), ConnError> {
        let len = head.len;
        self.wire.received(len);
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
        let padding = len - data.len() as u32;
        s.client_done = end;
        s.client_credit += padding;
        if let Some(r) = s.replay.as_mut() {
            r.size += data.len();
            if r.size > REPLAY_LIMIT {
                s.replay = None;
            } else if !data.is_empty() {
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

    // ===== routing a request to an endpoint =====

    /// Sends a waiting request to an endpoint: `picked` if the balancer has
    /// answered already, else the balancer is asked now (and, when no
    /// endpoint is ready, a task waits for one).
    fn dispatch(&mut self, id: u32, picked: Option<InFlight>) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        let in_flight = match picked {
            Some(p) => p,
            None => match s.x.balancer.pick_now() {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    let grpc = s.x.grpc;
                    self.fail(id, grpc, &e);
                    return;
                }
                None => {
                    // No endpoint is ready: wait for one, up to the fail-fast
                    // timeout (or the deadline, if sooner).
                    let balancer = s.x.balancer.clone();
                    let mut until = s.x.start + self.ctx.http.fail_fast();
                    if let Some((d, _)) = s.x.deadline {
                        until = until.min(d);
                    }
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let result = balancer.pick(until).await;
                        let _ = tx.send(ToDown::Picked { stream: id, result });
                    });
                    return;
                }
            },
        };
        let Some(up) = in_flight.endpoint.splice_tx() else {
            // Picked, but its connection just went away: try again.
            s.x.attempts += 1;
            if s.x.attempts >= MAX_ATTEMPTS {
                let e = ProxyError::Upstream {
                    name: in_flight.endpoint.meta.name.clone(),
                    addr: in_flight.endpoint.meta.addr,
                    detail: "no connection".into(),
                };
                let grpc = s.x.grpc;
                self.fail(id, grpc, &e);
            } else {
                self.dispatch(id, None);
            }
            return;
        };
        let Upstream::Waiting(open) = std::mem::replace(&mut s.up, Upstream::Attached(up.clone())) else {
            return;
        };
        s.x.sent = Instant::now();
        s.x.in_flight = Some(in_flight);
        if let Err(mpsc::error::SendError(ToUp::Open(open))) = up.send(ToUp::Open(open)) {
            // The connection ended between the pick and the send.
            s.up = Upstream::Waiting(open);
            s.x.in_flight = None;
            s.x.attempts += 1;
            if s.x.attempts < MAX_ATTEMPTS {
                self.dispatch(id, None);
            } else {
                let grpc = s.x.grpc;
                self.fail(
                    id,
                    grpc,
                    &ProxyError::Unsent("every endpoint connection closed under the request".into()),
                );
            }
        }
    }

    // ===== messages from endpoint connections =====

    fn on_message(&mut self, msg: ToDown) {
        match msg {
            ToDown::Head {
                stream,
                fields,
                end,
                credit,
            } => {
                let Some(s) = self.streams.get_mut(&stream) else { return };
                s.client_credit += credit;
                if let Some(ep) = &s.x.in_flight {
                    ep.endpoint.observe(s.x.sent);
                }
                s.x.route.latency.observe(s.x.start.elapsed().as_secs_f64());
                s.x.status = super::field(&fields, b":status")
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(0);
                if s.x.grpc {
                    s.x.head_grpc_status = grpc_status(&fields);
                }
                s.head_sent = true;
                s.replay = None;
                self.encode_head(stream, &fields, end);
                self.scratch = fields;
                if end {
                    self.finish(stream, Ending::Ended(None));
                } else {
                    self.grant(stream);
                }
            }
            ToDown::Data {
                stream,
                data,
                end,
                credit,
            } => {
                let Some(s) = self.streams.get_mut(&stream) else { return };
                s.client_credit += credit;
                s.out.push_back(Out::Data(data, end));
                self.write_out(stream);
                self.grant(stream);
            }
            ToDown::Trailers { stream, fields, credit } => {
                let Some(s) = self.streams.get_mut(&stream) else { return };
                s.client_credit += credit;
                s.out.push_back(Out::Trailers(fields));
                self.write_out(stream);
            }
            ToDown::Credit { stream, credit } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.client_credit += credit;
                    self.grant(stream);
                }
            }
            ToDown::Reset {
                stream,
                code: reason,
                detail,
            } => {
                let Some(s) = self.streams.get_mut(&stream) else { return };
                s.up = Upstream::Detached;
                if !s.head_sent {
                    let ep = s.x.in_flight.as_ref().map(|i| i.endpoint.clone());
                    let e = match ep {
                        Some(ep) => ProxyError::UpstreamReset {
                            name: ep.meta.name.clone(),
                            addr: ep.meta.addr,
                            reason: h2::Reason::from(reason),
                        },
                        None => ProxyError::Unsent(detail.clone()),
                    };
                    tracing::debug!(stream, detail, "endpoint reset a stream before answering");
                    let grpc = s.x.grpc;
                    self.fail(stream, grpc, &e);
                } else {
                    frame::put_rst(
                        &mut self.wire.wbuf,
                        stream,
                        if reason == code::NO_ERROR { code::CANCEL } else { reason },
                    );
                    if let Some(s) = self.streams.remove(&stream) {
                        self.record(
                            s,
                            Ending::Failed(if reason == code::CANCEL {
                                error::code::CANCELLED
                            } else {
                                error::code::UNAVAILABLE
                            }),
                        );
                    }
                }
            }
            ToDown::Bounce { stream, detail } => {
                let Some(s) = self.streams.get_mut(&stream) else { return };
                tracing::debug!(stream, detail, "the endpoint never processed the request");
                s.x.in_flight = None;
                s.x.attempts += 1;
                match &s.replay {
                    Some(r) if s.x.attempts < MAX_ATTEMPTS && !s.head_sent => {
                        // Everything the client sent so far; the rest follows
                        // to wherever the request goes now.
                        let open = Box::new(Open {
                            key: s.key,
                            reply: self.tx.clone(),
                            head: r.head.clone(),
                            body: r.body.clone(),
                            trailers: r.trailers.clone(),
                            end: s.client_done,
                        });
                        s.up = Upstream::Waiting(open);
                        self.dispatch(stream, None);
                    }
                    _ => {
                        s.up = Upstream::Detached;
                        let e = ProxyError::Unsent(detail);
                        let grpc = s.x.grpc;
                        self.fail(stream, grpc, &e);
                    }
                }
            }
            ToDown::Picked { stream, result } => {
                if !self.streams.contains_key(&stream) {
                    return;
                }
                match result {
                    Ok(p) => self.dispatch(stream, Some(p)),
                    Err(e) => {
                        let grpc = self.streams.get(&stream).is_some_and(|s| s.x.grpc);
                        self.fail(stream, grpc, &e);
                    }
                }
            }
        }
    }

    // ===== writing to the client =====

    fn encode_head(&mut self, id: u32, fields: &[Field], end: bool) {
        let mut block = self.wire.wbuf_block();
        self.wire
            .enc
            .encode(fields.iter().filter(|f| !is_connection_specific(&f.name)), &mut block);
        frame::put_headers(&mut self.wire.wbuf, id, &block, end, self.wire.peer.max_frame_size);
        self.wire.return_block(block);
    }

    /// Writes a stream's queued response as far as the windows allow.
    fn write_out(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        let max_frame = self.wire.peer.max_frame_size;
        let mut ended = None;
        let mut wrote = 0u32;
        while let Some(out) = s.out.front_mut() {
            match out {
                Out::Trailers(_) => {
                    let Some(Out::Trailers(fields)) = s.out.pop_front() else {
                        break;
                    };
                    let status = grpc_status(&fields);
                    let mut block = self.wire.wbuf_block();
                    self.wire
                        .enc
                        .encode(fields.iter().filter(|f| !is_connection_specific(&f.name)), &mut block);
                    frame::put_headers(&mut self.wire.wbuf, id, &block, true, max_frame);
                    self.wire.return_block(block);
                    self.scratch = fields;
                    ended = Some(status);
                    break;
                }
                Out::Data(data, end) => {
                    let window = s.send_window.min(self.wire.conn_send).max(0) as usize;
                    if data.is_empty() {
                        if *end {
                            frame::put_data(&mut self.wire.wbuf, id, &[], true, max_frame);
                            ended = Some(None);
                        }
                        s.out.pop_front();
                        if ended.is_some() {
                            break;
                        }
                        continue;
                    }
                    if window == 0 {
                        break;
                    }
                    let n = data.len().min(window);
                    let chunk = data.split_to(n);
                    let last = data.is_empty() && *end;
                    frame::put_data(&mut self.wire.wbuf, id, &chunk, last, max_frame);
                    s.send_window -= n as i64;
                    self.wire.conn_send -= n as i64;
                    wrote += n as u32;
                    if data.is_empty() {
                        s.out.pop_front();
                        if last {
                            ended = Some(None);
                            break;
                        }
                    }
                }
            }
        }
        if ended.is_none() && !s.out.is_empty() && !self.blocked.contains(&id) {
            self.blocked.push(id);
        }
        s.up_credit += wrote;
        if s.up_credit >= CREDIT_BATCH && ended.is_none() {
            if let Upstream::Attached(up) = &s.up {
                let _ = up.send(ToUp::Credit {
                    key: s.key,
                    n: s.up_credit,
                });
            }
            s.up_credit = 0;
        }
        if let Some(trailers_status) = ended {
            self.finish(id, Ending::Ended(trailers_status));
        }
    }

    /// Returns request-side window to the client, in batches.
    fn grant(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        if s.client_credit >= CREDIT_BATCH && !s.client_done {
            frame::put_window_update(&mut self.wire.wbuf, id, s.client_credit);
            s.recv_window += i64::from(s.client_credit);
            s.client_credit = 0;
        }
    }

    fn unblock(&mut self) {
        if self.blocked.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.blocked) {
            self.write_out(id);
        }
    }

    fn reset_stream(&mut self, id: u32, code: u32) {
        frame::put_rst(&mut self.wire.wbuf, id, code);
        if let Some(mut s) = self.streams.remove(&id) {
            if let Upstream::Attached(up) = &s.up {
                let _ = up.send(ToUp::Reset {
                    key: s.key,
                    code: code::CANCEL,
                });
            }
            s.up = Upstream::Detached;
            self.record(s, Ending::Failed(error::code::INTERNAL));
        }
    }

    /// Answers a request with the proxy's own error.
    fn fail(&mut self, id: u32, grpc: bool, err: &ProxyError) {
        let Some(mut s) = self.streams.remove(&id) else { return };
        if let Upstream::Attached(up) = &s.up {
            let _ = up.send(ToUp::Reset {
                key: s.key,
                code: code::CANCEL,
            });
        }
        s.up = Upstream::Detached;
        let route = s.x.route.clone();
        let client_done = s.client_done;
        drop(s);
        self.answer_error(id, grpc, err, None, Instant::now());
        if !client_done {
            frame::put_rst(&mut self.wire.wbuf, id, code::NO_ERROR);
        }
        record_error(&route, self.ctx.http.metrics(), grpc, err);
    }

    /// Writes an error response (gRPC: trailers-only; HTTP: status and text).
    fn answer_error(
        &mut self,
        id: u32,
        grpc: bool,
        err: &ProxyError,
        route: Option<&Arc<RouteMetrics>>,
        start: Instant,
    ) {
        tracing::debug!(error = %err, fault = ?err.fault(), "request failed");
        let message = format!("weft: {err}");
        if grpc {
            let mut f = vec![
                Field::new(":status", "200"),
                Field::new("content-type", "application/grpc"),
                Field::new("grpc-status", err.grpc_code().to_string()),
                Field::new("grpc-message", encode_grpc_message(&message)),
                Field::new("weft-proxy-error", err.label()),
            ];
            self.encode_head(id, &f, true);
            f.clear();
        } else {
            let body = format!("{message}\n");
            let f = vec![
                Field::new(":status", err.http_status().as_str().to_string()),
                Field::new("content-type", "text/plain; charset=utf-8"),
                Field::new("content-length", body.len().to_string()),
                Field::new("weft-proxy-error", err.label()),
            ];
            self.encode_head(id, &f, false);
            frame::put_data(
                &mut self.wire.wbuf,
                id,
                body.as_bytes(),
                true,
                self.wire.peer.max_frame_size,
            );
        }
        if let Some(route) = route {
            route.latency.observe(start.elapsed().as_secs_f64());
            record_error(route, self.ctx.http.metrics(), grpc, err);
        }
    }

    // ===== deadlines =====

    fn arm(&mut self, at: Instant, id: u32) {
        // Entries of finished streams stay until they expire; when they
        // outnumber the live streams, drop them (a 10 s grpc-timeout at
        // thousands of calls a second would otherwise hold tens of
        // thousands of them).
        if self.deadlines.len() > 2 * self.streams.len() + 64 {
            let streams = &self.streams;
            self.deadlines.retain(|Reverse((_, id))| streams.contains_key(id));
        }
        self.deadlines.push(Reverse((at, id)));
        let earliest = self.deadlines.peek().map(|Reverse((t, _))| *t).unwrap_or(at);
        match self.timer.as_mut() {
            Some(t) if t.deadline() <= earliest => {}
            Some(t) => t.as_mut().reset(earliest),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(earliest))),
        }
    }

    /// Ends the streams whose gRPC deadline passed.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if at > now {
                self.timer = Some(Box::pin(tokio::time::sleep_until(at)));
                break;
            }
            self.deadlines.pop();
            let Some(s) = self.streams.get_mut(&id) else { continue };
            let Some((d, budget)) = s.x.deadline else { continue };
            if d > now {
                continue;
            }
            if let Upstream::Attached(up) = &s.up {
                // The endpoint learns that the call is over.
                let _ = up.send(ToUp::Reset {
                    key: s.key,
                    code: code::CANCEL,
                });
            }
            s.up = Upstream::Detached;
            if !s.head_sent {
                let grpc = s.x.grpc;
                self.fail(id, grpc, &ProxyError::DeadlineExceeded(budget));
            } else {
                s.out.clear();
                let msg = encode_grpc_message(&format!("weft: deadline exceeded (grpc-timeout {budget:?})"));
                let trailers = vec![Field::new("grpc-status", "4"), Field::new("grpc-message", msg)];
                let mut block = self.wire.wbuf_block();
                self.wire.enc.encode(&trailers, &mut block);
                frame::put_headers(&mut self.wire.wbuf, id, &block, true, self.wire.peer.max_frame_size);
                self.wire.return_block(block);
                if !s.client_done {
                    frame::put_rst(&mut self.wire.wbuf, id, code::NO_ERROR);
                }
                if let Some(s) = self.streams.remove(&id) {
                    self.record(s, Ending::DeadlineExceeded);
                }
            }
        }
    }

    // ===== ending streams =====

    /// The response ended normally.
    fn finish(&mut self, id: u32, ending: Ending) {
        let Some(s) = self.streams.remove(&id) else { return };
        if !s.client_done {
            // The answer is complete; the client may stop sending.
            frame::put_rst(&mut self.wire.wbuf, id, code::NO_ERROR);
            if let Upstream::Attached(up) = &s.up {
                let _ = up.send(ToUp::Reset {
                    key: s.key,
                    code: code::CANCEL,
                });
            }
        }
        self.record(s, ending);
    }

    /// Counts a finished stream in the metrics.
    fn record(&self, s: Stream, ending: Ending) {
        let x = &s.x;
        let (grpc_code, error, clean) = match ending {
            Ending::Ended(trailers) => (trailers.or(x.head_grpc_status), "", true),
            Ending::Failed(c) => (Some(c), "stream_error", false),
            Ending::Cancelled => (Some(error::code::CANCELLED), "cancelled", false),
            Ending::DeadlineExceeded => (Some(error::code::DEADLINE_EXCEEDED), "deadline_exceeded", false),
        };
        let success = if x.grpc {
            grpc_code == Some(0)
        } else {
            clean && x.status < 500
        };
        let endpoint = match &x.in_flight {
            Some(e) => Label(e.endpoint.meta.name.clone()),
            None => Label::from(""),
        };
        let status = http::StatusCode::from_u16(x.status).ok();
        x.route.response(
            &self.ctx.http.metrics().responses,
            ResponseKey {
                endpoint,
                classification: if success { "success" } else { "failure" },
                status_code: status.map_or("", status_label),
                grpc_code: if x.grpc {
                    grpc_code.map_or("none", grpc_code_label)
                } else {
                    ""
                },
                error,
            },
        );
    }

    /// The connection is over: every stream still open is cancelled.
    fn close(&mut self) {
        let streams: Vec<Stream> = self.streams.drain().map(|(_, s)| s).collect();
        for s in streams {
            if let Upstream::Attached(up) = &s.up {
                let _ = up.send(ToUp::Reset {
                    key: s.key,
                    code: code::CANCEL,
                });
            }
            self.record(s, Ending::Cancelled);
        }
    }
}

enum Ending {
    /// Ended by the endpoint, with the trailers' grpc-status, if any.
    Ended(Option<u16>),
    Failed(u16),
    Cancelled,
    DeadlineExceeded,
}

fn record_error(route: &Arc<RouteMetrics>, metrics: &crate::metrics::Metrics, grpc: bool, err: &ProxyError) {
    let status = if grpc { http::StatusCode::OK } else { err.http_status() };
    route.response(
        &metrics.responses,
        ResponseKey {
            endpoint: Label::from(""),
            classification: "failure",
            status_code: status_label(status),
            grpc_code: if grpc { grpc_code_label(err.grpc_code()) } else { "" },
            error: err.label(),
        },
    );
}

fn grpc_status(fields: &[Field]) -> Option<u16> {
    super::field(fields, b"grpc-status").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
}

/// What routing needs from a request head.
struct RequestHead<'a> {
    authority: Option<&'a [u8]>,
    scheme: Option<&'a [u8]>,
    path: &'a [u8],
    content_type: Option<&'a [u8]>,
    grpc_timeout: Option<&'a [u8]>,
}

/// Checks a request head (RFC 9113 §8.3) and picks out what routing needs.
fn validate_request(fields: &[Field]) -> Result<RequestHead<'_>, &'static str> {
    let (mut method, mut scheme, mut path, mut authority, mut host) = (None, None, None, None, None);
    let (mut content_type, mut grpc_timeout) = (None, None);
    let mut regular = false;
    for f in fields {
        let name = &f.name[..];
        if name.first() == Some(&b':') {
            if regular {
                return Err("pseudo-header after a regular header");
            }
            let slot = match name {
                b":method" => &mut method,
                b":scheme" => &mut scheme,
                b":path" => &mut path,
                b":authority" => &mut authority,
                _ => return Err("unknown or response pseudo-header"),
            };
            if slot.replace(&f.value[..]).is_some() {
                return Err("repeated pseudo-header");
            }
            continue;
        }
        regular = true;
        if name.is_empty() || name.iter().any(|b| b.is_ascii_uppercase()) {
            return Err("header name not lowercase");
        }
        match name {
            b"content-type" => content_type = Some(&f.value[..]),
            b"grpc-timeout" => grpc_timeout = Some(&f.value[..]),
            b"host" => host = Some(&f.value[..]),
            b"te" if &f.value[..] != b"trailers" => return Err("te other than trailers"),
            n if is_connection_specific(n) => return Err("connection-specific header"),
            _ => {}
        }
    }
    let method = method.ok_or("no :method")?;
    if method == b"CONNECT" {
        return Err("CONNECT is not proxied");
    }
    let path = path.filter(|p| !p.is_empty()).ok_or("no :path")?;
    if scheme.is_none() {
        return Err("no :scheme");
    }
    Ok(RequestHead {
        authority: authority.or(host),
        scheme,
        path,
        content_type,
        grpc_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: &'static str, v: &'static str) -> Field {
        Field::new(n, v)
    }

    #[test]
    fn requests_are_validated() {
        let ok = [
            f(":method", "POST"),
            f(":scheme", "http"),
            f(":path", "/a/b"),
            f(":authority", "svc:80"),
            f("te", "trailers"),
        ];
        let r = validate_request(&ok).unwrap();
        assert_eq!(r.authority, Some(&b"svc:80"[..]));
        let bad: &[(&[Field], &str)] = &[
            (&[f(":method", "GET"), f(":scheme", "http")], "no :path"),
            (
                &[
                    f(":method", "GET"),
                    f(":path", "/"),
                    f(":scheme", "http"),
                    f("Upper", "x"),
                ],
                "header name not lowercase",
            ),
            (
                &[f(":method", "GET"), f("x", "1"), f(":path", "/"), f(":scheme", "http")],
                "pseudo-header after a regular header",
            ),
            (
                &[
                    f(":method", "GET"),
                    f(":path", "/"),
                    f(":scheme", "http"),
                    f("connection", "close"),
                ],
                "connection-specific header",
            ),
            (
                &[
                    f(":method", "GET"),
                    f(":path", "/"),
                    f(":scheme", "http"),
                    f("te", "gzip"),
                ],
                "te other than trailers",
            ),
            (&[f(":status", "200")], "unknown or response pseudo-header"),
            (&[f(":method", "GET"), f(":method", "GET")], "repeated pseudo-header"),
        ];
        for (fields, why) in bad {
            assert_eq!(validate_request(fields).err(), Some(*why));
        }
    }
}
