//! Event and state reads for other servers, each refused to a server whose users were
//! never in the room (unless it is world-readable).

use axum::{Router, response::Response};
use ruma::api::federation::{
    authorization::get_event_authorization,
    backfill::get_backfill,
    event::{get_event, get_event_by_timestamp, get_missing_events, get_room_state, get_room_state_ids},
};
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
    store::now_ms,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, event);
    let router = route(router, state);
    let router = route(router, state_ids);
    let router = route(router, event_auth);
    let router = route(router, missing_events);
    let router = route(router, timestamp_to_event);
    route(router, backfill)
}

async fn allowed(state: &AppState, room_id: &ruma::RoomId, origin: &ruma::ServerName) -> Result<()> {
    state.federation.check_room_acl(&state.rooms, room_id, origin).await?;
    if !state.rooms.server_may_read(room_id, origin).await? {
        return Err(Error::forbidden("no user of your server is in this room"));
    }
    Ok(())
}

/// Refuses a state request at an event the server may not read, or one it holds outside
/// the timeline (a join's state, a soft-failed event), whose state it does not know.
async fn state_known_at(
    state: &AppState,
    room_id: &ruma::RoomId,
    origin: &ruma::ServerName,
    event_id: &str,
) -> Result<()> {
    allowed(state, room_id, origin).await?;
    state.rooms.pdu_of_room(room_id, event_id).await?;
    if state.store.is_outlier(event_id).await? {
        return Err(Error::not_found("this server does not know the state at that event"));
    }
    Ok(())
}

/// # GET /_matrix/federation/v1/event/{eventId}
async fn event(state: AppState, req: Ruma<get_event::v1::Request>) -> Result<Response> {
    let row = state.store.event(req.body.event_id.as_str()).await?.ok_or_else(|| Error::not_found("unknown event"))?;
    let room_id = ruma::RoomId::parse(&row.room_id).map_err(|e| Error::Internal(e.to_string()))?;
    allowed(&state, &room_id, req.origin()).await?;
    let pdus = state.rooms.history_pdus(vec![row]).await?;
    Ok(json(json!({ "origin": state.federation.server_name, "origin_server_ts": now_ms(), "pdus": pdus })))
}

/// # GET /_matrix/federation/v1/state/{roomId}
async fn state(state: AppState, req: Ruma<get_room_state::v1::Request>) -> Result<Response> {
    state_known_at(&state, &req.body.room_id, req.origin(), req.body.event_id.as_str()).await?;
    let (pdus, auth_chain) = state.rooms.state_and_auth_chain(req.body.event_id.as_str()).await?;
    Ok(json(json!({ "pdus": pdus, "auth_chain": auth_chain })))
}

/// # GET /_matrix/federation/v1/state_ids/{roomId}
async fn state_ids(state: AppState, req: Ruma<get_room_state_ids::v1::Request>) -> Result<Response> {
    state_known_at(&state, &req.body.room_id, req.origin(), req.body.event_id.as_str()).await?;
    let (pdus, chain) = state.rooms.state_rows_and_auth_chain(req.body.event_id.as_str()).await?;
    let ids = |rows: Vec<crate::store::EventRow>| rows.into_iter().map(|r| r.event_id).collect::<Vec<_>>();
    Ok(json(json!({ "pdu_ids": ids(pdus), "auth_chain_ids": ids(chain) })))
}

/// # GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}
async fn event_auth(state: AppState, req: Ruma<get_event_authorization::v1::Request>) -> Result<Response> {
    allowed(&state, &req.body.room_id, req.origin()).await?;
    state.rooms.pdu_of_room(&req.body.room_id, req.body.event_id.as_str()).await?;
    Ok(json(json!({ "auth_chain": state.rooms.event_auth_chain(req.body.event_id.as_str()).await? })))
}

/// # POST /_matrix/federation/v1/get_missing_events/{roomId}
async fn missing_events(state: AppState, req: Ruma<get_missing_events::v1::Request>) -> Result<Response> {
    let b = &req.body;
    allowed(&state, &b.room_id, req.origin()).await?;
    let ids = |list: &[ruma::OwnedEventId]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
    let limit = u64::from(b.limit).min(100) as usize;
    let events = state
        .rooms
        .missing_events(&b.room_id, &ids(&b.earliest_events), &ids(&b.latest_events), limit, u64::from(b.min_depth))
        .await?;
    Ok(json(json!({ "events": events })))
}

/// # GET /_matrix/federation/v1/backfill/{roomId}
async fn backfill(state: AppState, req: Ruma<get_backfill::v1::Request>) -> Result<Response> {
    let b = &req.body;
    allowed(&state, &b.room_id, req.origin()).await?;
    let from: Vec<String> = b.v.iter().map(ToString::to_string).collect();
    let pdus = state.rooms.backfill(&b.room_id, &from, u64::from(b.limit).min(100) as usize).await?;
    Ok(json(json!({ "origin": state.federation.server_name, "origin_server_ts": now_ms(), "pdus": pdus })))
}

/// # GET /_matrix/federation/v1/timestamp_to_event/{roomId}
async fn timestamp_to_event(state: AppState, req: Ruma<get_event_by_timestamp::v1::Request>) -> Result<Response> {
    let b = &req.body;
    allowed(&state, &b.room_id, req.origin()).await?;
    let forward = b.dir == ruma::api::Direction::Forward;
    let rows = state.store.events_near_ts(b.room_id.as_str(), i64::from(b.ts.get()), forward, 1).await?;
    let row = rows.into_iter().next().ok_or_else(|| Error::not_found("no event on that side of the timestamp"))?;
    let pdu: Value = serde_json::from_str(&row.json).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(json(json!({ "event_id": row.event_id, "origin_server_ts": pdu["origin_server_ts"] })))
}
