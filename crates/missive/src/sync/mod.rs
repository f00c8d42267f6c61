//! `/sync`: what changed for a user since a token, waiting for changes when there are none.
//!
//! A token is `s<stream position>_<typing serial>_<presence serial>`. Everything persistent is read up to the
//! stream's committed position; long-polls wait on the stream's change signal, never poll.

pub mod legacy;
pub mod presence;
pub mod sliding;
pub mod stream;
pub mod typing;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use ruma::{RoomId, UserId, api::client::filter::FilterDefinition};
use serde_json::{Map, Value, json};

use self::{presence::Presence, stream::Streams, typing::Typing};
use crate::{
    accounts::Identity,
    e2ee::E2ee,
    error::{Error, Result},
    filter,
    rooms::{
        Rooms,
        notify::{self, PUSH_RULES_TYPE},
        pdu,
        timeline::{Viewer, make_token},
    },
    store::{Changes, EventRow, MembershipRow, Store, UserSyncState},
};

/// Most new events an incremental sync reads in its first round.
const NEW_EVENTS_CAP: i64 = 500;

/// How far back a timeline with a type or sender filter is read to find its events.
const SELECTIVE_TIMELINE_READ: i64 = 200;

/// How many older batches a timeline reads when history visibility hid too much of it.
const TIMELINE_REFILLS: usize = 2;

/// Events per older batch read to fill a timeline.
const TIMELINE_REFILL_READ: i64 = 100;

/// Default number of timeline events per room.
const DEFAULT_TIMELINE_LIMIT: usize = 10;

/// What a sync request asks for.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub since: Option<String>,
    pub timeout: Duration,
    pub full_state: bool,
    pub filter: FilterDefinition,
    pub use_state_after: bool,
    /// The presence the syncing client reports (`set_presence`; `online` when absent).
    pub set_presence: Option<presence::State>,
}

/// The sync service.
pub struct Sync {
    store: Store,
    rooms: Arc<Rooms>,
    streams: Arc<Streams>,
    pub typing: Arc<Typing>,
    pub presence: Arc<Presence>,
    e2ee: Arc<E2ee>,
    lazy: LazyMembers,
    /// Sliding sync connections and what each was sent.
    connections: sliding::Connections,
}

pub(super) struct Since {
    pos: Option<i64>,
    typing: Option<u64>,
    presence: Option<u64>,
    /// The to-device messages acknowledged: those up to here (`pos` unless the answer
    /// that gave the token left some for later).
    to_device: Option<i64>,
}

pub(super) fn parse_since(token: Option<&str>) -> Result<Since> {
    let Some(token) = token else {
        return Ok(Since { pos: None, typing: None, presence: None, to_device: None });
    };
    let invalid = || Error::invalid_param("invalid since token");
    let mut parts = token.strip_prefix('s').ok_or_else(invalid)?.split('_');
    let pos = parts.next().unwrap_or_default().parse().map_err(|_| invalid())?;
    let mut serial = || parts.next().map_or(Ok(0), |p| p.parse::<u64>().map_err(|_| invalid()));
    let typing = serial()?;
    let presence = serial()?;
    let to_device = match parts.next() {
        Some(p) => p.parse::<i64>().ok().filter(|t| *t <= pos).ok_or_else(invalid)?,
        None => pos,
    };
    Ok(Since { pos: Some(pos), typing: Some(typing), presence: Some(presence), to_device: Some(to_device) })
}

impl Sync {
    /// Creates the service.
    pub fn new(
        store: Store,
        rooms: Arc<Rooms>,
        streams: Arc<Streams>,
        typing: Arc<Typing>,
        presence: Arc<Presence>,
        e2ee: Arc<E2ee>,
    ) -> Self {
        Self {
            store,
            rooms,
            streams,
            typing,
            presence,
            e2ee,
            lazy: LazyMembers::default(),
            connections: Default::default(),
        }
    }

    /// Users whose devices the user must (re)fetch (`changed`) or may forget (`left`) for
    /// changes with `since < position <= to`: key changes of users sharing a room, users who
    /// came to share one, and users who no longer share any.
    pub async fn device_list_updates(
        &self,
        user_id: &UserId,
        since: i64,
        to: i64,
        changes: Option<&Changes>,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let read;
        let changes = match changes {
            Some(changes) => changes,
            None => {
                read = self.store.changes_between(since, to, user_id.as_str()).await?;
                &read
            }
        };
        let key_changes = &changes.device_lists;
        let memberships_changed = changes.memberships;
        if key_changes.is_empty() && !memberships_changed {
            return Ok((Vec::new(), Vec::new()));
        }
        let mates = self.store.room_mates(user_id.as_str()).await?;
        let sharing: HashSet<&str> =
            mates.iter().filter(|(_, m, _, _)| m == "join" || m == "invite").map(|(u, _, _, _)| u.as_str()).collect();
        let mut changed: HashSet<String> = key_changes
            .iter()
            .filter(|u| {
                *u == user_id.as_str() || (sharing.contains(u.as_str()) && !changes.self_only.contains(u.as_str()))
            })
            .cloned()
            .collect();
        for (other, membership, pos, my_join) in &mates {
            // An invitee counts as met, as with Synapse: clients encrypt to invited members.
            let newly_shared = (*pos > since && *pos <= to && (membership == "join" || membership == "invite"))
                || (*my_join > since && *my_join <= to);
            if newly_shared && (membership == "join" || membership == "invite") && other != user_id.as_str() {
                changed.insert(other.clone());
            }
        }
        // Those who left the user's rooms, and the members of rooms the user left, once
        // no room is shared any more.
        let left_behind = self.store.mates_of_rooms_left(user_id.as_str(), since, to).await?;
        let left: Vec<String> = mates
            .iter()
            .filter(|(u, m, pos, _)| {
                *pos > since && *pos <= to && (m == "leave" || m == "ban") && !sharing.contains(u.as_str())
            })
            .map(|(u, _, _, _)| u.clone())
            .chain(left_behind.into_iter().filter(|u| !sharing.contains(u.as_str())))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut changed: Vec<String> = changed.into_iter().collect();
        changed.sort();
        Ok((changed, left))
    }

