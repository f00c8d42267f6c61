//! `createRoom`: the initial events of a room, built and committed as one batch.

use ruma::{
    OwnedRoomId, UserId,
    api::client::room::{
        Visibility,
        create_room::v3::{Request, RoomPreset},
    },
};
use serde_json::{Map, Value, json};

use super::{Draft, Rooms, membership::member_content};

/// The room encryption algorithm clients use.
pub const MEGOLM: &str = "m.megolm.v1.aes-sha2";
use crate::error::{Error, Result};

impl Rooms {
    /// Creates a room as the spec's `createRoom` describes, for a local user.
    pub async fn create_room(&self, sender: &UserId, req: Request) -> Result<OwnedRoomId> {
        if self.store.user(sender.as_str()).await?.is_some_and(|u| u.external) {
            return Err(Error::forbidden("external users cannot create rooms"));
        }
        let version = match &req.room_version {
            Some(v) => v.to_string(),
            None => self.default_version.clone(),
        };
        let (_, rules) = super::version::rules_for(&version)?;
        let v12 = rules.authorization.explicitly_privilege_room_creators;

        let mut create: Map<String, Value> = match &req.creation_content {
            Some(raw) => {
                serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(format!("creation_content: {e}")))?
            }
            None => Map::new(),
        };
        create.remove("room_version");
        create.remove("creator");
        if !rules.authorization.use_room_create_sender {
            create.insert("creator".into(), json!(sender));
        }
        create.insert("room_version".into(), json!(version));

        let alias = match &req.room_alias_name {
            Some(name) => {
                let alias = ruma::RoomAliasId::parse(format!("#{name}:{}", self.server_name))
                    .map_err(|e| Error::invalid_param(format!("room_alias_name: {e}")))?;
                if self.store.alias(alias.as_str()).await?.is_some() {
                    return Err(Error::RoomInUse);
                }
                Some(alias)
            }
            None => None,
        };
        for invitee in req.invite.iter().filter(|i| i.server_name() == self.server_name) {
            if !self.store.user_exists(invitee.as_str()).await? {
                return Err(Error::not_found(format!("unknown user {invitee}")));
            }
        }

        let preset = req.preset.clone().unwrap_or(match req.visibility {
            Visibility::Public => RoomPreset::PublicChat,
            _ => RoomPreset::PrivateChat,
        });
        let mut users = Map::new();
        if !v12 {
            users.insert(sender.to_string(), json!(100));
        }
        if preset == RoomPreset::TrustedPrivateChat {
            for invitee in &req.invite {
                users.insert(invitee.to_string(), json!(100));
            }
        }
        let mut power_levels = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "historical": 100,
            "notifications": { "room": 50 },
        });
        if let Some(over) = &req.power_level_content_override {
            let over: Map<String, Value> = serde_json::from_str(over.json().get())
                .map_err(|e| Error::bad_json(format!("power_level_content_override: {e}")))?;
            for (k, v) in over {
                power_levels[k] = v;
            }
            self.check_external_power(&power_levels).await?;
        }

        let profile = self.store.profile(sender.as_str()).await?.unwrap_or_default();
        let mut drafts = vec![
            Draft::state("m.room.member", sender.as_str(), member_content("join", &profile, None, false)),
            Draft::state("m.room.power_levels", "", power_levels),
        ];
        if let Some(alias) = &alias {
            drafts.push(Draft::state("m.room.canonical_alias", "", json!({ "alias": alias })));
        }
        let (join_rule, guests_can_join) = match preset {
            RoomPreset::PublicChat => ("public", false),
            _ => ("invite", true),
        };
        drafts.push(Draft::state("m.room.join_rules", "", json!({ "join_rule": join_rule })));
        drafts.push(Draft::state("m.room.history_visibility", "", json!({ "history_visibility": "shared" })));
        // No `m.room.guest_access` event means `forbidden`: public rooms need none.
        if guests_can_join {
            drafts.push(Draft::state("m.room.guest_access", "", json!({ "guest_access": "can_join" })));
        }
        let public = preset == RoomPreset::PublicChat;
        let mut encrypted = false;
        for raw in &req.initial_state {
            let event: Value =
                serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(format!("initial_state: {e}")))?;
            let kind = event
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::bad_json("initial_state event without type"))?;
            if kind == "m.room.create" || kind == "m.room.member" {
                return Err(Error::invalid_param(format!("{kind} cannot be set in initial_state")));
            }
            let state_key = event.get("state_key").and_then(Value::as_str).unwrap_or("");
            let content = event.get("content").cloned().unwrap_or_else(|| json!({}));
            if kind == "m.room.encryption" {
                self.check_encryption(public, &content)?;
                encrypted = true;
            }
            drafts.push(Draft::state(kind, state_key, content));
        }
        // Private rooms and direct chats are end-to-end encrypted by default; public rooms are
        // not, since whoever joins may read them.
        let wants_encryption = !public || (req.is_direct && !self.encryption_mandatory);
        if !encrypted && wants_encryption {
            drafts.push(Draft::state("m.room.encryption", "", json!({ "algorithm": MEGOLM })));
        }
        if let Some(name) = &req.name {
            drafts.push(Draft::state("m.room.name", "", json!({ "name": name })));
        }
        if let Some(topic) = &req.topic {
            drafts.push(Draft::state(
                "m.room.topic",
                "",
                json!({ "topic": topic, "m.topic": [{ "body": topic, "mimetype": "text/plain" }] }),
            ));
        }
        for invitee in req.invite.iter().filter(|i| i.server_name() == self.server_name) {
            let invitee_profile = self.store.profile(invitee.as_str()).await?.unwrap_or_default();
            drafts.push(Draft::state(
                "m.room.member",
                invitee.as_str(),
                member_content("invite", &invitee_profile, None, req.is_direct),
            ));
        }

        let room_id = self
            .create(
                &version,
                sender,
                Value::Object(create),
                drafts,
                alias.map(|a| a.to_string()),
                req.visibility == Visibility::Public,
            )
            .await?;
        tracing::info!(%room_id, "room created");
        // Other servers' users are invited once the room exists: their server countersigns
        // each invite. One that cannot be reached leaves the room without that invite.
        for invitee in req.invite.iter().filter(|i| i.server_name() != self.server_name) {
            if let Err(e) = self.set_membership_with(sender, &room_id, invitee, "invite", None, req.is_direct).await {
                tracing::warn!(%room_id, %invitee, error = %e, "invite to another server failed");
            }
        }
        Ok(room_id)
    }

    /// Under mandatory encryption: public rooms may not be encrypted, private rooms only with
    /// Megolm.
    pub fn check_encryption(&self, public: bool, content: &Value) -> Result<()> {
        if !self.encryption_mandatory {
            return Ok(());
        }
        if public {
            return Err(Error::forbidden("public rooms cannot be end-to-end encrypted on this server"));
        }
        if content.get("algorithm").and_then(Value::as_str) != Some(MEGOLM) {
            return Err(Error::forbidden(format!("rooms on this server must be encrypted with {MEGOLM}")));
        }
        Ok(())
    }
}
