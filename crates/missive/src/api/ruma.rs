//! The bridge between axum and ruma's endpoint types: one extractor that reads, authenticates
//! and parses any ruma request, one wrapper that serialises any ruma response, and the
//! route helper that registers an endpoint under every path ruma knows for it.

use std::future::Future;

use axum::{
    Router,
    body::Bytes,
    extract::{FromRequest, Path, Request, State},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use http::StatusCode;
use ruma::api::{
    IncomingRequest, OutgoingResponse,
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken, NoAuthentication,
    },
    path_builder::PathBuilder,
};

use super::AppState;
use crate::{
    accounts::{Identity, UiaRequest},
    error::Error,
    rooms::notify::held_room_rule_id,
};

/// How an endpoint authenticates, as ruma declares it.
pub trait AuthRequirement {
    /// `Some(true)`: token required; `Some(false)`: optional; `None`: never.
    const TOKEN: Option<bool>;
    /// Whether the request must carry another server's X-Matrix signature.
    const SERVER_SIGNED: bool = false;
}
impl AuthRequirement for ruma::api::federation::authentication::ServerSignatures {
    const TOKEN: Option<bool> = None;
    const SERVER_SIGNED: bool = true;
}
impl AuthRequirement for AccessToken {
    const TOKEN: Option<bool> = Some(true);
}
impl AuthRequirement for AccessTokenOptional {
    const TOKEN: Option<bool> = Some(false);
}
impl AuthRequirement for AppserviceToken {
    const TOKEN: Option<bool> = Some(true);
}
impl AuthRequirement for AppserviceTokenOptional {
    const TOKEN: Option<bool> = Some(false);
}
impl AuthRequirement for NoAuthentication {
    const TOKEN: Option<bool> = None;
}
impl AuthRequirement for NoAccessToken {
    const TOKEN: Option<bool> = None;
}

/// A parsed ruma request with the identity of its sender, if authenticated.
pub struct Ruma<T> {
    pub body: T,
    pub identity: Option<Identity>,
    /// The server that signed a federation request.
    pub origin: Option<ruma::OwnedServerName>,
    /// The raw JSON body, for endpoints whose ruma type drops fields we need.
    pub json: Bytes,
    /// Where the request comes from, for connection logs and rate limits.
    pub client: ClientInfo,
    method: http::Method,
    path: String,
}

impl<T> Ruma<T> {
    /// The identity of an endpoint that requires authentication.
    pub fn identity(&self) -> &Identity {
        self.identity.as_ref().expect("extractor checked authentication for this endpoint")
    }

    /// The server that signed a federation request.
    pub fn origin(&self) -> &ruma::ServerName {
        self.origin.as_deref().expect("extractor checked the signature for this endpoint")
    }

    /// The operation this request asks user-interactive authentication for: its method,
    /// path and body without `auth`, which must not change during the UIA session.
    pub fn uia_request(&self) -> UiaRequest {
        let mut params = match serde_json::from_slice::<serde_json::Value>(&self.json) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        params.remove("auth");
        UiaRequest { method: self.method.to_string(), path: self.path.clone(), params }
    }
}

/// Finds the access token in the `Authorization` header or the `access_token` query.
pub(crate) fn access_token(parts: &http::request::Parts) -> Option<String> {
    if let Some(header) = parts.headers.get(http::header::AUTHORIZATION)
        && let Ok(value) = header.to_str()
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    let query = parts.uri.query()?;
    url_query_param(query, "access_token")
}

