//! Accounts, sessions and devices.

use axum::{Router, response::Response};
use ruma::api::client::{
    account::{
        change_password, deactivate, get_3pids, get_username_availability, register, request_openid_token, whoami,
    },
    device::{delete_device, delete_devices, get_device, get_devices, update_device},
    session::{get_login_types, login, logout, logout_all, refresh_token},
    uiaa::UserIdentifier,
};
use serde_json::{Value, json};

use crate::{
    accounts::IssuedSession,
    api::{
        AppState,
        ruma::{ClientInfo, Ruma, json, route},
    },
    error::{Error, Result},
    ratelimit::Action,
    store::DeviceRow,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, register);
    let router = route(router, available);
    let router = route(router, login_types);
    let router = route(router, login);
    let router = route(router, refresh);
    let router = route(router, logout);
    let router = route(router, logout_all);
    let router = route(router, whoami);
    let router = route(router, devices);
    let router = route(router, device);
    let router = route(router, update_device);
    let router = route(router, delete_device);
    let router = route(router, delete_devices);
    let router = route(router, change_password);
    let router = route(router, openid_token);
    let router = route(router, whois);
    let router = route(router, threepids);
    route(router, deactivate)
}

/// # GET /_matrix/client/v3/admin/whois/{userId}
async fn whois(state: AppState, req: Ruma<ruma::api::client::admin::get_user_info::v3::Request>) -> Result<Response> {
    Ok(json(state.accounts.whois(req.identity(), &req.body.user_id).await?))
}

/// # POST /_matrix/client/v3/user/{userId}/openid/request_token
async fn openid_token(state: AppState, req: Ruma<request_openid_token::v3::Request>) -> Result<Response> {
    let id = req.identity();
    if req.body.user_id != id.user_id {
        return Err(Error::forbidden("you can only request OpenID tokens for yourself"));
    }
    let (token, expires_in) = state.accounts.openid_token(&id.user_id).await?;
    Ok(json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": state.config.server_name,
        "expires_in": expires_in,
    })))
}

fn session_json(state: &AppState, s: &IssuedSession) -> Value {
    let mut out = json!({
        "user_id": s.user_id,
        "access_token": s.access_token,
        "device_id": s.device_id,
        "home_server": state.config.server_name,
    });
    if let Some(base_url) = state.config.public_baseurl() {
        out["well_known"] = json!({ "m.homeserver": { "base_url": base_url } });
    }
    if let Some(refresh) = &s.refresh_token {
        out["refresh_token"] = json!(refresh);
    }
    if let Some(expires) = s.expires_in {
        out["expires_in_ms"] = json!(expires.as_millis() as u64);
    }
    out
}

/// # POST /_matrix/client/v3/register
async fn register(state: AppState, req: Ruma<register::v3::Request>) -> Result<Response> {
    let ip = req.client.ip.clone().unwrap_or_default();
    state.limits.check(Action::Registration, &ip)?;
    let guest = req.body.kind == register::RegistrationKind::Guest;
    let request = req.uia_request();
    let params =
        serde_json::from_value(Value::Object(request.params.clone())).map_err(|e| Error::bad_json(e.to_string()))?;
    let (user_id, session) = state.accounts.register(params, req.body.auth.as_ref(), guest, &request).await?;
    if let Some(s) = &session {
        log_session(&state, &s.user_id, s.device_id.as_str(), "login", &req.client).await;
    }
    Ok(json(match session {
        Some(s) => session_json(&state, &s),
        None => json!({ "user_id": user_id, "home_server": state.config.server_name }),
    }))
}

/// # GET /_matrix/client/v3/register/available
async fn available(state: AppState, req: Ruma<get_username_availability::v3::Request>) -> Result<Response> {
    state.accounts.is_available(&req.body.username).await?;
    Ok(json(json!({ "available": true })))
}

