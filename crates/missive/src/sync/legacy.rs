//! The deprecated sync endpoints that older clients, bots and SyTest's fixtures still use:
//! `GET /events` (the event stream), `GET /initialSync`, `GET /rooms/{roomId}/initialSync`.
//!
//! They are answered from the same reads as `/sync`, reshaped: `/events` is an incremental
//! sync flattened to one list of events, each naming its room; the initial syncs are the
//! room's current state and its last messages.

use std::time::Duration;

use ruma::{RoomId, api::client::filter::FilterDefinition};
use serde_json::{Value, json};

use super::{Sync, SyncRequest};
use crate::{
    accounts::Identity,
    error::{Error, Result},
    rooms::timeline::{PageRequest, Viewer, make_token, parse_token},
};

/// Most events one `/events` answer carries; the rest come with the next call.
const EVENTS_CAP: u32 = 1000;

impl Sync {
    /// `GET /events`: what happened in the user's rooms after `from` (a sync token; now
    /// when absent), waiting up to `timeout` for something to happen.
    pub async fn event_stream(&self, identity: &Identity, from: Option<&str>, timeout: Duration) -> Result<Value> {
        let from = match from {
            Some(token) => token.to_owned(),
            None => self.now_token(),
        };
        let mut filter = FilterDefinition::default();
        filter.room.timeline.limit = Some(EVENTS_CAP.into());
        let request = SyncRequest { since: Some(from.clone()), timeout, filter, ..Default::default() };
        let response = self.sync(identity, request).await?;
        let mut chunk = Vec::new();
        for (kind, section) in
            [("join", "timeline"), ("join", "ephemeral"), ("join", "account_data"), ("leave", "timeline")]
        {
            for (room_id, room) in response["rooms"][kind].as_object().into_iter().flatten() {
                for event in room[section]["events"].as_array().into_iter().flatten() {
                    chunk.push(with_room_id(event.clone(), room_id));
                }
            }
        }
        for (room_id, room) in response["rooms"]["invite"].as_object().into_iter().flatten() {
            let own =
                room["invite_state"]["events"].as_array().into_iter().flatten().find(|e| {
                    e["type"] == "m.room.member" && e["state_key"].as_str() == Some(identity.user_id.as_str())
                });
            if let Some(event) = own {
                chunk.push(with_room_id(event.clone(), room_id));
            }
        }
        for section in ["account_data", "presence"] {
            chunk.extend(response[section]["events"].as_array().into_iter().flatten().cloned().map(legacy_event));
        }
        Ok(json!({ "chunk": chunk, "start": from, "end": response["next_batch"] }))
    }

