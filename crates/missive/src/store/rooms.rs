//! Rooms: the event graph, state groups, current state, memberships, aliases, directory.

use std::collections::{HashMap, HashSet};

use sqlx::{Row, any::AnyRow};

use super::{
    Level, Notifications, OffsetChange, Params, Store, StoreError, StoreResult, notifications, now_ms,
    script::{Script, list, rows},
    sql,
    sync_memory::Part,
};

/// A stored event as read back.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub stream_pos: i64,
    pub event_id: String,
    pub room_id: String,
    pub json: String,
    pub state_group_before: i64,
    pub redacted_by: Option<String>,
    pub txn_device_id: Option<String>,
    pub txn_id: Option<String>,
    /// For a state event: the state event it replaced.
    pub replaces_state: Option<String>,
    /// Emptied by the retention purge and kept only for the room's graph: never served to
    /// clients.
    pub purged: bool,
}

pub(super) const EVENT_COLUMNS: &str = "stream_pos, event_id, room_id, json, state_group_before, redacted_by, txn_device_id, txn_id, replaces_state, purged";

/// How many columns `EVENT_COLUMNS` names: a query selecting more reads them after these.
pub(super) const EVENT_COLUMN_COUNT: usize = 10;

/// The event columns prefixed with `e.`, for joins.
pub(super) const EVENT_COLUMNS_E: &str = "e.stream_pos, e.event_id, e.room_id, e.json, e.state_group_before, e.redacted_by, e.txn_device_id, e.txn_id, \
     e.replaces_state, e.purged";

pub(super) fn event_row(r: AnyRow) -> EventRow {
    EventRow {
        stream_pos: r.get(0),
        event_id: r.get(1),
        room_id: r.get(2),
        json: r.get(3),
        state_group_before: r.get(4),
        redacted_by: r.get(5),
        txn_device_id: r.get(6),
        txn_id: r.get(7),
        replaces_state: r.get(8),
        purged: r.get::<i64, _>(EVENT_COLUMN_COUNT - 1) != 0,
    }
}

/// An event relating to another, for bundled aggregations.
#[derive(Debug, Clone)]
pub struct RelationRow {
    pub event_id: String,
    pub relates_to: String,
    pub rel_type: String,
    pub json: String,
}

/// One `(event type, state key) → event ID` entry of a room state.
pub type StateEntry = (String, String, String);

/// Resolves a state group from its chain links, memoizing every group on the way so that
/// groups sharing ancestors are built once. Iterative: chains can be long.
fn resolve_group<'a>(
    group: i64,
    links: &HashMap<i64, (Option<i64>, Vec<StateEntry>)>,
    resolved: &'a mut HashMap<i64, HashMap<(String, String), String>>,
) -> &'a HashMap<(String, String), String> {
    let mut pending = Vec::new();
    let mut cursor = Some(group);
    while let Some(g) = cursor {
        if resolved.contains_key(&g) {
            break;
        }
        pending.push(g);
        cursor = links.get(&g).and_then(|(prev, _)| *prev);
    }
    while let Some(g) = pending.pop() {
        let mut state =
            links.get(&g).and_then(|(prev, _)| prev.and_then(|p| resolved.get(&p)).cloned()).unwrap_or_default();
        for (t, k, e) in links.get(&g).map(|(_, d)| d.as_slice()).unwrap_or_default() {
            state.insert((t.clone(), k.clone()), e.clone());
        }
        resolved.insert(g, state);
    }
    resolved.entry(group).or_default()
}

/// A room to create with the first batch of its events.
#[derive(Debug, Clone)]
pub struct NewRoom {
    pub room_id: String,
    pub room_version: String,
    pub creator: String,
}

/// An event to persist.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub stream_pos: i64,
    pub event_id: String,
    pub sender: String,
    pub event_type: String,
    pub state_key: Option<String>,
    /// For `m.room.member` events: the new membership.
    pub membership: Option<String>,
    pub depth: i64,
    pub origin_server_ts: i64,
    pub json: String,
    pub prev_events: Vec<String>,
    pub state_group_before: i64,
    pub state_group_after: i64,
    pub rel_type: Option<String>,
    pub relates_to: Option<String>,
    pub thread_root: Option<String>,
    /// `(device ID, transaction ID)` of a local client send.
    pub txn: Option<(String, String)>,
    /// For a state event: the state event it replaced.
    pub replaces_state: Option<String>,
    /// Notification level for the room's local members but the sender and the exceptions.
    pub notify: Level,
    /// Kept outside the room's timeline (state of a remote join, soft-failed).
    pub outlier: bool,
    /// When the sender asked for the message to disappear (see `rooms/expiry.rs`).
    pub expires_ts: Option<i64>,
}

/// A state group: a delta over `prev_group`, or a full snapshot when `prev_group` is `None`.
#[derive(Debug, Clone)]
pub struct NewStateGroup {
    pub id: i64,
    pub prev_group: Option<i64>,
    pub chain_len: i64,
    pub delta: Vec<StateEntry>,
}

/// Everything one write to a room changes, committed as one transaction.
#[derive(Debug, Default)]
pub struct RoomWrite {
    pub new_room: Option<NewRoom>,
    pub events: Vec<NewEvent>,
    pub state_groups: Vec<NewStateGroup>,
    /// `(target event ID, pruned JSON, redaction event ID)`: content is really deleted.
    pub redactions: Vec<(String, String, String)>,
    pub notifications: Notifications,
    pub aliases: Vec<(String, String)>,
    pub publish: Option<bool>,
    /// `(destination server, stream position)`: events to send to other servers.
    pub outbox: Vec<(String, i64)>,
    /// Where branches of the room met: the current state replaced by their resolution.
    pub resolutions: Vec<Resolution>,
    /// The room's leaves are only this write's (a room joined again after a while away).
    pub reset_extremities: bool,
    /// A partial-state join begins or ends with this write.
    pub partial_state: Option<PartialStateChange>,
    /// Remote users who, after this write, no longer share this room with a local user:
    /// their cached device lists go unless another room is shared.
    pub unshared: Vec<String>,
    /// Who the events notify, among users with a pusher: handed to push delivery once
    /// committed, not written.
    pub pushes: Vec<super::PushCandidate>,
}

