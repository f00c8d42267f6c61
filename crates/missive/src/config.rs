//! Server configuration: one TOML file, overridden by `MISSIVE_*` environment variables.
//!
//! The environment scheme: `MISSIVE_<KEY>` sets a top-level key, `MISSIVE_<TABLE>__<KEY>`
//! sets a key inside a table (double underscore separates levels). Values are read as TOML
//! scalars when they parse as such (`true`, `42`), as strings otherwise. `MISSIVE_CONFIG`
//! names the file and `MISSIVE_LOG` the log filter; neither is a config key.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Who may create an account through `/register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationMode {
    /// Anyone, after a `m.login.dummy` stage.
    Open,
    /// Only holders of a registration token (`m.login.registration_token`).
    Token,
    /// Nobody; accounts come from SSO or the admin API.
    Closed,
}

/// The complete server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name: the part after `:` in user IDs and room aliases.
    pub server_name: String,
    /// Address and port of the client API listener.
    pub listen: SocketAddr,
    /// Where the server keeps its files (the SQLite database by default).
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; defaults to a SQLite file in `data_dir`. May hold a
    /// password, so it is a secret.
    pub database_url: Option<Secret>,
    /// Public base URL of the client API, advertised in `/.well-known/matrix/client`.
    pub public_baseurl: Option<String>,
    /// Registration policy of `/register`.
    pub registration: RegistrationMode,
    /// Tokens accepted when `registration = "token"`.
    pub registration_tokens: Vec<Secret>,
    /// Shared secret of the admin registration endpoint; unset disables it.
    pub registration_shared_secret: Option<Secret>,
    /// Room version of new rooms when the client does not ask for one.
    #[serde(deserialize_with = "string_or_number")]
    pub default_room_version: String,
    /// Whether guests may register and read world-readable rooms.
    pub allow_guest_access: bool,
    /// Lifetime of access tokens issued with a refresh token, in seconds.
    pub access_token_lifetime_secs: u64,
    /// Argon2id cost of password hashes.
    pub password_hashing: PasswordHashing,
    /// Per-action rate limits.
    pub rate_limits: RateLimits,
    /// Largest request body accepted, in bytes.
    pub max_request_size: usize,
    /// Private rooms must stay end-to-end encrypted and public rooms may not be encrypted.
    pub encryption_mandatory: bool,
    /// Whether users' presence (online, idle, offline) is shared with the users they share
    /// a room with. Off by default: the endpoints answer, nobody's status is kept or shared.
    pub presence: bool,
    /// Whether a message whose sender set `org.matrix.self_destruct_after` (MSC2228) loses
    /// its content at that time, as if redacted. On by default: the sender asked for it.
    pub ephemeral_messages: bool,
    /// Address of the TLS listener (federation's port, 8448 by convention). It serves every
    /// route, as the plain listener does.
    pub federation_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM PKCS#8 private key of the TLS listener.
    pub tls_key: Option<PathBuf>,
    /// Who this server federates with, and how it reaches them.
    pub federation: Federation,
    /// Whether `m.login.password` is offered. Off where accounts come from the IAM alone.
    pub password_login: bool,
    /// Single sign-on through the administration's identity providers.
    pub sso: Sso,
    /// When accounts are deactivated and deleted without anyone asking.
    pub lifecycle: Lifecycle,
    /// Provisioning of accounts by the IAM (SCIM 2.0).
    pub scim: Scim,
    /// The media repository.
    pub media: Media,
    /// Virus scanning of media by ClamAV's daemon.
    pub antivirus: Antivirus,
    /// Push notifications to phones, through the pushers' gateways.
    pub push: Push,
    /// E-mail notifications of missed messages, through an SMTP relay.
    pub email: Email,
    /// How long each class of data is kept (presets of the services' privacy notices).
    pub retention: crate::privacy::Retention,
    /// Who appears in the user directory, and whose profile strangers may read.
    pub directory: Directory,
    /// How log lines are written to stderr.
    pub log_format: LogFormat,
}

