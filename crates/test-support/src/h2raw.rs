//! HTTP/2 at the frame level, for tests that play a hostile or broken peer:
//! a client that sends exactly the frames a test writes (and may never
//! read), an endpoint with scripted SETTINGS and answers, and HPACK written
//! by hand where the attack lives in the encoding.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
};
pub use weft_splice::frame::{code, flag, kind, setting};
use weft_splice::{frame, hpack::Encoder, hpack::Field};

/// A frame as read: kind, flags, stream, payload.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// What a reader task saw on a connection.
#[derive(Debug, Default)]
pub struct Seen {
    pub frames: Vec<Frame>,
    /// The peer closed the connection (or reset it).
    pub closed: bool,
}

fn spawn_reader(mut r: tokio::net::tcp::OwnedReadHalf, seen: Arc<Mutex<Seen>>, keep_frames: bool) {
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 << 10);
        loop {
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            while buf.len() >= frame::HEAD_LEN {
                let head = frame::Head::parse(&buf);
                let total = frame::HEAD_LEN + head.len as usize;
                if buf.len() < total {
                    break;
                }
                let payload = buf[frame::HEAD_LEN..total].to_vec();
                buf.advance(total);
                let mut s = seen.lock().unwrap();
                if keep_frames || head.kind != kind::DATA {
                    s.frames.push(Frame {
                        kind: head.kind,
                        flags: head.flags,
                        stream: head.stream,
                        payload,
                    });
                }
            }
        }
        seen.lock().unwrap().closed = true;
    });
}

/// A client connection that sends raw frames.
pub struct RawClient {
    w: OwnedWriteHalf,
    pub enc: Encoder,
    seen: Arc<Mutex<Seen>>,
    /// Bytes written so far.
    pub sent: usize,
}

impl RawClient {
    /// Connects, sends the preface and `settings`; a reader task records
    /// what comes back, unless `read` is false (a client that never reads).
    pub async fn connect(addr: SocketAddr, settings: &[(u16, u32)], read: bool) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let seen = Arc::new(Mutex::new(Seen::default()));
        if read {
            spawn_reader(r, seen.clone(), false);
        } else {
            // Kept open, never read.
            std::mem::forget(r);
        }
        let mut c = RawClient {
            w,
            enc: Encoder::default(),
            seen,
            sent: 0,
        };
        let mut out = frame::PREFACE.to_vec();
        frame::put_settings(&mut out, settings);
        c.send(&out).await;
        c
    }

    /// Writes bytes; `false` once the proxy closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        let ok = self.w.write_all(bytes).await.is_ok();
        if ok {
            self.sent += bytes.len();
        }
        ok
    }

    /// A gRPC request head on `stream` for `authority` and `path`.
    pub fn request_block(&mut self, authority: &str, path: &str) -> Vec<u8> {
        let fields = [
            Field::new(":method", "POST"),
            Field::new(":scheme", "http"),
            Field::new(":path", path.to_string()),
            Field::new(":authority", authority.to_string()),
            Field::new("content-type", "application/grpc"),
            Field::new("te", "trailers"),
        ];
        let mut block = Vec::new();
        self.enc.encode(&fields, &mut block);
        block
    }

    /// A gRPC request head written without touching the peer's HPACK table
    /// ([`weft_splice::hpack::raw::request_head`]).
    pub fn plain_request_block(authority: &str, path: &str) -> Vec<u8> {
        weft_splice::hpack::raw::request_head(authority, path)
    }

    /// Frames of a request head (HEADERS, `end` = END_STREAM).
    pub fn request(&mut self, stream: u32, authority: &str, path: &str, end: bool) -> Vec<u8> {
        let block = self.request_block(authority, path);
        let mut out = Vec::new();
        frame::put_headers(&mut out, stream, &block, end, 16_384);
        out
    }

    /// Rapid reset: `n` requests from stream `*stream` on, each reset
    /// (CANCEL) right after its head; `*stream` moves past them.
    pub fn reset_requests(&mut self, stream: &mut u32, n: usize, authority: &str, path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.extend(self.request(*stream, authority, path, false));
            frame::put_rst(&mut out, *stream, code::CANCEL);
            *stream += 2;
        }
        out
    }

    /// Everything seen so far.
    pub fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// The error code of a GOAWAY the proxy sent, if any.
    pub fn goaway(&self) -> Option<u32> {
        self.seen()
            .frames
            .iter()
            .find(|f| f.kind == kind::GOAWAY && f.payload.len() >= 8)
            .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
    }

    /// Whether the proxy closed the connection.
    pub fn closed(&self) -> bool {
        self.seen().closed
    }

    /// Waits (up to `deadline`) for the proxy to send GOAWAY or close.
    pub async fn wait_goaway_or_close(&self, deadline: Duration) -> (Option<u32>, bool) {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let (g, c) = (self.goaway(), self.closed());
            if g.is_some() || c || tokio::time::Instant::now() >= until {
                return (g, c);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A malformed first answer (on the first connection; later requests are
/// answered well).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// DATA on the stream before any HEADERS.
    DataBeforeHead,
    /// A response head, then GOAWAY saying no stream was processed.
    HeadThenGoaway,
    /// A response header value with CR LF in it.
    CrlfInHeader,
    /// `content-length: 10` and 3 bytes of body.
    ShortBody,
}

/// How a [`RawEndpoint`] behaves.
#[derive(Clone, Debug)]
pub struct Script {
    /// Its SETTINGS (e.g. MAX_CONCURRENT_STREAMS = 0).
    pub settings: Vec<(u16, u32)>,
    /// Whether it reads at all after the handshake (one that doesn't fills
    /// the proxy's output towards it).
    pub read: bool,
    /// Whether it answers requests (a gRPC OK with an empty message).
    pub answer: bool,
    /// On its first connection, sends GOAWAY (last stream = the newest)
    /// after this many requests, leaving them unanswered (later connections
    /// answer as usual).
    pub goaway_after: Option<usize>,
    /// Its first answer on its first connection is malformed this way.
    pub bad_first: Option<Bad>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            settings: Vec::new(),
            read: true,
            answer: true,
            goaway_after: None,
            bad_first: None,
        }
    }
}

