//! Server-side key backup: `/room_keys/version` and `/room_keys/keys`.

use axum::{Router, response::Response};
use ruma::api::client::backup::{
    add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version, delete_backup_keys,
    delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version, get_backup_info,
    get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
    update_backup_version,
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
    let router = route(router, create_version);
    let router = route(router, latest_version);
    let router = route(router, version);
    let router = route(router, update_version);
    let router = route(router, delete_version);
    let router = route(router, put_keys);
    let router = route(router, put_room_keys);
    let router = route(router, put_session_key);
    let router = route(router, get_keys);
    let router = route(router, get_room_keys);
    let router = route(router, get_session_key);
    let router = route(router, delete_keys);
    let router = route(router, delete_room_keys);
    route(router, delete_session_key)
}

fn body(bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::bad_json(e.to_string()))
}

fn raw_value<T>(raw: &ruma::serde::Raw<T>) -> Value {
    serde_json::from_str(raw.json().get()).unwrap_or(Value::Null)
}

/// # POST /_matrix/client/v3/room_keys/version
async fn create_version(state: AppState, req: Ruma<create_backup_version::v3::Request>) -> Result<Response> {
    let version = state.backups.create_version(req.identity().user_id.as_str(), &body(&req.json)?).await?;
    Ok(json(json!({ "version": version })))
}

/// # GET /_matrix/client/v3/room_keys/version
async fn latest_version(state: AppState, req: Ruma<get_latest_backup_info::v3::Request>) -> Result<Response> {
    Ok(json(state.backups.version_info(req.identity().user_id.as_str(), None).await?))
}

/// # GET /_matrix/client/v3/room_keys/version/{version}
async fn version(state: AppState, req: Ruma<get_backup_info::v3::Request>) -> Result<Response> {
    Ok(json(state.backups.version_info(req.identity().user_id.as_str(), Some(&req.body.version)).await?))
}

/// # PUT /_matrix/client/v3/room_keys/version/{version}
async fn update_version(state: AppState, req: Ruma<update_backup_version::v3::Request>) -> Result<Response> {
    state.backups.update_version(req.identity().user_id.as_str(), &req.body.version, &body(&req.json)?).await?;
    Ok(json(json!({})))
}

/// # DELETE /_matrix/client/v3/room_keys/version/{version}
async fn delete_version(state: AppState, req: Ruma<delete_backup_version::v3::Request>) -> Result<Response> {
    state.backups.delete_version(req.identity().user_id.as_str(), &req.body.version).await?;
    Ok(json(json!({})))
}

/// # PUT /_matrix/client/v3/room_keys/keys
async fn put_keys(state: AppState, req: Ruma<add_backup_keys::v3::Request>) -> Result<Response> {
    let mut keys = Vec::new();
    for (room_id, room) in &req.body.rooms {
        for (session_id, data) in &room.sessions {
            keys.push((room_id.to_string(), session_id.clone(), raw_value(data)));
        }
    }
    Ok(json(state.backups.put_keys(req.identity().user_id.as_str(), &req.body.version, keys).await?))
}

/// # PUT /_matrix/client/v3/room_keys/keys/{roomId}
async fn put_room_keys(state: AppState, req: Ruma<add_backup_keys_for_room::v3::Request>) -> Result<Response> {
    let b = &req.body;
    let keys = b.sessions.iter().map(|(s, d)| (b.room_id.to_string(), s.clone(), raw_value(d))).collect();
    Ok(json(state.backups.put_keys(req.identity().user_id.as_str(), &b.version, keys).await?))
}

/// # PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
async fn put_session_key(state: AppState, req: Ruma<add_backup_keys_for_session::v3::Request>) -> Result<Response> {
    let b = &req.body;
    let keys = vec![(b.room_id.to_string(), b.session_id.clone(), raw_value(&b.session_data))];
    Ok(json(state.backups.put_keys(req.identity().user_id.as_str(), &b.version, keys).await?))
}

/// # GET /_matrix/client/v3/room_keys/keys
async fn get_keys(state: AppState, req: Ruma<get_backup_keys::v3::Request>) -> Result<Response> {
    Ok(json(state.backups.get_keys(req.identity().user_id.as_str(), &req.body.version, None, None).await?))
}

/// # GET /_matrix/client/v3/room_keys/keys/{roomId}
async fn get_room_keys(state: AppState, req: Ruma<get_backup_keys_for_room::v3::Request>) -> Result<Response> {
    let b = &req.body;
    Ok(json(state.backups.get_keys(req.identity().user_id.as_str(), &b.version, Some(b.room_id.as_str()), None).await?))
}

/// # GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
async fn get_session_key(state: AppState, req: Ruma<get_backup_keys_for_session::v3::Request>) -> Result<Response> {
    let b = &req.body;
    let user = req.identity().user_id.as_str();
    Ok(json(state.backups.get_keys(user, &b.version, Some(b.room_id.as_str()), Some(&b.session_id)).await?))
}

/// # DELETE /_matrix/client/v3/room_keys/keys
async fn delete_keys(state: AppState, req: Ruma<delete_backup_keys::v3::Request>) -> Result<Response> {
    Ok(json(state.backups.delete_keys(req.identity().user_id.as_str(), &req.body.version, None, None).await?))
}

/// # DELETE /_matrix/client/v3/room_keys/keys/{roomId}
async fn delete_room_keys(state: AppState, req: Ruma<delete_backup_keys_for_room::v3::Request>) -> Result<Response> {
    let b = &req.body;
    Ok(json(
        state.backups.delete_keys(req.identity().user_id.as_str(), &b.version, Some(b.room_id.as_str()), None).await?,
    ))
}

/// # DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
async fn delete_session_key(
    state: AppState,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<Response> {
    let b = &req.body;
    let user = req.identity().user_id.as_str();
    Ok(json(state.backups.delete_keys(user, &b.version, Some(b.room_id.as_str()), Some(&b.session_id)).await?))
}