/// # GET /_matrix/client/v3/account/3pid
async fn threepids(state: AppState, req: Ruma<get_3pids::v3::Request>) -> Result<Response> {
    let rows = state.store.threepids(req.identity().user_id.as_str()).await?;
    let threepids: Vec<Value> = rows
        .into_iter()
        .map(|t| json!({ "medium": t.medium, "address": t.address, "validated_at": t.validated_ts, "added_at": t.added_ts }))
        .collect();
    Ok(json(json!({ "threepids": threepids })))
}

/// # GET /_matrix/client/v3/login
async fn login_types(state: AppState, _: Ruma<get_login_types::v3::Request>) -> Result<Response> {
    let mut flows = Vec::new();
    if state.config.password_login {
        flows.push(json!({ "type": "m.login.password" }));
    }
    if state.sso.enabled() {
        let providers: Vec<Value> = state.sso.providers().map(|(id, name)| json!({ "id": id, "name": name })).collect();
        flows.push(json!({
            "type": "m.login.sso",
            "identity_providers": providers,
            // MSC3824: clients able to use the OAuth 2.0 API should (Element X does).
            "oauth_aware_preferred": state.oauth.is_some(),
        }));
        flows.push(json!({ "type": "m.login.token" }));
    }
    Ok(json(json!({ "flows": flows })))
}

/// # POST /_matrix/client/v3/login
async fn login(state: AppState, req: Ruma<login::v3::Request>) -> Result<Response> {
    let ip = req.client.ip.clone().unwrap_or_default();
    state.limits.check(Action::Login, &ip)?;
    let body = req.body;
    let device_id = body.device_id.as_ref().map(|d| d.as_str());
    let password = match &body.login_info {
        login::v3::LoginInfo::Password(password) if state.config.password_login => password,
        login::v3::LoginInfo::Token(token) if state.sso.enabled() => {
            let (user_id, provider_session) = state.sso.redeem_login_token(&token.token).await?;
            let session = state
                .accounts
                .login_as(&user_id, device_id, body.initial_device_display_name.as_deref(), body.refresh_token)
                .await?;
            if let Some(provider_session) = provider_session {
                state.sso.note_session(&provider_session, &user_id, session.device_id.as_str()).await?;
            }
            log_session(&state, &session.user_id, session.device_id.as_str(), "login", &req.client).await;
            return Ok(json(session_json(&state, &session)));
        }
        _ => return Err(Error::Unknown("unsupported login type".into())),
    };
    #[allow(deprecated)]
    let user = match (&password.identifier, &password.user) {
        (Some(UserIdentifier::Matrix(m)), _) => m.user.clone(),
        (None, Some(user)) => user.clone(),
        _ => return Err(Error::forbidden("only user identifiers are supported")),
    };
    let session = state
        .accounts
        .login_password(
            &user,
            &password.password,
            device_id,
            body.initial_device_display_name.as_deref(),
            body.refresh_token,
        )
        .await?;
    log_session(&state, &session.user_id, session.device_id.as_str(), "login", &req.client).await;
    Ok(json(session_json(&state, &session)))
}

/// Records a login or a session's end in the connection logs; a failure to record is
/// logged, not the user's problem.
pub(super) async fn log_session(
    state: &AppState,
    user_id: &ruma::UserId,
    device_id: &str,
    event: &str,
    client: &ClientInfo,
) {
    if let Err(e) = state
        .store
        .log_session(user_id.as_str(), device_id, event, client.ip.as_deref(), client.user_agent.as_deref())
        .await
    {
        tracing::warn!(error = %e, "connection log not recorded");
    }
}

/// # POST /_matrix/client/v3/refresh
async fn refresh(state: AppState, req: Ruma<refresh_token::v3::Request>) -> Result<Response> {
    let s = state.accounts.refresh(&req.body.refresh_token).await?;
    Ok(json(json!({
        "access_token": s.access_token,
        "refresh_token": s.refresh_token,
        "expires_in_ms": s.expires_in.map(|d| d.as_millis() as u64),
    })))
}

