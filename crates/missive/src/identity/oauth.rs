//! The Matrix OAuth 2.0 API (spec v1.15): Missive is its own authorization server, whose
//! login step is the sign-in at the administration's identity provider, so that Element X
//! signs in without a separate service. Clients register themselves (RFC 7591, public
//! clients only), get a code through the authorization-code grant with PKCE (S256), and
//! trade it at the token endpoint for the very access and refresh tokens `/login` issues, so
//! that both paths behave the same everywhere else; revocation (RFC 7009) signs the device
//! out.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine;
use ruma::OwnedUserId;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    accounts::{Accounts, IssuedSession},
    store::{Store, now_ms},
};

/// How long an authorization code may wait for its exchange (RFC 6749 suggests 10 min).
const CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// Codes, pages and browser sessions waiting at most, each: beyond, the oldest are dropped.
const CODES_MAX: usize = 10_000;

/// The scope granting the whole client-server API, stable and as MSC2967 wrote it.
const API_SCOPES: [&str; 2] = ["urn:matrix:client:api:*", "urn:matrix:org.matrix.msc2967.client:api:*"];
/// Prefixes of the scope naming the device the token is for.
const DEVICE_SCOPES: [&str; 2] = ["urn:matrix:client:device:", "urn:matrix:org.matrix.msc2967.client:device:"];

/// An OAuth 2.0 error (RFC 6749 section 5.2), with its HTTP status.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    pub status: u16,
    pub code: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, code: &'static str, description: impl Into<String>) -> Self {
        Self { status, code, description: description.into() }
    }

    /// The JSON body of the error.
    pub fn body(&self) -> Value {
        json!({ "error": self.code, "error_description": self.description })
    }
}

impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "storage failure in the OAuth API");
        Self::new(500, "server_error", "the server could not complete the request")
    }
}

impl From<crate::error::Error> for OAuthError {
    fn from(e: crate::error::Error) -> Self {
        let (status, _) = e.status_and_code();
        match status.as_u16() {
            401 | 403 => Self::new(400, "invalid_grant", e.to_string()),
            _ => {
                tracing::error!(error = %e, "failure in the OAuth API");
                Self::new(500, "server_error", "the server could not complete the request")
            }
        }
    }
}

/// A checked authorization request, waiting for the user's sign-in.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    code_challenge: String,
    scope: String,
    device_id: String,
    /// Whether the answer goes in the fragment (`response_mode=fragment`).
    fragment: bool,
}

impl AuthorizationRequest {
    /// The client's redirect URI with the given parameters and the request's state.
    pub fn redirect_with(&self, params: &[(&str, &str)]) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in params {
            pairs.append_pair(key, value);
        }
        if let Some(state) = &self.state {
            pairs.append_pair("state", state);
        }
        let encoded = pairs.finish();
        let separator = if self.fragment {
            '#'
        } else if self.redirect_uri.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{separator}{encoded}", self.redirect_uri)
    }
}

/// An issued code: what its exchange must match and what it grants.
struct Grant {
    request: AuthorizationRequest,
    user_id: OwnedUserId,
}

/// Values handed out under random secrets (codes, page IDs, cookies), kept in memory under
/// the secret's digest for `ttl`, at most [`CODES_MAX`] (the oldest dropped first, so that
/// a flood cannot grow memory).
struct Secrets<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (V, Instant)>>,
}

impl<V> Secrets<V> {
    fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Default::default() }
    }

    fn insert(&self, secret: &str, value: V) {
        let mut entries = self.entries.lock().expect("oauth secrets poisoned");
        entries.retain(|_, (_, since)| since.elapsed() < self.ttl);
        if entries.len() >= CODES_MAX
            && let Some(oldest) = entries.iter().min_by_key(|(_, (_, since))| *since).map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(digest(secret), (value, Instant::now()));
    }

    /// The value of a secret, once: taken whether or not it is still valid.
    fn take(&self, secret: &str) -> Option<V> {
        let mut entries = self.entries.lock().expect("oauth secrets poisoned");
        entries.remove(&digest(secret)).filter(|(_, since)| since.elapsed() < self.ttl).map(|(v, _)| v)
    }

    /// The value of a secret, if still valid.
    fn get(&self, secret: &str) -> Option<V>
    where
        V: Clone,
    {
        let entries = self.entries.lock().expect("oauth secrets poisoned");
        entries.get(&digest(secret)).filter(|(_, since)| since.elapsed() < self.ttl).map(|(v, _)| v.clone())
    }
}

