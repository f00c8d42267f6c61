//! Room aliases, the public room directory and the user directory.

use axum::{Router, response::Response};
use ruma::api::client::{
    alias::{create_alias, delete_alias, get_alias},
    directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
    room::{Visibility, aliases},
    user_directory::search_users,
};
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
    rooms::Rooms,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, create_alias);
    let router = route(router, get_alias);
    let router = route(router, delete_alias);
    let router = route(router, room_aliases);
    let router = route(router, public_rooms);
    let router = route(router, public_rooms_filtered);
    let router = route(router, get_visibility);
    let router = route(router, set_visibility);
    route(router, search_users)
}

/// # PUT /_matrix/client/v3/directory/room/{roomAlias}
async fn create_alias(state: AppState, req: Ruma<create_alias::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let b = &req.body;
    if b.room_alias.server_name() != state.config.server_name.as_str() {
        return Err(Error::invalid_param("alias must be on this server"));
    }
    state.rooms.require_member(&id.user_id, &b.room_id).await?;
    if !state.store.insert_alias(b.room_alias.as_str(), b.room_id.as_str(), id.user_id.as_str()).await? {
        return Err(Error::RoomInUse);
    }
    Ok(json(json!({})))
}

/// # GET /_matrix/client/v3/directory/room/{roomAlias}
async fn get_alias(state: AppState, req: Ruma<get_alias::v3::Request>) -> Result<Response> {
    let alias = &req.body.room_alias;
    if alias.server_name() != state.federation.server_name {
        // Another server's alias: that server answers.
        let request = ruma::api::federation::query::get_room_information::v1::Request::new(alias.clone());
        let answer = state.federation.send(alias.server_name(), request).await?;
        return Ok(json(json!({ "room_id": answer.room_id, "servers": answer.servers })));
    }
    let (room_id, _) =
        state.store.alias(alias.as_str()).await?.ok_or_else(|| Error::not_found("room alias not found"))?;
    Ok(json(json!({ "room_id": room_id, "servers": state.rooms.alias_servers(&room_id).await? })))
}

/// # DELETE /_matrix/client/v3/directory/room/{roomAlias}
async fn delete_alias(state: AppState, req: Ruma<delete_alias::v3::Request>) -> Result<Response> {
    let id = req.identity();
    state.rooms.delete_alias(&id.user_id, id.is_admin, &req.body.room_alias).await?;
    Ok(json(json!({})))
}

/// # GET /_matrix/client/v3/rooms/{roomId}/aliases
async fn room_aliases(state: AppState, req: Ruma<aliases::v3::Request>) -> Result<Response> {
    state.rooms.require_member(&req.identity().user_id, &req.body.room_id).await?;
    Ok(json(json!({ "aliases": state.store.room_aliases(req.body.room_id.as_str()).await? })))
}

/// # GET /_matrix/client/v3/publicRooms
async fn public_rooms(state: AppState, req: Ruma<get_public_rooms::v3::Request>) -> Result<Response> {
    let b = req.body;
    let limit = b.limit.map(u64::from);
    if let Some(server) = b.server.filter(|s| *s != state.federation.server_name) {
        let mut request = ruma::api::federation::directory::get_public_rooms::v1::Request::new();
        (request.since, request.limit) = (b.since, b.limit);
        let answer = state.federation.send(&server, request).await?;
        return Ok(json(remote_page(
            answer.chunk,
            answer.next_batch,
            answer.prev_batch,
            answer.total_room_count_estimate,
        )));
    }
    Ok(json(state.rooms.public_rooms(b.since.as_deref(), limit, None).await?))
}

/// A page of another server's directory, as the client API serves it.
fn remote_page(
    chunk: Vec<ruma::directory::PublicRoomsChunk>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    total: Option<ruma::UInt>,
) -> Value {
    let mut body = json!({ "chunk": chunk });
    for (key, value) in [("next_batch", next_batch), ("prev_batch", prev_batch)] {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    if let Some(total) = total {
        body["total_room_count_estimate"] = json!(total);
    }
    body
}

/// # POST /_matrix/client/v3/publicRooms
async fn public_rooms_filtered(state: AppState, req: Ruma<get_public_rooms_filtered::v3::Request>) -> Result<Response> {
    let b = req.body;
    if let Some(server) = b.server.clone().filter(|s| *s != state.federation.server_name) {
        let mut request = ruma::api::federation::directory::get_public_rooms_filtered::v1::Request::new();
        (request.since, request.limit, request.filter) = (b.since, b.limit, b.filter);
        let answer = state.federation.send(&server, request).await?;
        return Ok(json(remote_page(
            answer.chunk,
            answer.next_batch,
            answer.prev_batch,
            answer.total_room_count_estimate,
        )));
    }
    let term = b.filter.generic_search_term.as_deref();
    Ok(json(state.rooms.public_rooms(b.since.as_deref(), b.limit.map(u64::from), term).await?))
}

/// # GET /_matrix/client/v3/directory/list/room/{roomId}
async fn get_visibility(state: AppState, req: Ruma<get_room_visibility::v3::Request>) -> Result<Response> {
    if state.store.room(req.body.room_id.as_str()).await?.is_none() {
        return Err(Error::not_found("room not found"));
    }
    let public = state.store.is_published(req.body.room_id.as_str()).await?;
    Ok(json(json!({ "visibility": if public { "public" } else { "private" } })))
}

/// # PUT /_matrix/client/v3/directory/list/room/{roomId}
async fn set_visibility(state: AppState, req: Ruma<set_room_visibility::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let head = state.rooms.head(&req.body.room_id).await?;
    let levels = Rooms::power_levels(&head);
    if !id.is_admin && !levels.user_can_send_state(&id.user_id, ruma::events::StateEventType::RoomCanonicalAlias) {
        return Err(Error::forbidden("you may not change this room's visibility"));
    }
    let public = req.body.visibility == Visibility::Public;
    state.store.set_published(req.body.room_id.as_str(), public).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/user_directory/search
async fn search_users(state: AppState, req: Ruma<search_users::v3::Request>) -> Result<Response> {
    let limit = u64::from(req.body.limit).clamp(1, 100) as i64;
    let mode = state.config.directory.mode;
    let found =
        state.store.search_users(req.identity().user_id.as_str(), &req.body.search_term, limit + 1, mode).await?;
    let limited = found.len() as i64 > limit;
    let results: Vec<Value> = found
        .into_iter()
        .take(limit as usize)
        .map(|(user_id, name, avatar)| json!({ "user_id": user_id, "display_name": name, "avatar_url": avatar }))
        .collect();
    Ok(json(json!({ "results": results, "limited": limited })))
}
