//! What every sync of a device starts from, kept in memory: a message in a room of 500
//! members wakes 500 syncs, and each would otherwise read its user's memberships,
//! notification counts, account data and device state again, unchanged by the message.
//!
//! Per user: their memberships, their notification offsets, the position of their latest
//! account data, and per device the one-time key counts, the unused fallback keys and
//! whether to-device messages wait. Per room: its notification sums (a user's count in a
//! room is the room's sum less their offset, see `notifications.rs`).
//!
//! Everything enters from a read ([`Store::user_sync_state_of`]) and leaves when a write
//! changes it: the writer drops what it touched once committed, before its stream
//! position completes, so a sync woken by a write never finds kept what the write changed.
//! Rare rewrites (deactivation, account deletion, purges) drop everything. A read
//! that began before a drop of its user is not kept (each drop is stamped by a clock, and
//! a read keeps nothing dropped after its mark), so a read is never kept older than the
//! store.
//!
//! Room sums move with every message, so a room write moves them instead of dropping
//! them: it marks the room before it commits and adds its sums after. A read of a room's
//! sums is kept only when no write of the room began or ended since the read's mark and
//! none is running.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use super::{DeviceSyncState, MembershipRow, UserSyncState};

/// Past this many users kept, all are dropped and read again as their devices sync.
const USERS_KEPT: usize = 100_000;

/// What every sync of a device starts from, kept in memory (see the module).
#[derive(Debug, Default)]
pub(super) struct SyncMemory {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ticks at every drop and at every start and end of a room write.
    clock: u64,
    /// Reads marked before it keep nothing: set when everything is dropped.
    floor: u64,
    users: HashMap<String, UserMemory>,
    rooms: HashMap<String, RoomSums>,
}

impl Inner {
    /// Moves the clock on and returns it.
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Drops every user's state; reads marked before keep nothing.
    fn clear_users(&mut self) {
        self.users.clear();
        self.floor = self.tick();
    }
}

/// A user's unread `(notifications, highlights)` in a room: its sums less their offsets.
/// An offset ahead of the sums would be a bookkeeping slip: never a negative count.
pub(super) fn unread((notify, highlight): (i64, i64), (notify_off, highlight_off): (i64, i64)) -> (i64, i64) {
    ((notify - notify_off).max(0), (highlight - highlight_off).max(0))
}

#[derive(Debug, Default)]
struct UserMemory {
    /// The clock at the latest drop of anything of the user.
    dropped: u64,
    /// Memberships not forgotten.
    memberships: Option<Arc<Vec<MembershipRow>>>,
    /// Notification offsets per room: `(notify, highlight)`.
    offsets: Option<HashMap<String, (i64, i64)>>,
    /// The position of the user's latest account data (-1 for none).
    account_data_pos: Option<i64>,
    devices: HashMap<String, DeviceSyncState>,
}

#[derive(Debug, Default)]
struct RoomSums {
    /// `(notify_seq, highlight_seq)`, as committed.
    sums: Option<(i64, i64)>,
    /// Room writes that may move the sums, running now.
    writers: u32,
    /// The clock at the latest start or end of such a write.
    changed: u64,
}

/// What a read of a user's sync state found, for [`SyncMemory::keep`].
#[derive(Debug, Default)]
pub(super) struct ReadState {
    pub memberships: Option<Vec<MembershipRow>>,
    /// `(room, notify_off, highlight_off)`, when memberships were read.
    pub offsets: Option<Vec<(String, i64, i64)>>,
    /// `(room, notify_seq, highlight_seq)` of the rooms with an offset.
    pub sums: Vec<(String, i64, i64)>,
    pub account_data_pos: i64,
    pub device: DeviceSyncState,
}

impl SyncMemory {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The mark a read takes before it runs, for [`Self::keep`].
    pub(super) fn mark(&self) -> u64 {
        self.inner().clock
    }

