//! Room upgrades (`/upgrade`): a new room of another version takes over from the old one,
//! which is closed with a tombstone pointing to its successor.

use ruma::{OwnedRoomId, RoomId, UserId, events::StateEventType};
use serde_json::{Value, json};

use super::{Draft, Rooms, membership::member_content, version};
use crate::error::{Error, Result};

/// The state an upgrade carries over to the new room (power levels are handled apart).
const COPIED_STATE: &[&str] = &[
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
];

impl Rooms {
    /// Upgrades a room to `new_version` for a member allowed to send its tombstone, and
    /// returns the new room. The new room gets the old one's settings, power levels, bans
    /// and local aliases; the old room gets a tombstone and is made read-only for members
    /// without a raised power level.
    pub async fn upgrade(&self, sender: &UserId, room_id: &RoomId, new_version: &str) -> Result<OwnedRoomId> {
        let (_, rules) = version::rules_for(new_version)?;
        let head = self.head(room_id).await?;
        let joined = self.store.membership(room_id.as_str(), sender.as_str()).await?;
        if joined.is_none_or(|m| m.membership != "join") {
            return Err(Error::forbidden("you are not in this room"));
        }
        let levels = Self::power_levels(&head);
        if !levels.user_can_send_state(sender, StateEventType::RoomTombstone) {
            return Err(Error::forbidden("you may not upgrade this room"));
        }

        let mut create = serde_json::Map::new();
        if let Some(old) = self.current_state_content(room_id, "m.room.create", "").await? {
            // Creation content the client chose carries over; what names the room's
            // origin and version is set anew.
            for (key, value) in old.as_object().into_iter().flatten() {
                if !matches!(key.as_str(), "creator" | "room_version" | "predecessor" | "additional_creators") {
                    create.insert(key.clone(), value.clone());
                }
            }
        }
        if !rules.authorization.use_room_create_sender {
            create.insert("creator".into(), json!(sender));
        }
        create.insert("room_version".into(), json!(new_version));
        // Before version 12 the new room's ID can be chosen first: the tombstone names it and
        // the new room names the tombstone. A version 12 room's ID is its create event's hash,
        // so its predecessor can only name the old room's last event before the tombstone.
        let chosen_id =
            (!rules.authorization.room_create_event_id_as_room_id).then(|| ruma::RoomId::new_v1(&self.server_name));
        let last_event = head.extremities.first().map(ToString::to_string);
        create.insert("predecessor".into(), json!({ "room_id": room_id, "event_id": last_event }));

        // The upgrader needs the power to send the copied state; whatever their level was,
        // it is restored once the state is in.
        let old_levels =
            self.current_state_content(room_id, "m.room.power_levels", "").await?.unwrap_or_else(|| json!({}));
        let mut initial_levels = old_levels.clone();
        let privileged_creators = rules.authorization.explicitly_privilege_room_creators;
        if let Some(users) = initial_levels.get_mut("users").and_then(Value::as_object_mut) {
            users.remove(sender.as_str());
        } else {
            initial_levels["users"] = json!({});
        }
        if !privileged_creators {
            // Enough power to write every level in use, even those above 100.
            let highest = levels_in_use(&old_levels).max().unwrap_or(100).max(100);
            initial_levels["users"][sender.as_str()] = json!(highest);
        }
        let profile = self.store.profile(sender.as_str()).await?.unwrap_or_default();
        let mut drafts = vec![
            Draft::state("m.room.member", sender.as_str(), member_content("join", &profile, None, false)),
            Draft::state("m.room.power_levels", "", initial_levels.clone()),
        ];
        for kind in COPIED_STATE {
            if let Some(content) = self.current_state_content(room_id, kind, "").await? {
                drafts.push(Draft::state(*kind, "", content));
            } else if *kind == "m.room.guest_access" {
                // Said out loud in the new room: no guests, as the old room's silence meant.
                drafts.push(Draft::state(*kind, "", json!({ "guest_access": "forbidden" })));
            }
        }
        for banned in self.store.room_members(room_id.as_str(), Some("ban")).await? {
            drafts.push(Draft::state("m.room.member", banned.user_id, json!({ "membership": "ban" })));
        }
        let mut restored = old_levels.clone();
        if privileged_creators {
            // In room version 12 the creator's power is implicit and may not be listed.
            if let Some(users) = restored.get_mut("users").and_then(Value::as_object_mut) {
                users.remove(sender.as_str());
            }
        } else if Self::creators(&head).iter().any(|c| c == sender) && restored["users"].get(sender.as_str()).is_none()
        {
            // A creator of a version 12 room held its power implicitly: it is written out.
            restored["users"][sender.as_str()] = json!(100);
        }
        if restored != initial_levels {
            drafts.push(Draft::state("m.room.power_levels", "", restored));
        }
        let published = self.store.is_published(room_id.as_str()).await?;
        let tombstone = |replacement: &ruma::RoomId| {
            Draft::state(
                "m.room.tombstone",
                "",
                json!({ "body": "This room has been replaced", "replacement_room": replacement }),
            )
        };
        let new_room = match chosen_id {
            // The tombstone is built first and committed after the new room: if the new room
            // cannot be created, the old room stays as it was.
            Some(new_id) => {
                self.write(room_id, async |rooms, batch| {
                    let tombstone_id = rooms.append(batch, sender, tombstone(&new_id), None).await?;
                    create.insert("predecessor".into(), json!({ "room_id": room_id, "event_id": tombstone_id }));
                    let content = Value::Object(std::mem::take(&mut create));
                    let drafts = std::mem::take(&mut drafts);
                    rooms.create_as(Some(new_id.clone()), new_version, sender, content, drafts, None, published).await
                })
                .await?
            }
            None => {
                let new_room = self.create(new_version, sender, Value::Object(create), drafts, None, published).await?;
                let draft = tombstone(&new_room);
                self.write(room_id, async |rooms, batch| rooms.append(batch, sender, draft, None).await).await?;
                new_room
            }
        };

        // Local aliases follow the room, and so does the canonical alias that names them.
        self.store.move_aliases(room_id.as_str(), new_room.as_str()).await?;
        if published {
            self.store.set_published(room_id.as_str(), false).await?;
        }
        if let Some(alias) = self
            .current_state_content(room_id, "m.room.canonical_alias", "")
            .await?
            .filter(|c| c.as_object().is_some_and(|c| !c.is_empty()))
        {
            let draft = Draft::state("m.room.canonical_alias", "", alias);
            if let Err(e) =
                self.write(&new_room, async |rooms, batch| rooms.append(batch, sender, draft, None).await).await
            {
                tracing::warn!(room_id = %new_room, error = %e, "canonical alias not carried over by the upgrade");
            }
        }

        // The aliases moved: the old room's canonical alias no longer names them.
        if self
            .current_state_content(room_id, "m.room.canonical_alias", "")
            .await?
            .is_some_and(|c| c.as_object().is_some_and(|c| !c.is_empty()))
        {
            let draft = Draft::state("m.room.canonical_alias", "", json!({}));
            if let Err(e) =
                self.write(room_id, async |rooms, batch| rooms.append(batch, sender, draft, None).await).await
            {
                tracing::warn!(%room_id, error = %e, "old room's canonical alias not cleared");
            }
        }
        // The old room becomes read-only for ordinary members.
        let users_default = old_levels.get("users_default").and_then(Value::as_i64).unwrap_or(0);
        let restricted = (users_default + 1).max(50);
        let mut closed = old_levels;
        let mut changed = false;
        for key in ["events_default", "invite"] {
            if closed.get(key).and_then(Value::as_i64).unwrap_or(0) < restricted {
                closed[key] = json!(restricted);
                changed = true;
            }
        }
        if changed {
            let draft = Draft::state("m.room.power_levels", "", closed);
            if let Err(e) =
                self.write(room_id, async |rooms, batch| rooms.append(batch, sender, draft, None).await).await
            {
                tracing::warn!(%room_id, error = %e, "upgraded room not restricted");
            }
        }
        tracing::info!(%room_id, %new_room, version = new_version, "room upgraded");
        Ok(new_room)
    }
}

/// Every power level a power levels content names (users, events and the defaults).
fn levels_in_use(levels: &Value) -> impl Iterator<Item = i64> + '_ {
    let maps = ["users", "events", "notifications"]
        .into_iter()
        .filter_map(|key| levels.get(key).and_then(Value::as_object))
        .flat_map(|map| map.values());
    let top = levels.as_object().into_iter().flat_map(|object| object.values());
    maps.chain(top).filter_map(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
}

impl Rooms {
    /// The room a room replaced, from its create event's `predecessor`.
    pub async fn predecessor(&self, room_id: &RoomId) -> Result<Option<ruma::OwnedRoomId>> {
        let create = self.current_state_content(room_id, "m.room.create", "").await?;
        Ok(create
            .and_then(|c| c["predecessor"]["room_id"].as_str().map(str::to_owned))
            .and_then(|id| ruma::RoomId::parse(id).ok()))
    }
}
