//! One HTTP/2 connection's socket side, shared by client-side and
//! endpoint-side connections: buffered reads split into frames, one output
//! buffer written in as few system calls as possible, the HPACK codecs, the
//! peer's settings and the connection-level flow-control windows.

use std::{
    io,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};

use crate::io::Io;

use crate::{
    CONN_WINDOW, CREDIT_BATCH, ConnError, STREAM_WINDOW,
    frame::{self, Head, Settings, code, flag, kind},
    hpack::{Decoder, Encoder},
};

/// Smallest read buffer; it grows to hold the largest frame seen.
const READ_CHUNK: usize = 4096;
/// Largest frame payload this side accepts (SETTINGS_MAX_FRAME_SIZE, default).
pub const MAX_FRAME_IN: u32 = frame::DEFAULT_MAX_FRAME;

/// A HEADERS frame waiting for its CONTINUATION frames.
#[derive(Debug)]
pub struct Partial {
    pub stream: u32,
    pub end_stream: bool,
    pub block: Vec<u8>,
}

pub struct Wire {
    pub io: Io,
    pub rbuf: BytesMut,
    pub wbuf: Vec<u8>,
    wpos: usize,
    pub read_closed: bool,
    pub dec: Decoder,
    pub enc: Encoder,
    /// The peer's settings.
    pub peer: Settings,
    pub peer_settings_seen: bool,
    /// How much more this side may send on the connection.
    pub conn_send: i64,
    /// Connection-level bytes received and not yet granted back.
    conn_credit: u32,
    /// How much more the peer may send on the connection (what it was
    /// granted less what arrived): a peer that sends past it ignores flow
    /// control, and would otherwise make the proxy buffer without bound.
    conn_recv: i64,
    /// Whether connection-level credit is held back (the connection holds
    /// as many of the peer's bytes as it may).
    hold_credit: bool,
    pub partial: Option<Partial>,
    /// Frames received so far (the keepalive watches it move).
    pub frames_in: u64,
    /// The largest header block (HEADERS and its CONTINUATIONs, compressed)
    /// the peer may send: a block this big decodes to more than the header
    /// list limit anyway.
    max_block: usize,
    /// Scratch space for encoding one header block.
    block: Vec<u8>,
}

