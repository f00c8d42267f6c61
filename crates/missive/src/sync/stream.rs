//! The stream position allocator and the wake-up signal of waiting syncs.
//!
//! Every persistent change a sync can return (events, account data, receipts) takes a
//! position from one counter. Writers may commit out of order, so the position a sync may
//! read up to is the highest one below which every allocated position has been committed or
//! abandoned; it is published through a `watch` channel that long-polling syncs wait on.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

/// Allocates stream positions and tracks which are complete.
#[derive(Debug)]
pub struct Streams {
    inner: Mutex<Inner>,
    current: watch::Sender<i64>,
    /// Bumped on any change a sync might return, including in-memory ones (typing).
    changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct Inner {
    next: i64,
    in_flight: BTreeSet<i64>,
}

/// A position being written; completes (commits or abandons) when dropped.
#[derive(Debug)]
pub struct PositionGuard {
    streams: Arc<Streams>,
    pos: i64,
}

impl PositionGuard {
    /// The allocated position.
    pub fn pos(&self) -> i64 {
        self.pos
    }
}

impl Drop for PositionGuard {
    fn drop(&mut self) {
        self.streams.complete(self.pos);
    }
}

impl Streams {
    /// Starts after the highest persisted position.
    pub fn new(max_persisted: i64) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner { next: max_persisted + 1, in_flight: BTreeSet::new() }),
            current: watch::channel(max_persisted).0,
            changes: watch::channel(0).0,
        })
    }

    /// Takes the next position; it must be dropped once its write has committed.
    pub fn allocate(self: &Arc<Self>) -> PositionGuard {
        let mut inner = self.inner.lock().expect("stream lock poisoned");
        let pos = inner.next;
        inner.next += 1;
        inner.in_flight.insert(pos);
        PositionGuard { streams: self.clone(), pos }
    }

    fn complete(&self, pos: i64) {
        let current = {
            let mut inner = self.inner.lock().expect("stream lock poisoned");
            inner.in_flight.remove(&pos);
            match inner.in_flight.first() {
                Some(first) => first - 1,
                None => inner.next - 1,
            }
        };
        self.current.send_if_modified(|c| {
            if current > *c {
                *c = current;
                true
            } else {
                false
            }
        });
        self.notify();
    }

    /// The highest position below which everything is committed.
    pub fn current(&self) -> i64 {
        *self.current.borrow()
    }

    /// Wakes waiting syncs.
    pub fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Subscribes to change notifications.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_waits_for_earlier_positions() {
        let streams = Streams::new(10);
        let a = streams.allocate();
        let b = streams.allocate();
        assert_eq!((a.pos(), b.pos()), (11, 12));
        drop(b);
        assert_eq!(streams.current(), 10, "12 is committed but 11 is not");
        drop(a);
        assert_eq!(streams.current(), 12);
    }
}
