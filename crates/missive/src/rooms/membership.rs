//! Membership changes: join, invite, leave, kick, ban, unban, knock, forget.

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::{Draft, Rooms};
use crate::error::{Error, Result};

/// The content of an `m.room.member` event.
pub fn member_content(
    membership: &str,
    profile: &(Option<String>, Option<String>),
    reason: Option<&str>,
    is_direct: bool,
) -> Value {
    let mut content = Map::new();
    content.insert("membership".into(), json!(membership));
    if let Some(name) = &profile.0 {
        content.insert("displayname".into(), json!(name));
    }
    if let Some(avatar) = &profile.1 {
        content.insert("avatar_url".into(), json!(avatar));
    }
    if let Some(reason) = reason {
        content.insert("reason".into(), json!(reason));
    }
    if is_direct {
        content.insert("is_direct".into(), json!(true));
    }
    Value::Object(content)
}

/// The state event saying whether external users may be in a room (Tchap's: `rule` is
/// `restricted`, `unrestricted` or `direct`).
pub const ACCESS_RULES_TYPE: &str = "im.vector.room.access_rules";

/// Whether access rules' content admits external users: only rooms marked `unrestricted`
/// and direct chats (`direct`) do, as in Tchap.
fn admits_externals(content: Option<&Value>) -> Result<()> {
    match content.and_then(|c| c.get("rule")).and_then(Value::as_str) {
        Some("unrestricted" | "direct") => Ok(()),
        _ => Err(Error::forbidden("this room does not admit external users")),
    }
}

impl Rooms {
    /// Refuses an external user a room whose access rules do not admit them: only rooms
    /// marked `unrestricted` and direct chats (`direct`) do, as in Tchap.
    async fn require_external_access(&self, room_id: &RoomId) -> Result<()> {
        let content = self.current_state_content(room_id, ACCESS_RULES_TYPE, "").await?;
        admits_externals(content.as_ref())
    }

    /// Refuses a local external user a room of another server unless the description its
    /// invite carried (stripped state) shows access rules that admit them: this server
    /// cannot see the room's state before joining, and the room's server does not know who
    /// is external here.
    pub async fn check_remote_join(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        if !self.store.user(user_id.as_str()).await?.is_some_and(|u| u.external) {
            return Ok(());
        }
        let described: Vec<Value> = match self.store.invite_state(room_id.as_str(), user_id.as_str()).await? {
            Some(state) => serde_json::from_str(&state).unwrap_or_default(),
            None => Vec::new(),
        };
        let rules = described.iter().find(|e| e["type"] == ACCESS_RULES_TYPE && e["state_key"] == "");
        admits_externals(rules.map(|e| &e["content"]))
    }

    /// Refuses power levels that raise a local external user above the room's default.
    pub(super) async fn check_external_power(&self, content: &Value) -> Result<()> {
        let level = |v: &Value| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
        let default = content.get("users_default").and_then(level).unwrap_or(0);
        let Some(users) = content.get("users").and_then(Value::as_object) else {
            return Ok(());
        };
        for (user, value) in users {
            if level(value).is_none_or(|l| l <= default) {
                continue;
            }
            let Ok(user_id) = UserId::parse(user) else {
                continue;
            };
            if user_id.server_name() == self.server_name
                && self.store.user(user_id.as_str()).await?.is_some_and(|u| u.external)
            {
                return Err(Error::forbidden(format!("{user_id} is an external user and cannot be given power")));
            }
        }
        Ok(())
    }

    /// Changes a field of a user's profile and carries it into the member event of every
    /// room they are joined to, as clients expect.
    pub async fn set_profile_field(
        &self,
        user_id: &UserId,
        device_id: Option<&str>,
        field: crate::store::ProfileField,
        value: Option<&str>,
    ) -> Result<()> {
        self.store.set_profile_field(user_id.as_str(), field, value).await?;
        let profile = self.store.profile(user_id.as_str()).await?.unwrap_or_default();
        for m in self.store.memberships_of_user(user_id.as_str(), None).await? {
            if m.membership != "join" {
                continue;
            }
            let Ok(room_id) = RoomId::parse(&m.room_id) else {
                continue;
            };
            let content = member_content("join", &profile, None, false);
            let draft = Draft::state("m.room.member", user_id.as_str(), content);
            if let Err(e) = self.send(user_id, device_id.unwrap_or_default(), &room_id, draft, None).await {
                tracing::warn!(%room_id, error = %e, "profile change not propagated to room");
            }
        }
        Ok(())
    }

    async fn require_room(&self, room_id: &RoomId) -> Result<()> {
        match self.store.room(room_id.as_str()).await? {
            Some(_) => Ok(()),
            None => Err(Error::not_found("room not found; joining rooms on other servers needs federation")),
        }
    }

