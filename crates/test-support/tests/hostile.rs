//! Hostile peers against a real weft-proxy process: each attack runs beside
//! a well-behaved client on another connection, which must get every answer
//! throughout; the proxy's memory (VmHWM, from /proc) must stay under
//! [`RSS_BOUND_MIB`]; and the attacking connection must be closed or
//! throttled. How fast the good client is served under attack is a
//! benchmark figure, not a test assertion.

use std::{net::SocketAddr, time::Duration};

use prost::Message;
use weft_demo::{interop, square};
use weft_test_support::{
    DiscoveryFile, OpenLoad,
    h2raw::{self, RawClient, RawEndpoint, Script, code, kind, setting},
    mesh::channel_via,
    process::{self, Proc},
};

/// The ceiling on the proxy's peak RSS under any one attack.
const RSS_BOUND_MIB: u64 = 64;
const SQUARE: &str = "square.test:50051";
const BIG: &str = "big.test:50051";

/// A weft-proxy process with a square replica and a TestService (for large
/// responses) behind it, and a good client calling square at 50/s.
struct Bed {
    started: std::time::Instant,
    proxy: Proc,
    pid: u32,
    outbound: SocketAddr,
    admin: SocketAddr,
    good: Option<OpenLoad>,
    _disc: DiscoveryFile,
    _square: square::SquareHandle,
    _big: interop::TestServerHandle,
}

impl Bed {
    async fn start(args: &[&str]) -> Bed {
        Self::start_with(args, None).await
    }

    /// As [`Bed::start`], with `big.test` served by `endpoint` instead.
    async fn start_with(args: &[&str], endpoint: Option<SocketAddr>) -> Bed {
        let sq = square::spawn(square::SquareOptions::named("square-0")).await.unwrap();
        let big = interop::spawn().await.unwrap();
        let disc = DiscoveryFile::new();
        let big_addr = endpoint.unwrap_or(big.addr);
        disc.write(&format!(
            "services:\n  {SQUARE}:\n    endpoints: [{}]\n  {BIG}:\n    endpoints: [{big_addr}]\n",
            sq.addr
        ));
        let path = disc.path.to_str().unwrap().to_string();
        let mut all = vec!["--discovery-file", path.as_str()];
        all.extend_from_slice(args);
        let (proxy, outbound, admin) = process::weft_proxy(&all).await;
        let (outbound, admin) = (outbound.expect("outbound address"), admin.expect("admin address"));
        let pid = proxy.child.id().expect("pid");
        let good = OpenLoad::start(channel_via(outbound, SQUARE).await, 50);
        Bed {
            started: std::time::Instant::now(),
            proxy,
            pid,
            outbound,
            admin,
            good: Some(good),
            _disc: disc,
            _square: sq,
            _big: big,
        }
    }

    /// A counter or gauge from the proxy's /metrics.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = weft_test_support::http_get(self.admin, "/metrics").await.unwrap();
        weft_test_support::metric(&text, name, labels)
    }

    fn hwm_mib(&self) -> u64 {
        h2raw::rss_kib(self.pid).1 / 1024
    }

    /// Stops the good client: every one of its calls succeeded; the proxy
    /// is alive and stayed under the memory bound.
    async fn finish(mut self) {
        // The good client runs for two seconds at least, whatever the attack.
        let min = self.started + Duration::from_secs(2);
        tokio::time::sleep_until(min.into()).await;
        let calls = self.good.take().unwrap().finish().await;
        let failed: Vec<_> = calls.iter().filter(|c| c.result.is_err()).collect();
        assert!(calls.len() > 20, "the good client made {} calls", calls.len());
        assert!(
            failed.is_empty(),
            "{} of {} good calls failed: {:?}",
            failed.len(),
            calls.len(),
            failed.first()
        );
        assert!(matches!(self.proxy.child.try_wait(), Ok(None)), "the proxy died");
        let hwm = self.hwm_mib();
        assert!(hwm < RSS_BOUND_MIB, "peak RSS {hwm} MiB");
    }
}

