//! One OpenID Connect provider: discovery, the authorization request (PKCE, state, nonce),
//! the code exchange and the ID token's validation, through the `openidconnect` crate.

use std::time::{Duration, Instant};

use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenResponse,
    core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata},
};

use super::SsoError;
use crate::config::OidcProvider;

/// How long a discovered configuration (endpoints and signing keys) is used before it is
/// fetched again; a token signed by an unknown key fetches it at once.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// How long a client assertion of `private_key_jwt` is valid: long enough for one request.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(120);

/// A client made from discovered metadata: its authorization endpoint is known, its token
/// and user info endpoints may be.
type DiscoveredClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// A provider of the config and what was discovered of it.
pub struct Provider {
    pub config: OidcProvider,
    redirect_uri: RedirectUrl,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<(CoreProviderMetadata, Instant)>>,
    /// The key that signs client assertions (`private_key_jwt`), when the config names one.
    assertion_key: Option<(jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm)>,
}

/// The claims of a client assertion (RFC 7523, as OpenID Connect's `private_key_jwt` uses it).
#[derive(serde::Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

/// The key of `private_key_jwt` in a PEM file, and the algorithm it signs with.
fn assertion_key(path: &std::path::Path) -> Result<(jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm), SsoError> {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let pem = std::fs::read(path).map_err(|e| SsoError::Config(format!("{}: {e}", path.display())))?;
    if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
        return Ok((key, Algorithm::ES256));
    }
    EncodingKey::from_rsa_pem(&pem)
        .map(|key| (key, Algorithm::RS256))
        .map_err(|e| SsoError::Config(format!("{}: neither an RSA nor a P-256 private key: {e}", path.display())))
}

/// What the browser's return must match: kept by the server between the redirect to the
/// provider and the callback.
pub struct Authorization {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// The claims of a validated ID token that accounts are made of.
#[derive(Debug, Clone)]
pub struct Claims {
    pub subject: String,
    pub email: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub name: Option<String>,
    /// The provider's session (`sid`), which its back-channel logout names.
    pub session_id: Option<String>,
}

impl Provider {
    /// A provider whose users come back to `redirect_uri`.
    pub fn new(config: OidcProvider, redirect_uri: &str, http: reqwest::Client) -> Result<Self, SsoError> {
        let redirect_uri =
            RedirectUrl::new(redirect_uri.to_owned()).map_err(|e| SsoError::Config(format!("redirect URI: {e}")))?;
        let assertion_key = config.private_key_file.as_deref().map(assertion_key).transpose()?;
        Ok(Self { config, redirect_uri, http, metadata: Default::default(), assertion_key })
    }

    /// The provider's configuration, discovered again when older than [`METADATA_TTL`] or
    /// when `refresh` says its keys are not those the provider signs with now.
    async fn metadata(&self, refresh: bool) -> Result<CoreProviderMetadata, SsoError> {
        let mut cached = self.metadata.lock().await;
        if let Some((metadata, at)) = cached.as_ref()
            && !refresh
            && at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| SsoError::Config(e.to_string()))?;
        let http = self.http_client();
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| SsoError::Provider(format!("discovery of {}: {}", self.config.issuer, error_chain(&e))))?;
        *cached = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    fn client(&self, metadata: CoreProviderMetadata) -> DiscoveredClient {
        CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.as_ref().map(|s| ClientSecret::new(s.expose().to_owned())),
        )
        .set_redirect_uri(self.redirect_uri.clone())
    }

    /// The provider's authorization URL for a new sign-in, with a fresh state, nonce and
    /// PKCE (S256) challenge.
    /// `reauthenticate` asks the provider to check who the user is again, even within its
    /// own session (`prompt=login`): for a sensitive action, not a sign-in.
    pub async fn authorize(&self, reauthenticate: bool, login_hint: Option<&str>) -> Result<Authorization, SsoError> {
        let client = self.client(self.metadata(false).await?);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request =
            client.authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random);
        if reauthenticate {
            request = request.add_prompt(openidconnect::core::CoreAuthPrompt::Login);
        }
        if let Some(hint) = login_hint {
            request = request.set_login_hint(openidconnect::LoginHint::new(hint.to_owned()));
        }
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges the code the browser brought back and validates the ID token: signature
    /// against the provider's keys (fetched again once if the key is unknown, as after a
    /// rotation), issuer, audience, expiry and nonce.
    pub async fn exchange(&self, code: &str, pkce_verifier: &str, nonce: &str) -> Result<Claims, SsoError> {
        let client = self.client(self.metadata(false).await?);
        let http = self.http_client();
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| SsoError::Provider(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()));
        if let Some(assertion) = self.client_assertion(&client)? {
            request = request
                .add_extra_param("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                .add_extra_param("client_assertion", assertion);
        }
        let response = request
            .request_async(&http)
            .await
            .map_err(|e| SsoError::Provider(format!("code exchange: {}", error_chain(&e))))?;
        let id_token = response.id_token().ok_or_else(|| SsoError::IdToken("the provider sent no ID token".into()))?;
        // Read again as a token with the claims the crate's core type leaves out (`sid`).
        let id_token: Token = id_token.to_string().parse().map_err(|e| SsoError::IdToken(format!("ID token: {e}")))?;
        let nonce = Nonce::new(nonce.to_owned());
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims.clone(),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(_)) => {
                let client = self.client(self.metadata(true).await?);
                id_token
                    .claims(&client.id_token_verifier(), &nonce)
                    .map_err(|e| SsoError::IdToken(e.to_string()))?
                    .clone()
            }
            Err(e) => return Err(SsoError::IdToken(e.to_string())),
        };
        Ok(claims_of(&claims))
    }
}

