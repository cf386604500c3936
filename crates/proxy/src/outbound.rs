//! The outbound side: connections from the local app to other services.
//! Where a connection goes is decided once, when it is accepted: a
//! connection iptables redirected goes to its original destination (a
//! service, when discovery lists that address as one of a service's
//! virtual IPs); one the app dialled explicitly names a target in each
//! request (see [`crate::route::Router::dest_for_authority`]). Neither may
//! be one of the proxy's own listeners: that is a loop.

use std::{net::SocketAddr, sync::Arc};

use crate::{
    core::{Dest, Target},
    route::Router,
};

/// How the outbound listener finds where connections go.
pub(crate) struct Outbound {
    pub router: Arc<Router>,
}

impl Outbound {
    /// Where a connection with this original destination goes, or why it
    /// goes nowhere (a metric label).
    pub(crate) fn target(&self, orig_dst: Option<SocketAddr>) -> Result<Target, &'static str> {
        match orig_dst {
            Some(dst) => match self.router.dest_at(dst) {
                Dest::Addr(addr) if self.router.own_listener(addr).is_some() => Err("loop"),
                dest => Ok(Target::Fixed(dest)),
            },
            None => Ok(Target::Named),
        }
    }
}