/// A request head plus a big literal (which enters the proxy's HPACK table
/// as its newest and only entry, index 62; `~` is longer Huffman-coded, so
/// the proxy re-encodes it as it came).
fn head_with_big_entry(stream: u32, path: &str, end: bool) -> Vec<u8> {
    let mut block = RawClient::plain_request_block(BIG, path);
    weft_splice::hpack::raw::literal_indexed(&mut block, b"x-big", &[b'~'; 4000]);
    let mut out = Vec::new();
    weft_splice::frame::put_headers(&mut out, stream, &block, end, 16_384);
    out
}

/// A header block of `n` one-byte references to that 4,000-byte entry.
fn bomb_block(n: usize) -> Vec<u8> {
    let mut block = Vec::with_capacity(n);
    for _ in 0..n {
        weft_splice::hpack::raw::indexed(&mut block, 62);
    }
    block
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_do_not_amplify_into_memory() {
    let bed = Bed::start(&[]).await;
    let mut c = RawClient::connect(bed.outbound, &[], true).await;
    // Each stream: a head that puts a 4 KB entry in the table, then trailers
    // of 16,000 one-byte references to it (64 MB decoded).
    for i in 0..10u32 {
        let stream = 2 * i + 1;
        let mut out = head_with_big_entry(stream, "/grpc.testing.TestService/UnaryCall", false);
        weft_splice::frame::put_headers(&mut out, stream, &bomb_block(16_000), true, 16_384);
        if !c.send(&out).await {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_bomb_is_not_decoded_into_memory() {
    let bed = Bed::start(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = RawClient::connect(bed.outbound, &[], true).await;
        // A head with the big entry, then a head of 1,000,000 references to it
        // (about 4 GB decoded) on the next stream.
        let mut out = head_with_big_entry(1, "/grpc.testing.TestService/UnaryCall", true);
        let mut bomb = RawClient::plain_request_block(BIG, "/grpc.testing.TestService/UnaryCall");
        bomb.extend(bomb_block(1_000_000));
        weft_splice::frame::put_headers(&mut out, 3, &bomb, true, 16_384);
        c.send(&out).await;
        clients.push(c);
    }
    // Bombs small enough to pass as a header block (4,000 one-byte
    // references: 4 KB sent, 16 MB decoded), one stream after another.
    let mut c = RawClient::connect(bed.outbound, &[], true).await;
    let mut out = head_with_big_entry(1, "/grpc.testing.TestService/UnaryCall", true);
    for i in 0..100u32 {
        let mut bomb = RawClient::plain_request_block(BIG, "/grpc.testing.TestService/UnaryCall");
        bomb.extend(bomb_block(4_000));
        weft_splice::frame::put_headers(&mut out, 3 + 2 * i, &bomb, true, 16_384);
    }
    c.send(&out).await;
    clients.push(c);
    for c in &clients {
        // Far over the advertised limit: not worth a 431 each (that would
        // let the sender keep the proxy decoding), the sender loses its
        // connection.
        let (goaway, _) = c.wait_goaway_or_close(Duration::from_secs(5)).await;
        assert_eq!(goaway, Some(code::ENHANCE_YOUR_CALM));
    }
    bed.finish().await;
    drop(clients);
}

/// Frames of a StreamingOutputCall asking for `chunks` responses of `size` bytes.
fn big_response_request(c: &mut RawClient, stream: u32, chunks: usize, size: i32) -> Vec<u8> {
    let req = weft_api::grpc_testing::StreamingOutputCallRequest {
        response_parameters: (0..chunks)
            .map(|_| weft_api::grpc_testing::ResponseParameters {
                size,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let msg = weft_test_support::raw::grpc_frame(&req.encode_to_vec());
    let mut out = c.request(stream, BIG, "/grpc.testing.TestService/StreamingOutputCall", false);
    weft_splice::frame::put_data(&mut out, stream, &msg, true, 16_384);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_grants_window_but_never_reads_is_bounded() {
    let bed = Bed::start(&[]).await;
    // Never reads; grants every window there is.
    let mut c = RawClient::connect(bed.outbound, &[(setting::INITIAL_WINDOW_SIZE, (1 << 31) - 1)], false).await;
    let mut out = Vec::new();
    weft_splice::frame::put_window_update(&mut out, 0, (1 << 31) - 1 - 65_535);
    c.send(&out).await;
    for i in 0..20u32 {
        // 20 streams × 32 MiB of responses.
        let out = big_response_request(&mut c, 2 * i + 1, 32, 1 << 20);
        c.send(&out).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_grants_no_window_is_bounded() {
    let bed = Bed::start(&[]).await;
    let mut c = RawClient::connect(bed.outbound, &[(setting::INITIAL_WINDOW_SIZE, 0)], true).await;
    for i in 0..100u32 {
        // 100 streams, each with 2 MiB of responses waiting for window.
        let out = big_response_request(&mut c, 2 * i + 1, 2, 1 << 20);
        c.send(&out).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_enhance_your_calm() {
    let bed = Bed::start(&[]).await;
    let mut c = RawClient::connect(bed.outbound, &[], true).await;
    let mut stream = 1u32;
    'attack: for _ in 0..100 {
        let out = c.reset_requests(&mut stream, 200, SQUARE, "/square.Square/Square");
        if !c.send(&out).await {
            break 'attack;
        }
    }
    let (goaway, _) = c.wait_goaway_or_close(Duration::from_secs(5)).await;
    assert_eq!(
        goaway,
        Some(code::ENHANCE_YOUR_CALM),
        "20,000 reset streams and no GOAWAY"
    );
    bed.finish().await;
}

/// Rapid reset from a client that reconnects each time it is sent away:
/// requests reset before they were written to the endpoint never reach it,
/// so the endpoint's own rapid-reset defence (tonic's: GOAWAY after 20
/// resets of streams it has not yet accepted) never closes the connection
/// every other client shares, and nothing piles up in the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_over_many_connections_never_reaches_the_endpoint() {
    let endpoint = RawEndpoint::spawn(Script::default()).await;
    let bed = Bed::start_with(&[], Some(endpoint.addr)).await;
    let mut sent = 0;
    for _ in 0..30 {
        let mut c = RawClient::connect(bed.outbound, &[], true).await;
        let mut stream = 1u32;
        for _ in 0..10 {
            let out = c.reset_requests(&mut stream, 200, BIG, "/grpc.testing.TestService/EmptyCall");
            if !c.send(&out).await {
                break;
            }
            sent += 200;
        }
        c.wait_goaway_or_close(Duration::from_secs(5)).await;
    }
    assert!(sent > 30_000, "only {sent} streams sent");
    let reached = endpoint.requests.load(std::sync::atomic::Ordering::Relaxed);
    // Before requests were held until the batch they came in was read,
    // about 1 % of them (664 of 60,000) were written to the endpoint.
    assert!(
        reached * 500 < sent,
        "{reached} of {sent} reset requests reached the endpoint"
    );
    let connects = bed.metric("weft_endpoint_connects_total", &[("target", BIG)]).await;
    assert_eq!(connects, 1.0, "the endpoint connection was lost and opened again");
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_and_settings_flood_gets_goaway_enhance_your_calm() {
    let bed = Bed::start(&[]).await;
    let mut c = RawClient::connect(bed.outbound, &[], true).await;
    for _ in 0..100 {
        let mut out = Vec::new();
        for i in 0..1_000u64 {
            weft_splice::frame::put_head(&mut out, 8, kind::PING, 0, 0);
            out.extend_from_slice(&i.to_be_bytes());
            if i % 10 == 0 {
                weft_splice::frame::put_settings(&mut out, &[]);
            }
        }
        if !c.send(&out).await {
            break;
        }
    }
    let (goaway, _) = c.wait_goaway_or_close(Duration::from_secs(5)).await;
    assert_eq!(goaway, Some(code::ENHANCE_YOUR_CALM), "100,000 PINGs and no GOAWAY");
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off() {
    let bed = Bed::start(&[]).await;
    let mut c = RawClient::connect(bed.outbound, &[], true).await;
    let mut out = c.request(1, SQUARE, "/square.Square/Square", false);
    // Clear END_HEADERS: the block goes on in CONTINUATION frames, forever.
    out[4] &= !h2raw::flag::END_HEADERS;
    c.send(&out).await;
    for _ in 0..2_000 {
        let mut cont = Vec::new();
        weft_splice::frame::put_head(&mut cont, 1_000, kind::CONTINUATION, 0, 1);
        cont.extend_from_slice(&[0x40; 1_000]);
        if !c.send(&cont).await {
            break;
        }
    }
    let (goaway, closed) = c.wait_goaway_or_close(Duration::from_secs(5)).await;
    assert!(goaway.is_some() || closed, "2 MB of CONTINUATION accepted");
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_sent_slowly_is_cut_off() {
    let bed = Bed::start(&["--header-timeout", "1s"]).await;
    let mut c = RawClient::connect(bed.outbound, &[], true).await;
    let mut out = c.request(1, SQUARE, "/square.Square/Square", false);
    out[4] &= !h2raw::flag::END_HEADERS;
    c.send(&out).await;
    // One byte of the block every 300 ms: never complete.
    let mut cut = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut cont = Vec::new();
        weft_splice::frame::put_head(&mut cont, 1, kind::CONTINUATION, 0, 1);
        cont.push(0x40);
        if !c.send(&cont).await || c.goaway().is_some() || c.closed() {
            cut = true;
            break;
        }
    }
    assert!(cut, "a header block dribbled over 6 s was never cut off");
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_streams_stay_within_bounds() {
    let bed = Bed::start(&[]).await;
    let mut c = RawClient::connect(bed.outbound, &[], true).await;
    let mut stream = 1u32;
    for _ in 0..50 {
        let mut out = Vec::new();
        for _ in 0..200 {
            // A request whose body never comes.
            out.extend(c.request(stream, SQUARE, "/square.Square/Square", false));
            stream += 2;
        }
        if !c.send(&out).await {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    bed.finish().await;
}

/// A client that sends DATA past the connection window (ignoring that the
/// proxy stopped granting it, because no endpoint takes its bytes) is cut
/// off with GOAWAY(FLOW_CONTROL_ERROR), not buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_the_connection_window_is_cut_off() {
    let sink = RawEndpoint::spawn(Script {
        read: false,
        answer: false,
        ..Default::default()
    })
    .await;
    let bed = Bed::start_with(&[], Some(sink.addr)).await;
    let mut c = RawClient::connect(bed.outbound, &[], true).await;
    let chunk = vec![0u8; 1 << 20];
    // 100 streams × 1 MiB (each within its stream window): 100 MiB that no
    // endpoint takes.
    for i in 0..100u32 {
        let stream = 2 * i + 1;
        let mut out = c.request(stream, BIG, "/grpc.testing.TestService/UnaryCall", false);
        weft_splice::frame::put_data(&mut out, stream, &chunk, false, 16_384);
        if !c.send(&out).await {
            break;
        }
    }
    let (goaway, _) = c.wait_goaway_or_close(Duration::from_secs(5)).await;
    assert_eq!(
        goaway,
        Some(code::FLOW_CONTROL_ERROR),
        "100 MiB past the window and no GOAWAY"
    );
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_allows_no_streams_fails_requests_after_the_fail_fast_timeout() {
    let zero = RawEndpoint::spawn(Script {
        settings: vec![(setting::MAX_CONCURRENT_STREAMS, 0)],
        ..Default::default()
    })
    .await;
    let bed = Bed::start_with(&["--fail-fast-timeout", "1s"], Some(zero.addr)).await;
    let started = std::time::Instant::now();
    let call = weft_test_support::raw::grpc_call(bed.outbound, BIG, "/grpc.testing.TestService/EmptyCall", &[], &[]);
    let resp = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("an answer, not a request queued forever")
        .unwrap();
    assert_eq!(resp.grpc_status(), Some(14), "UNAVAILABLE: {resp:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(zero.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_goes_away_is_replaced_at_once() {
    // Sends GOAWAY on its first connection as soon as a request arrives (as
    // grpc-go does at MaxConnectionAge) and leaves that request open.
    let ep = RawEndpoint::spawn(Script {
        goaway_after: Some(1),
        ..Default::default()
    })
    .await;
    let bed = Bed::start_with(&["--fail-fast-timeout", "2s"], Some(ep.addr)).await;
    let outbound = bed.outbound;
    let long = tokio::spawn(async move {
        weft_test_support::raw::grpc_call(outbound, BIG, "/grpc.testing.TestService/EmptyCall", &[], &[]).await
    });
    weft_test_support::eventually(
        "the first request to reach the endpoint",
        Duration::from_secs(5),
        || async { (ep.requests.load(std::sync::atomic::Ordering::Relaxed) >= 1).then_some(()) },
    )
    .await;
    // The first connection still has its open stream; a new request must
    // not wait for it to end.
    let started = std::time::Instant::now();
    let call = weft_test_support::raw::grpc_call(bed.outbound, BIG, "/grpc.testing.TestService/EmptyCall", &[], &[]);
    let resp = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(resp.grpc_status(), Some(0), "{resp:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        ep.conns.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "a second connection"
    );
    long.abort();
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_vanished_is_found_out_by_keepalive() {
    // A real replica, stopped (SIGSTOP): its kernel still acknowledges
    // TCP, but nothing answers, PINGs included.
    let (replica, addr) = process::square("stopped", &[]).await;
    let bed = Bed::start_with(&["--keepalive-interval", "1s", "--keepalive-timeout", "1s"], Some(addr)).await;
    let call = |outbound| async move {
        let req = weft_api::grpc_testing::SimpleRequest::default().encode_to_vec();
        weft_test_support::raw::grpc_call(outbound, BIG, "/grpc.testing.TestService/UnaryCall", &req, &[]).await
    };
    let ok = tokio::time::timeout(Duration::from_secs(5), call(bed.outbound))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.grpc_status(), Some(0), "{ok:?}");
    replica.signal("STOP");
    // No deadline on the call: only the proxy's keepalive can end it.
    let started = std::time::Instant::now();
    let stuck = tokio::time::timeout(Duration::from_secs(8), call(bed.outbound))
        .await
        .expect("the call ends: the vanished endpoint was found out")
        .unwrap();
    replica.signal("CONT");
    assert_ne!(stuck.grpc_status(), Some(0), "{stuck:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited for the keepalive"
    );
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_connection_is_sent_away_politely() {
    let bed = Bed::start(&["--idle-timeout", "1s"]).await;
    let c = RawClient::connect(bed.outbound, &[], true).await;
    let (goaway, _) = c.wait_goaway_or_close(Duration::from_secs(5)).await;
    assert_eq!(goaway, Some(code::NO_ERROR), "an idle connection gets GOAWAY(NO_ERROR)");
    let (_, closed) = c.wait_goaway_or_close(Duration::from_secs(5)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !c.closed() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed || c.closed(), "and is closed");
    bed.finish().await;
}

/// Proxy CPU seconds for `streams` open streams with ids `step` apart, and
/// 8 DATA frames sent on each; the connection is handed back open.
async fn cpu_for_stream_ids(bed: &Bed, streams: u32, step: u32) -> (f64, RawClient) {
    let mut c = RawClient::connect(bed.outbound, &[], true).await;
    let before = h2raw::cpu_seconds(bed.pid);
    let ids: Vec<u32> = (0..streams).map(|i| 1 + i * step).collect();
    for chunk in ids.chunks(256) {
        let mut out = Vec::new();
        for id in chunk {
            out.extend(c.request(*id, BIG, "/grpc.testing.TestService/UnaryCall", false));
        }
        c.send(&out).await;
    }
    for _ in 0..8 {
        for chunk in ids.chunks(512) {
            let mut out = Vec::new();
            for id in chunk {
                weft_splice::frame::put_data(&mut out, *id, &[0, 0, 0, 0, 0], false, 16_384);
            }
            c.send(&out).await;
        }
    }
    // A PING after everything: its ACK means every frame before it was handled.
    let mut ping = Vec::new();
    weft_splice::frame::put_head(&mut ping, 8, kind::PING, 0, 0);
    ping.extend_from_slice(b"lastping");
    c.send(&ping).await;
    weft_test_support::eventually(
        "the PING after the frames to be answered",
        Duration::from_secs(60),
        || async {
            c.seen()
                .frames
                .iter()
                .any(|f| f.kind == kind::PING && f.payload == b"lastping")
                .then_some(())
        },
    )
    .await;
    (h2raw::cpu_seconds(bed.pid) - before, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ids_chosen_to_collide_cost_no_more_than_any_others() {
    // The streams go to an endpoint that takes them and never answers, so
    // that what is measured is the proxy's own work.
    let sink = RawEndpoint::spawn(Script {
        answer: false,
        ..Default::default()
    })
    .await;
    let bed = Bed::start_with(&["--max-concurrent-streams", "20000"], Some(sink.addr)).await;
    // Ids 2^18 apart share their low bits: with an unseeded hash they all
    // land in one bucket chain.
    let (plain, _a) = cpu_for_stream_ids(&bed, 8_000, 2).await;
    let (colliding, _b) = cpu_for_stream_ids(&bed, 8_000, 1 << 18).await;
    eprintln!("proxy CPU: {plain:.2} s with consecutive ids, {colliding:.2} s with colliding ones");
    assert!(
        colliding < 3.0 * plain.max(0.2),
        "colliding ids cost {colliding:.2} s of CPU against {plain:.2} s"
    );
    bed.finish().await;
}

/// Opens a connection from `from` to `to` and sends the HTTP/2 preface and
/// an empty SETTINGS: an idle HTTP/2 client, held as long as the stream is.
async fn idle_h2_from(from: std::net::IpAddr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    let mut stream = sock.connect(to).await?;
    let mut hello = weft_splice::frame::PREFACE.to_vec();
    weft_splice::frame::put_settings(&mut hello, &[]);
    stream.write_all(&hello).await?;
    Ok(stream)
}

/// True once `stream` is closed by the other side (EOF or reset), false if
/// it is still open after `within`. Whatever the proxy sent first (its
/// SETTINGS) is read and skipped.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// One client address opening connections in a loop gets its own share
/// (`--max-connections-per-client`, 1,000 by default) and no more: the
/// connections beyond are closed at once, the ones it holds cost the proxy
/// little, and other clients, held or new, are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_opening_connections_in_a_loop_gets_its_share_only() {
    let sq = square::spawn(square::SquareOptions::named("square-0")).await.unwrap();
    let app = sq.addr.to_string();
    let (proxy, at) =
        process::weft_proxy_listening(&["--inbound-listen", "127.0.0.1:0", "--inbound-forward", &app]).await;
    let pid = proxy.child.id().expect("pid");
    let (inbound, admin) = (at.inbound.expect("inbound"), at.admin.expect("admin"));
    let good = OpenLoad::start(channel_via(inbound, SQUARE).await, 50);

    // The attacker's address: another loopback address than the good client's.
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..1_000 {
        held.push(idle_h2_from(attacker, inbound).await.expect("the first 1,000 connect"));
    }
    let mut beyond = Vec::new();
    for _ in 0..50 {
        // Accepted by the kernel, closed by the proxy at once.
        if let Ok(s) = idle_h2_from(attacker, inbound).await {
            beyond.push(s);
        }
    }
    for s in &mut beyond {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a connection beyond the client's share stayed open"
        );
    }
    for s in held.iter_mut().step_by(100) {
        assert!(
            !closed_within(s, Duration::from_millis(50)).await,
            "a connection within the share was closed"
        );
    }
    // Another client, new, is served while the attacker holds its share.
    let fresh = weft_test_support::square_calls(channel_via(inbound, SQUARE).await, 20, 4).await;
    assert!(fresh.iter().all(|h| h == "square-0"), "{fresh:?}");

    let (_, metrics) = weft_test_support::http_get(admin, "/metrics").await.unwrap();
    let refused = weft_test_support::metric(
        &metrics,
        "weft_connection_errors_total",
        &[("direction", "inbound"), ("reason", "client_connection_limit")],
    );
    assert!(refused >= 50.0, "{refused} connections counted as beyond the share");
    let hwm = h2raw::rss_kib(pid).1 / 1024;
    assert!(hwm < RSS_BOUND_MIB, "peak RSS {hwm} MiB with 1,000 idle connections");

    let calls = good.finish().await;
    let failed = calls.iter().filter(|c| c.result.is_err()).count();
    assert!(
        calls.len() > 20 && failed == 0,
        "{failed} of {} good calls failed",
        calls.len()
    );
    drop(held);
}