impl Wire {
    /// An empty buffer to encode a header block into; give it back with
    /// [`Wire::return_block`] so that its allocation is reused.
    pub fn wbuf_block(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.block);
        b.clear();
        b
    }

    pub fn return_block(&mut self, b: Vec<u8>) {
        self.block = b;
    }

    /// Wraps a socket, queueing this side's SETTINGS (and, for a client, the
    /// connection preface) and the connection window grant.
    pub fn new(io: Io, prefix: BytesMut, client: bool, settings: &[(u16, u32)], max_header_list: u32) -> Wire {
        let mut wbuf = Vec::with_capacity(128);
        if client {
            wbuf.extend_from_slice(frame::PREFACE);
        }
        frame::put_settings(&mut wbuf, settings);
        frame::put_window_update(&mut wbuf, 0, CONN_WINDOW - frame::DEFAULT_WINDOW);
        let mut rbuf = prefix;
        if rbuf.capacity() < READ_CHUNK {
            rbuf.reserve(READ_CHUNK - rbuf.len());
        }
        Wire {
            io,
            rbuf,
            wbuf,
            wpos: 0,
            read_closed: false,
            dec: Decoder::new(4096),
            enc: Encoder::default(),
            peer: Settings::default(),
            peer_settings_seen: false,
            conn_send: i64::from(frame::DEFAULT_WINDOW),
            conn_credit: 0,
            conn_recv: i64::from(CONN_WINDOW),
            hold_credit: false,
            partial: None,
            frames_in: 0,
            max_block: max_header_list as usize + (16 << 10),
            block: Vec::new(),
        }
    }

    /// This side's SETTINGS for a connection (both roles).
    pub fn settings(max_concurrent: Option<u32>, max_header_list: u32, client: bool) -> Vec<(u16, u32)> {
        let mut s = vec![
            (frame::setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (frame::setting::MAX_HEADER_LIST_SIZE, max_header_list),
        ];
        if client {
            s.push((frame::setting::ENABLE_PUSH, 0));
        }
        if let Some(n) = max_concurrent {
            s.push((frame::setting::MAX_CONCURRENT_STREAMS, n));
        }
        s
    }

    /// Reads what the socket has. `Ready(Ok(0))` is end of stream.
    ///
    /// A read that did not fill the buffer drained the socket, so its
    /// readiness is cleared at once: the next call waits for the next epoll
    /// event instead of spending a system call to learn `EAGAIN`. The read
    /// runs inside `try_io`, so tokio clears readiness only if no event
    /// arrived since before the read (none can be lost).
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let io = match &mut self.io {
            Io::Tcp(io) => io,
            Io::Wrapped { stream, .. } => {
                if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
                    self.rbuf.reserve(READ_CHUNK);
                }
                let n = std::task::ready!(tokio_util::io::poll_read_buf(
                    std::pin::Pin::new(stream.as_mut()),
                    cx,
                    &mut self.rbuf
                ))?;
                if n == 0 {
                    self.read_closed = true;
                }
                return Poll::Ready(Ok(n));
            }
        };
        loop {
            match io.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let room = self.rbuf.capacity() - self.rbuf.len();
            let rbuf = &mut self.rbuf;
            let mut got = None;
            let result = io.try_io(tokio::io::Interest::READABLE, || {
                let n = io.try_read_buf(rbuf)?;
                got = Some(n);
                if n > 0 && n < room {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match (got, result) {
                (Some(n), _) => {
                    if n == 0 {
                        self.read_closed = true;
                    }
                    return Poll::Ready(Ok(n));
                }
                (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (None, Err(e)) => return Poll::Ready(Err(e)),
                (None, Ok(())) => continue,
            }
        }
    }

    /// Whether output is waiting to be written.
    pub fn has_output(&self) -> bool {
        self.wpos < self.wbuf.len()
    }

    /// Bytes of output waiting.
    pub fn output_len(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Writes as much output as the socket takes. `Ready(Ok)` when all of it
    /// is written.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Tcp(io) => {
                while self.wpos < self.wbuf.len() {
                    match io.try_write(&self.wbuf[self.wpos..]) {
                        Ok(n) => self.wpos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => match io.poll_write_ready(cx) {
                            Poll::Ready(Ok(())) => continue,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => return Poll::Pending,
                        },
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            Io::Wrapped { stream, .. } => {
                let mut stream = std::pin::Pin::new(stream.as_mut());
                while self.wpos < self.wbuf.len() {
                    match std::task::ready!(stream.as_mut().poll_write(cx, &self.wbuf[self.wpos..])) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => self.wpos += n,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                // TLS keeps records until flushed.
                std::task::ready!(stream.poll_flush(cx))?;
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > 256 << 10 {
            self.wbuf.shrink_to(16 << 10);
        }
        Poll::Ready(Ok(()))
    }

    /// The next complete frame in the read buffer, if any.
    pub fn next_frame(&mut self) -> Result<Option<(Head, Bytes)>, ConnError> {
        if self.rbuf.len() < frame::HEAD_LEN {
            return Ok(None);
        }
        let head = Head::parse(&self.rbuf);
        if head.len > MAX_FRAME_IN {
            return Err(ConnError::new(
                code::FRAME_SIZE_ERROR,
                format!("a {}-byte frame exceeds the maximum", head.len),
            ));
        }
        let total = frame::HEAD_LEN + head.len as usize;
        if self.rbuf.len() < total {
            self.rbuf.reserve(total - self.rbuf.len());
            return Ok(None);
        }
        self.frames_in += 1;
        let mut f = self.rbuf.split_to(total).freeze();
        let payload = f.split_off(frame::HEAD_LEN);
        if self.rbuf.is_empty() && self.rbuf.capacity() > 64 << 10 {
            self.rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        Ok(Some((head, payload)))
    }

    /// Handles the frames about the connection itself (SETTINGS, PING,
    /// connection WINDOW_UPDATE). Returns `Ok(true)` when the frame was one.
    /// `on_window` is told the change of the peer's initial stream window.
    pub fn connection_frame(&mut self, head: &Head, payload: &[u8], on_window: &mut i64) -> Result<bool, ConnError> {
        match head.kind {
            kind::SETTINGS => {
                if head.stream != 0 {
                    return Err(ConnError::new(code::PROTOCOL_ERROR, "SETTINGS on a stream"));
                }
                if head.has(flag::ACK) {
                    if !payload.is_empty() {
                        return Err(ConnError::new(code::FRAME_SIZE_ERROR, "SETTINGS ack with a payload"));
                    }
                    return Ok(true);
                }
                let before = self.peer.initial_window_size;
                self.peer
                    .apply(payload)
                    .map_err(|c| ConnError::new(c, "invalid SETTINGS"))?;
                *on_window += i64::from(self.peer.initial_window_size) - i64::from(before);
                self.enc.set_peer_limit(self.peer.header_table_size);
                self.peer_settings_seen = true;
                frame::put_settings_ack(&mut self.wbuf);
                Ok(true)
            }
            kind::PING => {
                if head.stream != 0 || payload.len() != 8 {
                    return Err(ConnError::new(code::PROTOCOL_ERROR, "malformed PING"));
                }
                if !head.has(flag::ACK) {
                    frame::put_ping_ack(&mut self.wbuf, payload);
                }
                Ok(true)
            }
            kind::WINDOW_UPDATE if head.stream == 0 => {
                let inc = window_increment(payload)?;
                self.conn_send += i64::from(inc);
                if self.conn_send > frame::MAX_WINDOW {
                    return Err(ConnError::new(code::FLOW_CONTROL_ERROR, "connection window overflow"));
                }
                Ok(true)
            }
            kind::PRIORITY => {
                if payload.len() != 5 {
                    return Err(ConnError::new(code::FRAME_SIZE_ERROR, "PRIORITY frame size"));
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Accounts for `n` received DATA bytes against the connection window
    /// and grants them back in batches (connection-level credit is local;
    /// streams carry the end-to-end back-pressure).
    /// Fails if the peer sent past the connection window.
    pub fn received(&mut self, n: u32) -> Result<(), ConnError> {
        self.conn_recv -= i64::from(n);
        if self.conn_recv < 0 {
            return Err(ConnError::new(
                code::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        self.conn_credit = self.conn_credit.saturating_add(n);
        self.grant_conn_credit();
        Ok(())
    }

    /// Holds connection-level credit back (`true`), or grants what was held.
    pub fn hold_credit(&mut self, hold: bool) {
        if self.hold_credit != hold {
            self.hold_credit = hold;
            self.grant_conn_credit();
        }
    }

    fn grant_conn_credit(&mut self) {
        if self.conn_credit >= CREDIT_BATCH && !self.hold_credit {
            frame::put_window_update(&mut self.wbuf, 0, self.conn_credit);
            self.conn_recv += i64::from(self.conn_credit);
            self.conn_credit = 0;
        }
    }

    /// Whether the output buffer is as full as it may get: stream data
    /// waits (and is not credited back to its sender) until it drains.
    pub fn output_full(&self) -> bool {
        self.output_len() >= crate::WRITE_HIGH_WATER
    }

    /// Queues a PING.
    pub fn ping(&mut self, payload: [u8; 8]) {
        frame::put_head(&mut self.wbuf, 8, kind::PING, 0, 0);
        self.wbuf.extend_from_slice(&payload);
    }

    /// Queues a GOAWAY.
    pub fn goaway(&mut self, last_stream: u32, error: u32, debug: &str) {
        frame::put_goaway(&mut self.wbuf, last_stream, error, debug.as_bytes());
    }

    /// Collects a header block (HEADERS plus CONTINUATION frames). Returns
    /// the complete block when END_HEADERS arrives.
    pub fn header_block(&mut self, head: &Head, payload: Bytes) -> Result<Option<Partial>, ConnError> {
        match head.kind {
            kind::HEADERS => {
                if self.partial.is_some() {
                    return Err(ConnError::new(code::PROTOCOL_ERROR, "HEADERS inside a header block"));
                }
                let range =
                    frame::unpad(head, &payload).ok_or_else(|| ConnError::new(code::PROTOCOL_ERROR, "bad padding"))?;
                let mut block = &payload[range];
                if head.has(flag::PRIORITY) {
                    if block.len() < 5 {
                        return Err(ConnError::new(code::PROTOCOL_ERROR, "short HEADERS priority"));
                    }
                    block = &block[5..];
                }
                if block.len() > self.max_block {
                    return Err(ConnError::new(code::ENHANCE_YOUR_CALM, "header block too large"));
                }
                let p = Partial {
                    stream: head.stream,
                    end_stream: head.has(flag::END_STREAM),
                    block: block.to_vec(),
                };
                if head.has(flag::END_HEADERS) {
                    Ok(Some(p))
                } else {
                    self.partial = Some(p);
                    Ok(None)
                }
            }
            kind::CONTINUATION => {
                let Some(p) = self.partial.as_mut().filter(|p| p.stream == head.stream) else {
                    return Err(ConnError::new(code::PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
                };
                p.block.extend_from_slice(&payload);
                if p.block.len() > self.max_block {
                    return Err(ConnError::new(code::ENHANCE_YOUR_CALM, "header block too large"));
                }
                if head.has(flag::END_HEADERS) {
                    Ok(self.partial.take())
                } else {
                    Ok(None)
                }
            }
            _ => Err(ConnError::new(code::PROTOCOL_ERROR, "not a header frame")),
        }
    }
}

/// The increment of a WINDOW_UPDATE payload.
pub fn window_increment(payload: &[u8]) -> Result<u32, ConnError> {
    if payload.len() != 4 {
        return Err(ConnError::new(code::FRAME_SIZE_ERROR, "WINDOW_UPDATE size"));
    }
    let inc = u32::from_be_bytes([payload[0] & 0x7f, payload[1], payload[2], payload[3]]);
    if inc == 0 {
        return Err(ConnError::new(code::PROTOCOL_ERROR, "WINDOW_UPDATE of zero"));
    }
    Ok(inc)
}

/// The error code of a RST_STREAM payload.
pub fn rst_code(payload: &[u8]) -> Result<u32, ConnError> {
    if payload.len() != 4 {
        return Err(ConnError::new(code::FRAME_SIZE_ERROR, "RST_STREAM size"));
    }
    Ok(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]))
}
