//! The retry budget of one service: retries may add at most a share of its
//! requests (plus a small floor per second, so that a quiet service can
//! still retry), so that retries never multiply the load of a service that
//! is failing everywhere (a retry storm).
//!
//! A token bucket: each request deposits `ratio` tokens, time deposits
//! `min_per_s` a second, a retry spends one; at most `cap` are kept.

use std::sync::Mutex;

use crate::Nanos;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_s: f64,
    cap: f64,
    state: Mutex<(f64, Nanos)>,
}

impl RetryBudget {
    /// `ratio` retries per request, `min_per_s` retries a second whatever
    /// the rate; the bucket starts full.
    pub fn new(ratio: f64, min_per_s: f64, now: Nanos) -> Self {
        let cap = (min_per_s * 10.0).max(10.0);
        RetryBudget {
            ratio,
            min_per_s,
            cap,
            state: Mutex::new((cap, now)),
        }
    }

    fn refill(&self, st: &mut (f64, Nanos), now: Nanos) {
        let dt = now.saturating_sub(st.1) as f64 / 1e9;
        st.0 = (st.0 + dt * self.min_per_s).min(self.cap);
        st.1 = now.max(st.1);
    }

    /// A request was made.
    pub fn deposit(&self, now: Nanos) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut st, now);
        st.0 = (st.0 + self.ratio).min(self.cap);
    }

    /// Whether one retry may go now (and if so, it is spent).
    pub fn withdraw(&self, now: Nanos) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut st, now);
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_requests_plus_a_floor() {
        let b = RetryBudget::new(0.2, 1.0, 0);
        // The starting bucket (10), then 20 % of 1,000 requests at one instant.
        let mut granted = 0;
        for _ in 0..1000 {
            b.deposit(0);
            if b.withdraw(0) {
                granted += 1;
            }
        }
        assert!((200..=210).contains(&granted), "{granted}");
        // A quiet service: the floor, one a second.
        let b = RetryBudget::new(0.2, 1.0, 0);
        while b.withdraw(0) {}
        assert!(!b.withdraw(500_000_000));
        assert!(b.withdraw(1_000_000_000));
        assert!(!b.withdraw(1_000_000_000));
    }
}