impl RoomWrite {
    /// Whether the write may change a current member event of its room or its row: new
    /// state, state resolved or completed, a redaction (which prunes its target in place).
    pub(super) fn changes_member_events(&self) -> bool {
        self.new_room.is_some()
            || self.events.iter().any(|e| e.state_key.is_some())
            || !self.redactions.is_empty()
            || !self.resolutions.is_empty()
            || self.reset_extremities
            || self.partial_state.is_some()
    }
}

/// The start or the end of a room's partial state (see `partial_state_rooms`).
#[derive(Debug, Clone)]
pub enum PartialStateChange {
    /// Joined with the members left out: the join, and the servers named as in the room.
    Begin { join_event_id: String, servers: Vec<String> },
    /// The full state has been fetched: the room's snapshot state groups made since the
    /// join, completed with it (`(group, whole delta)`), replace theirs.
    End { completed_groups: Vec<(i64, Vec<StateEntry>)> },
}

/// A room of partial state: the join whose state is still to fetch, and the servers the
/// resident server named as in the room.
#[derive(Debug, Clone)]
pub struct PartialState {
    pub join_event_id: String,
    pub servers: Vec<String>,
}

/// The room's current state as state resolution gives it where branches meet, applied
/// after one event of the write.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// Index in the write's events of the event after which it applies.
    pub after_event: usize,
    /// The state group holding the resolved state.
    pub group: i64,
    /// `(type, state key, event ID, membership)`: entries that differ from what the events
    /// before it left.
    pub set: Vec<(String, String, String, Option<String>)>,
    /// `(type, state key)`: entries the resolution drops.
    pub removed: Vec<(String, String)>,
    /// The stream position at which the memberships it changes are seen.
    pub stream_pos: i64,
}

impl RoomWrite {
    /// Whether the write changes nothing.
    pub fn is_empty(&self) -> bool {
        self.new_room.is_none()
            && self.events.is_empty()
            && self.state_groups.is_empty()
            && self.redactions.is_empty()
            && self.notifications.is_empty()
            && self.aliases.is_empty()
            && self.publish.is_none()
            && self.outbox.is_empty()
            && self.resolutions.is_empty()
            && !self.reset_extremities
            && self.partial_state.is_none()
            && self.unshared.is_empty()
    }

    /// Appends a write built on this one, so that both commit as one.
    pub fn append(&mut self, next: RoomWrite) {
        let next_events = next.events.len();
        self.new_room = self.new_room.take().or(next.new_room);
        self.events.extend(next.events);
        self.state_groups.extend(next.state_groups);
        self.redactions.extend(next.redactions);
        self.notifications.append(next.notifications);
        self.aliases.extend(next.aliases);
        self.publish = next.publish.or(self.publish);
        self.outbox.extend(next.outbox);
        self.unshared.extend(next.unshared);
        self.pushes.extend(next.pushes);
        let offset = self.events.len() - next_events;
        self.reset_extremities |= next.reset_extremities;
        self.partial_state = next.partial_state.or(self.partial_state.take());
        self.resolutions
            .extend(next.resolutions.into_iter().map(|r| Resolution { after_event: r.after_event + offset, ..r }));
    }
}

/// A user's current membership in a room.
#[derive(Debug, Clone)]
pub struct MembershipRow {
    pub room_id: String,
    pub user_id: String,
    pub membership: String,
    pub event_id: String,
    pub stream_pos: i64,
}

impl Store {
    /// Commits a room write atomically: room, state groups, events, current state,
    /// memberships, extremities, transaction IDs, redactions, notifications.
    pub async fn write_room(&self, room_id: &str, write: &RoomWrite) -> StoreResult<()> {
        let mark = self.recent.mark();
        // The syncs this write wakes that lazy-load members look up its senders' member
        // events, all at once: those are read (unless kept) beside the write, so that they
        // find them kept. The write changes none of them, or they would be dropped after it.
        let changes_members = write.changes_member_events();
        let mut senders: Vec<(String, String)> = Vec::new();
        if !changes_members {
            senders = write
                .events
                .iter()
                .filter(|e| e.stream_pos > 0 && !e.outlier)
                .map(|e| (room_id.to_owned(), e.sender.clone()))
                .collect();
            senders.dedup();
        }
        let (script, members) = self.room_script(room_id, write);
        // What the syncs keep of the users whose memberships and offsets this write changes
        // goes once it is done, and the room's sums move with it (see `sync_memory.rs`).
        let moved = write.notifications.offsets.iter().filter(|(_, c)| **c != OffsetChange::Delta(0, 0));
        let _members = self.sync_memory.forget(Part::Memberships, members);
        let _offsets = self.sync_memory.forget(Part::Offsets, moved.map(|(user, _)| user.as_str()));
        let sums = write.notifications.generic;
        let mut sums_move = (sums != (0, 0) || write.new_room.is_some()).then(|| self.sync_memory.move_sums(room_id));
        let (written, warmed) = tokio::join!(script.run(self), async {
            if senders.is_empty() { Ok(Vec::new()) } else { self.current_members(&senders).await }
        });
        if let Some(sums_move) = &mut sums_move
            && written.is_ok()
            && write.new_room.is_none()
        {
            sums_move.committed(Some(sums));
        }
        written?;
        if let Err(e) = warmed {
            // Only a head start for the syncs: they read what is missing themselves.
            tracing::debug!(error = %e, "member events not read ahead");
        }
        self.recent.remember(room_id, write, mark);
        if changes_members {
            self.recent.forget_members(Some(room_id));
        }
        Ok(())
    }

    /// The timeline events at `positions` from the latest ones kept in memory, if every one
    /// is kept (see `recent.rs`).
    pub fn recent_events(&self, positions: &[i64]) -> Option<Vec<EventRow>> {
        self.recent.get(positions)
    }