    /// The sync state of `user_id`'s device from memory, if all of it is kept (with the
    /// memberships and counts when `rooms`), and the account data changed after `since`,
    /// which memory tells only when there is none.
    pub(super) fn state(
        &self,
        user_id: &str,
        device_id: &str,
        since: Option<i64>,
        rooms: bool,
    ) -> Option<UserSyncState> {
        let inner = self.inner();
        let user = inner.users.get(user_id)?;
        if user.account_data_pos? > since? {
            return None;
        }
        let device = user.devices.get(device_id)?.clone();
        let mut out = UserSyncState {
            memberships: Vec::new(),
            account_data: Vec::new(),
            notification_counts: HashMap::new(),
            device,
        };
        if rooms {
            out.memberships = user.memberships.as_deref()?.clone();
            let offsets = user.offsets.as_ref()?;
            out.notification_counts.reserve(offsets.len());
            for (room, offset) in offsets {
                out.notification_counts.insert(room.clone(), unread(inner.rooms.get(room)?.sums?, *offset));
            }
        }
        Some(out)
    }

    /// Keeps what a read that began at `mark` found, unless something of it was dropped
    /// since.
    pub(super) fn keep(&self, mark: u64, user_id: &str, device_id: &str, read: ReadState) {
        let mut inner = self.inner();
        if mark < inner.floor {
            return;
        }
        for (room, notify, highlight) in read.sums {
            let entry = inner.rooms.entry(room).or_default();
            if entry.sums.is_none() && entry.writers == 0 && entry.changed <= mark {
                entry.sums = Some((notify, highlight));
            }
        }
        if inner.users.len() >= USERS_KEPT && !inner.users.contains_key(user_id) {
            inner.clear_users();
            return;
        }
        let user = inner.users.entry(user_id.to_owned()).or_default();
        if user.dropped > mark {
            return;
        }
        if let Some(memberships) = read.memberships {
            user.memberships = Some(Arc::new(memberships));
        }
        if let Some(offsets) = read.offsets {
            user.offsets = Some(offsets.into_iter().map(|(room, n, h)| (room, (n, h))).collect());
        }
        user.account_data_pos = Some(read.account_data_pos);
        user.devices.insert(device_id.to_owned(), read.device);
    }

    /// Drops `part` of each of `users` (everything of everyone for `None`), stamping the
    /// drop.
    fn drop_users(&self, part: Option<Part>, users: &[String]) {
        let mut inner = self.inner();
        let Some(part) = part else {
            inner.clear_users();
            for room in inner.rooms.values_mut() {
                room.sums = None;
            }
            return;
        };
        if users.is_empty() {
            return;
        }
        let clock = inner.tick();
        for user_id in users {
            let user = inner.users.entry(user_id.clone()).or_default();
            user.dropped = clock;
            match part {
                Part::Memberships => user.memberships = None,
                Part::Offsets => user.offsets = None,
                Part::AccountData => user.account_data_pos = None,
                Part::Devices => user.devices.clear(),
            }
        }
    }

    /// Drops `part` of each of `users` when the returned guard goes: a writer takes it
    /// before writing, so the drop follows its commit however its call ends (an error, or
    /// its future dropped on the way).
    pub(super) fn forget<'a, U: Into<String>>(&'a self, part: Part, users: impl IntoIterator<Item = U>) -> Forget<'a> {
        Forget { memory: self, part: Some(part), users: users.into_iter().map(Into::into).collect() }
    }

    /// Drops everything, of everyone, when the returned guard goes: a rewrite
    /// (deactivation, account deletion, purge) takes it as [`Self::forget`].
    pub(super) fn forget_all(&self) -> Forget<'_> {
        Forget { memory: self, part: None, users: Vec::new() }
    }

    /// Marks a room write that moves the room's sums, before it commits; the guard ends
    /// it (see [`SumsMove`]).
    pub(super) fn move_sums<'a>(&'a self, room_id: &'a str) -> SumsMove<'a> {
        let mut inner = self.inner();
        let clock = inner.tick();
        let room = inner.rooms.entry(room_id.to_owned()).or_default();
        room.writers += 1;
        room.changed = clock;
        SumsMove { memory: self, room_id, added: None }
    }

    fn end_room_write(&self, room_id: &str, added: Option<(i64, i64)>) {
        let mut inner = self.inner();
        let clock = inner.tick();
        let room = inner.rooms.entry(room_id.to_owned()).or_default();
        room.writers = room.writers.saturating_sub(1);
        room.changed = clock;
        room.sums = match (room.sums, added) {
            (Some((n, h)), Some((dn, dh))) => Some((n + dn, h + dh)),
            _ => None,
        };
    }
}

/// What a writer changed of its users' sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Memberships,
    Offsets,
    AccountData,
    /// Key counts and to-device messages of any of the users' devices.
    Devices,
}

