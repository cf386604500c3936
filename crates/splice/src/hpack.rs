//! HPACK header compression (RFC 7541): a decoder that takes everything a
//! peer may send (Huffman, the dynamic table, size updates) and an encoder
//! that indexes the header fields that repeat (`content-type`, `:path`,
//! `te`, `user-agent` ...) so that a busy connection sends most headers as
//! one byte each.

use std::collections::VecDeque;

use bytes::Bytes;

use super::huffman;

/// A header field: lowercase name (pseudo-headers start with `:`), value,
/// and whether a hop marked it never to be indexed (RFC 7541 §7.1.3: it
/// stays so on every later hop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Bytes,
    pub value: Bytes,
    pub never_index: bool,
}

impl Field {
    pub fn new(name: &'static str, value: impl Into<Bytes>) -> Field {
        Field {
            name: Bytes::from_static(name.as_bytes()),
            value: value.into(),
            never_index: false,
        }
    }

    /// The field's size for table accounting and header list limits.
    pub fn size(&self) -> usize {
        self.name.len() + self.value.len() + 32
    }
}

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Why a header block could not be decoded (a connection error).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer overflows")]
    Overflow,
    #[error("index {0} is in no table")]
    BadIndex(usize),
    #[error("invalid Huffman string")]
    Huffman,
    #[error("dynamic table size update to {0} exceeds the limit")]
    SizeUpdate(usize),
}

/// A dynamic table (RFC 7541 §2.3.2): newest first, bounded in octets.
#[derive(Debug, Default)]
struct Table {
    entries: VecDeque<Field>,
    size: usize,
    max: usize,
}

impl Table {
    fn with_max(max: usize) -> Self {
        Table {
            entries: VecDeque::new(),
            size: 0,
            max,
        }
    }

    fn insert(&mut self, f: Field) {
        let s = f.size();
        while self.size + s > self.max {
            match self.entries.pop_back() {
                Some(old) => self.size -= old.size(),
                None => break,
            }
        }
        if s <= self.max {
            self.size += s;
            self.entries.push_front(f);
        }
    }

    fn set_max(&mut self, max: usize) {
        self.max = max;
        while self.size > self.max {
            match self.entries.pop_back() {
                Some(old) => self.size -= old.size(),
                None => break,
            }
        }
    }
}

/// The size (RFC 7541 §4.1) of the field at `index`, without taking it.
fn size_at(table: &Table, index: usize) -> Result<usize, DecodeError> {
    match index {
        0 => Err(DecodeError::BadIndex(0)),
        1..=61 => {
            let (n, v) = STATIC[index - 1];
            Ok(n.len() + v.len() + 32)
        }
        _ => table
            .entries
            .get(index - 62)
            .map(Field::size)
            .ok_or(DecodeError::BadIndex(index)),
    }
}

fn get(table: &Table, index: usize) -> Result<Field, DecodeError> {
    match index {
        0 => Err(DecodeError::BadIndex(0)),
        1..=61 => {
            let (n, v) = STATIC[index - 1];
            Ok(Field {
                name: Bytes::from_static(n.as_bytes()),
                value: Bytes::from_static(v.as_bytes()),
                never_index: false,
            })
        }
        _ => table
            .entries
            .get(index - 62)
            .cloned()
            .ok_or(DecodeError::BadIndex(index)),
    }
}

