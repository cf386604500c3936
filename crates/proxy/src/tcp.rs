//! Opaque TCP: bytes forwarded unchanged in both directions, each side's
//! half-close passed on, until both sides are done. The connection is
//! balanced once, over its destination's endpoints.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};

use crate::{
    core::{ConnMeta, Proto, Target},
    route::Router,
    telemetry::metrics::{Metrics, TcpLabels},
};

/// Endpoints an opaque connection tries before it gives up.
const MAX_CONNECT_ATTEMPTS: u32 = 3;

/// Forwards an opaque connection to its destination.
pub(crate) async fn forward<C>(mut client: C, conn: &ConnMeta, router: &Router, metrics: &Metrics, fail_fast: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let direction = conn.direction.label();
    let Target::Fixed(dest) = &conn.target else {
        // Explicit mode: nothing but HTTP names its target.
        tracing::debug!(peer = %conn.peer, "closing a non-HTTP connection that has no original destination");
        metrics.connection_error(direction, "no_destination");
        return;
    };
    let balancer = router.balancer(dest, Proto::Opaque);
    let until = Instant::now() + fail_fast;
    // An endpoint that cannot be reached goes into backoff, so the next
    // pick is another one: a few tries before the client is let down.
    let mut attempts = 0;
    let (in_flight, mut upstream) = loop {
        attempts += 1;
        let in_flight = match balancer.pick(until, None).await {
            Ok(e) => e,
            Err(e) => {
                tracing::info!(peer = %conn.peer, error = %e, "opaque connection refused");
                metrics.connection_error(direction, "no_endpoint");
                return;
            }
        };
        let connected = in_flight.endpoint().connect_opaque().await;
        if connected.is_err() {
            in_flight.failed();
        }
        match connected {
            Ok(s) => break (in_flight, s),
            Err(e) if attempts < MAX_CONNECT_ATTEMPTS => {
                tracing::debug!(peer = %conn.peer, error = %e, "opaque connection failed; trying another endpoint");
            }
            Err(e) => {
                tracing::info!(peer = %conn.peer, error = %e, "opaque connection failed");
                metrics.connection_error(direction, "connect_failed");
                return;
            }
        }
    };
    let labels = TcpLabels {
        direction,
        target: Arc::clone(&balancer.label).into(),
    };
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((from_client, to_client)) => {
            metrics.opaque_bytes_in.get_or_create(&labels).inc_by(from_client);
            metrics.opaque_bytes_out.get_or_create(&labels).inc_by(to_client);
        }
        Err(e) => {
            tracing::debug!(peer = %conn.peer, error = %e, "opaque connection ended with an error");
            metrics.connection_error(direction, "opaque_io");
        }
    }
    drop(in_flight);
}
