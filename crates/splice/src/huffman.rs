//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B).
//!
//! The code is canonical: symbols of equal length have consecutive codes in
//! symbol order, and the first code of each length follows the last of the
//! previous length. So the code lengths alone (Appendix B's "len" column)
//! define it; the codes are rebuilt from them once, and checked against the
//! RFC's examples in the tests.

use std::sync::OnceLock;

/// Code length in bits of each symbol 0..=255, then EOS (256).
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;

struct Code {
    /// Codes by symbol (right-aligned).
    codes: [u32; 257],
}

fn code() -> &'static Code {
    static CODE: OnceLock<Code> = OnceLock::new();
    CODE.get_or_init(|| {
        let mut c = Code { codes: [0; 257] };
        let mut order: Vec<u16> = (0..257).collect();
        order.sort_by_key(|&s| (LENGTHS[usize::from(s)], s));
        let mut next: u32 = 0;
        let mut prev_len = u32::from(LENGTHS[usize::from(order[0])]);
        for &s in &order {
            let len = u32::from(LENGTHS[usize::from(s)]);
            next <<= len - prev_len;
            prev_len = len;
            c.codes[usize::from(s)] = next;
            next += 1;
        }
        c
    })
}

/// A Huffman-coded string that does not decode.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidHuffman;

/// One step of the decoder: from a state (an inner node of the code tree),
/// four input bits lead to the next state, emitting at most one symbol
/// (no code is shorter than 5 bits).
#[derive(Clone, Copy, Default)]
struct Step {
    next: u8,
    flags: u8,
    symbol: u8,
}

const EMIT: u8 = 1;
const FAIL: u8 = 2;
/// The state is a valid place to end: the bits since the last symbol are
/// at most 7 ones (padding, a prefix of EOS).
const ACCEPT: u8 = 4;

/// The decoder's table: 256 states × 16 nibbles.
fn steps() -> &'static [[Step; 16]; 256] {
    static STEPS: OnceLock<Box<[[Step; 16]; 256]>> = OnceLock::new();
    STEPS.get_or_init(|| {
        let c = code();
        // The code tree: inner nodes 0..256 (0 is the root); a child is an
        // inner node, or a leaf tagged with LEAF.
        const LEAF: u16 = 0x8000;
        const NONE: u16 = 0xffff;
        let mut tree: Vec<[u16; 2]> = vec![[NONE, NONE]];
        for sym in 0..257u16 {
            let len = u32::from(LENGTHS[usize::from(sym)]);
            let code = c.codes[usize::from(sym)];
            let mut node = 0usize;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    tree[node][bit] = LEAF | sym;
                } else {
                    if tree[node][bit] == NONE {
                        tree.push([NONE, NONE]);
                        tree[node][bit] = (tree.len() - 1) as u16;
                    }
                    node = usize::from(tree[node][bit]);
                }
            }
        }
        // Inner nodes on the all-ones path within 7 bits of the root.
        let mut accepting = vec![false; tree.len()];
        let mut node = 0usize;
        accepting[0] = true;
        for _ in 0..7 {
            let child = tree[node][1];
            if child & LEAF != 0 {
                break;
            }
            node = usize::from(child);
            accepting[node] = true;
        }
        let mut steps = Box::new([[Step::default(); 16]; 256]);
        for (state, row) in steps.iter_mut().enumerate().take(tree.len()) {
            for (nibble, step) in row.iter_mut().enumerate() {
                let mut node = state;
                let mut flags = 0;
                let mut symbol = 0;
                for i in (0..4).rev() {
                    let child = tree[node][(nibble >> i) & 1];
                    if child & LEAF != 0 {
                        let sym = child & !LEAF;
                        if sym == EOS {
                            flags |= FAIL;
                            break;
                        }
                        flags |= EMIT;
                        symbol = sym as u8;
                        node = 0;
                    } else {
                        node = usize::from(child);
                    }
                }
                if accepting[node] {
                    flags |= ACCEPT;
                }
                *step = Step {
                    next: node as u8,
                    flags,
                    symbol,
                };
            }
        }
        steps
    })
}

/// Decodes `input`, appending the bytes to `out`.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), InvalidHuffman> {
    let steps = steps();
    let mut state = 0u8;
    let mut accept = true;
    for &byte in input {
        for nibble in [byte >> 4, byte & 0xf] {
            let step = steps[usize::from(state)][usize::from(nibble)];
            if step.flags & FAIL != 0 {
                return Err(InvalidHuffman);
            }
            if step.flags & EMIT != 0 {
                out.push(step.symbol);
            }
            state = step.next;
            accept = step.flags & ACCEPT != 0;
        }
    }
    if accept { Ok(()) } else { Err(InvalidHuffman) }
}

/// The Huffman-coded length of `input`, in bytes.
pub fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input.iter().map(|&b| usize::from(LENGTHS[usize::from(b)])).sum();
    bits.div_ceil(8)
}

/// Encodes `input`, appending to `out` (padded with ones).
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    let c = code();
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in input {
        let len = u32::from(LENGTHS[usize::from(b)]);
        acc = (acc << len) | u64::from(c.codes[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) | ((1u64 << (8 - bits)) - 1)) as u8);
    }
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

    // RFC 7541 Appendix C.4 and C.6.
    const EXAMPLES: &[(&str, &str)] = &[
        ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
        ("no-cache", "a8eb 1064 9cbf"),
        ("custom-key", "25a8 49e9 5ba9 7d7f"),
        ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
        ("302", "6402"),
        ("private", "aec3 771a 4b"),
        (
            "Mon, 21 Oct 2013 20:13:21 GMT",
            "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
        ),
        ("https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
    ];

    #[test]
    fn rfc_examples_decode_and_encode() {
        for (text, coded) in EXAMPLES {
            let mut out = Vec::new();
            decode(&hex(coded), &mut out).unwrap();
            assert_eq!(out, text.as_bytes());
            let mut enc = Vec::new();
            encode(text.as_bytes(), &mut enc);
            assert_eq!(enc, hex(coded), "{text}");
            assert_eq!(encoded_len(text.as_bytes()), enc.len());
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut enc = Vec::new();
        encode(&all, &mut enc);
        let mut out = Vec::new();
        decode(&enc, &mut out).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn bad_padding_and_eos_are_rejected() {
        let mut out = Vec::new();
        assert_eq!(decode(&[0x00], &mut out), Err(InvalidHuffman)); // padding of zeros
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff], &mut out), Err(InvalidHuffman)); // EOS
        assert_eq!(decode(&[0x1f, 0xff], &mut out), Err(InvalidHuffman)); // > 7 bits padding
    }
}