    async fn current_membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<String>> {
        Ok(self.store.membership(room_id.as_str(), user_id.as_str()).await?.map(|m| m.membership))
    }

    /// Joins a local room (idempotent for members already joined). `extra` are the
    /// request's own fields, kept in the membership content as Synapse keeps them; the
    /// fields the server sets or the auth rules read cannot be supplied this way.
    pub async fn join(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        reason: Option<&str>,
        extra: Map<String, Value>,
    ) -> Result<OwnedRoomId> {
        self.require_room(room_id).await?;
        if self.current_membership(room_id, user_id).await?.as_deref() == Some("join") {
            return Ok(room_id.to_owned());
        }
        if self.store.user(user_id.as_str()).await?.is_some_and(|u| u.external) {
            self.require_external_access(room_id).await?;
        }
        let profile = self.store.profile(user_id.as_str()).await?.unwrap_or_default();
        let mut content = extra;
        for reserved in ["membership", "join_authorised_via_users_server", "third_party_invite", "is_direct"] {
            content.remove(reserved);
        }
        if let Value::Object(own) = member_content("join", &profile, reason, false) {
            content.extend(own);
        }
        let content = Value::Object(content);
        self.write(room_id, async |rooms, batch| {
            rooms.append(batch, user_id, Draft::state("m.room.member", user_id.as_str(), content), None).await
        })
        .await?;
        Ok(room_id.to_owned())
    }

    /// Changes another user's membership (invite, kick, ban, unban).
    pub async fn set_membership_of(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        self.set_membership_with(sender, room_id, target, membership, reason, false).await
    }

