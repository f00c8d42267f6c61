//! Administration endpoints, on Synapse's paths and shapes so existing tools work:
//! shared-secret registration (`/_synapse/admin/v1/register`) and the federation
//! destinations (state, backoff, queue; resetting a backoff).

use axum::{
    Router,
    extract::{Path, State},
    response::Response,
    routing::get,
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha1::Sha1;

use super::{
    AppState,
    ruma::{Authenticated, json},
};
use crate::error::{Error, Result};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/_synapse/admin/v1/register", get(nonce).post(register))
        .route("/_synapse/admin/v1/federation/destinations", get(destinations))
        .route("/_synapse/admin/v1/federation/destinations/{destination}", get(destination))
        .route(
            "/_synapse/admin/v1/federation/destinations/{destination}/reset_connection",
            axum::routing::post(reset_connection),
        )
}

fn require_admin(identity: &crate::accounts::Identity) -> Result<()> {
    if !identity.is_admin {
        return Err(Error::forbidden("you are not a server admin"));
    }
    Ok(())
}

/// The destinations of the outbound queue, with how many PDUs wait for each.
async fn destination_list(state: &AppState) -> Result<Vec<serde_json::Value>> {
    let statuses = state.federation.sender().map(|s| s.destinations()).unwrap_or_default();
    let mut out = Vec::with_capacity(statuses.len());
    for status in statuses {
        let queued = state.store.outbox_count(&status.destination).await?;
        let mut value = serde_json::to_value(&status).map_err(|e| Error::Internal(e.to_string()))?;
        value["queued_pdus"] = json!(queued);
        out.push(value);
    }
    Ok(out)
}

/// # GET /_synapse/admin/v1/federation/destinations
async fn destinations(State(state): State<AppState>, Authenticated(id): Authenticated) -> Result<Response> {
    require_admin(&id)?;
    let list = destination_list(&state).await?;
    Ok(json(json!({ "total": list.len(), "destinations": list })))
}

/// # GET /_synapse/admin/v1/federation/destinations/{destination}
async fn destination(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(destination): Path<String>,
) -> Result<Response> {
    require_admin(&id)?;
    destination_list(&state)
        .await?
        .into_iter()
        .find(|d| d["destination"] == destination.as_str())
        .map(json)
        .ok_or_else(|| Error::not_found("unknown destination"))
}

/// # POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection
async fn reset_connection(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(destination): Path<String>,
) -> Result<Response> {
    require_admin(&id)?;
    match state.federation.sender().is_some_and(|s| s.reset(&destination)) {
        true => Ok(json(json!({}))),
        false => Err(Error::not_found("unknown destination")),
    }
}

/// # GET /_synapse/admin/v1/register
async fn nonce(State(state): State<AppState>) -> Result<Response> {
    if state.config.registration_shared_secret.is_none() {
        return Err(Error::forbidden("shared-secret registration is disabled"));
    }
    Ok(json(json!({ "nonce": state.accounts.new_nonce() })))
}

#[derive(Deserialize)]
struct SharedSecretRegistration {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    displayname: Option<String>,
    mac: String,
}

/// # POST /_synapse/admin/v1/register
async fn register(State(state): State<AppState>, body: axum::body::Bytes) -> Result<Response> {
    let Some(secret) = &state.config.registration_shared_secret else {
        return Err(Error::forbidden("shared-secret registration is disabled"));
    };
    let req: SharedSecretRegistration = serde_json::from_slice(&body).map_err(|e| Error::bad_json(e.to_string()))?;
    if !state.accounts.take_nonce(&req.nonce) {
        return Err(Error::Unknown("unrecognised nonce".into()));
    }
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.expose().as_bytes()).map_err(|e| Error::Internal(e.to_string()))?;
    mac.update(req.nonce.as_bytes());
    mac.update(b"\0");
    mac.update(req.username.as_bytes());
    mac.update(b"\0");
    mac.update(req.password.as_bytes());
    mac.update(b"\0");
    mac.update(if req.admin { b"admin" as &[u8] } else { b"notadmin" });
    let expected = hex::decode(&req.mac).map_err(|_| Error::forbidden("HMAC incorrect"))?;
    mac.verify_slice(&expected).map_err(|_| Error::forbidden("HMAC incorrect"))?;
    let user_id = state
        .accounts
        .create_user(&req.username.to_lowercase(), Some(&req.password), req.admin, req.displayname.as_deref())
        .await?;
    let session = state.accounts.open_session(&user_id, None, None, false).await?;
    Ok(json(json!({
        "user_id": user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": state.config.server_name,
    })))
}