/// # POST /_matrix/client/v3/logout
async fn logout(state: AppState, req: Ruma<logout::v3::Request>) -> Result<Response> {
    let id = req.identity();
    state.accounts.delete_devices(&id.user_id, &[id.device_id.to_string()]).await?;
    log_session(&state, &id.user_id, id.device_id.as_str(), "logout", &req.client).await;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/logout/all
async fn logout_all(state: AppState, req: Ruma<logout_all::v3::Request>) -> Result<Response> {
    let id = req.identity();
    state.accounts.logout_all(&id.user_id).await?;
    log_session(&state, &id.user_id, "*", "logout", &req.client).await;
    Ok(json(json!({})))
}

/// # GET /_matrix/client/v3/account/whoami
async fn whoami(_: AppState, req: Ruma<whoami::v3::Request>) -> Result<Response> {
    let id = req.identity();
    Ok(json(json!({ "user_id": id.user_id, "device_id": id.device_id, "is_guest": false })))
}

fn device_json(d: &DeviceRow) -> Value {
    json!({
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ts": d.last_seen_ts,
        "last_seen_ip": d.last_seen_ip,
    })
}

/// # GET /_matrix/client/v3/devices
async fn devices(state: AppState, req: Ruma<get_devices::v3::Request>) -> Result<Response> {
    let user_id = req.identity().user_id.as_str();
    let devices = state.store.devices(user_id).await?;
    Ok(json(json!({ "devices": devices.iter().map(device_json).collect::<Vec<_>>() })))
}

/// # GET /_matrix/client/v3/devices/{deviceId}
async fn device(state: AppState, req: Ruma<get_device::v3::Request>) -> Result<Response> {
    let user_id = req.identity().user_id.as_str();
    let device = state
        .store
        .device(user_id, req.body.device_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("device not found"))?;
    Ok(json(device_json(&device)))
}

/// # PUT /_matrix/client/v3/devices/{deviceId}
async fn update_device(state: AppState, req: Ruma<update_device::v3::Request>) -> Result<Response> {
    let user_id = &req.identity().user_id;
    state.accounts.rename_device(user_id, req.body.device_id.as_str(), req.body.display_name.as_deref()).await?;
    Ok(json(json!({})))
}

/// # DELETE /_matrix/client/v3/devices/{deviceId}
async fn delete_device(state: AppState, req: Ruma<delete_device::v3::Request>) -> Result<Response> {
    let id = req.identity();
    if state.store.device(id.user_id.as_str(), req.body.device_id.as_str()).await?.is_none() {
        return Err(Error::not_found("device not found"));
    }
    state.accounts.confirm_identity(&id.user_id, req.body.auth.as_ref(), &req.uia_request()).await?;
    state.accounts.delete_devices(&id.user_id, &[req.body.device_id.to_string()]).await?;
    log_session(&state, &id.user_id, req.body.device_id.as_str(), "logout", &req.client).await;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/delete_devices
async fn delete_devices(state: AppState, req: Ruma<delete_devices::v3::Request>) -> Result<Response> {
    let id = req.identity();
    state.accounts.confirm_identity(&id.user_id, req.body.auth.as_ref(), &req.uia_request()).await?;
    let devices: Vec<String> = req.body.devices.iter().map(ToString::to_string).collect();
    state.accounts.delete_devices(&id.user_id, &devices).await?;
    for device in &devices {
        log_session(&state, &id.user_id, device, "logout", &req.client).await;
    }
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/account/password
async fn change_password(state: AppState, req: Ruma<change_password::v3::Request>) -> Result<Response> {
    let id = req.identity();
    state.accounts.confirm_identity(&id.user_id, req.body.auth.as_ref(), &req.uia_request()).await?;
    state.accounts.change_password(id, &req.body.new_password, req.body.logout_devices).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/account/deactivate
async fn deactivate(state: AppState, req: Ruma<deactivate::v3::Request>) -> Result<Response> {
    let id = req.identity();
    state.accounts.confirm_identity(&id.user_id, req.body.auth.as_ref(), &req.uia_request()).await?;
    crate::identity::lifecycle::deactivate(&state.accounts, &state.rooms, &id.user_id, req.body.erase).await?;
    Ok(json(json!({ "id_server_unbind_result": "no-support" })))
}
