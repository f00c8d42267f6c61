//! Single sign-on through the administration's IAM: the `m.login.sso` redirect flow with
//! OpenID Connect providers, the account each identity signs in to (a pseudonym derived
//! from the identity, or Tchap's e-mail style), its profile from the claims, and the
//! single-use `m.login.token` that completes the client's login.

pub mod lifecycle;
pub mod oauth;
pub mod oidc;
pub mod scim;
pub mod status;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use ruma::{OwnedUserId, UserId};
use sha2::Sha256;

use self::oidc::{Claims, Provider};
use crate::{
    accounts::{Accounts, hash_token, random_string},
    config::{Config, Domain, LocalpartStyle},
    error::Error,
    rooms::Rooms,
    store::{ProfileField, SsoSession, Store, now_ms},
};

/// Why a sign-in failed; shown to the user in their browser.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("single sign-on is misconfigured: {0}")]
    Config(String),
    #[error("unknown identity provider")]
    UnknownProvider,
    #[error("the identity provider could not be reached or refused: {0}")]
    Provider(String),
    #[error("the identity provider's answer is not valid: {0}")]
    IdToken(String),
    #[error("this sign-in is unknown or has expired; start again from your application")]
    Session,
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Server(#[from] Error),
}

impl From<crate::store::StoreError> for SsoError {
    fn from(e: crate::store::StoreError) -> Self {
        SsoError::Server(e.into())
    }
}

/// What a sign-in is for.
enum Purpose {
    /// Logging a client in: the browser goes back to the client's URL with a login token.
    Login { redirect_url: String },
    /// Confirming a signed-in user's identity for a sensitive action: the `m.login.sso`
    /// stage of a user-interactive authentication session.
    Confirm { uia_session: String, user_id: OwnedUserId },
    /// The login step of an OAuth 2.0 authorization: the browser goes back to the client
    /// with an authorization code.
    OAuth(Box<oauth::AuthorizationRequest>),
    /// Opening the account management pages: the browser goes back to `return_to`.
    Account { return_to: String },
}

/// A sign-in between the redirect to the provider and the browser's return.
struct Pending {
    provider: usize,
    purpose: Purpose,
    nonce: String,
    pkce_verifier: String,
    /// Hash of the cookie set in the browser that started it: the return must come from
    /// the same browser, or a link could sign someone in as another.
    browser: String,
    started: Instant,
}

/// How long a user may take at the provider.
const PENDING_TTL: Duration = Duration::from_secs(15 * 60);
/// Sign-ins waiting at most: beyond, the oldest are dropped (a flood cannot grow memory).
const PENDING_MAX: usize = 10_000;

/// The name of the cookie that binds a sign-in to its browser.
pub const BROWSER_COOKIE: &str = "missive_sso_session";
/// Where providers send users back (Synapse's path, so that an IdP's client registration
/// carries over).
pub const CALLBACK_PATH: &str = "/_synapse/client/oidc/callback";
/// Where providers send back-channel logout tokens (Synapse's path).
pub const BACKCHANNEL_LOGOUT_PATH: &str = "/_synapse/client/oidc/backchannel_logout";

/// A completed sign-in.
pub enum SignedIn {
    /// A login: the client's URL with the login token added, and whether that URL is
    /// trusted to receive it without asking the user.
    Login { user_id: OwnedUserId, redirect_url: String, trusted: bool },
    /// A confirmation of identity: the authentication session's stage is complete.
    Confirmed,
    /// An OAuth 2.0 authorization's login: the user it is for.
    OAuth { user_id: OwnedUserId, request: Box<oauth::AuthorizationRequest> },
    /// A sign-in to the account management pages.
    Account { user_id: OwnedUserId, return_to: String },
}

/// The single sign-on service.
pub struct Sso {
    config: Arc<Config>,
    store: Store,
    providers: Vec<Provider>,
    pending: Mutex<HashMap<String, Pending>>,
    pseudonym_key: Vec<u8>,
    /// IDs of the logout tokens taken (a replay is refused).
    logout_ids: Mutex<std::collections::HashSet<String>>,
}

