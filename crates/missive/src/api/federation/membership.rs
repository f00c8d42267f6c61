//! Joining this server's rooms from another server: the join template, then the signed
//! join, answered with the room's state.

use axum::{Router, response::Response};
use ruma::api::federation::membership::{
    RawStrippedState, create_invite, create_join_event, create_leave_event, prepare_join_event, prepare_leave_event,
};
use serde_json::json;

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, make_join);
    let router = route(router, make_leave);
    let router = route(router, send_leave);
    let router = route(router, invite);
    let router = route(router, send_join);
    // Version 1 takes the same request and wraps its answer as `[200, answer]`.
    router.route(
        "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
        axum::routing::put(|axum::extract::State(state): axum::extract::State<AppState>, req| async move {
            let answer = join(&state, &req).await?;
            Ok::<_, Error>(json(json!([200, answer])))
        }),
    )
}

/// # GET /_matrix/federation/v1/make_join/{roomId}/{userId}
async fn make_join(state: AppState, req: Ruma<prepare_join_event::v1::Request>) -> Result<Response> {
    let b = &req.body;
    if b.user_id.server_name() != req.origin() {
        return Err(Error::forbidden("a server makes joins for its own users only"));
    }
    state.federation.check_room_acl(&state.rooms, &b.room_id, req.origin()).await?;
    // A server that names no version supports version 1 only.
    let supported = if b.ver.is_empty() { vec![ruma::RoomVersionId::V1] } else { b.ver.clone() };
    Ok(json(state.rooms.make_join(&b.room_id, &b.user_id, &supported).await?))
}

/// # PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}
async fn send_join(state: AppState, req: Ruma<create_join_event::v2::Request>) -> Result<Response> {
    Ok(json(join(&state, &req).await?))
}

/// Admits a remote user's join and answers with the room's state before it.
async fn join(state: &AppState, req: &Ruma<create_join_event::v2::Request>) -> Result<serde_json::Value> {
    let b = &req.body;
    let origin = req.origin();
    state.federation.check_room_acl(&state.rooms, &b.room_id, origin).await?;
    let (version, rules) = state.rooms.version_of(&b.room_id).await?;
    let checked = state.federation.check_pdu(&version, &rules, &b.pdu).await?;
    if checked.event_id != b.event_id {
        return Err(Error::bad_json("the event ID does not match the event"));
    }
    let event: serde_json::Value = serde_json::from_str(b.pdu.get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let sender = event["sender"].as_str().and_then(|s| ruma::UserId::parse(s).ok());
    if event["type"] != "m.room.member"
        || event["content"]["membership"] != "join"
        || sender.as_ref().is_none_or(|s| s.server_name() != origin || event["state_key"] != s.as_str())
    {
        return Err(Error::bad_json("send_join takes the join of one of the origin's users"));
    }
    state.rooms.admit_remote(&b.room_id, checked, Some(origin.to_string())).await?;
    let (room_state, auth_chain) = state.rooms.state_and_auth_chain(b.event_id.as_str()).await?;
    Ok(json!({
        "origin": state.federation.server_name,
        "state": room_state,
        "auth_chain": auth_chain,
        "event": event,
        "members_omitted": false,
        "servers_in_room": state.rooms.resident_servers(b.room_id.as_str()).await?,
    }))
}

/// # PUT /_matrix/federation/v2/invite/{roomId}/{eventId}
async fn invite(state: AppState, req: Ruma<create_invite::v2::Request>) -> Result<Response> {
    let b = &req.body;
    let origin = req.origin();
    if state.rooms.store.room(b.room_id.as_str()).await?.is_some() {
        state.federation.check_room_acl(&state.rooms, &b.room_id, origin).await?;
    }
    let (event_id, signed, target) =
        state.federation.sign_incoming_invite(&b.room_id, &b.room_version, &b.event, origin).await?;
    if event_id != b.event_id {
        return Err(Error::bad_json("the event ID does not match the event"));
    }
    if !state.store.user_exists(target.as_str()).await? {
        return Err(Error::not_found("no such user here"));
    }
    // What the invitee's client is shown of the room: each description event stripped
    // to its type, state key, sender and content.
    let stripped: Vec<serde_json::Value> = b
        .invite_room_state
        .iter()
        .filter_map(|state| {
            let raw = match state {
                RawStrippedState::Pdu(pdu) => pdu.get(),
                #[allow(deprecated)]
                RawStrippedState::Stripped(raw) => raw.json().get(),
                _ => return None,
            };
            let event: serde_json::Value = serde_json::from_str(raw).ok()?;
            Some(json!({
                "type": event.get("type")?, "state_key": event.get("state_key")?,
                "sender": event.get("sender")?, "content": event.get("content")?,
            }))
        })
        .collect();
    let answer = serde_json::to_value(&signed).map_err(|e| Error::Internal(e.to_string()))?;
    let checked = crate::federation::pdu::CheckedPdu { event_id, object: signed };
    state.rooms.receive_invite(&b.room_id, checked, stripped).await?;
    Ok(json(json!({ "event": answer })))
}

/// # GET /_matrix/federation/v1/make_leave/{roomId}/{userId}
async fn make_leave(state: AppState, req: Ruma<prepare_leave_event::v1::Request>) -> Result<Response> {
    let b = &req.body;
    if b.user_id.server_name() != req.origin() {
        return Err(Error::forbidden("a server makes leaves for its own users only"));
    }
    state.federation.check_room_acl(&state.rooms, &b.room_id, req.origin()).await?;
    Ok(json(state.rooms.make_leave(&b.room_id, &b.user_id).await?))
}

/// # PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}
async fn send_leave(state: AppState, req: Ruma<create_leave_event::v2::Request>) -> Result<Response> {
    let b = &req.body;
    let origin = req.origin();
    state.federation.check_room_acl(&state.rooms, &b.room_id, origin).await?;
    let (version, rules) = state.rooms.version_of(&b.room_id).await?;
    let checked = state.federation.check_pdu(&version, &rules, &b.pdu).await?;
    if checked.event_id != b.event_id {
        return Err(Error::bad_json("the event ID does not match the event"));
    }
    let event: serde_json::Value = serde_json::from_str(b.pdu.get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let sender = event["sender"].as_str().and_then(|s| ruma::UserId::parse(s).ok());
    if event["type"] != "m.room.member"
        || event["content"]["membership"] != "leave"
        || sender.as_ref().is_none_or(|s| s.server_name() != origin || event["state_key"] != s.as_str())
    {
        return Err(Error::bad_json("send_leave takes the leave of one of the origin's users"));
    }
    state.rooms.admit_remote(&b.room_id, checked, Some(origin.to_string())).await?;
    Ok(json(json!({})))
}
