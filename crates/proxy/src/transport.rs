//! Transport: what a listener learns of a connection before any request is
//! read. Whether it may be held at all ([`Admission`]: connections in all
//! and per client), its original destination ([`original_dst`], when iptables
//! redirected it), then its protocol by a bounded first read ([`detect`]),
//! whose bytes are replayed in front of the stream ([`PrefixedIo`]). Mesh
//! TLS will be terminated here, between the two.

mod admit;
pub(crate) mod detect;
mod local;
mod orig_dst;
mod prefixed;

use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

pub(crate) use admit::{Admission, Admitted};
pub(crate) use local::{LocalAddrs, OwnAddrs};
pub(crate) use orig_dst::original_dst;
pub(crate) use prefixed::PrefixedIo;

use crate::{config::PortSet, core::Proto};
use detect::Detected;

/// The kernel's timers on a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SocketOptions {
    /// TCP_USER_TIMEOUT: unacknowledged data older than this drops the connection.
    pub user_timeout: Option<Duration>,
    /// TCP keepalive probes after this much silence (every third of it, three times).
    pub keepalive: Option<Duration>,
}

impl SocketOptions {
    pub(crate) fn from_config(config: &crate::config::Config) -> Self {
        SocketOptions {
            user_timeout: config.tcp_user_timeout.0,
            keepalive: config.keepalive_interval.0,
        }
    }

    /// Sets them on `stream` (with TCP_NODELAY); a failure is logged, not fatal.
    pub(crate) fn apply(&self, stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
        let sock = socket2::SockRef::from(stream);
        if let Some(t) = self.user_timeout
            && let Err(e) = sock.set_tcp_user_timeout(Some(t))
        {
            tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
        }
        if let Some(t) = self.keepalive {
            let ka = socket2::TcpKeepalive::new()
                .with_time(t)
                .with_interval((t / 3).max(Duration::from_secs(1)))
                .with_retries(3);
            if let Err(e) = sock.set_tcp_keepalive(&ka) {
                tracing::debug!(error = %e, "cannot set TCP keepalive");
            }
        }
    }
}

/// How a listener tells protocols apart.
#[derive(Clone, Debug)]
pub(crate) struct DetectParams {
    /// How long to wait for a client's first bytes.
    pub timeout: Duration,
    /// Destination ports forwarded as opaque TCP without detection.
    pub opaque_ports: PortSet,
}

/// What detection made of a connection.
#[derive(Debug)]
pub(crate) struct Detection {
    /// The protocol, or `None` when the connection closed (or failed)
    /// before anything could be forwarded.
    pub proto: Option<Proto>,
    /// The `weft_detect_total` outcome label.
    pub outcome: &'static str,
    /// The bytes read, to be replayed in front of the stream.
    pub prefix: BytesMut,
}

/// Decides a connection's protocol: opaque at once when its destination
/// `port` is marked opaque, else by reading its first bytes.
pub(crate) async fn detect_protocol<T: tokio::io::AsyncRead + Unpin>(
    stream: &mut T,
    port: Option<u16>,
    params: &DetectParams,
) -> Detection {
    let mut prefix = BytesMut::new();
    if port.is_some_and(|p| params.opaque_ports.contains(p)) {
        return Detection {
            proto: Some(Proto::Opaque),
            outcome: "opaque_port",
            prefix,
        };
    }
    let detected = detect::detect(stream, &mut prefix, params.timeout).await;
    let (proto, outcome) = match detected {
        Ok(d @ Detected::Http2) => (Some(Proto::Http2), d.label()),
        Ok(d @ Detected::Http1) => (Some(Proto::Http1), d.label()),
        Ok(d @ Detected::Opaque(_)) => (Some(Proto::Opaque), d.label()),
        Ok(d @ Detected::Closed(_)) => (None, d.label()),
        Err(e) => {
            tracing::debug!(error = %e, "read failed during protocol detection");
            (None, "error")
        }
    };
    Detection { proto, outcome, prefix }
}
