//! Telemetry: what the proxy lets operators see. Prometheus metrics
//! ([`metrics`]: every family, bounded labels, cheap handles for the data
//! path), the admin server ([`admin`]: `/metrics`, `/ready`, `/live`,
//! `/config`, `/balancers`, `/shutdown`), and the snapshot types balancers
//! report their state in. Later: the live request tap.
//!
//! Telemetry imports no part of the data path: the balancers' state
//! reaches admin through a [`Balancers`] function that the app wires in.

pub(crate) mod admin;
pub(crate) mod metrics;

use std::sync::Arc;

use crate::core::Direction;

/// A snapshot of a balancer, for admin.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct BalancerView {
    pub target: String,
    pub protocol: &'static str,
    pub algorithm: String,
    pub discovery: String,
    pub endpoints: Vec<EndpointView>,
}

/// A snapshot of an endpoint's state, for admin and metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct EndpointView {
    pub name: String,
    pub addr: String,
    pub state: &'static str,
    pub last_error: Option<String>,
    /// Latency relative to the routes' typical latency (1.0 = typical).
    pub latency_score: f64,
    /// Latency samples taken in.
    pub samples: u64,
    /// Failures in a row.
    pub failures: u32,
    /// Ejected by failure accrual (probed with single requests).
    pub ejected: bool,
    /// Requests awaiting a response head.
    pub pending: usize,
    pub served: u64,
    pub connects: u64,
}

/// Every balancer of the proxy, by direction, at the time of the call.
pub(crate) type Balancers = Arc<dyn Fn() -> Vec<(Direction, BalancerView)> + Send + Sync>;
