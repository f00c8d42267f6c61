//! Memberships of this server's rooms from another server: the join, knock and leave
//! templates, then the signed events (a join answered with the room's state, a knock with
//! its description), and invites of this server's users.

use axum::{Router, response::Response};
use ruma::api::federation::membership::{
    RawStrippedState, create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
    prepare_knock_event, prepare_leave_event,
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
    let router = router.route("/_matrix/federation/v1/invite/{room_id}/{event_id}", axum::routing::put(invite_v1));
    let router = route(router, send_join);
    let router = route(router, make_knock);
    let router = route(router, send_knock);
    // Version 1 takes the same requests and wraps its answers as `[200, answer]`.
    router
        .route(
            "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
            axum::routing::put(|axum::extract::State(state): axum::extract::State<AppState>, req| async move {
                let answer = join(&state, &req).await?;
                Ok::<_, Error>(json(json!([200, answer])))
            }),
        )
        .route(
            "/_matrix/federation/v1/send_leave/{room_id}/{event_id}",
            axum::routing::put(
                |axum::extract::State(state): axum::extract::State<AppState>,
                 req: Ruma<create_leave_event::v2::Request>| async move {
                    let b = &req.body;
                    admit_membership(&state, req.origin(), &b.room_id, &b.event_id, &b.pdu, "leave").await?;
                    Ok::<_, Error>(json(json!([200, {}])))
                },
            ),
        )
}

/// A server asks membership templates for its own users only, in rooms whose ACL lets it in.
async fn may_ask_template(
    state: &AppState,
    origin: &ruma::ServerName,
    room_id: &ruma::RoomId,
    user_id: &ruma::UserId,
) -> Result<()> {
    if user_id.server_name() != origin {
        return Err(Error::forbidden("a server makes membership events for its own users only"));
    }
    state.federation.check_room_acl(&state.rooms, room_id, origin).await
}

/// The room versions the asking server supports: a server that names none supports
/// version 1 only.
fn supported(ver: &[ruma::RoomVersionId]) -> Vec<ruma::RoomVersionId> {
    if ver.is_empty() { vec![ruma::RoomVersionId::V1] } else { ver.to_vec() }
}

/// # GET /_matrix/federation/v1/make_join/{roomId}/{userId}
async fn make_join(state: AppState, req: Ruma<prepare_join_event::v1::Request>) -> Result<Response> {
    let b = &req.body;
    may_ask_template(&state, req.origin(), &b.room_id, &b.user_id).await?;
    state.rooms.require_full_state(&b.room_id).await?;
    Ok(json(state.rooms.make_join(&b.room_id, &b.user_id, &supported(&b.ver)).await?))
}

/// # PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}
async fn send_join(state: AppState, req: Ruma<create_join_event::v2::Request>) -> Result<Response> {
    Ok(json(join(&state, &req).await?))
}

/// Admits a remote user's join and answers with the room's state before it.
async fn join(state: &AppState, req: &Ruma<create_join_event::v2::Request>) -> Result<serde_json::Value> {
    let b = &req.body;
    state.rooms.require_full_state(&b.room_id).await?;
    // Before the join, as the spec has it.
    let servers_in_room = state.rooms.resident_servers(b.room_id.as_str()).await?;
    let (event, before) = admit_membership(state, req.origin(), &b.room_id, &b.event_id, &b.pdu, "join").await?;
    let (room_state, auth_chain) = if b.omit_members {
        state.rooms.state_and_auth_chain_without_members(b.event_id.as_str(), before.as_deref()).await?
    } else {
        state.rooms.state_and_auth_chain(b.event_id.as_str()).await?
    };
    Ok(json!({
        "origin": state.federation.server_name,
        "state": room_state,
        "auth_chain": auth_chain,
        "event": event,
        "members_omitted": b.omit_members,
        "servers_in_room": servers_in_room,
    }))
}

/// # PUT /_matrix/federation/v2/invite/{roomId}/{eventId}
async fn invite(state: AppState, req: Ruma<create_invite::v2::Request>) -> Result<Response> {
    let b = &req.body;
    let stripped: Vec<&str> = b
        .invite_room_state
        .iter()
        .filter_map(|state| match state {
            RawStrippedState::Pdu(pdu) => Some(pdu.get()),
            #[allow(deprecated)]
            RawStrippedState::Stripped(raw) => Some(raw.json().get()),
            _ => None,
        })
        .collect();
    let signed =
        accept_invite(&state, req.origin(), &b.room_id, &b.event_id, &b.room_version, &b.event, &stripped).await?;
    Ok(json(json!({ "event": signed })))
}

