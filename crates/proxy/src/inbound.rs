//! The inbound side: connections from other proxies and clients, to the
//! local app, and nowhere else. Where a connection goes is decided once,
//! when it is accepted: the app's configured address (`--inbound-forward`),
//! else, for a connection iptables redirected, its original destination,
//! which must be this host (and not one of the proxy's own listeners). A
//! connection with neither is refused: an inbound listener is no relay.
//! Mesh identity (per connection) will be checked on this side.

use std::net::SocketAddr;

use crate::{
    core::{Dest, Target},
    transport::OwnAddrs,
};

/// How the inbound listener finds the local app.
#[derive(Clone, Debug)]
pub(crate) struct Inbound {
    /// The app's address in explicit mode.
    pub app: Option<SocketAddr>,
    /// The proxy's own listeners and this host's addresses.
    pub own: OwnAddrs,
}

impl Inbound {
    /// Where a connection with this original destination goes, or why it
    /// goes nowhere (a metric label).
    pub(crate) fn target(&self, orig_dst: Option<SocketAddr>) -> Result<Target, &'static str> {
        match (self.app, orig_dst) {
            (Some(app), _) => Ok(Target::Fixed(Dest::Addr(app))),
            (None, Some(dst)) if self.own.listener_at(dst).is_some() => Err("loop"),
            // Redirected here, so addressed to this host: anything else was
            // routed to the pod on purpose, to be relayed.
            (None, Some(dst)) if !self.own.local().contains(dst.ip()) => Err("not_local"),
            (None, Some(dst)) => Ok(Target::Fixed(Dest::Addr(dst))),
            (None, None) => Err("no_destination"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::LocalAddrs;

    #[test]
    fn the_app_is_the_configured_address_or_this_host_at_the_dialled_address() {
        let own = OwnAddrs::new(vec![("inbound", "0.0.0.0:4143".parse().unwrap())], LocalAddrs::read());
        let app: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let dialled: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let explicit = Inbound {
            app: Some(app),
            own: own.clone(),
        };
        assert_eq!(explicit.target(Some(dialled)), Ok(Target::Fixed(Dest::Addr(app))));
        assert_eq!(explicit.target(None), Ok(Target::Fixed(Dest::Addr(app))));
        let transparent = Inbound { app: None, own };
        assert_eq!(
            transparent.target(Some(dialled)),
            Ok(Target::Fixed(Dest::Addr(dialled)))
        );
        assert_eq!(transparent.target(None), Err("no_destination"), "no relay");
        assert_eq!(transparent.target(Some("127.0.0.1:4143".parse().unwrap())), Err("loop"));
        assert_eq!(
            transparent.target(Some("169.254.169.254:80".parse().unwrap())),
            Err("not_local"),
            "an address of another host"
        );
    }
}
