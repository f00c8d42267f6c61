//! The latest timeline events as written, kept in memory: a message in a room of 500
//! members wakes 500 syncs, and each would read the same new row again.
//!
//! Rows enter only from a committed room write ([`Store::write_room`]) and leave when
//! something rewrites them (a redaction updates the row; an expiry, an erasure or a purge
//! drops it before its transaction, so a row is never served older than the store's). A
//! position missing here is simply read from the store.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
};

use super::{EventRow, RoomWrite};

/// How many of the latest events are kept: at a busy server's 50 messages a second, the
/// last ~40 s, more than any woken sync looks back.
const KEPT: usize = 2048;

/// The latest events by stream position.
#[derive(Debug, Default)]
pub(super) struct RecentEvents {
    rows: Mutex<BTreeMap<i64, Arc<EventRow>>>,
}

impl RecentEvents {
    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Arc<EventRow>>> {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the timeline events of a committed write, and the redactions it made.
    pub(super) fn remember(&self, room_id: &str, write: &RoomWrite) {
        let mut rows = self.rows();
        for e in write.events.iter().filter(|e| e.stream_pos > 0 && !e.outlier) {
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
        self.rows().retain(|_, row| !event_ids.contains(row.event_id.as_str()));
    }

    /// Drops the rows at these positions (about to be purged).
    pub(super) fn forget_positions(&self, positions: &[i64]) {
        let mut rows = self.rows();
        for pos in positions {
            rows.remove(pos);
        }
    }

    /// The rows at `positions`, if every one is kept.
    pub(super) fn get(&self, positions: &[i64]) -> Option<Vec<EventRow>> {
        let rows = self.rows();
        positions.iter().map(|pos| rows.get(pos).map(|row| EventRow::clone(row))).collect()
    }
}
