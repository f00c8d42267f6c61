//! E-mail notifications of missed messages, as Tchap sends them: to members with an
//! e-mail pusher (`kind: email`, the pushkey an address of their account), once their
//! notifications have waited `notif_delay_secs` unread, at most one mail per
//! `notif_period_secs`. A mail names the rooms and senders, never a message's content
//! (an encrypted room's says "new encrypted message"), and carries a signed unsubscribe
//! link. What waits is kept in memory only.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use hmac::{Hmac, Mac};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::header::{ContentType, Header, HeaderName, HeaderValue},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
};
use sha2::Sha256;
use tokio::time::Instant;

use crate::{
    config::{Email as EmailConfig, EmailTls},
    store::{PushCandidate, Store},
};

/// The app ID of e-mail pushers (Synapse's).
pub const EMAIL_APP_ID: &str = "m.email";

/// What waits to be mailed to a member.
struct Pending {
    since: Instant,
    rooms: BTreeMap<String, PendingRoom>,
}

#[derive(Default)]
struct PendingRoom {
    senders: BTreeSet<String>,
    encrypted: bool,
}

/// The mailer.
pub struct Mailer {
    store: Store,
    config: EmailConfig,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Signs unsubscribe links; lives in `<data_dir>/email_unsubscribe.key`.
    link_key: [u8; 32],
    public_baseurl: Option<String>,
    pending: Mutex<HashMap<String, Pending>>,
    last_sent: Mutex<HashMap<String, Instant>>,
}

/// The `List-Unsubscribe` header (RFC 2369), which mail clients show as a button.
#[derive(Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.trim_matches(['<', '>']).to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

/// Why the mailer cannot be set up, or a mail not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the SMTP relay settings are invalid: {0}")]
    Settings(String),
    #[error("cannot read {0}: {1}")]
    File(String, std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the SMTP relay refused the mail: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("the mail cannot be built: {0}")]
    Message(String),
}