    /// Answers a sync request, long-polling up to its timeout when nothing changed.
    pub async fn sync(&self, identity: &Identity, req: SyncRequest) -> Result<Value> {
        let since = parse_since(req.since.as_deref())?;
        self.presence.touch(&identity.user_id, req.set_presence.unwrap_or(presence::State::Online));
        let deadline = tokio::time::Instant::now() + req.timeout.min(Duration::from_secs(300));
        let user_id = identity.user_id.as_str();
        // Registered under the rooms whose changes concern the user (a change of their
        // membership elsewhere names them).
        let mut poll = stream::LongPoll::default();
        let mut first = true;
        loop {
            let serial = self.streams.serial();
            let rooms = self.watched_rooms(user_id).await?;
            // A client asking again right after an answer usually finds nothing new: when
            // nothing remembered since its token concerns it, it waits without computing.
            let skip = first && tokio::time::Instant::now() < deadline && self.quiet(identity, &req, &since, &rooms);
            first = false;
            if !skip {
                let (response, has_changes) = self.compute(identity, &req, &since, &rooms).await?;
                if has_changes || since.pos.is_none() || req.full_state || tokio::time::Instant::now() >= deadline {
                    return Ok(response);
                }
            }
            if !poll.wait(&self.streams, serial, user_id, rooms.iter(), deadline).await {
                // Timed out: answer with what there is (nothing new, a fresh token).
                return Ok(self.compute(identity, &req, &since, &rooms).await?.0);
            }
        }
    }

    /// Whether nothing since the token of an incremental sync can concern it: no change
    /// remembered since names the user or one of `rooms`, typing and presence are as they
    /// were, and the answer that gave the token left no to-device message for later.
    fn quiet(&self, identity: &Identity, req: &SyncRequest, since: &Since, rooms: &HashSet<String>) -> bool {
        let (Some(pos), Some(typing), Some(presence)) = (since.pos, since.typing, since.presence) else {
            return false;
        };
        !req.full_state
            && since.to_device == Some(pos)
            && presence == self.presence.serial()
            && !self.typing.changed_in_any(rooms, typing)
            && self.streams.quiet_since(pos, identity.user_id.as_str(), rooms)
    }

    /// What changed for the user in `(since, now]`: what the stream's memory of recent
    /// changes told (`remembered`, from [`Streams::changes_since`]) when it could, read
    /// otherwise.
    async fn changes(
        &self,
        user_id: &str,
        since: Option<i64>,
        now: i64,
        remembered: Option<Changes>,
    ) -> Result<Option<Changes>> {
        let Some(since) = since else { return Ok(None) };
        Ok(Some(match remembered {
            Some(changes) => changes,
            None => self.store.changes_between(since, now, user_id).await?,
        }))
    }

    /// The rooms whose changes concern the user's long polls: their memberships, read once
    /// and remembered until one changes.
    async fn watched_rooms(&self, user_id: &str) -> Result<Arc<HashSet<String>>> {
        match self.streams.watched(user_id) {
            Ok(rooms) => Ok(rooms),
            Err(epoch) => {
                let rows = self.store.memberships_of_user(user_id, None).await?;
                let rooms: Arc<HashSet<String>> = Arc::new(rows.into_iter().map(|m| m.room_id).collect());
                self.streams.remember_watched(user_id, rooms.clone(), epoch);
                Ok(rooms)
            }
        }
    }

