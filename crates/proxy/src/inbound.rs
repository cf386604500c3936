//! The inbound side: connections from other proxies and clients, to the
//! local app. Where a connection goes is decided once, when it is accepted:
//! the app's configured address (`--inbound-forward`), else, for a
//! connection iptables redirected, the app on localhost at the port the
//! client dialled. Mesh identity and authorization will be checked on this
//! side.

use std::net::{Ipv4Addr, SocketAddr};

use crate::core::{Dest, Target};

/// How the inbound listener finds the local app.
#[derive(Clone, Debug)]
pub(crate) struct Inbound {
    /// The app's address in explicit mode.
    pub app: Option<SocketAddr>,
}

impl Inbound {
    /// Where a connection with this original destination goes.
    pub(crate) fn target(&self, orig_dst: Option<SocketAddr>) -> Target {
        match (self.app, orig_dst) {
            (Some(app), _) => Target::Fixed(Dest::Addr(app)),
            // Transparent: the app listens on localhost at the port the
            // client dialled.
            (None, Some(dst)) => Target::Fixed(Dest::Addr(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst.port()))),
            (None, None) => Target::Named,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_is_the_configured_address_or_localhost_at_the_dialled_port() {
        let app: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let dialled: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let explicit = Inbound { app: Some(app) };
        assert_eq!(explicit.target(Some(dialled)), Target::Fixed(Dest::Addr(app)));
        assert_eq!(explicit.target(None), Target::Fixed(Dest::Addr(app)));
        let transparent = Inbound { app: None };
        assert_eq!(
            transparent.target(Some(dialled)),
            Target::Fixed(Dest::Addr("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(transparent.target(None), Target::Named);
    }
}
