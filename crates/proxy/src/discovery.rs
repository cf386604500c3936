//! Discovery: which endpoints serve a service.
//!
//! The proxy asks a [`Discover`] source for a `watch` of each target's
//! [`Resolution`], and which service (if any) owns a virtual address.
//! Sources: the mesh file ([`file::FileDiscovery`]) on its own, or the
//! control plane ([`control::ControlDiscovery`]), behind the same trait.

pub(crate) mod control;
pub(crate) mod file;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::core::Authority;

/// One endpoint of a service, as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    pub addr: SocketAddr,
    /// A human name (pod or replica); defaults to the address.
    pub name: Arc<str>,
    /// The identity it must prove (the DNS form,
    /// `<sa>.<ns>.serviceaccount.identity.<trust-domain>`): when set, and
    /// this proxy has a certificate, connections to it are mutual TLS.
    pub identity: Option<Arc<str>>,
}

/// What discovery currently says about one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// No answer yet; the reason says why (e.g. the file is missing).
    Pending(Arc<str>),
    /// Discovery has no such service.
    Unknown,
    /// The service's endpoints (possibly none), and its routes.
    Endpoints(Arc<[EndpointMeta]>, Routes),
}

/// A service's routes: retries and timeout per request path, the first
/// that matches applies (none: the proxy's defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes(pub Arc<[RoutePolicy]>);

/// One route of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Empty: every request; ending in `/`: a prefix; else the exact path.
    pub path: Arc<str>,
    /// The retried gRPC codes (a bit per code), when the route says.
    pub retry_codes: Option<u32>,
    /// When the request fails with DEADLINE_EXCEEDED, when the route says.
    pub timeout: Option<Duration>,
}

impl RoutePolicy {
    fn matches(&self, path: &str) -> bool {
        self.path.is_empty()
            || if self.path.ends_with('/') {
                path.starts_with(&*self.path)
            } else {
                path == &*self.path
            }
    }
}

impl Routes {
    /// The route a request for `path` takes, if any.
    pub fn find(&self, path: &str) -> Option<&RoutePolicy> {
        self.0.iter().find(|r| r.matches(path))
    }

    /// A mesh file's routes.
    pub fn from_mesh(routes: &[weft_mesh::Route]) -> Self {
        Routes(
            routes
                .iter()
                .map(|r| RoutePolicy {
                    path: r.path.as_ref().map_or("", |p| p.0.as_str()).into(),
                    retry_codes: r
                        .retry_codes
                        .as_ref()
                        .map(|codes| codes.iter().fold(0u32, |m, c| m | (1 << c.0))),
                    timeout: r.timeout.map(|t| t.0),
                })
                .collect(),
        )
    }
}

/// A source of endpoints.
pub trait Discover: Send + Sync + 'static {
    /// Watches what discovery says about `target`. The watch ends when the
    /// last receiver is dropped.
    fn resolve(&self, target: &Authority) -> watch::Receiver<Resolution>;

    /// The service whose virtual address is `addr`, if any (transparent mode).
    fn service_at(&self, addr: SocketAddr) -> Option<Authority>;

    /// Whether discovery lists a service by this name now (an `IP:port`
    /// name then means the service, not the address).
    fn knows(&self, target: &Authority) -> bool;

    /// A line or two on the source's health for `/ready` (e.g. whether the
    /// control plane is reachable), if it has any.
    fn status(&self) -> Option<String> {
        None
    }
}

/// No discovery at all: every target is unknown.
#[derive(Debug, Default)]
pub struct NoDiscovery;

impl Discover for NoDiscovery {
    fn resolve(&self, _: &Authority) -> watch::Receiver<Resolution> {
        watch::channel(Resolution::Unknown).1
    }
    fn service_at(&self, _: SocketAddr) -> Option<Authority> {
        None
    }
    fn knows(&self, _: &Authority) -> bool {
        false
    }
}