fn url_query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// Text as a URL path segment or query value: everything but ASCII letters and digits
/// percent-encoded.
pub fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl<T> FromRequest<AppState> for Ruma<T>
where
    T: IncomingRequest + Send,
    T::Authentication: AuthRequirement,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let mut path_args: Vec<String> = match Path::<Vec<String>>::from_request_parts(&mut parts, state).await {
            Ok(Path(args)) => args,
            Err(_) => Vec::new(),
        };
        // `…/state/{type}/` and `…/state/{type}` address the empty state key: their routes
        // lack the `{state_key}` segment that ruma's path has (see `route`).
        let matched = matched_path(&parts);
        if let Some(matched) = &matched
            && !matched.ends_with("{state_key}")
            && T::PATH_BUILDER.all_paths().any(|p| p.ends_with("{state_key}"))
        {
            path_args.push(String::new());
        }
        let client = ClientInfo::of(&parts);
        let limit = state.config.max_request_size;
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| Error::TooLarge)?;
        let identity = match (T::Authentication::TOKEN, access_token(&parts)) {
            (None, None) => None,
            // An endpoint open to all may still answer its caller differently (a profile
            // shown to room mates only): a valid token names them, an invalid one is ignored.
            (None, Some(token)) => state.accounts.authenticate(&token).await.ok().filter(|id| !id.is_guest),
            (Some(true), None) => return Err(Error::MissingToken),
            (Some(_), Some(token)) => Some(state.accounts.authenticate(&token).await?),
            (Some(false), None) => None,
        };
        if let Some(identity) = &identity {
            state.accounts.device_seen(identity, client.ip.as_deref(), client.user_agent.as_deref());
        }
        if identity.as_ref().is_some_and(|id| id.is_guest)
            && let Some(matched) = &matched
            && !guest_allowed(&parts.method, matched)
        {
            return Err(Error::GuestAccessForbidden);
        }
        // Verified on the body as signed, before anything reads it differently.
        let origin = match T::Authentication::SERVER_SIGNED {
            true => Some(state.federation.authenticate(&parts, &bytes).await?),
            false => None,
        };
        // Clients post an empty body where every body field is optional (`/join/{room}`,
        // `/leave`, `/logout`): the spec reads it as `{}`. Endpoints whose body is not JSON
        // (media uploads) do not go through this extractor.
        let bytes =
            if bytes.is_empty() && parts.method != http::Method::GET { Bytes::from_static(b"{}") } else { bytes };
        if !bytes.is_empty() && parts.method != http::Method::GET {
            // Distinguish "not JSON at all" from "JSON of the wrong shape", as the spec does.
            if std::str::from_utf8(&bytes).is_err() || serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err()
            {
                return Err(Error::NotJson("request body is not valid JSON".into()));
            }
        }
        let bytes = legacy_password_auth(bytes);
        let bytes = missing_events_defaults(matched.as_deref(), bytes);
        push_rule_args(matched.as_deref(), &mut path_args, &mut parts.uri);
        let method = parts.method.clone();
        let path = parts.uri.path().to_owned();
        let http_req = http::Request::from_parts(parts, bytes.clone());
        let body = T::try_from_http_request(http_req, &path_args).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("query") { Error::InvalidParam(msg) } else { Error::BadJson(msg) }
        })?;
        Ok(Ruma { body, identity, origin, json: bytes, client, method, path })
    }
}

use axum::extract::FromRequestParts;

fn matched_path(parts: &http::request::Parts) -> Option<String> {
    parts.extensions.get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned())
}

/// Reads push rule paths as ruma's ruleset holds the rules: a room rule's ID that is not a
/// room ID, in the path and in `before` and `after`, becomes the ID it is held under (see
/// `held_room_rule_id`); the kind of MSC4306's rules, `postcontent` in the ruleset and in
/// clients' paths, is `io.element.msc4306.postcontent` to ruma's path parser.
fn push_rule_args(matched: Option<&str>, path_args: &mut [String], uri: &mut http::Uri) {
    if !matched.is_some_and(|m| m.contains("/pushrules/")) {
        return;
    }
    match path_args.first().map(String::as_str) {
        Some("postcontent") => {
            path_args[0] = "io.element.msc4306.postcontent".to_owned();
            return;
        }
        Some("room") => {}
        _ => return,
    }
    if let Some(id) = path_args.get_mut(1) {
        *id = held_room_rule_id(id).into_owned();
    }
    let Some(query) = uri.query() else { return };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key @ ("before" | "after"), value)) => {
                let held = held_room_rule_id(&percent_decode(value)).into_owned();
                format!("{key}={}", percent_encode(&held))
            }
            _ => pair.to_owned(),
        })
        .collect();
    if let Ok(rewritten) = format!("{}?{}", uri.path(), query.join("&")).parse() {
        *uri = rewritten;
    }
}

