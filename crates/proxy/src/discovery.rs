//! Discovery: which endpoints serve a service.
//!
//! The proxy asks a [`Discover`] source for a `watch` of each target's
//! [`Resolution`], and which service (if any) owns a virtual address.
//! Sources: the mesh file ([`file::FileDiscovery`]) on its own, or the
//! control plane ([`control::ControlDiscovery`]), behind the same trait.

pub(crate) mod control;
pub(crate) mod file;

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::watch;

use crate::core::Authority;

/// One endpoint of a service, as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    pub addr: SocketAddr,
    /// A human name (pod or replica); defaults to the address.
    pub name: Arc<str>,
}

/// What discovery currently says about one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// No answer yet; the reason says why (e.g. the file is missing).
    Pending(Arc<str>),
    /// Discovery has no such service.
    Unknown,
    /// The service's endpoints (possibly none).
    Endpoints(Arc<[EndpointMeta]>),
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