    async fn compute(
        &self,
        identity: &Identity,
        req: &SyncRequest,
        since: &Since,
        rooms: &HashSet<String>,
    ) -> Result<(Value, bool)> {
        let now = self.streams.current();
        let typing_serial = self.typing.serial();
        let presence_serial = self.presence.serial();
        let user_id = identity.user_id.as_ref();
        let viewer = Viewer { user_id, device_id: identity.device_id.as_str() };
        let mut join = Map::new();
        let mut invite = Map::new();
        let mut leave = Map::new();
        let mut knock = Map::new();
        let device_id: &ruma::DeviceId = identity.device_id.as_ref();
        // The reads that do not depend on each other run at once: on PostgreSQL each is a
        // round trip, on SQLite each runs on its own pooled connection. On an incremental
        // sync the new events of the user's rooms are read in this first round too, so a
        // wake-up needs no second one.
        let incremental = since.pos.filter(|_| !req.full_state);
        // Only rooms with something new are computed: on an incremental sync, which rooms
        // have new events, state or receipts, and whose devices changed. The stream's
        // memory of recent changes tells it, and the new events themselves are usually
        // still kept by the store: a message wakes every member's sync, and none reads it.
        let remembered = since.pos.and_then(|s| self.streams.changes_since(s, now, user_id.as_str(), rooms));
        let kept = incremental
            .and(remembered.as_ref())
            .and_then(|c| c.event_positions.as_deref())
            .and_then(|positions| self.store.recent_events(positions));
        let read_new_events = || async {
            Ok::<_, Error>(
                self.store
                    .new_events_of_member(user_id.as_str(), incremental.unwrap_or(0), now, NEW_EVENTS_CAP)
                    .await?,
            )
        };
        let (user_state, changes, new_events) = tokio::try_join!(
            // Memberships, account data, notification counts and the device's state: one read.
            async {
                Ok::<_, Error>(self.store.user_sync_state(user_id.as_str(), device_id.as_str(), since.pos).await?)
            },
            self.changes(user_id.as_str(), since.pos, now, remembered),
            async {
                Ok(match (incremental, &kept) {
                    (Some(_), None) => Some(read_new_events().await?),
                    _ => None,
                })
            },
        )?;
        let UserSyncState { memberships, account_data, notification_counts: counts, device } = user_state;
        let new_events = match kept {
            Some(rows) => {
                // What the read would return: the events of the rooms the user is joined to.
                let joined: HashSet<&str> =
                    memberships.iter().filter(|m| m.membership == "join").map(|m| m.room_id.as_str()).collect();
                if joined.iter().all(|room| rooms.contains(*room)) {
                    let mut rows: Vec<EventRow> =
                        rows.into_iter().filter(|r| joined.contains(r.room_id.as_str())).collect();
                    rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.stream_pos));
                    rows.truncate(NEW_EVENTS_CAP as usize);
                    Some(rows)
                } else {
                    // A room joined since `rooms` was read: its events were not looked for.
                    Some(read_new_events().await?)
                }
            }
            None => new_events,
        };
        let device_state = E2ee::sync_view(device);
        // Past the cap, the rooms' timelines are read per room as on an initial sync.
        let new_events = new_events.filter(|rows| rows.len() < NEW_EVENTS_CAP as usize);
        let mut visible: Vec<MembershipRow> = Vec::new();
        for mut m in memberships {
            if m.stream_pos <= now && filter::room_allowed(&req.filter, &m.room_id) {
                // A member who only changed their profile since the token was already joined:
                // the room is not new to them, and is not sent in full again. One who left and
                // came back is newly joined.
                if let Some(s) = since.pos
                    && m.membership == "join"
                    && m.stream_pos > s
                    && let Some(pos) = self.store.joined_throughout(&m.room_id, user_id.as_str(), s).await?
                {
                    m.stream_pos = pos;
                }
                visible.push(m);
            }
        }
        let incremental_changes = changes.as_ref().filter(|_| !req.full_state);
        let changed = incremental_changes.map(|c| &c.rooms);
        let mut joined_rows = Vec::new();
        for m in visible.iter().filter(|m| m.membership == "join") {
            let room_id = RoomId::parse(&m.room_id).map_err(|e| Error::Internal(e.to_string()))?;
            let selected = match (&changed, since.pos) {
                (Some(changed), Some(s)) => {
                    m.stream_pos > s
                        || changed.contains_key(&m.room_id)
                        || account_data.iter().any(|r| r.room_id == m.room_id)
                        || self.typing.changed_since(&room_id, since.typing).is_some()
                }
                _ => true,
            };
            if selected {
                joined_rows.push(m.clone());
            }
        }
        // Current join position per room, so visibility checks need no membership reads.
        let known: HashMap<String, Option<i64>> =
            visible.iter().map(|m| (m.room_id.clone(), (m.membership == "join").then_some(m.stream_pos))).collect();
        // Everything the selected rooms need is read in a few set-based queries, whatever
        // their number; the rooms are then assembled from memory.
        let (otk_counts, fallback_types, to_device_waiting) = device_state;
        let (prefetch, device_lists, to_device) = tokio::try_join!(
            self.prefetch(viewer, req, since, &joined_rows, now, &known, incremental_changes, new_events),
            async {
                match since.pos {
                    Some(s) => self.device_list_updates(user_id, s, now, changes.as_ref()).await,
                    None => Ok((Vec::new(), Vec::new())),
                }
            },
            async {
                if to_device_waiting {
                    self.e2ee.to_device_for_sync(user_id, device_id, since.to_device, now).await
                } else {
                    Ok((Vec::new(), now))
                }
            },
        )?;
        let (to_device, to_device_reached) = to_device;
        let mut prefetch = prefetch;
        prefetch.counts = counts;
        // Clients that ask get the threads' counts apart (rooms with something unread).
        if req.filter.room.timeline.unread_thread_notifications {
            for m in &joined_rows {
                if prefetch.counts.get(&m.room_id).is_some_and(|(n, _)| *n > 0) {
                    let threads = self.store.thread_notification_counts(user_id.as_str(), &m.room_id).await?;
                    if !threads.is_empty() {
                        prefetch.thread_counts.insert(m.room_id.clone(), threads);
                    }
                }
            }
        }
        for m in &joined_rows {
            if let Some(room) = self.joined_room(viewer, req, since, m, &account_data, &mut prefetch) {
                join.insert(m.room_id.clone(), room);
            }
        }
        for m in &visible {
            let changed_since = since.pos.is_none_or(|s| m.stream_pos > s);
            match m.membership.as_str() {
                "invite" if changed_since && !self.invited_by_ignored(user_id, m).await? => {
                    invite.insert(
                        m.room_id.clone(),
                        json!({ "invite_state": { "events": self.stripped_state(m).await? } }),
                    );
                }
                "knock" if changed_since => {
                    knock.insert(
                        m.room_id.clone(),
                        json!({ "knock_state": { "events": self.stripped_state(m).await? } }),
                    );
                }
                "leave" | "ban" if changed_since && (since.pos.is_some() || req.filter.room.include_leave) => {
                    let room = self.left_room(viewer, req, since, m, &known).await?;
                    leave.insert(m.room_id.clone(), room);
                }
                _ => {}
            }
        }
        let mut global = Vec::new();
        for row in account_data.iter().filter(|r| r.room_id.is_empty()) {
            let content: Value = serde_json::from_str(&row.content).unwrap_or_else(|_| json!({}));
            global.push(json!({ "type": row.data_type, "content": content }));
        }
        if since.pos.is_none() && !account_data.iter().any(|r| r.data_type == PUSH_RULES_TYPE) {
            let ruleset = self.rooms.push_ruleset_once(user_id).await?;
            global.push(json!({ "type": PUSH_RULES_TYPE, "content": { "global": notify::ruleset_json(&ruleset) } }));
        }
        global.retain(|e| filter::event_allowed(&req.filter.account_data, e));
        let (changed, left) = device_lists;
        let memberships_changed = changes.as_ref().is_some_and(|c| c.memberships);
        let presence = self.presence_events(user_id, req, since, presence_serial, memberships_changed).await?;
        let has_changes = !(join.is_empty()
            && presence.is_empty()
            && invite.is_empty()
            && leave.is_empty()
            && knock.is_empty()
            && global.is_empty()
            && to_device.is_empty()
            && changed.is_empty()
            && left.is_empty());
        let mut rooms = Map::new();
        for (key, value) in [("join", join), ("invite", invite), ("leave", leave), ("knock", knock)] {
            if !value.is_empty() {
                rooms.insert(key.into(), Value::Object(value));
            }
        }
        // Built by moving the parts in: `json!` would deep-copy every interpolated value.
        let mut response = Map::new();
        // A token names how far to-device messages went only when not all the way.
        let mut next_batch = format!("s{now}_{typing_serial}_{presence_serial}");
        if to_device_reached != now {
            next_batch.push_str(&format!("_{to_device_reached}"));
        }
        response.insert("next_batch".into(), Value::String(next_batch));
        response.insert("rooms".into(), Value::Object(rooms));
        response.insert("account_data".into(), events(global));
        response.insert("presence".into(), events(presence));
        response.insert("to_device".into(), events(to_device));
        response.insert("device_lists".into(), json!({ "changed": changed, "left": left }));
        response.insert("device_one_time_keys_count".into(), json!(otk_counts));
        response.insert("device_unused_fallback_key_types".into(), json!(fallback_types));
        Ok((Value::Object(response), has_changes))
    }

    /// A user's presence as `requester` may see it: their own, or that of someone they
    /// share a room with (everyone is `offline` while presence is off).
    pub async fn presence_status(&self, requester: &UserId, user_id: &UserId) -> Result<Value> {
        if !self.store.user_exists(user_id.as_str()).await? {
            return Err(Error::not_found("unknown user"));
        }
        if self.presence.enabled() && requester != user_id {
            let mates = self.store.room_mates(requester.as_str()).await?;
            if !mates.iter().any(|(u, m, _, _)| u == user_id.as_str() && m == "join") {
                return Err(Error::forbidden("you do not share a room with this user"));
            }
        }
        Ok(self.presence.content(user_id))
    }

    /// Presence of the user and of those they share a room with, changed since the token.
    /// Read only when presence is on and something changed, so it costs nothing otherwise.
    async fn presence_events(
        &self,
        user_id: &UserId,
        req: &SyncRequest,
        since: &Since,
        serial: u64,
        memberships_changed: bool,
    ) -> Result<Vec<Value>> {
        if !self.presence.enabled() || (since.presence.is_some_and(|s| s == serial) && !memberships_changed) {
            return Ok(Vec::new());
        }
        let mates = self.store.room_mates(user_id.as_str()).await?;
        let mut users: Vec<&str> =
            mates.iter().filter(|(_, m, _, _)| m == "join").map(|(u, _, _, _)| u.as_str()).collect();
        users.push(user_id.as_str());
        users.sort_unstable();
        users.dedup();
        let mut events = self.presence.events_since(users, since.presence);
        // Someone newly met (they joined one of the user's rooms, or the user joined theirs)
        // comes with their presence, changed or not.
        if let Some(s) = since.pos {
            let mut newly: Vec<&str> = mates
                .iter()
                .filter(|(u, m, pos, my_join)| m == "join" && (*pos > s || *my_join > s) && u != user_id.as_str())
                .map(|(u, _, _, _)| u.as_str())
                .filter(|u| !events.iter().any(|e| e["sender"] == *u))
                .collect();
            newly.sort_unstable();
            newly.dedup();
            for user in newly {
                if let Ok(id) = UserId::parse(user) {
                    events.push(json!({ "type": "m.presence", "sender": user, "content": self.presence.content(&id) }));
                }
            }
        }
        Ok(events.into_iter().filter(|e| filter::event_allowed(&req.filter.presence, e)).collect())
    }

    /// Reads what every selected room needs in a few set-based queries.
    #[allow(clippy::too_many_arguments)]
    async fn prefetch(
        &self,
        viewer: Viewer<'_>,
        req: &SyncRequest,
        since: &Since,
        rooms: &[MembershipRow],
        now: i64,
        known: &HashMap<String, Option<i64>>,
        changes: Option<&Changes>,
        new_events: Option<Vec<EventRow>>,
    ) -> Result<Prefetch> {
        if rooms.is_empty() {
            return Ok(Prefetch::default());
        }
        let (full, incremental): (Vec<&MembershipRow>, Vec<&MembershipRow>) =
            rooms.iter().partition(|m| sent_in_full(req, since, m));
        let full: Vec<String> = full.into_iter().map(|m| m.room_id.clone()).collect();
        let incremental: Vec<String> = incremental.into_iter().map(|m| m.room_id.clone()).collect();
        // A room joined after `since` is sent from its start, as on an initial sync.
        let ranges: Vec<(String, i64, i64)> = rooms
            .iter()
            .map(|m| {
                let from = match since.pos {
                    Some(s) if req.full_state || m.stream_pos <= s => s,
                    _ => 0,
                };
                (m.room_id.clone(), from, now)
            })
            .collect();
        // A relation is created after the event it points to, so when no new event relates
        // to another, incremental timelines (all new events) have no aggregations to look up.
        // Federation backfill can break that order; it must then force `bundled`.
        let bundled = !full.is_empty() || changes.is_none_or(|c| c.relations);
        let changed = changes.map(|c| &c.rooms);
        // Only rooms whose state changed need their changed state read.
        let state_rooms: Vec<String> = incremental
            .iter()
            .filter(|id| changed.is_none_or(|c| c.get(*id).is_some_and(|r| r.state)))
            .cloned()
            .collect();
        let receipt_rooms: Vec<String> = full
            .iter()
            .chain(incremental.iter().filter(|id| changed.is_none_or(|c| c.get(*id).is_some_and(|r| r.receipts))))
            .cloned()
            .collect();
        let (timelines, changed_rows, receipts) = tokio::try_join!(
            self.timelines(viewer, req, &ranges, known, bundled, new_events.zip(since.pos)),
            async {
                Ok(match (since.pos, state_rooms.is_empty()) {
                    (Some(s), false) => self.store.current_state_of_rooms(&state_rooms, Some(s)).await?,
                    _ => Vec::new(),
                })
            },
            async {
                Ok(if receipt_rooms.is_empty() {
                    HashMap::new()
                } else {
                    self.store.receipts_for_rooms(&receipt_rooms, since.pos, now, viewer.user_id.as_str()).await?
                })
            },
        )?;
        let mut state_changed: HashMap<String, Vec<EventRow>> = HashMap::new();
        for row in changed_rows {
            state_changed.entry(row.room_id.clone()).or_default().push(row);
        }
        let mut state_rows = self.full_state_rows(req, &full, &timelines).await?;
        // A left room's state as it was may name replaced state the purge emptied.
        let flat: Vec<EventRow> = state_rows
            .values_mut()
            .flat_map(std::mem::take)
            .chain(state_changed.values().flatten().cloned())
            .filter(|r| !r.purged)
            .collect();
        let served = self.rooms.serve_unbundled(viewer, &flat).await?;
        let mut state: HashMap<String, Vec<Value>> = HashMap::new();
        for (row, event) in flat.iter().zip(served) {
            state.entry(row.room_id.clone()).or_default().push(event);
        }

        // Summaries only for rooms whose membership may have changed.
        let summary_rooms: Vec<String> = full
            .iter()
            .chain(incremental.iter().filter(|id| {
                state_changed.get(*id).is_some_and(|rows| rows.iter().any(|r| r.json.contains("\"m.room.member\"")))
            }))
            .cloned()
            .collect();
        let summaries = if summary_rooms.is_empty() {
            HashMap::new()
        } else {
            self.store.summaries(&summary_rooms, viewer.user_id.as_str()).await?
        };
        // Lazy-loaded members of incremental timelines: the senders' current member events
        // (the client is then told only of those it has not been sent, see `LazyMembers`).
        let mut lazy_members: HashMap<String, Vec<Value>> = HashMap::new();
        if filter::lazy_members(&req.filter.room.state) && !incremental.is_empty() {
            let device = (viewer.user_id.as_str(), viewer.device_id);
            let redundant = filter::redundant_members(&req.filter.room.state);
            let mut pairs: Vec<(String, String)> = Vec::new();
            for room in &incremental {
                // Without a state change since the token, a member event the device was
                // sent is still the member's current one: no need to read it again,
                // unless the client asks for members it was sent.
                let state_unchanged = !redundant && changed.is_some_and(|c| c.get(room).is_none_or(|r| !r.state));
                for event in timelines.get(room).map(|t| t.events.as_slice()).unwrap_or_default() {
                    if let Some(sender) = event.get("sender").and_then(Value::as_str)
                        && !(state_unchanged && self.lazy.was_sent(device, room, sender))
                    {
                        pairs.push((room.clone(), sender.to_owned()));
                    }
                }
            }
            pairs.sort_unstable();
            pairs.dedup();
            if !pairs.is_empty() {
                let rows = self.store.current_members(&pairs).await?;
                let served = self.rooms.serve_unbundled(viewer, &rows).await?;
                for (row, event) in rows.iter().zip(served) {
                    lazy_members.entry(row.room_id.clone()).or_default().push(event);
                }
            }
        }
        Ok(Prefetch {
            receipts,
            counts: HashMap::new(),
            thread_counts: HashMap::new(),
            summaries,
            timelines,
            state,
            state_changed,
            lazy_members,
        })
    }

    /// The state sent with rooms sent in full: the state at the start of the timeline (or the
    /// current state for `use_state_after`), before filtering.
    async fn full_state_rows(
        &self,
        req: &SyncRequest,
        full: &[String],
        timelines: &HashMap<String, Timeline>,
    ) -> Result<HashMap<String, Vec<EventRow>>> {
        let mut out: HashMap<String, Vec<EventRow>> = HashMap::new();
        if full.is_empty() {
            return Ok(out);
        }
        let mut current: HashMap<String, Vec<EventRow>> = HashMap::new();
        for row in self.store.current_state_of_rooms(full, None).await? {
            current.entry(row.room_id.clone()).or_default().push(row);
        }
        if req.use_state_after {
            return Ok(current);
        }
        // Most timelines start after the room's last state change: their state is the
        // current state, already read. The others resolve their state groups in one batch.
        let groups = self.store.current_groups_of_rooms(full).await?;
        let mut older: HashMap<&str, i64> = HashMap::new();
        for room in full {
            match timelines.get(room).and_then(|t| t.first_group) {
                Some(group) if groups.get(room) != Some(&group) => {
                    older.insert(room, group);
                }
                _ => {
                    out.insert(room.clone(), current.remove(room).unwrap_or_default());
                }
            }
        }
        if older.is_empty() {
            return Ok(out);
        }
        let mut wanted: Vec<i64> = older.values().copied().collect();
        wanted.sort_unstable();
        wanted.dedup();
        let states = self.store.state_groups(&wanted).await?;
        let ids: Vec<String> = states.values().flatten().map(|(_, _, e)| e.clone()).collect();
        let by_id: HashMap<String, EventRow> =
            self.store.events(&ids).await?.into_iter().map(|r| (r.event_id.clone(), r)).collect();
        for (room, group) in older {
            let rows = states.get(&group).into_iter().flatten().filter_map(|(_, _, e)| by_id.get(e).cloned()).collect();
            out.insert(room.to_owned(), rows);
        }
        Ok(out)
    }

    /// Whether an invite comes from a user the invitee ignores (such invites are not shown).
    async fn invited_by_ignored(&self, user_id: &UserId, m: &MembershipRow) -> Result<bool> {
        let Some(invite) = self.store.event(&m.event_id).await? else { return Ok(false) };
        let sender = pdu::Pdu::from_row(&invite)?.sender;
        self.rooms.ignores(user_id, sender.as_str()).await
    }

    async fn stripped_state(&self, m: &MembershipRow) -> Result<Vec<Value>> {
        let room_id = ruma::RoomId::parse(&m.room_id).map_err(|e| Error::Internal(e.to_string()))?;
        let ids = self.rooms.describing_state(&room_id).await?;
        let mut out: Vec<Value> = ids.iter().map(pdu::stripped_state).collect();
        // A room of another server this server is not in: what its server described.
        if ids.is_empty()
            && let Some(state) = self.store.invite_state(&m.room_id, &m.user_id).await?
        {
            out = serde_json::from_str(&state).unwrap_or_default();
        }
        if let Some(own) = self.store.event(&m.event_id).await? {
            // The invite itself, with its sender's member event so clients can show who invited.
            if let Ok(p) = pdu::Pdu::from_row(&own)
                && let Some(inviter) =
                    self.store.current_state_event(&m.room_id, "m.room.member", p.sender.as_str()).await?
            {
                out.push(pdu::stripped_state(&inviter));
            }
            out.push(pdu::stripped_state(&own));
        }
        Ok(out)
    }

    /// One joined room's entry, assembled from the prefetched reads; `None` when an
    /// incremental sync has nothing new for it.
    fn joined_room(
        &self,
        viewer: Viewer<'_>,
        req: &SyncRequest,
        since: &Since,
        m: &MembershipRow,
        account_data: &[crate::store::AccountDataRow],
        prefetch: &mut Prefetch,
    ) -> Option<Value> {
        let room_id = m.room_id.as_str();
        let full = sent_in_full(req, since, m);
        let timeline = prefetch.timelines.remove(room_id).unwrap_or_default();
        let typing = RoomId::parse(room_id).ok().and_then(|id| self.typing.changed_since(&id, since.typing));
        let receipts = prefetch.receipts.remove(room_id).unwrap_or_default();
        let room_data: Vec<Value> = account_data
            .iter()
            .filter(|r| r.room_id == room_id)
            .map(|r| json!({ "type": r.data_type, "content": serde_json::from_str::<Value>(&r.content).unwrap_or_else(|_| json!({})) }))
            .filter(|e| filter::event_matches(&req.filter.room.account_data, e))
            .collect();
        let state_changed = prefetch.state_changed.remove(room_id).unwrap_or_default();
        if !full
            && timeline.events.is_empty()
            && typing.is_none()
            && receipts.is_empty()
            && room_data.is_empty()
            && state_changed.is_empty()
        {
            return None;
        }

        let state_filter = &req.filter.room.state;
        let lazy = filter::lazy_members(state_filter);
        let senders: HashSet<String> = timeline
            .events
            .iter()
            .filter_map(|e| e.get("sender").and_then(Value::as_str).map(str::to_owned))
            .chain(std::iter::once(viewer.user_id.to_string()))
            .collect();
        let timeline_ids: HashSet<&str> =
            timeline.events.iter().filter_map(|e| e.get("event_id").and_then(Value::as_str)).collect();
        let keep_state = |e: &Value| {
            if !filter::event_matches(state_filter, e) {
                return false;
            }
            // A gap's membership changes are all sent, lazy loading or not: they are news.
            if lazy && full && e["type"] == "m.room.member" {
                return e["state_key"].as_str().is_some_and(|k| senders.contains(k));
            }
            true
        };

        let mut room = Map::new();
        // Rooms sent in full carry their full state; the others the state that changed,
        // which only a `state_after` or a gapped (limited) timeline needs.
        let state_events = if full || req.use_state_after || timeline.limited {
            prefetch.state.remove(room_id).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut state: Vec<Value> = state_events
            .into_iter()
            .filter(|e| req.use_state_after || !timeline_ids.contains(e["event_id"].as_str().unwrap_or_default()))
            .filter(|e| keep_state(e))
            .collect();
        if lazy {
            // Members the device already has are not sent again, unless the filter asks.
            let redundant = filter::redundant_members(state_filter);
            let (members, others): (Vec<Value>, Vec<Value>) =
                state.into_iter().partition(|e| e["type"] == "m.room.member");
            let mut candidates = members;
            let known: HashSet<String> =
                candidates.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect();
            for event in prefetch.lazy_members.remove(room_id).unwrap_or_default() {
                let id = event["event_id"].as_str().unwrap_or_default();
                if !known.contains(id) && !timeline_ids.contains(id) {
                    candidates.push(event);
                }
            }
            let timeline_members: Vec<&Value> = timeline.events.iter().collect();
            let device = (viewer.user_id.as_str(), viewer.device_id);
            let fresh = self.lazy.filter_and_record(device, room_id, candidates.clone(), &timeline_members, full);
            state = others;
            state.extend(if redundant { candidates } else { fresh });
        }
        let state: Vec<Value> = state.into_iter().map(pdu::sync_event).collect();
        // What changed may all have been filtered out: then the room has nothing to say.
        if !full
            && state.is_empty()
            && timeline.events.is_empty()
            && typing.is_none()
            && receipts.is_empty()
            && room_data.is_empty()
        {
            return None;
        }
        room.insert((if req.use_state_after { "state_after" } else { "state" }).into(), events(state));
        room.insert("timeline".into(), timeline.into_json());
        let mut ephemeral = Vec::new();
        if let Some(users) = typing {
            ephemeral.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
        }
        if !receipts.is_empty() {
            ephemeral.push(json!({ "type": "m.receipt", "content": receipt_content(receipts) }));
        }
        room.insert("ephemeral".into(), events(ephemeral));
        room.insert("account_data".into(), events(room_data));
        let (mut notifications, mut highlights) = prefetch.counts.get(room_id).copied().unwrap_or_default();
        // The threads' counts apart, the main timeline's alone (when the client asked).
        if let Some(threads) = prefetch.thread_counts.remove(room_id) {
            let mut per_thread = serde_json::Map::new();
            for (root, (n, h)) in threads {
                notifications -= n;
                highlights -= h;
                per_thread.insert(root, json!({ "notification_count": n, "highlight_count": h }));
            }
            room.insert("unread_thread_notifications".into(), Value::Object(per_thread));
        }
        room.insert(
            "unread_notifications".into(),
            json!({ "notification_count": notifications.max(0), "highlight_count": highlights.max(0) }),
        );
        let members_changed = full || state_changed.iter().any(|r| r.json.contains("\"m.room.member\""));
        if members_changed {
            let ((joined, invited), heroes) = prefetch.summaries.get(room_id).cloned().unwrap_or_default();
            // Heroes name a room that has no name of its own (none are read for named rooms).
            let mut summary = json!({ "m.joined_member_count": joined, "m.invited_member_count": invited });
            if !heroes.is_empty() {
                summary["m.heroes"] = json!(heroes);
            }
            room.insert("summary".into(), summary);
        }
        Some(Value::Object(room))
    }

    async fn left_room(
        &self,
        viewer: Viewer<'_>,
        req: &SyncRequest,
        since: &Since,
        m: &MembershipRow,
        known: &HashMap<String, Option<i64>>,
    ) -> Result<Value> {
        // The timeline stops at the leave event.
        let range = (m.room_id.clone(), since.pos.unwrap_or(0), m.stream_pos);
        let timeline =
            self.timelines(viewer, req, &[range], known, true, None).await?.remove(&m.room_id).unwrap_or_default();
        // The state at the timeline's start (at the leave when the filter left no timeline),
        // as the room may be new to the client: joined and left since its last sync.
        let group = match timeline.first_group {
            Some(group) => Some(group),
            None => self.store.event(&m.event_id).await?.map(|leave| leave.state_group_before),
        };
        let timeline_ids: HashSet<String> =
            timeline.events.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect();
        // A room the client knew at the token only gets its timeline: its state is known.
        let known_before = match since.pos {
            Some(s) => self
                .store
                .own_member_event_at(&m.room_id, viewer.user_id.as_str(), s)
                .await?
                .is_some_and(|(membership, _)| membership == "join"),
            None => false,
        };
        let mut state = Vec::new();
        if let Some(group) = group.filter(|_| !known_before) {
            let ids: Vec<String> = self
                .store
                .state_group(group)
                .await?
                .into_iter()
                .map(|(_, _, id)| id)
                .filter(|id| !timeline_ids.contains(id))
                .collect();
            let mut rows = self.store.events(&ids).await?;
            rows.retain(|r| !r.purged);
            state = self
                .rooms
                .serve_unbundled(viewer, &rows)
                .await?
                .into_iter()
                .filter(|e| filter::event_matches(&req.filter.room.state, e))
                .map(pdu::sync_event)
                .collect();
        }
        let mut room = Map::new();
        room.insert("timeline".into(), timeline.into_json());
        room.insert("state".into(), events(state));
        room.insert("account_data".into(), events(Vec::new()));
        Ok(Value::Object(room))
    }

    /// The timelines of many rooms, each `(room, from, to)` giving its last events in
    /// `(from, to]`: one read for all rooms, one visibility check, one serving pass.
    async fn timelines(
        &self,
        viewer: Viewer<'_>,
        req: &SyncRequest,
        ranges: &[(String, i64, i64)],
        known: &HashMap<String, Option<i64>>,
        bundled: bool,
        read: Option<(Vec<EventRow>, i64)>,
    ) -> Result<HashMap<String, Timeline>> {
        let timeline_filter = &req.filter.room.timeline;
        let limit = timeline_filter.limit.map_or(DEFAULT_TIMELINE_LIMIT, |l| u64::from(l) as usize).min(500);
        // A filter on types or senders applies before the limit: read further back, and
        // keep only the matching events.
        let selective = filter::is_selective(timeline_filter);
        let read_limit = if selective { (limit as i64 + 1).max(SELECTIVE_TIMELINE_READ) } else { limit as i64 + 1 };
        let mut by_room: HashMap<String, Vec<EventRow>> = HashMap::new();
        // Ranges starting at `since` are covered by the events already read from there;
        // the others (rooms sent in full) are read now.
        let (read, read_from) = read.unzip();
        let to_read: Vec<(String, i64, i64)> =
            ranges.iter().filter(|(_, from, _)| read_from != Some(*from)).cloned().collect();
        // A room read now (sent from its start) must not also take the events read from
        // `since`, or they would be served twice.
        let read_now: HashSet<&str> = to_read.iter().map(|(room, _, _)| room.as_str()).collect();
        for row in read.into_iter().flatten().filter(|row| !read_now.contains(row.room_id.as_str())) {
            by_room.entry(row.room_id.clone()).or_default().push(row);
        }
        if !to_read.is_empty() {
            for row in self.store.recent_events_of_rooms(&to_read, read_limit).await? {
                by_room.entry(row.room_id.clone()).or_default().push(row);
            }
        }
        // Per room, newest first: the batch to examine, the visible events found so far,
        // and whether the rows read reach the range's start. The rows read from `since` are
        // all of the room's events in the range.
        let mut pending: Vec<PendingTimeline> = ranges
            .iter()
            .map(|(room, from, to)| {
                let mut batch = by_room.remove(room).unwrap_or_default();
                batch.sort_unstable_by_key(|r| std::cmp::Reverse(r.stream_pos));
                let exhausted = !read_now.contains(room.as_str()) || (batch.len() as i64) < read_limit;
                PendingTimeline {
                    room,
                    from: *from,
                    to: *to,
                    batch,
                    visible: Vec::new(),
                    oldest: None,
                    exhausted,
                    thinned: false,
                }
            })
            .collect();
        // Events the viewer may not see (history visibility, ignored senders) leave gaps: a
        // room whose batch had too few visible events reads an older batch, a bounded
        // number of times, so that a member back in a `joined` room sees what happened
        // while they were away that is still the room's state.
        for round in 0..=TIMELINE_REFILLS {
            let mut candidates = Vec::new();
            for p in pending.iter_mut().filter(|p| !p.batch.is_empty()) {
                p.oldest = p.batch.last().map(|r| r.stream_pos);
                let mut rows = std::mem::take(&mut p.batch);
                if selective {
                    let read = rows.len();
                    rows.retain(|r| filter::event_matches(timeline_filter, &pdu::client_event(r, None, 0)));
                    p.thinned |= rows.len() < read;
                }
                candidates.extend(rows);
            }
            if candidates.is_empty() {
                break;
            }
            let mut visible: HashMap<String, Vec<EventRow>> = HashMap::new();
            for row in self.visible_in_timeline(viewer, candidates, known).await? {
                visible.entry(row.room_id.clone()).or_default().push(row);
            }
            let mut refill = Vec::new();
            for p in &mut pending {
                if let Some(mut rows) = visible.remove(p.room) {
                    rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.stream_pos));
                    p.visible.extend(rows);
                }
                if let Some(oldest) = p.oldest.filter(|_| p.visible.len() <= limit && !p.exhausted) {
                    refill.push((p.room.clone(), p.from, oldest - 1));
                }
            }
            if refill.is_empty() || round == TIMELINE_REFILLS {
                break;
            }
            let mut older: HashMap<String, Vec<EventRow>> = HashMap::new();
            for row in self.store.recent_events_of_rooms(&refill, TIMELINE_REFILL_READ).await? {
                older.entry(row.room_id.clone()).or_default().push(row);
            }
            for p in &mut pending {
                if refill.iter().any(|(room, _, _)| room == p.room) {
                    let mut batch = older.remove(p.room).unwrap_or_default();
                    batch.sort_unstable_by_key(|r| std::cmp::Reverse(r.stream_pos));
                    p.exhausted = (batch.len() as i64) < TIMELINE_REFILL_READ;
                    p.batch = batch;
                }
            }
        }
        let mut out = HashMap::with_capacity(ranges.len());
        let mut rows = Vec::new();
        for p in pending {
            let mut kept = p.visible;
            // A room newly joined since the token, thinned by the filter, is `limited`: the
            // client has not seen the room whole (on an initial sync, as Synapse does, only
            // more matching events make a timeline limited). Without a filter, a timeline
            // that stops before the range's start is limited.
            let thinned = p.thinned && p.from == 0 && req.since.is_some();
            let limited = kept.len() > limit || (thinned && !kept.is_empty()) || (!selective && !p.exhausted);
            kept.truncate(limit);
            kept.reverse();
            // An initial sync's whole timeline names, as Synapse's does, the range's end: a
            // client paginating back from it reads the same events first (clients and the
            // spec's test suite expect a page there, not an empty one).
            let prev_batch = if req.since.is_none() && !limited {
                p.to
            } else {
                kept.first().map(|r| r.stream_pos).or(p.oldest).map_or(p.to, |pos| pos - 1)
            };
            let timeline = Timeline {
                events: Vec::new(),
                limited,
                prev_batch: make_token(prev_batch),
                first_group: kept.first().map(|r| r.state_group_before),
            };
            out.insert(p.room.clone(), timeline);
            rows.extend(kept);
        }
        rows.sort_unstable_by_key(|r| r.stream_pos);
        let events = if bundled {
            self.rooms.serve(viewer, &rows).await?
        } else {
            self.rooms.serve_unbundled(viewer, &rows).await?
        };
        for (row, event) in rows.iter().zip(events) {
            if filter::event_matches(timeline_filter, &event)
                && let Some(timeline) = out.get_mut(&row.room_id)
            {
                timeline.events.push(event);
            }
        }
        Ok(out)
    }

    /// The rows of many rooms the viewer may see in a timeline, in stream order. Events
    /// that are part of a room's current state are shown whatever the history visibility
    /// (as Synapse does): a member back in a `joined` room must see who joined while they
    /// were away. Only state events the check hid are looked up.
    async fn visible_in_timeline(
        &self,
        viewer: Viewer<'_>,
        rows: Vec<EventRow>,
        known: &HashMap<String, Option<i64>>,
    ) -> Result<Vec<EventRow>> {
        let state_rows: Vec<EventRow> = rows.iter().filter(|r| r.json.contains("\"state_key\"")).cloned().collect();
        let mut rows = self.rooms.filter_visible_known(viewer.user_id, rows, known).await?;
        if !state_rows.is_empty() {
            let shown: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
            let hidden: Vec<EventRow> =
                state_rows.into_iter().filter(|r| !shown.contains(r.event_id.as_str())).collect();
            if !hidden.is_empty() {
                let current = self.store.current_state_ids_among(&hidden).await?;
                rows.extend(hidden.into_iter().filter(|r| current.contains(&r.event_id)));
                rows.sort_unstable_by_key(|r| r.stream_pos);
            }
        }
        Ok(rows)
    }
}