/// Tokens as the token endpoint answers them.
pub struct Tokens {
    pub session: IssuedSession,
    pub scope: String,
}

/// The OAuth 2.0 service.
pub struct OAuth {
    store: Store,
    /// The issuer: the server's public base URL, without a trailing slash.
    issuer: String,
    codes: Secrets<Grant>,
    /// Browsers signed in to the account management pages, by cookie.
    browsers: Secrets<OwnedUserId>,
    /// Authorizations waiting at the password page (a server without single sign-on),
    /// by the page's request ID.
    password_pages: Secrets<AuthorizationRequest>,
}

/// How long a browser stays signed in to the account management pages.
const BROWSER_TTL: Duration = Duration::from_secs(15 * 60);

/// Where the endpoints are, under the issuer.
pub const AUTHORIZE_PATH: &str = "/_missive/oauth2/authorize";
pub const TOKEN_PATH: &str = "/_missive/oauth2/token";
pub const REGISTRATION_PATH: &str = "/_missive/oauth2/registration";
pub const REVOCATION_PATH: &str = "/_missive/oauth2/revoke";
/// The account management pages: the user's sessions, each of which they may end.
pub const ACCOUNT_PATH: &str = "/_missive/account";

impl OAuth {
    /// The service for an issuer (the server's public base URL).
    pub fn new(store: Store, issuer: &str) -> Self {
        Self {
            store,
            issuer: issuer.trim_end_matches('/').to_owned(),
            codes: Secrets::new(CODE_TTL),
            browsers: Secrets::new(BROWSER_TTL),
            password_pages: Secrets::new(CODE_TTL),
        }
    }

    /// The authorization server metadata (`GET /_matrix/client/v1/auth_metadata`).
    pub fn metadata(&self) -> Value {
        let at = |path: &str| format!("{}{path}", self.issuer);
        json!({
            "issuer": format!("{}/", self.issuer),
            "authorization_endpoint": at(AUTHORIZE_PATH),
            "token_endpoint": at(TOKEN_PATH),
            "registration_endpoint": at(REGISTRATION_PATH),
            "revocation_endpoint": at(REVOCATION_PATH),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "fragment"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": ["openid", API_SCOPES[0], format!("{}*", DEVICE_SCOPES[0])],
            "account_management_uri": at(ACCOUNT_PATH),
            "account_management_actions_supported":
                ["org.matrix.sessions_list", "org.matrix.session_view", "org.matrix.session_end"],
            "prompt_values_supported": ["login"],
        })
    }

