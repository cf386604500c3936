//! Reaching an endpoint: TCP connections with a timeout, and the task that
//! keeps an HTTP/2 endpoint connected, with jittered exponential backoff
//! while it fails.

use std::{sync::Weak, time::Duration};

use tokio::{net::TcpStream, sync::watch, time::Instant};

use super::{ConnState, Endpoint};
use crate::identity::Carries;
use weft_splice::{Io, UpPhase};

/// First reconnect delay; doubles per failure up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection that lived shorter than this counts as a failed attempt for backoff.
const STABLE_AFTER: Duration = Duration::from_secs(1);

impl Endpoint {
    /// Opens a TCP connection to the endpoint (counted when it succeeds).
    pub(super) async fn connect_tcp(&self) -> Result<TcpStream, String> {
        let addr = self.meta.addr;
        let timeout = self.params.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(format!("connect timed out after {timeout:?}")),
            Ok(Err(e)) => return Err(format!("connect failed: {e}")),
            Ok(Ok(s)) => s,
        };
        self.params.sockets.apply(&stream);
        self.connected();
        Ok(stream)
    }

    /// Opens a connection to the endpoint for what it `carries`: mutual TLS
    /// when discovery gave the identity it must prove and this proxy has
    /// one of its own (the endpoint's certificate must name exactly that
    /// identity and chain to this proxy's anchors), else plain TCP.
    pub(super) async fn connect(&self, carries: Carries) -> Result<Io, String> {
        let tcp = self.connect_tcp().await?;
        let (Some(expected), Some(identity)) = (&self.meta.identity, &self.params.identity) else {
            return Ok(Io::Tcp(tcp));
        };
        let result = |r: &'static str| {
            self.params
                .metrics
                .tls_handshakes
                .get_or_create(&crate::telemetry::metrics::TlsLabels {
                    direction: "outbound",
                    result: r,
                })
                .inc();
        };
        let until = Instant::now() + self.params.connect_timeout;
        let Some(tls) = crate::identity::wait_tls(identity, until).await else {
            result("no_certificate");
            return Err(format!(
                "{expected} needs mutual TLS and this proxy has no certificate yet (see /identity)"
            ));
        };
        let name = rustls_pki_types::ServerName::try_from(expected.to_string())
            .map_err(|e| format!("the identity {expected} from discovery is not a name: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(tls.client(carries));
        let timeout = self.params.connect_timeout;
        match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Err(_) => {
                result("timeout");
                Err(format!("TLS handshake timed out after {timeout:?}"))
            }
            Ok(Err(e)) => {
                let why = crate::identity::handshake_failure(&e);
                result(why);
                tracing::info!(endpoint = %self.meta.addr, expected = %expected, reason = why, error = %e, "TLS handshake refused");
                Err(format!("TLS handshake with {expected} failed ({why}): {e}"))
            }
            Ok(Ok(s)) => {
                result("ok");
                Ok(Io::Wrapped {
                    stream: Box::new(s),
                    peer: self.meta.addr,
                })
            }
        }
    }
}

/// Keeps an HTTP/2 connection to the endpoint open until it is retired.
pub(super) async fn drive_h2(endpoint: Weak<Endpoint>, mut retired: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    loop {
        let Some(ep) = endpoint.upgrade() else { return };
        if ep.is_retired() {
            return;
        }
        let attempt = tokio::select! {
            a = ep.connect_h2() => a,
            _ = retired.wait_for(|r| *r) => return,
        };
        let delay = match attempt {
            Ok((conn, mut phase)) => {
                let opened = Instant::now();
                ep.set_state(ConnState::Ready(conn));
                drop(ep);
                // The connection tells us when it stops taking requests: it
                // ended, or it goes away (GOAWAY, stream ids running out) and
                // finishes its streams on its own while a replacement opens.
                // When the endpoint is retired, its sender is dropped and the
                // connection closes once in-flight requests are done.
                let _ = phase.wait_for(|p| *p != UpPhase::Open).await;
                let Some(ep) = endpoint.upgrade() else { return };
                if ep.is_retired() {
                    return;
                }
                if opened.elapsed() >= STABLE_AFTER {
                    failures = 0;
                }
                failures += 1;
                // Reconnect at once after a healthy connection ends; back off
                // if connections keep dying young.
                if failures == 1 {
                    ep.set_state(ConnState::Idle);
                    continue;
                }
                let delay = backoff(failures - 1);
                ep.mark_failed("connection closed soon after opening", delay);
                delay
            }
            Err(e) => {
                failures += 1;
                let delay = backoff(failures);
                tracing::debug!(endpoint = %ep.meta.addr, error = %e, ?delay, "endpoint connect failed");
                ep.mark_failed(&e, delay);
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = retired.wait_for(|r| *r) => return,
        }
    }
}

/// Jittered exponential backoff: for the n-th consecutive failure, a delay in
/// [d/2, d] with d = base × 2^(n-1), capped.
pub(super) fn backoff(n: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let d = exp.min(BACKOFF_MAX);
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= BACKOFF_BASE && backoff(1) >= BACKOFF_BASE / 2);
        assert!(backoff(3) >= BACKOFF_BASE * 2);
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