/// The format of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The `[media]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    /// Largest upload accepted, in bytes (the spec's `m.upload.size`).
    pub max_upload_size: u64,
    /// Whether the deprecated unauthenticated `/_matrix/media/v3/download` and `thumbnail`
    /// still answer (off: the spec froze them; clients use `/_matrix/client/v1/media`).
    pub legacy_unauthenticated: bool,
    /// Bytes a user may have uploaded in all; unset: no quota.
    pub user_quota_bytes: Option<u64>,
    /// Types (sniffed from the content, `image/*` patterns allowed) that files may have;
    /// empty: any. Encrypted attachments sniff as `application/octet-stream`.
    pub allowed_types: Vec<String>,
    /// Types (sniffed from the content) refused even when allowed.
    pub denied_types: Vec<String>,
    /// Sites whose links get previews (`gouvernement.lu`, `*.gouv.fr`); empty: previews
    /// are off, as each one is a request from this server to the site.
    pub url_preview_domains: Vec<String>,
    /// Private address ranges previews may reach all the same (an intranet, in CIDR
    /// notation); other private, loopback and link-local addresses are never fetched.
    pub url_preview_allowed_ranges: Vec<ipnet::IpNet>,
}

impl Default for Media {
    fn default() -> Self {
        Self {
            max_upload_size: 50 * 1024 * 1024,
            legacy_unauthenticated: false,
            user_quota_bytes: None,
            allowed_types: Vec::new(),
            denied_types: Vec::new(),
            url_preview_domains: Vec::new(),
            url_preview_allowed_ranges: Vec::new(),
        }
    }
}

/// The `[antivirus]` table: every file is scanned by `clamd` before it is served, and
/// the content scanner API checks encrypted attachments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Antivirus {
    /// `clamd`'s socket: a path (`/run/clamav/clamd.ctl`) or `host:port`; unset: no scanning.
    pub clamd: Option<String>,
    /// Seconds a scan may take before it counts as failed (the file then waits, unserved).
    pub timeout_secs: u64,
    /// Seconds between two sweeps of files that could not be scanned (clamd was down).
    pub rescan_interval_secs: u64,
    /// The content scanner's curve25519 secret (32 bytes); unset:
    /// `<data_dir>/content_scanner.key`, made on first start.
    pub scanner_key_file: Option<PathBuf>,
}

impl Default for Antivirus {
    fn default() -> Self {
        Self { clamd: None, timeout_secs: 60, rescan_interval_secs: 30, scanner_key_file: None }
    }
}

/// The `[push]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Push {
    /// Whether a pusher may ask for the full format, which hands the message's type,
    /// sender and content to the gateway (and so to Apple or Google). Off: every pusher
    /// gets `event_id_only`, whatever it asks.
    pub allow_full_format: bool,
    /// Private address ranges gateways may be in (CIDR); others in private ranges are
    /// refused.
    pub gateway_allowed_ranges: Vec<ipnet::IpNet>,
    /// Seconds a notification waits for a failing gateway before it is dropped.
    pub max_retry_secs: u64,
}

impl Default for Push {
    fn default() -> Self {
        Self { allow_full_format: false, gateway_allowed_ranges: Vec::new(), max_retry_secs: 3600 }
    }
}

/// How the SMTP relay is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTls {
    /// Plain connection upgraded with STARTTLS (refused if the relay cannot), port 587.
    Starttls,
    /// TLS from the start, port 465.
    Tls,
    /// No encryption: a relay on the same host only.
    None,
}

/// The `[email]` table: notifications of missed messages by e-mail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Email {
    /// The SMTP relay's host; unset: no e-mail is sent.
    pub smtp_host: Option<String>,
    /// Its port (default: 587 with STARTTLS, 465 with TLS, 25 without).
    pub smtp_port: Option<u16>,
    pub tls: EmailTls,
    pub smtp_user: Option<String>,
    pub smtp_password: Option<Secret>,
    /// A PEM CA certificate the relay's certificate chains to (a state PKI), besides the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// The sender of the notifications.
    pub from: String,
    /// The service's name in the mails.
    pub app_name: String,
    /// Seconds a notification waits unread before it is mailed.
    pub notif_delay_secs: u64,
    /// Seconds between two mails to the same member, at least.
    pub notif_period_secs: u64,
}

