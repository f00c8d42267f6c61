//! `/sync`: what changed for a user since a token, waiting for changes when there are none.
//!
//! A token is `s<stream position>_<typing serial>`. Everything persistent is read up to the
//! stream's committed position; long-polls wait on the stream's change signal, never poll.

pub mod stream;
pub mod typing;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use ruma::{RoomId, UserId, api::client::filter::FilterDefinition};
use serde_json::{Map, Value, json};

use self::{stream::Streams, typing::Typing};
use crate::{
    accounts::Identity,
    e2ee::E2ee,
    error::{Error, Result},
    filter,
    rooms::{
        Rooms,
        notify::PUSH_RULES_TYPE,
        pdu,
        timeline::{Viewer, make_token},
    },
    store::{EventRow, MembershipRow, Store},
};

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
}

/// The sync service.
pub struct Sync {
    store: Store,
    rooms: Arc<Rooms>,
    streams: Arc<Streams>,
    pub typing: Arc<Typing>,
    e2ee: Arc<E2ee>,
}

struct Since {
    pos: Option<i64>,
    typing: Option<u64>,
}

fn parse_since(token: Option<&str>) -> Result<Since> {
    let Some(token) = token else {
        return Ok(Since { pos: None, typing: None });
    };
    let rest = token.strip_prefix('s').ok_or_else(|| Error::invalid_param("invalid since token"))?;
    let (pos, typing) = rest.split_once('_').unwrap_or((rest, "0"));
    let pos = pos.parse().map_err(|_| Error::invalid_param("invalid since token"))?;
    let typing = typing.parse().map_err(|_| Error::invalid_param("invalid since token"))?;
    Ok(Since { pos: Some(pos), typing: Some(typing) })
}

impl Sync {
    /// Creates the service.
    pub fn new(store: Store, rooms: Arc<Rooms>, streams: Arc<Streams>, typing: Arc<Typing>, e2ee: Arc<E2ee>) -> Self {
        Self { store, rooms, streams, typing, e2ee }
    }

    /// Users whose devices the user must (re)fetch (`changed`) or may forget (`left`) for
    /// changes with `since < position <= to`: key changes of users sharing a room, users who
    /// came to share one, and users who no longer share any.
    pub async fn device_list_updates(
        &self,
        user_id: &UserId,
        since: i64,
        to: i64,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let key_changes = self.store.device_list_changes(since, to).await?;
        if key_changes.is_empty() && !self.store.memberships_changed_between(since, to).await? {
            return Ok((Vec::new(), Vec::new()));
        }
        let mates = self.store.room_mates(user_id.as_str()).await?;
        let sharing: HashSet<&str> =
            mates.iter().filter(|(_, m, _, _)| m == "join" || m == "invite").map(|(u, _, _, _)| u.as_str()).collect();
        let mut changed: HashSet<String> =
            key_changes.into_iter().filter(|u| u == user_id.as_str() || sharing.contains(u.as_str())).collect();
        for (other, membership, pos, my_join) in &mates {
            let newly_shared =
                (*pos > since && *pos <= to && membership == "join") || (*my_join > since && *my_join <= to);
            if newly_shared && (membership == "join" || membership == "invite") && other != user_id.as_str() {
                changed.insert(other.clone());
            }
        }
        let left: Vec<String> = mates
            .iter()
            .filter(|(u, m, pos, _)| {
                *pos > since && *pos <= to && (m == "leave" || m == "ban") && !sharing.contains(u.as_str())
            })
            .map(|(u, _, _, _)| u.clone())
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
        let deadline = tokio::time::Instant::now() + req.timeout.min(Duration::from_secs(300));
        let mut changes = self.streams.subscribe();
        loop {
            changes.borrow_and_update();
            let (response, has_changes) = self.compute(identity, &req, &since).await?;
            if has_changes || since.pos.is_none() || req.full_state || tokio::time::Instant::now() >= deadline {
                return Ok(response);
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                // Timed out: answer with what we have (nothing new, a fresh token).
                return Ok(response);
            }
        }
    }