/// Reads an integer with an `prefix`-bit prefix from `b[*pos..]`.
fn read_int(b: &[u8], pos: &mut usize, prefix: u8) -> Result<usize, DecodeError> {
    let mask = (1u16 << prefix) as u8 - 1;
    let first = *b.get(*pos).ok_or(DecodeError::Truncated)? & mask;
    *pos += 1;
    if first < mask {
        return Ok(usize::from(first));
    }
    let mut value = usize::from(mask);
    let mut shift = 0u32;
    loop {
        let byte = *b.get(*pos).ok_or(DecodeError::Truncated)?;
        *pos += 1;
        if shift > 28 {
            return Err(DecodeError::Overflow);
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// A string's raw bytes and whether they are Huffman-coded.
fn string_bytes<'a>(b: &'a [u8], pos: &mut usize) -> Result<(&'a [u8], bool), DecodeError> {
    let huffman = *b.get(*pos).ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let len = read_int(b, pos, 7)?;
    let end = pos
        .checked_add(len)
        .filter(|e| *e <= b.len())
        .ok_or(DecodeError::Truncated)?;
    let raw = &b[*pos..end];
    *pos = end;
    Ok((raw, huffman))
}

/// A string's decoded length, without keeping it (Huffman is decoded
/// in a bounded scratch buffer, to validate it and learn its length).
fn skip_string(b: &[u8], pos: &mut usize) -> Result<usize, DecodeError> {
    let (raw, huffman) = string_bytes(b, pos)?;
    if !huffman {
        return Ok(raw.len());
    }
    let mut out = Vec::new();
    huffman::decode(raw, &mut out).map_err(|_| DecodeError::Huffman)?;
    Ok(out.len())
}

fn read_string(b: &[u8], pos: &mut usize) -> Result<Bytes, DecodeError> {
    let (raw, huffman) = string_bytes(b, pos)?;
    let len = raw.len();
    if huffman {
        let mut out = Vec::with_capacity(len * 8 / 5);
        huffman::decode(raw, &mut out).map_err(|_| DecodeError::Huffman)?;
        Ok(out.into())
    } else {
        Ok(Bytes::copy_from_slice(raw))
    }
}

/// Decodes header blocks from one peer.
#[derive(Debug)]
pub struct Decoder {
    table: Table,
    /// The table size this side allowed (our SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
    /// Whether every field of the last block is known to be well formed
    /// ([`Decoder::well_formed`]).
    well_formed: bool,
    /// A malformed field went into the dynamic table: from now on fields
    /// taken from it are checked again each time they are referenced.
    tainted: bool,
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Decoder {
            table: Table::with_max(limit),
            limit,
            well_formed: true,
            tainted: false,
        }
    }

    /// Whether every field the last [`Decoder::decode`] gave is well formed
    /// (RFC 9113 §8.2.1, [`crate::headers::check_field`]). Each literal is
    /// checked once, when it arrives; a reference to the static table or to
    /// a dynamic entry that was checked when it went in costs nothing. When
    /// `false`, the caller checks the fields one by one to find out why.
    pub fn well_formed(&self) -> bool {
        self.well_formed
    }

    /// Decodes a whole header block into `out`; returns the header list size
    /// (RFC 9113 §6.5.2). The block is always read to its end, so that the
    /// table stays in step with the peer's, but once the list passes `limit`
    /// nothing more is kept: `out` is emptied and stays empty, so a block of
    /// a few bytes that stands for gigabytes (references to one big table
    /// entry) costs time in proportion to its own size and no memory. The
    /// caller refuses a list over its limit.
    pub fn decode(&mut self, b: &[u8], out: &mut Vec<Field>, limit: usize) -> Result<usize, DecodeError> {
        let mut pos = 0;
        let mut list = 0usize;
        let mut fields_seen = false;
        self.well_formed = true;
        while pos < b.len() {
            let over = list > limit;
            let first = b[pos];
            if first & 0x80 != 0 {
                let index = read_int(b, &mut pos, 7)?;
                if over {
                    // Past the limit: measure, keep nothing (a reference to
                    // a big entry costs what a reference to a small one does).
                    list = list.saturating_add(size_at(&self.table, index)?);
                    fields_seen = true;
                    continue;
                }
                let f = get(&self.table, index)?;
                if index > STATIC.len() && self.tainted && crate::headers::check_field(&f).is_err() {
                    self.well_formed = false;
                }
                list = list.saturating_add(f.size());
                out.push(f);
                fields_seen = true;
            } else if first & 0xe0 == 0x20 {
                let size = read_int(b, &mut pos, 5)?;
                if size > self.limit || fields_seen {
                    return Err(DecodeError::SizeUpdate(size));
                }
                self.table.set_max(size);
            } else {
                let (prefix, index_it, never_index) = match first & 0xf0 {
                    0x40..=0x70 => (6, true, false),
                    0x10 => (4, false, true),
                    _ => (4, false, false),
                };
                let name_index = read_int(b, &mut pos, prefix)?;
                if over && !index_it {
                    // Past the limit and not for the table: measure, keep nothing.
                    let name_len = if name_index == 0 {
                        skip_string(b, &mut pos)?
                    } else {
                        get(&self.table, name_index)?.name.len()
                    };
                    list = list.saturating_add(name_len + skip_string(b, &mut pos)? + 32);
                    fields_seen = true;
                    continue;
                }
                let name = if name_index == 0 {
                    read_string(b, &mut pos)?
                } else {
                    get(&self.table, name_index)?.name
                };
                let value = read_string(b, &mut pos)?;
                let f = Field {
                    name,
                    value,
                    never_index,
                };
                list = list.saturating_add(f.size());
                if crate::headers::check_field(&f).is_err() {
                    self.well_formed = false;
                    self.tainted |= index_it;
                }
                if index_it {
                    self.table.insert(f.clone());
                }
                out.push(f);
                fields_seen = true;
            }
            if list > limit && !out.is_empty() {
                out.clear();
            }
        }
        if list > limit {
            out.clear();
        }
        Ok(list)
    }
}

/// How a field is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Into the dynamic table: it will likely repeat.
    Index,
    /// Literally, once: it changes every time.
    Literal,
    /// Never indexed, by any hop (credentials).
    Never,
}

