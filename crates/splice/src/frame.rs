//! HTTP/2 framing (RFC 9113 §4, §6): frame headers, SETTINGS, and writers
//! that append frames to a connection's output buffer.

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub const HEAD_LEN: usize = 9;
/// The protocol's default and minimum SETTINGS_MAX_FRAME_SIZE.
pub const DEFAULT_MAX_FRAME: u32 = 16_384;
/// The protocol's default SETTINGS_INITIAL_WINDOW_SIZE.
pub const DEFAULT_WINDOW: u32 = 65_535;
/// The largest flow-control window.
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Frame types.
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const INTERNAL_ERROR: u32 = 0x2;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    /// Used inside weft (never sent) for "the endpoint's connection broke
    /// under the stream", which gRPC calls UNAVAILABLE: RFC 9113 gives it to
    /// a CONNECT tunnel "reset or abnormally closed".
    pub const CONNECT_ERROR: u32 = 0xa;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// SETTINGS identifiers.
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// Parses the first 9 bytes of `b` (the caller checks the length).
    pub fn parse(b: &[u8]) -> Head {
        Head {
            len: (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5] & 0x7f, b[6], b[7], b[8]]),
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// A peer's settings, as far as they have been received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: u32,
    pub enable_push: bool,
    /// `None` is unlimited.
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: u32,
    pub max_frame_size: u32,
    pub max_header_list_size: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header_table_size: 4096,
            enable_push: true,
            max_concurrent_streams: None,
            initial_window_size: DEFAULT_WINDOW,
            max_frame_size: DEFAULT_MAX_FRAME,
            max_header_list_size: None,
        }
    }
}

impl Settings {
    /// Applies a SETTINGS payload; returns the error code of an invalid one.
    pub fn apply(&mut self, payload: &[u8]) -> Result<(), u32> {
        if !payload.len().is_multiple_of(6) {
            return Err(code::FRAME_SIZE_ERROR);
        }
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::HEADER_TABLE_SIZE => self.header_table_size = value,
                setting::ENABLE_PUSH => match value {
                    0 => self.enable_push = false,
                    1 => self.enable_push = true,
                    _ => return Err(code::PROTOCOL_ERROR),
                },
                setting::MAX_CONCURRENT_STREAMS => self.max_concurrent_streams = Some(value),
                setting::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err(code::FLOW_CONTROL_ERROR);
                    }
                    self.initial_window_size = value;
                }
                setting::MAX_FRAME_SIZE => {
                    if !(DEFAULT_MAX_FRAME..=16_777_215).contains(&value) {
                        return Err(code::PROTOCOL_ERROR);
                    }
                    self.max_frame_size = value;
                }
                setting::MAX_HEADER_LIST_SIZE => self.max_header_list_size = Some(value),
                _ => {} // unknown settings are ignored
            }
        }
        Ok(())
    }
}

/// Appends a frame header.
pub fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len as u32;
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

