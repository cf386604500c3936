//! Compiles the protos with `protox` (pure Rust), so building needs no `protoc`.
//!
//! Without the `grpc` feature only the messages are generated (prost), so a
//! crate that speaks the API over its own HTTP/2 client (weft-proxy) links
//! no tonic. The control plane's API uses [`codec::SmallCodec`]: a watch
//! keeps its buffers for its whole life.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let demo = protox::compile(
        [
            "proto/square.proto",
            "proto/grpc/testing/test.proto",
            "proto/grpc/health/v1/health.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(demo)?;
    let control = protox::compile(
        [
            "proto/weft/destination/v1/destination.proto",
            "proto/weft/identity/v1/identity.proto",
            "proto/weft/policy/v1/policy.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .codec_path("crate::codec::SmallCodec")
        .compile_fds(control)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
