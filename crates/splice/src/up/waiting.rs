//! Requests waiting for one of the endpoint's streams: in arrival order,
//! and found by key in O(1), so that a client resetting (or sending more
//! of) a waiting request costs the same however many wait.

use std::collections::VecDeque;

use super::Queued;
use crate::{IdMap, StreamKey};

#[derive(Default)]
pub(super) struct Waiting {
    /// Arrival order. Keys of requests that left early stay here until they
    /// reach the front (or a compaction drops them).
    order: VecDeque<StreamKey>,
    by_key: IdMap<StreamKey, Queued>,
}

impl Waiting {
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub(super) fn push(&mut self, q: Queued) {
        let key = q.open.key;
        if self.by_key.insert(key, q).is_none() {
            self.order.push_back(key);
        }
    }

    pub(super) fn get_mut(&mut self, key: &StreamKey) -> Option<&mut Queued> {
        self.by_key.get_mut(key)
    }

    /// Takes a request out of the queue, wherever it is.
    pub(super) fn remove(&mut self, key: &StreamKey) -> Option<Queued> {
        let q = self.by_key.remove(key)?;
        // Keys of requests gone early are dropped in bulk once they are most
        // of the order (each key is compacted away at most once).
        if self.order.len() > 64 && self.order.len() > 2 * self.by_key.len() {
            let by_key = &self.by_key;
            self.order.retain(|k| by_key.contains_key(k));
        }
        Some(q)
    }

    /// The request that has waited longest.
    pub(super) fn front(&mut self) -> Option<&Queued> {
        self.skip_gone();
        self.order.front().and_then(|k| self.by_key.get(k))
    }

    pub(super) fn pop_front(&mut self) -> Option<Queued> {
        self.skip_gone();
        let key = self.order.pop_front()?;
        self.by_key.remove(&key)
    }

    fn skip_gone(&mut self) {
        while let Some(k) = self.order.front()
            && !self.by_key.contains_key(k)
        {
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{sync::mpsc, time::Instant};

    use super::*;
    use crate::Open;

    fn queued(stream: u32) -> Queued {
        let (reply, _) = mpsc::unbounded_channel();
        Queued {
            open: Box::new(Open {
                key: StreamKey { conn: 1, stream },
                reply,
                head: Vec::new().into(),
                body: Vec::new(),
                trailers: None,
                end: true,
            }),
            since: Instant::now(),
        }
    }

    fn key(stream: u32) -> StreamKey {
        StreamKey { conn: 1, stream }
    }

    #[test]
    fn arrival_order_with_removals_anywhere() {
        let mut w = Waiting::default();
        for s in [1, 3, 5, 7] {
            w.push(queued(s));
        }
        assert!(w.remove(&key(3)).is_some());
        assert!(w.remove(&key(3)).is_none());
        assert_eq!(w.front().map(|q| q.open.key.stream), Some(1));
        assert!(w.remove(&key(1)).is_some());
        assert_eq!(w.pop_front().map(|q| q.open.key.stream), Some(5));
        assert!(w.get_mut(&key(7)).is_some());
        assert_eq!(w.len(), 1);
        assert_eq!(w.pop_front().map(|q| q.open.key.stream), Some(7));
        assert!(w.pop_front().is_none() && w.is_empty());
    }

    #[test]
    fn requests_that_leave_early_leave_no_trace() {
        // Rapid reset: every request leaves right after it arrived, while
        // one request waits at the front the whole time.
        let mut w = Waiting::default();
        w.push(queued(1));
        for s in (3..200_001).step_by(2) {
            w.push(queued(s));
            w.remove(&key(s));
        }
        assert!(w.order.len() <= 130, "{} keys kept for 1 request", w.order.len());
        assert_eq!(w.pop_front().map(|q| q.open.key.stream), Some(1));
    }
}
