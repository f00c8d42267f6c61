//! Accounts and devices: registration, login, tokens, user-interactive authentication.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{Rng, RngCore, distributions::Alphanumeric};
use ruma::{
    OwnedDeviceId, OwnedUserId, UserId,
    api::client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
};
use sha2::{Digest, Sha256};

use crate::{
    config::{Config, RegistrationMode},
    error::{Error, Result},
    store::{NewAccount, NewSession, Store, now_ms},
    sync::stream::Streams,
};

/// An authenticated request's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub is_admin: bool,
    /// A guest account: limited to the spec's guest endpoints and guest-access rooms.
    pub is_guest: bool,
}

/// Tokens handed to a client after login or registration.
#[derive(Debug, Clone)]
pub struct IssuedSession {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<Duration>,
}

/// The operation a user-interactive authentication session authorises: the request's
/// method, path and body without `auth`. A session authorises one operation only.
#[derive(Debug, Clone, PartialEq)]
pub struct UiaRequest {
    pub method: String,
    pub path: String,
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// A user-interactive authentication session in progress (or complete, until it expires,
/// so that a client retrying the completed request gets the same answer).
#[derive(Debug, Clone)]
struct UiaSession {
    completed: Vec<AuthType>,
    user_id: Option<String>,
    created: Instant,
    request: UiaRequest,
    /// The account a completed registration session created.
    registered: Option<OwnedUserId>,
}

/// What `/register` asks for, from the request or, when a later stage of its UIA session
/// sends only `auth`, from the session's first request.
#[derive(Debug, Default, serde::Deserialize)]
pub struct RegistrationParams {
    pub username: Option<String>,
    pub password: Option<String>,
    pub device_id: Option<String>,
    pub initial_device_display_name: Option<String>,
    #[serde(default)]
    pub inhibit_login: bool,
    #[serde(default)]
    pub refresh_token: bool,
    /// A guest's access token: the guest account becomes a full account (as Synapse does).
    pub guest_access_token: Option<String>,
}

const UIA_SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The accounts service.
pub struct Accounts {
    store: Store,
    streams: Arc<Streams>,
    config: Arc<Config>,
    uia: Mutex<HashMap<String, UiaSession>>,
    nonces: Mutex<HashMap<String, Instant>>,
    /// Bounds concurrent password hashes: each takes `memory_kib` of memory and a CPU.
    hashing: tokio::sync::Semaphore,
    /// Resolved access tokens (by digest). Every path that ends a session clears it, so a
    /// cached identity is never one the database no longer holds.
    tokens: Mutex<HashMap<String, (Identity, Option<i64>)>>,
    /// When each device's last use was last written: at most once per [`SEEN_INTERVAL`].
    seen: Arc<Mutex<HashMap<(OwnedUserId, OwnedDeviceId), Instant>>>,
}

/// How often a device's last use (time, address, client) is written to the store.
const SEEN_INTERVAL: Duration = Duration::from_secs(300);

/// SHA-256 of a token, the form in which tokens are stored.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random alphanumeric string (device IDs, tokens, opaque event and key IDs).
pub fn random_string(len: usize) -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(bytes))
}

impl Accounts {
    /// Creates the service.
    pub fn new(store: Store, streams: Arc<Streams>, config: Arc<Config>) -> Self {
        Self {
            store,
            streams,
            config,
            uia: Mutex::new(HashMap::new()),
            seen: Default::default(),
            nonces: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            hashing: tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
        }
    }

    /// A single-use nonce for shared-secret registration.
    pub fn new_nonce(&self) -> String {
        let nonce = random_string(32);
        let mut nonces = self.nonces.lock().expect("nonce lock poisoned");
        nonces.retain(|_, t| t.elapsed() < Duration::from_secs(60));
        nonces.insert(nonce.clone(), Instant::now());
        nonce
    }

    /// Consumes a nonce; `false` if unknown or expired.
    pub fn take_nonce(&self, nonce: &str) -> bool {
        let mut nonces = self.nonces.lock().expect("nonce lock poisoned");
        nonces.remove(nonce).is_some_and(|t| t.elapsed() < Duration::from_secs(60))
    }

