//! Single sign-on, the browser's side: `GET /login/sso/redirect[/{idpId}]` sends the user
//! to the identity provider, which sends them back to the callback; the callback sends them
//! on to their application with a login token (`m.login.token`, redeemed at `/login`).
//! These answer HTML and redirects, not JSON: a browser reads them.

use std::collections::HashMap;

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};

use crate::{
    api::{AppState, ruma::percent_encode},
    identity::{BACKCHANNEL_LOGOUT_PATH, BROWSER_COOKIE, CALLBACK_PATH, SignedIn, SsoError},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let mut router = router
        .route(CALLBACK_PATH, get(callback))
        .route(BACKCHANNEL_LOGOUT_PATH, axum::routing::post(backchannel_logout));
    for version in ["r0", "v3"] {
        router = router
            .route(&format!("/_matrix/client/{version}/login/sso/redirect"), get(redirect))
            .route(&format!("/_matrix/client/{version}/login/sso/redirect/{{idp_id}}"), get(redirect_to))
            .route(&format!("/_matrix/client/{version}/auth/m.login.sso/fallback/web"), get(confirm));
    }
    router
}

/// # GET /_matrix/client/v3/login/sso/redirect
async fn redirect(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    let providers: Vec<(&str, &str)> = state.sso.providers().collect();
    if providers.len() > 1 {
        // The user picks their provider.
        let redirect_url = query.get("redirectUrl").map(String::as_str).unwrap_or_default();
        let links: String = providers
            .iter()
            .map(|(id, name)| {
                let href = format!("redirect/{}?redirectUrl={}", percent_encode(id), percent_encode(redirect_url));
                format!("<li><a href=\"{}\">{}</a></li>", escape(&href), escape(name))
            })
            .collect();
        return page(StatusCode::OK, "Sign in", &format!("<p>Sign in with:</p><ul>{links}</ul>"));
    }
    start(&state, None, &query).await
}