    /// [`Self::set_membership_of`], with the `is_direct` flag of an invite to a direct chat.
    pub(crate) async fn set_membership_with(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<()> {
        self.require_room(room_id).await?;
        let current = self.current_membership(room_id, target).await?;
        match membership {
            "invite" => {
                let remote = target.server_name() != self.server_name;
                if remote && self.invite_signer.get().is_none() {
                    return Err(Error::forbidden("inviting users of other servers needs federation"));
                }
                if !remote && !self.store.user_exists(target.as_str()).await? {
                    return Err(Error::not_found(format!("unknown user {target}")));
                }
                match current.as_deref() {
                    Some("join") => {
                        return Err(Error::forbidden(format!("{target} is already in the room")));
                    }
                    Some("ban") => {
                        return Err(Error::forbidden(format!("{target} is banned from the room")));
                    }
                    Some("invite") => return Ok(()),
                    _ => {}
                }
            }
            "unban" if current.as_deref() != Some("ban") => {
                return Err(Error::forbidden(format!("{target} is not banned")));
            }
            "leave" if !matches!(current.as_deref(), Some("join" | "invite" | "knock")) => {
                return Err(Error::forbidden(format!("{target} is not in the room")));
            }
            _ => {}
        }
        let membership = if membership == "unban" { "leave" } else { membership };
        let profile = if membership == "invite" {
            self.store.profile(target.as_str()).await?.unwrap_or_default()
        } else {
            (None, None)
        };
        let content = member_content(membership, &profile, reason, is_direct);
        let remote_invite = membership == "invite" && target.server_name() != self.server_name;
        self.write(room_id, async |rooms, batch| {
            let event_id =
                rooms.append(batch, sender, Draft::state("m.room.member", target.as_str(), content), None).await?;
            if remote_invite {
                // The invitee's server countersigns the invite before it is stored.
                rooms.countersign_invite(batch, event_id).await?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Has the invitee's server sign the invite just appended to the batch, and stores its
    /// answer in place of the event.
    async fn countersign_invite(&self, batch: &mut super::Batch, event_id: ruma::OwnedEventId) -> Result<()> {
        let signer = self.invite_signer.get().cloned().ok_or_else(|| Error::forbidden("federation is off"))?;
        // The room's description, as full PDUs (the spec's form since v1.16).
        let ids: Vec<String> = super::DESCRIBING_STATE
            .iter()
            .filter_map(|kind| batch.head.state_id(kind, "").map(ToString::to_string))
            .collect();
        let stripped = self.store.events(&ids).await?.into_iter().map(|row| row.json).collect();
        let event = batch.write.events.last().filter(|e| e.event_id == event_id.as_str()).map(|e| e.json.clone());
        let event = event.ok_or_else(|| Error::Internal("the invite is not the batch's last event".into()))?;
        let invite = super::RemoteInvite {
            room_id: batch.head.room_id.clone(),
            event_id,
            version: batch.head.version.clone(),
            event,
            stripped_state: stripped,
        };
        let signed = signer(invite).await?;
        if let Some(last) = batch.write.events.last_mut() {
            last.json = signed;
        }
        Ok(())
    }

    /// Leaves a room or rejects an invite.
    pub async fn leave(&self, user_id: &UserId, room_id: &RoomId, reason: Option<&str>) -> Result<()> {
        if self.store.room(room_id.as_str()).await?.is_none()
            && self.current_membership(room_id, user_id).await?.as_deref() == Some("invite")
        {
            // An invite to a room of another server this server is not in: forgotten here
            // (the client handler has told the inviting server, when it could).
            self.store.drop_remote_invite(room_id.as_str(), user_id.as_str(), true).await?;
            return Ok(());
        }
        self.require_room(room_id).await?;
        match self.current_membership(room_id, user_id).await?.as_deref() {
            Some("join" | "invite" | "knock") => {}
            Some("leave") => return Ok(()),
            _ => return Err(Error::forbidden("you are not in this room")),
        }
        let content = member_content("leave", &(None, None), reason, false);
        self.write(room_id, async |rooms, batch| {
            rooms.append(batch, user_id, Draft::state("m.room.member", user_id.as_str(), content), None).await
        })
        .await?;
        Ok(())
    }

    /// Fails unless guests may join the room (`m.room.guest_access` is `can_join`).
    pub async fn require_guest_access(&self, room_id: &RoomId) -> Result<()> {
        let guest_access = self.current_state_content(room_id, "m.room.guest_access", "").await?;
        if guest_access.as_ref().and_then(|c| c["guest_access"].as_str()) != Some("can_join") {
            return Err(Error::forbidden("guests may not join this room"));
        }
        Ok(())
    }

    /// Once a room no longer admits guests, the guests in it leave.
    pub(super) async fn remove_guests(&self, room_id: &RoomId) -> Result<()> {
        for guest in self.store.joined_guests(room_id.as_str()).await? {
            let Ok(guest) = UserId::parse(&guest) else { continue };
            if let Err(e) = self.leave(&guest, room_id, None).await {
                tracing::warn!(%room_id, user_id = %guest, error = %e, "guest not removed after guest access was revoked");
            }
        }
        Ok(())
    }

    /// Leaves every room the user is in, invited to or knocking on (account deactivation).
    /// A room that refuses the leave (it cannot, by the auth rules) does not stop the others.
    pub async fn leave_all(&self, user_id: &UserId) -> Result<()> {
        for row in self.store.memberships_of_user(user_id.as_str(), None).await? {
            if !matches!(row.membership.as_str(), "join" | "invite" | "knock") {
                continue;
            }
            let Ok(room_id) = RoomId::parse(&row.room_id) else { continue };
            if let Err(e) = self.leave(user_id, &room_id, None).await {
                tracing::warn!(%user_id, %room_id, error = %e, "deactivated account could not leave a room");
            }
        }
        Ok(())
    }

    /// Knocks on a room whose join rule allows it.
    pub async fn knock(&self, user_id: &UserId, room_id: &RoomId, reason: Option<&str>) -> Result<OwnedRoomId> {
        self.require_room(room_id).await?;
        match self.current_membership(room_id, user_id).await?.as_deref() {
            Some("join") => return Err(Error::forbidden("you are already in this room")),
            Some("ban") => return Err(Error::forbidden("you are banned from this room")),
            _ => {}
        }
        let profile = self.store.profile(user_id.as_str()).await?.unwrap_or_default();
        let content = member_content("knock", &profile, reason, false);
        self.write(room_id, async |rooms, batch| {
            rooms.append(batch, user_id, Draft::state("m.room.member", user_id.as_str(), content), None).await
        })
        .await?;
        Ok(room_id.to_owned())
    }

    /// Forgets a room the user has left.
    pub async fn forget(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        match self.current_membership(room_id, user_id).await?.as_deref() {
            Some("join" | "invite" | "knock") => Err(Error::Unknown("leave the room before forgetting it".into())),
            Some(_) => Ok(self.store.forget_room(room_id.as_str(), user_id.as_str()).await?),
            None => Err(Error::not_found("you were never in this room")),
        }
    }

    /// Resolves a room ID or alias to a room ID.
    pub async fn resolve_room(&self, id_or_alias: &ruma::RoomOrAliasId) -> Result<OwnedRoomId> {
        match <&RoomId>::try_from(id_or_alias) {
            Ok(room_id) => Ok(room_id.to_owned()),
            Err(alias) => {
                let (room_id, _) = self
                    .store
                    .alias(alias.as_str())
                    .await?
                    .ok_or_else(|| Error::not_found(format!("room alias {alias} not found")))?;
                RoomId::parse(room_id).map_err(|e| Error::Internal(e.to_string()))
            }
        }
    }
}