impl Default for Email {
    fn default() -> Self {
        Self {
            smtp_host: None,
            smtp_port: None,
            tls: EmailTls::Starttls,
            smtp_user: None,
            smtp_password: None,
            ca_file: None,
            from: "Missive <noreply@localhost>".into(),
            app_name: "Missive".into(),
            notif_delay_secs: 600,
            notif_period_secs: 86_400,
        }
    }
}

/// Who the user directory shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectoryMode {
    /// Room mates and members of public rooms (Synapse's default); profiles open to all.
    #[default]
    SharedRooms,
    /// Room mates and those who asked to appear (Luxchat4Gov: `im.vector.hide_profile`
    /// set to `false`); profiles of others only to room mates.
    OptIn,
    /// Everyone but those on the "liste rouge" (Tchap: `im.vector.hide_profile` set to
    /// `true`); their profiles only to room mates.
    OptOut,
}

/// The `[directory]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Directory {
    pub mode: DirectoryMode,
}

/// The `[scim]` table: the IAM creates, suspends and deletes accounts through
/// `/_missive/scim/v2/Users`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scim {
    /// The bearer token the IAM presents; unset turns the endpoint off.
    pub token: Option<Secret>,
    /// The `[[sso.providers]]` ID whose identities the IAM provisions (`externalId` is the
    /// subject); unset: the only provider.
    pub provider: Option<String>,
}

/// The `[lifecycle]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifecycle {
    /// Seconds a deactivated account waits, restorable, before it is deleted; unset: the
    /// retention's `profile_after_deactivation_days` (Tchap: 36 months, Luxchat4Gov: at
    /// once), else 6 weeks.
    pub deletion_after_secs: Option<u64>,
    /// Seconds without activity after which an account is deactivated; unset: never
    /// (Tchap: 6 months).
    pub deactivate_inactive_after_secs: Option<u64>,
    /// Seconds between two runs of the lifecycle job.
    pub check_interval_secs: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self { deletion_after_secs: None, deactivate_inactive_after_secs: None, check_interval_secs: 3600 }
    }
}

/// The `[sso]` table: OpenID Connect providers and how their identities become accounts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sso {
    /// The identity providers offered by `m.login.sso`; none turns single sign-on off.
    pub providers: Vec<OidcProvider>,
    /// How a new account's localpart is made.
    pub localpart: LocalpartStyle,
    /// Key of the pseudonyms (`localpart = "pseudonym"`). Unset: a key generated at first
    /// start and kept in the database, so that an identity always maps to the same ID.
    pub pseudonym_secret: Option<Secret>,
    /// Characters of a pseudonym (base32, 5 bits each); 12 give 60 bits.
    pub pseudonym_length: usize,
    /// Client redirect URLs (prefixes) sent the login token at once; any other client's
    /// user is asked to confirm first, so that a link cannot log them in elsewhere.
    pub client_whitelist: Vec<String>,
    /// Lifetime of the `m.login.token` handed to the client, in seconds.
    pub login_token_lifetime_secs: u64,
    /// E-mail domains of the administrations (a domain covers its subdomains): which
    /// server each belongs to and the organisation it names. Empty: every identity of the
    /// providers is welcome here. Otherwise an agent whose domain belongs to another server
    /// is sent there, and one whose domain is not listed is refused, unless external.
    pub domains: BTreeMap<String, Domain>,
}

/// An entry of `[sso.domains]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    /// The server name whose accounts the domain's agents get.
    pub server: String,
    /// The organisation, as shown to others.
    pub organisation: Option<String>,
    /// Whether the domain's users are external (partners outside the administration).
    #[serde(default)]
    pub external: bool,
}

impl Default for Sso {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            localpart: LocalpartStyle::Pseudonym,
            pseudonym_secret: None,
            pseudonym_length: 12,
            client_whitelist: Vec::new(),
            login_token_lifetime_secs: 120,
            domains: BTreeMap::new(),
        }
    }
}

/// How the localpart of an account created at first sign-on is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalpartStyle {
    /// A keyed hash of the provider's issuer and subject (Luxchat4Gov).
    Pseudonym,
    /// The e-mail address, `@` as `-` (Tchap): `jean.dupont-interieur.gouv.fr`.
    Email,
}

