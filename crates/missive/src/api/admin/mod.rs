//! Administration endpoints, on Synapse's paths and shapes so existing tools work:
//! shared-secret registration (`/_synapse/admin/v1/register`), accounts (show, suspend,
//! deactivate, restore) and the federation destinations (state, backoff, queue; resetting
//! a backoff), and the media repository (`media`).

mod media;

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
use crate::{
    error::{Error, Result},
    identity::lifecycle,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = media::routes(router);
    router
        .route("/_synapse/admin/v1/register", get(nonce).post(register))
        .route("/_missive/admin/v1/audit", get(audit_trail))
        .route("/_missive/admin/v1/retention", get(purge_status))
        .route("/_missive/admin/v1/retention/purge", axum::routing::post(purge_now))
        .route("/_synapse/admin/v1/purge_history/{room_id}", axum::routing::post(purge_history))
        .route("/_synapse/admin/v1/purge_history/{room_id}/{event_id}", axum::routing::post(purge_history))
        .route("/_synapse/admin/v1/purge_history_status/{purge_id}", get(purge_history_status))
        .route("/_missive/admin/v1/users/{user_id}/export", get(export_user))
        .route("/_missive/admin/v1/statistics", get(statistics))
        .route("/_missive/admin/v1/legal_holds", get(legal_holds).post(place_hold))
        .route("/_missive/admin/v1/legal_holds/{id}", axum::routing::delete(lift_hold))
        .route("/_synapse/admin/v1/federation/destinations", get(destinations))
        .route("/_synapse/admin/v1/federation/destinations/{destination}", get(destination))
        .route(
            "/_synapse/admin/v1/federation/destinations/{destination}/reset_connection",
            axum::routing::post(reset_connection),
        )
        .route("/_synapse/admin/v2/users/{user_id}", get(user).put(modify_user))
        .route("/_synapse/admin/v1/deactivate/{user_id}", axum::routing::post(deactivate))
        .route("/_synapse/admin/v1/suspend/{user_id}", axum::routing::put(suspend))
}

/// What an admin request about a user carries once checked: the requester is a server
/// admin, the user is local, and the body (an empty one read as `{}`) parses.
fn user_request<T: serde::de::DeserializeOwned>(
    state: &AppState,
    requester: &crate::accounts::Identity,
    user_id: &str,
    body: &[u8],
) -> Result<(ruma::OwnedUserId, T)> {
    require_admin(requester)?;
    let user_id = local_user(state, user_id)?;
    let body = if body.is_empty() { b"{}" as &[u8] } else { body };
    let request = serde_json::from_slice(body).map_err(|e| Error::bad_json(e.to_string()))?;
    Ok((user_id, request))
}

/// A local user named in an admin path.
fn local_user(state: &AppState, user_id: &str) -> Result<ruma::OwnedUserId> {
    let user_id = ruma::UserId::parse(user_id).map_err(|e| Error::invalid_param(e.to_string()))?;
    if user_id.server_name() != state.federation.server_name {
        return Err(Error::invalid_param("only local users can be administered here"));
    }
    Ok(user_id)
}

/// # GET /_synapse/admin/v2/users/{userId}
async fn user(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(user_id): Path<String>,
) -> Result<Response> {
    require_admin(&id)?;
    let user_id = local_user(&state, &user_id)?;
    Ok(json(user_json(&state, &user_id).await?))
}

async fn user_json(state: &AppState, user_id: &ruma::UserId) -> Result<serde_json::Value> {
    let account = state.accounts.account(user_id).await?.ok_or_else(|| Error::not_found("no such account"))?;
    let details =
        state.store.account_details(user_id.as_str()).await?.ok_or_else(|| Error::not_found("no such account"))?;
    let (displayname, avatar_url) = state.store.profile(user_id.as_str()).await?.unwrap_or_default();
    let threepids: Vec<serde_json::Value> = state
        .store
        .threepids(user_id.as_str())
        .await?
        .into_iter()
        .map(|t| json!({ "medium": t.medium, "address": t.address, "added_at": t.added_ts, "validated_at": t.validated_ts }))
        .collect();
    let external_ids: Vec<serde_json::Value> = details
        .external_ids
        .iter()
        .map(|(provider, subject)| json!({ "auth_provider": provider, "external_id": subject }))
        .collect();
    Ok(json!({
        "name": user_id,
        "displayname": displayname,
        "avatar_url": avatar_url,
        "threepids": threepids,
        "admin": account.is_admin,
        "is_guest": account.is_guest,
        "deactivated": account.deactivated,
        "locked": account.locked,
        "suspended": account.locked,
        "shadow_banned": false,
        "creation_ts": details.creation_ts,
        "user_type": serde_json::Value::Null,
        "external_ids": external_ids,
        "organisation": details.organisation,
        "external": account.external,
        "deactivated_ts": details.deactivated_ts,
    }))
}