    fn server_name(&self) -> &str {
        &self.config.server_name
    }

    /// Hashes a password with Argon2id at the configured cost, off the async runtime.
    pub async fn hash_password(&self, password: &str) -> Result<String> {
        let hashing = self.config.password_hashing.clone();
        let password = password.to_owned();
        let _permit = self.hashing.acquire().await.map_err(|e| Error::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let params = argon2::Params::new(hashing.memory_kib, hashing.iterations, hashing.parallelism, None)
                .map_err(|e| Error::Internal(e.to_string()))?;
            let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let salt = SaltString::generate(&mut rand::thread_rng());
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(e.to_string()))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    async fn verify_password(&self, hash: &str, password: &str) -> bool {
        let hash = hash.to_owned();
        let password = password.to_owned();
        let Ok(_permit) = self.hashing.acquire().await else { return false };
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .unwrap_or(false)
    }

    /// Parses a localpart or full user ID of this server.
    pub fn local_user_id(&self, user: &str) -> Result<OwnedUserId> {
        let user_id = if user.starts_with('@') {
            UserId::parse(user)
        } else {
            UserId::parse(format!("@{}:{}", user.to_lowercase(), self.server_name()))
        }
        .map_err(|e| Error::InvalidUsername(e.to_string()))?;
        if user_id.server_name() != self.server_name() {
            return Err(Error::InvalidUsername("user ID belongs to another server".into()));
        }
        Ok(user_id)
    }

    /// Validates a desired localpart (spec: lowercase letters, digits, `._=-/+`).
    pub fn validate_localpart(&self, localpart: &str) -> Result<OwnedUserId> {
        if localpart.is_empty()
            || !localpart.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
        {
            return Err(Error::InvalidUsername("user names may contain only a-z, 0-9, and . _ = - / +".into()));
        }
        let user_id = UserId::parse(format!("@{localpart}:{}", self.server_name()))
            .map_err(|e| Error::InvalidUsername(e.to_string()))?;
        if user_id.as_str().len() > 255 {
            return Err(Error::InvalidUsername("user ID too long".into()));
        }
        Ok(user_id)
    }

    /// Whether a localpart is free.
    pub async fn is_available(&self, localpart: &str) -> Result<bool> {
        let user_id = self.validate_localpart(localpart)?;
        if self.store.user_exists(user_id.as_str()).await? {
            return Err(Error::UserInUse);
        }
        Ok(true)
    }

    fn new_uia_session(&self, user_id: Option<&UserId>, request: &UiaRequest) -> String {
        let session = random_string(24);
        let mut sessions = self.uia.lock().expect("uia lock poisoned");
        sessions.retain(|_, s| s.created.elapsed() < UIA_SESSION_LIFETIME);
        sessions.insert(
            session.clone(),
            UiaSession {
                completed: Vec::new(),
                user_id: user_id.map(ToString::to_string),
                created: Instant::now(),
                request: request.clone(),
                registered: None,
            },
        );
        session
    }

    fn uia_challenge(
        &self,
        flows: Vec<AuthFlow>,
        session: String,
        completed: Vec<AuthType>,
        error: Option<Error>,
    ) -> Error {
        let mut info = UiaaInfo::new(flows);
        info.session = Some(session);
        // No stage offered here takes parameters, but clients expect the key.
        info.params = serde_json::value::to_raw_value(&serde_json::json!({})).ok();
        info.completed = completed;
        if let Some(err) = error {
            let (_, code) = err.status_and_code();
            info.auth_error =
                serde_json::from_value(serde_json::json!({ "errcode": code, "error": err.to_string() })).ok();
        }
        Error::Uia(Box::new(info))
    }

    /// Runs user-interactive authentication for `request`: once one flow is complete,
    /// returns the session and the operation it authorised (whose parameters come from the
    /// session's first request when this one sent only `auth`); otherwise the 401 challenge
    /// listing what is left. A session authorises one operation: another one is refused.
    async fn check_uia(
        &self,
        flows: Vec<AuthFlow>,
        auth: Option<&AuthData>,
        user_id: Option<&UserId>,
        request: &UiaRequest,
    ) -> Result<(String, UiaRequest)> {
        let Some(auth) = auth else {
            let session = self.new_uia_session(user_id, request);
            return Err(self.uia_challenge(flows, session, Vec::new(), None));
        };
        let session = match auth.session() {
            Some(s) => s.to_owned(),
            None => self.new_uia_session(user_id, request),
        };
        let state = self.uia.lock().expect("uia lock poisoned").get(&session).cloned();
        let Some(mut state) = state else {
            return Err(Error::forbidden("unknown user-interactive authentication session"));
        };
        if state.user_id.as_deref() != user_id.map(UserId::as_str) {
            return Err(Error::forbidden("authentication session belongs to another user"));
        }
        let mut request = request.clone();
        if request.params.is_empty() {
            request.params = state.request.params.clone();
        }
        if request != state.request {
            return Err(Error::forbidden("the requested operation changed during the authentication session"));
        }
        if flows.iter().any(|f| f.stages.iter().all(|s| state.completed.contains(s))) {
            return Ok((session, request));
        }
        if let AuthData::FallbackAcknowledgement(_) = auth {
            // The session alone, once a fallback page was shown: what is left, if anything.
            return Err(self.uia_challenge(flows, session, state.completed, None));
        }
        let stage_error = match auth {
            AuthData::Dummy(_) => None,
            AuthData::RegistrationToken(t) => {
                (!self.config.registration_tokens.iter().any(|known| known.expose() == t.token))
                    .then(|| Error::forbidden("invalid registration token"))
            }
            AuthData::Password(p) => {
                let claimed = match &p.identifier {
                    UserIdentifier::Matrix(m) => self.local_user_id(&m.user).ok(),
                    _ => None,
                };
                if let (Some(claimed), Some(expected)) = (&claimed, user_id)
                    && claimed != expected
                {
                    // Someone holding another user's token proves who *they* are: refused
                    // outright, not answered with another challenge.
                    return Err(Error::forbidden("authenticated as a different user than the requester"));
                }
                let ok = match (claimed, user_id) {
                    (Some(claimed), Some(expected)) if claimed == expected => {
                        match self.store.user(claimed.as_str()).await?.and_then(|u| u.password_hash) {
                            Some(hash) => self.verify_password(&hash, &p.password).await,
                            None => false,
                        }
                    }
                    _ => false,
                };
                (!ok).then(|| Error::forbidden("invalid password"))
            }
            _ => Some(Error::Unrecognized { method_not_allowed: false }),
        };
        let Some(stage) = auth.auth_type() else {
            return Err(Error::bad_json("unknown authentication type"));
        };
        let offered = flows.iter().any(|f| f.stages.contains(&stage));
        if !offered {
            return Err(self.uia_challenge(
                flows,
                session,
                state.completed,
                Some(Error::forbidden("stage not offered")),
            ));
        }
        if let Some(err) = stage_error {
            return Err(self.uia_challenge(flows, session, state.completed, Some(err)));
        }
        if !state.completed.contains(&stage) {
            state.completed.push(stage);
        }
        let done = flows.iter().any(|f| f.stages.iter().all(|s| state.completed.contains(s)));
        self.uia.lock().expect("uia lock poisoned").insert(session.clone(), state.clone());
        if done { Ok((session, request)) } else { Err(self.uia_challenge(flows, session, state.completed, None)) }
    }

    /// Confirms the identity of a logged-in user for a sensitive action: by password where
    /// password login is on, through their identity provider where single sign-on is
    /// (`m.login.sso`, completed by the fallback page, see `identity`).
    pub async fn confirm_identity(
        &self,
        user_id: &UserId,
        auth: Option<&AuthData>,
        request: &UiaRequest,
    ) -> Result<()> {
        let mut flows = Vec::new();
        if self.config.password_login {
            flows.push(AuthFlow::new(vec![AuthType::Password]));
        }
        if !self.config.sso.providers.is_empty() {
            flows.push(AuthFlow::new(vec![AuthType::Sso]));
        }
        self.check_uia(flows, auth, Some(user_id), request).await.map(|_| ())
    }

    /// The user an authentication session was opened for, while it lasts.
    pub fn uia_session_user(&self, session: &str) -> Option<String> {
        self.uia.lock().expect("uia lock poisoned").get(session).and_then(|s| s.user_id.clone())
    }

    /// Marks a stage of a user's authentication session complete, once proven elsewhere
    /// (the identity provider's confirmation of `m.login.sso`).
    pub fn complete_uia_stage(&self, session: &str, user_id: &UserId, stage: AuthType) -> Result<()> {
        let mut sessions = self.uia.lock().expect("uia lock poisoned");
        let state = sessions.get_mut(session).ok_or_else(|| Error::forbidden("unknown authentication session"))?;
        if state.user_id.as_deref() != Some(user_id.as_str()) {
            return Err(Error::forbidden("authentication session belongs to another user"));
        }
        if !state.completed.contains(&stage) {
            state.completed.push(stage);
        }
        Ok(())
    }

    /// `/register`; returns the account's session unless login is inhibited. A completed
    /// UIA session asked again answers with the account it created (a new login), so a
    /// client retrying after a lost response does not get `M_USER_IN_USE`.
    pub async fn register(
        &self,
        params: RegistrationParams,
        auth: Option<&AuthData>,
        guest: bool,
        request: &UiaRequest,
    ) -> Result<(OwnedUserId, Option<IssuedSession>)> {
        let mut params = params;
        let mut uia_session = None;
        if guest {
            if !self.config.allow_guest_access {
                return Err(Error::forbidden("guest access is disabled"));
            }
        } else {
            let flows = match self.config.registration {
                RegistrationMode::Open => vec![AuthFlow::new(vec![AuthType::Dummy])],
                RegistrationMode::Token => vec![AuthFlow::new(vec![AuthType::RegistrationToken])],
                RegistrationMode::Closed => {
                    return Err(Error::forbidden("registration is disabled"));
                }
            };
            let registered = auth.and_then(AuthData::session).and_then(|session| {
                self.uia.lock().expect("uia lock poisoned").get(session).and_then(|s| s.registered.clone())
            });
            // A guest upgrading keeps their ID; anyone else needs a free one. The requested
            // name is validated before asking for authentication stages.
            let upgrading = match &params.guest_access_token {
                Some(token) => Some(self.upgradable_guest(token, params.username.as_deref()).await?),
                None => None,
            };
            if let (Some(name), None, None) = (&params.username, &registered, &upgrading) {
                self.is_available(&name.to_lowercase()).await?;
            }
            let (session, request) = self.check_uia(flows, auth, None, request).await?;
            params = serde_json::from_value(serde_json::Value::Object(request.params))
                .map_err(|e| Error::bad_json(e.to_string()))?;
            if let Some(guest) = upgrading {
                let password = params.password.as_deref().ok_or_else(|| Error::bad_json("a password is required"))?;
                let hash = self.hash_password(password).await?;
                self.store.upgrade_guest(guest.as_str(), &hash).await?;
                self.forget_tokens();
                tracing::info!(user_id = %guest, "guest account upgraded");
                let issued = self.session_for_registration(&guest, &params).await?;
                return Ok((guest, issued));
            }
            if let Some(user_id) = registered {
                let issued = self.session_for_registration(&user_id, &params).await?;
                return Ok((user_id, issued));
            }
            uia_session = Some(session);
        }
        let RegistrationParams {
            username,
            password,
            device_id,
            initial_device_display_name,
            inhibit_login,
            refresh_token,
            guest_access_token: _,
        } = params;
        let (password, device_id, device_name, refresh) =
            (password.as_deref(), device_id.as_deref(), initial_device_display_name.as_deref(), refresh_token);
        let user_id = match username {
            Some(name) if !guest => self.validate_localpart(&name.to_lowercase())?,
            _ => self.validate_localpart(&random_string(12).to_lowercase())?,
        };
        let password_hash = match password {
            Some(p) if !guest => Some(self.hash_password(p).await?),
            _ => None,
        };
        let issued = (!inhibit_login).then(|| self.new_session_tokens(&user_id, device_id, refresh));
        let displayname = user_id.localpart().to_owned();
        let session_input = issued.as_ref().map(|(s, token_hash, refresh_hash)| NewSession {
            device_id: s.device_id.as_str(),
            device_display_name: device_name,
            token_hash,
            refresh_token_hash: refresh_hash.as_deref(),
            expires_ts: s.expires_in.map(|d| now_ms() + d.as_millis() as i64),
        });
        let created = self
            .store
            .create_account(NewAccount {
                user_id: user_id.as_str(),
                password_hash: password_hash.as_deref(),
                is_admin: false,
                is_guest: guest,
                displayname: Some(&displayname),
                session: session_input,
            })
            .await?;
        if !created {
            return Err(Error::UserInUse);
        }
        if let Some(session) = uia_session
            && let Some(state) = self.uia.lock().expect("uia lock poisoned").get_mut(&session)
        {
            state.registered = Some(user_id.clone());
        }
        if issued.is_some() {
            self.device_list_changed(&user_id).await?;
        }
        tracing::info!(%user_id, "account registered");
        Ok((user_id, issued.map(|(s, _, _)| s)))
    }

    /// A new session for an existing account that `/register` answers with (a repeated
    /// registration, an upgraded guest), unless the client inhibited login.
    async fn session_for_registration(
        &self,
        user_id: &UserId,
        params: &RegistrationParams,
    ) -> Result<Option<IssuedSession>> {
        if params.inhibit_login {
            return Ok(None);
        }
        let device = params.device_id.as_deref();
        let name = params.initial_device_display_name.as_deref();
        Ok(Some(self.open_session(user_id, device, name, params.refresh_token).await?))
    }

    /// The guest account a guest access token belongs to, if `username` (when given) names
    /// it: a guest may upgrade only themself.
    async fn upgradable_guest(&self, token: &str, username: Option<&str>) -> Result<OwnedUserId> {
        let identity = self.authenticate(token).await?;
        if !identity.is_guest {
            return Err(Error::forbidden("not a guest account"));
        }
        if username.is_some_and(|name| name.to_lowercase() != identity.user_id.localpart()) {
            return Err(Error::forbidden("a guest can only upgrade their own account"));
        }
        Ok(identity.user_id)
    }

    /// Creates an account directly (admin API, shared-secret registration).
    pub async fn create_user(
        &self,
        localpart: &str,
        password: Option<&str>,
        admin: bool,
        displayname: Option<&str>,
    ) -> Result<OwnedUserId> {
        let user_id = self.validate_localpart(localpart)?;
        let hash = match password {
            Some(p) => Some(self.hash_password(p).await?),
            None => None,
        };
        let created = self
            .store
            .create_account(NewAccount {
                user_id: user_id.as_str(),
                password_hash: hash.as_deref(),
                is_admin: admin,
                is_guest: false,
                displayname: Some(displayname.unwrap_or(user_id.localpart())),
                session: None,
            })
            .await?;
        if !created {
            return Err(Error::UserInUse);
        }
        Ok(user_id)
    }

    fn new_session_tokens(
        &self,
        user_id: &UserId,
        device_id: Option<&str>,
        refresh: bool,
    ) -> (IssuedSession, String, Option<String>) {
        let device_id: OwnedDeviceId =
            device_id.map(Into::into).unwrap_or_else(|| random_string(10).to_uppercase().into());
        let access_token = new_token("mst");
        let refresh_token = refresh.then(|| new_token("msr"));
        let token_hash = hash_token(&access_token);
        let refresh_hash = refresh_token.as_deref().map(hash_token);
        let expires_in = refresh.then(|| Duration::from_secs(self.config.access_token_lifetime_secs));
        (
            IssuedSession { user_id: user_id.to_owned(), device_id, access_token, refresh_token, expires_in },
            token_hash,
            refresh_hash,
        )
    }

    /// Issues a new device session for a user (after a successful login).
    pub async fn open_session(
        &self,
        user_id: &UserId,
        device_id: Option<&str>,
        device_name: Option<&str>,
        refresh: bool,
    ) -> Result<IssuedSession> {
        let (session, token_hash, refresh_hash) = self.new_session_tokens(user_id, device_id, refresh);
        self.store
            .create_session(
                user_id.as_str(),
                NewSession {
                    device_id: session.device_id.as_str(),
                    device_display_name: device_name,
                    token_hash: &token_hash,
                    refresh_token_hash: refresh_hash.as_deref(),
                    expires_ts: session.expires_in.map(|d| now_ms() + d.as_millis() as i64),
                },
            )
            .await?;
        // Logging in with an existing device ID replaced that device's tokens.
        self.forget_tokens();
        self.device_list_changed(user_id).await?;
        Ok(session)
    }

    /// Tells the user's contacts (and their other devices) that their device list changed:
    /// a device was added, renamed or removed.
    async fn device_list_changed(&self, user_id: &UserId) -> Result<()> {
        let guard = self.streams.allocate();
        self.store.record_device_list_change(user_id.as_str(), guard.pos()).await?;
        Ok(())
    }

    /// Renames one of the user's devices.
    pub async fn rename_device(&self, user_id: &UserId, device_id: &str, name: Option<&str>) -> Result<()> {
        if !self.store.rename_device(user_id.as_str(), device_id, name).await? {
            return Err(Error::not_found("device not found"));
        }
        self.device_list_changed(user_id).await
    }

    /// `m.login.password`.
    pub async fn login_password(
        &self,
        user: &str,
        password: &str,
        device_id: Option<&str>,
        device_name: Option<&str>,
        refresh: bool,
    ) -> Result<IssuedSession> {
        let user_id = self.check_password(user, password).await?;
        // A suspension is told only to who knows the password.
        self.login_as(&user_id, device_id, device_name, refresh).await
    }

    /// The account a user name (localpart or user ID) and password prove, if active.
    pub async fn check_password(&self, user: &str, password: &str) -> Result<OwnedUserId> {
        let user_id = self.local_user_id(user).map_err(|_| Error::forbidden("invalid username or password"))?;
        let account = self.store.user(user_id.as_str()).await?;
        let Some(account) = account else {
            return Err(Error::forbidden("invalid username or password"));
        };
        if account.deactivated {
            return Err(Error::UserDeactivated);
        }
        let ok = match &account.password_hash {
            Some(hash) => self.verify_password(hash, password).await,
            None => false,
        };
        if !ok {
            return Err(Error::forbidden("invalid username or password"));
        }
        Ok(user_id)
    }

    /// Opens a session for a user whose identity was proven (a password, a login token of
    /// single sign-on), if their account is active.
    pub async fn login_as(
        &self,
        user_id: &UserId,
        device_id: Option<&str>,
        device_name: Option<&str>,
        refresh: bool,
    ) -> Result<IssuedSession> {
        let account = self.store.user(user_id.as_str()).await?.ok_or_else(|| Error::forbidden("unknown account"))?;
        if account.deactivated {
            return Err(Error::UserDeactivated);
        }
        if account.locked {
            return Err(Error::UserLocked);
        }
        let session = self.open_session(user_id, device_id, device_name, refresh).await?;
        tracing::info!(%user_id, device_id = %session.device_id, "logged in");
        Ok(session)
    }

    /// Resolves an access token to an identity.
    pub async fn authenticate(&self, token: &str) -> Result<Identity> {
        let digest = hash_token(token);
        let cached = self.tokens.lock().expect("token cache poisoned").get(&digest).cloned();
        if let Some((identity, expires)) = cached {
            if expires.is_some_and(|exp| exp <= now_ms()) {
                return Err(Error::UnknownToken { soft_logout: true });
            }
            return Ok(identity);
        }
        let row = self.store.token(&digest).await?.ok_or(Error::UnknownToken { soft_logout: false })?;
        if row.expires_ts.is_some_and(|exp| exp <= now_ms()) {
            return Err(Error::UnknownToken { soft_logout: true });
        }
        let user_id = UserId::parse(&row.user_id).map_err(|e| Error::Internal(e.to_string()))?;
        let user = self.store.user(user_id.as_str()).await?.ok_or(Error::UnknownToken { soft_logout: false })?;
        if user.deactivated {
            return Err(Error::UnknownToken { soft_logout: false });
        }
        if user.locked {
            return Err(Error::UserLocked);
        }
        let identity =
            Identity { user_id, device_id: row.device_id.into(), is_admin: user.is_admin, is_guest: user.is_guest };
        let mut cache = self.tokens.lock().expect("token cache poisoned");
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(digest, (identity.clone(), row.expires_ts));
        Ok(identity)
    }

    /// Records that a device was used, from which address and client (the connection log
    /// that `/devices` and `/admin/whois` serve). Written off the request path, at most
    /// once per [`SEEN_INTERVAL`] per device.
    pub fn device_seen(&self, identity: &Identity, ip: Option<&str>, user_agent: Option<&str>) {
        let key = (identity.user_id.clone(), identity.device_id.clone());
        {
            let mut seen = self.seen.lock().expect("seen lock poisoned");
            if seen.get(&key).is_some_and(|at| at.elapsed() < SEEN_INTERVAL) {
                return;
            }
            if seen.len() > 100_000 {
                seen.clear();
            }
            seen.insert(key, Instant::now());
        }
        let store = self.store.clone();
        let (user, device) = (identity.user_id.to_string(), identity.device_id.to_string());
        let (ip, user_agent) = (ip.map(str::to_owned), user_agent.map(|a| a.chars().take(512).collect::<String>()));
        let seen = self.seen.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_device(&user, &device, ip.as_deref(), user_agent.as_deref()).await {
                tracing::warn!(error = %e, "device last use not recorded");
                seen.lock().expect("seen lock poisoned").clear();
            }
        });
    }

    /// Who a user is and how they connect (`/admin/whois`): for server admins and the user.
    pub async fn whois(&self, requester: &Identity, user_id: &UserId) -> Result<serde_json::Value> {
        if !requester.is_admin && requester.user_id != user_id {
            return Err(Error::forbidden("only server administrators may look up other users"));
        }
        let mut devices = serde_json::Map::new();
        for d in self.store.devices(user_id.as_str()).await? {
            let connections: Vec<serde_json::Value> = match d.last_seen_ts {
                Some(ts) => vec![serde_json::json!({
                    "ip": d.last_seen_ip,
                    "last_seen": ts,
                    "user_agent": d.last_seen_user_agent,
                })],
                None => Vec::new(),
            };
            devices.insert(d.device_id, serde_json::json!({ "sessions": [{ "connections": connections }] }));
        }
        Ok(serde_json::json!({ "user_id": user_id, "devices": devices }))
    }

    /// Forgets every cached token; called whenever sessions end.
    fn forget_tokens(&self) {
        self.tokens.lock().expect("token cache poisoned").clear();
    }

    /// Swaps a refresh token for a new pair.
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedSession> {
        let access_token = new_token("mst");
        let new_refresh = new_token("msr");
        let expires_in = Duration::from_secs(self.config.access_token_lifetime_secs);
        let row = self
            .store
            .refresh_session(
                &hash_token(refresh_token),
                &hash_token(&access_token),
                &hash_token(&new_refresh),
                Some(now_ms() + expires_in.as_millis() as i64),
            )
            .await?
            .ok_or(Error::UnknownToken { soft_logout: false })?;
        self.forget_tokens();
        Ok(IssuedSession {
            user_id: UserId::parse(&row.user_id).map_err(|e| Error::Internal(e.to_string()))?,
            device_id: row.device_id.into(),
            access_token,
            refresh_token: Some(new_refresh),
            expires_in: Some(expires_in),
        })
    }

    /// The user and device an access token or refresh token belongs to.
    pub async fn session_of_token(&self, token: &str) -> Result<Option<(OwnedUserId, String)>> {
        let Some((user, device)) = self.store.token_owner(&hash_token(token)).await? else { return Ok(None) };
        Ok(Some((UserId::parse(user).map_err(|e| Error::Internal(e.to_string()))?, device)))
    }

    /// Deletes devices, and with them their tokens, keys and pending to-device messages;
    /// the user's contacts see the device list change.
    pub async fn delete_devices(&self, user_id: &UserId, device_ids: &[String]) -> Result<()> {
        self.store.delete_devices(user_id.as_str(), device_ids).await?;
        self.forget_tokens();
        self.device_list_changed(user_id).await
    }

    /// Creates a device that has no session (a dehydrated device).
    pub async fn register_device(&self, user_id: &UserId, device_id: &str, display_name: Option<&str>) -> Result<()> {
        self.store.create_device(user_id.as_str(), device_id, display_name).await?;
        Ok(())
    }

    /// Logs out every device of a user.
    pub async fn logout_all(&self, user_id: &UserId) -> Result<()> {
        let devices = self.store.device_ids(user_id.as_str()).await?;
        self.delete_devices(user_id, &devices).await
    }

    /// Changes a password, optionally logging out the other devices.
    pub async fn change_password(&self, identity: &Identity, new_password: &str, logout_devices: bool) -> Result<()> {
        let hash = self.hash_password(new_password).await?;
        self.store
            .set_password(identity.user_id.as_str(), &hash, Some(identity.device_id.as_str()), logout_devices)
            .await?;
        self.forget_tokens();
        Ok(())
    }

    /// Issues an OpenID token proving `user_id` to a third party (widgets, Element Call,
    /// other servers), which checks it at `/_matrix/federation/v1/openid/userinfo`. Returns
    /// the token and its lifetime in seconds.
    pub async fn openid_token(&self, user_id: &UserId) -> Result<(String, u64)> {
        const LIFETIME_SECS: u64 = 3600;
        let token = random_string(32);
        let expires = now_ms() + (LIFETIME_SECS * 1000) as i64;
        self.store.insert_openid_token(&hash_token(&token), user_id.as_str(), expires).await?;
        Ok((token, LIFETIME_SECS))
    }

    /// The user behind an OpenID token, if it is known and unexpired.
    pub async fn openid_user(&self, token: &str) -> Result<Option<String>> {
        Ok(self.store.openid_token_user(&hash_token(token)).await?)
    }

    /// Locks (suspends) or unlocks an account; its sessions are refused or accepted again
    /// at once.
    pub async fn set_locked(&self, user_id: &UserId, locked: bool) -> Result<()> {
        self.store.set_locked(user_id.as_str(), locked).await?;
        self.forget_tokens();
        tracing::info!(%user_id, locked, "account lock changed");
        Ok(())
    }

    /// Deactivates an account; its ID is never handed out again.
    pub async fn deactivate(&self, user_id: &UserId) -> Result<()> {
        self.store.deactivate_user(user_id.as_str()).await?;
        self.forget_tokens();
        tracing::info!(%user_id, "account deactivated");
        Ok(())
    }

    /// Marks an account as external or not (an operator's say; a sign-in through the IAM
    /// sets it again from the domain table).
    pub async fn set_external(&self, user_id: &UserId, external: bool) -> Result<()> {
        self.store.set_external(user_id.as_str(), external).await?;
        tracing::info!(%user_id, external, "account's external flag changed");
        Ok(())
    }

    /// An account's row, if it exists.
    pub async fn account(&self, user_id: &UserId) -> Result<Option<crate::store::UserRow>> {
        Ok(self.store.user(user_id.as_str()).await?)
    }

    /// Brings a deactivated account back; its owner signs in again.
    pub async fn reactivate(&self, user_id: &UserId) -> Result<()> {
        self.store.reactivate_user(user_id.as_str()).await?;
        tracing::info!(%user_id, "account restored");
        Ok(())
    }
}