/// The content of a room's `m.receipt` event: event → receipt type → user → receipt.
fn receipt_content(receipts: Vec<crate::store::ReceiptRow>) -> Value {
    let mut content = Map::new();
    for r in receipts {
        let mut receipt = json!({ "ts": r.ts });
        if !r.thread_id.is_empty() {
            receipt["thread_id"] = json!(r.thread_id);
        }
        let entry = content.entry(r.event_id).or_insert_with(|| json!({}));
        entry[&r.receipt_type][&r.user_id] = receipt;
    }
    Value::Object(content)
}

/// Whether a joined room is sent in full (initial sync, `full_state`, or joined since).
fn sent_in_full(req: &SyncRequest, since: &Since, m: &MembershipRow) -> bool {
    req.full_state || since.pos.is_none_or(|s| m.stream_pos > s)
}

/// What the selected rooms of one sync need, read for all of them at once.
#[derive(Default)]
struct Prefetch {
    receipts: HashMap<String, Vec<crate::store::ReceiptRow>>,
    counts: HashMap<String, (i64, i64)>,
    /// Per room, per thread root, for clients that ask for `unread_thread_notifications`.
    thread_counts: HashMap<String, HashMap<String, (i64, i64)>>,
    summaries: HashMap<String, ((i64, i64), Vec<String>)>,
    timelines: HashMap<String, Timeline>,
    /// Served state per room: the full state of rooms sent in full, the changed state of
    /// the others.
    state: HashMap<String, Vec<Value>>,
    /// Current state events stored since the last sync, for rooms not sent in full.
    state_changed: HashMap<String, Vec<EventRow>>,
    /// Current member events of the senders of incremental timelines (lazy loading).
    lazy_members: HashMap<String, Vec<Value>>,
}