impl Sso {
    /// Sets up the configured providers (discovered at first use, so that a provider down
    /// at start-up does not keep the server from starting).
    pub async fn new(config: Arc<Config>, store: Store) -> Result<Self, SsoError> {
        let base = config.public_baseurl().unwrap_or_default().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SsoError::Config(e.to_string()))?;
        let providers = config
            .sso
            .providers
            .iter()
            .map(|p| Provider::new(p.clone(), &format!("{base}{CALLBACK_PATH}"), http.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let pseudonym_key = match &config.sso.pseudonym_secret {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => store.server_secret("pseudonym_key", &random_string(43)).await?.into_bytes(),
        };
        Ok(Self {
            config,
            store,
            providers,
            pending: Default::default(),
            pseudonym_key,
            logout_ids: Default::default(),
        })
    }

    /// Whether any provider is configured.
    pub fn enabled(&self) -> bool {
        !self.providers.is_empty()
    }

    /// The providers as `/login` lists them: ID and name.
    pub fn providers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.providers.iter().map(|p| (p.config.id.as_str(), p.config.name.as_str()))
    }

    /// Starts a sign-in with a provider (the only one when `idp` is `None`) for a client
    /// that wants to be sent back to `redirect_url`. Answers the provider's URL and the
    /// value of the browser cookie.
    /// A `login_hint` naming an e-mail address is checked against the domain table first,
    /// so that an agent of another server's administration is told where to go before any
    /// sign-in, and is passed on to the provider.
    pub async fn start(
        &self,
        idp: Option<&str>,
        redirect_url: &str,
        login_hint: Option<&str>,
    ) -> Result<(String, String), SsoError> {
        let index = self.provider_index(idp)?;
        let url = url::Url::parse(redirect_url)
            .map_err(|_| SsoError::Refused("the application's redirect URL is not a URL".into()))?;
        // Mobile applications come back through their own schemes; these run or read
        // things in the browser instead.
        if matches!(url.scheme(), "javascript" | "data" | "vbscript" | "file" | "blob") {
            return Err(SsoError::Refused("the application's redirect URL is not allowed".into()));
        }
        let email = login_hint.map(|h| h.trim_start_matches("mailto:")).filter(|h| !h.starts_with('@'));
        if let Some((_, domain)) = email.and_then(|e| e.rsplit_once('@')) {
            self.admit_domain(&self.providers[index], Some(&domain.to_lowercase()))?;
        }
        self.begin(index, Purpose::Login { redirect_url: redirect_url.to_owned() }, login_hint).await
    }

    /// Starts the login step of an OAuth 2.0 authorization with the first provider (or the
    /// one named by `idp`); `prompt_login` makes the provider ask who the user is again.
    pub async fn start_oauth(
        &self,
        idp: Option<&str>,
        request: oauth::AuthorizationRequest,
        login_hint: Option<&str>,
    ) -> Result<(String, String), SsoError> {
        let index = match idp {
            Some(_) => self.provider_index(idp)?,
            None if self.providers.is_empty() => return Err(SsoError::UnknownProvider),
            None => 0,
        };
        self.begin(index, Purpose::OAuth(Box::new(request)), login_hint).await
    }

    /// Starts the sign-in of a browser to the account management pages, which it returns
    /// to (`return_to`, a path of this server) once signed in.
    pub async fn start_account(&self, return_to: &str) -> Result<(String, String), SsoError> {
        if self.providers.is_empty() {
            return Err(SsoError::UnknownProvider);
        }
        self.begin(0, Purpose::Account { return_to: return_to.to_owned() }, None).await
    }