fn policy(f: &Field) -> Policy {
    match &f.name[..] {
        b"authorization" | b"proxy-authorization" | b"cookie" | b"set-cookie" => Policy::Never,
        b"grpc-timeout" | b"content-length" | b"grpc-message" | b"x-request-id" | b"traceparent" | b"etag"
        | b"last-modified" | b"expires" => Policy::Literal,
        _ if f.value.len() > 512 => Policy::Literal,
        _ => Policy::Index,
    }
}

/// Encodes header blocks for one peer.
#[derive(Debug)]
pub struct Encoder {
    table: Table,
    /// Size updates owed at the start of the next block: the smallest size
    /// the table went through since the last block, then its size now
    /// (RFC 7541 §4.2).
    pending_update: Option<(usize, usize)>,
}

/// The largest dynamic table this encoder uses, whatever the peer allows.
const ENCODER_TABLE: usize = 4096;

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            table: Table::with_max(ENCODER_TABLE),
            pending_update: None,
        }
    }
}

fn write_int(out: &mut Vec<u8>, first_bits: u8, prefix: u8, mut value: usize) {
    let mask = ((1u16 << prefix) - 1) as usize;
    if value < mask {
        out.push(first_bits | value as u8);
        return;
    }
    out.push(first_bits | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Header-block pieces written exactly as given (no Huffman, no encoder
/// table): for peers in tests and benchmarks that must send what an unusual
/// or hostile peer would.
pub mod raw {
    use super::write_int;

    /// A field by its table index: one or two bytes that may stand for
    /// kilobytes.
    pub fn indexed(out: &mut Vec<u8>, index: usize) {
        write_int(out, 0x80, 7, index);
    }

    /// A literal field without indexing, with a new name.
    pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x00);
        string(out, name);
        string(out, value);
    }

    /// A literal field with incremental indexing (it enters the peer's
    /// dynamic table), with a new name.
    pub fn literal_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x40);
        string(out, name);
        string(out, value);
    }

    /// A gRPC request head with every field a literal, never indexed: it
    /// leaves the peer's table as it was (a test's own entries keep their
    /// indices) and needs no encoder state.
    pub fn request_head(authority: &str, path: &str) -> Vec<u8> {
        let mut block = Vec::new();
        for (n, v) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            literal(&mut block, n.as_bytes(), v.as_bytes());
        }
        block
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        write_int(out, 0, 7, s.len());
        out.extend_from_slice(s);
    }
}

fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    // Short strings go as they are: Huffman would save a byte or two at the
    // cost of encoding them (and the peer of decoding them).
    if s.len() <= 16 {
        write_int(out, 0, 7, s.len());
        out.extend_from_slice(s);
        return;
    }
    let h = huffman::encoded_len(s);
    if h < s.len() {
        write_int(out, 0x80, 7, h);
        huffman::encode(s, out);
    } else {
        write_int(out, 0, 7, s.len());
        out.extend_from_slice(s);
    }
}

impl Encoder {
    /// Applies the peer's SETTINGS_HEADER_TABLE_SIZE.
    pub fn set_peer_limit(&mut self, limit: u32) {
        let max = (limit as usize).min(ENCODER_TABLE);
        if max != self.table.max {
            self.table.set_max(max);
            let least = self.pending_update.map_or(max, |(least, _)| least.min(max));
            self.pending_update = Some((least, max));
        }
    }

    /// Appends the block encoding `fields` to `out`.
    pub fn encode<'a>(&mut self, fields: impl IntoIterator<Item = &'a Field>, out: &mut Vec<u8>) {
        if let Some((least, now)) = self.pending_update.take() {
            if least < now {
                write_int(out, 0x20, 5, least);
            }
            write_int(out, 0x20, 5, now);
        }
        for f in fields {
            self.encode_one(f, out);
        }
    }

    fn encode_one(&mut self, f: &Field, out: &mut Vec<u8>) {
        let (exact, name) = self.find(f);
        if let Some(i) = exact {
            write_int(out, 0x80, 7, i);
            return;
        }
        let policy = if f.never_index { Policy::Never } else { policy(f) };
        let (bits, prefix) = match policy {
            Policy::Index => (0x40, 6),
            Policy::Literal => (0x00, 4),
            Policy::Never => (0x10, 4),
        };
        match name {
            Some(i) => write_int(out, bits, prefix, i),
            None => {
                write_int(out, bits, prefix, 0);
                write_string(out, &f.name);
            }
        }
        write_string(out, &f.value);
        if policy == Policy::Index {
            self.table.insert(f.clone());
        }
    }

    /// (index of an exact match, index of a name match).
    fn find(&self, f: &Field) -> (Option<usize>, Option<usize>) {
        let mut name_match = None;
        if let Some(first) = static_name(&f.name) {
            for (i, (n, v)) in STATIC.iter().enumerate().skip(first - 1) {
                if n.as_bytes() != &f.name[..] {
                    break;
                }
                if v.as_bytes() == &f.value[..] {
                    return (Some(i + 1), None);
                }
            }
            name_match = Some(first);
        }
        for (i, e) in self.table.entries.iter().enumerate() {
            if e.name == f.name {
                if e.value == f.value {
                    return (Some(62 + i), None);
                }
                name_match.get_or_insert(62 + i);
            }
        }
        (None, name_match)
    }
}