/// # GET /_matrix/client/v3/login/sso/redirect/{idpId}
async fn redirect_to(
    State(state): State<AppState>,
    Path(idp_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    start(&state, Some(&idp_id), &query).await
}

/// # GET /_matrix/client/v3/auth/m.login.sso/fallback/web
///
/// The `m.login.sso` stage of user-interactive authentication: the user confirms who they
/// are at their identity provider, then goes back to their application.
async fn confirm(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    if !state.sso.enabled() {
        return failure(StatusCode::NOT_FOUND, &SsoError::UnknownProvider);
    }
    let Some(session) = query.get("session") else {
        return failure(StatusCode::BAD_REQUEST, &SsoError::Session);
    };
    to_provider(&state, state.sso.start_confirmation(&state.accounts, session).await)
}

async fn start(state: &AppState, idp: Option<&str>, query: &HashMap<String, String>) -> Response {
    if !state.sso.enabled() {
        return failure(StatusCode::NOT_FOUND, &SsoError::UnknownProvider);
    }
    let Some(redirect_url) = query.get("redirectUrl") else {
        return failure(StatusCode::BAD_REQUEST, &SsoError::Refused("the application gave no redirectUrl".into()));
    };
    let login_hint = query.get("login_hint").map(String::as_str);
    to_provider(state, state.sso.start(idp, redirect_url, login_hint).await)
}

/// A redirect of the browser.
pub(super) fn found(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Sends the browser to the provider, with the cookie that binds the sign-in to it.
pub(super) fn to_provider(state: &AppState, started: Result<(String, String), SsoError>) -> Response {
    match started {
        Ok((url, browser)) => {
            let secure =
                if state.config.public_baseurl().is_some_and(|b| b.starts_with("https://")) { "; Secure" } else { "" };
            let cookie = format!(
                "{BROWSER_COOKIE}={browser}; Path={CALLBACK_PATH}; Max-Age=900; HttpOnly; SameSite=Lax{secure}"
            );
            let mut response = StatusCode::FOUND.into_response();
            let headers = response.headers_mut();
            if let (Ok(location), Ok(cookie)) = (HeaderValue::from_str(&url), HeaderValue::from_str(&cookie)) {
                headers.insert(header::LOCATION, location);
                headers.insert(header::SET_COOKIE, cookie);
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            response
        }
        Err(e) => failure(status_of(&e), &e),
    }
}

/// # GET /_synapse/client/oidc/callback
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(error) = query.get("error") {
        // The provider refused (the user cancelled, say); its words, not ours.
        let detail = query.get("error_description").unwrap_or(error);
        return failure(StatusCode::FORBIDDEN, &SsoError::Provider(detail.clone()));
    }
    let (Some(code), Some(sign_in)) = (query.get("code"), query.get("state")) else {
        return failure(StatusCode::BAD_REQUEST, &SsoError::Session);
    };
    let browser = cookie(&headers, BROWSER_COOKIE);
    match state.sso.complete(&state.accounts, &state.rooms, sign_in, code, browser.as_deref()).await {
        Ok(SignedIn::Confirmed) => {
            // The spec's fallback contract: tell the application, which retries its request.
            let mut response = page(
                StatusCode::OK,
                "Identity confirmed",
                "<p>You may go back to your application.</p>\
                 <script>if (window.onAuthDone) { window.onAuthDone(); } \
                 else if (window.opener && window.opener.postMessage) { window.opener.postMessage(\"authDone\", \"*\"); }</script>",
            );
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; script-src 'unsafe-inline'; frame-ancestors 'none'"),
            );
            response
        }
        Ok(SignedIn::Login { redirect_url, trusted: true, .. }) => found(&redirect_url),
        Ok(SignedIn::Account { user_id, return_to }) => match &state.oauth {
            Some(oauth) => {
                let secret = oauth.open_browser_session(user_id);
                let secure = if state.config.public_baseurl().is_some_and(|b| b.starts_with("https://")) {
                    "; Secure"
                } else {
                    ""
                };
                let mut response = found(&return_to);
                let cookie = format!(
                    "{}={secret}; Path={}; Max-Age=900; HttpOnly; SameSite=Lax{secure}",
                    super::oauth::ACCOUNT_COOKIE,
                    crate::identity::oauth::ACCOUNT_PATH
                );
                if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().insert(header::SET_COOKIE, cookie);
                }
                response
            }
            None => failure(StatusCode::NOT_FOUND, &SsoError::UnknownProvider),
        },
        Ok(SignedIn::OAuth { user_id, request }) => match &state.oauth {
            Some(oauth) => found(&oauth.issue_code(*request, user_id)),
            None => failure(StatusCode::NOT_FOUND, &SsoError::UnknownProvider),
        },
        Ok(SignedIn::Login { user_id, redirect_url, .. }) => {
            let host =
                url::Url::parse(&redirect_url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
            page(
                StatusCode::OK,
                "Continue to your application",
                &format!(
                    "<p>You are signed in as {}.</p><p><a href=\"{}\">Continue to your application</a> {}</p>\
                     <p>If you did not ask to sign in, close this page.</p>",
                    escape(user_id.as_str()),
                    escape(&redirect_url),
                    if host.is_empty() { String::new() } else { format!("at {}", escape(&host)) },
                ),
            )
        }
        Err(e) => {
            tracing::info!(error = %e, "sign-in through the identity provider failed");
            failure(status_of(&e), &e)
        }
    }
}

/// # POST /_synapse/client/oidc/backchannel_logout
///
/// The provider ends an identity's sessions (OpenID Connect Back-Channel Logout 1.0): a
/// form with the signed `logout_token`; 200 when done, 400 with an OAuth error otherwise.
async fn backchannel_logout(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let token = url::form_urlencoded::parse(&body).find(|(k, _)| k == "logout_token").map(|(_, v)| v.into_owned());
    let outcome = match token {
        Some(token) => state.sso.backchannel_logout(&state.accounts, &token).await,
        None => Err(SsoError::IdToken("no logout_token".into())),
    };
    let mut response = match outcome {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => {
            tracing::info!(error = %e, "back-channel logout refused");
            let status = if matches!(e, SsoError::Server(_)) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::BAD_REQUEST
            };
            let body = serde_json::json!({ "error": "invalid_request", "error_description": e.to_string() });
            (status, axum::Json(body)).into_response()
        }
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn status_of(error: &SsoError) -> StatusCode {
    match error {
        SsoError::UnknownProvider => StatusCode::NOT_FOUND,
        SsoError::Session => StatusCode::BAD_REQUEST,
        SsoError::Refused(_) | SsoError::IdToken(_) => StatusCode::FORBIDDEN,
        SsoError::Provider(_) => StatusCode::BAD_GATEWAY,
        SsoError::Config(_) | SsoError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn failure(status: StatusCode, error: &SsoError) -> Response {
    let shown = match error {
        // Details of a server fault are for the log, not the browser.
        SsoError::Server(_) | SsoError::Config(_) => "the server could not complete the sign-in".to_owned(),
        other => other.to_string(),
    };
    page(status, "Sign-in failed", &format!("<p>{}</p>", escape(&shown)))
}

pub(super) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{0}</title></head>\
         <body><h1>{0}</h1>{body}</body></html>",
        escape(title)
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    response
}

/// A cookie of the request.
pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}
