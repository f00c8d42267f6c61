//! The stream position allocator and the wake-up signal of waiting syncs.
//!
//! Every persistent change a sync can return (events, account data, receipts) takes a
//! position from one counter. Writers may commit out of order, so the position a sync may
//! read up to is the highest one below which every allocated position has been committed or
//! abandoned; it is published through a `watch` channel.
//!
//! A change says whom it concerns (its [`Scope`]: rooms and users, or everyone). A
//! long-polling `/sync` registers a [`Waiter`] under its user and rooms, and a change that
//! becomes visible wakes only the waiters it concerns: with a thousand users long-polling,
//! a message wakes the syncs of its room's members, not a thousand.
//!
//! The latest visible changes are remembered with their scopes, and the rooms each user's
//! long polls watch, so that a sync whose token is recent can tell without reading the
//! store that nothing since concerns it ([`Streams::quiet_since`]) and go straight to
//! waiting: the usual case for a client that asks again right after an answer.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use tokio::sync::{Notify, watch};

use crate::store::Changes;

/// Whom a change concerns.
#[derive(Debug, Clone, Default)]
pub enum Scope {
    /// Anyone (presence, device lists, keys: changes whose audience is not known here).
    #[default]
    All,
    /// The members of these rooms and these users (whose membership changed, say), and what
    /// changed in the rooms.
    Of { rooms: Vec<String>, users: Vec<String>, change: RoomChange },
}

/// What a change did in its rooms, so that a sync can tell what changed since its token
/// without reading the store ([`Streams::changes_since`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomChange {
    /// A new event.
    pub event: bool,
    /// A new state event.
    pub state: bool,
    /// A new membership event.
    pub member: bool,
    /// A new event relating to another (edit, reaction, thread).
    pub relation: bool,
    /// A new read receipt.
    pub receipt: bool,
}

impl Scope {
    /// The members of a room, for a change kept in memory only (typing).
    pub fn room(room_id: &str) -> Self {
        Scope::Of { rooms: vec![room_id.to_owned()], users: Vec::new(), change: RoomChange::default() }
    }

    /// A new event of a room: its members, and the target of a membership event.
    pub fn event(room_id: &str, kind: &str, state_key: Option<&str>, relation: bool) -> Self {
        let member = kind == "m.room.member";
        let target = state_key.filter(|_| member);
        Scope::Of {
            rooms: vec![room_id.to_owned()],
            users: target.into_iter().map(str::to_owned).collect(),
            change: RoomChange { event: true, state: state_key.is_some(), member, relation, receipt: false },
        }
    }

    /// A new read receipt in a room.
    pub fn receipt(room_id: &str) -> Self {
        Scope::Of {
            rooms: vec![room_id.to_owned()],
            users: Vec::new(),
            change: RoomChange { receipt: true, ..RoomChange::default() },
        }
    }

    /// One user (their account data, their to-device messages).
    pub fn user(user_id: &str) -> Self {
        Scope::Of { rooms: Vec::new(), users: vec![user_id.to_owned()], change: RoomChange::default() }
    }

    /// Whether the change concerns `user_id`, a member of `rooms`.
    fn concerns(&self, user_id: &str, rooms: &HashSet<String>) -> bool {
        match self {
            Scope::All => true,
            Scope::Of { rooms: changed, users, .. } => {
                users.iter().any(|u| u == user_id) || changed.iter().any(|r| rooms.contains(r))
            }
        }
    }
}

/// How many visible changes are remembered for [`Streams::quiet_since`].
const RECENT: usize = 8192;

/// Allocates stream positions and tracks which are complete.
#[derive(Debug)]
pub struct Streams {
    inner: Mutex<Inner>,
    current: watch::Sender<i64>,
    /// Bumped on any change a sync might return, including in-memory ones (typing).
    changes: watch::Sender<u64>,
    waiters: Mutex<Waiters>,
    watched: Mutex<Watched>,
}