    /// `GET /events?room_id=`: one room's events after `from`, for its members or, when
    /// the room is world-readable, anyone (peeking); waits up to `timeout` for one.
    pub async fn room_event_stream(
        &self,
        identity: &Identity,
        room_id: &RoomId,
        from: Option<&str>,
        timeout: Duration,
    ) -> Result<Value> {
        let since = super::parse_since(from)?;
        let from = since.pos.unwrap_or_else(|| self.streams.current());
        let (typing_from, presence_from) = match since.pos {
            Some(_) => (since.typing, since.presence),
            None => (Some(self.typing.serial()), Some(self.presence.serial())),
        };
        let from_token = format!("s{from}_{}_{}", typing_from.unwrap_or(0), presence_from.unwrap_or(0));
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(300));
        let mut changes = self.streams.subscribe();
        loop {
            changes.borrow_and_update();
            let now = self.streams.current();
            let (typing_now, presence_now) = (self.typing.serial(), self.presence.serial());
            let page = PageRequest {
                from: Some(&make_token(from)),
                to: Some(&make_token(now)),
                backwards: false,
                limit: EVENTS_CAP as usize,
            };
            let (timeline, _, _) = self.rooms.paginate(viewer(identity), room_id, page, |_| true).await?;
            let mut chunk: Vec<Value> = timeline.into_iter().map(legacy_event).collect();
            // What peeking clients were also told: receipts, typing, and the members' presence.
            if let Some(receipt) = self.receipts(room_id, identity, Some(from), now).await? {
                chunk.push(receipt);
            }
            if let Some(users) = self.typing.changed_since(room_id, typing_from) {
                chunk.push(json!({ "type": "m.typing", "room_id": room_id, "content": { "user_ids": users } }));
            }
            if presence_from.is_some_and(|p| p < presence_now) {
                let members = self.store.room_members(room_id.as_str(), Some("join")).await?;
                let members: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
                chunk.extend(self.presence.events_since(members, presence_from).into_iter().map(legacy_event));
            }
            let end = format!("s{now}_{typing_now}_{presence_now}");
            if !chunk.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(json!({ "chunk": chunk, "start": from_token, "end": end }));
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return Ok(json!({ "chunk": [], "start": from_token, "end": end }));
            }
        }
    }

    /// `GET /initialSync`: every room of the user (left ones too with `archived`), each with
    /// its state and last `limit` messages, and the user's account data and presence.
    pub async fn initial_sync(&self, identity: &Identity, limit: usize, archived: bool) -> Result<Value> {
        // Account data and presence only: the rooms are read below, room by room.
        let mut filter = FilterDefinition::default();
        filter.room.rooms = Some(Vec::new());
        let request = SyncRequest { filter, ..Default::default() };
        let global = self.sync(identity, request).await?;
        let memberships = self.store.memberships_of_user(identity.user_id.as_str(), None).await?;
        let mut rooms = Vec::new();
        for m in memberships {
            let keep = match m.membership.as_str() {
                "join" | "invite" => true,
                "leave" | "ban" => archived,
                _ => false,
            };
            if !keep {
                continue;
            }
            let Ok(room_id) = RoomId::parse(&m.room_id) else { continue };
            let room = if m.membership == "invite" {
                let invite = self.store.event(&m.event_id).await?;
                let served = self.rooms.serve(viewer(identity), &invite.into_iter().collect::<Vec<_>>()).await?;
                json!({ "room_id": room_id, "membership": "invite", "invite": served.into_iter().next() })
            } else {
                self.room_initial_sync(identity, &room_id, limit).await?
            };
            rooms.push(room);
        }
        // The user's own presence always, then that of their rooms' members.
        let mut presence: Vec<Value> = vec![
            json!({ "type": "m.presence", "sender": identity.user_id, "content": self.presence.content(&identity.user_id) }),
        ];
        let mut receipts = Vec::new();
        for room in &mut rooms {
            if let Some(Value::Array(events)) = room.as_object_mut().and_then(|r| r.remove("presence")) {
                presence.extend(events.into_iter().filter(|e| e["sender"] != identity.user_id.as_str()));
            }
            if let Some(Value::Array(events)) = room.get("receipts") {
                receipts.extend(events.iter().cloned());
            }
        }
        presence.sort_by(|a, b| a["sender"].as_str().cmp(&b["sender"].as_str()));
        presence.dedup_by(|a, b| a["sender"] == b["sender"]);
        let presence: Vec<Value> = presence.into_iter().map(legacy_event).collect();
        Ok(json!({
            "end": global["next_batch"],
            "rooms": rooms,
            "receipts": receipts,
            // Push rules have their own API; the legacy initial sync never listed them.
            "account_data": global["account_data"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["type"] != crate::rooms::notify::PUSH_RULES_TYPE)
                .cloned()
                .collect::<Vec<_>>(),
            "presence": presence,
        }))
    }

    /// `GET /rooms/{roomId}/initialSync`: one room's state, last `limit` messages, receipts
    /// and the user's account data for it; for members, former members (as of when they
    /// left) and anyone when the room is world-readable.
    pub async fn room_initial_sync(&self, identity: &Identity, room_id: &RoomId, limit: usize) -> Result<Value> {
        let viewer = viewer(identity);
        let state = self.rooms.state_events(viewer, room_id).await?;
        let membership = self
            .store
            .membership(room_id.as_str(), identity.user_id.as_str())
            .await?
            .map(|m| m.membership)
            .unwrap_or_else(|| "leave".to_owned());
        // Former members page back from where they left.
        let from = match membership.as_str() {
            "join" => None,
            _ => match self.store.membership(room_id.as_str(), identity.user_id.as_str()).await? {
                Some(m) => Some(make_token(m.stream_pos)),
                None => None,
            },
        };
        let page = PageRequest { from: from.as_deref(), to: None, backwards: true, limit: limit.max(1) };
        let (mut messages, end, start) = self.rooms.paginate(viewer, room_id, page, |_| true).await?;
        if limit == 0 {
            messages.clear();
        }
        messages.reverse();
        let messages: Vec<Value> = messages.into_iter().map(legacy_event).collect();
        let state: Vec<Value> = state.into_iter().map(legacy_event).collect();
        let start = start.unwrap_or_else(|| make_token(0));
        let account_data: Vec<Value> = self
            .store
            .room_account_data(identity.user_id.as_str(), room_id.as_str())
            .await?
            .into_iter()
            .map(|(kind, content)| {
                json!({ "type": kind, "content": serde_json::from_str::<Value>(&content).unwrap_or_default() })
            })
            .collect();
        let receipts: Vec<Value> =
            self.receipts(room_id, identity, None, self.streams.current()).await?.into_iter().collect();
        let visibility = if self.store.is_published(room_id.as_str()).await? { "public" } else { "private" };
        // Members' presence, for members only (everyone `offline` while presence is off).
        let presence: Vec<Value> = if membership == "join" {
            state
                .iter()
                .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
                .filter_map(|e| e["state_key"].as_str())
                .filter_map(|user| Some((user, ruma::UserId::parse(user).ok()?)))
                .map(
                    |(user, id)| json!({ "type": "m.presence", "sender": user, "content": self.presence.content(&id) }),
                )
                .collect()
        } else {
            Vec::new()
        };
        let presence: Vec<Value> = presence.into_iter().map(legacy_event).collect();
        let end_token = parse_token(&end).map(|pos| format!("s{pos}_0_0")).unwrap_or(end);
        Ok(json!({
            "room_id": room_id,
            "membership": membership,
            "messages": { "chunk": messages, "start": start, "end": end_token },
            "state": state,
            "account_data": account_data,
            "receipts": receipts,
            "presence": presence,
            "visibility": visibility,
        }))
    }

    /// The room's receipts set in `(since, to]` (all up to `to` for `None`), as one
    /// `m.receipt` event naming its room.
    async fn receipts(
        &self,
        room_id: &RoomId,
        identity: &Identity,
        since: Option<i64>,
        to: i64,
    ) -> Result<Option<Value>> {
        let rooms = [room_id.to_string()];
        let mut receipts = self.store.receipts_for_rooms(&rooms, since, to, identity.user_id.as_str()).await?;
        let rows = receipts.remove(room_id.as_str()).unwrap_or_default();
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(json!({ "type": "m.receipt", "room_id": room_id, "content": super::receipt_content(rows) })))
    }

    /// A sync token for the present moment.
    fn now_token(&self) -> String {
        format!("s{}_{}_{}", self.streams.current(), self.typing.serial(), self.presence.serial())
    }
}