/// Appends a SETTINGS frame.
pub fn put_settings(out: &mut Vec<u8>, entries: &[(u16, u32)]) {
    put_head(out, entries.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in entries {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn put_settings_ack(out: &mut Vec<u8>) {
    put_head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

pub fn put_ping_ack(out: &mut Vec<u8>, data: &[u8]) {
    put_head(out, 8, kind::PING, flag::ACK, 0);
    out.extend_from_slice(&data[..8]);
}

pub fn put_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    put_head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&(increment & 0x7fff_ffff).to_be_bytes());
}

pub fn put_rst(out: &mut Vec<u8>, stream: u32, error: u32) {
    put_head(out, 4, kind::RST_STREAM, 0, stream);
    out.extend_from_slice(&error.to_be_bytes());
}

pub fn put_goaway(out: &mut Vec<u8>, last_stream: u32, error: u32, debug: &[u8]) {
    put_head(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(debug);
}

/// Appends DATA frames carrying `data`, none larger than `max_frame`; the
/// last carries END_STREAM if `end`. Empty data with `end` is one empty frame.
pub fn put_data(out: &mut Vec<u8>, stream: u32, data: &[u8], end: bool, max_frame: u32) {
    let max = max_frame as usize;
    if data.is_empty() {
        put_head(out, 0, kind::DATA, if end { flag::END_STREAM } else { 0 }, stream);
        return;
    }
    let mut chunks = data.chunks(max).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        put_head(
            out,
            chunk.len(),
            kind::DATA,
            if end && last { flag::END_STREAM } else { 0 },
            stream,
        );
        out.extend_from_slice(chunk);
    }
}

/// Appends a header block as HEADERS (+ CONTINUATION) frames.
pub fn put_headers(out: &mut Vec<u8>, stream: u32, block: &[u8], end_stream: bool, max_frame: u32) {
    let max = max_frame as usize;
    let first = block.len().min(max);
    let es = if end_stream { flag::END_STREAM } else { 0 };
    let eh = if first == block.len() { flag::END_HEADERS } else { 0 };
    put_head(out, first, kind::HEADERS, es | eh, stream);
    out.extend_from_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(max);
        let eh = if n == rest.len() { flag::END_HEADERS } else { 0 };
        put_head(out, n, kind::CONTINUATION, eh, stream);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

/// Strips padding from a DATA or HEADERS payload; `None` if it is invalid.
pub fn unpad(head: &Head, payload: &[u8]) -> Option<std::ops::Range<usize>> {
    if !head.has(flag::PADDED) {
        return Some(0..payload.len());
    }
    let pad = usize::from(*payload.first()?);
    if pad + 1 > payload.len() {
        return None;
    }
    Some(1..payload.len() - pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip() {
        let mut out = Vec::new();
        put_head(&mut out, 70_000, kind::HEADERS, flag::END_HEADERS, 0x8000_0003);
        let h = Head::parse(&out);
        assert_eq!(
            h,
            Head {
                len: 70_000,
                kind: kind::HEADERS,
                flags: flag::END_HEADERS,
                stream: 3
            }
        );
    }

    #[test]
    fn settings_are_validated() {
        let mut s = Settings::default();
        let mut p = Vec::new();
        for (id, v) in [
            (setting::MAX_CONCURRENT_STREAMS, 1u32),
            (setting::INITIAL_WINDOW_SIZE, 1 << 20),
            (99, 7),
        ] {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        s.apply(&p).unwrap();
        assert_eq!(s.max_concurrent_streams, Some(1));
        assert_eq!(s.initial_window_size, 1 << 20);
        assert_eq!(s.apply(&p[..5]), Err(code::FRAME_SIZE_ERROR));
        let bad = [0, 5, 0, 0, 0, 1]; // MAX_FRAME_SIZE 1
        assert_eq!(s.apply(&bad), Err(code::PROTOCOL_ERROR));
        let bad = [0, 4, 0x80, 0, 0, 0]; // window 2^31
        assert_eq!(s.apply(&bad), Err(code::FLOW_CONTROL_ERROR));
    }

    #[test]
    fn big_blocks_and_data_are_split() {
        let mut out = Vec::new();
        put_headers(&mut out, 1, &[7u8; 40_000], true, 16_384);
        let h1 = Head::parse(&out);
        assert_eq!((h1.kind, h1.len, h1.flags), (kind::HEADERS, 16_384, flag::END_STREAM));
        let h2 = Head::parse(&out[9 + 16_384..]);
        assert_eq!((h2.kind, h2.len, h2.flags), (kind::CONTINUATION, 16_384, 0));
        let h3 = Head::parse(&out[2 * (9 + 16_384)..]);
        assert_eq!(
            (h3.kind, h3.len, h3.flags),
            (kind::CONTINUATION, 40_000 - 32_768, flag::END_HEADERS)
        );
        let mut out = Vec::new();
        put_data(&mut out, 1, &[1u8; 20_000], true, 16_384);
        assert_eq!(Head::parse(&out).flags, 0);
        assert_eq!(Head::parse(&out[9 + 16_384..]).flags, flag::END_STREAM);
    }

    #[test]
    fn padding() {
        let h = Head {
            len: 5,
            kind: kind::DATA,
            flags: flag::PADDED,
            stream: 1,
        };
        assert_eq!(unpad(&h, &[2, b'a', b'b', 0, 0]), Some(1..3));
        assert_eq!(unpad(&h, &[9, b'a']), None);
    }
}