/// The rooms each user's long polls watch (their memberships), remembered until a change
/// in a room names the user: every membership change names its target.
#[derive(Debug, Default)]
struct Watched {
    rooms: HashMap<String, Arc<HashSet<String>>>,
    /// Bumped whenever an entry is dropped, so that a list read before the drop is not
    /// remembered after it.
    epoch: u64,
}

#[derive(Debug)]
struct Inner {
    next: i64,
    in_flight: BTreeSet<i64>,
    /// Scopes of committed positions not yet visible (an earlier one is still in flight).
    waiting: BTreeMap<i64, Scope>,
    /// The latest visible positions and their scopes, oldest first: every position above
    /// `recent_floor` is here.
    recent: VecDeque<(i64, Scope)>,
    recent_floor: i64,
}

impl Inner {
    /// The highest position below which every allocated one has completed.
    fn visible(&self) -> i64 {
        match self.in_flight.first() {
            Some(first) => first - 1,
            None => self.next - 1,
        }
    }
}

/// The registered waiters: each in `all`, and under its user's key and its rooms' keys.
#[derive(Debug, Default)]
struct Waiters {
    next_id: u64,
    all: HashMap<u64, Arc<Notify>>,
    by_key: HashMap<String, HashMap<u64, Arc<Notify>>>,
}

fn room_key(room_id: &str) -> String {
    format!("r{room_id}")
}