/// One OpenID Connect provider (`[[sso.providers]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    /// Stable identifier, shown to clients as the `idp_id` and kept with each identity.
    pub id: String,
    /// Name shown to users.
    pub name: String,
    /// Issuer URL; the provider's configuration is discovered from it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// PEM private key (PKCS#8 RSA or P-256, or their legacy forms) of `private_key_jwt`
    /// client authentication, instead of a client secret: the key never leaves the server,
    /// the provider holds its public half.
    pub private_key_file: Option<PathBuf>,
    /// The key's ID (`kid`) at the provider, when it holds several.
    pub private_key_id: Option<String>,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Whether the provider's users are external (partners outside the administration):
    /// welcome whatever their domain, and restricted as such.
    #[serde(default)]
    pub external: bool,
}

fn default_scopes() -> Vec<String> {
    vec!["profile".to_owned(), "email".to_owned()]
}

/// The `[federation]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Federation {
    /// Whether the server talks to other servers at all.
    pub enabled: bool,
    /// Server name → `host:port` to connect to, bypassing discovery (closed state networks).
    pub destinations: BTreeMap<String, String>,
    /// PEM CA certificates trusted for outbound TLS, besides the system's roots (a state PKI).
    pub trusted_ca_files: Vec<PathBuf>,
    /// Whether destinations may resolve to loopback, private or link-local addresses.
    pub allow_private_destinations: bool,
    /// Glob patterns of the only server names federated with; unset allows every server.
    pub allow_list: Option<Vec<String>>,
    /// Glob patterns of server names never federated with (checked after the allow-list).
    pub deny_list: Vec<String>,
    /// Notary servers asked for keys the origin cannot serve.
    pub trusted_key_servers: Vec<String>,
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            enabled: true,
            destinations: BTreeMap::new(),
            trusted_ca_files: Vec::new(),
            allow_private_destinations: false,
            allow_list: None,
            deny_list: Vec::new(),
            trusted_key_servers: Vec::new(),
        }
    }
}

/// A configured secret: deserialised like a string, never printed (`check-config` and
/// debug logs show `<redacted>`). Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret's value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// Argon2id parameters (OWASP's recommended minimum by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordHashing {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordHashing {
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

/// A token bucket: `per_second` sustained rate, `burst` requests at once.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub per_second: f64,
    pub burst: u32,
}

/// Rate limits per action, applied per user (or per IP before login).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub enabled: bool,
    pub message: Limit,
    pub login: Limit,
    pub registration: Limit,
    pub room_join: Limit,
    pub invite: Limit,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            message: Limit { per_second: 10.0, burst: 50 },
            login: Limit { per_second: 0.2, burst: 5 },
            registration: Limit { per_second: 0.2, burst: 5 },
            room_join: Limit { per_second: 1.0, burst: 20 },
            invite: Limit { per_second: 1.0, burst: 20 },
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            data_dir: PathBuf::from("missive-data"),
            database_url: None,
            public_baseurl: None,
            registration: RegistrationMode::Open,
            registration_tokens: Vec::new(),
            registration_shared_secret: None,
            default_room_version: "12".to_owned(),
            allow_guest_access: false,
            access_token_lifetime_secs: 3600,
            password_hashing: PasswordHashing::default(),
            rate_limits: RateLimits::default(),
            max_request_size: 50 * 1024 * 1024,
            encryption_mandatory: false,
            presence: false,
            ephemeral_messages: true,
            federation_listen: None,
            tls_cert: None,
            tls_key: None,
            federation: Federation::default(),
            password_login: true,
            sso: Sso::default(),
            lifecycle: Lifecycle::default(),
            scim: Scim::default(),
            media: Media::default(),
            antivirus: Antivirus::default(),
            push: Push::default(),
            email: Email::default(),
            retention: crate::privacy::Retention::default(),
            directory: Directory::default(),
            log_format: LogFormat::default(),
        }
    }
}

/// Environment variables with the `MISSIVE_` prefix that are not config keys: ours, and
/// those that tools around the binary use to find it (SyTest's runner exports
/// `MISSIVE_BIN` and `MISSIVE_PM`, and the binary must not take them for mistyped keys).
const NON_CONFIG_VARS: &[&str] = &["MISSIVE_CONFIG", "MISSIVE_LOG", "MISSIVE_BIN", "MISSIVE_PM"];

