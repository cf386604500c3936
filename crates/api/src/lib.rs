//! Weft's protobuf APIs, generated at build time from `proto/`.
//!
//! - [`square`]: the demo service (`Square`) and its runtime knobs (`SquareControl`).
//! - [`grpc_testing`]: a wire-compatible subset of the gRPC interop `TestService`,
//!   used to check that weft carries every gRPC shape (streaming, status, metadata).

/// The square demo service.
pub mod square {
    tonic::include_proto!("square");
}

/// The gRPC interop test service (`grpc.testing`).
pub mod grpc_testing {
    tonic::include_proto!("grpc.testing");
}
