//! Push notifications: the pushers clients register (`/pushers`), and the delivery of each
//! notifying event to the gateways of its local recipients, off the send path. The room
//! write's notification pass names who an event notifies ([`PushCandidate`]s, only for
//! users with a pusher); once the write is committed they are queued here, one queue and
//! one request in flight per pusher (`gateway.rs`), in memory only: a notification is
//! never stored, and what waits is gone once delivered.

mod gateway;
pub mod mail;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use ruma::UserId;
use serde_json::{Value, json};

use crate::{
    config::Push as PushConfig,
    error::{Error, Result},
    outbound,
    store::{PushCandidate, PusherRow, Store, now_ms},
};

pub use gateway::Job;

/// Longest `pushkey` (the spec's 512 bytes).
const MAX_PUSHKEY: usize = 512;
/// Longest `app_id` (the spec's 64 characters).
const MAX_APP_ID: usize = 64;
/// Largest `data` object, serialised.
const MAX_DATA: usize = 4096;
/// Longest display name or language tag kept.
const MAX_NAME: usize = 256;
/// The path the spec gives every HTTP gateway.
const GATEWAY_PATH: &str = "/_matrix/push/v1/notify";

/// The push service.
pub struct Push {
    store: Store,
    config: PushConfig,
    http: reqwest::Client,
    /// Every pusher, per user: who an event must be pushed to is known without a read.
    pushers: RwLock<HashMap<String, Vec<PusherRow>>>,
    /// The queue of each pusher (user, app, pushkey) with a delivery task behind it.
    queues: Mutex<HashMap<(String, String, String), tokio::sync::mpsc::Sender<Job>>>,
    /// E-mail notifications, when a relay is set.
    pub mailer: Option<Arc<mail::Mailer>>,
}

fn invalid(why: &str) -> Error {
    Error::invalid_param(why.to_owned())
}

impl Push {
    /// The service, with the pushers stored.
    pub async fn new(
        store: Store,
        config: PushConfig,
        mailer: Option<Arc<mail::Mailer>>,
        trusted_ca_files: &[std::path::PathBuf],
    ) -> Result<Arc<Self>> {
        let http = outbound::client(&config.gateway_allowed_ranges, trusted_ca_files, Duration::from_secs(10), "push")
            .map_err(|e| Error::Internal(format!("cannot build the push client: {e}")))?;
        let mut pushers: HashMap<String, Vec<PusherRow>> = HashMap::new();
        for user in store.users_with_pushers().await? {
            let rows = store.pushers_of(&user).await?;
            pushers.insert(user, rows);
        }
        if let Some(mailer) = &mailer {
            mailer.spawn();
        }
        Ok(Arc::new(Self {
            store,
            config,
            http,
            pushers: RwLock::new(pushers),
            queues: Mutex::new(HashMap::new()),
            mailer,
        }))
    }

    /// Whether a user has a pusher (as far as this server last heard).
    pub fn has_pusher(&self, user_id: &str) -> bool {
        self.pushers.read().expect("pushers lock").contains_key(user_id)
    }