impl Provider {
    /// A fresh client assertion for the token endpoint, when the client authenticates with
    /// a private key (no secret is then set, so the client ID goes in the request body).
    fn client_assertion(&self, client: &DiscoveredClient) -> Result<Option<String>, SsoError> {
        let Some((key, algorithm)) = &self.assertion_key else { return Ok(None) };
        let audience = client.token_uri().ok_or_else(|| SsoError::Provider("no token endpoint".into()))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Assertion {
            iss: &self.config.client_id,
            sub: &self.config.client_id,
            aud: audience.as_str(),
            jti: CsrfToken::new_random().secret().clone(),
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        let mut header = jsonwebtoken::Header::new(*algorithm);
        header.kid = self.config.private_key_id.clone();
        jsonwebtoken::encode(&header, &claims, key)
            .map(Some)
            .map_err(|e| SsoError::Config(format!("client assertion: {e}")))
    }
}

/// The claims of ID and logout tokens beyond the crate's core ones.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct ExtraClaims {
    /// The provider's session, in ID tokens and logout tokens alike.
    sid: Option<String>,
    /// A logout token's events.
    #[serde(default)]
    events: serde_json::Map<String, serde_json::Value>,
    jti: Option<String>,
}

impl openidconnect::AdditionalClaims for ExtraClaims {}

/// An ID token or a logout token (a JWT of the ID token's form, OpenID Connect
/// Back-Channel Logout 1.0), checked by the same verifier.
type Token = openidconnect::IdToken<
    ExtraClaims,
    openidconnect::core::CoreGenderClaim,
    openidconnect::core::CoreJweContentEncryptionAlgorithm,
    openidconnect::core::CoreJwsSigningAlgorithm,
>;

/// What a valid logout token ends: the subject's sessions, only the one named if `sid` is.
#[derive(Debug, Clone)]
pub struct Logout {
    pub subject: String,
    pub session_id: Option<String>,
    /// The token's ID, so that it is taken once.
    pub token_id: Option<String>,
}

/// The event a logout token must carry.
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

impl Provider {
    /// Validates a back-channel logout token of this provider: signature (keys fetched
    /// again once, as after a rotation), issuer, audience, expiry, the logout event, and no
    /// nonce. Answers whose sessions end.
    pub async fn verify_logout(&self, token: &str) -> Result<Logout, SsoError> {
        let token: Token = token.parse().map_err(|e| SsoError::IdToken(format!("logout token: {e}")))?;
        let no_nonce = |nonce: Option<&Nonce>| match nonce {
            Some(_) => Err("a logout token carries no nonce".to_owned()),
            None => Ok(()),
        };
        // The spec's `typ` for logout tokens, besides the plain JWT ones.
        let types: Vec<openidconnect::NormalizedJsonWebTokenType> = ["logout+jwt", "JWT", "application/jwt"]
            .into_iter()
            .filter_map(|t| (&openidconnect::JsonWebTokenType::new(t.to_owned())).try_into().ok())
            .collect();
        let client = self.client(self.metadata(false).await?);
        let verifier = client.id_token_verifier().set_allowed_jose_types(types.clone());
        let claims = match token.claims(&verifier, no_nonce) {
            Ok(claims) => claims.clone(),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(_)) => {
                let client = self.client(self.metadata(true).await?);
                let verifier = client.id_token_verifier().set_allowed_jose_types(types);
                token.claims(&verifier, no_nonce).map_err(|e| SsoError::IdToken(e.to_string()))?.clone()
            }
            Err(e) => return Err(SsoError::IdToken(e.to_string())),
        };
        if !claims.additional_claims().events.contains_key(LOGOUT_EVENT) {
            return Err(SsoError::IdToken("not a logout token".into()));
        }
        Ok(Logout {
            subject: claims.subject().as_str().to_owned(),
            session_id: claims.additional_claims().sid.clone(),
            token_id: claims.additional_claims().jti.clone(),
        })
    }
}

fn claims_of(claims: &openidconnect::IdTokenClaims<ExtraClaims, openidconnect::core::CoreGenderClaim>) -> Claims {
    Claims {
        subject: claims.subject().as_str().to_owned(),
        // An address the provider does not vouch for is no professional address.
        email: claims.email().filter(|_| claims.email_verified().unwrap_or(true)).map(|e| e.as_str().to_lowercase()),
        given_name: claims.given_name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()),
        family_name: claims.family_name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()),
        name: claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()),
        session_id: claims.additional_claims().sid.clone(),
    }
}

impl Provider {
    /// The crate's HTTP client: a function whose futures own what they use (a borrowed
    /// client would make them unfit for the server's multi-threaded tasks).
    fn http_client(
        &self,
    ) -> impl Fn(
        openidconnect::HttpRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<openidconnect::HttpResponse, reqwest::Error>> + Send>,
    > + use<> {
        let http = self.http.clone();
        move |request| {
            let http = http.clone();
            Box::pin(async move { send(&http, request).await })
        }
    }
}

/// Sends one of the crate's requests with the server's HTTP client, which follows no
/// redirects (a provider's answer is never elsewhere).
async fn send(
    http: &reqwest::Client,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, reqwest::Error> {
    let (parts, body) = request.into_parts();
    let response = http.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
    let mut answer = http::Response::builder().status(response.status());
    if let Some(headers) = answer.headers_mut() {
        *headers = response.headers().clone();
    }
    let body = response.bytes().await?.to_vec();
    // A status and headers taken from a response always build one.
    Ok(answer.body(body).unwrap_or_default())
}

/// An error and its causes, for the log and the operator.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
