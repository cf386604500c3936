//! Random HTTP/2 frames at the proxy's front door: whatever a client sends,
//! the proxy must not panic, must close or keep the connection cleanly, and
//! must keep serving everyone else. (A file of its own: it installs a
//! process-wide panic hook.)

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_demo::square::{self, SquareOptions};
use weft_splice::{
    frame::{self, kind},
    hpack::{Encoder, Field},
};
use weft_test_support::{DiscoveryFile, TestProxy, metric, square_calls};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn request_block(enc: &mut Encoder) -> Vec<u8> {
    let fields = [
        Field::new(":method", "POST"),
        Field::new(":scheme", "http"),
        Field::new(":path", "/square.Square/Square"),
        Field::new(":authority", "square.test:50051"),
        Field::new("content-type", "application/grpc"),
        Field::new("te", "trailers"),
    ];
    let mut out = Vec::new();
    enc.encode(&fields, &mut out);
    out
}

fn random_frames(rng: &mut Rng) -> Vec<u8> {
    let mut out = frame::PREFACE.to_vec();
    frame::put_settings(&mut out, &[]);
    let mut enc = Encoder::default();
    for _ in 0..1 + rng.below(8) {
        let stream = (rng.below(6) * 2 + 1) as u32 * if rng.below(10) == 0 { 2 } else { 1 };
        let flags = rng.next() as u8;
        match rng.below(10) {
            // A valid request, sometimes.
            0 | 1 => {
                let block = request_block(&mut enc);
                frame::put_headers(&mut out, stream, &block, rng.below(2) == 0, 16_384);
                let msg = [0u8, 0, 0, 0, 2, 8, 3];
                frame::put_data(&mut out, stream, &msg, true, 16_384);
            }
            _ => {
                let kinds = [
                    kind::DATA,
                    kind::HEADERS,
                    kind::PRIORITY,
                    kind::RST_STREAM,
                    kind::SETTINGS,
                    kind::PUSH_PROMISE,
                    kind::PING,
                    kind::GOAWAY,
                    kind::WINDOW_UPDATE,
                    kind::CONTINUATION,
                    0x42,
                ];
                let k = kinds[rng.below(kinds.len() as u64) as usize];
                let len = rng.below(40) as usize;
                let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                frame::put_head(&mut out, len, k, flags, stream);
                out.extend_from_slice(&payload);
            }
        }
    }
    if rng.below(4) == 0 {
        // A lie about the length.
        frame::put_head(&mut out, 1 << 20, kind::DATA, 0, 1);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_never_panic_the_proxy() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        eprintln!("PANIC: {info}");
    }));
    let rep = square::spawn(SquareOptions::named("square-0")).await.unwrap();
    let disc = DiscoveryFile::new();
    disc.set("square.test:50051", &[("square-0", rep.addr)]);
    let proxy = TestProxy::with_discovery(&disc, &[]).await;
    assert_eq!(
        square_calls(proxy.channel("square.test:50051").await, 1, 1).await,
        ["square-0"]
    );

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..std::env::var("WEFT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
    {
        let bytes = random_frames(&mut rng);
        let mut s = tokio::net::TcpStream::connect(proxy.outbound).await.unwrap();
        let _ = s.write_all(&bytes).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(30), s.read_to_end(&mut sink)).await;
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the proxy panicked");
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "weft_connection_errors_total", &[("reason", "http2_protocol")]) > 10.0,
        "{m}"
    );
    // Everyone else is still served.
    let hosts = square_calls(proxy.channel("square.test:50051").await, 50, 10).await;
    assert!(hosts.iter().all(|h| h == "square-0"), "{hosts:?}");
    let _ = Bytes::new();
}
