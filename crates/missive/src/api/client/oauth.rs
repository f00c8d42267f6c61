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
        ruma::{ClientInfo, Ruma, json, route},
    },
    error::{Error, Result},
    identity::oauth::{
        ACCOUNT_PATH, AUTHORIZE_PATH, OAuth, OAuthError, REGISTRATION_PATH, REVOCATION_PATH, TOKEN_PATH,
    },
};

/// The cookie of a browser signed in to the account management pages.
pub(super) const ACCOUNT_COOKIE: &str = "missive_account";

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, auth_metadata);
    router
        .route(REGISTRATION_PATH, post(register))
        .route(AUTHORIZE_PATH, get(authorize).post(authorize_password))
        .route(TOKEN_PATH, post(token))
        .route(REVOCATION_PATH, post(revoke))
        .route(ACCOUNT_PATH, get(account))
        .route(&format!("{ACCOUNT_PATH}/sign_out"), post(sign_out))
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
        Ok(request) if state.sso.enabled() => {
            let hint = query.get("login_hint").map(String::as_str);
            to_provider(&state, state.sso.start_oauth(None, request, hint).await)
        }
        Ok(request) => password_page(oauth.await_password(request), None),
        Err((e, Some(request))) => {
            found(&request.redirect_with(&[("error", e.code), ("error_description", &e.description)]))
        }
        Err((e, None)) => {
            page(StatusCode::BAD_REQUEST, "Sign-in failed", &format!("<p>{}</p>", super::sso::escape(&e.description)))
        }
    }
}