    async fn compute(&self, identity: &Identity, req: &SyncRequest, since: &Since) -> Result<(Value, bool)> {
        let now = self.streams.current();
        let typing_serial = self.typing.serial();
        let user_id = identity.user_id.as_ref();
        let viewer = Viewer { user_id, device_id: identity.device_id.as_str() };
        let mut join = Map::new();
        let mut invite = Map::new();
        let mut leave = Map::new();
        let mut knock = Map::new();
        let memberships = self.store.memberships_of_user(user_id.as_str(), None).await?;
        let account_data = self.store.account_data_since(user_id.as_str(), since.pos).await?;
        let mut visible: Vec<MembershipRow> = Vec::new();
        for m in memberships {
            if m.stream_pos <= now && filter::room_allowed(&req.filter, &m.room_id) {
                visible.push(m);
            }
        }
        // Only rooms with something new are computed: on an incremental sync, one query says
        // which rooms have new events or receipts.
        let changed = match since.pos {
            Some(s) if !req.full_state => Some(self.store.rooms_changed_between(s, now).await?),
            _ => None,
        };
        let mut joined_rows = Vec::new();
        for m in visible.iter().filter(|m| m.membership == "join") {
            let room_id = RoomId::parse(&m.room_id).map_err(|e| Error::Internal(e.to_string()))?;
            let selected = match (&changed, since.pos) {
                (Some(changed), Some(s)) => {
                    m.stream_pos > s
                        || changed.contains(&m.room_id)
                        || account_data.iter().any(|r| r.room_id == m.room_id)
                        || self.typing.changed_since(&room_id, since.typing).is_some()
                }
                _ => true,
            };
            if selected {
                joined_rows.push(m.clone());
            }
        }
        let prefetch = self.prefetch(viewer, req, since, &joined_rows).await?;
        // Joined rooms are computed a few at a time: each still reads its timeline, and
        // overlapping them hides the round trips (PostgreSQL) behind each other.
        for chunk in joined_rows.chunks(8) {
            let mut futures = Vec::with_capacity(chunk.len());
            for m in chunk {
                futures.push(self.joined_room_entry(viewer, req, since, m, now, &account_data, &prefetch));
            }
            for result in futures_util::future::join_all(futures).await {
                if let (room_id, Some(room)) = result? {
                    join.insert(room_id, room);
                }
            }
        }
        for m in &visible {
            let changed_since = since.pos.is_none_or(|s| m.stream_pos > s);
            let room_id = RoomId::parse(&m.room_id).map_err(|e| Error::Internal(e.to_string()))?;
            match m.membership.as_str() {
                "invite" if changed_since => {
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
                    let room = self.left_room(viewer, req, since, &room_id, m).await?;
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
            let ruleset = self.rooms.push_ruleset(user_id).await?;
            global.push(json!({ "type": PUSH_RULES_TYPE, "content": { "global": &*ruleset } }));
        }
        let device_id = identity.device_id.as_ref();
        let to_device = self.e2ee.to_device_for_sync(user_id, device_id, since.pos, now).await?;
        let (changed, left) = match since.pos {
            Some(s) => self.device_list_updates(user_id, s, now).await?,
            None => (Vec::new(), Vec::new()),
        };
        let otk_counts = self.e2ee.one_time_key_counts(user_id, device_id).await?;
        let fallback_types = self.e2ee.unused_fallback_types(user_id, device_id).await?;
        let has_changes = !(join.is_empty()
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
        let response = json!({
            "next_batch": format!("s{now}_{typing_serial}"),
            "rooms": rooms,
            "account_data": { "events": global },
            "presence": { "events": [] },
            "to_device": { "events": to_device },
            "device_lists": { "changed": changed, "left": left },
            "device_one_time_keys_count": otk_counts,
            "device_unused_fallback_key_types": fallback_types,
        });
        Ok((response, has_changes))
    }

    /// Reads what every selected room needs in a few set-based queries.
    async fn prefetch(
        &self,
        viewer: Viewer<'_>,
        req: &SyncRequest,
        since: &Since,
        rooms: &[MembershipRow],
    ) -> Result<Prefetch> {
        let ids: Vec<String> = rooms.iter().map(|m| m.room_id.clone()).collect();
        let full: Vec<String> = rooms
            .iter()
            .filter(|m| since.pos.is_none_or(|s| m.stream_pos > s) || req.full_state)
            .map(|m| m.room_id.clone())
            .collect();
        let mut state: HashMap<String, Vec<EventRow>> = HashMap::new();
        for row in self.store.current_state_of_rooms(&full).await? {
            state.entry(row.room_id.clone()).or_default().push(row);
        }
        Ok(Prefetch {
            receipts: self.store.receipts_for_rooms(&ids, since.pos, viewer.user_id.as_str()).await?,
            counts: self.store.notification_counts_by_room(viewer.user_id.as_str()).await?,
            summaries: self.store.summaries(&ids, viewer.user_id.as_str()).await?,
            state,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn joined_room_entry(
        &self,
        viewer: Viewer<'_>,
        req: &SyncRequest,
        since: &Since,
        m: &MembershipRow,
        now: i64,
        account_data: &[crate::store::AccountDataRow],
        prefetch: &Prefetch,
    ) -> Result<(String, Option<Value>)> {
        let room_id = RoomId::parse(&m.room_id).map_err(|e| Error::Internal(e.to_string()))?;
        let room = self.joined_room(viewer, req, since, &room_id, m, now, account_data, prefetch).await?;
        Ok((m.room_id.clone(), room))
    }

    async fn stripped_state(&self, m: &MembershipRow) -> Result<Vec<Value>> {
        let mut ids = Vec::new();
        for kind in [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.encryption",
            "m.room.topic",
        ] {
            if let Some(row) = self.store.current_state_event(&m.room_id, kind, "").await? {
                ids.push(row);
            }
        }
        let mut out: Vec<Value> = ids.iter().map(pdu::stripped_state).collect();
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

    #[allow(clippy::too_many_arguments)]
    async fn joined_room(
        &self,
        viewer: Viewer<'_>,
        req: &SyncRequest,
        since: &Since,
        room_id: &RoomId,
        m: &MembershipRow,
        now: i64,
        account_data: &[crate::store::AccountDataRow],
        prefetch: &Prefetch,
    ) -> Result<Option<Value>> {
        // A room joined after `since` is sent in full, as on an initial sync.
        let full = since.pos.is_none() || req.full_state || since.pos.is_some_and(|s| m.stream_pos > s);
        let from = if full && since.pos.is_none_or(|s| m.stream_pos > s) { 0 } else { since.pos.unwrap_or(0) };
        let from = if req.full_state { since.pos.unwrap_or(0) } else { from };
        let timeline = self.timeline(viewer, req, room_id, from, now, Some(m.stream_pos)).await?;
        let typing = self.typing.changed_since(room_id, since.typing);
        let receipts = prefetch.receipts.get(room_id.as_str()).cloned().unwrap_or_default();
        let room_data: Vec<Value> = account_data
            .iter()
            .filter(|r| r.room_id == room_id.as_str())
            .map(|r| json!({ "type": r.data_type, "content": serde_json::from_str::<Value>(&r.content).unwrap_or_else(|_| json!({})) }))
            .collect();
        let state_changed = if full {
            Vec::new()
        } else {
            self.store.current_state_since(room_id.as_str(), since.pos.unwrap_or(0)).await?
        };
        if !full
            && timeline.events.is_empty()
            && typing.is_none()
            && receipts.is_empty()
            && room_data.is_empty()
            && state_changed.is_empty()
        {
            return Ok(None);
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
            if lazy && e["type"] == "m.room.member" {
                return e["state_key"].as_str().is_some_and(|k| senders.contains(k));
            }
            true
        };

        let mut room = Map::new();
        let current_state = || prefetch.state.get(room_id.as_str()).cloned().unwrap_or_default();
        let state_rows: Vec<EventRow> = if req.use_state_after {
            if full { current_state() } else { state_changed.clone() }
        } else if full {
            match timeline.first_group {
                Some(group) => {
                    let ids: Vec<String> =
                        self.store.state_group(group).await?.into_iter().map(|(_, _, e)| e).collect();
                    self.store.events(&ids).await?
                }
                None => current_state(),
            }
        } else if timeline.limited {
            state_changed.iter().filter(|r| !timeline_ids.contains(r.event_id.as_str())).cloned().collect()
        } else {
            Vec::new()
        };
        let state: Vec<Value> = self
            .rooms
            .serve(viewer, &state_rows)
            .await?
            .into_iter()
            .filter(|e| req.use_state_after || !timeline_ids.contains(e["event_id"].as_str().unwrap_or_default()))
            .filter(|e| keep_state(e))
            .map(pdu::sync_event)
            .collect();
        if req.use_state_after {
            room.insert("state_after".into(), json!({ "events": state }));
        } else {
            room.insert("state".into(), json!({ "events": state }));
        }
        room.insert(
            "timeline".into(),
            json!({
                "events": timeline.events.into_iter().map(pdu::sync_event).collect::<Vec<_>>(),
                "limited": timeline.limited,
                "prev_batch": timeline.prev_batch,
            }),
        );
        let mut ephemeral = Vec::new();
        if let Some(users) = typing {
            ephemeral.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
        }
        if !receipts.is_empty() {
            let mut content = Map::new();
            for r in receipts {
                let mut receipt = json!({ "ts": r.ts });
                if !r.thread_id.is_empty() {
                    receipt["thread_id"] = json!(r.thread_id);
                }
                let entry = content.entry(r.event_id).or_insert_with(|| json!({}));
                entry[&r.receipt_type][&r.user_id] = receipt;
            }
            ephemeral.push(json!({ "type": "m.receipt", "content": content }));
        }
        room.insert("ephemeral".into(), json!({ "events": ephemeral }));
        room.insert("account_data".into(), json!({ "events": room_data }));
        let (notifications, highlights) = prefetch.counts.get(room_id.as_str()).copied().unwrap_or_default();
        room.insert(
            "unread_notifications".into(),
            json!({ "notification_count": notifications, "highlight_count": highlights }),
        );
        let members_changed = full || state_changed.iter().any(|r| r.json.contains("\"m.room.member\""));
        if members_changed {
            let ((joined, invited), heroes) = prefetch.summaries.get(room_id.as_str()).cloned().unwrap_or_default();
            room.insert(
                "summary".into(),
                json!({ "m.heroes": heroes, "m.joined_member_count": joined, "m.invited_member_count": invited }),
            );
        }
        Ok(Some(Value::Object(room)))
    }

    async fn left_room(
        &self,
        viewer: Viewer<'_>,
        req: &SyncRequest,
        since: &Since,
        room_id: &RoomId,
        m: &MembershipRow,
    ) -> Result<Value> {
        // The timeline stops at the leave event.
        let timeline = self.timeline(viewer, req, room_id, since.pos.unwrap_or(0), m.stream_pos, None).await?;
        Ok(json!({
            "timeline": {
                "events": timeline.events.into_iter().map(pdu::sync_event).collect::<Vec<_>>(),
                "limited": timeline.limited,
                "prev_batch": timeline.prev_batch,
            },
            "state": { "events": [] },
            "account_data": { "events": [] },
        }))
    }

    async fn timeline(
        &self,
        viewer: Viewer<'_>,
        req: &SyncRequest,
        room_id: &RoomId,
        from: i64,
        to: i64,
        joined_at: Option<i64>,
    ) -> Result<Timeline> {
        let timeline_filter = &req.filter.room.timeline;
        let limit = timeline_filter.limit.map_or(DEFAULT_TIMELINE_LIMIT, |l| u64::from(l) as usize).clamp(1, 500);
        let mut rows = self.store.room_events(room_id.as_str(), from, to, true, limit as i64 + 1).await?;
        let limited = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        let first_group = rows.first().map(|r| r.state_group_before);
        let prev_batch = make_token(rows.first().map_or(to, |r| r.stream_pos - 1));
        let rows = self.rooms.filter_visible_after_join(viewer.user_id, rows, joined_at).await?;
        let events = self
            .rooms
            .serve(viewer, &rows)
            .await?
            .into_iter()
            .filter(|e| filter::event_matches(timeline_filter, e))
            .collect();
        Ok(Timeline { events, limited, prev_batch, first_group })
    }
}

/// What the selected rooms of one sync need, read for all of them at once.
struct Prefetch {
    receipts: HashMap<String, Vec<crate::store::ReceiptRow>>,
    counts: HashMap<String, (i64, i64)>,
    summaries: HashMap<String, ((i64, i64), Vec<String>)>,
    /// Current state of the rooms sent in full.
    state: HashMap<String, Vec<EventRow>>,
}

struct Timeline {
    events: Vec<Value>,
    limited: bool,
    prev_batch: String,
    first_group: Option<i64>,
}