fn user_key(user_id: &str) -> String {
    format!("u{user_id}")
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

/// A long-polling sync registered for the changes that concern it; unregistered when
/// dropped.
pub struct Waiter {
    streams: Arc<Streams>,
    id: u64,
    keys: Vec<String>,
    notify: Arc<Notify>,
}

impl Waiter {
    /// Waits until a change concerning the waiter is visible (one that came since it was
    /// registered counts); false at the deadline.
    pub async fn wait(&self, deadline: tokio::time::Instant) -> bool {
        tokio::time::timeout_at(deadline, self.notify.notified()).await.is_ok()
    }
}

/// A long poll's registration for the changes that concern it, made the first time its
/// computation finds nothing new (a poll answered at once registers nothing).
#[derive(Default)]
pub struct LongPoll(Option<Waiter>);

impl LongPoll {
    /// After a computation that found nothing new since `serial`: registers under the
    /// user and `rooms` unless already registered, then waits for a change that concerns
    /// them. True when the poll must compute again (a change came, or one was announced
    /// while it registered), false at the deadline.
    pub async fn wait<'a>(
        &mut self,
        streams: &Arc<Streams>,
        serial: u64,
        user_id: &str,
        rooms: impl Iterator<Item = &'a String>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let waiter = match &mut self.0 {
            Some(waiter) => waiter,
            unregistered => {
                let waiter = unregistered.insert(streams.waiter(user_id, rooms));
                if streams.serial() != serial {
                    return true;
                }
                waiter
            }
        };
        waiter.wait(deadline).await
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiters = self.streams.waiters.lock().expect("waiters lock poisoned");
        waiters.all.remove(&self.id);
        for key in &self.keys {
            if let Some(set) = waiters.by_key.get_mut(key) {
                set.remove(&self.id);
                if set.is_empty() {
                    waiters.by_key.remove(key);
                }
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
                recent: VecDeque::new(),
                recent_floor: max_persisted,
            }),
            current: watch::channel(max_persisted).0,
            changes: watch::channel(0).0,
            waiters: Mutex::default(),
            watched: Mutex::default(),
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
        let (current, visible) = {
            let mut inner = self.inner.lock().expect("stream lock poisoned");
            inner.in_flight.remove(&pos);
            inner.waiting.insert(pos, scope);
            let current = inner.visible();
            // The changes that became visible are announced now, whatever order their
            // writes committed in.
            let rest = inner.waiting.split_off(&(current + 1));
            let visible = std::mem::replace(&mut inner.waiting, rest);
            for (pos, scope) in &visible {
                inner.recent.push_back((*pos, scope.clone()));
            }
            while inner.recent.len() > RECENT {
                if let Some((pos, _)) = inner.recent.pop_front() {
                    inner.recent_floor = pos;
                }
            }
            (current, visible)
        };
        // A change in a room that names users changes their memberships.
        let members: Vec<&String> = visible
            .values()
            .flat_map(|scope| match scope {
                Scope::Of { rooms, users, .. } if !rooms.is_empty() => users.as_slice(),
                _ => &[],
            })
            .collect();
        if !members.is_empty() {
            let mut watched = self.watched.lock().expect("watched lock poisoned");
            watched.epoch += 1;
            for user in members {
                watched.rooms.remove(user);
            }
        }
        self.current.send_if_modified(|c| {
            if current > *c {
                *c = current;
                true
            } else {
                false
            }
        });
        for scope in visible.into_values() {
            self.notify_for(scope);
        }
    }

    /// The highest position below which everything is committed.
    pub fn current(&self) -> i64 {
        *self.current.borrow()
    }

    /// Wakes waiting syncs for an in-memory change that may concern anyone.
    pub fn notify(&self) {
        self.notify_for(Scope::All);
    }

    /// Wakes the waiting syncs a change concerns.
    pub fn notify_for(&self, scope: Scope) {
        {
            let waiters = self.waiters.lock().expect("waiters lock poisoned");
            match &scope {
                Scope::All => waiters.all.values().for_each(|n| n.notify_one()),
                Scope::Of { rooms, users, .. } => {
                    for key in rooms.iter().map(|r| room_key(r)).chain(users.iter().map(|u| user_key(u))) {
                        if let Some(set) = waiters.by_key.get(&key) {
                            set.values().for_each(|n| n.notify_one());
                        }
                    }
                }
            }
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The serial of the latest change: a sync that sees it move while registering its
    /// waiter computes again.
    pub fn serial(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Subscribes to every change notification.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether no visible change after `since` concerns `user_id`, a member of `rooms`;
    /// false when `since` is older than the changes remembered.
    pub fn quiet_since(&self, since: i64, user_id: &str, rooms: &HashSet<String>) -> bool {
        let inner = self.inner.lock().expect("stream lock poisoned");
        since >= inner.recent_floor
            && since <= inner.visible()
            && !inner.recent.iter().rev().take_while(|(pos, _)| *pos > since).any(|(_, s)| s.concerns(user_id, rooms))
    }

    /// What changed in `(since, to]` in `rooms` (the user's) or in a room whose change names
    /// `user_id`, as [`Store::changes_between`](crate::store::Store::changes_between) would
    /// read it; `None` when the changes remembered cannot tell: `since` is older than they
    /// are, or a change whose audience is not known here (device lists, keys) came since.
    pub fn changes_since(&self, since: i64, to: i64, user_id: &str, rooms: &HashSet<String>) -> Option<Changes> {
        let inner = self.inner.lock().expect("stream lock poisoned");
        if since < inner.recent_floor || to > inner.visible() {
            return None;
        }
        let mut out = Changes::default();
        let mut positions = Vec::new();
        for (pos, scope) in inner.recent.iter().rev().take_while(|(pos, _)| *pos > since).filter(|(pos, _)| *pos <= to)
        {
            let Scope::Of { rooms: changed, users, change } = scope else { return None };
            if !(change.event || change.receipt) {
                continue;
            }
            let named = users.iter().any(|u| u == user_id);
            for room in changed.iter().filter(|r| named || rooms.contains(*r)) {
                if change.event {
                    positions.push(*pos);
                }
                let entry = out.rooms.entry(room.clone()).or_default();
                entry.events |= change.event;
                entry.state |= change.state;
                entry.receipts |= change.receipt;
                out.relations |= change.relation;
                out.memberships |= change.member;
            }
        }
        // A change of several rooms named its position once per room.
        positions.dedup();
        out.event_positions = Some(positions);
        Some(out)
    }

    /// The rooms remembered for `user_id`'s long polls, and otherwise the epoch to pass to
    /// [`Streams::remember_watched`] with the rooms read now.
    pub fn watched(&self, user_id: &str) -> Result<Arc<HashSet<String>>, u64> {
        let watched = self.watched.lock().expect("watched lock poisoned");
        watched.rooms.get(user_id).cloned().ok_or(watched.epoch)
    }

    /// Remembers the rooms read for `user_id`, unless a change named a user since `epoch`
    /// (the read may predate it).
    pub fn remember_watched(&self, user_id: &str, rooms: Arc<HashSet<String>>, epoch: u64) {
        let mut watched = self.watched.lock().expect("watched lock poisoned");
        if watched.epoch == epoch {
            watched.rooms.insert(user_id.to_owned(), rooms);
        }
    }

    /// Registers a waiter for the changes that concern `user_id` or one of `rooms`.
    pub fn waiter<'a>(self: &Arc<Self>, user_id: &str, rooms: impl Iterator<Item = &'a String>) -> Waiter {
        let notify = Arc::new(Notify::new());
        let keys: Vec<String> = std::iter::once(user_key(user_id)).chain(rooms.map(|r| room_key(r))).collect();
        let mut waiters = self.waiters.lock().expect("waiters lock poisoned");
        let id = waiters.next_id;
        waiters.next_id += 1;
        waiters.all.insert(id, notify.clone());
        for key in &keys {
            waiters.by_key.entry(key.clone()).or_default().insert(id, notify.clone());
        }
        Waiter { streams: self.clone(), id, keys, notify }
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

    #[tokio::test]
    async fn a_change_wakes_only_the_waiters_it_concerns_once_visible() {
        let streams = Streams::new(0);
        let soon = || tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        let rooms = ["!a:x".to_owned()];
        let member = streams.waiter("@m:x", rooms.iter());
        let stranger = streams.waiter("@s:x", std::iter::empty());
        let first = streams.allocate_for(Scope::event("!b:x", "m.room.message", None, false));
        let second = streams.allocate_for(Scope::event("!a:x", "m.room.message", None, false));
        drop(second);
        assert!(!member.wait(soon()).await, "!a's change is not visible while !b's is in flight");
        drop(first);
        assert!(member.wait(soon()).await, "both became visible");
        assert!(!stranger.wait(soon()).await, "neither room is the stranger's");
        drop(streams.allocate_for(Scope::event("!b:x", "m.room.member", Some("@s:x"), false)));
        assert!(stranger.wait(soon()).await, "an invite names its target");
        streams.notify();
        assert!(member.wait(soon()).await && stranger.wait(soon()).await, "a change for anyone wakes all");
    }

    #[test]
    fn changes_are_told_from_memory_until_one_has_no_known_audience() {
        let streams = Streams::new(0);
        let mine: HashSet<String> = ["!a:x".to_owned()].into();
        drop(streams.allocate_for(Scope::event("!a:x", "m.room.message", None, true)));
        drop(streams.allocate_for(Scope::receipt("!b:x")));
        drop(streams.allocate_for(Scope::event("!c:x", "m.room.member", Some("@me:x"), false)));
        drop(streams.allocate_for(Scope::user("@me:x")));
        let changes = streams.changes_since(0, 4, "@me:x", &mine).expect("all remembered");
        let a = changes.rooms["!a:x"];
        assert!(a.events && !a.state && !a.receipts);
        assert!(!changes.rooms.contains_key("!b:x"), "not the user's room");
        let c = changes.rooms["!c:x"];
        assert!(c.events && c.state, "the user's new room, named by its membership");
        assert!(changes.relations && changes.memberships);
        let later = streams.changes_since(1, 4, "@other:x", &mine).expect("all remembered");
        assert!(later.rooms.is_empty() && !later.relations && !later.memberships, "{later:?}");
        assert!(streams.changes_since(0, 1, "@me:x", &mine).is_some_and(|c| !c.memberships), "bounded by `to`");
        drop(streams.allocate());
        assert!(streams.changes_since(0, 5, "@me:x", &mine).is_none(), "a change for anyone is not known here");
        assert!(streams.changes_since(0, 4, "@me:x", &mine).is_some(), "unless it comes after `to`");
    }
}
