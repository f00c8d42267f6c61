//! The latest timeline events as written, kept in memory: a message in a room of 500
//! members wakes 500 syncs, and each would read the same new row again.
//!
//! Rows enter only from a committed room write ([`Store::write_room`]) and leave when
//! something rewrites them (a redaction updates the row; an expiry, an erasure or a purge
//! drops it before its transaction, so a row is never served older than the store's; a
//! write during which something was dropped keeps none of its own rows, which the rewrite
//! may have reached between the write's commit and its keeping them). A position missing
//! here is simply read from the store.
//!
//! Beside them, the current member events read for lazy-loaded members: the sender of a
//! message in a room of 500 is looked up by each of the 500 syncs it wakes that was not
//! sent them yet. Those enter from reads, so a read that began before something changed
//! them is not kept (an epoch, bumped after every such change commits): a write that
//! touches a room's state or redacts drops that room's, a rewrite (expiry, erasure,
//! purge, backfill) drops them all.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use super::{EventRow, RoomWrite};

/// How many of the latest events are kept: at a busy server's 50 messages a second, the
/// last ~40 s, more than any woken sync looks back.
const KEPT: usize = 2048;

/// How many current member events are kept, all rooms together: a sector server's active
/// senders, ~1 KiB each. Past it they are all dropped and read again as needed.
const MEMBERS_KEPT: usize = 8192;

/// The latest events by stream position.
#[derive(Debug, Default)]
pub(super) struct RecentEvents {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    rows: BTreeMap<i64, Arc<EventRow>>,
    /// How many times rows were dropped for a rewrite: a write during which that happened
    /// keeps none of its rows, as the rewrite may have touched them after they committed.
    forgets: u64,
    /// Current member events by room, then by user.
    members: HashMap<String, HashMap<String, Arc<EventRow>>>,
    members_len: usize,
    /// Bumped after every change that may make a kept member event stale.
    member_epoch: u64,
}

impl RecentEvents {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The mark a write takes before it runs, for [`Self::remember`].
    pub(super) fn mark(&self) -> u64 {
        self.kept().forgets
    }

    /// Keeps the timeline events of a committed write that began at `mark`, and the
    /// redactions it made.
    pub(super) fn remember(&self, room_id: &str, write: &RoomWrite, mark: u64) {
        let mut kept = self.kept();
        let rewritten = kept.forgets != mark;
        let rows = &mut kept.rows;
        for e in write.events.iter().filter(|e| e.stream_pos > 0 && !e.outlier && !rewritten) {
            let (txn_device_id, txn_id) = e.txn.clone().unzip();
            rows.insert(
                e.stream_pos,
                Arc::new(EventRow {
                    stream_pos: e.stream_pos,
                    event_id: e.event_id.clone(),
                    room_id: room_id.to_owned(),
                    json: e.json.clone(),
                    state_group_before: e.state_group_before,
                    redacted_by: None,
                    txn_device_id,
                    txn_id,
                    replaces_state: e.replaces_state.clone(),
                    purged: false,
                }),
            );
        }
        if !write.redactions.is_empty() {
            for row in rows.values_mut() {
                if let Some((_, json, by)) = write.redactions.iter().find(|(target, _, _)| *target == row.event_id) {
                    let row = Arc::make_mut(row);
                    row.json = json.clone();
                    row.redacted_by = Some(by.clone());
                }
            }
        }
        while rows.len() > KEPT {
            rows.pop_first();
        }
    }

    /// Drops the rows of these events (about to be rewritten).
    pub(super) fn forget_events(&self, event_ids: &HashSet<&str>) {
        let mut kept = self.kept();
        kept.forgets += 1;
        kept.rows.retain(|_, row| !event_ids.contains(row.event_id.as_str()));
    }

    /// Drops the rows at these positions (about to be purged).
    pub(super) fn forget_positions(&self, positions: &[i64]) {
        let mut kept = self.kept();
        kept.forgets += 1;
        for pos in positions {
            kept.rows.remove(pos);
        }
    }

    /// The rows at `positions`, if every one is kept.
    pub(super) fn get(&self, positions: &[i64]) -> Option<Vec<EventRow>> {
        let kept = self.kept();
        positions.iter().map(|pos| kept.rows.get(pos).map(|row| EventRow::clone(row))).collect()
    }

    /// The mark a read of current member events takes before it runs, for
    /// [`Self::remember_members`].
    pub(super) fn member_mark(&self) -> u64 {
        self.kept().member_epoch
    }

    /// The kept current member events of `(room, user)` pairs, and the pairs not kept.
    pub(super) fn members(&self, pairs: &[(String, String)]) -> (Vec<EventRow>, Vec<(String, String)>) {
        let kept = self.kept();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for (room, user) in pairs {
            match kept.members.get(room).and_then(|users| users.get(user)) {
                Some(row) => found.push(EventRow::clone(row)),
                None => missing.push((room.clone(), user.clone())),
            }
        }
        (found, missing)
    }

