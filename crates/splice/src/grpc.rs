//! gRPC's conventions on HTTP/2, as a proxy needs them: recognising a gRPC
//! request, reading `grpc-timeout` and `grpc-status`, writing
//! `grpc-message`. Shared by both of weft's HTTP/2 engines.

use std::time::Duration;

/// gRPC status codes the proxy produces or tells apart.
pub mod code {
    pub const OK: u16 = 0;
    pub const CANCELLED: u16 = 1;
    pub const UNKNOWN: u16 = 2;
    pub const INVALID_ARGUMENT: u16 = 3;
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
    pub const DATA_LOSS: u16 = 15;
}

/// Whether a request is gRPC, by its `content-type` value.
pub fn is_grpc(content_type: &[u8]) -> bool {
    content_type.starts_with(b"application/grpc")
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`). Invalid values are ignored, as the gRPC spec allows.
pub fn parse_timeout(s: &[u8]) -> Option<Duration> {
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Parses a `grpc-status` value.
pub fn parse_status(v: &[u8]) -> Option<u16> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Percent-encodes a `grpc-message` value as the gRPC spec requires.
pub fn encode_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let t = |s: &str| parse_timeout(s.as_bytes());
        assert_eq!(t("50m"), Some(Duration::from_millis(50)));
        assert_eq!(t("1S"), Some(Duration::from_secs(1)));
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("123456789m"), None);
        assert_eq!(t("5x"), None);
        assert_eq!(t("m"), None);
        assert_eq!(t("-5m"), None);
    }

    #[test]
    fn statuses_and_content_types() {
        assert_eq!(parse_status(b"14"), Some(14));
        assert_eq!(parse_status(b"x"), None);
        assert!(is_grpc(b"application/grpc+proto"));
        assert!(!is_grpc(b"text/plain"));
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(encode_message("plain text"), "plain text");
        assert_eq!(encode_message("100% ✓\n"), "100%25 %E2%9C%93%0A");
    }
}