    /// Starts the confirmation of a signed-in user's identity for the user-interactive
    /// authentication session `uia_session`, with the provider of their identity, which is
    /// asked to check who they are again.
    pub async fn start_confirmation(
        &self,
        accounts: &Accounts,
        uia_session: &str,
    ) -> Result<(String, String), SsoError> {
        let user = accounts.uia_session_user(uia_session).ok_or(SsoError::Session)?;
        let user_id = UserId::parse(user).map_err(|_| SsoError::Session)?;
        let details = self.store.account_details(user_id.as_str()).await?.ok_or(SsoError::Session)?;
        let index = self
            .providers
            .iter()
            .position(|p| details.external_ids.iter().any(|(issuer, _)| *issuer == p.config.issuer))
            .ok_or_else(|| SsoError::Refused("this account does not sign in with an identity provider".into()))?;
        self.begin(index, Purpose::Confirm { uia_session: uia_session.to_owned(), user_id }, None).await
    }

    async fn begin(
        &self,
        index: usize,
        purpose: Purpose,
        login_hint: Option<&str>,
    ) -> Result<(String, String), SsoError> {
        let reauthenticate = matches!(purpose, Purpose::Confirm { .. });
        let authorization = self.providers[index].authorize(reauthenticate, login_hint).await?;
        let browser = random_string(32);
        let pending = Pending {
            provider: index,
            purpose,
            nonce: authorization.nonce,
            pkce_verifier: authorization.pkce_verifier,
            browser: hash_token(&browser),
            started: Instant::now(),
        };
        let mut waiting = self.pending.lock().expect("sso sessions poisoned");
        waiting.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        if waiting.len() >= PENDING_MAX
            && let Some(oldest) = waiting.iter().min_by_key(|(_, p)| p.started).map(|(k, _)| k.clone())
        {
            waiting.remove(&oldest);
        }
        waiting.insert(authorization.state, pending);
        Ok((authorization.url, browser))
    }

    /// Completes a sign-in when the provider sends the browser back with `code` for
    /// `state`: validates the identity, finds or creates its account, brings the profile
    /// up to date and issues the login token the client will redeem.
    pub async fn complete(
        &self,
        accounts: &Accounts,
        rooms: &Rooms,
        state: &str,
        code: &str,
        browser: Option<&str>,
    ) -> Result<SignedIn, SsoError> {
        let pending = {
            let mut waiting = self.pending.lock().expect("sso sessions poisoned");
            let known = waiting.get(state).is_some_and(|p| {
                p.started.elapsed() < PENDING_TTL && browser.is_some_and(|b| hash_token(b) == p.browser)
            });
            // A state is used once, whether or not its browser matched.
            let pending = waiting.remove(state);
            pending.filter(|_| known).ok_or(SsoError::Session)?
        };
        let provider = &self.providers[pending.provider];
        let claims = provider.exchange(code, &pending.pkce_verifier, &pending.nonce).await?;
        let redirect_url = match pending.purpose {
            Purpose::Login { redirect_url } => redirect_url,
            Purpose::Account { return_to } => {
                // Only an existing account's owner manages it: no account is made here.
                let linked = self.store.external_user(&provider.config.issuer, &claims.subject).await?;
                let user_id = linked.and_then(|u| UserId::parse(u).ok()).ok_or_else(|| {
                    SsoError::Refused("there is no account for this identity yet: sign in from an application".into())
                })?;
                return Ok(SignedIn::Account { user_id, return_to });
            }
            Purpose::OAuth(request) => {
                let user_id = self.enrol(accounts, rooms, provider, &claims).await?;
                tracing::info!(%user_id, provider = %provider.config.id, "signed in for an OAuth authorization");
                return Ok(SignedIn::OAuth { user_id, request });
            }
            Purpose::Confirm { uia_session, user_id } => {
                let linked = self.store.external_user(&provider.config.issuer, &claims.subject).await?;
                if linked.as_deref() != Some(user_id.as_str()) {
                    return Err(SsoError::Refused("you signed in as someone else than the account's owner".into()));
                }
                accounts.complete_uia_stage(&uia_session, &user_id, ruma::api::client::uiaa::AuthType::Sso)?;
                tracing::info!(%user_id, provider = %provider.config.id, "identity confirmed for a sensitive action");
                return Ok(SignedIn::Confirmed);
            }
        };
        let user_id = self.enrol(accounts, rooms, provider, &claims).await?;
        let token = random_string(32);
        let lifetime = Duration::from_secs(self.config.sso.login_token_lifetime_secs);
        let session = claims
            .session_id
            .clone()
            .map(|session_id| SsoSession { provider: provider.config.issuer.clone(), session_id });
        let expires_ts = now_ms() + lifetime.as_millis() as i64;
        self.store.insert_login_token(&hash_token(&token), user_id.as_str(), expires_ts, session.as_ref()).await?;
        let mut url = url::Url::parse(&redirect_url).map_err(|_| SsoError::Session)?;
        url.query_pairs_mut().append_pair("loginToken", &token);
        let trusted = self.config.sso.client_whitelist.iter().any(|prefix| redirect_url.starts_with(prefix));
        tracing::info!(%user_id, provider = %provider.config.id, "signed in through the identity provider");
        Ok(SignedIn::Login { user_id, redirect_url: url.to_string(), trusted })
    }