    /// The statements of a room write. One script touches each row once (see `script`):
    /// state and memberships changed twice in a batch are written with their last value.
    /// Returns it with the users whose membership row it writes.
    fn room_script(&self, room_id: &str, write: &RoomWrite) -> (Script, Vec<String>) {
        let now = now_ms();
        let mut script = Script::default();
        notifications::push_statements(&mut script, room_id, &write.notifications);
        let (notify, highlight) = write.notifications.generic;
        let current = CurrentState::of(write);
        let state_group = current.group;
        let facts = FactsChange::of(write, &current);
        if let Some(room) = &write.new_room {
            script
                .push(
                    "INSERT INTO rooms (room_id, room_version, creator, state_group, published, created_ts, \
                     notify_seq, highlight_seq, bump_pos, encrypted, room_type) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&room.room_id)
                .bind(&room.room_version)
                .bind(&room.creator)
                .bind(state_group.unwrap_or(0))
                .bind(write.publish.unwrap_or(false) as i64)
                .bind(now)
                .bind(notify)
                .bind(highlight)
                .bind(facts.bump)
                .bind(facts.encrypted.unwrap_or(false) as i64)
                .bind(facts.room_type);
        } else if state_group.is_some() || write.publish.is_some() || (notify, highlight) != (0, 0) || facts.any() {
            // A room's events are written in stream order, but a bump is only ever raised.
            script
                .push(
                    "UPDATE rooms SET state_group = COALESCE(?, state_group), published = COALESCE(?, published), \
                     notify_seq = notify_seq + ?, highlight_seq = highlight_seq + ?, \
                     bump_pos = CASE WHEN COALESCE(bump_pos, 0) < COALESCE(?, 0) THEN ? ELSE bump_pos END, \
                     encrypted = COALESCE(?, encrypted), room_type = COALESCE(?, room_type) WHERE room_id = ?",
                )
                .bind(state_group)
                .bind(write.publish.map(i64::from))
                .bind(notify)
                .bind(highlight)
                .bind(facts.bump)
                .bind(facts.bump)
                .bind(facts.encrypted.map(i64::from))
                .bind(facts.room_type)
                .bind(room_id);
        }
        for chunk in write.state_groups.chunks(100) {
            let statement = script.push(format!(
                "INSERT INTO state_groups (id, room_id, prev_group, chain_len, delta, created_ts) VALUES {}",
                rows(chunk.len(), 6)
            ));
            for group in chunk {
                // A list of string triples always serialises.
                let delta = serde_json::to_string(&group.delta).unwrap_or_default();
                statement
                    .bind(group.id)
                    .bind(room_id)
                    .bind(group.prev_group)
                    .bind(group.chain_len)
                    .bind(delta)
                    .bind(now);
            }
        }
        // One multi-row insert per chunk: a group-committed batch is one statement.
        for chunk in write.events.chunks(50) {
            insert_events(&mut script, room_id, chunk, now);
        }
        for event in write.events.iter().filter(|e| e.expires_ts.is_some()) {
            script
                .push(
                    "INSERT INTO event_expiry (event_id, room_id, expires_ts) VALUES (?, ?, ?) \
                     ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(&event.event_id)
                .bind(room_id)
                .bind(event.expires_ts);
        }
        if !current.state.is_empty() {
            let statement = script.push(format!(
                "INSERT INTO room_current_state (room_id, event_type, state_key, event_id) VALUES {} \
                 ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET event_id = excluded.event_id",
                rows(current.state.len(), 4)
            ));
            for ((event_type, state_key), event_id) in &current.state {
                statement.bind(room_id).bind(*event_type).bind(*state_key).bind(*event_id);
            }
        }
        for (event_type, state_key) in &current.removed {
            script
                .push("DELETE FROM room_current_state WHERE room_id = ? AND event_type = ? AND state_key = ?")
                .bind(room_id)
                .bind(*event_type)
                .bind(*state_key);
        }
        if !current.members.is_empty() {
            let statement = script.push(format!(
                "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_pos, forgotten) VALUES {} \
                 ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, \
                 event_id = excluded.event_id, stream_pos = excluded.stream_pos, forgotten = 0",
                rows(current.members.len(), 6)
            ));
            for (user_id, (event_id, membership, pos)) in &current.members {
                statement.bind(room_id).bind(*user_id).bind(*membership).bind(*event_id).bind(*pos).bind(0i64);
            }
        }
        // A remote user's cached device list is kept only while a local user shares a room
        // with them. The script's statements all read the database as it was before it, so
        // this room's part comes from the write (`unshared`) and the table speaks only for
        // the other rooms.
        for chunk in write.unshared.chunks(500) {
            let statement = script.push(format!(
                "DELETE FROM remote_device_lists WHERE user_id IN ({}) AND NOT EXISTS (SELECT 1 FROM {} \
                 AND theirs.room_id <> ?)",
                list(chunk.len()),
                super::remote_devices::rooms_shared_with("remote_device_lists.user_id")
            ));
            for user in chunk {
                statement.bind(user);
            }
            statement.bind(room_id);
        }
        // The DAG's leaves change once per batch: the events it builds on stop being leaves,
        // and its events that nothing in it builds on become leaves.
        // Outliers (negative positions: state received with a remote join) are never leaves.
        let in_batch: HashSet<&str> =
            write.events.iter().filter(|e| e.stream_pos > 0).map(|e| e.event_id.as_str()).collect();
        let referenced: HashSet<&str> =
            write.events.iter().flat_map(|e| e.prev_events.iter().map(String::as_str)).collect();
        let gone: Vec<&str> = referenced.difference(&in_batch).copied().collect();
        if write.reset_extremities {
            script.push("DELETE FROM room_extremities WHERE room_id = ?").bind(room_id);
        } else if !gone.is_empty() {
            let statement = script
                .push(format!("DELETE FROM room_extremities WHERE room_id = ? AND event_id IN ({})", list(gone.len())));
            statement.bind(room_id);
            for prev in gone {
                statement.bind(prev);
            }
        }
        let leaves: Vec<&str> = in_batch.difference(&referenced).copied().collect();
        if !leaves.is_empty() {
            let statement = script
                .push(format!("INSERT INTO room_extremities (room_id, event_id) VALUES {}", rows(leaves.len(), 2)));
            for leaf in leaves {
                statement.bind(room_id).bind(leaf);
            }
        }
        // A second redaction of the same event in one batch finds it already pruned.
        let mut redacted = HashSet::new();
        for (target, json, by) in write.redactions.iter().filter(|(target, _, _)| redacted.insert(target)) {
            script
                .push(
                    "UPDATE events SET json = ?, redacted_by = ?, rel_type = NULL, relates_to = NULL, \
                     thread_root = NULL WHERE event_id = ?",
                )
                .bind(json)
                .bind(by)
                .bind(target);
        }
        for chunk in write.outbox.chunks(100) {
            let statement = script.push(format!(
                "INSERT INTO federation_outbox (destination, stream_pos) VALUES {} ON CONFLICT DO NOTHING",
                rows(chunk.len(), 2)
            ));
            for (destination, pos) in chunk {
                statement.bind(destination).bind(*pos);
            }
        }
        match &write.partial_state {
            Some(PartialStateChange::Begin { join_event_id, servers }) => {
                script
                    .push(
                        "INSERT INTO partial_state_rooms (room_id, join_event_id, servers) VALUES (?, ?, ?) \
                         ON CONFLICT (room_id) DO UPDATE SET join_event_id = excluded.join_event_id, \
                         servers = excluded.servers",
                    )
                    .bind(room_id)
                    .bind(join_event_id)
                    .bind(servers.join(" "));
            }
            Some(PartialStateChange::End { completed_groups }) => {
                script.push("DELETE FROM partial_state_rooms WHERE room_id = ?").bind(room_id);
                for (group, delta) in completed_groups {
                    // A list of string triples always serialises.
                    let delta = serde_json::to_string(delta).unwrap_or_default();
                    script.push("UPDATE state_groups SET delta = ? WHERE id = ?").bind(delta).bind(*group);
                }
            }
            None => {}
        }
        if !write.aliases.is_empty() {
            let statement = script.push(format!(
                "INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES {}",
                rows(write.aliases.len(), 4)
            ));
            for (alias, creator) in &write.aliases {
                statement.bind(alias).bind(room_id).bind(creator).bind(now);
            }
        }
        (script, current.members.keys().map(|user| (*user).to_owned()).collect())
    }

    /// The partial state of a room, when it has one.
    pub async fn partial_state(&self, room_id: &str) -> StoreResult<Option<PartialState>> {
        let row = sqlx::query("SELECT join_event_id, servers FROM partial_state_rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| partial_state_of(r.get(0), r.get(1))))
    }

    /// The snapshot state groups (those stored whole) of a room from `from_group` on, with
    /// their state.
    pub async fn snapshot_groups_since(
        &self,
        room_id: &str,
        from_group: i64,
    ) -> StoreResult<Vec<(i64, Vec<StateEntry>)>> {
        let rows =
            sqlx::query("SELECT id, delta FROM state_groups WHERE room_id = $1 AND id >= $2 AND prev_group IS NULL")
                .bind(room_id)
                .bind(from_group)
                .fetch_all(&self.read)
                .await?;
        rows.into_iter()
            .map(|r| {
                let delta: String = r.get(1);
                let entries = serde_json::from_str(&delta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((r.get(0), entries))
            })
            .collect()
    }

    /// Every room of partial state, with its partial state.
    pub async fn partial_state_rooms(&self) -> StoreResult<Vec<(String, PartialState)>> {
        let rows = sqlx::query("SELECT room_id, join_event_id, servers FROM partial_state_rooms")
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), partial_state_of(r.get(1), r.get(2)))).collect())
    }

