//! This host's own addresses (in the proxy's network namespace, so a pod's),
//! read from /proc: where the proxy itself can be reached, so that a
//! request or connection aimed back at one of its listeners is recognised
//! as a loop, and an inbound connection's original destination can be
//! checked to be this host.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::core::lock;

/// How often a lookup that misses may read /proc again (addresses change
/// rarely: a laptop's Wi-Fi, never a pod's).
const REREAD: Duration = Duration::from_secs(1);

/// The host's addresses, re-read (at most every second) when a lookup misses.
#[derive(Clone, Debug)]
pub(crate) struct LocalAddrs(Arc<Mutex<Known>>);

#[derive(Debug)]
struct Known {
    ips: BTreeSet<IpAddr>,
    read_at: Instant,
}

impl LocalAddrs {
    /// Reads the addresses now.
    pub(crate) fn read() -> Self {
        LocalAddrs(Arc::new(Mutex::new(Known {
            ips: read_ips(),
            read_at: Instant::now(),
        })))
    }

    /// Whether `ip` is one of this host's addresses (loopback included).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_loopback() {
            return true;
        }
        let mut known = lock(&self.0);
        if known.ips.contains(&ip) {
            return true;
        }
        if known.read_at.elapsed() >= REREAD {
            known.ips = read_ips();
            known.read_at = Instant::now();
            return known.ips.contains(&ip);
        }
        false
    }
}

/// Where this proxy listens, and the host it listens on: a destination that
/// reaches one of its own listeners is a loop.
#[derive(Clone, Debug)]
pub(crate) struct OwnAddrs {
    listeners: Vec<(&'static str, SocketAddr)>,
    local: LocalAddrs,
}

impl OwnAddrs {
    pub(crate) fn new(listeners: Vec<(&'static str, SocketAddr)>, local: LocalAddrs) -> Self {
        OwnAddrs { listeners, local }
    }

    /// The host's addresses.
    pub(crate) fn local(&self) -> &LocalAddrs {
        &self.local
    }

    /// Which of the proxy's listeners a connection to `addr` would reach.
    pub(crate) fn listener_at(&self, addr: SocketAddr) -> Option<&'static str> {
        let reaches = |bound: SocketAddr| {
            if bound.port() != addr.port() {
                return false;
            }
            // Connecting to 0.0.0.0 (or ::) reaches the host itself.
            let ip = if addr.ip().is_unspecified() {
                IpAddr::from(Ipv6Addr::LOCALHOST)
            } else {
                addr.ip()
            };
            if bound.ip().is_unspecified() {
                self.local.contains(ip)
            } else {
                bound.ip() == ip || (ip.is_loopback() && bound.ip().is_loopback() && addr.ip().is_unspecified())
            }
        };
        self.listeners.iter().find(|(_, b)| reaches(*b)).map(|(role, _)| *role)
    }
}

/// The addresses /proc lists as local: IPv4 from the routing table's LOCAL
/// entries, IPv6 from the interfaces' addresses.
fn read_ips() -> BTreeSet<IpAddr> {
    let mut ips = BTreeSet::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        ips.extend(parse_fib_trie(&trie));
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        ips.extend(parse_if_inet6(&v6));
    }
    ips
}

/// `|-- 10.0.0.5` followed by `/32 host LOCAL` names a local address.
fn parse_fib_trie(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<IpAddr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.parse().ok();
        } else if line.ends_with("host LOCAL")
            && let Some(ip) = last
        {
            out.push(ip);
        }
    }
    out
}

/// The first column of each line: 32 hex digits.
fn parse_if_inet6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            let n = u128::from_str_radix(hex, 16).ok()?;
            Some(IpAddr::from(Ipv6Addr::from(n)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_formats_are_read() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n           |-- 127.0.0.1\n              /32 host LOCAL\n           |-- 192.0.2.0\n              /24 link UNICAST\n           |-- 192.0.2.2\n              /32 host LOCAL\n";
        assert_eq!(
            parse_fib_trie(trie),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap(), "192.0.2.2".parse().unwrap()]
        );
        let v6 = "fd000000000000000000000000000002 04 40 00 82     eth0\n00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(
            parse_if_inet6(v6),
            vec!["fd00::2".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]
        );
    }

    #[test]
    fn a_destination_that_reaches_a_listener_is_recognised() {
        let local = LocalAddrs::read();
        let own = OwnAddrs::new(
            vec![
                ("outbound", "127.0.0.1:4140".parse().unwrap()),
                ("admin", "0.0.0.0:4191".parse().unwrap()),
            ],
            local,
        );
        let at = |s: &str| own.listener_at(s.parse().unwrap());
        assert_eq!(at("127.0.0.1:4140"), Some("outbound"));
        assert_eq!(at("0.0.0.0:4140"), Some("outbound"), "0.0.0.0 is the host itself");
        assert_eq!(at("127.0.0.2:4140"), None, "bound to 127.0.0.1 only");
        assert_eq!(at("127.0.0.1:4191"), Some("admin"));
        assert_eq!(at("[::1]:4191"), Some("admin"));
        assert_eq!(at("127.0.0.1:4192"), None);
        assert_eq!(at("203.0.113.9:4191"), None, "another host's admin");
    }
}
