//! SCIM 2.0 provisioning endpoints (`/_missive/scim/v2/Users`), for the IAM: create,
//! read, look up, suspend or reinstate (`active`), delete. Authenticated by the bearer
//! token of `[scim] token`; answers in SCIM's own JSON, errors included.

use std::collections::HashMap;

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};

use super::AppState;
use crate::{
    accounts::hash_token,
    identity::{
        lifecycle,
        scim::{LIST_SCHEMA, Patch, ScimError, USER_SCHEMA, UserResource, parse_filter},
    },
};

/// Where the `User` resources are.
const USERS: &str = "/_missive/scim/v2/Users";

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(USERS, get(search).post(create))
        .route(&format!("{USERS}/{{id}}"), get(read).put(replace).patch(patch).delete(delete))
}

type Answer = Result<Response, ScimError>;

fn answer(result: Answer) -> Response {
    match result {
        Ok(response) => response,
        Err(e) => {
            let (status, _) = e.status_and_type();
            if status >= 500 {
                tracing::warn!(error = %e, "SCIM request failed");
            }
            scim_json(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e.body())
        }
    }
}

fn scim_json(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/scim+json"));
    response
}

/// The IAM's bearer token, compared by digest.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ScimError> {
    let expected = state.config.scim.token.as_ref().ok_or(ScimError::NotFound)?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ScimError::Unauthorized)?;
    if hash_token(given) != hash_token(expected.expose()) {
        return Err(ScimError::Unauthorized);
    }
    Ok(())
}

fn body_of<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ScimError> {
    serde_json::from_slice(body).map_err(|e| ScimError::Invalid(format!("malformed request: {e}")))
}

/// The local account a resource ID names.
async fn account(state: &AppState, id: &str) -> Result<OwnedUserId, ScimError> {
    let user_id = UserId::parse(id).map_err(|_| ScimError::NotFound)?;
    if user_id.server_name() != state.federation.server_name || state.accounts.account(&user_id).await?.is_none() {
        return Err(ScimError::NotFound);
    }
    Ok(user_id)
}

/// An account as a `User` resource.
async fn resource(state: &AppState, user_id: &UserId) -> Result<Value, ScimError> {
    let account = state.accounts.account(user_id).await?.ok_or(ScimError::NotFound)?;
    let details = state.store.account_details(user_id.as_str()).await.map_err(crate::error::Error::from)?;
    let details = details.ok_or(ScimError::NotFound)?;
    let (displayname, _) =
        state.store.profile(user_id.as_str()).await.map_err(crate::error::Error::from)?.unwrap_or_default();
    let emails = state.store.threepids(user_id.as_str()).await.map_err(crate::error::Error::from)?;
    let email = emails.iter().find(|t| t.medium == "email").map(|t| t.address.clone());
    Ok(json!({
        "schemas": [USER_SCHEMA],
        "id": user_id,
        "externalId": details.external_ids.first().map(|(_, subject)| subject),
        "userName": email.clone().unwrap_or_else(|| user_id.localpart().to_owned()),
        "displayName": displayname,
        "active": !account.locked && !account.deactivated,
        "emails": email.map(|e| json!([{ "value": e, "primary": true }])).unwrap_or(json!([])),
        "meta": {
            "resourceType": "User",
            "location": format!("{}{USERS}/{}", state.config.public_baseurl().unwrap_or_default().trim_end_matches('/'), user_id),
        },
    }))
}

/// Applies `active`: false suspends the account, true reinstates it (and brings a
/// deactivated one back, as long as it was not deleted).
async fn set_active(state: &AppState, user_id: &UserId, active: bool) -> Result<(), ScimError> {
    let account = state.accounts.account(user_id).await?.ok_or(ScimError::NotFound)?;
    if active && account.deactivated {
        lifecycle::restore(&state.accounts, user_id).await?;
    }
    if account.locked == active {
        lifecycle::suspend(&state.accounts, user_id, !active).await?;
    }
    Ok(())
}