    /// The lowest stream position used (outliers take positions below zero).
    pub async fn min_stream_pos(&self) -> StoreResult<i64> {
        let pos: Option<i64> = sqlx::query_scalar("SELECT MIN(stream_pos) FROM events").fetch_one(&self.write).await?;
        Ok(pos.unwrap_or(0).min(0))
    }

    /// Room version and current state group of a room.
    pub async fn room(&self, room_id: &str) -> StoreResult<Option<(String, i64)>> {
        let row = sqlx::query("SELECT room_version, state_group FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// The room's current state as `(type, state_key, event_id)`.
    pub async fn current_state(&self, room_id: &str) -> StoreResult<Vec<StateEntry>> {
        let rows = sqlx::query("SELECT event_type, state_key, event_id FROM room_current_state WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// The current state event of a given type and key.
    pub async fn current_state_event(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> StoreResult<Option<EventRow>> {
        let row = sqlx::query(sql(format!(
            "SELECT {} FROM room_current_state s JOIN events e ON e.event_id = s.event_id \
             WHERE s.room_id = $1 AND s.event_type = $2 AND s.state_key = $3",
            EVENT_COLUMNS_E
        )))
        .bind(room_id)
        .bind(event_type)
        .bind(state_key)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(event_row))
    }

    /// Which of the given event IDs this server holds (IDs only: a cheap presence check).
    pub async fn held_event_ids(&self, event_ids: &[String]) -> StoreResult<HashSet<String>> {
        let mut out = HashSet::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(200) {
            let text = format!(
                "SELECT event_id FROM events WHERE event_id IN ({})",
                Params::new(self.backend).list(chunk.len())
            );
            let mut query = sqlx::query(sql(text));
            for id in chunk {
                query = query.bind(id);
            }
            out.extend(query.fetch_all(&self.read).await?.into_iter().map(|r| r.get::<String, _>(0)));
        }
        Ok(out)
    }

    /// Events by ID (those that exist), in no particular order.
    pub async fn events(&self, event_ids: &[String]) -> StoreResult<Vec<EventRow>> {
        let mut out = Vec::with_capacity(event_ids.len());
        // Chunked IN lists keep the statement count low without exceeding parameter limits.
        for chunk in event_ids.chunks(200) {
            let sql_text = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN ({})",
                Params::new(self.backend).list(chunk.len())
            );
            let mut query = sqlx::query(sql(sql_text));
            for id in chunk {
                query = query.bind(id);
            }
            out.extend(query.fetch_all(&self.read).await?.into_iter().map(event_row));
        }
        Ok(out)
    }

    /// One event by ID.
    pub async fn event(&self, event_id: &str) -> StoreResult<Option<EventRow>> {
        let row = sqlx::query(sql(format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1")))
            .bind(event_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(event_row))
    }

    /// The forward extremities of a room with their depths.
    pub async fn extremities(&self, room_id: &str) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT x.event_id, e.depth FROM room_extremities x JOIN events e ON e.event_id = x.event_id WHERE x.room_id = $1",
        )
        .bind(room_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The full state of a state group, resolved along its delta chain.
    pub async fn state_group(&self, group: i64) -> StoreResult<Vec<StateEntry>> {
        Ok(self.state_groups(&[group]).await?.remove(&group).unwrap_or_default())
    }

    /// The full state of many state groups, each resolved along its delta chain. One query
    /// per chunk walks every chain at once and returns each group on them once; groups that
    /// share ancestors (a room's successive states) are then resolved from each other.
    pub async fn state_groups(&self, groups: &[i64]) -> StoreResult<HashMap<i64, Vec<StateEntry>>> {
        let mut out = HashMap::with_capacity(groups.len());
        for chunk in groups.chunks(200) {
            let text = format!(
                "WITH RECURSIVE chain(id) AS ( \
                     SELECT id FROM state_groups WHERE id IN ({}) \
                     UNION \
                     SELECT g.prev_group FROM state_groups g JOIN chain c ON g.id = c.id \
                     WHERE g.prev_group IS NOT NULL \
                 ) SELECT g.id, g.prev_group, g.delta FROM state_groups g JOIN chain c ON g.id = c.id",
                Params::new(self.backend).list(chunk.len())
            );
            let mut query = sqlx::query(sql(text));
            for group in chunk {
                query = query.bind(group);
            }
            let mut links: HashMap<i64, (Option<i64>, Vec<StateEntry>)> = HashMap::new();
            for row in query.fetch_all(&self.read).await? {
                let delta: String = row.get(2);
                let entries: Vec<StateEntry> =
                    serde_json::from_str(&delta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                links.insert(row.get(0), (row.get(1), entries));
            }
            let mut resolved: HashMap<i64, HashMap<(String, String), String>> = HashMap::new();
            for group in chunk {
                let state = resolve_group(*group, &links, &mut resolved);
                out.insert(*group, state.iter().map(|((t, k), e)| (t.clone(), k.clone(), e.clone())).collect());
            }
        }
        Ok(out)
    }

    /// Chain length of a state group (0 for a snapshot).
    pub async fn state_group_chain_len(&self, group: i64) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT chain_len FROM state_groups WHERE id = $1")
            .bind(group)
            .fetch_optional(&self.read)
            .await?
            .unwrap_or(0))
    }

    /// Highest stream position and state group ID in use, to seed the allocators.
    pub async fn max_ids(&self) -> StoreResult<(i64, i64)> {
        let mut max_pos = 0;
        for table in ["events", "account_data", "receipts", "to_device", "device_list_changes"] {
            let pos: Option<i64> =
                sqlx::query_scalar(sql(format!("SELECT MAX(stream_pos) FROM {table}"))).fetch_one(&self.write).await?;
            max_pos = max_pos.max(pos.unwrap_or(0));
        }
        let group: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM state_groups").fetch_one(&self.write).await?;
        Ok((max_pos, group.unwrap_or(0)))
    }

    /// The events already stored in a room for `(sender, device, transaction ID)` triples, by
    /// triple (a transaction ID is scoped to its endpoint, which names the room).
    pub async fn txn_events(
        &self,
        room_id: &str,
        txns: &[(String, String, String)],
    ) -> StoreResult<HashMap<(String, String, String), String>> {
        let mut out = HashMap::new();
        for chunk in txns.chunks(100) {
            // The room in every term: the planner then searches `events_txn` per term.
            let mut params = Params::new(self.backend);
            let terms: Vec<String> = (0..chunk.len())
                .map(|_| {
                    let (room, sender, device, txn) = (params.next(), params.next(), params.next(), params.next());
                    format!("(room_id = {room} AND sender = {sender} AND txn_device_id = {device} AND txn_id = {txn})")
                })
                .collect();
            let text = format!(
                "SELECT sender, txn_device_id, txn_id, event_id FROM events WHERE txn_id IS NOT NULL AND ({})",
                terms.join(" OR ")
            );
            let mut query = sqlx::query(sql(text));
            for (sender, device, txn) in chunk {
                query = query.bind(room_id).bind(sender).bind(device).bind(txn);
            }
            for r in query.fetch_all(&self.read).await? {
                out.insert((r.get(0), r.get(1), r.get(2)), r.get(3));
            }
        }
        Ok(out)
    }

    /// The transaction IDs a device used in a room, at most `limit` of them.
    pub async fn txn_ids(&self, room_id: &str, sender: &str, device: &str, limit: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT txn_id FROM events WHERE sender = $1 AND txn_device_id = $2 AND txn_id IS NOT NULL \
             AND room_id = $3 LIMIT $4",
        )
        .bind(sender)
        .bind(device)
        .bind(room_id)
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    /// A user's memberships (all states), optionally only those changed after `since`.
    pub async fn memberships_of_user(&self, user_id: &str, since: Option<i64>) -> StoreResult<Vec<MembershipRow>> {
        let rows = sqlx::query(
            "SELECT room_id, user_id, membership, event_id, stream_pos FROM memberships \
             WHERE user_id = $1 AND stream_pos > $2 AND forgotten = 0",
        )
        .bind(user_id)
        .bind(since.unwrap_or(-1))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(membership_row).collect())
    }

    /// Points every alias of a room to another room (room upgrades).
    pub async fn move_aliases(&self, from: &str, to: &str) -> StoreResult<()> {
        sqlx::query("UPDATE room_aliases SET room_id = $2 WHERE room_id = $1")
            .bind(from)
            .bind(to)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// The guest accounts joined to a room.
    pub async fn joined_guests(&self, room_id: &str) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT m.user_id FROM memberships m JOIN users u ON u.user_id = m.user_id \
             WHERE m.room_id = $1 AND m.membership = 'join' AND u.is_guest = 1",
        )
        .bind(room_id)
        .fetch_all(&self.read)
        .await?)
    }

    /// One user's membership in a room.
    pub async fn membership(&self, room_id: &str, user_id: &str) -> StoreResult<Option<MembershipRow>> {
        let row = sqlx::query(
            "SELECT room_id, user_id, membership, event_id, stream_pos FROM memberships WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(membership_row))
    }

    /// Members of a room, optionally only with the given membership.
    pub async fn room_members(&self, room_id: &str, membership: Option<&str>) -> StoreResult<Vec<MembershipRow>> {
        let rows = sqlx::query(
            "SELECT room_id, user_id, membership, event_id, stream_pos FROM memberships \
             WHERE room_id = $1 AND ($2 = '' OR membership = $2) ORDER BY user_id",
        )
        .bind(room_id)
        .bind(membership.unwrap_or(""))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(membership_row).collect())
    }

    /// Marks a left room as forgotten for a user.
    pub async fn forget_room(&self, room_id: &str, user_id: &str) -> StoreResult<()> {
        let _forget = self.sync_memory.forget(Part::Memberships, [user_id]);
        sqlx::query("UPDATE memberships SET forgotten = 1 WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Events of a room with `from < stream_pos <= to`, newest first when `backwards`.
    pub async fn room_events(
        &self,
        room_id: &str,
        from: i64,
        to: i64,
        backwards: bool,
        limit: i64,
    ) -> StoreResult<Vec<EventRow>> {
        let order = if backwards { "DESC" } else { "ASC" };
        let rows = sqlx::query(sql(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = $1 AND stream_pos > $2 AND stream_pos <= $3 \
             AND outlier = 0 ORDER BY stream_pos {order} LIMIT $4"
        )))
        .bind(room_id)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// Timeline events of a room from `ts` on (`forward`) or up to it, closest first.
    pub async fn events_near_ts(
        &self,
        room_id: &str,
        ts: i64,
        forward: bool,
        limit: i64,
    ) -> StoreResult<Vec<EventRow>> {
        let (cmp, order) = if forward { (">=", "ASC") } else { ("<=", "DESC") };
        let rows = sqlx::query(sql(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = $1 AND outlier = 0 AND origin_server_ts {cmp} $2 \
             ORDER BY origin_server_ts {order}, stream_pos {order} LIMIT $3"
        )))
        .bind(room_id)
        .bind(ts)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// The room's earliest event in its timeline here.
    pub async fn earliest_timeline_event(&self, room_id: &str) -> StoreResult<Option<EventRow>> {
        let row = sqlx::query(sql(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = $1 AND outlier = 0 ORDER BY stream_pos LIMIT 1"
        )))
        .bind(room_id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(event_row))
    }

    /// Whether a stored event is kept outside its room's timeline.
    pub async fn is_outlier(&self, event_id: &str) -> StoreResult<bool> {
        let outlier: Option<i64> = sqlx::query_scalar("SELECT outlier FROM events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(outlier == Some(1))
    }

    /// Stores history backfilled from other servers: new events (in the timeline or, for
    /// auth events, outside it), and outliers moved into the timeline at a position.
    pub async fn store_backfill(
        &self,
        room_id: &str,
        events: &[NewEvent],
        promoted: &[(String, i64)],
    ) -> StoreResult<()> {
        let mut script = Script::default();
        let now = now_ms();
        for chunk in events.chunks(50) {
            insert_events(&mut script, room_id, chunk, now);
        }
        for (event_id, pos) in promoted {
            script
                .push("UPDATE events SET stream_pos = ?, outlier = 0 WHERE event_id = ? AND outlier = 1")
                .bind(*pos)
                .bind(event_id);
        }
        script.run(self).await?;
        // A promoted outlier may be a current member event, now at another position.
        if !promoted.is_empty() {
            self.recent.forget_members(Some(room_id));
        }
        Ok(())
    }

    /// Events relating to `event_id`, optionally of one relation type, in stream order.
    pub async fn relations(
        &self,
        event_id: &str,
        rel_type: Option<&str>,
        from: i64,
        to: i64,
        backwards: bool,
        limit: i64,
    ) -> StoreResult<Vec<EventRow>> {
        let order = if backwards { "DESC" } else { "ASC" };
        let rows = sqlx::query(sql(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE relates_to = $1 AND ($2 = '' OR rel_type = $2) \
             AND stream_pos > $3 AND stream_pos <= $4 ORDER BY stream_pos {order} LIMIT $5"
        )))
        .bind(event_id)
        .bind(rel_type.unwrap_or(""))
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// Relations to many events at once, for bundled aggregations.
    pub async fn relations_of(&self, event_ids: &[String]) -> StoreResult<Vec<RelationRow>> {
        let mut out = Vec::new();
        for chunk in event_ids.chunks(200) {
            let sql_text = format!(
                "SELECT event_id, relates_to, rel_type, json FROM events \
                 WHERE relates_to IN ({}) AND redacted_by IS NULL ORDER BY stream_pos",
                Params::new(self.backend).list(chunk.len())
            );
            let mut query = sqlx::query(sql(sql_text));
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.read).await? {
                out.push(RelationRow { event_id: r.get(0), relates_to: r.get(1), rel_type: r.get(2), json: r.get(3) });
            }
        }
        Ok(out)
    }

    /// Thread roots of a room, newest activity first, before `to`.
    pub async fn thread_roots(&self, room_id: &str, to: i64, limit: i64) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT thread_root, MAX(stream_pos) AS latest FROM events \
             WHERE room_id = $1 AND thread_root IS NOT NULL GROUP BY thread_root \
             HAVING MAX(stream_pos) <= $2 ORDER BY latest DESC LIMIT $3",
        )
        .bind(room_id)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Room ID an alias points to.
    pub async fn alias(&self, alias: &str) -> StoreResult<Option<(String, String)>> {
        let row = sqlx::query("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Adds an alias; `false` if it is taken.
    pub async fn insert_alias(&self, alias: &str, room_id: &str, creator: &str) -> StoreResult<bool> {
        let n = sqlx::query(
            "INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4) ON CONFLICT (alias) DO NOTHING",
        )
        .bind(alias)
        .bind(room_id)
        .bind(creator)
        .bind(now_ms())
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Removes an alias.
    pub async fn delete_alias(&self, alias: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM room_aliases WHERE alias = $1").bind(alias).execute(&self.write).await?;
        Ok(())
    }

    /// Aliases of a room.
    pub async fn room_aliases(&self, room_id: &str) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
            .bind(room_id)
            .fetch_all(&self.read)
            .await?)
    }

    /// Whether a room is published in the directory.
    pub async fn is_published(&self, room_id: &str) -> StoreResult<bool> {
        let v: Option<i64> = sqlx::query_scalar("SELECT published FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(v.unwrap_or(0) != 0)
    }

    /// Publishes or unpublishes a room.
    pub async fn set_published(&self, room_id: &str, published: bool) -> StoreResult<()> {
        sqlx::query("UPDATE rooms SET published = $2 WHERE room_id = $1")
            .bind(room_id)
            .bind(published as i64)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Published rooms, ordered by joined members.
    pub async fn published_rooms(&self) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT r.room_id, (SELECT COUNT(*) FROM memberships m WHERE m.room_id = r.room_id AND m.membership = 'join') AS n \
             FROM rooms r WHERE r.published = 1 ORDER BY n DESC, r.room_id",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Other users sharing a room with `user_id`, and anyone in a public (joinable or
    /// world-readable) room, the searcher included, matching a search term.
    pub async fn search_users(
        &self,
        user_id: &str,
        term: &str,
        limit: i64,
        mode: crate::config::DirectoryMode,
    ) -> StoreResult<Vec<(String, Option<String>, Option<String>)>> {
        use crate::config::DirectoryMode;
        let pattern = format!("%{}%", term.to_lowercase().replace(['%', '_'], ""));
        let room_mate = "(p.user_id <> $1 AND EXISTS ( \
                 SELECT 1 FROM memberships a JOIN memberships b ON a.room_id = b.room_id \
                 WHERE a.user_id = $1 AND a.membership = 'join' AND b.user_id = p.user_id AND b.membership = 'join'))";
        let visible = match mode {
            DirectoryMode::SharedRooms => format!(
                "({room_mate} OR EXISTS ( \
                 SELECT 1 FROM memberships c JOIN room_current_state s ON s.room_id = c.room_id \
                 JOIN events e ON e.event_id = s.event_id \
                 WHERE c.user_id = p.user_id AND c.membership = 'join' AND s.state_key = '' \
                 AND ((s.event_type = 'm.room.join_rules' AND e.json LIKE '%\"join_rule\":\"public\"%') \
                   OR (s.event_type = 'm.room.history_visibility' \
                       AND e.json LIKE '%\"history_visibility\":\"world_readable\"%'))))"
            ),
            DirectoryMode::OptIn => format!("({room_mate} OR {})", hide_profile_is("false")),
            DirectoryMode::OptOut => format!("NOT {}", hide_profile_is("true")),
        };
        let rows = sqlx::query(super::sql(format!(
            "SELECT p.user_id, p.displayname, p.avatar_url FROM profiles p JOIN users u ON u.user_id = p.user_id \
             WHERE u.deactivated = 0 AND (LOWER(p.user_id) LIKE $2 OR LOWER(COALESCE(p.displayname, '')) LIKE $2) \
             AND {visible} ORDER BY p.user_id LIMIT $3"
        )))
        .bind(user_id)
        .bind(pattern)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Whether `viewer` may read `target`'s profile in this directory mode: themselves, a
    /// room mate (for a server: a room mate of one of its users), or someone the directory
    /// shows.
    pub async fn profile_visible(
        &self,
        viewer: ProfileViewer<'_>,
        target: &str,
        mode: crate::config::DirectoryMode,
    ) -> StoreResult<bool> {
        use crate::config::DirectoryMode;
        let listed = match mode {
            DirectoryMode::SharedRooms => return Ok(true),
            DirectoryMode::OptIn => hide_profile_is("false"),
            DirectoryMode::OptOut => format!("NOT {}", hide_profile_is("true")),
        };
        let (mate, bound) = match viewer {
            ProfileViewer::User(user) if user == target => return Ok(true),
            ProfileViewer::User(user) => ("b.user_id = $1", user.to_owned()),
            // Server names have no `%` or `_`: the pattern matches that server's users only.
            ProfileViewer::Server(server) => ("b.user_id LIKE $1", format!("%:{server}")),
        };
        let visible: i64 = sqlx::query_scalar(super::sql(format!(
            "SELECT CASE WHEN EXISTS ( \
                 SELECT 1 FROM memberships a JOIN memberships b ON a.room_id = b.room_id \
                 WHERE a.user_id = $2 AND a.membership = 'join' AND b.membership = 'join' AND {mate}) \
               OR EXISTS (SELECT 1 FROM profiles p WHERE p.user_id = $2 AND {listed}) THEN 1 ELSE 0 END"
        )))
        .bind(bound)
        .bind(target)
        .fetch_one(&self.read)
        .await?;
        Ok(visible == 1)
    }

    /// Candidate events for a full-text search: messages, names and topics of the given
    /// rooms whose stored JSON contains every (lower-case) word, newest first, below
    /// `before`. The caller checks the words against the searched fields themselves.
    pub async fn search_candidates(
        &self,
        rooms: &[String],
        words: &[String],
        before: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRow>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = Params::new(self.backend);
        let room_list = p.list(rooms.len());
        let likes: Vec<String> = words.iter().map(|_| format!("LOWER(json) LIKE {}", p.next())).collect();
        let text = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room_id IN ({room_list}) \
             AND event_type IN ('m.room.message', 'm.room.name', 'm.room.topic') AND redacted_by IS NULL \
             AND {} AND stream_pos > 0 AND stream_pos < {} ORDER BY stream_pos DESC LIMIT {}",
            if likes.is_empty() { "1 = 1".to_owned() } else { likes.join(" AND ") },
            p.next(),
            p.next()
        );
        let mut query = sqlx::query(sql(text));
        for room in rooms {
            query = query.bind(room);
        }
        for word in words {
            query = query.bind(format!("%{}%", word.replace(['%', '_'], "")));
        }
        let rows = query.bind(before).bind(limit).fetch_all(&self.read).await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// The members of the rooms `user_id` left (or was banned from) in `(since, to]`.
    pub async fn mates_of_rooms_left(&self, user_id: &str, since: i64, to: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT o.user_id FROM memberships me JOIN memberships o ON o.room_id = me.room_id \
             WHERE me.user_id = $1 AND me.membership IN ('leave', 'ban') AND me.stream_pos > $2 \
             AND me.stream_pos <= $3 AND o.membership IN ('join', 'invite') AND o.user_id <> $1",
        )
        .bind(user_id)
        .bind(since)
        .bind(to)
        .fetch_all(&self.read)
        .await?)
    }

    /// Everyone with a membership in the rooms `user_id` is joined to:
    /// `(user, their membership, its stream position, the position of user_id's own join)`.
    pub async fn room_mates(&self, user_id: &str) -> StoreResult<Vec<(String, String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT o.user_id, o.membership, o.stream_pos, me.stream_pos FROM memberships me \
             JOIN memberships o ON o.room_id = me.room_id WHERE me.user_id = $1 AND me.membership = 'join'",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
    }
}

fn membership_row(r: AnyRow) -> MembershipRow {
    MembershipRow {
        room_id: r.get(0),
        user_id: r.get(1),
        membership: r.get(2),
        event_id: r.get(3),
        stream_pos: r.get(4),
    }
}

/// Server names are stored space-separated: none contains a space.
fn partial_state_of(join_event_id: String, servers: String) -> PartialState {
    PartialState { join_event_id, servers: servers.split_whitespace().map(str::to_owned).collect() }
}

/// What a write leaves of the room's current state: each key and membership written once,
/// with its last value.
struct CurrentState<'w> {
    state: HashMap<(&'w str, &'w str), &'w str>,
    removed: HashSet<(&'w str, &'w str)>,
    /// User ID to (event ID, membership, stream position).
    members: HashMap<&'w str, (&'w str, &'w str, i64)>,
    /// The room's state group after the write, when its state changed.
    group: Option<i64>,
}

impl<'w> CurrentState<'w> {
    fn of(write: &'w RoomWrite) -> Self {
        let mut current =
            CurrentState { state: HashMap::new(), removed: HashSet::new(), members: HashMap::new(), group: None };
        let mut last_group = None;
        let mut resolutions = write.resolutions.iter().peekable();
        for (i, event) in write.events.iter().enumerate() {
            // Outliers change the current state only in the write that creates the room
            // (the state received with a remote join); soft-failed events never do.
            if event.stream_pos > 0 || write.new_room.is_some() {
                // Messages leave the state, and so the room's state group, as it was.
                last_group = Some(event.state_group_after);
                if let Some(state_key) = &event.state_key {
                    current.set(
                        &event.event_type,
                        state_key,
                        &event.event_id,
                        event.membership.as_deref(),
                        event.stream_pos,
                    );
                    current.group = Some(event.state_group_after);
                }
            }
            while let Some(resolution) = resolutions.next_if(|r| r.after_event == i) {
                current.apply(resolution);
                last_group = Some(resolution.group);
            }
        }
        // One that follows every event of the write (or a write of none: a partial state
        // completed with events already held).
        for resolution in resolutions {
            current.apply(resolution);
            last_group = Some(resolution.group);
        }
        if current.group.is_some() {
            current.group = last_group;
        }
        current
    }

    fn apply(&mut self, resolution: &'w Resolution) {
        for (kind, key, event_id, membership) in &resolution.set {
            self.set(kind, key, event_id, membership.as_deref(), resolution.stream_pos);
        }
        for (kind, key) in &resolution.removed {
            self.state.remove(&(kind.as_str(), key.as_str()));
            self.removed.insert((kind, key));
        }
        self.group = Some(resolution.group);
    }

    fn set(&mut self, kind: &'w str, key: &'w str, event_id: &'w str, membership: Option<&'w str>, pos: i64) {
        self.state.insert((kind, key), event_id);
        self.removed.remove(&(kind, key));
        if let Some(membership) = membership {
            self.members.insert(key, (event_id, membership, pos));
        }
    }
}

/// The event types that move a room up a sliding sync list: messages, not receipts or
/// profile changes (Synapse's `SLIDING_SYNC_DEFAULT_BUMP_EVENT_TYPES`).
const BUMP_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// What a write changes of the facts sliding sync lists a room by (`rooms.bump_pos`,
/// `encrypted`, `room_type`).
struct FactsChange {
    /// The position of the write's latest bump event in the timeline.
    bump: Option<i64>,
    encrypted: Option<bool>,
    /// The type its create event gives the room (a space).
    room_type: Option<String>,
}

impl FactsChange {
    fn of(write: &RoomWrite, current: &CurrentState<'_>) -> Self {
        let bump = write
            .events
            .iter()
            .filter(|e| !e.outlier && e.stream_pos > 0 && BUMP_TYPES.contains(&e.event_type.as_str()))
            .map(|e| e.stream_pos)
            .max();
        let key = ("m.room.encryption", "");
        let encrypted = if current.state.contains_key(&key) {
            Some(true)
        } else if current.removed.contains(&key) {
            Some(false)
        } else {
            None
        };
        let room_type = write
            .events
            .iter()
            .find(|e| e.event_type == "m.room.create" && e.state_key.as_deref() == Some(""))
            .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.json).ok())
            .and_then(|e| e["content"]["type"].as_str().map(str::to_owned));
        Self { bump, encrypted, room_type }
    }

