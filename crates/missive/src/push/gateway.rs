//! Delivery to one pusher's gateway: a task per pusher takes its notifications in order,
//! one request in flight, retrying with exponential backoff until the gateway takes it or
//! `[push] max_retry_secs` pass; a pushkey the gateway rejects is removed. The body holds
//! only IDs and counts (`event_id_only`) unless the operator allows the full format and
//! the pusher asks for it.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};

use super::Push;
use crate::store::{PushCandidate, PusherRow};

/// Notifications a pusher's queue holds before new ones are dropped.
const QUEUE: usize = 1000;
/// First and longest wait between two attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A notification waiting for a gateway.
#[derive(Debug)]
pub struct Job {
    /// The event and its room; none for a badge update (counts alone).
    event: Option<(String, String)>,
    highlight: bool,
    queued: Instant,
}

impl Job {
    pub(super) fn new(candidate: &PushCandidate) -> Self {
        Self {
            event: Some((candidate.room_id.clone(), candidate.event_id.clone())),
            highlight: candidate.highlight,
            queued: Instant::now(),
        }
    }

    /// A badge update: the unread count changed without a new event.
    pub(super) fn badge() -> Self {
        Self { event: None, highlight: false, queued: Instant::now() }
    }
}

/// What an attempt came to.
enum Attempt {
    Delivered,
    /// The gateway no longer knows the pushkey: the pusher goes.
    Rejected,
    Failed(String),
}

/// Starts the task of a pusher and answers its queue.
pub(super) fn spawn(push: Arc<Push>, key: (String, String, String)) -> mpsc::Sender<Job> {
    let (sender, receiver) = mpsc::channel(QUEUE);
    tokio::spawn(run(push, key, receiver));
    sender
}

async fn run(push: Arc<Push>, key: (String, String, String), mut jobs: mpsc::Receiver<Job>) {
    let (user_id, app_id, pushkey) = &key;
    let max_age = Duration::from_secs(push.config.max_retry_secs);
    while let Some(job) = jobs.recv().await {
        let mut backoff = FIRST_BACKOFF;
        loop {
            // Read at each attempt: the device may have gone, the pusher changed.
            let pusher = match push.store.pushers_of(user_id).await {
                Ok(rows) => rows.into_iter().find(|p| &p.app_id == app_id && &p.pushkey == pushkey),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a pusher");
                    None
                }
            };
            let Some(pusher) = pusher else {
                push.queues.lock().expect("push queues lock").remove(&key);
                return;
            };
            match attempt(&push, &pusher, &job).await {
                Attempt::Delivered => break,
                Attempt::Rejected => {
                    tracing::info!(user_id, app_id, "the gateway rejected a pushkey: pusher removed");
                    let _ = push.store.delete_pusher(user_id, app_id, pushkey).await;
                    let _ = push.reload(user_id).await;
                    push.queues.lock().expect("push queues lock").remove(&key);
                    return;
                }
                Attempt::Failed(why) => {
                    if job.queued.elapsed() + backoff > max_age {
                        tracing::warn!(user_id, app_id, error = why, "push gateway failing: notification dropped");
                        break;
                    }
                    tracing::debug!(
                        user_id,
                        app_id,
                        error = why,
                        retry_in_ms = backoff.as_millis() as u64,
                        "push failed"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// One request to the gateway.
async fn attempt(push: &Push, pusher: &PusherRow, job: &Job) -> Attempt {
    let data: Value = serde_json::from_str(&pusher.data).unwrap_or_else(|_| json!({}));
    let Some(url) = data.get("url").and_then(Value::as_str).and_then(|u| url::Url::parse(u).ok()) else {
        return Attempt::Rejected;
    };
    if !crate::outbound::literal_reachable(&url, &push.config.gateway_allowed_ranges) {
        return Attempt::Rejected;
    }
    let body = match notification(push, pusher, &data, job).await {
        Ok(body) => body,
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    let request = push.http.post(url).header(http::header::CONTENT_TYPE, "application/json").body(body.to_string());
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    let status = response.status();
    if !status.is_success() {
        return Attempt::Failed(format!("the gateway answered {status}"));
    }
    // The answer is a short list of rejected keys: what passes 64 KiB is not read.
    let mut response = response;
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > 64 * 1024 {
            break;
        }
    }
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({}));
    let rejected = answer["rejected"].as_array().is_some_and(|r| r.iter().any(|k| k == pusher.pushkey.as_str()));
    if rejected { Attempt::Rejected } else { Attempt::Delivered }
}

/// The body of `POST /_matrix/push/v1/notify`. Counts are read now, so that they match
/// what the member's next sync shows. The full format (only where the operator allows
/// it) adds the event's type, sender and content, the room's name and alias, and the
/// sender's display name.
async fn notification(
    push: &Push,
    pusher: &PusherRow,
    data: &Value,
    job: &Job,
) -> Result<Value, crate::store::StoreError> {
    let unread = push.store.unread_total(&pusher.user_id).await?;
    let mut device_data = data.clone();
    if let Some(object) = device_data.as_object_mut() {
        object.remove("url");
    }
    let mut tweaks = json!({});
    if job.highlight {
        tweaks["highlight"] = json!(true);
    }
    let mut notification = json!({
        "counts": { "unread": unread },
        "devices": [{
            "app_id": pusher.app_id,
            "pushkey": pusher.pushkey,
            "pushkey_ts": pusher.pushkey_ts / 1000,
            "data": device_data,
            "tweaks": tweaks,
        }],
    });
    let Some((room_id, event_id)) = &job.event else {
        // A badge update: counts alone, no hurry.
        notification["prio"] = json!("low");
        return Ok(json!({ "notification": notification }));
    };
    notification["event_id"] = json!(event_id);
    notification["room_id"] = json!(room_id);
    notification["prio"] = json!("high");
    let full = push.config.allow_full_format && data.get("format").and_then(Value::as_str) != Some("event_id_only");
    if full && let Some(row) = push.store.events(std::slice::from_ref(event_id)).await?.into_iter().next() {
        let event: Value = serde_json::from_str(&row.json).unwrap_or_default();
        for field in ["type", "sender", "content"] {
            if let Some(value) = event.get(field) {
                notification[field] = value.clone();
            }
        }
        // Synapse has always named the event `id` in the full format, and gateways
        // (Sygnal) read either.
        notification["id"] = json!(event_id);
        let state = |kind: &'static str, key: String, field: &'static str| {
            let store = push.store.clone();
            let room_id = room_id.clone();
            async move {
                let row = store.current_state_event(&room_id, kind, &key).await?;
                Ok::<_, crate::store::StoreError>(row.and_then(|row| {
                    let json: Value = serde_json::from_str(&row.json).ok()?;
                    json["content"][field].as_str().map(str::to_owned)
                }))
            }
        };
        let alias = state("m.room.canonical_alias", String::new(), "alias").await?;
        // A room without a name goes by its alias, as Synapse's gateways expect.
        if let Some(name) = state("m.room.name", String::new(), "name").await?.or_else(|| alias.clone()) {
            notification["room_name"] = json!(name);
        }
        if let Some(alias) = alias {
            notification["room_alias"] = json!(alias);
        }
        if event["type"] == "m.room.member" {
            notification["membership"] = event["content"]["membership"].clone();
            notification["user_is_target"] = json!(event["state_key"] == pusher.user_id.as_str());
        }
        if let Some(sender) = event["sender"].as_str()
            && let Some(name) = state("m.room.member", sender.to_owned(), "displayname").await?
        {
            notification["sender_display_name"] = json!(name);
        }
    }
    Ok(json!({ "notification": notification }))
}