/// Which member events each device was sent per room while lazy-loading members, so that an
/// incremental sync sends a sender's member event only when that device lacks it. In memory
/// and bounded: a device forgotten here is sent members again (redundant, never missing).
#[derive(Default)]
pub struct LazyMembers(std::sync::Mutex<Option<hashlink::LruCache<(String, String), SentMembers>>>);

/// The member event IDs sent to one device: by room, then by member.
type SentMembers = HashMap<String, HashMap<String, String>>;

/// Devices whose lazy-loaded members are remembered.
const LAZY_DEVICES: usize = 4096;

impl LazyMembers {
    /// Keeps from `events` the member events the device has not been sent for the room, and
    /// records them (and `also_seen`, member events the device got some other way) as sent.
    /// `reset` forgets what the room's entry held first (the room is being sent in full).
    fn filter_and_record(
        &self,
        device: (&str, &str),
        room_id: &str,
        events: Vec<Value>,
        also_seen: &[&Value],
        reset: bool,
    ) -> Vec<Value> {
        let mut guard = self.0.lock().expect("lazy members lock poisoned");
        let cache = guard.get_or_insert_with(|| hashlink::LruCache::new(LAZY_DEVICES));
        let key = (device.0.to_owned(), device.1.to_owned());
        if cache.get(&key).is_none() {
            cache.insert(key.clone(), HashMap::new());
        }
        let rooms = cache.get_mut(&key).expect("entry was just inserted");
        let sent = rooms.entry(room_id.to_owned()).or_default();
        if reset {
            sent.clear();
        }
        let member_of =
            |e: &Value| Some((e.get("state_key")?.as_str()?.to_owned(), e.get("event_id")?.as_str()?.to_owned()));
        for (member, event_id) in also_seen.iter().filter(|e| e["type"] == "m.room.member").filter_map(|e| member_of(e))
        {
            sent.insert(member, event_id);
        }
        let mut out = Vec::new();
        for event in events {
            let Some((member, event_id)) = member_of(&event) else { continue };
            if sent.get(&member) != Some(&event_id) {
                sent.insert(member, event_id);
                out.push(event);
            }
        }
        out
    }

