//! weft-proxy: a transparent sidecar that balances every HTTP/2, gRPC and
//! HTTP/1.1 request across a service's endpoints.
//!
//! A request's way through, top to bottom (each layer imports only the
//! layers below it; ARCHITECTURE.md draws the map):
//!
//! ```text
//!  app          wires the parts, binds listeners, drains on shutdown
//!  server       accept → where it goes (inbound | outbound) → what it speaks (transport) → engine
//!  transport    original destination, protocol detection, replayed prefix (later: TLS)
//!  inbound, outbound   who the connection's target is, decided once
//!  http         the request path, the same for both HTTP engines:
//!               open (route, authorize inbound) → pick → send → responded/finish
//!               serve_splice (HTTP/2: the weft-splice engine) | serve_hyper (HTTP/1.1, --h2-engine hyper)
//!  policy       inbound authorization: the workload's policy, watched from the control plane
//!  tcp          opaque forwarding, balanced per connection
//!  route        destination → balancer, created on first use, evicted when idle
//!  balance      endpoint set from discovery; P2C over peak-EWMA load
//!  endpoint     connections to one endpoint (HTTP/2, HTTP/1.1 pool, TCP)
//!  discovery    where endpoints come from (the mesh file; later the control plane)
//!  telemetry    metrics and the admin server
//!  core, error, config, drain   vocabulary, failures, flags, shutdown
//! ```

mod app;
mod balance;
pub mod config;
mod core;
mod discovery;
mod drain;
mod endpoint;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod grpc_client;
mod health;
mod http;
pub mod identity;
mod inbound;
mod outbound;
mod policy;
mod route;
mod server;
mod tcp;
mod telemetry;
mod transport;

pub use app::{BindError, Listeners, Proxy};
pub use config::Config;