/// The fields of a form-encoded body. Read by hand rather than by axum's `Form`, whose
/// refusal of another body is plain text: an OAuth client gets OAuth's JSON error (a body
/// that is no form has no `grant_type`, no `token`).
fn form_fields(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// # POST /_missive/oauth2/token
async fn token(State(state): State<AppState>, client: ClientInfo, body: axum::body::Bytes) -> Response {
    let form = form_fields(&body);
    let oauth = match service(&state) {
        Ok(oauth) => oauth,
        Err(response) => return *response,
    };
    match oauth.token(&state.accounts, &form).await {
        Ok(tokens) => {
            let session = tokens.session;
            // An exchanged code opens a session (a refresh only continues one).
            if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
                super::account::log_session(&state, &session.user_id, session.device_id.as_str(), "login", &client)
                    .await;
            }
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
async fn revoke(State(state): State<AppState>, client: ClientInfo, body: axum::body::Bytes) -> Response {
    let form = form_fields(&body);
    let oauth = match service(&state) {
        Ok(oauth) => oauth,
        Err(response) => return *response,
    };
    match oauth.revoke(&state.accounts, &form).await {
        Ok(ended) => {
            if let Some((user_id, device_id)) = ended {
                super::account::log_session(&state, &user_id, &device_id, "logout", &client).await;
            }
            answer(StatusCode::OK, json!({}))
        }
        Err(e) => oauth_error(&e),
    }
}

/// The browser's account cookie and the user it signs in, if still valid.
fn browser_session(oauth: &OAuth, headers: &axum::http::HeaderMap) -> Option<(String, ruma::OwnedUserId)> {
    let cookie = super::sso::cookie(headers, ACCOUNT_COOKIE)?;
    let user_id = oauth.browser_user(&cookie)?;
    Some((cookie, user_id))
}

/// # GET /_missive/account
///
/// The account management pages (the spec's `account_management_uri`): the user's
/// sessions (`org.matrix.sessions_list`, `org.matrix.session_view`) and the end of one
/// (`org.matrix.session_end`, a confirmation). A browser not signed in signs in at the IAM
/// first and comes back here.
async fn account(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let oauth = match service(&state) {
        Ok(oauth) => oauth,
        Err(response) => return *response,
    };
    let Some((cookie, user_id)) = browser_session(oauth, &headers) else {
        let return_to = uri.path_and_query().map_or(ACCOUNT_PATH.to_owned(), |p| p.to_string());
        return to_provider(&state, state.sso.start_account(&return_to).await);
    };
    let devices = match state.store.devices(user_id.as_str()).await {
        Ok(devices) => devices,
        Err(e) => return Error::from(e).into_response(),
    };
    let token = OAuth::form_token(&cookie);
    let escape = super::sso::escape;
    let form = |device: &str, label: &str| {
        format!(
            "<form method=\"post\" action=\"{ACCOUNT_PATH}/sign_out\">\
             <input type=\"hidden\" name=\"device_id\" value=\"{}\"/>\
             <input type=\"hidden\" name=\"token\" value=\"{token}\"/>\
             <button type=\"submit\">{label}</button></form>",
            escape(device)
        )
    };
    let wanted = query.get("device_id");
    let signed_out = query.get("signed_out").map(|d| format!("<p>The session {} is signed out.</p>", escape(d)));
    if query.get("action").map(String::as_str) == Some("org.matrix.session_end") {
        let Some(device) = wanted.filter(|d| devices.iter().any(|r| &r.device_id == *d)) else {
            return page(StatusCode::NOT_FOUND, "Unknown session", "<p>This session does not exist.</p>");
        };
        let body = format!("<p>Sign out the session {}?</p>{}", escape(device), form(device, "Sign out"));
        return page(StatusCode::OK, "Sign out a session", &body);
    }
    let rows: String = devices
        .iter()
        .filter(|d| wanted.is_none_or(|w| *w == d.device_id))
        .map(|d| {
            let seen = d.last_seen_ts.map(|ts| format!("last seen {ts} ms after 1970")).unwrap_or_default();
            format!(
                "<li>{} {} {} {}</li>",
                escape(&d.device_id),
                escape(d.display_name.as_deref().unwrap_or_default()),
                seen,
                form(&d.device_id, "Sign out")
            )
        })
        .collect();
    let body =
        format!("{}<p>Sessions of {}:</p><ul>{rows}</ul>", signed_out.unwrap_or_default(), escape(user_id.as_str()));
    page(StatusCode::OK, "Your sessions", &body)
}

/// # POST /_missive/account/sign_out
///
/// Ends one of the signed-in user's sessions, from the account management pages.
async fn sign_out(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let oauth = match service(&state) {
        Ok(oauth) => oauth,
        Err(response) => return *response,
    };
    let Some((cookie, user_id)) = browser_session(oauth, &headers) else {
        return page(StatusCode::FORBIDDEN, "Signed out", "<p>Sign in again to manage your sessions.</p>");
    };
    if form.get("token") != Some(&OAuth::form_token(&cookie)) {
        return page(StatusCode::FORBIDDEN, "Refused", "<p>This form did not come from this server.</p>");
    }
    let Some(device) = form.get("device_id") else {
        return page(StatusCode::BAD_REQUEST, "Refused", "<p>No session named.</p>");
    };
    if let Err(e) = state.accounts.delete_devices(&user_id, std::slice::from_ref(device)).await {
        return e.into_response();
    }
    tracing::info!(%user_id, device_id = %device, "session ended from the account pages");
    found(&format!("{ACCOUNT_PATH}?signed_out={}", crate::api::ruma::percent_encode(device)))
}

/// The sign-in page of a server without single sign-on (a trial server): user name and
/// password.
fn password_page(request_id: String, error: Option<&str>) -> Response {
    let escape = super::sso::escape;
    let error = error.map(|e| format!("<p>{}</p>", escape(e))).unwrap_or_default();
    let body = format!(
        "{error}<form method=\"post\" action=\"{AUTHORIZE_PATH}\">\
         <input type=\"hidden\" name=\"request\" value=\"{}\"/>\
         <label>User name <input name=\"login\" value=\"\" autocomplete=\"username\"/></label>\
         <label>Password <input type=\"password\" name=\"password\" value=\"\" autocomplete=\"current-password\"/></label>\
         <button type=\"submit\">Sign in</button></form>",
        escape(&request_id)
    );
    page(if error.is_empty() { StatusCode::OK } else { StatusCode::FORBIDDEN }, "Sign in", &body)
}

/// # POST /_missive/oauth2/authorize
///
/// The password page's form: a proven password sends the browser back to the client with
/// a code; a wrong one shows the page again (for the same authorization).
async fn authorize_password(State(state): State<AppState>, Form(form): Form<HashMap<String, String>>) -> Response {
    let oauth = match service(&state) {
        Ok(oauth) => oauth,
        Err(response) => return *response,
    };
    if state.sso.enabled() || !state.config.password_login {
        return Error::Unrecognized { method_not_allowed: true }.into_response();
    }
    let Some(request) = form.get("request").and_then(|id| oauth.take_password_page(id)) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "<p>This sign-in expired: start again from your application.</p>",
        );
    };
    let user = form.get("login").map(String::as_str).unwrap_or_default();
    if let Err(e) = state.limits.check(crate::ratelimit::Action::Login, user) {
        return e.into_response();
    }
    match state.accounts.check_password(user, form.get("password").map(String::as_str).unwrap_or_default()).await {
        Ok(user_id) => found(&oauth.issue_code(request, user_id)),
        Err(Error::Forbidden(_)) => password_page(oauth.await_password(request), Some("Wrong user name or password.")),
        Err(e) => e.into_response(),
    }
}
