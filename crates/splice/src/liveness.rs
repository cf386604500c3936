//! A connection's clocks: keepalive PINGs (a peer that vanished without a
//! word is found out and dropped), the idle timeout (a client connection
//! with no stream for that long is sent away politely), and the time a
//! header block may take to arrive whole (a block dribbled in CONTINUATION
//! frames does not hold a connection forever).
//!
//! One timer per connection, checked every half of the shortest of these
//! durations; between checks the hot path only counts frames.

use std::{pin::Pin, task::Context, time::Duration};

use tokio::time::{Instant, Sleep};

use crate::{ConnError, frame::code, wire::Wire};

/// The timeouts of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// PING the peer after this long without a frame from it (`None`: never).
    pub keepalive_interval: Option<Duration>,
    /// Close the connection when nothing arrives this long after a PING.
    pub keepalive_timeout: Duration,
    /// Send a client connection away (GOAWAY NO_ERROR) after this long
    /// without an open stream (`None`: never).
    pub idle: Option<Duration>,
    /// How long a header block (HEADERS and its CONTINUATION frames) may
    /// take to arrive whole.
    pub header: Duration,
}

/// What a check asks of the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Fine,
    /// No stream for the idle timeout: send GOAWAY(NO_ERROR), finish.
    Idle,
}

pub(crate) struct Liveness {
    t: Timeouts,
    tick: Duration,
    timer: Pin<Box<Sleep>>,
    /// `Wire::frames_in` at the last check, and when it last changed.
    frames_seen: u64,
    heard_at: Instant,
    ping_sent: Option<Instant>,
    idle_since: Option<Instant>,
    /// The newest stream id at the last check: a stream opened (and maybe
    /// finished) between two checks is use, even if none is open at either.
    streams_seen: u32,
    partial_since: Option<Instant>,
}

/// The payload of our keepalive PINGs.
const PING: [u8; 8] = *b"weft-hb!";

impl Liveness {
    pub(crate) fn new(t: Timeouts) -> Self {
        let shortest = [t.keepalive_interval, t.idle, Some(t.header)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(t.header);
        let tick = (shortest / 2).max(Duration::from_millis(50));
        let now = Instant::now();
        Liveness {
            t,
            tick,
            timer: Box::pin(tokio::time::sleep_until(now + tick)),
            frames_seen: 0,
            heard_at: now,
            ping_sent: None,
            idle_since: None,
            streams_seen: 0,
            partial_since: None,
        }
    }

    /// Checks the clocks when the timer fires: `Ready` with what to do,
    /// or an error that ends the connection. `streams`: whether a stream is
    /// open now, and the newest stream id so far.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        wire: &mut Wire,
        streams: (bool, u32),
    ) -> Option<Result<Verdict, ConnError>> {
        if self.timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        let now = Instant::now();
        self.timer.as_mut().reset(now + self.tick);
        Some(self.check(now, wire, streams))
    }

    fn check(&mut self, now: Instant, wire: &mut Wire, streams: (bool, u32)) -> Result<Verdict, ConnError> {
        if wire.frames_in != self.frames_seen {
            self.frames_seen = wire.frames_in;
            self.heard_at = now;
            self.ping_sent = None;
        }
        if let Some(interval) = self.t.keepalive_interval {
            match self.ping_sent {
                Some(sent) if now.duration_since(sent) >= self.t.keepalive_timeout => {
                    return Err(ConnError::new(
                        code::NO_ERROR,
                        format!("no answer to a keepalive PING in {:?}", self.t.keepalive_timeout),
                    )
                    .labelled("keepalive_timeout"));
                }
                None if now.duration_since(self.heard_at) >= interval => {
                    wire.ping(PING);
                    self.ping_sent = Some(now);
                }
                _ => {}
            }
        }
        match (&wire.partial, self.partial_since) {
            (Some(_), None) => self.partial_since = Some(now),
            (Some(_), Some(since)) if now.duration_since(since) >= self.t.header => {
                return Err(ConnError::new(
                    code::ENHANCE_YOUR_CALM,
                    format!("a header block took longer than {:?} to arrive", self.t.header),
                )
                .labelled("http2_header_timeout"));
            }
            (None, _) => self.partial_since = None,
            _ => {}
        }
        if let Some(idle) = self.t.idle {
            let (open, newest) = streams;
            if open || newest != self.streams_seen {
                self.streams_seen = newest;
                self.idle_since = None;
            } else if now.duration_since(*self.idle_since.get_or_insert(now)) >= idle {
                return Ok(Verdict::Idle);
            }
        }
        Ok(Verdict::Fine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(20),
            idle: Some(Duration::from_secs(1)),
            header: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_connection_used_between_checks_is_not_idle() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let Ok(rt) = rt else { panic!("runtime") };
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let mut wire = Wire::new(tcp.into(), bytes::BytesMut::new(), false, &[], 65_536);
            let mut l = Liveness::new(timeouts());
            let t0 = Instant::now();
            // Short calls, none open at any check, a new one each time.
            for i in 0..10u32 {
                let at = t0 + Duration::from_millis(500) * i;
                assert_eq!(
                    l.check(at, &mut wire, (false, 2 * i + 1)).ok(),
                    Some(Verdict::Fine),
                    "check {i}"
                );
            }
            // Then nothing: idle after the timeout.
            let last = t0 + Duration::from_millis(500) * 9;
            assert_eq!(
                l.check(last + Duration::from_millis(500), &mut wire, (false, 19)).ok(),
                Some(Verdict::Fine)
            );
            assert_eq!(
                l.check(last + Duration::from_millis(1500), &mut wire, (false, 19)).ok(),
                Some(Verdict::Idle)
            );
        });
    }
}
