//! The allowance of control frames a client may send (RST_STREAM, PING,
//! SETTINGS, PRIORITY, empty DATA, ...): frames that cost the proxy work
//! but ask for none a client pays for. Spent by each, refilled with time and
//! by answered requests; a client that runs out is sent away.

use tokio::time::Instant;

use super::Down;
use crate::{ConnError, Dispatch, frame::code};

/// The allowance of control frames: a token bucket.
pub(super) struct Allowance {
    tokens: f64,
    burst: f64,
    refilled: Instant,
}

impl Allowance {
    pub(super) fn new(burst: u32) -> Self {
        Allowance {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            refilled: Instant::now(),
        }
    }

    /// Spends one control frame; `false` when none is left.
    fn spend(&mut self) -> bool {
        let now = Instant::now();
        let rate = self.burst / 10.0;
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(self.burst);
        self.refilled = now;
        self.tokens -= 1.0;
        self.tokens >= 0.0
    }

    /// A request was answered: useful work earns control frames back.
    pub(super) fn earn(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }
}

impl<D: Dispatch> Down<D> {
    /// Spends one of the client's control frames, or ends the connection.
    pub(super) fn spend_control(&mut self) -> Result<(), ConnError> {
        if self.allowance.spend() {
            Ok(())
        } else {
            Err(ConnError::new(
                code::ENHANCE_YOUR_CALM,
                "too many control frames (resets, PINGs, SETTINGS, PRIORITY, empty DATA) for the requests answered",
            )
            .labelled("http2_control_flood"))
        }
    }
}
