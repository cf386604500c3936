//! Graceful drain: one [`Signal`] tells every [`Watch`] to wind down, then
//! waits until all of them are gone (or a deadline passes).
//!
//! Each accepted connection holds a `Watch`. On drain it stops taking new work
//! (HTTP/2 sends GOAWAY, HTTP/1.1 closes after the current response) and drops
//! its `Watch` once in-flight requests have finished.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The sending half: starts a drain and waits for it to finish.
#[derive(Debug)]
pub struct Signal {
    tx: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
}

/// The receiving half, held by everything that must finish before shutdown.
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    // Never sent on: `Signal` learns that every `Watch` is gone when the
    // channel closes.
    _alive: mpsc::Sender<()>,
}

/// Creates a connected signal/watch pair.
pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    let (alive, done) = mpsc::channel(1);
    (Signal { tx, done }, Watch { rx, _alive: alive })
}

impl Signal {
    /// Tells every watch to drain and waits until all are dropped or `deadline`
    /// passes. Returns `true` when everything finished in time.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        let _ = self.tx.send(true);
        tokio::time::timeout(deadline, self.done.recv()).await.is_ok()
    }
}

impl Watch {
    /// Completes once a drain has started.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // An error means the signal was dropped without draining: treat it
        // as a drain too, so nothing waits forever.
        let _ = rx.wait_for(|draining| *draining).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_watches_then_completes() {
        let (signal, watch) = channel();
        let held = watch.clone();
        drop(watch);
        let task = tokio::spawn(async move {
            held.signaled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(held);
        });
        assert!(signal.drain(Duration::from_secs(1)).await);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_deadline() {
        let (signal, watch) = channel();
        let start = tokio::time::Instant::now();
        assert!(!signal.drain(Duration::from_secs(2)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        drop(watch);
    }
}
