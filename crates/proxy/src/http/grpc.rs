//! gRPC details the proxy needs: recognising gRPC requests, reading
//! `grpc-timeout` and `grpc-status`.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

/// Whether a request is gRPC (by its content type).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). Invalid values are ignored, as the gRPC
/// spec allows.
pub fn parse_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.as_bytes();
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

/// The `grpc-status` in a header map, if present and valid.
pub fn status(headers: &HeaderMap) -> Option<u16> {
    let v = headers.get("grpc-status")?;
    let n: u16 = std::str::from_utf8(v.as_bytes()).ok()?.parse().ok()?;
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let t = |s: &str| parse_timeout(&HeaderValue::from_str(s).unwrap());
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
    fn statuses() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(status(&h), Some(14));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
    }
}