    /// Provisions the account of an identity of `provider` before its first sign-in (the
    /// IAM's SCIM client): the same admission, ID and profile as a sign-in would give.
    /// Answers the account and whether it was created now.
    pub async fn provision(
        &self,
        accounts: &Accounts,
        rooms: &Rooms,
        provider_id: Option<&str>,
        claims: &Claims,
    ) -> Result<(OwnedUserId, bool), SsoError> {
        let provider = self.provider(provider_id)?;
        let existed = self.store.external_user(&provider.config.issuer, &claims.subject).await?;
        let user_id = self.enrol(accounts, rooms, provider, claims).await?;
        Ok((user_id, existed.is_none()))
    }

    /// What a sign-in (or its provisioning) does with an identity: admits it by its
    /// domain, finds or creates its account, brings the profile and what the IAM says of
    /// the account up to date.
    async fn enrol(
        &self,
        accounts: &Accounts,
        rooms: &Rooms,
        provider: &Provider,
        claims: &Claims,
    ) -> Result<OwnedUserId, SsoError> {
        let admission = self.admission(provider, claims)?;
        let user_id = self.account_for(accounts, provider, claims).await?;
        self.update_profile(rooms, &user_id, claims).await?;
        let organisation = admission.organisation.as_deref();
        self.store.set_account_attributes(user_id.as_str(), organisation, admission.external).await?;
        Ok(user_id)
    }

    /// The account of an identity of `provider`, if it has one.
    pub async fn account_of(&self, provider_id: Option<&str>, subject: &str) -> Result<Option<OwnedUserId>, SsoError> {
        let provider = self.provider(provider_id)?;
        let user = self.store.external_user(&provider.config.issuer, subject).await?;
        Ok(user.and_then(|u| UserId::parse(u).ok()))
    }

    /// A provider by ID, or the only one.
    fn provider(&self, id: Option<&str>) -> Result<&Provider, SsoError> {
        Ok(&self.providers[self.provider_index(id)?])
    }

    /// Where a provider (by ID, or the only one) is in the list.
    fn provider_index(&self, id: Option<&str>) -> Result<usize, SsoError> {
        match id {
            Some(id) => self.providers.iter().position(|p| p.config.id == id).ok_or(SsoError::UnknownProvider),
            None if self.providers.len() == 1 => Ok(0),
            None => Err(SsoError::UnknownProvider),
        }
    }