fn viewer(identity: &Identity) -> Viewer<'_> {
    Viewer { user_id: &identity.user_id, device_id: identity.device_id.as_str() }
}

fn with_room_id(mut event: Value, room_id: &str) -> Value {
    if let Some(object) = event.as_object_mut() {
        object.insert("room_id".into(), json!(room_id));
    }
    legacy_event(event)
}

/// The legacy event format these endpoints served: `user_id` beside `sender`, and in
/// presence events, in the content too, with the status message always named.
fn legacy_event(mut event: Value) -> Value {
    if let Some(object) = event.as_object_mut()
        && let Some(sender) = object.get("sender").cloned()
    {
        if object.get("type").and_then(Value::as_str) == Some("m.presence")
            && let Some(content) = object.get_mut("content").and_then(Value::as_object_mut)
        {
            content.insert("user_id".into(), sender.clone());
            content.entry("status_msg").or_insert(Value::Null);
        }
        object.insert("user_id".into(), sender);
    }
    event
}

/// Parses the `limit` of the initial syncs (default 10 as Synapse; at most 100).
pub fn initial_sync_limit(limit: Option<&str>) -> Result<usize> {
    match limit {
        None => Ok(10),
        Some(l) => l.parse::<usize>().map(|l| l.min(100)).map_err(|_| Error::invalid_param("limit must be a number")),
    }
}