impl Config {
    /// Loads the file (if any), applies the environment overrides and validates the result.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let overrides: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("MISSIVE_") && !NON_CONFIG_VARS.contains(&k.as_str()))
            .collect();
        for (key, value) in overrides {
            apply_override(&mut table, &key, &value)?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        ruma::ServerName::parse(&self.server_name).map_err(|e| {
            ConfigError::Invalid(format!("server_name {:?} is not a valid server name: {e}", self.server_name))
        })?;
        if !crate::rooms::version::SUPPORTED.contains(&self.default_room_version.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "default_room_version {:?} is not supported (supported: {})",
                self.default_room_version,
                crate::rooms::version::SUPPORTED.join(", ")
            )));
        }
        if self.registration == RegistrationMode::Token && self.registration_tokens.is_empty() {
            return Err(ConfigError::Invalid(
                "registration = \"token\" needs at least one entry in registration_tokens".into(),
            ));
        }
        if let Some(url) = self.database_url.as_ref().map(Secret::expose)
            && !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(format!(
                "database_url must start with sqlite:// or postgres://, got {:?}",
                url.split(':').next().unwrap_or_default()
            )));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid("tls_cert and tls_key go together".into()));
        }
        if self.federation_listen.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::Invalid("federation_listen needs tls_cert and tls_key".into()));
        }
        for path in self.tls_cert.iter().chain(&self.tls_key).chain(&self.federation.trusted_ca_files) {
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!("{} is not a readable file", path.display())));
            }
        }
        for (name, address) in &self.federation.destinations {
            ruma::ServerName::parse(name)
                .map_err(|e| ConfigError::Invalid(format!("federation.destinations: {name:?}: {e}")))?;
            if !address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()) {
                return Err(ConfigError::Invalid(format!(
                    "federation.destinations: {name:?} must map to host:port, got {address:?}"
                )));
            }
        }
        for name in &self.federation.trusted_key_servers {
            ruma::ServerName::parse(name)
                .map_err(|e| ConfigError::Invalid(format!("federation.trusted_key_servers: {name:?}: {e}")))?;
        }
        let mut ids = std::collections::BTreeSet::new();
        for provider in &self.sso.providers {
            let valid = !provider.id.is_empty()
                && provider.id.len() <= 255
                && provider.id.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
            if !valid || !ids.insert(provider.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "sso.providers: id {:?} must be unique, of letters, digits and -._~",
                    provider.id
                )));
            }
            if !(provider.issuer.starts_with("https://") || provider.issuer.starts_with("http://")) {
                return Err(ConfigError::Invalid(format!("sso.providers: issuer {:?} is not a URL", provider.issuer)));
            }
            if provider.client_secret.is_some() && provider.private_key_file.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "sso.providers: {:?} sets both client_secret and private_key_file; a client authenticates one way",
                    provider.id
                )));
            }
        }
        if !self.sso.providers.is_empty() && self.public_baseurl.is_none() {
            return Err(ConfigError::Invalid(
                "sso.providers needs public_baseurl: the providers send users back to it".into(),
            ));
        }
        for (domain, entry) in &self.sso.domains {
            ruma::ServerName::parse(&entry.server)
                .map_err(|e| ConfigError::Invalid(format!("sso.domains: {domain:?}: server: {e}")))?;
        }
        if self.scim.token.is_some() && self.sso.providers.is_empty() {
            return Err(ConfigError::Invalid("scim.token needs an identity provider in sso.providers".into()));
        }
        if let Some(id) = &self.scim.provider
            && !self.sso.providers.iter().any(|p| &p.id == id)
        {
            return Err(ConfigError::Invalid(format!("scim.provider {id:?} is not in sso.providers")));
        }
        if self.lifecycle.check_interval_secs == 0 {
            return Err(ConfigError::Invalid("lifecycle.check_interval_secs must be at least 1".into()));
        }
        if !(8..=52).contains(&self.sso.pseudonym_length) {
            return Err(ConfigError::Invalid("sso.pseudonym_length must be between 8 and 52".into()));
        }
        let hashing = &self.password_hashing;
        argon2::Params::new(hashing.memory_kib, hashing.iterations, hashing.parallelism, None)
            .map_err(|e| ConfigError::Invalid(format!("password_hashing: {e}")))?;
        Ok(())
    }

    /// The database URL, defaulting to a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .as_ref()
            .map(|url| url.expose().to_owned())
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.data_dir.join("missive.db").display()))
    }

    /// The base URL clients should use, if the operator published one.
    pub fn public_baseurl(&self) -> Option<&str> {
        self.public_baseurl.as_deref()
    }
}

