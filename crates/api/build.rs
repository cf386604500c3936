//! Compiles the protos with `protox` (pure Rust), so building needs no `protoc`.
//!
//! Without the `grpc` feature only the messages are generated (prost), so a
//! crate that speaks the API over its own HTTP/2 client (weft-proxy) links
//! no tonic.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/square.proto",
        "proto/grpc/testing/test.proto",
        "proto/weft/destination/v1/destination.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
