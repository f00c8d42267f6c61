//! Rooms: creation, membership, state, events, timeline, relations.

use axum::{Router, response::Response};
use ruma::{
    RoomId,
    api::{
        Direction,
        client::{
            context::get_context,
            knock::knock_room,
            membership::{
                ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
                joined_members, joined_rooms, kick_user, leave_room, unban_user,
            },
            message::{get_message_events, send_message_event},
            redact::redact_event,
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            room::{create_room, get_event_by_timestamp, get_room_event},
            state::{get_state_event_for_key, get_state_events, send_state_event},
            threads::get_threads,
        },
    },
};
use serde_json::{Map, Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Authenticated, Ruma, json, route},
    },
    error::{Error, Result},
    filter,
    ratelimit::Action,
    rooms::{
        Draft,
        search::SearchRequest,
        timeline::{PageRequest, Viewer},
    },
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, create);
    let router = route(router, join_by_id);
    let router = route(router, join);
    let router = route(router, knock);
    let router = route(router, timestamp_to_event);
    let router = route(router, invite);
    let router = route(router, leave);
    let router = route(router, forget);
    let router = route(router, kick);
    let router = route(router, ban);
    let router = route(router, unban);
    let router = route(router, joined_rooms);
    let router = route(router, members);
    let router = route(router, joined_members);
    let router = route(router, state);
    let router = route(router, state_event);
    let router = route(router, send_state);
    let router = route(router, send);
    let router = route(router, redact);
    let router = route(router, event);
    let router = route(router, messages);
    let router = route(router, context);
    let mut router = router;
    for version in ["r0", "v3"] {
        router =
            router.route(&format!("/_matrix/client/{version}/rooms/{{room_id}}/upgrade"), axum::routing::post(upgrade));
    }
    let router = route(router, search);
    let router = route(router, relations);
    let router = route(router, relations_by_type);
    let router = route(router, relations_by_type_and_event);
    // ruma 0.16 requires `include` on /threads although the spec makes it optional (default
    // `all`); supply the default so spec-following clients are not refused.
    let threads_routes = route(Router::new(), threads).layer(axum::middleware::map_request(default_threads_include));
    router.merge(threads_routes)
}

async fn default_threads_include(mut req: axum::extract::Request) -> axum::extract::Request {
    let uri = req.uri();
    let has_include = uri.query().is_some_and(|q| q.split('&').any(|p| p.starts_with("include=")));
    if !has_include {
        let query = match uri.query() {
            Some(q) if !q.is_empty() => format!("{q}&include=all"),
            _ => "include=all".to_owned(),
        };
        if let Ok(new_uri) = format!("{}?{query}", uri.path()).parse() {
            *req.uri_mut() = new_uri;
        }
    }
    req
}

/// The JSON object a request carried (empty when it had none).
fn body_fields<T>(req: &Ruma<T>) -> Map<String, Value> {
    match serde_json::from_slice(&req.json) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    }
}

/// The authenticated requester as a timeline viewer.
pub(super) fn viewer<T>(req: &Ruma<T>) -> Viewer<'_> {
    let id = req.identity();
    Viewer { user_id: &id.user_id, device_id: id.device_id.as_str() }
}

fn body_object(bytes: &[u8]) -> Result<Value> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Error::bad_json(e.to_string()))?;
    if !value.is_object() {
        return Err(Error::bad_json("event content must be a JSON object"));
    }
    Ok(value)
}

fn reason_of(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(bytes).ok()?.get("reason")?.as_str().map(str::to_owned)
}

