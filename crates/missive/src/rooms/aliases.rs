//! Room aliases as room state: `m.room.canonical_alias` may only name aliases that point to
//! the room, and deleting an alias takes it out of the canonical alias.

use ruma::{RoomAliasId, RoomId, UserId, events::StateEventType};
use serde_json::{Value, json};

use super::{Draft, Rooms};
use crate::error::{Error, Result};

impl Rooms {
    /// Checks an `m.room.canonical_alias` content: every alias well formed (`M_INVALID_PARAM`)
    /// and every alias of this server pointing to this room (`M_BAD_ALIAS`). Aliases of
    /// other servers cannot be checked without asking them, and are taken as given.
    pub(super) async fn check_canonical_alias(&self, room_id: &RoomId, content: &Value) -> Result<()> {
        let mut aliases = Vec::new();
        match content.get("alias") {
            None | Some(Value::Null) => {}
            Some(Value::String(alias)) => aliases.push(alias.as_str()),
            Some(_) => return Err(Error::invalid_param("alias must be a string")),
        }
        match content.get("alt_aliases") {
            None => {}
            Some(Value::Array(list)) => {
                for alias in list {
                    aliases.push(alias.as_str().ok_or_else(|| Error::invalid_param("alt_aliases must be strings"))?);
                }
            }
            Some(_) => return Err(Error::invalid_param("alt_aliases must be a list")),
        }
        for alias in aliases {
            let parsed =
                RoomAliasId::parse(alias).map_err(|e| Error::invalid_param(format!("invalid alias {alias}: {e}")))?;
            if parsed.server_name() != self.server_name {
                continue;
            }
            match self.store.alias(alias).await? {
                Some((target, _)) if target == room_id.as_str() => {}
                _ => return Err(Error::BadAlias(format!("{alias} does not point to this room"))),
            }
        }
        Ok(())
    }

    /// Deletes a local alias: its creator, an administrator, or a member who may change the
    /// room's canonical alias may. The alias is then removed from the canonical alias event
    /// when the deleter may send one (otherwise the event keeps naming a dead alias, as
    /// it would after any deletion by its creator alone).
    pub async fn delete_alias(&self, requester: &UserId, is_admin: bool, alias: &RoomAliasId) -> Result<()> {
        let (room_id, creator) =
            self.store.alias(alias.as_str()).await?.ok_or_else(|| Error::not_found("room alias not found"))?;
        let room_id = RoomId::parse(&room_id).map_err(|e| Error::Internal(e.to_string()))?;
        let head = self.head(&room_id).await?;
        let levels = Self::power_levels(&head);
        if creator != requester.as_str()
            && !is_admin
            && !levels.user_can_send_state(requester, StateEventType::RoomCanonicalAlias)
        {
            return Err(Error::forbidden("you may not remove this alias"));
        }
        self.store.delete_alias(alias.as_str()).await?;
        let Some(mut content) = self.current_state_content(&room_id, "m.room.canonical_alias", "").await? else {
            return Ok(());
        };
        let mut changed = false;
        if content.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
            content.as_object_mut().map(|c| c.remove("alias"));
            changed = true;
        }
        if let Some(alt) = content.get_mut("alt_aliases").and_then(Value::as_array_mut) {
            let before = alt.len();
            alt.retain(|a| a.as_str() != Some(alias.as_str()));
            changed |= alt.len() != before;
        }
        if changed && levels.user_can_send_state(requester, StateEventType::RoomCanonicalAlias) {
            let draft =
                Draft::state("m.room.canonical_alias", "", if content.is_object() { content } else { json!({}) });
            if let Err(e) =
                self.write(&room_id, async |rooms, batch| rooms.append(batch, requester, draft, None).await).await
            {
                tracing::warn!(%room_id, error = %e, "canonical alias not updated after alias deletion");
            }
        }
        Ok(())
    }
}
