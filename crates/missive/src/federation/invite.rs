//! Invites across servers: this server's rooms invite other servers' users (their server
//! countersigns the invite), and other servers invite this server's users.

use ruma::{
    CanonicalJsonObject, RoomId, RoomVersionId,
    api::federation::membership::{RawStrippedState, create_invite},
};
use serde_json::value::RawValue;

use super::Federation;
use crate::{
    error::{Error, Result},
    rooms::{RemoteInvite, version},
};

impl Federation {
    /// Sends an invite of this server's room to the invitee's server and returns the event
    /// it countersigned, checked: the same event, now signed by both servers.
    pub async fn countersign_invite(&self, invite: RemoteInvite) -> Result<String> {
        let event: serde_json::Value =
            serde_json::from_str(&invite.event).map_err(|e| Error::Internal(e.to_string()))?;
        let invitee = event["state_key"]
            .as_str()
            .and_then(|u| ruma::UserId::parse(u).ok())
            .ok_or_else(|| Error::Internal("invite without a target".into()))?;
        let raw = RawValue::from_string(invite.event.clone()).map_err(|e| Error::Internal(e.to_string()))?;
        let stripped = invite
            .stripped_state
            .iter()
            .filter_map(|pdu| RawValue::from_string(pdu.clone()).ok().map(RawStrippedState::Pdu))
            .collect();
        let request = create_invite::v2::Request::new(
            invite.room_id.clone(),
            invite.event_id.clone(),
            invite.version.clone(),
            raw,
            stripped,
        );
        let signed = match self.send(invitee.server_name(), request).await {
            Ok(answer) => answer.event,
            // A server without the second version of the API takes the first: the event
            // as the body, the room's description in its `unsigned`.
            Err(e) if e.is_unrecognized() => {
                let mut body = event.clone();
                let described: Vec<serde_json::Value> =
                    invite.stripped_state.iter().filter_map(|pdu| serde_json::from_str(pdu).ok()).collect();
                body["unsigned"] = serde_json::json!({ "invite_room_state": described });
                let path = format!("/_matrix/federation/v1/invite/{}/{}", invite.room_id, invite.event_id);
                let encoded = path.replace('#', "%23");
                let answer = self.send_json(invitee.server_name(), http::Method::PUT, &encoded, &body).await?;
                let event = answer.get(1).and_then(|a| a.get("event")).cloned().unwrap_or(answer["event"].clone());
                serde_json::value::to_raw_value(&event).map_err(|e| Error::Internal(e.to_string()))?
            }
            Err(e) => return Err(e.into()),
        };
        let (_, rules) = version::rules_for(invite.version.as_str())?;
        let checked = self.check_pdu(&invite.version, &rules, &signed).await?;
        if checked.event_id != invite.event_id {
            return Err(Error::Remote("the invitee's server changed the invite".into()));
        }
        let signed_by_invitee = checked.object.get("signatures").is_some_and(|s| match s {
            ruma::CanonicalJsonValue::Object(all) => all.contains_key(invitee.server_name().as_str()),
            _ => false,
        });
        if !signed_by_invitee {
            return Err(Error::Remote("the invitee's server did not sign the invite".into()));
        }
        serde_json::to_string(&checked.object).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Checks an invite of another server's room for one of this server's users, and signs
    /// it with this server's key. Returns the signed event.
    pub async fn sign_incoming_invite(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        event: &RawValue,
        origin: &ruma::ServerName,
    ) -> Result<(ruma::OwnedEventId, CanonicalJsonObject, ruma::OwnedUserId)> {
        let (_, rules) = version::rules_for(version.as_str())?;
        let checked = self.check_pdu(version, &rules, event).await?;
        let value: serde_json::Value =
            serde_json::to_value(&checked.object).map_err(|e| Error::Internal(e.to_string()))?;
        let sender = value["sender"].as_str().and_then(|u| ruma::UserId::parse(u).ok());
        let target = value["state_key"].as_str().and_then(|u| ruma::UserId::parse(u).ok());
        let (Some(sender), Some(target)) = (sender, target) else {
            return Err(Error::bad_json("an invite names its sender and its target"));
        };
        if value["type"] != "m.room.member" || value["content"]["membership"] != "invite" {
            return Err(Error::bad_json("not an invite"));
        }
        if sender.server_name() != origin || value["room_id"] != room_id.as_str() {
            return Err(Error::forbidden("an invite comes from its sender's server, for its room"));
        }
        if target.server_name() != self.server_name {
            return Err(Error::forbidden("the invited user is not on this server"));
        }
        let mut object = checked.object;
        ruma::signatures::sign_json(self.server_name.as_str(), &self.keys.key_pair, &mut object)
            .map_err(|e| Error::Internal(format!("cannot sign the invite: {e}")))?;
        Ok((checked.event_id, object, target))
    }
}