/// # POST /_matrix/client/v3/createRoom
async fn create(state: AppState, req: Ruma<create_room::v3::Request>) -> Result<Response> {
    let id = req.identity().clone();
    state.limits.check(Action::RoomJoin, id.user_id.as_str())?;
    let room_id = state.rooms.create_room(&id.user_id, req.body).await?;
    Ok(json(json!({ "room_id": room_id })))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/join
async fn join_by_id(state: AppState, req: Ruma<join_room_by_id::v3::Request>) -> Result<Response> {
    let id = req.identity();
    state.limits.check(Action::RoomJoin, id.user_id.as_str())?;
    if id.is_guest {
        state.rooms.require_guest_access(&req.body.room_id).await?;
    }
    let room_id = join_anywhere(&state, &req, &req.body.room_id, Vec::new(), req.body.reason.as_deref()).await?;
    after_join(&state, &id.user_id, &room_id).await?;
    Ok(json(json!({ "room_id": room_id })))
}

/// Joins a room of this server, or, when this server does not know the room, joins it
/// through the servers named (the alias's, the request's `via`, the room ID's own).
async fn join_anywhere<T>(
    state: &AppState,
    req: &Ruma<T>,
    room_id: &ruma::RoomId,
    mut via: Vec<ruma::OwnedServerName>,
    reason: Option<&str>,
) -> Result<ruma::OwnedRoomId> {
    let user_id = &req.identity().user_id;
    // A room this server is in is joined here; one it has left (its state may be stale) is
    // joined again through the servers it last knew in it, unless none is left.
    if state.store.room(room_id.as_str()).await?.is_some() {
        let residents = state.rooms.resident_servers(room_id.as_str()).await?;
        let own = state.federation.server_name.as_str();
        if residents.is_empty() || residents.iter().any(|s| s == own) {
            return state.rooms.join(user_id, room_id, reason, body_fields(req)).await;
        }
        via.extend(residents.iter().filter_map(|s| ruma::OwnedServerName::try_from(s.as_str()).ok()));
    }
    if let Some(server) = state.rooms.pending_membership_server(room_id, user_id).await? {
        via.insert(0, server);
    }
    if let Some(server) = room_id.server_name() {
        via.push(server.to_owned());
    }
    state.rooms.check_remote_join(user_id, room_id).await?;
    state.federation.join_remote(&state.rooms, user_id, room_id, &via).await?;
    Ok(room_id.to_owned())
}

/// # POST /_matrix/client/v3/join/{roomIdOrAlias}
async fn join(state: AppState, req: Ruma<join_room_by_id_or_alias::v3::Request>) -> Result<Response> {
    let id = req.identity();
    state.limits.check(Action::RoomJoin, id.user_id.as_str())?;
    let (room_id, mut via) = room_and_servers(&state, &req.body.room_id_or_alias).await?;
    via.extend(req.body.via.iter().cloned());
    if id.is_guest {
        state.rooms.require_guest_access(&room_id).await?;
    }
    let room_id = join_anywhere(&state, &req, &room_id, via, req.body.reason.as_deref()).await?;
    after_join(&state, &id.user_id, &room_id).await?;
    Ok(json(json!({ "room_id": room_id })))
}

/// # POST /_matrix/client/v3/knock/{roomIdOrAlias}
///
/// A room this server is not in is knocked on through the servers the alias names, the
/// `via` servers, or the room ID's server.
async fn knock(state: AppState, req: Ruma<knock_room::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let (room_id, mut via) = room_and_servers(&state, &req.body.room_id_or_alias).await?;
    let reason = req.body.reason.as_deref();
    if state.store.room(room_id.as_str()).await?.is_some() {
        let room_id = state.rooms.knock(&id.user_id, &room_id, reason).await?;
        return Ok(json(json!({ "room_id": room_id })));
    }
    via.extend(req.body.via.iter().cloned());
    if let Some(server) = room_id.server_name() {
        via.push(server.to_owned());
    }
    state.federation.knock_remote(&state.rooms, &id.user_id, &room_id, &via, reason).await?;
    Ok(json(json!({ "room_id": room_id })))
}

/// A room ID or alias as a room ID, with the servers to reach it through when the alias
/// is another server's (its directory names them).
async fn room_and_servers(
    state: &AppState,
    room_id_or_alias: &ruma::RoomOrAliasId,
) -> Result<(ruma::OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    Ok(match <&ruma::RoomId>::try_from(room_id_or_alias) {
        Ok(room_id) => (room_id.to_owned(), Vec::new()),
        Err(alias) if alias.server_name() != state.federation.server_name => {
            let request = ruma::api::federation::query::get_room_information::v1::Request::new(alias.to_owned());
            let answer = state.federation.send(alias.server_name(), request).await?;
            let servers = answer.servers.iter().filter_map(|s| ruma::OwnedServerName::try_from(s.as_str()).ok());
            (answer.room_id, servers.collect())
        }
        Err(_) => (state.rooms.resolve_room(room_id_or_alias).await?, Vec::new()),
    })
}

/// # POST /_matrix/client/v3/rooms/{roomId}/invite
async fn invite(state: AppState, req: Ruma<invite_user::v3::Request>) -> Result<Response> {
    let id = req.identity();
    state.limits.check(Action::Invite, id.user_id.as_str())?;
    let invite_user::v3::InvitationRecipient::UserId(invitee) = &req.body.recipient else {
        return Err(Error::forbidden("third-party invites are not supported"));
    };
    let user_id = &invitee.user_id;
    let reason = reason_of(&req.json);
    state.rooms.set_membership_of(&id.user_id, &req.body.room_id, user_id, "invite", reason.as_deref()).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/leave
async fn leave(state: AppState, req: Ruma<leave_room::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let room_id = &req.body.room_id;
    // Declining an invite to (or withdrawing a knock on) a room of another server: that
    // server is told, if it can be reached; the invite or knock is forgotten here either way.
    if state.store.room(room_id.as_str()).await?.is_none()
        && let Some(server) = state.rooms.pending_membership_server(room_id, &id.user_id).await?
    {
        match state.federation.reject_remote_invite(&id.user_id, room_id, &server).await {
            Ok(leave) => {
                state.rooms.record_declined_invite(room_id, &id.user_id, leave).await?;
                return Ok(json(json!({})));
            }
            Err(e) => {
                tracing::info!(%room_id, %server, error = %e, "the inviting server was not told of the rejection");
                state.rooms.decline_invite_here(room_id, &id.user_id).await?;
                return Ok(json(json!({})));
            }
        }
    }
    state.rooms.leave(&id.user_id, room_id, req.body.reason.as_deref()).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/forget
async fn forget(state: AppState, req: Ruma<forget_room::v3::Request>) -> Result<Response> {
    state.rooms.forget(&req.identity().user_id, &req.body.room_id).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/kick
async fn kick(state: AppState, req: Ruma<kick_user::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let b = &req.body;
    state.rooms.set_membership_of(&id.user_id, &b.room_id, &b.user_id, "leave", b.reason.as_deref()).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/ban
async fn ban(state: AppState, req: Ruma<ban_user::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let b = &req.body;
    state.rooms.set_membership_of(&id.user_id, &b.room_id, &b.user_id, "ban", b.reason.as_deref()).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/unban
async fn unban(state: AppState, req: Ruma<unban_user::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let b = &req.body;
    state.rooms.set_membership_of(&id.user_id, &b.room_id, &b.user_id, "unban", b.reason.as_deref()).await?;
    Ok(json(json!({})))
}

/// # GET /_matrix/client/v3/joined_rooms
async fn joined_rooms(state: AppState, req: Ruma<joined_rooms::v3::Request>) -> Result<Response> {
    let rooms: Vec<String> = state
        .store
        .memberships_of_user(req.identity().user_id.as_str(), None)
        .await?
        .into_iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id)
        .collect();
    Ok(json(json!({ "joined_rooms": rooms })))
}

/// # GET /_matrix/client/v3/rooms/{roomId}/members
async fn members(state: AppState, req: Ruma<get_member_events::v3::Request>) -> Result<Response> {
    state.rooms.wait_full_state(&req.body.room_id).await?;
    let events = state.rooms.state_events(viewer(&req), &req.body.room_id).await?;
    let want = req.body.membership.as_ref().map(ToString::to_string);
    let not = req.body.not_membership.as_ref().map(ToString::to_string);
    let chunk: Vec<Value> = events
        .into_iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter(|e| {
            let m = e["content"]["membership"].as_str().unwrap_or_default();
            want.as_deref().is_none_or(|w| w == m) && not.as_deref() != Some(m)
        })
        .collect();
    Ok(json(json!({ "chunk": chunk })))
}

/// # GET /_matrix/client/v3/rooms/{roomId}/joined_members
async fn joined_members(state: AppState, req: Ruma<joined_members::v3::Request>) -> Result<Response> {
    state.rooms.wait_full_state(&req.body.room_id).await?;
    let events = state.rooms.state_events(viewer(&req), &req.body.room_id).await?;
    let mut joined = Map::new();
    for e in events.iter().filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join") {
        if let Some(user) = e["state_key"].as_str() {
            joined.insert(
                user.to_owned(),
                json!({ "display_name": e["content"]["displayname"], "avatar_url": e["content"]["avatar_url"] }),
            );
        }
    }
    Ok(json(json!({ "joined": joined })))
}

/// # GET /_matrix/client/v3/rooms/{roomId}/state
async fn state(state: AppState, req: Ruma<get_state_events::v3::Request>) -> Result<Response> {
    state.rooms.wait_full_state(&req.body.room_id).await?;
    Ok(json(Value::Array(state.rooms.state_events(viewer(&req), &req.body.room_id).await?)))
}

/// # GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}
async fn state_event(state: AppState, req: Ruma<get_state_event_for_key::v3::Request>) -> Result<Response> {
    let b = &req.body;
    let kind = b.event_type.to_string();
    if matches!(b.format, ruma::api::client::state::get_state_event_for_key::v3::StateEventFormat::Event) {
        let events = state.rooms.state_events(viewer(&req), &b.room_id).await?;
        let event = events
            .into_iter()
            .find(|e| e["type"] == kind && e["state_key"] == b.state_key.as_str())
            .ok_or_else(|| Error::not_found("state event not found"))?;
        return Ok(json(event));
    }
    Ok(json(state.rooms.state_content(viewer(&req), &b.room_id, &kind, &b.state_key).await?))
}

/// # PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}
async fn send_state(state: AppState, req: Ruma<send_state_event::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let b = &req.body;
    let content = body_object(b.body.json().get().as_bytes())?;
    let kind = b.event_type.to_string();
    if kind == "m.room.member" {
        // Membership changes go through the membership endpoints' checks too.
        let target = ruma::UserId::parse(&b.state_key).map_err(|e| Error::bad_json(e.to_string()))?;
        if target != id.user_id && content["membership"] != "join" {
            let membership = content["membership"].as_str().unwrap_or_default();
            let reason = content["reason"].as_str();
            state.rooms.set_membership_of(&id.user_id, &b.room_id, &target, membership, reason).await?;
            let row = state.store.membership(b.room_id.as_str(), target.as_str()).await?;
            return Ok(json(json!({ "event_id": row.map(|r| r.event_id) })));
        }
    }
    if kind == "m.room.create" {
        return Err(Error::forbidden("m.room.create cannot be sent"));
    }
    let draft = Draft::state(kind, b.state_key.clone(), content);
    let event_id = state.rooms.send(&id.user_id, id.device_id.as_str(), &b.room_id, draft, None).await?;
    Ok(json(json!({ "event_id": event_id })))
}

/// # PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}
async fn send(state: AppState, req: Ruma<send_message_event::v3::Request>) -> Result<Response> {
    let id = req.identity();
    state.limits.check(Action::Message, id.user_id.as_str())?;
    let b = &req.body;
    let content = body_object(b.body.json().get().as_bytes())?;
    let kind = b.event_type.to_string();
    if kind == "m.room.redaction" {
        return Err(Error::forbidden("use the redact endpoint to redact events"));
    }
    let draft = Draft::message(kind, content);
    let event_id =
        state.rooms.send(&id.user_id, id.device_id.as_str(), &b.room_id, draft, Some(b.txn_id.as_str())).await?;
    Ok(json(json!({ "event_id": event_id })))
}

/// # POST /_matrix/client/v3/search
async fn search(state: AppState, req: Ruma<ruma::api::client::search::search_events::v3::Request>) -> Result<Response> {
    use ruma::api::client::search::search_events::v3::{GroupingKey, OrderBy};
    let Some(criteria) = &req.body.search_categories.room_events else {
        return Ok(json(json!({ "search_categories": {} })));
    };
    let context = &criteria.event_context;
    let wants_context = criteria.event_context.before_limit != ruma::uint!(0)
        || criteria.event_context.after_limit != ruma::uint!(0)
        || criteria.event_context.include_profile;
    // The context is served only when the request asked for it: ruma fills in defaults.
    let asked_context =
        body_fields(&req).get("search_categories").and_then(|c| c["room_events"].get("event_context")).is_some();
    let grouped = |key: GroupingKey| criteria.groupings.group_by.iter().any(|g| g.key.as_ref() == Some(&key));
    let request = SearchRequest {
        term: &criteria.search_term,
        keys: criteria.keys.iter().flatten().map(|k| k.as_str().to_owned()).collect(),
        filter: &criteria.filter,
        recent: criteria.order_by == Some(OrderBy::Recent),
        context: (asked_context && wants_context).then(|| {
            (u64::from(context.before_limit) as usize, u64::from(context.after_limit) as usize, context.include_profile)
        }),
        include_state: criteria.include_state.unwrap_or(false),
        group_by_room: grouped(GroupingKey::RoomId),
        group_by_sender: grouped(GroupingKey::Sender),
        next_batch: req.body.next_batch.as_deref(),
    };
    let room_events = state.rooms.search(viewer(&req), request).await?;
    Ok(json(json!({ "search_categories": { "room_events": room_events } })))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/upgrade
///
/// A plain handler: a version ruma cannot parse is still only an unsupported version.
async fn upgrade(
    axum::extract::State(state): axum::extract::State<AppState>,
    Authenticated(id): Authenticated,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    if id.is_guest {
        return Err(Error::GuestAccessForbidden);
    }
    let room_id = RoomId::parse(&room_id).map_err(|e| Error::invalid_param(format!("invalid room ID: {e}")))?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| Error::NotJson(e.to_string()))?;
    let version = body["new_version"].as_str().ok_or_else(|| Error::bad_json("new_version is required"))?;
    let new_room = state.rooms.upgrade(&id.user_id, &room_id, version).await?;
    state.user_data.transfer_to_upgraded_room(&id.user_id, &room_id, &new_room).await?;
    Ok(json(json!({ "replacement_room": new_room })))
}

/// After a join: a member of a room's predecessor keeps their settings for it.
async fn after_join(state: &AppState, user_id: &ruma::UserId, room_id: &RoomId) -> Result<()> {
    if let Some(old) = state.rooms.predecessor(room_id).await? {
        state.user_data.transfer_to_upgraded_room(user_id, &old, room_id).await?;
    }
    Ok(())
}

/// # PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}
async fn redact(state: AppState, req: Ruma<redact_event::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let b = &req.body;
    let mut content = json!({ "redacts": b.event_id });
    if let Some(reason) = &b.reason {
        content["reason"] = json!(reason);
    }
    let draft = Draft::message("m.room.redaction", content);
    let event_id =
        state.rooms.send(&id.user_id, id.device_id.as_str(), &b.room_id, draft, Some(b.txn_id.as_str())).await?;
    Ok(json(json!({ "event_id": event_id })))
}

/// # GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}
async fn event(state: AppState, req: Ruma<get_room_event::v3::Request>) -> Result<Response> {
    Ok(json(state.rooms.event_for(viewer(&req), &req.body.room_id, &req.body.event_id).await?))
}

/// # GET /_matrix/client/v3/rooms/{roomId}/messages
async fn messages(state: AppState, req: Ruma<get_message_events::v3::Request>) -> Result<Response> {
    let b = &req.body;
    let backwards = b.dir == Direction::Backward;
    let limit = u64::from(b.limit) as usize;
    let room_filter = &b.filter;
    let page = PageRequest { from: b.from.as_deref(), to: b.to.as_deref(), backwards, limit };
    let keep = |e: &Value| filter::event_matches(room_filter, e);
    let (mut chunk, mut start, mut end) = state.rooms.paginate(viewer(&req), &b.room_id, page, keep).await?;
    // Past the room's earliest event here, the history is asked of the room's other servers
    // (a few rounds: one server may hold less of it than another).
    for _ in 0..3 {
        if !backwards || b.to.is_some() || chunk.len() >= limit.clamp(1, 1000) {
            break;
        }
        match state.federation.backfill(&state.rooms, &b.room_id, limit.clamp(1, 100)).await {
            Ok(0) => break,
            Ok(_) => (chunk, start, end) = state.rooms.paginate(viewer(&req), &b.room_id, page, keep).await?,
            Err(e) => {
                tracing::info!(room_id = %b.room_id, error = %e, "backfill failed");
                break;
            }
        }
    }
    let mut body = json!({ "chunk": chunk, "start": start });
    if let Some(end) = end {
        body["end"] = json!(end);
    }
    if filter::lazy_members(room_filter) {
        body["state"] = json!(members_of_senders(&state, &req, &b.room_id, &body["chunk"]).await?);
    }
    Ok(json(body))
}

async fn members_of_senders<T>(state: &AppState, req: &Ruma<T>, room_id: &RoomId, chunk: &Value) -> Result<Vec<Value>> {
    let senders: std::collections::HashSet<&str> =
        chunk.as_array().into_iter().flatten().filter_map(|e| e["sender"].as_str()).collect();
    let events = state.rooms.state_events(viewer(req), room_id).await?;
    Ok(events
        .into_iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"].as_str().is_some_and(|k| senders.contains(k)))
        .collect())
}

/// # GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event
///
/// The closest event here; when this server holds none on that side, the room's other
/// servers are asked.
async fn timestamp_to_event(state: AppState, req: Ruma<get_event_by_timestamp::v1::Request>) -> Result<Response> {
    let b = &req.body;
    let forward = b.dir == Direction::Forward;
    let ts = i64::from(b.ts.get());
    if let Some((event_id, ts)) = state.rooms.event_near_ts(viewer(&req), &b.room_id, ts, forward).await? {
        return Ok(json(json!({ "event_id": event_id, "origin_server_ts": ts })));
    }
    for server in state.rooms.resident_servers(b.room_id.as_str()).await? {
        let Ok(server) = ruma::OwnedServerName::try_from(server) else { continue };
        if server == state.federation.server_name {
            continue;
        }
        let request =
            ruma::api::federation::event::get_event_by_timestamp::v1::Request::new(b.room_id.clone(), b.ts, b.dir);
        if let Ok(answer) = state.federation.send(&server, request).await {
            return Ok(json(json!({ "event_id": answer.event_id, "origin_server_ts": answer.origin_server_ts })));
        }
    }
    Err(Error::not_found("no event on that side of the timestamp"))
}

/// # GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}
async fn context(state: AppState, req: Ruma<get_context::v3::Request>) -> Result<Response> {
    let b = &req.body;
    let limit = (u64::from(b.limit) as usize).min(100);
    let (before, event, after, start, end) = state.rooms.context(viewer(&req), &b.room_id, &b.event_id, limit).await?;
    let room_state = state.rooms.state_events(viewer(&req), &b.room_id).await?;
    let room_state: Vec<Value> = if filter::lazy_members(&b.filter) {
        let senders: std::collections::HashSet<String> = before
            .iter()
            .chain(after.iter())
            .chain(std::iter::once(&event))
            .filter_map(|e| e["sender"].as_str().map(str::to_owned))
            .collect();
        room_state
            .into_iter()
            .filter(|e| e["type"] != "m.room.member" || e["state_key"].as_str().is_some_and(|k| senders.contains(k)))
            .collect()
    } else {
        room_state
    };
    Ok(json(json!({
        "events_before": before,
        "event": event,
        "events_after": after,
        "start": start,
        "end": end,
        "state": room_state,
    })))
}

/// The shared query of the three `/relations` endpoints.
struct RelationsQuery<'a> {
    room_id: &'a RoomId,
    event_id: &'a ruma::EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    dir: Direction,
    limit: Option<ruma::UInt>,
}

async fn relations_response(state: &AppState, viewer: Viewer<'_>, q: RelationsQuery<'_>) -> Result<Response> {
    let limit = q.limit.map_or(50, |l| u64::from(l) as usize);
    let page = PageRequest { from: q.from, to: None, backwards: q.dir == Direction::Backward, limit };
    let (chunk, next) = state
        .rooms
        .relations(viewer, q.room_id, q.event_id, q.rel_type.as_deref(), q.event_type.as_deref(), page)
        .await?;
    let mut body = json!({ "chunk": chunk });
    if let Some(next) = next {
        body["next_batch"] = json!(next);
    }
    Ok(json(body))
}

/// # GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}
async fn relations(state: AppState, req: Ruma<get_relating_events::v1::Request>) -> Result<Response> {
    let b = &req.body;
    relations_response(
        &state,
        viewer(&req),
        RelationsQuery {
            room_id: &b.room_id,
            event_id: &b.event_id,
            rel_type: None,
            event_type: None,
            from: b.from.as_deref(),
            dir: b.dir,
            limit: b.limit,
        },
    )
    .await
}

/// # GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}
async fn relations_by_type(
    state: AppState,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<Response> {
    let b = &req.body;
    let rel = Some(b.rel_type.to_string());
    relations_response(
        &state,
        viewer(&req),
        RelationsQuery {
            room_id: &b.room_id,
            event_id: &b.event_id,
            rel_type: rel,
            event_type: None,
            from: b.from.as_deref(),
            dir: b.dir,
            limit: b.limit,
        },
    )
    .await
}

/// # GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}
async fn relations_by_type_and_event(
    state: AppState,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<Response> {
    let b = &req.body;
    let rel = Some(b.rel_type.to_string());
    let kind = Some(b.event_type.to_string());
    relations_response(
        &state,
        viewer(&req),
        RelationsQuery {
            room_id: &b.room_id,
            event_id: &b.event_id,
            rel_type: rel,
            event_type: kind,
            from: b.from.as_deref(),
            dir: b.dir,
            limit: b.limit,
        },
    )
    .await
}

/// # GET /_matrix/client/v1/rooms/{roomId}/threads
async fn threads(state: AppState, req: Ruma<get_threads::v1::Request>) -> Result<Response> {
    let b = &req.body;
    let limit = b.limit.map_or(50, |l| u64::from(l) as usize);
    let (chunk, next) = state.rooms.threads(viewer(&req), &b.room_id, b.from.as_deref(), limit).await?;
    let mut body = json!({ "chunk": chunk });
    if let Some(next) = next {
        body["next_batch"] = json!(next);
    }
    Ok(json(body))
}
