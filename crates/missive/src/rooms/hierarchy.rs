//! Spaces: a space's children (`m.space.child` state events) and who may see a room of a
//! space hierarchy without being in it.

use ruma::{RoomId, ServerName, UserId};
use serde_json::{Value, json};

use super::{Rooms, pdu::Pdu};
use crate::error::Result;

/// A room of a space hierarchy: its summary, and its children as stripped state events.
#[derive(Debug, Clone)]
pub struct SpaceRoom {
    pub summary: Value,
    pub children_state: Vec<Value>,
    /// For rooms with a `restricted` join rule: the rooms whose members may join.
    pub allowed_room_ids: Vec<String>,
}

impl SpaceRoom {
    /// The room's children in the spec's order (`order`, then timestamp, then room ID),
    /// only the suggested ones if asked; an entry without `via` is not a child.
    pub fn children(&self, suggested_only: bool) -> Vec<SpaceChild> {
        let mut children: Vec<(String, i64, SpaceChild)> = self
            .children_state
            .iter()
            .filter_map(|e| {
                let content = &e["content"];
                let via: Vec<String> =
                    content["via"].as_array()?.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
                let room_id = ruma::OwnedRoomId::try_from(e["state_key"].as_str()?).ok()?;
                if via.is_empty() || (suggested_only && content["suggested"] != true) {
                    return None;
                }
                let order = content["order"].as_str().filter(|o| o.len() <= 50).unwrap_or("~").to_owned();
                let ts = e["origin_server_ts"].as_i64().unwrap_or(i64::MAX);
                Some((order, ts, SpaceChild { room_id, via }))
            })
            .collect();
        children.sort_by(|a, b| (&a.0, a.1, &a.2.room_id).cmp(&(&b.0, b.1, &b.2.room_id)));
        children.into_iter().map(|(_, _, child)| child).collect()
    }

    /// The chunk of the client's `/hierarchy` answer.
    pub fn client_chunk(&self) -> Value {
        let mut chunk = self.summary.clone();
        chunk["children_state"] = json!(self.children_state);
        chunk
    }

    /// The summary a peer gets (`federation/v1/hierarchy`), restricted rooms' allow list with it.
    pub fn federation_summary(&self, with_children: bool) -> Value {
        let mut summary = self.summary.clone();
        if !self.allowed_room_ids.is_empty() {
            summary["allowed_room_ids"] = json!(self.allowed_room_ids);
        }
        if with_children {
            summary["children_state"] = json!(self.children_state);
        }
        summary
    }
}

/// A child of a space, as its `m.space.child` event names it.
#[derive(Debug, Clone)]
pub struct SpaceChild {
    pub room_id: ruma::OwnedRoomId,
    /// Servers to reach it through.
    pub via: Vec<String>,
}

/// Who asks about a room: a local user or another server.
#[derive(Debug, Clone, Copy)]
pub enum Asker<'a> {
    User(&'a UserId),
    Server(&'a ServerName),
}

impl Rooms {
    /// A room this server holds, as a space hierarchy shows it (`None`: unknown here).
    pub async fn space_room(&self, room_id: &RoomId) -> Result<Option<SpaceRoom>> {
        if self.store.room(room_id.as_str()).await?.is_none() {
            return Ok(None);
        }
        let joined = self.store.room_members(room_id.as_str(), Some("join")).await?.len() as i64;
        let summary = self.room_summary(room_id.as_str(), joined).await?;
        let child_ids: Vec<String> = self
            .store
            .current_state(room_id.as_str())
            .await?
            .into_iter()
            .filter(|(kind, _, _)| kind == "m.space.child")
            .map(|(_, _, id)| id)
            .collect();
        let mut children_state = Vec::new();
        for row in self.store.events(&child_ids).await? {
            let pdu = Pdu::from_row(&row)?;
            let content = pdu.content_value();
            // A child without `via` is no longer a child.
            if content["via"].as_array().is_none_or(|v| v.is_empty()) {
                continue;
            }
            children_state.push(json!({
                "type": "m.space.child",
                "state_key": pdu.state_key,
                "content": content,
                "sender": pdu.sender,
                "origin_server_ts": pdu.origin_server_ts,
            }));
        }
        let join_rules = self.current_state_content(room_id, "m.room.join_rules", "").await?.unwrap_or_default();
        let allowed_room_ids = join_rules["allow"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["type"] == "m.room_membership")
            .filter_map(|a| a["room_id"].as_str().map(str::to_owned))
            .collect();
        Ok(Some(SpaceRoom { summary, children_state, allowed_room_ids }))
    }

    /// Whether `asker` may see a room of a space hierarchy: a user who is in it, invited or
    /// knocking, or anyone when the room is world-readable or may be joined or knocked on;
    /// for restricted rooms, a user in one of the allowed rooms, or another server (which
    /// gets the allow list and decides for its users).
    pub async fn may_preview(&self, room: &SpaceRoom, asker: Asker<'_>) -> Result<bool> {
        if room.summary["world_readable"] == true {
            return Ok(true);
        }
        let room_id = room.summary["room_id"].as_str().unwrap_or_default();
        let rule = room.summary["join_rule"].as_str().unwrap_or("invite");
        if matches!(rule, "public" | "knock") {
            return Ok(true);
        }
        match asker {
            Asker::User(user_id) => {
                let membership = self.store.membership(room_id, user_id.as_str()).await?;
                if membership.is_some_and(|m| matches!(m.membership.as_str(), "join" | "invite" | "knock")) {
                    return Ok(true);
                }
                if matches!(rule, "restricted" | "knock_restricted") {
                    for allowed in &room.allowed_room_ids {
                        let m = self.store.membership(allowed, user_id.as_str()).await?;
                        if m.is_some_and(|m| m.membership == "join") {
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            }
            Asker::Server(server) => {
                if matches!(rule, "restricted" | "knock_restricted") {
                    return Ok(true);
                }
                let suffix = format!(":{server}");
                let members = self.store.room_members(room_id, None).await?;
                Ok(members
                    .iter()
                    .any(|m| m.user_id.ends_with(&suffix) && matches!(m.membership.as_str(), "join" | "invite")))
            }
        }
    }
}
