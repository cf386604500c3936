//! Malformed messages in both directions (RFC 9113 §8.1–8.3): the proxy
//! refuses them rather than passing them on for the next hop to misread,
//! and a malformed answer costs the endpoint's stream slot nothing.

use std::{sync::atomic::Ordering, time::Duration};

use weft_splice::{frame, hpack::Decoder};
use weft_test_support::{
    DiscoveryFile,
    h2raw::{self, Bad, RawClient, RawEndpoint, Script, code, kind, setting},
    process,
};

const SVC: &str = "raw.test:50051";

/// A weft-proxy process (so that `WEFT_TEST_BIN_DIR` can point these
/// tests at another build) in front of `endpoint`.
struct Proxy {
    outbound: std::net::SocketAddr,
    _proc: process::Proc,
    _disc: DiscoveryFile,
}

async fn proxy_to(endpoint: &RawEndpoint, extra: &[&str]) -> (Proxy, ()) {
    let disc = DiscoveryFile::new();
    disc.set(SVC, &[("raw-0", endpoint.addr)]);
    let path = disc.path.to_str().unwrap().to_string();
    let mut args = vec!["--discovery-file", path.as_str()];
    args.extend_from_slice(extra);
    let (proc, outbound, _) = process::weft_proxy(&args).await;
    let proxy = Proxy {
        outbound: outbound.expect("outbound"),
        _proc: proc,
        _disc: disc,
    };
    (proxy, ())
}

/// A request head with one extra field written by hand (never through an
/// encoder that might refuse it).
fn request_with(extra: &[(&str, &[u8])], end: bool) -> Vec<u8> {
    let mut block = RawClient::plain_request_block(SVC, "/pkg.S/M");
    for (n, v) in extra {
        weft_splice::hpack::raw::literal(&mut block, n.as_bytes(), v);
    }
    let mut out = Vec::new();
    frame::put_headers(&mut out, 1, &block, end, 16_384);
    out
}

/// The RST_STREAM code the client got on stream 1, waiting up to 5 s.
async fn reset_of_stream_1(c: &RawClient) -> Option<u32> {
    weft_test_support::eventually("an answer on stream 1", Duration::from_secs(5), || async {
        let seen = c.seen();
        let rst = seen.frames.iter().find(|f| f.kind == kind::RST_STREAM && f.stream == 1);
        let head = seen.frames.iter().any(|f| f.kind == kind::HEADERS && f.stream == 1);
        match (rst, head) {
            (Some(f), _) => Some(Some(u32::from_be_bytes([
                f.payload[0],
                f.payload[1],
                f.payload[2],
                f.payload[3],
            ]))),
            (None, true) => Some(None),
            (None, false) => None,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_header_with_cr_lf_is_refused() {
    let ep = RawEndpoint::spawn(Script::default()).await;
    let (proxy, _d) = proxy_to(&ep, &[]).await;
    let mut c = RawClient::connect(proxy.outbound, &[], true).await;
    c.send(&request_with(&[("x-evil", b"a\r\nx-injected: 1")], true)).await;
    assert_eq!(reset_of_stream_1(&c).await, Some(code::PROTOCOL_ERROR));
    assert_eq!(ep.requests.load(Ordering::Relaxed), 0, "nothing reached the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_longer_than_its_content_length_is_refused() {
    let ep = RawEndpoint::spawn(Script {
        answer: false,
        ..Default::default()
    })
    .await;
    let (proxy, _d) = proxy_to(&ep, &[]).await;
    let mut c = RawClient::connect(proxy.outbound, &[], true).await;
    let mut out = request_with(&[("content-length", b"3")], false);
    frame::put_data(&mut out, 1, b"hello", true, 16_384);
    c.send(&out).await;
    assert_eq!(reset_of_stream_1(&c).await, Some(code::PROTOCOL_ERROR));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_header_with_cr_lf_is_not_passed_on() {
    let ep = RawEndpoint::spawn(Script {
        bad_first: Some(Bad::CrlfInHeader),
        ..Default::default()
    })
    .await;
    let (proxy, _d) = proxy_to(&ep, &[]).await;
    let mut c = RawClient::connect(proxy.outbound, &[], true).await;
    c.send(&request_with(&[], true)).await;
    let got = reset_of_stream_1(&c).await;
    let seen = c.seen();
    let mut dec = Decoder::new(4096);
    for f in seen.frames.iter().filter(|f| f.kind == kind::HEADERS && f.stream == 1) {
        let mut fields = Vec::new();
        let _ = dec.decode(&f.payload, &mut fields, usize::MAX);
        assert!(
            fields.iter().all(|f| !f.value.windows(2).any(|w| w == b"\r\n")),
            "a CR LF reached the client: {fields:?}"
        );
    }
    assert!(
        got.is_some() || seen.frames.iter().any(|f| f.kind == kind::HEADERS),
        "no answer at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_frees_the_endpoints_stream_slot() {
    // One stream at a time; its first answer is DATA before any head.
    let ep = RawEndpoint::spawn(Script {
        settings: vec![(setting::MAX_CONCURRENT_STREAMS, 1)],
        bad_first: Some(Bad::DataBeforeHead),
        ..Default::default()
    })
    .await;
    let (proxy, _d) = proxy_to(&ep, &["--fail-fast-timeout", "2s"]).await;
    let call = || weft_test_support::raw::grpc_call(proxy.outbound, SVC, "/pkg.S/M", &[], &[]);
    let first = tokio::time::timeout(Duration::from_secs(5), call())
        .await
        .expect("an answer");
    assert!(
        first.is_err() || first.as_ref().unwrap().grpc_status() != Some(0),
        "{first:?}"
    );
    let second = tokio::time::timeout(Duration::from_secs(5), call())
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(second.grpc_status(), Some(0), "the slot was freed: {second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_never_followed_by_a_second_head() {
    // A head, then GOAWAY claiming the stream was never processed.
    let ep = RawEndpoint::spawn(Script {
        bad_first: Some(Bad::HeadThenGoaway),
        ..Default::default()
    })
    .await;
    let (proxy, _d) = proxy_to(&ep, &[]).await;
    let mut c = RawClient::connect(proxy.outbound, &[], true).await;
    c.send(&request_with(&[], true)).await;
    weft_test_support::eventually("the stream to end", Duration::from_secs(5), || async {
        c.seen()
            .frames
            .iter()
            .any(|f| f.stream == 1 && (f.kind == kind::RST_STREAM || f.flags & h2raw::flag::END_STREAM != 0))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heads = c
        .seen()
        .frames
        .iter()
        .filter(|f| f.kind == kind::HEADERS && f.stream == 1)
        .count();
    assert_eq!(heads, 1, "one head on stream 1: {:?}", c.seen().frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_shorter_than_its_content_length_is_refused() {
    let ep = RawEndpoint::spawn(Script {
        bad_first: Some(Bad::ShortBody),
        ..Default::default()
    })
    .await;
    let (proxy, _d) = proxy_to(&ep, &[]).await;
    let mut c = RawClient::connect(proxy.outbound, &[], true).await;
    c.send(&request_with(&[], true)).await;
    weft_test_support::eventually("the stream to be reset", Duration::from_secs(5), || async {
        c.seen()
            .frames
            .iter()
            .any(|f| f.stream == 1 && f.kind == kind::RST_STREAM)
            .then_some(())
    })
    .await;
    let clean_end = c
        .seen()
        .frames
        .iter()
        .any(|f| f.stream == 1 && f.kind == kind::DATA && f.flags & h2raw::flag::END_STREAM != 0);
    assert!(!clean_end, "a short body must not look complete to the client");
}
