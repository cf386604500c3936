//! The proxy's shared vocabulary, which every layer speaks and which
//! imports nothing of the proxy: which way traffic flows ([`Direction`]),
//! what a connection speaks ([`Proto`]), service names ([`Authority`]),
//! where requests go ([`Dest`], [`Target`]), and what is known of an
//! accepted connection ([`ConnMeta`]).

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

/// Which way traffic flows through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the local app to other services.
    Outbound,
    /// From other proxies and clients to the local app.
    Inbound,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// The protocol a connection speaks (and is spoken to its endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Http2,
    Http1,
    Opaque,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Http2 => "h2",
            Proto::Http1 => "http1",
            Proto::Opaque => "opaque",
        }
    }
}

/// A normalised `host:port` service name, lowercase.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Authority(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidAuthority {
    #[error("authority is empty")]
    Empty,
    #[error("authority `{0}` has no port (write it as host:port)")]
    NoPort(String),
    #[error("authority `{0}` is not host:port")]
    Malformed(String),
}

impl Authority {
    /// Parses `host:port` (an IPv6 host in brackets). Without a port,
    /// `default_port` is used if given.
    pub fn parse(s: &str, default_port: Option<u16>) -> Result<Self, InvalidAuthority> {
        let s = s.trim();
        if s.is_empty() {
            return Err(InvalidAuthority::Empty);
        }
        let uri_auth: http::uri::Authority = s.parse().map_err(|_| InvalidAuthority::Malformed(s.to_string()))?;
        if s.contains('@') {
            return Err(InvalidAuthority::Malformed(s.to_string()));
        }
        let host = uri_auth.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(InvalidAuthority::Malformed(s.to_string()));
        }
        let port = match (uri_auth.port_u16(), default_port) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => return Err(InvalidAuthority::NoPort(s.to_string())),
        };
        Ok(Authority(format!("{host}:{port}").into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The authority as a socket address, when its host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.0.parse().ok()
    }
}

impl From<SocketAddr> for Authority {
    fn from(addr: SocketAddr) -> Self {
        Authority(addr.to_string().into())
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a request or connection goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    /// A service known (or to be looked up) in discovery.
    Service(Authority),
    /// One fixed address: the local app (inbound), or an original destination
    /// that is not a service.
    Addr(SocketAddr),
}

/// Where an accepted connection's requests go, decided once when it is
/// accepted (see `inbound.rs` and `outbound.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The connection and every request on it go here.
    Fixed(Dest),
    /// Each request names its own target (`:authority` or `Host`): explicit mode.
    Named,
}

/// What the proxy knows about an accepted connection.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    pub direction: Direction,
    pub peer: SocketAddr,
    pub target: Target,
    pub proto: Proto,
    /// Inbound over mutual TLS: the client proxy's identity (DNS form,
    /// `sa.ns.serviceaccount.identity.<trust domain>`), told to the app in
    /// [`CLIENT_ID_HEADER`].
    pub client_id: Option<Arc<str>>,
}

/// The header that tells the app which mesh identity called it (the name
/// Linkerd uses). Set by the inbound proxy on every request of a mutual
/// TLS connection, and removed from every other inbound request, so that
/// a client cannot claim an identity it did not prove.
pub const CLIENT_ID_HEADER: &str = "l5d-client-id";

/// A shared metric label value (an `Arc<str>`, cheap to clone per request).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Label(pub Arc<str>);

impl prometheus_client::encoding::EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Locks a mutex, recovering the data if another thread panicked holding it:
/// metrics and balancer state stay usable rather than poisoning the proxy.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_normalises() {
        assert_eq!(
            Authority::parse("Square.Demo:50051", None).unwrap().as_str(),
            "square.demo:50051"
        );
        assert_eq!(
            Authority::parse("square.demo", Some(80)).unwrap().as_str(),
            "square.demo:80"
        );
        assert_eq!(Authority::parse("[::1]:80", None).unwrap().as_str(), "[::1]:80");
        assert_eq!(
            Authority::parse("square", None).unwrap_err(),
            InvalidAuthority::NoPort("square".into())
        );
        assert!(Authority::parse("user@host:80", None).is_err());
        assert!(Authority::parse("a b:80", None).is_err());
        assert_eq!(
            Authority::parse("10.0.0.1:80", None).unwrap().socket_addr(),
            Some("10.0.0.1:80".parse().unwrap())
        );
    }
}