/// # POST /_missive/scim/v2/Users
async fn create(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    answer(
        async {
            authorize(&state, &headers)?;
            let user: UserResource = body_of(&body)?;
            let claims = user.claims()?;
            let active = user.active()?;
            let provider = state.config.scim.provider.as_deref();
            if state.sso.account_of(provider, &claims.subject).await?.is_some() {
                return Err(ScimError::Conflict("a user with this externalId exists".into()));
            }
            let (user_id, _) = state.sso.provision(&state.accounts, &state.rooms, provider, &claims).await?;
            if let Some(active) = active {
                set_active(&state, &user_id, active).await?;
            }
            tracing::info!(%user_id, "account provisioned by the IAM");
            Ok(scim_json(StatusCode::CREATED, resource(&state, &user_id).await?))
        }
        .await,
    )
}

/// # GET /_missive/scim/v2/Users/{id}
async fn read(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    answer(
        async {
            authorize(&state, &headers)?;
            let user_id = account(&state, &id).await?;
            Ok(scim_json(StatusCode::OK, resource(&state, &user_id).await?))
        }
        .await,
    )
}

/// # GET /_missive/scim/v2/Users?filter=…
async fn search(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    answer(
        async {
            authorize(&state, &headers)?;
            let filter = query.get("filter").ok_or_else(|| ScimError::Invalid("a filter is required".into()))?;
            let found = match parse_filter(filter)? {
                ("externalId", subject) => {
                    state.sso.account_of(state.config.scim.provider.as_deref(), &subject).await?
                }
                (_, name) => {
                    let user = state
                        .store
                        .threepid_user("email", &name.to_lowercase())
                        .await
                        .map_err(crate::error::Error::from)?;
                    user.and_then(|u| UserId::parse(u).ok())
                }
            };
            let mut resources = Vec::new();
            if let Some(user_id) = found {
                resources.push(resource(&state, &user_id).await?);
            }
            Ok(scim_json(
                StatusCode::OK,
                json!({
                    "schemas": [LIST_SCHEMA],
                    "totalResults": resources.len(),
                    "startIndex": 1,
                    "itemsPerPage": resources.len(),
                    "Resources": resources,
                }),
            ))
        }
        .await,
    )
}

/// # PUT /_missive/scim/v2/Users/{id}
async fn replace(state: State<AppState>, headers: HeaderMap, id: Path<String>, body: axum::body::Bytes) -> Response {
    change(state, headers, id, || body_of::<UserResource>(&body)?.active()).await
}

/// # PATCH /_missive/scim/v2/Users/{id}
async fn patch(state: State<AppState>, headers: HeaderMap, id: Path<String>, body: axum::body::Bytes) -> Response {
    change(state, headers, id, || body_of::<Patch>(&body)?.active()).await
}

/// A change of a user: the `active` value its message sets, if any, is applied; other
/// attributes follow the IAM's claims at each sign-in.
async fn change(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    active: impl FnOnce() -> Result<Option<bool>, ScimError>,
) -> Response {
    answer(
        async {
            authorize(&state, &headers)?;
            let user_id = account(&state, &id).await?;
            if let Some(active) = active()? {
                set_active(&state, &user_id, active).await?;
            }
            Ok(scim_json(StatusCode::OK, resource(&state, &user_id).await?))
        }
        .await,
    )
}

/// # DELETE /_missive/scim/v2/Users/{id}
///
/// Deactivates the account; it is deleted after the grace period of `[lifecycle]`.
async fn delete(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    answer(
        async {
            authorize(&state, &headers)?;
            let user_id = account(&state, &id).await?;
            if !state.accounts.account(&user_id).await?.is_some_and(|a| a.deactivated) {
                lifecycle::deactivate(&state.accounts, &state.rooms, &user_id, false).await?;
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}
