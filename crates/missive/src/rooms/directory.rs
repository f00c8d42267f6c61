//! The public room directory: the rooms published on this server.

use serde_json::{Value, json};

use super::Rooms;
use crate::error::{Error, Result};

impl Rooms {
    /// A page of the public room directory: the rooms published on this server, filtered by
    /// a search term over name, topic and canonical alias.
    pub async fn public_rooms(&self, since: Option<&str>, limit: Option<u64>, term: Option<&str>) -> Result<Value> {
        let offset: usize = match since {
            Some(s) => s
                .strip_prefix('o')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Error::invalid_param("invalid since token"))?,
            None => 0,
        };
        // Without a limit the whole directory is one page, as clients that count it expect.
        let limit = limit.map_or(usize::MAX, |l| (l as usize).max(1));
        let rooms = self.store.published_rooms().await?;
        let mut chunk = Vec::new();
        for (room_id, joined) in &rooms {
            let entry = self.room_summary(room_id, *joined).await?;
            if let Some(term) = term.map(str::to_lowercase).filter(|t| !t.is_empty()) {
                let haystack =
                    format!("{} {} {}", entry["name"], entry["topic"], entry["canonical_alias"]).to_lowercase();
                if !haystack.contains(&term) {
                    continue;
                }
            }
            chunk.push(entry);
        }
        let total = chunk.len();
        let page: Vec<Value> = chunk.into_iter().skip(offset).take(limit).collect();
        let mut body = json!({ "chunk": page, "total_room_count_estimate": total });
        if offset.saturating_add(limit) < total {
            body["next_batch"] = json!(page_token(offset + limit));
        }
        if offset > 0 {
            body["prev_batch"] = json!(page_token(offset.saturating_sub(limit)));
        }
        Ok(body)
    }
}

impl Rooms {
    /// A room as the directory and the space hierarchy describe it: name, topic, canonical
    /// alias, avatar, join rule, room type, members, world-readable and guest access.
    pub async fn room_summary(&self, room_id: &str, joined: i64) -> Result<Value> {
        let mut entry = json!({
            "room_id": room_id,
            "num_joined_members": joined,
            "world_readable": false,
            "guest_can_join": false,
        });
        for (kind, field, key) in [
            ("m.room.name", "name", "name"),
            ("m.room.topic", "topic", "topic"),
            ("m.room.canonical_alias", "alias", "canonical_alias"),
            ("m.room.avatar", "url", "avatar_url"),
            ("m.room.join_rules", "join_rule", "join_rule"),
            ("m.room.create", "type", "room_type"),
        ] {
            if let Some(row) = self.store.current_state_event(room_id, kind, "").await?
                && let Ok(content) = serde_json::from_str::<Value>(&row.json)
                && let Some(v) = content["content"].get(field)
            {
                entry[key] = v.clone();
            }
        }
        for (kind, field, value, key) in [
            ("m.room.history_visibility", "history_visibility", "world_readable", "world_readable"),
            ("m.room.guest_access", "guest_access", "can_join", "guest_can_join"),
        ] {
            if let Some(row) = self.store.current_state_event(room_id, kind, "").await?
                && let Ok(content) = serde_json::from_str::<Value>(&row.json)
            {
                entry[key] = json!(content["content"].get(field).and_then(Value::as_str) == Some(value));
            }
        }
        Ok(entry)
    }
}

/// A directory page token. Never a bare number: clients test tokens for truth, and a
/// first page's `"0"` reads as false in some languages.
fn page_token(offset: usize) -> String {
    format!("o{offset}")
}
