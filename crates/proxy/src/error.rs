//! The ways a proxied request can fail, and the one place that turns each
//! into a gRPC status or HTTP status with a message a user can act on.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::StatusCode;

pub(crate) use weft_splice::grpc::code;

use crate::core::Authority;

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("the request names no usable target: {0}")]
    NoTarget(String),
    #[error("no service named {0} is known to discovery")]
    UnknownService(Authority),
    #[error("discovery has no answer for {target} yet: {reason}")]
    DiscoveryPending { target: Authority, reason: Arc<str> },
    #[error("discovery lists no endpoints for {0}")]
    NoEndpoints(Authority),
    #[error("no endpoint of {target} became ready within {waited:?}: {detail}")]
    Unavailable {
        target: Authority,
        waited: Duration,
        detail: String,
    },
    #[error("deadline exceeded (grpc-timeout {0:?})")]
    DeadlineExceeded(Duration),
    #[error("endpoint {name} ({addr}) reset the stream: {reason}")]
    UpstreamReset {
        name: Arc<str>,
        addr: SocketAddr,
        reason: h2::Reason,
    },
    #[error("endpoint {name} ({addr}) failed: {detail}")]
    Upstream {
        name: Arc<str>,
        addr: SocketAddr,
        detail: String,
    },
    #[error("the request could not be sent: {0}")]
    Unsent(String),
    #[error(
        "the request's target {target} is this proxy's own {listener} listener, so it would loop: name a service \
         in :authority or Host (e.g. square.demo:50051), or list {target} as a service in the discovery file"
    )]
    Loop { target: SocketAddr, listener: &'static str },
    #[error("the app is at its limit of {0} concurrent requests (--inbound-max-concurrency); try another replica")]
    Overloaded(usize),
    /// The workload's authorization policy refused the request (which
    /// identity would have been allowed stays in the proxy's log).
    #[error("forbidden by the authorization policy: server {server}: {reason}")]
    Forbidden { server: Arc<str>, reason: &'static str },
}

/// Whose fault a failure is, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Downstream,
    Upstream,
    Discovery,
}

impl ProxyError {
    /// The gRPC status a gRPC client receives.
    pub fn grpc_code(&self) -> u16 {
        match self {
            ProxyError::NoTarget(_) | ProxyError::Loop { .. } => code::INVALID_ARGUMENT,
            ProxyError::UnknownService(_)
            | ProxyError::DiscoveryPending { .. }
            | ProxyError::NoEndpoints(_)
            | ProxyError::Unavailable { .. } => code::UNAVAILABLE,
            ProxyError::DeadlineExceeded(_) => code::DEADLINE_EXCEEDED,
            ProxyError::UpstreamReset { reason, .. } => match *reason {
                h2::Reason::CANCEL => code::CANCELLED,
                // The endpoint's connection broke under the request.
                h2::Reason::CONNECT_ERROR => code::UNAVAILABLE,
                h2::Reason::REFUSED_STREAM => code::UNAVAILABLE,
                h2::Reason::ENHANCE_YOUR_CALM => code::RESOURCE_EXHAUSTED,
                _ => code::INTERNAL,
            },
            ProxyError::Upstream { .. } | ProxyError::Unsent(_) => code::UNAVAILABLE,
            ProxyError::Overloaded(_) => code::RESOURCE_EXHAUSTED,
            ProxyError::Forbidden { .. } => code::PERMISSION_DENIED,
        }
    }

    /// The HTTP status a plain HTTP client receives.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ProxyError::NoTarget(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownService(_)
            | ProxyError::DiscoveryPending { .. }
            | ProxyError::NoEndpoints(_)
            | ProxyError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamReset { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Unsent(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Loop { .. } => StatusCode::LOOP_DETECTED,
            ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// A short label for the `error` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::NoTarget(_) => "no_target",
            ProxyError::UnknownService(_) => "unknown_service",
            ProxyError::DiscoveryPending { .. } => "discovery_pending",
            ProxyError::NoEndpoints(_) => "no_endpoints",
            ProxyError::Unavailable { .. } => "unavailable",
            ProxyError::DeadlineExceeded(_) => "deadline_exceeded",
            ProxyError::UpstreamReset { .. } => "upstream_reset",
            ProxyError::Upstream { .. } => "upstream",
            ProxyError::Unsent(_) => "unsent",
            ProxyError::Loop { .. } => "loop",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::Forbidden { .. } => "forbidden",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoTarget(_)
            | ProxyError::DeadlineExceeded(_)
            | ProxyError::Loop { .. }
            | ProxyError::Forbidden { .. } => Fault::Downstream,
            ProxyError::UnknownService(_) | ProxyError::DiscoveryPending { .. } | ProxyError::NoEndpoints(_) => {
                Fault::Discovery
            }
            ProxyError::Unavailable { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Unsent(_)
            | ProxyError::Overloaded(_) => Fault::Upstream,
        }
    }

    /// Classifies an error from an endpoint's HTTP client.
    pub fn from_upstream(name: &Arc<str>, addr: SocketAddr, err: &hyper::Error) -> Self {
        if let Some(reason) = find_h2_reason(err)
            && reason != h2::Reason::NO_ERROR
        {
            return ProxyError::UpstreamReset {
                name: name.clone(),
                addr,
                reason,
            };
        }
        ProxyError::Upstream {
            name: name.clone(),
            addr,
            detail: chain(err),
        }
    }
}

/// The HTTP/2 reset reason somewhere in an error's cause chain.
pub(crate) fn find_h2_reason(err: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        cur = e.source();
    }
    None
}

/// An error and its causes on one line.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let next = e.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let t = Authority::parse("svc:80", None).unwrap();
        let e = ProxyError::NoEndpoints(t.clone());
        assert_eq!(e.grpc_code(), code::UNAVAILABLE);
        assert_eq!(e.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.fault(), Fault::Discovery);
        assert!(e.to_string().contains("svc:80"));
        let e = ProxyError::DeadlineExceeded(Duration::from_millis(50));
        assert_eq!(e.grpc_code(), code::DEADLINE_EXCEEDED);
        assert_eq!(e.http_status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