/// # PUT /_matrix/federation/v1/invite/{roomId}/{eventId}
///
/// The first version of the API, for rooms of versions 1 and 2: the body is the event,
/// the room's description in its `unsigned`, the answer `[200, {"event": …}]`. A plain
/// handler: ruma's type for it wants fields older servers leave out.
async fn invite_v1(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    request: axum::extract::Request,
) -> Result<Response> {
    let (parts, body) = request.into_parts();
    let bytes =
        axum::body::to_bytes(body, crate::federation::pdu::MAX_PDU_SIZE * 4).await.map_err(|_| Error::TooLarge)?;
    let origin = state.federation.authenticate(&parts, &bytes).await?;
    let room_id = ruma::RoomId::parse(&room_id).map_err(|e| Error::invalid_param(e.to_string()))?;
    let event_id = ruma::EventId::parse(&event_id).map_err(|e| Error::invalid_param(e.to_string()))?;
    let raw = std::str::from_utf8(&bytes).map_err(|e| Error::NotJson(e.to_string()))?;
    let mut value: serde_json::Value = serde_json::from_str(raw).map_err(|e| Error::NotJson(e.to_string()))?;
    let described: Vec<String> = value["unsigned"]["invite_room_state"]
        .as_array()
        .map(|list| list.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    let stripped: Vec<&str> = described.iter().map(String::as_str).collect();
    if let Some(object) = value.as_object_mut() {
        object.remove("unsigned");
    }
    let event = serde_json::value::to_raw_value(&value).map_err(|e| Error::bad_json(e.to_string()))?;
    // Version 1 invites carry no room version; their event IDs have version 1's form.
    let version = ruma::RoomVersionId::V1;
    let signed = accept_invite(&state, &origin, &room_id, &event_id, &version, &event, &stripped).await?;
    Ok(json(json!([200, { "event": signed }])))
}

/// Checks and countersigns an invite of another server for a local user, keeps it, and
/// answers the signed event.
async fn accept_invite(
    state: &AppState,
    origin: &ruma::ServerName,
    room_id: &ruma::RoomId,
    event_id: &ruma::EventId,
    version: &ruma::RoomVersionId,
    event: &serde_json::value::RawValue,
    described: &[&str],
) -> Result<serde_json::Value> {
    if state.rooms.store.room(room_id.as_str()).await?.is_some() {
        state.federation.check_room_acl(&state.rooms, room_id, origin).await?;
    }
    let (checked_id, signed, target) = state.federation.sign_incoming_invite(room_id, version, event, origin).await?;
    if checked_id != event_id {
        return Err(Error::bad_json("the event ID does not match the event"));
    }
    if !state.store.user_exists(target.as_str()).await? {
        return Err(Error::not_found("no such user here"));
    }
    // What the invitee's client is shown of the room: each description event stripped
    // to its type, state key, sender and content.
    let stripped: Vec<serde_json::Value> =
        described.iter().filter_map(|raw| crate::rooms::pdu::stripped_of_json(raw)).collect();
    let answer = serde_json::to_value(&signed).map_err(|e| Error::Internal(e.to_string()))?;
    let checked = crate::federation::pdu::CheckedPdu { event_id: checked_id, object: signed };
    state.rooms.receive_invite(room_id, checked, stripped).await?;
    Ok(answer)
}

/// # GET /_matrix/federation/v1/make_knock/{roomId}/{userId}
async fn make_knock(state: AppState, req: Ruma<prepare_knock_event::v1::Request>) -> Result<Response> {
    let b = &req.body;
    may_ask_template(&state, req.origin(), &b.room_id, &b.user_id).await?;
    state.rooms.require_full_state(&b.room_id).await?;
    Ok(json(state.rooms.make_knock(&b.room_id, &b.user_id, &supported(&b.ver)).await?))
}

/// # PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}
///
/// Admits the knock (sent on to the room's other servers) and answers with the events
/// that describe the room, as full PDUs.
async fn send_knock(state: AppState, req: Ruma<create_knock_event::v1::Request>) -> Result<Response> {
    let b = &req.body;
    admit_membership(&state, req.origin(), &b.room_id, &b.event_id, &b.pdu, "knock").await?;
    let described: Vec<serde_json::Value> = state
        .rooms
        .describing_state(&b.room_id)
        .await?
        .iter()
        .filter_map(|row| serde_json::from_str(&row.json).ok())
        .collect();
    Ok(json(json!({ "knock_room_state": described })))
}

/// # GET /_matrix/federation/v1/make_leave/{roomId}/{userId}
async fn make_leave(state: AppState, req: Ruma<prepare_leave_event::v1::Request>) -> Result<Response> {
    let b = &req.body;
    may_ask_template(&state, req.origin(), &b.room_id, &b.user_id).await?;
    Ok(json(state.rooms.make_leave(&b.room_id, &b.user_id).await?))
}

/// # PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}
async fn send_leave(state: AppState, req: Ruma<create_leave_event::v2::Request>) -> Result<Response> {
    let b = &req.body;
    admit_membership(&state, req.origin(), &b.room_id, &b.event_id, &b.pdu, "leave").await?;
    Ok(json(json!({})))
}

/// Checks and admits the signed join or leave of one of `origin`'s users (`send_join`,
/// `send_leave`); this server then sends it to the room's other servers. Returns the event,
/// and the room's state before it when at hand.
async fn admit_membership(
    state: &AppState,
    origin: &ruma::ServerName,
    room_id: &ruma::RoomId,
    event_id: &ruma::EventId,
    pdu: &serde_json::value::RawValue,
    membership: &str,
) -> Result<(serde_json::Value, Option<std::sync::Arc<crate::rooms::StateIds>>)> {
    state.federation.check_room_acl(&state.rooms, room_id, origin).await?;
    let (version, rules) = state.rooms.version_of(room_id).await?;
    let checked = state.federation.check_pdu(&version, &rules, pdu).await?;
    if checked.event_id != event_id {
        return Err(Error::bad_json("the event ID does not match the event"));
    }
    let event: serde_json::Value = serde_json::from_str(pdu.get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let sender = event["sender"].as_str().and_then(|s| ruma::UserId::parse(s).ok());
    if event["type"] != "m.room.member"
        || event["content"]["membership"] != membership
        || sender.as_ref().is_none_or(|s| event["state_key"] != s.as_str())
    {
        return Err(Error::bad_json(format!("this endpoint takes a user's own {membership}")));
    }
    if sender.is_some_and(|s| s.server_name() != origin) {
        return Err(Error::forbidden(format!("a server sends the {membership} of its own users only")));
    }
    let (_, before) = state.rooms.admit_remote_with_state(room_id, checked, Some(origin.to_string())).await?;
    Ok((event, before))
}
