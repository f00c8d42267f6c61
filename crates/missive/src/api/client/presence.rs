//! Presence: a user's online status and status message.

use axum::{Router, response::Response};
use ruma::api::client::presence::{get_presence, set_presence};
use serde_json::json;

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
    sync::presence::State,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, get_status);
    route(router, set_status)
}

/// # GET /_matrix/client/v3/presence/{userId}/status
async fn get_status(state: AppState, req: Ruma<get_presence::v3::Request>) -> Result<Response> {
    Ok(json(state.sync.presence_status(&req.identity().user_id, &req.body.user_id).await?))
}

/// # PUT /_matrix/client/v3/presence/{userId}/status
async fn set_status(state: AppState, req: Ruma<set_presence::v3::Request>) -> Result<Response> {
    let id = req.identity();
    if req.body.user_id != id.user_id {
        return Err(Error::forbidden("you can only set your own presence"));
    }
    let presence = State::parse(req.body.presence.as_str())
        .ok_or_else(|| Error::invalid_param("presence must be online, unavailable or offline"))?;
    state.sync.presence.set(&id.user_id, presence, Some(req.body.status_msg.clone()));
    Ok(json(json!({})))
}
