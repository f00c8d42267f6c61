//! Queries: other servers ask about this server's users and aliases, and what it is.

use axum::{Router, response::Response};
use ruma::api::federation::{
    directory::{get_public_rooms, get_public_rooms_filtered},
    discovery::get_server_version,
    query::{get_profile_information, get_room_information},
    space::get_hierarchy,
};
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, version);
    let router = route(router, profile);
    let router = route(router, account_status);
    let router = route(router, account_status_synapse);
    let router = route(router, public_rooms);
    let router = route(router, public_rooms_filtered);
    let router = route(router, hierarchy);
    route(router, directory)
}

/// # GET /_matrix/federation/v1/hierarchy/{roomId}
///
/// A room of a space and its children, as far as the asking server may see them.
async fn hierarchy(state: AppState, req: Ruma<get_hierarchy::v1::Request>) -> Result<Response> {
    use crate::rooms::hierarchy::Asker;
    let origin = req.origin();
    let b = &req.body;
    state.federation.check_room_acl(&state.rooms, &b.room_id, origin).await?;
    let room = match state.rooms.space_room(&b.room_id).await? {
        Some(room) if state.rooms.may_preview(&room, Asker::Server(origin)).await? => room,
        _ => return Err(Error::not_found("unknown room")),
    };
    let mut children = Vec::new();
    let mut inaccessible = Vec::new();
    for child_id in room.children(b.suggested_only).into_iter().map(|c| c.room_id) {
        let Some(child) = state.rooms.space_room(&child_id).await? else { continue };
        if state.rooms.may_preview(&child, Asker::Server(origin)).await? {
            children.push(child.federation_summary(false));
        } else {
            inaccessible.push(child_id);
        }
    }
    Ok(json(json!({
        "room": room.federation_summary(true),
        "children": children,
        "inaccessible_children": inaccessible,
    })))
}

/// # GET /_matrix/federation/v1/version
async fn version(_state: AppState, _req: Ruma<get_server_version::v1::Request>) -> Result<Response> {
    Ok(json(json!({ "server": { "name": "Missive", "version": env!("CARGO_PKG_VERSION") } })))
}

/// # POST /_matrix/federation/unstable/org.matrix.msc3720/query/account_status
async fn account_status(
    state: AppState,
    req: Ruma<crate::endpoints::account_status::federation::Request>,
) -> Result<Response> {
    local_account_status(&state, &req.body.user_ids).await
}

/// # POST /_matrix/federation/unstable/org.matrix.msc3720/account_status
///
/// Where Synapse's federation client asks.
async fn account_status_synapse(
    state: AppState,
    req: Ruma<crate::endpoints::account_status::federation_synapse::Request>,
) -> Result<Response> {
    local_account_status(&state, &req.body.user_ids).await
}

async fn local_account_status(state: &AppState, user_ids: &[String]) -> Result<Response> {
    let statuses = crate::identity::status::local_statuses(&state.accounts, &state.federation, user_ids).await?;
    Ok(json(json!({ "account_statuses": statuses.found, "failures": statuses.failures })))
}

/// # GET /_matrix/federation/v1/query/profile
async fn profile(state: AppState, req: Ruma<get_profile_information::v1::Request>) -> Result<Response> {
    let user_id = &req.body.user_id;
    if user_id.server_name() != state.federation.server_name {
        return Err(Error::invalid_param("user is not local to this server"));
    }
    let (name, avatar) =
        state.store.profile(user_id.as_str()).await?.ok_or_else(|| Error::not_found("profile not found"))?;
    let mode = state.config.directory.mode;
    let viewer = crate::store::ProfileViewer::Server(req.origin().as_str());
    if !state.store.profile_visible(viewer, user_id.as_str(), mode).await? {
        return Err(Error::forbidden("this profile is visible to the people who share a room with its owner"));
    }
    let mut out = serde_json::Map::new();
    let field = req.body.field.as_ref().map(|f| f.as_str().to_owned());
    for (key, value) in [("displayname", name), ("avatar_url", avatar)] {
        if let Some(value) = value
            && field.as_deref().is_none_or(|f| f == key)
        {
            out.insert(key.into(), Value::String(value));
        }
    }
    Ok(json(Value::Object(out)))
}

/// # GET /_matrix/federation/v1/query/directory
async fn directory(state: AppState, req: Ruma<get_room_information::v1::Request>) -> Result<Response> {
    let alias = &req.body.room_alias;
    if alias.server_name() != state.federation.server_name {
        return Err(Error::invalid_param("alias is not local to this server"));
    }
    let (room_id, _) =
        state.store.alias(alias.as_str()).await?.ok_or_else(|| Error::not_found("room alias not found"))?;
    let servers = state.rooms.alias_servers(&room_id).await?;
    Ok(json(json!({ "room_id": room_id, "servers": servers })))
}

/// # GET /_matrix/federation/v1/publicRooms
async fn public_rooms(state: AppState, req: Ruma<get_public_rooms::v1::Request>) -> Result<Response> {
    let b = &req.body;
    Ok(json(state.rooms.public_rooms(b.since.as_deref(), b.limit.map(u64::from), None).await?))
}

/// # POST /_matrix/federation/v1/publicRooms
async fn public_rooms_filtered(state: AppState, req: Ruma<get_public_rooms_filtered::v1::Request>) -> Result<Response> {
    let b = &req.body;
    let term = b.filter.generic_search_term.as_deref();
    Ok(json(state.rooms.public_rooms(b.since.as_deref(), b.limit.map(u64::from), term).await?))
}
