//! What a header field and a header list must be to be forwarded (RFC 9113
//! §8.2, §8.3): lowercase names without separators or controls, values
//! without NUL, CR or LF and without surrounding whitespace, pseudo-headers
//! first and only where they belong, and a `content-length` that the body
//! must then match. Checked in both directions: a malformed message is
//! refused, never passed on for the next hop to misread.

use crate::Field;

/// Bytes a header name may hold (after the `:` of a pseudo-header):
/// visible ASCII, but no uppercase and no `:`.
static NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        t[b] = !(b as u8).is_ascii_uppercase() && b != b':' as usize;
        b += 1;
    }
    t
};

/// Whether `v` holds a NUL, CR or LF: eight bytes at a time (a header
/// value is checked on every request and response, in both directions).
fn has_nul_cr_lf(v: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Non-zero when some byte of `x` is zero.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut words = v.chunks_exact(8);
    for w in &mut words {
        let Ok(w) = <[u8; 8]>::try_from(w) else { break };
        let x = u64::from_ne_bytes(w);
        if zero(x) | zero(x ^ (ONES * u64::from(b'\r'))) | zero(x ^ (ONES * u64::from(b'\n'))) != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
}

/// Why a field may not be forwarded.
pub(crate) fn check_field(f: &Field) -> Result<(), &'static str> {
    let name = &f.name[..];
    let regular = name.strip_prefix(b":").unwrap_or(name);
    if regular.is_empty() {
        return Err("empty header name");
    }
    if !regular.iter().fold(true, |ok, &b| ok & NAME_BYTE[usize::from(b)]) {
        return Err("header name with uppercase, whitespace or control characters");
    }
    let value = &f.value[..];
    if has_nul_cr_lf(value) {
        return Err("header value with NUL, CR or LF");
    }
    if matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t')) {
        return Err("header value with leading or trailing whitespace");
    }
    Ok(())
}

/// Trailers: fields, and no pseudo-header. `well_formed`: the fields are
/// known to pass [`check_field`] (the decoder checked them).
pub(crate) fn check_trailers(fields: &[Field], well_formed: bool) -> Result<(), &'static str> {
    for f in fields {
        if f.name.first() == Some(&b':') {
            return Err("pseudo-header in trailers");
        }
        if !well_formed {
            check_field(f)?;
        }
    }
    Ok(())
}

/// A response head: `:status` (and no other pseudo-header) before the
/// fields. `well_formed` as for [`check_trailers`].
pub(crate) fn check_response_head(fields: &[Field], well_formed: bool) -> Result<(), &'static str> {
    let mut regular = false;
    let mut status = false;
    for f in fields {
        if f.name.first() == Some(&b':') {
            if regular {
                return Err("pseudo-header after a regular header");
            }
            if &f.name[..] != b":status" || status {
                return Err("a pseudo-header other than one :status in a response");
            }
            status = true;
        } else {
            regular = true;
        }
        if !well_formed {
            check_field(f)?;
        }
    }
    Ok(())
}

/// The `content-length` of a message, if it has one.
pub(crate) fn content_length(fields: &[Field]) -> Result<Option<u64>, &'static str> {
    let mut found = None;
    for f in fields.iter().filter(|f| &f.name[..] == b"content-length") {
        let n: u64 = std::str::from_utf8(&f.value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .ok_or("content-length is not a number")?;
        if found.is_some_and(|m| m != n) {
            return Err("two different content-lengths");
        }
        found = Some(n);
    }
    Ok(found)
}

/// The body bytes a message announced and has carried so far.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BodyLength {
    expected: Option<u64>,
    seen: u64,
}

impl BodyLength {
    pub(crate) fn expect(expected: Option<u64>) -> Self {
        BodyLength { expected, seen: 0 }
    }

    /// Counts `n` more bytes; `end` when the message is over. An error
    /// when the body no longer matches its `content-length`.
    pub(crate) fn add(&mut self, n: usize, end: bool) -> Result<(), &'static str> {
        self.seen += n as u64;
        match self.expected {
            Some(e) if self.seen > e => Err("more DATA than content-length"),
            Some(e) if end && self.seen != e => Err("less DATA than content-length"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: &'static str, v: &'static str) -> Field {
        Field::new(n, v)
    }

    #[test]
    fn fields_are_checked_both_ways() {
        assert!(check_field(&f("x-ok", "a b")).is_ok());
        assert!(check_field(&f(":path", "/a")).is_ok());
        for bad in [
            f("X-Up", "1"),
            f("x y", "1"),
            f("", "1"),
            f("x\u{7f}", "1"),
            f("a:b", "1"),
        ] {
            assert!(check_field(&bad).is_err(), "{bad:?}");
        }
        // Long values too: the check goes eight bytes at a time.
        assert!(check_field(&f("x", "0123456789abcdef0123456789abcdef!")).is_ok());
        for bad in [
            f("x", "a\r\nb"),
            f("x", "a\0"),
            f("x", " a"),
            f("x", "a\t"),
            f("x", "0123456789ab\rdef0123456789abcdef"),
            f("x", "01234567\n"),
            f("x", "0123456789abcdef0123456789abcde\0"),
            f("x", "\x00123456789abcdef"),
        ] {
            assert!(check_field(&bad).is_err(), "{bad:?}");
        }
        assert!(check_trailers(&[f("grpc-status", "0")], false).is_ok());
        assert!(check_trailers(&[f(":status", "200")], true).is_err());
        assert!(check_response_head(&[f(":status", "200"), f("a", "b")], false).is_ok());
        assert!(check_response_head(&[f("a", "b"), f(":status", "200")], true).is_err());
        assert!(check_response_head(&[f(":status", "200"), f(":path", "/")], true).is_err());
    }

    #[test]
    fn bodies_must_match_their_content_length() {
        assert_eq!(content_length(&[f("content-length", "10")]), Ok(Some(10)));
        assert!(content_length(&[f("content-length", "1x")]).is_err());
        assert!(content_length(&[f("content-length", "1"), f("content-length", "2")]).is_err());
        let mut b = BodyLength::expect(Some(10));
        assert!(b.add(4, false).is_ok());
        assert!(b.add(5, true).is_err(), "9 of 10");
        let mut b = BodyLength::expect(Some(3));
        assert!(b.add(4, false).is_err());
        assert!(BodyLength::expect(None).add(99, true).is_ok());
    }
}
