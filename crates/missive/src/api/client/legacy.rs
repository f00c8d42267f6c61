//! Deprecated endpoints still in the spec and still used by older clients and bots: the
//! event stream, the initial syncs and the room-less event lookup.

use std::time::Duration;

use axum::{
    Router,
    extract::{Path, Query, State},
    response::Response,
    routing::{get, post},
};
use ruma::{EventId, RoomId};
use serde::Deserialize;

use crate::{
    accounts::Identity,
    api::{
        AppState,
        ruma::{Authenticated, json},
    },
    error::{Error, Result},
    ratelimit::Action,
    rooms::{Draft, timeline::Viewer},
    sync::legacy::initial_sync_limit,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let mut router = router;
    for version in ["r0", "v3"] {
        router = router
            .route(&format!("/_matrix/client/{version}/events"), get(events))
            .route(&format!("/_matrix/client/{version}/initialSync"), get(initial_sync))
            .route(&format!("/_matrix/client/{version}/rooms/{{room_id}}/initialSync"), get(room_initial_sync))
            .route(&format!("/_matrix/client/{version}/events/{{event_id}}"), get(event))
            .route(&format!("/_matrix/client/{version}/rooms/{{room_id}}/send/{{event_type}}"), post(send))
            .route(&format!("/_matrix/client/{version}/rooms/{{room_id}}/redact/{{event_id}}"), post(redact));
    }
    router
}

#[derive(Deserialize)]
struct EventsQuery {
    from: Option<String>,
    timeout: Option<String>,
    room_id: Option<String>,
    limit: Option<String>,
}

/// # GET /_matrix/client/v3/events
async fn events(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Query(query): Query<EventsQuery>,
) -> Result<Response> {
    if let Some(limit) = query.limit.as_deref()
        && limit.parse::<u32>().is_err()
    {
        return Err(Error::invalid_param("limit must be a non-negative number"));
    }
    let timeout = match query.timeout.as_deref() {
        None => Duration::from_secs(30),
        Some(t) => Duration::from_millis(t.parse().map_err(|_| Error::invalid_param("timeout must be a number"))?),
    };
    match query.room_id {
        // Peeking: one room's events, for its members or anyone when it is world-readable.
        Some(room_id) => {
            let room_id = RoomId::parse(&room_id).map_err(|e| Error::invalid_param(format!("invalid room ID: {e}")))?;
            Ok(json(state.sync.room_event_stream(&id, &room_id, query.from.as_deref(), timeout).await?))
        }
        None if id.is_guest => Err(Error::GuestAccessForbidden),
        None => Ok(json(state.sync.event_stream(&id, query.from.as_deref(), timeout).await?)),
    }
}

#[derive(Deserialize)]
struct InitialSyncQuery {
    limit: Option<String>,
    archived: Option<String>,
}

/// # GET /_matrix/client/v3/initialSync
async fn initial_sync(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Query(query): Query<InitialSyncQuery>,
) -> Result<Response> {
    if id.is_guest {
        return Err(Error::GuestAccessForbidden);
    }
    let limit = initial_sync_limit(query.limit.as_deref())?;
    let archived = query.archived.as_deref() == Some("true");
    Ok(json(state.sync.initial_sync(&id, limit, archived).await?))
}

/// # GET /_matrix/client/v3/rooms/{roomId}/initialSync
async fn room_initial_sync(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(room_id): Path<String>,
    Query(query): Query<InitialSyncQuery>,
) -> Result<Response> {
    let room_id = RoomId::parse(&room_id).map_err(|e| Error::invalid_param(format!("invalid room ID: {e}")))?;
    let limit = initial_sync_limit(query.limit.as_deref())?;
    Ok(json(state.sync.room_initial_sync(&id, &room_id, limit).await?))
}

/// # GET /_matrix/client/v3/events/{eventId}
async fn event(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(event_id): Path<String>,
) -> Result<Response> {
    if id.is_guest {
        return Err(Error::GuestAccessForbidden);
    }
    let event_id = EventId::parse(&event_id).map_err(|_| Error::not_found("event not found"))?;
    let viewer = Viewer { user_id: &id.user_id, device_id: id.device_id.as_str() };
    Ok(json(state.rooms.event_by_id(viewer, &event_id).await?))
}

/// What the r0 sends without a transaction ID ask first: a registered user within the
/// message rate, in a room named by a valid ID.
fn sending_in(state: &AppState, id: &Identity, room_id: &str) -> Result<ruma::OwnedRoomId> {
    if id.is_guest {
        return Err(Error::GuestAccessForbidden);
    }
    state.limits.check(Action::Message, id.user_id.as_str())?;
    RoomId::parse(room_id).map_err(|e| Error::invalid_param(format!("invalid room ID: {e}")))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/send/{eventType}
///
/// The send of r0 clients without a transaction ID: each call is a new event.
async fn send(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path((room_id, event_type)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let room_id = sending_in(&state, &id, &room_id)?;
    let content: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Error::NotJson(e.to_string()))?;
    if !content.is_object() {
        return Err(Error::bad_json("content must be a JSON object"));
    }
    if event_type == "m.room.redaction" {
        return Err(Error::forbidden("use the redact endpoint to redact events"));
    }
    let draft = Draft::message(event_type, content);
    let event_id = state.rooms.send(&id.user_id, id.device_id.as_str(), &room_id, draft, None).await?;
    Ok(json(serde_json::json!({ "event_id": event_id })))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/redact/{eventId}
///
/// The redaction of r0 clients without a transaction ID: each call is a new redaction.
async fn redact(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path((room_id, event_id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let room_id = sending_in(&state, &id, &room_id)?;
    let event_id =
        ruma::EventId::parse(&event_id).map_err(|e| Error::invalid_param(format!("invalid event ID: {e}")))?;
    let body: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::NotJson(e.to_string()))?
    };
    let mut content = serde_json::json!({ "redacts": event_id });
    if let Some(reason) = body.get("reason").and_then(serde_json::Value::as_str) {
        content["reason"] = serde_json::json!(reason);
    }
    let draft = Draft::message("m.room.redaction", content);
    let event_id = state.rooms.send(&id.user_id, id.device_id.as_str(), &room_id, draft, None).await?;
    Ok(json(serde_json::json!({ "event_id": event_id })))
}