/// Drops a part of users' sync state when it goes (see [`SyncMemory::forget`]).
#[must_use = "the drop happens when the guard goes"]
pub(super) struct Forget<'a> {
    memory: &'a SyncMemory,
    /// `None`: everything, of everyone.
    part: Option<Part>,
    users: Vec<String>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.memory.drop_users(self.part, &self.users);
    }
}

/// A room write that moves the room's sums: when it goes, the sums kept move by what
/// [`SumsMove::committed`] said, or are dropped if it said nothing (the write failed, or
/// its future was dropped).
#[must_use = "the write ends when the guard goes"]
pub(super) struct SumsMove<'a> {
    memory: &'a SyncMemory,
    room_id: &'a str,
    added: Option<(i64, i64)>,
}

impl SumsMove<'_> {
    /// The write committed, adding `added` to the sums (`None`: they are dropped).
    pub(super) fn committed(&mut self, added: Option<(i64, i64)>) {
        self.added = added;
    }
}

impl Drop for SumsMove<'_> {
    fn drop(&mut self) {
        self.memory.end_room_write(self.room_id, self.added.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(device_otks: i64) -> ReadState {
        ReadState {
            memberships: Some(vec![MembershipRow {
                room_id: "!a:x".into(),
                user_id: "@u:x".into(),
                membership: "join".into(),
                event_id: "$j".into(),
                stream_pos: 3,
            }]),
            offsets: Some(vec![("!a:x".into(), 2, 0)]),
            sums: vec![("!a:x".into(), 5, 1)],
            account_data_pos: 4,
            device: DeviceSyncState { one_time_keys: vec![("curve".into(), device_otks)], ..Default::default() },
        }
    }

    #[test]
    fn counts_follow_room_writes_and_dropped_parts_are_read_again() {
        let memory = SyncMemory::default();
        assert!(memory.state("@u:x", "D", Some(10), true).is_none(), "nothing kept yet");
        memory.keep(memory.mark(), "@u:x", "D", read(7));
        let state = memory.state("@u:x", "D", Some(10), true).expect("all kept");
        assert_eq!(state.notification_counts["!a:x"], (3, 1));
        assert_eq!(state.device.one_time_keys, [("curve".to_owned(), 7)]);
        assert!(memory.state("@u:x", "D", Some(3), true).is_none(), "account data newer than the token is read");
        assert!(memory.state("@u:x", "D", None, true).is_none(), "an initial sync reads its account data");
        assert!(memory.state("@u:x", "E", Some(10), true).is_none(), "another device");
        memory.move_sums("!a:x").committed(Some((2, 0)));
        assert_eq!(memory.state("@u:x", "D", Some(10), true).expect("kept").notification_counts["!a:x"], (5, 1));
        drop(memory.forget(Part::Offsets, ["@u:x"]));
        assert!(memory.state("@u:x", "D", Some(10), true).is_none());
        assert!(memory.state("@u:x", "D", Some(10), false).is_some(), "sliding sync needs no offsets");
        memory.keep(memory.mark(), "@u:x", "D", read(7));
        drop(memory.move_sums("!a:x"));
        assert!(memory.state("@u:x", "D", Some(10), true).is_none(), "a failed write drops the sums");
        memory.keep(memory.mark(), "@u:x", "D", read(7));
        assert!(memory.state("@u:x", "D", Some(10), true).is_some(), "a read after it keeps them again");
    }

    #[test]
    fn reads_that_raced_a_change_are_not_kept() {
        let memory = SyncMemory::default();
        let mark = memory.mark();
        drop(memory.forget(Part::Devices, ["@u:x"]));
        memory.keep(mark, "@u:x", "D", read(7));
        assert!(memory.state("@u:x", "D", Some(10), false).is_none(), "a key claim came during the read");

        let memory = SyncMemory::default();
        let mark = memory.mark();
        let mut write = memory.move_sums("!a:x");
        memory.keep(mark, "@u:x", "D", read(7));
        write.committed(Some((1, 0)));
        drop(write);
        assert!(memory.state("@u:x", "D", Some(10), true).is_none(), "the sums were read while the room was written");
        assert!(memory.state("@u:x", "D", Some(10), false).is_some(), "the rest is kept");

        let mark = memory.mark();
        drop(memory.forget_all());
        memory.keep(mark, "@v:x", "D", read(7));
        assert!(memory.state("@v:x", "D", Some(10), false).is_none(), "a rewrite came during the read");
    }
}