    /// Whether the device was sent a member event of `member` in the room.
    fn was_sent(&self, device: (&str, &str), room_id: &str, member: &str) -> bool {
        let guard = self.0.lock().expect("lazy members lock poisoned");
        let key = (device.0.to_owned(), device.1.to_owned());
        guard
            .as_ref()
            .and_then(|cache| cache.peek(&key))
            .and_then(|rooms| rooms.get(room_id))
            .is_some_and(|sent| sent.contains_key(member))
    }
}

/// One room's timeline while `timelines` looks for enough visible events.
struct PendingTimeline<'a> {
    room: &'a String,
    from: i64,
    to: i64,
    batch: Vec<EventRow>,
    visible: Vec<EventRow>,
    oldest: Option<i64>,
    exhausted: bool,
    thinned: bool,
}

#[derive(Default)]
struct Timeline {
    events: Vec<Value>,
    limited: bool,
    prev_batch: String,
    first_group: Option<i64>,
}

impl Timeline {
    /// The `timeline` object of a room in the sync format.
    fn into_json(self) -> Value {
        let mut out = Map::new();
        out.insert("events".into(), Value::Array(self.events.into_iter().map(pdu::sync_event).collect()));
        out.insert("limited".into(), Value::Bool(self.limited));
        out.insert("prev_batch".into(), Value::String(self.prev_batch));
        Value::Object(out)
    }
}

/// `{"events": [...]}`, moving the events in.
fn events(list: Vec<Value>) -> Value {
    let mut out = Map::new();
    out.insert("events".into(), Value::Array(list));
    Value::Object(out)
}