/// Rewrites the `m.login.password` UIA stage of older clients (`"user": "…"`) into the
/// identifier form ruma reads (`"identifier": {"type": "m.id.user", …}`).
fn legacy_password_auth(bytes: Bytes) -> Bytes {
    if !bytes.windows(7).any(|w| w == b"\"auth\":" || w == b"\"auth\" ") {
        return bytes;
    }
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return bytes;
    };
    let Some(serde_json::Value::Object(auth)) = body.get_mut("auth") else { return bytes };
    if auth.get("type").and_then(|t| t.as_str()) != Some("m.login.password") || auth.contains_key("identifier") {
        return bytes;
    }
    let Some(user) = auth.remove("user") else { return bytes };
    auth.insert("identifier".into(), serde_json::json!({ "type": "m.id.user", "user": user }));
    serde_json::to_vec(&body).map(Bytes::from).unwrap_or(bytes)
}

/// A `get_missing_events` body without `earliest_events` or `latest_events` (Synapse
/// takes it, and servers send it) reads them as empty, which asks for nothing. Applied after
/// the request's signature was checked on the body as sent.
fn missing_events_defaults(matched: Option<&str>, bytes: Bytes) -> Bytes {
    if !matched.is_some_and(|m| m.contains("/get_missing_events/")) {
        return bytes;
    }
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return bytes;
    };
    for field in ["earliest_events", "latest_events"] {
        body.entry(field).or_insert_with(|| serde_json::json!([]));
    }
    serde_json::to_vec(&body).map(Bytes::from).unwrap_or(bytes)
}

/// The endpoints a guest account may call (the spec's guest access module, plus the
/// encryption endpoints guests need to read encrypted rooms), as `(method, path after the
/// version)` with `*` for any one segment.
const GUEST_ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "rooms/*/state"),
    ("GET", "rooms/*/state/*"),
    ("GET", "rooms/*/state/*/"),
    ("GET", "rooms/*/state/*/*"),
    ("GET", "rooms/*/context/*"),
    ("GET", "rooms/*/event/*"),
    ("GET", "rooms/*/messages"),
    ("GET", "rooms/*/members"),
    ("GET", "rooms/*/joined_members"),
    ("GET", "rooms/*/initialSync"),
    ("GET", "rooms/*/relations/*"),
    ("GET", "rooms/*/relations/*/*"),
    ("GET", "rooms/*/relations/*/*/*"),
    ("GET", "sync"),
    ("GET", "events"),
    ("PUT", "rooms/*/send/*/*"),
    ("PUT", "rooms/*/state/*"),
    ("PUT", "rooms/*/state/*/"),
    ("PUT", "rooms/*/state/*/*"),
    ("POST", "rooms/*/join"),
    ("POST", "join/*"),
    ("POST", "rooms/*/leave"),
    ("PUT", "rooms/*/typing/*"),
    ("POST", "rooms/*/receipt/*/*"),
    ("POST", "rooms/*/read_markers"),
    ("GET", "profile/*"),
    ("GET", "profile/*/*"),
    ("PUT", "profile/*/*"),
    ("GET", "devices"),
    ("GET", "devices/*"),
    ("PUT", "devices/*"),
    ("PUT", "sendToDevice/*/*"),
    ("GET", "account/whoami"),
    ("GET", "capabilities"),
    ("POST", "register"),
    ("GET", "register/available"),
    ("POST", "logout"),
    ("GET", "user/*/account_data/*"),
    ("PUT", "user/*/account_data/*"),
    ("GET", "user/*/rooms/*/account_data/*"),
    ("PUT", "user/*/rooms/*/account_data/*"),
    ("GET", "user/*/filter/*"),
    ("POST", "user/*/filter"),
    ("GET", "pushrules/"),
    ("GET", "presence/*/status"),
    ("PUT", "presence/*/status"),
    ("POST", "keys/upload"),
    ("POST", "keys/query"),
    ("POST", "keys/claim"),
    ("GET", "keys/changes"),
    ("GET", "publicRooms"),
    ("GET", "directory/room/*"),
];

