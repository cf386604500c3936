//! Entry points for the coverage-guided fuzzers (`fuzz/`): the parts of the
//! proxy that read a peer's first bytes or an operator's file. Not an API.

/// Protocol detection on a client's first bytes: never panics; a verdict
/// on a prefix stays the verdict on the whole.
pub fn detect(b: &[u8]) {
    let whole = crate::transport::detect::classify(b);
    for cut in [b.len() / 2, b.len().saturating_sub(1)] {
        if let Some(early) = crate::transport::detect::classify(&b[..cut]) {
            assert_eq!(Some(early), whole, "decided {early:?} on {cut} bytes");
        }
    }
}

/// The mesh file parser: never panics, whatever the text.
pub fn discovery_file(b: &[u8]) {
    if let Ok(text) = std::str::from_utf8(b) {
        let _ = crate::discovery::file::Snapshot::parse(std::path::Path::new("mesh.yaml"), text);
    }
}