    /// Keeps current member events read as `(user, row)` by a read that began at `mark`,
    /// unless something changed member events since.
    pub(super) fn remember_members(&self, rows: &[(String, EventRow)], mark: u64) {
        let mut kept = self.kept();
        if kept.member_epoch != mark {
            return;
        }
        if kept.members_len + rows.len() > MEMBERS_KEPT {
            kept.members.clear();
            kept.members_len = 0;
        }
        for (user, row) in rows.iter().take(MEMBERS_KEPT) {
            let previous =
                kept.members.entry(row.room_id.clone()).or_default().insert(user.clone(), Arc::new(row.clone()));
            kept.members_len += usize::from(previous.is_none());
        }
    }

    /// Drops the kept member events of `room_id` (all rooms' for `None`), after a change to
    /// them committed.
    pub(super) fn forget_members(&self, room_id: Option<&str>) {
        let mut kept = self.kept();
        kept.member_epoch += 1;
        match room_id {
            Some(room) => {
                let dropped = kept.members.remove(room).map_or(0, |users| users.len());
                kept.members_len -= dropped;
            }
            None => {
                kept.members.clear();
                kept.members_len = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewEvent;

    fn event(pos: i64, body: &str) -> NewEvent {
        NewEvent {
            stream_pos: pos,
            event_id: format!("$e{pos}"),
            sender: "@a:x".into(),
            event_type: "m.room.message".into(),
            state_key: None,
            membership: None,
            depth: pos,
            origin_server_ts: 0,
            json: format!(r#"{{"body":"{body}"}}"#),
            prev_events: Vec::new(),
            state_group_before: 1,
            state_group_after: 1,
            rel_type: None,
            relates_to: None,
            thread_root: None,
            txn: None,
            replaces_state: None,
            notify: 0,
            outlier: false,
            expires_ts: None,
        }
    }

    fn write(events: Vec<NewEvent>) -> RoomWrite {
        RoomWrite { events, ..Default::default() }
    }

    #[test]
    fn serves_only_when_every_position_is_kept_and_as_redacted() {
        let recent = RecentEvents::default();
        let mut outlier = event(3, "hors");
        outlier.outlier = true;
        recent.remember("!r:x", &write(vec![event(1, "un"), event(2, "deux"), outlier]), recent.mark());
        assert_eq!(recent.get(&[2, 1]).unwrap().iter().map(|r| r.stream_pos).collect::<Vec<_>>(), [2, 1]);
        assert!(recent.get(&[1, 3]).is_none(), "an outlier is not in the timeline");

        let mut redaction = write(vec![event(4, "")]);
        redaction.redactions = vec![("$e1".into(), "{}".into(), "$e4".into())];
        recent.remember("!r:x", &redaction, recent.mark());
        let row = &recent.get(&[1]).unwrap()[0];
        assert_eq!((row.json.as_str(), row.redacted_by.as_deref()), ("{}", Some("$e4")));
    }

    #[test]
    fn a_write_overtaken_by_a_rewrite_keeps_nothing() {
        let recent = RecentEvents::default();
        recent.remember("!r:x", &write(vec![event(1, "un")]), recent.mark());
        let mark = recent.mark();
        // An expiry drops a row while a write is committing: the write's rows may have been
        // rewritten after their commit, so they are read from the store instead.
        recent.forget_events(&["$e1"].into());
        recent.remember("!r:x", &write(vec![event(2, "deux")]), mark);
        assert!(recent.get(&[1]).is_none() && recent.get(&[2]).is_none());
        recent.remember("!r:x", &write(vec![event(3, "trois")]), recent.mark());
        assert!(recent.get(&[3]).is_some());
    }

    #[test]
    fn keeps_the_latest_only() {
        let recent = RecentEvents::default();
        let events = (1..=KEPT as i64 + 10).map(|pos| event(pos, "m")).collect();
        recent.remember("!r:x", &write(events), recent.mark());
        assert!(recent.get(&[10]).is_none());
        assert!(recent.get(&[11, KEPT as i64 + 10]).is_some());
    }

    fn member_row(room: &str, pos: i64) -> EventRow {
        EventRow {
            stream_pos: pos,
            event_id: format!("$m{pos}"),
            room_id: room.into(),
            json: "{}".into(),
            state_group_before: 1,
            redacted_by: None,
            txn_device_id: None,
            txn_id: None,
            replaces_state: None,
            purged: false,
        }
    }

    #[test]
    fn member_events_read_before_a_change_are_not_kept() {
        let recent = RecentEvents::default();
        let pairs = [("!a:x".to_owned(), "@u:x".to_owned()), ("!b:x".to_owned(), "@u:x".to_owned())];
        let mark = recent.member_mark();
        recent
            .remember_members(&[("@u:x".into(), member_row("!a:x", 1)), ("@u:x".into(), member_row("!b:x", 2))], mark);
        let (found, missing) = recent.members(&pairs);
        assert_eq!((found.len(), missing.len()), (2, 0));

        // A read that began before a change in !a committed keeps nothing.
        let stale = recent.member_mark();
        recent.forget_members(Some("!a:x"));
        recent.remember_members(&[("@u:x".into(), member_row("!a:x", 1))], stale);
        let (found, missing) = recent.members(&pairs);
        assert_eq!(found.iter().map(|r| r.room_id.as_str()).collect::<Vec<_>>(), ["!b:x"], "!b's is still kept");
        assert_eq!(missing, [pairs[0].clone()]);

        recent.forget_members(None);
        assert_eq!(recent.members(&pairs).1.len(), 2, "a rewrite drops them all");
    }
}