impl Mailer {
    /// The mailer of the `[email]` table, when a relay is set.
    pub fn new(
        store: Store,
        config: &EmailConfig,
        data_dir: &std::path::Path,
        public_baseurl: Option<String>,
    ) -> Result<Option<Arc<Self>>, MailError> {
        let Some(host) = config.smtp_host.clone() else { return Ok(None) };
        let settings = |e: lettre::transport::smtp::Error| MailError::Settings(e.to_string());
        let mut tls = TlsParameters::builder(host.clone());
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| MailError::File(ca.display().to_string(), e))?;
            tls = tls.add_root_certificate(Certificate::from_pem(&pem).map_err(settings)?);
        }
        let tls = tls.build().map_err(settings)?;
        let (mode, port) = match config.tls {
            EmailTls::Starttls => (Tls::Required(tls), 587),
            EmailTls::Tls => (Tls::Wrapper(tls), 465),
            EmailTls::None => (Tls::None, 25),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(config.smtp_port.unwrap_or(port))
            .tls(mode)
            .timeout(Some(Duration::from_secs(30)));
        if let (Some(user), Some(password)) = (&config.smtp_user, &config.smtp_password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        config.from.parse::<lettre::message::Mailbox>().map_err(|e| MailError::Settings(format!("from: {e}")))?;
        let key_file = data_dir.join("email_unsubscribe.key");
        let link_key = match std::fs::read(&key_file) {
            Ok(bytes) if bytes.len() == 32 => bytes.try_into().expect("32 bytes"),
            _ => {
                let mut key = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
                std::fs::write(&key_file, key).map_err(|e| MailError::File(key_file.display().to_string(), e))?;
                key
            }
        };
        Ok(Some(Arc::new(Self {
            store,
            config: config.clone(),
            transport: builder.build(),
            link_key,
            public_baseurl,
            pending: Mutex::new(HashMap::new()),
            last_sent: Mutex::new(HashMap::new()),
        })))
    }

    /// Notes a notification for a member with an e-mail pusher.
    pub fn note(&self, candidate: &PushCandidate) {
        let mut pending = self.pending.lock().expect("mail lock");
        let entry = pending
            .entry(candidate.user_id.clone())
            .or_insert_with(|| Pending { since: Instant::now(), rooms: BTreeMap::new() });
        let room = entry.rooms.entry(candidate.room_id.clone()).or_default();
        room.senders.insert(candidate.sender.clone());
        room.encrypted |= candidate.event_type == "m.room.encrypted";
    }

    /// Sends, every second, the mails that are due.
    pub fn spawn(self: &Arc<Self>) {
        let mailer = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                mailer.send_due().await;
            }
        });
    }

    async fn send_due(&self) {
        let delay = Duration::from_secs(self.config.notif_delay_secs);
        let period = Duration::from_secs(self.config.notif_period_secs);
        let due: Vec<(String, Pending)> = {
            let last_sent = self.last_sent.lock().expect("mail lock");
            let mut pending = self.pending.lock().expect("mail lock");
            let users: Vec<String> = pending
                .iter()
                .filter(|(user, p)| {
                    p.since.elapsed() >= delay && last_sent.get(*user).is_none_or(|at| at.elapsed() >= period)
                })
                .map(|(user, _)| user.clone())
                .collect();
            users.into_iter().filter_map(|user| pending.remove(&user).map(|p| (user, p))).collect()
        };
        for (user, pending) in due {
            if let Err(e) = self.mail(&user, pending).await {
                tracing::warn!(user_id = user, error = %e, "notification mail not sent");
            }
        }
    }

    /// Mails a member the rooms still unread among those noted; nothing when all were read.
    async fn mail(&self, user: &str, pending: Pending) -> Result<(), MailError> {
        let addresses: Vec<String> =
            self.store.pushers_of(user).await?.into_iter().filter(|p| p.kind == "email").map(|p| p.pushkey).collect();
        if addresses.is_empty() {
            return Ok(());
        }
        let rooms: Vec<String> = pending.rooms.keys().cloned().collect();
        let counts = self.store.notification_counts_of(user, &rooms).await?;
        let mut lines = Vec::new();
        let mut total = 0;
        for (room_id, room) in &pending.rooms {
            let unread = counts.get(room_id).map_or(0, |(n, _)| *n);
            if unread == 0 {
                continue;
            }
            total += unread;
            let name = self.room_name(room_id).await?;
            let mut senders = Vec::new();
            for sender in &room.senders {
                senders.push(self.display_name(room_id, sender).await?);
            }
            let what = match (room.encrypted, unread) {
                (true, 1) => "1 new encrypted message".to_owned(),
                (true, n) => format!("{n} new encrypted messages"),
                (false, 1) => "1 new message".to_owned(),
                (false, n) => format!("{n} new messages"),
            };
            lines.push(format!("- {name}: {what} from {}", senders.join(", ")));
        }
        if lines.is_empty() {
            return Ok(());
        }
        let app = &self.config.app_name;
        let subject = match total {
            1 => format!("[{app}] You have 1 unread message"),
            n => format!("[{app}] You have {n} unread messages"),
        };
        for address in addresses {
            let link = self.unsubscribe_link(user, &address);
            let mut body = format!(
                "Hello,\n\nYou have unread messages on {app}:\n\n{}\n\nOpen {app} to read them.\n",
                lines.join("\n")
            );
            if let Some(link) = &link {
                body.push_str(&format!("\nTo stop these e-mails: {link}\n"));
            }
            let bad = |e: lettre::address::AddressError| MailError::Message(e.to_string());
            let mut message = Message::builder()
                .from(self.config.from.parse().map_err(bad)?)
                .to(address.parse().map_err(bad)?)
                .subject(subject.clone())
                .header(ContentType::TEXT_PLAIN);
            if let Some(link) = link {
                message = message.header(ListUnsubscribe(link));
            }
            let message = message.body(body).map_err(|e| MailError::Message(e.to_string()))?;
            self.transport.send(message).await?;
        }
        self.last_sent.lock().expect("mail lock").insert(user.to_owned(), Instant::now());
        tracing::info!(user_id = user, rooms = lines.len(), "notification mail sent");
        Ok(())
    }

    async fn room_name(&self, room_id: &str) -> Result<String, MailError> {
        for (kind, field) in [("m.room.name", "name"), ("m.room.canonical_alias", "alias")] {
            if let Some(row) = self.store.current_state_event(room_id, kind, "").await? {
                let event: serde_json::Value = serde_json::from_str(&row.json).unwrap_or_default();
                if let Some(name) = event["content"][field].as_str().filter(|n| !n.is_empty()) {
                    return Ok(name.to_owned());
                }
            }
        }
        Ok("a conversation".to_owned())
    }

    async fn display_name(&self, room_id: &str, user: &str) -> Result<String, MailError> {
        if let Some(row) = self.store.current_state_event(room_id, "m.room.member", user).await? {
            let event: serde_json::Value = serde_json::from_str(&row.json).unwrap_or_default();
            if let Some(name) = event["content"]["displayname"].as_str().filter(|n| !n.is_empty()) {
                return Ok(name.to_owned());
            }
        }
        Ok(user.to_owned())
    }

    fn link_mac(&self, user: &str, address: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.link_key).expect("HMAC takes any key");
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(address.as_bytes());
        mac
    }

    /// The link that removes this address's e-mail pusher, signed.
    fn unsubscribe_link(&self, user: &str, address: &str) -> Option<String> {
        let base = self.public_baseurl.as_deref()?.trim_end_matches('/');
        let enc = crate::api::ruma::percent_encode;
        Some(format!(
            "{base}/_missive/email/unsubscribe?user={}&address={}&sig={}",
            enc(user),
            enc(address),
            hex::encode(self.link_mac(user, address).finalize().into_bytes())
        ))
    }

    /// Whether an unsubscribe link's signature is this server's (compared in constant time).
    pub fn link_valid(&self, user: &str, address: &str, sig: &str) -> bool {
        hex::decode(sig).is_ok_and(|sig| self.link_mac(user, address).verify_slice(&sig).is_ok())
    }
}
