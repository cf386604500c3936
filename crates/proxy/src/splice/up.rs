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

use std::{
    collections::VecDeque,
    future::poll_fn,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{net::TcpStream, sync::mpsc};

use super::{
    CREDIT_BATCH, ConnError, DownTx, Field, IdMap, Open, STREAM_WINDOW, StreamKey, ToDown, ToUp, UpHandle,
    frame::{self, code, flag, kind},
    is_connection_specific,
    wire::{self, Wire},
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
}

/// A queued request (no stream yet).
struct Queued {
    open: Box<Open>,
}

struct Up {
    wire: Wire,
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<ToUp>,
    rx_closed: bool,
    streams: IdMap<u32, Stream>,
    by_key: std::collections::HashMap<StreamKey, u32, std::hash::BuildHasherDefault<super::IdHasher>>,
    queue: VecDeque<Queued>,
    next_id: u32,
    /// The endpoint said it goes away; streams above this id were not processed.
    goaway: Option<u32>,
    max_header_bytes: u32,
    going_away: Arc<AtomicBool>,
    /// Streams with data waiting for window.
    blocked: Vec<u32>,
    scratch: Vec<Field>,
}

/// Connects to an endpoint, exchanges SETTINGS, and starts the connection
/// task. Returns the handle requests are sent on and a receiver that
/// completes when the connection has ended.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    max_header_bytes: u32,
) -> Result<(UpHandle, tokio::sync::oneshot::Receiver<()>), String> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(format!("connect timed out after {timeout:?}")),
        Ok(Err(e)) => return Err(format!("connect failed: {e}")),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let settings = Wire::settings(None, max_header_bytes, true);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut up = Up {
        wire: Wire::new(tcp, BytesMut::new(), true, &settings),
        addr,
        rx,
        rx_closed: false,
        streams: IdMap::default(),
        by_key: Default::default(),
        queue: VecDeque::new(),
        next_id: 1,
        goaway: None,
        max_header_bytes,
        going_away: Arc::new(AtomicBool::new(false)),
        blocked: Vec::new(),
        scratch: Vec::new(),
    };
    // The endpoint's first frame must be its SETTINGS; no request is sent
    // before it, so its stream limit is known from the first request on.
    let handshake = poll_fn(|cx| up.poll_handshake(cx));
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => return Err("HTTP/2 handshake timed out (no SETTINGS from the endpoint)".into()),
        Ok(Err(e)) => return Err(format!("HTTP/2 handshake failed: {}", e.reason)),
        Ok(Ok(())) => {}
    }
    let handle = UpHandle {
        tx,
        going_away: up.going_away.clone(),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
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
        let _ = done_tx.send(());
    });
    Ok((handle, done_rx))
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
        loop {
            let mut busy = false;
            // Messages from client-side connections.
            for _ in 0..512 {
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(msg)) => {
                        busy = true;
                        self.on_message(msg)?;
                    }
                    Poll::Ready(None) => {
                        self.rx_closed = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            // Frames from the endpoint (unless our output is backed up).
            if !self.wire.read_closed && self.wire.output_len() < super::WRITE_HIGH_WATER {
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
    }

    fn on_message(&mut self, msg: ToUp) -> Result<(), ConnError> {
        match msg {
            ToUp::Open(open) => {
                if self.goaway.is_some() || self.next_id > 0x7fff_fffe {
                    self.bounce(&open.reply, open.key.stream, "the endpoint connection is going away");
                } else {
                    self.queue.push_back(Queued { open });
                    self.open_queued();
                }
            }
            ToUp::Data { key, data, end } => {
                if let Some(&id) = self.by_key.get(&key) {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.out.push_back(Out::Data(data, end));
                        self.write_stream(id);
                    }
                } else if let Some(q) = self.queue.iter_mut().find(|q| q.open.key == key) {
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
                } else if let Some(q) = self.queue.iter_mut().find(|q| q.open.key == key) {
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
                } else if let Some(i) = self.queue.iter().position(|q| q.open.key == key) {
                    self.queue.remove(i);
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

    /// How many streams the endpoint allows at once.
    fn limit(&self) -> usize {
        self.wire.peer.max_concurrent_streams.map_or(usize::MAX, |n| n as usize)
    }

    /// Opens queued requests while the endpoint allows more streams.
    fn open_queued(&mut self) {
        while self.streams.len() < self.limit() && self.goaway.is_none() {
            let Some(Queued { open }) = self.queue.pop_front() else {
                break;
            };
            if open.reply.is_closed() {
                continue; // the client went away while it waited
            }
            let id = self.next_id;
            self.next_id += 2;
            let Open {
                key,
                reply,
                head,
                body,
                trailers,
                end,
            } = *open;
            let only_head = end && body.iter().all(Bytes::is_empty) && trailers.is_none();
            let mut block = self.wire.wbuf_block();
            self.wire
                .enc
                .encode(head.iter().filter(|f| !is_connection_specific(&f.name)), &mut block);
            frame::put_headers(
                &mut self.wire.wbuf,
                id,
                &block,
                only_head,
                self.wire.peer.max_frame_size,
            );
            self.wire.return_block(block);
            let mut out = VecDeque::new();
            if !only_head {
                let n = body.len();
                for (i, b) in body.into_iter().enumerate() {
                    out.push_back(Out::Data(b, end && trailers.is_none() && i + 1 == n));
                }
                if let Some(t) = trailers {
                    out.push_back(Out::Trailers(t));
                } else if end && n == 0 {
                    out.push_back(Out::Data(Bytes::new(), true));
                }
            }
            self.streams.insert(
                id,
                Stream {
                    key,
                    reply,
                    send_window: i64::from(self.wire.peer.initial_window_size),
                    out,
                    request_done: only_head,
                    recv_window: i64::from(STREAM_WINDOW),
                    head_seen: false,
                    response_done: false,
                    credit: 0,
                },
            );
            self.by_key.insert(key, id);
            self.write_stream(id);
        }
    }

    /// Writes what a stream has queued, as far as the windows allow.
    fn write_stream(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        let max_frame = self.wire.peer.max_frame_size as usize;
        let mut wrote = 0u32;
        while let Some(out) = s.out.front_mut() {
            match out {
                Out::Trailers(_) => {
                    let Some(Out::Trailers(fields)) = s.out.pop_front() else {
                        break;
                    };
                    let mut block = self.wire.wbuf_block();
                    self.wire
                        .enc
                        .encode(fields.iter().filter(|f| !is_connection_specific(&f.name)), &mut block);
                    frame::put_headers(&mut self.wire.wbuf, id, &block, true, self.wire.peer.max_frame_size);
                    self.wire.return_block(block);
                    s.request_done = true;
                }
                Out::Data(data, end) => {
                    let window = s.send_window.min(self.wire.conn_send).max(0) as usize;
                    if data.is_empty() {
                        if *end {
                            frame::put_data(&mut self.wire.wbuf, id, &[], true, max_frame as u32);
                            s.request_done = true;
                        }
                        s.out.pop_front();
                        continue;
                    }
                    if window == 0 {
                        break;
                    }
                    let n = data.len().min(window);
                    let chunk = data.split_to(n);
                    let last = data.is_empty() && *end;
                    frame::put_data(&mut self.wire.wbuf, id, &chunk, last, max_frame as u32);
                    s.send_window -= n as i64;
                    self.wire.conn_send -= n as i64;
                    wrote += n as u32;
                    if data.is_empty() {
                        if *end {
                            s.request_done = true;
                        }
                        s.out.pop_front();
                    }
                }
            }
        }
        if !s.out.is_empty() && !self.blocked.contains(&id) {
            self.blocked.push(id);
        }
        s.credit += wrote;
        if s.credit >= CREDIT_BATCH {
            let credit = std::mem::take(&mut s.credit);
            let _ = s.reply.send(ToDown::Credit {
                stream: s.key.stream,
                credit,
            });
        }
        self.maybe_finish(id);
    }

    /// Removes a stream both sides have finished.
    fn maybe_finish(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(|s| s.request_done && s.response_done)
            && let Some(s) = self.streams.remove(&id)
        {
            self.by_key.remove(&s.key);
            self.open_queued();
        }
    }

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
            if head.kind == kind::SETTINGS {
                self.open_queued();
            }
            self.unblock();
            return Ok(());
        }
        match head.kind {
            kind::HEADERS | kind::CONTINUATION => {
                let Some(block) = self.wire.header_block(&head, payload)? else {
                    return Ok(());
                };
                self.on_headers(block)
            }
            kind::DATA => self.on_data(&head, payload),
            kind::RST_STREAM => {
                let code = wire::rst_code(&payload)?;
                if let Some(s) = self.streams.remove(&head.stream) {
                    self.by_key.remove(&s.key);
                    if code == code::REFUSED_STREAM && !s.head_seen {
                        // Refused streams were not processed (RFC 9113 §8.7).
                        self.bounce(&s.reply, s.key.stream, "the endpoint refused the stream");
                        self.open_queued();
                        return Ok(());
                    }
                    let detail = format!("endpoint {} reset the stream ({})", self.addr, reason(code));
                    let _ = s.reply.send(ToDown::Reset {
                        stream: s.key.stream,
                        code,
                        detail,
                    });
                    self.open_queued();
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let inc = wire::window_increment(&payload)?;
                if let Some(s) = self.streams.get_mut(&head.stream) {
                    s.send_window += i64::from(inc);
                    if s.send_window > frame::MAX_WINDOW {
                        frame::put_rst(&mut self.wire.wbuf, head.stream, code::FLOW_CONTROL_ERROR);
                    }
                    self.write_stream(head.stream);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if payload.len() < 8 {
                    return Err(ConnError::new(code::FRAME_SIZE_ERROR, "GOAWAY size"));
                }
                let last = u32::from_be_bytes([payload[0] & 0x7f, payload[1], payload[2], payload[3]]);
                self.goaway = Some(last);
                // The endpoint stops sending new requests here at once.
                self.going_away.store(true, Ordering::Relaxed);
                // Streams above `last` were never processed: send them again elsewhere.
                let above: Vec<u32> = self.streams.keys().copied().filter(|id| *id > last).collect();
                for id in above {
                    if let Some(s) = self.streams.remove(&id) {
                        self.by_key.remove(&s.key);
                        // Above the GOAWAY's last stream: not processed.
                        self.bounce(&s.reply, s.key.stream, "the endpoint is going away");
                    }
                }
                while let Some(q) = self.queue.pop_front() {
                    self.bounce(&q.open.reply, q.open.key.stream, "the endpoint is going away");
                }
                Ok(())
            }
            kind::PUSH_PROMISE => Err(ConnError::new(code::PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")),
            _ => Ok(()), // unknown frame types are ignored
        }
    }

    fn on_headers(&mut self, block: wire::Partial) -> Result<(), ConnError> {
        let mut fields = std::mem::take(&mut self.scratch);
        fields.clear();
        let size = self
            .wire
            .dec
            .decode(&block.block, &mut fields)
            .map_err(|e| ConnError::new(code::COMPRESSION_ERROR, e.to_string()))?;
        let id = block.stream;
        let Some(s) = self.streams.get_mut(&id) else {
            self.scratch = fields;
            return Ok(()); // a stream we already reset: its headers are still decoded above
        };
        if size > self.max_header_bytes as usize {
            let detail = format!(
                "endpoint {} sent a {size}-byte header list (limit {})",
                self.addr, self.max_header_bytes
            );
            self.reject(id, code::INTERNAL_ERROR, detail);
            self.scratch = fields;
            return Ok(());
        }
        if !s.head_seen {
            let status =
                super::field(&fields, b":status").and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
            match status {
                Some(100..=199) if !block.end_stream => {
                    self.scratch = fields;
                    return Ok(()); // informational: the final head follows
                }
                Some(_) => {}
                None => {
                    let detail = format!("endpoint {} sent a response without :status", self.addr);
                    self.reject(id, code::PROTOCOL_ERROR, detail);
                    self.scratch = fields;
                    return Ok(());
                }
            }
            s.head_seen = true;
            s.response_done = block.end_stream;
            let credit = std::mem::take(&mut s.credit);
            let fields = std::mem::take(&mut fields);
            let _ = s.reply.send(ToDown::Head {
                stream: s.key.stream,
                fields,
                end: block.end_stream,
                credit,
            });
        } else {
            if !block.end_stream {
                return Err(ConnError::new(code::PROTOCOL_ERROR, "trailers without END_STREAM"));
            }
            s.response_done = true;
            let credit = std::mem::take(&mut s.credit);
            let fields = std::mem::take(&mut fields);
            let _ = s.reply.send(ToDown::Trailers {
                stream: s.key.stream,
                fields,
                credit,
            });
        }
        self.scratch = fields;
        self.maybe_finish(id);
        Ok(())
    }

    fn on_data(&mut self, head: &frame::Head, payload: Bytes) -> Result<(), ConnError> {
        let len = head.len;
        self.wire.received(len);
        let range = frame::unpad(head, &payload).ok_or_else(|| ConnError::new(code::PROTOCOL_ERROR, "bad padding"))?;
        let Some(s) = self.streams.get_mut(&head.stream) else {
            return Ok(()); // a stream we reset; the connection window is already returned
        };
        if !s.head_seen || s.response_done {
            frame::put_rst(&mut self.wire.wbuf, head.stream, code::PROTOCOL_ERROR);
            return Ok(());
        }
        s.recv_window -= i64::from(len);
        if s.recv_window < 0 {
            return Err(ConnError::new(
                code::FLOW_CONTROL_ERROR,
                "the endpoint overran a stream window",
            ));
        }
        let padding = len - (range.end - range.start) as u32;
        if padding > 0 {
            s.recv_window += i64::from(padding);
            frame::put_window_update(&mut self.wire.wbuf, head.stream, padding);
        }
        let end = head.has(flag::END_STREAM);
        s.response_done = end;
        let credit = std::mem::take(&mut s.credit);
        let data = payload.slice(range);
        let _ = s.reply.send(ToDown::Data {
            stream: s.key.stream,
            data,
            end,
            credit,
        });
        if end {
            self.maybe_finish(head.stream);
        }
        Ok(())
    }

    /// Retries writes of streams that waited for window.
    fn unblock(&mut self) {
        if self.blocked.is_empty() {
            return;
        }
        let blocked = std::mem::take(&mut self.blocked);
        for id in blocked {
            self.write_stream(id);
        }
    }

    /// Ends a stream whose response is malformed: resets it on the endpoint
    /// and fails it on the client side.
    fn reject(&mut self, id: u32, client_code: u32, detail: String) {
        frame::put_rst(&mut self.wire.wbuf, id, code::PROTOCOL_ERROR);
        if let Some(s) = self.streams.remove(&id) {
            self.by_key.remove(&s.key);
            let _ = s.reply.send(ToDown::Reset {
                stream: s.key.stream,
                code: client_code,
                detail,
            });
            self.open_queued();
        }
    }

    /// Tells a client connection that its request was never processed.
    fn bounce(&self, reply: &DownTx, stream: u32, detail: &str) {
        let _ = reply.send(ToDown::Bounce {
            stream,
            detail: format!("{detail} ({})", self.addr),
        });
    }

    /// The connection ended. Queued requests were never sent: they go back.
    /// Streams already sent may have been processed: they fail.
    fn close(&mut self, why: String) {
        for (_, s) in self.streams.drain() {
            let detail = format!("endpoint {}: {why}", self.addr);
            let _ = s.reply.send(ToDown::Reset {
                stream: s.key.stream,
                code: code::CANCEL,
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
        code::COMPRESSION_ERROR => "COMPRESSION_ERROR",
        code::ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM",
        _ => "error",
    }
}