#[derive(Deserialize)]
struct UserChanges {
    locked: Option<bool>,
    deactivated: Option<bool>,
    /// Missive's own: marks a partner outside the administration, restricted as such.
    external: Option<bool>,
    /// The account's verified addresses (Synapse's shape: `medium`, `address`); one per
    /// medium is kept, as the IAM gives one.
    threepids: Option<Vec<ThreepidChange>>,
}

#[derive(Deserialize)]
struct ThreepidChange {
    medium: String,
    address: String,
}

/// # PUT /_synapse/admin/v2/users/{userId}
///
/// Changes an existing account: `locked` suspends or reinstates it, `deactivated`
/// deactivates or restores it, `external` marks a partner outside the administration.
/// Accounts are created by the IAM, not here.
async fn modify_user(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(user_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let (user_id, changes): (_, UserChanges) = user_request(&state, &id, &user_id, &body)?;
    let account = state.accounts.account(&user_id).await?.ok_or_else(|| Error::not_found("no such account"))?;
    // Checked before anything changes.
    for threepid in changes.threepids.iter().flatten() {
        let address = threepid.address.trim();
        if threepid.medium != "email" || !address.contains('@') || address.len() > 320 {
            return Err(Error::invalid_param("threepids: only e-mail addresses are kept"));
        }
    }
    if let Some(locked) = changes.locked {
        lifecycle::suspend(&state.accounts, &user_id, locked).await?;
    }
    if let Some(external) = changes.external {
        state.accounts.set_external(&user_id, external).await?;
    }
    for threepid in changes.threepids.iter().flatten() {
        state.store.set_threepid(user_id.as_str(), "email", &threepid.address.trim().to_lowercase()).await?;
    }
    match changes.deactivated {
        Some(true) if !account.deactivated => {
            lifecycle::deactivate(&state.accounts, &state.rooms, &user_id, false).await?
        }
        Some(false) if account.deactivated => lifecycle::restore(&state.accounts, &user_id).await?,
        _ => {}
    }
    Ok(json(user_json(&state, &user_id).await?))
}

#[derive(Deserialize)]
struct Deactivation {
    #[serde(default)]
    erase: bool,
}

/// # POST /_synapse/admin/v1/deactivate/{userId}
async fn deactivate(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(user_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let (user_id, request): (_, Deactivation) = user_request(&state, &id, &user_id, &body)?;
    if state.accounts.account(&user_id).await?.is_none() {
        return Err(Error::not_found("no such account"));
    }
    lifecycle::deactivate(&state.accounts, &state.rooms, &user_id, request.erase).await?;
    Ok(json(json!({ "id_server_unbind_result": "success" })))
}

#[derive(Deserialize)]
struct Suspension {
    suspend: bool,
}

/// # PUT /_synapse/admin/v1/suspend/{userId}
async fn suspend(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(user_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let (user_id, request): (_, Suspension) = user_request(&state, &id, &user_id, &body)?;
    lifecycle::suspend(&state.accounts, &user_id, request.suspend).await?;
    Ok(json(json!({ format!("user_{}_suspended", user_id): request.suspend })))
}

/// # GET /_missive/admin/v1/users/{userId}/export
///
/// Everything the server holds about a local user (GDPR art. 15 and 20): JSON, or HTML with
/// `?format=html`. The request is audited like every admin request.
async fn export_user(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(user_id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response> {
    require_admin(&id)?;
    let user_id = local_user(&state, &user_id)?;
    let export = crate::privacy::export::export_user(&state.store, &state.config.server_name, user_id.as_str()).await?;
    match query.get("format").map(String::as_str) {
        None | Some("json") => Ok(json(export)),
        Some("html") => Ok(axum::response::IntoResponse::into_response(axum::response::Html(
            crate::privacy::export::to_html(&export),
        ))),
        Some(_) => Err(Error::invalid_param("format is json or html")),
    }
}

#[derive(Deserialize)]
struct HoldRequest {
    user_id: Option<String>,
    room_id: Option<String>,
    reason: String,
    reference: String,
}

/// # GET /_missive/admin/v1/legal_holds
async fn legal_holds(State(state): State<AppState>, Authenticated(id): Authenticated) -> Result<Response> {
    require_admin(&id)?;
    Ok(json(json!({ "holds": state.store.legal_holds().await? })))
}

/// # POST /_missive/admin/v1/legal_holds
///
/// Keeps a user's or a room's data from the retention purge until lifted (who, when, why
/// and the reference are recorded; the request is audited).
async fn place_hold(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    body: axum::body::Bytes,
) -> Result<Response> {
    require_admin(&id)?;
    let request: HoldRequest = serde_json::from_slice(&body).map_err(|e| Error::bad_json(e.to_string()))?;
    if request.user_id.is_some() == request.room_id.is_some() {
        return Err(Error::invalid_param("a hold names a user_id or a room_id"));
    }
    if request.reason.trim().is_empty() || request.reference.trim().is_empty() {
        return Err(Error::MissingParam("a hold needs a reason and a reference".into()));
    }
    if let Some(user) = &request.user_id {
        ruma::UserId::parse(user).map_err(|e| Error::invalid_param(e.to_string()))?;
    }
    if let Some(room) = &request.room_id {
        ruma::RoomId::parse(room).map_err(|e| Error::invalid_param(e.to_string()))?;
    }
    let hold = state
        .store
        .place_hold(
            request.user_id.as_deref(),
            request.room_id.as_deref(),
            &request.reason,
            &request.reference,
            id.user_id.as_str(),
        )
        .await?;
    tracing::warn!(hold, by = %id.user_id, "legal hold placed");
    Ok(json(json!({ "id": hold })))
}

/// # DELETE /_missive/admin/v1/legal_holds/{id}
async fn lift_hold(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(hold): Path<String>,
) -> Result<Response> {
    require_admin(&id)?;
    let hold: i64 = hold.parse().map_err(|_| Error::not_found("no such hold"))?;
    if !state.store.lift_hold(hold, id.user_id.as_str()).await? {
        return Err(Error::not_found("no active hold with this ID"));
    }
    tracing::warn!(hold, by = %id.user_id, "legal hold lifted");
    Ok(json(json!({})))
}

/// # GET /_missive/admin/v1/statistics
///
/// The figures an administration reports: accounts, daily and monthly active users (a
/// device used in the last day, the last 30 days), messages per day over 30 days, storage;
/// per organisation. Active users come from the devices' last use, nothing kept for it.
async fn statistics(State(state): State<AppState>, Authenticated(id): Authenticated) -> Result<Response> {
    require_admin(&id)?;
    const DAY: i64 = 86_400_000;
    let now = crate::store::now_ms();
    let organisations = state.store.organisation_stats(now - DAY, now - 30 * DAY).await?;
    let sum = |f: fn(&crate::store::OrganisationStats) -> i64| organisations.iter().map(f).sum::<i64>();
    let messages: Vec<serde_json::Value> = state
        .store
        .messages_per_day(&state.config.server_name, now - 30 * DAY)
        .await?
        .into_iter()
        .map(|(day, count)| json!({ "day": day, "messages": count }))
        .collect();
    let (database_bytes, media_bytes) = state.store.storage_bytes().await?;
    Ok(json(json!({
        "server": state.config.server_name,
        "generated_at": now,
        "accounts": sum(|o| o.accounts),
        "daily_active_users": sum(|o| o.daily_active),
        "monthly_active_users": sum(|o| o.monthly_active),
        "messages_per_day": messages,
        "storage": { "database_bytes": database_bytes, "media_bytes": media_bytes },
        "per_organisation": organisations,
    })))
}

/// # POST /_missive/admin/v1/retention/purge
///
/// Runs the retention purge now (it also runs hourly) and answers what it deleted.
async fn purge_now(State(state): State<AppState>, Authenticated(id): Authenticated) -> Result<Response> {
    require_admin(&id)?;
    let report = state.purge.run(crate::store::now_ms()).await?;
    Ok(json(serde_json::to_value(&report).map_err(|e| Error::Internal(e.to_string()))?))
}

/// # GET /_missive/admin/v1/retention
///
/// The retention purge's progress since the server started: whether it runs, the last
/// run's times and report, totals.
async fn purge_status(State(state): State<AppState>, Authenticated(id): Authenticated) -> Result<Response> {
    require_admin(&id)?;
    Ok(json(serde_json::to_value(state.purge.status()).map_err(|e| Error::Internal(e.to_string()))?))
}

/// The body of Synapse's `purge_history`.
#[derive(Deserialize)]
struct PurgeHistoryBody {
    #[serde(default)]
    delete_local_events: bool,
    purge_up_to_event_id: Option<String>,
    purge_up_to_ts: Option<i64>,
}

/// # POST /_synapse/admin/v1/purge_history/{room_id}[/{event_id}]
///
/// Purges a room's messages older than an event or a time, in the background; answers
/// the `purge_id` whose status `purge_history_status` gives.
async fn purge_history(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(params): Path<Vec<(String, String)>>,
    body: axum::body::Bytes,
) -> Result<Response> {
    require_admin(&id)?;
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let room_id =
        ruma::RoomId::parse(param("room_id").unwrap_or_default()).map_err(|_| Error::invalid_param("not a room ID"))?;
    let body: PurgeHistoryBody = serde_json::from_slice(if body.is_empty() { b"{}" } else { &body })
        .map_err(|e| Error::bad_json(e.to_string()))?;
    let before = match (param("event_id").or(body.purge_up_to_event_id), body.purge_up_to_ts) {
        (Some(event_id), _) => {
            let row = state
                .store
                .event(&event_id)
                .await?
                .filter(|r| r.room_id == room_id.as_str())
                .ok_or_else(|| Error::not_found("event not found"))?;
            crate::rooms::pdu::Pdu::from_row(&row)?.origin_server_ts.get().into()
        }
        (None, Some(ts)) => ts,
        (None, None) => return Err(Error::invalid_param("purge_up_to_event_id or purge_up_to_ts is required")),
    };
    let purge_id = state.purge.start_room_purge(room_id, before, body.delete_local_events).await?;
    Ok(json(json!({ "purge_id": purge_id })))
}

/// # GET /_synapse/admin/v1/purge_history_status/{purge_id}
async fn purge_history_status(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(purge_id): Path<String>,
) -> Result<Response> {
    require_admin(&id)?;
    let status = state.purge.room_purge_status(&purge_id).ok_or_else(|| Error::not_found("no such purge"))?;
    Ok(json(json!({ "status": status })))
}

/// # GET /_missive/admin/v1/audit
///
/// The audit trail, newest first: `from` (the previous page's `next_token`), `limit`,
/// `actor`, `target`. Reading it is itself recorded.
async fn audit_trail(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response> {
    require_admin(&id)?;
    let number =
        |name: &str| query.get(name).map(|v| v.parse::<i64>().map_err(|_| Error::invalid_param(format!("bad {name}"))));
    let before = number("from").transpose()?.unwrap_or(i64::MAX);
    let limit = number("limit").transpose()?.unwrap_or(100).clamp(1, 1000);
    let entries = state
        .store
        .audit_entries(before, limit, query.get("actor").map(String::as_str), query.get("target").map(String::as_str))
        .await?;
    let mut body = json!({ "entries": &entries });
    if entries.len() as i64 == limit
        && let Some(last) = entries.last()
    {
        body["next_token"] = json!(last.id.to_string());
    }
    Ok(json(body))
}

pub(super) fn require_admin(identity: &crate::accounts::Identity) -> Result<()> {
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
