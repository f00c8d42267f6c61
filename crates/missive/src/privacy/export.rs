//! The data subject's export (GDPR art. 15 and 20): everything the server holds about one
//! user, as JSON (machine-readable) and HTML (human-readable). Of the messages, the user's
//! own: in full where the room is not end-to-end encrypted, named but unreadable where it
//! is (the server holds ciphertext only). Nothing of another user is included beyond what
//! the user's own data names (room IDs and names).

use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    store::{Store, now_ms},
};

/// Gathers the export of a local user.
pub async fn export_user(store: &Store, server_name: &str, user_id: &str) -> Result<Value> {
    let details = store.account_details(user_id).await?.ok_or_else(|| Error::not_found("no such account"))?;
    let (displayname, avatar_url) = store.profile(user_id).await?.unwrap_or_default();
    let threepids: Vec<Value> = store
        .threepids(user_id)
        .await?
        .into_iter()
        .map(|t| json!({ "medium": t.medium, "address": t.address, "validated_at": t.validated_ts }))
        .collect();
    let iam: Vec<Value> = details
        .external_ids
        .iter()
        .map(|(issuer, subject)| json!({ "provider": issuer, "subject": subject }))
        .collect();
    let devices: Vec<Value> = store
        .devices(user_id)
        .await?
        .into_iter()
        .map(|d| {
            json!({
                "device_id": d.device_id,
                "display_name": d.display_name,
                "last_seen": d.last_seen_ts,
                "last_seen_ip": d.last_seen_ip,
                "last_seen_user_agent": d.last_seen_user_agent,
            })
        })
        .collect();
    let sessions = store.session_log_of(user_id).await?;
    let mut rooms = Vec::new();
    for membership in store.memberships_of_user(user_id, None).await? {
        let name = match store.current_state_event(&membership.room_id, "m.room.name", "").await? {
            Some(row) => serde_json::from_str::<Value>(&row.json)
                .ok()
                .and_then(|e| e["content"]["name"].as_str().map(str::to_owned)),
            None => None,
        };
        let encrypted = store.current_state_event(&membership.room_id, "m.room.encryption", "").await?.is_some();
        rooms.push(json!({
            "room_id": membership.room_id,
            "name": name,
            "membership": membership.membership,
            "end_to_end_encrypted": encrypted,
        }));
    }
    let mut messages = Vec::new();
    let mut encrypted_messages = 0u64;
    for event in store.events_sent_by(user_id).await? {
        let parsed: Value = serde_json::from_str(&event.json).unwrap_or_default();
        if event.event_type == "m.room.encrypted" {
            encrypted_messages += 1;
            messages.push(json!({
                "event_id": event.event_id,
                "room_id": event.room_id,
                "ts": event.ts,
                "type": event.event_type,
                "content": "end-to-end encrypted: held by the server as ciphertext it cannot read",
            }));
        } else {
            messages.push(json!({
                "event_id": event.event_id,
                "room_id": event.room_id,
                "ts": event.ts,
                "type": event.event_type,
                "state_key": parsed.get("state_key"),
                "content": parsed.get("content"),
            }));
        }
    }
    let account_data: Vec<Value> = store
        .account_data_of(user_id)
        .await?
        .into_iter()
        .map(|(room_id, kind, content)| {
            json!({
                "room_id": (!room_id.is_empty()).then_some(room_id),
                "type": kind,
                "content": serde_json::from_str::<Value>(&content).unwrap_or(Value::Null),
            })
        })
        .collect();
    let (media_rows, _) = store.user_media(user_id, 0, i64::MAX).await?;
    let media: Vec<Value> = media_rows
        .iter()
        .map(|m| {
            json!({
                "uri": format!("mxc://{}/{}", m.origin, m.media_id),
                "type": m.content_type,
                "size": m.size,
                "name": m.filename,
                "uploaded": m.created_ts,
                "quarantined": m.quarantined,
            })
        })
        .collect();
    let pushers: Vec<Value> = store
        .pushers_of(user_id)
        .await?
        .into_iter()
        .map(|p| {
            json!({
                "kind": p.kind,
                "app_id": p.app_id,
                "app_display_name": p.app_display_name,
                "device_display_name": p.device_display_name,
                "pushkey": p.pushkey,
                "data": serde_json::from_str::<Value>(&p.data).unwrap_or(Value::Null),
            })
        })
        .collect();
    let mut audit = store.audit_entries(i64::MAX, 10_000, None, Some(user_id)).await?;
    audit.extend(store.audit_entries(i64::MAX, 10_000, Some(user_id), None).await?);
    audit.sort_by_key(|e| e.id);
    audit.dedup_by_key(|e| e.id);
    Ok(json!({
        "generated_at": now_ms(),
        "server": server_name,
        "user_id": user_id,
        "account": {
            "created": details.creation_ts,
            "organisation": details.organisation,
            "deactivated": details.deactivated_ts,
        },
        "identifiers": { "matrix_id": user_id, "iam": iam, "threepids": threepids },
        "profile": { "displayname": displayname, "avatar_url": avatar_url },
        "devices_and_connections": devices,
        "logins_and_logouts": sessions,
        "rooms": rooms,
        "messages": messages,
        "encrypted_messages": encrypted_messages,
        "account_data": account_data,
        "media": media,
        "push": pushers,
        "audit": audit,
        "notes": [
            "End-to-end encrypted messages are held by the server as ciphertext: it cannot read them, only your devices can.",
            "Push notifications are not stored once delivered.",
        ],
    }))
}

/// The export as a self-contained HTML page.
pub fn to_html(export: &Value) -> String {
    fn escape(text: &str) -> String {
        text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
    }
    fn render(value: &Value) -> String {
        match value {
            Value::Null => "<em>none</em>".to_owned(),
            Value::String(s) => escape(s),
            Value::Array(items) if items.is_empty() => "<em>none</em>".to_owned(),
            Value::Array(items) => {
                format!("<ol>{}</ol>", items.iter().map(|i| format!("<li>{}</li>", render(i))).collect::<String>())
            }
            Value::Object(map) => format!(
                "<dl>{}</dl>",
                map.iter().map(|(k, v)| format!("<dt>{}</dt><dd>{}</dd>", escape(k), render(v))).collect::<String>()
            ),
            other => escape(&other.to_string()),
        }
    }
    let user = export["user_id"].as_str().unwrap_or_default();
    let mut body = String::new();
    if let Some(sections) = export.as_object() {
        for (name, value) in sections {
            body.push_str(&format!("<section><h2>{}</h2>{}</section>", escape(&name.replace('_', " ")), render(value)));
        }
    }
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Your data: {user}</title>\
         <style>body{{font-family:sans-serif;max-width:60em;margin:auto}}dt{{font-weight:bold}}</style></head>\
         <body><h1>Everything this server holds about {user}</h1>{body}</body></html>",
        user = escape(user)
    )
}
