//! Weft's protobuf APIs, generated at build time from `proto/`.
//!
//! - [`destination`]: the control plane's discovery API (`weft.destination.v1`).
//! - [`square`]: the demo service (`Square`) and its runtime knobs (`SquareControl`).
//! - [`grpc_testing`]: a wire-compatible subset of the gRPC interop `TestService`,
//!   used to check that weft carries every gRPC shape (streaming, status, metadata).
//!
//! With the default `grpc` feature each module has tonic clients and
//! servers; without it, only the messages.

/// The control plane's discovery API, version 1.
pub mod destination {
    include!(concat!(env!("OUT_DIR"), "/weft.destination.v1.rs"));

    /// The gRPC path of `Destination/Get`.
    pub const GET_PATH: &str = "/weft.destination.v1.Destination/Get";
}

/// The square demo service.
pub mod square {
    include!(concat!(env!("OUT_DIR"), "/square.rs"));
}

/// The gRPC interop test service (`grpc.testing`).
pub mod grpc_testing {
    include!(concat!(env!("OUT_DIR"), "/grpc.testing.rs"));
}
