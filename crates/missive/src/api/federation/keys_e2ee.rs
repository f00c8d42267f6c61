//! End-to-end encryption for other servers: their users query and claim the keys of this
//! server's users, and list their devices.

use std::collections::BTreeMap;

use axum::{Router, response::Response};
use ruma::api::federation::{
    device::get_devices,
    keys::{claim_keys, get_keys},
};

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, query);
    let router = route(router, claim);
    route(router, devices)
}

/// # POST /_matrix/federation/v1/user/keys/query
async fn query(state: AppState, req: Ruma<get_keys::v1::Request>) -> Result<Response> {
    let own = &state.federation.server_name;
    let wanted: BTreeMap<String, Vec<String>> = req
        .body
        .device_keys
        .iter()
        .filter(|(user, _)| user.server_name() == own)
        .map(|(user, devices)| (user.to_string(), devices.iter().map(ToString::to_string).collect()))
        .collect();
    let mut answer = state.e2ee.query_keys(None, &wanted).await?;
    if let Some(object) = answer.as_object_mut() {
        // Federation has no failures or user-signing keys to report.
        object.remove("failures");
        object.remove("user_signing_keys");
    }
    Ok(json(answer))
}

/// # POST /_matrix/federation/v1/user/keys/claim
async fn claim(state: AppState, req: Ruma<claim_keys::v1::Request>) -> Result<Response> {
    let own = &state.federation.server_name;
    let wanted: BTreeMap<String, BTreeMap<String, String>> = req
        .body
        .one_time_keys
        .iter()
        .filter(|(user, _)| user.server_name() == own)
        .map(|(user, devices)| {
            (user.to_string(), devices.iter().map(|(d, alg)| (d.to_string(), alg.to_string())).collect())
        })
        .collect();
    let mut answer = state.e2ee.claim_keys(&wanted).await?;
    if let Some(object) = answer.as_object_mut() {
        object.remove("failures");
    }
    Ok(json(answer))
}

/// # GET /_matrix/federation/v1/user/devices/{userId}
async fn devices(state: AppState, req: Ruma<get_devices::v1::Request>) -> Result<Response> {
    let user_id = &req.body.user_id;
    if user_id.server_name() != state.federation.server_name {
        return Err(Error::invalid_param("user is not local to this server"));
    }
    Ok(json(state.e2ee.devices_for_federation(user_id).await?))
}