    /// Ends the sessions of the account whose identity a provider logged out (back-channel
    /// logout): the devices the named provider session (`sid`) signed in, or every session
    /// of the account when the token names no session. A token is taken once.
    pub async fn backchannel_logout(&self, accounts: &Accounts, token: &str) -> Result<(), SsoError> {
        let mut last = SsoError::IdToken("no identity provider is configured".into());
        for provider in &self.providers {
            let logout = match provider.verify_logout(token).await {
                Ok(verified) => verified,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            if let Some(jti) = &logout.token_id {
                let mut seen = self.logout_ids.lock().expect("logout ids poisoned");
                if seen.contains(jti) {
                    return Err(SsoError::IdToken("this logout token was used already".into()));
                }
                if seen.len() >= PENDING_MAX {
                    seen.clear();
                }
                seen.insert(jti.clone());
            }
            let issuer = &provider.config.issuer;
            if let Some(user) = self.store.external_user(issuer, &logout.subject).await? {
                let user_id = UserId::parse(user).map_err(|e| Error::Internal(e.to_string()))?;
                match logout.session_id {
                    Some(session_id) => {
                        let session = SsoSession { provider: issuer.clone(), session_id };
                        let devices = self.store.sso_session_devices(&session, user_id.as_str()).await?;
                        accounts.delete_devices(&user_id, &devices).await?;
                        tracing::info!(%user_id, provider = %provider.config.id, devices = devices.len(),
                            "provider session ended its devices");
                    }
                    None => {
                        accounts.logout_all(&user_id).await?;
                        tracing::info!(%user_id, provider = %provider.config.id, "sessions ended by the identity provider");
                    }
                }
            }
            return Ok(());
        }
        Err(last)
    }

    /// Redeems an `m.login.token`: the user it was issued to, once, and the provider
    /// session it came from (to be noted with the device it signs in).
    pub async fn redeem_login_token(&self, token: &str) -> Result<(OwnedUserId, Option<SsoSession>), Error> {
        let (user, session) = self
            .store
            .take_login_token(&hash_token(token))
            .await?
            .ok_or_else(|| Error::forbidden("invalid or expired login token"))?;
        Ok((UserId::parse(user).map_err(|e| Error::Internal(e.to_string()))?, session))
    }

    /// Notes the device a login token signed in, with the provider session it came from.
    pub async fn note_session(&self, session: &SsoSession, user_id: &UserId, device_id: &str) -> Result<(), Error> {
        Ok(self.store.add_sso_session(session, user_id.as_str(), device_id).await?)
    }

    /// Whether an identity may have an account here, by its e-mail domain: refused when
    /// the domain belongs to another server (named, so that the agent goes there) or is not
    /// listed (unless the provider is one of external users, or no domain is listed).
    fn admission(&self, provider: &Provider, claims: &Claims) -> Result<Admission, SsoError> {
        self.admit_domain(provider, claims.email.as_deref().and_then(|e| e.rsplit_once('@')).map(|(_, d)| d))
    }

    /// What the domain table says of an e-mail domain (none: no address) at a provider.
    fn admit_domain(&self, provider: &Provider, domain: Option<&str>) -> Result<Admission, SsoError> {
        let domains = &self.config.sso.domains;
        let external = provider.config.external;
        match domain.and_then(|d| domain_entry(domains, d)) {
            Some(entry) if entry.server != self.config.server_name => Err(SsoError::Refused(format!(
                "accounts of {} are on the server {}: sign in there",
                domain.unwrap_or_default(),
                entry.server
            ))),
            Some(entry) => {
                Ok(Admission { organisation: entry.organisation.clone(), external: entry.external || external })
            }
            None if external || domains.is_empty() => Ok(Admission { organisation: None, external }),
            None => Err(SsoError::Refused(match domain {
                Some(domain) => format!("{domain} is not an administration of this server"),
                None => "the identity provider gave no e-mail address for this account".into(),
            })),
        }
    }

    /// The account an identity signs in to: the one linked to it, or a new one.
    async fn account_for(
        &self,
        accounts: &Accounts,
        provider: &Provider,
        claims: &Claims,
    ) -> Result<OwnedUserId, SsoError> {
        let issuer = provider.config.issuer.as_str();
        loop {
            if let Some(user) = self.store.external_user(issuer, &claims.subject).await? {
                let user_id = UserId::parse(user).map_err(|e| Error::Internal(e.to_string()))?;
                let account = self.store.user(user_id.as_str()).await?;
                if account.as_ref().is_some_and(|a| a.deleted) {
                    // Back after the deletion of their account: a new account, under a
                    // new ID (the old one stays reserved).
                    let localpart = self.new_localpart(issuer, claims).await?;
                    let user_id =
                        accounts.create_user(&localpart, None, false, Some(&display_name(claims, &localpart))).await?;
                    self.store.relink_external(issuer, &claims.subject, user_id.as_str()).await?;
                    tracing::info!(%user_id, provider = %provider.config.id, "account created again after a deletion");
                    return Ok(user_id);
                }
                if account.is_none_or(|a| a.deactivated) {
                    return Err(SsoError::Refused("this account has been deactivated".into()));
                }
                return Ok(user_id);
            }
            let localpart = self.new_localpart(issuer, claims).await?;
            let user_id = accounts.local_user_id(&localpart)?;
            // The link reserves the ID first: of two first sign-ins of one identity at once,
            // the second finds the first's account.
            if !self.store.link_external(issuer, &claims.subject, user_id.as_str()).await? {
                continue;
            }
            accounts.create_user(&localpart, None, false, Some(&display_name(claims, &localpart))).await?;
            tracing::info!(%user_id, provider = %provider.config.id, "account created at first sign-in");
            return Ok(user_id);
        }
    }

    /// A localpart no one ever had, for a new identity.
    async fn new_localpart(&self, issuer: &str, claims: &Claims) -> Result<String, SsoError> {
        let candidates: Vec<String> = match self.config.sso.localpart {
            LocalpartStyle::Pseudonym => {
                let full = pseudonym(&self.pseudonym_key, issuer, &claims.subject);
                // Longer prefixes of the same hash, should a shorter one be taken.
                (self.config.sso.pseudonym_length..=full.len()).step_by(4).map(|n| full[..n].to_owned()).collect()
            }
            LocalpartStyle::Email => {
                let email = claims.email.as_deref().ok_or_else(|| {
                    SsoError::Refused("the identity provider gave no e-mail address for this account".into())
                })?;
                let base = email_localpart(email);
                std::iter::once(base.clone()).chain((2..100).map(|n| format!("{base}-{n}"))).collect()
            }
        };
        for candidate in candidates {
            let user_id = format!("@{candidate}:{}", self.config.server_name);
            if !self.store.user_id_taken(&user_id).await? {
                return Ok(candidate);
            }
        }
        Err(SsoError::Refused("no user ID is left for this identity".into()))
    }

    /// Brings the profile in line with the claims of this sign-in: the display name (only
    /// where it changed: a change reaches every room) and the professional e-mail.
    async fn update_profile(&self, rooms: &Rooms, user_id: &UserId, claims: &Claims) -> Result<(), SsoError> {
        let wanted = display_name(claims, user_id.localpart());
        let (displayname, _) = self.store.profile(user_id.as_str()).await?.unwrap_or_default();
        if displayname.as_deref() != Some(wanted.as_str()) {
            rooms.set_profile_field(user_id, None, ProfileField::DisplayName, Some(&wanted)).await?;
        }
        if let Some(email) = &claims.email {
            self.store.set_threepid(user_id.as_str(), "email", email).await?;
        }
        Ok(())
    }
}

/// What the domain table grants an identity.
struct Admission {
    organisation: Option<String>,
    external: bool,
}

/// The most specific entry of the domain table for a domain: its own, else its parent's.
fn domain_entry<'a>(domains: &'a std::collections::BTreeMap<String, Domain>, domain: &str) -> Option<&'a Domain> {
    let mut domain = domain;
    loop {
        if let Some((_, entry)) = domains.iter().find(|(name, _)| name.eq_ignore_ascii_case(domain)) {
            return Some(entry);
        }
        domain = domain.split_once('.')?.1;
    }
}