    /// Registers a client (RFC 7591) after checking its metadata as the spec asks: a
    /// public client (`none` authentication) of the code grant, with redirect URIs that
    /// belong to it. Answers the registration.
    pub async fn register(&self, metadata: Value) -> Result<Value, OAuthError> {
        let bad = |what: &str| OAuthError::new(400, "invalid_client_metadata", what.to_owned());
        let object = metadata.as_object().ok_or_else(|| bad("the client metadata is not a JSON object"))?;
        let client_uri = object
            .get("client_uri")
            .and_then(Value::as_str)
            .and_then(|u| url::Url::parse(u).ok())
            .filter(|u| u.scheme() == "https" && u.username().is_empty() && u.password().is_none())
            .ok_or_else(|| bad("client_uri must be an https URL"))?;
        let host = client_uri.host_str().unwrap_or_default().to_owned();
        let native = match object.get("application_type").and_then(Value::as_str).unwrap_or("web") {
            "web" => false,
            "native" => true,
            _ => return Err(bad("application_type must be web or native")),
        };
        if object.get("token_endpoint_auth_method").and_then(Value::as_str).unwrap_or("none") != "none" {
            return Err(bad("only public clients (token_endpoint_auth_method none) are supported"));
        }
        let grant_types: Vec<&str> = match object.get("grant_types") {
            None => vec!["authorization_code"],
            Some(v) => v
                .as_array()
                .ok_or_else(|| bad("grant_types must be a list"))?
                .iter()
                .filter_map(Value::as_str)
                .collect(),
        };
        if !grant_types.contains(&"authorization_code") {
            return Err(bad("the authorization_code grant is the one this server offers"));
        }
        let response_types = object.get("response_types").and_then(Value::as_array);
        if response_types.is_some_and(|r| !r.iter().any(|t| t == "code")) {
            return Err(bad("response_types must include code"));
        }
        let redirect_uris: Vec<&str> = object
            .get("redirect_uris")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if redirect_uris.is_empty() {
            return Err(bad("redirect_uris must list at least one URI"));
        }
        for uri in &redirect_uris {
            if !redirect_allowed(uri, &host, native) {
                return Err(OAuthError::new(400, "invalid_redirect_uri", format!("{uri} does not belong to {host}")));
            }
        }
        for key in ["logo_uri", "policy_uri", "tos_uri"] {
            if let Some(uri) = object.get(key).and_then(Value::as_str)
                && !url::Url::parse(uri).is_ok_and(|u| u.scheme() == "https" && u.host_str() == Some(host.as_str()))
            {
                return Err(bad(&format!("{key} must be an https URL of {host}")));
            }
        }
        let client_id = random_id(16);
        let mut registered = object.clone();
        registered.insert("client_id".into(), json!(client_id));
        registered.insert("client_id_issued_at".into(), json!(now_ms() / 1000));
        registered.insert("token_endpoint_auth_method".into(), json!("none"));
        let stored = Value::Object(registered);
        self.store.insert_oauth_client(&client_id, &stored.to_string()).await?;
        tracing::info!(client_id, client_uri = %client_uri, "OAuth client registered");
        Ok(stored)
    }

