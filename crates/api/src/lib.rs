//! Weft's protobuf APIs, generated at build time from `proto/`.
//!
//! - [`destination`]: the control plane's discovery API (`weft.destination.v1`).
//! - [`identity`]: its identity API (`weft.identity.v1`): certificates for CSRs.
//! - [`policy`]: its policy API (`weft.policy.v1`): each workload's authorization policy.
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

/// The control plane's policy API, version 1.
pub mod policy {
    include!(concat!(env!("OUT_DIR"), "/weft.policy.v1.rs"));

    /// The gRPC path of `Policy/Watch`.
    pub const WATCH_PATH: &str = "/weft.policy.v1.Policy/Watch";
}

/// The control plane's identity API, version 1.
pub mod identity {
    include!(concat!(env!("OUT_DIR"), "/weft.identity.v1.rs"));

    /// The gRPC path of `Identity/Certify`.
    pub const CERTIFY_PATH: &str = "/weft.identity.v1.Identity/Certify";
    /// The gRPC path of `Identity/Watch`.
    pub const WATCH_PATH: &str = "/weft.identity.v1.Identity/Watch";
}

/// The square demo service.
pub mod square {
    include!(concat!(env!("OUT_DIR"), "/square.rs"));
}

/// The standard gRPC health checking protocol (`grpc.health.v1`).
pub mod grpc_health {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));

    /// The gRPC paths of `Health/Watch` and `Health/Check`.
    pub const WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";
    pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
}

/// The gRPC interop test service (`grpc.testing`).
pub mod grpc_testing {
    include!(concat!(env!("OUT_DIR"), "/grpc.testing.rs"));
}

/// The codec of weft's own APIs.
#[cfg(feature = "grpc")]
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstDecoder, ProstEncoder};

    /// Protobuf (prost) with small starting buffers. A control-plane watch
    /// is a stream that lives as long as the proxy, and tonic's default
    /// 8 KiB per direction per stream made 10,000 watches cost ~100 MiB;
    /// the buffers still grow to fit any message.
    #[derive(Debug, Clone)]
    pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for SmallCodec<T, U> {
        fn default() -> Self {
            SmallCodec(PhantomData)
        }
    }

    /// Starting buffer size; what is sent past it at once before yielding.
    const SETTINGS: (usize, usize) = (256, 32 * 1024);

    impl<T, U> Codec for SmallCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstEncoder::new(BufferSettings::new(SETTINGS.0, SETTINGS.1))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder::new(BufferSettings::new(SETTINGS.0, SETTINGS.1))
        }
    }
}