/// The first static table index with this name.
fn static_name(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-encoding" => 16,
        b"content-length" => 28,
        b"content-type" => 31,
        b"user-agent" => 58,
        b"te" | b"grpc-timeout" | b"grpc-status" | b"grpc-message" | b"grpc-encoding" | b"grpc-accept-encoding" => {
            return None;
        }
        _ => return STATIC.iter().position(|(n, _)| n.as_bytes() == name).map(|i| i + 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(&f.name).into(),
                    String::from_utf8_lossy(&f.value).into(),
                )
            })
            .collect()
    }

    #[test]
    fn rfc_c4_requests_with_huffman_and_the_dynamic_table() {
        let mut d = Decoder::new(4096);
        let mut out = Vec::new();
        d.decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"), &mut out, usize::MAX)
            .unwrap();
        assert_eq!(
            pairs(&out),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        out.clear();
        d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf"), &mut out, usize::MAX)
            .unwrap();
        assert_eq!(pairs(&out)[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(pairs(&out)[4], ("cache-control".into(), "no-cache".into()));
        out.clear();
        d.decode(
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
            &mut out,
            usize::MAX,
        )
        .unwrap();
        assert_eq!(pairs(&out)[2], (":path".into(), "/index.html".into()));
        assert_eq!(pairs(&out)[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.table.size, 164);
    }

    #[test]
    fn encoder_and_decoder_agree_and_repeats_get_small() {
        let fields = vec![
            Field::new(":method", "POST"),
            Field::new(":scheme", "http"),
            Field::new(":path", "/square.Square/Square"),
            Field::new(":authority", "square.demo:50051"),
            Field::new("content-type", "application/grpc"),
            Field::new("te", "trailers"),
            Field::new("grpc-timeout", "10000m"),
            Field::new("authorization", "secret"),
            Field::new("x-bin", Bytes::from_static(&[0, 255, 10, 13])),
        ];
        let mut e = Encoder::default();
        let mut d = Decoder::new(4096);
        let mut first = Vec::new();
        e.encode(&fields, &mut first);
        let mut second = Vec::new();
        e.encode(&fields, &mut second);
        assert!(second.len() < 40, "the second block is small: {} bytes", second.len());
        for block in [&first, &second] {
            let mut out = Vec::new();
            d.decode(block, &mut out, usize::MAX).unwrap();
            let pairs = |f: &[Field]| f.iter().map(|f| (f.name.clone(), f.value.clone())).collect::<Vec<_>>();
            assert_eq!(pairs(&out), pairs(&fields));
            // Credentials arrive marked never-indexed, so the next hop keeps them out too.
            assert!(out.iter().all(|f| f.never_index == (&f.name[..] == b"authorization")));
        }
        // Never-indexed credentials stay out of both tables.
        assert!(!e.table.entries.iter().any(|f| &f.name[..] == b"authorization"));
    }

    #[test]
    fn table_size_updates() {
        let mut e = Encoder::default();
        e.set_peer_limit(0);
        let mut block = Vec::new();
        e.encode(&[Field::new("x-a", "1")], &mut block);
        assert_eq!(block[0], 0x20, "a size update to 0 comes first");
        let mut d = Decoder::new(4096);
        let mut out = Vec::new();
        d.decode(&block, &mut out, usize::MAX).unwrap();
        assert_eq!(d.table.max, 0);
        // Back up to 4096 (our limit) is allowed; 4097 is not; nor an update
        // after a field.
        out.clear();
        d.decode(&[0x3f, 0xe1, 0x1f], &mut out, usize::MAX).unwrap();
        assert_eq!(d.table.max, 4096);
        assert_eq!(
            d.decode(&[0x3f, 0xe2, 0x1f], &mut out, usize::MAX),
            Err(DecodeError::SizeUpdate(4097))
        );
        assert_eq!(
            d.decode(&[0x82, 0x20], &mut out, usize::MAX),
            Err(DecodeError::SizeUpdate(0))
        );
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut d = Decoder::new(4096);
        let mut out = Vec::new();
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0x7f], &mut out, usize::MAX),
            Err(DecodeError::BadIndex(2_097_278))
        );
        assert_eq!(d.decode(&[0x80], &mut out, usize::MAX), Err(DecodeError::BadIndex(0)));
        assert_eq!(
            d.decode(&[0x41, 0x05, b'a'], &mut out, usize::MAX),
            Err(DecodeError::Truncated)
        );
        assert_eq!(d.decode(&[0xbe], &mut out, usize::MAX), Err(DecodeError::BadIndex(62)));
        assert_eq!(
            d.decode(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut out, usize::MAX),
            Err(DecodeError::Overflow)
        );
        assert_eq!(
            d.decode(&[0x40, 0x81, 0x00, 0x00], &mut out, usize::MAX),
            Err(DecodeError::Huffman)
        );
    }

    #[test]
    fn a_block_that_stands_for_gigabytes_keeps_nothing() {
        let mut d = Decoder::new(4096);
        let mut out = Vec::new();
        // A 4 KB entry, then a million one-byte references to it.
        let mut block = vec![0x40, 0x05];
        block.extend_from_slice(b"x-big");
        block.extend_from_slice(&[0x7f, 0xa1, 0x1e]); // length 4000 (127 + 33 + 30 × 128)
        block.extend(std::iter::repeat_n(b'~', 4000));
        block.extend(std::iter::repeat_n(0xbe, 1_000_000));
        let size = d.decode(&block, &mut out, 65_536).unwrap();
        assert!(size > 4_000_000_000, "the list size is still counted: {size}");
        assert!(out.is_empty(), "nothing kept past the limit");
        assert!(out.capacity() < 100, "and nothing grown: {}", out.capacity());
        // The table stayed in step: the next block can use the entry.
        d.decode(&[0xbe], &mut out, 65_536).unwrap();
        assert_eq!(&out[0].name[..], b"x-big");
    }

    #[test]
    fn never_indexed_fields_stay_so_on_the_next_hop() {
        let mut d = Decoder::new(4096);
        let mut out = Vec::new();
        // Literal never indexed, new name "x-secret", value "s3cr3t".
        let mut block = vec![0x10, 0x08];
        block.extend_from_slice(b"x-secret");
        block.push(0x06);
        block.extend_from_slice(b"s3cr3t");
        d.decode(&block, &mut out, usize::MAX).unwrap();
        assert!(out[0].never_index);
        let mut enc = Encoder::default();
        let mut again = Vec::new();
        enc.encode(&out, &mut again);
        assert_eq!(again[0] & 0xf0, 0x10, "re-encoded never indexed: {again:x?}");
        assert!(enc.table.entries.is_empty());
    }

    #[test]
    fn a_table_size_lowered_and_raised_again_is_signalled_with_its_minimum() {
        let mut enc = Encoder::default();
        enc.set_peer_limit(0);
        enc.set_peer_limit(4096);
        let mut block = Vec::new();
        enc.encode(&[], &mut block);
        // Size updates to 0, then to 4096 (RFC 7541 §4.2).
        assert_eq!(block, vec![0x20, 0x3f, 0xe1, 0x1f]);
    }

    #[test]
    fn fields_are_checked_once_and_a_bad_table_entry_taints_the_decoder() {
        // A literal with incremental indexing: `x-ok: 1`, then a reference to it.
        let mut d = Decoder::new(4096);
        let mut out = Vec::new();
        let mut block = Vec::new();
        raw::literal_indexed(&mut block, b"x-ok", b"1");
        d.decode(&block, &mut out, usize::MAX).unwrap();
        assert!(d.well_formed());
        d.decode(&[0x82, 0xbe], &mut out, usize::MAX).unwrap();
        assert!(d.well_formed(), "static and checked dynamic entries");
        // A malformed value goes into the table: this block and every later
        // reference to the table are checked again.
        let mut block = Vec::new();
        raw::literal_indexed(&mut block, b"x-evil", b"a\r\nb");
        out.clear();
        d.decode(&block, &mut out, usize::MAX).unwrap();
        assert!(!d.well_formed());
        out.clear();
        d.decode(&[0xbe], &mut out, usize::MAX).unwrap();
        assert_eq!(&out[0].value[..], b"a\r\nb");
        assert!(!d.well_formed(), "a reference to the malformed entry");
        out.clear();
        d.decode(&[0xbf], &mut out, usize::MAX).unwrap();
        assert!(d.well_formed(), "a reference to a good entry, checked again");
    }
}
