//! Entry points for the coverage-guided fuzzers (`fuzz/`): the parts of the
//! engine that read what a peer sends, with the properties they must keep.
//! Not an API: each panics exactly when a property breaks.

use crate::{frame, hpack, huffman, wire};

/// Frames as a peer may send them: every header parses, every payload is
/// checked as its frame type is, and nothing panics. Round trips: a header
/// written back parses to itself; DATA and header-block contents written
/// as frames of any size read back whole.
pub fn frames(mut b: &[u8]) {
    let mut settings = frame::Settings::default();
    while b.len() >= frame::HEAD_LEN {
        let head = frame::Head::parse(b);
        let mut again = Vec::new();
        frame::put_head(&mut again, head.len as usize, head.kind, head.flags, head.stream);
        assert_eq!(frame::Head::parse(&again), head);
        let len = (head.len as usize).min(b.len() - frame::HEAD_LEN);
        let payload = &b[frame::HEAD_LEN..frame::HEAD_LEN + len];
        match head.kind {
            frame::kind::SETTINGS => {
                let _ = settings.apply(payload);
            }
            frame::kind::DATA | frame::kind::HEADERS => {
                if let Some(r) = frame::unpad(&head, payload) {
                    assert!(
                        r.start <= r.end && r.end <= payload.len(),
                        "{r:?} out of {}",
                        payload.len()
                    );
                    reframe(&head, &payload[r]);
                }
            }
            frame::kind::WINDOW_UPDATE => {
                let _ = wire::window_increment(payload);
            }
            frame::kind::RST_STREAM => {
                let _ = wire::rst_code(payload);
            }
            _ => {}
        }
        b = &b[frame::HEAD_LEN + len..];
    }
}

/// Writes `content` as frames of head's kind no larger than a size taken
/// from the content itself, reads them back and compares.
fn reframe(head: &frame::Head, content: &[u8]) {
    let max_frame = 1 + u32::from(content.first().copied().unwrap_or(0));
    let end = head.has(frame::flag::END_STREAM);
    let mut out = Vec::new();
    if head.kind == frame::kind::DATA {
        frame::put_data(&mut out, head.stream, content, end, max_frame);
    } else {
        frame::put_headers(&mut out, head.stream, content, end, max_frame);
    }
    let (mut rest, mut back, mut flags) = (&out[..], Vec::new(), 0);
    while !rest.is_empty() {
        let h = frame::Head::parse(rest);
        assert!(h.len <= max_frame, "frame of {} past {max_frame}", h.len);
        assert_eq!(h.stream, head.stream);
        back.extend_from_slice(&rest[frame::HEAD_LEN..frame::HEAD_LEN + h.len as usize]);
        flags |= h.flags;
        rest = &rest[frame::HEAD_LEN + h.len as usize..];
    }
    assert_eq!(back, content);
    assert_eq!(flags & frame::flag::END_STREAM != 0, end);
}

/// A header block: decoding never panics and keeps nothing past the limit;
/// what decodes, re-encoded and decoded afresh, is the same list.
pub fn hpack(b: &[u8]) {
    let mut dec = hpack::Decoder::new(4096);
    let mut fields = Vec::new();
    let limit = 16 << 10;
    let Ok(size) = dec.decode(b, &mut fields, limit) else {
        return;
    };
    if size > limit {
        assert!(fields.is_empty(), "kept {} fields past the limit", fields.len());
        return;
    }
    let mut block = Vec::new();
    hpack::Encoder::default().encode(&fields, &mut block);
    let mut again = Vec::new();
    hpack::Decoder::new(4096)
        .decode(&block, &mut again, usize::MAX)
        .expect("our own encoding decodes");
    let pairs = |f: &[hpack::Field]| f.iter().map(|f| (f.name.clone(), f.value.clone())).collect::<Vec<_>>();
    assert_eq!(pairs(&fields), pairs(&again));
}

/// Huffman: decoding never panics; encode ∘ decode is the identity both ways.
pub fn huffman(b: &[u8]) {
    let mut decoded = Vec::new();
    if huffman::decode(b, &mut decoded).is_ok() {
        let mut encoded = Vec::new();
        huffman::encode(&decoded, &mut encoded);
        let mut again = Vec::new();
        huffman::decode(&encoded, &mut again).expect("our own encoding decodes");
        assert_eq!(again, decoded);
    }
    let mut encoded = Vec::new();
    huffman::encode(b, &mut encoded);
    assert_eq!(encoded.len(), huffman::encoded_len(b));
    let mut back = Vec::new();
    huffman::decode(&encoded, &mut back).expect("our own encoding decodes");
    assert_eq!(back, b);
}
