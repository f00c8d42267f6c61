//! OpenID: third parties check a user's OpenID token here.

use axum::{
    Router,
    extract::{Query, State},
    response::Response,
    routing::get,
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    api::{AppState, ruma::json},
    error::{Error, Result},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router.route("/_matrix/federation/v1/openid/userinfo", get(userinfo))
}

#[derive(Deserialize)]
struct UserinfoQuery {
    access_token: Option<String>,
}

/// # GET /_matrix/federation/v1/openid/userinfo
///
/// Not X-Matrix authenticated: the token itself is the credential, and a missing or unknown
/// one is a 401 `M_UNKNOWN_TOKEN` as the spec says.
async fn userinfo(State(state): State<AppState>, Query(query): Query<UserinfoQuery>) -> Result<Response> {
    let token = query.access_token.ok_or(Error::UnknownToken { soft_logout: false })?;
    let user_id = state.accounts.openid_user(&token).await?.ok_or(Error::UnknownToken { soft_logout: false })?;
    Ok(json(json!({ "sub": user_id })))
}
