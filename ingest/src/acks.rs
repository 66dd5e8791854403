//! Acknowledge after commit: which received messages may be acknowledged now.
//!
//! Design invariants:
//! - A message is acknowledged only once every partition buffer holding its rows (or, for a
//!   duplicate, the buffer holding the first copy's rows) has been committed: written,
//!   fsynced, renamed, its folder fsynced, recorded in the commit log.
//! - Acknowledgements leave in the order the messages arrived (MQTT 3.1.1 §4.6, MQTT 5 §4.6:
//!   PUBACKs in the order of the PUBLISHes), so a durable message behind one that is not yet
//!   durable waits for it. Since every buffer rolls by `roll_age` at the latest, that wait is
//!   bounded.
//! - A message with nothing to wait for (a duplicate of committed rows) is acknowledged as
//!   soon as everything before it is.
//! - No I/O and no clock: the caller passes times in and sends the acknowledgements.

use std::collections::{HashMap, VecDeque};

use tokio::time::{Duration, Instant};

#[derive(Debug)]
struct Waiting<T> {
    message: T,
    buffers: Vec<u64>,
    received: Instant,
}

/// Messages received and not yet acknowledged, in arrival order.
#[derive(Debug)]
pub struct AckQueue<T> {
    waiting: VecDeque<Waiting<T>>,
    /// Buffers some waiting message depends on and that are not committed, with how many
    /// waiting messages name them.
    open: HashMap<u64, usize>,
}

impl<T> Default for AckQueue<T> {
    fn default() -> Self {
        AckQueue {
            waiting: VecDeque::new(),
            open: HashMap::new(),
        }
    }
}

impl<T> AckQueue<T> {
    /// Queues `message`, which may be acknowledged once every buffer in `buffers` commits.
    /// Call it before reporting the commits that the same append produced.
    pub fn push(&mut self, message: T, mut buffers: Vec<u64>, received: Instant) {
        buffers.sort_unstable();
        buffers.dedup();
        for b in &buffers {
            *self.open.entry(*b).or_default() += 1;
        }
        self.waiting.push_back(Waiting {
            message,
            buffers,
            received,
        });
    }

    /// Records that buffer `buffer` is committed.
    pub fn committed(&mut self, buffer: u64) {
        self.open.remove(&buffer);
    }

    /// Takes the messages that may be acknowledged now, in arrival order, each with how long
    /// it waited.
    pub fn ready(&mut self, now: Instant) -> Vec<(T, Duration)> {
        let mut ready = Vec::new();
        while let Some(front) = self.waiting.front() {
            if front.buffers.iter().any(|b| self.open.contains_key(b)) {
                break;
            }
            if let Some(w) = self.waiting.pop_front() {
                ready.push((w.message, now.saturating_duration_since(w.received)));
            }
        }
        ready
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The uncommitted buffers the oldest waiting messages depend on, up to `messages` of
    /// them: what to commit first when the window of unacknowledged messages fills.
    pub fn blocking(&self, messages: usize) -> Vec<u64> {
        let mut buffers: Vec<u64> = self
            .waiting
            .iter()
            .take(messages)
            .flat_map(|w| w.buffers.iter().copied())
            .filter(|b| self.open.contains_key(b))
            .collect();
        buffers.sort_unstable();
        buffers.dedup();
        buffers
    }

    /// How long the oldest waiting message has waited.
    pub fn oldest_wait(&self, now: Instant) -> Option<Duration> {
        self.waiting
            .front()
            .map(|w| now.saturating_duration_since(w.received))
    }

    /// Drops everything waiting (the connection it came on is gone; the broker redelivers
    /// it) and returns how many messages that was.
    pub fn clear(&mut self) -> usize {
        let n = self.waiting.len();
        self.waiting.clear();
        self.open.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ready: Vec<(&'static str, Duration)>) -> Vec<&'static str> {
        ready.into_iter().map(|(m, _)| m).collect()
    }

    #[test]
    fn acknowledges_in_arrival_order_once_buffers_commit() {
        let t0 = Instant::now();
        let mut q = AckQueue::default();
        q.push("a", vec![1, 2], t0);
        q.push("b", vec![2], t0);
        q.push("dup", vec![], t0);
        q.push("c", vec![3], t0);
        assert!(q.ready(t0).is_empty());
        // b's buffer commits first: b is durable but waits behind a.
        q.committed(2);
        assert!(q.ready(t0).is_empty());
        assert_eq!(q.blocking(1), vec![1]);
        q.committed(1);
        let later = t0 + Duration::from_millis(250);
        let ready = q.ready(later);
        assert_eq!(ready[0].1, Duration::from_millis(250));
        assert_eq!(names(ready), vec!["a", "b", "dup"]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.oldest_wait(later), Some(Duration::from_millis(250)));
        q.committed(3);
        assert_eq!(names(q.ready(later)), vec!["c"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_message_with_nothing_to_wait_for_goes_at_once() {
        let t0 = Instant::now();
        let mut q = AckQueue::default();
        q.push("dup", vec![], t0);
        assert_eq!(names(q.ready(t0)), vec!["dup"]);
    }

    #[test]
    fn blocking_names_the_buffers_of_the_oldest_messages() {
        let t0 = Instant::now();
        let mut q = AckQueue::default();
        q.push("a", vec![5], t0);
        q.push("b", vec![6, 5], t0);
        q.push("c", vec![7], t0);
        assert_eq!(q.blocking(2), vec![5, 6]);
        q.committed(5);
        assert_eq!(q.blocking(3), vec![6, 7]);
        assert_eq!(q.clear(), 3);
        assert!(q.ready(t0).is_empty());
    }
}