/// A scripted HTTP/2 endpoint.
pub struct RawEndpoint {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
    /// Requests (HEADERS opening a stream) received.
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for RawEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl RawEndpoint {
    pub async fn spawn(script: Script) -> RawEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (conns, requests, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, r, s) = (conns.clone(), requests.clone(), stop.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let nth = c.fetch_add(1, Ordering::Relaxed) + 1;
                let mut script = script.clone();
                if nth > 1 {
                    script.goaway_after = None;
                    script.bad_first = None;
                }
                tokio::spawn(serve_endpoint(sock, script, r.clone(), s.clone()));
            }
        });
        RawEndpoint {
            addr,
            conns,
            requests,
            stop,
        }
    }
}

async fn serve_endpoint(sock: TcpStream, script: Script, requests: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    let _ = sock.set_nodelay(true);
    let (mut r, mut w) = sock.into_split();
    let mut out = Vec::new();
    frame::put_settings(&mut out, &script.settings);
    if w.write_all(&out).await.is_err() {
        return;
    }
    if !script.read {
        let mut preface = vec![0u8; frame::PREFACE.len()];
        let _ = r.read_exact(&mut preface).await;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return;
    }
    let mut enc = Encoder::default();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut preface_seen = false;
    let mut on_conn = 0usize;
    loop {
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !preface_seen {
            if buf.len() < frame::PREFACE.len() {
                continue;
            }
            buf.advance(frame::PREFACE.len());
            preface_seen = true;
        }
        let mut out = Vec::new();
        while buf.len() >= frame::HEAD_LEN {
            let head = frame::Head::parse(&buf);
            let total = frame::HEAD_LEN + head.len as usize;
            if buf.len() < total {
                break;
            }
            buf.advance(total);
            match head.kind {
                kind::SETTINGS if !head.has(flag::ACK) => frame::put_settings_ack(&mut out),
                kind::HEADERS => {
                    requests.fetch_add(1, Ordering::Relaxed);
                    on_conn += 1;
                    if let (Some(bad), 1) = (script.bad_first, on_conn) {
                        bad_answer(&mut out, &mut enc, head.stream, bad);
                    } else if script.goaway_after.is_some_and(|n| on_conn >= n) {
                        frame::put_goaway(&mut out, head.stream, code::NO_ERROR, b"max age");
                    } else if script.answer {
                        let mut block = Vec::new();
                        enc.encode(
                            &[
                                Field::new(":status", "200"),
                                Field::new("content-type", "application/grpc"),
                                Field::new("grpc-status", "0"),
                            ],
                            &mut block,
                        );
                        frame::put_headers(&mut out, head.stream, &block, true, 16_384);
                    }
                }
                _ => {}
            }
        }
        if !out.is_empty() && w.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn bad_answer(out: &mut Vec<u8>, enc: &mut Encoder, stream: u32, bad: Bad) {
    let mut head = vec![
        Field::new(":status", "200"),
        Field::new("content-type", "application/grpc"),
    ];
    match bad {
        Bad::DataBeforeHead => {
            frame::put_data(out, stream, b"early", true, 16_384);
            return;
        }
        Bad::HeadThenGoaway => {}
        Bad::CrlfInHeader => head.push(Field::new("x-evil", "a\r\nb")),
        Bad::ShortBody => head.push(Field::new("content-length", "10")),
    }
    let mut block = Vec::new();
    enc.encode(&head, &mut block);
    let end = bad == Bad::CrlfInHeader;
    frame::put_headers(out, stream, &block, end, 16_384);
    match bad {
        Bad::HeadThenGoaway => frame::put_goaway(out, 0, code::NO_ERROR, b"bye"),
        Bad::ShortBody => frame::put_data(out, stream, b"abc", true, 16_384),
        _ => {}
    }
}

/// The proxy process's memory: (VmRSS, VmHWM) in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim_start_matches(':').split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS"), get("VmHWM"))
}

/// CPU seconds a process has used (user + system).
pub fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
        .unwrap_or_default();
    (fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)) as f64 / 100.0
}