    fn any(&self) -> bool {
        self.bump.is_some() || self.encrypted.is_some() || self.room_type.is_some()
    }
}

/// Inserts events with one multi-row statement.
fn insert_events(script: &mut Script, room_id: &str, events: &[NewEvent], now: i64) {
    let statement = script.push(format!(
        "INSERT INTO events (stream_pos, room_id, event_id, sender, event_type, state_key, depth, origin_server_ts, \
         json, state_group_before, state_group_after, rel_type, relates_to, thread_root, txn_device_id, txn_id, \
         received_ts, notify, replaces_state, outlier) VALUES {}",
        rows(events.len(), 20)
    ));
    for e in events {
        let (txn_device, txn_id) = match &e.txn {
            Some((d, t)) => (Some(d.as_str()), Some(t.as_str())),
            None => (None, None),
        };
        statement
            .bind(e.stream_pos)
            .bind(room_id)
            .bind(&e.event_id)
            .bind(&e.sender)
            .bind(e.event_type.as_str())
            .bind(e.state_key.as_deref())
            .bind(e.depth)
            .bind(e.origin_server_ts)
            .bind(&e.json)
            .bind(e.state_group_before)
            .bind(e.state_group_after)
            .bind(e.rel_type.as_deref())
            .bind(e.relates_to.as_deref())
            .bind(e.thread_root.as_deref())
            .bind(txn_device)
            .bind(txn_id)
            .bind(now)
            .bind(e.notify)
            .bind(e.replaces_state.as_deref())
            .bind(i64::from(e.outlier));
    }
}

/// Who asks for a profile: a local user, or another server (for its users).
#[derive(Debug, Clone, Copy)]
pub enum ProfileViewer<'a> {
    User(&'a str),
    Server(&'a str),
}

/// Whether `p.user_id`'s global `im.vector.hide_profile` account data says `hide_profile`
/// is `value` (the "liste rouge" of Tchap; `false` is Luxchat4Gov's opt-in).
fn hide_profile_is(value: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM account_data d WHERE d.user_id = p.user_id AND d.room_id = '' \
         AND d.data_type = 'im.vector.hide_profile' AND REPLACE(d.content, ' ', '') LIKE '%\"hide_profile\":{value}%')"
    )
}

#[cfg(test)]
mod tests {
    use super::{EVENT_COLUMN_COUNT, EVENT_COLUMNS, EVENT_COLUMNS_E};

    #[test]
    fn the_column_count_matches_the_column_lists() {
        assert_eq!(EVENT_COLUMNS.split(',').count(), EVENT_COLUMN_COUNT);
        assert_eq!(EVENT_COLUMNS_E.split(',').count(), EVENT_COLUMN_COUNT);
    }
}
