//! The Matrix OAuth 2.0 API's HTTP side: server metadata, client registration, the
//! authorization endpoint (a browser: redirects and pages), and the token and revocation
//! endpoints (form-encoded requests, OAuth's JSON errors).

use std::collections::HashMap;

use axum::{
    Form, Json, Router,
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use ruma::api::client::discovery::get_authorization_server_metadata;
use serde_json::{Value, json};

use super::sso::{found, page, to_provider};
use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
    identity::oauth::{AUTHORIZE_PATH, OAuth, OAuthError, REGISTRATION_PATH, REVOCATION_PATH, TOKEN_PATH},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, auth_metadata);
    router
        .route(REGISTRATION_PATH, post(register))
        .route(AUTHORIZE_PATH, get(authorize))
        .route(TOKEN_PATH, post(token))
        .route(REVOCATION_PATH, post(revoke))
}

/// # GET /_matrix/client/v1/auth_metadata
async fn auth_metadata(state: AppState, _: Ruma<get_authorization_server_metadata::v1::Request>) -> Result<Response> {
    let oauth = state.oauth.as_ref().ok_or(Error::Unrecognized { method_not_allowed: false })?;
    Ok(json(oauth.metadata()))
}

/// An OAuth answer: JSON, never cached.
fn answer(status: StatusCode, body: Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn oauth_error(e: &OAuthError) -> Response {
    answer(StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST), e.body())
}

/// The service, or the answer to give when the server offers no OAuth API.
fn service(state: &AppState) -> std::result::Result<&OAuth, Box<Response>> {
    state.oauth.as_deref().ok_or_else(|| Box::new(Error::Unrecognized { method_not_allowed: false }.into_response()))
}

/// # POST /_missive/oauth2/registration
async fn register(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let oauth = match service(&state) {
        Ok(oauth) => oauth,
        Err(response) => return *response,
    };
    let Ok(metadata) = serde_json::from_slice::<Value>(&body) else {
        return oauth_error(&OAuthError {
            status: 400,
            code: "invalid_client_metadata",
            description: "not JSON".into(),
        });
    };
    match oauth.register(metadata).await {
        Ok(registered) => answer(StatusCode::CREATED, registered),
        Err(e) => oauth_error(&e),
    }
}

/// # GET /_missive/oauth2/authorize
///
/// Checks the request, then sends the user to sign in at the identity provider; the
/// callback sends them back to the client with a code. An unknown client or redirect URI
/// gets a page; the other errors go back to the client.
async fn authorize(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    let oauth = match service(&state) {
        Ok(oauth) => oauth,
        Err(response) => return *response,
    };
    match oauth.authorization_request(&query).await {
        Ok(request) => {
            let hint = query.get("login_hint").map(String::as_str);
            to_provider(&state, state.sso.start_oauth(None, request, hint).await)
        }
        Err((e, Some(request))) => {
            found(&request.redirect_with(&[("error", e.code), ("error_description", &e.description)]))
        }
        Err((e, None)) => {
            page(StatusCode::BAD_REQUEST, "Sign-in failed", &format!("<p>{}</p>", super::sso::escape(&e.description)))
        }
    }
}

/// # POST /_missive/oauth2/token
async fn token(State(state): State<AppState>, Form(form): Form<HashMap<String, String>>) -> Response {
    let oauth = match service(&state) {
        Ok(oauth) => oauth,
        Err(response) => return *response,
    };
    match oauth.token(&state.accounts, &form).await {
        Ok(tokens) => {
            let session = tokens.session;
            let mut body = json!({
                "access_token": session.access_token,
                "token_type": "Bearer",
                "scope": tokens.scope,
            });
            if let Some(refresh) = session.refresh_token {
                body["refresh_token"] = json!(refresh);
            }
            if let Some(expires) = session.expires_in {
                body["expires_in"] = json!(expires.as_secs());
            }
            answer(StatusCode::OK, body)
        }
        Err(e) => oauth_error(&e),
    }
}

/// # POST /_missive/oauth2/revoke
async fn revoke(State(state): State<AppState>, Form(form): Form<HashMap<String, String>>) -> Response {
    let oauth = match service(&state) {
        Ok(oauth) => oauth,
        Err(response) => return *response,
    };
    match oauth.revoke(&state.accounts, &form).await {
        Ok(()) => answer(StatusCode::OK, json!({})),
        Err(e) => oauth_error(&e),
    }
}
