//! Server discovery: `/versions`, `/.well-known/matrix/client`, `/capabilities`.

use axum::{Router, extract::State, response::Response};
use ruma::api::client::discovery::{get_capabilities, get_supported_versions};
use serde_json::json;

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
    rooms::version::SUPPORTED,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, versions);
    route(router, capabilities)
}

/// # GET /_matrix/client/versions
async fn versions(_: AppState, _: Ruma<get_supported_versions::Request>) -> Result<Response> {
    Ok(json(json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9",
                     "v1.10", "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19"],
        "unstable_features": {
            "org.matrix.msc3575": false,
            "org.matrix.simplified_msc3575": true,
        },
    })))
}

/// # GET /.well-known/matrix/client
///
/// Served only when the operator configured `public_baseurl`: a guess from the listener
/// address would send clients to an address they may not reach.
pub async fn well_known(State(state): State<AppState>) -> Result<Response> {
    let base_url = state.config.public_baseurl().ok_or_else(|| Error::not_found("no client discovery configured"))?;
    Ok(json(json!({ "m.homeserver": { "base_url": base_url } })))
}

/// # GET /_matrix/client/v3/capabilities
async fn capabilities(state: AppState, _: Ruma<get_capabilities::v3::Request>) -> Result<Response> {
    let available: serde_json::Map<String, serde_json::Value> =
        SUPPORTED.iter().map(|v| ((*v).to_owned(), json!("stable"))).collect();
    Ok(json(json!({
        "capabilities": {
            "m.room_versions": { "default": state.config.default_room_version, "available": available },
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
            "org.matrix.msc3720.account_status": { "enabled": true },
        }
    })))
}