    /// Queues the notifications of a committed write; never waits.
    pub fn notify(self: &Arc<Self>, candidates: Vec<PushCandidate>) {
        for candidate in candidates {
            let pushers = self.pushers.read().expect("pushers lock").get(&candidate.user_id).cloned();
            for pusher in pushers.into_iter().flatten() {
                match pusher.kind.as_str() {
                    "http" => self.enqueue(&pusher, Job::new(&candidate)),
                    "email" => {
                        if let Some(mailer) = &self.mailer {
                            mailer.note(&candidate);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Tells the user's phones their unread count changed (they read something): a
    /// notification of counts alone, which clears or lowers the app's badge.
    pub fn badge(self: &Arc<Self>, user_id: &UserId) {
        for pusher in self.pushers_of_cached(user_id.as_str()).iter().filter(|p| p.kind == "http") {
            self.enqueue(pusher, Job::badge());
        }
    }

    fn enqueue(self: &Arc<Self>, pusher: &PusherRow, job: Job) {
        let key = (pusher.user_id.clone(), pusher.app_id.clone(), pusher.pushkey.clone());
        let mut queues = self.queues.lock().expect("push queues lock");
        let sender = queues.entry(key.clone()).or_insert_with(|| gateway::spawn(self.clone(), key.clone())).clone();
        if let Err(e) = sender.try_send(job) {
            match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    tracing::warn!(user_id = %key.0, app_id = %key.1, "push queue full: a notification is dropped");
                }
                tokio::sync::mpsc::error::TrySendError::Closed(job) => {
                    // The task ended (its pusher went); a new one takes the job if it is back.
                    queues.remove(&key);
                    drop(queues);
                    if self.pushers_of_cached(&key.0).iter().any(|p| p.app_id == key.1 && p.pushkey == key.2) {
                        self.enqueue(pusher, job);
                    }
                }
            }
        }
    }

    fn pushers_of_cached(&self, user_id: &str) -> Vec<PusherRow> {
        self.pushers.read().expect("pushers lock").get(user_id).cloned().unwrap_or_default()
    }

    /// Reloads a user's pushers from the store (after a change).
    async fn reload(&self, user_id: &str) -> Result<()> {
        let rows = self.store.pushers_of(user_id).await?;
        let mut pushers = self.pushers.write().expect("pushers lock");
        if rows.is_empty() {
            pushers.remove(user_id);
        } else {
            pushers.insert(user_id.to_owned(), rows);
        }
        Ok(())
    }

    /// A user's pushers, as `GET /pushers` shows them.
    pub async fn pushers_json(&self, user_id: &UserId) -> Result<Value> {
        let rows = self.store.pushers_of(user_id.as_str()).await?;
        let pushers: Vec<Value> = rows
            .iter()
            .map(|p| {
                let mut pusher = json!({
                    "app_id": p.app_id,
                    "pushkey": p.pushkey,
                    "kind": p.kind,
                    "app_display_name": p.app_display_name,
                    "device_display_name": p.device_display_name,
                    "lang": p.lang,
                    "data": serde_json::from_str::<Value>(&p.data).unwrap_or_else(|_| json!({})),
                    "org.matrix.msc3881.device_id": p.device_id,
                });
                if let Some(tag) = &p.profile_tag {
                    pusher["profile_tag"] = json!(tag);
                }
                pusher
            })
            .collect();
        Ok(json!({ "pushers": pushers }))
    }

    /// `POST /pushers/set`: adds, replaces or (with `kind: null`) removes a pusher of the
    /// device that asks. Everything is checked before anything is stored.
    pub async fn set_pusher(&self, user_id: &UserId, device_id: &str, body: &Value) -> Result<()> {
        let text = |name: &str| -> Result<String> {
            body.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::MissingParam(format!("{name} is required")))
        };
        let app_id = text("app_id")?;
        let pushkey = text("pushkey")?;
        if app_id.is_empty() || app_id.chars().count() > MAX_APP_ID {
            return Err(invalid("app_id must be 1 to 64 characters"));
        }
        if pushkey.is_empty() || pushkey.len() > MAX_PUSHKEY {
            return Err(invalid("pushkey must be 1 to 512 bytes"));
        }
        let kind = match body.get("kind") {
            None => return Err(Error::MissingParam("kind is required".into())),
            Some(Value::Null) => None,
            Some(Value::String(kind)) if kind == "http" || kind == "email" => Some(kind.clone()),
            Some(_) => return Err(invalid("kind must be http, email or null")),
        };
        let Some(kind) = kind else {
            self.store.delete_pusher(user_id.as_str(), &app_id, &pushkey).await?;
            self.reload(user_id.as_str()).await?;
            tracing::info!(user_id = %user_id, app_id, "pusher removed");
            return Ok(());
        };
        let data = body.get("data").cloned().unwrap_or_else(|| json!({}));
        if !data.is_object() {
            return Err(invalid("data must be an object"));
        }
        let data_text = serde_json::to_string(&data).map_err(|e| Error::Internal(e.to_string()))?;
        if data_text.len() > MAX_DATA {
            return Err(invalid("data is too large (4 KiB at most)"));
        }
        if kind == "http" {
            self.check_gateway(&data).await?;
        } else {
            self.check_email(user_id, &app_id, &pushkey).await?;
        }
        let name = |field: &str| -> Result<String> {
            let value = text(field)?;
            if value.chars().count() > MAX_NAME {
                return Err(invalid(&format!("{field} is too long")));
            }
            Ok(value)
        };
        let pusher = PusherRow {
            user_id: user_id.to_string(),
            app_id,
            pushkey,
            device_id: device_id.to_owned(),
            kind,
            app_display_name: name("app_display_name")?,
            device_display_name: name("device_display_name")?,
            profile_tag: body.get("profile_tag").and_then(Value::as_str).map(|t| t.chars().take(MAX_NAME).collect()),
            lang: name("lang")?,
            data: data_text,
            pushkey_ts: now_ms(),
        };
        let append = body.get("append").and_then(Value::as_bool).unwrap_or(false);
        self.store.set_pusher(&pusher, append).await?;
        if !append {
            // Other users' pushers of this app and key went: their caches follow.
            let others: Vec<String> = self
                .pushers
                .read()
                .expect("pushers lock")
                .iter()
                .filter(|(user, rows)| {
                    user.as_str() != user_id.as_str()
                        && rows.iter().any(|p| p.app_id == pusher.app_id && p.pushkey == pusher.pushkey)
                })
                .map(|(user, _)| user.clone())
                .collect();
            for other in others {
                self.reload(&other).await?;
            }
        }
        self.reload(user_id.as_str()).await?;
        tracing::info!(user_id = %user_id, app_id = pusher.app_id, kind = pusher.kind, "pusher set");
        Ok(())
    }

    /// An e-mail pusher: mails are on, and the address is one of the account's (as the
    /// IAM or an operator gave it): nobody has mails sent to someone else.
    async fn check_email(&self, user_id: &UserId, app_id: &str, address: &str) -> Result<()> {
        if self.mailer.is_none() {
            return Err(invalid("e-mail notifications are off on this server"));
        }
        if app_id != mail::EMAIL_APP_ID {
            return Err(invalid("e-mail pushers have the app_id m.email"));
        }
        let known = self.store.threepids(user_id.as_str()).await?;
        if !known.iter().any(|t| t.medium == "email" && t.address.eq_ignore_ascii_case(address)) {
            return Err(Error::forbidden("this e-mail address is not one of your account's"));
        }
        Ok(())
    }

    /// Removes an e-mail pusher through a signed unsubscribe link.
    pub async fn unsubscribe(&self, user_id: &str, address: &str, sig: &str) -> Result<()> {
        let mailer = self.mailer.as_ref().ok_or(Error::Unrecognized { method_not_allowed: false })?;
        if !mailer.link_valid(user_id, address, sig) {
            return Err(Error::forbidden("this unsubscribe link is not valid"));
        }
        self.store.delete_pusher(user_id, mail::EMAIL_APP_ID, address).await?;
        self.reload(user_id).await?;
        tracing::info!(user_id, "e-mail notifications turned off by unsubscribe link");
        Ok(())
    }

    /// An HTTP pusher's gateway: an http(s) URL of the spec's path, on an address this
    /// server may reach.
    async fn check_gateway(&self, data: &Value) -> Result<()> {
        let url = data
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("an http pusher needs data.url, its gateway"))?;
        let url = url::Url::parse(url).map_err(|_| invalid("data.url is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("data.url must be an http or https URL"));
        }
        if url.path() != GATEWAY_PATH {
            return Err(invalid("data.url must end in /_matrix/push/v1/notify"));
        }
        if data.get("format").is_some_and(|f| !f.is_string()) {
            return Err(invalid("data.format must be a string"));
        }
        let ranges = &self.config.gateway_allowed_ranges;
        let host = url.host_str().ok_or_else(|| invalid("data.url has no host"))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let reachable = match url.host() {
            Some(url::Host::Domain(_)) => match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => addrs.into_iter().any(|a| outbound::reachable(a.ip(), ranges)),
                // A name that does not resolve now may later: the delivery checks again.
                Err(_) => true,
            },
            _ => outbound::literal_reachable(&url, ranges),
        };
        if !reachable {
            return Err(Error::forbidden("this gateway is on a private address this server may not reach"));
        }
        Ok(())
    }
}
