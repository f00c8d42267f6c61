//! Push: the pushers a client registers (`GET /pushers`, `POST /pushers/set`) and the
//! list of a user's notifications (`GET /notifications`).

use std::collections::HashMap;

use axum::{
    Router,
    body::Bytes,
    extract::{Query, State},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Authenticated, json},
    },
    error::{Error, Result},
    rooms::pdu::client_event,
    store::now_ms,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let mut router = router;
    for version in ["r0", "v3"] {
        router = router
            .route(&format!("/_matrix/client/{version}/pushers"), get(pushers))
            .route(&format!("/_matrix/client/{version}/pushers/set"), post(set_pusher))
            .route(&format!("/_matrix/client/{version}/notifications"), get(notifications));
    }
    router.route("/_missive/email/unsubscribe", get(unsubscribe).post(unsubscribe))
}

/// # GET /_matrix/client/v3/pushers
async fn pushers(State(state): State<AppState>, Authenticated(id): Authenticated) -> Result<Response> {
    Ok(json(state.push.pushers_json(&id.user_id).await?))
}

/// # POST /_matrix/client/v3/pushers/set
async fn set_pusher(State(state): State<AppState>, Authenticated(id): Authenticated, body: Bytes) -> Result<Response> {
    let body: Value = serde_json::from_slice(&body).map_err(|_| Error::NotJson("the body is not JSON".into()))?;
    if !body.is_object() {
        return Err(Error::bad_json("the body must be an object"));
    }
    state.push.set_pusher(&id.user_id, id.device_id.as_str(), &body).await?;
    Ok(json(json!({})))
}

/// # GET|POST /_missive/email/unsubscribe
///
/// The signed link of a notification mail (the mail client's one-click `POST` or a
/// browser's `GET`): the address's e-mail pusher goes.
async fn unsubscribe(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<axum::response::Response> {
    let field = |name: &str| query.get(name).ok_or_else(|| Error::MissingParam(format!("{name} is required")));
    state.push.unsubscribe(field("user")?, field("address")?, field("sig")?).await?;
    Ok(axum::response::Html(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head>\
         <body><p>You will no longer receive e-mail notifications at this address.</p></body></html>",
    )
    .into_response())
}

/// # GET /_matrix/client/v3/notifications
///
/// Newest first; `from` is the `next_token` of the previous page, `only=highlight` keeps
/// the mentions.
async fn notifications(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    let before = match query.get("from") {
        Some(from) => from.parse::<i64>().map_err(|_| Error::invalid_param("from is not a token of this server"))?,
        None => i64::MAX,
    };
    let limit = match query.get("limit") {
        Some(limit) => limit.parse::<i64>().ok().filter(|l| *l > 0).ok_or_else(|| Error::invalid_param("bad limit"))?,
        None => 20,
    }
    .min(100);
    let min_level = if query.get("only").map(String::as_str) == Some("highlight") { 2 } else { 1 };
    let rows = state.store.notifications_of(id.user_id.as_str(), before, min_level, limit).await?;
    let now = now_ms();
    let next_token =
        (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.event.stream_pos.to_string())).flatten();
    let notifications: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut actions = vec![json!("notify")];
            if row.level >= 2 {
                actions.push(json!({ "set_tweak": "highlight" }));
            }
            json!({
                "actions": actions,
                "event": client_event(&row.event, Some((id.user_id.as_str(), id.device_id.as_str())), now),
                "profile_tag": null,
                "read": row.read,
                "room_id": row.event.room_id,
                "ts": row.ts,
            })
        })
        .collect();
    let mut body = json!({ "notifications": notifications });
    if let Some(token) = next_token {
        body["next_token"] = json!(token);
    }
    Ok(json(body))
}
