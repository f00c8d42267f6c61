//! The stream position allocator and the wake-up signal of waiting syncs.
//!
//! Every persistent change a sync can return (events, account data, receipts) takes a
//! position from one counter. Writers may commit out of order, so the position a sync may
//! read up to is the highest one below which every allocated position has been committed or
//! abandoned; it is published through a `watch` channel that long-polling syncs wait on.
//!
//! A change says whom it concerns (its [`Scope`]: rooms and users, or everyone), and the
//! scopes of the changes that became visible are kept in a short log: a waiting sync wakes
//! on every change but computes again only when one concerns it. With a thousand users
//! long-polling, a message then costs the syncs of its room's members, not a thousand.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

/// Changes whose scope is remembered for waiting syncs; a sync that fell further behind
/// computes again.
const LOG_LEN: usize = 4096;

/// Whom a change concerns.
#[derive(Debug, Clone, Default)]
pub enum Scope {
    /// Anyone (presence, device lists, keys: changes whose audience is not known here).
    #[default]
    All,
    /// The members of these rooms and these users (whose membership changed, say).
    Of { rooms: Vec<String>, users: Vec<String> },
}

impl Scope {
    /// The members of a room, and `user` (the target of a membership change) if any.
    pub fn room(room_id: &str, user: Option<&str>) -> Self {
        Scope::Of { rooms: vec![room_id.to_owned()], users: user.into_iter().map(str::to_owned).collect() }
    }

    /// One user (their account data, their to-device messages).
    pub fn user(user_id: &str) -> Self {
        Scope::Of { rooms: Vec::new(), users: vec![user_id.to_owned()] }
    }

    fn concerns(&self, user_id: &str, rooms: &HashSet<String>) -> bool {
        match self {
            Scope::All => true,
            Scope::Of { rooms: changed, users } => {
                users.iter().any(|u| u == user_id) || changed.iter().any(|r| rooms.contains(r))
            }
        }
    }
}

/// Allocates stream positions and tracks which are complete.
#[derive(Debug)]
pub struct Streams {
    inner: Mutex<Inner>,
    current: watch::Sender<i64>,
    /// The serial of the latest change a sync might return, including in-memory ones
    /// (typing); the scopes of recent ones are in `Inner::log`.
    changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct Inner {
    next: i64,
    in_flight: BTreeSet<i64>,
    /// Scopes of committed positions not yet visible (an earlier one is still in flight).
    waiting: BTreeMap<i64, Scope>,
    /// `(serial, scope)` of the latest visible changes, oldest first.
    log: VecDeque<(u64, Scope)>,
    serial: u64,
}

/// A position being written; completes (commits or abandons) when dropped.
#[derive(Debug)]
pub struct PositionGuard {
    streams: Arc<Streams>,
    pos: i64,
    scope: Scope,
}

impl PositionGuard {
    /// The allocated position.
    pub fn pos(&self) -> i64 {
        self.pos
    }
}

impl Drop for PositionGuard {
    fn drop(&mut self) {
        self.streams.complete(self.pos, std::mem::take(&mut self.scope));
    }
}

/// A long-polling sync's view of the changes: wakes on those that concern its user.
pub struct Waiter {
    changes: watch::Receiver<u64>,
    seen: u64,
}

impl Waiter {
    /// Waits until a change concerning `user_id` or one of `rooms` is visible; false at
    /// the deadline.
    pub async fn wait(
        &mut self,
        streams: &Streams,
        user_id: &str,
        rooms: &HashSet<String>,
        deadline: tokio::time::Instant,
    ) -> bool {
        loop {
            if tokio::time::timeout_at(deadline, self.changes.changed()).await.is_err() {
                return false;
            }
            let latest = *self.changes.borrow_and_update();
            let inner = streams.inner.lock().expect("stream lock poisoned");
            let fell_behind = inner.log.front().is_none_or(|(first, _)| *first > self.seen + 1);
            let concerned = fell_behind
                || inner
                    .log
                    .iter()
                    .rev()
                    .take_while(|(serial, _)| *serial > self.seen)
                    .any(|(_, scope)| scope.concerns(user_id, rooms));
            self.seen = latest;
            if concerned {
                return true;
            }
        }
    }
}

impl Streams {
    /// Starts after the highest persisted position.
    pub fn new(max_persisted: i64) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                next: max_persisted + 1,
                in_flight: BTreeSet::new(),
                waiting: BTreeMap::new(),
                log: VecDeque::with_capacity(LOG_LEN),
                serial: 0,
            }),
            current: watch::channel(max_persisted).0,
            changes: watch::channel(0).0,
        })
    }

    /// Takes the next position for a change that may concern anyone; it must be dropped
    /// once its write has committed.
    pub fn allocate(self: &Arc<Self>) -> PositionGuard {
        self.allocate_for(Scope::All)
    }

    /// Takes the next position for a change that concerns `scope`.
    pub fn allocate_for(self: &Arc<Self>, scope: Scope) -> PositionGuard {
        let mut inner = self.inner.lock().expect("stream lock poisoned");
        let pos = inner.next;
        inner.next += 1;
        inner.in_flight.insert(pos);
        PositionGuard { streams: self.clone(), pos, scope }
    }

    fn complete(&self, pos: i64, scope: Scope) {
        let current = {
            let mut inner = self.inner.lock().expect("stream lock poisoned");
            inner.in_flight.remove(&pos);
            inner.waiting.insert(pos, scope);
            let current = match inner.in_flight.first() {
                Some(first) => first - 1,
                None => inner.next - 1,
            };
            // The changes that became visible are announced now, whatever order their
            // writes committed in.
            let rest = inner.waiting.split_off(&(current + 1));
            let visible = std::mem::replace(&mut inner.waiting, rest);
            for scope in visible.into_values() {
                inner.push(scope);
            }
            current
        };
        self.current.send_if_modified(|c| {
            if current > *c {
                *c = current;
                true
            } else {
                false
            }
        });
        self.publish();
    }

    /// The highest position below which everything is committed.
    pub fn current(&self) -> i64 {
        *self.current.borrow()
    }

    /// Wakes waiting syncs for an in-memory change that may concern anyone.
    pub fn notify(&self) {
        self.notify_for(Scope::All);
    }

    /// Wakes waiting syncs for an in-memory change (typing) that concerns `scope`.
    pub fn notify_for(&self, scope: Scope) {
        self.inner.lock().expect("stream lock poisoned").push(scope);
        self.publish();
    }

    fn publish(&self) {
        let serial = self.inner.lock().expect("stream lock poisoned").serial;
        self.changes.send_if_modified(|n| {
            if *n != serial {
                *n = serial;
                true
            } else {
                false
            }
        });
    }

    /// Subscribes to every change notification.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A waiter that wakes on the changes that concern its sync, from now on.
    pub fn waiter(&self) -> Waiter {
        let changes = self.changes.subscribe();
        let seen = *changes.borrow();
        Waiter { changes, seen }
    }
}

impl Inner {
    fn push(&mut self, scope: Scope) {
        self.serial += 1;
        if self.log.len() == LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back((self.serial, scope));
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