    /// Checks an authorization request. An unknown client or a redirect URI it did not
    /// register is an error shown to the user (never a redirect); the rest are errors for
    /// the client, sent to its redirect URI.
    pub async fn authorization_request(
        &self,
        query: &HashMap<String, String>,
    ) -> Result<AuthorizationRequest, (OAuthError, Option<Box<AuthorizationRequest>>)> {
        let get = |k: &str| query.get(k).map(String::as_str);
        let client_id =
            get("client_id").ok_or_else(|| (OAuthError::new(400, "invalid_request", "no client_id"), None))?;
        let client = self
            .client(client_id)
            .await
            .map_err(|e| (e, None))?
            .ok_or_else(|| (OAuthError::new(400, "invalid_client", "unknown client"), None))?;
        let redirect_uri = get("redirect_uri").filter(|uri| registered_redirect(&client, uri)).ok_or_else(|| {
            (OAuthError::new(400, "invalid_request", "the redirect_uri is not one the client registered"), None)
        })?;
        let mut request = AuthorizationRequest {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            state: get("state").map(str::to_owned),
            code_challenge: String::new(),
            scope: String::new(),
            device_id: String::new(),
            fragment: get("response_mode") == Some("fragment"),
        };
        let fail = |code: &'static str, what: &str, request: &AuthorizationRequest| {
            Err((OAuthError::new(400, code, what.to_owned()), Some(Box::new(request.clone()))))
        };
        if get("response_mode").is_some_and(|m| m != "query" && m != "fragment") {
            return fail("invalid_request", "response_mode must be query or fragment", &request);
        }
        if get("response_type") != Some("code") {
            return fail("unsupported_response_type", "response_type must be code", &request);
        }
        match (get("code_challenge"), get("code_challenge_method")) {
            (Some(challenge), Some("S256")) if (43..=128).contains(&challenge.len()) => {
                request.code_challenge = challenge.to_owned()
            }
            _ => return fail("invalid_request", "a PKCE code_challenge with the S256 method is required", &request),
        }
        let scope = get("scope").unwrap_or_default();
        let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
        if !scopes.iter().any(|s| API_SCOPES.contains(s)) {
            return fail("invalid_scope", "the scope must include urn:matrix:client:api:*", &request);
        }
        let devices: Vec<&str> =
            scopes.iter().filter_map(|s| DEVICE_SCOPES.iter().find_map(|p| s.strip_prefix(p))).collect();
        match devices.as_slice() {
            [device] if valid_device_id(device) => request.device_id = (*device).to_owned(),
            _ => {
                return fail(
                    "invalid_scope",
                    "the scope must name exactly one device (urn:matrix:client:device:…)",
                    &request,
                );
            }
        }
        if let Some(other) = scopes
            .iter()
            .find(|s| **s != "openid" && !API_SCOPES.contains(s) && !DEVICE_SCOPES.iter().any(|p| s.starts_with(p)))
        {
            return fail("invalid_scope", &format!("unknown scope {other}"), &request);
        }
        request.scope = scopes.join(" ");
        Ok(request)
    }

    /// Issues the code of a signed-in user's authorization: the client's redirect URI with
    /// it.
    pub fn issue_code(&self, request: AuthorizationRequest, user_id: OwnedUserId) -> String {
        let code = random_id(32);
        let redirect = request.redirect_with(&[("code", &code)]);
        tracing::info!(%user_id, client_id = %request.client_id, "OAuth authorization code issued");
        self.codes.insert(&code, Grant { request, user_id });
        redirect
    }

    /// The token endpoint: the authorization-code grant (the code used once, with its
    /// client, redirect URI and PKCE verifier) and the refresh-token grant.
    pub async fn token(&self, accounts: &Accounts, form: &HashMap<String, String>) -> Result<Tokens, OAuthError> {
        let get = |k: &str| form.get(k).map(String::as_str);
        let invalid = |what: &str| OAuthError::new(400, "invalid_request", what.to_owned());
        match get("grant_type") {
            Some("authorization_code") => {
                let code = get("code").ok_or_else(|| invalid("no code"))?;
                // Taken whatever happens next: a code is tried once.
                let grant = self
                    .codes
                    .take(code)
                    .ok_or_else(|| OAuthError::new(400, "invalid_grant", "unknown, used or expired code"))?;
                if get("client_id") != Some(grant.request.client_id.as_str()) {
                    return Err(OAuthError::new(400, "invalid_grant", "the code was issued to another client"));
                }
                if get("redirect_uri") != Some(grant.request.redirect_uri.as_str()) {
                    return Err(OAuthError::new(
                        400,
                        "invalid_grant",
                        "the redirect_uri differs from the authorization's",
                    ));
                }
                let verifier = get("code_verifier").ok_or_else(|| invalid("no code_verifier"))?;
                let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier));
                if challenge != grant.request.code_challenge {
                    return Err(OAuthError::new(
                        400,
                        "invalid_grant",
                        "the code_verifier does not match the challenge",
                    ));
                }
                let session = accounts.login_as(&grant.user_id, Some(&grant.request.device_id), None, true).await?;
                tracing::info!(user_id = %grant.user_id, device_id = %session.device_id, "signed in through OAuth");
                Ok(Tokens { session, scope: grant.request.scope })
            }
            Some("refresh_token") => {
                let token = get("refresh_token").ok_or_else(|| invalid("no refresh_token"))?;
                let session = accounts.refresh(token).await.map_err(|e| match e {
                    crate::error::Error::UnknownToken { .. } | crate::error::Error::Forbidden(_) => {
                        OAuthError::new(400, "invalid_grant", "unknown or used refresh token")
                    }
                    other => other.into(),
                })?;
                let scope = format!("{} {}{}", API_SCOPES[0], DEVICE_SCOPES[0], session.device_id);
                Ok(Tokens { session, scope })
            }
            Some(_) => Err(OAuthError::new(
                400,
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token",
            )),
            None => Err(invalid("no grant_type")),
        }
    }

    /// Revokes a token (RFC 7009): the device it belongs to is signed out, its other
    /// token with it; answers the session that ended. An unknown token is no error.
    pub async fn revoke(
        &self,
        accounts: &Accounts,
        form: &HashMap<String, String>,
    ) -> Result<Option<(OwnedUserId, String)>, OAuthError> {
        let token = form.get("token").ok_or_else(|| OAuthError::new(400, "invalid_request", "no token"))?;
        let Some((user_id, device_id)) = accounts.session_of_token(token).await? else { return Ok(None) };
        accounts.delete_devices(&user_id, std::slice::from_ref(&device_id)).await?;
        tracing::info!(%user_id, device_id, "session revoked through OAuth");
        Ok(Some((user_id, device_id)))
    }

    /// Keeps an authorization for the password page: answers the ID the page's form
    /// sends back.
    pub fn await_password(&self, request: AuthorizationRequest) -> String {
        let id = random_id(24);
        self.password_pages.insert(&id, request);
        id
    }

    /// The authorization a password page's form names, once.
    pub fn take_password_page(&self, id: &str) -> Option<AuthorizationRequest> {
        self.password_pages.take(id)
    }

    /// Signs a browser in to the account management pages (after an IAM sign-in):
    /// answers the cookie's value.
    pub fn open_browser_session(&self, user_id: OwnedUserId) -> String {
        let secret = random_id(32);
        self.browsers.insert(&secret, user_id);
        secret
    }

    /// The user a browser's account cookie signs in, if still valid.
    pub fn browser_user(&self, cookie: &str) -> Option<OwnedUserId> {
        self.browsers.get(cookie)
    }

    /// The token a browser's forms carry, bound to its cookie (a page of another site
    /// cannot know it, so it cannot end a session in the user's name).
    pub fn form_token(cookie: &str) -> String {
        digest(&format!("form:{cookie}"))
    }

    async fn client(&self, client_id: &str) -> Result<Option<Value>, OAuthError> {
        Ok(self.store.oauth_client(client_id).await?.and_then(|m| serde_json::from_str(&m).ok()))
    }
}

