//! Administration endpoints. For now: shared-secret registration, with the same contract as
//! Synapse's `/_synapse/admin/v1/register` so existing tools and test harnesses work.

use axum::{Router, extract::State, response::Response, routing::get};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha1::Sha1;

use super::{AppState, ruma::json};
use crate::error::{Error, Result};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router.route("/_synapse/admin/v1/register", get(nonce).post(register))
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