/// Accepts `default_room_version = 11` as well as `"11"`.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(u64),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    })
}

fn apply_override(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var["MISSIVE_".len()..].split("__").map(|part| part.to_ascii_lowercase()).collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Invalid(format!("malformed environment variable name {var}")));
    }
    let parsed = parse_scalar(value);
    let (last, parents) = path.split_last().expect("split always yields one part");
    let mut current = table;
    for part in parents {
        let entry = current.entry(part.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
        current = entry.as_table_mut().ok_or_else(|| ConfigError::Invalid(format!("{var}: {part} is not a table")))?;
    }
    current.insert(last.clone(), parsed);
    Ok(())
}

/// Reads an environment value as a TOML value (scalar, array, inline table) if it is one,
/// else as a string.
fn parse_scalar(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(config.server_name, "localhost");
        assert_eq!(config.listen.port(), 8008);
        assert!(config.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn environment_overrides_top_level_and_nested_keys() {
        let config = Config::load(
            None,
            env(&[
                ("MISSIVE_SERVER_NAME", "police.example"),
                ("MISSIVE_LISTEN", "127.0.0.1:9000"),
                ("MISSIVE_RATE_LIMITS__ENABLED", "false"),
                ("MISSIVE_REGISTRATION_SHARED_SECRET", "s3cret"),
                ("MISSIVE_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server_name, "police.example");
        assert_eq!(config.listen.port(), 9000);
        assert!(!config.rate_limits.enabled);
        assert_eq!(config.registration_shared_secret.as_ref().map(Secret::expose), Some("s3cret"));
    }

    #[test]
    fn secrets_are_redacted_in_the_report() {
        let config = Config::load(
            None,
            env(&[
                ("MISSIVE_REGISTRATION_SHARED_SECRET", "s3cret-shared"),
                ("MISSIVE_REGISTRATION_TOKENS", "[\"t0ken-one\"]"),
                ("MISSIVE_DATABASE_URL", "postgres://missive:pa55word@db/missive"),
            ]),
        )
        .unwrap();
        let report = format!("{config:#?}");
        for secret in ["s3cret-shared", "t0ken-one", "pa55word"] {
            assert!(!report.contains(secret), "{secret} printed in {report}");
        }
        assert!(report.contains("registration_shared_secret"));
    }

    #[test]
    fn federation_settings_are_checked() {
        let with = |pairs: &[(&str, &str)]| Config::load(None, env(pairs));
        assert!(with(&[("MISSIVE_FEDERATION_LISTEN", "127.0.0.1:8448")]).is_err(), "TLS needs a certificate");
        assert!(with(&[("MISSIVE_TLS_CERT", "/nonexistent.pem"), ("MISSIVE_TLS_KEY", "/nonexistent.key")]).is_err());
        assert!(with(&[("MISSIVE_FEDERATION__DESTINATIONS", "{ \"police.example\" = \"10.0.0.1\" }")]).is_err());
        let config = with(&[
            ("MISSIVE_FEDERATION__DESTINATIONS", "{ \"police.example\" = \"10.0.0.1:8448\" }"),
            ("MISSIVE_FEDERATION__ALLOW_LIST", "[\"*.gouv.example\"]"),
        ])
        .unwrap();
        assert!(config.federation.enabled && !config.federation.allow_private_destinations);
        assert_eq!(config.federation.destinations["police.example"], "10.0.0.1:8448");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(Config::load(None, env(&[("MISSIVE_SERVR_NAME", "x")])).is_err());
        assert!(Config::load(None, env(&[("MISSIVE_SERVER_NAME", "not a name")])).is_err());
        assert!(Config::load(None, env(&[("MISSIVE_DEFAULT_ROOM_VERSION", "13")])).is_err());
        assert!(Config::load(None, env(&[("MISSIVE_LISTEN", "nowhere")])).is_err());
    }
}
