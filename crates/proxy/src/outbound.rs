//! The outbound side: connections from the local app to other services.
//! Where a connection goes is decided once, when it is accepted: a
//! connection iptables redirected goes to its original destination (a
//! service, when discovery lists that address as one of a service's
//! virtual IPs); one the app dialled explicitly names a target in each
//! request (see [`crate::route::Router::dest_for_authority`]).

use std::{net::SocketAddr, sync::Arc};

use crate::{core::Target, route::Router};

/// How the outbound listener finds where connections go.
pub(crate) struct Outbound {
    pub router: Arc<Router>,
}

impl Outbound {
    /// Where a connection with this original destination goes.
    pub(crate) fn target(&self, orig_dst: Option<SocketAddr>) -> Target {
        match orig_dst {
            Some(dst) => Target::Fixed(self.router.dest_at(dst)),
            None => Target::Named,
        }
    }
}
