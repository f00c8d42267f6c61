//! Profiles: display name and avatar; and whether an account exists and is active
//! (MSC3720 account status).

use axum::{Router, response::Response};
use ruma::api::client::profile::{get_profile, get_profile_field, set_profile_field};
use serde_json::{Map, Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    endpoints::account_status,
    error::{Error, Result},
    store::ProfileField,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, get_profile);
    let router = route(router, get_field);
    let router = route(router, account_status_post);
    let router = route(router, account_status_get);
    route(router, set_field)
}

/// # POST /_matrix/client/unstable/org.matrix.msc3720/account_status
async fn account_status_post(state: AppState, req: Ruma<account_status::client_post::Request>) -> Result<Response> {
    account_status(&state, &req.body.user_ids).await
}

/// # GET /_matrix/client/unstable/org.matrix.msc3720/account_status
async fn account_status_get(state: AppState, req: Ruma<account_status::client_get::Request>) -> Result<Response> {
    account_status(&state, &req.body.user_id).await
}

async fn account_status(state: &AppState, user_ids: &[String]) -> Result<Response> {
    let statuses = crate::identity::status::statuses(&state.accounts, &state.federation, user_ids).await?;
    Ok(json(json!({ "account_statuses": statuses.found, "failures": statuses.failures })))
}

/// A profile, when the viewer may read it (see `[directory] mode`); `viewer` is `None` for
/// requests of other servers and of clients without a token.
async fn profile_of(state: &AppState, viewer: Option<&str>, user_id: &str) -> Result<Map<String, Value>> {
    let parsed = ruma::UserId::parse(user_id).map_err(|e| Error::invalid_param(e.to_string()))?;
    if parsed.server_name() != state.federation.server_name {
        // Another server's user: that server answers.
        let request = ruma::api::federation::query::get_profile_information::v1::Request::new(parsed.clone());
        let response = state.federation.send(parsed.server_name(), request).await?;
        return Ok(response
            .iter()
            .filter(|(key, value)| matches!(key.as_str(), "displayname" | "avatar_url") && value.is_string())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect());
    }
    let (name, avatar) = state.store.profile(user_id).await?.ok_or_else(|| Error::not_found("profile not found"))?;
    let mode = state.config.directory.mode;
    let visible = match viewer {
        Some(viewer) => state.store.profile_visible(crate::store::ProfileViewer::User(viewer), user_id, mode).await?,
        None => mode == crate::config::DirectoryMode::SharedRooms,
    };
    if !visible {
        return Err(Error::forbidden("this profile is visible to the people who share a room with its owner"));
    }
    let mut out = Map::new();
    if let Some(name) = name {
        out.insert("displayname".into(), json!(name));
    }
    if let Some(avatar) = avatar {
        out.insert("avatar_url".into(), json!(avatar));
    }
    Ok(out)
}

/// # GET /_matrix/client/v3/profile/{userId}
async fn get_profile(state: AppState, req: Ruma<get_profile::v3::Request>) -> Result<Response> {
    let viewer = req.identity.as_ref().map(|id| id.user_id.to_string());
    Ok(json(Value::Object(profile_of(&state, viewer.as_deref(), req.body.user_id.as_str()).await?)))
}

/// # GET /_matrix/client/v3/profile/{userId}/{keyName}
async fn get_field(state: AppState, req: Ruma<get_profile_field::v3::Request>) -> Result<Response> {
    let field = req.body.field.as_str().to_owned();
    let viewer = req.identity.as_ref().map(|id| id.user_id.to_string());
    let profile = profile_of(&state, viewer.as_deref(), req.body.user_id.as_str()).await?;
    // A known user without the field answers `{}`, as Synapse does: clients read a profile
    // field before setting it and treat an error as a failure.
    Ok(json(match profile.get(&field) {
        Some(value) => json!({ field: value }),
        None => json!({}),
    }))
}

/// # PUT /_matrix/client/v3/profile/{userId}/{keyName}
async fn set_field(state: AppState, req: Ruma<set_profile_field::v3::Request>) -> Result<Response> {
    let id = req.identity();
    if req.body.user_id != id.user_id {
        return Err(Error::forbidden("you can only change your own profile"));
    }
    let body: Map<String, Value> = serde_json::from_slice(&req.json).map_err(|e| Error::bad_json(e.to_string()))?;
    let (field, key) = if body.contains_key("displayname") {
        (ProfileField::DisplayName, "displayname")
    } else if body.contains_key("avatar_url") {
        (ProfileField::AvatarUrl, "avatar_url")
    } else {
        return Err(Error::bad_json("only displayname and avatar_url can be set"));
    };
    let value = match &body[key] {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        _ => return Err(Error::bad_json(format!("{key} must be a string"))),
    };
    state.rooms.set_profile_field(&id.user_id, Some(id.device_id.as_str()), field, value.as_deref()).await?;
    Ok(json(json!({})))
}