/// Whether a guest may call the endpoint matched by `template` (an axum route path).
fn guest_allowed(method: &http::Method, template: &str) -> bool {
    let Some(rest) = template.strip_prefix("/_matrix/client/") else { return true };
    let path = rest.split_once('/').map_or("", |(_, path)| path);
    let segments: Vec<&str> = path.split('/').collect();
    GUEST_ENDPOINTS.iter().any(|(m, pattern)| {
        let pattern: Vec<&str> = pattern.split('/').collect();
        *m == method.as_str()
            && pattern.len() == segments.len()
            && pattern.iter().zip(&segments).all(|(p, s)| *p == "*" || p == s)
    })
}

/// The authenticated user of a request served by a plain axum handler (endpoints that ruma
/// does not describe): the same token rules as [`Ruma`].
pub struct Authenticated(pub Identity);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = access_token(parts).ok_or(Error::MissingToken)?;
        let identity = state.accounts.authenticate(&token).await?;
        // Every authenticated request counts as the device's use (connection logs).
        let client = ClientInfo::of(parts);
        state.accounts.device_seen(&identity, client.ip.as_deref(), client.user_agent.as_deref());
        Ok(Authenticated(identity))
    }
}

/// Where a request comes from, for the connection logs: the peer's address and its user
/// agent (at most 512 characters).
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// Where the request of these parts comes from.
    pub fn of(parts: &http::request::Parts) -> Self {
        let user_agent = parts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect::<String>());
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<crate::tls::ClientAddr>>()
            .map(|c| c.0.0.ip().to_string());
        ClientInfo { ip, user_agent }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientInfo::of(parts))
    }
}

/// A ruma response, serialised for axum.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(res) => {
                let (parts, body) = res.into_parts();
                Response::from_parts(parts, axum::body::Body::from(body))
            }
            Err(e) => Error::Internal(format!("response serialisation failed: {e}")).into_response(),
        }
    }
}

/// Registers `handler` for the ruma endpoint `T` under all of its paths.
pub fn route<T, H, F, R>(router: Router<AppState>, handler: H) -> Router<AppState>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthRequirement,
    H: Fn(AppState, Ruma<T>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<R, Error>> + Send + 'static,
    R: IntoResponse,
{
    let method = MethodFilter::try_from(T::METHOD).expect("ruma endpoints use standard methods");
    let mut router = router;
    for path in T::PATH_BUILDER.all_paths() {
        let mut paths = vec![path.to_owned()];
        // An empty state key leaves a trailing slash, which no `{param}` matches, and the
        // spec lets clients drop that slash too.
        if let Some(prefix) = path.strip_suffix("{state_key}") {
            paths.push(prefix.to_owned());
            paths.push(prefix.trim_end_matches('/').to_owned());
        }
        for path in paths {
            let handler = handler.clone();
            router = router.route(
                &path,
                on(method, move |State(state): State<AppState>, req: Ruma<T>| {
                    let handler = handler.clone();
                    async move { handler(state, req).await.map(IntoResponse::into_response) }
                }),
            );
        }
    }
    router
}

/// Answers unknown endpoints as the spec asks. A malformed path under `/pushrules/` (no
/// scope, no kind, an unknown attribute) is a bad request rather than an unknown endpoint,
/// as Synapse answers and clients expect.
pub async fn unrecognized(uri: http::Uri) -> Error {
    if malformed_push_rule(&uri) {
        return Error::Unknown("malformed push rule path".into());
    }
    Error::Unrecognized { method_not_allowed: false }
}

/// Answers a known path asked with a method it does not serve: 405 `M_UNRECOGNIZED` with
/// the spec's error body (or 400 for a malformed push rule path, as above).
pub async fn method_not_allowed(uri: http::Uri) -> Error {
    if malformed_push_rule(&uri) {
        return Error::Unknown("malformed push rule path".into());
    }
    Error::Unrecognized { method_not_allowed: true }
}

fn malformed_push_rule(uri: &http::Uri) -> bool {
    uri.path()
        .strip_prefix("/_matrix/client/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, path)| path.starts_with("pushrules/"))
}

/// A JSON response with status 200.
pub fn json(value: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}
