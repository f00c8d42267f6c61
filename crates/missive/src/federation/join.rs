//! Joining a room of another server: ask a resident server for a join template
//! (`make_join`), sign it, send it (`send_join`), check every event of the state it answers
//! with, and create the room here from that state.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, UserId,
    api::federation::membership::{
        RawStrippedState, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
        prepare_knock_event, prepare_leave_event,
    },
    room_version_rules::EventIdFormatVersion,
};
use serde_json::value::RawValue;

use std::sync::Arc;

use super::Federation;
use crate::{
    error::{Error, Result},
    rooms::{Rooms, version},
    store::now_ms,
};

impl Federation {
    /// Joins `user_id` to a room this server is not in, through the first of `via` that
    /// lets it in.
    pub async fn join_remote(
        self: &Arc<Self>,
        rooms: &Arc<Rooms>,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
    ) -> Result<()> {
        self.through_first(room_id, via, "join", |server| self.join_through(rooms, user_id, room_id, server)).await
    }

    /// Tries `attempt` through each of `via` in turn (never this server, each once) until
    /// one succeeds; the last error when none does.
    async fn through_first<'a, F, Fut>(
        &self,
        room_id: &RoomId,
        via: &'a [OwnedServerName],
        what: &str,
        mut attempt: F,
    ) -> Result<()>
    where
        F: FnMut(&'a OwnedServerName) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut last_error = Error::not_found(format!("no server to {what} through"));
        let mut tried = Vec::new();
        for server in via.iter().filter(|s| **s != self.server_name) {
            if tried.contains(&server) {
                continue;
            }
            tried.push(server);
            match attempt(server).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "cannot {what} through this server");
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    async fn join_through(
        self: &Arc<Self>,
        rooms: &Arc<Rooms>,
        user_id: &UserId,
        room_id: &RoomId,
        server: &OwnedServerName,
    ) -> Result<()> {
        let asked = std::time::Instant::now();
        let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        request.ver = version::SUPPORTED.iter().filter_map(|v| RoomVersionId::try_from(*v).ok()).collect();
        let template = self.send(server, request).await?;
        let make_join = asked.elapsed();
        let room_version = template.room_version.unwrap_or(RoomVersionId::V1);
        let (room_version, rules) = version::rules_for(room_version.as_str())?;
        let (event_id, json) = self.sign_membership(&template.event, &rules, user_id, "join").await?;
        let raw = RawValue::from_string(json.clone()).map_err(|e| Error::Internal(e.to_string()))?;
        let mut request = create_join_event::v2::Request::new(room_id.to_owned(), event_id.clone(), raw);
        // The members are fetched after the join, unless the room is known here: joining
        // again replaces its state with the answer's, which must then be whole.
        request.omit_members = rooms.store.room(room_id.as_str()).await?.is_none();
        let started = std::time::Instant::now();
        let answer = match self.send(server, request).await {
            Ok(answer) => answer.room_state,
            // A server without the second version takes the first: `[200, {…}]`.
            Err(e) if e.is_unrecognized() => {
                let path = format!("/_matrix/federation/v1/send_join/{room_id}/{event_id}");
                let event: serde_json::Value =
                    serde_json::from_str(&json).map_err(|e| Error::Internal(e.to_string()))?;
                let answer = self.send_json(server, http::Method::PUT, &path, &event).await?;
                let body = answer.get(1).cloned().unwrap_or(answer);
                serde_json::from_value::<create_join_event::v2::RoomState>(body)
                    .map_err(|e| Error::Remote(format!("send_join answer: {e}")))?
            }
            Err(e) => return Err(e.into()),
        };
        let answered = started.elapsed();

        let (state, chain) =
            self.checked_state(room_id, &room_version, &rules, &answer.state, &answer.auth_chain).await?;
        let checked = started.elapsed();
        let events = state.len() + chain.len();
        let partial = answer.members_omitted.then(|| {
            let mut servers = answer.servers_in_room.unwrap_or_default();
            servers.retain(|s| ruma::ServerName::parse(s).is_ok());
            servers
        });
        let partial_state = partial.is_some();
        rooms.persist_remote_join(room_id, &room_version, chain, state, (event_id, json), partial).await?;
        tracing::info!(
            %room_id, %server, %user_id, events, partial_state,
            make_join_ms = make_join.as_millis() as u64,
            send_join_ms = answered.as_millis() as u64,
            check_ms = (checked - answered).as_millis() as u64,
            store_ms = (started.elapsed() - checked).as_millis() as u64,
            "joined a room of another server"
        );
        if partial_state {
            self.spawn_state_completion(rooms.clone(), room_id.to_owned(), Some(server.clone()));
        }
        Ok(())
    }

    /// Checks a room's state and auth chain as another server answered them: every event
    /// as any received PDU, a bad one left out, as long as the state still has what the
    /// room needs (its create event, of this version). The checked state and chain.
    pub(super) async fn checked_state(
        &self,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        rules: &ruma::room_version_rules::RoomVersionRules,
        state: &[Box<RawValue>],
        auth_chain: &[Box<RawValue>],
    ) -> Result<(Vec<(OwnedEventId, String)>, Vec<(OwnedEventId, String)>)> {
        let mut checked_state = Vec::new();
        for pdu in state {
            if let Some(event) = self.checked(room_id, room_version, rules, pdu).await {
                checked_state.push(event);
            }
        }
        let mut chain = Vec::new();
        for pdu in auth_chain {
            if let Some(event) = self.checked(room_id, room_version, rules, pdu).await {
                chain.push(event);
            }
        }
        let create_version = checked_state.iter().find_map(|(_, json)| {
            let value: serde_json::Value = serde_json::from_str(json).ok()?;
            (value["type"] == "m.room.create")
                .then(|| value["content"]["room_version"].as_str().unwrap_or("1").to_owned())
        });
        match create_version {
            Some(v) if v == room_version.as_str() => Ok((checked_state, chain)),
            Some(v) => Err(Error::Remote(format!("the room's create event says version {v}"))),
            None => Err(Error::Remote("the room's state has no create event".into())),
        }
    }

    /// Fills a resident server's membership template with who and when, and signs it:
    /// the event ID and JSON of the event to send back.
    async fn sign_membership(
        &self,
        template: &RawValue,
        rules: &ruma::room_version_rules::RoomVersionRules,
        user_id: &UserId,
        membership: &str,
    ) -> Result<(OwnedEventId, String)> {
        let mut event: CanonicalJsonObject =
            serde_json::from_str(template.get()).map_err(|e| Error::Remote(format!("membership template: {e}")))?;
        for field in ["event_id", "signatures", "hashes", "unsigned"] {
            event.remove(field);
        }
        // The template is the resident server's; who joins and when is ours to say.
        let string = |s: &str| CanonicalJsonValue::String(s.to_owned());
        event.insert("sender".into(), string(user_id.as_str()));
        event.insert("state_key".into(), string(user_id.as_str()));
        event.insert("type".into(), string("m.room.member"));
        event.insert("origin".into(), string(self.server_name.as_str()));
        event.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(ruma::Int::new_saturating(now_ms())));
        let mut content = match event.remove("content") {
            Some(CanonicalJsonValue::Object(content)) => content,
            _ => CanonicalJsonObject::new(),
        };
        content.insert("membership".into(), string(membership));
        if membership == "join" {
            let profile = self.store.profile(user_id.as_str()).await?.unwrap_or_default();
            if let Some(name) = profile.0 {
                content.insert("displayname".into(), string(&name));
            }
            if let Some(avatar) = profile.1 {
                content.insert("avatar_url".into(), string(&avatar));
            }
        }
        event.insert("content".into(), CanonicalJsonValue::Object(content));
        let opaque_id = (rules.event_id_format == EventIdFormatVersion::V1).then(|| {
            let id = format!("${}:{}", crate::accounts::random_string(18), self.server_name);
            event.insert("event_id".into(), string(&id));
            id
        });
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            &self.keys.key_pair,
            &mut event,
            &rules.redaction,
        )
        .map_err(|e| Error::Internal(format!("cannot sign the join: {e}")))?;
        let event_id = match opaque_id {
            Some(id) => id,
            None => format!(
                "${}",
                ruma::signatures::reference_hash(&event, rules).map_err(|e| Error::Internal(e.to_string()))?
            ),
        };
        let event_id = OwnedEventId::try_from(event_id).map_err(|e| Error::Internal(e.to_string()))?;
        let json = serde_json::to_string(&event).map_err(|e| Error::Internal(e.to_string()))?;
        Ok((event_id, json))
    }

    /// Knocks on a room of another server for `user_id`, through the first of `via` that
    /// takes the knock (make_knock, sign, send_knock); the knock and the room's description
    /// are kept for the user's sync.
    pub async fn knock_remote(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<()> {
        self.through_first(room_id, via, "knock", |server| self.knock_through(rooms, user_id, room_id, server, reason))
            .await
    }

    async fn knock_through(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        room_id: &RoomId,
        server: &OwnedServerName,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut request = prepare_knock_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        request.ver = version::SUPPORTED.iter().filter_map(|v| RoomVersionId::try_from(*v).ok()).collect();
        let template = self.send(server, request).await?;
        let (room_version, rules) = version::rules_for(template.room_version.as_str())?;
        let mut event: serde_json::Value =
            serde_json::from_str(template.event.get()).map_err(|e| Error::Remote(format!("knock template: {e}")))?;
        if let Some(reason) = reason {
            event["content"]["reason"] = serde_json::Value::from(reason);
        }
        let template = serde_json::value::to_raw_value(&event).map_err(|e| Error::Internal(e.to_string()))?;
        let (event_id, json) = self.sign_membership(&template, &rules, user_id, "knock").await?;
        let raw = RawValue::from_string(json).map_err(|e| Error::Internal(e.to_string()))?;
        let answer = self
            .send(server, create_knock_event::v1::Request::new(room_id.to_owned(), event_id.clone(), raw.clone()))
            .await?;
        let described = answer
            .knock_room_state
            .iter()
            .filter_map(|state| match state {
                RawStrippedState::Pdu(pdu) => crate::rooms::pdu::stripped_of_json(pdu.get()),
                #[allow(deprecated)]
                RawStrippedState::Stripped(raw) => crate::rooms::pdu::stripped_of_json(raw.json().get()),
                _ => None,
            })
            .collect();
        let checked = self.check_pdu(&room_version, &rules, &raw).await?;
        rooms.record_remote_knock(room_id, checked, described).await
    }

    /// Turns down an invite to a room of another server this server is not in, through
    /// the inviting server (make_leave, sign, send_leave).
    pub async fn reject_remote_invite(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        via: &OwnedServerName,
    ) -> Result<super::pdu::CheckedPdu> {
        let template =
            self.send(via, prepare_leave_event::v1::Request::new(room_id.to_owned(), user_id.to_owned())).await?;
        let room_version = template.room_version.unwrap_or(RoomVersionId::V1);
        let (_, rules) = version::rules_for(room_version.as_str())?;
        let (event_id, json) = self.sign_membership(&template.event, &rules, user_id, "leave").await?;
        let raw = RawValue::from_string(json.clone()).map_err(|e| Error::Internal(e.to_string()))?;
        self.send(via, create_leave_event::v2::Request::new(room_id.to_owned(), event_id.clone(), raw)).await?;
        let object = serde_json::from_str(&json).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(super::pdu::CheckedPdu { event_id, object })
    }

    async fn checked(
        &self,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        rules: &ruma::room_version_rules::RoomVersionRules,
        pdu: &RawValue,
    ) -> Option<(OwnedEventId, String)> {
        match self.check_pdu(room_version, rules, pdu).await {
            Ok(checked) if matches!(checked.object.get("room_id"), Some(CanonicalJsonValue::String(id)) if id != room_id.as_str()) =>
            {
                tracing::warn!(%room_id, event_id = %checked.event_id, "event of another room in a state answer left out");
                None
            }
            Ok(checked) => Some((checked.event_id, serde_json::to_string(&checked.object).ok()?)),
            Err(e) => {
                tracing::warn!(error = %e, "event of a state answer left out");
                None
            }
        }
    }
}