/// Whether a redirect URI may be registered by a client of `host`: a web client's are
/// https URLs of its host (or a subdomain); a native client's use a private scheme named
/// after its host reversed, or the loopback over plain HTTP (any port).
fn redirect_allowed(uri: &str, host: &str, native: bool) -> bool {
    let Ok(url) = url::Url::parse(uri) else { return false };
    if url.fragment().is_some() {
        return false;
    }
    let of_host = |h: &str| h == host || h.ends_with(&format!(".{host}"));
    if !native {
        return url.scheme() == "https" && url.host_str().is_some_and(of_host);
    }
    match url.scheme() {
        "http" => matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")),
        "https" => url.host_str().is_some_and(of_host),
        scheme => {
            let reversed: Vec<&str> = host.split('.').rev().collect();
            scheme.contains('.')
                && (scheme == reversed.join(".") || scheme.starts_with(&format!("{}.", reversed.join("."))))
        }
    }
}

/// Whether a redirect URI is one the client registered; loopback URIs match whatever
/// their port (RFC 8252: native apps pick a free port at run time).
fn registered_redirect(client: &Value, uri: &str) -> bool {
    let Some(list) = client["redirect_uris"].as_array() else { return false };
    list.iter().filter_map(Value::as_str).any(|registered| {
        if registered == uri {
            return true;
        }
        match (url::Url::parse(registered), url::Url::parse(uri)) {
            (Ok(mut a), Ok(mut b))
                if a.scheme() == "http" && matches!(a.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) =>
            {
                let _ = a.set_port(None);
                let _ = b.set_port(None);
                a == b
            }
            _ => false,
        }
    })
}

/// A device ID a client may choose: what the spec allows in the device scope.
fn valid_device_id(id: &str) -> bool {
    (5..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c))
}

fn random_id(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_belong_to_their_client() {
        assert!(redirect_allowed("https://app.example.org/cb", "example.org", false));
        assert!(!redirect_allowed("https://evil.example/cb", "example.org", false));
        assert!(!redirect_allowed("http://example.org/cb", "example.org", false));
        assert!(redirect_allowed("org.example.app:/cb", "example.org", true));
        assert!(redirect_allowed("http://127.0.0.1:1234/cb", "example.org", true));
        assert!(!redirect_allowed("com.evil:/cb", "example.org", true));
        assert!(!redirect_allowed("javascript:alert(1)", "example.org", true));
    }

    #[test]
    fn loopback_redirects_match_whatever_their_port() {
        let client = json!({ "redirect_uris": ["http://127.0.0.1/cb", "org.example.app:/cb"] });
        assert!(registered_redirect(&client, "http://127.0.0.1:5000/cb"));
        assert!(registered_redirect(&client, "org.example.app:/cb"));
        assert!(!registered_redirect(&client, "http://127.0.0.1:5000/other"));
        assert!(!registered_redirect(&client, "org.example.app:/other"));
    }
}
