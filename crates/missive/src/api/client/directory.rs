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
    let (room_id, _) = state
        .store
        .alias(req.body.room_alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("room alias not found"))?;
    Ok(json(json!({ "room_id": room_id, "servers": [state.config.server_name] })))
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

async fn directory(state: &AppState, since: Option<&str>, limit: Option<u64>, term: Option<&str>) -> Result<Response> {
    let offset: usize = match since {
        Some(s) => s
            .strip_prefix('o')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("invalid since token"))?,
        None => 0,
    };
    // Without a limit the whole directory is one page, as clients that count it expect.
    let limit = limit.map_or(usize::MAX, |l| (l as usize).max(1));
    let rooms = state.store.published_rooms().await?;
    let mut chunk = Vec::new();
    for (room_id, joined) in &rooms {
        let mut entry = json!({
            "room_id": room_id,
            "num_joined_members": joined,
            "world_readable": false,
            "guest_can_join": false,
        });
        for (kind, field, key) in [
            ("m.room.name", "name", "name"),
            ("m.room.topic", "topic", "topic"),
            ("m.room.canonical_alias", "alias", "canonical_alias"),
            ("m.room.avatar", "url", "avatar_url"),
            ("m.room.join_rules", "join_rule", "join_rule"),
        ] {
            if let Some(row) = state.store.current_state_event(room_id, kind, "").await?
                && let Ok(content) = serde_json::from_str::<Value>(&row.json)
                && let Some(v) = content["content"].get(field)
            {
                entry[key] = v.clone();
            }
        }
        for (kind, field, value, key) in [
            ("m.room.history_visibility", "history_visibility", "world_readable", "world_readable"),
            ("m.room.guest_access", "guest_access", "can_join", "guest_can_join"),
        ] {
            if let Some(row) = state.store.current_state_event(room_id, kind, "").await?
                && let Ok(content) = serde_json::from_str::<Value>(&row.json)
            {
                entry[key] = json!(content["content"].get(field).and_then(Value::as_str) == Some(value));
            }
        }
        if let Some(term) = term.map(str::to_lowercase).filter(|t| !t.is_empty()) {
            let haystack = format!("{} {} {}", entry["name"], entry["topic"], entry["canonical_alias"]).to_lowercase();
            if !haystack.contains(&term) {
                continue;
            }
        }
        chunk.push(entry);
    }
    let total = chunk.len();
    let page: Vec<Value> = chunk.into_iter().skip(offset).take(limit).collect();
    let mut body = json!({ "chunk": page, "total_room_count_estimate": total });
    if offset.saturating_add(limit) < total {
        body["next_batch"] = json!(page_token(offset + limit));
    }
    if offset > 0 {
        body["prev_batch"] = json!(page_token(offset.saturating_sub(limit)));
    }
    Ok(json(body))
}

/// A directory page token. Never a bare number: clients test tokens for truth, and a
/// first page's `"0"` reads as false in some languages.
fn page_token(offset: usize) -> String {
    format!("o{offset}")
}

/// # GET /_matrix/client/v3/publicRooms
async fn public_rooms(state: AppState, req: Ruma<get_public_rooms::v3::Request>) -> Result<Response> {
    directory(&state, req.body.since.as_deref(), req.body.limit.map(u64::from), None).await
}

/// # POST /_matrix/client/v3/publicRooms
async fn public_rooms_filtered(state: AppState, req: Ruma<get_public_rooms_filtered::v3::Request>) -> Result<Response> {
    let b = &req.body;
    directory(&state, b.since.as_deref(), b.limit.map(u64::from), b.filter.generic_search_term.as_deref()).await
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
    let found = state.store.search_users(req.identity().user_id.as_str(), &req.body.search_term, limit + 1).await?;
    let limited = found.len() as i64 > limit;
    let results: Vec<Value> = found
        .into_iter()
        .take(limit as usize)
        .map(|(user_id, name, avatar)| json!({ "user_id": user_id, "display_name": name, "avatar_url": avatar }))
        .collect();
    Ok(json(json!({ "results": results, "limited": limited })))
}
