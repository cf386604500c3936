//! weft's load balancer as pure code, with time passed in (nanoseconds from
//! any fixed origin) and never read, so that the proxy and the deterministic
//! simulator run exactly the same code:
//!
//! - [`baseline`]: the typical latency of a route (a gRPC method), shared by
//!   all endpoints of a service;
//! - [`score`]: one endpoint's latency *relative to* that baseline, a
//!   peak-sensitive moving average, and its consecutive failures;
//! - [`load`]: what the picker weighs per endpoint (score, requests awaiting
//!   a response, probes), behind one small lock;
//! - [`accrual`]: failure accrual: an endpoint that keeps failing is
//!   ejected, probed after a growing backoff, never too many at once;
//! - [`budget`]: the retry budget of a service (a share of its requests);
//! - [`pick`]: power of two choices, soft: the cheaper of two draws wins
//!   with a probability that grows with how much cheaper it is;
//! - [`sim`]: a discrete-event simulator of a client, its balancer and N
//!   endpoints (latency, queueing, failures, stalls, long streams, joins)
//!   that runs minutes of traffic in milliseconds.
//!
//! The formula and the reason for each constant are in ARCHITECTURE.md
//! ("How a request is balanced").

pub mod accrual;
pub mod baseline;
pub mod budget;
pub mod load;
pub mod pick;
pub mod score;
pub mod sim;

/// A point in time, in nanoseconds since an origin the caller chose.
pub type Nanos = u64;

pub use accrual::{Accrual, Gate};
pub use baseline::Baseline;
pub use budget::RetryBudget;
pub use load::Load;
pub use pick::{Algorithm, Peer, Picker};
pub use score::Score;