/// The display name the claims give: given and family name, else the full name, else the
/// e-mail address's local part, else the localpart.
fn display_name(claims: &Claims, localpart: &str) -> String {
    let parts: Vec<&str> = [&claims.given_name, &claims.family_name]
        .into_iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if !parts.is_empty() {
        return parts.join(" ");
    }
    let from_email = claims.email.as_deref().and_then(|e| e.split_once('@')).map(|(local, _)| local);
    [claims.name.as_deref().map(str::trim), from_email]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty())
        .unwrap_or(localpart)
        .to_owned()
}

/// The pseudonym of an identity: a keyed hash of the issuer and the subject, in lowercase
/// base32 (valid localpart characters, no confusable case), 52 characters long; a prefix
/// of it is the localpart.
fn pseudonym(key: &[u8], issuer: &str, subject: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(issuer.as_bytes());
    mac.update(&[0]);
    mac.update(subject.as_bytes());
    data_encoding::BASE32_NOPAD.encode(&mac.finalize().into_bytes()).to_lowercase()
}

/// Tchap's readable localpart: the address in lowercase, `@` as `-`, characters outside
/// the localpart grammar dropped.
fn email_localpart(email: &str) -> String {
    email
        .to_lowercase()
        .replace('@', "-")
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._=-/".contains(*c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_valid_localparts() {
        let a = pseudonym(b"key", "https://iam.example", "agent-1");
        assert_eq!(a, pseudonym(b"key", "https://iam.example", "agent-1"), "stable");
        assert_ne!(a, pseudonym(b"other key", "https://iam.example", "agent-1"), "keyed");
        assert_ne!(a, pseudonym(b"key", "https://iam.example", "agent-2"), "per subject");
        assert_ne!(a, pseudonym(b"key", "https://iam.exampl", "eagent-1"), "issuer and subject kept apart");
        assert_eq!(a.len(), 52);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)), "{a}");
    }

    #[test]
    fn a_domain_is_covered_by_its_own_entry_or_its_parents() {
        let entry = |server: &str| Domain { server: server.into(), organisation: None, external: false };
        let domains = [("police.example".to_owned(), entry("police")), ("Sub.Police.example".to_owned(), entry("sub"))]
            .into_iter()
            .collect();
        assert_eq!(domain_entry(&domains, "police.example").map(|e| e.server.as_str()), Some("police"));
        assert_eq!(domain_entry(&domains, "a.police.example").map(|e| e.server.as_str()), Some("police"));
        assert_eq!(domain_entry(&domains, "x.sub.police.example").map(|e| e.server.as_str()), Some("sub"));
        assert!(domain_entry(&domains, "notpolice.example").is_none());
        assert!(domain_entry(&domains, "example").is_none());
    }

    #[test]
    fn email_localparts_follow_tchap() {
        assert_eq!(email_localpart("Jean.Dupont@Interieur.gouv.fr"), "jean.dupont-interieur.gouv.fr");
        assert_eq!(email_localpart("a+b@x.fr"), "ab-x.fr");
    }

    #[test]
    fn display_names_come_from_the_claims() {
        let mut claims = Claims {
            subject: "s".into(),
            email: None,
            given_name: Some("Anne".into()),
            family_name: Some("Weber".into()),
            name: Some("A. Weber".into()),
            session_id: None,
        };
        assert_eq!(display_name(&claims, "x"), "Anne Weber");
        claims.given_name = None;
        claims.family_name = None;
        assert_eq!(display_name(&claims, "x"), "A. Weber");
        claims.name = None;
        assert_eq!(display_name(&claims, "x"), "x");
        claims.email = Some("carla@police.example".into());
        assert_eq!(display_name(&claims, "x"), "carla");
    }
}
